//! Validation of resources beyond what the CRD schema checks: syntax of CIDRs, addresses, selectors,
//! ranges, cross-field rules, and immutability on update. Every message names the field path and
//! says what would be accepted, so it can be shown to the user as is.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kube::core::Duration;

use crate::bgp::{
    BGPConfiguration, BGPFilter, BGPFilterRule, BGPPassword, BGPPeer,
    DEFAULT_BGP_CONFIGURATION_NAME, MatchOperator, NODE_BGP_CONFIGURATION_PREFIX, parse_peer_ip,
};
use crate::ipam::{
    AllowedUse, BlockAffinity, DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6, HOST_AFFINITY_PREFIX,
    IPAM_CONFIG_NAME, IPAMBlock, IPAMConfig, IPAMHandle, IPPool, VxlanMode,
};
use crate::node::ReefNode;
use crate::policy::{
    EntityRule, GlobalNetworkPolicy, NetworkPolicy, PolicyType, Port, Protocol, Rule,
};
use crate::selector::Selector;
use crate::workload::WorkloadEndpoint;

/// One problem: the field path (e.g. `spec.ingress[0].source.nets[1]`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, from the object root.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found in one object (never empty when returned as an error).
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, e) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Whether any error is about `path` (exactly).
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

/// A resource that can check itself.
pub trait Validate {
    /// Checks the object on its own.
    fn validate(&self) -> Result<(), ValidationErrors>;

    /// Checks a change from `old` to `new`: `new` must be valid and immutable fields unchanged.
    fn validate_update(old: &Self, new: &Self) -> Result<(), ValidationErrors>
    where
        Self: Sized,
    {
        let _ = old;
        new.validate()
    }
}

// ---------------------------------------------------------------------------------------------
// Field checkers: each pushes its errors and returns the parsed value when there is one.

fn check_cidr(errors: &mut ValidationErrors, path: &str, text: &str) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => {
            errors.push(
                path,
                format!("{text:?} has host bits set (did you mean {}?)", net.trunc()),
            );
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            errors.push(path, format!("{text:?} is not a valid CIDR (expected e.g. 192.168.0.0/16 or fd00:10:244::/56)"));
            None
        }
    }
}

/// A CIDR or a bare address (a /32 or /128), as policy `nets` accept.
fn check_net(errors: &mut ValidationErrors, path: &str, text: &str) -> Option<IpNet> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    check_cidr(errors, path, text)
}

/// An interface address with its subnet length (host bits expected), e.g. `198.51.100.10/24`.
fn check_interface_address(
    errors: &mut ValidationErrors,
    path: &str,
    text: &str,
    want_v4: bool,
) -> Option<IpNet> {
    let (family, example) = if want_v4 {
        ("IPv4", "198.51.100.10/24")
    } else {
        ("IPv6", "2001:db8::10/64")
    };
    match text.parse::<IpNet>() {
        Ok(net) if matches!(net, IpNet::V4(_)) == want_v4 => Some(net),
        _ => {
            errors.push(path, format!("{text:?} is not an {family} address with prefix length (expected e.g. {example})"));
            None
        }
    }
}

fn check_selector(errors: &mut ValidationErrors, path: &str, text: &str) {
    if let Err(e) = Selector::parse(text) {
        errors.push(path, e.to_string());
    }
}

fn check_as_number(errors: &mut ValidationErrors, path: &str, asn: Option<u32>) {
    if asn == Some(0) {
        errors.push(path, "0 is not a valid AS number (1..=4294967295 allowed; private ranges 64512..=65534, 4200000000..=4294967294)");
    }
}

/// Standard (`aa:nn`, 16-bit parts) or large (`aa:nn:mm`, 32-bit parts) community.
fn is_community(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [a, b] => a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok(),
        [a, b, c] => [a, b, c].iter().all(|p| p.parse::<u32>().is_ok()),
        _ => false,
    }
}

