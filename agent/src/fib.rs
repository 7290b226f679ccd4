//! Kernel routes from the Loc-RIB: the speaker's `FibUpdate`s programmed into one routing table of
//! reefd's network namespace through felix's `FibProgrammer` (netlink, blocking: it runs on the
//! blocking thread pool). Only Reef routes (protocol 82) are ever replaced or removed; a prefix held by
//! another owner's route is refused by the kernel (`EEXIST`) and counted as an error.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use reef_bgp::routing::{FibRoute, FibUpdate};
use reef_felix::fib::{
    ApplyReport, FibDiff, FibError, FibOp, FibProgrammer, NextHop, Route, RouteKey,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Updates merged into one netlink batch at most (more wait for the next round).
const MAX_COALESCED_UPDATES: usize = 1024;
/// How soon routes the kernel refused (e.g. a next hop not reachable yet) are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Whether operations are sent for the first time or retried (only logged once at warning level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    First,
    Retry,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct FibStats {
    /// Reef routes in the table as far as reefd knows.
    pub routes: AtomicU64,
    /// Route operations the kernel refused, and failed netlink exchanges.
    pub errors: AtomicU64,
    /// 1 once the first full sync ran.
    pub synced: AtomicU64,
}

/// The programmer with the desired and the installed table.
pub struct Fib {
    programmer: FibProgrammer,
    table: u32,
    /// Reef routes in the kernel table, as far as we know (the start dump, then our changes).
    installed: BTreeMap<RouteKey, Route>,
    /// What the Loc-RIB wants.
    desired: BTreeMap<RouteKey, Route>,
    /// Desired routes the kernel refused: tried again every [`RETRY_INTERVAL`].
    refused: BTreeSet<RouteKey>,
    /// A netlink exchange failed: `installed` is uncertain until the table is read again.
    uncertain: bool,
    /// The speaker said Synced but the sync failed: tried again with the retries.
    sync_pending: bool,
    stats: Arc<FibStats>,
}

impl Fib {
    /// Opens a netlink socket in the calling thread's network namespace and reads the Reef routes
    /// already in `table` (left by a previous run). Blocking.
    pub fn open(table: u32) -> Result<Fib, FibError> {
        Fib::new(FibProgrammer::open()?, table)
    }

    /// As [`Fib::open`] with a programmer opened elsewhere (e.g. in another namespace).
    pub fn new(mut programmer: FibProgrammer, table: u32) -> Result<Fib, FibError> {
        let installed = programmer.dump_owned(Some(table))?;
        let stats = Arc::new(FibStats::default());
        stats
            .routes
            .store(installed.len() as u64, Ordering::Relaxed);
        Ok(Fib {
            programmer,
            table,
            installed,
            desired: BTreeMap::new(),
            refused: BTreeSet::new(),
            uncertain: false,
            sync_pending: false,
            stats,
        })
    }

    /// How many Reef routes the table held when opened (before any update).
    pub fn installed_routes(&self) -> usize {
        self.installed.len()
    }

    pub fn stats(&self) -> Arc<FibStats> {
        self.stats.clone()
    }

    fn key(&self, prefix: IpNet) -> RouteKey {
        RouteKey {
            table: self.table,
            dst: prefix,
        }
    }

    /// Installs, replaces or (no next hops) removes routes. A later route for a prefix wins.
    pub fn apply_routes(
        &mut self,
        routes: impl IntoIterator<Item = FibRoute>,
    ) -> Result<(), FibError> {
        let merged: BTreeMap<IpNet, Vec<IpAddr>> = routes
            .into_iter()
            .map(|route| (route.prefix, route.next_hops))
            .collect();
        let mut ops = Vec::new();
        for (prefix, mut next_hops) in merged {
            let key = self.key(prefix);
            self.refused.remove(&key);
            next_hops.sort();
            next_hops.dedup();
            let offered = next_hops.len();
            next_hops.retain(|hop| usable_gateway(prefix, *hop));
            if next_hops.len() < offered {
                // Counted once per update: the speaker selected a path the kernel cannot use.
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!(%prefix, "next hops without a usable gateway left out");
            }
            if next_hops.is_empty() {
                self.desired.remove(&key);
                if self.installed.contains_key(&key) {
                    ops.push(FibOp::Delete(key));
                }
                continue;
            }
            let route = Route::unicast(
                prefix,
                self.table,
                next_hops.into_iter().map(NextHop::via).collect(),
            );
            match self.installed.get(&key) {
                None => ops.push(FibOp::Add(route.clone())),
                Some(have) if !route.satisfied_by(have) => ops.push(FibOp::Replace(route.clone())),
                Some(_) => {}
            }
            self.desired.insert(key, route);
        }
        self.execute(&ops, Attempt::First)
    }

    /// The first full sync: the kernel table becomes exactly the desired routes (Reef routes only).
    pub fn sync(&mut self) -> Result<(), FibError> {
        self.sync_pending = true;
        let actual = self.programmer.dump_owned(Some(self.table))?;
        let ops = FibDiff::compute(&self.desired, &actual);
        let stale = ops
            .iter()
            .filter(|op| matches!(op, FibOp::Delete(_)))
            .count();
        self.installed = actual;
        self.refused.clear();
        self.execute(&ops, Attempt::First)?;
        self.sync_pending = false;
        self.stats.synced.store(1, Ordering::Relaxed);
        info!(
            table = self.table,
            routes = self.installed.len(),
            removed_stale = stale,
            "kernel routes synced with the Loc-RIB"
        );
        Ok(())
    }

    /// Tries the refused routes again (after reading the table back if an exchange failed), or the
    /// sync that failed. Nothing when there is nothing to catch up on.
    pub fn retry(&mut self) -> Result<(), FibError> {
        if self.refused.is_empty() && !self.uncertain && !self.sync_pending {
            return Ok(());
        }
        if self.sync_pending {
            // Reads the table afresh and fixes every difference, refused routes included.
            self.uncertain = false;
            return self.sync();
        }
        if self.uncertain {
            self.installed = self.programmer.dump_owned(Some(self.table))?;
            self.uncertain = false;
            let differing: Vec<RouteKey> = self
                .desired
                .iter()
                .filter(|(key, route)| {
                    self.installed
                        .get(key)
                        .is_none_or(|have| !route.satisfied_by(have))
                })
                .map(|(key, _)| *key)
                .collect();
            self.refused.extend(differing);
            self.stats
                .routes
                .store(self.installed.len() as u64, Ordering::Relaxed);
        }
        let ops: Vec<FibOp> = std::mem::take(&mut self.refused)
            .into_iter()
            .filter_map(|key| {
                let route = self.desired.get(&key)?.clone();
                Some(match self.installed.get(&key) {
                    None => FibOp::Add(route),
                    Some(_) => FibOp::Replace(route),
                })
            })
            .collect();
        self.execute(&ops, Attempt::Retry)
    }

    /// Removes every Reef route of the table (shutdown without graceful restart).
    pub fn flush(&mut self) -> Result<(), FibError> {
        self.desired.clear();
        let actual = self.programmer.dump_owned(Some(self.table))?;
        let ops = FibDiff::compute(&self.desired, &actual);
        self.installed = actual;
        self.execute(&ops, Attempt::First)
    }

    /// Sends the operations and keeps `installed` in step with what the kernel accepted.
    fn execute(&mut self, ops: &[FibOp], attempt: Attempt) -> Result<(), FibError> {
        if ops.is_empty() {
            return Ok(());
        }
        let report = match self.programmer.apply(ops) {
            Ok(report) => report,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.uncertain = true;
                return Err(e);
            }
        };
        self.record(ops, &report, attempt);
        Ok(())
    }

    fn record(&mut self, ops: &[FibOp], report: &ApplyReport, attempt: Attempt) {
        let failed: BTreeMap<RouteKey, Option<i32>> = report
            .failures
            .iter()
            .map(|failure| (failure.op.key(), failure.error.errno()))
            .collect();
        for op in ops {
            match (op, failed.get(&op.key())) {
                (FibOp::Add(route) | FibOp::Replace(route), None) => {
                    self.installed.insert(route.key(), route.clone());
                }
                (FibOp::Delete(key), None) => {
                    self.installed.remove(key);
                }
                // Already gone.
                (FibOp::Delete(key), Some(Some(libc::ESRCH))) => {
                    self.installed.remove(key);
                }
                (FibOp::Delete(_), Some(_)) => {}
                (FibOp::Add(route) | FibOp::Replace(route), Some(_)) => {
                    self.refused.insert(route.key());
                }
            }
        }
        if let Some(first) = report.failures.first() {
            self.stats
                .errors
                .fetch_add(report.failures.len() as u64, Ordering::Relaxed);
            let refused = report.failures.len();
            let (first, error) = (first.op.key().dst, &first.error);
            match attempt {
                Attempt::First => {
                    warn!(table = self.table, ops = report.ops, refused, %first, %error, "the kernel refused some routes");
                }
                // Already reported once: a route that stays refused must not flood the log.
                Attempt::Retry => {
                    debug!(table = self.table, ops = report.ops, refused, %first, %error, "the kernel refused some routes again");
                }
            }
        }
        self.stats
            .routes
            .store(self.installed.len() as u64, Ordering::Relaxed);
        debug!(table = self.table, ops = report.ops, "routes programmed");
    }
}

