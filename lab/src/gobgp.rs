//! GoBGP in its own namespace: gobgpd from a TOML file, its gRPC API on the namespace's own
//! 127.0.0.1 (so the port never clashes), driven with the `gobgp` CLI.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::bgp::{BgpConfig, BgpDaemon, START_TIMEOUT, parse_prefix, workdir, write_file};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::{run_ok, wait_for};

/// The gRPC API port, on the loopback of the daemon's own namespace.
const API_PORT: &str = "50051";

/// gobgpd. Originated prefixes are added through the API after start (and after a restart).
pub struct GoBgp {
    process: Process,
    config: BgpConfig,
    originated: Vec<IpNet>,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl GoBgp {
    /// Writes gobgpd.toml and starts gobgpd inside `ns` (taking the namespace), waits for its API
    /// and adds the originated prefixes.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<GoBgp> {
        let dir = workdir("gobgp")?;
        let originated = config.originate.clone();
        let process = spawn(&ns, dir.path(), &config)?;
        let daemon = GoBgp {
            process,
            config,
            originated,
            dir,
            ns,
        };
        for prefix in &daemon.originated {
            daemon.rib_add(prefix, true)?;
        }
        Ok(daemon)
    }

    /// `gobgp -p PORT <args>` inside the namespace.
    pub fn gobgp(&self, args: &[&str]) -> Result<String> {
        gobgp(&self.ns, args)
    }

    /// `gobgp neighbor PEER -j`.
    pub fn neighbor_json(&self, peer: IpAddr) -> Result<Value> {
        let text = self.gobgp(&["neighbor", &peer.to_string(), "-j"])?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| LabError::parse("gobgp neighbor json", e))?;
        // One neighbor: an object; some versions wrap it in a list.
        Ok(match value {
            Value::Array(mut list) if !list.is_empty() => list.swap_remove(0),
            other => other,
        })
    }

    fn rib_add(&self, prefix: &IpNet, add: bool) -> Result<()> {
        let family = family(prefix);
        let prefix_text = prefix.to_string();
        let next_hop = self.config.next_hop_for(prefix).to_string();
        let mut args = vec![
            "global".to_string(),
            "rib".to_string(),
            if add { "add" } else { "del" }.to_string(),
            "-a".to_string(),
            family.to_string(),
            prefix_text,
        ];
        if add {
            args.extend(["nexthop".to_string(), next_hop]);
            let attrs = &self.config.attrs;
            if let Some(med) = attrs.med {
                args.extend(["med".to_string(), med.to_string()]);
            }
            if let Some(list) = attrs.communities_list(",") {
                args.extend(["community".to_string(), list]);
            }
            if let Some(list) = attrs.large_communities_list(",") {
                args.extend(["large-community".to_string(), list]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.gobgp(&args).map(|_| ())
    }
}

fn family(prefix: &IpNet) -> &'static str {
    match prefix {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

fn gobgp(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut cmd = ns.command("gobgp");
    cmd.args(["-p", API_PORT]).args(args);
    run_ok(&mut cmd)
}

fn spawn(ns: &Netns, dir: &Path, config: &BgpConfig) -> Result<Process> {
    let conf = dir.join("gobgpd.toml");
    write_file(&conf, &render(config))?;
    let conf = conf.to_string_lossy();
    let api = format!("127.0.0.1:{API_PORT}");
    let mut process = ns.spawn(
        "gobgpd",
        "gobgpd",
        &["-f", &conf, "--api-hosts", &api, "--log-level", "info"],
        &dir.join("gobgpd.out"),
    )?;
    let up = wait_for(
        "gobgpd's API",
        START_TIMEOUT,
        Duration::from_millis(100),
        || {
            if !process.is_running() {
                return Some(false);
            }
            gobgp(ns, &["global", "-j"]).ok().map(|_| true)
        },
    )?;
    if !up {
        let log = std::fs::read_to_string(dir.join("gobgpd.out")).unwrap_or_default();
        return Err(LabError::Daemon(format!("gobgpd exited at start: {log}")));
    }
    Ok(process)
}

fn render(config: &BgpConfig) -> String {
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = 179\n",
        config.local_as, config.router_id
    );
    for n in &config.neighbors {
        let _ = writeln!(
            conf,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}",
            n.address, n.remote_as
        );
        if let Some(key) = &n.password {
            let _ = writeln!(conf, "    auth-password = \"{key}\"");
        }
        let _ = writeln!(
            conf,
            "  [neighbors.timers.config]\n    connect-retry = {}\n    hold-time = {}\n    keepalive-interval = {}\n    idle-hold-time-after-reset = 1",
            config.connect_retry, config.hold_time, config.keepalive
        );
        let local = match n.address {
            IpAddr::V4(_) => IpAddr::V4(config.local_v4),
            IpAddr::V6(_) => IpAddr::V6(config.local_v6),
        };
        let _ = writeln!(
            conf,
            "  [neighbors.transport.config]\n    local-address = \"{local}\"\n    passive-mode = {}",
            n.passive
        );
        for family in ["ipv4-unicast", "ipv6-unicast"] {
            let _ = writeln!(
                conf,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\""
            );
        }
        conf.push('\n');
    }
    conf
}

/// Prefixes in a `gobgp global rib -j` answer whose path came from `peer`.
fn routes_of(json: &str, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| LabError::parse("gobgp rib json", e))?;
    let peer = peer.to_string();
    let mut prefixes = BTreeSet::new();
    if let Some(table) = value.as_object() {
        for (prefix, paths) in table {
            let from_peer = paths.as_array().is_some_and(|paths| {
                paths
                    .iter()
                    .any(|p| p.get("neighbor-ip").and_then(Value::as_str) == Some(&peer))
            });
            if from_peer {
                prefixes.insert(parse_prefix(prefix)?);
            }
        }
    }
    Ok(prefixes)
}

