//! Allocator processes (the `ipam-worker` binary, one per simulated node) against a real etcd on loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::add_pool;
use ipnet::IpNet;
use reef_datastore::{Datastore, EtcdConfig};
use reef_ipam::{AutoAssignArgs, CheckInput, Ipam};
use reef_lab::etcd::EtcdServer;
use serde_json::json;

/// Upper bound for any phase of these tests; they finish far earlier unless something hangs.
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);

struct Worker {
    node: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Only on failure paths is it still running; stop it by its own pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line printed by worker `index`.
struct Line {
    index: usize,
    text: String,
}

fn spawn_workers(
    endpoint: &str,
    nodes: &[String],
    count: usize,
) -> (Vec<Worker>, mpsc::Receiver<Line>) {
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipam-worker"))
            .args([
                "--etcd",
                endpoint,
                "--node",
                node,
                "--count",
                &count.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ipam-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(Line { index, text }).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        workers.push(Worker {
            node: node.clone(),
            child,
            stdin,
        });
    }
    (workers, rx)
}

/// Reads lines until `done(state)` holds; panics after `PHASE_TIMEOUT`.
fn read_until<S>(
    rx: &mpsc::Receiver<Line>,
    state: &mut S,
    mut on_line: impl FnMut(&mut S, Line) -> bool,
) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "workers did not get there within {PHASE_TIMEOUT:?}"
        );
        match rx.recv_timeout(left) {
            Ok(line) => {
                if on_line(state, line) {
                    return;
                }
            }
            Err(e) => panic!("workers stopped talking: {e}"),
        }
    }
}

#[derive(Default)]
struct Results {
    /// Per worker: address -> handle.
    addresses: BTreeMap<usize, Vec<(IpAddr, String)>>,
    errors: BTreeMap<usize, Vec<String>>,
    progress: BTreeMap<usize, usize>,
    conflicts: u64,
    borrowed: u64,
}

