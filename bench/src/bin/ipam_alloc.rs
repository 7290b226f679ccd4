//! IPAM allocation rate against a real etcd: 1 and 8 concurrent allocators (each its own node and its own
//! etcd connection, like 8 agents), one address per call as the CNI plugin asks. Reports allocations/s,
//! releases/s, compare-and-swap conflicts retried per allocation, and duplicates (must be 0).
//!
//! `cargo run --release -p reef-bench --bin ipam_alloc -- [--per-allocator N] [--allocators 1,8]`
//!
//! Each assignment is two fsync'd etcd writes in sequence (handle, then block, as Calico orders them), so the
//! rate follows the disk's fsync latency; etcd keeps its data under `$TMPDIR` (e.g. `TMPDIR=/dev/shm` to
//! measure without the disk).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use reef_crds::{IPPool, IPPoolSpec};
use reef_datastore::{Datastore, EtcdConfig};
use reef_ipam::{AutoAssignArgs, Ipam, pod_handle};
use reef_lab::etcd::EtcdServer;

#[derive(Parser)]
#[command(about = "IPAM allocations/s against a real etcd")]
struct Args {
    /// Addresses each allocator assigns (one call each).
    #[arg(long, default_value_t = 1500)]
    per_allocator: usize,
    /// Allocator counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8])]
    allocators: Vec<usize>,
}

struct Run {
    allocators: usize,
    addresses: usize,
    alloc_time: Duration,
    release_time: Duration,
    conflicts: u64,
    duplicates: usize,
}

async fn allocator(
    endpoint: String,
    node: String,
    count: usize,
) -> anyhow::Result<(Vec<(IpAddr, String)>, u64, Ipam)> {
    let datastore = Datastore::etcd(EtcdConfig::new([endpoint])).await?;
    let ipam = Ipam::new(&datastore);
    let mut got = Vec::with_capacity(count);
    for i in 0..count {
        let handle = pod_handle("bench", &format!("{node}-{i}"));
        let args = AutoAssignArgs {
            handle_id: handle.clone(),
            num_v4: 1,
            node: node.clone(),
            ..Default::default()
        };
        let result = ipam
            .auto_assign(&args)
            .await
            .with_context(|| format!("{node}: allocation {i}"))?;
        got.extend(result.v4.into_iter().map(|a| (a.ip, handle.clone())));
    }
    let conflicts = ipam.stats().conflicts.load(Ordering::Relaxed);
    Ok((got, conflicts, ipam))
}

async fn run(
    endpoint: &str,
    round: usize,
    allocators: usize,
    per_allocator: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..allocators)
        .map(|i| {
            tokio::spawn(allocator(
                endpoint.to_owned(),
                format!("bench-{round}-{i}"),
                per_allocator,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await??);
    }
    let alloc_time = started.elapsed();
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    let mut conflicts = 0;
    for (got, c, _) in &results {
        conflicts += c;
        duplicates += got.iter().filter(|(ip, _)| !seen.insert(*ip)).count();
    }
    let started = Instant::now();
    let releases: Vec<_> = results
        .into_iter()
        .map(|(got, _, ipam)| {
            tokio::spawn(async move {
                for (_, handle) in &got {
                    ipam.release_by_handle(handle).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in releases {
        task.await??;
    }
    Ok(Run {
        allocators,
        addresses: seen.len() + duplicates,
        alloc_time,
        release_time: started.elapsed(),
        conflicts,
        duplicates,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let etcd = EtcdServer::start().context("start etcd")?;
    let datastore = Datastore::etcd(EtcdConfig::new([etcd.endpoint()])).await?;
    let spec: IPPoolSpec =
        serde_json::from_value(serde_json::json!({"cidr": "10.0.0.0/14", "blockSize": 26}))?;
    datastore
        .store::<IPPool>()
        .create(&IPPool::new("bench", spec))
        .await?;
    println!(
        "IPAM allocation against etcd {} with its data in {} (one address per call, /26 blocks)",
        etcd.endpoint(),
        std::env::temp_dir().display()
    );
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>16} {:>11}",
        "allocators", "addresses", "allocs/s", "releases/s", "conflicts/alloc", "duplicates"
    );
    let mut failed = false;
    for (round, allocators) in args.allocators.iter().copied().enumerate() {
        let r = run(&etcd.endpoint(), round, allocators, args.per_allocator).await?;
        println!(
            "{:>10} {:>10} {:>12.0} {:>12.0} {:>16.4} {:>11}",
            r.allocators,
            r.addresses,
            r.addresses as f64 / r.alloc_time.as_secs_f64(),
            r.addresses as f64 / r.release_time.as_secs_f64(),
            r.conflicts as f64 / r.addresses.max(1) as f64,
            r.duplicates
        );
        failed |= r.duplicates > 0;
    }
    anyhow::ensure!(!failed, "duplicate addresses handed out");
    Ok(())
}
