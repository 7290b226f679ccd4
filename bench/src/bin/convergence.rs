//! Convergence benchmark: time from a route's loss (a withdraw from the peer, or with `--trigger bfd` a
//! cut link detected by BFD) to the kernel route's removal in the daemon's namespace, p50/p99/max over
//! `--runs` runs, Reef against BIRD (see bench/README.md).
//!
//! `cargo run --release -p reef-bench --bin convergence -- [--runs 100] [--daemons reef,bird]
//! [--trigger withdraw|bfd] [--table-size 0] [--json]` (as root).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use reef_bench::convergence::{ConvergenceOptions, ConvergenceResult, Trigger, measure};
use reef_bench::ingest::{INTERRUPTED, install_signal_handlers};
use reef_bench::receivers::{BfdTimers, Daemon};
use reef_bench::report::{fixed, machine, print_report, ratio, utc_now};
use reef_bench::workload::MAX_PREFIXES;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Route removal latency after a withdraw or a BFD-detected link cut (needs root)")]
struct Args {
    /// Runs per daemon (one fresh prefix each).
    #[arg(long, default_value_t = 100)]
    runs: u32,
    /// Daemons to measure, in this order: reef, bird, and with `--trigger withdraw` also frr.
    #[arg(long, value_delimiter = ',', default_value = "reef,bird")]
    daemons: Vec<String>,
    /// What takes the route away: `withdraw` (an UPDATE) or `bfd` (link cut, BFD detects it).
    #[arg(long, default_value = "withdraw")]
    trigger: Trigger,
    /// BFD transmit and receive interval of both sides (`--trigger bfd`).
    #[arg(long, default_value_t = 100)]
    bfd_interval_ms: u64,
    /// BFD detection multiplier of both sides.
    #[arg(long, default_value_t = 3)]
    bfd_multiplier: u8,
    /// Routes announced before the runs, so the runs happen with a table of this size in the daemon's
    /// RIB and kernel (with `--trigger bfd` on every run's new session, and the time until all of them
    /// are removed after the cut is reported too).
    #[arg(long, default_value_t = 0)]
    table_size: u32,
    /// Bound on the installation of the `--table-size` routes.
    #[arg(long, default_value_t = 300)]
    table_timeout_secs: u64,
    /// Pause between the route's installation and t0.
    #[arg(long, default_value_t = 50)]
    settle_ms: u64,
    /// Bound on each wait for a kernel route to appear or go.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
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
    trigger: Trigger,
    table_size: u32,
    bfd_interval_ms: Option<u64>,
    bfd_multiplier: Option<u8>,
    results: Vec<ConvergenceResult>,
}

impl Report {
    fn table(&self) -> String {
        let mut out = format!(
            "convergence, trigger {}, {} other routes in the table; {} ({})\n",
            match (self.trigger, self.bfd_interval_ms, self.bfd_multiplier) {
                (Trigger::Bfd, Some(ms), Some(mult)) => format!("bfd ({ms} ms x {mult})"),
                _ => "withdraw".to_string(),
            },
            self.table_size,
            self.machine,
            self.date
        );
        out.push_str(&format!(
            "{:<7} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}  note\n",
            "daemon", "runs", "failed", "p50 ms", "p99 ms", "max ms", "p50/BIRD", "p99/BIRD"
        ));
        let bird = self.results.iter().find(|r| r.daemon == "bird");
        for result in &self.results {
            let mut note = match (&result.error, result.kernel_protocol) {
                (Some(error), _) => format!("({error})"),
                (None, Some(protocol)) => format!("kernel proto {protocol}"),
                (None, None) => String::new(),
            };
            if let Some(seconds) = result.table_install_seconds {
                note.push_str(&format!("; table installed in {seconds:.2} s"));
            }
            if let (Some(p50), Some(max)) = (result.flush_p50_ms, result.flush_max_ms) {
                note.push_str(&format!("; all removed p50 {p50:.0} ms, max {max:.0} ms"));
            }
            out.push_str(&format!(
                "{:<7} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}  {note}\n",
                result.daemon,
                result.samples_ms.len(),
                result.failed_runs,
                fixed(result.p50_ms, 2),
                fixed(result.p99_ms, 2),
                fixed(result.max_ms, 2),
                fixed(ratio(result.p50_ms, bird.and_then(|b| b.p50_ms)), 2),
                fixed(ratio(result.p99_ms, bird.and_then(|b| b.p99_ms)), 2),
            ));
        }
        out
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !reef_lab::is_root() {
        bail!("convergence needs root (network namespaces, veth links)");
    }
    let daemons = args
        .daemons
        .iter()
        .map(|name| name.parse::<Daemon>())
        .collect::<Result<Vec<_>>>()?;
    // FRR (zebra installing bgpd's routes) only with withdraws: the benchmark runs no bfdd for it.
    if let Some(other) = daemons.iter().find(|d| match d {
        Daemon::Reef | Daemon::Bird => false,
        Daemon::Frr => args.trigger == Trigger::Bfd,
        Daemon::Gobgp => true,
    }) {
        bail!(
            "convergence --trigger {:?} cannot measure {other}",
            args.trigger
        );
    }
    if args.table_size > MAX_PREFIXES - args.runs.min(MAX_PREFIXES) {
        bail!("--table-size plus --runs must stay within {MAX_PREFIXES}");
    }
    if args.runs == 0 || args.bfd_multiplier == 0 || args.bfd_interval_ms == 0 {
        bail!("--runs, --bfd-interval-ms and --bfd-multiplier must be positive");
    }
    install_signal_handlers();
    let reefd = match args.reefd {
        Some(path) => path,
        None => reef_lab::binary("reefd").unwrap_or_else(|_| PathBuf::from("reefd")),
    };
    let options = ConvergenceOptions {
        runs: args.runs,
        trigger: args.trigger,
        bfd: BfdTimers {
            interval: Duration::from_millis(args.bfd_interval_ms),
            multiplier: args.bfd_multiplier,
        },
        settle: Duration::from_millis(args.settle_ms),
        event_timeout: Duration::from_secs(args.timeout_secs),
        start_timeout: Duration::from_secs(30),
        table_size: args.table_size,
        table_timeout: Duration::from_secs(args.table_timeout_secs),
        reefd,
    };
    let mut results = Vec::new();
    for daemon in daemons {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        eprintln!("{daemon}: {} runs, trigger {:?}", args.runs, args.trigger);
        let result = measure(daemon, &options);
        eprintln!(
            "{daemon}: {} done, p50 {} ms, p99 {} ms{}",
            result.samples_ms.len(),
            fixed(result.p50_ms, 2),
            fixed(result.p99_ms, 2),
            result
                .error
                .as_deref()
                .map(|error| format!(" (failed: {error})"))
                .unwrap_or_default()
        );
        results.push(result);
    }
    let bfd = args.trigger == Trigger::Bfd;
    let report = Report {
        date: utc_now(),
        machine: machine(),
        trigger: args.trigger,
        table_size: args.table_size,
        bfd_interval_ms: bfd.then_some(args.bfd_interval_ms),
        bfd_multiplier: bfd.then_some(args.bfd_multiplier),
        results,
    };
    print_report(&report, &report.table(), args.json)
}
