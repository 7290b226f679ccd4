//! Results of one benchmark run: a text table with ratios to BIRD, and JSON.

use serde::Serialize;
use std::fmt::Write as _;
use std::process::Command;

/// What one receiver did with the injected routes.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    /// `reef`, `bird`, `frr` or `gobgp`.
    pub daemon: String,
    /// Prefixes the daemon reported at the last poll.
    pub prefixes_received: u64,
    /// Seconds from the first UPDATE byte written until the daemon reported every prefix; `None` if it
    /// never did within the timeout.
    pub seconds: Option<f64>,
    /// Seconds from the first to the last UPDATE byte written (TCP back-pressure: the daemon's read speed).
    pub write_seconds: Option<f64>,
    pub routes_per_second: Option<f64>,
    /// Resident set size of the daemon process(es) once the session was Established, before injection.
    pub rss_before_mib: Option<f64>,
    /// Peak resident set size (`VmHWM`; FRR: bgpd + zebra) at the end of the run.
    pub peak_rss_mib: Option<f64>,
    /// Why the run is incomplete, if it is.
    pub error: Option<String>,
    /// `seconds` of every completed repetition (`--repeat`), in run order.
    pub runs_seconds: Vec<f64>,
}

impl IngestResult {
    /// One result for several repetitions of the same daemon: the first failure if any run failed,
    /// otherwise the run with the median time. `runs_seconds` lists every completed run.
    pub fn median_of(mut runs: Vec<IngestResult>) -> Option<IngestResult> {
        let runs_seconds: Vec<f64> = runs.iter().filter_map(|run| run.seconds).collect();
        let chosen = match runs
            .iter()
            .position(|run| run.error.is_some() || run.seconds.is_none())
        {
            Some(failed) => runs.swap_remove(failed),
            None => {
                runs.sort_by(|a, b| {
                    a.seconds
                        .partial_cmp(&b.seconds)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let middle = runs.len() / 2;
                runs.into_iter().nth(middle)?
            }
        };
        Some(IngestResult {
            runs_seconds,
            ..chosen
        })
    }
}

/// One run of the benchmark over several daemons, same workload and injector for all.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC, RFC 3339.
    pub date: String,
    pub machine: String,
    pub prefixes: u64,
    pub attr_sets: u64,
    pub updates: u64,
    pub update_bytes: u64,
    pub results: Vec<IngestResult>,
}

impl Report {
    fn bird(&self) -> Option<&IngestResult> {
        self.results.iter().find(|result| result.daemon == "bird")
    }

    /// A fixed-width table; ratios are to BIRD measured in the same run ("-" when BIRD did not complete).
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{} prefixes, {} attribute sets, {} UPDATEs ({:.1} MiB); {} ({})",
            self.prefixes,
            self.attr_sets,
            self.updates,
            self.update_bytes as f64 / (1024.0 * 1024.0),
            self.machine,
            self.date
        );
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>11} {:>11} {:>10} {:>10} {:>9} {:>9}  runs (s)",
            "daemon",
            "seconds",
            "routes/s",
            "received",
            "RSS0 MiB",
            "peak MiB",
            "time/BIRD",
            "mem/BIRD"
        );
        let bird = self.bird();
        for result in &self.results {
            let time_ratio = ratio(result.seconds, bird.and_then(|bird| bird.seconds));
            let mem_ratio = ratio(result.peak_rss_mib, bird.and_then(|bird| bird.peak_rss_mib));
            let _ = writeln!(
                out,
                "{:<7} {:>9} {:>11} {:>11} {:>10} {:>10} {:>9} {:>9}  {}{}",
                result.daemon,
                fixed(result.seconds, 3),
                fixed(result.routes_per_second, 0),
                result.prefixes_received,
                fixed(result.rss_before_mib, 1),
                fixed(result.peak_rss_mib, 1),
                fixed(time_ratio, 2),
                fixed(mem_ratio, 2),
                result
                    .runs_seconds
                    .iter()
                    .map(|seconds| format!("{seconds:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                result
                    .error
                    .as_deref()
                    .map(|error| format!("  ({error})"))
                    .unwrap_or_default()
            );
        }
        out
    }
}

/// The current time, UTC, RFC 3339 (seconds), for the report's header.
pub fn utc_now() -> String {
    command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

/// First line of a command's output, or "?" (only for the report's header).
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// "N cores, <CPU model>, Linux <release>", for the report's header.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|model| model.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!(
        "{cores} cores, {cpu}, Linux {}",
        command_line("uname", &["-r"])
    )
}

/// `value / base`, when both are known and `base` is not zero.
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => Some(value / base),
        _ => None,
    }
}

/// `value` with `decimals` decimals, or "-".
pub fn fixed(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.decimals$}"))
}

/// Prints a finished report: the table on stdout, or with `json` the JSON on stdout and the table on
/// stderr. Exits with 130 (128 + SIGINT, as a shell reports a command stopped by Ctrl-C) when the run
/// was interrupted.
pub fn print_report(report: &impl Serialize, table: &str, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    if crate::ingest::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("interrupted");
        std::process::exit(130);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(daemon: &str, seconds: Option<f64>, peak: f64) -> IngestResult {
        IngestResult {
            daemon: daemon.to_string(),
            prefixes_received: 1000,
            seconds,
            write_seconds: seconds,
            routes_per_second: seconds.map(|seconds| 1000.0 / seconds),
            rss_before_mib: Some(1.0),
            peak_rss_mib: Some(peak),
            error: seconds.is_none().then(|| "timeout".to_string()),
            runs_seconds: seconds.into_iter().collect(),
        }
    }

    #[test]
    fn repetitions_report_the_median_or_a_failure() {
        let runs = vec![
            result("bird", Some(0.9), 100.0),
            result("bird", Some(0.3), 100.0),
            result("bird", Some(0.5), 100.0),
        ];
        let median = IngestResult::median_of(runs).unwrap();
        assert_eq!(median.seconds, Some(0.5));
        assert_eq!(median.runs_seconds, vec![0.9, 0.3, 0.5]);
        let failed = IngestResult::median_of(vec![
            result("bird", Some(0.3), 1.0),
            result("bird", None, 1.0),
        ])
        .unwrap();
        assert_eq!(failed.error.as_deref(), Some("timeout"));
        assert_eq!(failed.runs_seconds, vec![0.3]);
        assert!(IngestResult::median_of(Vec::new()).is_none());
    }

    #[test]
    fn table_has_ratios_to_bird() {
        let report = Report {
            date: "2026-11-29T18:00:00Z".to_string(),
            machine: "test".to_string(),
            prefixes: 1000,
            attr_sets: 10,
            updates: 20,
            update_bytes: 4096,
            results: vec![
                result("reef", Some(0.5), 50.0),
                result("bird", Some(1.0), 100.0),
                result("gobgp", None, 300.0),
            ],
        };
        let table = report.table();
        let reef = table.lines().find(|line| line.starts_with("reef")).unwrap();
        assert!(reef.contains("0.50"), "{reef}");
        let gobgp = table
            .lines()
            .find(|line| line.starts_with("gobgp"))
            .unwrap();
        assert!(
            gobgp.contains("3.00") && gobgp.contains("(timeout)"),
            "{gobgp}"
        );
    }
}
