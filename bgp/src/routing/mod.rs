//! Routing core (sans-IO): import policy → Loc-RIB → FIB and per-peer Adj-RIB-Out with export policy,
//! route reflection (RFC 4456) and graceful restart bookkeeping (RFC 4724).
//!
//! [`Routing::handle`] takes one [`Input`] (a session came up or went down, routes changed in a peer's
//! Adj-RIB-In, an End-of-RIB, a timer) and returns [`Output`]s: route batches to send to peers, kernel
//! routes to install, timers. The driver owns sockets and clocks; this owns every routing decision.
//!
//! - Import: routes carrying our ORIGINATOR_ID or CLUSTER_ID are reflection loops and are dropped; then
//!   the peer's import chain runs, with Reef's own pools and blocks protected (accepted only by a rule).
//! - Export to a peer (after the peer's export chain ran on the best path): never back to the peer it
//!   came from; iBGP-learned paths go to iBGP peers only when reflecting (client → everyone, non-client
//!   → clients); NO_ADVERTISE and NO_EXPORT are honoured; eBGP gets our AS prepended and loses
//!   LOCAL_PREF, a learned MED, ORIGINATOR_ID and CLUSTER_LIST; reflected paths get ORIGINATOR_ID and
//!   our CLUSTER_ID and keep their next hop.
//! - Graceful restart, helper: a GR-capable peer's session that drops without a NOTIFICATION leaves its
//!   paths in place, marked stale, for its restart time; after it returns they stay until its
//!   End-of-RIB for the family (or the stale-routes time) and the ones it did not send again go.
//!   Restarting: with [`GracefulRestartConfig::restarting`] the FIB sync (which removes kernel routes of
//!   the previous run that are no longer wanted) waits for every peer's End-of-RIB or the selection
//!   deferral time.

mod config;

pub use config::{
    DEFAULT_SELECTION_DEFERRAL, GracefulRestartConfig, NextHopMode, PeerRouting, RoutingConfig,
};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tracing::{debug, info};

use crate::decision::{
    BestChange, Candidate, DEFAULT_LOCAL_PREF, Explained, LocRib, PeerInfo, PeerKind, RoutePath,
    Selected,
};
use crate::fsm::ConnId;
use crate::policy::{Policy, Verdict};
use crate::wire::{
    AfiSafi, AfiSafiSet, AsPath, Community, GracefulRestart, Origin, PathAttributes,
};

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<crate::rib::RouteKeyHasher>>;

/// The `PeerInfo::address` of locally originated paths.
pub const LOCAL_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// One kernel route wanted by the Loc-RIB: the next hops of the selected (ECMP) paths. An empty list
/// removes the route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibRoute {
    pub prefix: IpNet,
    pub next_hops: Vec<IpAddr>,
}

/// What the speaker tells the FIB programmer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FibUpdate {
    /// Install, replace or (empty next hops) remove these routes.
    Routes(Vec<FibRoute>),
    /// The Loc-RIB has converged after start (at once, or after the peers' End-of-RIB when restarting
    /// gracefully): Reef routes in the kernel that were not sent since start may now be removed.
    Synced,
}

/// An Established session, as the routing core needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Route batches carry it; the driver drops batches of an older session.
    pub conn: ConnId,
    pub peer: PeerInfo,
    /// Our AS on this session (prepended on eBGP).
    pub local_as: u32,
    pub families: AfiSafiSet,
    /// Our next hop for IPv4 routes ("self").
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our next hop for IPv6 routes ("self").
    pub next_hop_v6: Option<Ipv6Addr>,
    /// The Graceful Restart capability the peer sent.
    pub peer_graceful_restart: Option<GracefulRestart>,
}

/// A path as received (after the Adj-RIB-In, before import policy), shared by the prefixes of one
/// attribute set.
pub type ReceivedPath = Arc<RoutePath>;

/// A path as sent to one peer: its attributes and next hop.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutPath {
    pub attrs: PathAttributes,
    pub next_hop: IpAddr,
}

/// A change of one peer's Adj-RIB-Out: the new path, or `None` to withdraw.
pub type OutChange = (IpNet, Option<Arc<OutPath>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Helper role: the stale paths of this peer expire.
    StaleRoutes(IpAddr),
    /// Restarting role: stop waiting for End-of-RIBs.
    SelectionDeferral,
}

