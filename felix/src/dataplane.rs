//! The driver the agent calls: [`Dataplane::apply`] a new model, [`Dataplane::resync`] on the
//! timer ([`Dataplane::next_resync`]), or hand it a channel with [`Dataplane::run`]. Each sync reads
//! the kernel (links, Reef routes, VXLAN neighbours and FDB, sysctls), diffs against the desired
//! state and writes only the difference: a restart with the same model writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use reef_crds::workload::HOST_INTERFACE_PREFIX;

use crate::desired::{DesiredState, Problem, RouteTarget, VXLAN_DEVICE, desired_state};
use crate::fib::{
    FibDiff, FibError, FibOp, FibProgrammer, MAIN_TABLE, NextHop, Route, RouteKey, RouteKind,
};
use crate::links::{self, LinkState};
use crate::model::Model;
use crate::netlink::NetlinkSocket;
use crate::sysctl;

/// How the driver behaves.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// The namespace to program (`/run/netns/NAME`); `None`: the caller's.
    pub netns: Option<PathBuf>,
    /// How long a Reef route on a `reef*` interface felix does not know is left alone (the CNI
    /// plugin installs a pod's route before the endpoint reaches felix).
    pub grace: Duration,
    /// Full resync period.
    pub resync_interval: Duration,
    /// First retry delay after a failed kernel write; doubled per failed sync up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for DataplaneConfig {
    fn default() -> DataplaneConfig {
        DataplaneConfig {
            netns: None,
            grace: Duration::from_secs(10),
            resync_interval: Duration::from_secs(60),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Felix's Prometheus metrics; [`DataplaneMetrics::register`] adds them to the agent's registry.
/// The `object` label is one of `route`, `link` (the VXLAN device and its address), `neighbour`,
/// `fdb`, `sysctl`.
#[derive(Clone)]
pub struct DataplaneMetrics {
    /// `reef_felix_kernel_writes_total{object}`: writes sent (routes, links, ...).
    pub writes: IntCounterVec,
    /// `reef_felix_kernel_write_failures_total{object}`: writes the kernel refused (retried).
    pub write_failures: IntCounterVec,
    /// `reef_felix_syncs_total`: syncs (applies and resyncs) run.
    pub syncs: IntCounter,
    /// `reef_felix_sync_errors_total`: syncs that could not talk to the kernel at all.
    pub sync_errors: IntCounter,
    /// `reef_felix_routes`: Reef routes desired and programmable.
    pub routes: IntGauge,
    /// `reef_felix_model_problems`: parts of the model that cannot be programmed.
    pub model_problems: IntGauge,
}

impl Default for DataplaneMetrics {
    fn default() -> DataplaneMetrics {
        // The names and labels below are valid metric names, so construction cannot fail.
        let counter_vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["object"]).expect("valid metric name")
        };
        DataplaneMetrics {
            writes: counter_vec(
                "reef_felix_kernel_writes_total",
                "Kernel writes felix sent, by object kind",
            ),
            write_failures: counter_vec(
                "reef_felix_kernel_write_failures_total",
                "Kernel writes refused (retried with backoff), by object kind",
            ),
            syncs: IntCounter::new("reef_felix_syncs_total", "Dataplane syncs run")
                .expect("valid metric name"),
            sync_errors: IntCounter::new(
                "reef_felix_sync_errors_total",
                "Dataplane syncs that failed to read or write the kernel",
            )
            .expect("valid metric name"),
            routes: IntGauge::new("reef_felix_routes", "Reef routes desired and programmable")
                .expect("valid metric name"),
            model_problems: IntGauge::new(
                "reef_felix_model_problems",
                "Parts of the model felix cannot program",
            )
            .expect("valid metric name"),
        }
    }
}

