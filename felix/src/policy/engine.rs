//! The policy compiler: from [`PolicyInput`] to a [`PolicyProgram`], kept up to date incrementally.
//!
//! Policies, namespaces and pools change rarely and recompile the policy part (cost: the policies, plus
//! one indexed pass over the endpoints for each selection). Endpoints change often: an endpoint update
//! re-tests that one endpoint against every selection and policy and reports which sets and dispatch
//! entries changed, so a label change costs set elements and a map element, not a ruleset.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use reef_crds::policy::{Action, EntityRule, PolicyType, Port, Rule};
use reef_crds::{GlobalNetworkPolicy, IPPool, NetworkPolicy, Selector};
use sha1::{Digest, Sha1};

use super::k8s;
use super::model::{
    AddressSet, Changes, Endpoint, EndpointChain, Family, IcmpMatch, K8sNetworkPolicy, Labels,
    NatProgram, PolicyError, PolicyInput, PolicyObject, PolicyProblem, PolicyProgram, PortRange,
    PortSetMember, RuleSpec, SetKind, SideMatch, Verdict,
};
use super::selection::{EndpointIndex, NamespaceScope, Selection};

/// Order Kubernetes NetworkPolicies take among Reef policies (Calico's).
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// A short stable name: `<prefix>-` + 12 hex digits of the SHA-1 of `text`.
pub(crate) fn object_name(prefix: &str, text: &str) -> String {
    let digest = Sha1::digest(text.as_bytes());
    let mut name = format!("{prefix}-");
    for byte in &digest[..6] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// A named-port set's definition: the ports named `name` (with `protocol`) of the selected endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSelection {
    selection: Selection,
    name: String,
    protocol: u8,
}

impl PortSelection {
    fn members_of(&self, endpoint: &Endpoint) -> Vec<PortSetMember> {
        let ports = endpoint
            .ports
            .iter()
            .filter(|p| p.name == self.name && p.protocol == self.protocol);
        ports
            .flat_map(|p| {
                endpoint
                    .addresses
                    .iter()
                    .map(move |a| (*a, p.protocol, p.port))
            })
            .collect()
    }
}

/// A policy as dispatch needs it: whom it applies to and its chains.
#[derive(Clone, Debug)]
struct AppliedPolicy {
    sort: (f64, String),
    applies: Selection,
    ingress: Option<String>,
    egress: Option<String>,
}

/// Collects sets, chains and errors while compiling policies.
#[derive(Default)]
pub(crate) struct Builder {
    selections: BTreeMap<String, Selection>,
    port_selections: BTreeMap<String, PortSelection>,
    cidr_sets: BTreeMap<String, Vec<IpNet>>,
    chains: BTreeMap<String, Vec<RuleSpec>>,
    errors: Vec<PolicyError>,
    named_ports: Vec<(PolicyObject, String, String, u8)>,
}

impl Builder {
    /// The set holding the addresses of `selection`'s endpoints.
    pub(crate) fn selection_set(&mut self, selection: Selection) -> String {
        let name = object_name("s", &selection.canonical());
        self.selections.entry(name.clone()).or_insert(selection);
        name
    }

    /// The set holding `nets` (content-addressed).
    pub(crate) fn cidr_set(&mut self, nets: &[IpNet]) -> String {
        let nets = IpNet::aggregate(&nets.to_vec());
        let text: Vec<String> = nets.iter().map(IpNet::to_string).collect();
        let name = object_name("c", &text.join(","));
        self.cidr_sets.entry(name.clone()).or_insert(nets);
        name
    }

    /// The set of (address, protocol, port) for ports named `name` of `selection`'s endpoints.
    pub(crate) fn port_set(
        &mut self,
        object: &PolicyObject,
        field: &str,
        selection: Selection,
        name: &str,
        protocol: u8,
    ) -> String {
        let set = object_name("n", &format!("{}|{name}|{protocol}", selection.canonical()));
        self.named_ports.push((
            object.clone(),
            field.to_string(),
            name.to_string(),
            protocol,
        ));
        self.port_selections
            .entry(set.clone())
            .or_insert(PortSelection {
                selection,
                name: name.to_string(),
                protocol,
            });
        set
    }

