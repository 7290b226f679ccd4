//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, compiled with its exact semantics into the same rule
//! model as Reef's policies: every rule is an Allow; a policy isolates the pods it selects in the
//! directions of its `policyTypes`; peers are alternatives, and so are ports.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use reef_crds::Selector;
use reef_crds::policy::PolicyType;

use super::engine::{Builder, log_prefix};
use super::model::{
    K8sNetworkPolicy, PolicyObject, PolicyProblem, PortRange, RuleSpec, SideMatch, Verdict,
};
use super::selection::{NamespaceScope, Selection};

/// A Kubernetes label selector as a Reef selector (`{}` selects everything).
pub fn label_selector(selector: &LabelSelector) -> Result<Selector, String> {
    let mut terms = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        terms.push(Selector::Eq(key.clone(), value.clone()));
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let key = requirement.key.clone();
        let values: BTreeSet<String> = requirement.values.iter().flatten().cloned().collect();
        terms.push(match requirement.operator.as_str() {
            "In" => Selector::In(key, values),
            "NotIn" => Selector::NotIn(key, values),
            "Exists" => Selector::Has(key),
            "DoesNotExist" => Selector::Not(Box::new(Selector::Has(key))),
            other => return Err(format!("unknown label selector operator {other:?}")),
        });
    }
    Ok(Selector::all_of(terms))
}

/// The protocol of a port entry (TCP when unset).
fn port_protocol(port: &NetworkPolicyPort) -> Result<u8, String> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        other => Err(format!("protocol {other:?} is not TCP, UDP or SCTP")),
    }
}

/// A peer as a side match; also returns the selection owning named ports on this side.
fn peer_side(
    b: &mut Builder,
    namespace: &str,
    peer: &NetworkPolicyPeer,
) -> Result<(SideMatch, Selection), String> {
    let mut side = SideMatch::default();
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with podSelector or namespaceSelector".into());
        }
        let cidr: ipnet::IpNet = block
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock.cidr {:?} is not a CIDR", block.cidr))?;
        side.in_sets.push(b.cidr_set(&[cidr.trunc()]));
        let mut except = Vec::new();
        for text in block.except.iter().flatten() {
            let net: ipnet::IpNet = text
                .parse()
                .map_err(|_| format!("ipBlock.except {text:?} is not a CIDR"))?;
            if matches!(net, ipnet::IpNet::V4(_)) != matches!(cidr, ipnet::IpNet::V4(_)) {
                return Err(format!(
                    "ipBlock.except {text:?} is not of the family of {}",
                    block.cidr
                ));
            }
            except.push(net.trunc());
        }
        if !except.is_empty() {
            side.not_in_sets.push(b.cidr_set(&except));
        }
        return Ok((side, Selection::everything()));
    }
    let endpoints = match &peer.pod_selector {
        Some(s) => label_selector(s)?,
        None => Selector::All,
    };
    let namespace = match &peer.namespace_selector {
        Some(s) => NamespaceScope::Matching(label_selector(s)?),
        None => NamespaceScope::Only(namespace.to_string()),
    };
    let selection = Selection {
        endpoints,
        namespace,
        service_accounts: None,
    };
    side.in_sets.push(b.selection_set(selection.clone()));
    Ok((side, selection))
}

/// A Kubernetes rule's peers (`from` or `to`) and ports.
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// One direction's rules: for each rule, peers x protocol groups, each an Allow.
#[allow(clippy::too_many_arguments)]
fn direction_rules(
    b: &mut Builder,
    object: &PolicyObject,
    field: &str,
    namespace: &str,
    applies: &Selection,
    direction: PolicyType,
    rules: &[RuleParts],
    prefix: &str,
) -> Vec<RuleSpec> {
    let mut specs = Vec::new();
    for (n, (peers, ports)) in rules.iter().enumerate() {
        let field = format!("{field}[{n}]");
        match rule_specs(
            b, object, &field, namespace, applies, direction, *peers, *ports, prefix,
        ) {
            Ok(mut list) => specs.append(&mut list),
            Err(reason) => {
                b.error(object, PolicyProblem::BadRule { field, reason });
                specs.push(RuleSpec::any(Verdict::Deny));
            }
        }
    }
    specs
}

