//! The FIB programmer on the real kernel, in fresh network namespaces: a namespace `fib` holding
//! the routes, with two veth links to a peer namespace whose addresses are the gateways.
//! The kernel's view is read back with `ip -j route`, independently of the programmer's dump.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use reef_felix::fib::by_key;
use reef_felix::{
    FibDiff, FibOp, FibProgrammer, MAIN_TABLE, NextHop, REEF_ROUTE_PROTOCOL, Route, RouteKey,
    RouteKind,
};
use reef_lab::{Link, Netns, require_root, veth, wait_until};

/// A namespace with two veth links to a peer namespace, and a programmer bound to it.
struct Lab {
    ns: Netns,
    _peer: Netns,
    links: [Link; 2],
    ifindex: [u32; 2],
    fib: FibProgrammer,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_root();
        let ns = Netns::new(tag).unwrap();
        let peer = Netns::new(&format!("{tag}p")).unwrap();
        let links = [veth(&ns, &peer).unwrap(), veth(&ns, &peer).unwrap()];
        let mut fib = open(&ns);
        let ifindex = [
            fib.link_index(&links[0].a.ifname).unwrap(),
            fib.link_index(&links[1].a.ifname).unwrap(),
        ];
        Lab {
            ns,
            _peer: peer,
            links,
            ifindex,
            fib,
        }
    }

    fn gw4(&self, link: usize) -> IpAddr {
        IpAddr::V4(self.links[link].b.v4)
    }

    fn gw6(&self, link: usize) -> IpAddr {
        IpAddr::V6(self.links[link].b.v6)
    }

    /// Interface names by index and by the gateway they reach, to read `ip` output.
    fn names(&self) -> Names {
        let mut names = Names::default();
        for (link, ifindex) in self.links.iter().zip(self.ifindex) {
            names.by_index.insert(ifindex, link.a.ifname.clone());
            names
                .by_gateway
                .insert(IpAddr::V4(link.b.v4), link.a.ifname.clone());
            names
                .by_gateway
                .insert(IpAddr::V6(link.b.v6), link.a.ifname.clone());
        }
        names
    }

    /// The kernel's routes with `proto` (all tables, both families) in canonical text.
    fn kernel_routes(&self, proto: &str) -> BTreeSet<String> {
        let mut routes = BTreeSet::new();
        for family in ["-4", "-6"] {
            let out = self
                .ns
                .ip(&[
                    "-j", family, "route", "show", "table", "all", "proto", proto,
                ])
                .unwrap();
            let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            routes.extend(entries.iter().map(canonical_json));
        }
        routes
    }

    fn reef_routes_in_kernel(&self) -> BTreeSet<String> {
        self.kernel_routes(&REEF_ROUTE_PROTOCOL.to_string())
    }
}

fn open(ns: &Netns) -> FibProgrammer {
    FibProgrammer::open_in_netns(format!("/run/netns/{}", ns.name())).unwrap()
}

#[derive(Default)]
struct Names {
    by_index: BTreeMap<u32, String>,
    by_gateway: BTreeMap<IpAddr, String>,
}

impl Names {
    /// The canonical text of a desired route, as `canonical_json` renders the kernel's.
    fn canonical(&self, route: &Route) -> String {
        let table = if route.table == MAIN_TABLE {
            "main".to_string()
        } else {
            route.table.to_string()
        };
        let what = match &route.kind {
            RouteKind::Blackhole => "blackhole".to_string(),
            RouteKind::Unicast { next_hops } => {
                let multipath = next_hops.len() > 1;
                let mut hops: Vec<String> = next_hops
                    .iter()
                    .map(|hop| {
                        let dev = match (hop.ifindex, hop.gateway) {
                            (Some(ifindex), _) => self.by_index[&ifindex].clone(),
                            (None, Some(gateway)) => self.by_gateway[&gateway].clone(),
                            (None, None) => unreachable!("hop without gateway or interface"),
                        };
                        let gateway = hop.gateway.map(|gw| gw.to_string()).unwrap_or_default();
                        let weight = if multipath { hop.weight } else { 1 };
                        format!(
                            "{gateway}@{dev}/{weight}{}",
                            if hop.onlink { " onlink" } else { "" }
                        )
                    })
                    .collect();
                hops.sort();
                hops.join(",")
            }
        };
        format!("{table} {} {what}", route.dst)
    }
}