fn check_community(errors: &mut ValidationErrors, path: &str, text: &str) {
    if !is_community(text) {
        errors.push(path, format!("{text:?} is not a community (expected aa:nn with 16-bit parts, e.g. 65000:100, or a large community aa:nn:mm, e.g. 4200000000:1:2)"));
    }
}

fn check_secret(errors: &mut ValidationErrors, path: &str, password: &Option<BGPPassword>) {
    let Some(password) = password else { return };
    match &password.secret_key_ref {
        None => errors.push(path, "password needs secretKeyRef {name, key}"),
        Some(r) => {
            if r.name.is_empty() {
                errors.push(format!("{path}.secretKeyRef.name"), "must name a Secret");
            }
            if r.key.is_empty() {
                errors.push(
                    format!("{path}.secretKeyRef.key"),
                    "must name a key of the Secret",
                );
            }
        }
    }
}

/// RFC 4271 §4.2: the hold time is 0 (no keepalives) or at least 3 seconds.
fn check_timers(
    errors: &mut ValidationErrors,
    path: &str,
    keepalive: Option<Duration>,
    hold: Option<Duration>,
) {
    for (field, d) in [("keepaliveTime", keepalive), ("holdTime", hold)] {
        if d.is_some_and(|d| d.is_negative()) {
            errors.push(format!("{path}.{field}"), "must not be negative");
        }
    }
    if let Some(hold) = hold
        && !hold.is_negative()
    {
        let hold = std::time::Duration::from(hold);
        if !hold.is_zero() && hold < std::time::Duration::from_secs(3) {
            errors.push(
                format!("{path}.holdTime"),
                format!("{hold:?} is too short (0s or at least 3s, RFC 4271)"),
            );
        }
        if let Some(k) = keepalive
            && !hold.is_zero()
            && std::time::Duration::from(k) >= hold
        {
            errors.push(
                format!("{path}.keepaliveTime"),
                "must be shorter than holdTime (usually a third of it)",
            );
        }
    }
}

fn check_non_negative(errors: &mut ValidationErrors, path: &str, d: Option<Duration>) {
    if d.is_some_and(|d| d.is_negative()) {
        errors.push(path, "must not be negative");
    }
}

fn check_not_empty(errors: &mut ValidationErrors, path: &str, text: &str, what: &str) {
    if text.is_empty() {
        errors.push(path, format!("must not be empty ({what})"));
    }
}

