//! Every daemon launcher proven against another daemon (before Reef exists): the session comes up,
//! routes flow both ways, withdrawals arrive, a route refresh is answered.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use reef_lab::bgp::check;
use reef_lab::{BgpConfig, DaemonKind, Neighbor, Netns, require_root, veth};

const UP: Duration = Duration::from_secs(30);
const ROUTES: Duration = Duration::from_secs(20);

fn prefixes(list: &[&str]) -> BTreeSet<IpNet> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

/// `a` (AS 65001) peers with `b` (AS 65002, or 65001 for iBGP) over one veth link.
fn peer_pair(a_kind: DaemonKind, b_kind: DaemonKind, ibgp: bool) {
    require_root();
    let a_ns = Netns::new(a_kind.name()).unwrap();
    let b_ns = Netns::new(b_kind.name()).unwrap();
    let link = veth(&a_ns, &b_ns).unwrap();
    let (a_as, b_as) = if ibgp {
        (65001, 65001)
    } else {
        (65001, 4_200_000_002)
    };
    let a_config = BgpConfig::new(a_as, &link.a)
        .neighbor(Neighbor::new(link.b.v4.into(), b_as))
        .originate("10.1.0.0/24".parse().unwrap())
        .originate("2001:db8:100::/48".parse().unwrap());
    let b_config = BgpConfig::new(b_as, &link.b)
        .neighbor(Neighbor::new(link.a.v4.into(), a_as))
        .originate("10.2.0.0/24".parse().unwrap())
        .originate("2001:db8:200::/48".parse().unwrap());
    let mut a = a_kind.start(a_ns, a_config).unwrap();
    let b = b_kind.start(b_ns, b_config).unwrap();
    let (a_addr, b_addr) = (link.a.v4.into(), link.b.v4.into());

    check(a.wait_established(b_addr, UP), &[&*a, &*b]);
    check(b.wait_established(a_addr, UP), &[&*a, &*b]);
    check(
        a.wait_routes_from(
            b_addr,
            &prefixes(&["10.2.0.0/24", "2001:db8:200::/48"]),
            ROUTES,
        ),
        &[&*a, &*b],
    );
    check(
        b.wait_routes_from(
            a_addr,
            &prefixes(&["10.1.0.0/24", "2001:db8:100::/48"]),
            ROUTES,
        ),
        &[&*a, &*b],
    );

    a.advertise("10.1.1.0/24".parse().unwrap()).unwrap();
    a.withdraw("2001:db8:100::/48".parse().unwrap()).unwrap();
    check(
        b.wait_routes_from(a_addr, &prefixes(&["10.1.0.0/24", "10.1.1.0/24"]), ROUTES),
        &[&*a, &*b],
    );

    // GoBGP sends no ROUTE-REFRESH (see GoBgp::refresh_in). FRR 8.4 counts ExaBGP's ROUTE-REFRESH
    // (routeRefreshRecv) but sends no UPDATE back; ExaBGP's refresh is checked against Reef instead.
    let refresh_works =
        a_kind != DaemonKind::GoBgp && !(a_kind == DaemonKind::ExaBgp && b_kind == DaemonKind::Frr);
    if refresh_works {
        let before = a.updates_received(b_addr).unwrap();
        a.refresh_in(b_addr).unwrap();
        let resent = reef_lab::wait_until(ROUTES, Duration::from_millis(200), || {
            (a.updates_received(b_addr).ok()? > before).then_some(())
        });
        assert!(
            resent.is_some(),
            "{} did not re-send after a refresh from {}\n{}\n{}",
            b.kind(),
            a.kind(),
            a.diagnostics(),
            b.diagnostics()
        );
    }

    // Dropping the daemons removes their namespaces, work directories and FRR pathspaces.
    let names = [a.netns().name().to_string(), b.netns().name().to_string()];
    let dirs = [a.workdir().to_path_buf(), b.workdir().to_path_buf()];
    drop(a);
    drop(b);
    for name in &names {
        for left in [
            Path::new("/run/netns"),
            Path::new("/etc/frr"),
            Path::new("/var/run/frr"),
        ]
        .map(|d| d.join(name))
        {
            assert!(!left.exists(), "{} left behind", left.display());
        }
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn bird_frr_ebgp() {
    peer_pair(DaemonKind::Bird, DaemonKind::Frr, false);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn frr_bird_ibgp() {
    peer_pair(DaemonKind::Frr, DaemonKind::Bird, true);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn gobgp_frr_ebgp() {
    peer_pair(DaemonKind::GoBgp, DaemonKind::Frr, false);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn exabgp_frr_ebgp() {
    peer_pair(DaemonKind::ExaBgp, DaemonKind::Frr, false);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn frr_gobgp_ibgp() {
    peer_pair(DaemonKind::Frr, DaemonKind::GoBgp, true);
}
