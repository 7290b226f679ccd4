//! nftables backend: everything lives in one table, `inet reef`.
//!
//! Layout: address sets per family (`<set>-4`, `<set>-6`), named-port sets (`address . protocol .
//! port`), one chain per policy and direction, one chain per distinct ordered policy list, and the
//! verdict maps `ingress` / `egress` (interface -> `goto` that list's chain). The base chains
//! (`forward`, `input`, `postrouting`) accept established traffic, send `reef*` traffic through the
//! maps, and drop traffic from `reef*` interfaces that are not in the `endpoints` set.
//!
//! Writes are `nft -f -` batches (atomic). The backend remembers what it wrote, so an update renders
//! only what [`Changes`] names; a resync reads `nft -j list table inet reef` and repairs the difference
//! (missing or extra set elements, map elements, chains, and chains whose rule count differs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use super::backend::{ACCEPT_MARK, BackendError, CLEAR_MARKS, FAILSAFE_TCP_PORTS, PASS_MARK};
use super::exec::Runner;
use super::model::{
    Changes, Family, PolicyProgram, PortRange, PortSetMember, RuleSpec, SetKind, SideMatch, Verdict,
};

/// The table's family and name.
pub const TABLE: &str = "inet reef";

/// A chain as written (its rules) or as read back (only how many rules it has).
#[derive(Clone, Debug, PartialEq, Eq)]
enum ChainBody {
    Lines(Vec<String>),
    Count(usize),
}

impl ChainBody {
    fn same_as(&self, desired: &[String]) -> bool {
        match self {
            ChainBody::Lines(lines) => lines == desired,
            ChainBody::Count(n) => *n == desired.len(),
        }
    }
}

/// What the table holds (or should hold), by object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TableState {
    /// Set name -> (declaration, elements as nft writes them).
    sets: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Map name -> (declaration, key -> verdict).
    maps: BTreeMap<String, (String, BTreeMap<String, String>)>,
    /// Chain name -> (declaration for base chains, body).
    chains: BTreeMap<String, (String, ChainBody)>,
}

/// The nftables policy backend for one network namespace.
pub struct NftBackend {
    runner: Runner,
    /// What we last wrote; `None` until the first resync (or after a failed write).
    written: Option<TableState>,
}

fn family_suffix(family: Family) -> &'static str {
    match family {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

fn set_name(set: &str, family: Family) -> String {
    format!("{set}-{}", family_suffix(family))
}

fn address_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// An address or prefix as nft prints it (a host prefix is a plain address).
fn net_element(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn port_element(member: &PortSetMember) -> String {
    format!("{} . {} . {}", member.0, member.1, member.2)
}

fn range_text(range: &PortRange) -> String {
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}-{}", range.first, range.last)
    }
}

/// Port alternatives of one side, each an nft expression (empty: no constraint).
fn port_alternatives(side: &SideMatch, direction: &str, family: Option<Family>) -> Vec<String> {
    if !side.has_port_alternatives() {
        return vec![String::new()];
    }
    let mut alternatives: Vec<String> = side
        .ports
        .iter()
        .map(|r| format!(" th {direction}port {}", range_text(r)))
        .collect();
    if let Some(family) = family {
        let address = if direction == "d" { "daddr" } else { "saddr" };
        for set in &side.named_port_sets {
            alternatives.push(format!(
                " {} {address} . meta l4proto . th {direction}port @{}",
                address_keyword(family),
                set_name(set, family)
            ));
        }
    }
    alternatives
}

fn side_matches(out: &mut String, side: &SideMatch, direction: &str, family: Option<Family>) {
    let address = if direction == "d" { "daddr" } else { "saddr" };
    if let Some(family) = family {
        let keyword = address_keyword(family);
        for set in &side.in_sets {
            let _ = write!(out, " {keyword} {address} @{}", set_name(set, family));
        }
        for set in &side.not_in_sets {
            let _ = write!(out, " {keyword} {address} != @{}", set_name(set, family));
        }
        for set in &side.not_named_port_sets {
            let _ = write!(
                out,
                " {keyword} {address} . meta l4proto . th {direction}port != @{}",
                set_name(set, family)
            );
        }
    }
    for range in &side.not_ports {
        let _ = write!(out, " th {direction}port != {}", range_text(range));
    }
}

