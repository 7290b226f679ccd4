//! RIB memory benchmark: the same `--prefixes` from two peers with different attributes into Reef and
//! BIRD (two paths per prefix, one best; no FIB), reporting load time and resident memory with ratios to
//! BIRD (see bench/README.md).
//!
//! `cargo run --release -p reef-bench --bin rib_memory -- [--prefixes 1000000] [--attr-sets 1000]
//! [--daemons reef,bird] [--json]` (as root).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use reef_bench::ingest::{INTERRUPTED, install_signal_handlers};
use reef_bench::receivers::Daemon;
use reef_bench::report::{fixed, machine, print_report, ratio, utc_now};
use reef_bench::rib_memory::{RibMemoryOptions, RibMemoryResult, measure};
use reef_bench::workload::Workload;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "RIB memory with two full feeds of the same prefixes (needs root)")]
struct Args {
    /// Distinct IPv4 /24 prefixes, sent by each of the two peers.
    #[arg(long, default_value_t = 1_000_000)]
    prefixes: u32,
    /// Distinct path attribute sets per peer.
    #[arg(long, default_value_t = 1000)]
    attr_sets: u32,
    /// Peers sending the same prefixes (1 or 2); the second one's AS_PATH is one AS longer.
    #[arg(long, default_value_t = 2)]
    peers: usize,
    /// Daemons to measure, in this order (Reef and BIRD).
    #[arg(long, value_delimiter = ',', default_value = "reef,bird")]
    daemons: Vec<String>,
    /// Bound per daemon from the first UPDATE byte to all prefixes of every peer received.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Interval between two prefix-count probes.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Pause after the load before the resident memory is read.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Measure each daemon this many times (fresh namespaces and daemon each time) and report the run
    /// with the median load time; all load times are listed.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// The reefd binary (default: next to this binary, i.e. target/release/reefd).
    #[arg(long)]
    reefd: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    date: String,
    machine: String,
    prefixes_per_peer: u32,
    peers: usize,
    attr_sets: u32,
    results: Vec<RibMemoryResult>,
}

impl Report {
    fn table(&self) -> String {
        let mut out = format!(
            "{} prefixes x {} peer(s), {} attribute sets each; {} ({})\n",
            self.prefixes_per_peer, self.peers, self.attr_sets, self.machine, self.date
        );
        out.push_str(&format!(
            "{:<7} {:>8} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9}  note\n",
            "daemon",
            "load s",
            "RSS0 MiB",
            "RSS MiB",
            "peak MiB",
            "paths",
            "load/BIRD",
            "RSS/BIRD",
            "peak/BIRD"
        ));
        let bird = self.results.iter().find(|r| r.daemon == "bird");
        for result in &self.results {
            let paths = result
                .paths_first_last
                .map_or("-".to_string(), |[first, last]| format!("{first},{last}"));
            let received: Vec<String> = result.received.iter().map(u64::to_string).collect();
            let loads: Vec<String> = result
                .runs_load_seconds
                .iter()
                .map(|seconds| format!("{seconds:.3}"))
                .collect();
            let note = match &result.error {
                Some(error) => format!("({error})"),
                None => format!(
                    "received {}; runs (s) {}",
                    received.join(" + "),
                    loads.join(" ")
                ),
            };
            out.push_str(&format!(
                "{:<7} {:>8} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9}  {note}\n",
                result.daemon,
                fixed(result.load_seconds, 3),
                fixed(result.rss_before_mib, 1),
                fixed(result.rss_after_mib, 1),
                fixed(result.peak_rss_mib, 1),
                paths,
                fixed(
                    ratio(result.load_seconds, bird.and_then(|b| b.load_seconds)),
                    2
                ),
                fixed(
                    ratio(result.rss_after_mib, bird.and_then(|b| b.rss_after_mib)),
                    2
                ),
                fixed(
                    ratio(result.peak_rss_mib, bird.and_then(|b| b.peak_rss_mib)),
                    2
                ),
            ));
        }
        out
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !reef_lab::is_root() {
        bail!("rib_memory needs root (network namespaces, veth links)");
    }
    let daemons = args
        .daemons
        .iter()
        .map(|name| name.parse::<Daemon>())
        .collect::<Result<Vec<_>>>()?;
    if let Some(other) = daemons
        .iter()
        .find(|d| !matches!(d, Daemon::Reef | Daemon::Bird))
    {
        bail!("rib_memory measures Reef and BIRD only, not {other}");
    }
    let workload = Workload::new(args.prefixes, args.attr_sets)?;
    install_signal_handlers();
    let reefd = match args.reefd {
        Some(path) => path,
        None => reef_lab::binary("reefd").unwrap_or_else(|_| PathBuf::from("reefd")),
    };
    if !(1..=2).contains(&args.peers) {
        bail!("--peers must be 1 or 2");
    }
    let options = RibMemoryOptions {
        peers: args.peers,
        poll_interval: Duration::from_millis(args.poll_ms),
        timeout: Duration::from_secs(args.timeout_secs),
        start_timeout: Duration::from_secs(30),
        settle: Duration::from_secs(args.settle_secs),
        reefd,
    };
    let mut results = Vec::new();
    for daemon in daemons {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let mut runs = Vec::new();
        for run in 1..=args.repeat.max(1) {
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
            eprintln!(
                "{daemon}: run {run}, {} x {} prefixes",
                args.peers, args.prefixes
            );
            let result = measure(daemon, &workload, &options);
            eprintln!(
                "{daemon}: load {} s, RSS {} MiB, peak {} MiB{}",
                fixed(result.load_seconds, 3),
                fixed(result.rss_after_mib, 1),
                fixed(result.peak_rss_mib, 1),
                result
                    .error
                    .as_deref()
                    .map(|error| format!(" (failed: {error})"))
                    .unwrap_or_default()
            );
            runs.push(result);
        }
        results.extend(RibMemoryResult::median_of(runs));
    }
    let report = Report {
        date: utc_now(),
        machine: machine(),
        prefixes_per_peer: args.prefixes,
        peers: args.peers,
        attr_sets: args.attr_sets,
        results,
    };
    print_report(&report, &report.table(), args.json)
}