    pub(crate) fn error(&mut self, object: &PolicyObject, problem: PolicyProblem) {
        self.errors.push(PolicyError {
            object: object.clone(),
            problem,
        });
    }

    /// Adds a policy chain and returns its name.
    pub(crate) fn chain(
        &mut self,
        id: &str,
        direction: PolicyType,
        rules: Vec<RuleSpec>,
    ) -> String {
        let prefix = match direction {
            PolicyType::Ingress => "pi",
            PolicyType::Egress => "po",
        };
        let name = object_name(prefix, id);
        self.chains.insert(name.clone(), rules);
        name
    }
}

/// Parses a selector for `field`, or says why not.
pub(crate) fn parse_selector(text: &str) -> Result<Selector, String> {
    Selector::parse(text).map_err(|e| e.to_string())
}

/// Where a rule of a policy looks for endpoints.
struct RuleScope<'a> {
    object: &'a PolicyObject,
    /// The policy's namespace (`None` for global policies).
    namespace: Option<&'a str>,
    /// The endpoints the policy applies to (the local side of each rule).
    applies: &'a Selection,
    direction: PolicyType,
    log_prefix: &'a str,
}

fn port_range(port: &Port) -> Result<PortRange, String> {
    let (first, last) = port
        .range()
        .ok_or_else(|| format!("{port} is not a port number"))?;
    let first = u16::try_from(first).map_err(|_| format!("{port} is out of range"))?;
    let last = u16::try_from(last).map_err(|_| format!("{port} is out of range"))?;
    if first > last {
        return Err(format!("range {port} is empty"));
    }
    Ok(PortRange { first, last })
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR or address"))
}

fn check_family(net: &IpNet, family: Option<Family>, text: &str) -> Result<(), String> {
    let is = if matches!(net, IpNet::V4(_)) {
        Family::V4
    } else {
        Family::V6
    };
    match family {
        Some(want) if want != is => Err(format!(
            "{text:?} is {is:?} but the rule is limited to {want:?}"
        )),
        _ => Ok(()),
    }
}

fn compile_side(
    b: &mut Builder,
    scope: &RuleScope,
    field: &str,
    entity: &EntityRule,
    local_side: bool,
    protocol: Option<u8>,
    family: Option<Family>,
) -> Result<SideMatch, String> {
    let mut side = SideMatch::default();
    let namespace = if entity.namespace_selector.is_empty() {
        match scope.namespace {
            Some(ns) => NamespaceScope::Only(ns.to_string()),
            None => NamespaceScope::Any,
        }
    } else {
        NamespaceScope::Matching(parse_selector(&entity.namespace_selector)?)
    };
    let peer = if !entity.selector.is_empty() || !entity.namespace_selector.is_empty() {
        let selection = Selection {
            endpoints: parse_selector(&entity.selector)?,
            namespace: namespace.clone(),
            service_accounts: None,
        };
        side.in_sets.push(b.selection_set(selection.clone()));
        Some(selection)
    } else {
        None
    };
    if !entity.not_selector.is_empty() {
        let selection = Selection {
            endpoints: parse_selector(&entity.not_selector)?,
            namespace,
            service_accounts: None,
        };
        side.not_in_sets.push(b.selection_set(selection));
    }
    for (nets, sets) in [
        (&entity.nets, &mut side.in_sets),
        (&entity.not_nets, &mut side.not_in_sets),
    ] {
        if nets.is_empty() {
            continue;
        }
        let mut parsed = Vec::new();
        for text in nets {
            let net = parse_net(text)?;
            check_family(&net, family, text)?;
            parsed.push(net);
        }
        sets.push(b.cidr_set(&parsed));
    }
    // Named ports belong to the endpoints of this side: the peer, or the policy's own endpoints.
    let port_owner = peer.unwrap_or_else(|| {
        if local_side {
            scope.applies.clone()
        } else {
            Selection::everything()
        }
    });
    for (ports, ranges, named, what) in [
        (
            &entity.ports,
            &mut side.ports,
            &mut side.named_port_sets,
            "ports",
        ),
        (
            &entity.not_ports,
            &mut side.not_ports,
            &mut side.not_named_port_sets,
            "notPorts",
        ),
    ] {
        if ports.is_empty() {
            continue;
        }
        let protocol = protocol
            .filter(|p| matches!(p, 6 | 17 | 132 | 136))
            .ok_or_else(|| format!("{what} need protocol TCP, UDP, SCTP or UDPLite"))?;
        for port in ports {
            match port {
                Port::Named(name) => named.push(b.port_set(
                    scope.object,
                    &format!("{field}.{what}"),
                    port_owner.clone(),
                    name,
                    protocol,
                )),
                other => ranges.push(port_range(other)?),
            }
        }
    }
    Ok(side)
}

