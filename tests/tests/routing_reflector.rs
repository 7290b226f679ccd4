//! Route reflection (RFC 4456) with real daemons on one Ethernet segment (a bridge), so reflected
//! routes keep a next hop every member reaches directly: FRR reflecting between two reefd clients,
//! reefd reflecting between an FRR and a BIRD client, and reefd dropping reflected loops.

use std::net::IpAddr;

use ipnet::IpNet;

use reef_lab::{
    BgpConfig, BgpDaemon, Bird, ExaBgp, Frr, FrrOptions, Lan, Neighbor, Netns, Reefd, require_root,
};
use reef_tests::routing::{
    REEF_AS, WAIT, fail, frr_next_hop, net, ok, peer_yaml, reef_rib_text, reef_route, via,
    wait_frr_path, wait_kernel_route,
};
use serde_json::Value;

/// reefd's CLUSTER_ID when it reflects: not any router id, so CLUSTER_LIST checks cannot mix them up.
const CLUSTER_ID: &str = "198.51.100.1";

fn reef_client_yaml(router_id: IpAddr, prefix: &str, rr: IpAddr) -> String {
    format!(
        "routerId: {router_id}\nasNumber: {REEF_AS}\nprefixes: [\"{prefix}\"]\nfib: {{ table: 254 }}\npeers:\n{}",
        peer_yaml(rr, REEF_AS, 9, 3, &[])
    )
}

/// (a) FRR reflects for two reefd clients (iBGP, one AS): each reefd learns the other's prefix with
/// the other reefd's address as next hop (not FRR's), in its Adj-RIB-In and in the kernel.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn frr_reflects_between_two_reefd_clients() {
    require_root();
    let mut lan = Lan::new("rrlan").unwrap();
    let frr_ns = Netns::new("rrfrr").unwrap();
    let a_ns = Netns::new("rra").unwrap();
    let b_ns = Netns::new("rrb").unwrap();
    let frr_end = lan.attach(&frr_ns).unwrap();
    let a_end = lan.attach(&a_ns).unwrap();
    let b_end = lan.attach(&b_ns).unwrap();
    let (frr_ip, a_ip, b_ip): (IpAddr, IpAddr, IpAddr) =
        (frr_end.v4.into(), a_end.v4.into(), b_end.v4.into());
    let (a_prefix, b_prefix) = (net("10.65.1.0/26"), net("10.65.2.0/26"));

    let frr = Frr::start_with(
        frr_ns,
        BgpConfig::new(REEF_AS, &frr_end)
            .neighbor(Neighbor::new(a_ip, REEF_AS))
            .neighbor(Neighbor::new(b_ip, REEF_AS)),
        FrrOptions {
            ipv4: format!(
                "  neighbor {a_ip} route-reflector-client\n  neighbor {b_ip} route-reflector-client"
            ),
            ..FrrOptions::default()
        },
    )
    .unwrap();
    let a = ok(
        Reefd::start_yaml(a_ns, &reef_client_yaml(a_ip, "10.65.1.0/26", frr_ip)),
        &[&frr],
        &[],
    );
    let b = ok(
        Reefd::start_yaml(b_ns, &reef_client_yaml(b_ip, "10.65.2.0/26", frr_ip)),
        &[&frr, &a],
        &[],
    );
    let all: [&dyn BgpDaemon; 3] = [&frr, &a, &b];
    ok(a.wait_established(frr_ip, WAIT), &all, &[]);
    ok(b.wait_established(frr_ip, WAIT), &all, &[]);

    for (reef, other_prefix, other_ip) in [(&a, b_prefix, b_ip), (&b, a_prefix, a_ip)] {
        // The reflected route in reefd's Adj-RIB-In from FRR carries the originator's next hop.
        let mut last = None;
        let learned = reef_lab::wait_until(WAIT, reef_tests::routing::POLL, || {
            last = reef_route(reef, frr_ip, other_prefix);
            last.clone()
        });
        let route = learned.unwrap_or_else(|| {
            fail(
                &format!("reefd never learned {other_prefix} from the reflector; last {last:?}"),
                &all,
                &[reef.netns()],
            )
        });
        let next_hop = route.get("nextHop").and_then(Value::as_str).unwrap_or("");
        if next_hop != other_ip.to_string() {
            fail(
                &format!(
                    "reflected {other_prefix} has next hop {next_hop:?}, expected the originator \
                     {other_ip} (FRR is {frr_ip}): {route}"
                ),
                &all,
                &[reef.netns()],
            );
        }
        // And reefd installs it in the kernel via the originator.
        if let Err(e) = wait_kernel_route(reef.netns(), other_prefix, WAIT, via(&[other_ip])) {
            fail(
                &format!("{e}\nreefd rib: {}", reef_rib_text(reef)),
                &all,
                &[reef.netns()],
            );
        }
    }
}

