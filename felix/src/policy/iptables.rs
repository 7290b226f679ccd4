//! iptables backend: the same program as iptables-restore chains (prefixed `reef-`) and ipsets
//! (`reef-<set>-4|6`), for hosts without nftables. Dispatch is a chain of `-i IF -g CHAIN` rules (no
//! verdict maps in iptables); policy and endpoint chains and sets are the nftables backend's.
//! Hooks are single jumps from FORWARD, INPUT and nat POSTROUTING into our chains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use super::backend::{ACCEPT_MARK, BackendError, CLEAR_MARKS, FAILSAFE_TCP_PORTS, PASS_MARK};
use super::exec::Runner;
use super::model::{Changes, Family, PolicyProgram, PortRange, RuleSpec, SideMatch, Verdict};

const PREFIX: &str = "reef-";

/// (table, chain) -> rules (as `-A` arguments after the chain name), or a count when read back.
type Chains = BTreeMap<(&'static str, String), Body>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Lines(Vec<String>),
    Count(usize),
}

#[derive(Clone, Debug, Default)]
struct State {
    /// ipset name -> (create arguments, members).
    sets: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Per family (v4, v6).
    chains: [Chains; 2],
}

/// The iptables policy backend for one network namespace.
pub struct IptablesBackend {
    runner: Runner,
    written: Option<State>,
}

fn index(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn ipset_name(set: &str, family: Family) -> String {
    format!(
        "{PREFIX}{set}-{}",
        if family == Family::V4 { "4" } else { "6" }
    )
}

fn chain_name(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn protocol_word(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

fn ports_text(ranges: &[PortRange]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}:{}", r.first, r.last)
            }
        })
        .collect();
    parts.join(",")
}

fn side_args(out: &mut String, side: &SideMatch, dir: &str, family: Family) {
    let flag = if dir == "d" { "dst" } else { "src" };
    for set in &side.in_sets {
        let _ = write!(
            out,
            " -m set --match-set {} {flag}",
            ipset_name(set, family)
        );
    }
    for set in &side.not_in_sets {
        let _ = write!(
            out,
            " -m set ! --match-set {} {flag}",
            ipset_name(set, family)
        );
    }
    for set in &side.not_named_port_sets {
        let _ = write!(
            out,
            " -m set ! --match-set {} {flag},{flag}",
            ipset_name(set, family)
        );
    }
    // multiport takes at most 15 entries; longer lists are split into several negated matches.
    for chunk in side.not_ports.chunks(7) {
        let _ = write!(out, " -m multiport ! --{dir}ports {}", ports_text(chunk));
    }
}

fn port_alternatives(side: &SideMatch, dir: &str, family: Family) -> Vec<String> {
    if !side.has_port_alternatives() {
        return vec![String::new()];
    }
    let flag = if dir == "d" { "dst" } else { "src" };
    let mut alternatives: Vec<String> = side
        .ports
        .chunks(7)
        .map(|chunk| format!(" -m multiport --{dir}ports {}", ports_text(chunk)))
        .collect();
    for set in &side.named_port_sets {
        alternatives.push(format!(
            " -m set --match-set {} {flag},{flag}",
            ipset_name(set, family)
        ));
    }
    alternatives
}

