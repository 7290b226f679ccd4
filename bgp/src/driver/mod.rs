//! tokio driver around the FSM: the [`Speaker`] runs many peers, active and passive.
//!
//! Tasks: one accept loop per speaker; per peer one task that owns the [`Session`](crate::fsm::Session),
//! its timers and its Adj-RIB-In writes; per connection one reader (frames whole messages out of large
//! reads and hands them over in chunks through a bounded channel, so a slow RIB slows the socket, not
//! memory) and one writer (so a peer that does not read never blocks our reading).

mod peer;
mod router;
pub mod socket;
mod status;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use status::{LocRibRouteView, PeerStatus, RibPathView, RouteView};

use crate::rib::AdjRibIn;
use crate::routing::{self, FibUpdate, PeerRouting, Routing, RoutingConfig};
use peer::{Export, PeerCommand, PeerShared};

/// Speaker-wide settings.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// Where to accept connections; `None`: active-only. Port 0 picks a free port (see
    /// [`Speaker::listen_addr`]).
    pub listen: Option<SocketAddr>,
    pub routing: RoutingConfig,
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
    pub routing: PeerRouting,
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
            routing: PeerRouting::default(),
        }
    }

    /// Equal in everything a session is built from (all but `routing`): a change of any of these
    /// needs a new session, a change of `routing` only re-evaluates routes.
    fn same_session(&self, other: &PeerConfig) -> bool {
        PeerConfig {
            routing: PeerRouting::default(),
            ..self.clone()
        } == PeerConfig {
            routing: PeerRouting::default(),
            ..other.clone()
        }
    }

    fn validate(&self) -> Result<(), SpeakerError> {
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(SpeakerError::InvalidConfig(format!(
                "peer {}: holdTime must be 0 or at least 3 seconds",
                self.address
            )));
        }
        if self
            .password
            .as_ref()
            .is_some_and(|key| key.len() > socket::MD5_MAX_KEY_LEN)
        {
            return Err(SpeakerError::InvalidConfig(format!(
                "peer {}: the TCP MD5 password is longer than {} bytes",
                self.address,
                socket::MD5_MAX_KEY_LEN
            )));
        }
        Ok(())
    }

    fn is_ebgp(&self, local_as: u32) -> bool {
        self.local_as.unwrap_or(local_as) != self.remote_as
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

/// What [`Speaker::update_peer`] and [`Speaker::set_peers`] did to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Added,
    Removed,
    /// Only routing settings changed: routes re-evaluated, the session kept.
    RoutingUpdated,
    /// A session setting changed: that session was closed (Cease) and started again.
    SessionReset,
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
    /// Route batches from the routing task (unbounded: the routing task must never wait on a peer).
    exports: mpsc::UnboundedSender<Export>,
    shared: Arc<PeerShared>,
    task: JoinHandle<()>,
}

struct SpeakerShared {
    config: SpeakerConfig,
    peers: Mutex<BTreeMap<IpAddr, PeerHandle>>,
    /// The locally originated prefixes.
    prefixes: Mutex<BTreeSet<IpNet>>,
    listener: Option<Arc<tokio::net::TcpListener>>,
    next_conn: Arc<AtomicU64>,
    /// The routing core; the routing task locks it per batch of inputs, queries lock it briefly.
    routing: Arc<Mutex<Routing>>,
    /// Inputs of the routing task.
    router: mpsc::UnboundedSender<routing::Input>,
    /// Route changes sent to the routing task and not handled yet.
    backlog: Arc<AtomicUsize>,
    fib_updates: Mutex<Option<mpsc::UnboundedReceiver<FibUpdate>>>,
    /// Counts the routing task publishes after each batch, so that status queries never wait for a
    /// table load the routing core is busy with.
    route_counts: Mutex<RouteCounts>,
}

/// What the status API shows of the routing core.
#[derive(Default)]
struct RouteCounts {
    /// Per peer: routes advertised, routes kept stale through its restart.
    peers: BTreeMap<IpAddr, (usize, usize)>,
    loc_rib: usize,
}

