//! ECMP: a reefd node with two ToR FRRs (eBGP, both AS 65100, as eBGP multipath requires the same
//! neighbour AS) advertising the same prefixes: reefd's kernel route has both next hops; when one
//! ToR stops, the route keeps the other; when it is back, both again. IPv6 likewise (over the IPv4
//! sessions), and `maxPaths: 1` gives a single next hop.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use reef_lab::{
    BgpConfig, BgpDaemon, Frr, KernelRoute, Neighbor, Netns, Reefd, require_root, veth,
};
use reef_tests::routing::{
    POLL, REEF_AS, WAIT, fail, net, ok, peer_yaml, reef_rib_text, reef_route, via,
    wait_kernel_route,
};

const TOR_AS: u32 = 65100;
const ANYCAST: &str = "10.70.0.0/24";
const ANYCAST_V6: &str = "fd00:70::/64";

struct EcmpLab {
    tor1: Frr,
    tor2: Frr,
    reef: Reefd,
    tor1_ip: IpAddr,
    tor2_ip: IpAddr,
}

impl EcmpLab {
    fn start(max_paths: u32) -> EcmpLab {
        EcmpLab::start_in_table(max_paths, 254)
    }

    /// reefd programs kernel table `table`.
    fn start_in_table(max_paths: u32, table: u32) -> EcmpLab {
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
                    .originate(net(ANYCAST))
                    .originate(net(ANYCAST_V6)),
            )
        };
        let tor1 = tor(tor1_ns, &link1.b, link1.a.v4.into()).unwrap();
        let tor2 = ok(tor(tor2_ns, &link2.b, link2.a.v4.into()), &[&tor1], &[]);
        let yaml = format!(
            "routerId: {}\nasNumber: {REEF_AS}\nmaxPaths: {max_paths}\nprefixes: [\"10.65.1.0/26\"]\n\
             fib: {{ table: {table} }}\npeers:\n{}{}",
            link1.a.v4,
            peer_yaml(tor1_ip, TOR_AS, 9, 3, &[]),
            peer_yaml(tor2_ip, TOR_AS, 9, 3, &[]),
        );
        let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&tor1, &tor2], &[]);
        let lab = EcmpLab {
            tor1,
            tor2,
            reef,
            tor1_ip,
            tor2_ip,
        };
        lab.ok(lab.reef.wait_established(tor1_ip, WAIT));
        lab.ok(lab.reef.wait_established(tor2_ip, WAIT));
        lab
    }

    fn fail(&self, message: &str) -> ! {
        fail(
            &format!("{message}\nreefd rib: {}", reef_rib_text(&self.reef)),
            &[&self.tor1, &self.tor2, &self.reef],
            &[self.reef.netns()],
        )
    }

    fn ok<T>(&self, result: reef_lab::Result<T>) -> T {
        result.unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    /// The verdicts of `reefctl bgp rib ANYCAST -o json`, in rank order.
    fn verdicts(&self) -> Vec<String> {
        let paths = self.ok(self.reef.rib_json(Some(net(ANYCAST))));
        paths
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                p.get("verdict")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    fn wait_route(&self, prefix: &str, what: &str, test: impl Fn(Option<&KernelRoute>) -> bool) {
        if let Err(e) = wait_kernel_route(self.reef.netns(), net(prefix), WAIT, test) {
            self.fail(&format!("{what}: {e}"));
        }
    }
}

/// The kernel route has `count` next hops (IPv6 next hops may be the ToRs' global or link-local
/// addresses: only the number is checked).
fn next_hop_count(count: usize) -> impl Fn(Option<&KernelRoute>) -> bool {
    move |route| route.is_some_and(|r| r.next_hops.len() == count)
}

#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn two_tors_give_two_next_hops_and_one_survives() {
    let mut lab = EcmpLab::start(8);
    let (tor1_ip, tor2_ip) = (lab.tor1_ip, lab.tor2_ip);
    lab.wait_route(
        ANYCAST,
        "expected an ECMP route via both ToRs",
        via(&[tor1_ip, tor2_ip]),
    );
    // `reefctl bgp rib PREFIX` explains it: one best path, one multipath.
    let verdicts = lab.verdicts();
    if verdicts != ["best", "multipath"] {
        lab.fail(&format!(
            "reefctl bgp rib {ANYCAST} should show best + multipath: {verdicts:?}"
        ));
    }
    // ToR 2 crashes (SIGKILL, no graceful restart: its routes go at once).
    lab.tor2.crash();
    lab.wait_route(
        ANYCAST,
        "after ToR 2 stopped the route should keep ToR 1 only",
        via(&[tor1_ip]),
    );
    // ToR 2 comes back: both next hops again.
    let back = lab.tor2.respawn(None);
    lab.ok(back);
    lab.wait_route(
        ANYCAST,
        "after ToR 2 came back the route should have both next hops again",
        via(&[tor1_ip, tor2_ip]),
    );
}

