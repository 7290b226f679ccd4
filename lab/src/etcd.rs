//! A real etcd (Debian `etcd-server`, `/usr/bin/etcd`) on 127.0.0.1 for tests, stopped by pid on drop.
//!
//! It runs in the root namespace on loopback only (no links, routes or addresses are created), with free
//! client and peer ports, its data in a temporary directory and auto-compaction off (tests compact
//! explicitly). [`EtcdServer::stop`] and [`EtcdServer::start_again`] keep the data and ports, for fault
//! tests; [`EtcdServer::freeze`] makes it hang without closing connections.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::process::Process;
use crate::run::wait_until;

const ETCD: &str = "/usr/bin/etcd";
/// Attempts at finding two free ports that stay free until etcd binds them.
const PORT_ATTEMPTS: usize = 5;
/// How long etcd may take to become healthy (a single member elects itself in about a second).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A running single-member etcd. Dropping it stops the process and removes the data.
pub struct EtcdServer {
    process: Option<Process>,
    client_port: u16,
    peer_port: u16,
    name: String,
    /// Holds the data directory and the log (`etcd.log`) until drop.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits (bounded) until it answers as healthy.
    pub fn start() -> Result<EtcdServer> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("reef-etcd-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| LabError::file(std::env::temp_dir(), e))?;
        // The directory name is unique on this machine, so it makes a unique member name too.
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut server = EtcdServer {
            process: None,
            client_port: 0,
            peer_port: 0,
            name,
            dir,
        };
        let mut attempt = 1;
        loop {
            (server.client_port, server.peer_port) = free_port_pair()?;
            // A failed attempt may have left a member registered with the old ports: start afresh.
            let _ = std::fs::remove_dir_all(server.dir.path().join("data"));
            match server.start_again() {
                Ok(()) => return Ok(server),
                // Another process may have taken a port between our probe and etcd's bind: try others.
                Err(e) if attempt >= PORT_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "etcd did not start; trying other ports")
                }
            }
            attempt += 1;
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Makes this etcd reachable from inside `ns` at `http://127.0.0.1:<same port>` (see [`NetnsForward`]),
    /// for processes that must run in a lab namespace (the CNI plugin, reefd).
    pub fn forward_into(&self, ns: &crate::Netns) -> Result<crate::NetnsForward> {
        crate::NetnsForward::start(
            ns,
            self.client_port,
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port)),
        )
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.process.as_ref().map(Process::pid)
    }

    /// The log file (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Stops etcd (SIGTERM, bounded wait, then SIGKILL); data and ports are kept for [`Self::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts etcd again on the same data directory and ports (after [`Self::stop`]; a no-op while
    /// running) and waits until it is healthy.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut process = Process::spawn("etcd", self.command(), &self.log_path())?;
        let endpoint = self.endpoint();
        let healthy = wait_until(HEALTHY_TIMEOUT, Duration::from_millis(50), || {
            if !process.is_running() {
                return Some(false);
            }
            is_healthy(self.client_port).then_some(true)
        });
        if healthy == Some(true) {
            self.process = Some(process);
            return Ok(());
        }
        process.kill();
        Err(LabError::Daemon(format!(
            "etcd on {endpoint} {} within {HEALTHY_TIMEOUT:?}; last lines of {}:\n{}",
            if healthy.is_none() {
                "did not become healthy"
            } else {
                "exited"
            },
            self.log_path().display(),
            self.log_tail()
        )))
    }

    /// [`Self::stop`] then [`Self::start_again`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing is answered, as with a hung server.
    pub fn freeze(&self) -> Result<()> {
        self.running()?.freeze()
    }

    /// Thaws a frozen etcd (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.running()?.thaw()
    }

    fn running(&self) -> Result<&Process> {
        self.process
            .as_ref()
            .ok_or_else(|| LabError::Daemon(format!("etcd on {} is stopped", self.endpoint())))
    }

    fn command(&self) -> Command {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--auto-compaction-retention")
            .arg("0")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn");
        // etcd 3.4 refuses to start on architectures other than amd64 (and ppc64le) unless told so.
        if let Some(arch) = unsupported_etcd_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        cmd
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Go architecture name etcd needs in `ETCD_UNSUPPORTED_ARCH`, if this is not a supported one.
fn unsupported_etcd_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "powerpc64" => None,
        "aarch64" => Some("arm64"),
        "arm" => Some("arm"),
        "x86" => Some("386"),
        "s390x" => Some("s390x"),
        "riscv64" => Some("riscv64"),
        other => Some(other),
    }
}

/// Two distinct ports free right now (both listeners are open at once, so they differ).
fn free_port_pair() -> Result<(u16, u16)> {
    let bind = || {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .and_then(|listener| listener.local_addr().map(|addr| (listener, addr.port())))
            .map_err(|e| LabError::Daemon(format!("cannot find a free port on 127.0.0.1: {e}")))
    };
    let (_client_listener, client) = bind()?;
    let (_peer_listener, peer) = bind()?;
    Ok((client, peer))
}

/// `GET /health` on the client port answers `"health":"true"` once the member has a leader.
fn is_healthy(port: u16) -> bool {
    let probe = || -> std::io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
        stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    probe().is_ok_and(|answer| answer.replace(' ', "").contains("\"health\":\"true\""))
}
