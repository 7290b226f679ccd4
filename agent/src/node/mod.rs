//! Node mode: the node's address (autodetected, logged with the reason), its ReefNode registered,
//! the resources watched into a [`calc::Snapshot`], the pure [`calc::calculate`] run after each batch
//! of changes and its result applied live to the speaker; the ReefNode status kept current.
//!
//! A datastore outage changes nothing: the snapshot keeps the last state, the watchers retry and
//! resume (or re-list), and a re-list that finds the same objects gives the same desired state, which
//! the speaker applies as "no change".

pub mod autodetect;
pub mod calc;
mod status;
mod watch;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ipnet::Ipv4Net;
use reef_bgp::routing::DEFAULT_SELECTION_DEFERRAL;
use reef_crds::{ReefNode, ReefNodeStatus};
use reef_datastore::Datastore;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::desired::DesiredBgp;
use crate::runtime::{self, Runtime, Signalled, Signals};
use calc::{Rejected, Snapshot};

/// Watcher events queued at most (the watchers wait when it is full).
const EVENT_QUEUE: usize = 1024;
/// Changes arriving within this time are calculated and applied together.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the ReefNode status is compared with the speaker and written when it changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Wait between attempts at registering the ReefNode while the datastore is unavailable.
const REGISTER_RETRY: Duration = Duration::from_secs(2);

/// Where the node's address comes from.
pub enum AddressSource {
    Given(Ipv4Net),
    Detect(autodetect::Method),
}

pub struct NodeOptions {
    pub name: String,
    pub datastore: Datastore,
    pub address: AddressSource,
    pub as_number: Option<u32>,
    pub secrets_namespace: String,
    pub fib_table: u32,
    pub admin: crate::runtime::AdminOptions,
}

fn node_address(source: &AddressSource) -> anyhow::Result<Ipv4Net> {
    match source {
        AddressSource::Given(address) => {
            info!(%address, reason = "given with --node-ip / REEF_NODE_IP", "node address");
            Ok(*address)
        }
        AddressSource::Detect(method) => {
            let chosen = autodetect::detect(method)?;
            info!(
                address = %chosen.address, interface = chosen.interface, %method,
                reason = chosen.reason, "node address autodetected"
            );
            Ok(chosen.address)
        }
    }
}

/// A start with Reef routes in the kernel is a graceful restart: they stay until the peers'
/// End-of-RIB, at most the selection deferral time.
fn mark_restarting(desired: &mut DesiredBgp) {
    let routing = &mut desired.speaker.routing;
    routing.fib_sync_deferral = Some(DEFAULT_SELECTION_DEFERRAL);
    if let Some(gr) = routing.graceful_restart.as_mut() {
        gr.restarting = true;
    }
}

/// The node agent's state between events.
struct Node {
    options: NodeOptions,
    snapshot: Snapshot,
    /// Kinds listed at least once: nothing is calculated before every kind was.
    synced: BTreeSet<&'static str>,
    runtime: Option<Runtime>,
    rejected: Vec<Rejected>,
    /// Problems for the status: rejected resources, refused peers, why BGP cannot run.
    problems: Vec<String>,
    status: Option<ReefNodeStatus>,
}

