//! Network namespaces and veth links, all made with `ip`, none of it in the root namespace.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Result;
use crate::process::Process;
use crate::run::run_ok;

/// Per-process counter: namespace names and link numbers are unique within the process, and the
/// process id makes them unique between the parallel test processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_number() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A network namespace `<tag>-<pid>-<n>` with `lo` up. Dropping it kills every process still in
/// it (found by `ip netns pids`, so only processes inside the namespace we made) and deletes it,
/// which also removes its veth ends.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace. `tag` says what it is for (e.g. "bird", "reef-a"); keep it short.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("{tag}-{}-{}", std::process::id(), next_number());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the guard removes it, also when bringing lo up fails.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    /// `ip netns exec` execs the program in place, so the child's pid is the program's pid.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion (bounded) and returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().ok_or_else(|| {
            crate::error::LabError::Daemon("Netns::exec needs a program".to_string())
        })?;
        run_ok(self.command(program).args(rest))
    }

    /// `ip -n NAME <args>`: an `ip` command applied inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts a long-running process inside the namespace, output appended to `log`.
    pub fn spawn(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        log: &Path,
    ) -> Result<Process> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Process::spawn(name, cmd, log)
    }

    /// The pids of all processes inside the namespace.
    pub fn pids(&self) -> Vec<libc::pid_t> {
        run_ok(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a process that lives in the namespace this guard created.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", &self.name])) {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete namespace");
        }
    }
}

/// One end of a veth link: its interface name and addresses inside its namespace.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A veth pair between two namespaces, each end up with an IPv4 /24 and an IPv6 /64 address.
/// The link dies with its namespaces.
#[derive(Debug, Clone)]
pub struct Link {
    pub a: LinkEnd,
    pub b: LinkEnd,
}

impl Link {
    pub const V4_PREFIX_LEN: u8 = 24;
    pub const V6_PREFIX_LEN: u8 = 64;
}

/// The two IPv4 addresses of link number `n`: `198.18.0.0/15` cut into 512 /24s, `.1` and `.2`.
pub fn link_v4(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let second = 18 + ((n / 256) % 2) as u8;
    let third = (n % 256) as u8;
    (
        Ipv4Addr::new(198, second, third, 1),
        Ipv4Addr::new(198, second, third, 2),
    )
}

/// The two IPv6 addresses of link number `n`: `2001:db8:<n>::1` and `::2` in a /64.
pub fn link_v6(n: u32) -> (Ipv6Addr, Ipv6Addr) {
    let group = (n % 0x1_0000) as u16;
    (
        Ipv6Addr::new(0x2001, 0xdb8, group, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, group, 0, 0, 0, 0, 2),
    )
}

/// Creates a veth pair from namespace `a` to namespace `b` (made inside `a` with its peer moved
/// straight into `b`: nothing touches the root namespace), addresses both ends and brings them up.
/// Interface names are `lab<n>a` / `lab<n>b` (at most 15 characters).
pub fn veth(a: &Netns, b: &Netns) -> Result<Link> {
    let n = next_number();
    let (a4, b4) = link_v4(n);
    let (a6, b6) = link_v6(n);
    let link = Link {
        a: LinkEnd {
            ifname: format!("lab{n}a"),
            v4: a4,
            v6: a6,
        },
        b: LinkEnd {
            ifname: format!("lab{n}b"),
            v4: b4,
            v6: b6,
        },
    };
    a.ip(&[
        "link",
        "add",
        &link.a.ifname,
        "type",
        "veth",
        "peer",
        "name",
        &link.b.ifname,
        "netns",
        b.name(),
    ])?;
    for (ns, end) in [(a, &link.a), (b, &link.b)] {
        let v4 = format!("{}/{}", end.v4, Link::V4_PREFIX_LEN);
        let v6 = format!("{}/{}", end.v6, Link::V6_PREFIX_LEN);
        ns.ip(&["addr", "add", &v4, "dev", &end.ifname])?;
        // nodad: the address is usable at once instead of after duplicate address detection.
        ns.ip(&["-6", "addr", "add", &v6, "dev", &end.ifname, "nodad"])?;
        ns.ip(&["link", "set", &end.ifname, "up"])?;
    }
    Ok(link)
}

