//! BGP resources: the cluster/node BGP configuration, peers and route filters (Calico's field names).

use std::net::{IpAddr, SocketAddr};

use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AS number used when neither the node nor the `default` BGPConfiguration sets one (Calico's).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// BGP port used when `listenPort` is unset.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// Name of the cluster-wide BGPConfiguration; per-node ones are named `node.<nodename>`.
pub const DEFAULT_BGP_CONFIGURATION_NAME: &str = "default";
/// Prefix of per-node BGPConfiguration names.
pub const NODE_BGP_CONFIGURATION_PREFIX: &str = "node.";

/// Cluster-wide (`default`) or per-node (`node.<name>`) BGP settings. Unset fields of a per-node
/// configuration fall back to `default`, then to the built-in defaults (see the accessors).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    derive = "PartialEq",
    doc = "Cluster-wide (`default`) or per-node (`node.<name>`) BGP settings (Calico's BGPConfiguration).",
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Mesh","type":"boolean","jsonPath":".spec.nodeToNodeMeshEnabled"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// Default AS number of nodes that do not set their own; 64512 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Full iBGP mesh between all Reef nodes; true when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// TCP port the speaker listens on; 179 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Where the speaker listens: all addresses (None) or only the node IP (NodeIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    /// Log level of the BGP speaker (Debug, Info, Warning, Error, Fatal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    /// Service cluster IP ranges to advertise.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceIPBlock>,
    /// Service external IP ranges to advertise.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceIPBlock>,
    /// Service LoadBalancer IP ranges to advertise.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceIPBlock>,
    /// Named communities, usable by name in `prefixAdvertisements`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities to attach to advertised prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Graceful restart time offered to peers (RFC 4724); 120s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart_time: Option<Duration>,
    /// Default keepalive interval for sessions; 60s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<Duration>,
    /// Default hold time for sessions; 180s when unset (0s disables keepalives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<Duration>,
    /// TCP MD5 password of the node-to-node mesh sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BGPPassword>,
    /// Graceful restart time of the mesh sessions; `gracefulRestartTime` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<Duration>,
}

impl BGPConfigurationSpec {
    /// This configuration with the unset fields taken from `fallback` (e.g. `node.<name>` over `default`).
    pub fn overlay(&self, fallback: &BGPConfigurationSpec) -> BGPConfigurationSpec {
        fn pick<T: Clone>(own: &Option<T>, other: &Option<T>) -> Option<T> {
            own.clone().or_else(|| other.clone())
        }
        fn pick_vec<T: Clone>(own: &[T], other: &[T]) -> Vec<T> {
            if own.is_empty() {
                other.to_vec()
            } else {
                own.to_vec()
            }
        }
        BGPConfigurationSpec {
            as_number: pick(&self.as_number, &fallback.as_number),
            node_to_node_mesh_enabled: pick(
                &self.node_to_node_mesh_enabled,
                &fallback.node_to_node_mesh_enabled,
            ),
            listen_port: pick(&self.listen_port, &fallback.listen_port),
            bind_mode: pick(&self.bind_mode, &fallback.bind_mode),
            log_severity_screen: pick(&self.log_severity_screen, &fallback.log_severity_screen),
            service_cluster_ips: pick_vec(&self.service_cluster_ips, &fallback.service_cluster_ips),
            service_external_ips: pick_vec(
                &self.service_external_ips,
                &fallback.service_external_ips,
            ),
            service_load_balancer_ips: pick_vec(
                &self.service_load_balancer_ips,
                &fallback.service_load_balancer_ips,
            ),
            communities: pick_vec(&self.communities, &fallback.communities),
            prefix_advertisements: pick_vec(
                &self.prefix_advertisements,
                &fallback.prefix_advertisements,
            ),
            graceful_restart_time: pick(
                &self.graceful_restart_time,
                &fallback.graceful_restart_time,
            ),
            keepalive_time: pick(&self.keepalive_time, &fallback.keepalive_time),
            hold_time: pick(&self.hold_time, &fallback.hold_time),
            node_mesh_password: pick(&self.node_mesh_password, &fallback.node_mesh_password),
            node_mesh_max_restart_time: pick(
                &self.node_mesh_max_restart_time,
                &fallback.node_mesh_max_restart_time,
            ),
        }
    }

    /// `asNumber`, or 64512.
    pub fn as_number_or_default(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }

    /// `nodeToNodeMeshEnabled`, or true.
    pub fn node_to_node_mesh_or_default(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// `listenPort`, or 179.
    pub fn listen_port_or_default(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_LISTEN_PORT)
    }

