//! The lab pieces the routing tests (reef-tests, `routing_*.rs`) build on, proven with reference
//! daemons only: a LAN with FRR reflecting between an FRR and a BIRD client, BFD between two FRRs
//! noticing a cut, FRR graceful restart with a continuous ping through the path, and FRR's report of
//! a max-prefix Cease.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reef_lab::bgp::check;
use reef_lab::{
    BgpConfig, BgpDaemon, Bird, Frr, FrrOptions, Lan, Neighbor, Netns, Ping, require_root, veth,
    wait_until,
};
use serde_json::Value;

const UP: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn frr_path(frr: &Frr, prefix: &str) -> Option<Value> {
    frr.route_json(net(prefix))
        .ok()?
        .pointer("/paths/0")
        .cloned()
}

/// FRR (cluster id 198.51.100.1) reflects between FRR and BIRD clients on one bridge: the clients
/// see each other's routes with the original next hop, ORIGINATOR_ID and CLUSTER_LIST; the kernel
/// of the FRR client has the route via the BIRD client directly.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn lan_with_frr_reflecting_between_frr_and_bird() {
    require_root();
    let mut lan = Lan::new("lablan").unwrap();
    let rr_ns = Netns::new("labrr").unwrap();
    let c1_ns = Netns::new("labc1").unwrap();
    let c2_ns = Netns::new("labc2").unwrap();
    let rr_end = lan.attach(&rr_ns).unwrap();
    let c1_end = lan.attach(&c1_ns).unwrap();
    let c2_end = lan.attach(&c2_ns).unwrap();
    let (rr, c1, c2): (IpAddr, IpAddr, IpAddr) =
        (rr_end.v4.into(), c1_end.v4.into(), c2_end.v4.into());
    let rr_frr = Frr::start_with(
        rr_ns,
        BgpConfig::new(65001, &rr_end)
            .neighbor(Neighbor::new(c1, 65001))
            .neighbor(Neighbor::new(c2, 65001)),
        FrrOptions {
            router: " bgp cluster-id 198.51.100.1".to_string(),
            ipv4: format!(
                "  neighbor {c1} route-reflector-client\n  neighbor {c2} route-reflector-client"
            ),
            ..FrrOptions::default()
        },
    )
    .unwrap();
    let c1_frr = Frr::start(
        c1_ns,
        BgpConfig::new(65001, &c1_end)
            .neighbor(Neighbor::new(rr, 65001))
            .originate(net("10.81.0.0/24")),
    )
    .unwrap();
    let c2_bird = Bird::start(
        c2_ns,
        BgpConfig::new(65001, &c2_end)
            .neighbor(Neighbor::new(rr, 65001))
            .originate(net("10.82.0.0/24")),
    )
    .unwrap();
    let all: [&dyn BgpDaemon; 3] = [&rr_frr, &c1_frr, &c2_bird];
    check(c1_frr.wait_established(rr, UP), &all);
    check(c2_bird.wait_established(rr, UP), &all);

    let path = wait_until(UP, POLL, || frr_path(&c1_frr, "10.82.0.0/24"));
    let path = path.unwrap_or_else(|| panic!("no reflected route at FRR client"));
    assert_eq!(
        path.pointer("/nexthops/0/ip").and_then(Value::as_str),
        Some(c2_end.v4.to_string().as_str()),
        "{path}"
    );
    assert_eq!(
        path.get("originatorId").and_then(Value::as_str),
        Some(c2_end.v4.to_string().as_str()),
        "{path}"
    );
    assert_eq!(
        path.pointer("/clusterList/list/0").and_then(Value::as_str),
        Some("198.51.100.1"),
        "{path}"
    );
    let kernel = wait_until(UP, POLL, || {
        c1_frr
            .netns()
            .kernel_route(net("10.82.0.0/24"), 254)
            .ok()
            .flatten()
    })
    .expect("FRR client installs the reflected route");
    assert_eq!(
        kernel.next_hops.iter().copied().collect::<Vec<_>>(),
        [c2],
        "{kernel:?}"
    );

    let want = [
        format!("via {c1} "),
        format!("BGP.originator_id: {c1}"),
        "BGP.cluster_list: 198.51.100.1".to_string(),
    ];
    let mut last = String::new();
    let seen = wait_until(UP, POLL, || {
        last = c2_bird
            .birdc(&["show", "route", "all", "for", "10.81.0.0/24"])
            .ok()?;
        want.iter().all(|w| last.contains(w.as_str())).then_some(())
    });
    assert!(seen.is_some(), "BIRD should show {want:?}:\n{last}");
}