/// One entry of `ip -j route` as "TABLE DST blackhole" or "TABLE DST GW@DEV/WEIGHT,...".
fn canonical_json(entry: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value, field: &str| {
        value
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let table = text(entry, "table").unwrap_or_else(|| "main".to_string());
    let dst = text(entry, "dst").unwrap();
    let dst = match dst.as_str() {
        "default" if text(entry, "gateway").is_some_and(|gw| gw.contains(':')) => {
            "::/0".to_string()
        }
        "default" => "0.0.0.0/0".to_string(),
        d if d.contains('/') => d.to_string(),
        d if d.contains(':') => format!("{d}/128"),
        d => format!("{d}/32"),
    };
    let onlink = |value: &serde_json::Value| {
        value
            .get("flags")
            .and_then(|f| f.as_array())
            .is_some_and(|flags| flags.iter().any(|f| f == "onlink"))
    };
    let hop = |value: &serde_json::Value| {
        format!(
            "{}@{}/{}{}",
            text(value, "gateway").unwrap_or_default(),
            text(value, "dev").unwrap_or_default(),
            value.get("weight").and_then(|w| w.as_u64()).unwrap_or(1),
            if onlink(value) { " onlink" } else { "" }
        )
    };
    let what = if text(entry, "type").as_deref() == Some("blackhole") {
        "blackhole".to_string()
    } else if let Some(hops) = entry.get("nexthops").and_then(|n| n.as_array()) {
        let mut hops: Vec<String> = hops.iter().map(hop).collect();
        hops.sort();
        hops.join(",")
    } else {
        hop(entry)
    };
    format!("{table} {dst} {what}")
}

fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len).unwrap()
}

fn v6(group: u16, len: u8) -> IpNet {
    IpNet::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, group, 0, 0, 0, 0)),
        len,
    )
    .unwrap()
}

/// 10,000 routes of every kind Reef installs.
fn ten_thousand(lab: &Lab) -> Vec<Route> {
    let [if0, if1] = lab.ifindex;
    let mut routes = Vec::new();
    for i in 0..6000u32 {
        let [_, _, c, d] = i.to_be_bytes();
        // Alternate between the two links, the kernel picking the interface.
        let hop = NextHop::via(lab.gw4(i as usize % 2));
        routes.push(Route::unicast(v4(10, 1, c, d, 32), MAIN_TABLE, vec![hop]));
    }
    for i in 0..1000u32 {
        let [_, _, c, d] = (i * 64).to_be_bytes();
        routes.push(Route::unicast(
            v4(10, 2, c, d, 26),
            MAIN_TABLE,
            vec![
                NextHop::via(lab.gw4(0)).with_ifindex(if0),
                NextHop::via(lab.gw4(1)).with_ifindex(if1).with_weight(3),
            ],
        ));
    }
    for i in 0..1000u32 {
        let [_, _, c, d] = (i * 64).to_be_bytes();
        routes.push(Route::blackhole(v4(10, 3, c, d, 26), MAIN_TABLE));
    }
    for i in 0..200u32 {
        let [_, _, _, c] = i.to_be_bytes();
        routes.push(Route::unicast(
            v4(10, 4, c, 0, 24),
            100,
            vec![NextHop::dev(if1)],
        ));
    }
    for i in 0..1000u16 {
        routes.push(Route::unicast(
            v6(i, 64),
            MAIN_TABLE,
            vec![NextHop::via(lab.gw6(1))],
        ));
    }
    for i in 1000..1500u16 {
        routes.push(Route::unicast(
            v6(i, 64),
            MAIN_TABLE,
            vec![
                NextHop::via(lab.gw6(0)).with_ifindex(if0).with_weight(2),
                NextHop::via(lab.gw6(1)).with_ifindex(if1),
            ],
        ));
    }
    for i in 1500..1800u16 {
        routes.push(Route::blackhole(v6(i, 64), MAIN_TABLE));
    }
    assert_eq!(routes.len(), 10_000);
    routes
}

