//! Reef (`reefd`, speaker mode) peered with a reference daemon over one veth link, and the cases
//! every daemon runs. Reef is AS 64512; the peer is AS 64512 (iBGP) or 4200000002 (eBGP, a 4-octet
//! AS). Sessions run over IPv4 (or IPv6, `Setup::ebgp_over_ipv6`) and carry IPv4 and IPv6 unicast. Short timers: hold 9 s (3 s in the
//! hold-timer case), connect retry 1 s. Everything is removed on drop, also when a case panics.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use reef_lab::bgp::check;
use reef_lab::{
    BgpConfig, BgpDaemon, DaemonKind, Neighbor, Netns, Reefd, require_root, veth, wait_until,
};
use serde_json::Value;

pub const REEF_AS: u32 = 64512;
pub const PEER_EBGP_AS: u32 = 4_200_000_002;

/// Bound for a session to come up or routes to arrive.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

pub const REEF_PREFIXES: [&str; 2] = ["10.65.0.0/26", "fd00:65::/122"];
pub const PEER_PREFIXES: [&str; 2] = ["10.66.0.0/24", "fd00:66::/64"];

pub fn prefix(text: &str) -> IpNet {
    text.parse().expect("prefixes in the harness are valid")
}

pub fn prefixes(list: &[&str]) -> BTreeSet<IpNet> {
    list.iter().map(|p| prefix(p)).collect()
}

/// How the pair is configured.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ibgp: bool,
    pub reef_password: Option<&'static str>,
    pub peer_password: Option<&'static str>,
    pub hold_time: u16,
    pub keepalive: u16,
    /// The session runs over the link's IPv6 addresses (still carrying both families).
    pub ipv6_session: bool,
}

impl Setup {
    pub fn ebgp() -> Setup {
        Setup {
            ibgp: false,
            reef_password: None,
            peer_password: None,
            hold_time: 9,
            keepalive: 3,
            ipv6_session: false,
        }
    }

    pub fn ebgp_over_ipv6() -> Setup {
        Setup {
            ipv6_session: true,
            ..Setup::ebgp()
        }
    }

    pub fn ibgp() -> Setup {
        Setup {
            ibgp: true,
            ..Setup::ebgp()
        }
    }
}

/// Reef and one reference daemon, each in its own namespace, joined by a veth link.
pub struct Pair {
    // Field order is drop order: the peer daemon first, then reefd.
    pub peer: Box<dyn BgpDaemon>,
    pub reef: Reefd,
    /// Session addresses (IPv4, or IPv6 with `Setup::ipv6_session`).
    pub reef_addr: IpAddr,
    pub peer_addr: IpAddr,
    /// The peer's IPv4 address on the link: the next hop of its IPv4 routes.
    pub peer_v4: Ipv4Addr,
    pub setup: Setup,
}

impl Pair {
    pub fn start(kind: DaemonKind, setup: Setup) -> Pair {
        require_root();
        let reef_ns = Netns::new("reef").unwrap();
        let peer_ns = Netns::new(kind.name()).unwrap();
        let link = veth(&reef_ns, &peer_ns).unwrap();
        let peer_as = if setup.ibgp { REEF_AS } else { PEER_EBGP_AS };
        let (reef_addr, peer_addr): (IpAddr, IpAddr) = if setup.ipv6_session {
            (link.a.v6.into(), link.b.v6.into())
        } else {
            (link.a.v4.into(), link.b.v4.into())
        };
        let mut reef_neighbor = Neighbor::new(peer_addr, peer_as);
        reef_neighbor.password = setup.reef_password.map(str::to_string);
        let mut peer_neighbor = Neighbor::new(reef_addr, REEF_AS);
        peer_neighbor.password = setup.peer_password.map(str::to_string);
        let mut reef_config = BgpConfig::new(REEF_AS, &link.a)
            .neighbor(reef_neighbor)
            .timers(setup.hold_time, setup.keepalive);
        for p in REEF_PREFIXES {
            reef_config = reef_config.originate(prefix(p));
        }
        let mut peer_config = BgpConfig::new(peer_as, &link.b)
            .neighbor(peer_neighbor)
            .timers(setup.hold_time, setup.keepalive);
        for p in PEER_PREFIXES {
            peer_config = peer_config.originate(prefix(p));
        }
        let reef = Reefd::start(reef_ns, reef_config).unwrap();
        let peer = kind.start(peer_ns, peer_config).unwrap();
        Pair {
            peer,
            reef,
            reef_addr,
            peer_addr,
            peer_v4: link.b.v4,
            setup,
        }
    }

