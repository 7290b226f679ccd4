//! ExaBGP 4 in its own namespace. It has no RIB of its own, so a small API process (python,
//! written next to the config) carries commands from a named pipe to ExaBGP and appends ExaBGP's
//! JSON events (state changes, received UPDATEs, NOTIFICATIONs) to a log that we replay.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::bgp::{BgpConfig, BgpDaemon, START_TIMEOUT, parse_prefix, workdir, write_file};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::{run_ok, wait_for};

/// The API process: named pipe lines -> ExaBGP (stdout); ExaBGP events (stdin) -> the log.
/// The pipe is opened read-write so it never reports end-of-file between our writers.
const API_HELPER: &str = r#"import os, select, sys
# Raw reads on both descriptors: a buffered readline could keep a second line in its buffer while
# select() sees nothing more to read.
commands, log_path = sys.argv[1], sys.argv[2]
pipe = os.open(commands, os.O_RDWR)
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
pending = b""
while True:
    ready, _, _ = select.select([0, pipe], [], [])
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break
        os.write(log, data)
    if pipe in ready:
        pending += os.read(pipe, 65536)
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            os.write(1, line + b"\n")
"#;

/// An ExaBGP daemon. It listens on its link addresses too (`exabgp.tcp.bind`), so peers may connect.
pub struct ExaBgp {
    process: Process,
    config: BgpConfig,
    originated: Vec<IpNet>,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl ExaBgp {
    /// Writes the config, the API helper and its pipe, and starts exabgp inside `ns` (taking the
    /// namespace). Returns once the API helper runs.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<ExaBgp> {
        let dir = workdir("exabgp")?;
        write_file(&dir.path().join("api.py"), API_HELPER)?;
        let fifo = dir.path().join("commands");
        run_ok(std::process::Command::new("mkfifo").arg(&fifo))?;
        let originated = config.originate.clone();
        let process = spawn(&ns, dir.path(), &config, &originated)?;
        Ok(ExaBgp {
            process,
            config,
            originated,
            dir,
            ns,
        })
    }

    /// The JSON event log written by the API helper.
    pub fn event_log(&self) -> PathBuf {
        self.dir.path().join("events.log")
    }

    /// Every JSON event ExaBGP reported (non-JSON lines such as command acks are skipped).
    pub fn events(&self) -> Result<Vec<Value>> {
        let path = self.event_log();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| {
                // ExaBGP 4.2 writes ROUTE-REFRESH events with doubled quotes (`"afi": ""ipv4""`):
                // undo that when a line does not parse as it is.
                serde_json::from_str::<Value>(l)
                    .or_else(|_| serde_json::from_str::<Value>(&l.replace("\"\"", "\"")))
                    .ok()
            })
            .filter(|v| v.is_object())
            .collect())
    }

    /// Events concerning `peer`.
    pub fn events_from(&self, peer: IpAddr) -> Result<Vec<Value>> {
        let peer = peer.to_string();
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e.pointer("/neighbor/address/peer").and_then(Value::as_str) == Some(&peer))
            .collect())
    }

    /// Sends one API command line (e.g. `announce route ...`).
    pub fn command(&self, line: &str) -> Result<()> {
        let path = self.dir.path().join("commands");
        // Opening for write does not block: the helper holds the read side open.
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| LabError::file(&path, e))?;
        pipe.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| LabError::file(&path, e))
    }

    fn route_command(&self, verb: &str, prefix: &IpNet) -> Result<()> {
        let line = format!("{verb} {}", route_spec(&self.config, prefix));
        self.command(&line)
    }
}

/// `route P next-hop NH [med M] [community [..]] [large-community [..]]`.
fn route_spec(config: &BgpConfig, prefix: &IpNet) -> String {
    let mut spec = format!("route {prefix} next-hop {}", config.next_hop_for(prefix));
    let attrs = &config.attrs;
    if let Some(med) = attrs.med {
        let _ = write!(spec, " med {med}");
    }
    if let Some(list) = attrs.communities_list(" ") {
        let _ = write!(spec, " community [{list}]");
    }
    if let Some(list) = attrs.large_communities_list(" ") {
        let _ = write!(spec, " large-community [{list}]");
    }
    spec
}