impl Netns {
    /// `sysctl -w KEY=VALUE` inside the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Turns the namespace into a router: IPv4 and IPv6 forwarding on.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// The kernel route for exactly `prefix` in `table` (`ip -j route show table T exact P`), with
    /// its next hops; `None` when there is none.
    pub fn kernel_route(&self, prefix: ipnet::IpNet, table: u32) -> Result<Option<KernelRoute>> {
        let family = if prefix.addr().is_ipv4() { "-4" } else { "-6" };
        let text = self.ip(&[
            family,
            "-j",
            "route",
            "show",
            "table",
            &table.to_string(),
            "exact",
            &prefix.to_string(),
        ])?;
        let routes: Vec<serde_json::Value> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&text)
                .map_err(|e| crate::error::LabError::parse("ip -j route", e))?
        };
        Ok(routes.first().map(KernelRoute::from_json))
    }

    /// Drops every packet from and to `peer` inside this namespace (an nftables table `lab_cut`):
    /// the link stays up, so only protocols that notice silence (BFD, hold timers) can tell.
    pub fn cut(&self, peer: IpAddr) -> Result<()> {
        let family = if peer.is_ipv4() { "ip" } else { "ip6" };
        let peer = peer.to_string();
        self.exec(&["nft", "add", "table", "inet", "lab_cut"])?;
        for (chain, hook, direction) in [("input", "input", "saddr"), ("output", "output", "daddr")]
        {
            let spec = format!("{{ type filter hook {hook} priority -300; }}");
            self.exec(&["nft", "add", "chain", "inet", "lab_cut", chain, &spec])?;
            self.exec(&[
                "nft", "add", "rule", "inet", "lab_cut", chain, family, direction, &peer, "drop",
            ])?;
        }
        Ok(())
    }

    /// Undoes [`Netns::cut`].
    pub fn uncut(&self) -> Result<()> {
        self.exec(&["nft", "delete", "table", "inet", "lab_cut"])
            .map(|_| ())
    }
}

/// A kernel route as `ip -j route` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// `protocol`: a name from /etc/iproute2/rt_protos ("bgp", "kernel") or a number ("82").
    pub protocol: String,
    /// The gateways: `gateway` of a single-path route, or every `nexthops[].gateway`.
    pub next_hops: BTreeSet<IpAddr>,
    /// `dev` of a single-path route, or the first next hop's.
    pub dev: String,
}

impl KernelRoute {
    fn from_json(route: &serde_json::Value) -> KernelRoute {
        let text = |v: &serde_json::Value, key: &str| {
            v.get(key)
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let gateway = |v: &serde_json::Value| {
            v.get("gateway")
                .and_then(serde_json::Value::as_str)
                .and_then(|g| g.parse::<IpAddr>().ok())
        };
        let mut next_hops: BTreeSet<IpAddr> = gateway(route).into_iter().collect();
        let mut dev = text(route, "dev");
        if let Some(list) = route.get("nexthops").and_then(serde_json::Value::as_array) {
            next_hops.extend(list.iter().filter_map(gateway));
            if dev.is_empty() {
                dev = list.first().map(|n| text(n, "dev")).unwrap_or_default();
            }
        }
        KernelRoute {
            protocol: text(route, "protocol"),
            next_hops,
            dev,
        }
    }
}

/// An Ethernet segment: a bridge in a namespace of its own, with any number of namespaces attached
/// by veth. Every member gets the next address of one /24 (and /64) of the lab ranges, so routes
/// passed on unchanged (iBGP, route reflection) keep a next hop every member reaches directly.
#[derive(Debug)]
pub struct Lan {
    v4: (Ipv4Addr, Ipv4Addr),
    v6: (Ipv6Addr, Ipv6Addr),
    members: u32,
    // Last: the namespace goes after the rest (the bridge and the switch ends go with it).
    switch: Netns,
}

impl Lan {
    /// Bridge `br0` in a new namespace `<tag>-<pid>-<n>`; the subnet is the one of a fresh link
    /// number (198.18.0.0/15 /24, 2001:db8::/32 /64).
    pub fn new(tag: &str) -> Result<Lan> {
        let switch = Netns::new(tag)?;
        let n = next_number();
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            v4: link_v4(n),
            v6: link_v6(n),
            members: 0,
            switch,
        })
    }

    /// Plugs `ns` into the segment: a veth `lan<n>` in `ns` (addressed `.<k>` of the /24 and `::<k>`
    /// of the /64, k = 1, 2, ... in attach order) whose other end is enslaved to the bridge.
    pub fn attach(&mut self, ns: &Netns) -> Result<LinkEnd> {
        self.members += 1;
        let k = self.members;
        if k > 250 {
            return Err(crate::error::LabError::Daemon(
                "a lab LAN has at most 250 members".to_string(),
            ));
        }
        let n = next_number();
        let end = LinkEnd {
            ifname: format!("lan{n}"),
            v4: {
                let [a, b, c, _] = self.v4.0.octets();
                Ipv4Addr::new(a, b, c, k as u8)
            },
            v6: {
                let s = self.v6.0.segments();
                Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, k as u16)
            },
        };
        let port = format!("lan{n}s");
        ns.ip(&[
            "link",
            "add",
            &end.ifname,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.switch.name(),
        ])?;
        self.switch.ip(&["link", "set", &port, "master", "br0"])?;
        self.switch.ip(&["link", "set", &port, "up"])?;
        let v4 = format!("{}/{}", end.v4, Link::V4_PREFIX_LEN);
        let v6 = format!("{}/{}", end.v6, Link::V6_PREFIX_LEN);
        ns.ip(&["addr", "add", &v4, "dev", &end.ifname])?;
        ns.ip(&["-6", "addr", "add", &v6, "dev", &end.ifname, "nodad"])?;
        ns.ip(&["link", "set", &end.ifname, "up"])?;
        Ok(end)
    }

    /// The namespace that holds the bridge.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
}
