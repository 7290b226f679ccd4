//! BGP ingest benchmark: one injector feeds the same pre-encoded UPDATEs to Reef, BIRD, FRR and GoBGP,
//! each in its own network namespace, and reports time to all prefixes received and peak memory.
//!
//! `cargo run --release -p reef-bench --bin bgp_ingest -- [--prefixes 1000000] [--attr-sets 1000]
//! [--daemons reef,bird,frr,gobgp] [--json]` (as root).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use reef_bench::ingest::{
    INJECTOR_AS, INTERRUPTED, IngestOptions, install_signal_handlers, measure,
};
use reef_bench::receivers::Daemon;
use reef_bench::report::{IngestResult, Report, machine, print_report, utc_now};
use reef_bench::workload::{Workload, encode};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side BGP ingest benchmark (needs root: network namespaces)")]
struct Args {
    /// Distinct IPv4 /24 prefixes to inject.
    #[arg(long, default_value_t = 1_000_000)]
    prefixes: u32,
    /// Distinct path attribute sets the prefixes are spread over.
    #[arg(long, default_value_t = 1000)]
    attr_sets: u32,
    /// Daemons to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "reef,bird,frr,gobgp")]
    daemons: Vec<String>,
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Bound per daemon from the first UPDATE byte to all prefixes received.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Interval between two prefix-count probes.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Measure each daemon this many times (fresh namespaces and daemon each time) and report the run
    /// with the median time; all times are listed.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// The reefd binary (default: next to this binary, i.e. target/release/reefd).
    #[arg(long)]
    reefd: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !reef_lab::is_root() {
        bail!("bgp_ingest needs root (network namespaces, veth links)");
    }
    let daemons = args
        .daemons
        .iter()
        .map(|name| name.parse::<Daemon>())
        .collect::<Result<Vec<_>>>()?;
    install_signal_handlers();
    let reefd = match args.reefd {
        Some(path) => path,
        None => reef_lab::binary("reefd").unwrap_or_else(|_| PathBuf::from("reefd")),
    };
    let workload = Workload::new(args.prefixes, args.attr_sets)?;
    // Each daemon's run encodes the UPDATEs again with its own link's next hop; this encoding checks the
    // workload and gives the sizes for the report (they do not depend on the next hop).
    let encoded =
        encode(&workload, INJECTOR_AS, Ipv4Addr::UNSPECIFIED).context("encode UPDATEs")?;
    eprintln!(
        "encoded {} prefixes in {} UPDATEs ({} bytes), {} attribute sets",
        encoded.prefixes,
        encoded.updates,
        encoded.bytes.len(),
        encoded.attr_sets
    );
    let mut options = IngestOptions::new(reefd);
    options.timeout = Duration::from_secs(args.timeout_secs);
    options.poll_interval = Duration::from_millis(args.poll_ms);
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
            eprintln!("{daemon}: run {run}");
            let result = measure(daemon, &workload, &options);
            eprintln!(
                "{daemon}: {}",
                match (&result.error, result.seconds) {
                    (Some(error), _) => format!("failed: {error}"),
                    (None, Some(seconds)) => format!("{seconds:.3} s"),
                    (None, None) => "no result".to_string(),
                }
            );
            runs.push(result);
        }
        results.extend(IngestResult::median_of(runs));
    }
    let report = Report {
        date: utc_now(),
        machine: machine(),
        prefixes: encoded.prefixes,
        attr_sets: encoded.attr_sets,
        updates: encoded.updates,
        update_bytes: encoded.bytes.len() as u64,
        results,
    };
    print_report(&report, &report.table(), args.json)
}
