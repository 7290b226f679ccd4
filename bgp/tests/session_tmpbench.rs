use std::net::Ipv4Addr;
use std::time::Instant;
use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net};
use reef_bgp::rib::AdjRibIn;
use reef_bgp::wire::*;

#[test]
fn tmpbench() {
    let ctx = CodecContext { four_octet_as: true, ..CodecContext::default() };
    let mut wire = BytesMut::new();
    for set in 0..1000u32 {
        let nlri: Vec<Nlri> = (set..1_000_000u32).step_by(1000)
            .map(|i| Nlri::new(IpNet::V4(Ipv4Net::new(Ipv4Addr::from((16 << 24) + (i << 8)), 24).unwrap()))).collect();
        let attributes = PathAttributes { origin: Some(Origin::Igp), as_path: Some(AsPath::from_sequence(vec![65010, 100_000 + set])), med: Some(set), ..PathAttributes::default() };
        for update in Update::announce(&attributes, NextHop::V4(Ipv4Addr::new(127,0,0,3)), &nlri, &ctx).unwrap() {
            Message::Update(update).encode(&ctx, &mut wire).unwrap();
        }
    }
    let mut wire = wire.freeze();
    let t = Instant::now();
    let mut updates = Vec::new();
    while !wire.is_empty() {
        let len = message_length(&wire, &ctx).unwrap().unwrap();
        let msg = wire.split_to(len);
        if let Message::Update(u) = decode_bytes(msg, &ctx).unwrap() { updates.push(u); }
    }
    let decoded = t.elapsed();
    let t = Instant::now();
    let mut rib = AdjRibIn::new();
    for u in &updates { rib.apply(u); }
    eprintln!("messages {} decode {:?} apply {:?} routes {}", updates.len(), decoded, t.elapsed(), rib.len());
}
