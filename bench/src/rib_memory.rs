//! RIB memory: the same prefixes from two eBGP peers with different attributes (the second peer's
//! AS_PATH is one AS longer), so the daemon keeps two paths per prefix and selects one (or from one
//! peer only, for comparison). Measured: time until every peer's prefixes are all received, resident
//! memory before, after the load (once settled) and at its peak (`VmHWM`). No FIB: BIRD without a
//! `kernel` protocol, reefd without `fib:`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reef_lab::{Netns, veth};
use serde::Serialize;

use crate::ingest::{DAEMON_AS, HOLD_TIME, INJECTOR_AS, INTERRUPTED, wait_ready};
use crate::injector::{Session, SessionParams};
use crate::procfs::mib;
use crate::receivers::{Daemon, Peering, Receiver, Setup};
use crate::workload::{Workload, encode_prepended};

/// The second injector's AS; its paths carry it twice (one prepend), so the first peer's are best.
pub const SECOND_INJECTOR_AS: u32 = 65002;

#[derive(Debug, Clone)]
pub struct RibMemoryOptions {
    /// Peers sending the same prefixes: 1 or 2 (1 gives the cost of a prefix with one path, for the
    /// difference a second path makes).
    pub peers: usize,
    pub poll_interval: Duration,
    /// Bound from the first UPDATE byte to all prefixes of every peer received.
    pub timeout: Duration,
    pub start_timeout: Duration,
    /// Pause after the load before `VmRSS` is read (lets deferred work such as best-path selection end).
    pub settle: Duration,
    pub reefd: PathBuf,
}

/// One daemon's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RibMemoryResult {
    pub daemon: String,
    /// Prefixes per peer.
    pub prefixes: u64,
    /// Prefixes each peer's count reached at the last probe, by peer.
    pub received: Vec<u64>,
    /// Seconds from the first UPDATE byte (all sessions start together) until all peers' counts
    /// reached `prefixes` and the daemon's RIB holds every path of the last prefix.
    pub load_seconds: Option<f64>,
    /// `VmRSS` once all sessions were Established, before any UPDATE.
    pub rss_before_mib: Option<f64>,
    /// `VmRSS` after the load and `settle`.
    pub rss_after_mib: Option<f64>,
    /// `VmHWM` at the end.
    pub peak_rss_mib: Option<f64>,
    /// Paths the daemon holds for the first and the last prefix (one per peer expected), if it can tell.
    pub paths_first_last: Option<[usize; 2]>,
    pub error: Option<String>,
    /// `load_seconds` of every completed repetition (`--repeat`), in run order.
    pub runs_load_seconds: Vec<f64>,
}

impl RibMemoryResult {
    /// One result for several repetitions of the same daemon: the first failure if any run failed,
    /// otherwise the run with the median load time. `runs_load_seconds` lists every completed run.
    pub fn median_of(mut runs: Vec<RibMemoryResult>) -> Option<RibMemoryResult> {
        let runs_load_seconds: Vec<f64> = runs.iter().filter_map(|run| run.load_seconds).collect();
        let chosen = match runs
            .iter()
            .position(|run| run.error.is_some() || run.load_seconds.is_none())
        {
            Some(failed) => runs.swap_remove(failed),
            None => {
                runs.sort_by(|a, b| {
                    a.load_seconds
                        .unwrap_or_default()
                        .total_cmp(&b.load_seconds.unwrap_or_default())
                });
                let middle = runs.len() / 2;
                runs.into_iter().nth(middle)?
            }
        };
        Some(RibMemoryResult {
            runs_load_seconds,
            ..chosen
        })
    }
}

/// Measures one daemon; a failure goes into `error`.
pub fn measure(daemon: Daemon, workload: &Workload, options: &RibMemoryOptions) -> RibMemoryResult {
    let mut result = RibMemoryResult {
        daemon: daemon.name().to_string(),
        prefixes: u64::from(workload.prefixes),
        received: vec![0; options.peers],
        load_seconds: None,
        rss_before_mib: None,
        rss_after_mib: None,
        peak_rss_mib: None,
        paths_first_last: None,
        error: None,
        runs_load_seconds: Vec::new(),
    };
    if let Err(error) = measure_into(daemon, workload, options, &mut result) {
        result.error = Some(format!("{error:#}"));
    }
    result.runs_load_seconds.extend(result.load_seconds);
    result
}

