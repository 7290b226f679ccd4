//! Felix's dataplane on the real kernel: nodes are network namespaces (one LAN, or two subnets behind
//! a router namespace), pods are namespaces wired as reef-cni wires them (`reef_lab::Pod`), one
//! `Dataplane` per node. Traffic decides: ping and a TCP transfer between every ordered pair of pods,
//! IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reef_crds::VxlanMode;
use reef_crds::workload::{HOST_INTERFACE_MAC, host_interface_name};
use reef_felix::{
    Block, Dataplane, DataplaneConfig, Endpoint, LearnedRoute, Mac, Model, Node, Pool, Tunnel,
    VXLAN_DEVICE,
};
use reef_lab::{Lan, LinkEnd, Netns, Pod, require_root, veth};

/// A LAN for nodes. Multicast snooping off: nodes join their solicited-node groups before their
/// bridge port is up, so a snooping bridge would hold back the first IPv6 neighbour solicitations.
fn lan() -> Lan {
    let lan = Lan::new("fxlan").unwrap();
    lan.switch()
        .ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])
        .unwrap();
    lan
}

/// A node namespace, its model node and its pods.
struct Host {
    pods: Vec<Pod>,
    node: Node,
    underlay: String,
    ns: Netns,
}

fn block_v4(i: u8) -> IpNet {
    IpNet::new(IpAddr::from([10, 65, i, 0]), 26).unwrap()
}

fn block_v6(i: u8) -> IpNet {
    IpNet::new(
        IpAddr::from(Ipv6Addr::new(0xfd00, 0x65, 0, u16::from(i), 0, 0, 0, 0)),
        122,
    )
    .unwrap()
}

fn tunnel_mac(i: u8) -> Mac {
    Mac([0x66, 0, 0, 0, 0, i])
}

/// Node `i` with `pods` pods, its underlay on `end` (a /24 and a /64).
fn host(ns: Netns, i: u8, end: &LinkEnd, pods: u8) -> Host {
    let node = Node {
        name: format!("node{i}"),
        ipv4: Some(Ipv4Net::new(end.v4, 24).unwrap()),
        ipv6: Some(Ipv6Net::new(end.v6, 64).unwrap()),
        tunnel: Some(Tunnel {
            address: Ipv4Addr::new(10, 65, i, 1),
            mac: tunnel_mac(i),
        }),
    };
    let pods = (0..pods)
        .map(|k| {
            let name = format!("{}-pod{k}", ns.name());
            let interface = host_interface_name(Some(("default", &name)), "");
            Pod::wire(
                &ns,
                "fxpod",
                &interface,
                HOST_INTERFACE_MAC,
                Ipv4Addr::new(10, 65, i, k + 2),
                Ipv6Addr::new(0xfd00, 0x65, 0, u16::from(i), 0, 0, 0, u16::from(k) + 2),
            )
            .unwrap()
        })
        .collect();
    Host {
        pods,
        node,
        underlay: end.ifname.clone(),
        ns,
    }
}

/// Node `this`'s model: every node, both pools in `mode`, every node's blocks, its own pods; in
/// `Never` mode the other nodes' blocks arrive as routes learned by BGP via their addresses.
fn model(hosts: &[Host], this: usize, mode: VxlanMode) -> Model {
    let mut model = Model::new(hosts[this].node.clone());
    model.nodes = hosts.iter().map(|host| host.node.clone()).collect();
    model.pools = ["10.65.0.0/16", "fd00:65::/48"]
        .into_iter()
        .map(|cidr| Pool {
            cidr: cidr.parse().unwrap(),
            vxlan_mode: mode,
            nat_outgoing: false,
            disabled: false,
        })
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        let i = i as u8;
        for cidr in [block_v4(i), block_v6(i)] {
            model.blocks.push(Block {
                cidr,
                node: host.node.name.clone(),
            });
            if mode == VxlanMode::Never && i as usize != this {
                model.learned_routes.push(LearnedRoute {
                    prefix: cidr,
                    next_hops: vec![host.node.address(cidr.addr().is_ipv4()).unwrap()],
                });
            }
        }
    }
    model.endpoints = hosts[this]
        .pods
        .iter()
        .map(|pod| Endpoint {
            interface: pod.host_interface.clone(),
            ips: pod.addresses().to_vec(),
            mac: None,
        })
        .collect();
    model
}

fn dataplane(ns: &Netns) -> Dataplane {
    Dataplane::open(DataplaneConfig {
        netns: Some(format!("/run/netns/{}", ns.name()).into()),
        ..DataplaneConfig::default()
    })
    .unwrap()
}

/// Applies every node's model and checks that it went through cleanly.
fn apply(hosts: &[Host], dataplanes: &mut [Dataplane], mode: VxlanMode) {
    for (i, dataplane) in dataplanes.iter_mut().enumerate() {
        let report = dataplane.apply(model(hosts, i, mode)).unwrap();
        assert!(report.failures.is_empty(), "node{i}: {:?}", report.failures);
        assert!(report.problems.is_empty(), "node{i}: {:?}", report.problems);
        assert_eq!(report.unresolved, 0, "node{i}");
    }
}

