//! Installing N routes into a network namespace's FIB: Reef's FIB programmer (batched netlink)
//! against `ip -batch` and BIRD 2's kernel protocol, each in fresh namespaces, one table.
//!
//! `cargo run --release -p reef-bench --bin fib_install -- [--routes 100000] [--prefix-len 32] [--methods reef,ip,bird]`
//!
//! Every route goes via a gateway on a veth link. Reef: `FibProgrammer::reconcile` (dump, diff,
//! apply) on an empty table. `ip -batch`: one `route add` line per route. BIRD: N static routes
//! exported to its kernel protocol, timed from the daemon's start until the namespace holds all N
//! (polled every 50 ms: the BIRD figure includes parsing the configuration).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use ipnet::{IpNet, Ipv4Net};
use reef_felix::fib::by_key;
use reef_felix::{FibProgrammer, MAIN_TABLE, NextHop, REEF_ROUTE_PROTOCOL, Route};
use reef_lab::{Netns, require_root, run_bounded, veth, wait_until};

#[derive(Parser)]
#[command(
    about = "FIB install rate: Reef's batched netlink vs ip -batch vs BIRD's kernel protocol"
)]
struct Args {
    /// Routes to install.
    #[arg(long, default_value_t = 100_000)]
    routes: u32,
    /// Prefix length of the routes: 32 (host routes) or 24.
    #[arg(long, default_value_t = 32)]
    prefix_len: u8,
    /// Methods to run, comma separated (the ratio column needs `reef`).
    #[arg(long, value_delimiter = ',', default_values_t = ["reef".to_string(), "ip".to_string(), "bird".to_string()])]
    methods: Vec<String>,
    /// Bound on one install (BIRD included).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// The `i`-th destination: consecutive prefixes from 10.0.0.0.
fn destination(i: u32, prefix_len: u8) -> Result<Ipv4Net> {
    let step = 1u32 << (32 - u32::from(prefix_len));
    let offset = i
        .checked_mul(step)
        .context("too many routes for this prefix length")?;
    let addr = 0x0A00_0000u32
        .checked_add(offset)
        .context("too many routes for this prefix length")?;
    Ok(Ipv4Net::new(Ipv4Addr::from(addr), prefix_len)?)
}

/// A namespace for the routes, with a veth link to a peer namespace whose end is the gateway.
struct Bed {
    ns: Netns,
    _peer: Netns,
    gateway: Ipv4Addr,
}

impl Bed {
    fn new(tag: &str) -> Result<Bed> {
        let ns = Netns::new(tag)?;
        let peer = Netns::new(&format!("{tag}p"))?;
        let link = veth(&ns, &peer)?;
        Ok(Bed {
            ns,
            _peer: peer,
            gateway: link.b.v4,
        })
    }

