//! Regenerates the captured BGP byte fixtures in bgp/tests/fixtures/<daemon>/ (run as root):
//!
//! ```text
//! cargo run -p reef-lab --example capture_fixtures -- bgp/tests/fixtures
//! ```
//!
//! Each scenario peers two real daemons over a veth link while tcpdump records port 179, drives
//! the session through announcements, withdrawals, a route refresh and an administrative shutdown,
//! then `scripts/pcap-to-fixtures` cuts the messages the daemon under study sent into hex files
//! and writes a README describing each one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use reef_lab::bgp::check;
use reef_lab::{BgpConfig, Capture, DaemonKind, Neighbor, Netns, RouteAttrs, require_root, veth};

const WAIT: Duration = Duration::from_secs(30);

struct Scenario {
    /// The daemon whose messages become fixtures.
    subject: DaemonKind,
    subject_as: u32,
    other: DaemonKind,
    other_as: u32,
    description: &'static str,
}

fn prefix(text: &str) -> IpNet {
    text.parse().expect("prefixes in this file are valid")
}

/// Runs one scenario, returns the capture file and the subject's address.
fn run(scenario: &Scenario, dir: &Path, index: usize) -> (PathBuf, String) {
    let a_ns = Netns::new(scenario.subject.name()).unwrap();
    let b_ns = Netns::new(scenario.other.name()).unwrap();
    let link = veth(&a_ns, &b_ns).unwrap();
    let pcap = dir.join(format!("{index}-{}.pcap", scenario.subject.name()));
    let capture = Capture::start(&a_ns, &link.a.ifname, "tcp port 179", &pcap).unwrap();
    let attrs = RouteAttrs {
        med: Some(50),
        communities: vec![(65001, 100), (65001, 200)],
        large_communities: vec![(scenario.subject_as, 1, 2)],
    };
    let a_config = BgpConfig::new(scenario.subject_as, &link.a)
        .neighbor(Neighbor::new(link.b.v4.into(), scenario.other_as))
        .originate(prefix("10.1.0.0/24"))
        .originate(prefix("10.1.1.0/24"))
        .originate(prefix("2001:db8:100::/48"))
        .attrs(attrs);
    let b_config = BgpConfig::new(scenario.other_as, &link.b)
        .neighbor(Neighbor::new(link.a.v4.into(), scenario.subject_as))
        .originate(prefix("10.2.0.0/24"));
    let mut a = scenario.subject.start(a_ns, a_config).unwrap();
    let b = scenario.other.start(b_ns, b_config).unwrap();
    let (a_addr, b_addr) = (link.a.v4.into(), link.b.v4.into());
    check(a.wait_established(b_addr, WAIT), &[&*a, &*b]);
    let all: BTreeSet<IpNet> = ["10.1.0.0/24", "10.1.1.0/24", "2001:db8:100::/48"]
        .iter()
        .map(|p| prefix(p))
        .collect();
    check(b.wait_routes_from(a_addr, &all, WAIT), &[&*a, &*b]);
    check(
        a.wait_routes_from(b_addr, &[prefix("10.2.0.0/24")].into(), WAIT),
        &[&*a, &*b],
    );
    a.withdraw(prefix("10.1.1.0/24")).unwrap();
    a.withdraw(prefix("2001:db8:100::/48")).unwrap();
    check(
        b.wait_routes_from(a_addr, &[prefix("10.1.0.0/24")].into(), WAIT),
        &[&*a, &*b],
    );
    if a.refresh_in(b_addr).is_ok() {
        std::thread::sleep(Duration::from_secs(1));
    }
    a.shutdown_peer(b_addr).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    (capture.stop(), link.a.v4.to_string())
}

