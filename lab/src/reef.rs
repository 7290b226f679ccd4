//! Reef's own speaker (`reefd --config FILE`, speaker mode) in its own namespace, driven with
//! `reefctl bgp ... --socket PATH` (formats in agent/README.md). It implements [`BgpDaemon`] so the
//! interop tests treat Reef and the reference daemons alike.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::bgp::{BgpConfig, BgpDaemon, START_TIMEOUT, parse_prefix, workdir, write_file};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::{binary, run_ok, wait_for};

/// reefd in speaker mode. Started from a [`BgpConfig`] every session carries `nextHop` /
/// `nextHopV6` = the link's addresses, so routes of the other family than the session's get a usable
/// next hop; started from raw YAML ([`Reefd::start_yaml`]) it runs exactly that file.
pub struct Reefd {
    process: Process,
    source: Source,
    reefd: PathBuf,
    reefctl: PathBuf,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Reefd {
    /// Writes reefd.yaml and starts `target/<profile>/reefd` inside `ns` (taking the namespace);
    /// returns once the admin socket answers.
    pub fn start(ns: Netns, config: BgpConfig) -> Result<Reefd> {
        let reefd = binary("reefd")?;
        let reefctl = binary("reefctl")?;
        let dir = workdir("reefd")?;
        let source = Source::Lab(config);
        let process = spawn(&ns, dir.path(), &reefd, &reefctl, &source.yaml(dir.path()))?;
        Ok(Reefd {
            process,
            source,
            reefd,
            reefctl,
            dir,
            ns,
        })
    }

    /// Starts reefd inside `ns` from `yaml` as written (the lab appends only the `admin` socket, in
    /// its working directory: leave `admin` out). Routes advertised or withdrawn with `reefctl` later
    /// are not written back: a restart runs the same file again.
    pub fn start_yaml(ns: Netns, yaml: &str) -> Result<Reefd> {
        let reefd = binary("reefd")?;
        let reefctl = binary("reefctl")?;
        let dir = workdir("reefd")?;
        let source = Source::Yaml(yaml.to_string());
        let process = spawn(&ns, dir.path(), &reefd, &reefctl, &source.yaml(dir.path()))?;
        Ok(Reefd {
            process,
            source,
            reefd,
            reefctl,
            dir,
            ns,
        })
    }

    /// The pid of the running reefd.
    pub fn pid(&self) -> libc::pid_t {
        self.process.pid()
    }

    /// Kills reefd with SIGKILL: no NOTIFICATION, no cleanup, kernel routes left behind (a crash).
    pub fn crash(&mut self) {
        self.process.kill();
    }

    /// Starts reefd again from the same configuration (after [`Reefd::crash`]; a running reefd
    /// is stopped first). Returns once the admin socket answers.
    pub fn respawn(&mut self) -> Result<()> {
        self.process.stop();
        self.process = spawn(
            &self.ns,
            self.dir.path(),
            &self.reefd,
            &self.reefctl,
            &self.source.yaml(self.dir.path()),
        )?;
        Ok(())
    }

    /// SIGTERM, then waits at most `timeout` for reefd to exit by itself (killed when the time is up:
    /// an error). Returns its exit status. With graceful restart configured reefd closes its
    /// sessions without NOTIFICATION and leaves its kernel routes in place.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        self.process.signal(libc::SIGTERM)?;
        self.process.wait_timeout(timeout)
    }

    /// Replaces the YAML of a reefd started with [`Reefd::start_yaml`] and sends SIGHUP: reefd reads
    /// the file again and applies what it can without a restart (peers' filters, communities).
    /// Later restarts use the new file.
    pub fn reload_yaml(&mut self, yaml: &str) -> Result<()> {
        self.set_yaml(yaml)?;
        self.process.signal(libc::SIGHUP)
    }

    /// Replaces the YAML of a reefd started with [`Reefd::start_yaml`] without telling reefd: the
    /// next [`Reefd::respawn`] runs it (e.g. a config changed while reefd was down).
    pub fn set_yaml(&mut self, yaml: &str) -> Result<()> {
        if !matches!(self.source, Source::Yaml(_)) {
            return Err(LabError::Daemon(
                "set_yaml / reload_yaml need a reefd started with start_yaml".to_string(),
            ));
        }
        self.source = Source::Yaml(yaml.to_string());
        write_file(
            &self.dir.path().join("reefd.yaml"),
            &self.source.yaml(self.dir.path()),
        )
    }

