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

/// Raw frr.conf text added to what the lab renders from the [`BgpConfig`], for the features the
/// common config does not model (route reflection, graceful restart, BFD, multipath, route maps).
#[derive(Debug, Clone, Default)]
pub struct FrrOptions {
    /// Before `router bgp` (e.g. a `bfd` block with a profile, route-maps). Every daemon reads the
    /// whole file and `exit` at the top level ends a daemon's config parsing when that daemon did
    /// not know the block: leave the `exit` of blocks other daemons lack (`bfd`) out.
    pub global: String,
    /// Inside `router bgp`, after the neighbors (e.g. `bgp graceful-restart`, `neighbor X bfd`).
    pub router: String,
    /// Inside `address-family ipv4 unicast` (e.g. `neighbor X route-reflector-client`,
    /// `maximum-paths 4`).
    pub ipv4: String,
    /// Inside `address-family ipv6 unicast`.
    pub ipv6: String,
    /// Also start bfdd (needed by `neighbor X bfd`).
    pub bfdd: bool,
}

/// FRR's zebra and bgpd (and bfdd when asked). Dropping it stops them and removes /etc/frr/NAME
/// and /var/run/frr/NAME.
pub struct Frr {
    bgpd: Process,
    bfdd: Option<Process>,
    zebra: Process,
    config: BgpConfig,
    options: FrrOptions,
    originated: Vec<IpNet>,
    pathspace: Pathspace,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Frr {
    /// Writes frr.conf and starts zebra then bgpd inside `ns` (taking the namespace). The
    /// pathspace name is the namespace name. Returns once vtysh reaches bgpd.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<Frr> {
        Frr::start_with(ns, config, FrrOptions::default())
    }

    /// [`Frr::start`] with raw config added (see [`FrrOptions`]).
    pub fn start_with(ns: Netns, config: BgpConfig, options: FrrOptions) -> Result<Frr> {
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
            &render(dir.path(), &config, &options, &originated),
        )?;
        chown_frr(&conf_dir)?;
        let daemons = spawn(&ns, &pathspace.0, dir.path(), options.bfdd, None)?;
        Ok(Frr {
            bgpd: daemons.bgpd,
            bfdd: daemons.bfdd,
            zebra: daemons.zebra,
            config,
            options,
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

    /// `show bgp ipv4|ipv6 unicast PREFIX json`: every path of `prefix` in FRR's RIB (`paths[]` with
    /// `nexthops`, `originatorId`, `clusterList`, `community`, `stale`, ...); `{}` when none.
    pub fn route_json(&self, prefix: IpNet) -> Result<Value> {
        let family = match prefix {
            IpNet::V4(_) => "ipv4",
            IpNet::V6(_) => "ipv6",
        };
        let text = self.vtysh(&[&format!("show bgp {family} unicast {prefix} json")])?;
        serde_json::from_str(&text).map_err(|e| LabError::parse("vtysh route json", e))
    }

    /// Kills bgpd, bfdd and zebra with SIGKILL: no NOTIFICATION, the kernel routes stay (a crash).
    pub fn crash(&mut self) {
        self.bgpd.kill();
        if let Some(bfdd) = &mut self.bfdd {
            bfdd.kill();
        }
        self.zebra.kill();
    }

    /// The prefixes a later [`Frr::respawn`] (or restart) originates, set while FRR is down.
    pub fn set_originated(&mut self, prefixes: Vec<IpNet>) {
        self.originated = prefixes;
    }

    /// Starts the daemons again after [`Frr::crash`] (running ones are stopped first). zebra gets
    /// `-K keep_kernel_routes` (seconds): it keeps the routes the previous run left in the kernel
    /// that long, until bgpd installs them again (FRR's own graceful restart of the data plane).
    pub fn respawn(&mut self, keep_kernel_routes: Option<u32>) -> Result<()> {
        self.stop_daemons();
        write_file(
            &conf_dir(&self.pathspace.0).join("frr.conf"),
            &render(
                self.dir.path(),
                &self.config,
                &self.options,
                &self.originated,
            ),
        )?;
        let daemons = spawn(
            &self.ns,
            &self.pathspace.0,
            self.dir.path(),
            self.options.bfdd,
            keep_kernel_routes,
        )?;
        self.zebra = daemons.zebra;
        self.bfdd = daemons.bfdd;
        self.bgpd = daemons.bgpd;
        Ok(())
    }

    fn stop_daemons(&mut self) {
        self.bgpd.stop();
        if let Some(bfdd) = &mut self.bfdd {
            bfdd.stop();
        }
        self.zebra.stop();
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

struct Daemons {
    zebra: Process,
    bfdd: Option<Process>,
    bgpd: Process,
}

/// Starts zebra (with `-K SECONDS` when given), waits for its zserv socket, starts bfdd when asked,
/// starts bgpd, waits for vtysh to reach bgpd. All run in the foreground (no -d) as our children.
fn spawn(
    ns: &Netns,
    pathspace: &str,
    dir: &Path,
    with_bfdd: bool,
    keep_kernel_routes: Option<u32>,
) -> Result<Daemons> {
    let conf = conf_dir(pathspace).join("frr.conf");
    let conf = conf.to_string_lossy();
    let run_dir = Path::new("/var/run/frr").join(pathspace);
    let _ = std::fs::remove_file(run_dir.join("zserv.api"));
    let keep = keep_kernel_routes.map(|s| s.to_string());
    let mut zebra_args = vec!["-N", pathspace, "-f", &conf];
    if let Some(seconds) = &keep {
        zebra_args.extend(["-K", seconds.as_str()]);
    }
    let mut zebra = ns.spawn(
        "zebra",
        "/usr/lib/frr/zebra",
        &zebra_args,
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
    let bfdd = if with_bfdd {
        Some(ns.spawn(
            "bfdd",
            "/usr/lib/frr/bfdd",
            &["-N", pathspace, "-f", &conf],
            &dir.join("bfdd.out"),
        )?)
    } else {
        None
    };
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
    Ok(Daemons { zebra, bfdd, bgpd })
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
fn render(dir: &Path, config: &BgpConfig, options: &FrrOptions, originated: &[IpNet]) -> String {
    let mut conf = String::new();
    conf.push_str("frr defaults traditional\n");
    let _ = writeln!(conf, "log file {}", dir.join("frr.log").display());
    push_lines(&mut conf, &options.global);
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
    push_lines(&mut conf, &options.router);
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
        push_lines(&mut conf, if v4 { &options.ipv4 } else { &options.ipv6 });
        conf.push_str(" exit-address-family\n");
    }
    conf.push_str("exit\n");
    conf
}

/// Appends raw config text, one line per line, ending with a newline.
fn push_lines(conf: &mut String, text: &str) {
    for line in text.lines() {
        conf.push_str(line);
        conf.push('\n');
    }
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
        self.respawn(None)
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
