//! The policy model: plain-data inputs (endpoints, namespaces, policies, pools) and the backend-neutral
//! program the compiler turns them into (address sets, policy chains, per-endpoint dispatch, NAT).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use reef_crds::workload::WorkloadEndpoint;
use reef_crds::{GlobalNetworkPolicy, IPPool, NetworkPolicy};

/// Kubernetes' own NetworkPolicy (`networking.k8s.io/v1`).
pub type K8sNetworkPolicy = k8s_openapi::api::networking::v1::NetworkPolicy;

/// Labels of an endpoint, namespace or service account.
pub type Labels = BTreeMap<String, String>;

/// A port an endpoint names (`http` -> TCP 8080), for policy rules that use port names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The name rules refer to.
    pub name: String,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    /// Port number.
    pub port: u16,
}

/// One endpoint of the cluster (local or remote): what selectors and address sets need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique key, e.g. `<namespace>/<name>` of its WorkloadEndpoint.
    pub key: String,
    /// Its namespace; `None` for endpoints outside namespaces (matched by `global()`).
    pub namespace: Option<String>,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its service account name, if any.
    pub service_account: Option<String>,
    /// The service account's labels (for `serviceAccountSelector`).
    pub service_account_labels: Labels,
    /// Named ports.
    pub ports: Vec<NamedPort>,
    /// The host-side interface (`reef...`) when the endpoint is on this node; `None` for remote ones.
    pub interface: Option<String>,
}

/// Why an endpoint could not be taken from its WorkloadEndpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// An `ipNetworks` entry is neither an address nor a CIDR.
    #[error("workload endpoint {key}: ipNetworks entry {value:?} is not an address or CIDR")]
    BadAddress {
        /// The endpoint.
        key: String,
        /// The entry.
        value: String,
    },
    /// A named port has a protocol without ports.
    #[error("workload endpoint {key}: port {name:?} has protocol {protocol}, which has no ports")]
    BadPortProtocol {
        /// The endpoint.
        key: String,
        /// The port name.
        name: String,
        /// The protocol as written.
        protocol: String,
    },
}

impl Endpoint {
    /// The endpoint of a WorkloadEndpoint object; `local` says whether it is on this node (its
    /// `interfaceName` is then the interface policy is enforced on).
    pub fn from_workload(wep: &WorkloadEndpoint, local: bool) -> Result<Endpoint, EndpointError> {
        let namespace = wep.metadata.namespace.clone();
        let key = format!(
            "{}/{}",
            namespace.as_deref().unwrap_or(""),
            wep.metadata.name.as_deref().unwrap_or("")
        );
        let mut addresses = Vec::new();
        for value in &wep.spec.ip_networks {
            let address = value
                .parse::<IpNet>()
                .map(|net| net.addr())
                .or_else(|_| value.parse::<IpAddr>())
                .map_err(|_| EndpointError::BadAddress {
                    key: key.clone(),
                    value: value.clone(),
                })?;
            addresses.push(address);
        }
        let mut ports = Vec::new();
        for port in &wep.spec.ports {
            let protocol = port
                .protocol
                .number()
                .filter(|_| port.protocol.has_ports())
                .ok_or_else(|| EndpointError::BadPortProtocol {
                    key: key.clone(),
                    name: port.name.clone(),
                    protocol: port.protocol.to_string(),
                })?;
            ports.push(NamedPort {
                name: port.name.clone(),
                protocol,
                port: port.port,
            });
        }
        let service_account = Some(wep.spec.service_account_name.clone()).filter(|s| !s.is_empty());
        Ok(Endpoint {
            key,
            namespace,
            labels: wep.metadata.labels.clone().unwrap_or_default(),
            addresses,
            service_account,
            service_account_labels: Labels::new(),
            ports,
            interface: local.then(|| wep.spec.interface_name.clone()),
        })
    }
}

/// Everything policy is computed from.
#[derive(Clone, Debug, Default)]
pub struct PolicyInput {
    /// Every endpoint of the cluster; the local ones carry their interface.
    pub endpoints: Vec<Endpoint>,
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// Reef NetworkPolicies.
    pub network_policies: Vec<NetworkPolicy>,
    /// Reef GlobalNetworkPolicies.
    pub global_policies: Vec<GlobalNetworkPolicy>,
    /// Kubernetes NetworkPolicies.
    pub k8s_policies: Vec<K8sNetworkPolicy>,
    /// IP pools (for natOutgoing).
    pub pools: Vec<IPPool>,
}

