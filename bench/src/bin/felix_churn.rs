//! Endpoint churn through felix's dataplane: N workload endpoints added one at a time, then removed
//! one at a time, each a new model given to `Dataplane::apply` (link dump, route dump, diff, apply,
//! sysctls) — time until the call returns with the route in place — beside plain `ip route add/del`
//! (one process per endpoint) and one `ip -batch` of all N routes, in the same run.
//!
//! `cargo run --release -p reef-bench --bin felix_churn -- [--endpoints 100]` (root)
//!
//! Each method gets a fresh node namespace with N veth pairs named as reef-cni names them (host end
//! `reef...` up, peers in a second namespace). Felix runs with a zero grace period: a removed
//! endpoint's route goes at once (in a cluster, reef-cni's DEL removes the veth and the kernel the
//! route).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use reef_bench::convergence::percentile;
use reef_crds::workload::host_interface_name;
use reef_felix::{Dataplane, DataplaneConfig, Endpoint, Model, Node, REEF_ROUTE_PROTOCOL};
use reef_lab::{Netns, require_root, run_bounded};

#[derive(Parser)]
#[command(about = "Endpoint churn: felix's Dataplane::apply per endpoint vs ip route")]
struct Args {
    /// Endpoints added, then removed.
    #[arg(long, default_value_t = 100)]
    endpoints: u16,
}

/// A node namespace with `n` workload veths (peers in `_pods`).
struct Bed {
    node: Netns,
    _pods: Netns,
    interfaces: Vec<String>,
}

impl Bed {
    fn new(tag: &str, n: u16) -> Result<Bed> {
        let node = Netns::new(tag)?;
        let pods = Netns::new(&format!("{tag}p"))?;
        let interfaces: Vec<String> = (0..n)
            .map(|i| host_interface_name(None, &format!("{}-{i}", node.name())))
            .collect();
        let mut lines = String::new();
        for (i, interface) in interfaces.iter().enumerate() {
            writeln!(
                lines,
                "link add {interface} type veth peer name p{i} netns {}",
                pods.name()
            )?;
            writeln!(lines, "link set {interface} up")?;
        }
        batch(&node, &lines)?;
        Ok(Bed {
            node,
            _pods: pods,
            interfaces,
        })
    }

    fn routes(&self, proto: &str) -> Result<usize> {
        let out = self.node.ip(&["route", "show", "proto", proto])?;
        Ok(out.lines().count())
    }
}

fn address(i: usize) -> Result<Ipv4Addr> {
    let i = u16::try_from(i).context("too many endpoints")?;
    let [hi, lo] = i.to_be_bytes();
    Ok(Ipv4Addr::new(10, 66, hi, lo))
}

/// `ip -n NODE -batch -` with `lines` on stdin (through a file: run_bounded has no stdin).
fn batch(ns: &Netns, lines: &str) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("batch");
    std::fs::write(&file, lines)?;
    let start = Instant::now();
    let out = run_bounded(
        Command::new("ip")
            .args(["-n", ns.name(), "-batch"])
            .arg(&file),
        Duration::from_secs(120),
    )?;
    let elapsed = start.elapsed();
    ensure!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

#[derive(Default)]
struct Outcome {
    add_ms: Vec<f64>,
    del_ms: Vec<f64>,
    all_ms: f64,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn reef(n: u16) -> Result<Outcome> {
    let bed = Bed::new("churnreef", n)?;
    let config = DataplaneConfig {
        netns: Some(format!("/run/netns/{}", bed.node.name()).into()),
        grace: Duration::ZERO,
        ..DataplaneConfig::default()
    };
    let mut dataplane = Dataplane::open(config)?;
    let mut model = Model::new(Node::new("churn"));
    model.host_mtu = Some(1500);
    let endpoint = |i: usize| -> Result<Endpoint> {
        Ok(Endpoint {
            interface: bed.interfaces[i].clone(),
            ips: vec![IpAddr::V4(address(i)?)],
            mac: None,
        })
    };
    let mut outcome = Outcome::default();
    let proto = REEF_ROUTE_PROTOCOL.to_string();
    for i in 0..bed.interfaces.len() {
        model.endpoints.push(endpoint(i)?);
        let start = Instant::now();
        let report = dataplane.apply(model.clone())?;
        outcome.add_ms.push(ms(start.elapsed()));
        ensure!(report.failures.is_empty(), "{:?}", report.failures);
    }
    ensure!(
        bed.routes(&proto)? == bed.interfaces.len(),
        "routes missing"
    );
    while !model.endpoints.is_empty() {
        model.endpoints.remove(0);
        let start = Instant::now();
        let report = dataplane.apply(model.clone())?;
        outcome.del_ms.push(ms(start.elapsed()));
        ensure!(report.failures.is_empty(), "{:?}", report.failures);
    }
    ensure!(bed.routes(&proto)? == 0, "routes left");
    model.endpoints = (0..bed.interfaces.len())
        .map(endpoint)
        .collect::<Result<_>>()?;
    let start = Instant::now();
    dataplane.apply(model)?;
    outcome.all_ms = ms(start.elapsed());
    ensure!(
        bed.routes(&proto)? == bed.interfaces.len(),
        "routes missing"
    );
    Ok(outcome)
}

fn ip_route(n: u16) -> Result<Outcome> {
    let bed = Bed::new("churnip", n)?;
    let mut outcome = Outcome::default();
    let route = |verb: &str, i: usize| -> Result<f64> {
        let start = Instant::now();
        bed.node.ip(&[
            "route",
            verb,
            &format!("{}/32", address(i)?),
            "dev",
            &bed.interfaces[i],
            "proto",
            "static",
        ])?;
        Ok(ms(start.elapsed()))
    };
    for i in 0..bed.interfaces.len() {
        outcome.add_ms.push(route("add", i)?);
    }
    ensure!(
        bed.routes("static")? == bed.interfaces.len(),
        "routes missing"
    );
    for i in 0..bed.interfaces.len() {
        outcome.del_ms.push(route("del", i)?);
    }
    let mut lines = String::new();
    for (i, interface) in bed.interfaces.iter().enumerate() {
        writeln!(
            lines,
            "route add {}/32 dev {interface} proto static",
            address(i)?
        )?;
    }
    outcome.all_ms = ms(batch(&bed.node, &lines)?);
    ensure!(
        bed.routes("static")? == bed.interfaces.len(),
        "routes missing"
    );
    Ok(outcome)
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let reef = reef(args.endpoints)?;
    let ip = ip_route(args.endpoints)?;
    let p = |samples: &[f64], q| reef_bench::report::fixed(percentile(samples, q), 2);
    println!(
        "{} endpoints added one by one, then removed one by one; then all at once (ms)",
        args.endpoints
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "method", "add p50", "add p99", "del p50", "del p99", "all at once"
    );
    for (method, outcome) in [
        ("reef Dataplane::apply per change", &reef),
        ("ip route add/del (one process each)", &ip),
    ] {
        println!(
            "{method:<34} {:>8} {:>8} {:>8} {:>8} {:>10.2}",
            p(&outcome.add_ms, 50.0),
            p(&outcome.add_ms, 99.0),
            p(&outcome.del_ms, 50.0),
            p(&outcome.del_ms, 99.0),
            outcome.all_ms
        );
    }
    println!("(all at once: reef one apply with every endpoint; ip: one ip -batch of every route)");
    Ok(())
}
