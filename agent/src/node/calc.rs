//! The pure calculation of node mode: a resource [`Snapshot`] in, this node's desired BGP state out
//! (peers, filters, originated prefixes), plus the resources it had to reject and why. No IO: unit
//! tested with in-memory snapshots. The snapshot takes deltas ([`Snapshot::apply`]); the calculation
//! is run again over the whole snapshot after each batch of deltas (cheap at cluster sizes: a pass is
//! linear in the resources).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use reef_bgp::driver::{PeerConfig, SpeakerConfig};
use reef_bgp::policy::{Action, Filter, MatchOperator, Operation, PrefixMatch, Rule};
use reef_bgp::routing::{GracefulRestartConfig, NextHopMode, PeerRouting, RoutingConfig};
use reef_crds::bgp::{
    BGPPassword, DEFAULT_BGP_CONFIGURATION_NAME, NODE_BGP_CONFIGURATION_PREFIX,
    NextHopMode as CrdNextHopMode, SourceAddress,
};
use reef_crds::ipam::AffinityState;
use reef_crds::{
    BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPPeer, BlockAffinity, IPAMBlock, IPPool,
    ReefNode, Selector, Validate,
};

use crate::desired::{DesiredBgp, DesiredPeer, PeerKind};
use crate::filters::{self, AnyCommunity, parse_community};

/// Connect retry of node-mode peers: a mesh pair's active side retries this often until the passive
/// side listens.
const CONNECT_RETRY: Duration = Duration::from_secs(2);

/// Every resource the calculation reads, by name (namespaced kinds: `<namespace>/<name>`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub bgp_configurations: BTreeMap<String, BGPConfiguration>,
    pub bgp_peers: BTreeMap<String, BGPPeer>,
    pub bgp_filters: BTreeMap<String, BGPFilter>,
    pub nodes: BTreeMap<String, ReefNode>,
    pub pools: BTreeMap<String, IPPool>,
    pub blocks: BTreeMap<String, IPAMBlock>,
    pub affinities: BTreeMap<String, BlockAffinity>,
    /// Secrets holding BGP passwords (Reef's namespace only).
    pub secrets: BTreeMap<String, Secret>,
}

/// One change of the snapshot: an object of one kind stored (added or modified) or deleted, or a
/// kind's whole list (after a re-list).
#[derive(Clone, Debug)]
pub enum Delta {
    BgpConfiguration(Change<BGPConfiguration>),
    BgpPeer(Change<BGPPeer>),
    BgpFilter(Change<BGPFilter>),
    Node(Change<ReefNode>),
    Pool(Change<IPPool>),
    Block(Change<IPAMBlock>),
    Affinity(Change<BlockAffinity>),
    Secret(Change<Secret>),
}

#[derive(Clone, Debug)]
pub enum Change<K> {
    Stored(K),
    Deleted(K),
    /// Every object of the kind (a list, or a re-list after the watch expired or failed).
    Replaced(Vec<K>),
}