fn compile_rule(
    b: &mut Builder,
    scope: &RuleScope,
    field: &str,
    rule: &Rule,
) -> Result<RuleSpec, String> {
    let verdict = match rule.action {
        Action::Allow => Verdict::Allow,
        Action::Deny => Verdict::Deny,
        Action::Pass => Verdict::Pass,
        Action::Log => Verdict::Log,
    };
    let family = match rule.ip_version {
        None => None,
        Some(4) => Some(Family::V4),
        Some(6) => Some(Family::V6),
        Some(v) => return Err(format!("ipVersion {v} is not 4 or 6")),
    };
    let number = |p: &Option<reef_crds::policy::Protocol>| -> Result<Option<u8>, String> {
        p.as_ref()
            .map(|p| p.number().ok_or_else(|| format!("{p} is not a protocol")))
            .transpose()
    };
    let protocol = number(&rule.protocol)?;
    let not_protocol = number(&rule.not_protocol)?;
    let icmp =
        |fields: &Option<reef_crds::policy::IcmpFields>| -> Result<Option<IcmpMatch>, String> {
            match fields {
                None => Ok(None),
                Some(f) => match (f.type_, protocol) {
                    (Some(type_), Some(1 | 58)) => Ok(Some(IcmpMatch {
                        type_,
                        code: f.code,
                    })),
                    (None, _) => Err("icmp needs a type".into()),
                    _ => Err("icmp needs protocol ICMP or ICMPv6".into()),
                },
            }
        };
    let local_is_destination = scope.direction == PolicyType::Ingress;
    Ok(RuleSpec {
        verdict,
        family,
        protocol,
        not_protocol,
        icmp: icmp(&rule.icmp)?,
        not_icmp: icmp(&rule.not_icmp)?,
        source: compile_side(
            b,
            scope,
            &format!("{field}.source"),
            &rule.source,
            !local_is_destination,
            protocol,
            family,
        )?,
        destination: compile_side(
            b,
            scope,
            &format!("{field}.destination"),
            &rule.destination,
            local_is_destination,
            protocol,
            family,
        )?,
        log_prefix: scope.log_prefix.to_string(),
    })
}

/// Directions a Reef policy applies in: `types`, or Ingress plus Egress when it has egress rules.
fn effective_types(types: &[PolicyType], has_egress: bool) -> Vec<PolicyType> {
    if !types.is_empty() {
        return types.to_vec();
    }
    let mut all = vec![PolicyType::Ingress];
    if has_egress {
        all.push(PolicyType::Egress);
    }
    all
}

/// The parts of a Reef NetworkPolicy or GlobalNetworkPolicy the compiler reads.
struct ReefPolicy<'a> {
    object: PolicyObject,
    id: String,
    order: Option<f64>,
    selector: &'a str,
    namespace: Option<&'a str>,
    namespace_selector: &'a str,
    types: &'a [PolicyType],
    ingress: &'a [Rule],
    egress: &'a [Rule],
    service_account_selector: &'a str,
}

