//! Convergence: how long after a route's loss the daemon under test removes it from its namespace's
//! kernel table. The daemon peers with the injector and installs the best routes into the main table
//! (Reef `fib: {table: 254}`, BIRD a `kernel` protocol exporting all); a [`RouteWatch`] in the daemon's
//! namespace timestamps the kernel's RTM_NEWROUTE / RTM_DELROUTE notifications.
//!
//! Each run uses a fresh prefix P: announce P, wait for the kernel route, let the daemon settle, then
//! take t0 and trigger the loss, and t1 = the RTM_DELROUTE of P. Triggers:
//! - `withdraw`: t0 just before the UPDATE withdrawing P is written (one session for all runs);
//! - `bfd`: BFD with the injector; t0 once the injector's veth end is cut (nftables drops everything,
//!   the carrier stays up), so t1 - t0 is BFD detection plus the daemon's reaction. A new BGP session
//!   per run (the daemon drops the old one).
//!
//! With `table_size` the injector first sends that many other routes (as `bgp_ingest` does) and waits
//! until the kernel has them all: with `withdraw` once, with `bfd` on every session, and then also
//! measures the time until the whole session's routes are gone from the kernel (flush).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use reef_bfd::session::SessionConfig;
use reef_lab::{Link, Netns, veth};
use serde::Serialize;

use crate::bfd_peer::{BfdPeer, LinkCut};
use crate::ingest::{DAEMON_AS, HOLD_TIME, INJECTOR_AS, INTERRUPTED, wait_ready};
use crate::injector::{Session, SessionParams};
use crate::kernel_routes::{Change, RouteWatch};
use crate::receivers::{BfdTimers, Daemon, Peering, Receiver, Setup};
use crate::workload::{
    EncodedUpdates, MAX_PREFIXES, Workload, encode, encode_announce, encode_withdraw,
    session_context,
};

/// The kernel table the daemons install into: main.
pub const TABLE: u32 = 254;
/// Pause between the table's installation and the first run.
const TABLE_SETTLE: Duration = Duration::from_secs(2);
/// Consecutive failed runs after which a daemon's measurement stops.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// What makes the route go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Withdraw,
    Bfd,
}

impl std::str::FromStr for Trigger {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Trigger> {
        match name {
            "withdraw" => Ok(Trigger::Withdraw),
            "bfd" => Ok(Trigger::Bfd),
            _ => bail!("unknown trigger {name:?} (known: withdraw, bfd)"),
        }
    }
}

/// How every daemon is measured.
#[derive(Debug, Clone)]
pub struct ConvergenceOptions {
    pub runs: u32,
    pub trigger: Trigger,
    /// BFD timers of both sides with `--trigger bfd`.
    pub bfd: BfdTimers,
    /// Pause between the route's appearance in the kernel and t0, so the daemon is idle at t0.
    pub settle: Duration,
    /// Bound on each wait for a kernel route to appear or go.
    pub event_timeout: Duration,
    /// Bound on start-up and on each (re)connection of the injector.
    pub start_timeout: Duration,
    /// Routes the injector sends before the runs (withdraw trigger only), as in `bgp_ingest`: the
    /// runs then happen with a table of this size in the RIB and the kernel.
    pub table_size: u32,
    /// Bound on the installation of those routes into the kernel.
    pub table_timeout: Duration,
    pub reefd: PathBuf,
}

