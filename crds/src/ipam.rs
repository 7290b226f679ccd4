//! IPAM resources: pools, blocks, block affinities, handles and the IPAM configuration singleton.
//!
//! Field names follow Calico's (`crd.projectcalico.org/v1`) so that stored objects and user YAML port
//! by changing the API group. Addresses and CIDRs are kept as strings on the wire (as in Calico) and
//! parsed by the accessors here, so that a malformed object is still readable and reported by
//! [`crate::validate`] instead of failing deserialization.

use std::collections::BTreeMap;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default block prefix length of IPv4 pools (/26: 64 addresses).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block prefix length of IPv6 pools (/122: 64 addresses).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// A range of pod addresses, cut into blocks that nodes claim.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    derive = "PartialEq",
    doc = "A range of pod addresses, cut into node-affine blocks (Calico's IPPool).",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"BlockSize","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"VXLAN","type":"string","jsonPath":".spec.vxlanMode"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.cidr == oldSelf.cidr",
        "message": "spec.cidr is immutable: create a new IPPool, disable this one and migrate workloads"
    },
    {
        "rule": "(has(self.blockSize) ? self.blockSize : (self.cidr.contains(':') ? 122 : 26)) == (has(oldSelf.blockSize) ? oldSelf.blockSize : (oldSelf.cidr.contains(':') ? 122 : 26))",
        "message": "spec.blockSize is immutable: blocks already cut from the pool keep their size; create a new IPPool instead"
    }
]))]
pub struct IPPoolSpec {
    /// The pool's range, e.g. `10.244.0.0/16` or `fd00:10:244::/56`. Immutable.
    pub cidr: String,
    /// Prefix length of the blocks cut from the pool; 26 for IPv4 and 122 for IPv6 when unset.
    /// IPv4 allows 20..=32, IPv6 116..=128. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// When to encapsulate pod traffic to other nodes in VXLAN.
    #[serde(default)]
    pub vxlan_mode: VxlanMode,
    /// Accepted so Calico YAML ports; Reef has no IP-in-IP, so only `Never` validates.
    #[serde(default, rename = "ipipMode", skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<VxlanMode>,
    /// Masquerade traffic from pool addresses to destinations outside all pools.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new allocations from a disabled pool; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
    /// Do not advertise this pool's blocks over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Selector (Calico syntax) of the nodes that may allocate from this pool; empty means all nodes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_selector: String,
    /// What addresses of this pool may be used for; Workload and Tunnel when unset.
    #[serde(default = "default_allowed_uses")]
    pub allowed_uses: Vec<AllowedUse>,
}

fn default_allowed_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Workload, AllowedUse::Tunnel]
}

impl IPPoolSpec {
    /// A pool of `cidr` with every other field at its default (the default block size, no VXLAN, no NAT,
    /// enabled, exported, all nodes, Workload and Tunnel use).
    pub fn new(cidr: impl Into<String>) -> IPPoolSpec {
        IPPoolSpec {
            cidr: cidr.into(),
            block_size: None,
            vxlan_mode: VxlanMode::Never,
            ipip_mode: None,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            node_selector: String::new(),
            allowed_uses: default_allowed_uses(),
        }
    }

    /// The pool's CIDR, parsed. `None` when it is not a valid CIDR ([`crate::validate`] says why).
    pub fn cidr_net(&self) -> Option<IpNet> {
        self.cidr.parse().ok()
    }

    /// The block prefix length in effect: the explicit `blockSize` or the default for the family.
    /// `None` when the CIDR does not parse.
    pub fn effective_block_size(&self) -> Option<u8> {
        let net = self.cidr_net()?;
        Some(self.block_size.unwrap_or(match net {
            IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
            IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
        }))
    }

    /// Whether addresses of this pool may be used for `use_`.
    pub fn allows(&self, use_: AllowedUse) -> bool {
        self.allowed_uses.contains(&use_)
    }
}

/// When pod traffic to another node is encapsulated (`vxlanMode`; also the shape of Calico's `ipipMode`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum VxlanMode {
    /// Never encapsulate: the fabric routes pod addresses (BGP).
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only when the other node is outside this node's subnet.
    CrossSubnet,
}

/// A use of a pool's addresses.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// VXLAN tunnel addresses of nodes.
    Tunnel,
    /// Service LoadBalancer addresses.
    LoadBalancer,
}

/// A block of a pool: the unit a node claims, with per-address allocation state (Calico's model).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    derive = "PartialEq",
    doc = "A block of an IPPool with its per-address allocation state (Calico's IPAMBlock).",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Affinity","type":"string","jsonPath":".spec.affinity"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's range, e.g. `10.244.3.64/26`.
    pub cidr: String,
    /// The owner, `host:<node>`; `None` for a block no node is affine to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Per ordinal (address index in the block): index into `attributes`, or null when free.
    #[serde(default)]
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals, in the order they are handed out.
    #[serde(default)]
    pub unallocated: Vec<u32>,
    /// Allocation attributes referenced from `allocations`.
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Incremented on every allocation; stamps each allocation so a stale release is detected.
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal (decimal string) -> sequence number of the allocation that holds it.
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Set while the block is being released, so concurrent allocators skip it.
    #[serde(default)]
    pub deleted: bool,
    /// No other node may borrow addresses from this block.
    #[serde(default)]
    pub strict_affinity: bool,
}

