//! Speakers over loopback with the routing core: route reflection, graceful restart in both roles,
//! the FIB update stream, maximum prefixes and a reset (BFD down) — real TCP sessions, no root needed.

mod session_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reef_bgp::driver::Speaker;
use reef_bgp::policy::MaxPrefix;
use reef_bgp::routing::{FibRoute, FibUpdate, GracefulRestartConfig, RoutingConfig};
use session_support::*;
use tokio::sync::mpsc::UnboundedReceiver;

const C: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn gr(restarting: bool) -> RoutingConfig {
    RoutingConfig {
        graceful_restart: Some(GracefulRestartConfig {
            restart_time: 30,
            stale_routes_time: Duration::from_secs(30),
            restarting,
        }),
        fib: true,
        fib_sync_deferral: restarting.then_some(Duration::from_secs(30)),
        ..RoutingConfig::default()
    }
}

/// Peers `a` (at `a_addr`) and `b` (at `b_addr`) with each other.
fn link(
    a: &Speaker,
    a_addr: IpAddr,
    b: &Speaker,
    b_addr: IpAddr,
    tweak: impl Fn(&mut reef_bgp::driver::PeerConfig),
) {
    let as_a = a.config().local_as;
    let as_b = b.config().local_as;
    let mut to_b = peer_to(b_addr, b.listen_addr().unwrap().port(), as_b, a_addr);
    tweak(&mut to_b);
    let mut to_a = peer_to(a_addr, a.listen_addr().unwrap().port(), as_a, b_addr);
    tweak(&mut to_a);
    a.add_peer(to_b).unwrap();
    b.add_peer(to_a).unwrap();
}

/// Collects FIB updates until `done` holds for the routes seen so far (bounded).
async fn fib_until(
    updates: &mut UnboundedReceiver<FibUpdate>,
    seen: &mut Vec<FibUpdate>,
    done: impl Fn(&[FibUpdate]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(seen) {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Some(update)) => seen.push(update),
            _ => return false,
        }
    }
    true
}

fn route_seen(seen: &[FibUpdate], prefix: &str, hops: &[IpAddr]) -> bool {
    seen.iter().any(|u| {
        matches!(u, FibUpdate::Routes(routes) if routes.contains(&FibRoute { prefix: net(prefix), next_hops: hops.to_vec() }))
    })
}