fn verdict_text(rule: &RuleSpec) -> String {
    match rule.verdict {
        Verdict::Allow => format!("meta mark set meta mark | {ACCEPT_MARK:#010x} return"),
        Verdict::Pass => format!("meta mark set meta mark | {PASS_MARK:#010x} return"),
        Verdict::Deny => "drop".into(),
        Verdict::Log => format!("log prefix \"{}\"", rule.log_prefix),
    }
}

/// The nft rules of one policy rule (one per family using sets and per port alternative).
fn rule_lines(rule: &RuleSpec) -> Vec<String> {
    let uses_sets = [&rule.source, &rule.destination].iter().any(|s| {
        !s.in_sets.is_empty()
            || !s.not_in_sets.is_empty()
            || !s.named_port_sets.is_empty()
            || !s.not_named_port_sets.is_empty()
    });
    let families: Vec<Option<Family>> = match rule.family {
        Some(f) => vec![Some(f)],
        None if uses_sets => vec![Some(Family::V4), Some(Family::V6)],
        None => vec![None],
    };
    let mut lines = Vec::new();
    for family in families {
        let mut head = String::new();
        if let (Some(f), false) = (rule.family, uses_sets) {
            let _ = write!(
                head,
                " meta nfproto {}",
                if f == Family::V4 { "ipv4" } else { "ipv6" }
            );
        }
        if let Some(p) = rule.protocol {
            let _ = write!(head, " meta l4proto {p}");
        }
        if let Some(p) = rule.not_protocol {
            let _ = write!(head, " meta l4proto != {p}");
        }
        let icmp_keyword = if rule.protocol == Some(58) {
            "icmpv6"
        } else {
            "icmp"
        };
        if let Some(icmp) = rule.icmp {
            let _ = write!(head, " {icmp_keyword} type {}", icmp.type_);
            if let Some(code) = icmp.code {
                let _ = write!(head, " {icmp_keyword} code {code}");
            }
        }
        if let Some(icmp) = rule.not_icmp {
            let _ = write!(head, " {icmp_keyword} type != {}", icmp.type_);
        }
        side_matches(&mut head, &rule.source, "s", family);
        side_matches(&mut head, &rule.destination, "d", family);
        for source in port_alternatives(&rule.source, "s", family) {
            for destination in port_alternatives(&rule.destination, "d", family) {
                lines.push(
                    format!("{head}{source}{destination} {}", verdict_text(rule))
                        .trim()
                        .to_string(),
                );
            }
        }
    }
    lines
}

fn endpoint_chain_lines(policies: &[String]) -> Vec<String> {
    let mut lines = vec![format!("meta mark set meta mark & {CLEAR_MARKS:#010x}")];
    for policy in policies {
        lines.push(format!("jump {policy}"));
        lines.push(format!(
            "meta mark & {:#010x} != 0 return",
            ACCEPT_MARK | PASS_MARK
        ));
    }
    lines.push("drop".into());
    lines
}

const HOST_SET: &str = "type ipv4_addr;";
const HOST_SET6: &str = "type ipv6_addr;";

fn address_set_decl(kind: SetKind, family: Family) -> String {
    let base = if family == Family::V4 {
        HOST_SET
    } else {
        HOST_SET6
    };
    match kind {
        SetKind::Endpoints => base.to_string(),
        SetKind::Cidrs => format!("{base} flags interval;"),
    }
}

