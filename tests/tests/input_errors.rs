//! Received-message error handling with a real peer (issue #14, docs/RFC_NOTES.md): ExaBGP sends
//! routes with AS 0 in the path (RFC 7607), AS 0 in AGGREGATOR, and next hops that RFC 4271 §6.3 makes
//! unusable (our own address, off the shared subnet on single-hop eBGP, loopback, class E, our own IPv6
//! address). The session stays up; the bad routes are not in the Adj-RIB-In or the Loc-RIB, and
//! `reefctl bgp routes` lists them as ignored with the reason.

use std::net::Ipv4Addr;
use std::time::Duration;

use reef_lab::{
    BgpConfig, BgpDaemon, ExaBgp, Neighbor, Netns, Reefd, require_root, veth, wait_until,
};
use serde_json::Value;

const REEF_AS: u32 = 64512;
const PEER_AS: u32 = 4_200_000_002;
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// What Reef shows for one prefix from the peer: `Some(None)` received, `Some(Some(reason))`
/// ignored, `None` not listed.
fn listed(routes: &[Value], prefix: &str) -> Option<Option<String>> {
    let route = routes
        .iter()
        .find(|r| r.get("prefix").and_then(Value::as_str) == Some(prefix))?;
    Some(
        route
            .get("ignored")
            .and_then(Value::as_str)
            .map(str::to_string),
    )
}

#[test]
#[ignore = "needs root: network namespaces, veth, exabgp and reefd"]
fn malformed_and_unusable_routes_from_exabgp_are_ignored_and_shown() {
    require_root();
    let reef_ns = Netns::new("reefin").unwrap();
    let peer_ns = Netns::new("exain").unwrap();
    let link = veth(&reef_ns, &peer_ns).unwrap();
    let (reef_v4, peer_v4) = (link.a.v4, link.b.v4);
    // A third router on the link's /24: a valid next hop the peer may pass on (RFC 4271 §5.1.3).
    let [a, b, c, _] = reef_v4.octets();
    let third_party = Ipv4Addr::new(a, b, c, 9);
    let reef = Reefd::start(
        reef_ns,
        BgpConfig::new(REEF_AS, &link.a)
            .neighbor(Neighbor::new(peer_v4.into(), PEER_AS))
            .timers(9, 3),
    )
    .unwrap();
    let peer = ExaBgp::start(
        peer_ns,
        BgpConfig::new(PEER_AS, &link.b)
            .neighbor(Neighbor::new(reef_v4.into(), REEF_AS))
            .timers(9, 3),
    )
    .unwrap();
    let fail = |message: &str| -> ! {
        panic!("{message}\n{}\n{}", peer.diagnostics(), reef.diagnostics())
    };
    if let Err(e) = reef.wait_established(peer_v4.into(), WAIT) {
        fail(&e.to_string());
    }

    let announcements = [
        format!("announce route 10.70.1.0/24 next-hop {peer_v4} as-path [ {PEER_AS} 0 ]"),
        format!("announce route 10.70.2.0/24 next-hop {reef_v4}"),
        "announce route 10.70.3.0/24 next-hop 203.0.113.9".to_string(),
        format!("announce route 10.70.4.0/24 next-hop {third_party}"),
        // AGGREGATOR (type 7, optional transitive) with AS 0 and address 192.0.2.1.
        format!(
            "announce route 10.70.5.0/24 next-hop {peer_v4} attribute [ 0x07 0xc0 0x00000000c0000201 ]"
        ),
        "announce route 10.70.6.0/24 next-hop 127.0.0.1".to_string(),
        "announce route 10.70.7.0/24 next-hop 240.0.0.1".to_string(),
        format!("announce route fd00:70::/64 next-hop {}", link.a.v6),
    ];
    for line in &announcements {
        if let Err(e) = peer.command(line) {
            fail(&format!("{line}: {e}"));
        }
    }

    let expected: [(&str, Option<&str>); 8] = [
        ("10.70.1.0/24", Some("malformed AS_PATH")),
        ("10.70.2.0/24", Some("is our own address")),
        (
            "10.70.3.0/24",
            Some("neither the peer's address nor on a subnet shared with it"),
        ),
        ("10.70.4.0/24", None),
        ("10.70.5.0/24", None),
        ("10.70.6.0/24", Some("loopback address of a remote peer")),
        ("10.70.7.0/24", Some("invalid NEXT_HOP")),
        ("fd00:70::/64", Some("is our own address")),
    ];
    let matches = |routes: &[Value]| {
        expected
            .iter()
            .all(|(prefix, reason)| match (listed(routes, prefix), reason) {
                (Some(None), None) => true,
                (Some(Some(shown)), Some(reason)) => shown.contains(reason),
                _ => false,
            })
    };
    let mut last = Vec::new();
    let seen = wait_until(WAIT, POLL, || {
        last = reef.routes_json(peer_v4.into()).ok()?;
        matches(&last).then_some(())
    });
    if seen.is_none() {
        fail(&format!(
            "Reef never listed {expected:?}; last: {}",
            serde_json::to_string_pretty(&last).unwrap_or_default()
        ));
    }
    // 10.70.5.0/24 above: the AGGREGATOR with AS 0 was discarded, the route is used. No reset.
    let status = reef.peer(peer_v4.into()).unwrap();
    assert_eq!(
        status.get("state").and_then(Value::as_str),
        Some("Established"),
        "no session reset: {status}"
    );
    let ignored = status
        .get("routesIgnored")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    assert!(ignored >= 6, "routesIgnored {ignored}: {status}");

    // Only the usable routes reach the Loc-RIB (so nothing else is installed or propagated).
    let rib = reef.rib_json(None).unwrap();
    let in_loc_rib = |prefix: &str| {
        rib.as_array().is_some_and(|routes| {
            routes
                .iter()
                .any(|r| r.get("prefix").and_then(Value::as_str) == Some(prefix))
        })
    };
    for (prefix, reason) in expected {
        assert_eq!(
            in_loc_rib(prefix),
            reason.is_none(),
            "{prefix} in the Loc-RIB: {rib}"
        );
    }

    // The peer fixes one route: it leaves the ignored list and is used.
    let fixed = format!("announce route 10.70.2.0/24 next-hop {peer_v4}");
    if let Err(e) = peer.command(&fixed) {
        fail(&e.to_string());
    }
    let used = wait_until(WAIT, POLL, || {
        let routes = reef.routes_json(peer_v4.into()).ok()?;
        (listed(&routes, "10.70.2.0/24") == Some(None)).then_some(())
    });
    if used.is_none() {
        fail("the corrected 10.70.2.0/24 was never used");
    }
    let table = reef
        .reefctl(&["routes", "--peer", &peer_v4.to_string()])
        .unwrap();
    assert!(
        table.contains("Received but ignored:") && table.contains("10.70.3.0/24"),
        "{table}"
    );
}