/// A policy object, named for error reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyObject {
    /// A Reef NetworkPolicy `<namespace>/<name>`.
    NetworkPolicy(String),
    /// A Reef GlobalNetworkPolicy.
    GlobalNetworkPolicy(String),
    /// A Kubernetes NetworkPolicy `<namespace>/<name>`.
    K8sNetworkPolicy(String),
    /// An IPPool.
    IPPool(String),
}

impl std::fmt::Display for PolicyObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyObject::NetworkPolicy(n) => write!(f, "NetworkPolicy {n}"),
            PolicyObject::GlobalNetworkPolicy(n) => write!(f, "GlobalNetworkPolicy {n}"),
            PolicyObject::K8sNetworkPolicy(n) => write!(f, "networking.k8s.io NetworkPolicy {n}"),
            PolicyObject::IPPool(n) => write!(f, "IPPool {n}"),
        }
    }
}

/// What is wrong with one object. The object's good parts stay enforced; see [`PolicyError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    /// The policy's own selector does not parse: the policy is skipped (it is unknown whom it selects).
    #[error("{field}: {reason}")]
    BadPolicySelector {
        /// Field path.
        field: String,
        /// Parser message.
        reason: String,
    },
    /// A rule cannot be compiled; it is replaced by a Deny of its direction (fail closed, only for the
    /// endpoints this policy selects).
    #[error("{field}: {reason}")]
    BadRule {
        /// Field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// A named port no endpoint declares: the rule matches nothing on it (Kubernetes' semantics).
    #[error("{field}: no endpoint has a port named {name:?} ({protocol})")]
    UnknownNamedPort {
        /// Field path.
        field: String,
        /// The name.
        name: String,
        /// Protocol name.
        protocol: String,
    },
    /// A pool's CIDR does not parse: the pool is left out of NAT.
    #[error("spec.cidr: {0:?} is not a CIDR")]
    BadPoolCidr(String),
}

/// A per-object problem found while compiling.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {problem}")]
pub struct PolicyError {
    /// The object.
    pub object: PolicyObject,
    /// What is wrong.
    pub problem: PolicyProblem,
}

/// IP family of a rule or set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(address: &IpAddr) -> Family {
        if address.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Accept in this direction; no further policy is consulted.
    Allow,
    /// Drop.
    Deny,
    /// Skip the remaining policies of the tier; the profile (allow) decides.
    Pass,
    /// Log and go on with the next rule.
    Log,
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (>= first).
    pub last: u16,
}

/// Matches on one side (source or destination) of a rule. All non-empty fields must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SideMatch {
    /// The address is in every one of these sets.
    pub in_sets: Vec<String>,
    /// The address is in none of these sets.
    pub not_in_sets: Vec<String>,
    /// When either list is non-empty: the port is in one of `ports`, or (address, protocol, port) is in one
    /// of `named_port_sets`.
    pub ports: Vec<PortRange>,
    /// Named-port sets (address . protocol . port).
    pub named_port_sets: Vec<String>,
    /// The port is in none of these ranges.
    pub not_ports: Vec<PortRange>,
    /// (address, protocol, port) is in none of these named-port sets.
    pub not_named_port_sets: Vec<String>,
}

impl SideMatch {
    /// Whether the side constrains ports (so the rule can only match protocols with ports).
    pub fn has_port_alternatives(&self) -> bool {
        !self.ports.is_empty() || !self.named_port_sets.is_empty()
    }
}

/// ICMP type and optional code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    /// Type.
    pub type_: u8,
    /// Code.
    pub code: Option<u8>,
}

/// A backend-neutral rule of a policy chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// What a match does.
    pub verdict: Verdict,
    /// Only this family (from `ipVersion`).
    pub family: Option<Family>,
    /// IP protocol number.
    pub protocol: Option<u8>,
    /// Any protocol but this.
    pub not_protocol: Option<u8>,
    /// ICMP type/code.
    pub icmp: Option<IcmpMatch>,
    /// Any ICMP type/code but this.
    pub not_icmp: Option<IcmpMatch>,
    /// Source matches.
    pub source: SideMatch,
    /// Destination matches.
    pub destination: SideMatch,
    /// Log prefix for [`Verdict::Log`] (also names the policy).
    pub log_prefix: String,
}

