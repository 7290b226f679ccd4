//! Policy programming time: N policies over M endpoints, Reef's nftables and iptables backends beside a
//! plain `nft -f` load of the same ruleset, all in one run, in a namespace made for the run.
//!
//! `cargo run --release -p reef-bench --bin policy_program -- [--policies 1000] [--endpoints 10000]
//!  [--local 10000] [--changes 20] [--backends nft,iptables]`
//!
//! Measured: compile (model -> program), full program (compile + render + write into an empty
//! namespace), the plain `nft -f` of exactly the text Reef writes (the anchor), and one label change
//! (an endpoint's `app` label flips: incremental compile + write), p50 and max over `--changes`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use reef_felix::policy::{
    BackendKind, Endpoint, K8sNetworkPolicy, PolicyDataplane, PolicyEngine, PolicyInput, Runner,
    nft::NftBackend,
};
use reef_lab::{Netns, require_root};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Policy programming time: Reef nftables/iptables vs a plain nft -f load")]
struct Args {
    /// Policies (80% Kubernetes NetworkPolicies, 15% Reef NetworkPolicies, 5% GlobalNetworkPolicies).
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Endpoints in the cluster.
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
    /// How many of them are on this node (policy is enforced on their interfaces).
    #[arg(long, default_value_t = 10_000)]
    local: usize,
    /// Label changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Backends to run.
    #[arg(long, value_delimiter = ',', default_values_t = ["nft".to_string(), "iptables".to_string()])]
    backends: Vec<String>,
}

const NAMESPACES: usize = 100;
const APPS: usize = 50;

fn endpoint(i: usize, local: bool, app: usize) -> Endpoint {
    let ns = i % NAMESPACES;
    let address = Ipv4Addr::from(0x0af4_0000u32 + i as u32 + 1);
    Endpoint {
        key: format!("ns{ns}/pod{i}"),
        namespace: Some(format!("ns{ns}")),
        labels: BTreeMap::from([
            ("app".to_string(), format!("app{app}")),
            ("tier".to_string(), ["fe", "be", "db"][i % 3].to_string()),
        ]),
        addresses: vec![IpAddr::V4(address)],
        interface: local.then(|| format!("reef{i:011x}")),
        ..Endpoint::default()
    }
}

