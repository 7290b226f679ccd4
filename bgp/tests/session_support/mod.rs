//! Two Reef speakers in one process on loopback addresses (127.0.0.1 and 127.0.0.2), ephemeral ports.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use reef_bgp::driver::{PeerConfig, PeerStatus, RouteView, Speaker, SpeakerConfig};
use reef_bgp::routing::RoutingConfig;

pub const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
pub const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
pub const AS_A: u32 = 64512;
pub const AS_B: u32 = 65001;

pub fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix literal")
}

/// Starts a speaker listening on `address` with a free port and no peers yet. `RUST_LOG=debug` shows
/// the sessions' logs.
pub async fn speaker(
    address: IpAddr,
    router_id: Ipv4Addr,
    local_as: u32,
    prefixes: &[&str],
) -> Speaker {
    speaker_with(
        address,
        router_id,
        local_as,
        prefixes,
        RoutingConfig::default(),
    )
    .await
}

/// [`speaker`] with routing settings (reflection, graceful restart, FIB updates).
pub async fn speaker_with(
    address: IpAddr,
    router_id: Ipv4Addr,
    local_as: u32,
    prefixes: &[&str],
    routing: RoutingConfig,
) -> Speaker {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = SpeakerConfig {
        router_id,
        local_as,
        listen: Some(SocketAddr::new(address, 0)),
        routing,
    };
    Speaker::start(
        config,
        Vec::new(),
        prefixes.iter().map(|p| net(p)).collect(),
    )
    .await
    .expect("speaker starts")
}

/// A peer config towards `other` (listening on `port`), with short timers for tests.
pub fn peer_to(other: IpAddr, port: u16, remote_as: u32, source: IpAddr) -> PeerConfig {
    let mut peer = PeerConfig::new(other, remote_as);
    peer.port = port;
    peer.source_address = Some(source);
    peer.connect_retry = Duration::from_secs(1);
    peer.idle_hold = Duration::from_millis(200);
    peer.hold_time = 9;
    peer
}

/// Speakers A (AS 64512) and B (`as_b`) peered with each other; `tweak` adjusts both peer configs.
pub async fn pair(
    as_b: u32,
    prefixes_a: &[&str],
    prefixes_b: &[&str],
    tweak: impl Fn(&mut PeerConfig, bool),
) -> (Speaker, Speaker) {
    let a = speaker(A, Ipv4Addr::new(10, 0, 0, 1), AS_A, prefixes_a).await;
    let b = speaker(B, Ipv4Addr::new(10, 0, 0, 2), as_b, prefixes_b).await;
    let port_a = a.listen_addr().expect("a listens").port();
    let port_b = b.listen_addr().expect("b listens").port();
    let mut a_to_b = peer_to(B, port_b, as_b, A);
    tweak(&mut a_to_b, true);
    let mut b_to_a = peer_to(A, port_a, AS_A, B);
    tweak(&mut b_to_a, false);
    a.add_peer(a_to_b).expect("add peer b");
    b.add_peer(b_to_a).expect("add peer a");
    (a, b)
}

/// Polls `check` every 50 ms, at most `seconds` long; returns its last value.
pub async fn eventually<T>(seconds: u64, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..seconds * 20 {
        if let Some(value) = check() {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

pub fn status(speaker: &Speaker, peer: IpAddr) -> PeerStatus {
    speaker.peer(peer).expect("peer configured")
}

pub async fn wait_established(speaker: &Speaker, peer: IpAddr) -> PeerStatus {
    match eventually(15, || {
        speaker.peer(peer).filter(|s| s.state == "Established")
    })
    .await
    {
        Some(status) => status,
        None => panic!(
            "session to {peer} not Established: {:?}",
            speaker.peer(peer)
        ),
    }
}

pub fn routes(speaker: &Speaker, peer: IpAddr) -> Vec<RouteView> {
    speaker.routes(Some(peer)).expect("peer configured")
}

pub fn prefixes(speaker: &Speaker, peer: IpAddr) -> Vec<String> {
    routes(speaker, peer)
        .iter()
        .map(|r| r.prefix.to_string())
        .collect()
}

/// Waits until the routes from `peer` are exactly `expected` (sorted).
pub async fn wait_prefixes(speaker: &Speaker, peer: IpAddr, expected: &[&str]) {
    let got = eventually(10, || {
        let got = prefixes(speaker, peer);
        (got == expected).then_some(got)
    })
    .await;
    assert!(
        got.is_some(),
        "routes from {peer}: {:?}, expected {expected:?}",
        prefixes(speaker, peer)
    );
}