/// Whether the kernel can route `prefix` via `gateway`. An IPv6 prefix cannot go via an IPv4 gateway
/// (no RTA_VIA for IPv6), so the IPv4-mapped next hop `::ffff:a.b.c.d` that BGP speakers send for IPv6
/// routes over IPv4 sessions is unusable; an IPv4 prefix via an IPv6 gateway is fine (RFC 8950).
fn usable_gateway(prefix: IpNet, gateway: IpAddr) -> bool {
    match (prefix, gateway) {
        (IpNet::V6(_), IpAddr::V4(_)) => false,
        (IpNet::V6(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_none() && !v6.is_unspecified(),
        (IpNet::V4(_), gateway) => !gateway.is_unspecified(),
    }
}

fn lock(fib: &Mutex<Fib>) -> MutexGuard<'_, Fib> {
    // A panic in the middle of a batch leaves `installed` possibly stale, which the next sync fixes.
    fib.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running programmer: a task feeding the speaker's updates to [`Fib`] on the blocking pool.
pub struct FibTask {
    fib: Arc<Mutex<Fib>>,
    task: JoinHandle<()>,
}

impl FibTask {
    pub fn start(fib: Fib, updates: UnboundedReceiver<FibUpdate>) -> FibTask {
        let fib = Arc::new(Mutex::new(fib));
        let task = tokio::spawn(run(fib.clone(), updates));
        FibTask { fib, task }
    }

    /// Stops consuming updates; `flush` removes the Reef routes of the table, otherwise they stay
    /// (graceful restart: the next run finds and keeps them).
    pub async fn stop(self, flush: bool) {
        self.task.abort();
        let _ = self.task.await;
        if !flush {
            return;
        }
        let fib = self.fib;
        let result = tokio::task::spawn_blocking(move || lock(&fib).flush()).await;
        match result {
            Ok(Ok(())) => info!("kernel routes removed"),
            Ok(Err(e)) => warn!(error = %e, "cannot remove the kernel routes"),
            Err(e) => warn!(error = %e, "cannot remove the kernel routes"),
        }
    }
}

async fn run(fib: Arc<Mutex<Fib>>, mut updates: UnboundedReceiver<FibUpdate>) {
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            update = updates.recv() => match update {
                Some(update) => update,
                None => break,
            },
            _ = retry.tick() => {
                let fib = fib.clone();
                let result = tokio::task::spawn_blocking(move || {
                    lock(&fib).retry()
                })
                .await;
                report(result, "retry");
                continue;
            }
        };
        // Coalesce what is queued into one batch; Synced runs after the routes before it.
        let mut routes = Vec::new();
        let mut synced = false;
        let mut update = Some(first);
        let mut taken = 0;
        while let Some(next) = update.take() {
            match next {
                FibUpdate::Routes(batch) => routes.extend(batch),
                FibUpdate::Synced => {
                    synced = true;
                    break;
                }
            }
            taken += 1;
            if taken < MAX_COALESCED_UPDATES {
                update = updates.try_recv().ok();
            }
        }
        let fib = fib.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut fib = lock(&fib);
            // Set first: if the routes fail, the retries still run the sync.
            fib.sync_pending |= synced;
            fib.apply_routes(routes)?;
            if synced {
                fib.sync()?;
            }
            Ok(())
        })
        .await;
        report(result, "update");
    }
    debug!("FIB updates ended");
}

