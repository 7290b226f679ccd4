//! reefd in node mode: three nodes in namespaces on one LAN with one real etcd, and an FRR "ToR" in a
//! fourth namespace. One topology, cases in sequence: the mesh comes up from resources alone; the
//! nodes' IPAM blocks reach the other nodes' kernels; a BGPPeer added, changed (filter: routes
//! re-evaluated, no reset; hold time: only that session reset) and deleted, live; a node labelled into
//! the peer's nodeSelector gets the session; a bad BGPPeer is reported on the ReefNode and ignored;
//! etcd stopped for 10 s changes nothing in the kernel and reefd catches up afterwards. Mesh sessions
//! keep their `since` through all of it (no reset).
//!
//! etcd runs in the root namespace on loopback; each node namespace reaches it through a relay this
//! test runs: a listener bound to the node namespace's own 127.0.0.1:2379 (made from a thread that
//! entered the namespace) forwarding to etcd. No address, route or link is added to the root namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::IpNet;
use reef_crds::bgp::BGPFilterSpec;
use reef_crds::node::BGPSessionState;
use reef_crds::{
    BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPPeer, BGPPeerSpec, IPPool, IPPoolSpec,
    ReefNode, ReefNodeStatus,
};
use reef_datastore::{Datastore, EtcdConfig};
use reef_ipam::Ipam;
use reef_lab::etcd::EtcdServer;
use reef_lab::{BgpConfig, BgpDaemon, Frr, Lan, Neighbor, Netns, Process, binary, require_root};