fn record(results: &mut Results, line: Line) {
    if let Some(json) = line.text.strip_prefix("allocated ") {
        let summary: serde_json::Value =
            serde_json::from_str(json).expect("worker summary is JSON");
        let addresses = summary["addresses"].as_array().expect("addresses array");
        let list = addresses
            .iter()
            .map(|a| {
                (
                    a[0].as_str().unwrap().parse().unwrap(),
                    a[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        results.addresses.insert(line.index, list);
        results.conflicts += summary["conflicts"].as_u64().unwrap_or(0);
        results.borrowed += summary["borrowed"].as_u64().unwrap_or(0);
    } else if let Some(n) = line.text.strip_prefix("progress ") {
        results.progress.insert(line.index, n.parse().unwrap_or(0));
    } else if let Some(e) = line.text.strip_prefix("error ") {
        results
            .errors
            .entry(line.index)
            .or_default()
            .push(e.to_owned());
    }
}

/// Sends `release` to every worker and waits until all have released and exited successfully.
fn release_all(workers: &mut [Worker], rx: &mpsc::Receiver<Line>, expected: usize) {
    for w in workers.iter_mut() {
        let mut stdin = w.stdin.take().expect("stdin still open");
        stdin
            .write_all(b"release\n")
            .expect("tell worker to release");
    }
    let mut released = BTreeMap::new();
    read_until(rx, &mut released, |released, line| {
        if let Some(n) = line.text.strip_prefix("released ") {
            released.insert(line.index, n.parse::<usize>().unwrap());
        }
        released.len() == workers.len()
    });
    assert_eq!(
        released.values().sum::<usize>(),
        expected,
        "every address released by its worker"
    );
    for w in workers.iter_mut() {
        let status = w.child.wait().expect("wait for worker");
        assert!(status.success(), "worker {} failed: {status}", w.node);
    }
}

async fn connect(endpoint: &str) -> (Datastore, Ipam) {
    let datastore = Datastore::etcd(EtcdConfig::new([endpoint.to_owned()]))
        .await
        .expect("connect to etcd");
    let ipam = Ipam::new(&datastore);
    (datastore, ipam)
}

fn all_unique(results: &Results) -> BTreeSet<IpAddr> {
    let mut seen = BTreeMap::new();
    for (index, list) in &results.addresses {
        for (ip, handle) in list {
            if let Some(other) = seen.insert(*ip, (*index, handle.clone())) {
                panic!("{ip} handed out twice: {other:?} and ({index}, {handle})");
            }
        }
    }
    seen.into_keys().collect()
}

/// 8 processes x 2,500 addresses from one /17 of /26 blocks whose other 196 blocks are full (held by a
/// ninth node), so 20,000 of the 20,224 free addresses are taken; as each node needs 40 blocks
/// (2,500 / 64) but only 316 are free, the last requests find no free block
/// and must borrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_allocate_twenty_thousand_addresses_without_duplicates() {
    const NODES: usize = 8;
    const PER_NODE: usize = 2_500;
    const FILLED_BLOCKS: usize = 196;
    let etcd = EtcdServer::start().expect("start etcd");
    let (datastore, ipam) = connect(&etcd.endpoint()).await;
    let pool: IpNet = "10.128.0.0/17".parse().unwrap();
    add_pool(
        &datastore,
        "pool",
        json!({"cidr": pool.to_string(), "blockSize": 26}),
    )
    .await;
    let started = Instant::now();
    let mut filler = BTreeSet::new();
    for i in 0..FILLED_BLOCKS {
        let args = AutoAssignArgs {
            handle_id: format!("filler.{i}"),
            num_v4: 64,
            node: "filler".into(),
            ..Default::default()
        };
        filler.extend(
            ipam.auto_assign(&args)
                .await
                .expect("fill a block")
                .v4
                .into_iter()
                .map(|a| a.ip),
        );
    }
    eprintln!(
        "pre-filled {FILLED_BLOCKS} blocks in {:?}",
        started.elapsed()
    );

    let nodes: Vec<String> = (0..NODES).map(|i| format!("node-{i}")).collect();
    let started = Instant::now();
    let (mut workers, rx) = spawn_workers(&etcd.endpoint(), &nodes, PER_NODE);
    let mut results = Results::default();
    read_until(&rx, &mut results, |r, line| {
        record(r, line);
        r.addresses.len() == NODES
    });
    eprintln!(
        "{} addresses by {NODES} processes in {:?}: {} conflicts retried, {} borrowed",
        NODES * PER_NODE,
        started.elapsed(),
        results.conflicts,
        results.borrowed
    );
    assert!(
        results.errors.is_empty(),
        "no call failed: {:?}",
        results.errors
    );
    let all = all_unique(&results);
    assert_eq!(all.len(), NODES * PER_NODE);
    assert!(all.is_disjoint(&filler), "no worker got a filler address");
    assert!(all.iter().all(|ip| pool.contains(ip)));

    let in_use: BTreeSet<IpAddr> = all.union(&filler).copied().collect();
    let mut known_nodes: BTreeSet<String> = nodes.iter().cloned().collect();
    known_nodes.insert("filler".into());
    let report = ipam
        .check(&CheckInput {
            in_use: Some(in_use),
            nodes: Some(known_nodes.clone()),
        })
        .await
        .unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
    assert_eq!(report.allocations, NODES * PER_NODE + FILLED_BLOCKS * 64);
    // Borrowing happened, and only once the pool had no free block left.
    assert!(
        !report.borrowed.is_empty(),
        "the pool was sized to force borrowing at the end"
    );
    assert_eq!(
        report.blocks, 512,
        "borrowing only after every block of the pool was claimed"
    );
    let usage = ipam.usage().await.unwrap();
    let blocks: BTreeMap<IpNet, _> = usage[0]
        .blocks
        .iter()
        .map(|b| (b.cidr, b.clone()))
        .collect();
    for node in &nodes {
        let affine = ipam.node_blocks(node).await.unwrap();
        assert!(
            affine.len() >= PER_NODE / 64 / 2,
            "{node} has its affine blocks: {}",
            affine.len()
        );
        let borrowed_by_node = report.borrowed.iter().any(|b| &b.node == node);
        if borrowed_by_node {
            assert!(
                affine.iter().all(|b| blocks[b].free == 0),
                "{node} borrowed while its own blocks had room"
            );
        }
        let own: Vec<&(IpAddr, String)> = results.addresses
            [&nodes.iter().position(|n| n == node).unwrap()]
            .iter()
            .collect();
        let outside = own
            .iter()
            .filter(|(ip, _)| !affine.iter().any(|b| b.contains(ip)))
            .count();
        let borrowed = report.borrowed.iter().filter(|b| &b.node == node).count();
        assert_eq!(
            outside, borrowed,
            "{node}: every address outside its blocks is a recorded borrow"
        );
    }

    let started = Instant::now();
    release_all(&mut workers, &rx, NODES * PER_NODE);
    eprintln!("released in {:?}", started.elapsed());
    for i in 0..FILLED_BLOCKS {
        ipam.release_by_handle(&format!("filler.{i}"))
            .await
            .unwrap();
    }
    let report = ipam
        .check(&CheckInput {
            in_use: Some(BTreeSet::new()),
            nodes: Some(known_nodes),
        })
        .await
        .unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
    assert_eq!(report.allocations, 0);
    assert_eq!(report.handles, 0);
}

/// etcd stops in the middle of the allocations and comes back: callers see a clear Unavailable error while
/// it is down, and afterwards there are no duplicates and nothing leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_during_allocations_leaves_no_duplicates_or_leaks() {
    const NODES: usize = 4;
    const PER_NODE: usize = 1_000;
    let mut etcd = EtcdServer::start().expect("start etcd");
    let endpoint = etcd.endpoint();
    let (datastore, ipam) = connect(&endpoint).await;
    add_pool(
        &datastore,
        "pool",
        json!({"cidr": "10.200.0.0/20", "blockSize": 28}),
    )
    .await;
    let nodes: Vec<String> = (0..NODES).map(|i| format!("f-node-{i}")).collect();
    let (mut workers, rx) = spawn_workers(&endpoint, &nodes, PER_NODE);
    let mut results = Results::default();
    // Everyone is busy allocating...
    read_until(&rx, &mut results, |r, line| {
        record(r, line);
        assert!(
            r.addresses.is_empty(),
            "a worker finished before the outage: make the run longer"
        );
        r.progress.len() == NODES
    });
    etcd.stop();
    // ...and every one of them is told, by name of the endpoint, that etcd is unavailable.
    read_until(&rx, &mut results, |r, line| {
        record(r, line);
        r.errors.len() == NODES
    });
    etcd.start_again().expect("restart etcd");
    read_until(&rx, &mut results, |r, line| {
        record(r, line);
        r.addresses.len() == NODES
    });
    for errors in results.errors.values() {
        let first = &errors[0];
        assert!(
            first.contains(&endpoint) && first.contains("check that etcd is running"),
            "unclear error: {first}"
        );
    }
    let all = all_unique(&results);
    assert_eq!(all.len(), NODES * PER_NODE);
    let report = ipam
        .check(&CheckInput {
            in_use: Some(all.clone()),
            nodes: Some(nodes.iter().cloned().collect()),
        })
        .await
        .unwrap();
    assert_eq!(
        report.problem_count(),
        0,
        "no leak after the outage: {report:#?}"
    );
    assert_eq!(report.allocations, all.len());

    release_all(&mut workers, &rx, NODES * PER_NODE);
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
    assert_eq!((report.allocations, report.handles), (0, 0));
}