/// Prefix of `IPAMBlockSpec::affinity` for node affinities.
pub const HOST_AFFINITY_PREFIX: &str = "host:";

/// The `affinity` value of blocks affine to `node`: `host:<node>`.
pub fn host_affinity(node: &str) -> String {
    format!("{HOST_AFFINITY_PREFIX}{node}")
}

impl IPAMBlockSpec {
    /// The block's CIDR, parsed; `None` when invalid.
    pub fn cidr_net(&self) -> Option<IpNet> {
        self.cidr.parse().ok()
    }

    /// The node this block is affine to (`host:<node>`), if any.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix(HOST_AFFINITY_PREFIX)
    }
}

/// What an allocation belongs to: its handle and free-form attributes (pod, namespace, node...).
/// Field names are Calico's (`handle_id`, `secondary`), which are snake case on the wire.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct AllocationAttribute {
    /// The handle that owns the allocation, e.g. `k8s-pod-network.<containerID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Extra attributes, e.g. `namespace`, `pod`, `node`, `timestamp`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

/// A node's claim on a block, made in two phases (Pending, then Confirmed once the block exists).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    derive = "PartialEq",
    doc = "A node's claim on an IPAM block (Calico's BlockAffinity).",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    /// Phase of the claim.
    pub state: AffinityState,
    /// The claiming node.
    pub node: String,
    /// The claimed block's CIDR.
    pub cidr: String,
    /// Set while the affinity is being removed.
    #[serde(default)]
    pub deleted: bool,
    /// Kind of owner; only `host` (a node) for now.
    #[serde(default, rename = "type")]
    pub type_: AffinityType,
}

/// Phase of a block affinity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    /// Claimed, block not yet created/confirmed: not exported.
    Pending,
    /// The block exists with this node's affinity.
    Confirmed,
    /// Being released.
    PendingDeletion,
}

/// Kind of owner of a block affinity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityType {
    /// A node.
    #[default]
    Host,
}

/// The allocations of one owner (a pod, a tunnel), so they can be released by handle.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    derive = "PartialEq",
    doc = "The allocations of one owner, by block (Calico's IPAMHandle)."
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    /// The handle, e.g. `k8s-pod-network.<containerID>` or `vxlan-tunnel-addr-<node>`.
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR -> number of addresses this handle holds in it.
    #[serde(default)]
    pub block: BTreeMap<String, u32>,
    /// Set while the handle is being released.
    #[serde(default)]
    pub deleted: bool,
}

/// Cluster-wide IPAM settings; the singleton is named `default`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "reef.dev",
    version = "v1",
    kind = "IPAMConfig",
    plural = "ipamconfigs",
    derive = "PartialEq",
    doc = "Cluster-wide IPAM settings; the object is named `default` (Calico's IPAMConfig)."
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// Never borrow addresses from another node's block.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks automatically when the affine ones are full.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Most blocks one node may claim; 0 means no limit.
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

impl Default for IPAMConfigSpec {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

/// Name of the `IPAMConfig` singleton.
pub const IPAM_CONFIG_NAME: &str = "default";

pub(crate) fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, block_size: Option<u8>) -> IPPoolSpec {
        let mut spec: IPPoolSpec =
            serde_json::from_value(serde_json::json!({ "cidr": cidr })).unwrap();
        spec.block_size = block_size;
        spec
    }

    #[test]
    fn pool_defaults() {
        let v4 = pool("10.244.0.0/16", None);
        assert_eq!(v4.effective_block_size(), Some(26));
        assert_eq!(v4.vxlan_mode, VxlanMode::Never);
        assert!(
            v4.allows(AllowedUse::Workload)
                && v4.allows(AllowedUse::Tunnel)
                && !v4.allows(AllowedUse::LoadBalancer)
        );
        assert_eq!(pool("fd00::/48", None).effective_block_size(), Some(122));
        assert_eq!(
            pool("fd00::/48", Some(120)).effective_block_size(),
            Some(120)
        );
        assert_eq!(pool("nonsense", None).effective_block_size(), None);
    }

    #[test]
    fn block_affinity_round_trip() {
        let spec = IPAMBlockSpec {
            cidr: "10.244.0.64/26".into(),
            affinity: Some(host_affinity("node-a")),
            allocations: vec![None; 64],
            unallocated: (0..64).collect(),
            attributes: vec![],
            sequence_number: 0,
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
            strict_affinity: false,
        };
        assert_eq!(spec.affinity.as_deref(), Some("host:node-a"));
        assert_eq!(spec.affine_node(), Some("node-a"));
        // Calico's wire names, including the snake-case attribute fields.
        let json = serde_json::to_value(IPAMBlock::new("b", spec.clone())).unwrap();
        assert_eq!(
            json["spec"]["sequenceNumberForAllocation"],
            serde_json::json!({})
        );
        assert_eq!(json["spec"]["strictAffinity"], false);
        let attr = AllocationAttribute {
            handle_id: Some("h".into()),
            secondary: [("pod".into(), "p".into())].into(),
        };
        assert_eq!(
            serde_json::to_value(attr).unwrap(),
            serde_json::json!({"handle_id": "h", "secondary": {"pod": "p"}})
        );
    }
}