    /// reefd's log (stdout and stderr of every run so far).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reefd.log")).unwrap_or_default()
    }

    /// `reefctl bgp rib [PREFIX] -o json`: the Loc-RIB, or every path of `prefix` with its verdict.
    pub fn rib_json(&self, prefix: Option<IpNet>) -> Result<Value> {
        let prefix_text = prefix.map(|p| p.to_string());
        let mut args = vec!["rib"];
        args.extend(prefix_text.as_deref());
        args.extend(["-o", "json"]);
        let text = self.reefctl(&args)?;
        serde_json::from_str(&text).map_err(|e| LabError::parse("reefctl rib json", e))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("reefd.sock")
    }

    /// `reefctl bgp <args> --socket SOCK` (the admin API is a unix socket: no namespace needed).
    pub fn reefctl(&self, args: &[&str]) -> Result<String> {
        reefctl(&self.reefctl, &self.socket(), args)
    }

    /// `reefctl bgp status -o json`: every peer (fields in agent/README.md).
    pub fn peers(&self) -> Result<Vec<Value>> {
        let text = self.reefctl(&["status", "-o", "json"])?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| LabError::parse("reefctl status json", e))?;
        match value {
            Value::Array(list) => Ok(list),
            Value::Object(mut map) => match map.remove("peers") {
                Some(Value::Array(list)) => Ok(list),
                _ => Err(LabError::parse("reefctl status json", "no peer list")),
            },
            other => Err(LabError::parse("reefctl status json", other)),
        }
    }

    /// The status of the session with `peer` (`state`, `lastError`, `info`, ...).
    pub fn peer(&self, peer: IpAddr) -> Result<Value> {
        let address = peer.to_string();
        self.peers()?
            .into_iter()
            .find(|p| p.get("address").and_then(Value::as_str) == Some(&address))
            .ok_or_else(|| LabError::Daemon(format!("reefd has no peer {peer}")))
    }

    /// `reefctl bgp routes --peer PEER -o json`: Reef's Adj-RIB-In from `peer`, then the routes it
    /// received but ignored (those have `ignored`: the reason).
    pub fn routes_json(&self, peer: IpAddr) -> Result<Vec<Value>> {
        let text = self.reefctl(&["routes", "--peer", &peer.to_string(), "-o", "json"])?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| LabError::parse("reefctl routes json", e))?;
        match value {
            Value::Array(list) => Ok(list),
            Value::Object(mut map) => match map.remove("routes") {
                Some(Value::Array(list)) => Ok(list),
                _ => Err(LabError::parse("reefctl routes json", "no route list")),
            },
            other => Err(LabError::parse("reefctl routes json", other)),
        }
    }
}

fn reefctl(program: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    run_ok(
        Command::new(program)
            .arg("bgp")
            .args(args)
            .arg("--socket")
            .arg(socket),
    )
}

fn render(dir: &Path, config: &BgpConfig) -> String {
    let mut yaml = String::new();
    let _ = writeln!(yaml, "routerId: {}", config.router_id);
    let _ = writeln!(yaml, "asNumber: {}", config.local_as);
    // "::" accepts IPv4 and IPv6; IPv4-only labs keep the plain IPv4 listener.
    let any_v6 = config.neighbors.iter().any(|n| n.address.is_ipv6());
    let listen = if any_v6 { "::" } else { "0.0.0.0" };
    let _ = writeln!(yaml, "listen: {{ address: \"{listen}\", port: 179 }}");
    let _ = writeln!(
        yaml,
        "admin: {{ socket: \"{}\" }}",
        dir.join("reefd.sock").display()
    );
    let prefixes: Vec<String> = config
        .originate
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    let _ = writeln!(yaml, "prefixes: [{}]", prefixes.join(", "));
    yaml.push_str("peers:\n");
    for n in &config.neighbors {
        let _ = writeln!(
            yaml,
            "  - address: \"{}\"\n    asNumber: {}",
            n.address, n.remote_as
        );
        let _ = writeln!(
            yaml,
            "    holdTime: {}\n    keepaliveTime: {}\n    connectRetryTime: {}",
            config.hold_time, config.keepalive, config.connect_retry
        );
        let _ = writeln!(
            yaml,
            "    nextHop: \"{}\"\n    nextHopV6: \"{}\"",
            config.local_v4, config.local_v6
        );
        if let Some(key) = &n.password {
            let _ = writeln!(yaml, "    password: \"{key}\"");
        }
        if n.passive {
            yaml.push_str("    passive: true\n");
        }
    }
    yaml
}