impl RouteCounts {
    fn fill(&self, status: &mut PeerStatus) {
        (status.prefixes_advertised, status.stale_routes) =
            self.peers.get(&status.address).copied().unwrap_or_default();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder cannot leave these maps half-updated in a way that matters more than losing the
    // whole speaker: keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands memory freed by a table load (decoded batches spread over the worker threads' malloc arenas,
/// the hash tables' smaller predecessors) back to the kernel; glibc keeps it otherwise.
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A BGP speaker: a listener and a set of peers with their sessions.
pub struct Speaker {
    shared: Arc<SpeakerShared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    router_task: JoinHandle<()>,
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
        let routing = Arc::new(Mutex::new(Routing::new(
            config.router_id,
            config.local_as,
            config.routing.clone(),
        )));
        let (router, router_inputs) = mpsc::unbounded_channel();
        let (fib_tx, fib_rx) = if config.routing.fib {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let shared = Arc::new(SpeakerShared {
            config,
            peers: Mutex::new(BTreeMap::new()),
            prefixes: Mutex::new(BTreeSet::new()),
            listener: listener.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
            routing: routing.clone(),
            router,
            backlog: Arc::new(AtomicUsize::new(0)),
            fib_updates: Mutex::new(fib_rx),
            route_counts: Mutex::new(RouteCounts::default()),
        });
        let accept_task =
            listener.map(|listener| tokio::spawn(accept_loop(listener, Arc::downgrade(&shared))));
        let router_task = tokio::spawn(router::run(
            routing,
            router_inputs,
            shared.backlog.clone(),
            Arc::downgrade(&shared),
            fib_tx,
        ));
        let speaker = Speaker {
            shared,
            accept_task: Mutex::new(accept_task),
            router_task,
        };
        for prefix in prefixes {
            speaker.advertise(prefix);
        }
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
        config.validate()?;
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
        self.route(routing::Input::PeerAdded {
            address: config.address,
            ebgp: config.is_ebgp(self.shared.config.local_as),
            routing: config.routing.clone(),
        });
        let (handle_commands, exports, shared, task) = peer::spawn(
            config.clone(),
            &self.shared.config,
            peer::RouterLink {
                inputs: self.shared.router.clone(),
                backlog: self.shared.backlog.clone(),
            },
            self.shared.next_conn.clone(),
        );
        peers.insert(
            config.address,
            PeerHandle {
                config,
                commands: handle_commands,
                exports,
                shared,
                task,
            },
        );
        Ok(())
    }

    fn route(&self, input: routing::Input) {
        // The routing task ends only with the speaker.
        let _ = self.shared.router.send(input);
    }

    /// The kernel route changes of the Loc-RIB (with `RoutingConfig::fib`); `None` after the first call.
    pub fn take_fib_updates(&self) -> Option<mpsc::UnboundedReceiver<FibUpdate>> {
        lock(&self.shared.fib_updates).take()
    }

    /// Drops the session with `address` at once without a NOTIFICATION (BFD down): its routes are
    /// withdrawn (no graceful restart), and the session is attempted again as after any failure.
    pub fn reset_peer(&self, address: IpAddr, reason: &str) -> Result<(), SpeakerError> {
        self.command(address, PeerCommand::Reset(reason.to_string()))
    }

    /// New filters, communities or flags for a peer: the routes it sent are re-evaluated from its
    /// Adj-RIB-In and what it is sent is updated, without resetting the session.
    pub fn set_peer_routing(
        &self,
        address: IpAddr,
        routing: PeerRouting,
    ) -> Result<(), SpeakerError> {
        if let Some(handle) = lock(&self.shared.peers).get_mut(&address) {
            handle.config.routing = routing.clone();
        }
        self.command(address, PeerCommand::SetRouting(Box::new(routing)))
    }

    fn command(&self, address: IpAddr, command: PeerCommand) -> Result<(), SpeakerError> {
        let peers = lock(&self.shared.peers);
        let handle = peers
            .get(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        handle
            .commands
            .try_send(command)
            .map_err(|_| SpeakerError::PeerGone(address))
    }

    /// Every path of `prefix` in the Loc-RIB, ranked, with the reason of each place.
    pub fn explain(&self, prefix: IpNet) -> Vec<RibPathView> {
        lock(&self.shared.routing)
            .explain(prefix)
            .iter()
            .map(RibPathView::new)
            .collect()
    }

    /// Number of prefixes in the Loc-RIB.
    pub fn loc_rib_len(&self) -> usize {
        lock(&self.shared.route_counts).loc_rib
    }

    /// The Loc-RIB: every prefix with its selected path, sorted by prefix.
    pub fn loc_rib(&self) -> Vec<LocRibRouteView> {
        let routing = lock(&self.shared.routing);
        routing
            .selected_routes()
            .iter()
            .map(|(prefix, selected)| {
                let paths = routing.loc_rib().candidates(*prefix).len();
                LocRibRouteView::new(*prefix, selected, paths)
            })
            .collect()
    }

    /// Applies a peer's new configuration. Unchanged: nothing happens (`None`). Only
    /// [`PeerConfig::routing`] changed: its routes are re-evaluated without a reset. A session setting
    /// (address, port, AS, password, timers, TTL, source address, next hops) changed: only this session
    /// is closed with Cease and started again with the new settings.
    pub async fn update_peer(
        &self,
        config: PeerConfig,
    ) -> Result<Option<PeerChange>, SpeakerError> {
        config.validate()?;
        let running = lock(&self.shared.peers)
            .get(&config.address)
            .map(|h| h.config.clone())
            .ok_or(SpeakerError::UnknownPeer(config.address))?;
        if running == config {
            return Ok(None);
        }
        if running.same_session(&config) {
            self.set_peer_routing(config.address, config.routing)?;
            return Ok(Some(PeerChange::RoutingUpdated));
        }
        self.remove_peer(config.address).await?;
        self.add_peer(config)?;
        Ok(Some(PeerChange::SessionReset))
    }

    /// Makes the configured peers exactly `peers` (one per address; a later duplicate is refused):
    /// adds the new ones, removes the ones not listed, and updates the others with
    /// [`Speaker::update_peer`], so that sessions whose settings did not change are not touched.
    /// Returns what changed per peer; a peer that could not be applied has its error and the others
    /// are applied anyway.
    pub async fn set_peers(
        &self,
        peers: Vec<PeerConfig>,
    ) -> Vec<(IpAddr, Result<PeerChange, SpeakerError>)> {
        let mut wanted: BTreeMap<IpAddr, PeerConfig> = BTreeMap::new();
        let mut results = Vec::new();
        for peer in peers {
            let address = peer.address;
            match wanted.entry(address) {
                Entry::Occupied(_) => {
                    results.push((address, Err(SpeakerError::DuplicatePeer(address))))
                }
                Entry::Vacant(slot) => {
                    slot.insert(peer);
                }
            }
        }
        let running: Vec<IpAddr> = lock(&self.shared.peers).keys().copied().collect();
        for address in running.iter().filter(|a| !wanted.contains_key(a)) {
            let result = self
                .remove_peer(*address)
                .await
                .map(|()| PeerChange::Removed);
            results.push((*address, result));
        }
        for (address, peer) in wanted {
            let result = if running.contains(&address) {
                match self.update_peer(peer).await {
                    Ok(None) => continue,
                    Ok(Some(change)) => Ok(change),
                    Err(e) => Err(e),
                }
            } else {
                self.add_peer(peer).map(|()| PeerChange::Added)
            };
            results.push((address, result));
        }
        results
    }

    /// The configuration a peer runs with.
    pub fn peer_config(&self, address: IpAddr) -> Option<PeerConfig> {
        lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.config.clone())
    }

    /// Makes the locally originated prefixes exactly `prefixes`; returns how many were advertised and
    /// withdrawn.
    pub fn set_prefixes(&self, prefixes: &BTreeSet<IpNet>) -> (usize, usize) {
        let wanted: BTreeSet<IpNet> = prefixes.iter().map(IpNet::trunc).collect();
        let current = self.prefixes();
        let withdrawn = current
            .iter()
            .filter(|p| !wanted.contains(p))
            .filter(|p| self.withdraw(**p))
            .count();
        let advertised = wanted.iter().filter(|p| self.advertise(**p)).count();
        (advertised, withdrawn)
    }

    /// Stops a peer's session (Cease/Administrative Shutdown) and forgets it.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        let handle = lock(&self.shared.peers)
            .remove(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        let had_key = handle.config.password.is_some();
        stop_peer(handle, true).await;
        self.route(routing::Input::PeerRemoved { address });
        if let (Some(listener), true) = (&self.shared.listener, had_key) {
            let _ = socket::set_md5_key(listener.as_raw_fd(), address, None);
        }
        Ok(())
    }

    /// Status of every peer, sorted by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = lock(&self.shared.peers)
            .values()
            .map(|h| h.shared.snapshot())
            .collect();
        let counts = lock(&self.shared.route_counts);
        for peer in &mut peers {
            counts.fill(peer);
        }
        peers
    }

    pub fn peer(&self, address: IpAddr) -> Option<PeerStatus> {
        let mut peer = lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.shared.snapshot())?;
        lock(&self.shared.route_counts).fill(&mut peer);
        Some(peer)
    }