fn version(kind: DaemonKind) -> String {
    let (program, args): (&str, &[&str]) = match kind {
        DaemonKind::Bird => ("bird", &["--version"]),
        DaemonKind::Frr => ("/usr/lib/frr/bgpd", &["--version"]),
        DaemonKind::GoBgp => ("gobgpd", &["--version"]),
        DaemonKind::ExaBgp => ("exabgp", &["--version"]),
    };
    let out = Command::new(program).args(args).output().map(|o| {
        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        text
    });
    out.unwrap_or_default()
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn main() {
    require_root();
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bgp/tests/fixtures".to_string())
        .into();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pcap-to-fixtures");
    let scratch = tempfile::tempdir().unwrap();
    let scenarios = [
        Scenario {
            subject: DaemonKind::Frr,
            subject_as: 4_200_000_001,
            other: DaemonKind::Bird,
            other_as: 65002,
            description: "eBGP, FRR AS 4200000001 (4-octet) with BIRD AS 65002",
        },
        Scenario {
            subject: DaemonKind::Frr,
            subject_as: 65001,
            other: DaemonKind::Bird,
            other_as: 65001,
            description: "iBGP, FRR AS 65001 with BIRD AS 65001",
        },
        Scenario {
            subject: DaemonKind::Bird,
            subject_as: 4_200_000_002,
            other: DaemonKind::Frr,
            other_as: 65001,
            description: "eBGP, BIRD AS 4200000002 (4-octet) with FRR AS 65001",
        },
        Scenario {
            subject: DaemonKind::Bird,
            subject_as: 65001,
            other: DaemonKind::Frr,
            other_as: 65001,
            description: "iBGP, BIRD AS 65001 with FRR AS 65001",
        },
        Scenario {
            subject: DaemonKind::GoBgp,
            subject_as: 4_200_000_003,
            other: DaemonKind::Frr,
            other_as: 65001,
            description: "eBGP, GoBGP AS 4200000003 (4-octet) with FRR AS 65001",
        },
        Scenario {
            subject: DaemonKind::GoBgp,
            subject_as: 65001,
            other: DaemonKind::Bird,
            other_as: 65001,
            description: "iBGP, GoBGP AS 65001 with BIRD AS 65001",
        },
        Scenario {
            subject: DaemonKind::ExaBgp,
            subject_as: 4_200_000_004,
            other: DaemonKind::Frr,
            other_as: 65001,
            description: "eBGP, ExaBGP AS 4200000004 (4-octet) with FRR AS 65001",
        },
        Scenario {
            subject: DaemonKind::ExaBgp,
            subject_as: 65001,
            other: DaemonKind::Bird,
            other_as: 65001,
            description: "iBGP, ExaBGP AS 65001 with BIRD AS 65001",
        },
    ];
    for kind in DaemonKind::ALL {
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg("--out").arg(out.join(kind.name()));
        cmd.arg("--title")
            .arg(format!("BGP messages sent by {}", version(kind)));
        cmd.arg("--note").arg("Captured by `cargo run -p reef-lab --example capture_fixtures` (lab/examples/capture_fixtures.rs): \
             the daemon peers with another over a veth link (session over IPv4, IPv4 and IPv6 unicast), \
             originates 10.1.0.0/24, 10.1.1.0/24 and 2001:db8:100::/48 with MED 50, COMMUNITIES 65001:100 \
             65001:200 and a large community <own AS>:1:2, \
             then withdraws 10.1.1.0/24 and 2001:db8:100::/48, asks for a route refresh (not GoBGP: it cannot), \
             and shuts the session down administratively. Timers: hold 9 s, keepalive 3 s. \
             One message per file, hex; only the first KEEPALIVE of each session is kept."
        );
        for (i, scenario) in scenarios
            .iter()
            .enumerate()
            .filter(|(_, s)| s.subject == kind)
        {
            let (pcap, sender) = run(scenario, scratch.path(), i);
            cmd.arg("--capture")
                .arg(&pcap)
                .arg(&sender)
                .arg(scenario.description);
        }
        let status = cmd.status().unwrap();
        assert!(
            status.success(),
            "pcap-to-fixtures failed for {}",
            kind.name()
        );
    }
}