fn port_set_decl(family: Family) -> String {
    let address = if family == Family::V4 {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    format!("type {address} . inet_proto . inet_service;")
}

fn address_elements(program: &PolicyProgram, set: &str, family: Family) -> BTreeSet<String> {
    program.sets.get(set).map_or_else(BTreeSet::new, |s| {
        s.members
            .keys()
            .filter(|n| (family == Family::V4) == matches!(n, IpNet::V4(_)))
            .map(net_element)
            .collect()
    })
}

fn port_elements(program: &PolicyProgram, set: &str, family: Family) -> BTreeSet<String> {
    program.port_sets.get(set).map_or_else(BTreeSet::new, |s| {
        s.keys()
            .filter(|m| Family::of(&m.0) == family)
            .map(port_element)
            .collect()
    })
}

fn nat_elements(nets: &[IpNet], family: Family) -> BTreeSet<String> {
    nets.iter()
        .filter(|n| (family == Family::V4) == matches!(n, IpNet::V4(_)))
        .map(net_element)
        .collect()
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// The whole desired table.
fn desired_state(program: &PolicyProgram) -> TableState {
    let mut state = TableState::default();
    for (name, set) in &program.sets {
        for family in [Family::V4, Family::V6] {
            state.sets.insert(
                set_name(name, family),
                (
                    address_set_decl(set.kind, family),
                    address_elements(program, name, family),
                ),
            );
        }
    }
    for name in program.port_sets.keys() {
        for family in [Family::V4, Family::V6] {
            state.sets.insert(
                set_name(name, family),
                (port_set_decl(family), port_elements(program, name, family)),
            );
        }
    }
    state.sets.insert(
        "endpoints".into(),
        (
            "type ifname;".into(),
            program.interfaces.iter().cloned().collect(),
        ),
    );
    state.sets.insert(
        "failsafe-tcp".into(),
        (
            "type inet_service;".into(),
            FAILSAFE_TCP_PORTS.iter().map(u16::to_string).collect(),
        ),
    );
    for (name, nets) in [
        ("nat-out", &program.nat.masquerade),
        ("pools", &program.nat.pools),
    ] {
        for family in [Family::V4, Family::V6] {
            state.sets.insert(
                set_name(name, family),
                (
                    address_set_decl(SetKind::Cidrs, family),
                    nat_elements(nets, family),
                ),
            );
        }
    }
    for (map, dispatch) in [("ingress", &program.ingress), ("egress", &program.egress)] {
        let entries = dispatch
            .iter()
            .map(|(interface, chain)| (interface.clone(), format!("goto {chain}")))
            .collect();
        state
            .maps
            .insert(map.into(), ("type ifname : verdict;".into(), entries));
    }
    for (name, rules) in &program.policy_chains {
        let lines = rules.iter().flat_map(rule_lines).collect();
        state
            .chains
            .insert(name.clone(), (String::new(), ChainBody::Lines(lines)));
    }
    for (name, chain) in &program.endpoint_chains {
        let lines = endpoint_chain_lines(&chain.policies);
        state
            .chains
            .insert(name.clone(), (String::new(), ChainBody::Lines(lines)));
    }
    for (name, decl, lines) in base_chains() {
        state
            .chains
            .insert(name.into(), (decl.into(), ChainBody::Lines(lines)));
    }
    state
}

/// The fixed chains: hooks, dispatch and the NAT rule.
fn base_chains() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "forward",
            "type filter hook forward priority filter; policy accept;",
            lines(&[
                "ct state established,related accept",
                "ct state invalid drop",
                "iifname \"reef*\" jump from-endpoint",
                "oifname \"reef*\" jump to-endpoint",
            ]),
        ),
        (
            "input",
            "type filter hook input priority filter; policy accept;",
            lines(&[
                "ct state established,related accept",
                "iifname \"reef*\" meta l4proto ipv6-icmp accept",
                "iifname \"reef*\" tcp dport @failsafe-tcp accept",
                "iifname \"reef*\" jump from-endpoint",
            ]),
        ),
        (
            "from-endpoint",
            "",
            lines(&["iifname vmap @egress", "iifname @endpoints return", "drop"]),
        ),
        (
            "to-endpoint",
            "",
            lines(&["oifname vmap @ingress", "oifname @endpoints return", "drop"]),
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            lines(&[
                "ip saddr @nat-out-4 ip daddr != @pools-4 masquerade",
                "ip6 saddr @nat-out-6 ip6 daddr != @pools-6 masquerade",
            ]),
        ),
    ]
}

/// A batch in three phases: creations and additions, dispatch changes, then removals (so nothing
/// is removed while still referenced).
#[derive(Default)]
struct Batch {
    create: String,
    rules: String,
    dispatch: String,
    remove_chains: String,
    remove_sets: String,
    operations: usize,
}

impl Batch {
    fn text(&self) -> String {
        format!(
            "add table {TABLE}\n{}{}{}{}{}",
            self.create, self.rules, self.dispatch, self.remove_chains, self.remove_sets
        )
    }

    fn elements(out: &mut String, verb: &str, set: &str, elements: &[&String]) {
        for chunk in elements.chunks(4096) {
            let list: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(
                out,
                "{verb} element {TABLE} {set} {{ {} }}",
                list.join(", ")
            );
        }
    }

