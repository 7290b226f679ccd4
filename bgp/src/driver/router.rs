//! The routing task: runs the [`Routing`] core on the inputs of every peer task and carries out its
//! outputs (route batches to the peer tasks, kernel routes to the FIB channel, timers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tracing::warn;

use super::peer::Export;
use super::{RouteCounts, SpeakerShared, lock, release_free_memory};
use crate::routing::{FibRoute, FibUpdate, Input, Output, Routing, Timer};

/// Inputs taken in one go before the outputs are carried out: batches FIB changes and route sends
/// during a table load without delaying a single change.
const INPUT_BATCH: usize = 64;
/// Route changes after which an idle routing task hands freed memory back (a table load frees its
/// batches and the Loc-RIB's outgrown hash tables).
const TRIM_AFTER_CHANGES: usize = 100_000;

fn changes_in(input: &Input) -> usize {
    match input {
        Input::Routes { changes, .. } => changes.len(),
        Input::PeerRoutingChanged { adj_rib_in, .. } => adj_rib_in.len(),
        _ => 0,
    }
}

pub(super) async fn run(
    core: Arc<Mutex<Routing>>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    backlog: Arc<AtomicUsize>,
    speaker: Weak<SpeakerShared>,
    fib: Option<mpsc::UnboundedSender<FibUpdate>>,
) {
    let mut timers: HashMap<Timer, Instant> = HashMap::new();
    let mut untrimmed = 0usize;
    let first = lock(&core).start();
    execute(first, &speaker, fib.as_ref(), &mut timers);
    loop {
        let deadline = timers.values().min().copied();
        let mut outputs = Vec::new();
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { return };
                // The core is locked per input: queries (explain, listings) get in between.
                let mut next = Some(input);
                let mut taken = 0;
                while let Some(input) = next.take() {
                    untrimmed += changes_in(&input);
                    // Peer tasks counted these changes into the backlog when they sent them.
                    let routed = match &input {
                        Input::Routes { changes, .. } => changes.len(),
                        _ => 0,
                    };
                    outputs.extend(lock(&core).handle(input));
                    backlog.fetch_sub(routed, Ordering::Relaxed);
                    taken += 1;
                    if taken < INPUT_BATCH {
                        next = inputs.try_recv().ok();
                    }
                }
            }
            _ = sleep_until(tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now))), if deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<Timer> = timers.iter().filter(|(_, at)| **at <= now).map(|(t, _)| *t).collect();
                let mut core = lock(&core);
                for timer in expired {
                    timers.remove(&timer);
                    outputs.extend(core.handle(Input::TimerExpired(timer)));
                }
            }
        }
        execute(outputs, &speaker, fib.as_ref(), &mut timers);
        publish_counts(&core, &speaker);
        if untrimmed >= TRIM_AFTER_CHANGES && inputs.is_empty() {
            untrimmed = 0;
            release_free_memory();
        }
    }
}

/// Publishes the per-peer counts for the status API.
fn publish_counts(core: &Mutex<Routing>, speaker: &Weak<SpeakerShared>) {
    let Some(speaker) = speaker.upgrade() else {
        return;
    };
    let counts = {
        let core = lock(core);
        RouteCounts {
            peers: core
                .peer_addresses()
                .map(|peer| (peer, (core.advertised(peer), core.stale_routes(peer))))
                .collect(),
            loc_rib: core.loc_rib().len(),
        }
    };
    *lock(&speaker.route_counts) = counts;
}

fn execute(
    outputs: Vec<Output>,
    speaker: &Weak<SpeakerShared>,
    fib: Option<&mpsc::UnboundedSender<FibUpdate>>,
    timers: &mut HashMap<Timer, Instant>,
) {
    let mut routes: Vec<FibRoute> = Vec::new();
    let mut exports: Vec<(std::net::IpAddr, Export)> = Vec::new();
    for output in outputs {
        match output {
            Output::Send {
                peer,
                conn,
                changes,
            } => exports.push((peer, Export::Routes { conn, changes })),
            Output::SendEndOfRib {
                peer,
                conn,
                families,
            } => exports.push((peer, Export::EndOfRib { conn, families })),
            Output::Fib(batch) => routes.extend(batch),
            Output::FibSynced => {
                // Routes first: the sync must see every route wanted so far.
                if let Some(fib) = fib.filter(|_| !routes.is_empty()) {
                    let _ = fib.send(FibUpdate::Routes(std::mem::take(&mut routes)));
                }
                if let Some(fib) = fib {
                    let _ = fib.send(FibUpdate::Synced);
                }
            }
            Output::StartTimer(timer, after) => {
                timers.insert(timer, Instant::now() + after);
            }
            Output::StopTimer(timer) => {
                timers.remove(&timer);
            }
        }
    }
    if let Some(fib) = fib.filter(|_| !routes.is_empty()) {
        let _ = fib.send(FibUpdate::Routes(routes));
    }
    if exports.is_empty() {
        return;
    }
    let Some(speaker) = speaker.upgrade() else {
        return;
    };
    let peers = lock(&speaker.peers);
    for (peer, export) in exports {
        if let Some(handle) = peers.get(&peer)
            && handle.exports.send(export).is_err()
        {
            warn!(%peer, "peer task gone; routes not sent");
        }
    }
}