/// The iptables rules (arguments after `-A chain`) of one policy rule for one family.
fn rule_lines(rule: &RuleSpec, family: Family) -> Vec<String> {
    if rule.family.is_some_and(|f| f != family)
        || (family == Family::V4 && rule.protocol == Some(58))
        || (family == Family::V6 && rule.protocol == Some(1))
    {
        return Vec::new();
    }
    let mut head = String::new();
    if let Some(p) = rule.protocol {
        let _ = write!(head, " -p {}", protocol_word(p));
    }
    if let Some(p) = rule.not_protocol {
        let _ = write!(head, " ! -p {}", protocol_word(p));
    }
    let (module, option) = match family {
        Family::V4 => ("icmp", "--icmp-type"),
        Family::V6 => ("icmp6", "--icmpv6-type"),
    };
    if let Some(icmp) = rule.icmp {
        let code = icmp.code.map(|c| format!("/{c}")).unwrap_or_default();
        let _ = write!(head, " -m {module} {option} {}{code}", icmp.type_);
    }
    if let Some(icmp) = rule.not_icmp {
        let _ = write!(head, " -m {module} ! {option} {}", icmp.type_);
    }
    side_args(&mut head, &rule.source, "s", family);
    side_args(&mut head, &rule.destination, "d", family);
    let mut lines = Vec::new();
    for source in port_alternatives(&rule.source, "s", family) {
        for destination in port_alternatives(&rule.destination, "d", family) {
            let matches = format!("{head}{source}{destination}");
            match rule.verdict {
                Verdict::Allow | Verdict::Pass => {
                    let mark = if rule.verdict == Verdict::Allow {
                        ACCEPT_MARK
                    } else {
                        PASS_MARK
                    };
                    lines.push(
                        format!("{matches} -j MARK --or-mark {mark:#x}")
                            .trim()
                            .to_string(),
                    );
                    lines.push(format!("-m mark --mark {mark:#x}/{mark:#x} -j RETURN"));
                }
                Verdict::Deny => lines.push(format!("{matches} -j DROP").trim().to_string()),
                Verdict::Log => lines.push(
                    format!("{matches} -j LOG --log-prefix \"{}\"", rule.log_prefix)
                        .trim()
                        .to_string(),
                ),
            }
        }
    }
    lines
}

fn endpoint_chain_lines(policies: &[String]) -> Vec<String> {
    let mut lines = vec![format!("-j MARK --and-mark {CLEAR_MARKS:#x}")];
    for policy in policies {
        lines.push(format!("-j {}", chain_name(policy)));
        lines.push(format!(
            "-m mark ! --mark 0x0/{:#x} -j RETURN",
            ACCEPT_MARK | PASS_MARK
        ));
    }
    lines.push("-j DROP".into());
    lines
}

fn dispatch_lines(
    program: &PolicyProgram,
    chains: &BTreeMap<String, String>,
    flag: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for interface in &program.interfaces {
        match chains.get(interface) {
            Some(chain) => lines.push(format!("{flag} {interface} -g {}", chain_name(chain))),
            None => lines.push(format!("{flag} {interface} -j RETURN")),
        }
    }
    lines.push("-j DROP".into());
    lines
}

/// The two dispatch chains (interface -> endpoint chain, unknown `reef*` interfaces dropped).
fn insert_dispatch(chains: &mut Chains, program: &PolicyProgram) {
    let egress = dispatch_lines(program, &program.egress, "-i");
    let ingress = dispatch_lines(program, &program.ingress, "-o");
    chains.insert(("filter", "reef-from-endpoint".into()), Body::Lines(egress));
    chains.insert(("filter", "reef-to-endpoint".into()), Body::Lines(ingress));
}

fn base_chains(family: Family) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let mut input = vec!["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string()];
    if family == Family::V6 {
        input.push("-i reef+ -p ipv6-icmp -j ACCEPT".into());
    }
    let failsafe: Vec<String> = FAILSAFE_TCP_PORTS.iter().map(u16::to_string).collect();
    input.push(format!(
        "-i reef+ -p tcp -m multiport --dports {} -j ACCEPT",
        failsafe.join(",")
    ));
    input.push("-i reef+ -j reef-from-endpoint".into());
    let f = if family == Family::V4 { "4" } else { "6" };
    vec![
        (
            "filter",
            "reef-FORWARD",
            vec![
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
                "-m conntrack --ctstate INVALID -j DROP".into(),
                "-i reef+ -j reef-from-endpoint".into(),
                "-o reef+ -j reef-to-endpoint".into(),
            ],
        ),
        ("filter", "reef-INPUT", input),
        (
            "nat",
            "reef-POSTROUTING",
            vec![format!(
                "-m set --match-set reef-nat-out-{f} src -m set ! --match-set reef-pools-{f} dst -j MASQUERADE"
            )],
        ),
    ]
}

