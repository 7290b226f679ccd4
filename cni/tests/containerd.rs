//! reef-cni driven by a real container runtime: containerd with `ctr run --cni --rootfs`, busybox
//! containers on two simulated nodes (lab namespaces, one etcd), the conflist chaining the reference
//! `portmap` and `bandwidth` plugins as the installer writes it. Each container gets a Reef address
//! (IPv4 and IPv6), reaches its node and the other node's container over a static route between the
//! nodes, and once removed its veth, route, endpoint and addresses are gone.
//!
//! ctr reads its CNI configuration from /etc/cni/net.d and its plugins from /opt/cni/bin: each node's
//! ctr runs in a private mount namespace where those two directories are bind mounts of the node's own
//! temporary directories, so nothing of the machine's is read or changed.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reef_lab::{Process, veth, wait_until};
use support::{Cluster, Node};

const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// One containerd for the test, its state and sockets in a temporary directory. It runs in this
/// process's namespaces: `ip netns exec` remounts /sys, which hides the cgroup file system runc needs,
/// and containerd itself makes no link, address or route (the CRI plugin, which would, is disabled;
/// each container's network namespace is created by runc and wired by the CNI plugin in its node).
struct Containerd {
    process: Process,
    dir: tempfile::TempDir,
    namespace: String,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("reef-containerd-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = dir.path().join("containerd.sock").display(),
                ttrpc = dir.path().join("containerd.ttrpc.sock").display(),
            ),
        )
        .expect("containerd config");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let process = Process::spawn("containerd", cmd, &dir.path().join("containerd.log"))
            .expect("containerd starts");
        let socket = dir.path().join("containerd.sock");
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            socket.exists().then_some(())
        })
        .expect("containerd socket appears");
        Containerd {
            process,
            dir,
            namespace: format!("reef-test-{}", std::process::id()),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// The output of `ctr run` for container `id`, for failure messages.
    fn run_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.process.stop();
    }
}

/// The node's CNI directories, bind-mounted over the standard ones for its ctr only.
struct NodeRuntime {
    conf_dir: tempfile::TempDir,
    bin_dir: tempfile::TempDir,
}