#[tokio::test]
async fn reflector_passes_client_routes_with_originator_cluster_list_and_next_hop() {
    let cluster = Ipv4Addr::new(10, 0, 0, 100);
    let reflector = speaker_with(
        A,
        Ipv4Addr::new(10, 0, 0, 1),
        AS_A,
        &[],
        RoutingConfig {
            cluster_id: Some(cluster),
            ..RoutingConfig::default()
        },
    )
    .await;
    let client_b = speaker(B, Ipv4Addr::new(10, 0, 0, 2), AS_A, &["10.2.0.0/24"]).await;
    let client_c = speaker(C, Ipv4Addr::new(10, 0, 0, 3), AS_A, &["10.3.0.0/24"]).await;
    for (client, address) in [(&client_b, B), (&client_c, C)] {
        let as_a = AS_A;
        let mut to_client = peer_to(address, client.listen_addr().unwrap().port(), as_a, A);
        to_client.routing.route_reflector_client = true;
        reflector.add_peer(to_client).unwrap();
        client
            .add_peer(peer_to(
                A,
                reflector.listen_addr().unwrap().port(),
                as_a,
                address,
            ))
            .unwrap();
    }
    wait_prefixes(&client_c, A, &["10.2.0.0/24"]).await;
    wait_prefixes(&client_b, A, &["10.3.0.0/24"]).await;
    let rib = client_c.adj_rib_in(A).unwrap();
    let route = rib.lock().unwrap().get(net("10.2.0.0/24")).unwrap();
    assert_eq!(
        route.next_hop(),
        Some(B),
        "the reflector keeps the original next hop"
    );
    assert_eq!(route.attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(route.attrs.cluster_list, vec![cluster]);
    // The client's own route does not come back to it (ORIGINATOR_ID), and the Loc-RIB explains.
    assert_eq!(prefixes(&client_b, A), vec!["10.3.0.0/24"]);
    let explained = reflector.explain(net("10.2.0.0/24"));
    assert_eq!(explained.len(), 1);
    assert_eq!(explained[0].verdict, "best");
    assert_eq!(reflector.peer(C).unwrap().prefixes_advertised, 1);
}

#[tokio::test]
async fn graceful_restart_keeps_routes_through_a_peer_restart_then_sweeps_stale_ones() {
    let a = speaker_with(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, &[], gr(false)).await;
    let mut fib = a.take_fib_updates().expect("fib updates enabled");
    let b = speaker_with(
        B,
        Ipv4Addr::new(10, 0, 0, 2),
        AS_B,
        &["10.2.0.0/24", "10.22.0.0/24"],
        gr(false),
    )
    .await;
    link(&a, A, &b, B, |_| {});
    let mut seen = Vec::new();
    assert!(
        fib_until(&mut fib, &mut seen, |s| route_seen(s, "10.22.0.0/24", &[B])
            && route_seen(s, "10.2.0.0/24", &[B])
            && s.contains(&FibUpdate::Synced))
        .await,
        "routes of B reach the FIB: {seen:?}"
    );
    // B restarts: its sessions close without a NOTIFICATION.
    b.shutdown_for_restart().await;
    drop(b);
    let stale = eventually(10, || (a.peer(B)?.stale_routes == 2).then_some(())).await;
    assert!(
        stale.is_some(),
        "A keeps B's routes as stale: {:?}",
        a.peer(B)
    );
    assert!(a.explain(net("10.2.0.0/24"))[0].stale);
    // B is back, restarted, and no longer originates 10.22.0.0/24.
    let b = speaker_with(
        B,
        Ipv4Addr::new(10, 0, 0, 2),
        AS_B,
        &["10.2.0.0/24"],
        gr(true),
    )
    .await;
    b.add_peer(peer_to(A, a.listen_addr().unwrap().port(), AS_A, B))
        .unwrap();
    seen.clear();
    assert!(
        fib_until(&mut fib, &mut seen, |s| route_seen(s, "10.22.0.0/24", &[])).await,
        "the route B did not send again leaves after its End-of-RIB: {seen:?}"
    );
    assert!(
        !route_seen(&seen, "10.2.0.0/24", &[]),
        "the route B sent again never left the FIB: {seen:?}"
    );
    let fresh = eventually(5, || {
        let paths = a.explain(net("10.2.0.0/24"));
        (paths.len() == 1 && !paths[0].stale).then_some(())
    })
    .await;
    assert!(fresh.is_some(), "{:?}", a.explain(net("10.2.0.0/24")));
    assert_eq!(a.peer(B).unwrap().stale_routes, 0);
}

#[tokio::test]
async fn reset_withdraws_at_once_even_with_graceful_restart() {
    let a = speaker_with(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, &[], gr(false)).await;
    let b = speaker_with(
        B,
        Ipv4Addr::new(10, 0, 0, 2),
        AS_B,
        &["10.2.0.0/24"],
        gr(false),
    )
    .await;
    link(&a, A, &b, B, |_| {});
    wait_prefixes(&a, B, &["10.2.0.0/24"]).await;
    let before = status(&a, B).since;
    a.reset_peer(B, "BFD down").unwrap();
    let gone = eventually(5, || a.loc_rib().is_empty().then_some(())).await;
    assert!(
        gone.is_some(),
        "a BFD reset is not a graceful restart: {:?}",
        a.loc_rib()
    );
    let back = eventually(15, || {
        let s = a.peer(B)?;
        (s.state == "Established" && s.since != before).then_some(())
    })
    .await;
    assert!(back.is_some(), "the session comes back: {:?}", a.peer(B));
    wait_prefixes(&a, B, &["10.2.0.0/24"]).await;
}

#[tokio::test]
async fn maximum_prefixes_exceeded_sends_cease_and_holds_the_session_down() {
    let a = speaker(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, &[]).await;
    let b = speaker(
        B,
        Ipv4Addr::new(10, 0, 0, 2),
        AS_B,
        &["10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"],
    )
    .await;
    link(&a, A, &b, B, |peer| {
        peer.routing.max_prefix = Some(MaxPrefix {
            limit: 2,
            warn_threshold_pct: 50,
            restart_after: Some(Duration::from_secs(60)),
        })
    });
    let error = eventually(15, || {
        b.peer(A)?
            .last_error
            .filter(|e| e.contains("Maximum Number of Prefixes"))
    })
    .await;
    assert!(error.is_some(), "B sees the Cease: {:?}", b.peer(A));
    assert!(a.loc_rib().is_empty());
    // Held down for the restart time: still not Established a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(status(&a, B).state, "Established");
}