#[derive(Clone, Debug)]
pub enum Input {
    PeerAdded {
        address: IpAddr,
        ebgp: bool,
        routing: PeerRouting,
    },
    PeerRemoved {
        address: IpAddr,
    },
    /// New filters or flags for a peer; `adj_rib_in` is what the peer sent (soft reconfiguration: no
    /// session reset, no ROUTE-REFRESH needed).
    PeerRoutingChanged {
        address: IpAddr,
        routing: PeerRouting,
        adj_rib_in: Vec<(IpNet, ReceivedPath)>,
    },
    PeerUp(SessionInfo),
    /// `graceful`: the session ended without a NOTIFICATION (TCP loss, restart), so GR helper applies.
    PeerDown {
        address: IpAddr,
        graceful: bool,
    },
    Routes {
        address: IpAddr,
        conn: ConnId,
        changes: Vec<(IpNet, Option<ReceivedPath>)>,
    },
    EndOfRib {
        address: IpAddr,
        family: AfiSafi,
    },
    /// The peer sent ROUTE-REFRESH: send its Adj-RIB-Out of `family` again.
    RefreshRequested {
        address: IpAddr,
        family: AfiSafi,
    },
    Originate(IpNet),
    StopOriginating(IpNet),
    TimerExpired(Timer),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        peer: IpAddr,
        conn: ConnId,
        changes: Vec<OutChange>,
    },
    /// After the initial advertisement of a session.
    SendEndOfRib {
        peer: IpAddr,
        conn: ConnId,
        families: AfiSafiSet,
    },
    Fib(Vec<FibRoute>),
    FibSynced,
    StartTimer(Timer, Duration),
    StopTimer(Timer),
}

struct Peer {
    routing: PeerRouting,
    ebgp: bool,
    import: Policy,
    export: Policy,
    session: Option<SessionInfo>,
    /// What the peer was sent, to send changes only and to answer ROUTE-REFRESH.
    adj_rib_out: FastMap<IpNet, Arc<OutPath>>,
    /// Paths kept through the peer's restart, not yet sent again.
    stale: HashSet<IpNet>,
    /// Families whose End-of-RIB arrived on the current session.
    end_of_rib: AfiSafiSet,
    /// The session's peer info, shared by all its candidates.
    info: Option<Arc<PeerInfo>>,
}

impl Peer {
    fn new(routing: PeerRouting, ebgp: bool) -> Peer {
        Peer {
            import: routing.policy(&routing.import, ebgp),
            export: routing.policy(&routing.export, ebgp),
            routing,
            ebgp,
            session: None,
            adj_rib_out: FastMap::default(),
            stale: HashSet::new(),
            end_of_rib: AfiSafiSet::EMPTY,
            info: None,
        }
    }
}

/// The routing core of one speaker.
pub struct Routing {
    config: RoutingConfig,
    router_id: Ipv4Addr,
    loc_rib: LocRib,
    peers: BTreeMap<IpAddr, Peer>,
    /// Peers with an Established session, in address order (exports loop over them per change).
    up_peers: Vec<IpAddr>,
    local_path: Arc<RoutePath>,
    local_peer: Arc<PeerInfo>,
    fib_synced: bool,
    outputs: Vec<Output>,
    fib: Vec<FibRoute>,
    sends: BTreeMap<IpAddr, Vec<OutChange>>,
}

fn family_of(prefix: IpNet) -> AfiSafi {
    match prefix {
        IpNet::V4(_) => AfiSafi::IPV4_UNICAST,
        IpNet::V6(_) => AfiSafi::IPV6_UNICAST,
    }
}

/// Whether packets can be sent to `hop`: not unspecified, and not an IPv4-mapped IPv6 address (what a
/// speaker sends for IPv6 routes over an IPv4 session without an IPv6 next hop; the kernel refuses it,
/// BIRD ignores such routes).
fn usable_next_hop(hop: IpAddr) -> bool {
    match hop {
        IpAddr::V4(v4) => !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_unspecified() && v6.to_ipv4_mapped().is_none(),
    }
}

