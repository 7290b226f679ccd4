//! tokio driver around the FSM: the [`Speaker`] runs many peers, active and passive.
//!
//! Tasks: one accept loop per speaker; per peer one task that owns the [`Session`](crate::fsm::Session),
//! its timers and its Adj-RIB-In writes; per connection one reader (frames whole messages out of large
//! reads and hands them over in chunks through a bounded channel, so a slow RIB slows the socket, not
//! memory) and one writer (so a peer that does not read never blocks our reading).

mod peer;
pub mod socket;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use status::{PeerStatus, RouteView};

use crate::rib::AdjRibIn;
use peer::{PeerCommand, PeerShared};

/// Speaker-wide settings.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// Where to accept connections; `None`: active-only. Port 0 picks a free port (see
    /// [`Speaker::listen_addr`]).
    pub listen: Option<SocketAddr>,
}

/// One configured peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// Remote TCP port for our connections.
    pub port: u16,
    pub remote_as: u32,
    /// Overrides the speaker's AS for this session.
    pub local_as: Option<u32>,
    /// TCP MD5 key (RFC 2385).
    pub password: Option<String>,
    pub hold_time: u16,
    pub keepalive_time: Option<u16>,
    pub passive: bool,
    pub source_address: Option<IpAddr>,
    /// GTSM (RFC 5082) hop count.
    pub ttl_security: Option<u8>,
    /// eBGP multihop TTL (default 1 for eBGP, 255 for iBGP).
    pub multihop: Option<u8>,
    pub connect_retry: Duration,
    /// First IdleHold time after a failure (doubles per consecutive failure, capped at 60 s).
    pub idle_hold: Duration,
    /// Next hop for IPv4 routes instead of the session's local address.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes instead of the session's local address.
    pub next_hop_v6: Option<Ipv6Addr>,
}

impl PeerConfig {
    pub fn new(address: IpAddr, remote_as: u32) -> PeerConfig {
        PeerConfig {
            address,
            port: 179,
            remote_as,
            local_as: None,
            password: None,
            hold_time: 90,
            keepalive_time: None,
            passive: false,
            source_address: None,
            ttl_security: None,
            multihop: None,
            connect_retry: Duration::from_secs(5),
            idle_hold: Duration::from_secs(1),
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }

    fn socket_options(&self, local_as: u32) -> socket::SocketOptions {
        let ibgp = self.local_as.unwrap_or(local_as) == self.remote_as;
        socket::SocketOptions {
            md5_key: self.password.clone(),
            ttl: self.multihop.unwrap_or(if ibgp { 255 } else { 1 }),
            ttl_security_hops: self.ttl_security,
        }
    }
}

/// Errors of the speaker's control API.
#[derive(Debug, Error)]
pub enum SpeakerError {
    #[error("no peer {0} is configured")]
    UnknownPeer(IpAddr),
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("peer {0} is not Established")]
    NotEstablished(IpAddr),
    #[error("peer {0} did not negotiate route refresh")]
    NoRouteRefresh(IpAddr),
    #[error("invalid peer configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot set the TCP MD5 key for {peer} on the listening socket: {source}")]
    Md5 { peer: IpAddr, source: io::Error },
    #[error("the peer task of {0} has stopped")]
    PeerGone(IpAddr),
}

struct PeerHandle {
    config: PeerConfig,
    commands: mpsc::Sender<PeerCommand>,
    shared: Arc<PeerShared>,
    task: JoinHandle<()>,
}