fn input(args: &Args) -> Result<PolicyInput> {
    let endpoints = (0..args.endpoints)
        .map(|i| endpoint(i, i < args.local, i % APPS))
        .collect();
    let namespaces = (0..NAMESPACES)
        .map(|n| {
            (
                format!("ns{n}"),
                BTreeMap::from([("team".to_string(), format!("team{}", n % 10))]),
            )
        })
        .collect();
    let mut k8s = Vec::new();
    let mut reef = Vec::new();
    let mut global = Vec::new();
    for p in 0..args.policies {
        let ns = format!("ns{}", p % NAMESPACES);
        let (app, peer) = (p % APPS, (p * 7 + 3) % APPS);
        match p % 20 {
            0 => global.push(serde_json::from_value(json!({
                "apiVersion": "reef.dev/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": format!("g{p}")},
                "spec": {"order": p, "selector": format!("app == 'app{app}'"), "ingress": [
                    {"action": "Deny", "source": {"nets": [format!("198.18.{}.0/24", p % 250)]}},
                    {"action": "Pass", "protocol": "TCP", "destination": {"ports": [22, "8000:8080"]}}]}
            }))?),
            1..=3 => reef.push(serde_json::from_value(json!({
                "apiVersion": "reef.dev/v1", "kind": "NetworkPolicy", "metadata": {"name": format!("r{p}"), "namespace": ns},
                "spec": {"order": 100 + p, "selector": format!("app == 'app{app}' && tier != 'db'"), "ingress": [
                    {"action": "Allow", "protocol": "TCP", "source": {"namespaceSelector": format!("team == 'team{}'", p % 10)},
                     "destination": {"ports": [443]}}],
                 "egress": [{"action": "Allow", "destination": {"selector": format!("app == 'app{peer}'")}}]}
            }))?),
            _ => k8s.push(serde_json::from_value::<K8sNetworkPolicy>(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": format!("k{p}"), "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app{app}")}}, "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("app{peer}")}}},
                              {"namespaceSelector": {"matchLabels": {"team": format!("team{}", p % 10)}}, "podSelector": {}}],
                     "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 8443, "endPort": 8453}]}]}
            }))?),
        }
    }
    Ok(PolicyInput {
        endpoints,
        namespaces,
        network_policies: reef,
        global_policies: global,
        k8s_policies: k8s,
        pools: vec![serde_json::from_value(json!({
            "apiVersion": "reef.dev/v1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"cidr": "10.244.0.0/16", "natOutgoing": true}}))?],
    })
}

/// Runs the benchmark with this process inside `ns` (so `nft` needs no `ip netns exec`), then
/// returns to the original namespace (the guard deletes `ns` and must not find us inside).
fn inside<T>(ns: &Netns, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let original = std::fs::File::open("/proc/self/ns/net")?;
    let target = std::fs::File::open(format!("/run/netns/{}", ns.name()))?;
    // SAFETY: setns(2) with valid namespace fds; the benchmark is single-threaded here.
    ensure!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns"
    );
    let result = f();
    // SAFETY: as above, back to where we started.
    ensure!(
        unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns back"
    );
    result
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Figures {
    full: Duration,
    write_ops: usize,
    changes: Vec<Duration>,
}

fn run_backend(kind: BackendKind, input: &PolicyInput, args: &Args) -> Result<Figures> {
    let start = Instant::now();
    let mut engine = PolicyEngine::new(input.clone());
    let mut dataplane = PolicyDataplane::new(kind, Runner::local());
    let changes = engine.take_changes();
    let write_ops = dataplane.apply(engine.program(), &changes)?;
    let full = start.elapsed();
    let mut times = Vec::new();
    for n in 0..args.changes {
        let i = (n * 97) % args.local.max(1);
        let flipped = endpoint(i, i < args.local, (i + 1 + n) % APPS);
        let start = Instant::now();
        engine.upsert_endpoint(flipped);
        let changes = engine.take_changes();
        dataplane.apply(engine.program(), &changes)?;
        times.push(start.elapsed());
    }
    dataplane.remove()?;
    times.sort();
    Ok(Figures {
        full,
        write_ops,
        changes: times,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    let input = input(&args)?;
    let start = Instant::now();
    let engine = PolicyEngine::new(input.clone());
    let compile = start.elapsed();
    let program = engine.program();
    let text = NftBackend::render_full(program);
    println!(
        "policies {} x endpoints {} ({} local): {} sets, {} policy chains, {} endpoint chains, {} nft lines, {} errors",
        args.policies,
        args.endpoints,
        args.local,
        program.sets.len() + program.port_sets.len(),
        program.policy_chains.len(),
        program.endpoint_chains.len(),
        text.lines().count(),
        program.errors.len()
    );
    println!("compile (model -> program): {}", ms(compile));
    let ns = Netns::new("polbench").context("namespace")?;
    inside(&ns, || {
        let path = std::env::temp_dir().join(format!("reef-policy-{}.nft", std::process::id()));
        std::fs::write(&path, &text)?;
        let runner = Runner::local();
        let start = Instant::now();
        runner.run("nft", &["-f", &path.to_string_lossy()], b"")?;
        let anchor = start.elapsed();
        runner.run("nft", &["delete", "table", "inet", "reef"], b"")?;
        let _ = std::fs::remove_file(&path);
        println!("anchor: plain `nft -f` of the same ruleset: {}", ms(anchor));
        for backend in &args.backends {
            let kind = match backend.as_str() {
                "nft" => BackendKind::Nftables,
                "iptables" => BackendKind::Iptables,
                other => anyhow::bail!("unknown backend {other}"),
            };
            let f = run_backend(kind, &input, &args)?;
            let p50 = f
                .changes
                .get(f.changes.len() / 2)
                .copied()
                .unwrap_or_default();
            let max = f.changes.last().copied().unwrap_or_default();
            println!(
                "{backend:>8}: full program {} ({} operations, {:.2}x the anchor); one label change p50 {} max {} ({} changes)",
                ms(f.full),
                f.write_ops,
                f.full.as_secs_f64() / anchor.as_secs_f64(),
                ms(p50),
                ms(max),
                f.changes.len()
            );
        }
        Ok(())
    })
}