/// The kernel next hops of a selection: the distinct next hops of its learned paths (none when a local
/// path is best: the node's own blocks are felix's business).
pub(crate) fn fib_next_hops(selected: Option<&Selected>) -> Vec<IpAddr> {
    let Some(selected) = selected else {
        return Vec::new();
    };
    if selected.best.peer.kind == PeerKind::Local {
        return Vec::new();
    }
    let mut hops: Vec<IpAddr> = selected
        .paths()
        .filter(|c| c.peer.kind != PeerKind::Local)
        .filter_map(|c| c.path.next_hop)
        .collect();
    hops.sort_unstable();
    hops.dedup();
    hops
}

impl Routing {
    pub fn new(router_id: Ipv4Addr, local_as: u32, config: RoutingConfig) -> Routing {
        Routing {
            loc_rib: LocRib::with_max_paths(local_as, config.max_paths),
            config,
            router_id,
            peers: BTreeMap::new(),
            up_peers: Vec::new(),
            local_path: Arc::new(RoutePath {
                attrs: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath::default()),
                    ..PathAttributes::default()
                },
                next_hop: None,
            }),
            local_peer: Arc::new(PeerInfo {
                address: LOCAL_PEER,
                router_id,
                remote_as: local_as,
                kind: PeerKind::Local,
            }),
            fib_synced: false,
            outputs: Vec::new(),
            fib: Vec::new(),
            sends: BTreeMap::new(),
        }
    }

    /// The first outputs: the FIB sync at once, or the selection deferral timer when restarting.
    pub fn start(&mut self) -> Vec<Output> {
        match self.config.fib_sync_deferral {
            Some(deferral) => {
                info!(
                    ?deferral,
                    "kernel routes of a previous run: the FIB sync waits for the peers' End-of-RIB"
                );
                self.outputs
                    .push(Output::StartTimer(Timer::SelectionDeferral, deferral));
            }
            None => self.sync_fib(),
        }
        std::mem::take(&mut self.outputs)
    }

    pub fn loc_rib(&self) -> &LocRib {
        &self.loc_rib
    }

    /// Every path of `prefix` ranked, with the reason of its place.
    pub fn explain(&self, prefix: IpNet) -> Vec<Explained> {
        self.loc_rib.explain(prefix.trunc())
    }

    /// The configured peers.
    pub fn peer_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.peers.keys().copied()
    }

    /// Routes in the peer's Adj-RIB-Out (what it was sent).
    pub fn advertised(&self, peer: IpAddr) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.adj_rib_out.len())
    }

    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::PeerAdded {
                address,
                ebgp,
                routing,
            } => {
                self.peers.insert(address, Peer::new(routing, ebgp));
            }
            Input::PeerRemoved { address } => {
                self.drop_peer_paths(address);
                self.peers.remove(&address);
                self.up_peers.retain(|up| *up != address);
                self.outputs
                    .push(Output::StopTimer(Timer::StaleRoutes(address)));
                self.check_converged();
            }
            Input::PeerRoutingChanged {
                address,
                routing,
                adj_rib_in,
            } => self.routing_changed(address, routing, adj_rib_in),
            Input::PeerUp(session) => self.peer_up(session),
            Input::PeerDown { address, graceful } => self.peer_down(address, graceful),
            Input::Routes {
                address,
                conn,
                changes,
            } => {
                let current = self
                    .peers
                    .get(&address)
                    .and_then(|p| p.session.as_ref())
                    .is_some_and(|s| s.conn == conn);
                if current {
                    for (prefix, path) in changes {
                        self.import(address, prefix, path);
                    }
                }
            }
            Input::EndOfRib { address, family } => self.end_of_rib(address, family),
            Input::RefreshRequested { address, family } => self.refresh(address, family),
            Input::Originate(prefix) => {
                let candidate = Candidate::shared(self.local_peer.clone(), self.local_path.clone());
                let change = self.loc_rib.insert(prefix.trunc(), candidate);
                self.best_changed(change);
            }
            Input::StopOriginating(prefix) => {
                let change = self.loc_rib.remove(prefix.trunc(), LOCAL_PEER);
                self.best_changed(change);
            }
            Input::TimerExpired(Timer::StaleRoutes(address)) => {
                let stale: Vec<IpNet> = self
                    .peers
                    .get_mut(&address)
                    .map(|p| p.stale.drain().collect())
                    .unwrap_or_default();
                if !stale.is_empty() {
                    info!(peer = %address, routes = stale.len(), "graceful restart: stale routes expired");
                }
                for prefix in stale {
                    let change = self.loc_rib.remove(prefix, address);
                    self.best_changed(change);
                }
            }
            Input::TimerExpired(Timer::SelectionDeferral) => {
                if !self.fib_synced {
                    info!("selection deferral time over; syncing the FIB");
                    self.sync_fib();
                }
            }
        }
        self.flush();
        std::mem::take(&mut self.outputs)
    }

    fn sync_fib(&mut self) {
        self.fib_synced = true;
        self.flush_fib();
        self.outputs.push(Output::FibSynced);
        self.outputs
            .push(Output::StopTimer(Timer::SelectionDeferral));
    }

    /// Restarting role: every configured peer is up and sent End-of-RIB for all its families.
    fn check_converged(&mut self) {
        if self.fib_synced {
            return;
        }
        let converged = self.peers.values().all(|peer| {
            peer.session
                .as_ref()
                .is_some_and(|s| s.families.iter().all(|f| peer.end_of_rib.contains(f)))
        });
        if converged {
            info!("End-of-RIB from every peer; syncing the FIB");
            self.sync_fib();
        }
    }

    fn import(&mut self, address: IpAddr, prefix: IpNet, path: Option<ReceivedPath>) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        if !peer.stale.is_empty() {
            peer.stale.remove(&prefix);
        }
        let candidate = match (path, &peer.info) {
            (Some(path), Some(info)) => {
                let looped = path.attrs.originator_id == Some(self.router_id)
                    || self
                        .config
                        .cluster_id
                        .is_some_and(|id| path.attrs.cluster_list.contains(&id));
                if looped {
                    debug!(peer = %address, %prefix, "reflection loop (ORIGINATOR_ID / CLUSTER_LIST); ignored");
                    None
                } else {
                    // Accepted unchanged: the received path itself moves into the Loc-RIB (no
                    // reference-count traffic on a path the peer task is handing out too).
                    let accepted = match peer.import.evaluate_protected(
                        prefix,
                        &path.attrs,
                        &self.config.protected,
                    ) {
                        Verdict::Reject { by } => {
                            debug!(peer = %address, %prefix, ?by, "import rejected");
                            None
                        }
                        Verdict::Accept {
                            attrs: Cow::Borrowed(_),
                            ..
                        } => Some(None),
                        Verdict::Accept {
                            attrs: Cow::Owned(attrs),
                            ..
                        } => Some(Some(attrs)),
                    };
                    match accepted {
                        None => None,
                        Some(changed) => {
                            let next_hop = path.next_hop;
                            let path = match changed {
                                None => path,
                                Some(attrs) => Arc::new(RoutePath { attrs, next_hop }),
                            };
                            let mut candidate = Candidate::shared(info.clone(), path);
                            candidate.next_hop_reachable = next_hop.is_some_and(usable_next_hop);
                            candidate.own_as_allowed = peer.routing.allow_own_as;
                            Some(candidate)
                        }
                    }
                }
            }
            _ => None,
        };
        let change = match candidate {
            Some(candidate) => self.loc_rib.insert(prefix, candidate),
            None => self.loc_rib.remove(prefix, address),
        };
        self.best_changed(change);
    }

    fn best_changed(&mut self, change: Option<BestChange>) {
        let Some(change) = change else { return };
        if self.config.fib {
            let old_hops = fib_next_hops(change.old.as_ref());
            let new_hops = fib_next_hops(change.new.as_ref());
            if old_hops != new_hops {
                self.fib.push(FibRoute {
                    prefix: change.prefix,
                    next_hops: new_hops,
                });
            }
        }
        let best = change.new.as_ref().map(|s| &s.best);
        let old_best = change.old.as_ref().map(|s| &s.best);
        if best == old_best {
            return; // only the multipath set changed: nothing to advertise
        }
        for i in 0..self.up_peers.len() {
            let peer = self.up_peers[i];
            self.export(peer, change.prefix, best);
        }
    }

    /// Brings the peer's Adj-RIB-Out entry for `prefix` in line with the best path.
    fn export(&mut self, address: IpAddr, prefix: IpNet, best: Option<&Candidate>) {
        let wanted = best.and_then(|best| self.export_path(address, prefix, best));
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let change = match wanted {
            Some(path) => {
                if peer
                    .adj_rib_out
                    .get(&prefix)
                    .is_some_and(|old| **old == path)
                {
                    return;
                }
                let path = Arc::new(path);
                peer.adj_rib_out.insert(prefix, path.clone());
                Some(path)
            }
            None => {
                if peer.adj_rib_out.remove(&prefix).is_none() {
                    return;
                }
                None
            }
        };
        self.sends
            .entry(address)
            .or_default()
            .push((prefix, change));
    }

    /// The path `best` becomes when sent to `address`, or `None` if it must not be sent.
    fn export_path(&self, address: IpAddr, prefix: IpNet, best: &Candidate) -> Option<OutPath> {
        let peer = self.peers.get(&address)?;
        let session = peer.session.as_ref()?;
        if !session.families.contains(family_of(prefix)) || best.peer.address == address {
            return None;
        }
        let to_ibgp = !peer.ebgp;
        let communities = &best.path.communities;
        // RFC 1997: NO_EXPORT_SUBCONFED "MUST NOT be advertised to external BGP peers (including
        // peers in other members autonomous systems inside a BGP confederation)": without
        // confederations, the same scope as NO_EXPORT.
        if communities.contains(&Community::NO_ADVERTISE)
            || (!to_ibgp
                && (communities.contains(&Community::NO_EXPORT)
                    || communities.contains(&Community::NO_EXPORT_SUBCONFED)))
        {
            return None;
        }
        let mut reflected = false;
        if best.peer.kind == PeerKind::Ibgp && to_ibgp {
            // RFC 4456 §6: from a client to all peers; from a non-client to the clients only.
            // RFC 4271 §9.2: no iBGP path to iBGP peers unless reflecting.
            self.config.cluster_id?;
            let from_client = self
                .peers
                .get(&best.peer.address)
                .is_some_and(|p| p.routing.route_reflector_client);
            if !from_client && !peer.routing.route_reflector_client {
                return None;
            }
            reflected = true;
        }
        // The export chain sees the path as selected (before our own AS is prepended, like BIRD).
        let mut attrs = match peer.export.evaluate(prefix, &best.path.attrs) {
            Verdict::Reject { .. } => return None,
            Verdict::Accept { attrs, .. } => attrs.into_owned(),
        };
        attrs.next_hop = None;
        attrs.as4_path = None;
        attrs.as4_aggregator = None;
        if to_ibgp {
            // The selected LOCAL_PREF (or the export chain's setLocalPref) travels over iBGP.
            attrs.local_pref = Some(attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
            if reflected {
                attrs.originator_id.get_or_insert(best.peer.router_id);
                if let Some(cluster_id) = self.config.cluster_id {
                    attrs.cluster_list.insert(0, cluster_id);
                }
            }
        } else {
            attrs
                .as_path
                .get_or_insert_with(AsPath::default)
                .prepend(session.local_as);
            attrs.local_pref = None;
            if best.peer.kind != PeerKind::Local {
                // RFC 4271 §5.1.4: a MED learned from a neighbouring AS is not passed to another.
                attrs.med = None;
            }
            attrs.originator_id = None;
            attrs.cluster_list.clear();
        }
        for community in &peer.routing.communities {
            if !attrs.communities.contains(community) {
                attrs.communities.push(*community);
            }
        }
        for community in &peer.routing.large_communities {
            if !attrs.large_communities.contains(community) {
                attrs.large_communities.push(*community);
            }
        }
        let own = match prefix {
            IpNet::V4(_) => session.next_hop_v4.map(IpAddr::V4),
            IpNet::V6(_) => session.next_hop_v6.map(IpAddr::V6),
        };
        let kept = best
            .path
            .next_hop
            .filter(|hop| hop.is_ipv4() == matches!(prefix, IpNet::V4(_)));
        let keep = match peer.routing.next_hop_mode {
            NextHopMode::Keep => true,
            NextHopMode::SelfAddress => false,
            // RFC 4271 §5.1.3 / RFC 4456 §10: unchanged over iBGP (reflected paths too), ours on eBGP.
            NextHopMode::Auto => to_ibgp && best.peer.kind != PeerKind::Local,
        };
        let next_hop = if keep { kept.or(own) } else { own }?;
        Some(OutPath { attrs, next_hop })
    }

    fn peer_up(&mut self, session: SessionInfo) {
        let address = session.peer.address;
        let families = session.families;
        let conn = session.conn;
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        // Helper role: what the returning peer's capability says about the paths kept for it.
        if !peer.stale.is_empty() {
            let preserved: Vec<AfiSafi> = session
                .peer_graceful_restart
                .iter()
                .flat_map(|gr| gr.families.iter())
                .filter(|f| f.forwarding_preserved)
                .map(|f| f.afi_safi)
                .collect();
            let dropped: Vec<IpNet> = peer
                .stale
                .iter()
                .filter(|p| !preserved.contains(&family_of(**p)))
                .copied()
                .collect();
            for prefix in &dropped {
                peer.stale.remove(prefix);
            }
            let keep_for = self
                .config
                .graceful_restart
                .as_ref()
                .map_or(Duration::ZERO, |gr| gr.stale_routes_time);
            if !peer.stale.is_empty() {
                self.outputs
                    .push(Output::StartTimer(Timer::StaleRoutes(address), keep_for));
            }
            for prefix in dropped {
                let change = self.loc_rib.remove(prefix, address);
                self.best_changed(change);
            }
        }
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        peer.info = Some(Arc::new(session.peer));
        peer.session = Some(session);
        if let Err(at) = self.up_peers.binary_search(&address) {
            self.up_peers.insert(at, address);
        }
        peer.end_of_rib = AfiSafiSet::EMPTY;
        peer.adj_rib_out.clear();
        let prefixes: Vec<IpNet> = self.loc_rib.prefixes().collect();
        for prefix in prefixes {
            let best = self.loc_rib.best(prefix).cloned();
            self.export(address, prefix, best.as_ref());
        }
        self.flush_sends();
        self.outputs.push(Output::SendEndOfRib {
            peer: address,
            conn,
            families,
        });
    }

    fn peer_down(&mut self, address: IpAddr, graceful: bool) {
        let gr_enabled = self.config.graceful_restart.is_some();
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let session = peer.session.take();
        self.up_peers.retain(|up| *up != address);
        peer.adj_rib_out.clear();
        self.sends.remove(&address);
        let peer_gr = session.and_then(|s| s.peer_graceful_restart);
        let restart_time = peer_gr.as_ref().map_or(Duration::ZERO, |gr| {
            let advertised = Duration::from_secs(u64::from(gr.restart_time));
            peer.routing
                .max_restart_time
                .map_or(advertised, |cap| advertised.min(cap))
        });
        let helping = graceful && gr_enabled && !restart_time.is_zero();
        let Some(peer_gr) = peer_gr.filter(|_| helping) else {
            self.drop_peer_paths(address);
            self.check_converged();
            return;
        };
        let kept_families: Vec<AfiSafi> = peer_gr.families.iter().map(|f| f.afi_safi).collect();
        let mut dropped = Vec::new();
        for prefix in self.loc_rib.prefixes_of(address) {
            if kept_families.contains(&family_of(prefix)) {
                self.loc_rib.mark_stale(prefix, address);
                peer.stale.insert(prefix);
            } else {
                dropped.push(prefix);
            }
        }
        info!(peer = %address, stale = peer.stale.len(), ?restart_time, "graceful restart helper: keeping the peer's routes");
        self.outputs.push(Output::StartTimer(
            Timer::StaleRoutes(address),
            restart_time,
        ));
        for prefix in dropped {
            let change = self.loc_rib.remove(prefix, address);
            self.best_changed(change);
        }
    }

    /// Removes every path of the peer at once (no graceful restart).
    fn drop_peer_paths(&mut self, address: IpAddr) {
        if let Some(peer) = self.peers.get_mut(&address) {
            peer.stale.clear();
        }
        for change in self.loc_rib.remove_peer(address) {
            self.best_changed(Some(change));
        }
    }

    fn end_of_rib(&mut self, address: IpAddr, family: AfiSafi) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        peer.end_of_rib.insert(family);
        let swept: Vec<IpNet> = peer
            .stale
            .iter()
            .filter(|p| family_of(**p) == family)
            .copied()
            .collect();
        for prefix in &swept {
            peer.stale.remove(prefix);
        }
        if peer.stale.is_empty() {
            self.outputs
                .push(Output::StopTimer(Timer::StaleRoutes(address)));
        }
        if !swept.is_empty() {
            info!(peer = %address, %family, removed = swept.len(), "End-of-RIB: stale routes removed");
        }
        for prefix in swept {
            let change = self.loc_rib.remove(prefix, address);
            self.best_changed(change);
        }
        self.check_converged();
    }

    fn refresh(&mut self, address: IpAddr, family: AfiSafi) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        let again: Vec<OutChange> = peer
            .adj_rib_out
            .iter()
            .filter(|(p, _)| family_of(**p) == family)
            .map(|(p, path)| (*p, Some(path.clone())))
            .collect();
        self.sends.entry(address).or_default().extend(again);
    }

    fn routing_changed(
        &mut self,
        address: IpAddr,
        routing: PeerRouting,
        adj_rib_in: Vec<(IpNet, ReceivedPath)>,
    ) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let ebgp = peer.ebgp;
        let stale = std::mem::take(&mut peer.stale);
        *peer = Peer {
            session: peer.session.take(),
            adj_rib_out: std::mem::take(&mut peer.adj_rib_out),
            end_of_rib: peer.end_of_rib,
            info: peer.info.take(),
            stale,
            ..Peer::new(routing, ebgp)
        };
        // Re-import what the peer sent; paths it sent that are no longer in the table are withdrawn.
        let mut present: HashSet<IpNet> = self.loc_rib.prefixes_of(address).into_iter().collect();
        for (prefix, path) in adj_rib_in {
            present.remove(&prefix);
            self.import(address, prefix, Some(path));
        }
        for prefix in present {
            if !self
                .peers
                .get(&address)
                .is_some_and(|p| p.stale.contains(&prefix))
            {
                self.import(address, prefix, None);
            }
        }
        // Export chains and reflection flags may have changed: re-export everything to everyone.
        let peers = self.up_peers.clone();
        let prefixes: Vec<IpNet> = self.loc_rib.prefixes().collect();
        for prefix in prefixes {
            let best = self.loc_rib.best(prefix).cloned();
            for peer in &peers {
                self.export(*peer, prefix, best.as_ref());
            }
        }
    }

    fn flush_sends(&mut self) {
        for (peer, changes) in std::mem::take(&mut self.sends) {
            let Some(conn) = self
                .peers
                .get(&peer)
                .and_then(|p| p.session.as_ref())
                .map(|s| s.conn)
            else {
                continue;
            };
            if !changes.is_empty() {
                self.outputs.push(Output::Send {
                    peer,
                    conn,
                    changes,
                });
            }
        }
    }

    fn flush_fib(&mut self) {
        if !self.fib.is_empty() {
            self.outputs
                .push(Output::Fib(std::mem::take(&mut self.fib)));
        }
    }

    fn flush(&mut self) {
        self.flush_sends();
        self.flush_fib();
    }

    /// Prefixes with a selected path, for listings.
    pub fn selected_routes(&self) -> Vec<(IpNet, Selected)> {
        let mut routes: Vec<(IpNet, Selected)> = self
            .loc_rib
            .prefixes()
            .filter_map(|p| Some((p, self.loc_rib.selected(p)?)))
            .collect();
        routes.sort_by_key(|(p, _)| *p);
        routes
    }

    /// Whether the peer's paths are currently kept through its restart.
    pub fn stale_routes(&self, peer: IpAddr) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.stale.len())
    }
}

#[cfg(test)]
mod tests;