/// Two FRRs with bfdd (100 ms x 3) and a 60 s hold time: an nftables cut takes both sessions down
/// through BFD (within 10 s, reason "BFD"); lifting it brings the session back.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn bfd_between_frrs_notices_a_cut() {
    require_root();
    let a_ns = Netns::new("labbfa").unwrap();
    let b_ns = Netns::new("labbfb").unwrap();
    let link = veth(&a_ns, &b_ns).unwrap();
    let (a, b): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
    let options = |peer: IpAddr| FrrOptions {
        global: "bfd\n profile lab\n  receive-interval 100\n  transmit-interval 100\n  \
                 detect-multiplier 3"
            .to_string(),
        router: format!(" neighbor {peer} bfd\n neighbor {peer} bfd profile lab"),
        bfdd: true,
        ..FrrOptions::default()
    };
    let fa = Frr::start_with(
        a_ns,
        BgpConfig::new(65001, &link.a)
            .neighbor(Neighbor::new(b, 65002))
            .timers(60, 20),
        options(b),
    )
    .unwrap();
    let fb = Frr::start_with(
        b_ns,
        BgpConfig::new(65002, &link.b)
            .neighbor(Neighbor::new(a, 65001))
            .timers(60, 20),
        options(a),
    )
    .unwrap();
    let all: [&dyn BgpDaemon; 2] = [&fa, &fb];
    check(fa.wait_established(b, UP), &all);
    let bfd_up = wait_until(UP, POLL, || {
        let text = fa.vtysh(&["show bfd peers json"]).ok()?;
        let peers: Value = serde_json::from_str(&text).ok()?;
        peers
            .as_array()?
            .iter()
            .any(|p| {
                p.get("peer").and_then(Value::as_str) == Some(b.to_string().as_str())
                    && p.get("status").and_then(Value::as_str) == Some("up")
            })
            .then_some(())
    });
    assert!(bfd_up.is_some(), "BFD never came up\n{}", fa.diagnostics());
    check(fb.netns().cut(a), &all);
    let start = Instant::now();
    let down = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (!fa.is_established(b).unwrap_or(true) && !fb.is_established(a).unwrap_or(true))
            .then_some(())
    });
    eprintln!("both down after {} ms", start.elapsed().as_millis());
    assert!(down.is_some(), "sessions still up 10 s after the cut");
    // FRR sends a Cease "BFD Down" on its way out (it cannot arrive: the link is cut).
    let neighbor = check(fa.neighbor_json(b), &all);
    assert!(
        neighbor
            .get("lastNotificationReason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains("BFD")),
        "{neighbor}"
    );
    check(fb.netns().uncut(), &all);
    check(fa.wait_established(b, Duration::from_secs(60)), &all);
}