/// The IPv6 prefix (carried over the IPv4 sessions) gets two next hops, then one.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn ipv6_route_gets_both_tors() {
    let mut lab = EcmpLab::start(8);
    lab.wait_route(
        ANYCAST_V6,
        "expected an IPv6 ECMP route with two next hops",
        next_hop_count(2),
    );
    lab.tor2.crash();
    lab.wait_route(
        ANYCAST_V6,
        "after ToR 2 stopped the IPv6 route should keep one next hop",
        next_hop_count(1),
    );
}

/// `maxPaths: 1` turns ECMP off: one next hop only.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn max_paths_one_gives_a_single_next_hop() {
    let lab = EcmpLab::start(1);
    lab.wait_route(ANYCAST, "expected a route via one ToR", next_hop_count(1));
    // Once both ToRs' paths are in reefd's Adj-RIB-In, watch a while: never two next hops.
    let both_in = reef_lab::wait_until(WAIT, POLL, || {
        (reef_route(&lab.reef, lab.tor1_ip, net(ANYCAST)).is_some()
            && reef_route(&lab.reef, lab.tor2_ip, net(ANYCAST)).is_some())
        .then_some(())
    });
    if both_in.is_none() {
        lab.fail("reefd never had both ToRs' paths");
    }
    let mut wrong = None;
    reef_lab::wait_until(Duration::from_secs(2), POLL, || {
        let route = lab.reef.netns().kernel_route(net(ANYCAST), 254);
        if !matches!(&route, Ok(Some(r)) if r.next_hops.len() == 1) {
            wrong.get_or_insert(route);
        }
        None::<()>
    });
    if let Some(route) = wrong {
        lab.fail(&format!(
            "with maxPaths 1 the route should have one next hop: {route:?}"
        ));
    }
}

/// `fib: {table: 100}`: the ECMP route goes into table 100, not into the main table.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn fib_table_other_than_main() {
    let lab = EcmpLab::start_in_table(8, 100);
    let expected: std::collections::BTreeSet<IpAddr> = [lab.tor1_ip, lab.tor2_ip].into();
    let mut last = None;
    let found = reef_lab::wait_until(WAIT, POLL, || {
        last = Some(lab.reef.netns().kernel_route(net(ANYCAST), 100));
        matches!(&last, Some(Ok(Some(r))) if r.next_hops == expected).then_some(())
    });
    if found.is_none() {
        lab.fail(&format!("no ECMP route in table 100: last {last:?}"));
    }
    let main = lab.reef.netns().kernel_route(net(ANYCAST), 254);
    if !matches!(main, Ok(None)) {
        lab.fail(&format!(
            "the route should not be in the main table: {main:?}"
        ));
    }
}

/// One ToR peered over the link's IPv6 addresses: its IPv4 and IPv6 prefixes both reach reefd's
/// kernel (IPv4 via the ToR's IPv4 address on the link, IPv6 via one next hop).
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn ipv6_session_carries_both_families_into_the_kernel() {
    require_root();
    let reef_ns = Netns::new("ecreef").unwrap();
    let tor_ns = Netns::new("ector1").unwrap();
    let link = veth(&reef_ns, &tor_ns).unwrap();
    let (reef_v6, tor_v6): (IpAddr, IpAddr) = (link.a.v6.into(), link.b.v6.into());
    let tor = Frr::start(
        tor_ns,
        BgpConfig::new(TOR_AS, &link.b)
            .neighbor(Neighbor::new(reef_v6, REEF_AS))
            .originate(net(ANYCAST))
            .originate(net(ANYCAST_V6)),
    )
    .unwrap();
    let yaml = format!(
        "routerId: {}\nasNumber: {REEF_AS}\nlisten: {{ address: \"::\", port: 179 }}\n\
         fib: {{ table: 254 }}\npeers:\n{}",
        link.a.v4,
        peer_yaml(
            tor_v6,
            TOR_AS,
            9,
            3,
            &[&format!("nextHop: \"{}\"", link.a.v4)]
        ),
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&tor], &[]);
    let all: [&dyn BgpDaemon; 2] = [&tor, &reef];
    ok(reef.wait_established(tor_v6, WAIT), &all, &[]);
    let tor_v4: IpAddr = link.b.v4.into();
    for (prefix, test) in [
        (
            ANYCAST,
            Box::new(via(&[tor_v4])) as Box<dyn Fn(Option<&KernelRoute>) -> bool>,
        ),
        (ANYCAST_V6, Box::new(next_hop_count(1))),
    ] {
        if let Err(e) = wait_kernel_route(reef.netns(), net(prefix), WAIT, test) {
            fail(
                &format!(
                    "over an IPv6 session: {e}\nAdj-RIB-In: {:?}\nreefd rib: {}",
                    reef.routes_json(tor_v6),
                    reef_rib_text(&reef)
                ),
                &all,
                &[reef.netns()],
            );
        }
    }
}
