//! One ingest measurement per daemon: namespaces, daemon, BGP session, injection, polling, memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reef_lab::{Netns, veth};

use crate::injector::{Session, SessionParams};
use crate::procfs::mib;
use crate::receivers::{Daemon, Peering, Receiver, Setup};
use crate::report::IngestResult;
use crate::workload::{Workload, encode};

/// The AS numbers of the eBGP session.
pub const DAEMON_AS: u32 = 65000;
pub const INJECTOR_AS: u32 = 65001;
/// The hold time both sides configure; the injector sends a KEEPALIVE every third of it.
pub const HOLD_TIME: u16 = 240;

/// Longest pause between two probes when probes are slow (see the poll loop).
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(1);

/// Set by the SIGINT/SIGTERM handler of the benchmark binary: every wait gives up, so the Drop
/// guards stop the daemons and delete the namespaces.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How one daemon is measured.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Interval between two "how many prefixes have you got" probes.
    pub poll_interval: Duration,
    /// Bound on the whole injection of one daemon (first byte written to all prefixes reported).
    pub timeout: Duration,
    /// Bound on start-up: the daemon answering its control interface, the session getting Established.
    pub start_timeout: Duration,
    /// The reefd binary (Reef only).
    pub reefd: PathBuf,
}

impl IngestOptions {
    pub fn new(reefd: PathBuf) -> IngestOptions {
        IngestOptions {
            poll_interval: Duration::from_millis(20),
            timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(30),
            reefd,
        }
    }
}

/// Measures one daemon; a failure is reported in the result (`error`), not returned, so the other
/// daemons of the run still get measured.
pub fn measure(daemon: Daemon, workload: &Workload, options: &IngestOptions) -> IngestResult {
    let mut result = IngestResult {
        daemon: daemon.name().to_string(),
        prefixes_received: 0,
        seconds: None,
        write_seconds: None,
        routes_per_second: None,
        rss_before_mib: None,
        peak_rss_mib: None,
        error: None,
        runs_seconds: Vec::new(),
    };
    if let Err(error) = measure_into(daemon, workload, options, &mut result) {
        result.error = Some(format!("{error:#}"));
    }
    result.runs_seconds.extend(result.seconds);
    result
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM only set [`INTERRUPTED`]: the waits give up and the Drop guards stop the daemons
/// and delete the namespaces.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn measure_into(
    daemon: Daemon,
    workload: &Workload,
    options: &IngestOptions,
    result: &mut IngestResult,
) -> Result<()> {
    // Declared first, dropped last: the namespaces outlive the daemon and the session inside them.
    let injector_ns = Netns::new("rbinj").context("injector namespace")?;
    let daemon_ns = Netns::new(&format!("rb{daemon}")).context("daemon namespace")?;
    let link = veth(&injector_ns, &daemon_ns).context("veth")?;
    let peering = Peering {
        daemon_addr: link.b.v4,
        daemon_as: DAEMON_AS,
        injector_addr: link.a.v4,
        injector_as: INJECTOR_AS,
        hold_time: HOLD_TIME,
    };
    // Encoded now because NEXT_HOP is the injector's address on this run's link; before the daemon starts,
    // so it costs the measurement nothing.
    let updates = encode(workload, INJECTOR_AS, peering.injector_addr).context("encode UPDATEs")?;
    let mut receiver =
        Receiver::start(daemon, &daemon_ns, &Setup::ingest(peering), &options.reefd)?;
    wait_ready(&mut receiver, options.start_timeout)?;

    let remote = SocketAddr::from((peering.daemon_addr, 179));
    let stream =
        crate::netns_socket::connect_from(injector_ns.name(), remote, options.start_timeout)?;
    let params = SessionParams {
        local_as: INJECTOR_AS,
        bgp_id: peering.injector_addr,
        hold_time: HOLD_TIME,
    };
    let mut session = Session::establish(stream, &params, updates.ctx, options.start_timeout)
        .with_context(|| format!("session with {daemon}"))?;
    result.rss_before_mib = Some(mib(receiver.memory()?.rss_kib));

    let expected = updates.prefixes;
    let started = session.send(&updates)?;
    let deadline = started + options.timeout;
    let mut last_probe_error = None;
    let done = loop {
        check_interrupted()?;
        let probe_started = Instant::now();
        // A daemon busy with the load may not answer in time (gobgp's gRPC API does not for seconds):
        // keep the last count and ask again; the overall deadline bounds it.
        match receiver.prefixes_received() {
            Ok(Some(count)) => result.prefixes_received = count,
            Ok(None) => {}
            Err(error) => last_probe_error = Some(format!("{error:#}")),
        }
        let probe_took = probe_started.elapsed();
        let count = result.prefixes_received;
        // Received is not yet routed: reefd counts prefixes into its Adj-RIB-In before the Loc-RIB
        // selects them (BIRD counts its table). Done when the last prefix is in the RIB too.
        if count >= expected && last_prefix_in_rib(&receiver, expected) {
            break Some(started.elapsed());
        }
        if let Some(failure) = session.failure() {
            bail!("session failed after {count} prefixes: {failure}");
        }
        receiver.check_running()?;
        if Instant::now() >= deadline {
            break None;
        }
        // A probe that spawns a process (vtysh, gobgp) costs CPU the daemon under test would use on this
        // 2-core machine: keep probing below a fifth of one core.
        std::thread::sleep(
            options
                .poll_interval
                .max((probe_took * 4).min(MAX_PROBE_BACKOFF)),
        );
    };
    result.write_seconds = session.written().map(|written| written.as_secs_f64());
    result.peak_rss_mib = Some(mib(receiver.memory()?.peak_rss_kib));
    let Some(elapsed) = done else {
        bail!(
            "timeout after {:.0} s: {} of {expected} prefixes (last probe error: {}; log: {})",
            options.timeout.as_secs_f64(),
            result.prefixes_received,
            last_probe_error.as_deref().unwrap_or("none"),
            receiver.log_tail()
        );
    };
    result.seconds = Some(elapsed.as_secs_f64());
    result.routes_per_second = Some(expected as f64 / elapsed.as_secs_f64());
    Ok(())
}

/// Whether the daemon's RIB holds the last prefix of the workload (daemons whose RIB is not probed:
/// yes).
fn last_prefix_in_rib(receiver: &Receiver, expected: u64) -> bool {
    let Some(last) = expected.checked_sub(1).and_then(|i| u32::try_from(i).ok()) else {
        return true;
    };
    !matches!(
        receiver.paths_for(Workload::prefix(last)),
        Ok(Some(0)) | Err(_)
    )
}

/// Waits until the daemon answers its control interface with a prefix count.
pub fn wait_ready(receiver: &mut Receiver, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        receiver.check_running()?;
        if receiver.prefixes_received()?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "{} did not answer within {:.0} s (log: {})",
                receiver.daemon(),
                timeout.as_secs_f64(),
                receiver.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
