//! Unit tests of the routing core: what is sent to whom, what the kernel gets, GR bookkeeping.

use super::*;
use crate::policy::{Action, Filter, MatchOperator, Operation, PrefixMatch, Rule};
use crate::wire::GracefulRestartFamily;

const LOCAL_AS: u32 = 64512;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const CLUSTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);

fn net(text: &str) -> IpNet {
    text.parse().unwrap() // test literals are valid CIDRs
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
}

fn both_families() -> AfiSafiSet {
    [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
        .into_iter()
        .collect()
}

fn session(n: u8, remote_as: u32, gr: Option<GracefulRestart>) -> SessionInfo {
    SessionInfo {
        conn: u64::from(n) * 100,
        peer: PeerInfo {
            address: ip(n),
            router_id: Ipv4Addr::new(10, 0, 0, n),
            remote_as,
            kind: if remote_as == LOCAL_AS {
                PeerKind::Ibgp
            } else {
                PeerKind::Ebgp
            },
        },
        local_as: LOCAL_AS,
        families: both_families(),
        next_hop_v4: Some(Ipv4Addr::new(198, 51, 100, 1)),
        next_hop_v6: Some("2001:db8::1".parse().unwrap()),
        peer_graceful_restart: gr,
    }
}

fn path(asns: &[u32], next_hop: u8) -> ReceivedPath {
    Arc::new(RoutePath {
        attrs: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(asns.to_vec())),
            ..PathAttributes::default()
        },
        next_hop: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, next_hop))),
    })
}

struct Lab {
    routing: Routing,
    out: Vec<Output>,
}

impl Lab {
    fn new(config: RoutingConfig) -> Lab {
        let config = RoutingConfig {
            fib: true,
            ..config
        };
        let mut routing = Routing::new(ROUTER_ID, LOCAL_AS, config);
        let out = routing.start();
        Lab { routing, out }
    }

    fn run(&mut self, input: Input) -> &[Output] {
        self.out = self.routing.handle(input);
        &self.out
    }

    fn peer(&mut self, n: u8, remote_as: u32, routing: PeerRouting) {
        self.run(Input::PeerAdded {
            address: ip(n),
            ebgp: remote_as != LOCAL_AS,
            routing,
        });
    }

    fn up(&mut self, n: u8, remote_as: u32) {
        self.run(Input::PeerUp(session(n, remote_as, None)));
    }

    fn announce(&mut self, n: u8, prefix: &str, received: ReceivedPath) -> &[Output] {
        self.run(Input::Routes {
            address: ip(n),
            conn: u64::from(n) * 100,
            changes: vec![(net(prefix), Some(received))],
        })
    }

    fn withdraw(&mut self, n: u8, prefix: &str) -> &[Output] {
        self.run(Input::Routes {
            address: ip(n),
            conn: u64::from(n) * 100,
            changes: vec![(net(prefix), None)],
        })
    }
}