/// Jumps from the built-in chains into ours: (table, built-in chain, our chain).
const HOOKS: [(&str, &str, &str); 3] = [
    ("filter", "FORWARD", "reef-FORWARD"),
    ("filter", "INPUT", "reef-INPUT"),
    ("nat", "POSTROUTING", "reef-POSTROUTING"),
];

fn set_members(nets: impl Iterator<Item = IpNet>, family: Family) -> BTreeSet<String> {
    nets.filter(|n| (family == Family::V4) == matches!(n, IpNet::V4(_)))
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect()
}

fn inet(family: Family) -> &'static str {
    if family == Family::V4 {
        "inet"
    } else {
        "inet6"
    }
}

fn address_set(program: &PolicyProgram, name: &str, family: Family) -> (String, BTreeSet<String>) {
    let members = program
        .sets
        .get(name)
        .map(|s| set_members(s.members.keys().copied(), family))
        .unwrap_or_default();
    (
        format!("hash:net family {} maxelem 1048576", inet(family)),
        members,
    )
}

fn port_set(program: &PolicyProgram, name: &str, family: Family) -> (String, BTreeSet<String>) {
    let members = program
        .port_sets
        .get(name)
        .map(|s| {
            s.keys()
                .filter(|m| Family::of(&m.0) == family)
                .map(|(a, p, port)| format!("{a},{}:{port}", protocol_word(*p)))
                .collect()
        })
        .unwrap_or_default();
    (
        format!("hash:ip,port family {} maxelem 1048576", inet(family)),
        members,
    )
}

fn desired_state(program: &PolicyProgram) -> State {
    let mut state = State::default();
    for family in [Family::V4, Family::V6] {
        for name in program.sets.keys() {
            state
                .sets
                .insert(ipset_name(name, family), address_set(program, name, family));
        }
        for name in program.port_sets.keys() {
            state
                .sets
                .insert(ipset_name(name, family), port_set(program, name, family));
        }
        for (name, nets) in [
            ("nat-out", &program.nat.masquerade),
            ("pools", &program.nat.pools),
        ] {
            let create = format!("hash:net family {} maxelem 1048576", inet(family));
            state.sets.insert(
                ipset_name(name, family),
                (create, set_members(nets.iter().copied(), family)),
            );
        }
        let chains = &mut state.chains[index(family)];
        for (name, rules) in &program.policy_chains {
            let lines = rules.iter().flat_map(|r| rule_lines(r, family)).collect();
            chains.insert(("filter", chain_name(name)), Body::Lines(lines));
        }
        for (name, chain) in &program.endpoint_chains {
            chains.insert(
                ("filter", chain_name(name)),
                Body::Lines(endpoint_chain_lines(&chain.policies)),
            );
        }
        insert_dispatch(chains, program);
        for (table, name, lines) in base_chains(family) {
            chains.insert((table, name.into()), Body::Lines(lines));
        }
    }
    state
}

#[derive(Default)]
struct Batch {
    ipset: String,
    ipset_destroy: String,
    restore: [BTreeMap<&'static str, (String, String, String)>; 2],
    operations: usize,
}

impl Batch {
    fn sync_set(
        &mut self,
        written: Option<&(String, BTreeSet<String>)>,
        name: &str,
        desired: &(String, BTreeSet<String>),
    ) {
        let (create, members) = desired;
        let empty = BTreeSet::new();
        let have = match written {
            Some((_, have)) => have,
            None => {
                let _ = writeln!(self.ipset, "create {name} {create}");
                let _ = writeln!(self.ipset, "flush {name}");
                self.operations += 1;
                &empty
            }
        };
        for member in members.difference(have) {
            let _ = writeln!(self.ipset, "add {name} {member}");
            self.operations += 1;
        }
        for member in have.difference(members) {
            let _ = writeln!(self.ipset, "del {name} {member}");
            self.operations += 1;
        }
    }

    /// (declarations, rules, removals) of one table in one family.
    fn table(&mut self, family: Family, table: &'static str) -> &mut (String, String, String) {
        self.restore[index(family)].entry(table).or_default()
    }

