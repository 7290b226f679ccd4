//! What every BGP daemon launcher shares: the configuration it is started from and the operations a
//! test drives it with ([`BgpDaemon`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{LabError, Result};
use crate::netns::{LinkEnd, Netns};
use crate::process::Process;
use crate::run::wait_for;

/// How long a daemon gets to come up (its control socket answering).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One BGP neighbor of a daemon.
#[derive(Debug, Clone)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    /// TCP MD5 key (RFC 2385).
    pub password: Option<String>,
    /// Never connect, only accept.
    pub passive: bool,
}

impl Neighbor {
    pub fn new(address: IpAddr, remote_as: u32) -> Neighbor {
        Neighbor {
            address,
            remote_as,
            password: None,
            passive: false,
        }
    }

    pub fn password(mut self, key: &str) -> Neighbor {
        self.password = Some(key.to_string());
        self
    }

    pub fn passive(mut self) -> Neighbor {
        self.passive = true;
        self
    }
}

/// Path attributes put on every route the daemon originates (for the captured fixtures).
#[derive(Debug, Clone, Default)]
pub struct RouteAttrs {
    pub med: Option<u32>,
    pub communities: Vec<(u16, u16)>,
    pub large_communities: Vec<(u32, u32, u32)>,
}

impl RouteAttrs {
    pub fn is_empty(&self) -> bool {
        self.med.is_none() && self.communities.is_empty() && self.large_communities.is_empty()
    }

    /// The communities as `a:b`, joined by `separator`; `None` when there are none.
    pub fn communities_list(&self, separator: &str) -> Option<String> {
        let list: Vec<String> = self
            .communities
            .iter()
            .map(|(a, b)| format!("{a}:{b}"))
            .collect();
        (!list.is_empty()).then(|| list.join(separator))
    }

    /// The large communities as `a:b:c`, joined by `separator`; `None` when there are none.
    pub fn large_communities_list(&self, separator: &str) -> Option<String> {
        let list: Vec<String> = self
            .large_communities
            .iter()
            .map(|(a, b, c)| format!("{a}:{b}:{c}"))
            .collect();
        (!list.is_empty()).then(|| list.join(separator))
    }
}

/// The configuration a daemon is started from. Each session runs between the link addresses of the
/// neighbor's family (IPv4 or IPv6) and carries IPv4 and IPv6 unicast; routes of each family use the
/// link's address of that family as next hop.
#[derive(Debug, Clone)]
pub struct BgpConfig {
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// The daemon's addresses on its link (session source and next hops).
    pub local_v4: Ipv4Addr,
    pub local_v6: Ipv6Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub connect_retry: u16,
    pub neighbors: Vec<Neighbor>,
    /// Prefixes originated from the start.
    pub originate: Vec<IpNet>,
    pub attrs: RouteAttrs,
}

impl BgpConfig {
    /// Short test timers: hold 9 s, keepalive 3 s, connect retry 1 s.
    pub fn new(local_as: u32, local: &LinkEnd) -> BgpConfig {
        BgpConfig {
            router_id: local.v4,
            local_as,
            local_v4: local.v4,
            local_v6: local.v6,
            hold_time: 9,
            keepalive: 3,
            connect_retry: 1,
            neighbors: Vec::new(),
            originate: Vec::new(),
            attrs: RouteAttrs::default(),
        }
    }

    pub fn neighbor(mut self, neighbor: Neighbor) -> BgpConfig {
        self.neighbors.push(neighbor);
        self
    }

    pub fn originate(mut self, prefix: IpNet) -> BgpConfig {
        self.originate.push(prefix);
        self
    }

    pub fn attrs(mut self, attrs: RouteAttrs) -> BgpConfig {
        self.attrs = attrs;
        self
    }

    pub fn timers(mut self, hold_time: u16, keepalive: u16) -> BgpConfig {
        self.hold_time = hold_time;
        self.keepalive = keepalive;
        self
    }

    /// The next hop the daemon puts on an originated prefix of this family.
    pub fn next_hop_for(&self, prefix: &IpNet) -> IpAddr {
        match prefix {
            IpNet::V4(_) => IpAddr::V4(self.local_v4),
            IpNet::V6(_) => IpAddr::V6(self.local_v6),
        }
    }

    pub(crate) fn neighbor_index(&self, address: IpAddr) -> Result<usize> {
        self.neighbors
            .iter()
            .position(|n| n.address == address)
            .ok_or_else(|| LabError::Daemon(format!("{address} is not a configured neighbor")))
    }
}

