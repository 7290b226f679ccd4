//! BIRD 2 in its own namespace: generated bird.conf, `bird -f` kept as our child, queried with `birdc`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use crate::bgp::{BgpConfig, BgpDaemon, START_TIMEOUT, parse_prefix, workdir, write_file};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::{run_ok, wait_for};

/// Raw bird.conf text added to what the lab renders from the [`BgpConfig`].
#[derive(Debug, Clone, Default)]
pub struct BirdOptions {
    /// At the top level (e.g. a `bfd` protocol, filters).
    pub global: String,
    /// Inside every `protocol bgp` (e.g. `graceful restart on;`, `bfd on;`, `rr client;`).
    pub protocol: String,
}

/// A BIRD 2 daemon. BGP protocols are named `n0`, `n1`, ... in neighbor order.
pub struct Bird {
    process: Process,
    config: BgpConfig,
    options: BirdOptions,
    originated: Vec<IpNet>,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Bird {
    /// Writes bird.conf into a temporary directory and starts `bird -f` inside `ns` (taking the
    /// namespace: it goes when the daemon goes). Returns once `birdc` answers.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<Bird> {
        Bird::start_with(ns, config, BirdOptions::default())
    }

    /// [`Bird::start`] with raw config added (see [`BirdOptions`]).
    pub fn start_with(ns: Netns, config: BgpConfig, options: BirdOptions) -> Result<Bird> {
        let dir = workdir("bird")?;
        let originated = config.originate.clone();
        let process = spawn(&ns, dir.path(), &config, &options, &originated)?;
        Ok(Bird {
            process,
            config,
            options,
            originated,
            dir,
            ns,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    /// `birdc -s SOCK <args>` (birdc talks to the unix socket: no namespace needed).
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.socket(), args)
    }

    fn protocol(&self, peer: IpAddr) -> Result<String> {
        Ok(format!("n{}", self.config.neighbor_index(peer)?))
    }

    /// `show protocols all NAME` of the session with `peer`.
    pub fn protocol_status(&self, peer: IpAddr) -> Result<String> {
        self.birdc(&["show", "protocols", "all", &self.protocol(peer)?])
    }

    fn reconfigure(&self) -> Result<()> {
        write_file(
            &self.dir.path().join("bird.conf"),
            &render(
                self.dir.path(),
                &self.config,
                &self.options,
                &self.originated,
            ),
        )?;
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(LabError::Daemon(format!("birdc configure: {out}")))
        }
    }
}

fn birdc(socket: &std::path::Path, args: &[&str]) -> Result<String> {
    run_ok(Command::new("birdc").arg("-s").arg(socket).args(args))
}

fn spawn(
    ns: &Netns,
    dir: &std::path::Path,
    config: &BgpConfig,
    options: &BirdOptions,
    originated: &[IpNet],
) -> Result<Process> {
    let conf = dir.join("bird.conf");
    write_file(&conf, &render(dir, config, options, originated))?;
    let socket = dir.join("bird.ctl");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = ns.command("bird");
    // -f: foreground, so the child we hold is BIRD itself (ip netns exec execs in place).
    cmd.arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(dir.join("bird.pid"));
    let mut process = Process::spawn("bird", cmd, &dir.join("bird.out"))?;
    let ready = wait_for(
        "birdc to answer",
        START_TIMEOUT,
        Duration::from_millis(50),
        || {
            if !process.is_running() {
                return Some(false);
            }
            birdc(&socket, &["show", "status"]).ok().map(|_| true)
        },
    )?;
    if !ready {
        let log = std::fs::read_to_string(dir.join("bird.out")).unwrap_or_default();
        return Err(LabError::Daemon(format!("bird exited at start: {log}")));
    }
    Ok(process)
}

fn static_route(prefix: &IpNet, config: &BgpConfig) -> String {
    let attrs = &config.attrs;
    let mut line = format!("  route {prefix} blackhole");
    if !attrs.is_empty() {
        line.push_str(" {");
        if let Some(med) = attrs.med {
            let _ = write!(line, " bgp_med = {med};");
        }
        for (a, b) in &attrs.communities {
            let _ = write!(line, " bgp_community.add(({a},{b}));");
        }
        for (a, b, c) in &attrs.large_communities {
            let _ = write!(line, " bgp_large_community.add(({a},{b},{c}));");
        }
        line.push_str(" }");
    }
    line.push_str(";\n");
    line
}