fn report(result: Result<Result<(), FibError>, tokio::task::JoinError>, what: &str) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "kernel route {what} failed"),
        Err(e) => warn!(error = %e, "kernel route {what} task failed"),
    }
}

#[cfg(test)]
mod tests {
    use reef_lab::{Netns, require_root, veth};

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn route(prefix: &str, next_hops: &[IpAddr]) -> FibRoute {
        FibRoute {
            prefix: net(prefix),
            next_hops: next_hops.to_vec(),
        }
    }

    #[test]
    #[ignore = "needs root: network namespaces"]
    fn programs_ecmp_routes_syncs_stale_ones_and_leaves_other_owners_alone() {
        require_root();
        let tag = format!("rfib{}", std::process::id());
        let ns = Netns::new(&tag).unwrap();
        let peer = Netns::new(&format!("{tag}p")).unwrap();
        let links = [veth(&ns, &peer).unwrap(), veth(&ns, &peer).unwrap()];
        let gw = [IpAddr::V4(links[0].b.v4), IpAddr::V4(links[1].b.v4)];
        let gw6 = IpAddr::V6(links[0].b.v6);
        let table = reef_felix::fib::MAIN_TABLE;
        // Another owner's route, and a Reef route left by a "previous run".
        ns.ip(&[
            "route",
            "add",
            "10.70.0.0/24",
            "via",
            &gw[0].to_string(),
            "proto",
            "static",
        ])
        .unwrap();
        ns.ip(&[
            "route",
            "add",
            "10.71.0.0/24",
            "via",
            &gw[0].to_string(),
            "proto",
            "82",
        ])
        .unwrap();
        let programmer = FibProgrammer::open_in_netns(format!("/run/netns/{}", ns.name())).unwrap();
        let mut fib = Fib::new(programmer, table).unwrap();
        assert_eq!(fib.installed_routes(), 1, "the left-over Reef route only");

        let mapped = IpAddr::V6(links[0].b.v4.to_ipv6_mapped());
        fib.apply_routes([
            route("10.72.0.0/24", &gw),
            route("10.70.0.0/24", &gw[..1]),
            route("2001:db8:72::/48", &[gw6, mapped]),
            route("2001:db8:73::/48", &[mapped]),
        ])
        .unwrap();
        let ecmp = ns
            .kernel_route(net("10.72.0.0/24"), table)
            .unwrap()
            .unwrap();
        assert_eq!(ecmp.protocol, "82");
        assert_eq!(ecmp.next_hops, gw.into_iter().collect());
        let v6 = ns
            .kernel_route(net("2001:db8:72::/48"), table)
            .unwrap()
            .unwrap();
        assert_eq!(
            v6.next_hops,
            [gw6].into_iter().collect(),
            "mapped hop left out"
        );
        assert!(
            ns.kernel_route(net("2001:db8:73::/48"), table)
                .unwrap()
                .is_none()
        );
        let other = ns
            .kernel_route(net("10.70.0.0/24"), table)
            .unwrap()
            .unwrap();
        assert_eq!(other.protocol, "static", "another owner's route stays");
        assert_eq!(
            fib.stats.errors.load(Ordering::Relaxed),
            3,
            "EEXIST and the two routes with a mapped next hop counted"
        );
        assert!(
            ns.kernel_route(net("10.71.0.0/24"), table)
                .unwrap()
                .is_some(),
            "stale routes stay until the sync"
        );

        fib.sync().unwrap();
        assert!(
            ns.kernel_route(net("10.71.0.0/24"), table)
                .unwrap()
                .is_none()
        );
        assert!(
            ns.kernel_route(net("10.72.0.0/24"), table)
                .unwrap()
                .is_some()
        );
        assert_eq!(fib.stats.routes.load(Ordering::Relaxed), 2);
        assert_eq!(fib.stats.synced.load(Ordering::Relaxed), 1);

        // One hop less, then withdrawn.
        fib.apply_routes([route("10.72.0.0/24", &gw[1..])]).unwrap();
        let single = ns
            .kernel_route(net("10.72.0.0/24"), table)
            .unwrap()
            .unwrap();
        assert_eq!(single.next_hops, [gw[1]].into_iter().collect());
        fib.apply_routes([route("10.72.0.0/24", &[])]).unwrap();
        assert!(
            ns.kernel_route(net("10.72.0.0/24"), table)
                .unwrap()
                .is_none()
        );

        fib.flush().unwrap();
        assert!(
            ns.kernel_route(net("2001:db8:72::/48"), table)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            ns.kernel_route(net("10.70.0.0/24"), table)
                .unwrap()
                .unwrap()
                .protocol,
            "static"
        );
        assert_eq!(fib.stats.routes.load(Ordering::Relaxed), 0);
    }
}