/// One daemon's figures: milliseconds from t0 to the RTM_DELROUTE.
#[derive(Debug, Clone, Serialize)]
pub struct ConvergenceResult {
    pub daemon: String,
    pub runs: u32,
    /// Latency of every completed run, in run order.
    pub samples_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Runs whose route did not appear or did not go within the event timeout.
    pub failed_runs: u32,
    /// With `table_size`: seconds from the first UPDATE byte of the table until all its routes were
    /// in the kernel (the first run's, with BFD).
    pub table_install_seconds: Option<f64>,
    /// With BFD and `table_size`: milliseconds from t0 until every route of the session (the table and
    /// P) was removed from the kernel, per completed run.
    pub flush_samples_ms: Vec<f64>,
    pub flush_p50_ms: Option<f64>,
    pub flush_max_ms: Option<f64>,
    /// `rtm_protocol` of the daemon's kernel routes (BIRD 12, Reef 82).
    pub kernel_protocol: Option<u8>,
    /// Why the measurement stopped early, if it did.
    pub error: Option<String>,
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// The prefix of run `run`: counted down from the top of the workload's range, so that the routes of
/// `--table-size` (counted up from the bottom) never collide with it.
fn run_prefix(run: u32) -> Ipv4Net {
    Workload::prefix(MAX_PREFIXES - 1 - run % MAX_PREFIXES)
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Measures one daemon; a failure ends up in the result's `error`, so the other daemons still run.
pub fn measure(daemon: Daemon, options: &ConvergenceOptions) -> ConvergenceResult {
    let mut result = ConvergenceResult {
        daemon: daemon.name().to_string(),
        runs: options.runs,
        samples_ms: Vec::new(),
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        failed_runs: 0,
        table_install_seconds: None,
        flush_samples_ms: Vec::new(),
        flush_p50_ms: None,
        flush_max_ms: None,
        kernel_protocol: None,
        error: None,
    };
    if let Err(error) = measure_into(daemon, options, &mut result) {
        result.error = Some(format!("{error:#}"));
    }
    result.p50_ms = percentile(&result.samples_ms, 50.0);
    result.p99_ms = percentile(&result.samples_ms, 99.0);
    result.max_ms = result.samples_ms.iter().copied().reduce(f64::max);
    result.flush_p50_ms = percentile(&result.flush_samples_ms, 50.0);
    result.flush_max_ms = result.flush_samples_ms.iter().copied().reduce(f64::max);
    result
}

/// Everything one daemon's runs need; field order is drop order (session, then daemon, then namespaces).
struct Bed {
    watch: RouteWatch,
    receiver: Receiver,
    link: Link,
    peering: Peering,
    /// Kept for its Drop guard (the daemon runs inside).
    _daemon_ns: Netns,
    injector_ns: Netns,
    workdir: tempfile::TempDir,
}

fn measure_into(
    daemon: Daemon,
    options: &ConvergenceOptions,
    result: &mut ConvergenceResult,
) -> Result<()> {
    let injector_ns = Netns::new("rbcinj").context("injector namespace")?;
    let daemon_ns = Netns::new(&format!("rbc{daemon}")).context("daemon namespace")?;
    let link = veth(&injector_ns, &daemon_ns).context("veth")?;
    let peering = Peering {
        daemon_addr: link.b.v4,
        daemon_as: DAEMON_AS,
        injector_addr: link.a.v4,
        injector_as: INJECTOR_AS,
        hold_time: HOLD_TIME,
    };
    let setup = Setup {
        peerings: vec![peering],
        kernel_table: Some(TABLE),
        bfd: (options.trigger == Trigger::Bfd).then_some(options.bfd),
    };
    let mut receiver = Receiver::start(daemon, &daemon_ns, &setup, &options.reefd)?;
    wait_ready(&mut receiver, options.start_timeout)?;
    // Subscribed before the first announcement: no notification of ours can be missed.
    let watch = RouteWatch::open(daemon_ns.name())?;
    let mut bed = Bed {
        watch,
        receiver,
        link,
        peering,
        _daemon_ns: daemon_ns,
        injector_ns,
        workdir: tempfile::tempdir()?,
    };
    match options.trigger {
        Trigger::Withdraw => withdraw_runs(&mut bed, options, result),
        Trigger::Bfd => bfd_runs(&mut bed, options, result),
    }
}

impl Bed {
    /// Connects from the injector's namespace and establishes a session (the caller starts its writer).
    /// The daemon may refuse for a while after dropping the previous session: retried within `timeout`.
    fn session(&self, timeout: Duration) -> Result<Session> {
        let deadline = Instant::now() + timeout;
        let remote = SocketAddr::from((self.peering.daemon_addr, 179));
        let params = SessionParams {
            local_as: INJECTOR_AS,
            bgp_id: self.peering.injector_addr,
            hold_time: HOLD_TIME,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = crate::netns_socket::connect_from(self.injector_ns.name(), remote, left)
                .and_then(|stream| Session::establish(stream, &params, session_context(), left));
            match attempt {
                Ok(session) => return Ok(session),
                Err(error) if Instant::now() >= deadline || interrupted() => {
                    return Err(error.context("session with the daemon"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Starts the session's writer: the table's UPDATEs (then KEEPALIVEs), or KEEPALIVEs only. With a
    /// table, waits until the kernel has all its routes and returns the seconds that took.
    fn load_table(
        &mut self,
        session: &mut Session,
        table: Option<&EncodedUpdates>,
        options: &ConvergenceOptions,
    ) -> Result<Option<f64>> {
        let Some(table) = table else {
            session.keep_alive()?;
            return Ok(None);
        };
        let started = session.send(table)?;
        let installed = self.watch.count(
            Change::Added,
            TABLE,
            table.prefixes,
            options.table_timeout,
            &interrupted,
        )?;
        if installed < table.prefixes {
            self.check(session)?;
            bail!(
                "only {installed} of the {} table routes in the kernel after {:?}",
                table.prefixes,
                options.table_timeout
            );
        }
        Ok(Some(started.elapsed().as_secs_f64()))
    }

    /// Announces `prefix` and waits for its kernel route; returns the route's protocol.
    fn announce(&mut self, session: &Session, prefix: Ipv4Net, timeout: Duration) -> Result<u8> {
        session.write_now(&encode_announce(
            prefix,
            INJECTOR_AS,
            self.peering.injector_addr,
        )?)?;
        match self
            .watch
            .wait_for(Change::Added, prefix, TABLE, timeout, &interrupted)?
        {
            Some(event) => Ok(event.protocol),
            None => {
                self.check(session)?;
                bail!("{prefix} not in the kernel table {TABLE} within {timeout:?}")
            }
        }
    }

    /// Fails if the session or the daemon is gone (else a timeout was only a slow run).
    fn check(&mut self, session: &Session) -> Result<()> {
        if interrupted() {
            bail!("interrupted");
        }
        if let Some(failure) = session.failure() {
            bail!("session failed: {failure}");
        }
        self.receiver.check_running()
    }
}

/// The `--table-size` routes, encoded for this bed's next hop.
fn table_updates(bed: &Bed, options: &ConvergenceOptions) -> Result<Option<EncodedUpdates>> {
    if options.table_size == 0 {
        return Ok(None);
    }
    let workload = Workload::new(options.table_size, options.table_size.div_ceil(1000))?;
    Ok(Some(encode(
        &workload,
        INJECTOR_AS,
        bed.peering.injector_addr,
    )?))
}

/// Records one run's outcome; an error once too many runs in a row failed.
fn record(
    result: &mut ConvergenceResult,
    outcome: Result<f64>,
    consecutive_failures: &mut u32,
    run: u32,
) -> Result<()> {
    match outcome {
        Ok(ms) => {
            result.samples_ms.push(ms);
            *consecutive_failures = 0;
            Ok(())
        }
        Err(error) => {
            result.failed_runs += 1;
            *consecutive_failures += 1;
            eprintln!("{}: run {run} failed: {error:#}", result.daemon);
            if *consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                bail!("{MAX_CONSECUTIVE_FAILURES} runs in a row failed, last: {error:#}");
            }
            Ok(())
        }
    }
}

fn withdraw_runs(
    bed: &mut Bed,
    options: &ConvergenceOptions,
    result: &mut ConvergenceResult,
) -> Result<()> {
    let table = table_updates(bed, options)?;
    let mut session = bed.session(options.start_timeout)?;
    if let Some(seconds) = bed.load_table(&mut session, table.as_ref(), options)? {
        result.table_install_seconds = Some(seconds);
        // The daemon may still be busy with the table (bookkeeping after the kernel has it all).
        std::thread::sleep(TABLE_SETTLE);
    }
    let mut consecutive_failures = 0;
    for run in 0..options.runs {
        if interrupted() {
            bail!("interrupted");
        }
        let prefix = run_prefix(run);
        let withdraw = encode_withdraw(prefix)?;
        let outcome = (|| -> Result<f64> {
            let protocol = bed.announce(&session, prefix, options.event_timeout)?;
            result.kernel_protocol.get_or_insert(protocol);
            std::thread::sleep(options.settle);
            let t0 = session.write_now(&withdraw)?;
            match bed.watch.wait_for(
                Change::Removed,
                prefix,
                TABLE,
                options.event_timeout,
                &interrupted,
            )? {
                Some(removed) => Ok(removed.at.duration_since(t0).as_secs_f64() * 1000.0),
                None => {
                    bed.check(&session)?;
                    bail!(
                        "{prefix} still in the kernel {:?} after the withdraw",
                        options.event_timeout
                    )
                }
            }
        })();
        if let Err(error) = bed.check(&session) {
            return Err(error.context(format!("run {run}")));
        }
        record(result, outcome, &mut consecutive_failures, run)?;
    }
    Ok(())
}

fn bfd_runs(
    bed: &mut Bed,
    options: &ConvergenceOptions,
    result: &mut ConvergenceResult,
) -> Result<()> {
    let config = SessionConfig {
        min_tx: options.bfd.interval,
        min_rx: options.bfd.interval,
        multiplier: options.bfd.multiplier,
    };
    let peer = BfdPeer::start(
        bed.injector_ns.name(),
        IpAddr::V4(bed.peering.daemon_addr),
        IpAddr::V4(bed.peering.injector_addr),
        config,
    )?;
    // The daemon's side comes Up one packet after ours; wait a few intervals more before a cut.
    let settle = options.settle.max(options.bfd.interval * 3);
    let table = table_updates(bed, options)?;
    let mut consecutive_failures = 0;
    for run in 0..options.runs {
        if interrupted() {
            bail!("interrupted");
        }
        let prefix = run_prefix(run);
        let outcome = (|| -> Result<f64> {
            let mut session = bed.session(options.start_timeout)?;
            if let Some(seconds) = bed.load_table(&mut session, table.as_ref(), options)? {
                result.table_install_seconds.get_or_insert(seconds);
                std::thread::sleep(TABLE_SETTLE);
            }
            let protocol = bed.announce(&session, prefix, options.event_timeout)?;
            result.kernel_protocol.get_or_insert(protocol);
            peer.wait_up(options.start_timeout, &interrupted)?;
            std::thread::sleep(settle);
            let ifname = bed.link.a.ifname.clone();
            let cut = LinkCut::cut(&bed.injector_ns, &ifname, bed.workdir.path())?;
            let t0 = Instant::now();
            // P and, with a table, every table route: the daemon may remove them in any order.
            let others = table.as_ref().map_or(0, |table| table.prefixes);
            let timeout = if table.is_some() {
                options.table_timeout
            } else {
                options.event_timeout
            };
            let (mut removed, mut others_removed, mut last) = (None, 0, t0);
            bed.watch.watch_until(timeout, &interrupted, &mut |event| {
                if event.change == Change::Removed && event.table == TABLE {
                    if event.prefix == prefix {
                        removed = Some(event.at);
                    } else {
                        others_removed += 1;
                    }
                    last = event.at;
                }
                removed.is_some() && others_removed >= others
            })?;
            let removed = removed
                .ok_or_else(|| anyhow!("{prefix} still in the kernel {timeout:?} after the cut"))?;
            if others_removed < others {
                bail!(
                    "only {others_removed} of the {others} table routes removed after {timeout:?}"
                );
            }
            if table.is_some() {
                result
                    .flush_samples_ms
                    .push(last.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
            drop(cut);
            drop(session);
            bed.receiver.check_running()?;
            Ok(removed.saturating_duration_since(t0).as_secs_f64() * 1000.0)
        })();
        if interrupted() {
            bail!("interrupted");
        }
        bed.receiver.check_running()?;
        record(result, outcome, &mut consecutive_failures, run)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn triggers_parse() {
        assert_eq!("bfd".parse::<Trigger>().unwrap(), Trigger::Bfd);
        assert_eq!("withdraw".parse::<Trigger>().unwrap(), Trigger::Withdraw);
        assert!("flap".parse::<Trigger>().is_err());
    }
}
