//! RIB memory: the same prefixes from two eBGP peers with different attributes (the second peer's
//! AS_PATH is one AS longer), so the daemon keeps two paths per prefix and selects one. Measured: time
//! until both peers' prefixes are all received, resident memory before, after the load (once settled)
//! and at its peak (`VmHWM`). No FIB: BIRD without a `kernel` protocol, reefd without `fib:`.

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
use crate::workload::{Workload, encode, encode_prepended};

/// The second injector's AS; its paths carry it twice (one prepend), so the first peer's are best.
pub const SECOND_INJECTOR_AS: u32 = 65002;

#[derive(Debug, Clone)]
pub struct RibMemoryOptions {
    pub poll_interval: Duration,
    /// Bound from the first UPDATE byte to all prefixes of both peers received.
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
    /// Prefixes each peer's count reached at the last probe.
    pub received: [u64; 2],
    /// Seconds from the first UPDATE byte (both sessions start together) until both peers' counts
    /// reached `prefixes` and the daemon's RIB holds both paths of the last prefix.
    pub load_seconds: Option<f64>,
    /// `VmRSS` once both sessions were Established, before any UPDATE.
    pub rss_before_mib: Option<f64>,
    /// `VmRSS` after the load and `settle`.
    pub rss_after_mib: Option<f64>,
    /// `VmHWM` at the end.
    pub peak_rss_mib: Option<f64>,
    /// Paths the daemon holds for the first and the last prefix (2 expected), if it can tell.
    pub paths_first_last: Option<[usize; 2]>,
    pub error: Option<String>,
}

/// Measures one daemon; a failure goes into `error`.
pub fn measure(daemon: Daemon, workload: &Workload, options: &RibMemoryOptions) -> RibMemoryResult {
    let mut result = RibMemoryResult {
        daemon: daemon.name().to_string(),
        prefixes: u64::from(workload.prefixes),
        received: [0, 0],
        load_seconds: None,
        rss_before_mib: None,
        rss_after_mib: None,
        peak_rss_mib: None,
        paths_first_last: None,
        error: None,
    };
    if let Err(error) = measure_into(daemon, workload, options, &mut result) {
        result.error = Some(format!("{error:#}"));
    }
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
    let links = [
        veth(&injector_ns, &daemon_ns).context("veth 1")?,
        veth(&injector_ns, &daemon_ns).context("veth 2")?,
    ];
    let peerings =
        [(&links[0], INJECTOR_AS), (&links[1], SECOND_INJECTOR_AS)].map(|(link, injector_as)| {
            Peering {
                daemon_addr: link.b.v4,
                daemon_as: DAEMON_AS,
                injector_addr: link.a.v4,
                injector_as,
                hold_time: HOLD_TIME,
            }
        });
    // Encoded before the daemon starts, so it costs the measurement nothing.
    let updates = [
        encode(workload, INJECTOR_AS, peerings[0].injector_addr).context("encode peer 1")?,
        encode_prepended(workload, SECOND_INJECTOR_AS, peerings[1].injector_addr, 1)
            .context("encode peer 2")?,
    ];
    let setup = Setup {
        peerings: peerings.to_vec(),
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
        // Counted on receipt: done once the best-path selection has also seen the last prefix of both
        // peers (each peer's UPDATEs are processed in order).
        if result.received.iter().all(|&count| count >= expected)
            && receiver
                .paths_for(last_prefix)
                .is_ok_and(|paths| paths.is_none_or(|paths| paths >= 2))
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