    /// The Adj-RIB-In of a peer (shared with its session task; lock it briefly).
    pub fn adj_rib_in(&self, address: IpAddr) -> Option<Arc<Mutex<AdjRibIn>>> {
        lock(&self.shared.peers)
            .get(&address)
            .map(|h| h.shared.rib.clone())
    }

    /// Routes received from one peer, or from all peers; then the received routes that were ignored
    /// (with `ignored` set to the reason).
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
            let rib = lock(&handle.shared.rib);
            let (routes, ignored) = (rib.routes(), rib.ignored().cloned().collect::<Vec<_>>());
            drop(rib);
            views.extend(
                routes
                    .iter()
                    .map(|route| RouteView::new(handle.config.address, route)),
            );
            views.extend(
                ignored
                    .iter()
                    .map(|route| RouteView::ignored(handle.config.address, route)),
            );
        }
        Ok(views)
    }

    /// The locally originated prefixes.
    pub fn prefixes(&self) -> Vec<IpNet> {
        lock(&self.shared.prefixes).iter().copied().collect()
    }

    /// Starts originating `prefix` (into the Loc-RIB, so to every peer its export allows); false if it
    /// already was.
    pub fn advertise(&self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        if !lock(&self.shared.prefixes).insert(prefix) {
            return false;
        }
        self.route(routing::Input::Originate(prefix));
        true
    }

    /// Stops originating `prefix`; false if it was not originated.
    pub fn withdraw(&self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        if !lock(&self.shared.prefixes).remove(&prefix) {
            return false;
        }
        self.route(routing::Input::StopOriginating(prefix));
        true
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
        drop(peers);
        self.command(address, PeerCommand::SuppressKeepalives(suppress))
    }

    /// Cease/Administrative Shutdown to every peer, then stops all tasks (the speaker stays usable for
    /// status queries, with no peers).
    pub async fn shutdown(&self) {
        self.stop_all(true).await;
    }

    /// Graceful restart: closes every session WITHOUT a NOTIFICATION, so that GR-capable peers keep our
    /// routes (and forwarding) until we are back.
    pub async fn shutdown_for_restart(&self) {
        self.stop_all(false).await;
    }

    async fn stop_all(&self, notify: bool) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        let handles: Vec<PeerHandle> = std::mem::take(&mut *lock(&self.shared.peers))
            .into_values()
            .collect();
        for handle in handles {
            stop_peer(handle, notify).await;
        }
    }
}

/// Asks the peer task to stop (with `notify`, it sends Cease and flushes); bounded wait, then abort.
async fn stop_peer(handle: PeerHandle, notify: bool) {
    let (reply, done) = oneshot::channel();
    if handle
        .commands
        .send(PeerCommand::Stop {
            notify,
            done: reply,
        })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
    }
    handle.task.abort();
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.router_task.abort();
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