#[test]
#[ignore = "needs root: network namespaces"]
fn installs_ten_thousand_routes_exactly() {
    let mut lab = Lab::new("fibi");
    let desired = by_key(ten_thousand(&lab));
    let report = lab.fib.reconcile(&desired).unwrap();
    assert_eq!(report.ops, 10_000);
    assert!(
        report.failures.is_empty(),
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );

    let names = lab.names();
    let expected: BTreeSet<String> = desired
        .values()
        .map(|route| names.canonical(route))
        .collect();
    let kernel = lab.reef_routes_in_kernel();
    assert_eq!(kernel.len(), 10_000);
    let missing: Vec<_> = expected.difference(&kernel).take(5).collect();
    let extra: Vec<_> = kernel.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );

    // The programmer's own dump agrees: nothing left to do.
    let dumped = lab.fib.dump_owned(None).unwrap();
    assert_eq!(dumped.len(), 10_000);
    assert_eq!(FibDiff::compute(&desired, &dumped), Vec::new());
    assert_eq!(lab.fib.dump_owned(Some(100)).unwrap().len(), 200);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn per_route_errors_do_not_abort_the_batch() {
    let mut lab = Lab::new("fibe");
    let reachable = Route::unicast(
        v4(10, 9, 0, 0, 24),
        MAIN_TABLE,
        vec![NextHop::via(lab.gw4(0))],
    );
    // No interface reaches 203.0.113.9: ENETUNREACH.
    let unreachable = Route::unicast(
        v4(10, 9, 1, 0, 24),
        MAIN_TABLE,
        vec![NextHop::via(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)))],
    );
    let host_bits = Route::blackhole(v4(10, 9, 2, 1, 24), MAIN_TABLE);
    let after = Route::blackhole(v4(10, 9, 3, 0, 24), MAIN_TABLE);
    let ops = vec![
        FibOp::Add(reachable.clone()),
        FibOp::Add(unreachable.clone()),
        FibOp::Add(host_bits.clone()),
        FibOp::Delete(RouteKey {
            table: MAIN_TABLE,
            dst: v4(10, 9, 4, 0, 24),
        }),
        FibOp::Add(after.clone()),
    ];
    let report = lab.fib.apply(&ops).unwrap();
    let failed: Vec<(FibOp, Option<i32>)> = report
        .failures
        .iter()
        .map(|failure| (failure.op.clone(), failure.error.errno()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (FibOp::Add(host_bits), None),
            (FibOp::Add(unreachable), Some(libc::ENETUNREACH)),
            (
                FibOp::Delete(RouteKey {
                    table: MAIN_TABLE,
                    dst: v4(10, 9, 4, 0, 24)
                }),
                Some(libc::ESRCH)
            ),
        ]
    );
    let names = lab.names();
    let expected: BTreeSet<String> = [reachable, after]
        .iter()
        .map(|r| names.canonical(r))
        .collect();
    assert_eq!(lab.reef_routes_in_kernel(), expected);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn routes_of_other_owners_are_never_touched() {
    let mut lab = Lab::new("fibo");
    let gw4 = lab.gw4(0).to_string();
    let gw6 = lab.gw6(0).to_string();
    for (dst, gw) in [
        ("10.50.0.0/24", &gw4),
        ("10.50.1.0/24", &gw4),
        ("2001:db8:50::/48", &gw6),
    ] {
        lab.ns
            .ip(&["route", "add", dst, "via", gw, "proto", "static"])
            .unwrap();
    }
    let statics = lab.kernel_routes("static");
    assert_eq!(statics.len(), 3);

    let via = NextHop::via(lab.gw4(1));
    let same_key_v4 = Route::unicast(v4(10, 50, 0, 0, 24), MAIN_TABLE, vec![via.clone()]);
    let same_key_v6 = Route::blackhole("2001:db8:50::/48".parse().unwrap(), MAIN_TABLE);
    let covering = Route::unicast(v4(10, 50, 0, 0, 16), MAIN_TABLE, vec![via.clone()]);
    let more_specific = Route::unicast(v4(10, 50, 1, 128, 25), MAIN_TABLE, vec![via]);
    let desired = by_key([
        same_key_v4.clone(),
        same_key_v6.clone(),
        covering.clone(),
        more_specific.clone(),
    ]);
    let report = lab.fib.reconcile(&desired).unwrap();
    let mut refused: Vec<(RouteKey, Option<i32>)> = report
        .failures
        .iter()
        .map(|f| (f.op.key(), f.error.errno()))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec![
            (same_key_v4.key(), Some(libc::EEXIST)),
            (same_key_v6.key(), Some(libc::EEXIST))
        ]
    );
    let names = lab.names();
    let installed: BTreeSet<String> = [&covering, &more_specific]
        .iter()
        .map(|r| names.canonical(r))
        .collect();
    assert_eq!(lab.reef_routes_in_kernel(), installed);
    assert_eq!(lab.kernel_routes("static"), statics);
    // The dump never returns them, so a reconcile to nothing leaves them.
    assert_eq!(lab.fib.dump_owned(None).unwrap().len(), 2);
    let report = lab.fib.reconcile(&BTreeMap::new()).unwrap();
    assert_eq!((report.ops, report.failures.len()), (2, 0));
    assert!(lab.reef_routes_in_kernel().is_empty());
    assert_eq!(lab.kernel_routes("static"), statics);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn reconcile_after_restart_changes_only_what_differs() {
    let mut lab = Lab::new("fibr");
    let mut routes: Vec<Route> = (0..1000u32)
        .map(|i| {
            let [_, _, c, d] = i.to_be_bytes();
            Route::unicast(
                v4(10, 7, c, d, 32),
                MAIN_TABLE,
                vec![NextHop::via(lab.gw4(0))],
            )
        })
        .collect();
    routes.push(Route::blackhole(v6(7, 64), MAIN_TABLE));
    let report = lab.fib.reconcile(&by_key(routes.clone())).unwrap();
    assert_eq!((report.ops, report.failures.len()), (1001, 0));

    // Watch every route event from here on; a marker route proves the monitor is listening.
    let log = std::env::temp_dir().join(format!(
        "felix-monitor-{}-{}.log",
        std::process::id(),
        lab.ns.name()
    ));
    let _ = std::fs::remove_file(&log);
    let monitor = lab
        .ns
        .spawn("ip monitor", "ip", &["monitor", "route"], &log)
        .unwrap();
    let gw = lab.gw4(0).to_string();
    let marker = |ns: &Netns, host: &str| {
        ns.ip(&["route", "add", host, "via", &gw, "proto", "static"])
            .unwrap();
        wait_until(Duration::from_secs(1), Duration::from_millis(20), || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|text| text.contains(&format!("{host} ")))
        })
        .is_some()
    };
    // Until the monitor has subscribed, markers go unseen: add new ones until one shows.
    let listening = (1..=50).any(|n| marker(&lab.ns, &format!("10.99.0.{n}")));
    assert!(listening, "ip monitor never showed a marker route");

    // The agent restarts: a new programmer, the same desired routes but one moved, one withdrawn,
    // one new.
    drop(std::mem::replace(&mut lab.fib, open(&lab.ns)));
    routes[5] = Route::unicast(
        v4(10, 7, 0, 5, 32),
        MAIN_TABLE,
        vec![NextHop::via(lab.gw4(1))],
    );
    let withdrawn = routes.remove(7);
    routes.push(Route::blackhole(v4(10, 8, 0, 0, 26), MAIN_TABLE));
    let desired = by_key(routes.clone());
    let report = lab.fib.reconcile(&desired).unwrap();
    assert_eq!((report.ops, report.failures.len()), (3, 0));
    assert!(marker(&lab.ns, "10.99.1.1"), "ip monitor stopped");
    drop(monitor);

    let events = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let deleted: Vec<&str> = events
        .lines()
        .filter(|line| line.starts_with("Deleted"))
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(
        deleted[0].starts_with(&format!("Deleted {} ", withdrawn.dst.addr())),
        "{deleted:?}"
    );
    let changed = events
        .lines()
        .filter(|line| line.contains("proto 82"))
        .count();
    assert_eq!(changed, 3, "{events}");

    let names = lab.names();
    let expected: BTreeSet<String> = routes.iter().map(|r| names.canonical(r)).collect();
    assert_eq!(lab.reef_routes_in_kernel(), expected);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn removing_an_ecmp_hop_keeps_the_other_and_withdraw_removes() {
    let mut lab = Lab::new("fibm");
    let [if0, if1] = lab.ifindex;
    let ecmp = |lab: &Lab, hops: &[usize]| {
        let ifindex = [if0, if1];
        vec![
            Route::unicast(
                v4(10, 6, 0, 0, 24),
                MAIN_TABLE,
                hops.iter()
                    .map(|&l| NextHop::via(lab.gw4(l)).with_ifindex(ifindex[l]))
                    .collect(),
            ),
            Route::unicast(
                v6(6, 64),
                MAIN_TABLE,
                hops.iter()
                    .map(|&l| NextHop::via(lab.gw6(l)).with_ifindex(ifindex[l]))
                    .collect(),
            ),
            Route::blackhole(v4(10, 6, 1, 0, 26), MAIN_TABLE),
        ]
    };
    let names = lab.names();
    for hops in [&[0, 1][..], &[1], &[0, 1], &[0]] {
        let desired = by_key(ecmp(&lab, hops));
        let report = lab.fib.reconcile(&desired).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let expected: BTreeSet<String> = desired.values().map(|r| names.canonical(r)).collect();
        assert_eq!(lab.reef_routes_in_kernel(), expected, "hops {hops:?}");
    }
    let report = lab.fib.reconcile(&BTreeMap::new()).unwrap();
    assert_eq!((report.ops, report.failures.len()), (3, 0));
    assert!(lab.reef_routes_in_kernel().is_empty());
    assert!(lab.fib.dump_owned(None).unwrap().is_empty());
    // A table that was never created is empty, not an error.
    assert!(lab.fib.dump_owned(Some(4242)).unwrap().is_empty());
}