impl BgpDaemon for GoBgp {
    fn kind(&self) -> &'static str {
        "gobgp"
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
        // session_state 6 = ESTABLISHED (gobgp API enum).
        let state = self
            .neighbor_json(peer)?
            .pointer("/state/session_state")
            .cloned();
        Ok(
            matches!(&state, Some(Value::Number(n)) if n.as_u64() == Some(6))
                || state.as_ref().and_then(Value::as_str) == Some("ESTABLISHED"),
        )
    }

    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
        let mut all = BTreeSet::new();
        for family in ["ipv4", "ipv6"] {
            all.extend(routes_of(
                &self.gobgp(&["global", "rib", "-a", family, "-j"])?,
                peer,
            )?);
        }
        Ok(all)
    }

    fn advertise(&mut self, prefix: IpNet) -> Result<()> {
        self.rib_add(&prefix, true)?;
        if !self.originated.contains(&prefix) {
            self.originated.push(prefix);
        }
        Ok(())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<()> {
        self.rib_add(&prefix, false)?;
        self.originated.retain(|p| *p != prefix);
        Ok(())
    }

    fn refresh_in(&self, _peer: IpAddr) -> Result<()> {
        // GoBGP keeps every Adj-RIB-In: `gobgp neighbor X softresetin` re-runs the import policy
        // locally and sends no ROUTE-REFRESH (checked against FRR, which never saw one).
        Err(LabError::Daemon(
            "gobgp cannot send a ROUTE-REFRESH (softresetin works on its own Adj-RIB-In)"
                .to_string(),
        ))
    }

    fn updates_received(&self, peer: IpAddr) -> Result<u64> {
        Ok(self
            .neighbor_json(peer)?
            .pointer("/state/messages/received/update")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    fn refreshes_received(&self, peer: IpAddr) -> Result<u64> {
        Ok(self
            .neighbor_json(peer)?
            .pointer("/state/messages/received/refresh")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    fn shutdown_peer(&mut self, peer: IpAddr) -> Result<()> {
        self.gobgp(&["neighbor", &peer.to_string(), "disable"])
            .map(|_| ())
    }

    fn restart(&mut self) -> Result<()> {
        self.process.stop();
        self.process = spawn(&self.ns, self.dir.path(), &self.config)?;
        for prefix in &self.originated {
            self.rib_add(prefix, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_paths_from_the_peer() {
        let rib = r#"{"10.1.0.0/24":[{"nlri":{"prefix":"10.1.0.0/24"},"attrs":[]}],
            "10.2.0.0/24":[{"nlri":{"prefix":"10.2.0.0/24"},"neighbor-ip":"198.18.0.2"}],
            "10.3.0.0/24":[{"nlri":{"prefix":"10.3.0.0/24"},"neighbor-ip":"198.18.0.9"}]}"#;
        let got = routes_of(rib, "198.18.0.2".parse().unwrap()).unwrap();
        assert_eq!(got, BTreeSet::from(["10.2.0.0/24".parse().unwrap()]));
    }
}