fn compile_reef(b: &mut Builder, p: ReefPolicy) -> Option<AppliedPolicy> {
    let parsed = (|| {
        let endpoints = parse_selector(p.selector).map_err(|e| ("spec.selector", e))?;
        let namespace = match (p.namespace, p.namespace_selector) {
            (Some(ns), _) => NamespaceScope::Only(ns.to_string()),
            (None, "") => NamespaceScope::Any,
            (None, text) => NamespaceScope::Matching(
                parse_selector(text).map_err(|e| ("spec.namespaceSelector", e))?,
            ),
        };
        let service_accounts = match p.service_account_selector {
            "" => None,
            text => Some(parse_selector(text).map_err(|e| ("spec.serviceAccountSelector", e))?),
        };
        Ok(Selection {
            endpoints,
            namespace,
            service_accounts,
        })
    })();
    let applies = match parsed {
        Ok(selection) => selection,
        Err((field, reason)) => {
            let field = field.to_string();
            b.error(
                &p.object,
                PolicyProblem::BadPolicySelector { field, reason },
            );
            return None;
        }
    };
    let log_prefix = log_prefix(&p.id);
    let mut applied = AppliedPolicy {
        sort: (p.order.unwrap_or(f64::INFINITY), p.id.clone()),
        applies: applies.clone(),
        ingress: None,
        egress: None,
    };
    for direction in effective_types(p.types, !p.egress.is_empty()) {
        let (field, rules) = match direction {
            PolicyType::Ingress => ("spec.ingress", p.ingress),
            PolicyType::Egress => ("spec.egress", p.egress),
        };
        let scope = RuleScope {
            object: &p.object,
            namespace: p.namespace,
            applies: &applies,
            direction,
            log_prefix: &log_prefix,
        };
        let mut specs = Vec::with_capacity(rules.len());
        for (n, rule) in rules.iter().enumerate() {
            let field = format!("{field}[{n}]");
            match compile_rule(b, &scope, &field, rule) {
                Ok(spec) => specs.push(spec),
                Err(reason) => {
                    b.error(&p.object, PolicyProblem::BadRule { field, reason });
                    specs.push(RuleSpec::any(Verdict::Deny));
                }
            }
        }
        let chain = b.chain(&format!("{}/{direction:?}", p.id), direction, specs);
        match direction {
            PolicyType::Ingress => applied.ingress = Some(chain),
            PolicyType::Egress => applied.egress = Some(chain),
        }
    }
    Some(applied)
}

/// `reef <id>`, cut to 28 characters (iptables' LOG prefix limit is 29 with the trailing space).
pub(crate) fn log_prefix(id: &str) -> String {
    let mut prefix = format!("reef {id}");
    prefix.retain(|c| c.is_ascii_graphic() || c == ' ');
    prefix.retain(|c| c != '"' && c != '\\');
    prefix.truncate(27);
    prefix.push(' ');
    prefix
}

/// Policy-level compilation results (independent of endpoints).
#[derive(Default)]
struct CompiledPolicies {
    policies: Vec<AppliedPolicy>,
    selections: BTreeMap<String, Selection>,
    port_selections: BTreeMap<String, PortSelection>,
}

/// The incremental compiler. Feed it inputs; read [`PolicyEngine::program`] and
/// [`PolicyEngine::take_changes`] (what a backend must re-render).
pub struct PolicyEngine {
    endpoints: BTreeMap<String, Endpoint>,
    namespaces: BTreeMap<String, Labels>,
    network_policies: Vec<NetworkPolicy>,
    global_policies: Vec<GlobalNetworkPolicy>,
    k8s_policies: Vec<K8sNetworkPolicy>,
    pools: Vec<IPPool>,
    compiled: CompiledPolicies,
    chain_users: BTreeMap<String, u32>,
    program: PolicyProgram,
    changes: Changes,
}

/// Compiles `input` in one go (the pure entry point; [`PolicyEngine`] keeps it up to date).
pub fn compile(input: &PolicyInput) -> PolicyProgram {
    PolicyEngine::new(input.clone()).program
}

impl PolicyEngine {
    /// An engine holding `input`, compiled.
    pub fn new(input: PolicyInput) -> PolicyEngine {
        let mut engine = PolicyEngine {
            endpoints: input
                .endpoints
                .into_iter()
                .map(|e| (e.key.clone(), e))
                .collect(),
            namespaces: input.namespaces,
            network_policies: input.network_policies,
            global_policies: input.global_policies,
            k8s_policies: input.k8s_policies,
            pools: input.pools,
            compiled: CompiledPolicies::default(),
            chain_users: BTreeMap::new(),
            program: PolicyProgram::default(),
            changes: Changes::default(),
        };
        engine.recompile();
        engine
    }