/// The key of an object in a [`Snapshot`] map.
fn key<K: kube::Resource>(obj: &K) -> String {
    match obj.namespace() {
        Some(namespace) => format!("{namespace}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

fn change<K: kube::Resource + Clone>(map: &mut BTreeMap<String, K>, change: Change<K>) {
    match change {
        Change::Stored(obj) => {
            map.insert(key(&obj), obj);
        }
        Change::Deleted(obj) => {
            map.remove(&key(&obj));
        }
        Change::Replaced(all) => *map = all.into_iter().map(|obj| (key(&obj), obj)).collect(),
    }
}

impl Delta {
    /// A whole list of a kind (the first list, or a re-list).
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            Delta::BgpConfiguration(Change::Replaced(_))
                | Delta::BgpPeer(Change::Replaced(_))
                | Delta::BgpFilter(Change::Replaced(_))
                | Delta::Node(Change::Replaced(_))
                | Delta::Pool(Change::Replaced(_))
                | Delta::Block(Change::Replaced(_))
                | Delta::Affinity(Change::Replaced(_))
                | Delta::Secret(Change::Replaced(_))
        )
    }
}

impl Snapshot {
    pub fn apply(&mut self, delta: Delta) {
        match delta {
            Delta::BgpConfiguration(c) => change(&mut self.bgp_configurations, c),
            Delta::BgpPeer(c) => change(&mut self.bgp_peers, c),
            Delta::BgpFilter(c) => change(&mut self.bgp_filters, c),
            Delta::Node(c) => change(&mut self.nodes, c),
            Delta::Pool(c) => change(&mut self.pools, c),
            Delta::Block(c) => change(&mut self.blocks, c),
            Delta::Affinity(c) => change(&mut self.affinities, c),
            Delta::Secret(c) => change(&mut self.secrets, c),
        }
    }

    /// The BGPConfiguration of `node`: `node.<name>` over `default`.
    fn config_for(&self, node: &str) -> BGPConfigurationSpec {
        let default = self
            .bgp_configurations
            .get(DEFAULT_BGP_CONFIGURATION_NAME)
            .map(|c| c.spec.clone())
            .unwrap_or_default();
        match self
            .bgp_configurations
            .get(&format!("{NODE_BGP_CONFIGURATION_PREFIX}{node}"))
        {
            Some(own) => own.spec.overlay(&default),
            None => default,
        }
    }

    /// The value of `key` in Secret `name`.
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self
            .secrets
            .values()
            .find(|s| s.metadata.name.as_deref() == Some(name))?;
        if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Some(value.clone());
        }
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    }
}

/// A resource the calculation ignored, and why (for the log, its status or an event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `BGPPeer/<name>`, `BGPFilter/<name>`, `IPPool/<name>`.
    pub object: String,
    pub reason: String,
}

/// What the calculation gives.
#[derive(Clone, Debug)]
pub struct Calculated {
    /// `None` while this node cannot run BGP (no ReefNode, no IPv4 address): the reason is in
    /// `problem`, and the speaker is left as it was.
    pub desired: Option<DesiredBgp>,
    pub problem: Option<String>,
    pub rejected: Vec<Rejected>,
}

/// A Reef node as a peer: its address, AS, listen port and whether it is a reflector.
#[derive(Clone, Debug)]
struct NodePeer<'a> {
    name: &'a str,
    address: Ipv4Addr,
    asn: u32,
    port: u16,
    reflector: bool,
    labels: &'a BTreeMap<String, String>,
}

fn node_address(node: &ReefNode) -> Option<Ipv4Addr> {
    let text = node.spec.bgp.as_ref()?.ipv4_address.as_deref()?;
    let address = text.split('/').next()?;
    address.parse().ok()
}

struct Calc<'a> {
    snapshot: &'a Snapshot,
    name: &'a str,
    config: BGPConfigurationSpec,
    me: NodePeer<'a>,
    rejected: Vec<Rejected>,
    /// Converted BGPFilters by name; the invalid ones hold their reason.
    filters: BTreeMap<&'a str, Result<filters::Converted, String>>,
    /// The export filter of `prefixAdvertisements` (communities per prefix), last in every chain.
    advertisements: Option<Filter>,
}

