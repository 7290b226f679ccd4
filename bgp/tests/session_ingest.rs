//! Full-table ingest through a real session: an injector on 127.0.0.3 opens a session to a speaker and
//! pushes N IPv4 prefixes (default 100k; `REEF_INGEST_PREFIXES=1000000` for the benchmark size) with
//! 1000 distinct attribute sets (`REEF_INGEST_ATTRIBUTE_SETS`), then End-of-RIB. Asserts the
//! Adj-RIB-In content; prints the time and
//! memory (never asserted: timings belong to benchmarks).

mod session_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net};
use reef_bgp::driver::{PeerConfig, Speaker, SpeakerConfig};
use reef_bgp::wire::{
    AfiSafi, AsPath, Capability, CodecContext, Message, NextHop, Nlri, Open, Origin,
    PathAttributes, Update, decode, message_length,
};
use session_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const INJECTOR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const INJECTOR_AS: u32 = 65010;

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// All UPDATEs of the table: prefix i is 16.0.0.0/24 + i, attribute set i % sets (MED and AS path).
fn table(prefixes: u32, sets: u32, ctx: &CodecContext) -> BytesMut {
    let mut wire = BytesMut::new();
    for set in 0..sets {
        let nlri: Vec<Nlri> = (set..prefixes)
            .step_by(sets as usize)
            .map(|i| {
                Nlri::new(IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from((16 << 24) + (i << 8)), 24).unwrap(),
                ))
            })
            .collect();
        let attributes = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(vec![INJECTOR_AS, 100_000 + set])),
            med: Some(set),
            ..PathAttributes::default()
        };
        for update in Update::announce(&attributes, NextHop::V4(INJECTOR), &nlri, ctx).unwrap() {
            Message::Update(update).encode(ctx, &mut wire).unwrap();
        }
    }
    Message::Update(Update::end_of_rib_marker(AfiSafi::IPV4_UNICAST))
        .encode(ctx, &mut wire)
        .unwrap();
    wire
}

// Multi-threaded like reefd: reader and session task run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_table_from_one_peer_lands_in_the_adj_rib_in() {
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let prefixes = env("REEF_INGEST_PREFIXES", 100_000);
    let sets = env("REEF_INGEST_ATTRIBUTE_SETS", 1000);
    let config = SpeakerConfig {
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        local_as: 64512,
        listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
        routing: reef_bgp::routing::RoutingConfig::default(),
    };
    let mut peer = PeerConfig::new(IpAddr::V4(INJECTOR), INJECTOR_AS);
    peer.passive = true;
    peer.hold_time = 90;
    let speaker = Speaker::start(config, vec![peer], Vec::new())
        .await
        .unwrap();
    let port = speaker.listen_addr().unwrap().port();

    // The injector: OPEN without extended messages (4096-octet UPDATEs, as BIRD's benchmark peer sends).
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(INJECTOR), 0))
        .unwrap();
    let mut stream = socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
        .unwrap();
    let caps = vec![
        Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
        Capability::FourOctetAs(INJECTOR_AS),
    ];
    let ours = Open::new(INJECTOR_AS, 90, INJECTOR, caps);
    let mut out = BytesMut::new();
    Message::Open(ours.clone())
        .encode(&CodecContext::default(), &mut out)
        .unwrap();
    Message::Keepalive
        .encode(&CodecContext::default(), &mut out)
        .unwrap();
    stream.write_all(&out).await.unwrap();
    // Read the speaker's OPEN to negotiate the codec context.
    let mut buf = BytesMut::with_capacity(8192);
    let theirs = loop {
        assert!(
            stream.read_buf(&mut buf).await.unwrap() > 0,
            "speaker closed the connection"
        );
        if let Some(len) = message_length(&buf, &CodecContext::default()).unwrap() {
            match decode(&buf[..len], &CodecContext::default()).unwrap() {
                Message::Open(open) => break open,
                other => panic!("expected OPEN, got {other:?}"),
            }
        }
    };
    let ctx = CodecContext::negotiate(&ours, &theirs);
    let wire = table(prefixes, sets, &ctx);
    let rib = speaker.adj_rib_in(IpAddr::V4(INJECTOR)).unwrap();
    let established = eventually(10, || {
        Some(()).filter(|_| speaker.peers()[0].state == "Established")
    })
    .await;
    assert!(established.is_some(), "{:?}", speaker.peers());

    let rss_before = vm_kib("VmRSS:");
    let started = Instant::now();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        write_half.write_all(&wire).await.unwrap();
        write_half
    });
    // Drain what the speaker sends (keepalives, its End-of-RIB) so it never blocks.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 65536];
        while matches!(read_half.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let loaded = eventually(120, || {
        let rib = rib.lock().unwrap();
        Some(rib.len()).filter(|_| rib.end_of_rib().contains(AfiSafi::IPV4_UNICAST))
    })
    .await;
    let elapsed = started.elapsed();
    let selected = eventually(120, || {
        Some(()).filter(|_| speaker.loc_rib_len() == prefixes as usize)
    })
    .await;
    let selected_after = started.elapsed();
    eprintln!(
        "ingest: {prefixes} prefixes, {sets} attribute sets in {elapsed:?} (Adj-RIB-In), \
         {selected_after:?} (Loc-RIB); RSS {} -> {} KiB (peak {} KiB)",
        rss_before,
        vm_kib("VmRSS:"),
        vm_kib("VmHWM:")
    );
    assert!(selected.is_some(), "every prefix selected in the Loc-RIB");
    assert_eq!(
        loaded,
        Some(prefixes as usize),
        "End-of-RIB with every prefix"
    );
    {
        let rib = rib.lock().unwrap();
        assert_eq!(rib.attribute_sets(), sets.min(prefixes) as usize);
        let last = prefixes - 1;
        let prefix = IpNet::V4(Ipv4Net::new(Ipv4Addr::from((16 << 24) + (last << 8)), 24).unwrap());
        let route = rib.get(prefix).expect("last prefix");
        assert_eq!(route.attrs.med, Some(last % sets));
        assert_eq!(route.next_hop(), Some(IpAddr::V4(INJECTOR)));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    speaker.shutdown().await;
    drain.abort();
}