    /// The compiled program.
    pub fn program(&self) -> &PolicyProgram {
        &self.program
    }

    /// What changed since the last call (the first call after [`PolicyEngine::new`] says `all`).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Replaces every policy (Reef namespaced, global, Kubernetes).
    pub fn set_policies(
        &mut self,
        network: Vec<NetworkPolicy>,
        global: Vec<GlobalNetworkPolicy>,
        k8s: Vec<K8sNetworkPolicy>,
    ) {
        self.network_policies = network;
        self.global_policies = global;
        self.k8s_policies = k8s;
        self.recompile();
    }

    /// Replaces the namespaces and their labels.
    pub fn set_namespaces(&mut self, namespaces: BTreeMap<String, Labels>) {
        self.namespaces = namespaces;
        self.recompile();
    }

    /// Replaces the IP pools.
    pub fn set_pools(&mut self, pools: Vec<IPPool>) {
        self.pools = pools;
        self.recompile();
    }

    /// Adds or replaces one endpoint (by key): cost one pass over the selections and policies.
    pub fn upsert_endpoint(&mut self, endpoint: Endpoint) {
        let old = self
            .endpoints
            .insert(endpoint.key.clone(), endpoint.clone());
        self.endpoint_changed(old.as_ref(), Some(&endpoint));
    }

    /// Removes one endpoint.
    pub fn remove_endpoint(&mut self, key: &str) {
        if let Some(old) = self.endpoints.remove(key) {
            self.endpoint_changed(Some(&old), None);
        }
    }

    fn endpoint_changed(&mut self, old: Option<&Endpoint>, new: Option<&Endpoint>) {
        let namespaces = &self.namespaces;
        for (name, selection) in &self.compiled.selections {
            let Some(set) = self.program.sets.get_mut(name) else {
                continue;
            };
            let before = old.filter(|e| selection.matches(e, namespaces));
            let after = new.filter(|e| selection.matches(e, namespaces));
            let mut changed = false;
            for address in before.into_iter().flat_map(|e| &e.addresses) {
                changed |= release(&mut set.members, IpNet::from(*address));
            }
            for address in after.into_iter().flat_map(|e| &e.addresses) {
                changed |= hold(&mut set.members, IpNet::from(*address));
            }
            if changed {
                self.changes.sets.insert(name.clone());
            }
        }
        for (name, ports) in &self.compiled.port_selections {
            let Some(set) = self.program.port_sets.get_mut(name) else {
                continue;
            };
            let before = old.filter(|e| ports.selection.matches(e, namespaces));
            let after = new.filter(|e| ports.selection.matches(e, namespaces));
            let mut changed = false;
            for member in before.into_iter().flat_map(|e| ports.members_of(e)) {
                changed |= release(set, member);
            }
            for member in after.into_iter().flat_map(|e| ports.members_of(e)) {
                changed |= hold(set, member);
            }
            if changed {
                self.changes.port_sets.insert(name.clone());
            }
        }
        if let Some(interface) = old.and_then(|e| e.interface.as_ref()) {
            self.program.interfaces.remove(interface);
            for direction in [PolicyType::Ingress, PolicyType::Egress] {
                if let Some(chain) = self.dispatch_mut(direction).remove(interface) {
                    self.unuse_chain(&chain);
                }
            }
            self.changes.interfaces.insert(interface.clone());
        }
        if let Some(endpoint) = new
            && let Some(interface) = &endpoint.interface
        {
            let lists = policy_lists(&self.compiled.policies, endpoint, &self.namespaces);
            self.add_dispatch(interface.clone(), lists);
        }
    }

    fn dispatch_mut(&mut self, direction: PolicyType) -> &mut BTreeMap<String, String> {
        match direction {
            PolicyType::Ingress => &mut self.program.ingress,
            PolicyType::Egress => &mut self.program.egress,
        }
    }