/// reefd reflecting (cluster id [`CLUSTER_ID`]) for an FRR and a BIRD client on one LAN, each client
/// originating its prefix. Daemons are declared before the LAN so that they stop first.
struct FrrAndBirdClients {
    frr: Frr,
    bird: Bird,
    reef: Reefd,
    reef_ip: IpAddr,
    frr_ip: IpAddr,
    bird_ip: IpAddr,
    frr_prefix: IpNet,
    bird_prefix: IpNet,
    _lan: Lan,
}

impl FrrAndBirdClients {
    /// `frr_peer`: extra reefd peer settings for the FRR client.
    fn start(reef_extra: &str, frr_peer: &[&str]) -> FrrAndBirdClients {
        let mut lan = Lan::new("rrlan").unwrap();
        let reef_ns = Netns::new("rrreef").unwrap();
        let frr_ns = Netns::new("rrfrr").unwrap();
        let bird_ns = Netns::new("rrbird").unwrap();
        let reef_end = lan.attach(&reef_ns).unwrap();
        let frr_end = lan.attach(&frr_ns).unwrap();
        let bird_end = lan.attach(&bird_ns).unwrap();
        let (reef_ip, frr_ip, bird_ip): (IpAddr, IpAddr, IpAddr) =
            (reef_end.v4.into(), frr_end.v4.into(), bird_end.v4.into());
        let (frr_prefix, bird_prefix) = (net("10.66.1.0/24"), net("10.67.1.0/24"));
        let frr = Frr::start(
            frr_ns,
            BgpConfig::new(REEF_AS, &frr_end)
                .neighbor(Neighbor::new(reef_ip, REEF_AS))
                .originate(frr_prefix),
        )
        .unwrap();
        let bird = ok(
            Bird::start(
                bird_ns,
                BgpConfig::new(REEF_AS, &bird_end)
                    .neighbor(Neighbor::new(reef_ip, REEF_AS))
                    .originate(bird_prefix),
            ),
            &[&frr],
            &[],
        );
        let mut frr_settings = vec!["routeReflectorClient: true"];
        frr_settings.extend_from_slice(frr_peer);
        let yaml = format!(
            "routerId: {reef_ip}\nasNumber: {REEF_AS}\nrouteReflectorClusterId: {CLUSTER_ID}\n\
             {reef_extra}peers:\n{}{}",
            peer_yaml(frr_ip, REEF_AS, 9, 3, &frr_settings),
            peer_yaml(bird_ip, REEF_AS, 9, 3, &["routeReflectorClient: true"]),
        );
        let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr, &bird], &[]);
        let lab = FrrAndBirdClients {
            frr,
            bird,
            reef,
            reef_ip,
            frr_ip,
            bird_ip,
            frr_prefix,
            bird_prefix,
            _lan: lan,
        };
        ok(lab.frr.wait_established(reef_ip, WAIT), &lab.all(), &[]);
        ok(lab.bird.wait_established(reef_ip, WAIT), &lab.all(), &[]);
        lab
    }

    fn all(&self) -> [&dyn BgpDaemon; 3] {
        [&self.frr, &self.bird, &self.reef]
    }

    /// Waits until BIRD's `show route all for` the FRR client's prefix contains every line of `want`.
    fn wait_bird_sees_frr_prefix(&self, want: &[String], what: &str) {
        let mut last = String::new();
        let seen = reef_lab::wait_until(WAIT, reef_tests::routing::POLL, || {
            last = self
                .bird
                .birdc(&["show", "route", "all", "for", &self.frr_prefix.to_string()])
                .ok()?;
            want.iter().all(|w| last.contains(w.as_str())).then_some(())
        });
        if seen.is_none() {
            fail(
                &format!(
                    "{what}: BIRD's route for {} should show {want:?}:\n{last}",
                    self.frr_prefix
                ),
                &self.all(),
                &[],
            );
        }
    }
}