    /// Unwraps, or panics with the error and both sides' logs.
    pub fn check<T>(&self, result: reef_lab::Result<T>) -> T {
        check(result, &[&*self.peer, &self.reef])
    }

    /// Panics with `message` and both sides' logs.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n{}\n{}",
            self.peer.diagnostics(),
            self.reef.diagnostics()
        )
    }

    pub fn reef_advertise(&mut self, p: &str) {
        let result = self.reef.advertise(prefix(p));
        self.check(result);
    }

    pub fn reef_withdraw(&mut self, p: &str) {
        let result = self.reef.withdraw(prefix(p));
        self.check(result);
    }

    pub fn peer_advertise(&mut self, p: &str) {
        let result = self.peer.advertise(prefix(p));
        self.check(result);
    }

    pub fn peer_withdraw(&mut self, p: &str) {
        let result = self.peer.withdraw(prefix(p));
        self.check(result);
    }

    pub fn wait_established(&self) {
        self.check(self.reef.wait_established(self.peer_addr, WAIT));
        self.check(self.peer.wait_established(self.reef_addr, WAIT));
    }

    pub fn wait_reef_sees(&self, expected: &[&str]) {
        self.check(
            self.reef
                .wait_routes_from(self.peer_addr, &prefixes(expected), WAIT),
        );
    }

    pub fn wait_peer_sees(&self, expected: &[&str]) {
        self.check(
            self.peer
                .wait_routes_from(self.reef_addr, &prefixes(expected), WAIT),
        );
    }

    /// Reef's status of the session (`reefctl bgp status -o json`).
    pub fn reef_status(&self) -> Value {
        self.check(self.reef.peer(self.peer_addr))
    }

    /// Waits until Reef's session status satisfies `test`; returns that status.
    pub fn wait_reef_status(
        &self,
        what: &str,
        timeout: Duration,
        test: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let found = wait_until(timeout, POLL, || {
            last = self.reef.peer(self.peer_addr).ok()?;
            test(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| {
            self.fail(&format!("Reef's status never showed {what}; last: {last}"))
        })
    }
}

fn text<'a>(status: &'a Value, key: &str) -> &'a str {
    status.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Session up; each side's IPv4 and IPv6 prefixes in the other's RIB with the right path
/// attributes; announcements and withdrawals in both directions.
pub fn routes(kind: DaemonKind, setup: Setup) {
    let mut pair = Pair::start(kind, setup);
    pair.wait_established();
    pair.wait_peer_sees(&REEF_PREFIXES);
    pair.wait_reef_sees(&PEER_PREFIXES);

    // Reef's Adj-RIB-In carries the peer's attributes as sent.
    let routes = pair.check(pair.reef.routes_json(pair.peer_addr));
    let v4 = routes
        .iter()
        .find(|r| text(r, "prefix") == PEER_PREFIXES[0])
        .unwrap_or_else(|| pair.fail("no IPv4 route in Reef's Adj-RIB-In"));
    let expected_path = if pair.setup.ibgp {
        String::new()
    } else {
        PEER_EBGP_AS.to_string()
    };
    assert_eq!(text(v4, "asPath"), expected_path, "{v4}");
    assert_eq!(text(v4, "nextHop"), pair.peer_v4.to_string(), "{v4}");
    let status = pair.reef_status();
    assert_eq!(
        text(&status, "type"),
        if pair.setup.ibgp { "ibgp" } else { "ebgp" },
        "{status}"
    );

    // Reef announces and withdraws.
    pair.reef_advertise("10.65.1.0/26");
    pair.reef_withdraw(REEF_PREFIXES[1]);
    pair.wait_peer_sees(&[REEF_PREFIXES[0], "10.65.1.0/26"]);
    pair.reef_withdraw(REEF_PREFIXES[0]);
    pair.reef_advertise("fd00:65:1::/122");
    pair.wait_peer_sees(&["10.65.1.0/26", "fd00:65:1::/122"]);

    // The peer announces and withdraws.
    pair.peer_withdraw(PEER_PREFIXES[0]);
    pair.peer_advertise("10.66.1.0/24");
    pair.wait_reef_sees(&["10.66.1.0/24", PEER_PREFIXES[1]]);
    pair.peer_withdraw(PEER_PREFIXES[1]);
    pair.wait_reef_sees(&["10.66.1.0/24"]);
}