/// The changes sent to peer `n` in `out`.
fn sent(out: &[Output], n: u8) -> Vec<OutChange> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { peer, changes, .. } if *peer == ip(n) => Some(changes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn fib(out: &[Output]) -> Vec<FibRoute> {
    out.iter()
        .filter_map(|o| match o {
            Output::Fib(routes) => Some(routes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn ibgp_split_horizon_and_ebgp_export_rewrites() {
    let mut lab = Lab::new(RoutingConfig::default());
    lab.peer(2, LOCAL_AS, PeerRouting::default());
    lab.peer(3, LOCAL_AS, PeerRouting::default());
    lab.peer(4, 65004, PeerRouting::default());
    for (n, asn) in [(2, LOCAL_AS), (3, LOCAL_AS), (4, 65004)] {
        lab.up(n, asn);
    }
    let mut learned = path(&[65010], 2);
    Arc::make_mut(&mut learned).attrs.med = Some(50);
    Arc::make_mut(&mut learned).attrs.local_pref = Some(200);
    let out = lab.announce(2, "10.1.0.0/24", learned).to_vec();
    assert!(sent(&out, 2).is_empty(), "never back to the source");
    assert!(sent(&out, 3).is_empty(), "iBGP → iBGP needs a reflector");
    let to_ebgp = sent(&out, 4);
    assert_eq!(to_ebgp.len(), 1);
    let ebgp_path = to_ebgp[0].1.as_ref().unwrap();
    assert_eq!(
        ebgp_path.attrs.as_path,
        Some(AsPath::from_sequence(vec![LOCAL_AS, 65010]))
    );
    assert_eq!(ebgp_path.attrs.local_pref, None);
    assert_eq!(
        ebgp_path.attrs.med, None,
        "a learned MED does not cross ASes"
    );
    assert_eq!(ebgp_path.next_hop, ip(1), "next hop self on eBGP");
    assert_eq!(
        fib(&out),
        vec![FibRoute {
            prefix: net("10.1.0.0/24"),
            next_hops: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2))]
        }]
    );
    // An eBGP-learned path goes to iBGP peers with its next hop and LOCAL_PREF 100.
    let out = lab.announce(4, "10.4.0.0/24", path(&[65004], 4)).to_vec();
    for n in [2, 3] {
        let changes = sent(&out, n);
        let p = changes[0].1.as_ref().unwrap();
        assert_eq!(p.next_hop, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 4)));
        assert_eq!(p.attrs.local_pref, Some(100));
        assert_eq!(p.attrs.as_path, Some(AsPath::from_sequence(vec![65004])));
    }
    // Withdrawn: withdrawn from everyone it was sent to, and from the kernel.
    let out = lab.withdraw(4, "10.4.0.0/24").to_vec();
    assert_eq!(sent(&out, 2), vec![(net("10.4.0.0/24"), None)]);
    assert_eq!(fib(&out)[0].next_hops, Vec::<IpAddr>::new());
}

#[test]
fn reflector_sets_originator_and_cluster_list_and_keeps_next_hop() {
    let mut lab = Lab::new(RoutingConfig {
        cluster_id: Some(CLUSTER),
        ..RoutingConfig::default()
    });
    let client = PeerRouting {
        route_reflector_client: true,
        ..PeerRouting::default()
    };
    lab.peer(2, LOCAL_AS, client.clone());
    lab.peer(3, LOCAL_AS, client);
    lab.peer(4, LOCAL_AS, PeerRouting::default()); // non-client
    lab.peer(5, LOCAL_AS, PeerRouting::default()); // non-client
    for n in 2..=5 {
        lab.up(n, LOCAL_AS);
    }
    let out = lab.announce(2, "10.2.0.0/24", path(&[], 2)).to_vec();
    for n in [3, 4, 5] {
        let changes = sent(&out, n);
        let p = changes[0].1.as_ref().unwrap();
        assert_eq!(p.attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(p.attrs.cluster_list, vec![CLUSTER]);
        assert_eq!(p.next_hop, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)));
    }
    // From a non-client: to clients only.
    let out = lab.announce(4, "10.4.0.0/24", path(&[], 4)).to_vec();
    assert_eq!(sent(&out, 2).len(), 1);
    assert_eq!(sent(&out, 3).len(), 1);
    assert!(sent(&out, 5).is_empty());
    // A path that carries our CLUSTER_ID, or a reflected copy of our own, is a loop.
    let mut looped = path(&[], 3);
    Arc::make_mut(&mut looped).attrs.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1), CLUSTER];
    let out = lab.announce(3, "10.9.0.0/24", looped).to_vec();
    assert!(fib(&out).is_empty());
    assert!(lab.routing.explain(net("10.9.0.0/24")).is_empty());
    let mut own = path(&[], 3);
    Arc::make_mut(&mut own).attrs.originator_id = Some(ROUTER_ID);
    lab.announce(3, "10.8.0.0/24", own);
    assert!(lab.routing.explain(net("10.8.0.0/24")).is_empty());
}

