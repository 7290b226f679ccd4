//! Live reconfiguration of a running speaker over loopback (no root): peers added, changed and removed
//! with `Speaker::set_peers`, and the originated prefixes replaced with `Speaker::set_prefixes`. A
//! routing-only change keeps the session; a session setting resets only that session.

mod session_support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use reef_bgp::driver::{PeerChange, PeerConfig, Speaker, SpeakerError};
use reef_bgp::wire::Community;
use session_support::*;

const C: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const AS_C: u32 = 65002;

/// The `since` of the session to `peer` as `speaker` sees it, once Established.
async fn established_since(speaker: &Speaker, peer: IpAddr) -> String {
    wait_established(speaker, peer).await.since
}

/// A's peer configs towards B and C.
fn a_peers(b: &Speaker, c: &Speaker) -> (PeerConfig, PeerConfig) {
    (
        peer_to(B, b.listen_addr().unwrap().port(), AS_B, A),
        peer_to(C, c.listen_addr().unwrap().port(), AS_C, A),
    )
}

fn changes(
    results: Vec<(IpAddr, Result<PeerChange, SpeakerError>)>,
) -> Vec<(IpAddr, Result<PeerChange, String>)> {
    results
        .into_iter()
        .map(|(a, r)| (a, r.map_err(|e| e.to_string())))
        .collect()
}

#[tokio::test]
async fn peers_change_live_and_untouched_sessions_stay_up() {
    let a = speaker(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, &["10.65.0.0/26"]).await;
    let b = speaker(B, Ipv4Addr::new(10, 0, 0, 2), AS_B, &[]).await;
    let c = speaker(C, Ipv4Addr::new(10, 0, 0, 3), AS_C, &[]).await;
    b.add_peer(peer_to(A, a.listen_addr().unwrap().port(), AS_A, B))
        .unwrap();
    c.add_peer(peer_to(A, a.listen_addr().unwrap().port(), AS_A, C))
        .unwrap();
    let (to_b, to_c) = a_peers(&b, &c);

    // Both peers added by one set_peers.
    let added = changes(a.set_peers(vec![to_b.clone(), to_c.clone()]).await);
    assert_eq!(
        added,
        [(B, Ok(PeerChange::Added)), (C, Ok(PeerChange::Added))]
    );
    let b_since = established_since(&b, A).await;
    let c_since = established_since(&c, A).await;
    wait_prefixes(&b, A, &["10.65.0.0/26"]).await;

    // The same set again changes nothing.
    assert!(
        a.set_peers(vec![to_b.clone(), to_c.clone()])
            .await
            .is_empty()
    );

    // Routing only (a community on what B is sent): re-evaluated, no reset of either session.
    let mut to_b_community = to_b.clone();
    to_b_community
        .routing
        .communities
        .push(Community::new(64512, 100));
    let updated = changes(
        a.set_peers(vec![to_b_community.clone(), to_c.clone()])
            .await,
    );
    assert_eq!(updated, [(B, Ok(PeerChange::RoutingUpdated))]);
    let tagged = eventually(10, || {
        routes(&b, A)
            .iter()
            .any(|r| r.communities == ["64512:100"])
            .then_some(())
    })
    .await;
    assert!(tagged.is_some(), "B got {:?}", routes(&b, A));
    assert_eq!(status(&b, A).since, b_since, "B's session was reset");
    assert_eq!(status(&c, A).since, c_since, "C's session was reset");

    // A session setting of C (hold time): only C's session starts again.
    let mut to_c_hold = to_c.clone();
    to_c_hold.hold_time = 30;
    let reset = changes(
        a.set_peers(vec![to_b_community.clone(), to_c_hold.clone()])
            .await,
    );
    assert_eq!(reset, [(C, Ok(PeerChange::SessionReset))]);
    let reset_seen = eventually(15, || {
        let now = status(&c, A);
        (now.state == "Established" && now.since != c_since).then_some(now)
    })
    .await;
    assert!(
        reset_seen.is_some(),
        "C's session did not restart: {:?}",
        status(&c, A)
    );
    assert_eq!(a.peer_config(C).map(|p| p.hold_time), Some(30));
    assert_eq!(status(&b, A).since, b_since, "B's session was reset");

    // C removed: its session ends; B's stays.
    let removed = changes(a.set_peers(vec![to_b_community.clone()]).await);
    assert_eq!(removed, [(C, Ok(PeerChange::Removed))]);
    assert!(a.peer(C).is_none());
    let down = eventually(10, || (status(&c, A).state != "Established").then_some(())).await;
    assert!(down.is_some(), "C still Established with A");
    assert_eq!(status(&b, A).since, b_since, "B's session was reset");

    // Prefixes replaced: one withdrawn, one advertised, B's session kept.
    let wanted = BTreeSet::from([net("10.65.0.64/26")]);
    assert_eq!(a.set_prefixes(&wanted), (1, 1));
    assert_eq!(a.set_prefixes(&wanted), (0, 0));
    wait_prefixes(&b, A, &["10.65.0.64/26"]).await;
    assert_eq!(status(&b, A).since, b_since, "B's session was reset");
}

#[tokio::test]
async fn bad_peer_configs_are_refused_with_a_reason_and_the_rest_applies() {
    let a = speaker(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, &[]).await;
    let b = speaker(B, Ipv4Addr::new(10, 0, 0, 2), AS_B, &[]).await;
    let c = speaker(C, Ipv4Addr::new(10, 0, 0, 3), AS_C, &[]).await;
    let (to_b, to_c) = a_peers(&b, &c);

    let mut bad_hold = to_c.clone();
    bad_hold.hold_time = 2;
    let results = changes(
        a.set_peers(vec![to_b.clone(), bad_hold, to_b.clone()])
            .await,
    );
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results.contains(&(B, Ok(PeerChange::Added))), "{results:?}");
    assert!(
        results
            .iter()
            .any(|(addr, r)| *addr == B
                && r.as_ref().is_err_and(|e| e.contains("already configured"))),
        "duplicate not refused: {results:?}"
    );
    assert!(
        results
            .iter()
            .any(|(addr, r)| *addr == C && r.as_ref().is_err_and(|e| e.contains("holdTime"))),
        "bad hold time not refused: {results:?}"
    );
    assert!(a.peer(C).is_none());

    // update_peer names unknown peers and keeps a running peer when the new settings are invalid.
    assert!(matches!(
        a.update_peer(to_c.clone()).await,
        Err(SpeakerError::UnknownPeer(C))
    ));
    let mut long_key = to_b.clone();
    long_key.password = Some("k".repeat(81));
    assert!(matches!(
        a.update_peer(long_key).await,
        Err(SpeakerError::InvalidConfig(_))
    ));
    assert_eq!(a.peer_config(B), Some(to_b));
}
