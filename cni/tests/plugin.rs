//! The plugin invoked directly as a runtime invokes it (environment + stdin), against a real etcd, in
//! node and pod network namespaces: every command in every configuration version, bad input with the
//! spec's error codes, failures that leave nothing behind, GC, STATUS, 200 parallel ADD/DEL, reef-ipam
//! under the reference `ptp` and `bridge`, and the `portmap` chain.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Value, json};
use support::{AnswerExt, Call, Cluster, Node, PluginDir, Pod, result_ips, with_prev_result};

const ROOT: &str = "needs root: network namespaces";

/// Runs a call the way the tests need it.
trait Exec {
    fn exec(&self, bins: &PluginDir, node: Option<&reef_lab::Netns>) -> support::Answer;
}

impl Exec for Call<'_> {
    fn exec(&self, bins: &PluginDir, node: Option<&reef_lab::Netns>) -> support::Answer {
        support::run(self, bins, node)
    }
}

fn call<'a>(command: &'a str, id: &'a str, netns: Option<&'a str>, config: &'a Value) -> Call<'a> {
    Call {
        plugin: "reef",
        command,
        container_id: id,
        netns,
        ifname: "eth0",
        args: "",
        config,
    }
}

/// Gives the node an address of its own so it can ping its pods (a node always has one).
fn address_node(node: &Node) {
    node.ns
        .ip(&["addr", "add", "198.51.100.10/32", "dev", "lo"])
        .expect("node address");
    node.ns
        .ip(&["-6", "addr", "add", "2001:db8:ff::10/128", "dev", "lo"])
        .expect("node address");
}

fn ping(ns: &reef_lab::Netns, target: IpAddr) -> bool {
    let program = if target.is_ipv4() { "ping" } else { "ping6" };
    ns.exec(&[program, "-c", "1", "-W", "2", &target.to_string()])
        .is_ok()
}