    /// `keepaliveTime`, or 60 s.
    pub fn keepalive_time_or_default(&self) -> std::time::Duration {
        self.keepalive_time
            .map_or(std::time::Duration::from_secs(60), Into::into)
    }

    /// `holdTime`, or 180 s.
    pub fn hold_time_or_default(&self) -> std::time::Duration {
        self.hold_time
            .map_or(std::time::Duration::from_secs(180), Into::into)
    }

    /// `gracefulRestartTime`, or 120 s.
    pub fn graceful_restart_time_or_default(&self) -> std::time::Duration {
        self.graceful_restart_time
            .map_or(std::time::Duration::from_secs(120), Into::into)
    }
}

/// Where the BGP speaker listens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BindMode {
    /// All addresses.
    None,
    /// Only the node's IP (`ReefNode.spec.bgp.ipv4Address` / `ipv6Address`).
    NodeIP,
}

/// Log level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum LogSeverity {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Unexpected but handled.
    Warning,
    /// Failures.
    Error,
    /// Only fatal failures.
    Fatal,
}

/// A CIDR to advertise (services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ServiceIPBlock {
    /// e.g. `10.96.0.0/12`.
    pub cidr: String,
}

/// A named community, e.g. `{name: bgp-large-community, value: 63400:300:100}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Community {
    /// Name used in `prefixAdvertisements`.
    pub name: String,
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    pub value: String,
}

/// Communities attached to routes within a CIDR.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct PrefixAdvertisement {
    /// Routes within this CIDR get the communities.
    pub cidr: String,
    /// Community names (from `communities`) or literal values (`aa:nn`, `aa:nn:mm`).
    #[serde(default)]
    pub communities: Vec<String>,
}

/// A TCP MD5 password taken from a Secret in Reef's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPPassword {
    /// The Secret key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// A BGP peering: with an external router (`peerIP`) or with other Reef nodes (`peerSelector`), made
/// by the nodes chosen by `node` / `nodeSelector` (all nodes when both are empty).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    derive = "PartialEq",
    doc = "A BGP peering with an external router or with selected Reef nodes (Calico's BGPPeer).",
    printcolumn = r#"{"name":"PeerIP","type":"string","jsonPath":".spec.peerIP"}"#,
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The one node that makes this peering; empty means `nodeSelector` decides.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Selector of the nodes that make this peering; empty (with empty `node`) means all nodes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_selector: String,
    /// The peer's address: `IP`, `IP:port` or `[IPv6]:port`. Exclusive with `peerSelector`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "String::is_empty")]
    pub peer_ip: String,
    /// Selector of Reef nodes to peer with (their AS and addresses come from their ReefNode).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_selector: String,
    /// The peer's AS number; required with `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
    /// Next hop of routes sent to this peer: Auto (self for eBGP, keep for iBGP), Self or Keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// Source address of the session: the node IP (UseNodeIP, default) or the kernel's choice (None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// GTSM (RFC 5082): the peer is at most this many hops away (TTL >= 256 - hops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// How long to keep the peer's routes while it restarts (graceful restart helper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<Duration>,
    /// Keepalive interval; the BGPConfiguration's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<Duration>,
    /// Hold time; the BGPConfiguration's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<Duration>,
    /// Wait for the peer to connect; never initiate.
    #[serde(default)]
    pub passive: bool,
    /// BGPFilter names applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Bidirectional forwarding detection for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdConfig>,
}

/// Next hop of routes sent to a peer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NextHopMode {
    /// Self for eBGP peers, unchanged for iBGP peers.
    Auto,
    /// Always this node's address.
    #[serde(rename = "Self")]
    SelfAddress,
    /// Never changed (e.g. a route reflector passing routes on).
    Keep,
}

/// Source address of a BGP session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SourceAddress {
    /// The node's address from its ReefNode.
    UseNodeIP,
    /// Whatever the kernel picks.
    None,
}

/// BFD (RFC 5880) settings of a session.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdConfig {
    /// Run BFD with this peer.
    #[serde(default)]
    pub enabled: bool,
    /// Minimum receive interval; 300ms when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rx: Option<Duration>,
    /// Minimum transmit interval; 300ms when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx: Option<Duration>,
    /// Detection multiplier; 3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u8>,
}

/// Why a `peerIP` did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a peer address (expected IP, IP:port or [IPv6]:port, e.g. 192.0.2.1, 192.0.2.1:1179, [2001:db8::1]:179)"
)]
pub struct PeerIpError(pub String);