/// IANA service name, as Kubernetes named ports: 1-15 chars of `a-z0-9-`, a letter, no `--`,
/// no leading/trailing `-`.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn check_mac(errors: &mut ValidationErrors, path: &str, mac: &str) {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if !ok {
        errors.push(
            path,
            format!("{mac:?} is not a MAC address (expected e.g. ee:ee:ee:ee:ee:ee)"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// IPAM

/// Allowed block prefix lengths (Calico's).
const BLOCK_SIZE_V4: std::ops::RangeInclusive<u8> = 20..=32;
const BLOCK_SIZE_V6: std::ops::RangeInclusive<u8> = 116..=128;

impl Validate for IPPool {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let spec = &self.spec;
        let net = check_cidr(&mut errors, "spec.cidr", &spec.cidr);
        if let Some(net) = net {
            let (family, range, default) = match net {
                IpNet::V4(_) => ("IPv4", BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V4),
                IpNet::V6(_) => ("IPv6", BLOCK_SIZE_V6, DEFAULT_BLOCK_SIZE_V6),
            };
            let size = spec.block_size.unwrap_or(default);
            let pool_len = net.prefix_len();
            if !range.contains(&size) {
                errors.push(
                    "spec.blockSize",
                    format!(
                        "{size} is out of range for {family} ({}..={} allowed; default {default})",
                        range.start(),
                        range.end()
                    ),
                );
            } else if size < pool_len {
                let which = if spec.block_size.is_some() {
                    ""
                } else {
                    " (the default)"
                };
                errors.push(
                    "spec.blockSize",
                    format!("/{size} blocks{which} do not fit in the /{pool_len} pool (set blockSize to at least {pool_len})"),
                );
            }
        }
        if let Some(mode) = spec.ipip_mode.filter(|m| *m != VxlanMode::Never) {
            errors.push(
                "spec.ipipMode",
                format!("{mode:?} is not supported: Reef has no IP-in-IP (set vxlanMode: {mode:?} instead, and ipipMode: Never or omit it)"),
            );
        }
        check_selector(&mut errors, "spec.nodeSelector", &spec.node_selector);
        if spec.allowed_uses.is_empty() {
            errors.push(
                "spec.allowedUses",
                "must name at least one use (Workload, Tunnel, LoadBalancer)",
            );
        } else if spec.allows(AllowedUse::LoadBalancer) && spec.allowed_uses.len() > 1 {
            errors.push(
                "spec.allowedUses",
                "LoadBalancer cannot be combined with Workload or Tunnel (use a separate pool)",
            );
        }
        errors.into_result()
    }

    fn validate_update(old: &Self, new: &Self) -> Result<(), ValidationErrors> {
        let mut errors = new.validate().err().unwrap_or_default();
        if old.spec.cidr_net() != new.spec.cidr_net()
            || (old.spec.cidr_net().is_none() && old.spec.cidr != new.spec.cidr)
        {
            errors.push(
                "spec.cidr",
                format!("is immutable ({:?} -> {:?}): create a new IPPool, disable this one and migrate workloads", old.spec.cidr, new.spec.cidr),
            );
        }
        if old.spec.effective_block_size() != new.spec.effective_block_size() {
            errors.push(
                "spec.blockSize",
                format!("is immutable ({:?} -> {:?}): blocks already cut from the pool keep their size; create a new IPPool instead",
                    old.spec.effective_block_size(), new.spec.effective_block_size()),
            );
        }
        errors.into_result()
    }
}

impl Validate for IPAMBlock {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let spec = &self.spec;
        let net = check_cidr(&mut errors, "spec.cidr", &spec.cidr);
        if let Some(affinity) = &spec.affinity
            && affinity
                .strip_prefix(HOST_AFFINITY_PREFIX)
                .is_none_or(str::is_empty)
        {
            errors.push(
                "spec.affinity",
                format!("{affinity:?} is not an affinity (expected host:<node name>)"),
            );
        }
        // Sizes are checked only for blocks small enough to hold per-address state.
        let host_bits = net.map(|n| n.max_prefix_len() - n.prefix_len());
        if let Some(bits @ 0..=20) = host_bits {
            let size = 1usize << bits;
            if spec.allocations.len() != size {
                errors.push(
                    "spec.allocations",
                    format!(
                        "has {} entries, expected {size} (one per address of the block)",
                        spec.allocations.len()
                    ),
                );
            }
        }
        for (ordinal, attr) in spec.allocations.iter().enumerate() {
            if let Some(index) = attr
                && *index as usize >= spec.attributes.len()
            {
                errors.push(
                    format!("spec.allocations[{ordinal}]"),
                    format!(
                        "refers to attribute {index}, but there are {}",
                        spec.attributes.len()
                    ),
                );
            }
        }
        let mut seen = HashSet::new();
        for (n, ordinal) in spec.unallocated.iter().enumerate() {
            let path = format!("spec.unallocated[{n}]");
            match spec.allocations.get(*ordinal as usize) {
                None => errors.push(path, format!("ordinal {ordinal} is outside the block")),
                Some(Some(_)) => errors.push(
                    path,
                    format!("ordinal {ordinal} is listed free but is allocated"),
                ),
                Some(None) if !seen.insert(*ordinal) => {
                    errors.push(path, format!("ordinal {ordinal} is listed twice"))
                }
                Some(None) => {}
            }
        }
        let free = spec.allocations.iter().filter(|a| a.is_none()).count();
        if seen.len() == spec.unallocated.len() && free != spec.unallocated.len() {
            errors.push(
                "spec.unallocated",
                format!(
                    "lists {} free ordinals but {free} are free in allocations",
                    spec.unallocated.len()
                ),
            );
        }
        for key in spec.sequence_number_for_allocation.keys() {
            if key
                .parse::<usize>()
                .map_or(true, |o| o >= spec.allocations.len())
            {
                errors.push(
                    format!("spec.sequenceNumberForAllocation[{key}]"),
                    "key must be an ordinal of the block",
                );
            }
        }
        errors.into_result()
    }
}