#[test]
fn version_answers_without_a_configuration() {
    let bins = PluginDir::new();
    let config = json!({"cniVersion": "1.1.0"});
    let answer = Call {
        plugin: "reef",
        command: "VERSION",
        container_id: "",
        netns: None,
        ifname: "",
        args: "",
        config: &config,
    }
    .exec(&bins, None);
    answer.assert_ok();
    assert_eq!(
        answer.json_or_panic(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

/// Bad input never reaches the kernel or the datastore: each gets its spec code and a message.
#[test]
fn bad_input_gets_the_spec_error_codes() {
    let bins = PluginDir::new();
    let good = json!({"cniVersion": "1.0.0", "name": "n", "type": "reef",
                      "datastore": {"type": "etcd", "etcdEndpoints": ["http://127.0.0.1:9"]}});
    let cases: Vec<(&str, Value, Option<&str>, &str, u64)> = vec![
        ("ADD", json!("{not json"), Some("/run/netns/x"), "eth0", 6),
        (
            "ADD",
            json!({"name": "n", "type": "reef"}),
            Some("/run/netns/x"),
            "eth0",
            7,
        ),
        (
            "ADD",
            json!({"cniVersion": "0.2.0", "name": "n"}),
            Some("/run/netns/x"),
            "eth0",
            1,
        ),
        (
            "ADD",
            json!({"cniVersion": "9.9.9", "name": "n"}),
            Some("/run/netns/x"),
            "eth0",
            1,
        ),
        ("ADD", good.clone(), None, "eth0", 4),
        ("ADD", good.clone(), Some("/run/netns/x"), "", 4),
        ("ADD", good.clone(), Some("/run/netns/x"), "bad/name", 4),
        ("BOGUS", good.clone(), Some("/run/netns/x"), "eth0", 4),
        (
            "ADD",
            good.clone(),
            Some("/run/netns/reef-no-such-netns"),
            "eth0",
            4,
        ),
        (
            "CHECK",
            json!({"cniVersion": "0.3.1", "name": "n", "type": "reef"}),
            Some("/run/netns/x"),
            "eth0",
            1,
        ),
        ("GC", good.clone(), None, "", 1),
        ("STATUS", good.clone(), None, "", 1),
    ];
    for (command, config, netns, ifname, code) in cases {
        // A JSON string stands for raw (broken) stdin.
        let raw = match &config {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut cmd = std::process::Command::new(bins.path().join("reef"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", bins.path());
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
        let answer = support::run_with_stdin(cmd, raw.as_bytes());
        assert_eq!(
            answer.error_code(),
            code,
            "{command} {raw}: {}",
            answer.stdout
        );
    }
    // Without CNI_PATH, as the spec requires it.
    let mut cmd = std::process::Command::new(bins.path().join("reef"));
    cmd.env_clear()
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_IFNAME", "eth0");
    let answer = support::run_with_stdin(cmd, good.to_string().as_bytes());
    assert_eq!(answer.error_code(), 4);
    assert!(
        answer.json_or_panic()["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_PATH")
    );
}

/// ADD, CHECK, DEL in each configuration version, with the result shapes of that version, the kernel
/// state the design names, the WorkloadEndpoint, and DEL idempotence.
#[test]
#[ignore = "needs root: network namespaces"]
fn every_version_adds_checks_and_deletes() {
    let _ = ROOT;
    let cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    cluster.pool("v6", support::POOL_V6, None);
    let node = cluster.node("node-a", &[]);
    address_node(&node);
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let dual = version != "0.3.1";
        let config = cluster.config(&node, version, dual);
        let pod = Pod::new();
        let id = format!("ctr{n}");
        let path = pod.path();
        let added = call("ADD", &id, Some(&path), &config).exec(&cluster.bins, Some(&node.ns));
        let result = added.assert_ok().json_or_panic();
        assert_eq!(result["cniVersion"], version);
        let ips = result_ips(&result);
        assert_eq!(ips.len(), if dual { 2 } else { 1 }, "{result}");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version == "0.3.1" || version == "0.4.0",
            "{result}"
        );
        assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], path);

        // The kernel: host veth named after the container id, proxy ARP, the /32 with protocol 82; in
        // the pod the /32 (and /128), the link route to the gateway and the default route.
        let host_if = reef_crds::workload::host_interface_name(None, &id);
        assert_eq!(result["interfaces"][0]["name"], host_if);
        let proxy_arp = node
            .ns
            .exec(&[
                "cat",
                &format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"),
            ])
            .unwrap();
        assert_eq!(proxy_arp.trim(), "1");
        let v4 = ips[0];
        let host_route = node.ns.ip(&["route", "show", &format!("{v4}/32")]).unwrap();
        assert!(
            host_route.contains(&format!("dev {host_if}")) && host_route.contains("proto 82"),
            "{host_route}"
        );
        let pod_routes = pod.ns.ip(&["route", "show"]).unwrap();
        assert!(
            pod_routes.contains("default via 169.254.1.1 dev eth0"),
            "{pod_routes}"
        );
        assert!(
            pod_routes.contains("169.254.1.1 dev eth0 scope link"),
            "{pod_routes}"
        );
        let pod_addrs = pod.ns.ip(&["addr", "show", "eth0"]).unwrap();
        assert!(pod_addrs.contains(&format!("{v4}/32")), "{pod_addrs}");
        if dual {
            let v6 = ips[1];
            assert!(pod_addrs.contains(&format!("{v6}/128")), "{pod_addrs}");
            let v6_routes = pod.ns.ip(&["-6", "route", "show"]).unwrap();
            assert!(
                v6_routes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
                "{v6_routes}"
            );
            assert!(ping(&node.ns, v6), "node cannot reach its pod at {v6}");
        }
        assert!(ping(&node.ns, v4), "node cannot reach its pod at {v4}");
        assert!(
            ping(&pod.ns, "198.51.100.10".parse().unwrap()),
            "pod cannot reach its node"
        );

        // The endpoint reefd will read.
        let endpoints = cluster.endpoints();
        let endpoint = endpoints
            .iter()
            .find(|e| e.spec.container_id == id)
            .expect("WorkloadEndpoint written");
        assert_eq!(endpoint.spec.node, "node-a");
        assert_eq!(endpoint.spec.interface_name, host_if);
        assert_eq!(endpoint.spec.ip_networks.len(), ips.len());
        assert_eq!(
            endpoint.spec.mac,
            result["interfaces"][1]["mac"].as_str().unwrap()
        );

        let with_prev = with_prev_result(&config, &result);
        if version != "0.3.1" {
            call("CHECK", &id, Some(&path), &with_prev)
                .exec(&cluster.bins, Some(&node.ns))
                .assert_ok();
            // Break the host route: CHECK names it.
            node.ns.ip(&["route", "del", &format!("{v4}/32")]).unwrap();
            let broken =
                call("CHECK", &id, Some(&path), &with_prev).exec(&cluster.bins, Some(&node.ns));
            assert_eq!(broken.error_code(), 103);
            assert!(
                broken.stdout.contains(&format!("host route {v4}/32")),
                "{}",
                broken.stdout
            );
        }
        call("DEL", &id, Some(&path), &with_prev)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
        // Idempotent: again, and with the netns gone, and for a container never seen.
        call("DEL", &id, Some(&path), &with_prev)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
        drop(pod);
        call("DEL", &id, Some(&path), &config)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
        call("DEL", "never-added", None, &config)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
        cluster.assert_nothing_left(&[&node]);
    }
}

/// Each failing ADD returns its code and leaves no veth, route, endpoint or address.
#[test]
#[ignore = "needs root: network namespaces"]
fn failed_adds_leave_nothing_behind() {
    let mut cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    cluster.pool("v6", support::POOL_V6, None);
    cluster.pool("tiny", "10.99.0.0/30", Some(30));
    let node = cluster.node("node-a", &[]);
    let config = cluster.config(&node, "1.1.0", true);

    // The interface name is taken in the pod.
    let pod = Pod::new();
    pod.ns
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let taken =
        call("ADD", "c-taken", Some(&pod.path()), &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(taken.error_code(), 101);
    cluster.assert_nothing_left(&[&node]);

    // The pod has IPv6 disabled: the /128 cannot be added, after the veth and the IPv4 address were.
    let pod = Pod::new();
    pod.ns
        .sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    let failed =
        call("ADD", "c-nov6", Some(&pod.path()), &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(failed.error_code(), 104, "{}", failed.stdout);
    cluster.assert_nothing_left(&[&node]);

    // The node is not registered.
    let mut unknown = config.clone();
    unknown["nodename"] = json!("node-nowhere");
    let pod = Pod::new();
    let answer =
        call("ADD", "c-unknown", Some(&pod.path()), &unknown).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(answer.error_code(), 102);
    assert!(
        answer.json_or_panic()["details"]
            .as_str()
            .unwrap()
            .contains("reefd")
    );
    cluster.assert_nothing_left(&[&node]);

    // The pool is exhausted after four pods.
    let mut tiny = config.clone();
    tiny["ipam"] = json!({"type": "reef-ipam", "ipv4Pools": ["10.99.0.0/30"]});
    let pods: Vec<Pod> = (0..5).map(|_| Pod::new()).collect();
    for (i, pod) in pods.iter().enumerate().take(4) {
        call("ADD", &format!("c-tiny{i}"), Some(&pod.path()), &tiny)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
    }
    let exhausted =
        call("ADD", "c-tiny4", Some(&pods[4].path()), &tiny).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(exhausted.error_code(), 100);
    let json = exhausted.json_or_panic();
    assert!(
        json["msg"].as_str().unwrap().contains("10.99.0.0/30"),
        "{json}"
    );
    assert!(
        json["details"]
            .as_str()
            .unwrap()
            .contains("reefctl ipam check"),
        "{json}"
    );
    assert_eq!(
        support::reef_links(&node.ns).len(),
        4,
        "the failed ADD left a veth"
    );
    for (i, pod) in pods.iter().enumerate().take(4) {
        call("DEL", &format!("c-tiny{i}"), Some(&pod.path()), &tiny)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
    }
    cluster.assert_nothing_left(&[&node]);

    // The datastore is down: try again later, and nothing was created.
    cluster.etcd.stop();
    let pod = Pod::new();
    let down =
        call("ADD", "c-down", Some(&pod.path()), &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(down.error_code(), 11, "{}", down.stdout);
    assert!(support::reef_links(&node.ns).is_empty());
    // DEL cannot release while the datastore is down: it says so and the runtime retries.
    let del_down =
        call("DEL", "c-down", Some(&pod.path()), &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(del_down.error_code(), 11);
    cluster.etcd.start_again().unwrap();
    cluster.assert_nothing_left(&[&node]);
}

/// GC releases what the runtime no longer lists; STATUS reports whether an ADD could be served.
#[test]
#[ignore = "needs root: network namespaces"]
fn gc_and_status() {
    let mut cluster = Cluster::new();
    let node = cluster.node("node-a", &[]);
    let config = cluster.config(&node, "1.1.0", false);
    // No pool yet: STATUS says the plugin is not available.
    let status = call("STATUS", "", None, &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(status.error_code(), 50);
    cluster.pool("v4", support::POOL_V4, None);
    call("STATUS", "", None, &config)
        .exec(&cluster.bins, Some(&node.ns))
        .assert_ok();

    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    for (i, pod) in pods.iter().enumerate() {
        call("ADD", &format!("gc{i}"), Some(&pod.path()), &config)
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
    }
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    call("GC", "", None, &gc)
        .exec(&cluster.bins, Some(&node.ns))
        .assert_ok();
    let left: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| e.spec.container_id.clone())
        .collect();
    assert_eq!(left, ["gc0"]);
    let (held, problems) = cluster.ipam_state();
    assert_eq!(held.len(), 1);
    assert_eq!(problems, 0);

    cluster.etcd.stop();
    let down = call("STATUS", "", None, &config).exec(&cluster.bins, Some(&node.ns));
    assert_eq!(down.error_code(), 50);
    cluster.etcd.start_again().unwrap();
    call("DEL", "gc0", Some(&pods[0].path()), &config)
        .exec(&cluster.bins, Some(&node.ns))
        .assert_ok();
    cluster.assert_nothing_left(&[&node]);
}

/// 200 ADDs at once on one node, then 200 DELs: distinct addresses, nothing lost, nothing leaked.
#[test]
#[ignore = "needs root: network namespaces"]
fn two_hundred_parallel_adds_and_dels() {
    const PODS: usize = 200;
    let cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    let node = cluster.node("node-a", &[]);
    let config = cluster.config(&node, "1.1.0", false);
    let pods: Vec<Pod> = (0..PODS).map(|_| Pod::new()).collect();
    let paths: Vec<String> = pods.iter().map(Pod::path).collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let (cluster, node, config) = (&cluster, &node, &config);
                scope.spawn(move || {
                    call("ADD", &format!("par{i}"), Some(path), config)
                        .exec(&cluster.bins, Some(&node.ns))
                        .assert_ok()
                        .json_or_panic()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let ips: BTreeSet<IpAddr> = results.iter().flat_map(result_ips).collect();
    assert_eq!(ips.len(), PODS, "duplicate addresses");
    assert_eq!(support::reef_links(&node.ns).len(), PODS);
    assert_eq!(cluster.endpoints().len(), PODS);
    let (held, problems) = cluster.ipam_state();
    assert_eq!(held, ips);
    assert_eq!(problems, 0);
    std::thread::scope(|scope| {
        for (i, path) in paths.iter().enumerate() {
            let (cluster, node, config) = (&cluster, &node, &config);
            scope.spawn(move || {
                call("DEL", &format!("par{i}"), Some(path), config)
                    .exec(&cluster.bins, Some(&node.ns))
                    .assert_ok();
            });
        }
    });
    cluster.assert_nothing_left(&[&node]);
}

/// reef-ipam as the IPAM plugin of the reference `ptp` and `bridge` plugins: pods get Reef addresses
/// and reach each other; DEL releases them.
#[test]
#[ignore = "needs root: network namespaces"]
fn reef_ipam_serves_ptp_and_bridge() {
    let cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    let node = cluster.node("node-a", &[]);
    node.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let reef = cluster.config(&node, "1.0.0", false);
    let ipam = {
        let mut i = reef["ipam"].clone();
        for key in ["nodename", "datastore", "ipamLockFile"] {
            i[key] = reef[key].clone();
        }
        i
    };
    let ptp = json!({"cniVersion": "1.0.0", "name": "reef-test", "type": "ptp", "ipam": ipam});
    let mut bridge_ipam = ipam.clone();
    bridge_ipam["gateway"] = json!("none");
    let bridge = json!({"cniVersion": "1.0.0", "name": "reef-test", "type": "bridge",
                        "bridge": "reefbr0", "isGateway": false, "ipam": bridge_ipam});
    for (plugin_config, plugin) in [(&ptp, "ptp"), (&bridge, "bridge")] {
        let pods = [Pod::new(), Pod::new()];
        let mut ips = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let answer = Call {
                plugin,
                command: "ADD",
                container_id: &format!("{plugin}{i}"),
                netns: Some(&pod.path()),
                ifname: "eth0",
                args: "",
                config: plugin_config,
            }
            .exec(&cluster.bins, Some(&node.ns));
            let ip = result_ips(&answer.assert_ok().json_or_panic())[0];
            assert!(ip.to_string().starts_with("10.244."), "{ip}");
            ips.push(ip);
        }
        assert!(
            ping(&pods[0].ns, ips[1]),
            "{plugin}: pod 0 cannot reach pod 1"
        );
        let (held, _) = cluster.ipam_state();
        assert_eq!(held, ips.iter().copied().collect());
        for (i, pod) in pods.iter().enumerate() {
            Call {
                plugin,
                command: "DEL",
                container_id: &format!("{plugin}{i}"),
                netns: Some(&pod.path()),
                ifname: "eth0",
                args: "",
                config: plugin_config,
            }
            .exec(&cluster.bins, Some(&node.ns))
            .assert_ok();
        }
        assert!(
            cluster.ipam_state().0.is_empty(),
            "{plugin}: addresses left"
        );
    }
}

/// The reference `portmap` chained after reef: a host port reaches the pod; DEL of the chain cleans up.
#[test]
#[ignore = "needs root: network namespaces"]
fn portmap_chains_after_reef() {
    let cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    let node = cluster.node("node-a", &[]);
    address_node(&node);
    node.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    node.ns
        .sysctl("net.ipv4.conf.all.route_localnet", "1")
        .unwrap();
    let config = cluster.config(&node, "1.0.0", false);
    let pod = Pod::new();
    let path = pod.path();
    let result = call("ADD", "pm0", Some(&path), &config)
        .exec(&cluster.bins, Some(&node.ns))
        .assert_ok()
        .json_or_panic();
    let portmap = json!({
        "cniVersion": "1.0.0", "name": "reef-test", "type": "portmap", "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
        "prevResult": result,
    });
    let chained = Call {
        plugin: "portmap",
        command: "ADD",
        container_id: "pm0",
        netns: Some(&path),
        ifname: "eth0",
        args: "",
        config: &portmap,
    }
    .exec(&cluster.bins, Some(&node.ns));
    // portmap passes the previous result through.
    assert_eq!(
        result_ips(&chained.assert_ok().json_or_panic()),
        result_ips(&result)
    );
    let mut server = pod
        .ns
        .spawn(
            "nc",
            "sh",
            &["-c", "echo hello-from-pod | nc -l -p 8080 -q 1"],
            &std::env::temp_dir().join(format!("reef-pm-{}.log", std::process::id())),
        )
        .unwrap();
    let got = reef_lab::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || {
            node.ns
                .exec(&["sh", "-c", "nc -w 1 198.51.100.10 18080 </dev/null"])
                .ok()
                .filter(|out| out.contains("hello-from-pod"))
        },
    );
    assert!(got.is_some(), "host port 18080 did not reach the pod");
    server.stop();
    for (plugin, conf) in [
        ("portmap", &portmap),
        ("reef", &with_prev_result(&config, &result)),
    ] {
        Call {
            plugin,
            command: "DEL",
            container_id: "pm0",
            netns: Some(&path),
            ifname: "eth0",
            args: "",
            config: conf,
        }
        .exec(&cluster.bins, Some(&node.ns))
        .assert_ok();
    }
    cluster.assert_nothing_left(&[&node]);
}