    fn sync_set(
        &mut self,
        written: Option<&(String, BTreeSet<String>)>,
        name: &str,
        desired: &(String, BTreeSet<String>),
    ) {
        let quote = name == "endpoints";
        let render = |e: &String| if quote { quoted(e) } else { e.clone() };
        let (decl, elements) = desired;
        let (add, remove): (Vec<String>, Vec<String>) = match written {
            Some((_, have)) => (
                elements.difference(have).map(render).collect(),
                have.difference(elements).map(render).collect(),
            ),
            None => {
                let _ = writeln!(self.create, "add set {TABLE} {name} {{ {decl} }}");
                self.operations += 1;
                // A set created now may still hold elements from before we knew it: start clean.
                let _ = writeln!(self.create, "flush set {TABLE} {name}");
                (elements.iter().map(render).collect(), Vec::new())
            }
        };
        self.operations += add.len() + remove.len();
        Batch::elements(
            &mut self.create,
            "add",
            name,
            &add.iter().collect::<Vec<_>>(),
        );
        Batch::elements(
            &mut self.create,
            "delete",
            name,
            &remove.iter().collect::<Vec<_>>(),
        );
    }

    fn sync_chain(
        &mut self,
        written: Option<&(String, ChainBody)>,
        name: &str,
        decl: &str,
        lines: &[String],
    ) {
        match written {
            Some((_, body)) if body.same_as(lines) => return,
            Some(_) => {
                let _ = writeln!(self.rules, "flush chain {TABLE} {name}");
            }
            None => {
                if decl.is_empty() {
                    let _ = writeln!(self.create, "add chain {TABLE} {name}");
                } else {
                    let _ = writeln!(self.create, "add chain {TABLE} {name} {{ {decl} }}");
                }
                let _ = writeln!(self.rules, "flush chain {TABLE} {name}");
            }
        }
        self.operations += 1 + lines.len();
        for line in lines {
            let _ = writeln!(self.rules, "add rule {TABLE} {name} {line}");
        }
    }

    fn sync_map(
        &mut self,
        written: Option<&(String, BTreeMap<String, String>)>,
        name: &str,
        desired: &(String, BTreeMap<String, String>),
    ) {
        let (decl, entries) = desired;
        let empty = BTreeMap::new();
        let have = match written {
            Some((_, have)) => have,
            None => {
                let _ = writeln!(self.create, "add map {TABLE} {name} {{ {decl} }}");
                let _ = writeln!(self.create, "flush map {TABLE} {name}");
                &empty
            }
        };
        for (key, verdict) in have {
            if entries.get(key) != Some(verdict) {
                let _ = writeln!(
                    self.dispatch,
                    "delete element {TABLE} {name} {{ {} }}",
                    quoted(key)
                );
                self.operations += 1;
            }
        }
        for (key, verdict) in entries {
            if have.get(key) != Some(verdict) {
                let _ = writeln!(
                    self.dispatch,
                    "add element {TABLE} {name} {{ {} : {verdict} }}",
                    quoted(key)
                );
                self.operations += 1;
            }
        }
    }

    fn remove_chain(&mut self, name: &str) {
        let _ = writeln!(self.remove_chains, "flush chain {TABLE} {name}");
        let _ = writeln!(self.remove_chains, "delete chain {TABLE} {name}");
        self.operations += 1;
    }

    fn remove_set(&mut self, name: &str) {
        let _ = writeln!(self.remove_sets, "delete set {TABLE} {name}");
        self.operations += 1;
    }
}

/// Compares `written` with the whole `desired` table, into `batch`.
fn full_diff(batch: &mut Batch, written: &TableState, desired: &TableState) {
    for (name, set) in &desired.sets {
        batch.sync_set(written.sets.get(name), name, set);
    }
    for (name, map) in &desired.maps {
        batch.sync_map(written.maps.get(name), name, map);
    }
    for (name, (decl, body)) in &desired.chains {
        if let ChainBody::Lines(lines) = body {
            batch.sync_chain(written.chains.get(name), name, decl, lines);
        }
    }
    for name in written
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
    {
        batch.remove_chain(name);
    }
    for name in written
        .maps
        .keys()
        .filter(|n| !desired.maps.contains_key(*n))
    {
        let _ = writeln!(batch.remove_sets, "delete map {TABLE} {name}");
    }
    for name in written
        .sets
        .keys()
        .filter(|n| !desired.sets.contains_key(*n))
    {
        batch.remove_set(name);
    }
}