    fn unuse_chain(&mut self, chain: &str) {
        if let Some(users) = self.chain_users.get_mut(chain) {
            *users -= 1;
            if *users == 0 {
                self.chain_users.remove(chain);
                self.program.endpoint_chains.remove(chain);
                self.changes.endpoint_chains.insert(chain.to_string());
            }
        }
    }

    /// Registers a local endpoint's interface and its policy lists.
    fn add_dispatch(&mut self, interface: String, lists: [Vec<String>; 2]) {
        self.program.interfaces.insert(interface.clone());
        self.changes.interfaces.insert(interface.clone());
        for (direction, policies) in [PolicyType::Ingress, PolicyType::Egress]
            .into_iter()
            .zip(lists)
        {
            if policies.is_empty() {
                continue;
            }
            let chain = object_name("e", &policies.join(","));
            let users = self.chain_users.entry(chain.clone()).or_insert(0);
            *users += 1;
            if *users == 1 {
                self.program
                    .endpoint_chains
                    .insert(chain.clone(), EndpointChain { policies });
                self.changes.endpoint_chains.insert(chain.clone());
            }
            self.dispatch_mut(direction)
                .insert(interface.clone(), chain);
        }
    }

    /// Recompiles policies and pools and refills every set (after a policy, namespace or pool change).
    fn recompile(&mut self) {
        let mut b = Builder::default();
        let mut policies = Vec::new();
        for np in &self.network_policies {
            let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
            let name = np.metadata.name.as_deref().unwrap_or("");
            let s = &np.spec;
            policies.extend(compile_reef(
                &mut b,
                ReefPolicy {
                    object: PolicyObject::NetworkPolicy(format!("{namespace}/{name}")),
                    id: format!("np/{namespace}/{name}"),
                    order: s.order,
                    selector: &s.selector,
                    namespace: Some(namespace),
                    namespace_selector: "",
                    types: &s.types,
                    ingress: &s.ingress,
                    egress: &s.egress,
                    service_account_selector: &s.service_account_selector,
                },
            ));
        }
        for gnp in &self.global_policies {
            let name = gnp.metadata.name.as_deref().unwrap_or("");
            let s = &gnp.spec;
            policies.extend(compile_reef(
                &mut b,
                ReefPolicy {
                    object: PolicyObject::GlobalNetworkPolicy(name.to_string()),
                    id: format!("gnp/{name}"),
                    order: s.order,
                    selector: &s.selector,
                    namespace: None,
                    namespace_selector: &s.namespace_selector,
                    types: &s.types,
                    ingress: &s.ingress,
                    egress: &s.egress,
                    service_account_selector: &s.service_account_selector,
                },
            ));
        }
        for knp in &self.k8s_policies {
            policies.extend(
                k8s::compile(&mut b, knp).map(|(applies, ingress, egress, id)| AppliedPolicy {
                    sort: (K8S_POLICY_ORDER, id),
                    applies,
                    ingress,
                    egress,
                }),
            );
        }
        policies.sort_by(|a, b| {
            a.sort
                .0
                .total_cmp(&b.sort.0)
                .then_with(|| a.sort.1.cmp(&b.sort.1))
        });
        let nat = self.compile_pools(&mut b);

        let mut program = PolicyProgram {
            nat,
            ..PolicyProgram::default()
        };
        let index = EndpointIndex::new(self.endpoints.values());
        for (name, selection) in &b.selections {
            let mut members = BTreeMap::new();
            for endpoint in index.members(selection, &self.namespaces) {
                for address in &endpoint.addresses {
                    hold(&mut members, IpNet::from(*address));
                }
            }
            let set = AddressSet {
                kind: SetKind::Endpoints,
                members,
            };
            program.sets.insert(name.clone(), set);
        }
        for (name, nets) in &b.cidr_sets {
            let members = nets.iter().map(|n| (*n, 1)).collect();
            let set = AddressSet {
                kind: SetKind::Cidrs,
                members,
            };
            program.sets.insert(name.clone(), set);
        }
        for (name, ports) in &b.port_selections {
            let mut members = BTreeMap::new();
            for endpoint in index.members(&ports.selection, &self.namespaces) {
                for member in ports.members_of(endpoint) {
                    hold(&mut members, member);
                }
            }
            program.port_sets.insert(name.clone(), members);
        }
        let declared: BTreeSet<(&str, u8)> = self
            .endpoints
            .values()
            .flat_map(|e| e.ports.iter().map(|p| (p.name.as_str(), p.protocol)))
            .collect();
        for (object, field, name, protocol) in &b.named_ports {
            if !declared.contains(&(name.as_str(), *protocol)) {
                b.errors.push(PolicyError {
                    object: object.clone(),
                    problem: PolicyProblem::UnknownNamedPort {
                        field: field.clone(),
                        name: name.clone(),
                        protocol: protocol_name(*protocol),
                    },
                });
            }
        }
        program.policy_chains = std::mem::take(&mut b.chains);
        program.errors = std::mem::take(&mut b.errors);
        // Dispatch: each policy's local members, in policy order.
        let mut lists: BTreeMap<String, [Vec<String>; 2]> = BTreeMap::new();
        for policy in &policies {
            for endpoint in index.members(&policy.applies, &self.namespaces) {
                if endpoint.interface.is_none() {
                    continue;
                }
                let entry = lists.entry(endpoint.key.clone()).or_default();
                if let Some(chain) = &policy.ingress {
                    entry[0].push(chain.clone());
                }
                if let Some(chain) = &policy.egress {
                    entry[1].push(chain.clone());
                }
            }
        }
        drop(index);
        self.program = program;
        self.chain_users.clear();
        self.compiled = CompiledPolicies {
            policies,
            selections: b.selections,
            port_selections: b.port_selections,
        };
        let locals: Vec<(String, String)> = self
            .endpoints
            .values()
            .filter_map(|e| Some((e.key.clone(), e.interface.clone()?)))
            .collect();
        for (key, interface) in locals {
            let list = lists.remove(&key).unwrap_or_default();
            self.add_dispatch(interface, list);
        }
        self.changes = Changes {
            all: true,
            ..Changes::default()
        };
    }

