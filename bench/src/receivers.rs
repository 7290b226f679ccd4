//! The daemons under test, each started in its own network namespace with a configuration that
//! measures BGP ingest only: accept everything from the injector, advertise nothing back, install
//! nothing into a FIB. Each can say how many prefixes it has received from the injector.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reef_lab::{Netns, Process, run_bounded};

use crate::procfs::Memory;

/// Time bound of one probe (a `vtysh`/`gobgp` command, a control-socket query). Generous: gobgpd answers
/// its API only after seconds while it ingests, and a probe killed and sent again costs it more work.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The gRPC port of gobgpd, on the loopback of its own namespace.
const GOBGP_API_PORT: u16 = 50051;

/// A BGP implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Reef,
    Bird,
    Frr,
    Gobgp,
}

impl Daemon {
    pub const ALL: [Daemon; 4] = [Daemon::Reef, Daemon::Bird, Daemon::Frr, Daemon::Gobgp];

    pub fn name(self) -> &'static str {
        match self {
            Daemon::Reef => "reef",
            Daemon::Bird => "bird",
            Daemon::Frr => "frr",
            Daemon::Gobgp => "gobgp",
        }
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Daemon {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Daemon> {
        Daemon::ALL
            .into_iter()
            .find(|daemon| daemon.name() == name)
            .ok_or_else(|| anyhow!("unknown daemon {name:?} (known: reef, bird, frr, gobgp)"))
    }
}

/// The eBGP session between the injector and the daemon under test.
#[derive(Debug, Clone, Copy)]
pub struct Peering {
    pub daemon_addr: Ipv4Addr,
    pub daemon_as: u32,
    pub injector_addr: Ipv4Addr,
    pub injector_as: u32,
    /// Long enough that a daemon busy with a million routes does not drop the session.
    pub hold_time: u16,
}

/// BIRD 2: one `bgp` protocol, `import all`, `export none`, no `kernel` protocol (nothing goes to the FIB).
pub fn bird_config(peering: &Peering) -> String {
    format!(
        "router id {daemon};\n\
         protocol device {{ }}\n\
         protocol bgp injector {{\n\
         \x20 local {daemon} as {daemon_as};\n\
         \x20 neighbor {injector} as {injector_as};\n\
         \x20 passive on;\n\
         \x20 hold time {hold};\n\
         \x20 ipv4 {{ import all; export none; }};\n\
         }}\n",
        daemon = peering.daemon_addr,
        daemon_as = peering.daemon_as,
        injector = peering.injector_addr,
        injector_as = peering.injector_as,
        hold = peering.hold_time,
    )
}

/// FRR bgpd (started with `-n`/`--no_kernel`: no route goes to zebra, so none to the FIB): accept all
/// in (`ebgp-requires-policy` off, no inbound route-map: bgpd resolves route-maps named in its start-up
/// config only after its route-map delay timer and denies until then), deny all out.
pub fn frr_bgpd_config(peering: &Peering) -> String {
    let injector = peering.injector_addr;
    format!(
        "router bgp {daemon_as}\n\
         \x20bgp router-id {daemon}\n\
         \x20no bgp ebgp-requires-policy\n\
         \x20neighbor {injector} remote-as {injector_as}\n\
         \x20neighbor {injector} passive\n\
         \x20neighbor {injector} timers {keepalive} {hold}\n\
         \x20address-family ipv4 unicast\n\
         \x20 neighbor {injector} route-map REJECT out\n\
         \x20exit-address-family\n\
         route-map REJECT deny 10\n",
        daemon_as = peering.daemon_as,
        daemon = peering.daemon_addr,
        injector_as = peering.injector_as,
        keepalive = peering.hold_time / 3,
        hold = peering.hold_time,
    )
}

/// GoBGP: no zebra, import accept, export reject.
pub fn gobgp_config(peering: &Peering) -> String {
    format!(
        "[global.config]\n\
         \x20 as = {daemon_as}\n\
         \x20 router-id = \"{daemon}\"\n\
         \x20 local-address-list = [\"{daemon}\"]\n\
         [global.apply-policy.config]\n\
         \x20 default-import-policy = \"accept-route\"\n\
         \x20 default-export-policy = \"reject-route\"\n\
         [[neighbors]]\n\
         \x20 [neighbors.config]\n\
         \x20   neighbor-address = \"{injector}\"\n\
         \x20   peer-as = {injector_as}\n\
         \x20 [neighbors.transport.config]\n\
         \x20   passive-mode = true\n\
         \x20 [neighbors.timers.config]\n\
         \x20   hold-time = {hold}\n\
         \x20 [[neighbors.afi-safis]]\n\
         \x20   [neighbors.afi-safis.config]\n\
         \x20     afi-safi-name = \"ipv4-unicast\"\n",
        daemon_as = peering.daemon_as,
        daemon = peering.daemon_addr,
        injector = peering.injector_addr,
        injector_as = peering.injector_as,
        hold = peering.hold_time,
    )
}

/// reefd in speaker mode (see agent/README.md): one passive eBGP peer, nothing advertised.
pub fn reefd_config(peering: &Peering, admin_socket: &Path) -> String {
    format!(
        "routerId: {daemon}\n\
         asNumber: {daemon_as}\n\
         listen: {{ address: \"{daemon}\", port: 179 }}\n\
         admin: {{ socket: {socket} }}\n\
         peers:\n\
         \x20 - address: {injector}\n\
         \x20   asNumber: {injector_as}\n\
         \x20   passive: true\n\
         \x20   holdTime: {hold}\n",
        daemon = peering.daemon_addr,
        daemon_as = peering.daemon_as,
        socket = admin_socket.display(),
        injector = peering.injector_addr,
        injector_as = peering.injector_as,
        hold = peering.hold_time,
    )
}

/// How to ask a running daemon for the number of prefixes received from the injector.
enum Probe {
    Bird { socket: PathBuf },
    Frr { pathspace: String },
    Gobgp { netns: String },
    Reef { socket: PathBuf },
}

/// A daemon under test, running in its namespace. Dropping it stops its processes by pid and removes
/// its files.
pub struct Receiver {
    daemon: Daemon,
    injector: Ipv4Addr,
    probe: Probe,
    /// Stopped (by pid) on drop, last started first.
    processes: Vec<Process>,
    /// FRR's per-instance config and runtime directories (outside `workdir`; FRR insists on its paths).
    frr_dirs: Vec<PathBuf>,
    workdir: tempfile::TempDir,
}

impl Receiver {
    /// Starts `daemon` inside `netns`. `reefd` is the path of the reefd binary (only used for Reef).
    pub fn start(
        daemon: Daemon,
        netns: &Netns,
        peering: &Peering,
        reefd: &Path,
    ) -> Result<Receiver> {
        let workdir = tempfile::Builder::new()
            .prefix(&format!("reef-bench-{daemon}-"))
            .tempdir()
            .context("temp dir")?;
        let dir = workdir.path().to_path_buf();
        let mut receiver = Receiver {
            daemon,
            injector: peering.injector_addr,
            probe: Probe::Reef {
                socket: PathBuf::new(),
            },
            processes: Vec::new(),
            frr_dirs: Vec::new(),
            workdir,
        };
        let log = dir.join(format!("{daemon}.log"));
        match daemon {
            Daemon::Bird => {
                let conf = write(&dir, "bird.conf", &bird_config(peering))?;
                let socket = dir.join("bird.ctl");
                let args = ["-f", "-c", path_str(&conf)?, "-s", path_str(&socket)?];
                receiver
                    .processes
                    .push(netns.spawn("bird", "bird", &args, &log)?);
                receiver.probe = Probe::Bird { socket };
            }
            Daemon::Frr => {
                // FRR's pathspace: /etc/frr/NAME and /var/run/frr/NAME, owned by frr (the daemons drop to it).
                let pathspace = netns.name().to_string();
                let etc = PathBuf::from("/etc/frr").join(&pathspace);
                receiver.frr_dirs.push(etc.clone());
                receiver
                    .frr_dirs
                    .push(PathBuf::from("/var/run/frr").join(&pathspace));
                std::fs::create_dir_all(&etc)
                    .with_context(|| format!("create {}", etc.display()))?;
                let zebra_conf = write(&etc, "zebra.conf", "hostname zebra\n")?;
                let bgpd_conf = write(&etc, "bgpd.conf", &frr_bgpd_config(peering))?;
                write(&etc, "vtysh.conf", "")?;
                reef_lab::run_ok(Command::new("chown").args(["-R", "frr:frr", path_str(&etc)?]))?;
                // No -i: the default pid files go to /var/run/frr/NAME, which the frr user can write.
                let zebra_args = ["-N", &pathspace, "-f", path_str(&zebra_conf)?];
                receiver.processes.push(netns.spawn(
                    "zebra",
                    "/usr/lib/frr/zebra",
                    &zebra_args,
                    &log,
                )?);
                // bgpd connects to zebra's socket; zebra creates it during start-up.
                let zserv = PathBuf::from("/var/run/frr")
                    .join(&pathspace)
                    .join("zserv.api");
                reef_lab::wait_for(
                    "zebra's zserv.api",
                    PROBE_TIMEOUT,
                    Duration::from_millis(20),
                    || zserv.exists().then_some(()),
                )
                .with_context(|| receiver.log_tail())?;
                let bgpd_args = ["-n", "-N", &pathspace, "-f", path_str(&bgpd_conf)?];
                receiver.processes.push(netns.spawn(
                    "bgpd",
                    "/usr/lib/frr/bgpd",
                    &bgpd_args,
                    &log,
                )?);
                receiver.probe = Probe::Frr { pathspace };
            }
            Daemon::Gobgp => {
                let conf = write(&dir, "gobgpd.toml", &gobgp_config(peering))?;
                let api = format!("127.0.0.1:{GOBGP_API_PORT}");
                let args = [
                    "-f",
                    path_str(&conf)?,
                    "-t",
                    "toml",
                    "--api-hosts",
                    &api,
                    "-l",
                    "warn",
                    "--pprof-disable",
                ];
                receiver
                    .processes
                    .push(netns.spawn("gobgpd", "gobgpd", &args, &log)?);
                receiver.probe = Probe::Gobgp {
                    netns: netns.name().to_string(),
                };
            }
            Daemon::Reef => {
                let socket = dir.join("reefd.sock");
                let conf = write(&dir, "reefd.yaml", &reefd_config(peering, &socket))?;
                let args = ["--config", path_str(&conf)?, "--log-level", "warn"];
                receiver
                    .processes
                    .push(netns.spawn("reefd", reefd, &args, &log)?);
                receiver.probe = Probe::Reef { socket };
            }
        }
        Ok(receiver)
    }