    /// Routes in the main table with protocol `proto` (counted by the kernel's own dump via `ip`).
    fn count(&self, proto: &str) -> Result<usize> {
        let out = run_bounded(
            Command::new("ip").args(["-n", self.ns.name(), "route", "show", "proto", proto]),
            Duration::from_secs(60),
        )?;
        ensure!(
            out.status.success(),
            "ip route show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout.iter().filter(|&&b| b == b'\n').count())
    }
}

struct Outcome {
    method: &'static str,
    seconds: Option<f64>,
    installed: usize,
    note: String,
}

fn reef(args: &Args, _dir: &Path) -> Result<Outcome> {
    let bed = Bed::new("fibreef")?;
    let mut fib = FibProgrammer::open_in_netns(format!("/run/netns/{}", bed.ns.name()))?;
    let hop = NextHop::via(IpAddr::V4(bed.gateway));
    let desired = by_key(
        (0..args.routes)
            .map(|i| {
                Ok(Route::unicast(
                    IpNet::V4(destination(i, args.prefix_len)?),
                    MAIN_TABLE,
                    vec![hop.clone()],
                ))
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let start = Instant::now();
    let report = fib.reconcile(&desired)?;
    let seconds = start.elapsed().as_secs_f64();
    let installed = bed.count(&REEF_ROUTE_PROTOCOL.to_string())?;
    Ok(Outcome {
        method: "reef",
        seconds: Some(seconds),
        installed,
        note: format!(
            "{} failed, {} requests per datagram",
            report.failures.len(),
            fib.batch_size()
        ),
    })
}

fn ip_batch(args: &Args, dir: &Path) -> Result<Outcome> {
    let bed = Bed::new("fibip")?;
    let mut lines = String::new();
    for i in 0..args.routes {
        writeln!(
            lines,
            "route add {} via {} proto static",
            destination(i, args.prefix_len)?,
            bed.gateway
        )?;
    }
    let file = dir.join("routes.batch");
    std::fs::write(&file, lines)?;
    let start = Instant::now();
    let out = run_bounded(
        Command::new("ip")
            .args(["-n", bed.ns.name(), "-batch"])
            .arg(&file),
        Duration::from_secs(args.timeout_secs),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Outcome {
        method: "ip -batch",
        seconds: Some(seconds),
        installed: bed.count("static")?,
        note: "one request per ACK".to_string(),
    })
}

fn bird(args: &Args, dir: &Path) -> Result<Outcome> {
    let bed = Bed::new("fibbird")?;
    let mut conf = String::new();
    writeln!(conf, "router id 192.0.2.1;")?;
    writeln!(conf, "protocol device {{ }}")?;
    writeln!(
        conf,
        "protocol kernel {{ ipv4 {{ import none; export all; }}; }}"
    )?;
    writeln!(conf, "protocol static {{ ipv4;")?;
    for i in 0..args.routes {
        writeln!(
            conf,
            "  route {} via {};",
            destination(i, args.prefix_len)?,
            bed.gateway
        )?;
    }
    writeln!(conf, "}}")?;
    let conf_path = dir.join("bird.conf");
    std::fs::write(&conf_path, conf)?;
    let socket = dir.join("bird.ctl");
    let target = usize::try_from(args.routes)?;
    let start = Instant::now();
    let _bird = bed.ns.spawn(
        "bird",
        "bird",
        &[
            "-f",
            "-c",
            &conf_path.to_string_lossy(),
            "-s",
            &socket.to_string_lossy(),
        ],
        &dir.join("bird.log"),
    )?;
    let mut last = 0;
    let done = wait_until(
        Duration::from_secs(args.timeout_secs),
        Duration::from_millis(50),
        || {
            last = bed.count("bird").unwrap_or(last);
            (last >= target).then(|| start.elapsed().as_secs_f64())
        },
    );
    Ok(Outcome {
        method: "bird",
        seconds: done,
        installed: last,
        note: if done.is_some() {
            "start to all routes in the FIB, 50 ms polls".to_string()
        } else {
            format!("timeout after {} s", args.timeout_secs)
        },
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root();
    if !(8..=32).contains(&args.prefix_len) {
        bail!("--prefix-len must be 8..=32");
    }
    let dir = tempfile::tempdir()?;
    let mut outcomes = Vec::new();
    for (name, method, run) in [
        ("reef", "reef", reef as fn(&Args, &Path) -> Result<Outcome>),
        ("ip", "ip -batch", ip_batch),
        ("bird", "bird", bird),
    ] {
        if !args.methods.iter().any(|m| m == name) {
            continue;
        }
        match run(&args, dir.path()) {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => outcomes.push(Outcome {
                method,
                seconds: None,
                installed: 0,
                note: format!("error: {e:#}"),
            }),
        }
    }
    let rate = |o: &Outcome| {
        o.seconds
            .filter(|_| o.installed >= args.routes as usize)
            .map(|s| f64::from(args.routes) / s)
    };
    let reef_rate = outcomes.iter().find(|o| o.method == "reef").and_then(rate);
    println!(
        "install {} IPv4 /{} routes via one gateway, each method in fresh namespaces",
        args.routes, args.prefix_len
    );
    println!(
        "{:<10} {:>9} {:>10} {:>11} {:>11}  note",
        "method", "seconds", "installed", "routes/s", "reef/this"
    );
    for outcome in &outcomes {
        let this_rate = rate(outcome);
        let ratio = reef_rate.zip(this_rate).map(|(reef, this)| reef / this);
        println!(
            "{:<10} {:>9} {:>10} {:>11} {:>11}  {}",
            outcome.method,
            outcome
                .seconds
                .map_or("-".to_string(), |s| format!("{s:.3}")),
            outcome.installed,
            this_rate.map_or("-".to_string(), |r| format!("{r:.0}")),
            ratio.map_or("-".to_string(), |r| format!("{r:.2}x")),
            outcome.note
        );
    }
    Ok(())
}
