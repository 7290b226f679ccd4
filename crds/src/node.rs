//! `ReefNode`: one per node, its BGP and VXLAN identity (spec) and its health (status).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A node's BGP and VXLAN identity, and the agent's report of its health.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "ReefNode",
    plural = "reefnodes",
    shortname = "rn",
    status = "ReefNodeStatus",
    derive = "PartialEq",
    doc = "A node's BGP/VXLAN identity and health (Calico's Node plus CalicoNodeStatus).",
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.bgp.asNumber"}"#,
    printcolumn = r#"{"name":"IPv4","type":"string","jsonPath":".spec.bgp.ipv4Address"}"#,
    printcolumn = r#"{"name":"Sessions","type":"string","description":"BGP sessions established/total","jsonPath":".status.sessionSummary"}"#,
    printcolumn = r#"{"name":"Routes","type":"integer","jsonPath":".status.programmedRoutes","priority":1}"#,
    printcolumn = r#"{"name":"LastError","type":"string","jsonPath":".status.lastError"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReefNodeSpec {
    /// BGP identity; absent on nodes that do not run BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBGPSpec>,
    /// VXLAN tunnel identity; set by the agent when a pool uses VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<NodeVXLANSpec>,
}

/// A node's BGP identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBGPSpec {
    /// The node's IPv4 address with its subnet length, e.g. `198.51.100.10/24`.
    #[serde(
        default,
        rename = "ipv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<String>,
    /// The node's IPv6 address with its subnet length, e.g. `2001:db8::10/64`.
    #[serde(
        default,
        rename = "ipv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<String>,
    /// The node's AS number; the BGPConfiguration's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Makes the node a route reflector with this cluster id (an IPv4 address, e.g. `244.0.0.1`).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

/// A node's VXLAN tunnel identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeVXLANSpec {
    /// The tunnel device's address (from a pool allowing Tunnel use), e.g. `10.244.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
    /// The tunnel device's MAC, e.g. `66:a0:2c:11:22:33`.
    #[serde(default, rename = "tunnelMAC", skip_serializing_if = "Option::is_none")]
    pub tunnel_mac: Option<String>,
}

/// The agent's report of the node's health.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReefNodeStatus {
    /// BGP sessions of this node.
    #[serde(default)]
    pub sessions: Vec<BGPSessionStatus>,
    /// `established/total` of `sessions`, for `kubectl get reefnodes`; kept by [`Self::set_sessions`].
    #[serde(default)]
    pub session_summary: String,
    /// Routes the dataplane has programmed.
    #[serde(default)]
    pub programmed_routes: u64,
    /// The last error the agent hit, if it is still relevant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ReefNodeStatus {
    /// Replaces the sessions and updates `sessionSummary`.
    pub fn set_sessions(&mut self, sessions: Vec<BGPSessionStatus>) {
        let established = sessions
            .iter()
            .filter(|s| s.state == BGPSessionState::Established)
            .count();
        self.session_summary = format!("{established}/{}", sessions.len());
        self.sessions = sessions;
    }
}

/// One BGP session's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStatus {
    /// The peer's address.
    pub peer: String,
    /// Where the peering comes from.
    #[serde(rename = "type")]
    pub type_: BGPSessionType,
    /// RFC 4271 FSM state.
    pub state: BGPSessionState,
    /// When the session entered `state` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Prefixes accepted from the peer.
    #[serde(default)]
    pub prefixes_in: u64,
    /// Prefixes advertised to the peer.
    #[serde(default)]
    pub prefixes_out: u64,
}

/// Where a session comes from (Calico's CalicoNodeStatus peer types).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BGPSessionType {
    /// The node-to-node mesh.
    NodeMesh,
    /// A BGPPeer that selects this node by `node`.
    NodePeer,
    /// A BGPPeer that selects this node by `nodeSelector` (or all nodes).
    GlobalPeer,
}

/// RFC 4271 FSM states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BGPSessionState {
    /// Not trying.
    Idle,
    /// Connecting.
    Connect,
    /// Listening for the peer / waiting to retry.
    Active,
    /// OPEN sent.
    OpenSent,
    /// OPEN received, waiting for KEEPALIVE.
    OpenConfirm,
    /// Up.
    Established,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_summary_counts_established() {
        let session = |state| BGPSessionStatus {
            peer: "192.0.2.1".into(),
            type_: BGPSessionType::NodeMesh,
            state,
            since: None,
            prefixes_in: 0,
            prefixes_out: 0,
        };
        let mut status = ReefNodeStatus::default();
        status.set_sessions(vec![
            session(BGPSessionState::Established),
            session(BGPSessionState::Active),
            session(BGPSessionState::Established),
        ]);
        assert_eq!(status.session_summary, "2/3");
    }
}