/// Runs node mode until SIGTERM/SIGINT.
pub async fn run(options: NodeOptions, mut signals: Signals) -> anyhow::Result<()> {
    let address = node_address(&options.address)?;
    let nodes = options.datastore.store::<ReefNode>();
    loop {
        match status::register(&nodes, &options.name, address, options.as_number).await {
            Ok(()) => break,
            Err(e) => warn!(error = %e, retry_in = ?REGISTER_RETRY, "cannot register the ReefNode"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REGISTER_RETRY) => {}
            Signalled::Stop(name) = signals.next() => {
                info!("{name} before the ReefNode was registered: stopping");
                return Ok(());
            }
        }
    }
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let _watchers = watch::start(&options.datastore, &options.secrets_namespace, events_tx);
    info!(node = options.name, %address, "reefd started (node mode): watching the datastore");
    let mut node = Node {
        options,
        snapshot: Snapshot::default(),
        synced: BTreeSet::new(),
        runtime: None,
        rejected: Vec::new(),
        problems: Vec::new(),
        status: None,
    };
    let mut dirty = false;
    let mut settle = tokio::time::interval(SETTLE);
    let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                watch::Event::Delta(delta) => {
                    if delta.is_list() {
                        node.synced.insert(watch::kind(&delta));
                    }
                    node.snapshot.apply(*delta);
                    dirty = true;
                }
                watch::Event::Failed { kind, error } => {
                    warn!(kind, %error, "datastore: BGP is kept as it is; retrying");
                }
            },
            _ = settle.tick(), if dirty && node.synced.len() == watch::KINDS.len() => {
                dirty = false;
                if let Err(e) = node.recalculate().await {
                    warn!(error = format!("{e:#}"), "cannot apply the BGP configuration");
                    node.problems.push(format!("{e:#}"));
                }
            }
            _ = status_timer.tick() => node.write_status(&nodes).await,
            signalled = signals.next() => match signalled {
                Signalled::Stop(name) => {
                    info!("{name}: shutting down");
                    break;
                }
                Signalled::Reload => info!("SIGHUP: node mode takes everything from the datastore, live"),
            },
        }
    }
    if let Some(runtime) = node.runtime.take() {
        // Node mode always advertises graceful restart: peers keep our routes and the kernel keeps
        // theirs until we are back.
        runtime.stop(true).await;
    }
    info!("reefd stopped");
    Ok(())
}

impl Node {
    /// Calculates the desired BGP state from the snapshot and applies it (starting the speaker the
    /// first time).
    async fn recalculate(&mut self) -> anyhow::Result<()> {
        let calculated = calc::calculate(&self.snapshot, &self.options.name);
        if calculated.rejected != self.rejected {
            for rejected in &calculated.rejected {
                warn!(
                    object = rejected.object,
                    reason = rejected.reason,
                    "resource rejected; the rest of the configuration is applied"
                );
            }
            self.rejected = calculated.rejected.clone();
        }
        self.problems = calculated
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.object, r.reason))
            .chain(calculated.problem.clone())
            .collect();
        let Some(mut desired) = calculated.desired else {
            warn!(
                problem = calculated.problem.as_deref().unwrap_or(""),
                "BGP not (re)configured"
            );
            return Ok(());
        };
        let runtime = match &mut self.runtime {
            Some(runtime) => runtime,
            None => {
                let fib = runtime::open_fib(self.options.fib_table).await?;
                if fib.installed_routes() > 0 {
                    mark_restarting(&mut desired);
                }
                let started = Runtime::start(&desired, Some(fib), &self.options.admin).await?;
                info!(
                    router_id = %desired.speaker.router_id, asn = desired.speaker.local_as,
                    peers = desired.peers.len(), prefixes = desired.prefixes.len(),
                    "BGP speaker started"
                );
                self.runtime = Some(started);
                return Ok(());
            }
        };
        let applied = runtime.bgp.apply(&desired).await?;
        self.problems.extend(
            applied
                .errors
                .iter()
                .map(|(peer, error)| format!("peer {peer}: {error}")),
        );
        self.problems.extend(
            applied
                .needs_restart
                .iter()
                .map(|change| format!("{change} changed: takes effect when reefd restarts")),
        );
        Ok(())
    }

    /// Writes the ReefNode status when it changed (a failed write is tried again at the next tick).
    async fn write_status(&mut self, nodes: &std::sync::Arc<dyn reef_datastore::Store<ReefNode>>) {
        let (sessions, peers, routes) = match &self.runtime {
            Some(runtime) => (
                runtime.bgp.speaker.peers(),
                runtime.bgp.peers().clone(),
                runtime
                    .fib_stats
                    .as_ref()
                    .map_or(0, |s| s.routes.load(Ordering::Relaxed)),
            ),
            None => Default::default(),
        };
        let new = status::build(&sessions, &peers, routes, &self.problems);
        if self.status.as_ref() == Some(&new) {
            return;
        }
        match status::write(nodes, &self.options.name, &new).await {
            Ok(()) => self.status = Some(new),
            Err(e) => tracing::debug!(error = %e, "ReefNode status not written; trying again"),
        }
    }
}
