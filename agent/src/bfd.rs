//! BFD for the peers that enable it: one reef-bfd session per peer, in reefd's own network namespace;
//! a session leaving Up takes the BGP session down at once (`Speaker::reset_peer`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;

use reef_bfd::{Bfd, SessionConfig, SessionKey, State};
use reef_bgp::driver::Speaker;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the speaker is asked for the session's local address when no `sourceAddress` is set.
const LOCAL_ADDRESS_POLL: Duration = Duration::from_secs(1);
/// Time given to the sessions to send AdminDown before reefd exits.
const ADMIN_DOWN_GRACE: Duration = Duration::from_millis(50);

/// One peer to protect with BFD.
#[derive(Clone, Debug)]
pub struct BfdPeer {
    pub address: IpAddr,
    /// The configured `sourceAddress`; otherwise the BGP session's local address once known.
    pub local: Option<IpAddr>,
    pub config: SessionConfig,
}

/// The running BFD sessions.
pub struct BfdTasks {
    bfd: Option<Bfd>,
    watchers: Vec<JoinHandle<()>>,
    started: Arc<Mutex<Vec<SessionKey>>>,
}

/// Starts the BFD driver (UDP 3784 in the current namespace) and one watcher task per peer. Nothing
/// is bound when `peers` is empty.
pub fn start(speaker: Arc<Speaker>, peers: Vec<BfdPeer>) -> anyhow::Result<BfdTasks> {
    let started = Arc::new(Mutex::new(Vec::new()));
    if peers.is_empty() {
        return Ok(BfdTasks {
            bfd: None,
            watchers: Vec::new(),
            started,
        });
    }
    let bfd = Bfd::spawn().context("cannot start BFD")?;
    let watchers = peers
        .into_iter()
        .map(|peer| {
            tokio::spawn(watch_peer(
                bfd.clone(),
                speaker.clone(),
                peer,
                started.clone(),
            ))
        })
        .collect();
    Ok(BfdTasks {
        bfd: Some(bfd),
        watchers,
        started,
    })
}

impl BfdTasks {
    /// Stops watching and removes the sessions: each sends AdminDown, which the peer must not take
    /// for a failure (RFC 5882 §3.2), so a graceful restart is not cut short by BFD.
    pub async fn stop(self) {
        for watcher in &self.watchers {
            watcher.abort();
        }
        let Some(bfd) = self.bfd else { return };
        let keys =
            std::mem::take(&mut *self.started.lock().unwrap_or_else(PoisonError::into_inner));
        for key in keys {
            if let Err(e) = bfd.remove_session(key).await {
                debug!(peer = %key.peer, error = %e, "BFD session not removed");
            }
        }
        // The session tasks send their AdminDown right after the removal.
        tokio::time::sleep(ADMIN_DOWN_GRACE).await;
    }
}

async fn watch_peer(
    bfd: Bfd,
    speaker: Arc<Speaker>,
    peer: BfdPeer,
    started: Arc<Mutex<Vec<SessionKey>>>,
) {
    let local = match peer.local {
        Some(local) => local,
        None => local_address(&speaker, peer.address).await,
    };
    let key = SessionKey {
        peer: peer.address,
        local,
    };
    let mut status = match bfd.add_session(key, peer.config).await {
        Ok(status) => status,
        Err(e) => {
            warn!(peer = %peer.address, %local, error = %e, "cannot start the BFD session; BGP runs without BFD");
            return;
        }
    };
    started
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(key);
    info!(peer = %peer.address, %local, "BFD session started");
    let mut downs_seen = status.borrow().downs;
    while status.changed().await.is_ok() {
        let (state, downs, diag, remote_state) = {
            let current = status.borrow_and_update();
            (
                current.state,
                current.downs,
                current.diag,
                current.remote_state,
            )
        };
        // `downs` counts every departure from Up, also flaps the watch channel coalesced.
        if downs == downs_seen {
            continue;
        }
        downs_seen = downs;
        // RFC 5882 §3.2: a session taken down by the peer's AdminDown "MUST NOT" be treated as a
        // forwarding failure: e.g. the peer restarting gracefully removes its BFD sessions first.
        if remote_state == State::AdminDown {
            info!(peer = %peer.address, "BFD peer is administratively down: BGP session kept");
            continue;
        }
        info!(peer = %peer.address, %state, %diag, "BFD session went down: resetting the BGP session");
        if let Err(e) = speaker.reset_peer(peer.address, "BFD down") {
            debug!(peer = %peer.address, error = %e, "BGP session not reset");
        }
    }
}

/// The local address of the BGP session with `peer`, once it has one (connected). An IPv4-mapped
/// address (a connection accepted on a dual-stack `::` listener) is given as IPv4.
async fn local_address(speaker: &Speaker, peer: IpAddr) -> IpAddr {
    loop {
        if let Some(local) = speaker.peer(peer).and_then(|status| status.local_address) {
            return local.to_canonical();
        }
        tokio::time::sleep(LOCAL_ADDRESS_POLL).await;
    }
}