impl RuleSpec {
    /// A rule matching everything.
    pub fn any(verdict: Verdict) -> RuleSpec {
        RuleSpec {
            verdict,
            family: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: SideMatch::default(),
            destination: SideMatch::default(),
            log_prefix: String::new(),
        }
    }
}

/// Kind of an address set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// Endpoint addresses matched by a selector (changes with labels and endpoints).
    Endpoints,
    /// CIDRs written in a policy or pool (content-addressed: a change makes a new set).
    Cidrs,
}

/// An address set; backends keep one set per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSet {
    /// What the set holds.
    pub kind: SetKind,
    /// Elements with the number of endpoints contributing each (CIDR sets count 1).
    pub members: BTreeMap<IpNet, u32>,
}

/// A named-port set element: address, protocol, port.
pub type PortSetMember = (IpAddr, u8, u16);

/// An ordered list of policy chains applied to an endpoint in one direction, shared by every endpoint
/// with the same list (so the dispatch costs one map element per endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChain {
    /// Policy chain names, in order.
    pub policies: Vec<String>,
}

/// The backend-neutral program: everything a backend renders.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyProgram {
    /// Address sets by name.
    pub sets: BTreeMap<String, AddressSet>,
    /// Named-port sets by name.
    pub port_sets: BTreeMap<String, BTreeMap<PortSetMember, u32>>,
    /// Policy chains (one per policy and direction) by name.
    pub policy_chains: BTreeMap<String, Vec<RuleSpec>>,
    /// Endpoint chains by name.
    pub endpoint_chains: BTreeMap<String, EndpointChain>,
    /// Local interface -> endpoint chain for traffic to the endpoint (absent: no policy, allowed).
    pub ingress: BTreeMap<String, String>,
    /// Local interface -> endpoint chain for traffic from the endpoint (absent: no policy, allowed).
    pub egress: BTreeMap<String, String>,
    /// Every local interface (known `reef*` interfaces; others are dropped).
    pub interfaces: std::collections::BTreeSet<String>,
    /// natOutgoing.
    pub nat: NatProgram,
    /// Problems with single objects (the rest is enforced).
    pub errors: Vec<PolicyError>,
}

/// natOutgoing: masquerade from `masquerade` to anything outside `pools`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatProgram {
    /// Pools with natOutgoing.
    pub masquerade: Vec<IpNet>,
    /// Every pool (destinations inside them keep the pod address).
    pub pools: Vec<IpNet>,
}

/// Which parts of a program changed since the last [`crate::policy::PolicyEngine::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything may have changed: compare the whole program.
    pub all: bool,
    /// Address sets whose members changed.
    pub sets: std::collections::BTreeSet<String>,
    /// Named-port sets whose members changed.
    pub port_sets: std::collections::BTreeSet<String>,
    /// Endpoint chains added or removed.
    pub endpoint_chains: std::collections::BTreeSet<String>,
    /// Interfaces whose dispatch changed (added, removed, or another chain).
    pub interfaces: std::collections::BTreeSet<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.sets.is_empty()
            && self.port_sets.is_empty()
            && self.endpoint_chains.is_empty()
            && self.interfaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_workload_endpoints() {
        let wep: WorkloadEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "reef.dev/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": "node-a-k8s-web-eth0", "namespace": "x", "labels": {"app": "web"}},
            "spec": {"node": "node-a", "interfaceName": "reef0123456789a", "ipNetworks": ["10.244.1.5/32", "fd00::5"],
                     "serviceAccountName": "sa", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}
        }))
        .unwrap();
        let endpoint = Endpoint::from_workload(&wep, true).unwrap();
        assert_eq!(endpoint.key, "x/node-a-k8s-web-eth0");
        assert_eq!(
            endpoint.addresses,
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(
            endpoint.ports,
            vec![NamedPort {
                name: "http".into(),
                protocol: 6,
                port: 8080
            }]
        );
        assert_eq!(endpoint.interface.as_deref(), Some("reef0123456789a"));
        assert_eq!(
            Endpoint::from_workload(&wep, false).unwrap().interface,
            None
        );
        let mut bad = wep.clone();
        bad.spec.ip_networks.push("nonsense".into());
        assert!(matches!(
            Endpoint::from_workload(&bad, true),
            Err(EndpointError::BadAddress { .. })
        ));
    }
}
