//! Pods wired the way reef-cni wires them, for tests: a namespace whose `eth0` holds the pod's /32
//! and /128, with `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1` and an IPv6 default
//! route via the host veth's link-local address; the host end of the veth lives in the node
//! namespace, named and addressed as the caller says (`reef_crds::workload::host_interface_name`,
//! `HOST_INTERFACE_MAC`). The host side's sysctls (proxy ARP, forwarding) are felix's job.
//! Plus probes between pods: ping and a TCP transfer with `nc` (netcat-openbsd).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::{run_bounded, wait_for};

/// The pods' IPv4 gateway (reef-cni's `POD_GATEWAY_V4`), answered by the host's proxy ARP.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A pod: its namespace (removed on drop, which removes the veth too) and addresses.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    /// The host end of the veth, in the node namespace.
    pub host_interface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The host veth's link-local address, the pod's IPv6 gateway.
    pub gateway_v6: Ipv6Addr,
}

impl Pod {
    /// Wires a pod namespace `<tag>-<pid>-<n>` to `node` with a veth whose host end is
    /// `host_interface` with MAC `host_mac`.
    pub fn wire(
        node: &Netns,
        tag: &str,
        host_interface: &str,
        host_mac: &str,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Result<Pod> {
        let ns = Netns::new(tag)?;
        node.ip(&[
            "link",
            "add",
            host_interface,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        // No duplicate address detection: the link-local gateway is usable at once.
        node.sysctl(&format!("net.ipv6.conf.{host_interface}.accept_dad"), "0")?;
        ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
        node.ip(&["link", "set", host_interface, "address", host_mac, "up"])?;
        ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let gateway = POD_GATEWAY_V4.to_string();
        ns.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        let gateway_v6 = wait_for(
            "host veth link-local address",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || link_local(node, host_interface),
        )?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway_v6.to_string(),
            "dev",
            "eth0",
        ])?;
        Ok(Pod {
            ns,
            host_interface: host_interface.to_string(),
            v4,
            v6,
            gateway_v6,
        })
    }

    /// The pod's two addresses.
    pub fn addresses(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }

    /// Whether a ping from this pod reaches `dst`: one echo request answered within 2 s, on the
    /// first or second try (the first packet of a new path may be lost to neighbour discovery on
    /// a hop: seen with IPv6 on lab LANs).
    pub fn ping(&self, dst: IpAddr) -> bool {
        let dst = dst.to_string();
        (0..2).any(|_| self.ns.exec(&["ping", "-c", "1", "-W", "2", &dst]).is_ok())
    }

    /// Sends `chunks` x 64 KiB over TCP from this pod to `dst`:`port` on `server` (a listener
    /// `nc -l` started there first), pausing `pause` between chunks; returns the bytes the
    /// server received. Bounded: the listener lives at most `bound`, the client likewise.
    pub fn tcp_send(
        &self,
        server: &Pod,
        dst: IpAddr,
        port: u16,
        chunks: u32,
        pause: Duration,
        bound: Duration,
    ) -> Result<u64> {
        let dir = tempfile::tempdir().map_err(|e| LabError::file("temporary directory", e))?;
        let log = dir.path().join("received");
        let secs = bound.as_secs().max(1).to_string();
        let mut listener = Process::spawn(
            "nc-listener",
            {
                let mut cmd = server.ns.command("sh");
                cmd.args([
                    "-c",
                    &format!(
                        "timeout {secs} nc -l {dst} {port} | wc -c > {}",
                        log.display()
                    ),
                ]);
                cmd
            },
            &dir.path().join("listener.log"),
        )?;
        let port_text = format!(":{port}");
        wait_for(
            "nc listening",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                server
                    .ns
                    .exec(&["ss", "-Hltn"])
                    .ok()
                    .filter(|out| out.contains(&port_text))
            },
        )?;
        let client = format!(
            "for i in $(seq {chunks}); do head -c 65536 /dev/zero; sleep {}; done | nc -N -w 5 {dst} {port}",
            pause.as_secs_f64()
        );
        let status = run_bounded(self.ns.command("sh").args(["-c", &client]), bound)?;
        if !status.status.success() {
            return Err(LabError::Daemon(format!(
                "nc to {dst}:{port} failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        listener.wait_timeout(bound)?;
        let text = std::fs::read_to_string(&log).map_err(|e| LabError::file(&log, e))?;
        text.trim()
            .parse()
            .map_err(|e| LabError::parse("wc -c output", e))
    }
}

/// The link-local address of `interface` in `ns`, once the kernel has given it one.
fn link_local(ns: &Netns, interface: &str) -> Option<Ipv6Addr> {
    let out = ns
        .ip(&[
            "-6", "-o", "addr", "show", "dev", interface, "scope", "link",
        ])
        .ok()?;
    out.split_whitespace()
        .skip_while(|word| *word != "inet6")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}
