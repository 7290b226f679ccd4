//! The daemons under test, each started in its own network namespace. The base configuration measures
//! BGP ingest only: accept everything from the injector, advertise nothing back, install nothing into a
//! FIB. A [`Setup`] adds more injector peers (`rib_memory`), kernel route installation and BFD
//! (`convergence`; Reef and BIRD only). Each daemon can say how many prefixes it has received from an
//! injector.

use std::fmt;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use reef_lab::{Netns, Process, run_bounded};

use crate::procfs::Memory;

/// Time bound of one probe (a `vtysh`/`gobgp` command, a control-socket query). Generous: gobgpd answers
/// its API only after seconds while it ingests, and a probe killed and sent again costs it more work.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The kernel's main routing table.
const MAIN_TABLE: u32 = 254;
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

/// BFD timers the daemon runs with every injector peer (both directions the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdTimers {
    pub interval: Duration,
    pub multiplier: u8,
}

/// What a daemon under test is configured for.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The eBGP sessions with injectors (at least one; the first is "the injector").
    pub peerings: Vec<Peering>,
    /// Install the best routes into this kernel table (Reef `fib: {table}`, BIRD `protocol kernel`).
    pub kernel_table: Option<u32>,
    /// BFD with every injector peer.
    pub bfd: Option<BfdTimers>,
}

impl Setup {
    /// BGP ingest only: one injector, no FIB, no BFD.
    pub fn ingest(peering: Peering) -> Setup {
        Setup {
            peerings: vec![peering],
            kernel_table: None,
            bfd: None,
        }
    }

    fn first(&self) -> Result<&Peering> {
        self.peerings
            .first()
            .ok_or_else(|| anyhow!("a setup needs at least one injector peering"))
    }

    /// More than the plain ingest configuration, which only Reef and BIRD can be given here.
    fn is_extended(&self) -> bool {
        self.peerings.len() > 1 || self.kernel_table.is_some() || self.bfd.is_some()
    }
}

/// BIRD's protocol name for injector peering number `index`.
fn bird_protocol(index: usize) -> String {
    match index {
        0 => "injector".to_string(),
        n => format!("injector{}", n + 1),
    }
}

/// BIRD 2: one `bgp` protocol per injector, `import all`, `export none`; with a kernel table a `kernel`
/// protocol exporting every best route (none otherwise: nothing goes to the FIB); with BFD a `bfd`
/// protocol and `bfd on` in every `bgp` protocol.
pub fn bird_config(setup: &Setup) -> String {
    let mut conf = String::new();
    let router_id = setup.peerings.first().map(|p| p.daemon_addr);
    let _ = writeln!(
        conf,
        "router id {};\nprotocol device {{ }}",
        router_id.unwrap_or(Ipv4Addr::UNSPECIFIED)
    );
    if let Some(table) = setup.kernel_table {
        let _ = writeln!(
            conf,
            "protocol kernel {{ kernel table {table}; ipv4 {{ import none; export all; }}; }}"
        );
    }
    if let Some(bfd) = setup.bfd {
        let ms = bfd.interval.as_millis();
        let _ = writeln!(
            conf,
            "protocol bfd {{ interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; \
             idle tx interval {ms} ms; multiplier {}; }}; }}",
            bfd.multiplier
        );
    }
    for (index, peering) in setup.peerings.iter().enumerate() {
        let _ = write!(
            conf,
            "protocol bgp {name} {{\n\
             \x20 local {daemon} as {daemon_as};\n\
             \x20 neighbor {injector} as {injector_as};\n\
             \x20 passive on;\n\
             \x20 hold time {hold};\n\
             {bfd}\
             \x20 ipv4 {{ import all; export none; }};\n\
             }}\n",
            name = bird_protocol(index),
            daemon = peering.daemon_addr,
            daemon_as = peering.daemon_as,
            injector = peering.injector_addr,
            injector_as = peering.injector_as,
            hold = peering.hold_time,
            // After a BFD down BIRD would refuse the injector's reconnection for `error wait time`
            // (60 s by default).
            bfd = if setup.bfd.is_some() {
                "\x20 bfd on;\n  error wait time 1, 2;\n"
            } else {
                ""
            },
        );
    }
    conf
}

/// FRR bgpd (started with `-n`/`--no_kernel` unless a kernel table is wanted: no route goes to zebra,
/// so none to the FIB): accept all
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