    fn sync_chain(
        &mut self,
        family: Family,
        table: &'static str,
        written: Option<&Body>,
        name: &str,
        lines: &[String],
    ) {
        let (declare, rules, _) = self.table(family, table);
        match written {
            Some(Body::Lines(have)) if have == lines => return,
            Some(Body::Count(n)) if *n == lines.len() => return,
            Some(_) => {
                let _ = writeln!(rules, "-F {name}");
            }
            None => {
                let _ = writeln!(declare, ":{name} - [0:0]");
            }
        }
        for line in lines {
            let _ = writeln!(rules, "-A {name} {line}");
        }
        self.operations += 1 + lines.len();
    }

    fn remove_chain(&mut self, family: Family, table: &'static str, name: &str) {
        // Every flush before any delete: a chain still jumped to cannot go.
        let (_, rules, removals) = self.table(family, table);
        let _ = writeln!(rules, "-F {name}");
        let _ = writeln!(removals, "-X {name}");
        self.operations += 1;
    }
}

fn full_diff(batch: &mut Batch, written: &State, desired: &State) {
    for (name, set) in &desired.sets {
        batch.sync_set(written.sets.get(name), name, set);
    }
    for family in [Family::V4, Family::V6] {
        let (have, want) = (
            &written.chains[index(family)],
            &desired.chains[index(family)],
        );
        for ((table, name), body) in want {
            if let Body::Lines(lines) = body {
                batch.sync_chain(
                    family,
                    table,
                    have.get(&(*table, name.clone())),
                    name,
                    lines,
                );
            }
        }
        for (table, name) in have.keys().filter(|k| !want.contains_key(*k)) {
            batch.remove_chain(family, table, name);
        }
    }
    for name in written
        .sets
        .keys()
        .filter(|n| !desired.sets.contains_key(*n))
    {
        let _ = writeln!(batch.ipset_destroy, "destroy {name}");
        batch.operations += 1;
    }
}

impl IptablesBackend {
    /// A backend writing into the namespace `runner` runs in.
    pub fn new(runner: Runner) -> IptablesBackend {
        IptablesBackend {
            runner,
            written: None,
        }
    }

    /// Brings the rules to `program`; see [`super::nft::NftBackend::sync`].
    pub fn sync(
        &mut self,
        program: &PolicyProgram,
        changes: &Changes,
    ) -> Result<usize, BackendError> {
        let Some(written) = self.written.as_ref() else {
            return self.resync(program);
        };
        let desired = if changes.all {
            desired_state(program)
        } else {
            self.partial(written, program, changes)
        };
        let mut batch = Batch::default();
        full_diff(&mut batch, written, &desired);
        self.write(batch, desired)
    }

    /// The written state with what `changes` names re-rendered (sets, endpoint chains, dispatch).
    fn partial(&self, written: &State, program: &PolicyProgram, changes: &Changes) -> State {
        let mut next = written.clone();
        for family in [Family::V4, Family::V6] {
            for name in &changes.sets {
                next.sets
                    .insert(ipset_name(name, family), address_set(program, name, family));
            }
            for name in &changes.port_sets {
                next.sets
                    .insert(ipset_name(name, family), port_set(program, name, family));
            }
            let chains = &mut next.chains[index(family)];
            for name in &changes.endpoint_chains {
                match program.endpoint_chains.get(name) {
                    Some(chain) => {
                        chains.insert(
                            ("filter", chain_name(name)),
                            Body::Lines(endpoint_chain_lines(&chain.policies)),
                        );
                    }
                    None => {
                        chains.remove(&("filter", chain_name(name)));
                    }
                }
            }
            if !changes.interfaces.is_empty() {
                insert_dispatch(chains, program);
            }
        }
        next
    }

    fn write(&mut self, batch: Batch, desired: State) -> Result<usize, BackendError> {
        let result = self.write_batch(&batch);
        match result {
            Ok(()) => {
                self.written = Some(desired);
                Ok(batch.operations)
            }
            Err(e) => {
                self.written = None;
                Err(e)
            }
        }
    }