/// A running BGP daemon in its own namespace, driven the same way whatever its kind, so the
/// interop tests are one table. Dropping it stops the daemon and removes its files and namespace.
pub trait BgpDaemon {
    /// "bird", "frr", "gobgp", "exabgp".
    fn kind(&self) -> &'static str;
    fn netns(&self) -> &Netns;
    /// The process that speaks BGP (to freeze with SIGSTOP).
    fn bgp_process(&self) -> &Process;
    /// Whether the session with `peer` is Established.
    fn is_established(&self, peer: IpAddr) -> Result<bool>;
    /// The prefixes (IPv4 and IPv6 unicast) the daemon has accepted from `peer`.
    fn routes_from(&self, peer: IpAddr) -> Result<BTreeSet<IpNet>>;
    /// Starts originating `prefix` (with the configured attributes).
    fn advertise(&mut self, prefix: IpNet) -> Result<()>;
    /// Stops originating `prefix`.
    fn withdraw(&mut self, prefix: IpNet) -> Result<()>;
    /// Asks `peer` to send its routes again (ROUTE-REFRESH, a "soft reset in").
    fn refresh_in(&self, peer: IpAddr) -> Result<()>;
    /// UPDATE messages received from `peer` so far.
    fn updates_received(&self, peer: IpAddr) -> Result<u64>;
    /// ROUTE-REFRESH messages received from `peer` so far.
    fn refreshes_received(&self, peer: IpAddr) -> Result<u64>;
    /// Administratively shuts the session down (NOTIFICATION Cease / Administrative Shutdown).
    fn shutdown_peer(&mut self, peer: IpAddr) -> Result<()>;
    /// Stops the daemon and starts it again with the same configuration and originated prefixes.
    fn restart(&mut self) -> Result<()>;
    /// The daemon's working directory (config, logs, sockets).
    fn workdir(&self) -> &Path;

    /// The tail of every log file in the working directory, for failure messages.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.workdir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "log" || e == "out" || e == "conf" || e == "toml")
            })
            .collect();
        entries.sort();
        for path in entries {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            text.push_str(&format!(
                "==> {} ({}) <==\n{}\n",
                path.display(),
                self.kind(),
                tail.join("\n")
            ));
        }
        text
    }

    /// Waits (bounded) until the session with `peer` is Established.
    fn wait_established(&self, peer: IpAddr, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{} session with {peer} to be Established", self.kind()),
            timeout,
            Duration::from_millis(200),
            || self.is_established(peer).ok().filter(|up| *up),
        )
        .map(|_| ())
    }

    /// Waits (bounded) until the prefixes from `peer` are exactly `expected`.
    fn wait_routes_from(
        &self,
        peer: IpAddr,
        expected: &BTreeSet<IpNet>,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = BTreeSet::new();
        let found = crate::run::wait_until(timeout, Duration::from_millis(200), || {
            last = self.routes_from(peer).ok()?;
            (last == *expected).then_some(())
        });
        found.ok_or_else(|| LabError::Timeout {
            what: format!(
                "{} routes from {peer} to be {expected:?} (last seen {last:?})",
                self.kind()
            ),
            seconds: timeout.as_secs_f64(),
        })
    }
}

/// Parses a prefix as a daemon prints it, normalised (host bits cleared).
pub(crate) fn parse_prefix(text: &str) -> Result<IpNet> {
    text.trim()
        .parse::<IpNet>()
        .map(|p| p.trunc())
        .map_err(|e| LabError::parse(format!("prefix {text:?}"), e))
}

/// A temporary directory for a daemon's files, removed on drop.
pub(crate) fn workdir(kind: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("reef-lab-{kind}-"))
        .tempdir()
        .map_err(|e| LabError::file(std::env::temp_dir(), e))
}

pub(crate) fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| LabError::file(path, e))
}

/// The kinds of daemon the lab can start, for table-driven tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    Bird,
    Frr,
    GoBgp,
    ExaBgp,
}

impl DaemonKind {
    pub const ALL: [DaemonKind; 4] = [
        DaemonKind::Bird,
        DaemonKind::Frr,
        DaemonKind::GoBgp,
        DaemonKind::ExaBgp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DaemonKind::Bird => "bird",
            DaemonKind::Frr => "frr",
            DaemonKind::GoBgp => "gobgp",
            DaemonKind::ExaBgp => "exabgp",
        }
    }

    /// Starts a daemon of this kind in `ns` (which it takes).
    pub fn start(self, ns: Netns, config: BgpConfig) -> Result<Box<dyn BgpDaemon>> {
        Ok(match self {
            DaemonKind::Bird => Box::new(crate::bird::Bird::start(ns, config)?),
            DaemonKind::Frr => Box::new(crate::frr::Frr::start(ns, config)?),
            DaemonKind::GoBgp => Box::new(crate::gobgp::GoBgp::start(ns, config)?),
            DaemonKind::ExaBgp => Box::new(crate::exabgp::ExaBgp::start(ns, config)?),
        })
    }
}

/// Unwraps `result` in a test, or panics with the error followed by every daemon's logs.
pub fn check<T>(result: Result<T>, daemons: &[&dyn BgpDaemon]) -> T {
    match result {
        Ok(value) => value,
        Err(error) => {
            let logs: Vec<String> = daemons.iter().map(|d| d.diagnostics()).collect();
            panic!("{error}\n{}", logs.join("\n"))
        }
    }
}
