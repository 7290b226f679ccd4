//! Session failures over loopback: hold timer expiry, collisions, TCP MD5.

mod session_support;

use std::time::Duration;

use session_support::*;

#[tokio::test]
async fn hold_timer_expires_when_the_peer_stops_sending_keepalives() {
    let (a, b) = pair(AS_B, &["10.65.0.0/26"], &[], |peer, _| {
        peer.hold_time = 3;
        // Keep the sessions from coming straight back so the down state can be observed.
        peer.idle_hold = Duration::from_secs(30);
    })
    .await;
    wait_established(&b, A).await;
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;
    assert_eq!(status(&b, A).hold_time, Some(3));
    a.suppress_keepalives(B, true).expect("peer b");
    let down = eventually(10, || {
        status(&b, A)
            .last_error
            .filter(|e| e.contains("Hold Timer Expired"))
    })
    .await;
    assert_eq!(
        down.as_deref(),
        Some("sent NOTIFICATION: Hold Timer Expired"),
        "{:?}",
        status(&b, A)
    );
    assert!(
        routes(&b, A).is_empty(),
        "routes of the expired session are removed"
    );
    let received = eventually(5, || {
        status(&a, B)
            .last_error
            .filter(|e| e.contains("Hold Timer Expired"))
    })
    .await;
    assert_eq!(
        received.as_deref(),
        Some("received NOTIFICATION: Hold Timer Expired")
    );
}

#[tokio::test]
async fn simultaneous_active_opens_end_in_one_session() {
    // Both sides connect at once, repeatedly until one collision has happened; every round must end
    // with exactly one Established session on each side, never a flap.
    let (a, b) = pair(AS_B, &["10.65.0.0/26"], &["10.66.0.0/24"], |_, _| {}).await;
    wait_established(&a, B).await;
    wait_established(&b, A).await;
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;
    wait_prefixes(&a, B, &["10.66.0.0/24"]).await;
    // Stay up: a lost collision must not take the surviving session down afterwards.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (speaker, peer) in [(&a, B), (&b, A)] {
        let status = status(speaker, peer);
        assert_eq!(status.state, "Established", "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .is_none_or(|e| e.contains("Connection Collision")),
            "unexpected error: {status:?}"
        );
    }
}

#[tokio::test]
async fn matching_md5_keys_bring_the_session_up() {
    let (a, b) = pair(AS_B, &["10.65.0.0/26"], &[], |peer, _| {
        peer.password = Some("s3cret-key".into())
    })
    .await;
    wait_established(&b, A).await;
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;
    assert!(status(&a, B).md5);
}

#[tokio::test]
async fn wrong_md5_key_never_comes_up_and_says_why() {
    let (a, b) = pair(AS_B, &[], &[], |peer, is_a| {
        peer.password = Some(if is_a { "key-one" } else { "key-two" }.into());
        peer.passive = !is_a;
    })
    .await;
    // A connects every second; the SYNs are dropped by B's kernel (bad signature).
    let hint = eventually(15, || {
        Some(status(&a, B).info).filter(|info| info.contains("MD5"))
    })
    .await;
    assert!(hint.is_some(), "no MD5 hint: {:?}", status(&a, B));
    assert!(hint.unwrap().contains("no response to SYN/OPEN"));
    assert_ne!(status(&a, B).state, "Established");
    assert_ne!(status(&b, A).state, "Established");
    assert!(
        status(&b, A).info.contains("passive"),
        "{:?}",
        status(&b, A)
    );
}

#[tokio::test]
async fn gtsm_on_both_sides_comes_up() {
    let (a, b) = pair(AS_B, &["10.65.0.0/26"], &[], |peer, _| {
        peer.ttl_security = Some(1)
    })
    .await;
    wait_established(&b, A).await;
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;
    assert_eq!(status(&a, B).ttl_security, Some(1));
}

#[tokio::test]
async fn gtsm_drops_a_peer_that_sends_ttl_1() {
    // A requires TTL 255 (1 hop); B is single-hop eBGP without GTSM and answers with TTL 1.
    let (a, b) = pair(AS_B, &[], &[], |peer, is_a| {
        peer.ttl_security = is_a.then_some(1);
        peer.passive = !is_a;
    })
    .await;
    // A's connect succeeds (the SYN-ACK leaves B's listener with TTL 255), but B's OPEN arrives with
    // TTL 1 and is dropped: A waits in OpenSent and never reaches Established.
    let waiting = eventually(10, || {
        Some(status(&a, B).info).filter(|info| info.contains("waiting for the peer's OPEN"))
    })
    .await;
    assert!(waiting.is_some(), "{:?}", status(&a, B));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(&a, B).state, "OpenSent");
    assert_ne!(status(&b, A).state, "Established");
}
