//! BFD for the peers that enable it: one reef-bfd session per peer, in reefd's own network namespace;
//! a session leaving Up takes the BGP session down at once (`Speaker::reset_peer`). Sessions follow
//! the peers live ([`BfdSessions::set_peers`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;

use reef_bfd::{Bfd, SessionConfig, SessionKey, State};
use reef_bgp::driver::Speaker;
use reef_crds::bgp::BfdConfig;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the speaker is asked for the session's local address when no `sourceAddress` is set.
const LOCAL_ADDRESS_POLL: Duration = Duration::from_secs(1);
/// Time given to the sessions to send AdminDown before reefd exits.
const ADMIN_DOWN_GRACE: Duration = Duration::from_millis(50);

/// One peer to protect with BFD.
#[derive(Clone, Debug, PartialEq)]
pub struct BfdPeer {
    pub address: IpAddr,
    /// The configured `sourceAddress`; otherwise the BGP session's local address once known.
    pub local: Option<IpAddr>,
    pub config: SessionConfig,
}

/// The session timers of a `bfd` setting (Calico's BGPPeer `bfd`), when it is enabled; 300 ms x 3 by
/// default.
pub fn session_config(bfd: &BfdConfig) -> Option<SessionConfig> {
    if !bfd.enabled {
        return None;
    }
    let default = SessionConfig::default();
    Some(SessionConfig {
        min_tx: bfd.min_tx.map_or(default.min_tx, Into::into),
        min_rx: bfd.min_rx.map_or(default.min_rx, Into::into),
        multiplier: bfd.multiplier.unwrap_or(default.multiplier),
    })
}

/// One peer's BFD session: the task that starts and watches it, and its key once started.
struct Running {
    peer: BfdPeer,
    watcher: JoinHandle<()>,
    key: Arc<Mutex<Option<SessionKey>>>,
}

/// The BFD sessions of the peers that enable BFD, changed live with [`BfdSessions::set_peers`]. The
/// BFD driver (UDP 3784 in the current namespace) is started with the first session.
pub struct BfdSessions {
    speaker: Arc<Speaker>,
    bfd: Option<Bfd>,
    running: BTreeMap<IpAddr, Running>,
}

impl BfdSessions {
    pub fn new(speaker: Arc<Speaker>) -> BfdSessions {
        BfdSessions {
            speaker,
            bfd: None,
            running: BTreeMap::new(),
        }
    }

    /// Runs exactly the sessions of `peers`: removed or changed ones are removed (AdminDown), new or
    /// changed ones started; unchanged ones are not touched.
    pub async fn set_peers(&mut self, peers: Vec<BfdPeer>) -> anyhow::Result<()> {
        let wanted: BTreeMap<IpAddr, BfdPeer> = peers.into_iter().map(|p| (p.address, p)).collect();
        let stale: Vec<IpAddr> = self
            .running
            .iter()
            .filter(|(address, running)| wanted.get(address) != Some(&running.peer))
            .map(|(address, _)| *address)
            .collect();
        for address in stale {
            if let Some(running) = self.running.remove(&address) {
                self.remove(running).await;
            }
        }
        for (address, peer) in wanted {
            if self.running.contains_key(&address) {
                continue;
            }
            let bfd = match &self.bfd {
                Some(bfd) => bfd.clone(),
                None => {
                    let bfd = Bfd::spawn().context("cannot start BFD")?;
                    self.bfd = Some(bfd.clone());
                    bfd
                }
            };
            let key = Arc::new(Mutex::new(None));
            let watcher = tokio::spawn(watch_peer(
                bfd,
                self.speaker.clone(),
                peer.clone(),
                key.clone(),
            ));
            self.running.insert(address, Running { peer, watcher, key });
        }
        Ok(())
    }

    async fn remove(&self, running: Running) {
        running.watcher.abort();
        let key = *running.key.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(bfd), Some(key)) = (&self.bfd, key) {
            if let Err(e) = bfd.remove_session(key).await {
                debug!(peer = %key.peer, error = %e, "BFD session not removed");
            } else {
                info!(peer = %key.peer, "BFD session removed");
            }
        }
    }

    /// Stops watching and removes the sessions: each sends AdminDown, which the peer must not take
    /// for a failure (RFC 5882 §3.2), so a graceful restart is not cut short by BFD.
    pub async fn stop(mut self) {
        let had_sessions = !self.running.is_empty();
        for running in std::mem::take(&mut self.running).into_values() {
            self.remove(running).await;
        }
        if had_sessions {
            // The session tasks send their AdminDown right after the removal.
            tokio::time::sleep(ADMIN_DOWN_GRACE).await;
        }
    }
}

async fn watch_peer(
    bfd: Bfd,
    speaker: Arc<Speaker>,
    peer: BfdPeer,
    started: Arc<Mutex<Option<SessionKey>>>,
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
    *started.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
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
