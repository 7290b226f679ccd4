//! Two speakers over loopback: session up, prefixes both ways with the right attributes, runtime
//! advertise/withdraw, route refresh, shutdown.

mod session_support;

use std::net::IpAddr;

use session_support::*;

#[tokio::test]
async fn ebgp_session_exchanges_and_withdraws_prefixes() {
    let (a, b) = pair(
        AS_B,
        &["10.65.0.0/26", "fd00:65::/122"],
        &["10.66.0.0/24"],
        |_, _| {},
    )
    .await;
    let status_b = wait_established(&b, A).await;
    let status_a = wait_established(&a, B).await;
    assert_eq!(status_a.peer_type, "ebgp");
    assert_eq!(status_b.hold_time, Some(9));
    assert_eq!(status_b.keepalive_time, Some(3));
    assert!(
        status_b.capabilities.contains(&"ipv6-unicast".to_string()),
        "{:?}",
        status_b.capabilities
    );
    assert_eq!(status_b.remote_router_id, Some("10.0.0.1".parse().unwrap()));

    wait_prefixes(&b, A, &["10.65.0.0/26", "fd00:65::/122"]).await;
    wait_prefixes(&a, B, &["10.66.0.0/24"]).await;
    let v4 = routes(&b, A)
        .into_iter()
        .find(|r| r.prefix.to_string() == "10.65.0.0/26")
        .unwrap();
    assert_eq!(v4.next_hop, Some(A));
    assert_eq!(v4.as_path, "64512");
    assert_eq!(v4.origin, Some("igp"));
    assert_eq!(v4.local_pref, None);
    let v6 = routes(&b, A)
        .into_iter()
        .find(|r| r.prefix.to_string() == "fd00:65::/122")
        .unwrap();
    assert_eq!(
        v6.next_hop,
        Some("::ffff:127.0.0.1".parse::<IpAddr>().unwrap()),
        "IPv4-mapped next hop"
    );

    assert!(a.advertise(net("10.65.1.0/24")));
    assert!(!a.advertise(net("10.65.1.0/24")), "already advertised");
    wait_prefixes(&b, A, &["10.65.0.0/26", "10.65.1.0/24", "fd00:65::/122"]).await;
    assert!(a.withdraw(net("10.65.0.0/26")));
    assert!(a.withdraw(net("fd00:65::/122")));
    wait_prefixes(&b, A, &["10.65.1.0/24"]).await;
    assert_eq!(status(&a, B).prefixes_advertised, 1);

    a.shutdown().await;
    // Cease/Administrative Shutdown reached B, and B dropped A's routes.
    let down = eventually(10, || {
        status(&b, A)
            .last_error
            .filter(|e| e.contains("Administrative Shutdown"))
    })
    .await;
    assert!(down.is_some(), "{:?}", status(&b, A));
    assert!(routes(&b, A).is_empty());
}

#[tokio::test]
async fn ibgp_routes_carry_local_pref_and_empty_as_path() {
    let (a, b) = pair(AS_A, &["10.65.0.0/26"], &[], |_, _| {}).await;
    wait_established(&b, A).await;
    assert_eq!(status(&b, A).peer_type, "ibgp");
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;
    let route = routes(&b, A).remove(0);
    assert_eq!(route.as_path, "");
    assert_eq!(route.local_pref, Some(100));
    assert_eq!(route.next_hop, Some(A));
    drop(a);
}

#[tokio::test]
async fn route_refresh_is_answered_with_the_adj_rib_out() {
    let (a, b) = pair(
        AS_B,
        &["10.65.0.0/26"],
        &["10.66.0.0/24", "10.66.1.0/24"],
        |_, _| {},
    )
    .await;
    wait_established(&a, B).await;
    wait_prefixes(&a, B, &["10.66.0.0/24", "10.66.1.0/24"]).await;
    // Count only after the initial advertisement is complete (End-of-RIB of both families).
    let rib = a.adj_rib_in(B).expect("peer b");
    let eor = eventually(10, || {
        Some(()).filter(|_| rib.lock().unwrap().end_of_rib().iter().count() == 2)
    })
    .await;
    assert!(eor.is_some(), "no End-of-RIB from B");
    let before = status(&a, B).updates_received;
    a.refresh(B).await.expect("refresh sent");
    // B answers with its Adj-RIB-Out again: more UPDATEs, same routes.
    let after = eventually(10, || {
        Some(status(&a, B).updates_received).filter(|n| *n > before)
    })
    .await;
    assert!(
        after.is_some(),
        "no UPDATE after ROUTE-REFRESH: {:?}",
        status(&a, B)
    );
    assert_eq!(prefixes(&a, B), ["10.66.0.0/24", "10.66.1.0/24"]);
    drop(b);
}

#[tokio::test]
async fn ipv6_session_exchanges_ipv6_routes_with_the_session_address_as_next_hop() {
    let v6: IpAddr = "::1".parse().unwrap();
    let a = speaker(
        v6,
        "10.0.0.1".parse().unwrap(),
        AS_A,
        &["fd00:65::/122", "10.65.0.0/26"],
    )
    .await;
    let b = speaker(v6, "10.0.0.2".parse().unwrap(), AS_B, &[]).await;
    let (port_a, port_b) = (
        a.listen_addr().unwrap().port(),
        b.listen_addr().unwrap().port(),
    );
    a.add_peer(peer_to(v6, port_b, AS_B, v6)).unwrap();
    b.add_peer(peer_to(v6, port_a, AS_A, v6)).unwrap();
    wait_established(&b, v6).await;
    // IPv4 prefixes need an IPv4 next hop, which an IPv6 session has only when configured.
    wait_prefixes(&b, v6, &["fd00:65::/122"]).await;
    let route = routes(&b, v6).remove(0);
    assert_eq!(route.next_hop, Some(v6));
    assert_eq!(status(&a, v6).prefixes_advertised, 1);
}
