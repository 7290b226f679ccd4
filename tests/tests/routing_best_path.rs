//! Best-path selection with real daemons: reefd with two iBGP FRR peers on one bridge sending the
//! same prefix, one with LOCAL_PREF 200: only that path is used (kernel: one next hop), `reefctl bgp
//! rib PREFIX` explains why, and when that peer withdraws the other path takes over.

use std::net::IpAddr;

use reef_lab::{BgpConfig, BgpDaemon, Frr, FrrOptions, Lan, Neighbor, Netns, Reefd, require_root};
use reef_tests::routing::{
    REEF_AS, WAIT, fail, net, ok, peer_yaml, reef_rib_text, via, wait_kernel_route,
};
use serde_json::Value;

const PREFIX: &str = "10.71.0.0/24";

#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn higher_local_pref_wins_and_is_explained() {
    require_root();
    let mut lan = Lan::new("bplan").unwrap();
    let reef_ns = Netns::new("bpreef").unwrap();
    let a_ns = Netns::new("bpa").unwrap();
    let b_ns = Netns::new("bpb").unwrap();
    let reef_end = lan.attach(&reef_ns).unwrap();
    let a_end = lan.attach(&a_ns).unwrap();
    let b_end = lan.attach(&b_ns).unwrap();
    let (reef_ip, a_ip, b_ip): (IpAddr, IpAddr, IpAddr) =
        (reef_end.v4.into(), a_end.v4.into(), b_end.v4.into());
    let config = |end| {
        BgpConfig::new(REEF_AS, end)
            .neighbor(Neighbor::new(reef_ip, REEF_AS))
            .originate(net(PREFIX))
    };
    let mut a = Frr::start_with(
        a_ns,
        config(&a_end),
        FrrOptions {
            global: "route-map LP200 permit 10\n set local-preference 200\nexit".to_string(),
            ipv4: format!("  neighbor {reef_ip} route-map LP200 out"),
            ..FrrOptions::default()
        },
    )
    .unwrap();
    let b = ok(Frr::start(b_ns, config(&b_end)), &[&a], &[]);
    let yaml = format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nfib: {{ table: 254 }}\npeers:\n{}{}",
        peer_yaml(a_ip, REEF_AS, 9, 3, &[]),
        peer_yaml(b_ip, REEF_AS, 9, 3, &[]),
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&a, &b], &[]);
    {
        let all: [&dyn BgpDaemon; 3] = [&a, &b, &reef];
        ok(reef.wait_established(a_ip, WAIT), &all, &[]);
        ok(reef.wait_established(b_ip, WAIT), &all, &[]);
        // Both paths in, then the kernel route: via A only (not ECMP: LOCAL_PREF differs).
        let both = reef_lab::wait_until(WAIT, reef_tests::routing::POLL, || {
            let paths = reef.rib_json(Some(net(PREFIX))).ok()?;
            (paths.as_array()?.len() == 2).then_some(paths)
        });
        let paths = both.unwrap_or_else(|| {
            fail(
                &format!("reefd never had both paths: {}", reef_rib_text(&reef)),
                &all,
                &[],
            )
        });
        if let Err(e) = wait_kernel_route(reef.netns(), net(PREFIX), WAIT, via(&[a_ip])) {
            fail(&format!("{e}\npaths: {paths}"), &all, &[reef.netns()]);
        }
        let field = |i: usize, key: &str| {
            paths
                .pointer(&format!("/{i}/{key}"))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let explained = field(0, "verdict") == "best"
            && field(0, "peer") == a_ip.to_string()
            && field(0, "localPref") == "200"
            && field(1, "verdict") == "not selected"
            && field(1, "peer") == b_ip.to_string()
            && format!("{} {}", field(0, "reason"), field(1, "reason")).contains("LOCAL_PREF");
        if !explained {
            fail(
                &format!(
                    "reefctl bgp rib {PREFIX} should rank A (LOCAL_PREF 200) best and B not selected, \
                     naming LOCAL_PREF: {paths}"
                ),
                &all,
                &[],
            );
        }
    }
    // A withdraws: B's path takes over.
    let withdrawn = a.withdraw(net(PREFIX));
    let all: [&dyn BgpDaemon; 3] = [&a, &b, &reef];
    ok(withdrawn, &all, &[]);
    if let Err(e) = wait_kernel_route(reef.netns(), net(PREFIX), WAIT, via(&[b_ip])) {
        fail(
            &format!("after A withdrew: {e}\nreefd rib: {}", reef_rib_text(&reef)),
            &all,
            &[reef.netns()],
        );
    }
}