    fn compile_pools(&self, b: &mut Builder) -> NatProgram {
        let mut nat = NatProgram::default();
        for pool in &self.pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            match pool.spec.cidr.parse::<IpNet>() {
                Ok(net) => {
                    let net = net.trunc();
                    nat.pools.push(net);
                    if pool.spec.nat_outgoing {
                        nat.masquerade.push(net);
                    }
                }
                Err(_) => b.error(
                    &PolicyObject::IPPool(name),
                    PolicyProblem::BadPoolCidr(pool.spec.cidr.clone()),
                ),
            }
        }
        nat.pools = IpNet::aggregate(&nat.pools);
        nat.masquerade = IpNet::aggregate(&nat.masquerade);
        nat
    }
}

/// The ordered ingress and egress policy chains that apply to a local endpoint.
fn policy_lists(
    policies: &[AppliedPolicy],
    endpoint: &Endpoint,
    namespaces: &BTreeMap<String, Labels>,
) -> [Vec<String>; 2] {
    let mut lists: [Vec<String>; 2] = Default::default();
    for policy in policies
        .iter()
        .filter(|p| p.applies.matches(endpoint, namespaces))
    {
        lists[0].extend(policy.ingress.clone());
        lists[1].extend(policy.egress.clone());
    }
    lists
}

/// Counts one more holder of `key`; true when it is new.
fn hold<K: Ord>(members: &mut BTreeMap<K, u32>, key: K) -> bool {
    let count = members.entry(key).or_insert(0);
    *count += 1;
    *count == 1
}

/// Counts one holder less of `key`; true when it is gone.
fn release<K: Ord>(members: &mut BTreeMap<K, u32>, key: K) -> bool {
    match members.get_mut(&key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            members.remove(&key);
            true
        }
        None => false,
    }
}