impl DataplaneMetrics {
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.writes.clone()))?;
        registry.register(Box::new(self.write_failures.clone()))?;
        registry.register(Box::new(self.syncs.clone()))?;
        registry.register(Box::new(self.sync_errors.clone()))?;
        registry.register(Box::new(self.routes.clone()))?;
        registry.register(Box::new(self.model_problems.clone()))
    }

    fn count(&self, object: &str, writes: usize, failures: usize) {
        self.writes
            .with_label_values(&[object])
            .inc_by(writes as u64);
        self.write_failures
            .with_label_values(&[object])
            .inc_by(failures as u64);
    }

    /// The failures counted so far for `object` (one of route, link, neighbour, fdb, sysctl).
    pub fn failures(&self, object: &str) -> u64 {
        self.write_failures.with_label_values(&[object]).get()
    }
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Kernel writes sent, all object kinds.
    pub writes: usize,
    /// Writes the kernel refused: (object kind, what, error).
    pub failures: Vec<(&'static str, String, String)>,
    /// Deletes of unknown workload routes held back by the grace period.
    pub held_back: usize,
    /// Desired routes whose interface does not exist (yet).
    pub unresolved: usize,
    pub problems: Vec<Problem>,
}

/// The kernel routes for `desired`, with interfaces resolved in `ifindex` (name -> index).
/// Routes out of an interface that does not exist are left out, and counted.
pub fn kernel_routes(
    desired: &BTreeMap<IpNet, RouteTarget>,
    ifindex: &BTreeMap<String, u32>,
) -> (BTreeMap<RouteKey, Route>, usize) {
    let mut unresolved = 0;
    let mut routes = BTreeMap::new();
    for (prefix, target) in desired {
        let route = match target {
            RouteTarget::Blackhole => Route::blackhole(*prefix, MAIN_TABLE),
            RouteTarget::Gateways(gateways) => Route::unicast(
                *prefix,
                MAIN_TABLE,
                gateways
                    .iter()
                    .map(|gateway| NextHop::via(*gateway))
                    .collect(),
            ),
            RouteTarget::Interface(name) => match ifindex.get(name) {
                Some(index) => Route::unicast(*prefix, MAIN_TABLE, vec![NextHop::dev(*index)]),
                None => {
                    unresolved += 1;
                    continue;
                }
            },
            RouteTarget::Vxlan(gateway) => match ifindex.get(VXLAN_DEVICE) {
                // IPv6 gateways are the remote device's link-local address: on-link by nature.
                Some(index) => Route::unicast(
                    *prefix,
                    MAIN_TABLE,
                    vec![match gateway {
                        std::net::IpAddr::V4(_) => {
                            NextHop::via(*gateway).with_ifindex(*index).onlink()
                        }
                        std::net::IpAddr::V6(_) => NextHop::via(*gateway).with_ifindex(*index),
                    }],
                ),
                None => {
                    unresolved += 1;
                    continue;
                }
            },
        };
        routes.insert(route.key(), route);
    }
    (routes, unresolved)
}

/// Holds back the deletes of routes straight out of workload interfaces (`workload`: their
/// indices) until each has been unknown for `grace`, remembering since when in `unknown_since`.
/// Returns the ops to apply, how many were held back, and when the first hold ends.
pub fn hold_back_unknown(
    ops: Vec<FibOp>,
    actual: &BTreeMap<RouteKey, Route>,
    workload: &BTreeSet<u32>,
    unknown_since: &mut BTreeMap<RouteKey, Instant>,
    now: Instant,
    grace: Duration,
) -> (Vec<FibOp>, usize, Option<Instant>) {
    let on_workload = |key: &RouteKey| match actual.get(key).map(|route| &route.kind) {
        Some(RouteKind::Unicast { next_hops }) => next_hops
            .iter()
            .all(|hop| hop.gateway.is_none() && hop.ifindex.is_some_and(|i| workload.contains(&i))),
        _ => false,
    };
    let mut held = BTreeMap::new();
    let mut kept = Vec::with_capacity(ops.len());
    for op in ops {
        if let FibOp::Delete(key) = &op
            && on_workload(key)
        {
            let since = unknown_since.get(key).copied().unwrap_or(now);
            if now.saturating_duration_since(since) < grace {
                held.insert(*key, since);
                continue;
            }
        }
        kept.push(op);
    }
    let expiry = held.values().min().map(|since| *since + grace);
    let count = held.len();
    *unknown_since = held;
    (kept, count, expiry)
}