/// reefd in speaker mode (see agent/README.md): one passive eBGP peer per injector. The plain ingest
/// configuration uses only the original speaker-mode fields; an extended one (several peers, a kernel
/// table, BFD: ROUTING_SPEC.md) also rejects every export with a filter, as BIRD's `export none`, so that
/// reefd does not send one injector's routes to another.
pub fn reefd_config(setup: &Setup, admin_socket: &Path) -> String {
    let mut conf = String::new();
    let router_id = setup
        .peerings
        .first()
        .map_or(Ipv4Addr::UNSPECIFIED, |p| p.daemon_addr);
    let daemon_as = setup.peerings.first().map_or(0, |p| p.daemon_as);
    // One listening socket for every peering's local address.
    let listen = if setup.peerings.len() > 1 {
        Ipv4Addr::UNSPECIFIED
    } else {
        router_id
    };
    let _ = write!(
        conf,
        "routerId: {router_id}\n\
         asNumber: {daemon_as}\n\
         listen: {{ address: \"{listen}\", port: 179 }}\n\
         admin: {{ socket: {socket} }}\n",
        socket = admin_socket.display(),
    );
    let extended = setup.is_extended();
    if let Some(table) = setup.kernel_table {
        let _ = writeln!(conf, "fib: {{ table: {table} }}");
    }
    if extended {
        let _ = writeln!(
            conf,
            "filters:\n  - name: export-none\n    exportV4: [{{action: Reject}}]"
        );
    }
    let _ = writeln!(conf, "peers:");
    for peering in &setup.peerings {
        let _ = write!(
            conf,
            "\x20 - address: {injector}\n\
             \x20   asNumber: {injector_as}\n\
             \x20   passive: true\n\
             \x20   holdTime: {hold}\n",
            injector = peering.injector_addr,
            injector_as = peering.injector_as,
            hold = peering.hold_time,
        );
        if extended {
            let _ = writeln!(conf, "    filters: [export-none]");
        }
        if let Some(bfd) = setup.bfd {
            let ms = bfd.interval.as_millis();
            let _ = writeln!(
                conf,
                "    bfd: {{ enabled: true, minRx: {ms}ms, minTx: {ms}ms, multiplier: {} }}",
                bfd.multiplier
            );
        }
    }
    conf
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
    /// The injectors' addresses, in the order of [`Setup::peerings`].
    injectors: Vec<Ipv4Addr>,
    probe: Probe,
    /// Stopped (by pid) on drop, last started first.
    processes: Vec<Process>,
    /// FRR's per-instance config and runtime directories (outside `workdir`; FRR insists on its paths).
    frr_dirs: Vec<PathBuf>,
    workdir: tempfile::TempDir,
}

