#![no_main]
//! UPDATE bodies into an Adj-RIB-In with the session import check (RFC 4271 §6.3 next hops, eBGP first
//! AS, negotiated families) and the ignored list: never panics, the list stays bounded, and a prefix is
//! never both in the table and listed as ignored. The first byte selects the codec context.

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reef_bgp::rib::{AdjRibIn, IGNORED_LIST_LIMIT, ImportCheck};
use reef_bgp::wire::{AfiSafi, Message, decode_bytes};
use reef_bgp_fuzz::{context, with_header};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ctx = context(selector);
    let mut rib = AdjRibIn::with_local_as(64512);
    rib.set_context(ctx);
    rib.set_import_check(ImportCheck {
        peer: Some("198.51.100.2".parse().unwrap()),
        own: vec!["198.51.100.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        shared_subnets: (!ctx.ibgp).then(|| vec!["198.51.100.0/24".parse().unwrap()]),
        families: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
        ebgp_peer_as: (!ctx.ibgp).then_some(65001),
    });
    // Several UPDATEs: the input split at each 0xfe octet.
    for body in rest.split(|&b| b == 0xfe) {
        let Some(msg) = with_header(2, body) else {
            continue;
        };
        if let Ok(Message::Update(update)) = decode_bytes(Bytes::from(msg), &ctx) {
            rib.apply(&update);
        }
    }
    assert!(rib.ignored().count() <= IGNORED_LIST_LIMIT);
    for ignored in rib.ignored() {
        if ignored.path_id.is_none() {
            assert!(rib.get(ignored.prefix).is_none(), "{ignored:?} is in the table");
        }
    }
});