#[allow(clippy::too_many_arguments)]
fn rule_specs(
    b: &mut Builder,
    object: &PolicyObject,
    field: &str,
    namespace: &str,
    applies: &Selection,
    direction: PolicyType,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    prefix: &str,
) -> Result<Vec<RuleSpec>, String> {
    // Peers: none listed means every source/destination.
    let mut sides: Vec<(SideMatch, Selection)> = Vec::new();
    match peers {
        Some(list) if !list.is_empty() => {
            for peer in list {
                sides.push(peer_side(b, namespace, peer)?);
            }
        }
        _ => sides.push((SideMatch::default(), Selection::everything())),
    }
    // Ports grouped by protocol; a protocol listed without a port matches all its ports.
    let mut groups: Vec<(u8, Option<Vec<PortEntry>>)> = Vec::new();
    for port in ports.into_iter().flatten() {
        let protocol = port_protocol(port)?;
        let entry = match (&port.port, port.end_port) {
            (None, None) => None,
            (None, Some(_)) => return Err("endPort needs port".into()),
            (Some(IntOrString::Int(first)), end) => {
                let first =
                    u16::try_from(*first).map_err(|_| format!("port {first} is out of range"))?;
                let last = match end {
                    None => first,
                    Some(end) => {
                        u16::try_from(end).map_err(|_| format!("endPort {end} is out of range"))?
                    }
                };
                if last < first {
                    return Err(format!("endPort {last} is below port {first}"));
                }
                Some(PortEntry::Range(PortRange { first, last }))
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return Err("endPort needs a numeric port".into());
            }
            (Some(IntOrString::String(name)), None) => Some(PortEntry::Named(name.clone())),
        };
        match groups.iter_mut().find(|(p, _)| *p == protocol) {
            Some((_, list)) => match entry {
                None => *list = None,
                Some(entry) => {
                    if let Some(list) = list {
                        list.push(entry);
                    }
                }
            },
            None => groups.push((protocol, entry.map(|e| vec![e]))),
        }
    }
    let mut specs = Vec::new();
    for (peer, peer_selection) in &sides {
        if groups.is_empty() {
            specs.push(spec(
                direction,
                None,
                peer.clone(),
                SideMatch::default(),
                prefix,
            ));
            continue;
        }
        for (protocol, entries) in &groups {
            let mut ported = SideMatch::default();
            // Named ports are the destination's: the pod itself for ingress, the peer for egress.
            let owner = match direction {
                PolicyType::Ingress => applies,
                PolicyType::Egress => peer_selection,
            };
            for entry in entries.iter().flatten() {
                match entry {
                    PortEntry::Range(range) => ported.ports.push(*range),
                    PortEntry::Named(name) => ported.named_port_sets.push(b.port_set(
                        object,
                        &format!("{field}.ports"),
                        owner.clone(),
                        name,
                        *protocol,
                    )),
                }
            }
            specs.push(spec(
                direction,
                Some(*protocol),
                peer.clone(),
                ported,
                prefix,
            ));
        }
    }
    Ok(specs)
}

enum PortEntry {
    Range(PortRange),
    Named(String),
}

/// An Allow with the peer on the remote side and the ports on the destination.
fn spec(
    direction: PolicyType,
    protocol: Option<u8>,
    peer: SideMatch,
    ports: SideMatch,
    prefix: &str,
) -> RuleSpec {
    let mut rule = RuleSpec::any(Verdict::Allow);
    rule.protocol = protocol;
    rule.log_prefix = prefix.to_string();
    match direction {
        PolicyType::Ingress => {
            rule.source = peer;
            rule.destination = ports;
        }
        PolicyType::Egress => {
            let mut destination = peer;
            destination.ports = ports.ports;
            destination.named_port_sets = ports.named_port_sets;
            rule.destination = destination;
        }
    }
    rule
}

/// Compiles one Kubernetes NetworkPolicy: (the pods it selects, ingress chain, egress chain, sort id), or
/// `None` (reported) when its pod selector is invalid.
pub(crate) fn compile(
    b: &mut Builder,
    policy: &K8sNetworkPolicy,
) -> Option<(Selection, Option<String>, Option<String>, String)> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let name = policy.metadata.name.as_deref().unwrap_or("");
    let object = PolicyObject::K8sNetworkPolicy(format!("{namespace}/{name}"));
    let id = format!("knp/{namespace}/{name}");
    let body = policy.spec.clone().unwrap_or_default();
    let endpoints = match body.pod_selector.as_ref().map(label_selector).transpose() {
        Ok(s) => s.unwrap_or(Selector::All),
        Err(reason) => {
            b.error(
                &object,
                PolicyProblem::BadPolicySelector {
                    field: "spec.podSelector".into(),
                    reason,
                },
            );
            return None;
        }
    };
    let applies = Selection {
        endpoints,
        namespace: NamespaceScope::Only(namespace.to_string()),
        service_accounts: None,
    };
    let egress_rules = body.egress.clone().unwrap_or_default();
    let ingress_rules = body.ingress.clone().unwrap_or_default();
    let mut types = Vec::new();
    match &body.policy_types {
        Some(list) if !list.is_empty() => {
            for t in list {
                match t.as_str() {
                    "Ingress" => types.push(PolicyType::Ingress),
                    "Egress" => types.push(PolicyType::Egress),
                    other => b.error(
                        &object,
                        PolicyProblem::BadRule {
                            field: "spec.policyTypes".into(),
                            reason: format!("unknown policy type {other:?}"),
                        },
                    ),
                }
            }
        }
        _ => {
            types.push(PolicyType::Ingress);
            if !egress_rules.is_empty() {
                types.push(PolicyType::Egress);
            }
        }
    }
    let prefix = log_prefix(&id);
    let mut chains = (None, None);
    for direction in types {
        let (field, rules): (&str, Vec<RuleParts>) = match direction {
            PolicyType::Ingress => (
                "spec.ingress",
                ingress_rules
                    .iter()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
            ),
            PolicyType::Egress => (
                "spec.egress",
                egress_rules
                    .iter()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
            ),
        };
        let specs = direction_rules(
            b, &object, field, namespace, &applies, direction, &rules, &prefix,
        );
        let chain = b.chain(&format!("{id}/{direction:?}"), direction, specs);
        match direction {
            PolicyType::Ingress => chains.0 = Some(chain),
            PolicyType::Egress => chains.1 = Some(chain),
        }
    }
    Some((applies, chains.0, chains.1, id))
}