/// Parses a `peerIP`: `IP`, `IP:port`, `[IPv6]:port` or `[IPv6]`. Port 0 is rejected.
pub fn parse_peer_ip(text: &str) -> Result<(IpAddr, Option<u16>), PeerIpError> {
    let err = || PeerIpError(text.to_string());
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return if sa.port() == 0 {
            Err(err())
        } else {
            Ok((sa.ip(), Some(sa.port())))
        };
    }
    let bracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    match bracketed.and_then(|t| t.parse::<std::net::Ipv6Addr>().ok()) {
        Some(ip) => Ok((IpAddr::V6(ip), None)),
        None => Err(err()),
    }
}

impl BGPPeerSpec {
    /// `peerIP` parsed; `None` when `peerIP` is empty (a `peerSelector` peering).
    pub fn peer_address(&self) -> Option<Result<(IpAddr, Option<u16>), PeerIpError>> {
        (!self.peer_ip.is_empty()).then(|| parse_peer_ip(&self.peer_ip))
    }
}

/// Ordered import/export rules, referenced by name from BGPPeers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "BGPFilter",
    plural = "bgpfilters",
    derive = "PartialEq",
    doc = "Ordered BGP import/export rules, referenced from BGPPeer.spec.filters (Calico's BGPFilter)."
)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes received from the peer; the first match decides.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes sent to the peer.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes received from the peer.
    #[serde(default, rename = "importV6", skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes sent to the peer.
    #[serde(default, rename = "exportV6", skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BGPFilterRule>,
}

/// One filter rule: all given conditions must hold; then `operations` apply and `action` decides.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterRule {
    /// Prefix to compare the route with (see `matchOperator`); empty matches every route.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr: String,
    /// How the route relates to `cidr`: Equal, NotEqual, In (within), NotIn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// Range of route prefix lengths matched (with `In` / `NotIn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// The route must carry all of these communities (`aa:nn` or `aa:nn:mm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// The route's AS path must start with these AS numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub as_path_prefix: Vec<u32>,
    /// What to do with a matching route.
    pub action: FilterAction,
    /// Changes made to an accepted route, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<FilterOperation>,
}

/// Relation between a route's prefix and a rule's `cidr`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MatchOperator {
    /// The route is exactly `cidr`.
    Equal,
    /// The route is not exactly `cidr`.
    NotEqual,
    /// The route is within `cidr` (or equal).
    In,
    /// The route is not within `cidr`.
    NotIn,
}

/// Range of prefix lengths; bounds default to the rule cidr's length and the family maximum.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PrefixLength {
    /// Shortest matching prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    /// Longest matching prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

/// Verdict of a filter rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum FilterAction {
    /// Take the route.
    #[default]
    Accept,
    /// Drop the route.
    Reject,
}

/// A change to an accepted route. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterOperation {
    /// Add a community.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<AddCommunity>,
    /// Prepend AS numbers to the AS path.
    #[serde(
        default,
        rename = "prependASPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub prepend_as_path: Option<PrependASPath>,
    /// Set LOCAL_PREF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_local_pref: Option<u32>,
}

/// `addCommunity` operation (Calico's shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct AddCommunity {
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    pub value: String,
}

/// `prependASPath` operation (Calico's shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PrependASPath {
    /// AS numbers to prepend, first one outermost.
    pub prefix: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ip_forms() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_peer_ip("192.0.2.1"), Ok((v4, None)));
        assert_eq!(parse_peer_ip("192.0.2.1:1179"), Ok((v4, Some(1179))));
        assert_eq!(parse_peer_ip("2001:db8::1"), Ok((v6, None)));
        assert_eq!(parse_peer_ip("[2001:db8::1]:179"), Ok((v6, Some(179))));
        assert_eq!(parse_peer_ip("[2001:db8::1]"), Ok((v6, None)));
        for bad in [
            "",
            "192.0.2",
            "192.0.2.1:",
            "192.0.2.1:0",
            "192.0.2.1:70000",
            "[192.0.2.1]",
            "2001:db8::1:179x",
            "host",
        ] {
            assert!(parse_peer_ip(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_configuration_overlays_default() {
        let default = BGPConfigurationSpec {
            as_number: Some(64513),
            listen_port: Some(1179),
            communities: vec![Community {
                name: "a".into(),
                value: "65000:1".into(),
            }],
            ..Default::default()
        };
        let node = BGPConfigurationSpec {
            as_number: Some(65001),
            ..Default::default()
        };
        let merged = node.overlay(&default);
        assert_eq!(merged.as_number_or_default(), 65001);
        assert_eq!(merged.listen_port_or_default(), 1179);
        assert_eq!(merged.communities, default.communities);
        assert!(merged.node_to_node_mesh_or_default());
        assert_eq!(
            BGPConfigurationSpec::default().as_number_or_default(),
            DEFAULT_AS_NUMBER
        );
    }
}