/// host A — FRR 1 — FRR 2 — host B with FRR graceful restart: FRR 2 killed (bgpd, zebra) and
/// started again with `zebra -K`: FRR 1 keeps FRR 2's route stale, then fresh; no ping is lost.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn ping_survives_frr_graceful_restart() {
    require_root();
    let host_a = Netns::new("labha").unwrap();
    let r1_ns = Netns::new("labr1").unwrap();
    let r2_ns = Netns::new("labr2").unwrap();
    let host_b = Netns::new("labhb").unwrap();
    let a_link = veth(&r1_ns, &host_a).unwrap();
    let core = veth(&r1_ns, &r2_ns).unwrap();
    let b_link = veth(&r2_ns, &host_b).unwrap();
    for (router, host, r_if, h_if, r_addr, h_addr) in [
        (
            &r1_ns,
            &host_a,
            &a_link.a.ifname,
            &a_link.b.ifname,
            "10.83.1.1",
            "10.83.1.2",
        ),
        (
            &r2_ns,
            &host_b,
            &b_link.a.ifname,
            &b_link.b.ifname,
            "10.84.1.1",
            "10.84.1.2",
        ),
    ] {
        router
            .ip(&["addr", "add", &format!("{r_addr}/24"), "dev", r_if])
            .unwrap();
        host.ip(&["addr", "add", &format!("{h_addr}/24"), "dev", h_if])
            .unwrap();
        host.ip(&["route", "add", "default", "via", r_addr])
            .unwrap();
        router.enable_forwarding().unwrap();
    }
    let gr = FrrOptions {
        router: " bgp graceful-restart\n bgp graceful-restart preserve-fw-state".to_string(),
        ..FrrOptions::default()
    };
    let (r1, r2): (IpAddr, IpAddr) = (core.a.v4.into(), core.b.v4.into());
    let f1 = Frr::start_with(
        r1_ns,
        BgpConfig::new(65001, &core.a)
            .neighbor(Neighbor::new(r2, 65002))
            .originate(net("10.83.1.0/24")),
        gr.clone(),
    )
    .unwrap();
    let mut f2 = Frr::start_with(
        r2_ns,
        BgpConfig::new(65002, &core.b)
            .neighbor(Neighbor::new(r1, 65001))
            .originate(net("10.84.1.0/24")),
        gr,
    )
    .unwrap();
    check(f1.wait_established(r2, UP), &[&f1, &f2]);
    let reachable = wait_until(UP, POLL, || {
        host_a
            .exec(&["ping", "-n", "-c", "1", "-W", "1", "10.84.1.2"])
            .ok()
    });
    assert!(reachable.is_some(), "{}", f1.diagnostics());
    let ping = Ping::start(
        &host_a,
        "10.84.1.2".parse().unwrap(),
        300,
        Duration::from_millis(50),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    f2.crash();
    let stale = wait_until(Duration::from_secs(15), POLL, || {
        frr_path(&f1, "10.84.1.0/24")?
            .get("stale")
            .and_then(Value::as_bool)
            .filter(|s| *s)
    });
    assert!(
        stale.is_some(),
        "FRR 1 never marked the route stale: {:?}",
        frr_path(&f1, "10.84.1.0/24")
    );
    f2.respawn(Some(120)).unwrap();
    let fresh = wait_until(Duration::from_secs(40), POLL, || {
        let path = frr_path(&f1, "10.84.1.0/24")?;
        (path.get("stale").is_none() && f1.is_established(r2).ok()?).then_some(())
    });
    assert!(
        fresh.is_some(),
        "{:?}\n{}",
        frr_path(&f1, "10.84.1.0/24"),
        f1.diagnostics()
    );
    let summary = ping.finish().unwrap();
    assert_eq!(
        summary.lost(),
        0,
        "{:?}\n{}",
        summary.loss_lines(),
        f2.diagnostics()
    );
    assert!(summary.transmitted >= 300, "{}", summary.output);
    drop(host_b);
}

/// FRR A with `maximum-prefix 1` receiving 3 from FRR B: B reports the Cease it received as
/// "Maximum Number of Prefixes Reached" (the text the reefd max-prefix test looks for).
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn frr_reports_a_received_max_prefix_cease() {
    require_root();
    let a_ns = Netns::new("labmpa").unwrap();
    let b_ns = Netns::new("labmpb").unwrap();
    let link = veth(&a_ns, &b_ns).unwrap();
    let (a, b): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
    let fa = Frr::start_with(
        a_ns,
        BgpConfig::new(65001, &link.a).neighbor(Neighbor::new(b, 65002)),
        FrrOptions {
            ipv4: format!("  neighbor {b} maximum-prefix 1"),
            ..FrrOptions::default()
        },
    )
    .unwrap();
    let fb = Frr::start(
        b_ns,
        BgpConfig::new(65002, &link.b)
            .neighbor(Neighbor::new(a, 65001))
            .originate(net("10.85.1.0/24"))
            .originate(net("10.85.2.0/24"))
            .originate(net("10.85.3.0/24")),
    )
    .unwrap();
    let mut last = Value::Null;
    let seen = wait_until(UP, POLL, || {
        last = fb.neighbor_json(a).ok()?;
        last.to_string()
            .contains("Maximum Number of Prefixes Reached")
            .then_some(())
    });
    assert!(seen.is_some(), "{last}\n{}", fa.diagnostics());
    let reset = last
        .get("lastResetDueTo")
        .and_then(Value::as_str)
        .unwrap_or("");
    assert!(reset.to_lowercase().contains("received"), "{last}");
}
