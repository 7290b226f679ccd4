//! Shared set-up of the CNI tests: one real etcd, node namespaces that reach it through a forwarder,
//! pods as network namespaces, and the plugin run exactly as a runtime runs it (environment + stdin,
//! inside the node's namespace).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube::api::ObjectMeta;
use reef_crds::workload::WorkloadEndpoint;
use reef_crds::{IPPool, IPPoolSpec, ReefNode, ReefNodeSpec};
use reef_datastore::{Datastore, EtcdConfig, Store};
use reef_ipam::{CheckInput, Ipam};
use reef_lab::etcd::EtcdServer;
use reef_lab::{Netns, NetnsForward};
use serde_json::{Value, json};

pub use reef_cni::invoke::{Answer, Call};

pub const POOL_V4: &str = "10.244.0.0/16";
pub const POOL_V6: &str = "fd00:244::/48";
/// Bound on one plugin run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The plugin binaries under the names runtimes call: `reef` and `reef-ipam` (links to reef-cni).
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    pub fn new() -> PluginDir {
        let dir = tempfile::Builder::new()
            .prefix("reef-cni-bin-")
            .tempdir()
            .expect("temp dir");
        let binary =
            reef_lab::binary("reef-cni").expect("reef-cni is built (cargo build -p reef-cni)");
        for name in ["reef", "reef-ipam"] {
            std::os::unix::fs::symlink(&binary, dir.path().join(name)).expect("symlink");
        }
        // The reference plugins, for chaining and for reef-ipam under ptp and bridge.
        for name in [
            "ptp",
            "bridge",
            "portmap",
            "bandwidth",
            "loopback",
            "host-local",
        ] {
            let reference = Path::new("/usr/lib/cni").join(name);
            if reference.exists() {
                std::os::unix::fs::symlink(&reference, dir.path().join(name)).expect("symlink");
            }
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The test's view of an answer: assertions on top of [`reef_cni::invoke::Answer`].
pub trait AnswerExt {
    /// stdout as JSON, or a panic that shows what the plugin printed.
    fn json_or_panic(&self) -> Value;
    /// The error code of a failed run (asserting it failed and printed the spec's error object).
    fn error_code(&self) -> u64;
    fn assert_ok(&self) -> &Self;
}

impl AnswerExt for Answer {
    fn json_or_panic(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn error_code(&self) -> u64 {
        assert!(!self.success, "expected a failure, got {}", self.stdout);
        let json = self.json_or_panic();
        assert!(
            json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {json}"))
    }

    fn assert_ok(&self) -> &Self {
        assert!(
            self.success,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `call` inside `node` (or the current namespace for `None`), bounded in time.
pub fn run(call: &Call, bins: &PluginDir, node: Option<&Netns>) -> Answer {
    call.run(bins.path(), node.map(Netns::name), PLUGIN_TIMEOUT)
        .expect("plugin runs")
}

/// Runs `cmd` with `stdin`, bounded in time.
pub fn run_with_stdin(cmd: Command, stdin: &[u8]) -> Answer {
    reef_cni::invoke::run_with_stdin(cmd, stdin, PLUGIN_TIMEOUT).expect("plugin runs")
}

/// A node: its namespace and the loopback endpoint of the cluster's etcd inside it.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub forward: NetnsForward,
    /// Where this node's plugin runs keep their IPAM lock (per node, as on a real host).
    pub lock_dir: tempfile::TempDir,
}

/// One etcd, a datastore client on it, and nodes.
pub struct Cluster {
    pub runtime: tokio::runtime::Runtime,
    pub etcd: EtcdServer,
    pub datastore: Datastore,
    pub bins: PluginDir,
}

impl Cluster {
    pub fn new() -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let etcd = EtcdServer::start().expect("etcd starts");
        let datastore = runtime
            .block_on(Datastore::etcd(EtcdConfig::new([etcd.endpoint()])))
            .expect("datastore");
        Cluster {
            runtime,
            etcd,
            datastore,
            bins: PluginDir::new(),
        }
    }

    /// A node namespace with its ReefNode registered.
    pub fn node(&self, name: &str, labels: &[(&str, &str)]) -> Node {
        let ns = Netns::new("cninode").expect("node namespace");
        let forward = self.etcd.forward_into(&ns).expect("etcd forwarder");
        let node = ReefNode {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: ReefNodeSpec::default(),
            status: None,
        };
        let nodes: Arc<dyn Store<ReefNode>> = self.datastore.store();
        self.runtime
            .block_on(nodes.create(&node))
            .expect("ReefNode created");
        Node {
            name: name.to_string(),
            ns,
            forward,
            lock_dir: tempfile::tempdir().expect("lock dir"),
        }
    }

    pub fn pool(&self, name: &str, cidr: &str, block_size: Option<u8>) {
        let pool = IPPool {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: IPPoolSpec {
                block_size,
                ..IPPoolSpec::new(cidr)
            },
        };
        let pools: Arc<dyn Store<IPPool>> = self.datastore.store();
        self.runtime
            .block_on(pools.create(&pool))
            .expect("IPPool created");
    }

    /// The configuration of the `reef` plugin on `node`, in `version`.
    pub fn config(&self, node: &Node, version: &str, dual_stack: bool) -> Value {
        let mut ipam = json!({"type": "reef-ipam", "ipv4Pools": [POOL_V4]});
        if dual_stack {
            ipam["ipv6Pools"] = json!([POOL_V6]);
        }
        json!({
            "cniVersion": version,
            "name": "reef-test",
            "type": "reef",
            "nodename": node.name,
            "datastore": {"type": "etcd", "etcdEndpoints": [node.forward.url()]},
            "ipamLockFile": node.lock_dir.path().join("ipam.lock"),
            "logLevel": "debug",
            "ipam": ipam,
        })
    }

    pub fn endpoints(&self) -> Vec<WorkloadEndpoint> {
        let store: Arc<dyn Store<WorkloadEndpoint>> = self.datastore.store();
        self.runtime
            .block_on(store.list(None))
            .expect("list endpoints")
            .0
    }

    /// Every address IPAM holds, and what `reefctl ipam check` would find wrong given the live
    /// endpoints' addresses.
    pub fn ipam_state(&self) -> (BTreeSet<IpAddr>, usize) {
        let in_use: BTreeSet<IpAddr> = self
            .endpoints()
            .iter()
            .flat_map(|e| e.spec.ip_networks.clone())
            .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
            .map(|n| n.addr())
            .collect();
        let ipam = Ipam::new(&self.datastore);
        let report = self
            .runtime
            .block_on(ipam.check(&CheckInput {
                in_use: Some(in_use),
                nodes: None,
            }))
            .expect("ipam check");
        let held = report_allocations(&self.runtime, &ipam);
        (held, report.problem_count())
    }

    /// Asserts nothing of any attachment is left: no endpoint, no held address, a clean check, and on
    /// each node no `reef*` link and no Reef route.
    pub fn assert_nothing_left(&self, nodes: &[&Node]) {
        assert!(
            self.endpoints().is_empty(),
            "endpoints left: {:?}",
            self.endpoints()
        );
        let (held, problems) = self.ipam_state();
        assert!(held.is_empty(), "addresses still held: {held:?}");
        assert_eq!(problems, 0, "ipam check found problems");
        for node in nodes {
            assert!(
                reef_links(&node.ns).is_empty(),
                "veths left on {}",
                node.name
            );
            let routes = node
                .ns
                .ip(&["route", "show", "proto", "82"])
                .unwrap_or_default()
                + &node
                    .ns
                    .ip(&["-6", "route", "show", "proto", "82"])
                    .unwrap_or_default();
            assert!(
                routes.trim().is_empty(),
                "routes left on {}: {routes}",
                node.name
            );
        }
    }
}

/// Every allocated address (from the blocks).
fn report_allocations(runtime: &tokio::runtime::Runtime, ipam: &Ipam) -> BTreeSet<IpAddr> {
    let blocks: Arc<dyn Store<reef_crds::IPAMBlock>> = ipam.datastore().store();
    let (all, _) = runtime.block_on(blocks.list(None)).expect("blocks");
    all.iter()
        .filter_map(|b| reef_ipam::convert::block_from_spec(&b.spec).ok())
        .flat_map(|b| b.allocated().map(|(ip, _)| ip).collect::<Vec<_>>())
        .collect()
}

/// The `reef*` links of a namespace.
pub fn reef_links(ns: &Netns) -> Vec<String> {
    let out = ns.ip(&["-j", "link", "show"]).unwrap_or_default();
    let links: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("reef"))
        .map(str::to_string)
        .collect()
}

/// A pod: a network namespace and its path for CNI_NETNS.
pub struct Pod {
    pub ns: Netns,
}

impl Pod {
    pub fn new() -> Pod {
        Pod {
            ns: Netns::new("cnipod").expect("pod namespace"),
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.ns.name())
    }
}

/// The addresses of an ADD result.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.parse::<ipnet::IpNet>().ok())
        .map(|n| n.addr())
        .collect()
}

/// `config` with `prevResult` set, as a runtime sends it to CHECK and DEL.
pub fn with_prev_result(config: &Value, result: &Value) -> Value {
    let mut c = config.clone();
    c["prevResult"] = result.clone();
    c
}

/// Labels map for node creation.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A busybox root file system for `ctr run --rootfs`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs dir");
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "sleep", "ping", "ping6", "ip", "nc", "cat", "echo", "true",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    root
}