impl NftBackend {
    /// A backend writing into the namespace `runner` runs in. Nothing is written until the first
    /// [`NftBackend::sync`].
    pub fn new(runner: Runner) -> NftBackend {
        NftBackend {
            runner,
            written: None,
        }
    }

    /// Whether `nft` works here (for backend detection).
    pub fn available(runner: &Runner) -> bool {
        runner.run("nft", &["list", "tables"], b"").is_ok()
    }

    /// Brings the table to `program`: only what `changes` names when we know what we wrote, else a
    /// resync. Returns the number of nft operations written.
    pub fn sync(
        &mut self,
        program: &PolicyProgram,
        changes: &Changes,
    ) -> Result<usize, BackendError> {
        let Some(written) = self.written.as_ref() else {
            return self.resync(program);
        };
        if changes.all {
            let desired = desired_state(program);
            let mut batch = Batch::default();
            full_diff(&mut batch, written, &desired);
            return self.write(batch, desired);
        }
        let mut batch = Batch::default();
        let mut update = TableState::default();
        for name in &changes.sets {
            let Some(set) = program.sets.get(name) else {
                continue;
            };
            for family in [Family::V4, Family::V6] {
                let full = set_name(name, family);
                let desired = (
                    address_set_decl(set.kind, family),
                    address_elements(program, name, family),
                );
                batch.sync_set(written.sets.get(&full), &full, &desired);
                update.sets.insert(full, desired);
            }
        }
        for name in &changes.port_sets {
            for family in [Family::V4, Family::V6] {
                let full = set_name(name, family);
                let desired = (port_set_decl(family), port_elements(program, name, family));
                batch.sync_set(written.sets.get(&full), &full, &desired);
                update.sets.insert(full, desired);
            }
        }
        let mut removed_chains = Vec::new();
        for name in &changes.endpoint_chains {
            match program.endpoint_chains.get(name) {
                Some(chain) => {
                    let lines = endpoint_chain_lines(&chain.policies);
                    batch.sync_chain(written.chains.get(name), name, "", &lines);
                    update
                        .chains
                        .insert(name.clone(), (String::new(), ChainBody::Lines(lines)));
                }
                None if written.chains.contains_key(name) => {
                    batch.remove_chain(name);
                    removed_chains.push(name.clone());
                }
                None => {}
            }
        }
        // Interfaces: only the named set and map elements can differ; nothing is cloned whole.
        let mut interface_updates: Vec<(String, bool, [Option<String>; 2])> = Vec::new();
        for interface in &changes.interfaces {
            let want = program.interfaces.contains(interface);
            let had = written
                .sets
                .get("endpoints")
                .is_some_and(|(_, e)| e.contains(interface));
            let element = [quoted(interface)];
            if want && !had {
                Batch::elements(
                    &mut batch.create,
                    "add",
                    "endpoints",
                    &element.iter().collect::<Vec<_>>(),
                );
            } else if had && !want {
                Batch::elements(
                    &mut batch.create,
                    "delete",
                    "endpoints",
                    &element.iter().collect::<Vec<_>>(),
                );
            }
            batch.operations += usize::from(want != had);
            let mut verdicts: [Option<String>; 2] = Default::default();
            for (n, (map, dispatch)) in [("ingress", &program.ingress), ("egress", &program.egress)]
                .into_iter()
                .enumerate()
            {
                let wanted = dispatch.get(interface).map(|chain| format!("goto {chain}"));
                let current = written.maps.get(map).and_then(|(_, m)| m.get(interface));
                if current != wanted.as_ref() {
                    if current.is_some() {
                        let _ = writeln!(
                            batch.dispatch,
                            "delete element {TABLE} {map} {{ {} }}",
                            element[0]
                        );
                    }
                    if let Some(verdict) = &wanted {
                        let _ = writeln!(
                            batch.dispatch,
                            "add element {TABLE} {map} {{ {} : {verdict} }}",
                            element[0]
                        );
                    }
                    batch.operations += 1;
                }
                verdicts[n] = wanted;
            }
            interface_updates.push((interface.clone(), want, verdicts));
        }
        if batch.operations == 0 {
            return Ok(0);
        }
        let operations = batch.operations;
        let result = self
            .runner
            .run("nft", &["-f", "-"], batch.text().as_bytes());
        let Some(written) = self.written.as_mut() else {
            return Ok(operations);
        };
        match result {
            Ok(_) => {
                written.sets.extend(update.sets);
                written.chains.extend(update.chains);
                for (interface, known, verdicts) in interface_updates {
                    if let Some((_, set)) = written.sets.get_mut("endpoints") {
                        if known {
                            set.insert(interface.clone());
                        } else {
                            set.remove(&interface);
                        }
                    }
                    for (map, verdict) in ["ingress", "egress"].into_iter().zip(verdicts) {
                        if let Some((_, entries)) = written.maps.get_mut(map) {
                            match verdict {
                                Some(v) => entries.insert(interface.clone(), v),
                                None => entries.remove(&interface),
                            };
                        }
                    }
                }
                for name in removed_chains {
                    written.chains.remove(&name);
                }
                Ok(operations)
            }
            Err(e) => {
                self.written = None;
                Err(BackendError::Command(e))
            }
        }
    }