/// The dataplane driver of one network namespace.
pub struct Dataplane {
    config: DataplaneConfig,
    fib: FibProgrammer,
    socket: NetlinkSocket,
    model: Option<Model>,
    unknown_since: BTreeMap<RouteKey, Instant>,
    /// Sysctls known to hold their value: an apply checks only the others, a resync all.
    confirmed_sysctls: BTreeMap<String, String>,
    metrics: DataplaneMetrics,
    backoff: Option<Duration>,
    next_resync: Instant,
}

impl Dataplane {
    /// Opens the netlink sockets in the configured namespace. Nothing is read or written until
    /// the first [`Dataplane::apply`].
    pub fn open(config: DataplaneConfig) -> Result<Dataplane, FibError> {
        let (fib, socket) = match &config.netns {
            Some(path) => (
                FibProgrammer::open_in_netns(path)?,
                NetlinkSocket::open_in_netns(path)?,
            ),
            None => (FibProgrammer::open()?, NetlinkSocket::open()?),
        };
        Ok(Dataplane {
            next_resync: Instant::now() + config.resync_interval,
            config,
            fib,
            socket,
            model: None,
            unknown_since: BTreeMap::new(),
            confirmed_sysctls: BTreeMap::new(),
            metrics: DataplaneMetrics::default(),
            backoff: None,
        })
    }

    pub fn metrics(&self) -> &DataplaneMetrics {
        &self.metrics
    }

    /// When the next [`Dataplane::resync`] is due: the resync period, or sooner after failed
    /// writes (backoff) or when a grace period ends.
    pub fn next_resync(&self) -> Instant {
        self.next_resync
    }

    /// Programs `model`: computes the desired state and syncs the kernel to it.
    pub fn apply(&mut self, model: Model) -> Result<SyncReport, FibError> {
        self.model = Some(model);
        self.sync_and_schedule(false)
    }

    /// Reads the kernel again and repairs whatever differs from the last model's desired state
    /// (drift, failed writes, expired grace periods). Before any model: nothing.
    pub fn resync(&mut self) -> Result<SyncReport, FibError> {
        self.sync_and_schedule(true)
    }

    /// One sync (`full`: every sysctl checked, not only new ones) and the next resync's time.
    fn sync_and_schedule(&mut self, full: bool) -> Result<SyncReport, FibError> {
        self.metrics.syncs.inc();
        let result = self.sync(full);
        let now = Instant::now();
        let (retry, grace_end) = match &result {
            Ok((report, grace_end)) => (!report.failures.is_empty(), *grace_end),
            Err(_) => {
                self.metrics.sync_errors.inc();
                (true, None)
            }
        };
        let mut next = now + self.config.resync_interval;
        if retry {
            let backoff = self.backoff.map_or(self.config.retry_min, |b| {
                (b * 2).min(self.config.retry_max)
            });
            self.backoff = Some(backoff);
            next = next.min(now + backoff);
        } else {
            self.backoff = None;
        }
        if let Some(end) = grace_end {
            next = next.min(end);
        }
        self.next_resync = next;
        result.map(|(report, _)| report)
    }