    pub fn daemon(&self) -> Daemon {
        self.daemon
    }

    /// The daemon's log file (stdout and stderr), for error messages.
    pub fn log_path(&self) -> PathBuf {
        self.workdir.path().join(format!("{}.log", self.daemon))
    }

    /// Pids of the processes whose memory counts (FRR: zebra and bgpd).
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .map(|process| process.pid() as u32)
            .collect()
    }

    pub fn memory(&self) -> Result<Memory> {
        Memory::of_pids(&self.pids())
    }

    /// Fails if a daemon process has exited (crashed, or refused its config).
    pub fn check_running(&mut self) -> Result<()> {
        let exited = self
            .processes
            .iter_mut()
            .find_map(|process| (!process.is_running()).then(|| process.name().to_string()));
        match exited {
            Some(name) => bail!("{name} exited: {}", self.log_tail()),
            None => Ok(()),
        }
    }

    /// The last lines of the daemon's output, for error messages (its directory goes with it).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Prefixes received from the injector as the daemon reports them; `Ok(None)` while the daemon
    /// cannot answer yet (starting up).
    pub fn prefixes_received(&self) -> Result<Option<u64>> {
        let injector = self.injector.to_string();
        match &self.probe {
            Probe::Bird { socket } => {
                let Ok(reply) = bird_query(socket, "show protocols all injector") else {
                    return Ok(None);
                };
                Ok(Some(bird_imported(&reply).unwrap_or(0)))
            }
            Probe::Frr { pathspace } => {
                let mut vtysh = Command::new("vtysh");
                vtysh.args(["-N", pathspace, "-c", "show bgp ipv4 unicast summary json"]);
                let output = run_bounded(&mut vtysh, PROBE_TIMEOUT)?;
                if !output.status.success() {
                    return Ok(None);
                }
                let json: serde_json::Value =
                    serde_json::from_slice(&output.stdout).context("vtysh json")?;
                Ok(Some(frr_pfx_rcd(&json, &injector).unwrap_or(0)))
            }
            Probe::Gobgp { netns } => {
                let port = GOBGP_API_PORT.to_string();
                let mut gobgp = Command::new("ip");
                gobgp.args([
                    "netns", "exec", netns, "gobgp", "-p", &port, "neighbor", &injector, "-j",
                ]);
                let output = run_bounded(&mut gobgp, PROBE_TIMEOUT)?;
                if !output.status.success() {
                    return Ok(None);
                }
                let json: serde_json::Value =
                    serde_json::from_slice(&output.stdout).context("gobgp json")?;
                Ok(Some(gobgp_accepted(&json).unwrap_or(0)))
            }
            Probe::Reef { socket } => {
                let Ok(body) = http_get_unix(socket, "/v1/bgp/peers") else {
                    return Ok(None);
                };
                let json: serde_json::Value =
                    serde_json::from_str(&body).context("reefd peers json")?;
                Ok(Some(reef_prefixes_received(&json, &injector).unwrap_or(0)))
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
        for dir in &self.frr_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", path.display()))
}

/// One query on BIRD's control socket: lines `NNNN-text` (more follows), ` text` (continuation) and a
/// final `NNNN text`; the greeting `0001 ...` comes first.
fn bird_query(socket: &Path, query: &str) -> Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    (&stream).write_all(format!("{query}\n").as_bytes())?;
    let mut reply = String::new();
    // A reply of `show protocols all` is a few dozen lines; the bound guards against a runaway socket.
    for _ in 0..10_000 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("BIRD closed the control socket");
        }
        let is_final = line.len() > 4
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b' ';
        reply.push_str(&line);
        if is_final {
            return Ok(reply);
        }
    }
    bail!("BIRD reply too long")
}