fn render(dir: &Path, config: &BgpConfig, originated: &[IpNet]) -> String {
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "process api {{\n  run /usr/bin/python3 {} {} {};\n  encoder json;\n}}",
        dir.join("api.py").display(),
        dir.join("commands").display(),
        dir.join("events.log").display()
    );
    for n in &config.neighbors {
        let local = match n.address {
            IpAddr::V4(_) => IpAddr::V4(config.local_v4),
            IpAddr::V6(_) => IpAddr::V6(config.local_v6),
        };
        let _ = writeln!(conf, "neighbor {} {{", n.address);
        let _ = writeln!(
            conf,
            "  router-id {};\n  local-address {local};",
            config.router_id
        );
        let _ = writeln!(
            conf,
            "  local-as {};\n  peer-as {};",
            config.local_as, n.remote_as
        );
        let _ = writeln!(conf, "  hold-time {};", config.hold_time);
        if let Some(key) = &n.password {
            let _ = writeln!(conf, "  md5-password \"{key}\";");
        }
        if n.passive {
            conf.push_str("  passive true;\n");
        }
        conf.push_str("  family { ipv4 unicast; ipv6 unicast; }\n");
        conf.push_str("  capability { route-refresh; }\n");
        conf.push_str(
            "  api {\n    processes [ api ];\n    receive { parsed; update; notification; refresh; }\n    neighbor-changes;\n  }\n",
        );
        conf.push_str("  static {\n");
        for prefix in originated {
            let _ = writeln!(conf, "    {};", route_spec(config, prefix));
        }
        conf.push_str("  }\n}\n");
    }
    conf
}

fn spawn(ns: &Netns, dir: &Path, config: &BgpConfig, originated: &[IpNet]) -> Result<Process> {
    let conf = dir.join("exabgp.conf");
    write_file(&conf, &render(dir, config, originated))?;
    let mut cmd = ns.command("env");
    // ExaBGP reads its settings from the environment: stay root (MD5 and port 179), stay in the
    // foreground (we hold its pid), log to a file, listen on our address so peers can connect.
    cmd.arg("exabgp.daemon.user=root")
        .arg("exabgp.daemon.daemonize=false")
        .arg(format!(
            "exabgp.log.destination={}",
            dir.join("exabgp.log").display()
        ))
        .arg(format!(
            "exabgp.tcp.bind={} {}",
            config.local_v4, config.local_v6
        ))
        .arg("exabgp.tcp.port=179")
        .arg("exabgp.api.ack=false")
        .arg("exabgp.api.cli=false")
        .arg("exabgp")
        .arg(&conf);
    let mut process = Process::spawn("exabgp", cmd, &dir.join("exabgp.out"))?;
    let up = wait_for(
        "exabgp's API helper",
        START_TIMEOUT,
        Duration::from_millis(100),
        || {
            if !process.is_running() {
                return Some(false);
            }
            let helpers = run_ok(
                std::process::Command::new("pgrep").args(["-P", &process.pid().to_string()]),
            )
            .ok()?;
            (!helpers.trim().is_empty()).then_some(true)
        },
    )?;
    if !up {
        let log = std::fs::read_to_string(dir.join("exabgp.out")).unwrap_or_default();
        return Err(LabError::Daemon(format!("exabgp exited at start: {log}")));
    }
    Ok(process)
}

/// The prefixes of one `announce`/`withdraw` section: `{"ipv4 unicast": {NH: [{"nlri": P}]}}`
/// for announcements, `{"ipv4 unicast": [{"nlri": P}]}` for withdrawals.
fn nlri_of(section: Option<&Value>) -> Result<Vec<IpNet>> {
    let mut prefixes = Vec::new();
    let Some(families) = section.and_then(Value::as_object) else {
        return Ok(prefixes);
    };
    for routes in families.values() {
        let lists: Vec<&Value> = match routes {
            Value::Object(by_next_hop) => by_next_hop.values().collect(),
            other => vec![other],
        };
        for list in lists {
            for entry in list.as_array().into_iter().flatten() {
                if let Some(nlri) = entry.get("nlri").and_then(Value::as_str) {
                    prefixes.push(parse_prefix(nlri)?);
                }
            }
        }
    }
    Ok(prefixes)
}