/// Both sides with the same TCP MD5 key: the session comes up and routes flow.
pub fn md5_right_key(kind: DaemonKind) {
    let setup = Setup {
        reef_password: Some("reef-lab-key"),
        peer_password: Some("reef-lab-key"),
        ..Setup::ebgp()
    };
    let pair = Pair::start(kind, setup);
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
    let status = pair.reef_status();
    assert_eq!(status.get("md5"), Some(&Value::Bool(true)), "{status}");
}

/// Different keys: the session never comes up, and Reef's status says why.
pub fn md5_wrong_key(kind: DaemonKind) {
    let setup = Setup {
        reef_password: Some("reef-lab-key"),
        peer_password: Some("another-key"),
        ..Setup::ebgp()
    };
    let pair = Pair::start(kind, setup);
    // Watch long enough for several connect attempts from both sides (connect retry 1 s).
    let mut explained = Value::Null;
    let came_up = wait_until(Duration::from_secs(8), POLL, || {
        let status = pair.reef.peer(pair.peer_addr).ok()?;
        if text(&status, "state") == "Established" {
            return Some(true);
        }
        let why = format!("{} {}", text(&status, "info"), text(&status, "lastError"));
        if why.to_lowercase().contains("md5") || why.to_lowercase().contains("password") {
            explained = status;
        }
        None
    });
    if came_up.is_some() {
        pair.fail("session came up with different MD5 keys");
    }
    assert!(
        pair.peer.is_established(pair.reef_addr).is_ok_and(|up| !up),
        "{} says Established with a wrong key",
        kind.name()
    );
    if explained.is_null() {
        pair.fail(&format!(
            "Reef's status never named the MD5 key as the likely cause: {}",
            pair.reef_status()
        ));
    }
}

/// A frozen peer (SIGSTOP) stops sending KEEPALIVEs: Reef drops the session when its hold timer
/// (3 s) expires, says so, and removes the peer's routes; thawed, the session comes back.
pub fn frozen_peer(kind: DaemonKind) {
    let setup = Setup {
        hold_time: 3,
        keepalive: 1,
        ..Setup::ebgp()
    };
    let pair = Pair::start(kind, setup);
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
    pair.check(pair.peer.bgp_process().freeze());
    // Bounded generously (hold 3 s); the assertion is on what happens, not on how fast.
    let status = pair.wait_reef_status(
        "the session down after the hold time",
        Duration::from_secs(15),
        |s| text(s, "state") != "Established",
    );
    pair.check(
        pair.reef
            .wait_routes_from(pair.peer_addr, &BTreeSet::new(), WAIT),
    );
    let why = pair.wait_reef_status("a hold timer error", Duration::from_secs(5), |s| {
        text(s, "lastError").to_lowercase().contains("hold")
    });
    assert!(!text(&why, "lastError").is_empty(), "{status}");
    pair.check(pair.peer.bgp_process().thaw());
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
}