/// (b) reefd reflects (routeReflectorClusterId, both peers clients) between an FRR and a BIRD
/// client: each learns the other's prefix with the original next hop, ORIGINATOR_ID = the
/// originator's router id and CLUSTER_LIST = reefd's cluster id.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_reflects_between_frr_and_bird_clients() {
    require_root();
    let lab = FrrAndBirdClients::start("prefixes: [\"10.65.0.0/26\"]\n", &[]);
    let (bird_prefix, bird_ip) = (lab.bird_prefix, lab.bird_ip);
    // FRR's view of BIRD's prefix.
    let path = wait_frr_path(&lab.frr, bird_prefix, WAIT, |_| true).unwrap_or_else(|e| {
        fail(
            &format!("FRR never learned {bird_prefix}: {e}"),
            &lab.all(),
            &[],
        )
    });
    let originator = path.get("originatorId").and_then(Value::as_str);
    let cluster_list: Vec<&str> = path
        .pointer("/clusterList/list")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if frr_next_hop(&path) != Some(bird_ip)
        || originator != Some(bird_ip.to_string().as_str())
        || cluster_list != [CLUSTER_ID]
    {
        fail(
            &format!(
                "FRR's path for {bird_prefix} should have next hop {bird_ip}, originatorId \
                 {bird_ip}, clusterList [{CLUSTER_ID}]: {path}"
            ),
            &lab.all(),
            &[],
        );
    }
    // BIRD's view of FRR's prefix.
    let frr_ip = lab.frr_ip;
    lab.wait_bird_sees_frr_prefix(
        &[
            format!("via {frr_ip} "),
            format!("BGP.originator_id: {frr_ip}"),
            format!("BGP.cluster_list: {CLUSTER_ID}"),
        ],
        "reflected with the original next hop",
    );
}