struct SpeakerShared {
    config: SpeakerConfig,
    peers: Mutex<BTreeMap<IpAddr, PeerHandle>>,
    /// The locally originated prefixes (Adj-RIB-Out of every peer).
    prefixes: Arc<Mutex<BTreeSet<IpNet>>>,
    listener: Option<Arc<tokio::net::TcpListener>>,
    next_conn: Arc<AtomicU64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder cannot leave these maps half-updated in a way that matters more than losing the
    // whole speaker: keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A BGP speaker: a listener and a set of peers with their sessions.
pub struct Speaker {
    shared: Arc<SpeakerShared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl Speaker {
    /// Binds the listener (with the MD5 keys of `peers` installed before `listen`) and starts every peer.
    pub async fn start(
        config: SpeakerConfig,
        peers: Vec<PeerConfig>,
        prefixes: Vec<IpNet>,
    ) -> io::Result<Speaker> {
        let listener = match config.listen {
            Some(addr) => {
                let keys: Vec<(IpAddr, String)> = peers
                    .iter()
                    .filter_map(|p| Some((p.address, p.password.clone()?)))
                    .collect();
                let listener = socket::listen_socket(addr, &keys)?;
                info!(address = %listener.local_addr()?, "BGP listening");
                Some(Arc::new(listener))
            }
            None => None,
        };
        let shared = Arc::new(SpeakerShared {
            config,
            peers: Mutex::new(BTreeMap::new()),
            prefixes: Arc::new(Mutex::new(
                prefixes.into_iter().map(|p| p.trunc()).collect(),
            )),
            listener: listener.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
        });
        let accept_task =
            listener.map(|listener| tokio::spawn(accept_loop(listener, Arc::downgrade(&shared))));
        let speaker = Speaker {
            shared,
            accept_task: Mutex::new(accept_task),
        };
        for peer in peers {
            speaker
                .add_peer(peer)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        Ok(speaker)
    }

    /// The bound listen address (with the real port when configured with port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.shared
            .listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn config(&self) -> &SpeakerConfig {
        &self.shared.config
    }

    /// Adds a peer at runtime (its MD5 key goes on the listening socket first) and starts its session.
    pub fn add_peer(&self, config: PeerConfig) -> Result<(), SpeakerError> {
        if config.hold_time == 1 || config.hold_time == 2 {
            return Err(SpeakerError::InvalidConfig(format!(
                "peer {}: holdTime must be 0 or at least 3 seconds",
                config.address
            )));
        }
        let mut peers = lock(&self.shared.peers);
        if peers.contains_key(&config.address) {
            return Err(SpeakerError::DuplicatePeer(config.address));
        }
        if let (Some(listener), Some(key)) = (&self.shared.listener, &config.password) {
            let listen_v4 = listener.local_addr().map(|a| a.is_ipv4()).unwrap_or(false);
            if !(listen_v4 && config.address.is_ipv6()) {
                socket::set_md5_key(listener.as_raw_fd(), config.address, Some(key)).map_err(
                    |source| SpeakerError::Md5 {
                        peer: config.address,
                        source,
                    },
                )?;
            }
        }
        let (handle_commands, shared, task) = peer::spawn(
            config.clone(),
            &self.shared.config,
            self.shared.prefixes.clone(),
            self.shared.next_conn.clone(),
        );
        peers.insert(
            config.address,
            PeerHandle {
                config,
                commands: handle_commands,
                shared,
                task,
            },
        );
        Ok(())
    }

    /// Stops a peer's session (Cease/Administrative Shutdown) and forgets it.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let handle = lock(&self.shared.peers)
            .remove(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        let had_key = handle.config.password.is_some();
        stop_peer(handle).await;
        if let (Some(listener), true) = (&self.shared.listener, had_key) {
            let _ = socket::set_md5_key(listener.as_raw_fd(), address, None);
        }
        Ok(())
    }

    /// Status of every peer, sorted by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        lock(&self.shared.peers)
            .values()
            .map(|h| h.shared.snapshot())
            .collect()
    }

    pub fn peer(&self, address: IpAddr) -> Option<PeerStatus> {
        lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.shared.snapshot())
    }

    /// The Adj-RIB-In of a peer (shared with its session task; lock it briefly).
    pub fn adj_rib_in(&self, address: IpAddr) -> Option<Arc<Mutex<AdjRibIn>>> {
        lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.shared.rib.clone())
    }

