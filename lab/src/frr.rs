//! FRR (zebra + bgpd) in its own namespace with its own pathspace (`-N NAME`): config in
//! /etc/frr/NAME (owned by frr), sockets in /var/run/frr/NAME, queried with `vtysh -N NAME`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
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

const ROUTE_MAP: &str = "LAB-ORIGINATE";

/// FRR's zebra and bgpd. Dropping it stops both and removes /etc/frr/NAME and /var/run/frr/NAME.
pub struct Frr {
    bgpd: Process,
    zebra: Process,
    config: BgpConfig,
    originated: Vec<IpNet>,
    pathspace: Pathspace,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Frr {
    /// Writes frr.conf and starts zebra then bgpd inside `ns` (taking the namespace). The
    /// pathspace name is the namespace name. Returns once vtysh reaches bgpd.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<Frr> {
        let pathspace = ns.name().to_string();
        let dir = workdir("frr")?;
        chown_frr(dir.path())?;
        let conf_dir = conf_dir(&pathspace);
        // The guard exists before anything can fail, so a failed start cleans up too.
        let pathspace = Pathspace(pathspace);
        std::fs::create_dir_all(&conf_dir).map_err(|e| LabError::file(&conf_dir, e))?;
        let originated = config.originate.clone();
        write_file(&conf_dir.join("vtysh.conf"), "")?;
        write_file(
            &conf_dir.join("frr.conf"),
            &render(dir.path(), &config, &originated),
        )?;
        chown_frr(&conf_dir)?;
        let (zebra, bgpd) = spawn(&ns, &pathspace.0, dir.path())?;
        Ok(Frr {
            bgpd,
            zebra,
            config,
            originated,
            pathspace,
            dir,
            ns,
        })
    }

    /// `vtysh -N NAME -c CMD1 -c CMD2 ...` inside the namespace.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        vtysh(&self.ns, &self.pathspace.0, commands)
    }

    /// `show bgp neighbors PEER json` of the session with `peer`.
    pub fn neighbor_json(&self, peer: IpAddr) -> Result<Value> {
        let text = self.vtysh(&[&format!("show bgp neighbors {peer} json")])?;
        let all: Value =
            serde_json::from_str(&text).map_err(|e| LabError::parse("vtysh json", e))?;
        all.get(peer.to_string())
            .cloned()
            .ok_or_else(|| LabError::Daemon(format!("frr has no neighbor {peer}: {text}")))
    }

    fn configure(&self, lines: &[&str]) -> Result<()> {
        let asn = format!("router bgp {}", self.config.local_as);
        let mut commands = vec!["configure terminal", asn.as_str()];
        commands.extend_from_slice(lines);
        let out = self.vtysh(&commands)?;
        if out.contains('%') {
            return Err(LabError::Daemon(format!("vtysh {commands:?}: {out}")));
        }
        Ok(())
    }

    fn network_command(&self, prefix: &IpNet, add: bool) -> Result<()> {
        let family = match prefix {
            IpNet::V4(_) => "address-family ipv4 unicast",
            IpNet::V6(_) => "address-family ipv6 unicast",
        };
        let no = if add { "" } else { "no " };
        let network = format!("{no}network {prefix}{}", route_map_suffix(&self.config));
        self.configure(&[family, &network])
    }
}

fn conf_dir(pathspace: &str) -> PathBuf {
    Path::new("/etc/frr").join(pathspace)
}

fn chown_frr(path: &Path) -> Result<()> {
    run_ok(
        std::process::Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(path),
    )
    .map(|_| ())
}