/// `Routes: 1000 imported, 0 exported, 1000 preferred` in `show protocols all`.
fn bird_imported(reply: &str) -> Option<u64> {
    let routes = reply.lines().find_map(|line| line.split_once("Routes:"))?.1;
    let (count, rest) = routes.trim().split_once(' ')?;
    rest.starts_with("imported").then(|| count.parse().ok())?
}

/// `ipv4Unicast.peers.<addr>.pfxRcd` of `show bgp ipv4 unicast summary json`.
fn frr_pfx_rcd(json: &serde_json::Value, peer: &str) -> Option<u64> {
    let peers = json
        .get("peers")
        .or_else(|| json.get("ipv4Unicast")?.get("peers"))?;
    peers.get(peer)?.get("pfxRcd")?.as_u64()
}

/// Accepted prefixes of `gobgp neighbor ADDR -j`: GoBGP 3 puts them per family in
/// `afi_safis[].state.accepted`, older versions in `state.adj_table.accepted` (zero values are omitted).
fn gobgp_accepted(json: &serde_json::Value) -> Option<u64> {
    let state = json.get("state")?;
    let per_family: u64 = json
        .get("afi_safis")
        .and_then(serde_json::Value::as_array)
        .map(|families| {
            families
                .iter()
                .filter_map(|family| family.get("state")?.get("accepted")?.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let adj_table = state
        .get("adj_table")
        .and_then(|table| table.get("accepted"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Some(per_family.max(adj_table))
}

/// `prefixesReceived` of the peer in reefd's `GET /v1/bgp/peers` (a list, or `{"peers": [...]}`).
fn reef_prefixes_received(json: &serde_json::Value, peer: &str) -> Option<u64> {
    let peers = json.as_array().or_else(|| json.get("peers")?.as_array())?;
    let entry = peers
        .iter()
        .find(|entry| entry.get("address").and_then(|a| a.as_str()) == Some(peer))?;
    entry.get("prefixesReceived")?.as_u64()
}

/// A minimal HTTP/1.1 GET over a unix socket (reefd's admin API); handles a chunked body.
fn http_get_unix(socket: &Path, uri: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {uri} HTTP/1.1\r\nHost: reefd\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response).context("reefd reply is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("reefd reply without header end"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("reefd answered {status:?}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        Ok(body.to_string())
    }
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peering() -> Peering {
        Peering {
            daemon_addr: Ipv4Addr::new(198, 18, 0, 2),
            daemon_as: 65000,
            injector_addr: Ipv4Addr::new(198, 18, 0, 1),
            injector_as: 65001,
            hold_time: 240,
        }
    }

    #[test]
    fn daemon_names_round_trip() {
        for daemon in Daemon::ALL {
            assert_eq!(daemon.name().parse::<Daemon>().unwrap(), daemon);
        }
        assert!("quagga".parse::<Daemon>().is_err());
    }

    #[test]
    fn configs_name_the_peer_and_export_nothing() {
        let peering = peering();
        let bird = bird_config(&peering);
        assert!(bird.contains("neighbor 198.18.0.1 as 65001;") && bird.contains("export none"));
        assert!(!bird.contains("kernel"));
        let frr = frr_bgpd_config(&peering);
        assert!(frr.contains("neighbor 198.18.0.1 route-map REJECT out"));
        assert!(frr.contains("no bgp ebgp-requires-policy"));
        let gobgp = gobgp_config(&peering);
        assert!(gobgp.contains("default-export-policy = \"reject-route\""));
        let reef = reefd_config(&peering, Path::new("/tmp/x.sock"));
        assert!(reef.contains("- address: 198.18.0.1") && reef.contains("passive: true"));
    }

    #[test]
    fn parses_bird_imported_routes() {
        let reply = "1002-injector BGP        ---        up     17:40:00.000  Established\n\
                     1006-  BGP state:          Established\n\
                     \x20   Channel ipv4\n\
                     \x20     Routes:         1000 imported, 0 exported, 1000 preferred\n\
                     0000 \n";
        assert_eq!(bird_imported(reply), Some(1000));
        assert_eq!(bird_imported("0000 \n"), None);
    }

    #[test]
    fn parses_frr_gobgp_and_reef_counts() {
        let frr: serde_json::Value =
            serde_json::from_str(r#"{"ipv4Unicast":{"peers":{"198.18.0.1":{"pfxRcd":42}}}}"#)
                .unwrap();
        assert_eq!(frr_pfx_rcd(&frr, "198.18.0.1"), Some(42));
        let gobgp: serde_json::Value =
            serde_json::from_str(r#"{"state":{"adj_table":{"received":7,"accepted":7}}}"#).unwrap();
        assert_eq!(gobgp_accepted(&gobgp), Some(7));
        let gobgp3: serde_json::Value = serde_json::from_str(
            r#"{"state":{"session_state":6},"afi_safis":[{"state":{"received":8,"accepted":8}}]}"#,
        )
        .unwrap();
        assert_eq!(gobgp_accepted(&gobgp3), Some(8));
        let reef: serde_json::Value =
            serde_json::from_str(r#"[{"address":"198.18.0.1","prefixesReceived":9}]"#).unwrap();
        assert_eq!(reef_prefixes_received(&reef, "198.18.0.1"), Some(9));
    }

    #[test]
    fn dechunks_http_body() {
        assert_eq!(
            dechunk("4\r\n[1,2\r\n1\r\n]\r\n0\r\n\r\n").unwrap(),
            "[1,2]"
        );
    }
}