    /// Routes received from one peer, or from all peers.
    pub fn routes(&self, peer: Option<IpAddr>) -> Result<Vec<RouteView>, SpeakerError> {
        let peers = lock(&self.shared.peers);
        let mut views = Vec::new();
        let selected: Vec<&PeerHandle> = match peer {
            Some(address) => vec![
                peers
                    .get(&address)
                    .ok_or(SpeakerError::UnknownPeer(address))?,
            ],
            None => peers.values().collect(),
        };
        for handle in selected {
            let routes = lock(&handle.shared.rib).routes();
            views.extend(
                routes
                    .iter()
                    .map(|route| RouteView::new(handle.config.address, route)),
            );
        }
        Ok(views)
    }

    /// The locally originated prefixes.
    pub fn prefixes(&self) -> Vec<IpNet> {
        lock(&self.shared.prefixes).iter().copied().collect()
    }

    /// Starts advertising `prefix` to every peer; false if it already was.
    pub fn advertise(&self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        if !lock(&self.shared.prefixes).insert(prefix) {
            return false;
        }
        self.broadcast(|| PeerCommand::Advertise(prefix));
        true
    }

    /// Withdraws `prefix` from every peer; false if it was not advertised.
    pub fn withdraw(&self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        if !lock(&self.shared.prefixes).remove(&prefix) {
            return false;
        }
        self.broadcast(|| PeerCommand::Withdraw(prefix));
        true
    }

    fn broadcast(&self, command: impl Fn() -> PeerCommand) {
        for (address, handle) in lock(&self.shared.peers).iter() {
            // Commands are rare and the channel deep; a full channel means a wedged task: say so.
            if let Err(e) = handle.commands.try_send(command()) {
                warn!(peer = %address, error = %e, "peer task did not take a prefix change");
            }
        }
    }

    /// Sends ROUTE-REFRESH for every negotiated family to the peer.
    pub async fn refresh(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let commands = lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.commands.clone())
            .ok_or(SpeakerError::UnknownPeer(address))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(PeerCommand::Refresh(reply))
            .await
            .map_err(|_| SpeakerError::PeerGone(address))?;
        answer.await.map_err(|_| SpeakerError::PeerGone(address))?
    }

    /// Stops sending KEEPALIVEs to a peer (tests only: makes the peer's hold timer expire).
    #[doc(hidden)]
    pub fn suppress_keepalives(&self, address: IpAddr, suppress: bool) -> Result<(), SpeakerError> {
        let peers = lock(&self.shared.peers);
        let handle = peers
            .get(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        handle
            .commands
            .try_send(PeerCommand::SuppressKeepalives(suppress))
            .map_err(|_| SpeakerError::PeerGone(address))
    }

    /// Cease/Administrative Shutdown to every peer, then stops all tasks (the speaker stays usable for
    /// status queries, with no peers).
    pub async fn shutdown(&self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        let handles: Vec<PeerHandle> = std::mem::take(&mut *lock(&self.shared.peers))
            .into_values()
            .collect();
        for handle in handles {
            stop_peer(handle).await;
        }
    }
}

/// Asks the peer task to stop (it sends its NOTIFICATION and flushes); bounded wait, then abort.
async fn stop_peer(handle: PeerHandle) {
    let (reply, done) = oneshot::channel();
    if handle.commands.send(PeerCommand::Stop(reply)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
    }
    handle.task.abort();
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        for handle in lock(&self.shared.peers).values() {
            handle.task.abort();
        }
    }
}

async fn accept_loop(
    listener: Arc<tokio::net::TcpListener>,
    speaker: std::sync::Weak<SpeakerShared>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(speaker) = speaker.upgrade() else {
            return;
        };
        let address = socket::canonical_ip(remote.ip());
        let peers = lock(&speaker.peers);
        let Some(handle) = peers.get(&address) else {
            debug!(%remote, "connection from an unconfigured address refused");
            continue;
        };
        let options = handle.config.socket_options(speaker.config.local_as);
        if let Err(e) = socket::apply_to_stream(&stream, address, &options) {
            warn!(peer = %address, error = %e, "cannot set TTL/GTSM on the accepted connection; closing it");
            continue;
        }
        let _ = stream.set_nodelay(true);
        if handle
            .commands
            .try_send(PeerCommand::Inbound(stream))
            .is_err()
        {
            warn!(peer = %address, "peer task busy; inbound connection dropped");
        }
    }
}