impl NodeRuntime {
    /// Installs reef as the DaemonSet's installer does (`reef-cni install`), plus the reference plugins
    /// the conflist chains.
    fn install(node: &Node) -> NodeRuntime {
        let conf_dir = tempfile::tempdir().expect("conf dir");
        let bin_dir = tempfile::tempdir().expect("bin dir");
        let reef_cni = reef_lab::binary("reef-cni").expect("reef-cni built");
        let output = Command::new(&reef_cni)
            .args(["install", "--bin-dir"])
            .arg(bin_dir.path())
            .arg("--conf-dir")
            .arg(conf_dir.path())
            .args(["--network-name", "reef-test", "--node-name", &node.name])
            .args(["--etcd-endpoints", &node.forward.url()])
            .args([
                "--ipv4-pools",
                support::POOL_V4,
                "--ipv6-pools",
                support::POOL_V6,
            ])
            .arg("--log-file")
            .arg(conf_dir.path().join("cni.log"))
            .output()
            .expect("reef-cni install runs");
        assert!(
            output.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The IPAM lock of this node.
        let conflist = conf_dir.path().join("10-reef.conflist");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
        json["plugins"][0]["ipamLockFile"] = node.lock_dir.path().join("ipam.lock").to_str().into();
        std::fs::write(&conflist, json.to_string()).unwrap();
        for plugin in ["portmap", "bandwidth", "loopback"] {
            std::os::unix::fs::symlink(
                Path::new("/usr/lib/cni").join(plugin),
                bin_dir.path().join(plugin),
            )
            .expect("reference plugin link");
        }
        // The mount points must exist; they are the standard, empty-by-default CNI directories.
        for dir in ["/etc/cni/net.d", "/opt/cni/bin"] {
            std::fs::create_dir_all(dir).expect("CNI directory");
        }
        NodeRuntime { conf_dir, bin_dir }
    }

    /// A shell line that runs `ctr ...` in the node's namespace with its own CNI directories.
    fn ctr_command(&self, node: &Node, containerd: &Containerd, ctr_args: &str) -> Command {
        let script = format!(
            "mount --bind {conf} /etc/cni/net.d && mount --bind {bin} /opt/cni/bin && exec ctr --address {sock} --namespace {ns} {ctr_args}",
            conf = self.conf_dir.path().display(),
            bin = self.bin_dir.path().display(),
            sock = containerd.socket().display(),
            ns = containerd.namespace,
        );
        let mut cmd = node.ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        cmd
    }
}

/// A running container: `ctr run --rm --cni` in the background (it calls CNI DEL when the task ends).
struct Container {
    id: String,
    run: Process,
}

fn start_container(
    node: &Node,
    runtime: &NodeRuntime,
    containerd: &Containerd,
    rootfs: &Path,
    id: &str,
) -> Container {
    let mut cmd = runtime.ctr_command(
        node,
        containerd,
        &format!(
            "run --rm --cni --rootfs {} {id} /bin/sleep 120",
            rootfs.display()
        ),
    );
    cmd.stdin(std::process::Stdio::null());
    let log = containerd.dir.path().join(format!("{id}.log"));
    let run = Process::spawn(id, cmd, &log).expect("ctr run starts");
    Container {
        id: id.to_string(),
        run,
    }
}

/// Runs `args` inside the container; `Err` carries what it printed.
fn exec_in(
    containerd: &Containerd,
    container: &Container,
    exec_id: &str,
    args: &[&str],
) -> Result<(), String> {
    let mut cmd = containerd.ctr();
    cmd.args(["task", "exec", "--exec-id", exec_id, &container.id]);
    cmd.args(args);
    match reef_lab::run_bounded(&mut cmd, CTR_TIMEOUT) {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The addresses of the endpoint of a container (ctr names it `<namespace>-<id>`).
fn addresses_of(cluster: &Cluster, containerd: &Containerd, id: &str) -> Option<Vec<IpAddr>> {
    let full_id = format!("{}-{id}", containerd.namespace);
    cluster
        .endpoints()
        .into_iter()
        .find(|e| e.spec.container_id == full_id)
        .map(|e| {
            e.spec
                .ip_networks
                .iter()
                .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
                .map(|n| n.addr())
                .collect()
        })
}

#[test]
#[ignore = "needs root: network namespaces, containerd"]
fn containers_on_two_nodes_get_reef_addresses_and_talk() {
    let cluster = Cluster::new();
    cluster.pool("v4", support::POOL_V4, None);
    cluster.pool("v6", support::POOL_V6, None);
    let node_a = cluster.node("node-a", &[]);
    let node_b = cluster.node("node-b", &[]);
    let link = veth(&node_a.ns, &node_b.ns).expect("underlay link");
    // Until felix and the agent route blocks, a static route per node covers the other's pods (the
    // node's own pods have more specific /32 and /128 routes).
    for (node, via4, via6) in [
        (&node_a, link.b.v4.to_string(), link.b.v6.to_string()),
        (&node_b, link.a.v4.to_string(), link.a.v6.to_string()),
    ] {
        node.ns.enable_forwarding().unwrap();
        node.ns
            .ip(&["route", "add", support::POOL_V4, "via", &via4])
            .unwrap();
        node.ns
            .ip(&["-6", "route", "add", support::POOL_V6, "via", &via6])
            .unwrap();
    }
    let containerd = Containerd::start();
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = support::busybox_rootfs(scratch.path());
    let runtime_a = NodeRuntime::install(&node_a);
    let runtime_b = NodeRuntime::install(&node_b);

    let mut a = start_container(&node_a, &runtime_a, &containerd, &rootfs, "web-a");
    let mut b = start_container(&node_b, &runtime_b, &containerd, &rootfs, "web-b");
    let ips_a = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        addresses_of(&cluster, &containerd, "web-a")
    })
    .unwrap_or_else(|| {
        panic!(
            "container web-a got no endpoint; ctr run said:\n{}",
            containerd.run_log("web-a")
        )
    });
    let ips_b = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        addresses_of(&cluster, &containerd, "web-b")
    })
    .expect("container web-b got an endpoint");
    assert_eq!(ips_a.len(), 2, "dual stack: {ips_a:?}");
    assert_eq!(ips_b.len(), 2, "dual stack: {ips_b:?}");
    // The task may still be starting after CNI ADD returned.
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        exec_in(&containerd, &a, "ready-a", &["/bin/true"]).ok()
    })
    .expect("container web-a runs");
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        exec_in(&containerd, &b, "ready-b", &["/bin/true"]).ok()
    })
    .expect("container web-b runs");

    let ping = |container: &Container, exec_id: &str, target: IpAddr| {
        let program = if target.is_ipv4() {
            "/bin/ping"
        } else {
            "/bin/ping6"
        };
        exec_in(
            &containerd,
            container,
            exec_id,
            &[program, "-c", "2", "-W", "2", &target.to_string()],
        )
    };
    if let Err(e) = ping(&a, "p1", link.a.v4.into()) {
        panic!("web-a cannot reach its node: {e}");
    }
    if let Err(e) = ping(&a, "p2", ips_b[0]) {
        panic!("web-a cannot reach web-b over IPv4: {e}");
    }
    if let Err(e) = ping(&b, "p3", ips_a[0]) {
        panic!("web-b cannot reach web-a over IPv4: {e}");
    }
    if let Err(e) = ping(&a, "p4", ips_b[1]) {
        panic!("web-a cannot reach web-b over IPv6: {e}");
    }
    if let Err(e) = ping(&b, "p5", ips_a[1]) {
        panic!("web-b cannot reach web-a over IPv6: {e}");
    }
    assert_eq!(support::reef_links(&node_a.ns).len(), 1);
    assert_eq!(support::reef_links(&node_b.ns).len(), 1);

    // Removing the containers: ctr calls CNI DEL when the task ends.
    for (container, runtime, node) in [(&mut a, &runtime_a, &node_a), (&mut b, &runtime_b, &node_b)]
    {
        let mut kill = runtime.ctr_command(
            node,
            &containerd,
            &format!("task kill -s KILL {}", container.id),
        );
        reef_lab::run_bounded(&mut kill, CTR_TIMEOUT).expect("ctr task kill");
        let status = container
            .run
            .wait_timeout(CTR_TIMEOUT)
            .expect("ctr run ends");
        assert!(
            status.is_some(),
            "ctr run did not end after the task was killed"
        );
    }
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        cluster.endpoints().is_empty().then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "endpoints not removed; ctr run said:\n{}\n{}",
            containerd.run_log("web-a"),
            containerd.run_log("web-b")
        )
    });
    cluster.assert_nothing_left(&[&node_a, &node_b]);
}