impl Validate for BlockAffinity {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_cidr(&mut errors, "spec.cidr", &self.spec.cidr);
        check_not_empty(&mut errors, "spec.node", &self.spec.node, "the node name");
        errors.into_result()
    }
}

impl Validate for IPAMHandle {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_not_empty(
            &mut errors,
            "spec.handleID",
            &self.spec.handle_id,
            "e.g. k8s-pod-network.<containerID>",
        );
        for cidr in self.spec.block.keys() {
            check_cidr(&mut errors, &format!("spec.block[{cidr}]"), cidr);
        }
        errors.into_result()
    }
}

impl Validate for IPAMConfig {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Some(name) = &self.metadata.name
            && name != IPAM_CONFIG_NAME
        {
            errors.push(
                "metadata.name",
                format!("{name:?}: the IPAMConfig must be named {IPAM_CONFIG_NAME:?}"),
            );
        }
        errors.into_result()
    }
}

// ---------------------------------------------------------------------------------------------
// BGP

impl Validate for BGPConfiguration {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Some(name) = &self.metadata.name
            && name != DEFAULT_BGP_CONFIGURATION_NAME
            && name
                .strip_prefix(NODE_BGP_CONFIGURATION_PREFIX)
                .is_none_or(str::is_empty)
        {
            errors.push(
                "metadata.name",
                format!("{name:?}: must be \"default\" (cluster-wide) or \"node.<nodename>\""),
            );
        }
        let spec = &self.spec;
        check_as_number(&mut errors, "spec.asNumber", spec.as_number);
        if spec.listen_port == Some(0) {
            errors.push(
                "spec.listenPort",
                "0 is not a port (1..=65535; BGP uses 179)",
            );
        }
        for (field, blocks) in [
            ("serviceClusterIPs", &spec.service_cluster_ips),
            ("serviceExternalIPs", &spec.service_external_ips),
            ("serviceLoadBalancerIPs", &spec.service_load_balancer_ips),
        ] {
            for (n, block) in blocks.iter().enumerate() {
                check_cidr(&mut errors, &format!("spec.{field}[{n}].cidr"), &block.cidr);
            }
        }
        let mut names = BTreeSet::new();
        for (n, c) in spec.communities.iter().enumerate() {
            check_not_empty(
                &mut errors,
                &format!("spec.communities[{n}].name"),
                &c.name,
                "a name to use in prefixAdvertisements",
            );
            if !names.insert(c.name.as_str()) {
                errors.push(
                    format!("spec.communities[{n}].name"),
                    format!("{:?} is defined twice", c.name),
                );
            }
            check_community(
                &mut errors,
                &format!("spec.communities[{n}].value"),
                &c.value,
            );
        }
        for (n, adv) in spec.prefix_advertisements.iter().enumerate() {
            check_cidr(
                &mut errors,
                &format!("spec.prefixAdvertisements[{n}].cidr"),
                &adv.cidr,
            );
            for (m, c) in adv.communities.iter().enumerate() {
                if !names.contains(c.as_str()) && !is_community(c) {
                    errors.push(
                        format!("spec.prefixAdvertisements[{n}].communities[{m}]"),
                        format!("{c:?} is neither a name from spec.communities nor a community value (aa:nn or aa:nn:mm)"),
                    );
                }
            }
        }
        check_timers(&mut errors, "spec", spec.keepalive_time, spec.hold_time);
        check_non_negative(
            &mut errors,
            "spec.gracefulRestartTime",
            spec.graceful_restart_time,
        );
        check_non_negative(
            &mut errors,
            "spec.nodeMeshMaxRestartTime",
            spec.node_mesh_max_restart_time,
        );
        check_secret(
            &mut errors,
            "spec.nodeMeshPassword",
            &spec.node_mesh_password,
        );
        errors.into_result()
    }
}