fn vtysh(ns: &Netns, pathspace: &str, commands: &[&str]) -> Result<String> {
    let mut cmd = ns.command("vtysh");
    cmd.args(["-N", pathspace]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    run_ok(&mut cmd)
}

/// Starts zebra, waits for its zserv socket, starts bgpd, waits for vtysh to reach bgpd. Both run
/// in the foreground (no -d) as our children.
fn spawn(ns: &Netns, pathspace: &str, dir: &Path) -> Result<(Process, Process)> {
    let conf = conf_dir(pathspace).join("frr.conf");
    let conf = conf.to_string_lossy();
    let run_dir = Path::new("/var/run/frr").join(pathspace);
    let _ = std::fs::remove_file(run_dir.join("zserv.api"));
    let mut zebra = ns.spawn(
        "zebra",
        "/usr/lib/frr/zebra",
        &["-N", pathspace, "-f", &conf],
        &dir.join("zebra.out"),
    )?;
    wait_for(
        "zebra's zserv socket",
        START_TIMEOUT,
        Duration::from_millis(50),
        || (!zebra.is_running() || run_dir.join("zserv.api").exists()).then_some(()),
    )?;
    if !zebra.is_running() {
        let log = std::fs::read_to_string(dir.join("zebra.out")).unwrap_or_default();
        return Err(LabError::Daemon(format!("zebra exited at start: {log}")));
    }
    let mut bgpd = ns.spawn(
        "bgpd",
        "/usr/lib/frr/bgpd",
        &["-N", pathspace, "-f", &conf],
        &dir.join("bgpd.out"),
    )?;
    let up = wait_for(
        "vtysh to reach bgpd",
        START_TIMEOUT,
        Duration::from_millis(100),
        || {
            if !bgpd.is_running() {
                return Some(false);
            }
            vtysh(ns, pathspace, &["show bgp summary json"])
                .ok()
                .filter(|out| out.contains("ipv4Unicast") || out.contains("{}"))
                .map(|_| true)
        },
    )?;
    if !up {
        let log = std::fs::read_to_string(dir.join("bgpd.out")).unwrap_or_default();
        return Err(LabError::Daemon(format!("bgpd exited at start: {log}")));
    }
    Ok((zebra, bgpd))
}

fn route_map_suffix(config: &BgpConfig) -> String {
    if config.attrs.is_empty() {
        String::new()
    } else {
        format!(" route-map {ROUTE_MAP}")
    }
}

/// frr.conf: `no bgp ebgp-requires-policy`, `no bgp network import-check` (originated prefixes need
/// no RIB entry), one neighbor per config neighbor activated for IPv4 and IPv6 unicast.
fn render(dir: &Path, config: &BgpConfig, originated: &[IpNet]) -> String {
    let mut conf = String::new();
    conf.push_str("frr defaults traditional\n");
    let _ = writeln!(conf, "log file {}", dir.join("frr.log").display());
    let attrs = &config.attrs;
    if !attrs.is_empty() {
        let _ = writeln!(conf, "route-map {ROUTE_MAP} permit 10");
        if let Some(med) = attrs.med {
            let _ = writeln!(conf, " set metric {med}");
        }
        if let Some(list) = attrs.communities_list(" ") {
            let _ = writeln!(conf, " set community {list}");
        }
        if let Some(list) = attrs.large_communities_list(" ") {
            let _ = writeln!(conf, " set large-community {list}");
        }
        conf.push_str("exit\n");
    }
    let _ = writeln!(conf, "router bgp {}", config.local_as);
    let _ = writeln!(conf, " bgp router-id {}", config.router_id);
    conf.push_str(" no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n");
    let _ = writeln!(
        conf,
        " timers bgp {} {}",
        config.keepalive, config.hold_time
    );
    for n in &config.neighbors {
        let _ = writeln!(conf, " neighbor {} remote-as {}", n.address, n.remote_as);
        let _ = writeln!(
            conf,
            " neighbor {} timers connect {}",
            n.address, config.connect_retry
        );
        if let Some(key) = &n.password {
            let _ = writeln!(conf, " neighbor {} password {key}", n.address);
        }
        if n.passive {
            let _ = writeln!(conf, " neighbor {} passive", n.address);
        }
    }
    for (family, v4) in [("ipv4", true), ("ipv6", false)] {
        let _ = writeln!(conf, " address-family {family} unicast");
        for prefix in originated
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)) == v4)
        {
            let _ = writeln!(conf, "  network {prefix}{}", route_map_suffix(config));
        }
        for n in &config.neighbors {
            let _ = writeln!(conf, "  neighbor {} activate", n.address);
        }
        conf.push_str(" exit-address-family\n");
    }
    conf.push_str("exit\n");
    conf
}