impl Receiver {
    /// Starts `daemon` inside `netns`. `reefd` is the path of the reefd binary (only used for Reef).
    pub fn start(daemon: Daemon, netns: &Netns, setup: &Setup, reefd: &Path) -> Result<Receiver> {
        let peering = setup.first()?;
        let fib_only = setup.peerings.len() == 1 && setup.bfd.is_none();
        let supported = match daemon {
            Daemon::Reef | Daemon::Bird => true,
            // FRR: zebra installs bgpd's best routes into the main table when bgpd runs without `-n`.
            Daemon::Frr => fib_only && setup.kernel_table.is_none_or(|table| table == MAIN_TABLE),
            Daemon::Gobgp => !setup.is_extended(),
        };
        if !supported {
            bail!(
                "{daemon}: only Reef and BIRD can be set up with several peers, BFD or a FIB (FRR: the \
                 main table)"
            );
        }
        let workdir = tempfile::Builder::new()
            .prefix(&format!("reef-bench-{daemon}-"))
            .tempdir()
            .context("temp dir")?;
        let dir = workdir.path().to_path_buf();
        let mut receiver = Receiver {
            daemon,
            injectors: setup.peerings.iter().map(|p| p.injector_addr).collect(),
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
                let conf = write(&dir, "bird.conf", &bird_config(setup))?;
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
                // `-n` (--no_kernel): bgpd sends no route to zebra, so nothing reaches the FIB.
                let no_kernel = if setup.kernel_table.is_some() {
                    None
                } else {
                    Some("-n")
                };
                let bgpd_args: Vec<&str> = no_kernel
                    .into_iter()
                    .chain(["-N", &pathspace, "-f", path_str(&bgpd_conf)?])
                    .collect();
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
                let conf = write(&dir, "reefd.yaml", &reefd_config(setup, &socket))?;
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

    /// The daemon's error from its output (the first `Error` line or panic and the lines after it,
    /// e.g. reefd refusing its config), else the last lines, for error messages (its directory goes
    /// with it).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines
            .iter()
            .position(|line| line.starts_with("Error") || line.contains("panicked at"))
            .unwrap_or(lines.len().saturating_sub(5));
        lines[start..lines.len().min(start + 5)].join(" | ")
    }

    /// Prefixes received from the (first) injector as the daemon reports them; `Ok(None)` while the
    /// daemon cannot answer yet (starting up).
    pub fn prefixes_received(&self) -> Result<Option<u64>> {
        self.prefixes_received_from(0)
    }

    /// Prefixes received from injector number `index` of the [`Setup`].
    pub fn prefixes_received_from(&self, index: usize) -> Result<Option<u64>> {
        let injector = self
            .injectors
            .get(index)
            .ok_or_else(|| anyhow!("no injector number {index}"))?
            .to_string();
        match &self.probe {
            Probe::Bird { socket } => {
                let query = format!("show protocols all {}", bird_protocol(index));
                let Ok(reply) = bird_query(socket, &query) else {
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

impl Receiver {
    /// How many paths the daemon holds for `prefix` in its RIB (best and others): BIRD `show route for
    /// PREFIX`, reefd `GET /v1/bgp/rib/PREFIX` (ROUTING_SPEC.md). `Ok(None)` for FRR and GoBGP.
    pub fn paths_for(&self, prefix: Ipv4Net) -> Result<Option<usize>> {
        match &self.probe {
            Probe::Bird { socket } => {
                let reply = bird_query(socket, &format!("show route for {prefix}"))?;
                Ok(Some(reply.matches(" unicast [").count()))
            }
            Probe::Reef { socket } => {
                let uri = format!("/v1/bgp/rib/{}", prefix.to_string().replace('/', "%2F"));
                let body = http_get_unix(socket, &uri)?;
                let json: serde_json::Value =
                    serde_json::from_str(&body).context("reefd rib json")?;
                let paths = json
                    .as_array()
                    .or_else(|| json.get("paths")?.as_array())
                    .ok_or_else(|| anyhow!("reefd rib answer is not a list: {body}"))?;
                Ok(Some(paths.len()))
            }
            Probe::Frr { .. } | Probe::Gobgp { .. } => Ok(None),
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
        let setup = Setup::ingest(peering);
        let bird = bird_config(&setup);
        assert!(bird.contains("neighbor 198.18.0.1 as 65001;") && bird.contains("export none"));
        assert!(!bird.contains("kernel") && !bird.contains("bfd"));
        let frr = frr_bgpd_config(&peering);
        assert!(frr.contains("neighbor 198.18.0.1 route-map REJECT out"));
        assert!(frr.contains("no bgp ebgp-requires-policy"));
        let gobgp = gobgp_config(&peering);
        assert!(gobgp.contains("default-export-policy = \"reject-route\""));
        let reef = reefd_config(&setup, Path::new("/tmp/x.sock"));
        assert!(reef.contains("- address: 198.18.0.1") && reef.contains("passive: true"));
        // The plain ingest config stays within the original speaker-mode fields.
        assert!(!reef.contains("fib") && !reef.contains("filters") && !reef.contains("bfd"));
        assert!(reef.contains("listen: { address: \"198.18.0.2\""));
    }

    #[test]
    fn extended_configs_add_peers_kernel_and_bfd() {
        let second = Peering {
            daemon_addr: Ipv4Addr::new(198, 18, 1, 2),
            injector_addr: Ipv4Addr::new(198, 18, 1, 1),
            injector_as: 65002,
            ..peering()
        };
        let setup = Setup {
            peerings: vec![peering(), second],
            kernel_table: Some(254),
            bfd: Some(BfdTimers {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
        };
        let bird = bird_config(&setup);
        assert!(
            bird.contains("protocol bgp injector {") && bird.contains("protocol bgp injector2 {")
        );
        assert!(bird.contains("local 198.18.1.2 as 65000;"));
        assert!(bird.contains("kernel table 254; ipv4 { import none; export all; }"));
        assert!(bird.contains("min rx interval 100 ms") && bird.contains("bfd on;"));
        let reef = reefd_config(&setup, Path::new("/tmp/x.sock"));
        assert!(reef.contains("listen: { address: \"0.0.0.0\""), "{reef}");
        assert!(reef.contains("fib: { table: 254 }"), "{reef}");
        assert!(
            reef.contains("- address: 198.18.1.1\n    asNumber: 65002"),
            "{reef}"
        );
        assert_eq!(reef.matches("filters: [export-none]").count(), 2, "{reef}");
        assert!(
            reef.contains("minRx: 100ms, minTx: 100ms, multiplier: 3"),
            "{reef}"
        );
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