/// (c) A reflected loop is dropped: from an ExaBGP client, a route whose CLUSTER_LIST holds
/// reefd's cluster id and one whose ORIGINATOR_ID is reefd's router id are not used (not in the
/// kernel, not reflected to the FRR client); a route with a foreign CLUSTER_LIST is, and reaches
/// FRR with reefd's cluster id prepended.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reflected_loops_are_dropped() {
    require_root();
    let mut lan = Lan::new("rrlan").unwrap();
    let reef_ns = Netns::new("rrreef").unwrap();
    let exa_ns = Netns::new("rrexa").unwrap();
    let frr_ns = Netns::new("rrfrr").unwrap();
    let reef_end = lan.attach(&reef_ns).unwrap();
    let exa_end = lan.attach(&exa_ns).unwrap();
    let frr_end = lan.attach(&frr_ns).unwrap();
    let (reef_ip, exa_ip, frr_ip): (IpAddr, IpAddr, IpAddr) =
        (reef_end.v4.into(), exa_end.v4.into(), frr_end.v4.into());
    let cluster_loop = net("10.77.1.0/24");
    let originator_loop = net("10.77.2.0/24");
    let fine = net("10.77.3.0/24");

    let exa = ExaBgp::start(
        exa_ns,
        BgpConfig::new(REEF_AS, &exa_end).neighbor(Neighbor::new(reef_ip, REEF_AS)),
    )
    .unwrap();
    let frr = ok(
        Frr::start(
            frr_ns,
            BgpConfig::new(REEF_AS, &frr_end).neighbor(Neighbor::new(reef_ip, REEF_AS)),
        ),
        &[&exa],
        &[],
    );
    let yaml = format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nrouteReflectorClusterId: {CLUSTER_ID}\n\
         fib: {{ table: 254 }}\npeers:\n{}{}",
        peer_yaml(exa_ip, REEF_AS, 9, 3, &["routeReflectorClient: true"]),
        peer_yaml(frr_ip, REEF_AS, 9, 3, &["routeReflectorClient: true"]),
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&exa, &frr], &[]);
    let all: [&dyn BgpDaemon; 3] = [&exa, &frr, &reef];
    ok(exa.wait_established(reef_ip, WAIT), &all, &[]);
    ok(frr.wait_established(reef_ip, WAIT), &all, &[]);

    for line in [
        format!(
            "announce route {cluster_loop} next-hop {exa_ip} originator-id {exa_ip} cluster-list [ {CLUSTER_ID} ]"
        ),
        format!("announce route {originator_loop} next-hop {exa_ip} originator-id {reef_ip}"),
        format!(
            "announce route {fine} next-hop {exa_ip} originator-id {exa_ip} cluster-list [ 198.51.100.99 ]"
        ),
    ] {
        ok(exa.command(&line), &all, &[]);
    }

    // The loop-free route is used (sent last, so the looped ones were processed before it).
    if let Err(e) = wait_kernel_route(reef.netns(), fine, WAIT, via(&[exa_ip])) {
        fail(
            &format!("{e}\nreefd rib: {}", reef_rib_text(&reef)),
            &all,
            &[reef.netns()],
        );
    }
    let path = wait_frr_path(&frr, fine, WAIT, |_| true)
        .unwrap_or_else(|e| fail(&format!("FRR never got {fine} reflected: {e}"), &all, &[]));
    let cluster_list: Vec<&str> = path
        .pointer("/clusterList/list")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if cluster_list != [CLUSTER_ID, "198.51.100.99"] || frr_next_hop(&path) != Some(exa_ip) {
        fail(
            &format!(
                "reflected {fine} should reach FRR with clusterList [{CLUSTER_ID}, 198.51.100.99] \
                 and next hop {exa_ip}: {path}"
            ),
            &all,
            &[],
        );
    }

    // The looped ones are not.
    for looped in [cluster_loop, originator_loop] {
        let kernel = reef
            .netns()
            .kernel_route(looped, reef_tests::routing::MAIN_TABLE);
        let at_frr = reef_tests::routing::frr_paths(&frr, looped);
        let in_rib = reef_tests::routing::reef_rib_route(&reef, looped);
        let used = !matches!(kernel, Ok(None)) || !matches!(in_rib, Ok(None));
        let reflected = !matches!(&at_frr, Ok(paths) if paths.is_empty());
        if used || reflected {
            fail(
                &format!(
                    "looped route {looped} was used: kernel {kernel:?}, Loc-RIB {in_rib:?}, FRR paths {at_frr:?}\n\
                     reefd rib: {}",
                    reef_rib_text(&reef)
                ),
                &all,
                &[reef.netns()],
            );
        }
    }
}

