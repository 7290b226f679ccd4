//! Reef's resource types (CustomResource derives with schemas), their validation, and the Calico selector language.

pub mod bgp;
pub mod crd;
pub mod ipam;
pub mod node;
pub mod policy;
pub mod selector;
pub mod validate;
pub mod workload;

pub use bgp::{
    BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPFilterRule, BGPFilterSpec, BGPPeer,
    BGPPeerSpec, parse_peer_ip,
};
pub use ipam::{
    AffinityState, AffinityType, AllocationAttribute, AllowedUse, BlockAffinity, BlockAffinitySpec,
    IPAMBlock, IPAMBlockSpec, IPAMConfig, IPAMConfigSpec, IPAMHandle, IPAMHandleSpec, IPPool,
    IPPoolSpec, VxlanMode,
};
pub use node::{ReefNode, ReefNodeSpec, ReefNodeStatus};
pub use policy::{GlobalNetworkPolicy, GlobalNetworkPolicySpec, NetworkPolicy, NetworkPolicySpec};
pub use selector::{Selector, SelectorError};
pub use validate::{FieldError, Validate, ValidationErrors};
pub use workload::{WorkloadEndpoint, WorkloadEndpointSpec};