    fn write(&mut self, batch: Batch, desired: TableState) -> Result<usize, BackendError> {
        let operations = batch.operations;
        if operations > 0
            && let Err(e) = self
                .runner
                .run("nft", &["-f", "-"], batch.text().as_bytes())
        {
            self.written = None;
            return Err(BackendError::Command(e));
        }
        self.written = Some(desired);
        Ok(operations)
    }

    /// Reads the table back and repairs every difference from `program`. Returns the number of
    /// operations written (0 when the kernel already matched).
    pub fn resync(&mut self, program: &PolicyProgram) -> Result<usize, BackendError> {
        let actual = self.read()?;
        let desired = desired_state(program);
        let mut batch = Batch::default();
        full_diff(&mut batch, &actual, &desired);
        self.write(batch, desired)
    }

    /// Removes the table (and so every rule, set and NAT rule of ours).
    pub fn remove(&mut self) -> Result<(), BackendError> {
        self.written = None;
        match self
            .runner
            .run("nft", &["delete", "table", "inet", "reef"], b"")
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("No such file") => Ok(()),
            Err(e) => Err(BackendError::Command(e)),
        }
    }

    /// The batch a full program would write into an empty namespace (for benchmarks and debugging).
    pub fn render_full(program: &PolicyProgram) -> String {
        let mut batch = Batch::default();
        full_diff(&mut batch, &TableState::default(), &desired_state(program));
        batch.text()
    }

    /// What the table holds now, from `nft -j list table inet reef`.
    fn read(&self) -> Result<TableState, BackendError> {
        let text = match self
            .runner
            .run("nft", &["-j", "list", "table", "inet", "reef"], b"")
        {
            Ok(text) => text,
            Err(e) if e.to_string().contains("No such file") => return Ok(TableState::default()),
            Err(e) => return Err(BackendError::Command(e)),
        };
        parse_table(&text)
    }
}

/// An element of `nft -j` output as we write it.
fn json_element(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            if let Some(prefix) = o.get("prefix") {
                let address = prefix.get("addr")?.as_str()?;
                let len = prefix.get("len")?.as_u64()?;
                return Some(format!("{address}/{len}"));
            }
            if let Some(Value::Array(parts)) = o.get("concat") {
                let parts: Option<Vec<String>> = parts.iter().map(json_element).collect();
                let parts: Vec<String> = parts?.into_iter().map(|p| protocol_number(&p)).collect();
                return Some(parts.join(" . "));
            }
            if let Some(element) = o.get("elem") {
                return json_element(element.get("val")?);
            }
            None
        }
        _ => None,
    }
}

/// nft prints protocols by name inside concatenations; we write numbers.
fn protocol_number(part: &str) -> String {
    match part {
        "tcp" => "6".into(),
        "udp" => "17".into(),
        "sctp" => "132".into(),
        "udplite" => "136".into(),
        other => other.to_string(),
    }
}

fn json_verdict(value: &serde_json::Value) -> Option<String> {
    let object = value.as_object()?;
    for verb in ["goto", "jump"] {
        if let Some(target) = object.get(verb) {
            return Some(format!("{verb} {}", target.get("target")?.as_str()?));
        }
    }
    object.keys().next().cloned()
}

