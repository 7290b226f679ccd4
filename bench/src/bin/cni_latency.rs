//! CNI ADD and DEL latency: reef (etcd-backed IPAM, WorkloadEndpoint) beside the reference `ptp` +
//! `host-local` pair, the same machine and run, each plugin executed inside a node namespace as a runtime
//! on that node would (`ip netns exec`, environment + stdin). Reports p50 and p99 and reef's ratio.
//!
//! `cargo run --release -p reef-bench --bin cni_latency -- [--pods 100]`
//!
//! etcd keeps its data under `$TMPDIR`; each reef ADD makes three fsync'd writes (handle, block,
//! endpoint), so the figures follow the disk (`TMPDIR=/dev/shm` measures without it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kube::api::ObjectMeta;
use reef_bench::convergence::percentile;
use reef_cni::invoke::Call;
use reef_crds::{IPPool, IPPoolSpec, ReefNode};
use reef_datastore::{Datastore, EtcdConfig, Store};
use reef_lab::Netns;
use reef_lab::etcd::EtcdServer;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "CNI ADD/DEL latency: reef vs ptp + host-local")]
struct Args {
    /// Pods added and deleted per plugin (one at a time, as a node's runtime does for a pod start).
    #[arg(long, default_value_t = 100)]
    pods: usize,
}

const TIMEOUT: Duration = Duration::from_secs(60);

struct Latencies {
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
}

/// Adds then deletes `pods` pods one at a time with `config`, timing each call.
fn measure(
    plugin_dir: &Path,
    plugin: &str,
    node: &Netns,
    config: &Value,
    pods: usize,
) -> anyhow::Result<Latencies> {
    let mut namespaces = Vec::with_capacity(pods);
    for _ in 0..pods {
        namespaces.push(Netns::new("bpod")?);
    }
    let mut latencies = Latencies {
        add_ms: Vec::with_capacity(pods),
        del_ms: Vec::with_capacity(pods),
    };
    for (phase, command) in [(0, "ADD"), (1, "DEL")] {
        for (i, ns) in namespaces.iter().enumerate() {
            let netns = format!("/run/netns/{}", ns.name());
            let id = format!("{plugin}-bench-{i}");
            let call = Call {
                plugin,
                command,
                container_id: &id,
                netns: Some(&netns),
                ifname: "eth0",
                args: "",
                config,
            };
            let started = Instant::now();
            let answer = call.run(plugin_dir, Some(node.name()), TIMEOUT)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if !answer.success {
                bail!(
                    "{plugin} {command} failed: {} {}",
                    answer.stdout,
                    answer.stderr
                );
            }
            if phase == 0 {
                latencies.add_ms.push(ms);
            } else {
                latencies.del_ms.push(ms);
            }
        }
    }
    Ok(latencies)
}

fn plugin_dir(scratch: &Path) -> anyhow::Result<PathBuf> {
    let dir = scratch.join("bin");
    std::fs::create_dir_all(&dir)?;
    let reef = reef_lab::binary("reef-cni")
        .context("build reef-cni first (cargo build --release -p reef-cni)")?;
    for name in ["reef", "reef-ipam"] {
        std::os::unix::fs::symlink(&reef, dir.join(name))?;
    }
    for name in ["ptp", "host-local"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(name), dir.join(name))?;
    }
    Ok(dir)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    reef_lab::require_root();
    let scratch = tempfile::tempdir()?;
    let bins = plugin_dir(scratch.path())?;
    let etcd = EtcdServer::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let datastore = runtime.block_on(Datastore::etcd(EtcdConfig::new([etcd.endpoint()])))?;
    let node = Netns::new("bnode")?;
    let forward = etcd.forward_into(&node)?;
    runtime.block_on(async {
        let pools: Arc<dyn Store<IPPool>> = datastore.store();
        pools
            .create(&IPPool::new("bench", IPPoolSpec::new("10.244.0.0/16")))
            .await?;
        let nodes: Arc<dyn Store<ReefNode>> = datastore.store();
        nodes
            .create(&ReefNode {
                metadata: ObjectMeta {
                    name: Some("bench-node".into()),
                    ..Default::default()
                },
                spec: Default::default(),
                status: None,
            })
            .await?;
        anyhow::Ok(())
    })?;
    let reef_config = json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "reef", "nodename": "bench-node",
        "datastore": {"type": "etcd", "etcdEndpoints": [forward.url()]},
        "ipamLockFile": scratch.path().join("ipam.lock"),
        "logLevel": "warn",
        "ipam": {"type": "reef-ipam"},
    });
    let reference_config = json!({
        "cniVersion": "1.0.0", "name": "bench-ref", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": scratch.path().join("host-local")},
    });
    let reference = measure(&bins, "ptp", &node, &reference_config, args.pods)?;
    let reef = measure(&bins, "reef", &node, &reef_config, args.pods)?;

    println!(
        "CNI latency, {} pods one at a time, plugin run in a node namespace (ms)",
        args.pods
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    let row = |name: &str, l: &Latencies| {
        let p = |s: &[f64], q| percentile(s, q * 100.0).unwrap_or(f64::NAN);
        println!(
            "{:<24} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            p(&l.add_ms, 0.5),
            p(&l.add_ms, 0.99),
            p(&l.del_ms, 0.5),
            p(&l.del_ms, 0.99)
        );
    };
    row("ptp + host-local", &reference);
    row("reef (etcd IPAM)", &reef);
    let ratio = |a: &[f64], b: &[f64], q| {
        percentile(a, q * 100.0).unwrap_or(f64::NAN) / percentile(b, q * 100.0).unwrap_or(f64::NAN)
    };
    println!(
        "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "ratio reef / reference",
        ratio(&reef.add_ms, &reference.add_ms, 0.5),
        ratio(&reef.add_ms, &reference.add_ms, 0.99),
        ratio(&reef.del_ms, &reference.del_ms, 0.5),
        ratio(&reef.del_ms, &reference.del_ms, 0.99)
    );
    Ok(())
}