fn routes_of(json: &str) -> Result<BTreeSet<IpNet>> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| LabError::parse("vtysh routes json", e))?;
    let mut prefixes = BTreeSet::new();
    if let Some(routes) = value.get("routes").and_then(Value::as_object) {
        for prefix in routes.keys() {
            prefixes.insert(parse_prefix(prefix)?);
        }
    }
    Ok(prefixes)
}

/// An FRR pathspace name; dropping it removes /etc/frr/NAME and /var/run/frr/NAME (after the
/// daemons, which are dropped first as earlier fields of [`Frr`]).
struct Pathspace(String);

impl Drop for Pathspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(conf_dir(&self.0));
        let _ = std::fs::remove_dir_all(Path::new("/var/run/frr").join(&self.0));
    }
}

impl BgpDaemon for Frr {
    fn kind(&self) -> &'static str {
        "frr"
    }

    fn netns(&self) -> &Netns {
        &self.ns
    }

    fn workdir(&self) -> &Path {
        self.dir.path()
    }

    fn bgp_process(&self) -> &Process {
        &self.bgpd
    }

    fn is_established(&self, peer: IpAddr) -> Result<bool> {
        Ok(self
            .neighbor_json(peer)?
            .get("bgpState")
            .and_then(Value::as_str)
            == Some("Established"))
    }

    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
        let mut all = BTreeSet::new();
        for family in ["ipv4", "ipv6"] {
            let json = self.vtysh(&[&format!(
                "show bgp {family} unicast neighbors {peer} routes json"
            )])?;
            all.extend(routes_of(&json)?);
        }
        Ok(all)
    }

    fn advertise(&mut self, prefix: IpNet) -> Result<()> {
        self.network_command(&prefix, true)?;
        if !self.originated.contains(&prefix) {
            self.originated.push(prefix);
        }
        Ok(())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<()> {
        self.network_command(&prefix, false)?;
        self.originated.retain(|p| *p != prefix);
        Ok(())
    }

    fn refresh_in(&self, peer: IpAddr) -> Result<()> {
        // Without soft-reconfiguration inbound FRR asks the peer with a ROUTE-REFRESH.
        self.vtysh(&[&format!("clear bgp {peer} soft in")])
            .map(|_| ())
    }

    fn updates_received(&self, peer: IpAddr) -> Result<u64> {
        self.neighbor_json(peer)?
            .pointer("/messageStats/updatesRecv")
            .and_then(Value::as_u64)
            .ok_or_else(|| LabError::parse("frr messageStats", "no updatesRecv"))
    }

    fn refreshes_received(&self, peer: IpAddr) -> Result<u64> {
        self.neighbor_json(peer)?
            .pointer("/messageStats/routeRefreshRecv")
            .and_then(Value::as_u64)
            .ok_or_else(|| LabError::parse("frr messageStats", "no routeRefreshRecv"))
    }

    fn shutdown_peer(&mut self, peer: IpAddr) -> Result<()> {
        self.configure(&[&format!("neighbor {peer} shutdown")])
    }

    fn restart(&mut self) -> Result<()> {
        self.bgpd.stop();
        self.zebra.stop();
        write_file(
            &conf_dir(&self.pathspace.0).join("frr.conf"),
            &render(self.dir.path(), &self.config, &self.originated),
        )?;
        let (zebra, bgpd) = spawn(&self.ns, &self.pathspace.0, self.dir.path())?;
        self.zebra = zebra;
        self.bgpd = bgpd;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_prefixes_of_a_routes_answer() {
        let json = r#"{"vrfId":0,"routes":{"2001:db8:100::/48":[{"valid":true,"peerId":"198.18.0.1"}],
            "10.1.0.0/24":[{"valid":true}]}}"#;
        let got: Vec<String> = routes_of(json)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, ["10.1.0.0/24", "2001:db8:100::/48"]);
        assert!(routes_of("{}").unwrap().is_empty());
    }
}