/// bird.conf: static blackhole routes (the originated prefixes) and one BGP protocol per neighbor
/// with IPv4 and IPv6 channels, `import all; export all;`, `gateway direct` (next hops on the link).
fn render(
    dir: &std::path::Path,
    config: &BgpConfig,
    options: &BirdOptions,
    originated: &[IpNet],
) -> String {
    let mut conf = String::new();
    let _ = writeln!(conf, "router id {};", config.router_id);
    let _ = writeln!(conf, "log \"{}\" all;", dir.join("bird.log").display());
    push_lines(&mut conf, &options.global, "");
    conf.push_str("protocol device {}\n");
    conf.push_str("protocol static s4 {\n  ipv4;\n");
    for prefix in originated.iter().filter(|p| matches!(p, IpNet::V4(_))) {
        conf.push_str(&static_route(prefix, config));
    }
    conf.push_str("}\nprotocol static s6 {\n  ipv6;\n");
    for prefix in originated.iter().filter(|p| matches!(p, IpNet::V6(_))) {
        conf.push_str(&static_route(prefix, config));
    }
    conf.push_str("}\n");
    for (i, n) in config.neighbors.iter().enumerate() {
        let local = match n.address {
            IpAddr::V4(_) => IpAddr::V4(config.local_v4),
            IpAddr::V6(_) => IpAddr::V6(config.local_v6),
        };
        let _ = writeln!(conf, "protocol bgp n{i} {{");
        let _ = writeln!(conf, "  local {local} as {};", config.local_as);
        let _ = writeln!(conf, "  neighbor {} as {};", n.address, n.remote_as);
        let _ = writeln!(
            conf,
            "  hold time {}; keepalive time {}; connect retry time {};",
            config.hold_time, config.keepalive, config.connect_retry
        );
        // The neighbor is on the link (BIRD treats iBGP as multihop otherwise).
        conf.push_str("  direct;\n");
        // Packet traces in the log: the only place BIRD shows a received ROUTE-REFRESH.
        conf.push_str("  debug { packets };\n");
        // Quick restarts after a session drop (the default waits before reconnecting).
        conf.push_str("  error wait time 1, 5;\n");
        if let Some(key) = &n.password {
            let _ = writeln!(conf, "  password \"{key}\";");
        }
        if n.passive {
            conf.push_str("  passive on;\n");
        }
        // Over an IPv6 session IPv4 routes need an IPv4 next hop set explicitly (and vice versa).
        let v4_next_hop = if n.address.is_ipv6() {
            format!(" next hop address {};", config.local_v4)
        } else {
            String::new()
        };
        let _ = writeln!(
            conf,
            "  ipv4 {{ import all; export all; gateway direct;{v4_next_hop} }};"
        );
        let _ = writeln!(
            conf,
            "  ipv6 {{ import all; export all; gateway direct; next hop address {}; }};",
            config.local_v6
        );
        push_lines(&mut conf, &options.protocol, "  ");
        conf.push_str("}\n");
    }
    conf
}

/// Appends raw config text line by line, each indented by `indent`.
fn push_lines(conf: &mut String, text: &str, indent: &str) {
    for line in text.lines() {
        conf.push_str(indent);
        conf.push_str(line);
        conf.push('\n');
    }
}

/// The prefixes of a `birdc show route` listing: lines that start with a prefix.
fn parse_routes(text: &str) -> Result<BTreeSet<IpNet>> {
    let mut prefixes = BTreeSet::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if line.starts_with(|c: char| c.is_ascii_hexdigit()) && first.contains('/') {
            prefixes.insert(parse_prefix(first)?);
        }
    }
    Ok(prefixes)
}

/// The sum of the "Import updates: received" counters of all channels of a protocol.
fn parse_import_updates(text: &str) -> Result<u64> {
    let mut total = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Import updates:") {
            let received = rest.split_whitespace().next().unwrap_or("");
            total += received
                .parse::<u64>()
                .map_err(|e| LabError::parse(format!("birdc line {line:?}"), e))?;
        }
    }
    Ok(total)
}

impl BgpDaemon for Bird {
    fn kind(&self) -> &'static str {
        "bird"
    }

    fn netns(&self) -> &Netns {
        &self.ns
    }

    fn workdir(&self) -> &Path {
        self.dir.path()
    }

    fn bgp_process(&self) -> &Process {
        &self.process
    }

    fn is_established(&self, peer: IpAddr) -> Result<bool> {
        Ok(self
            .protocol_status(peer)?
            .lines()
            .any(|l| l.trim() == "BGP state:          Established"))
    }

    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
        parse_routes(&self.birdc(&["show", "route", "protocol", &self.protocol(peer)?])?)
    }

    fn advertise(&mut self, prefix: IpNet) -> Result<()> {
        if !self.originated.contains(&prefix) {
            self.originated.push(prefix);
        }
        self.reconfigure()
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<()> {
        self.originated.retain(|p| *p != prefix);
        self.reconfigure()
    }

    fn refresh_in(&self, peer: IpAddr) -> Result<()> {
        self.birdc(&["reload", "in", &self.protocol(peer)?])
            .map(|_| ())
    }

    fn updates_received(&self, peer: IpAddr) -> Result<u64> {
        parse_import_updates(&self.protocol_status(peer)?)
    }

    fn refreshes_received(&self, peer: IpAddr) -> Result<u64> {
        let log = std::fs::read_to_string(self.dir.path().join("bird.log")).unwrap_or_default();
        let line_end = format!("{}: Got ROUTE-REFRESH", self.protocol(peer)?);
        Ok(log.lines().filter(|l| l.ends_with(&line_end)).count() as u64)
    }

    fn shutdown_peer(&mut self, peer: IpAddr) -> Result<()> {
        self.birdc(&["disable", &self.protocol(peer)?]).map(|_| ())
    }

    fn restart(&mut self) -> Result<()> {
        self.process.stop();
        self.process = spawn(
            &self.ns,
            self.dir.path(),
            &self.config,
            &self.options,
            &self.originated,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_route_and_counters() {
        let routes = "BIRD 2.0.12 ready.\nTable master4:\n10.2.0.0/24          unicast [n0 17:36:29.134] * (100) [AS65002i]\n\tvia 198.18.0.2 on xa\n\nTable master6:\n2001:db8:200::/48    unicast [n0 17:36:29.134 from 198.18.0.2] * (100) [AS65002i]\n\tvia 2001:db8::2 on xa\n";
        let got: Vec<String> = parse_routes(routes)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, ["10.2.0.0/24", "2001:db8:200::/48"]);
        let status = "    Route change stats:     received   rejected   filtered    ignored   accepted\n      Import updates:              2          0          0          0          2\n      Import withdraws:            1          0        ---          1          0\n      Import updates:              3          0          0          0          3\n";
        assert_eq!(parse_import_updates(status).unwrap(), 5);
    }
}