/// This node's desired BGP state from the snapshot. `node` is the node's name.
pub fn calculate(snapshot: &Snapshot, node: &str) -> Calculated {
    let refuse = |problem: String| Calculated {
        desired: None,
        problem: Some(problem),
        rejected: Vec::new(),
    };
    let Some(own) = snapshot.nodes.get(node) else {
        return refuse(format!("ReefNode {node} does not exist yet"));
    };
    let config = snapshot.config_for(node);
    let Some(address) = node_address(own) else {
        return refuse(format!(
            "ReefNode {node} has no valid spec.bgp.ipv4Address: BGP needs the node's IPv4 address"
        ));
    };
    let me = NodePeer {
        name: node,
        address,
        asn: own
            .spec
            .bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .unwrap_or(config.as_number_or_default()),
        port: config.listen_port_or_default(),
        reflector: reflector_cluster(own).is_some(),
        labels: own.metadata.labels.as_ref().unwrap_or(&EMPTY_LABELS),
    };
    let mut calc = Calc {
        snapshot,
        name: node,
        config,
        me,
        rejected: Vec::new(),
        filters: BTreeMap::new(),
        advertisements: None,
    };
    calc.convert_filters();
    calc.advertisements = calc.prefix_advertisements();
    let cluster_id = match reflector_cluster(own) {
        Some(Ok(id)) => Some(id),
        Some(Err(text)) => {
            calc.rejected.push(Rejected {
                object: format!("ReefNode/{node}"),
                reason: format!(
                    "spec.bgp.routeReflectorClusterID {text:?} is not an IPv4 address (e.g. 244.0.0.1): this node is not a reflector"
                ),
            });
            None
        }
        None => None,
    };
    let peers = calc.peers(cluster_id.is_some());
    let prefixes = calc.exported_prefixes();
    let speaker = SpeakerConfig {
        router_id: calc.me.address,
        local_as: calc.me.asn,
        listen: Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            calc.me.port,
        )),
        routing: RoutingConfig {
            cluster_id,
            graceful_restart: Some(GracefulRestartConfig {
                restart_time: calc
                    .config
                    .graceful_restart_time_or_default()
                    .as_secs()
                    .min(4095) as u16,
                ..GracefulRestartConfig::default()
            }),
            fib: true,
            ..RoutingConfig::default()
        },
    };
    Calculated {
        desired: Some(DesiredBgp {
            speaker,
            peers,
            prefixes,
        }),
        problem: None,
        rejected: calc.rejected,
    }
}

static EMPTY_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The node's reflector cluster id: `None` when it is not a reflector, `Err(text)` when unparsable.
fn reflector_cluster(node: &ReefNode) -> Option<Result<Ipv4Addr, String>> {
    let text = node
        .spec
        .bgp
        .as_ref()?
        .route_reflector_cluster_id
        .as_deref()?;
    Some(text.parse().map_err(|_| text.to_string()))
}

impl<'a> Calc<'a> {
    fn convert_filters(&mut self) {
        let snapshot = self.snapshot;
        for (name, filter) in &snapshot.bgp_filters {
            let converted = filter
                .validate()
                .map_err(|e| e.to_string())
                .and_then(|()| filters::convert(&filter.spec).map_err(|e| format!("{e:#}")));
            if let Err(reason) = &converted {
                self.rejected.push(Rejected {
                    object: format!("BGPFilter/{name}"),
                    reason: reason.clone(),
                });
            }
            self.filters.insert(name.as_str(), converted);
        }
    }

    /// BGPConfiguration `prefixAdvertisements`: an export filter accepting each CIDR (and what is
    /// inside it) with its communities (a name from `communities` or a literal `aa:nn[:mm]`).
    fn prefix_advertisements(&mut self) -> Option<Filter> {
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for (n, advertisement) in self.config.prefix_advertisements.iter().enumerate() {
            let field = format!("spec.prefixAdvertisements[{n}]");
            let Ok(cidr) = advertisement.cidr.parse::<IpNet>() else {
                problems.push(format!(
                    "{field}.cidr {:?} is not a CIDR",
                    advertisement.cidr
                ));
                continue;
            };
            let mut operations = Vec::new();
            for community in &advertisement.communities {
                let value = self
                    .config
                    .communities
                    .iter()
                    .find(|c| c.name == *community)
                    .map_or(community.as_str(), |c| c.value.as_str());
                match parse_community(value) {
                    Ok(AnyCommunity::Standard(c)) => operations.push(Operation::AddCommunity(c)),
                    Ok(AnyCommunity::Large(c)) => operations.push(Operation::AddLargeCommunity(c)),
                    Err(e) => problems.push(format!("{field}.communities: {e}")),
                }
            }
            let mut rule = Rule::new(Action::Accept);
            rule.prefix = Some(PrefixMatch {
                cidr: cidr.trunc(),
                op: MatchOperator::In,
                length: None,
            });
            rule.operations = operations;
            rules.push(rule);
        }
        for problem in problems {
            self.reject_config(problem);
        }
        (!rules.is_empty()).then_some(Filter { rules })
    }