#[test]
fn ecmp_paths_become_one_multipath_kernel_route() {
    let mut lab = Lab::new(RoutingConfig::default());
    lab.peer(2, 65100, PeerRouting::default());
    lab.peer(3, 65100, PeerRouting::default());
    lab.up(2, 65100);
    lab.up(3, 65100);
    lab.announce(2, "10.50.0.0/24", path(&[65100], 2));
    let out = lab.announce(3, "10.50.0.0/24", path(&[65100], 3)).to_vec();
    let hops = |a, b| {
        vec![
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, a)),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, b)),
        ]
    };
    assert_eq!(fib(&out)[0].next_hops, hops(2, 3));
    let out = lab.run(Input::PeerDown {
        address: ip(2),
        graceful: false,
    });
    assert_eq!(
        fib(out)[0].next_hops,
        vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3))]
    );
}

#[test]
fn import_filter_protection_and_export_communities() {
    let reject_99 = Filter {
        rules: vec![Rule {
            prefix: Some(PrefixMatch {
                cidr: net("10.99.0.0/16"),
                op: MatchOperator::In,
                length: None,
            }),
            ..Rule::new(Action::Reject)
        }],
    };
    let tag = Filter {
        rules: vec![Rule {
            operations: vec![Operation::AddCommunity(Community(64512 << 16 | 100))],
            ..Rule::new(Action::Accept)
        }],
    };
    let mut lab = Lab::new(RoutingConfig {
        protected: vec![net("10.65.0.0/16")],
        ..RoutingConfig::default()
    });
    lab.peer(
        2,
        65002,
        PeerRouting {
            import: vec![reject_99],
            export: vec![tag],
            communities: vec![Community(64512 << 16 | 7)],
            ..PeerRouting::default()
        },
    );
    lab.up(2, 65002);
    lab.announce(2, "10.99.1.0/24", path(&[65002], 2));
    lab.announce(2, "10.98.1.0/24", path(&[65002], 2));
    lab.announce(2, "10.65.0.0/26", path(&[65002], 2));
    lab.announce(2, "10.0.0.0/8", path(&[65002], 2));
    let prefixes: Vec<IpNet> = lab
        .routing
        .selected_routes()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(prefixes, vec![net("10.98.1.0/24")]);
    let out = lab.run(Input::Originate(net("10.65.1.0/26"))).to_vec();
    let changes = sent(&out, 2);
    let p = changes[0].1.as_ref().unwrap();
    assert_eq!(
        p.attrs.communities,
        vec![Community(64512 << 16 | 100), Community(64512 << 16 | 7)]
    );
    assert!(
        fib(&out).is_empty(),
        "local blocks are felix's, not the FIB's"
    );
}

#[test]
fn policy_change_reevaluates_without_a_session_reset() {
    let mut lab = Lab::new(RoutingConfig::default());
    lab.peer(2, 65002, PeerRouting::default());
    lab.up(2, 65002);
    lab.announce(2, "10.99.1.0/24", path(&[65002], 2));
    assert_eq!(lab.routing.selected_routes().len(), 1);
    let reject_all = Filter {
        rules: vec![Rule::new(Action::Reject)],
    };
    let out = lab
        .run(Input::PeerRoutingChanged {
            address: ip(2),
            routing: PeerRouting {
                import: vec![reject_all],
                ..PeerRouting::default()
            },
            adj_rib_in: vec![(net("10.99.1.0/24"), path(&[65002], 2))],
        })
        .to_vec();
    assert!(lab.routing.selected_routes().is_empty());
    assert_eq!(fib(&out)[0].next_hops, Vec::<IpAddr>::new());
}