const AS: u32 = 64512;
const TOR_AS: u32 = 65001;
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Forwards connections to the node namespace's 127.0.0.1:2379 to etcd in the root namespace.
struct EtcdRelay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EtcdRelay {
    fn start(ns: &Netns, etcd: SocketAddr) -> EtcdRelay {
        let target = File::open(format!("/run/netns/{}", ns.name())).expect("netns file");
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns(2) on this thread only, with namespace files we hold open.
            let listener = unsafe {
                assert_eq!(libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET), 0);
                let listener = TcpListener::bind("127.0.0.1:2379");
                assert_eq!(libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET), 0);
                listener
            };
            let listener = match listener {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = bound_tx.send(Err(e.to_string()));
                    return;
                }
            };
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let _ = bound_tx.send(Ok(()));
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        // Connected from the root namespace (this thread is back there).
                        if let Ok(upstream) =
                            TcpStream::connect_timeout(&etcd, Duration::from_secs(1))
                        {
                            relay(client, upstream, stopping.clone());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("relay thread answers")
            .expect("relay listener bound");
        EtcdRelay {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EtcdRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Copies both ways until either side closes or the relay stops.
fn relay(client: TcpStream, upstream: TcpStream, stop: Arc<AtomicBool>) {
    for (mut from, mut to) in [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ]
    .into_iter()
    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16384];
            while !stop.load(Ordering::Relaxed) {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
}

struct Node {
    name: String,
    ns: Netns,
    address: IpAddr,
    block: IpNet,
    _relay: EtcdRelay,
    _reefd: Process,
}

fn net(text: &str) -> IpNet {
    text.parse().expect("test prefix")
}

struct Lab {
    rt: tokio::runtime::Runtime,
    ds: Datastore,
    etcd: EtcdServer,
    nodes: Vec<Node>,
    frr: Frr,
    tor: IpAddr,
    _lan: Lan,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn status(&self, node: &str) -> Option<ReefNodeStatus> {
        let store = self.ds.store::<ReefNode>();
        self.rt
            .block_on(store.get(None, node))
            .ok()
            .flatten()
            .and_then(|n| n.status)
    }

    /// Waits until `probe` holds for the node's status; panics with the status and reefd's log.
    fn wait_status(
        &self,
        node: usize,
        what: &str,
        probe: impl Fn(&ReefNodeStatus) -> bool,
    ) -> ReefNodeStatus {
        let name = &self.nodes[node].name;
        let found = reef_lab::wait_until(WAIT, POLL, || self.status(name).filter(|s| probe(s)));
        found.unwrap_or_else(|| self.fail(&format!("{name}: {what}")))
    }

    fn fail(&self, what: &str) -> ! {
        let mut text = format!("{what}\n");
        for node in &self.nodes {
            text += &format!("--- {} status: {:?}\n", node.name, self.status(&node.name));
            let log = std::fs::read_to_string(self._dir.path().join(format!("{}.log", node.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            text += "\n";
        }
        text += &self.frr.diagnostics();
        panic!("{text}");
    }

    /// `since` of every session of the node, by peer.
    fn sinces(&self, node: usize) -> BTreeMap<String, String> {
        self.status(&self.nodes[node].name)
            .map(|s| {
                s.sessions
                    .into_iter()
                    .map(|s| (s.peer, s.since.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The mesh sessions' `since` of every node.
    fn mesh_sinces(&self) -> Vec<BTreeMap<String, String>> {
        (0..self.nodes.len())
            .map(|n| {
                let mut all = self.sinces(n);
                all.retain(|peer, _| self.nodes.iter().any(|o| o.address.to_string() == *peer));
                all
            })
            .collect()
    }

    fn kernel_next_hop(&self, node: usize, prefix: IpNet) -> Option<IpAddr> {
        let route = self.nodes[node].ns.kernel_route(prefix, 254).ok()??;
        (route.protocol == "82").then(|| route.next_hops.into_iter().next())?
    }

    fn put<K: reef_datastore::Object>(&self, obj: K) {
        let store = self.ds.store::<K>();
        self.rt.block_on(async {
            let name = kube::ResourceExt::name_any(&obj);
            match store.get(None, &name).await.expect("get") {
                Some(current) => {
                    let mut new = obj.clone();
                    new.meta_mut().resource_version = current.meta().resource_version.clone();
                    new.meta_mut().labels = obj.meta().labels.clone();
                    store.update(&new).await.expect("update");
                }
                None => {
                    store.create(&obj).await.expect("create");
                }
            }
        });
    }

    fn delete<K: reef_datastore::Object>(&self, name: &str) {
        let store = self.ds.store::<K>();
        self.rt
            .block_on(store.delete(None, name, None))
            .expect("delete");
    }

    /// Adds a label to a ReefNode (compare-and-swap with reefd's own status writes).
    fn label(&self, node: usize, key: &str, value: &str) {
        let store = self.ds.store::<ReefNode>();
        self.rt.block_on(async {
            for _ in 0..20 {
                let mut current = store
                    .get(None, &self.nodes[node].name)
                    .await
                    .expect("get")
                    .expect("registered");
                current
                    .metadata
                    .labels
                    .get_or_insert_default()
                    .insert(key.into(), value.into());
                if store.update(&current).await.is_ok() {
                    return;
                }
            }
            panic!("cannot label the node");
        });
    }

    fn frr_routes(&self, node: usize) -> std::collections::BTreeSet<IpNet> {
        self.frr
            .routes_from(self.nodes[node].address)
            .unwrap_or_default()
    }
}

fn tor_peer(lab: &Lab, filters: &[&str], hold: Option<&str>) -> BGPPeer {
    let spec: BGPPeerSpec = serde_json::from_value(serde_json::json!({
        "peerIP": lab.tor.to_string(),
        "asNumber": TOR_AS,
        "nodeSelector": "rack == 'r1'",
        "filters": filters,
        "holdTime": hold,
    }))
    .expect("BGPPeer spec");
    BGPPeer::new("tor", spec)
}

fn start() -> Lab {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let etcd = EtcdServer::start().expect("etcd starts");
    let etcd_addr: SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("etcd address");
    let ds = rt
        .block_on(Datastore::etcd(EtcdConfig::new([etcd.endpoint()])))
        .expect("etcd client");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("agl").expect("lan");
    let tor_ns = Netns::new("agtor").expect("netns");
    let tor_end = lan.attach(&tor_ns).expect("attach");

    // Cluster resources first: BGP configuration, a pool and one block per node.
    rt.block_on(async {
        ds.store::<BGPConfiguration>()
            .create(&BGPConfiguration::new(
                "default",
                BGPConfigurationSpec {
                    as_number: Some(AS),
                    ..BGPConfigurationSpec::default()
                },
            ))
            .await
            .expect("BGPConfiguration");
        let pool: IPPoolSpec =
            serde_json::from_value(serde_json::json!({"cidr": "10.70.0.0/16"})).expect("pool spec");
        ds.store::<IPPool>()
            .create(&IPPool::new("pool", pool))
            .await
            .expect("IPPool");
    });
    let ipam = Ipam::new(&ds);
    let reefd = binary("reefd").expect("reefd built");
    let mut nodes = Vec::new();
    for n in 1..=3u8 {
        let name = format!("node{n}");
        let ns = Netns::new(&format!("ag{n}")).expect("netns");
        let end = lan.attach(&ns).expect("attach");
        let block = net(&format!("10.70.{n}.0/26"));
        rt.block_on(ipam.claim_affinity(&name, block))
            .expect("claim affinity");
        let relay = EtcdRelay::start(&ns, etcd_addr);
        let socket = dir.path().join(format!("{name}.sock"));
        let log = dir.path().join(format!("{name}.log"));
        let subnet = format!(
            "cidr={}/24",
            Ipv4Addr::from(u32::from(end.v4) & 0xffff_ff00)
        );
        let process = ns
            .spawn(
                &name,
                &reefd,
                &[
                    "--node-name",
                    &name,
                    "--datastore",
                    "etcd",
                    "--etcd-endpoints",
                    "http://127.0.0.1:2379",
                    "--ip-autodetection-method",
                    &subnet,
                    "--admin-socket",
                    &socket.to_string_lossy(),
                ],
                &log,
            )
            .expect("reefd starts");
        nodes.push(Node {
            name,
            ns,
            address: end.v4.into(),
            block,
            _relay: relay,
            _reefd: process,
        });
    }
    let mut tor = BgpConfig::new(TOR_AS, &tor_end);
    for node in &nodes {
        tor = tor.neighbor(Neighbor::new(node.address, AS));
    }
    let frr = Frr::start(tor_ns, tor).expect("FRR starts");
    Lab {
        rt,
        ds,
        etcd,
        nodes,
        frr,
        tor: tor_end.v4.into(),
        _lan: lan,
        _dir: dir,
    }
}

fn established(status: &ReefNodeStatus, peer: &str) -> bool {
    status
        .sessions
        .iter()
        .any(|s| s.peer == peer && s.state == BGPSessionState::Established)
}

#[test]
#[ignore = "needs root: network namespaces, etcd, FRR and reefd in node mode"]
fn node_mode_applies_resources_live_without_resetting_other_sessions() {
    require_root();
    let mut lab = start();
    let addresses: Vec<String> = lab.nodes.iter().map(|n| n.address.to_string()).collect();
    let tor = lab.tor.to_string();

    // 1. The mesh comes up from resources alone; every node registered its autodetected address.
    for n in 0..3 {
        let others: Vec<&String> = addresses.iter().filter(|a| **a != addresses[n]).collect();
        lab.wait_status(n, "mesh Established", |s| {
            others.iter().all(|peer| established(s, peer))
        });
        let node = lab
            .rt
            .block_on(lab.ds.store::<ReefNode>().get(None, &lab.nodes[n].name))
            .unwrap()
            .unwrap();
        assert_eq!(
            node.spec.bgp.unwrap().ipv4_address,
            Some(format!("{}/24", addresses[n]))
        );
    }
    // 2. Each node's block is in the other nodes' kernels, via the owner's address.
    for n in 0..3 {
        for other in 0..3 {
            if n == other {
                continue;
            }
            let block = lab.nodes[other].block;
            let hop = reef_lab::wait_until(WAIT, POLL, || {
                lab.kernel_next_hop(n, block)
                    .filter(|h| *h == lab.nodes[other].address)
            });
            if hop.is_none() {
                lab.fail(&format!("{block} not in node{}'s kernel", n + 1));
            }
        }
    }
    let mesh = lab.mesh_sinces();

    // 3. A BGPPeer for the nodes labelled rack=r1: node1 gets the session, node2 not.
    lab.label(0, "rack", "r1");
    lab.put(tor_peer(&lab, &[], None));
    let with_tor = lab.wait_status(0, "ToR session Established", |s| established(s, &tor));
    let tor_since = with_tor
        .sessions
        .iter()
        .find(|s| s.peer == tor)
        .and_then(|s| s.since.clone());
    let all_blocks: std::collections::BTreeSet<IpNet> = lab.nodes.iter().map(|n| n.block).collect();
    if reef_lab::wait_until(WAIT, POLL, || {
        (lab.frr_routes(0) == all_blocks).then_some(())
    })
    .is_none()
    {
        lab.fail(&format!("FRR has {:?} from node1", lab.frr_routes(0)));
    }
    assert!(!lab.sinces(1).contains_key(&tor), "node2 is not in rack r1");

    // 4. A filter on the BGPPeer: node1's own block is no longer exported; no session reset.
    let filter: BGPFilterSpec = serde_json::from_value(serde_json::json!({
        "exportV4": [{"cidr": lab.nodes[0].block.to_string(), "matchOperator": "Equal", "action": "Reject"}]
    }))
    .unwrap();
    lab.put(BGPFilter::new("no-node1", filter));
    lab.put(tor_peer(&lab, &["no-node1"], None));
    let without_own: std::collections::BTreeSet<IpNet> = all_blocks
        .iter()
        .copied()
        .filter(|b| *b != lab.nodes[0].block)
        .collect();
    if reef_lab::wait_until(WAIT, POLL, || {
        (lab.frr_routes(0) == without_own).then_some(())
    })
    .is_none()
    {
        lab.fail(&format!(
            "filter not applied: FRR has {:?}",
            lab.frr_routes(0)
        ));
    }
    let after_filter = lab.sinces(0);
    assert_eq!(
        after_filter.get(&tor),
        tor_since.as_ref(),
        "the filter reset the ToR session"
    );

    // 5. A session setting (hold time): only the ToR session starts again.
    lab.put(tor_peer(&lab, &["no-node1"], Some("30s")));
    lab.wait_status(0, "ToR session reset and Established again", |s| {
        s.sessions.iter().any(|x| {
            x.peer == tor && x.state == BGPSessionState::Established && x.since != tor_since
        })
    });

    // 6. node2 labelled into the selector gets the session too.
    lab.label(1, "rack", "r1");
    lab.wait_status(1, "ToR session on node2", |s| established(s, &tor));

    // 7. A bad BGPPeer is reported and ignored.
    let bad: BGPPeerSpec =
        serde_json::from_value(serde_json::json!({"peerIP": "198.51.100.300", "asNumber": 65009}))
            .unwrap();
    lab.put(BGPPeer::new("bad", bad));
    lab.wait_status(2, "the bad BGPPeer reported", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("BGPPeer/bad") && e.contains("peerIP"))
    });

    // 8. The BGPPeer deleted: the ToR sessions go, the mesh stays.
    lab.delete::<BGPPeer>("tor");
    for n in 0..2 {
        lab.wait_status(n, "ToR session removed", |s| {
            s.sessions.iter().all(|x| x.peer != tor)
        });
    }
    assert_eq!(lab.mesh_sinces(), mesh, "a mesh session was reset");

    // 9. etcd down for 10 s: the kernel keeps every route; afterwards a new block is picked up.
    let before: Vec<Option<IpAddr>> = (0..3)
        .map(|n| lab.kernel_next_hop(n, lab.nodes[(n + 1) % 3].block))
        .collect();
    lab.etcd.stop();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let now: Vec<Option<IpAddr>> = (0..3)
            .map(|n| lab.kernel_next_hop(n, lab.nodes[(n + 1) % 3].block))
            .collect();
        assert_eq!(now, before, "a kernel route changed while etcd was down");
    }
    lab.etcd.start_again().expect("etcd starts again");
    let extra = net("10.70.3.64/26");
    let ipam = Ipam::new(&lab.ds);
    lab.rt
        .block_on(async {
            // The client reconnects by itself; the first calls may still fail.
            for _ in 0..20 {
                if ipam.claim_affinity("node3", extra).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err("cannot claim a block after etcd restarted")
        })
        .expect("claim after restart");
    if reef_lab::wait_until(WAIT, POLL, || {
        lab.kernel_next_hop(0, extra)
            .filter(|h| *h == lab.nodes[2].address)
    })
    .is_none()
    {
        lab.fail("the block claimed after the outage is not in node1's kernel");
    }
    assert_eq!(lab.mesh_sinces(), mesh, "a mesh session was reset");
}