    fn reject_config(&mut self, reason: String) {
        self.rejected.push(Rejected {
            object: "BGPConfiguration".to_string(),
            reason,
        });
    }

    /// Every other Reef node that runs BGP, as a peer.
    fn other_nodes(&self) -> Vec<NodePeer<'a>> {
        self.snapshot
            .nodes
            .iter()
            .filter(|(name, _)| name.as_str() != self.name)
            .filter_map(|(name, node)| {
                let address = node_address(node)?;
                let config = self.snapshot.config_for(name);
                Some(NodePeer {
                    name,
                    address,
                    asn: node
                        .spec
                        .bgp
                        .as_ref()
                        .and_then(|b| b.as_number)
                        .unwrap_or(config.as_number_or_default()),
                    port: config.listen_port_or_default(),
                    reflector: matches!(reflector_cluster(node), Some(Ok(_))),
                    labels: node.metadata.labels.as_ref().unwrap_or(&EMPTY_LABELS),
                })
            })
            .filter(|other| other.address != self.me.address)
            .collect()
    }

    fn peers(&mut self, i_reflect: bool) -> BTreeMap<IpAddr, DesiredPeer> {
        let mut peers = BTreeMap::new();
        let others = self.other_nodes();
        let mesh = self.config.node_to_node_mesh_or_default();
        for other in &others {
            let kind = match (i_reflect, other.reflector) {
                // Reflectors peer with each other and with every client; clients with every reflector.
                (true, _) | (false, true) => PeerKind::Reflector,
                (false, false) if mesh => PeerKind::Mesh,
                (false, false) => continue,
            };
            match self.node_peer(other, kind, i_reflect && !other.reflector) {
                Ok(peer) => {
                    peers.insert(IpAddr::V4(other.address), peer);
                }
                Err(reason) => self.reject_config(reason),
            }
        }
        // Explicit BGPPeers replace an implicit peering with the same address; between themselves the
        // first by name wins.
        let mut explicit: BTreeMap<IpAddr, String> = BTreeMap::new();
        let snapshot = self.snapshot;
        for (name, resource) in &snapshot.bgp_peers {
            let object = format!("BGPPeer/{name}");
            match self.bgp_peer(resource, &others, i_reflect) {
                Ok(list) => {
                    for peer in list {
                        let address = peer.config.address;
                        if let Some(first) = explicit.get(&address) {
                            self.rejected.push(Rejected {
                                object: object.clone(),
                                reason: format!(
                                    "peer {address} is already configured by {first}: one peering per address"
                                ),
                            });
                            continue;
                        }
                        explicit.insert(address, object.clone());
                        peers.insert(address, peer);
                    }
                }
                Err(reason) => self.rejected.push(Rejected { object, reason }),
            }
        }
        peers
    }

    /// The BGPConfiguration's password for mesh (and reflector) sessions.
    fn password(&self, password: &Option<BGPPassword>) -> Result<Option<String>, String> {
        let Some(reference) = password.as_ref().and_then(|p| p.secret_key_ref.as_ref()) else {
            return Ok(None);
        };
        self.snapshot
            .secret_value(&reference.name, &reference.key)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "password: Secret {:?} has no key {:?} (create it in Reef's namespace)",
                    reference.name, reference.key
                )
            })
    }

    /// The timers of the BGPConfiguration, or of a BGPPeer when it sets them.
    fn timers(
        &self,
        hold: Option<kube::core::Duration>,
        keepalive: Option<kube::core::Duration>,
    ) -> (u16, Option<u16>) {
        let hold = hold
            .map(Duration::from)
            .unwrap_or(self.config.hold_time_or_default());
        let keepalive = keepalive
            .map(Duration::from)
            .unwrap_or(self.config.keepalive_time_or_default());
        let secs = |d: Duration| d.as_secs().min(u64::from(u16::MAX)) as u16;
        (secs(hold), Some(secs(keepalive)))
    }

    fn base_config(&self, address: IpAddr, asn: u32, port: u16) -> PeerConfig {
        let mut config = PeerConfig::new(address, asn);
        config.port = port;
        config.connect_retry = CONNECT_RETRY;
        config.source_address = Some(IpAddr::V4(self.me.address));
        config
    }

    fn export_chain(&self, mut export: Vec<Filter>) -> Vec<Filter> {
        export.extend(self.advertisements.clone());
        export
    }

    /// A mesh or reflector peering with another node: exactly one side connects (the lower address),
    /// so the pair never collides.
    fn node_peer(
        &self,
        other: &NodePeer<'_>,
        kind: PeerKind,
        client: bool,
    ) -> Result<DesiredPeer, String> {
        let mut config = self.base_config(IpAddr::V4(other.address), other.asn, other.port);
        config.passive = self.me.address > other.address;
        config.password = self
            .password(&self.config.node_mesh_password)
            .map_err(|e| format!("spec.nodeMeshPassword: {e}"))?;
        (config.hold_time, config.keepalive_time) = self.timers(None, None);
        config.routing = PeerRouting {
            route_reflector_client: client,
            max_restart_time: self.config.node_mesh_max_restart_time.map(Duration::from),
            export: self.export_chain(Vec::new()),
            ..PeerRouting::default()
        };
        Ok(DesiredPeer {
            config,
            bfd: None,
            kind,
            origin: format!("node/{}", other.name),
        })
    }

    /// Whether a BGPPeer applies to this node, and as which kind.
    fn selects_me(&self, resource: &BGPPeer) -> Result<Option<PeerKind>, String> {
        let spec = &resource.spec;
        if !spec.node.is_empty() {
            return Ok((spec.node == self.name).then_some(PeerKind::Node));
        }
        if spec.node_selector.is_empty() {
            return Ok(Some(PeerKind::Global));
        }
        let selector =
            Selector::parse(&spec.node_selector).map_err(|e| format!("spec.nodeSelector: {e}"))?;
        Ok(selector.matches(self.me.labels).then_some(PeerKind::Global))
    }

    /// The peerings of one BGPPeer for this node (none when it selects other nodes; several with a
    /// `peerSelector`). An error is the reason the whole BGPPeer is rejected.
    fn bgp_peer(
        &self,
        resource: &BGPPeer,
        others: &[NodePeer<'_>],
        i_reflect: bool,
    ) -> Result<Vec<DesiredPeer>, String> {
        resource.validate().map_err(|e| e.to_string())?;
        let Some(kind) = self.selects_me(resource)? else {
            return Ok(Vec::new());
        };
        let spec = &resource.spec;
        let mut import = Vec::new();
        let mut export = Vec::new();
        for name in &spec.filters {
            match self.filters.get(name.as_str()) {
                None => {
                    return Err(format!(
                        "spec.filters: BGPFilter {name:?} does not exist (create it or remove it from the list)"
                    ));
                }
                Some(Err(reason)) => {
                    return Err(format!(
                        "spec.filters: BGPFilter {name:?} is invalid: {reason}"
                    ));
                }
                Some(Ok(converted)) => {
                    import.push(converted.import.clone());
                    export.push(converted.export.clone());
                }
            }
        }
        let password = self
            .password(&spec.password)
            .map_err(|e| format!("spec.{e}"))?;
        let targets: Vec<(IpAddr, u32, u16, Option<&NodePeer<'_>>)> = match spec.peer_address() {
            Some(Ok((address, port))) => {
                // validate() guarantees asNumber with peerIP.
                let asn = spec.as_number.unwrap_or(self.me.asn);
                vec![(address, asn, port.unwrap_or(179), None)]
            }
            Some(Err(e)) => return Err(format!("spec.peerIP: {e}")),
            None => {
                let selector = Selector::parse(&spec.peer_selector)
                    .map_err(|e| format!("spec.peerSelector: {e}"))?;
                others
                    .iter()
                    .filter(|other| selector.matches(other.labels))
                    .map(|other| {
                        let asn = spec.as_number.unwrap_or(other.asn);
                        (IpAddr::V4(other.address), asn, other.port, Some(other))
                    })
                    .collect()
            }
        };
        let (hold_time, keepalive_time) = self.timers(spec.hold_time, spec.keepalive_time);
        let mut peers = Vec::new();
        for (address, asn, port, node) in targets {
            if address == IpAddr::V4(self.me.address) {
                continue;
            }
            let mut config = self.base_config(address, asn, port);
            config.password = password.clone();
            config.hold_time = hold_time;
            config.keepalive_time = keepalive_time;
            config.ttl_security = spec.ttl_security;
            config.source_address = match spec.source_address {
                Some(SourceAddress::None) => None,
                Some(SourceAddress::UseNodeIP) | None => Some(IpAddr::V4(self.me.address)),
            };
            // Two Reef nodes selected by each other: the lower address connects, as in the mesh.
            config.passive = match node {
                Some(_) => spec.passive || IpAddr::V4(self.me.address) > address,
                None => spec.passive,
            };
            config.routing = PeerRouting {
                // A reflector's iBGP peers that are plain nodes are its clients.
                route_reflector_client: i_reflect
                    && asn == self.me.asn
                    && node.is_some_and(|n| !n.reflector),
                next_hop_mode: match spec.next_hop_mode {
                    None | Some(CrdNextHopMode::Auto) => NextHopMode::Auto,
                    Some(CrdNextHopMode::SelfAddress) => NextHopMode::SelfAddress,
                    Some(CrdNextHopMode::Keep) => NextHopMode::Keep,
                },
                import: import.clone(),
                export: self.export_chain(export.clone()),
                max_restart_time: spec.max_restart_time.map(Duration::from),
                ..PeerRouting::default()
            };
            peers.push(DesiredPeer {
                config,
                bfd: spec.bfd.as_ref().and_then(crate::bfd::session_config),
                kind,
                origin: format!("BGPPeer/{}", resource.name_any()),
            });
        }
        Ok(peers)
    }

    /// The node's confirmed affine blocks and the addresses its workloads borrowed from other nodes'
    /// blocks (as /32 or /128), except what lies in pools with `disableBGPExport` or in no pool.
    fn exported_prefixes(&mut self) -> BTreeSet<IpNet> {
        let snapshot = self.snapshot;
        let mut pools = Vec::new();
        for (name, pool) in &snapshot.pools {
            match pool.spec.cidr_net() {
                Some(cidr) => pools.push((cidr, pool.spec.disable_bgp_export)),
                None => self.rejected.push(Rejected {
                    object: format!("IPPool/{name}"),
                    reason: format!("spec.cidr {:?} is not a CIDR", pool.spec.cidr),
                }),
            }
        }
        let exportable = |prefix: &IpNet| {
            pools
                .iter()
                .any(|(cidr, disabled)| !disabled && cidr.contains(prefix))
        };
        let confirmed: BTreeSet<IpNet> = self
            .snapshot
            .affinities
            .values()
            .filter(|a| {
                a.spec.node == self.name
                    && a.spec.state == AffinityState::Confirmed
                    && !a.spec.deleted
            })
            .filter_map(|a| a.spec.cidr.parse().ok())
            .collect();
        let mut prefixes = BTreeSet::new();
        for block in self.snapshot.blocks.values() {
            if block.spec.deleted {
                continue;
            }
            let Some(cidr) = block.spec.cidr_net() else {
                continue;
            };
            if block.spec.affine_node() == Some(self.name) {
                if confirmed.contains(&cidr) && exportable(&cidr) {
                    prefixes.insert(cidr);
                }
                continue;
            }
            let Ok(parsed) = reef_ipam::convert::block_from_spec(&block.spec) else {
                continue;
            };
            for (ip, attr) in parsed.allocated() {
                if reef_ipam::block::attribute_node(attr) == Some(self.name) {
                    let host = IpNet::from(ip);
                    if exportable(&host) {
                        prefixes.insert(host);
                    }
                }
            }
        }
        prefixes
    }
}

#[cfg(test)]
#[path = "calc_tests.rs"]
mod tests;