fn gr_capability(forwarding_preserved: bool) -> GracefulRestart {
    GracefulRestart {
        restart_state: false,
        notification: false,
        restart_time: 120,
        families: vec![GracefulRestartFamily {
            afi_safi: AfiSafi::IPV4_UNICAST,
            forwarding_preserved,
        }],
    }
}

#[test]
fn graceful_restart_helper_keeps_stale_paths_until_end_of_rib() {
    let mut lab = Lab::new(RoutingConfig {
        graceful_restart: Some(GracefulRestartConfig::default()),
        ..RoutingConfig::default()
    });
    assert!(lab.out.contains(&Output::FibSynced));
    lab.peer(2, 65002, PeerRouting::default());
    lab.run(Input::PeerUp(session(2, 65002, Some(gr_capability(true)))));
    lab.announce(2, "10.1.0.0/24", path(&[65002], 2));
    lab.announce(2, "10.2.0.0/24", path(&[65002], 2));
    let out = lab
        .run(Input::PeerDown {
            address: ip(2),
            graceful: true,
        })
        .to_vec();
    assert!(fib(&out).is_empty(), "the kernel keeps forwarding");
    assert!(out.contains(&Output::StartTimer(
        Timer::StaleRoutes(ip(2)),
        Duration::from_secs(120)
    )));
    assert_eq!(lab.routing.stale_routes(ip(2)), 2);
    lab.run(Input::PeerUp(session(2, 65002, Some(gr_capability(true)))));
    lab.announce(2, "10.1.0.0/24", path(&[65002], 2));
    assert_eq!(lab.routing.stale_routes(ip(2)), 1);
    let out = lab
        .run(Input::EndOfRib {
            address: ip(2),
            family: AfiSafi::IPV4_UNICAST,
        })
        .to_vec();
    assert_eq!(
        fib(&out),
        vec![FibRoute {
            prefix: net("10.2.0.0/24"),
            next_hops: Vec::new()
        }]
    );
    assert_eq!(lab.routing.selected_routes().len(), 1);
    assert!(!lab.routing.explain(net("10.1.0.0/24"))[0].candidate.stale);
}

#[test]
fn graceful_restart_helper_drops_paths_without_forwarding_state_or_after_a_notification() {
    let config = RoutingConfig {
        graceful_restart: Some(GracefulRestartConfig::default()),
        ..RoutingConfig::default()
    };
    // The peer came back without the F bit: its forwarding state is gone, so are the stale paths.
    let mut lab = Lab::new(config.clone());
    lab.peer(2, 65002, PeerRouting::default());
    lab.run(Input::PeerUp(session(2, 65002, Some(gr_capability(true)))));
    lab.announce(2, "10.1.0.0/24", path(&[65002], 2));
    lab.run(Input::PeerDown {
        address: ip(2),
        graceful: true,
    });
    let out = lab
        .run(Input::PeerUp(session(2, 65002, Some(gr_capability(false)))))
        .to_vec();
    assert_eq!(fib(&out)[0].next_hops, Vec::<IpAddr>::new());
    // A NOTIFICATION ends the session for good.
    let mut lab = Lab::new(config);
    lab.peer(2, 65002, PeerRouting::default());
    lab.run(Input::PeerUp(session(2, 65002, Some(gr_capability(true)))));
    lab.announce(2, "10.1.0.0/24", path(&[65002], 2));
    let out = lab.run(Input::PeerDown {
        address: ip(2),
        graceful: false,
    });
    assert_eq!(fib(out)[0].next_hops, Vec::<IpAddr>::new());
}