/// The peer daemon restarts: the session is re-established (a new `since`) and routes return.
pub fn restarted_peer(kind: DaemonKind) {
    let mut pair = Pair::start(kind, Setup::ebgp());
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
    let since = text(&pair.reef_status(), "since").to_string();
    let result = pair.peer.restart();
    pair.check(result);
    pair.wait_reef_status("a new Established session", WAIT, |s| {
        text(s, "state") == "Established" && text(s, "since") != since
    });
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
    pair.wait_peer_sees(&REEF_PREFIXES);
}

/// The peer shuts the session down administratively: Reef shows the NOTIFICATION decoded.
pub fn notification_from_peer(kind: DaemonKind) {
    let mut pair = Pair::start(kind, Setup::ebgp());
    pair.wait_established();
    let since = text(&pair.reef_status(), "since").to_string();
    let result = pair.peer.shutdown_peer(pair.reef_addr);
    pair.check(result);
    let status = pair.wait_reef_status("the Cease NOTIFICATION", WAIT, |s| {
        text(s, "lastError").contains("Cease")
    });
    let error = text(&status, "lastError");
    assert!(error.contains("Administrative Shutdown"), "{status}");
    assert!(error.to_lowercase().contains("received"), "{status}");
    // The session went down (ExaBGP reconnects at once, so it may already be back: `since` moved).
    assert_ne!(text(&status, "since"), since, "{status}");
}

/// The peer asks for a route refresh: Reef sends its routes again.
pub fn refresh_from_peer(kind: DaemonKind) {
    let pair = Pair::start(kind, Setup::ebgp());
    pair.wait_established();
    pair.wait_peer_sees(&REEF_PREFIXES);
    let before = pair.check(pair.peer.updates_received(pair.reef_addr));
    pair.check(pair.peer.refresh_in(pair.reef_addr));
    let resent = wait_until(WAIT, POLL, || {
        (pair.peer.updates_received(pair.reef_addr).ok()? > before).then_some(())
    });
    if resent.is_none() {
        pair.fail(&format!(
            "Reef sent no UPDATE after a ROUTE-REFRESH from {}",
            kind.name()
        ));
    }
    pair.wait_peer_sees(&REEF_PREFIXES);
}

/// Reef asks the peer for a route refresh (`reefctl bgp refresh`): the peer receives the
/// ROUTE-REFRESH (its own counter or log) and Reef keeps the peer's routes.
pub fn refresh_from_reef(kind: DaemonKind) {
    let pair = Pair::start(kind, Setup::ebgp());
    pair.wait_established();
    pair.wait_reef_sees(&PEER_PREFIXES);
    let before = pair.check(pair.peer.refreshes_received(pair.reef_addr));
    pair.check(pair.reef.refresh_in(pair.peer_addr));
    let received = wait_until(WAIT, POLL, || {
        (pair.peer.refreshes_received(pair.reef_addr).ok()? > before).then_some(())
    });
    if received.is_none() {
        pair.fail(&format!(
            "{} never received Reef's ROUTE-REFRESH (count {before} before, {:?} now)",
            kind.name(),
            pair.peer.refreshes_received(pair.reef_addr)
        ));
    }
    pair.wait_reef_sees(&PEER_PREFIXES);
    assert_eq!(text(&pair.reef_status(), "state"), "Established");
}

/// One `#[test]` per case for a daemon, so nextest runs them in parallel.
#[macro_export]
macro_rules! interop_tests {
    ($kind:expr, [$($case:ident $(($setup:expr))?),* $(,)?]) => {
        $(
            #[test]
            #[ignore = "needs root: network namespaces"]
            fn $case() {
                $crate::interop_tests!(@call $case, $kind $(, $setup)?);
            }
        )*
    };
    (@call $case:ident, $kind:expr, $setup:expr) => {
        $crate::interop::routes($kind, $setup)
    };
    (@call $case:ident, $kind:expr) => {
        $crate::interop::$case($kind)
    };
}