fn measure_into(
    daemon: Daemon,
    workload: &Workload,
    options: &RibMemoryOptions,
    result: &mut RibMemoryResult,
) -> Result<()> {
    // Declared first, dropped last: the namespaces outlive the daemon and the sessions inside them.
    let injector_ns = Netns::new("rbminj").context("injector namespace")?;
    let daemon_ns = Netns::new(&format!("rbm{daemon}")).context("daemon namespace")?;
    let links = (0..options.peers)
        .map(|n| veth(&injector_ns, &daemon_ns).with_context(|| format!("veth {n}")))
        .collect::<Result<Vec<_>>>()?;
    let peerings: Vec<Peering> = links
        .iter()
        .zip([INJECTOR_AS, SECOND_INJECTOR_AS])
        .map(|(link, injector_as)| Peering {
            daemon_addr: link.b.v4,
            daemon_as: DAEMON_AS,
            injector_addr: link.a.v4,
            injector_as,
            hold_time: HOLD_TIME,
        })
        .collect();
    // Encoded before the daemon starts, so it costs the measurement nothing. Peer n prepends n times.
    let updates = peerings
        .iter()
        .zip(0..)
        .map(|(peering, prepend)| {
            encode_prepended(
                workload,
                peering.injector_as,
                peering.injector_addr,
                prepend,
            )
            .with_context(|| format!("encode the UPDATEs of {}", peering.injector_addr))
        })
        .collect::<Result<Vec<_>>>()?;
    let setup = Setup {
        peerings: peerings.clone(),
        kernel_table: None,
        bfd: None,
    };
    let mut receiver = Receiver::start(daemon, &daemon_ns, &setup, &options.reefd)?;
    wait_ready(&mut receiver, options.start_timeout)?;
    let mut sessions = Vec::new();
    for (peering, encoded) in peerings.iter().zip(&updates) {
        let remote = SocketAddr::from((peering.daemon_addr, 179));
        let stream =
            crate::netns_socket::connect_from(injector_ns.name(), remote, options.start_timeout)?;
        let params = SessionParams {
            local_as: peering.injector_as,
            bgp_id: peering.injector_addr,
            hold_time: HOLD_TIME,
        };
        sessions.push(
            Session::establish(stream, &params, encoded.ctx, options.start_timeout)
                .with_context(|| format!("session of {} with {daemon}", peering.injector_addr))?,
        );
    }
    result.rss_before_mib = Some(mib(receiver.memory()?.rss_kib));

    let expected = result.prefixes;
    let last_prefix = Workload::prefix(workload.prefixes.saturating_sub(1));
    let started = Instant::now();
    for (session, encoded) in sessions.iter_mut().zip(&updates) {
        session.send(encoded)?;
    }
    let deadline = started + options.timeout;
    let loaded = loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        for (index, count) in result.received.iter_mut().enumerate() {
            // A busy daemon may not answer a probe: keep the last count, the deadline bounds it.
            if let Ok(Some(now)) = receiver.prefixes_received_from(index) {
                *count = now;
            }
        }
        // Counted on receipt: done once the best-path selection has also seen the last prefix of every
        // peer (each peer's UPDATEs are processed in order).
        if result.received.iter().all(|&count| count >= expected)
            && receiver
                .paths_for(last_prefix)
                .is_ok_and(|paths| paths.is_none_or(|paths| paths >= peerings.len()))
        {
            break Some(started.elapsed());
        }
        for session in &sessions {
            if let Some(failure) = session.failure() {
                bail!(
                    "session failed at {:?} prefixes: {failure}",
                    result.received
                );
            }
        }
        receiver.check_running()?;
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(options.poll_interval);
    };
    let Some(elapsed) = loaded else {
        result.peak_rss_mib = Some(mib(receiver.memory()?.peak_rss_kib));
        bail!(
            "timeout after {:.0} s: {:?} of {expected} prefixes (log: {})",
            options.timeout.as_secs_f64(),
            result.received,
            receiver.log_tail()
        );
    };
    result.load_seconds = Some(elapsed.as_secs_f64());
    std::thread::sleep(options.settle);
    let memory = receiver.memory()?;
    result.rss_after_mib = Some(mib(memory.rss_kib));
    result.peak_rss_mib = Some(mib(memory.peak_rss_kib));
    match (
        receiver.paths_for(Workload::prefix(0)),
        receiver.paths_for(last_prefix),
    ) {
        (Ok(Some(first)), Ok(Some(last))) => result.paths_first_last = Some([first, last]),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("{daemon}: cannot count the paths of a prefix: {error:#}");
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(load_seconds: Option<f64>, rss: f64) -> RibMemoryResult {
        RibMemoryResult {
            daemon: "bird".to_string(),
            prefixes: 10,
            received: vec![10, 10],
            load_seconds,
            rss_before_mib: Some(1.0),
            rss_after_mib: Some(rss),
            peak_rss_mib: Some(rss),
            paths_first_last: Some([2, 2]),
            error: load_seconds.is_none().then(|| "timeout".to_string()),
            runs_load_seconds: load_seconds.into_iter().collect(),
        }
    }

    #[test]
    fn repetitions_report_the_median_run_or_a_failure() {
        let median = RibMemoryResult::median_of(vec![
            run(Some(0.9), 1.0),
            run(Some(0.3), 2.0),
            run(Some(0.5), 3.0),
        ])
        .unwrap();
        assert_eq!(median.load_seconds, Some(0.5));
        assert_eq!(median.rss_after_mib, Some(3.0));
        assert_eq!(median.runs_load_seconds, vec![0.9, 0.3, 0.5]);
        let failed = RibMemoryResult::median_of(vec![run(Some(0.3), 1.0), run(None, 1.0)]).unwrap();
        assert_eq!(failed.error.as_deref(), Some("timeout"));
        assert!(RibMemoryResult::median_of(Vec::new()).is_none());
    }
}