/// What reefd.yaml is made from.
enum Source {
    Lab(BgpConfig),
    Yaml(String),
}

impl Source {
    fn yaml(&self, dir: &Path) -> String {
        match self {
            Source::Lab(config) => render(dir, config),
            Source::Yaml(text) => {
                let mut yaml = text.trim_end().to_string();
                let _ = write!(
                    yaml,
                    "\nadmin: {{ socket: \"{}\" }}\n",
                    dir.join("reefd.sock").display()
                );
                yaml
            }
        }
    }
}

fn spawn(ns: &Netns, dir: &Path, reefd: &Path, reefctl_bin: &Path, yaml: &str) -> Result<Process> {
    let conf = dir.join("reefd.yaml");
    write_file(&conf, yaml)?;
    let socket = dir.join("reefd.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = ns.command(reefd);
    cmd.arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "info,reef_bgp=debug");
    let mut process = Process::spawn("reefd", cmd, &dir.join("reefd.log"))?;
    let up = wait_for(
        "reefd's admin socket",
        START_TIMEOUT,
        Duration::from_millis(50),
        || {
            if !process.is_running() {
                return Some(false);
            }
            reefctl(reefctl_bin, &socket, &["status", "-o", "json"])
                .ok()
                .map(|_| true)
        },
    )?;
    if !up {
        let log = std::fs::read_to_string(dir.join("reefd.log")).unwrap_or_default();
        return Err(LabError::Daemon(format!("reefd exited at start: {log}")));
    }
    Ok(process)
}

impl BgpDaemon for Reefd {
    fn kind(&self) -> &'static str {
        "reef"
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
        Ok(self.peer(peer)?.get("state").and_then(Value::as_str) == Some("Established"))
    }

    /// The routes from `peer` in Reef's Adj-RIB-In. reefd drops looped paths on input (RFC 4271
    /// §9.1.2), so FRR sending our own prefixes back over eBGP shows up here as a wrong set.
    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>> {
        self.routes_json(peer)?
            .iter()
            // Routes received but ignored (with the reason in `ignored`) are not in the Adj-RIB-In.
            .filter(|r| r.get("ignored").is_none())
            .map(|r| parse_prefix(r.get("prefix").and_then(Value::as_str).unwrap_or_default()))
            .collect()
    }

    fn advertise(&mut self, prefix: IpNet) -> Result<()> {
        self.reefctl(&["advertise", &prefix.to_string()])?;
        if let Source::Lab(config) = &mut self.source
            && !config.originate.contains(&prefix)
        {
            config.originate.push(prefix);
        }
        Ok(())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<()> {
        self.reefctl(&["withdraw", &prefix.to_string()])?;
        if let Source::Lab(config) = &mut self.source {
            config.originate.retain(|p| *p != prefix);
        }
        Ok(())
    }

    fn refresh_in(&self, peer: IpAddr) -> Result<()> {
        self.reefctl(&["refresh", &peer.to_string()]).map(|_| ())
    }

    fn updates_received(&self, _peer: IpAddr) -> Result<u64> {
        Err(LabError::Daemon(
            "reefd does not expose UPDATE counters".to_string(),
        ))
    }

    fn refreshes_received(&self, _peer: IpAddr) -> Result<u64> {
        Err(LabError::Daemon(
            "reefd does not expose ROUTE-REFRESH counters".to_string(),
        ))
    }

    fn shutdown_peer(&mut self, _peer: IpAddr) -> Result<()> {
        Err(LabError::Daemon(
            "reefd has no per-peer shutdown command".to_string(),
        ))
    }

    fn restart(&mut self) -> Result<()> {
        self.respawn()
    }
}
