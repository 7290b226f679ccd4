//! reefd's Prometheus metrics: one registry of typed metrics.
//!
//! Session and FIB figures are snapshots the speaker and the FIB task already keep: they are copied
//! into the registry at each scrape ([`Metrics::render`]). The others are fed as things happen by the
//! part that does them (the agent core holds an `Arc<Metrics>`): FIB and policy programming latency,
//! datastore errors and watch restarts, IPAM blocks and allocations.

use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use reef_bgp::driver::PeerStatus;
use reef_bgp::fsm::State as SessionState;

use crate::fib::FibStats;

/// Buckets of the programming latency histograms, in seconds: 1 ms to 10 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Prefix of the metrics that exist only when reefd programs kernel routes.
const FIB_PREFIX: &str = "reef_fib_";

pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: a scrape resets and refills the snapshot metrics.
    scrape: Mutex<()>,
    sessions: IntGaugeVec,
    session_established: IntGaugeVec,
    prefixes_received: IntGaugeVec,
    prefixes_advertised: IntGaugeVec,
    updates_received: IntCounterVec,
    routes_ignored: IntCounterVec,
    fib_routes: IntGauge,
    fib_errors: IntCounter,
    fib_synced: IntGauge,
    /// Time from a routing change to the kernel acknowledging the routes.
    pub fib_programming_seconds: Histogram,
    /// Time to program a policy change into the dataplane (nft batch applied).
    pub policy_programming_seconds: Histogram,
    /// Failed datastore calls, by operation (`get`, `list`, `watch`, `create`, `update`, `delete`).
    pub datastore_errors: IntCounterVec,
    /// Watches started again (expired revision, lost connection), by resource kind.
    pub watch_restarts: IntCounterVec,
    /// IPAM blocks affine to this node.
    pub ipam_blocks: IntGauge,
    /// Addresses this node has allocated.
    pub ipam_allocations: IntGauge,
}

/// Registers `metric` and hands it back (names are constants: a clash is a bug caught by the tests).
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique constants");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // The option values below are constants: construction errors (bad names, label clashes)
        // cannot happen at run time once the tests pass.
        let gauge_vec = |name: &str, help: &str, label: &str| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let histogram = |name: &str, help: &str| {
            register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            )
        };
        Self {
            sessions: gauge_vec("reef_bgp_sessions", "BGP sessions by state.", "state"),
            session_established: gauge_vec(
                "reef_bgp_session_established",
                "1 if the session is Established.",
                "peer",
            ),
            prefixes_received: gauge_vec(
                "reef_bgp_prefixes_received",
                "Routes in the peer's Adj-RIB-In.",
                "peer",
            ),
            prefixes_advertised: gauge_vec(
                "reef_bgp_prefixes_advertised",
                "Prefixes advertised to the peer.",
                "peer",
            ),
            updates_received: counter_vec(
                "reef_bgp_updates_received_total",
                "UPDATE messages received from the peer.",
                "peer",
            ),
            routes_ignored: counter_vec(
                "reef_bgp_routes_ignored_total",
                "Received routes ignored by error handling or NEXT_HOP checks.",
                "peer",
            ),
            fib_routes: gauge(
                "reef_fib_routes",
                "Reef routes installed in the kernel routing table.",
            ),
            fib_errors: register(
                &registry,
                IntCounter::new(
                    "reef_fib_errors_total",
                    "Route operations the kernel refused and failed netlink exchanges.",
                )
                .expect("valid metric"),
            ),
            fib_synced: gauge(
                "reef_fib_synced",
                "1 once the kernel table was synced with the converged Loc-RIB.",
            ),
            fib_programming_seconds: histogram(
                "reef_fib_programming_seconds",
                "Time from a routing change to the kernel routes being programmed.",
            ),
            policy_programming_seconds: histogram(
                "reef_policy_programming_seconds",
                "Time to program a policy change into the dataplane.",
            ),
            datastore_errors: counter_vec(
                "reef_datastore_errors_total",
                "Failed datastore calls, by operation.",
                "operation",
            ),
            watch_restarts: counter_vec(
                "reef_datastore_watch_restarts_total",
                "Datastore watches started again (expired revision, lost connection), by kind.",
                "kind",
            ),
            ipam_blocks: gauge("reef_ipam_blocks", "IPAM blocks affine to this node."),
            ipam_allocations: gauge("reef_ipam_allocations", "Addresses allocated on this node."),
            registry,
            scrape: Mutex::new(()),
        }
    }

    /// The Prometheus text exposition, with the session figures of `peers` and, when reefd programs
    /// kernel routes, the FIB's (without `fib` the `reef_fib_*` metrics are left out).
    pub fn render(&self, peers: &[PeerStatus], fib: Option<&FibStats>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.sessions.reset();
        for state in SessionState::ALL {
            let count = peers.iter().filter(|p| p.state == state.name()).count();
            self.sessions
                .with_label_values(&[state.name()])
                .set(count as i64);
        }
        for vec in [
            &self.session_established,
            &self.prefixes_received,
            &self.prefixes_advertised,
        ] {
            vec.reset();
        }
        self.updates_received.reset();
        self.routes_ignored.reset();
        for peer in peers {
            let label = [peer.address.to_string()];
            self.session_established
                .with_label_values(&label)
                .set(i64::from(peer.state == "Established"));
            self.prefixes_received
                .with_label_values(&label)
                .set(peer.prefixes_received as i64);
            self.prefixes_advertised
                .with_label_values(&label)
                .set(peer.prefixes_advertised as i64);
            self.updates_received
                .with_label_values(&label)
                .inc_by(peer.updates_received);
            self.routes_ignored
                .with_label_values(&label)
                .inc_by(peer.routes_ignored);
        }
        if let Some(fib) = fib {
            self.fib_routes.set(fib.routes.load(Relaxed) as i64);
            self.fib_errors.reset();
            self.fib_errors.inc_by(fib.errors.load(Relaxed));
            self.fib_synced.set(fib.synced.load(Relaxed) as i64);
        }
        let mut families = self.registry.gather();
        if fib.is_none() {
            families.retain(|family| !family.name().starts_with(FIB_PREFIX));
        }
        let mut out = Vec::new();
        // Writing text into a Vec fails only on metrics the registry would not have accepted.
        match TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("# metrics encoding failed: {e}\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fed_metrics_are_exposed_and_fib_ones_only_with_a_fib() {
        let metrics = Metrics::new();
        metrics.fib_programming_seconds.observe(0.003);
        metrics.datastore_errors.with_label_values(&["watch"]).inc();
        metrics
            .watch_restarts
            .with_label_values(&["BGPPeer"])
            .inc_by(2);
        let text = metrics.render(&[], None);
        assert!(
            text.contains("reef_bgp_sessions{state=\"Established\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("reef_datastore_errors_total{operation=\"watch\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("reef_datastore_watch_restarts_total{kind=\"BGPPeer\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE reef_policy_programming_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("reef_fib_"), "{text}");
        let fib = FibStats::default();
        fib.errors.store(4, Relaxed);
        let text = metrics.render(&[], Some(&fib));
        assert!(
            text.contains("reef_fib_programming_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("\nreef_fib_errors_total 4\n"), "{text}");
        assert!(
            text.contains("# TYPE reef_fib_errors_total counter"),
            "{text}"
        );
        assert!(text.contains("\nreef_fib_synced 0\n"), "{text}");
    }
}