impl Validate for BGPPeer {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let spec = &self.spec;
        if !spec.node.is_empty() && !spec.node_selector.is_empty() {
            errors.push(
                "spec.nodeSelector",
                "set either node or nodeSelector, not both",
            );
        }
        check_selector(&mut errors, "spec.nodeSelector", &spec.node_selector);
        check_selector(&mut errors, "spec.peerSelector", &spec.peer_selector);
        match (spec.peer_ip.is_empty(), spec.peer_selector.is_empty()) {
            (true, true) => errors.push(
                "spec.peerIP",
                "set peerIP (an external router) or peerSelector (Reef nodes)",
            ),
            (false, false) => errors.push(
                "spec.peerSelector",
                "set either peerIP or peerSelector, not both",
            ),
            _ => {}
        }
        if !spec.peer_ip.is_empty() {
            if let Err(e) = parse_peer_ip(&spec.peer_ip) {
                errors.push("spec.peerIP", e.to_string());
            }
            if spec.as_number.is_none() {
                errors.push(
                    "spec.asNumber",
                    "is required with peerIP (the peer's AS, e.g. 65001)",
                );
            }
        }
        check_as_number(&mut errors, "spec.asNumber", spec.as_number);
        check_secret(&mut errors, "spec.password", &spec.password);
        check_timers(&mut errors, "spec", spec.keepalive_time, spec.hold_time);
        check_non_negative(&mut errors, "spec.maxRestartTime", spec.max_restart_time);
        if spec.ttl_security == Some(0) {
            errors.push("spec.ttlSecurity", "0 hops is not valid (1..=255; 1 for a directly connected peer); omit it to disable GTSM");
        }
        for (n, f) in spec.filters.iter().enumerate() {
            check_not_empty(
                &mut errors,
                &format!("spec.filters[{n}]"),
                f,
                "a BGPFilter name",
            );
        }
        if let Some(bfd) = &spec.bfd {
            if bfd.multiplier == Some(0) {
                errors.push(
                    "spec.bfd.multiplier",
                    "0 is not valid (1..=255; 3 is usual)",
                );
            }
            for (field, d) in [("minRx", bfd.min_rx), ("minTx", bfd.min_tx)] {
                if d.is_some_and(|d| {
                    d.is_negative()
                        || std::time::Duration::from(d) < std::time::Duration::from_millis(1)
                }) {
                    errors.push(
                        format!("spec.bfd.{field}"),
                        "must be at least 1ms (300ms is the default)",
                    );
                }
            }
        }
        errors.into_result()
    }
}