/// Ping and a TCP transfer from every pod to every other pod, each address family.
fn all_pairs(hosts: &[Host]) {
    let pods: Vec<&Pod> = hosts.iter().flat_map(|host| &host.pods).collect();
    let mut failures = Vec::new();
    let mut port = 7000;
    for src in &pods {
        for dst in &pods {
            if src.ns.name() == dst.ns.name() {
                continue;
            }
            for addr in dst.addresses() {
                let what = format!("{} -> {} {addr}", src.ns.name(), dst.ns.name());
                if !src.ping(addr) {
                    failures.push(format!("ping {what}"));
                }
                port += 1;
                match src.tcp_send(dst, addr, port, 1, Duration::ZERO, Duration::from_secs(10)) {
                    Ok(65536) => {}
                    other => failures.push(format!("tcp {what}: {other:?}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The namespace's routes (every table, both families), VXLAN neighbours and FDB, as text.
fn snapshot(ns: &Netns) -> String {
    let mut text = ns.ip(&["-d", "route", "show", "table", "all"]).unwrap();
    text += &ns
        .ip(&["-6", "-d", "route", "show", "table", "all"])
        .unwrap();
    text += &ns
        .ip(&["neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"])
        .unwrap();
    text += &ns
        .ip(&[
            "-6",
            "neigh",
            "show",
            "dev",
            VXLAN_DEVICE,
            "nud",
            "permanent",
        ])
        .unwrap();
    text += &ns
        .exec(&["bridge", "fdb", "show", "dev", VXLAN_DEVICE])
        .unwrap();
    text += &ns.ip(&["-d", "link", "show", VXLAN_DEVICE]).unwrap();
    text
}

fn route(ns: &Netns, prefix: IpNet) -> Option<reef_lab::KernelRoute> {
    ns.kernel_route(prefix, 254).unwrap()
}

/// Two nodes on one LAN (node0 with two pods, node1 with one): routed with BGP-learned routes,
/// then VXLAN Always; a dataplane restart during a long TCP transfer; drift repaired; foreign
/// routes and devices and not-yet-known pod routes left alone.
#[test]
#[ignore = "needs root: network namespaces"]
fn one_subnet_routed_then_vxlan_restart_and_drift() {
    require_root();
    let mut lan = lan();
    let mut hosts = Vec::new();
    for (i, pods) in [(0u8, 2u8), (1, 1)] {
        let ns = Netns::new(&format!("fxn{i}")).unwrap();
        let end = lan.attach(&ns).unwrap();
        // Proxy ARP answers for the pods' gateway only if the node routes it (real nodes have a
        // default route).
        ns.ip(&["route", "add", "default", "dev", &end.ifname])
            .unwrap();
        hosts.push(host(ns, i, &end, pods));
    }
    let mut dataplanes: Vec<Dataplane> = hosts.iter().map(|host| dataplane(&host.ns)).collect();

    // Routed: remote blocks via the node addresses, as BGP learned them.
    apply(&hosts, &mut dataplanes, VxlanMode::Never);
    let learned = route(&hosts[0].ns, block_v4(1)).expect("node1's block");
    assert_eq!(learned.protocol, "82");
    assert_eq!(
        learned.next_hops.into_iter().collect::<Vec<_>>(),
        vec![IpAddr::V4(hosts[1].node.ipv4.unwrap().addr())]
    );
    assert_eq!(
        route(&hosts[0].ns, block_v4(0)).unwrap().protocol,
        "82",
        "the local block's blackhole"
    );
    assert!(hosts[0].ns.ip(&["link", "show", VXLAN_DEVICE]).is_err());
    all_pairs(&hosts);

    // VXLAN Always: the learned routes go, the device and the tunnel routes come.
    apply(&hosts, &mut dataplanes, VxlanMode::Always);
    let link = hosts[0]
        .ns
        .ip(&["-d", "link", "show", VXLAN_DEVICE])
        .unwrap();
    for expected in [
        "mtu 1450",
        "vxlan id 4096",
        "dstport 4789",
        "nolearning",
        "66:00:00:00:00:00",
    ] {
        assert!(link.contains(expected), "{expected} in {link}");
    }
    assert_eq!(route(&hosts[0].ns, block_v4(1)).unwrap().dev, VXLAN_DEVICE);
    assert_eq!(route(&hosts[0].ns, block_v6(1)).unwrap().dev, VXLAN_DEVICE);
    all_pairs(&hosts);

    // Restart node0's dataplane during a transfer: nothing is written, nothing changes, the
    // transfer completes.
    let chunks = 40;
    std::thread::scope(|scope| {
        let (src, dst) = (&hosts[0].pods[0], &hosts[1].pods[0]);
        let transfer = scope.spawn(move || {
            src.tcp_send(
                dst,
                IpAddr::V4(dst.v4),
                6999,
                chunks,
                Duration::from_millis(50),
                Duration::from_secs(30),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let before = snapshot(&hosts[0].ns);
        drop(dataplanes.remove(0));
        dataplanes.insert(0, dataplane(&hosts[0].ns));
        let report = dataplanes[0]
            .apply(model(&hosts, 0, VxlanMode::Always))
            .unwrap();
        assert_eq!(report.writes, 0, "a restart rewrote something: {report:?}");
        assert_eq!(before, snapshot(&hosts[0].ns));
        assert_eq!(
            transfer.join().unwrap().unwrap(),
            u64::from(chunks) * 65536,
            "the transfer lost bytes"
        );
    });

    // Drift on node0.
    let ns = &hosts[0].ns;
    let underlay = &hosts[0].underlay;
    let node1 = hosts[1].node.ipv4.unwrap().addr().to_string();
    ns.ip(&["route", "del", &block_v4(1).to_string()]).unwrap();
    let mac1 = tunnel_mac(1).to_string();
    ns.exec(&[
        "bridge",
        "fdb",
        "del",
        &mac1,
        "dev",
        VXLAN_DEVICE,
        "dst",
        &node1,
    ])
    .unwrap();
    // Another owner's route and device.
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        underlay,
        "proto",
        "static",
    ])
    .unwrap();
    ns.ip(&["link", "add", "foreign0", "type", "bridge"])
        .unwrap();
    // A pod the CNI plugin has just wired, not yet in the model; and a stale Reef route.
    ns.ip(&[
        "link",
        "add",
        "reefgrace0000a",
        "type",
        "veth",
        "peer",
        "name",
        "grace0b",
    ])
    .unwrap();
    ns.ip(&["link", "set", "reefgrace0000a", "up"]).unwrap();
    ns.ip(&[
        "route",
        "add",
        "10.65.0.40/32",
        "dev",
        "reefgrace0000a",
        "proto",
        "82",
    ])
    .unwrap();
    ns.ip(&[
        "route",
        "add",
        "10.65.9.0/24",
        "dev",
        underlay,
        "proto",
        "82",
    ])
    .unwrap();
    let report = dataplanes[0].resync().unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.held_back, 1);
    assert_eq!(route(ns, block_v4(1)).unwrap().dev, VXLAN_DEVICE);
    let fdb = ns
        .exec(&["bridge", "fdb", "show", "dev", VXLAN_DEVICE])
        .unwrap();
    assert!(fdb.contains(&format!("{mac1} dst {node1}")), "{fdb}");
    assert_eq!(
        route(ns, "203.0.113.0/24".parse().unwrap())
            .unwrap()
            .protocol,
        "static"
    );
    assert!(ns.ip(&["link", "show", "foreign0"]).is_ok());
    assert!(
        route(ns, "10.65.0.40/32".parse().unwrap()).is_some(),
        "deleted within the grace period"
    );
    assert!(
        route(ns, "10.65.9.0/24".parse().unwrap()).is_none(),
        "stale Reef route kept"
    );
    assert!(hosts[0].pods[0].ping(IpAddr::V4(hosts[1].pods[0].v4)));
}

/// Three nodes, VXLAN CrossSubnet: node0 and node1 share a LAN (routed directly), node2 is on
/// another subnet behind a router namespace (VXLAN).
#[test]
#[ignore = "needs root: network namespaces"]
fn cross_subnet_three_nodes() {
    require_root();
    let router = Netns::new("fxrtr").unwrap();
    router.enable_forwarding().unwrap();
    let mut lan = lan();
    let router_lan = lan.attach(&router).unwrap();
    let mut hosts = Vec::new();
    for i in 0..2u8 {
        let ns = Netns::new(&format!("fxn{i}")).unwrap();
        let end = lan.attach(&ns).unwrap();
        ns.ip(&["route", "add", "default", "via", &router_lan.v4.to_string()])
            .unwrap();
        hosts.push(host(ns, i, &end, 1));
    }
    let ns = Netns::new("fxn2").unwrap();
    let link = veth(&ns, &router).unwrap();
    ns.ip(&["route", "add", "default", "via", &link.b.v4.to_string()])
        .unwrap();
    hosts.push(host(ns, 2, &link.a, 1));

    let mut dataplanes: Vec<Dataplane> = hosts.iter().map(|host| dataplane(&host.ns)).collect();
    apply(&hosts, &mut dataplanes, VxlanMode::CrossSubnet);
    let ns0 = &hosts[0].ns;
    let direct = route(ns0, block_v4(1)).unwrap();
    assert_eq!(direct.dev, hosts[0].underlay);
    assert_eq!(
        direct.next_hops.into_iter().collect::<Vec<_>>(),
        vec![IpAddr::V4(hosts[1].node.ipv4.unwrap().addr())]
    );
    assert_eq!(route(ns0, block_v6(1)).unwrap().dev, hosts[0].underlay);
    assert_eq!(route(ns0, block_v4(2)).unwrap().dev, VXLAN_DEVICE);
    assert_eq!(route(ns0, block_v6(2)).unwrap().dev, VXLAN_DEVICE);
    all_pairs(&hosts);
}