/// TCP, UDP, SCTP, UDPLite or the number.
pub(crate) fn protocol_name(protocol: u8) -> String {
    match protocol {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        136 => "UDPLite".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use serde_json::json;

    use super::*;
    use crate::policy::model::NamedPort;

    fn endpoint(key: &str, last: u8, app: &str, local: bool) -> Endpoint {
        let (ns, name) = key.split_once('/').unwrap();
        Endpoint {
            key: key.into(),
            namespace: Some(ns.into()),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))],
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: 6,
                port: 8000 + u16::from(last),
            }],
            interface: local.then(|| format!("reef{name}")),
            ..Endpoint::default()
        }
    }

    fn input() -> PolicyInput {
        let k8s: K8sNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "http"}]}]}
        }))
        .unwrap();
        let bad: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "bad", "namespace": "x"},
            "spec": {"selector": "all()", "ingress": [
                {"action": "Allow", "ipVersion": 4, "source": {"nets": ["2001:db8::/32"]}},
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["nosuch"]}}]}
        }))
        .unwrap();
        PolicyInput {
            endpoints: vec![
                endpoint("x/web", 1, "web", true),
                endpoint("x/db", 2, "db", false),
                endpoint("y/db", 3, "db", false),
            ],
            namespaces: BTreeMap::from([("x".into(), Labels::new()), ("y".into(), Labels::new())]),
            k8s_policies: vec![k8s],
            network_policies: vec![bad],
            ..PolicyInput::default()
        }
    }

    fn set_with(program: &PolicyProgram, last: u8) -> Vec<&String> {
        let net = IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)));
        program
            .sets
            .iter()
            .filter(|(_, s)| s.members.contains_key(&net))
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn kubernetes_peers_are_namespaced_and_named_ports_resolve_per_pod() {
        let program = compile(&input());
        // The db peer set holds x/db only (same namespace), never y/db.
        assert_eq!(set_with(&program, 2).len(), 1);
        assert!(set_with(&program, 3).is_empty());
        // The named port resolves on the selected web pod: 10.0.0.1 TCP 8001.
        let ports: Vec<_> = program.port_sets.values().flat_map(|s| s.keys()).collect();
        assert_eq!(
            ports,
            vec![&(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6, 8001)]
        );
        // Only the local endpoint is dispatched: the Kubernetes policy (order 1000), then the Reef policy
        // without an order (last).
        let chain = &program.endpoint_chains[&program.ingress["reefweb"]];
        let expected = [
            object_name("pi", "knp/x/web/Ingress"),
            object_name("pi", "np/x/bad/Ingress"),
        ];
        assert_eq!(chain.policies, expected);
        assert_eq!(
            program.egress.get("reefweb"),
            None,
            "no egress policy: allowed"
        );
    }

    #[test]
    fn bad_rules_are_reported_and_fail_closed() {
        let program = compile(&input());
        let problems: Vec<_> = program.errors.iter().map(|e| e.problem.clone()).collect();
        assert!(
            problems.iter().any(
                |p| matches!(p, PolicyProblem::BadRule { field, .. } if field == "spec.ingress[0]")
            ),
            "{problems:?}"
        );
        assert!(problems.iter().any(
            |p| matches!(p, PolicyProblem::UnknownNamedPort { name, .. } if name == "nosuch")
        ));
        let bad = &program.policy_chains[&object_name("pi", "np/x/bad/Ingress")];
        assert_eq!(
            bad[0],
            RuleSpec::any(Verdict::Deny),
            "the wrong-family rule became a Deny"
        );
    }

    #[test]
    fn a_label_change_changes_set_members_only() {
        let mut engine = PolicyEngine::new(input());
        assert!(engine.take_changes().all);
        let before = engine.program().clone();
        engine.upsert_endpoint(endpoint("x/db", 2, "cache", false));
        let changes = engine.take_changes();
        assert!(
            !changes.all && changes.interfaces.is_empty() && changes.endpoint_chains.is_empty()
        );
        assert_eq!(changes.sets.len(), 1);
        assert_eq!(engine.program().policy_chains, before.policy_chains);
        assert!(set_with(engine.program(), 2).is_empty());
        // The same state as compiling from scratch.
        let mut again = input();
        again.endpoints[1] = endpoint("x/db", 2, "cache", false);
        assert_eq!(engine.program(), &compile(&again));
    }
}