fn check_filter_rule(errors: &mut ValidationErrors, path: &str, rule: &BGPFilterRule, v4: bool) {
    let max_len: u8 = if v4 { 32 } else { 128 };
    let family = if v4 { "IPv4" } else { "IPv6" };
    let net = if rule.cidr.is_empty() {
        None
    } else {
        check_cidr(errors, &format!("{path}.cidr"), &rule.cidr)
    };
    if let Some(net) = net
        && matches!(net, IpNet::V4(_)) != v4
    {
        errors.push(
            format!("{path}.cidr"),
            format!(
                "{:?} is not an {family} CIDR (this rule list is for {family})",
                rule.cidr
            ),
        );
    }
    match (rule.cidr.is_empty(), rule.match_operator.is_some()) {
        (true, true) => errors.push(
            format!("{path}.cidr"),
            "matchOperator needs a cidr to compare with",
        ),
        (false, false) => errors.push(
            format!("{path}.matchOperator"),
            "cidr needs a matchOperator (Equal, NotEqual, In, NotIn)",
        ),
        _ => {}
    }
    if let Some(pl) = &rule.prefix_length {
        let path = format!("{path}.prefixLength");
        for (bound, value) in [("min", pl.min), ("max", pl.max)] {
            if value.is_some_and(|v| v > max_len) {
                errors.push(
                    format!("{path}.{bound}"),
                    format!(
                        "{} is longer than an {family} prefix (0..={max_len})",
                        value.unwrap_or_default()
                    ),
                );
            }
        }
        if let (Some(min), Some(max)) = (pl.min, pl.max)
            && min > max
        {
            errors.push(&path, format!("min {min} is greater than max {max}"));
        }
        if !matches!(
            rule.match_operator,
            Some(MatchOperator::In | MatchOperator::NotIn)
        ) {
            errors.push(
                &path,
                "prefixLength only applies with matchOperator In or NotIn",
            );
        } else if let (Some(net), Some(min)) = (net, pl.min)
            && min < net.prefix_len()
        {
            errors.push(
                format!("{path}.min"),
                format!(
                    "{min} is shorter than the cidr's /{}: no route within it is that short",
                    net.prefix_len()
                ),
            );
        }
    }
    for (n, c) in rule.communities.iter().enumerate() {
        check_community(errors, &format!("{path}.communities[{n}]"), c);
    }
    check_as_path(
        errors,
        &format!("{path}.asPathPrefix"),
        &rule.as_path_prefix,
    );
    for (n, op) in rule.operations.iter().enumerate() {
        let path = format!("{path}.operations[{n}]");
        let set = [
            op.add_community.is_some(),
            op.prepend_as_path.is_some(),
            op.set_local_pref.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            errors.push(
                &path,
                "set exactly one of addCommunity, prependASPath, setLocalPref",
            );
        }
        if let Some(c) = &op.add_community {
            check_community(errors, &format!("{path}.addCommunity.value"), &c.value);
        }
        if let Some(p) = &op.prepend_as_path {
            if p.prefix.is_empty() {
                errors.push(
                    format!("{path}.prependASPath.prefix"),
                    "must list at least one AS number",
                );
            }
            check_as_path(errors, &format!("{path}.prependASPath.prefix"), &p.prefix);
        }
    }
}

fn check_as_path(errors: &mut ValidationErrors, path: &str, asns: &[u32]) {
    for (n, asn) in asns.iter().enumerate() {
        check_as_number(errors, &format!("{path}[{n}]"), Some(*asn));
    }
}

impl Validate for BGPFilter {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let spec = &self.spec;
        for (field, rules, v4) in [
            ("importV4", &spec.import_v4, true),
            ("exportV4", &spec.export_v4, true),
            ("importV6", &spec.import_v6, false),
            ("exportV6", &spec.export_v6, false),
        ] {
            for (n, rule) in rules.iter().enumerate() {
                check_filter_rule(&mut errors, &format!("spec.{field}[{n}]"), rule, v4);
            }
        }
        errors.into_result()
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

impl Validate for ReefNode {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Some(bgp) = &self.spec.bgp {
            if let Some(a) = &bgp.ipv4_address {
                check_interface_address(&mut errors, "spec.bgp.ipv4Address", a, true);
            }
            if let Some(a) = &bgp.ipv6_address {
                check_interface_address(&mut errors, "spec.bgp.ipv6Address", a, false);
            }
            check_as_number(&mut errors, "spec.bgp.asNumber", bgp.as_number);
            if let Some(id) = &bgp.route_reflector_cluster_id
                && id.parse::<Ipv4Addr>().is_err()
            {
                errors.push(
                    "spec.bgp.routeReflectorClusterID",
                    format!(
                        "{id:?} is not a cluster id (expected an IPv4 address, e.g. 244.0.0.1)"
                    ),
                );
            }
        }
        if let Some(vxlan) = &self.spec.vxlan {
            if let Some(a) = &vxlan.tunnel_address
                && a.parse::<IpAddr>().is_err()
            {
                errors.push(
                    "spec.vxlan.tunnelAddress",
                    format!("{a:?} is not an IP address (expected e.g. 10.244.0.1)"),
                );
            }
            if let Some(mac) = &vxlan.tunnel_mac {
                check_mac(&mut errors, "spec.vxlan.tunnelMAC", mac);
            }
        }
        errors.into_result()
    }
}