    fn write_batch(&self, batch: &Batch) -> Result<(), BackendError> {
        if batch.operations == 0 {
            return Ok(());
        }
        if !batch.ipset.is_empty() {
            self.runner
                .run("ipset", &["restore", "-exist"], batch.ipset.as_bytes())?;
        }
        for family in [Family::V4, Family::V6] {
            let tables = &batch.restore[index(family)];
            if tables.is_empty() {
                continue;
            }
            let mut text = String::new();
            for (table, (declare, rules, removals)) in tables {
                let _ = write!(text, "*{table}\n{declare}{rules}{removals}COMMIT\n");
            }
            let program = if family == Family::V4 {
                "iptables-restore"
            } else {
                "ip6tables-restore"
            };
            self.runner.run(program, &["--noflush"], text.as_bytes())?;
        }
        if !batch.ipset_destroy.is_empty() {
            self.runner.run(
                "ipset",
                &["restore", "-exist"],
                batch.ipset_destroy.as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Reads chains and sets back and repairs every difference (and the hook jumps).
    pub fn resync(&mut self, program: &PolicyProgram) -> Result<usize, BackendError> {
        let actual = self.read()?;
        let desired = desired_state(program);
        let mut batch = Batch::default();
        full_diff(&mut batch, &actual, &desired);
        let mut operations = batch.operations;
        self.write(batch, desired)?;
        operations += self.ensure_hooks()?;
        Ok(operations)
    }

    /// Adds missing jumps from the built-in chains (first position); returns how many were added.
    fn ensure_hooks(&self) -> Result<usize, BackendError> {
        let mut added = 0;
        for program in ["iptables", "ip6tables"] {
            for (table, builtin, ours) in HOOKS {
                let present = self
                    .runner
                    .run(
                        program,
                        &["-w", "5", "-t", table, "-C", builtin, "-j", ours],
                        b"",
                    )
                    .is_ok();
                if !present {
                    self.runner.run(
                        program,
                        &["-w", "5", "-t", table, "-I", builtin, "1", "-j", ours],
                        b"",
                    )?;
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    fn read(&self) -> Result<State, BackendError> {
        let mut state = State::default();
        let saved = self.runner.run("ipset", &["save"], b"")?;
        for line in saved.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("create"), Some(name), _) if name.starts_with(PREFIX) => {
                    state.sets.entry(name.to_string()).or_default();
                }
                (Some("add"), Some(name), Some(member)) if name.starts_with(PREFIX) => {
                    state
                        .sets
                        .entry(name.to_string())
                        .or_default()
                        .1
                        .insert(member.to_string());
                }
                _ => {}
            }
        }
        for family in [Family::V4, Family::V6] {
            let program = if family == Family::V4 {
                "iptables-save"
            } else {
                "ip6tables-save"
            };
            for table in ["filter", "nat"] {
                let saved = self.runner.run(program, &["-t", table], b"")?;
                let chains = &mut state.chains[index(family)];
                for line in saved.lines() {
                    if let Some(rest) = line.strip_prefix(':')
                        && let Some(name) = rest.split_whitespace().next()
                        && name.starts_with(PREFIX)
                    {
                        chains
                            .entry((table, name.to_string()))
                            .or_insert(Body::Count(0));
                    } else if let Some(rest) = line.strip_prefix("-A ")
                        && let Some(name) = rest.split_whitespace().next()
                        && name.starts_with(PREFIX)
                        && let Body::Count(n) = chains
                            .entry((table, name.to_string()))
                            .or_insert(Body::Count(0))
                    {
                        *n += 1;
                    }
                }
            }
        }
        Ok(state)
    }

    /// Removes our hook jumps, chains and sets.
    pub fn remove(&mut self) -> Result<(), BackendError> {
        self.written = None;
        for program in ["iptables", "ip6tables"] {
            for (table, builtin, ours) in HOOKS {
                while self
                    .runner
                    .run(
                        program,
                        &["-w", "5", "-t", table, "-D", builtin, "-j", ours],
                        b"",
                    )
                    .is_ok()
                {}
            }
        }
        let actual = self.read()?;
        let mut batch = Batch::default();
        full_diff(&mut batch, &actual, &State::default());
        self.write_batch(&batch)
    }
}