#[test]
fn restarting_speaker_syncs_the_fib_after_every_end_of_rib() {
    let mut lab = Lab::new(RoutingConfig {
        fib_sync_deferral: Some(Duration::from_secs(30)),
        ..RoutingConfig::default()
    });
    assert!(!lab.out.contains(&Output::FibSynced));
    assert!(lab.out.contains(&Output::StartTimer(
        Timer::SelectionDeferral,
        Duration::from_secs(30)
    )));
    lab.peer(2, 65002, PeerRouting::default());
    lab.peer(3, 65003, PeerRouting::default());
    lab.up(2, 65002);
    lab.up(3, 65003);
    for family in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
        let out = lab.run(Input::EndOfRib {
            address: ip(2),
            family,
        });
        assert!(!out.contains(&Output::FibSynced));
    }
    lab.run(Input::EndOfRib {
        address: ip(3),
        family: AfiSafi::IPV4_UNICAST,
    });
    let out = lab.run(Input::EndOfRib {
        address: ip(3),
        family: AfiSafi::IPV6_UNICAST,
    });
    assert!(out.contains(&Output::FibSynced));
}

#[test]
fn new_session_gets_the_table_then_end_of_rib_and_refresh_resends() {
    let mut lab = Lab::new(RoutingConfig::default());
    lab.run(Input::Originate(net("10.65.0.0/26")));
    lab.run(Input::Originate(net("fd00:65::/122")));
    lab.peer(2, 65002, PeerRouting::default());
    let out = lab.run(Input::PeerUp(session(2, 65002, None))).to_vec();
    let changes = sent(&out, 2);
    assert_eq!(changes.len(), 2);
    let v6 = changes
        .iter()
        .find(|(p, _)| p.addr().is_ipv6())
        .and_then(|(_, path)| path.clone())
        .unwrap();
    assert_eq!(v6.next_hop, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert!(matches!(out.last(), Some(Output::SendEndOfRib { .. })));
    let out = lab.run(Input::RefreshRequested {
        address: ip(2),
        family: AfiSafi::IPV4_UNICAST,
    });
    assert_eq!(sent(out, 2).len(), 1);
    // Routes of an older session are ignored.
    let out = lab.run(Input::Routes {
        address: ip(2),
        conn: 1,
        changes: vec![(net("10.7.0.0/24"), Some(path(&[65002], 2)))],
    });
    assert!(fib(out).is_empty());
}

#[test]
fn received_no_export_and_no_advertise_limit_the_export() {
    // RFC 1997: NO_EXPORT stays inside the AS (iBGP only), NO_ADVERTISE goes to no peer.
    let mut lab = Lab::new(RoutingConfig::default());
    lab.peer(2, 65002, PeerRouting::default());
    lab.peer(3, LOCAL_AS, PeerRouting::default());
    lab.peer(4, 65004, PeerRouting::default());
    for (n, asn) in [(2, 65002), (3, LOCAL_AS), (4, 65004)] {
        lab.up(n, asn);
    }
    let mut no_export = path(&[65002], 2);
    Arc::make_mut(&mut no_export).attrs.communities = vec![Community::NO_EXPORT];
    let out = lab.announce(2, "10.2.0.0/24", no_export).to_vec();
    assert_eq!(sent(&out, 3).len(), 1, "iBGP gets a NO_EXPORT route");
    assert!(sent(&out, 4).is_empty(), "eBGP does not");
    let mut subconfed = path(&[65002], 2);
    Arc::make_mut(&mut subconfed).attrs.communities = vec![Community::NO_EXPORT_SUBCONFED];
    let out = lab.announce(2, "10.4.0.0/24", subconfed).to_vec();
    assert_eq!(sent(&out, 3).len(), 1);
    assert!(
        sent(&out, 4).is_empty(),
        "NO_EXPORT_SUBCONFED: no eBGP peer either"
    );
    let mut no_advertise = path(&[65002], 2);
    Arc::make_mut(&mut no_advertise).attrs.communities = vec![Community::NO_ADVERTISE];
    let out = lab.announce(2, "10.3.0.0/24", no_advertise).to_vec();
    assert!(sent(&out, 3).is_empty() && sent(&out, 4).is_empty());
    assert_eq!(fib(&out)[0].prefix, net("10.3.0.0/24"), "but it is used");
}
