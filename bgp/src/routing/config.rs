//! Routing configuration: speaker-wide ([`RoutingConfig`]) and per peer ([`PeerRouting`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;

use crate::decision::DEFAULT_MAX_PATHS;
use crate::policy::{Action, MaxPrefix, Policy};
use crate::wire::{Community, LargeCommunity};

/// Speaker-wide routing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Set: this speaker is a route reflector (RFC 4456) with this CLUSTER_ID for the peers marked
    /// [`PeerRouting::route_reflector_client`].
    pub cluster_id: Option<Ipv4Addr>,
    /// Size of the ECMP set; 1 disables multipath.
    pub max_paths: usize,
    /// Reef's own pools and blocks: a learned route that equals, covers or lies inside one of these is
    /// refused unless an import rule explicitly accepts it.
    pub protected: Vec<IpNet>,
    /// Graceful restart (RFC 4724); `None` = not advertised, peers' restarts are not helped either.
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Produce [`super::FibUpdate`]s for a kernel route programmer (`Speaker::take_fib_updates`).
    pub fib: bool,
    /// Set when the kernel still holds Reef routes of a previous run: the FIB sync (which removes the
    /// routes the new Loc-RIB does not have) waits for every peer's End-of-RIB, at most this long, so
    /// a restart never flushes forwarding state (RFC 4724 §4.1 selection deferral, with or without GR).
    pub fib_sync_deferral: Option<Duration>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            cluster_id: None,
            max_paths: DEFAULT_MAX_PATHS,
            protected: Vec::new(),
            graceful_restart: None,
            fib: false,
            fib_sync_deferral: None,
        }
    }
}

/// Graceful restart in both roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Restart time we advertise (seconds, at most 4095): how long peers keep our routes while we
    /// restart.
    pub restart_time: u16,
    /// Helper role: how long a restarted peer's stale routes are kept while waiting for its End-of-RIB.
    pub stale_routes_time: Duration,
    /// This start is a restart: the kernel still holds routes of the previous run (the agent sees them).
    /// Sets the Restart State bit of the first session's OPEN.
    pub restarting: bool,
}

/// Default upper bound of the wait for the peers' End-of-RIB after a restart (BIRD and FRR use 120 s
/// and 360 s; a Reef node has few peers and short tables).
pub const DEFAULT_SELECTION_DEFERRAL: Duration = Duration::from_secs(30);

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            restart_time: 120,
            stale_routes_time: Duration::from_secs(360),
            restarting: false,
        }
    }
}

/// Next hop of routes sent to a peer (Calico's `BGPPeer.nextHopMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NextHopMode {
    /// Our address for eBGP peers and for locally originated routes; unchanged for routes passed on
    /// over iBGP (RFC 4271 §5.1.3).
    #[default]
    Auto,
    /// Always our address.
    SelfAddress,
    /// Never changed, also on eBGP (a route server or an eBGP reflector).
    Keep,
}

/// Routing settings of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRouting {
    /// With [`RoutingConfig::cluster_id`] set: the peer is a reflection client.
    pub route_reflector_client: bool,
    pub next_hop_mode: NextHopMode,
    /// Import filter chain; an empty chain takes the session default (accept, or reject on eBGP
    /// with `rfc8212`).
    pub import: Vec<crate::policy::Filter>,
    /// Export filter chain, as `import`.
    pub export: Vec<crate::policy::Filter>,
    /// Added to every route sent to this peer.
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    /// Accept routes whose AS_PATH holds our AS up to this many times (Calico's
    /// `numAllowedLocalASNumbers`); 0 = never.
    pub allow_own_as: u8,
    pub max_prefix: Option<MaxPrefix>,
    /// Helper role: keep this peer's routes at most this long while it restarts; `None` = the restart
    /// time the peer advertised.
    pub max_restart_time: Option<Duration>,
    /// RFC 8212: reject eBGP routes in both directions when no filter is configured.
    pub rfc8212: bool,
}

impl Default for PeerRouting {
    fn default() -> Self {
        PeerRouting {
            route_reflector_client: false,
            next_hop_mode: NextHopMode::Auto,
            import: Vec::new(),
            export: Vec::new(),
            communities: Vec::new(),
            large_communities: Vec::new(),
            allow_own_as: 0,
            max_prefix: None,
            max_restart_time: None,
            rfc8212: false,
        }
    }
}

impl PeerRouting {
    /// The import or export chain with its default action.
    pub(crate) fn policy(&self, filters: &[crate::policy::Filter], ebgp: bool) -> Policy {
        let default = if ebgp {
            crate::policy::ebgp_default(!filters.is_empty(), self.rfc8212)
        } else {
            Action::Accept
        };
        Policy {
            filters: filters.to_vec(),
            default,
        }
    }
}