    /// Runs until `models` is closed: applies each model received (the latest, when several
    /// queued up) and resyncs when due. Errors are logged and retried. Blocking: give it a thread
    /// (or `spawn_blocking`) and the receiving end of a bounded `sync_channel`.
    pub fn run(mut self, models: Receiver<Model>) {
        loop {
            let wait = self.next_resync.saturating_duration_since(Instant::now());
            let result = match models.recv_timeout(wait) {
                Ok(mut model) => {
                    while let Ok(newer) = models.try_recv() {
                        model = newer;
                    }
                    self.apply(model)
                }
                Err(RecvTimeoutError::Timeout) => self.resync(),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match result {
                Ok(report) if !report.failures.is_empty() => tracing::warn!(
                    failures = report.failures.len(),
                    first = ?report.failures[0],
                    "dataplane writes failed; retrying"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "dataplane sync failed; retrying"),
            }
        }
    }

    fn sync(&mut self, full: bool) -> Result<(SyncReport, Option<Instant>), FibError> {
        let mut report = SyncReport::default();
        let Some(model) = &self.model else {
            return Ok((report, None));
        };
        let mut links = links::dump_links(&mut self.socket)?;
        let mut model = model.clone();
        if model.host_mtu.is_none() {
            model.host_mtu = self.host_mtu(&model, &links)?;
        }
        let desired = desired_state(&model);
        self.metrics
            .model_problems
            .set(desired.problems.len() as i64);
        for problem in &desired.problems {
            tracing::debug!(%problem, "not programmed");
        }
        report.problems = desired.problems.clone();

        // The VXLAN device first: routes and neighbours refer to it.
        let vxlan = links.iter().find(|link| link.name == VXLAN_DEVICE);
        let ops = links::vxlan_ops(desired.vxlan.as_ref(), vxlan);
        if !ops.is_empty() {
            let requests: Vec<_> = ops.iter().map(links::link_request).collect();
            self.transact("link", &requests, &mut report, |i| format!("{:?}", ops[i]))?;
            links = links::dump_links(&mut self.socket)?;
        }
        self.sync_vxlan_entries(&desired, &links, &mut report)?;

        let ifindex: BTreeMap<String, u32> = links
            .iter()
            .map(|link| (link.name.clone(), link.index))
            .collect();
        let grace_end = self.sync_routes(&desired, &ifindex, &links, &mut report)?;

        let to_check: BTreeMap<String, String> = desired
            .sysctls
            .iter()
            .filter(|(path, value)| full || self.confirmed_sysctls.get(*path) != Some(*value))
            .map(|(path, value)| (path.clone(), value.clone()))
            .collect();
        if !to_check.is_empty() {
            let sysctls = sysctl::apply(self.config.netns.as_deref(), &to_check)?;
            let written = sysctls.written + sysctls.failures.len();
            self.metrics
                .count("sysctl", written, sysctls.failures.len());
            report.writes += written;
            let unconfirmed: BTreeSet<&String> = sysctls
                .missing
                .iter()
                .chain(sysctls.failures.iter().map(|(path, _)| path))
                .collect();
            self.confirmed_sysctls = desired
                .sysctls
                .iter()
                .filter(|(path, _)| !unconfirmed.contains(path))
                .map(|(path, value)| (path.clone(), value.clone()))
                .collect();
            report.failures.extend(
                sysctls
                    .failures
                    .into_iter()
                    .map(|(path, error)| ("sysctl", path, error)),
            );
        }
        // An endpoint that goes and comes back (a new veth of the same name) is checked again.
        self.confirmed_sysctls
            .retain(|path, _| desired.sysctls.contains_key(path));
        Ok((report, grace_end))
    }

    /// The MTU of the interface holding this node's underlay address.
    fn host_mtu(&mut self, model: &Model, links: &[LinkState]) -> Result<Option<u32>, FibError> {
        let node = &model.this_node;
        let ours = [node.address(true), node.address(false)];
        let addresses = links::dump_addresses(&mut self.socket)?;
        Ok(addresses
            .iter()
            .find(|address| ours.contains(&Some(address.addr)))
            .and_then(|address| links.iter().find(|link| link.index == address.ifindex))
            .map(|link| link.mtu))
    }

    /// Sends `requests`, counts them as `object` writes and records the refused ones.
    fn transact(
        &mut self,
        object: &'static str,
        requests: &[(u16, rtnetlink::packet_route::RouteNetlinkMessage)],
        report: &mut SyncReport,
        describe: impl Fn(usize) -> String,
    ) -> Result<(), FibError> {
        let failures = self.socket.transact(requests)?;
        self.metrics.count(object, requests.len(), failures.len());
        report.writes += requests.len();
        for (index, ack) in failures {
            let error = std::io::Error::from_raw_os_error(ack.errno).to_string();
            report.failures.push((object, describe(index), error));
        }
        Ok(())
    }

    /// The tunnel address, neighbours and FDB entries on the VXLAN device.
    fn sync_vxlan_entries(
        &mut self,
        desired: &DesiredState,
        links: &[LinkState],
        report: &mut SyncReport,
    ) -> Result<(), FibError> {
        let (Some(device), Some(link)) = (
            &desired.vxlan,
            links.iter().find(|link| link.name == VXLAN_DEVICE),
        ) else {
            return Ok(());
        };
        let index = link.index;
        let tunnel = std::net::IpAddr::V4(device.address);
        let addresses: BTreeSet<_> = links::dump_addresses(&mut self.socket)?
            .into_iter()
            .filter(|address| address.ifindex == index && address.global)
            .map(|address| address.addr)
            .collect();
        let mut requests = Vec::new();
        if !addresses.contains(&tunnel) {
            requests.push(links::address_request(index, tunnel, true));
        }
        requests.extend(
            addresses
                .iter()
                .filter(|addr| **addr != tunnel)
                .map(|addr| links::address_request(index, *addr, false)),
        );
        if !requests.is_empty() {
            self.transact("link", &requests, report, |_| "tunnel address".to_string())?;
        }

        let actual =
            links::permanent_neighbours(&links::dump_neighbours(&mut self.socket, index, false)?);
        let (set, delete) = links::map_diff(&desired.neighbours, &actual);
        let requests: Vec<_> = set
            .iter()
            .map(|(dst, mac)| links::neighbour_request(index, *dst, Some(*mac)))
            .chain(
                delete
                    .iter()
                    .map(|dst| links::neighbour_request(index, *dst, None)),
            )
            .collect();
        if !requests.is_empty() {
            self.transact("neighbour", &requests, report, |i| {
                format!("neighbour #{i}")
            })?;
        }

        let actual = links::fdb_entries(&links::dump_neighbours(&mut self.socket, index, true)?);
        let (set, delete) = links::map_diff(&desired.fdb, &actual);
        let requests: Vec<_> = set
            .iter()
            .map(|(mac, remote)| links::fdb_request(index, *mac, Some(*remote)))
            .chain(
                delete
                    .iter()
                    .map(|mac| links::fdb_request(index, *mac, None)),
            )
            .collect();
        if !requests.is_empty() {
            self.transact("fdb", &requests, report, |i| format!("fdb entry #{i}"))?;
        }
        Ok(())
    }

    /// Reef's routes in the main table; returns when the first held-back delete's grace ends.
    fn sync_routes(
        &mut self,
        desired: &DesiredState,
        ifindex: &BTreeMap<String, u32>,
        links: &[LinkState],
        report: &mut SyncReport,
    ) -> Result<Option<Instant>, FibError> {
        let (routes, unresolved) = kernel_routes(&desired.routes, ifindex);
        report.unresolved = unresolved;
        self.metrics.routes.set(routes.len() as i64);
        let actual = self.fib.dump_owned(Some(MAIN_TABLE))?;
        let workload: BTreeSet<u32> = links
            .iter()
            .filter(|link| link.name.starts_with(HOST_INTERFACE_PREFIX))
            .map(|link| link.index)
            .collect();
        let (ops, held_back, grace_end) = hold_back_unknown(
            FibDiff::compute(&routes, &actual),
            &actual,
            &workload,
            &mut self.unknown_since,
            Instant::now(),
            self.config.grace,
        );
        report.held_back = held_back;
        let applied = self.fib.apply(&ops)?;
        self.metrics
            .count("route", applied.ops, applied.failures.len());
        report.writes += applied.ops;
        report
            .failures
            .extend(applied.failures.into_iter().map(|failure| {
                (
                    "route",
                    format!("{:?}", failure.op),
                    failure.error.to_string(),
                )
            }));
        Ok(grace_end)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_resolve_interfaces_and_skip_missing_ones() {
        let desired = BTreeMap::from([
            (net("10.244.0.5/32"), RouteTarget::Interface("reefa".into())),
            (
                net("10.244.0.6/32"),
                RouteTarget::Interface("reefgone".into()),
            ),
            (net("10.244.0.0/26"), RouteTarget::Blackhole),
            (net("10.244.1.0/26"), RouteTarget::Vxlan(ip("10.244.1.0"))),
            (net("fd00::/122"), RouteTarget::Vxlan(ip("fe80::1"))),
            (
                net("10.244.2.0/26"),
                RouteTarget::Gateways(vec![ip("198.51.100.2"), ip("198.51.100.3")]),
            ),
        ]);
        let ifindex = BTreeMap::from([("reefa".to_string(), 5), (VXLAN_DEVICE.to_string(), 9)]);
        let (routes, unresolved) = kernel_routes(&desired, &ifindex);
        assert_eq!(unresolved, 1);
        let key = |s| RouteKey {
            table: MAIN_TABLE,
            dst: net(s),
        };
        assert_eq!(
            routes[&key("10.244.0.5/32")],
            Route::unicast(net("10.244.0.5/32"), MAIN_TABLE, vec![NextHop::dev(5)])
        );
        assert_eq!(
            routes[&key("10.244.1.0/26")],
            Route::unicast(
                net("10.244.1.0/26"),
                MAIN_TABLE,
                vec![NextHop::via(ip("10.244.1.0")).with_ifindex(9).onlink()]
            )
        );
        assert_eq!(
            routes[&key("fd00::/122")],
            Route::unicast(
                net("fd00::/122"),
                MAIN_TABLE,
                vec![NextHop::via(ip("fe80::1")).with_ifindex(9)]
            )
        );
        assert!(matches!(
            &routes[&key("10.244.2.0/26")].kind,
            RouteKind::Unicast { next_hops } if next_hops.len() == 2
        ));
        let (none, unresolved) = kernel_routes(&desired, &BTreeMap::new());
        assert_eq!((none.len(), unresolved), (2, 4));
    }

    #[test]
    fn unknown_workload_routes_are_deleted_only_after_the_grace_period() {
        let pod = Route::unicast(net("10.244.0.7/32"), MAIN_TABLE, vec![NextHop::dev(5)]);
        let remote = Route::unicast(
            net("10.244.1.0/26"),
            MAIN_TABLE,
            vec![NextHop::via(ip("198.51.100.2"))],
        );
        let actual = crate::fib::by_key([pod.clone(), remote.clone()]);
        let ops = || vec![FibOp::Delete(pod.key()), FibOp::Delete(remote.key())];
        let workload = BTreeSet::from([5]);
        let grace = Duration::from_secs(10);
        let start = Instant::now();
        let mut since = BTreeMap::new();
        let (kept, held, end) =
            hold_back_unknown(ops(), &actual, &workload, &mut since, start, grace);
        assert_eq!(kept, vec![FibOp::Delete(remote.key())]);
        assert_eq!((held, end), (1, Some(start + grace)));
        // Still within the grace period: still held, the clock not restarted.
        let later = start + Duration::from_secs(9);
        let (kept, held, end) =
            hold_back_unknown(ops(), &actual, &workload, &mut since, later, grace);
        assert_eq!((kept.len(), held, end), (1, 1, Some(start + grace)));
        // Over: deleted.
        let (kept, held, end) =
            hold_back_unknown(ops(), &actual, &workload, &mut since, start + grace, grace);
        assert_eq!((kept, held, end), (ops(), 0, None));
        assert!(since.is_empty());
        // Not on a workload interface: never held.
        let (kept, held, _) =
            hold_back_unknown(ops(), &actual, &BTreeSet::new(), &mut since, start, grace);
        assert_eq!((kept, held), (ops(), 0));
    }

    #[test]
    fn metrics_register_once() {
        let metrics = DataplaneMetrics::default();
        let registry = Registry::new();
        metrics.register(&registry).unwrap();
        metrics.count("route", 3, 1);
        assert_eq!(metrics.failures("route"), 1);
        assert!(metrics.register(&registry).is_err());
    }
}
