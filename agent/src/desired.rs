//! The desired BGP state of a node, and its application to a running speaker. Speaker mode computes it
//! from the YAML file, node mode from the resources (`node::calc`); both apply it with
//! [`BgpRunner::apply`], the one path into the speaker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use reef_bgp::driver::{PeerChange, PeerConfig, Speaker, SpeakerConfig};
use reef_crds::node::BGPSessionType;
use tracing::{info, warn};

use crate::bfd::{BfdPeer, BfdSessions};

/// Where a peering comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A peer of the YAML file (speaker mode).
    Configured,
    /// The node-to-node mesh.
    Mesh,
    /// A BGPPeer selecting this node by `node`.
    Node,
    /// A BGPPeer selecting this node by `nodeSelector` (or every node).
    Global,
    /// Route reflection: a client to its reflector, a reflector to its client or to another reflector.
    Reflector,
}

impl PeerKind {
    /// The ReefNode status type. The status has no reflector type (Calico's peer types): reflector
    /// peerings are the cluster's own topology, shown as mesh.
    pub fn session_type(self) -> BGPSessionType {
        match self {
            PeerKind::Mesh | PeerKind::Reflector => BGPSessionType::NodeMesh,
            PeerKind::Node | PeerKind::Configured => BGPSessionType::NodePeer,
            PeerKind::Global => BGPSessionType::GlobalPeer,
        }
    }
}

/// One peer the speaker should run.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPeer {
    pub config: PeerConfig,
    /// BFD session timers when BFD is enabled.
    pub bfd: Option<reef_bfd::SessionConfig>,
    pub kind: PeerKind,
    /// What it comes from, for logs and status: `mesh`, `BGPPeer/<name>`, `config`.
    pub origin: String,
}

impl DesiredPeer {
    fn bfd_peer(&self) -> Option<BfdPeer> {
        Some(BfdPeer {
            address: self.config.address,
            local: self.config.source_address,
            config: self.bfd?,
        })
    }
}

/// Everything the speaker should run.
#[derive(Clone, Debug)]
pub struct DesiredBgp {
    pub speaker: SpeakerConfig,
    /// By peer address.
    pub peers: BTreeMap<IpAddr, DesiredPeer>,
    /// Locally originated prefixes.
    pub prefixes: BTreeSet<IpNet>,
}

/// Speaker-wide settings that a running speaker cannot take: named for the log.
fn restart_only_changes(running: &SpeakerConfig, new: &SpeakerConfig) -> Vec<&'static str> {
    let mut changes = Vec::new();
    if running.router_id != new.router_id {
        changes.push("router id");
    }
    if running.local_as != new.local_as {
        changes.push("AS number");
    }
    if running.listen != new.listen {
        changes.push("listen address/port");
    }
    let (old, new) = (&running.routing, &new.routing);
    if old.cluster_id != new.cluster_id {
        changes.push("route reflector cluster id");
    }
    if old.max_paths != new.max_paths || old.protected != new.protected {
        changes.push("maxPaths/protectedPrefixes");
    }
    let restart_times = |routing: &reef_bgp::routing::RoutingConfig| {
        routing
            .graceful_restart
            .as_ref()
            .map(|gr| (gr.restart_time, gr.stale_routes_time))
    };
    if restart_times(old) != restart_times(new) {
        changes.push("graceful restart");
    }
    if old.fib != new.fib {
        changes.push("fib");
    }
    changes
}

/// What one [`BgpRunner::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Vec<(IpAddr, PeerChange)>,
    /// Peers that could not be applied, with the reason.
    pub errors: Vec<(IpAddr, String)>,
    /// Speaker-wide settings that changed and take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// A running speaker with its BFD sessions, and the desired state last applied to it.
pub struct BgpRunner {
    pub speaker: Arc<Speaker>,
    bfd: BfdSessions,
    peers: BTreeMap<IpAddr, DesiredPeer>,
}

impl BgpRunner {
    /// Starts the speaker with `desired.speaker` (no peers yet: [`BgpRunner::apply`] adds them).
    pub async fn start(desired: &DesiredBgp) -> anyhow::Result<BgpRunner> {
        let speaker = Speaker::start(desired.speaker.clone(), Vec::new(), Vec::new()).await?;
        let speaker = Arc::new(speaker);
        Ok(BgpRunner {
            bfd: BfdSessions::new(speaker.clone()),
            speaker,
            peers: BTreeMap::new(),
        })
    }

    /// The peers last applied, by address.
    pub fn peers(&self) -> &BTreeMap<IpAddr, DesiredPeer> {
        &self.peers
    }

    /// Brings the speaker to `desired`: peers added, removed or updated (only sessions whose session
    /// settings changed are reset), BFD sessions likewise, originated prefixes replaced. A peer the
    /// speaker refuses is logged and left out; the rest is applied.
    pub async fn apply(&mut self, desired: &DesiredBgp) -> anyhow::Result<Applied> {
        let mut applied = Applied {
            needs_restart: restart_only_changes(self.speaker.config(), &desired.speaker),
            ..Applied::default()
        };
        for change in &applied.needs_restart {
            warn!(
                change,
                "this change takes effect at the next restart of reefd"
            );
        }
        let configs = desired.peers.values().map(|p| p.config.clone()).collect();
        for (address, result) in self.speaker.set_peers(configs).await {
            let origin = desired
                .peers
                .get(&address)
                .or_else(|| self.peers.get(&address))
                .map_or("", |p| p.origin.as_str());
            match result {
                Ok(change) => {
                    info!(peer = %address, origin, ?change, "BGP peer updated");
                    applied.changes.push((address, change));
                }
                Err(e) => {
                    warn!(peer = %address, origin, error = %e, "BGP peer not applied");
                    applied.errors.push((address, e.to_string()));
                }
            }
        }
        // Peers the speaker refused are not running: keep them out of what was applied.
        self.peers = desired
            .peers
            .iter()
            .filter(|(address, _)| self.speaker.peer_config(**address).is_some())
            .map(|(address, peer)| (*address, peer.clone()))
            .collect();
        self.bfd
            .set_peers(
                self.peers
                    .values()
                    .filter_map(DesiredPeer::bfd_peer)
                    .collect(),
            )
            .await?;
        let (advertised, withdrawn) = self.speaker.set_prefixes(&desired.prefixes);
        if advertised + withdrawn > 0 {
            info!(advertised, withdrawn, "originated prefixes updated");
        }
        Ok(applied)
    }

    /// Stops BFD first (AdminDown), then the sessions: with `graceful_restart` without a NOTIFICATION
    /// so that peers keep our routes, otherwise with Cease.
    pub async fn stop(self, graceful_restart: bool) {
        self.bfd.stop().await;
        if graceful_restart {
            self.speaker.shutdown_for_restart().await;
        } else {
            self.speaker.shutdown().await;
        }
    }
}