/// Replays the events of one peer into its current Adj-RIB-In: cleared when the session goes
/// down, announcements add, withdrawals remove.
fn replay(events: &[Value]) -> Result<BTreeSet<IpNet>> {
    let mut rib = BTreeSet::new();
    for event in events {
        match event.get("type").and_then(Value::as_str) {
            Some("state")
                if event.pointer("/neighbor/state").and_then(Value::as_str) != Some("up") =>
            {
                rib.clear()
            }
            Some("update") => {
                let update = event.pointer("/neighbor/message/update");
                for prefix in nlri_of(update.and_then(|u| u.get("withdraw")))? {
                    rib.remove(&prefix);
                }
                let announced = nlri_of(update.and_then(|u| u.get("announce")))?;
                // AS-path loop detection (RFC 4271 §9.1.2), which ExaBGP leaves to us: a path with
                // our own AS is not accepted (FRR sends our routes back to us over eBGP).
                let local_as = event.pointer("/neighbor/asn/local").and_then(Value::as_u64);
                let looped = update
                    .and_then(|u| u.pointer("/attribute/as-path"))
                    .and_then(Value::as_array)
                    .is_some_and(|path| path.iter().any(|asn| asn.as_u64() == local_as));
                for prefix in announced {
                    if looped {
                        rib.remove(&prefix);
                    } else {
                        rib.insert(prefix);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(rib)
}

impl BgpDaemon for ExaBgp {
    fn kind(&self) -> &'static str {
        "exabgp"
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
        let last_state = self
            .events_from(peer)?
            .into_iter()
            .rfind(|e| e.get("type").and_then(Value::as_str) == Some("state"));
        Ok(last_state.and_then(|e| {
            e.pointer("/neighbor/state")
                .and_then(Value::as_str)
                .map(str::to_string)
        }) == Some("up".to_string()))
    }

    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
        replay(&self.events_from(peer)?)
    }

    fn advertise(&mut self, prefix: IpNet) -> Result<()> {
        self.route_command("announce", &prefix)?;
        if !self.originated.contains(&prefix) {
            self.originated.push(prefix);
        }
        Ok(())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<()> {
        self.route_command("withdraw", &prefix)?;
        self.originated.retain(|p| *p != prefix);
        Ok(())
    }

    fn refresh_in(&self, peer: IpAddr) -> Result<()> {
        for family in ["ipv4 unicast", "ipv6 unicast"] {
            self.command(&format!("neighbor {peer} announce route-refresh {family}"))?;
        }
        Ok(())
    }

    fn updates_received(&self, peer: IpAddr) -> Result<u64> {
        Ok(self
            .events_from(peer)?
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some("update"))
            .count() as u64)
    }

    fn refreshes_received(&self, peer: IpAddr) -> Result<u64> {
        Ok(self
            .events_from(peer)?
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some("refresh"))
            .count() as u64)
    }

    fn shutdown_peer(&mut self, peer: IpAddr) -> Result<()> {
        // Cease subcode 2: Administrative Shutdown.
        self.command(&format!("neighbor {peer} teardown 2"))
    }

    fn restart(&mut self) -> Result<()> {
        self.process.stop();
        self.process = spawn(&self.ns, self.dir.path(), &self.config, &self.originated)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_announcements_withdrawals_and_session_drops() {
        let events: Vec<Value> = [
            r#"{"type":"state","neighbor":{"state":"up"}}"#,
            r#"{"type":"update","neighbor":{"message":{"update":{"announce":{"ipv4 unicast":{"198.18.0.2":[{"nlri":"10.2.0.0/24"},{"nlri":"10.3.0.0/24"}]},"ipv6 unicast":{"2001:db8::2":[{"nlri":"2001:db8:200::/48"}]}}}}}}"#,
            r#"{"type":"update","neighbor":{"message":{"update":{"withdraw":{"ipv4 unicast":[{"nlri":"10.3.0.0/24"}]}}}}}"#,
            r#"{"type":"update","neighbor":{"asn":{"local":65001},"message":{"update":{"attribute":{"as-path":[65002,65001]},"announce":{"ipv4 unicast":{"198.18.0.2":[{"nlri":"10.1.0.0/24"}]}}}}}}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let rib: Vec<String> = replay(&events)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(rib, ["10.2.0.0/24", "2001:db8:200::/48"]);
        let mut dropped = events.clone();
        dropped
            .push(serde_json::from_str(r#"{"type":"state","neighbor":{"state":"down"}}"#).unwrap());
        assert!(replay(&dropped).unwrap().is_empty());
    }
}