fn parse_table(text: &str) -> Result<TableState, BackendError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BackendError::Read(format!("nft -j: {e}")))?;
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or_else(|| BackendError::Read("nft -j: no nftables array".into()))?;
    let mut state = TableState::default();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            let Some(name) = set.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            let elements = set
                .get("elem")
                .and_then(|e| e.as_array())
                .map(|list| list.iter().filter_map(json_element).collect())
                .unwrap_or_default();
            state
                .sets
                .insert(name.to_string(), (String::new(), elements));
        } else if let Some(map) = item.get("map") {
            let Some(name) = map.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            let mut entries = BTreeMap::new();
            for pair in map
                .get("elem")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
            {
                if let Some([key, verdict]) = pair.as_array().map(Vec::as_slice)
                    && let (Some(key), Some(verdict)) = (json_element(key), json_verdict(verdict))
                {
                    entries.insert(key, verdict);
                }
            }
            state
                .maps
                .insert(name.to_string(), (String::new(), entries));
        } else if let Some(chain) = item.get("chain") {
            if let Some(name) = chain.get("name").and_then(|n| n.as_str()) {
                counts.entry(name.to_string()).or_insert(0);
            }
        } else if let Some(rule) = item.get("rule")
            && let Some(name) = rule.get("chain").and_then(|n| n.as_str())
        {
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    state.chains = counts
        .into_iter()
        .map(|(name, n)| (name, (String::new(), ChainBody::Count(n))))
        .collect();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{IcmpMatch, PortRange};

    #[test]
    fn rules_render_per_family_and_port_alternative() {
        let mut rule = RuleSpec::any(Verdict::Allow);
        rule.protocol = Some(6);
        rule.source.in_sets.push("s-1".into());
        rule.destination.ports = vec![
            PortRange {
                first: 80,
                last: 80,
            },
            PortRange {
                first: 8000,
                last: 8080,
            },
        ];
        rule.destination.named_port_sets.push("n-1".into());
        let lines = rule_lines(&rule);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert_eq!(
            lines[0],
            "meta l4proto 6 ip saddr @s-1-4 th dport 80 meta mark set meta mark | 0x02000000 return"
        );
        assert_eq!(
            lines[5],
            "meta l4proto 6 ip6 saddr @s-1-6 ip6 daddr . meta l4proto . th dport @n-1-6 meta mark set meta mark | 0x02000000 return"
        );
        let mut icmp = RuleSpec::any(Verdict::Deny);
        icmp.protocol = Some(1);
        icmp.icmp = Some(IcmpMatch {
            type_: 8,
            code: Some(0),
        });
        assert_eq!(
            rule_lines(&icmp),
            vec!["meta l4proto 1 icmp type 8 icmp code 0 drop"]
        );
    }

    #[test]
    fn json_listing_reads_back_as_written() {
        let text = r#"{"nftables": [{"metainfo": {}},
          {"set": {"family": "inet", "name": "s-1-4", "table": "reef", "type": "ipv4_addr", "elem": ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}]}},
          {"set": {"family": "inet", "name": "n-1-4", "table": "reef", "type": ["ipv4_addr", "inet_proto", "inet_service"], "elem": [{"concat": ["10.0.0.1", "tcp", 80]}]}},
          {"map": {"family": "inet", "name": "egress", "table": "reef", "type": "ifname", "map": "verdict", "elem": [["reefabc", {"goto": {"target": "e-1"}}]]}},
          {"chain": {"family": "inet", "table": "reef", "name": "e-1"}},
          {"rule": {"family": "inet", "table": "reef", "chain": "e-1", "expr": []}},
          {"rule": {"family": "inet", "table": "reef", "chain": "e-1", "expr": []}}]}"#;
        let state = parse_table(text).unwrap();
        assert_eq!(
            state.sets["s-1-4"].1,
            BTreeSet::from(["10.0.0.1".to_string(), "10.1.0.0/16".to_string()])
        );
        assert_eq!(
            state.sets["n-1-4"].1,
            BTreeSet::from(["10.0.0.1 . 6 . 80".to_string()])
        );
        assert_eq!(state.maps["egress"].1["reefabc"], "goto e-1");
        assert_eq!(state.chains["e-1"].1, ChainBody::Count(2));
    }
}