/// RFC 4456 §6 with reefd reflecting for one client (FRR C, 10.66.1.0/24) and two non-clients (FRR
/// N, 10.68.1.0/24, and BIRD M, 10.69.1.0/24): the client gets both non-clients' routes, each
/// non-client gets the client's route, and no non-client gets the other non-client's route.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_reflects_client_routes_to_non_clients_only_by_the_rules() {
    require_root();
    let mut lan = Lan::new("rrlan").unwrap();
    let reef_ns = Netns::new("rrreef").unwrap();
    let c_ns = Netns::new("rrc").unwrap();
    let n_ns = Netns::new("rrn").unwrap();
    let m_ns = Netns::new("rrm").unwrap();
    let reef_end = lan.attach(&reef_ns).unwrap();
    let c_end = lan.attach(&c_ns).unwrap();
    let n_end = lan.attach(&n_ns).unwrap();
    let m_end = lan.attach(&m_ns).unwrap();
    let reef_ip: IpAddr = reef_end.v4.into();
    let (c_ip, n_ip, m_ip): (IpAddr, IpAddr, IpAddr) =
        (c_end.v4.into(), n_end.v4.into(), m_end.v4.into());
    let (c_prefix, n_prefix, m_prefix) = (
        net("10.66.1.0/24"),
        net("10.68.1.0/24"),
        net("10.69.1.0/24"),
    );
    let frr_at = |ns: Netns, end, prefix| {
        Frr::start(
            ns,
            BgpConfig::new(REEF_AS, end)
                .neighbor(Neighbor::new(reef_ip, REEF_AS))
                .originate(prefix),
        )
    };
    let c = frr_at(c_ns, &c_end, c_prefix).unwrap();
    let n = ok(frr_at(n_ns, &n_end, n_prefix), &[&c], &[]);
    let m = ok(
        Bird::start(
            m_ns,
            BgpConfig::new(REEF_AS, &m_end)
                .neighbor(Neighbor::new(reef_ip, REEF_AS))
                .originate(m_prefix),
        ),
        &[&c, &n],
        &[],
    );
    let yaml = format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nrouteReflectorClusterId: {CLUSTER_ID}\npeers:\n{}{}{}",
        peer_yaml(c_ip, REEF_AS, 9, 3, &["routeReflectorClient: true"]),
        peer_yaml(n_ip, REEF_AS, 9, 3, &[]),
        peer_yaml(m_ip, REEF_AS, 9, 3, &[]),
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&c, &n, &m], &[]);
    let all: [&dyn BgpDaemon; 4] = [&c, &n, &m, &reef];
    for (daemon, name) in [(&c as &dyn BgpDaemon, "C"), (&n, "N"), (&m, "M")] {
        if let Err(e) = daemon.wait_established(reef_ip, WAIT) {
            fail(&format!("{name}: {e}"), &all, &[]);
        }
    }
    // What each must get: the client both non-clients' routes, each non-client the client's.
    let expect = [
        (&c as &dyn BgpDaemon, "client C", vec![n_prefix, m_prefix]),
        (&n, "non-client N", vec![c_prefix]),
        (&m, "non-client M", vec![c_prefix]),
    ];
    for (daemon, name, prefixes) in &expect {
        let want: std::collections::BTreeSet<_> = prefixes.iter().copied().collect();
        let mut last = std::collections::BTreeSet::new();
        let got = reef_lab::wait_until(WAIT, reef_tests::routing::POLL, || {
            last = daemon.routes_from(reef_ip).ok()?;
            want.is_subset(&last).then_some(())
        });
        if got.is_none() {
            fail(
                &format!("{name} should learn {want:?} from reefd; has {last:?}"),
                &all,
                &[],
            );
        }
    }
    // Everything has been sent (the wanted routes arrived); now the exact sets: no non-client
    // route reached the other non-client, nobody got its own route back.
    for (daemon, name, prefixes) in &expect {
        let want: std::collections::BTreeSet<_> = prefixes.iter().copied().collect();
        let have = ok(daemon.routes_from(reef_ip), &all, &[]);
        if have != want {
            fail(
                &format!("{name} should have exactly {want:?} from reefd, has {have:?}"),
                &all,
                &[],
            );
        }
    }
}

/// reefd reflecting with `nextHopMode: Self` towards the FRR client: FRR sees BIRD's prefix with
/// reefd's address as next hop; BIRD (Auto) still sees FRR's with the original next hop.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn next_hop_self_towards_one_client() {
    require_root();
    let lab = FrrAndBirdClients::start("", &["nextHopMode: Self"]);
    let (bird_prefix, reef_ip) = (lab.bird_prefix, lab.reef_ip);
    if let Err(e) = wait_frr_path(&lab.frr, bird_prefix, WAIT, |p| {
        frr_next_hop(p) == Some(reef_ip)
    }) {
        fail(
            &format!("with nextHopMode Self FRR should see {bird_prefix} via reefd {reef_ip}: {e}"),
            &lab.all(),
            &[],
        );
    }
    lab.wait_bird_sees_frr_prefix(&[format!("via {} ", lab.frr_ip)], "BIRD (nextHopMode Auto)");
}