// ---------------------------------------------------------------------------------------------
// Policy

fn check_ports(errors: &mut ValidationErrors, path: &str, ports: &[Port]) {
    for (n, port) in ports.iter().enumerate() {
        let path = format!("{path}[{n}]");
        match port {
            Port::Named(name) if !is_port_name(name) => errors.push(
                path,
                format!("{name:?} is not a port (expected a number, a range like 8000:8080, or a port name of up to 15 lowercase letters, digits and '-')"),
            ),
            Port::Named(_) => {}
            Port::Number(_) | Port::Range(..) if port.range().is_some_and(|(min, max)| min.max(max) > 65535) => {
                errors.push(path, format!("{port} is not a port number (0..=65535) or range of them"))
            }
            Port::Range(min, max) if min > max => errors.push(path, format!("range {min}:{max} is empty (write it as {max}:{min})")),
            _ => {}
        }
    }
}

fn check_entity(
    errors: &mut ValidationErrors,
    path: &str,
    entity: &EntityRule,
    ip_version: Option<u8>,
    ports_ok: bool,
) {
    check_selector(errors, &format!("{path}.selector"), &entity.selector);
    check_selector(errors, &format!("{path}.notSelector"), &entity.not_selector);
    check_selector(
        errors,
        &format!("{path}.namespaceSelector"),
        &entity.namespace_selector,
    );
    for (field, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
        for (n, text) in nets.iter().enumerate() {
            let p = format!("{path}.{field}[{n}]");
            if let Some(net) = check_net(errors, &p, text) {
                let version = if matches!(net, IpNet::V4(_)) { 4 } else { 6 };
                if ip_version.is_some_and(|v| v != version) {
                    errors.push(
                        p,
                        format!(
                            "{text:?} is IPv{version} but the rule has ipVersion {}",
                            ip_version.unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
    check_ports(errors, &format!("{path}.ports"), &entity.ports);
    check_ports(errors, &format!("{path}.notPorts"), &entity.not_ports);
    if !ports_ok && (!entity.ports.is_empty() || !entity.not_ports.is_empty()) {
        errors.push(
            format!("{path}.ports"),
            "ports need protocol TCP, UDP, SCTP or UDPLite",
        );
    }
}

fn check_protocol(errors: &mut ValidationErrors, path: &str, protocol: &Option<Protocol>) {
    if let Some(p) = protocol
        && p.number().is_none()
    {
        errors.push(path, format!("{p:?} is not a protocol (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite, or a number 0..=255)"));
    }
}

fn check_rule(errors: &mut ValidationErrors, path: &str, rule: &Rule) {
    if rule.ip_version.is_some_and(|v| v != 4 && v != 6) {
        errors.push(format!("{path}.ipVersion"), "must be 4 or 6");
    }
    check_protocol(errors, &format!("{path}.protocol"), &rule.protocol);
    check_protocol(errors, &format!("{path}.notProtocol"), &rule.not_protocol);
    let is_icmp = rule
        .protocol
        .as_ref()
        .and_then(Protocol::number)
        .is_some_and(|n| n == 1 || n == 58);
    for (field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        if let Some(icmp) = icmp {
            if !is_icmp {
                errors.push(format!("{path}.{field}"), "needs protocol ICMP or ICMPv6");
            }
            if icmp.code.is_some() && icmp.type_.is_none() {
                errors.push(format!("{path}.{field}.code"), "needs a type");
            }
        }
    }
    let ports_ok = rule.protocol.as_ref().is_some_and(Protocol::has_ports);
    check_entity(
        errors,
        &format!("{path}.source"),
        &rule.source,
        rule.ip_version,
        ports_ok,
    );
    check_entity(
        errors,
        &format!("{path}.destination"),
        &rule.destination,
        rule.ip_version,
        ports_ok,
    );
}

fn check_policy(
    errors: &mut ValidationErrors,
    order: Option<f64>,
    selector: &str,
    types: &[PolicyType],
    ingress: &[Rule],
    egress: &[Rule],
    sa_selector: &str,
) {
    if order.is_some_and(|o| !o.is_finite()) {
        errors.push("spec.order", "must be a finite number");
    }
    check_selector(errors, "spec.selector", selector);
    check_selector(errors, "spec.serviceAccountSelector", sa_selector);
    let unique: HashSet<_> = types.iter().collect();
    if unique.len() != types.len() {
        errors.push("spec.types", "lists a type twice");
    }
    for (field, kind, rules) in [
        ("ingress", PolicyType::Ingress, ingress),
        ("egress", PolicyType::Egress, egress),
    ] {
        if !rules.is_empty() && !types.is_empty() && !types.contains(&kind) {
            errors.push(
                format!("spec.{field}"),
                format!(
                    "has rules but spec.types does not include {kind:?}, so they would never apply"
                ),
            );
        }
        for (n, rule) in rules.iter().enumerate() {
            check_rule(errors, &format!("spec.{field}[{n}]"), rule);
        }
    }
}

impl Validate for NetworkPolicy {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let s = &self.spec;
        check_policy(
            &mut errors,
            s.order,
            &s.selector,
            &s.types,
            &s.ingress,
            &s.egress,
            &s.service_account_selector,
        );
        errors.into_result()
    }
}

impl Validate for GlobalNetworkPolicy {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let s = &self.spec;
        check_policy(
            &mut errors,
            s.order,
            &s.selector,
            &s.types,
            &s.ingress,
            &s.egress,
            &s.service_account_selector,
        );
        check_selector(&mut errors, "spec.namespaceSelector", &s.namespace_selector);
        errors.into_result()
    }
}

impl Validate for WorkloadEndpoint {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let s = &self.spec;
        check_not_empty(
            &mut errors,
            "spec.node",
            &s.node,
            "the node hosting the workload",
        );
        if s.interface_name.is_empty() || s.interface_name.len() > 15 {
            errors.push(
                "spec.interfaceName",
                format!(
                    "{:?} is not an interface name (1 to 15 characters)",
                    s.interface_name
                ),
            );
        }
        if !s.mac.is_empty() {
            check_mac(&mut errors, "spec.mac", &s.mac);
        }
        for (n, text) in s.ip_networks.iter().enumerate() {
            check_net(&mut errors, &format!("spec.ipNetworks[{n}]"), text);
        }
        for (n, port) in s.ports.iter().enumerate() {
            let path = format!("spec.ports[{n}]");
            if !is_port_name(&port.name) {
                errors.push(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a port name (up to 15 lowercase letters, digits and '-')",
                        port.name
                    ),
                );
            }
            if !port.protocol.has_ports() {
                errors.push(
                    format!("{path}.protocol"),
                    format!("{} has no ports (TCP, UDP or SCTP)", port.protocol),
                );
            }
            if port.port == 0 {
                errors.push(format!("{path}.port"), "0 is not a port (1..=65535)");
            }
        }
        errors.into_result()
    }
}
