//! ECMP: a reefd node with two ToR FRRs (eBGP, both AS 65100, as eBGP multipath requires the same
//! neighbour AS) advertising the same prefix: reefd's kernel route has both next hops; when one ToR
//! stops, the route keeps the other.

use std::net::IpAddr;

use reef_lab::{BgpConfig, BgpDaemon, Frr, Neighbor, Netns, Reefd, require_root, veth};
use reef_tests::routing::{
    REEF_AS, WAIT, fail, net, ok, peer_yaml, reef_rib_text, via, wait_kernel_route,
};

const TOR_AS: u32 = 65100;
const ANYCAST: &str = "10.70.0.0/24";

#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn two_tors_give_two_next_hops_and_one_survives() {
    require_root();
    let reef_ns = Netns::new("ecreef").unwrap();
    let tor1_ns = Netns::new("ector1").unwrap();
    let tor2_ns = Netns::new("ector2").unwrap();
    let link1 = veth(&reef_ns, &tor1_ns).unwrap();
    let link2 = veth(&reef_ns, &tor2_ns).unwrap();
    let (tor1_ip, tor2_ip): (IpAddr, IpAddr) = (link1.b.v4.into(), link2.b.v4.into());
    let tor = |ns: Netns, end, reef_ip: IpAddr| {
        Frr::start(
            ns,
            BgpConfig::new(TOR_AS, end)
                .neighbor(Neighbor::new(reef_ip, REEF_AS))
                .originate(net(ANYCAST)),
        )
    };
    let tor1 = tor(tor1_ns, &link1.b, link1.a.v4.into()).unwrap();
    let tor2 = ok(tor(tor2_ns, &link2.b, link2.a.v4.into()), &[&tor1], &[]);
    let yaml = format!(
        "routerId: {}\nasNumber: {REEF_AS}\nmaxPaths: 8\nprefixes: [\"10.65.1.0/26\"]\n\
         fib: {{ table: 254 }}\npeers:\n{}{}",
        link1.a.v4,
        peer_yaml(tor1_ip, TOR_AS, 9, 3, &[]),
        peer_yaml(tor2_ip, TOR_AS, 9, 3, &[]),
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&tor1, &tor2], &[]);
    {
        let all: [&dyn BgpDaemon; 3] = [&tor1, &tor2, &reef];
        ok(reef.wait_established(tor1_ip, WAIT), &all, &[]);
        ok(reef.wait_established(tor2_ip, WAIT), &all, &[]);
        if let Err(e) =
            wait_kernel_route(reef.netns(), net(ANYCAST), WAIT, via(&[tor1_ip, tor2_ip]))
        {
            fail(
                &format!(
                    "expected an ECMP route via both ToRs: {e}\nreefd rib: {}",
                    reef_rib_text(&reef)
                ),
                &all,
                &[reef.netns()],
            );
        }
    }

    // ToR 2 goes away (its daemons stopped: the session closes).
    drop(tor2);
    let all: [&dyn BgpDaemon; 2] = [&tor1, &reef];
    if let Err(e) = wait_kernel_route(reef.netns(), net(ANYCAST), WAIT, via(&[tor1_ip])) {
        fail(
            &format!(
                "after ToR 2 stopped the route should keep ToR 1 only: {e}\nreefd rib: {}",
                reef_rib_text(&reef)
            ),
            &all,
            &[reef.netns()],
        );
    }
}
