//! Byte fixtures of every message type in both directions, every decode error with its exact
//! NOTIFICATION, RFC 7606 outcomes, AS4 merge and the splitting helpers.
//!
//! Fixtures are written field by field from the RFC layouts (RFC 4271 §4, RFC 4760 §3-4, RFC 5492 §4,
//! RFC 7313 §3, RFC 9003 §2) and checked by hand.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use reef_bgp::wire::*;

/// Hex with any whitespace in between.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

fn msg(len_type_body: &str) -> Vec<u8> {
    hex(&format!("{MARKER}{len_type_body}"))
}

/// An UPDATE with an empty Withdrawn Routes field, the given attributes and NLRI; lengths computed.
fn upd(attrs: &str, nlri: &str) -> Vec<u8> {
    let (attrs, nlri) = (hex(attrs), hex(nlri));
    let mut bytes = hex(MARKER);
    bytes.extend_from_slice(
        &u16::try_from(23 + attrs.len() + nlri.len())
            .unwrap()
            .to_be_bytes(),
    );
    bytes.extend_from_slice(&[2, 0, 0]);
    bytes.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&attrs);
    bytes.extend_from_slice(&nlri);
    bytes
}

fn ctx4() -> CodecContext {
    CodecContext {
        four_octet_as: true,
        ..CodecContext::default()
    }
}

fn ibgp4() -> CodecContext {
    CodecContext {
        four_octet_as: true,
        ibgp: true,
        ..CodecContext::default()
    }
}

fn net(s: &str) -> Nlri {
    Nlri::new(s.parse::<IpNet>().unwrap())
}

/// Decodes `bytes` to `expected` and encodes `expected` back to `bytes`.
fn both_ways(bytes: &[u8], expected: &Message, ctx: &CodecContext) {
    assert_eq!(message_length(bytes, ctx).unwrap(), Some(bytes.len()));
    let mut decoded = decode(bytes, ctx).unwrap();
    if let Message::Update(update) = &mut decoded {
        update.raw_attributes = Bytes::new();
    }
    assert_eq!(&decoded, expected);
    let mut out = BytesMut::new();
    expected.encode(ctx, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encoding of {expected:?}");
}

fn update_of(message: Message) -> Update {
    match message {
        Message::Update(update) => update,
        other => panic!("not an UPDATE: {other:?}"),
    }
}

fn decode_update(bytes: &[u8], ctx: &CodecContext) -> Update {
    update_of(decode(bytes, ctx).unwrap())
}

/// The NOTIFICATION (code, subcode, data) a message produces.
fn notification_of(bytes: &[u8], ctx: &CodecContext) -> (u8, u8, Vec<u8>) {
    let error = decode(bytes, ctx).unwrap_err();
    let n = error.notification();
    (n.code.to_u8(), n.subcode.to_u8(), n.data.to_vec())
}

// ---------------------------------------------------------------------------------------------------------
// Fixtures, both directions

#[test]
fn keepalive_fixture() {
    // RFC 4271 §4.4: a KEEPALIVE is the 19-octet header only.
    both_ways(
        &msg("0013 04"),
        &Message::Keepalive,
        &CodecContext::default(),
    );
}

#[test]
fn open_fixture_with_capabilities() {
    // Version 4, My AS 65001, Hold Time 90, BGP Identifier 192.0.2.1, one Capabilities parameter (type 2,
    // length 0x26) holding: MP IPv4/unicast, MP IPv6/unicast, Route Refresh, 4-octet AS 65001, Enhanced
    // Route Refresh, Graceful Restart (R bit, 120 s, IPv4/unicast with F bit), ADD-PATH IPv4/unicast
    // both, Extended Message.
    let bytes = msg("0045 01
        04 fde9 005a c0000201 28
        02 26
           01 04 0001 00 01
           01 04 0002 00 01
           02 00
           41 04 0000fde9
           46 00
           40 06 8078 0001 01 80
           45 04 0001 01 03
           06 00");
    let open = Open::new(
        65001,
        90,
        Ipv4Addr::new(192, 0, 2, 1),
        vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
            Capability::EnhancedRouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restart_state: true,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    afi_safi: AfiSafi::IPV4_UNICAST,
                    forwarding_preserved: true,
                }],
            }),
            Capability::AddPath(vec![AddPathFamily {
                afi_safi: AfiSafi::IPV4_UNICAST,
                mode: AddPathMode::Both,
            }]),
            Capability::ExtendedMessage,
        ],
    );
    both_ways(
        &bytes,
        &Message::Open(open.clone()),
        &CodecContext::default(),
    );
    assert_eq!(open.asn(), 65001);
    let ctx = CodecContext::negotiate(&open, &open);
    assert!(ctx.four_octet_as && ctx.extended_message && ctx.ibgp);
    assert!(ctx.add_path_receive.contains(AfiSafi::IPV4_UNICAST));
    assert!(ctx.add_path_send.contains(AfiSafi::IPV4_UNICAST));
    assert_eq!(ctx.max_message_len(), 65535);
}

#[test]
fn open_fixture_four_octet_as_and_unknown_and_fqdn() {
    // My AS = AS_TRANS (0x5ba0), 4-octet AS 4200000000 (0xfa56ea00), FQDN "r1"/"lab", and an unknown
    // capability 0x80 with value 0xaa, all kept.
    let bytes = msg("0031 01
        04 5ba0 00b4 c6336401 14
        02 12
           41 04 fa56ea00
           49 07 02 7231 03 6c6162
           80 01 aa");
    let open = Open {
        version: 4,
        my_as: 23456,
        hold_time: 180,
        bgp_id: Ipv4Addr::new(198, 51, 100, 1),
        capabilities: vec![
            Capability::FourOctetAs(4_200_000_000),
            Capability::Fqdn {
                hostname: "r1".into(),
                domain: "lab".into(),
            },
            Capability::Unknown {
                code: 0x80,
                value: Bytes::from_static(&[0xaa]),
            },
        ],
    };
    both_ways(
        &bytes,
        &Message::Open(open.clone()),
        &CodecContext::default(),
    );
    assert_eq!(open.asn(), 4_200_000_000);
    assert_eq!(
        Open::new(4_200_000_000, 180, open.bgp_id, open.capabilities.clone()),
        open
    );
}

#[test]
fn open_with_capabilities_in_separate_parameters() {
    // Some speakers send one Capabilities parameter per capability (RFC 5492 §4 allows both).
    let bytes = msg("0025 01 04 fde9 005a c0000201 08  02 02 02 00  02 02 46 00");
    let Message::Open(open) = decode(&bytes, &CodecContext::default()).unwrap() else {
        panic!()
    };
    assert_eq!(
        open.capabilities,
        vec![Capability::RouteRefresh, Capability::EnhancedRouteRefresh]
    );
}

#[test]
fn open_extended_optional_parameters_rfc9072() {
    // Non-Ext OP Len 255, Non-Ext OP Type 255, Extended Opt. Parm. Length 0x0005, then parameter type 2
    // with a 2-octet length 0x0002 and Route Refresh.
    let bytes = msg("0025 01 04 fde9 005a c0000201 ff ff 0005 02 0002 02 00");
    let Message::Open(open) = decode(&bytes, &CodecContext::default()).unwrap() else {
        panic!()
    };
    assert_eq!(open.capabilities, vec![Capability::RouteRefresh]);
    // Encoding switches to the extended format only when the capabilities exceed 255 octets.
    let many = (0..100)
        .map(|i| Capability::Multiprotocol(AfiSafi::new(Afi(i), Safi(1))))
        .collect();
    let big = Message::Open(Open::new(65001, 90, Ipv4Addr::new(192, 0, 2, 1), many));
    let bytes = big.to_bytes(&CodecContext::default()).unwrap();
    assert_eq!(&bytes[28..30], &[0xff, 0xff]);
    assert_eq!(decode(&bytes, &CodecContext::default()).unwrap(), big);
}

#[test]
fn update_ipv4_fixture() {
    // Withdrawn Routes Length 0; Total Path Attribute Length 0x26:
    //   ORIGIN IGP                    40 01 01 00
    //   AS_PATH SEQ [65001, 65002]    40 02 0a 02 02 0000fde9 0000fdea
    //   NEXT_HOP 192.0.2.1            40 03 04 c0000201
    //   MED 100                       80 04 04 00000064
    //   COMMUNITIES 65001:100         c0 08 04 fde90064
    // NLRI 10.0.0.0/8, 192.168.1.0/24, 203.0.113.128/25.
    let bytes = msg("0048 02 0000 0026
        40 01 01 00
        40 02 0a 02 02 0000fde9 0000fdea
        40 03 04 c0000201
        80 04 04 00000064
        c0 08 04 fde90064
        08 0a  18 c0a801  19 cb007180");
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(vec![65001, 65002])),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            med: Some(100),
            communities: vec![Community::new(65001, 100)],
            ..PathAttributes::default()
        },
        nlri: vec![
            net("10.0.0.0/8"),
            net("192.168.1.0/24"),
            net("203.0.113.128/25"),
        ],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update), &ctx4());
    // The raw attributes are the attribute field itself (zero-copy).
    let decoded = decode_update(&bytes, &ctx4());
    assert_eq!(&decoded.raw_attributes[..], &bytes[23..23 + 0x26]);
    assert_eq!(decoded.end_of_rib(), None);
}

#[test]
fn update_ipv6_mp_reach_fixture() {
    // MP_REACH_NLRI first (80 0e 2c): AFI 2, SAFI 1, next hop length 32 (2001:db8::1, fe80::1), reserved,
    // NLRI 2001:db8:1::/48. Then ORIGIN IGP, empty AS_PATH, LOCAL_PREF 100 (internal peer).
    let bytes = msg("0054 02 0000 003d
        80 0e 2c 0002 01 20
           20010db8000000000000000000000001
           fe800000000000000000000000000001
           00
           30 20010db80001
        40 01 01 00
        40 02 00
        40 05 04 00000064");
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            local_pref: Some(100),
            ..PathAttributes::default()
        },
        mp_reach: Some(MpReach {
            afi_safi: AfiSafi::IPV6_UNICAST,
            next_hop: NextHop::V6 {
                global: "2001:db8::1".parse().unwrap(),
                link_local: Some("fe80::1".parse().unwrap()),
            },
            nlri: vec![net("2001:db8:1::/48")],
        }),
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update), &ibgp4());
    // The raw attribute set excludes MP_REACH_NLRI.
    let decoded = decode_update(&bytes, &ibgp4());
    assert_eq!(
        &decoded.raw_attributes[..],
        &hex("40010100 400200 400504 00000064")[..]
    );
}

#[test]
fn update_ipv6_withdraw_and_end_of_rib_fixtures() {
    // MP_UNREACH_NLRI (80 0f 0a): AFI 2, SAFI 1, 2001:db8:1::/48.
    let withdraw = msg("0024 02 0000 000d 80 0f 0a 0002 01 30 20010db80001");
    let update = Update {
        mp_unreach: Some(MpUnreach {
            afi_safi: AfiSafi::IPV6_UNICAST,
            withdrawn: vec![net("2001:db8:1::/48")],
        }),
        ..Update::default()
    };
    both_ways(&withdraw, &Message::Update(update.clone()), &ctx4());
    assert_eq!(update.end_of_rib(), None);
    assert_eq!(
        Update::withdraw(&[net("2001:db8:1::/48")], &ctx4()).unwrap(),
        vec![update]
    );

    // RFC 4724 §2: End-of-RIB for IPv6 unicast is an UPDATE with only an empty MP_UNREACH_NLRI.
    let eor6 = msg("001d 02 0000 0006 80 0f 03 0002 01");
    both_ways(
        &eor6,
        &Message::Update(Update::end_of_rib_marker(AfiSafi::IPV6_UNICAST)),
        &ctx4(),
    );
    assert_eq!(
        decode_update(&eor6, &ctx4()).end_of_rib(),
        Some(AfiSafi::IPV6_UNICAST)
    );
    // For IPv4 unicast it is the minimum-length UPDATE.
    let eor4 = msg("0017 02 0000 0000");
    both_ways(
        &eor4,
        &Message::Update(Update::end_of_rib_marker(AfiSafi::IPV4_UNICAST)),
        &ctx4(),
    );
    assert_eq!(
        decode_update(&eor4, &ctx4()).end_of_rib(),
        Some(AfiSafi::IPV4_UNICAST)
    );
    // An End-of-RIB of a family the codec does not decode (L2VPN EVPN, AFI 25 SAFI 70) is still seen.
    let eor_evpn = msg("001d 02 0000 0006 80 0f 03 0019 46");
    assert_eq!(
        decode_update(&eor_evpn, &ctx4()).end_of_rib(),
        Some(AfiSafi::new(Afi(25), Safi(70)))
    );
}

#[test]
fn update_ipv4_withdraw_fixture() {
    // Withdrawn Routes Length 7: 10.1.0.0/16, 192.0.2.0/24 (host bits of 192.0.2.7 are cleared).
    let bytes = msg("001e 02 0007 10 0a01 18 c00002 0000");
    let update = Update {
        withdrawn: vec![net("10.1.0.0/16"), net("192.0.2.0/24")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update), &ctx4());
    // RFC 4271 §4.3: trailing bits of the prefix are irrelevant: a /23 written as c0 00 03 decodes to
    // 192.0.2.0/23.
    let sloppy = msg("001b 02 0004 17 c00003 0000");
    assert_eq!(
        decode_update(&sloppy, &ctx4()).withdrawn,
        vec![net("192.0.2.0/23")]
    );
}

#[test]
fn update_add_path_fixture() {
    // RFC 7911 §3: each NLRI is preceded by a 4-octet Path Identifier.
    let ctx = CodecContext {
        add_path_receive: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
        add_path_send: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
        ..ctx4()
    };
    let bytes =
        msg("002d 02 0000 000e 40 01 01 02  40 02 00  40 03 04 c0000201  00000007 18 c0a801");
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath::default()),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..PathAttributes::default()
        },
        nlri: vec![Nlri::with_path_id("192.168.1.0/24".parse().unwrap(), 7)],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update), &ctx);
}

#[test]
fn update_all_attributes_fixture() {
    // Every attribute the codec types, in type code order, on an internal 4-octet session:
    let bytes = msg("008f 02 0000 0076
        40 01 01 01
        40 02 10 02 01 0000fde9  01 02 0000fdea 0000fdeb
        40 03 04 c0000201
        80 04 04 00000000
        40 05 04 000000c8
        40 06 00
        c0 07 08 0000fde9 c0000202
        c0 08 08 ffffff01 fde90001
        80 09 04 c0000203
        80 0a 08 c0000204 c0000205
        c0 10 08 0002fde900000064
        c0 20 0c 0000fde9 00000001 00000002
        e0 63 02 abcd
        08 0a");
    // ORIGIN EGP; AS_PATH SEQ [65001] SET {65002, 65003}; NEXT_HOP; MED 0; LOCAL_PREF 200;
    // ATOMIC_AGGREGATE; AGGREGATOR 65001 192.0.2.2; COMMUNITIES NO_EXPORT, 65001:1; ORIGINATOR_ID;
    // CLUSTER_LIST; EXTENDED_COMMUNITIES route target 65001:100; LARGE_COMMUNITY 65001:1:2; an unknown
    // optional transitive attribute 99 with the Partial bit (e0); NLRI 10.0.0.0/8.
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Egp),
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: vec![65001],
                    },
                    AsSegment {
                        kind: SegmentType::Set,
                        asns: vec![65002, 65003],
                    },
                ],
            }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            med: Some(0),
            local_pref: Some(200),
            atomic_aggregate: true,
            aggregator: Some(Aggregator {
                asn: 65001,
                address: Ipv4Addr::new(192, 0, 2, 2),
            }),
            communities: vec![Community::NO_EXPORT, Community::new(65001, 1)],
            originator_id: Some(Ipv4Addr::new(192, 0, 2, 3)),
            cluster_list: vec![Ipv4Addr::new(192, 0, 2, 4), Ipv4Addr::new(192, 0, 2, 5)],
            extended_communities: vec![ExtendedCommunity(0x0002_fde9_0000_0064)],
            large_communities: vec![LargeCommunity {
                global_admin: 65001,
                local_data1: 1,
                local_data2: 2,
            }],
            unknown: vec![RawAttribute {
                flags: 0xe0,
                type_code: 99,
                value: Bytes::from_static(&[0xab, 0xcd]),
            }],
            ..PathAttributes::default()
        },
        nlri: vec![net("10.0.0.0/8")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(update), &ibgp4());
}

#[test]
fn unknown_optional_transitive_gets_partial_bit_and_non_transitive_is_dropped() {
    // c0 63 (optional transitive, no Partial) and 80 64 (optional non-transitive).
    let bytes = upd(
        "40 01 01 00 40 02 00 40 03 04 c0000201 c0 63 01 aa 80 64 01 bb",
        "08 0a",
    );
    let update = decode_update(&bytes, &ctx4());
    assert_eq!(
        update.attributes.unknown,
        vec![RawAttribute {
            flags: 0xe0,
            type_code: 99,
            value: Bytes::from_static(&[0xaa])
        }]
    );
    assert!(update.errors.is_empty());
    // The non-transitive one is not part of the raw attribute set.
    assert_eq!(
        &update.raw_attributes[..],
        &hex("40010100 400200 400304c0000201 c06301aa")[..]
    );
}

#[test]
fn notification_fixtures_and_display() {
    // Cease / Administrative Shutdown with the RFC 9003 shutdown communication "maintenance".
    let bytes = msg("0021 03 06 02 0b 6d61696e74656e616e6365");
    let n = Notification::cease_with_message(CeaseSubcode::AdministrativeShutdown, "maintenance");
    both_ways(
        &bytes,
        &Message::Notification(n.clone()),
        &CodecContext::default(),
    );
    assert_eq!(n.shutdown_message().as_deref(), Some("maintenance"));
    assert_eq!(
        n.to_string(),
        "Cease: Administrative Shutdown: \"maintenance\""
    );

    let bytes = msg("0015 03 04 00");
    both_ways(
        &bytes,
        &Message::Notification(Notification::hold_timer_expired()),
        &CodecContext::default(),
    );
    assert_eq!(
        Notification::hold_timer_expired().to_string(),
        "Hold Timer Expired"
    );

    let n = Notification::from_wire(2, 2, Bytes::new());
    assert_eq!(n.subcode, ErrorSubcode::Open(OpenSubcode::BadPeerAs));
    assert_eq!(n.to_string(), "OPEN Message Error: Bad Peer AS");
    assert_eq!(
        Notification::from_wire(6, 10, Bytes::new()).to_string(),
        "Cease: BFD Down"
    );
    assert_eq!(
        Notification::from_wire(6, 9, Bytes::new()).to_string(),
        "Cease: Hard Reset"
    );
    assert_eq!(
        Notification::from_wire(5, 2, Bytes::new()).to_string(),
        "Finite State Machine Error: Receive Unexpected Message in OpenConfirm State"
    );
    assert_eq!(
        Notification::from_wire(7, 1, Bytes::new()).to_string(),
        "ROUTE-REFRESH Message Error: Invalid Message Length"
    );
    assert_eq!(
        Notification::from_wire(8, 0, Bytes::new()).to_string(),
        "Send Hold Timer Expired"
    );
    assert_eq!(
        Notification::from_wire(42, 3, Bytes::new()).to_string(),
        "Unknown error code 42: subcode 3"
    );
    assert_eq!(
        Notification::from_wire(6, 77, Bytes::new()).subcode,
        ErrorSubcode::Unknown(77)
    );
    // Every registered Cease subcode 1-10 is typed.
    for sub in 1..=10 {
        assert!(matches!(
            Notification::from_wire(6, sub, Bytes::new()).subcode,
            ErrorSubcode::Cease(_)
        ));
    }
    // A shutdown communication whose length overruns the data is not one.
    assert_eq!(
        Notification::from_wire(6, 2, Bytes::from_static(&[5, b'a'])).shutdown_message(),
        None
    );
    // Long messages are cut to 255 octets at a character boundary.
    let long = "é".repeat(200);
    let n = Notification::cease_with_message(CeaseSubcode::AdministrativeReset, &long);
    assert_eq!(n.data[0], 254);
    assert_eq!(n.shutdown_message().unwrap().chars().count(), 127);
}

#[test]
fn route_refresh_fixtures() {
    // AFI 1, subtype 0 (normal), SAFI 1.
    let normal = RouteRefresh {
        afi: Afi::IPV4,
        safi: Safi::UNICAST,
        subtype: RouteRefreshSubtype::Normal,
    };
    both_ways(
        &msg("0017 05 0001 00 01"),
        &Message::RouteRefresh(normal),
        &ctx4(),
    );
    // AFI 2, subtype 2 (EoRR), SAFI 1.
    let eorr = RouteRefresh {
        afi: Afi::IPV6,
        safi: Safi::UNICAST,
        subtype: RouteRefreshSubtype::EndOfRouteRefresh,
    };
    both_ways(
        &msg("0017 05 0002 02 01"),
        &Message::RouteRefresh(eorr),
        &ctx4(),
    );
    // Unknown subtypes decode (the FSM ignores them, RFC 7313 §5) even with extra octets.
    let Message::RouteRefresh(rr) = decode(&msg("0018 05 0001 07 01 00"), &ctx4()).unwrap() else {
        panic!()
    };
    assert_eq!(rr.subtype, RouteRefreshSubtype::Unknown(7));
}

// ---------------------------------------------------------------------------------------------------------
// Errors with their exact NOTIFICATION

#[test]
fn header_errors() {
    let ctx = CodecContext::default();
    // Connection Not Synchronized, detected as soon as a marker octet is wrong.
    assert_eq!(
        message_length(&hex("ffff00"), &ctx)
            .unwrap_err()
            .notification()
            .subcode
            .to_u8(),
        1
    );
    let mut bad_marker = msg("0013 04");
    bad_marker[3] = 0xfe;
    assert_eq!(notification_of(&bad_marker, &ctx), (1, 1, vec![]));
    // Bad Message Length: data is the Length field.
    assert_eq!(
        notification_of(&msg("0012 04"), &ctx),
        (1, 2, vec![0x00, 0x12])
    );
    assert_eq!(
        notification_of(&msg("0014 04 00"), &ctx),
        (1, 2, vec![0x00, 0x14])
    );
    assert_eq!(
        notification_of(&msg("0016 02 0000 00"), &ctx),
        (1, 2, vec![0x00, 0x16])
    );
    assert_eq!(
        notification_of(&msg("0014 03 06"), &ctx),
        (1, 2, vec![0x00, 0x14])
    );
    assert_eq!(
        notification_of(&msg("001c 01 04 fde9 005a c0000201"), &ctx),
        (1, 2, vec![0x00, 0x1c])
    );
    assert_eq!(
        notification_of(&msg("0016 05 0001 00"), &ctx),
        (1, 2, vec![0x00, 0x16])
    );
    // Above 4096 without Extended Message; accepted for UPDATE with it, never for OPEN.
    let mut big = msg("1001 02");
    assert_eq!(
        message_length(&big, &ctx)
            .unwrap_err()
            .notification()
            .data
            .to_vec(),
        vec![0x10, 0x01]
    );
    let ext = CodecContext {
        extended_message: true,
        ..ctx
    };
    assert_eq!(message_length(&big, &ext).unwrap(), None);
    big[18] = 1;
    assert_eq!(
        message_length(&big, &ext)
            .unwrap_err()
            .notification()
            .data
            .to_vec(),
        vec![0x10, 0x01]
    );
    // Bad Message Type: data is the Type field.
    assert_eq!(notification_of(&msg("0013 09"), &ctx), (1, 3, vec![9]));
    // Framing waits for more bytes.
    assert_eq!(message_length(&hex(MARKER), &ctx).unwrap(), None);
    assert_eq!(message_length(&msg("0017 02 0000"), &ctx).unwrap(), None);
    let two = [msg("0013 04"), msg("0013 04")].concat();
    assert_eq!(message_length(&two, &ctx).unwrap(), Some(19));
}

#[test]
fn open_errors() {
    let ctx = CodecContext::default();
    // Unsupported Version Number: data is the 2-octet highest version we support.
    assert_eq!(
        notification_of(&msg("001d 01 03 fde9 005a c0000201 00"), &ctx),
        (2, 1, vec![0, 4])
    );
    // Bad Peer AS: AS 0 (RFC 7607), also in the 4-octet AS capability.
    assert_eq!(
        notification_of(&msg("001d 01 04 0000 005a c0000201 00"), &ctx),
        (2, 2, vec![])
    );
    assert_eq!(
        notification_of(
            &msg("0025 01 04 5ba0 005a c0000201 08 02 06 41 04 00000000"),
            &ctx
        ),
        (2, 2, vec![])
    );
    // Bad BGP Identifier: 0.0.0.0 (RFC 6286).
    assert_eq!(
        notification_of(&msg("001d 01 04 fde9 005a 00000000 00"), &ctx),
        (2, 3, vec![])
    );
    // Unsupported Optional Parameter: type 1 (authentication).
    assert_eq!(
        notification_of(&msg("0020 01 04 fde9 005a c0000201 03 01 01 00"), &ctx),
        (2, 4, vec![])
    );
    // Unacceptable Hold Time: 1 and 2 seconds; 0 and 3 are fine.
    assert_eq!(
        notification_of(&msg("001d 01 04 fde9 0001 c0000201 00"), &ctx),
        (2, 6, vec![])
    );
    assert_eq!(
        notification_of(&msg("001d 01 04 fde9 0002 c0000201 00"), &ctx),
        (2, 6, vec![])
    );
    assert!(decode(&msg("001d 01 04 fde9 0000 c0000201 00"), &ctx).is_ok());
    assert!(decode(&msg("001d 01 04 fde9 0003 c0000201 00"), &ctx).is_ok());
    // Unsupported Capability (raised by the FSM): data lists the capabilities.
    let e = MessageError::Open(OpenError::UnsupportedCapability {
        capabilities: Bytes::from_static(&[1, 4, 0, 2, 0, 1]),
    });
    let n = e.notification();
    assert_eq!(
        (n.code.to_u8(), n.subcode.to_u8(), n.data.to_vec()),
        (2, 7, vec![1, 4, 0, 2, 0, 1])
    );
    // Malformed parameters / capabilities: OPEN Message Error, Unspecific.
    // Parameter length overruns the message.
    assert_eq!(
        notification_of(&msg("001f 01 04 fde9 005a c0000201 02 02 05"), &ctx),
        (2, 0, vec![])
    );
    // Capability length overruns the parameter.
    assert_eq!(
        notification_of(&msg("001f 01 04 fde9 005a c0000201 02 02 01"), &ctx),
        (2, 0, vec![])
    );
    assert_eq!(
        notification_of(&msg("0021 01 04 fde9 005a c0000201 04 02 02 41 04"), &ctx),
        (2, 0, vec![])
    );
    // A 4-octet AS capability of 3 octets.
    assert_eq!(
        notification_of(
            &msg("0024 01 04 fde9 005a c0000201 07 02 05 41 03 000001"),
            &ctx
        ),
        (2, 0, vec![])
    );
    // Graceful Restart capabilities (RFC 4724 §3) too short for the flags and time, or with a
    // truncated family entry.
    assert_eq!(
        notification_of(
            &msg("0022 01 04 fde9 005a c0000201 05 02 03 40 01 00"),
            &ctx
        ),
        (2, 0, vec![])
    );
    assert_eq!(
        notification_of(
            &msg("0026 01 04 fde9 005a c0000201 09 02 07 40 05 0078 000101"),
            &ctx
        ),
        (2, 0, vec![])
    );
    // Trailing octets after the optional parameters.
    assert_eq!(
        notification_of(&msg("001e 01 04 fde9 005a c0000201 00 00"), &ctx),
        (2, 0, vec![])
    );
}

#[test]
fn update_session_reset_errors() {
    let ctx = ctx4();
    // Malformed Attribute List: Withdrawn Routes Length beyond the message.
    assert_eq!(
        notification_of(&msg("0017 02 0005 0000"), &ctx),
        (3, 1, vec![])
    );
    // Total Path Attribute Length beyond the message.
    assert_eq!(
        notification_of(&msg("0017 02 0000 0001"), &ctx),
        (3, 1, vec![])
    );
    // Unrecognized Well-known Attribute: data is the attribute.
    assert_eq!(
        notification_of(&upd("40 63 01 07", ""), &ctx),
        (3, 2, hex("40630107"))
    );
    // Invalid Network Field: prefix length 33 in the NLRI, truncated prefix in the withdrawn routes.
    assert_eq!(
        notification_of(&msg("001d 02 0000 0000 21 0a000000 00"), &ctx),
        (3, 10, vec![])
    );
    assert_eq!(
        notification_of(&msg("0018 02 0001 18 0000"), &ctx),
        (3, 10, vec![])
    );
    // Optional Attribute Error: MP_REACH_NLRI with a 5-octet next hop for IPv6.
    assert_eq!(
        notification_of(&upd("80 0e 0a 0002 01 05 0000000000 00", ""), &ctx),
        (3, 9, hex("80 0e 0a 0002 01 05 0000000000 00"))
    );
    // MP_REACH_NLRI for IPv4 with an IPv6 next hop without extended next hop negotiated.
    let v4_over_v6 = "80 0e 17 0001 01 10 20010db8000000000000000000000001 00 08 0a";
    assert_eq!(notification_of(&upd(v4_over_v6, ""), &ctx).1, 9);
    let enh = CodecContext {
        extended_next_hop: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
        ..ctx
    };
    let ok = upd(&format!("{v4_over_v6} 40 01 01 00 40 02 00"), "");
    let update = decode_update(&ok, &enh);
    assert_eq!(
        update.mp_reach.unwrap().next_hop,
        NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: None
        }
    );
    // MP_UNREACH_NLRI with a bad prefix.
    assert_eq!(
        notification_of(&upd("80 0f 06 0002 01 81 0000", ""), &ctx),
        (3, 9, hex("80 0f 06 0002 01 81 0000"))
    );
    // MP_REACH_NLRI twice: Malformed Attribute List (RFC 7606 §3 g).
    assert_eq!(
        notification_of(&upd("80 0f 03 0002 01 80 0f 03 0002 01", ""), &ctx),
        (3, 1, vec![])
    );
    // MP_UNREACH_NLRI with wrong flags (well-known transitive): Attribute Flags Error, reset.
    assert_eq!(
        notification_of(&upd("40 0f 03 0002 01", ""), &ctx),
        (3, 4, hex("40 0f 03 0002 01"))
    );
}

#[test]
fn update_error_notification_data_for_rfc7606_errors() {
    // These errors do not reset the session, but their RFC 4271 NOTIFICATION is still exact (used in
    // logs and by peers that disable RFC 7606).
    let cases: Vec<(UpdateError, u8, Vec<u8>)> = vec![
        (
            UpdateError::MissingWellKnownAttribute { type_code: 1 },
            3,
            vec![1],
        ),
        (
            UpdateError::AttributeFlags {
                attribute: Bytes::from_static(&[0xc0, 1, 1, 0]),
            },
            4,
            vec![0xc0, 1, 1, 0],
        ),
        (
            UpdateError::AttributeLength {
                attribute: Bytes::from_static(&[0x40, 1, 0]),
            },
            5,
            vec![0x40, 1, 0],
        ),
        (
            UpdateError::InvalidOrigin {
                attribute: Bytes::from_static(&[0x40, 1, 1, 9]),
            },
            6,
            vec![0x40, 1, 1, 9],
        ),
        (
            UpdateError::InvalidNextHop {
                attribute: Bytes::from_static(&[0x40, 3, 4, 0, 0, 0, 0]),
            },
            8,
            vec![0x40, 3, 4, 0, 0, 0, 0],
        ),
        (
            UpdateError::OptionalAttribute {
                attribute: Bytes::from_static(&[0x80, 14, 0]),
            },
            9,
            vec![0x80, 14, 0],
        ),
        (UpdateError::MalformedAsPath, 11, vec![]),
    ];
    for (error, subcode, data) in cases {
        let n = MessageError::Update(error).notification();
        assert_eq!(
            (n.code.to_u8(), n.subcode.to_u8(), n.data.to_vec()),
            (3, subcode, data)
        );
    }
    let n = MessageError::RouteRefresh(RouteRefreshError::InvalidMessageLength {
        message: Bytes::new(),
    })
    .notification();
    assert_eq!(
        (n.code, n.subcode),
        (
            ErrorCode::RouteRefreshMessage,
            ErrorSubcode::RouteRefresh(RouteRefreshSubcode::InvalidMessageLength)
        )
    );
}

#[test]
fn route_refresh_invalid_length() {
    // RFC 7313 §5: BoRR with 5 octets of body: data is the complete message.
    let bytes = msg("0018 05 0001 01 01 00");
    assert_eq!(notification_of(&bytes, &ctx4()), (7, 1, bytes.clone()));
}

// ---------------------------------------------------------------------------------------------------------
// RFC 7606 outcomes

/// An UPDATE with ORIGIN IGP, AS_PATH [65001], NEXT_HOP 192.0.2.1, `extra` attributes and NLRI
/// 10.0.0.0/8.
fn update_with(extra: &str) -> Vec<u8> {
    let attrs = hex(&format!(
        "40010100 40020602010000fde9 400304c0000201 {extra}"
    ));
    let mut body = vec![0, 0];
    body.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[8, 10]);
    let mut bytes = hex(MARKER);
    bytes.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    bytes.push(2);
    bytes.extend_from_slice(&body);
    bytes
}

fn outcome(extra: &str, ctx: &CodecContext) -> Update {
    decode_update(&update_with(extra), ctx)
}

fn assert_withdrawn(update: &Update, type_code: u8, subcode: u8) {
    assert!(update.treat_as_withdraw, "{update:?}");
    assert!(
        update.nlri.is_empty() && update.attributes.is_empty() && update.raw_attributes.is_empty()
    );
    assert_eq!(update.withdrawn, vec![net("10.0.0.0/8")]);
    assert_eq!(update.withdrawn_by_error, vec![net("10.0.0.0/8")]);
    let error = update
        .errors
        .iter()
        .find(|e| e.action == ErrorAction::TreatAsWithdraw)
        .unwrap();
    assert_eq!(
        (error.type_code, error.error.subcode() as u8),
        (type_code, subcode)
    );
}

fn assert_discarded(update: &Update, type_code: u8, subcode: u8) {
    assert!(!update.treat_as_withdraw, "{update:?}");
    assert_eq!(update.nlri, vec![net("10.0.0.0/8")]);
    assert_eq!(update.errors.len(), 1);
    let error = &update.errors[0];
    assert_eq!(
        (error.type_code, error.action, error.error.subcode() as u8),
        (type_code, ErrorAction::AttributeDiscard, subcode)
    );
}

#[test]
fn rfc7606_clean_update() {
    let update = outcome("", &ctx4());
    assert!(update.errors.is_empty() && !update.treat_as_withdraw);
    assert_eq!(update.nlri, vec![net("10.0.0.0/8")]);
}

#[test]
fn rfc7606_treat_as_withdraw_cases() {
    let ctx = ibgp4();
    // Duplicate ORIGIN is discarded, not an error of the first: use a separate message for ORIGIN.
    let bad_origin = upd("40 01 01 07 40 02 00 40 03 04 c0000201", "08 0a");
    assert_withdrawn(&decode_update(&bad_origin, &ctx), 1, 6);
    let origin_len = upd("40 01 02 0000 40 02 00 40 03 04 c0000201", "08 0a");
    assert_withdrawn(&decode_update(&origin_len, &ctx), 1, 5);
    // AS_PATH with a zero segment length, an unknown segment type, an overrun.
    for path in [
        "40 02 02 0200",
        "40 02 06 07 01 0000fde9",
        "40 02 06 02 02 0000fde9",
    ] {
        let bytes = upd(&format!("40 01 01 00 {path} 40 03 04 c0000201"), "08 0a");
        assert_withdrawn(&decode_update(&bytes, &ctx), 2, 11);
    }
    // NEXT_HOP 0.0.0.0 and of length 3.
    let nh0 = upd("40 01 01 00 40 02 00 40 03 04 00000000", "08 0a");
    assert_withdrawn(&decode_update(&nh0, &ctx), 3, 8);
    let nh3 = upd("40 01 01 00 40 02 00 40 03 03 c00002", "08 0a");
    assert_withdrawn(&decode_update(&nh3, &ctx), 3, 5);
    // MED, LOCAL_PREF (internal), COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, EXTENDED_COMMUNITIES,
    // LARGE_COMMUNITY with bad lengths.
    assert_withdrawn(&outcome("80 04 02 0000", &ctx), 4, 5);
    assert_withdrawn(&outcome("40 05 00", &ctx), 5, 5);
    assert_withdrawn(&outcome("c0 08 03 000000", &ctx), 8, 5);
    assert_withdrawn(&outcome("c0 08 00", &ctx), 8, 5);
    assert_withdrawn(&outcome("80 09 05 0000000000", &ctx), 9, 5);
    assert_withdrawn(&outcome("80 0a 06 000000000000", &ctx), 10, 5);
    assert_withdrawn(&outcome("c0 10 07 00000000000000", &ctx), 16, 5);
    assert_withdrawn(&outcome("c0 20 08 0000000000000000", &ctx), 32, 5);
    // IPv6 Address Specific Extended Community of 8 octets (RFC 7606 §7.15); 20 octets are kept.
    assert_withdrawn(&outcome("c0 19 08 0000000000000000", &ctx), 25, 5);
    let kept = outcome("c0 19 14 0002 20010db8000000000000000000000001 0064", &ctx);
    assert!(kept.errors.is_empty() && kept.attributes.unknown.len() == 1);
    // Attribute Flags Error: ORIGIN sent as optional; COMMUNITIES sent as non-transitive.
    let flags = upd("c0 01 01 00 40 02 00 40 03 04 c0000201", "08 0a");
    assert_withdrawn(&decode_update(&flags, &ctx), 1, 4);
    assert_withdrawn(&outcome("80 08 04 00000001", &ctx), 8, 4);
    // Missing well-known attributes: AS_PATH, and NEXT_HOP with an NLRI field.
    let no_as_path = upd("40 01 01 00 40 03 04 c0000201", "08 0a");
    assert_withdrawn(&decode_update(&no_as_path, &ctx), 2, 3);
    let no_next_hop = upd("40 01 01 00 40 02 00", "08 0a");
    assert_withdrawn(&decode_update(&no_next_hop, &ctx), 3, 3);
    // RFC 7606 §4: an attribute overrunning the attribute field, and a lone octet left over.
    assert_withdrawn(&outcome("c0 08 08 00000001", &ctx), 8, 1);
    assert_withdrawn(&outcome("c0", &ctx), 0, 1);
}

#[test]
fn rfc7606_treat_as_withdraw_of_mp_reach() {
    // MP_REACH IPv6 2001:db8:1::/48 + ORIGIN + empty AS_PATH + malformed COMMUNITIES (length 2).
    let bytes = upd(
        "80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001
        40 01 01 00 40 02 00 c0 08 02 0000",
        "",
    );
    let update = decode_update(&bytes, &ctx4());
    assert!(update.treat_as_withdraw);
    assert_eq!(update.mp_reach, None);
    assert_eq!(
        update.mp_unreach,
        Some(MpUnreach {
            afi_safi: AfiSafi::IPV6_UNICAST,
            withdrawn: vec![net("2001:db8:1::/48")]
        })
    );
    // Missing ORIGIN with only MP_REACH NLRI; NEXT_HOP is not needed there.
    let bytes = upd(
        "80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001 40 02 00",
        "",
    );
    let update = decode_update(&bytes, &ctx4());
    assert_eq!(
        update.errors[0].error,
        UpdateError::MissingWellKnownAttribute { type_code: 1 }
    );
    assert!(update.mp_unreach.is_some());
}

#[test]
fn rfc7606_attribute_discard_cases() {
    let ctx = ctx4();
    // AGGREGATOR of 6 octets on a 4-octet session; ATOMIC_AGGREGATE with a value.
    let update = outcome("c0 07 06 fde9 c0000201", &ctx);
    assert_discarded(&update, 7, 5);
    assert_eq!(update.attributes.aggregator, None);
    // The raw attribute set no longer holds the discarded attribute.
    assert_eq!(
        &update.raw_attributes[..],
        &hex("40010100 40020602010000fde9 400304c0000201")[..]
    );
    assert_discarded(&outcome("40 06 01 00", &ctx), 6, 5);
    // A second COMMUNITIES is discarded, the first kept.
    let update = outcome("c0 08 04 00000001 c0 08 04 00000002", &ctx);
    assert_discarded(&update, 8, 1);
    assert_eq!(update.attributes.communities, vec![Community(1)]);
    // On a 2-octet session: malformed AS4_PATH and AS4_AGGREGATOR are discarded.
    let old = CodecContext::default();
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 fde9 40 03 04 c0000201 c0 11 00",
            "08 0a",
        ),
        &old,
    );
    // RFC 6793 §6: an AS4_PATH shorter than 6 octets (here empty) is malformed.
    assert_eq!(
        (update.errors[0].type_code, update.errors[0].action),
        (17, ErrorAction::AttributeDiscard)
    );
    assert_eq!(update.nlri, vec![net("10.0.0.0/8")]);
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 fde9 40 03 04 c0000201 c0 11 01 02",
            "08 0a",
        ),
        &old,
    );
    assert_eq!(
        (update.errors[0].type_code, update.errors[0].action),
        (17, ErrorAction::AttributeDiscard)
    );
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 fde9 40 03 04 c0000201 c0 12 02 0000",
            "08 0a",
        ),
        &old,
    );
    assert_eq!(
        (update.errors[0].type_code, update.errors[0].action),
        (18, ErrorAction::AttributeDiscard)
    );
    // Confederation segments in AS4_PATH are dropped, the rest kept (RFC 6793 §6).
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 fde9 40 03 04 c0000201 c0 11 0c 03 01 0000fde9 02 01 fa56ea00",
            "08 0a",
        ),
        &old,
    );
    assert!(update.errors.is_empty());
    assert_eq!(
        update.attributes.as4_path,
        Some(AsPath::from_sequence(vec![4_200_000_000]))
    );
}

#[test]
fn rfc7607_as_zero() {
    let ctx = ctx4();
    // AS_PATH [65001 0]: treat-as-withdraw, Malformed AS_PATH (RFC 7607 §2, RFC 7606 §7.2).
    let bytes = upd(
        "40 01 01 00 40 02 0a 02 02 0000fde9 00000000 40 03 04 c0000201",
        "08 0a",
    );
    assert_withdrawn(&decode_update(&bytes, &ctx), 2, 11);
    // The same in an AS_SET and on a 2-octet session.
    let bytes = upd(
        "40 01 01 00 40 02 08 02 01 fde9 01 01 0000 40 03 04 c0000201",
        "08 0a",
    );
    assert_withdrawn(&decode_update(&bytes, &CodecContext::default()), 2, 11);
    // AS4_PATH [0] from a 2-octet speaker: treat-as-withdraw too (Reef's choice, see RFC_NOTES).
    let bytes = upd(
        "40 01 01 00 40 02 04 02 01 5ba0 40 03 04 c0000201 c0 11 06 02 01 00000000",
        "08 0a",
    );
    assert_withdrawn(&decode_update(&bytes, &CodecContext::default()), 17, 11);
    // AGGREGATOR with AS 0 (4-octet and 2-octet sessions): attribute discard, route kept.
    let update = outcome("c0 07 08 00000000 c0000201", &ctx);
    assert_discarded(&update, 7, 9);
    assert_eq!(update.attributes.aggregator, None);
    assert_eq!(
        &update.raw_attributes[..],
        &hex("40010100 40020602010000fde9 400304c0000201")[..]
    );
    let old = CodecContext::default();
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 fde9 40 03 04 c0000201 c0 07 06 0000 c0000201",
            "08 0a",
        ),
        &old,
    );
    assert_eq!(
        (update.errors[0].type_code, update.errors[0].action),
        (7, ErrorAction::AttributeDiscard)
    );
    assert_eq!(update.nlri, vec![net("10.0.0.0/8")]);
    // AS4_AGGREGATOR with AS 0: attribute discard.
    let update = decode_update(
        &upd(
            "40 01 01 00 40 02 04 02 01 5ba0 40 03 04 c0000201 c0 07 06 5ba0 c0000201 \
             c0 12 08 00000000 c0000201",
            "08 0a",
        ),
        &old,
    );
    assert_eq!(
        (update.errors[0].type_code, update.errors[0].action),
        (18, ErrorAction::AttributeDiscard)
    );
    assert_eq!(update.attributes.as4_aggregator, None);
    assert_eq!(update.nlri, vec![net("10.0.0.0/8")]);
    // A valid path and aggregator with AS 1 are untouched.
    let update = outcome("c0 07 08 00000001 c0000201", &ctx);
    assert!(update.errors.is_empty());
}

#[test]
fn invalid_next_hop_addresses_withdraw() {
    // RFC 4271 §6.3 "valid IP host address": 0.0.0.0, multicast, class E and the limited broadcast
    // address are Invalid NEXT_HOP, treat-as-withdraw (RFC 7606 §7.3).
    for next_hop in ["00000000", "e0000001", "efffffff", "f0000001", "ffffffff"] {
        let bytes = upd(
            &format!("40 01 01 00 40 02 00 40 03 04 {next_hop}"),
            "08 0a",
        );
        assert_withdrawn(&decode_update(&bytes, &ctx4()), 3, 8);
    }
    // 223.255.255.255 and 1.0.0.0 are host addresses for the codec (semantics are checked on import).
    for next_hop in ["dfffffff", "01000000", "7f000001"] {
        let bytes = upd(
            &format!("40 01 01 00 40 02 00 40 03 04 {next_hop}"),
            "08 0a",
        );
        assert!(
            decode_update(&bytes, &ctx4()).errors.is_empty(),
            "{next_hop}"
        );
    }
}

#[test]
fn rfc7606_ignored_attributes() {
    // LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST from an external peer are dropped without an error.
    let update = outcome(
        "40 05 04 00000064 80 09 04 c0000201 80 0a 04 c0000201",
        &ctx4(),
    );
    assert!(update.errors.is_empty());
    assert_eq!(
        (
            update.attributes.local_pref,
            update.attributes.originator_id
        ),
        (None, None)
    );
    assert!(update.attributes.cluster_list.is_empty());
    assert_eq!(
        &update.raw_attributes[..],
        &hex("40010100 40020602010000fde9 400304c0000201")[..]
    );
    // AS4_PATH from a 4-octet speaker is discarded and reported for the log (RFC 6793 §6).
    let update = outcome("c0 11 06 02 01 0000fde9", &ctx4());
    assert_discarded(&update, 17, 9);
    assert!(update.attributes.as4_path.is_none());
    // NEXT_HOP in an UPDATE without NLRI field is ignored, even when malformed (RFC 4760 §3).
    let bytes = upd("40 01 01 00 40 02 00 40 03 01 00", "");
    let update = decode_update(&bytes, &ctx4());
    assert!(update.errors.is_empty() && update.attributes.next_hop.is_none());
}

// ---------------------------------------------------------------------------------------------------------
// AS4 (RFC 6793)

#[test]
fn as_trans_encoding_and_as4_merge() {
    // On a 2-octet session, AS 4200000000 is sent as AS_TRANS with an AS4_PATH, and AGGREGATOR likewise
    // with AS4_AGGREGATOR.
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::from_sequence(vec![65001, 4_200_000_000])),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        aggregator: Some(Aggregator {
            asn: 4_200_000_000,
            address: Ipv4Addr::new(192, 0, 2, 9),
        }),
        ..PathAttributes::default()
    };
    let update = Update {
        attributes: attrs.clone(),
        nlri: vec![net("10.0.0.0/8")],
        ..Update::default()
    };
    let old = CodecContext::default();
    let bytes = Message::Update(update).to_bytes(&old).unwrap();
    let expected = msg("004e 02 0000 0035
        40 01 01 00
        40 02 06 02 02 fde9 5ba0
        40 03 04 c0000201
        c0 07 06 5ba0 c0000209
        c0 11 0a 02 02 0000fde9 fa56ea00
        c0 12 08 fa56ea00 c0000209
        08 0a");
    assert_eq!(&bytes[..], &expected[..]);
    let mut decoded = decode_update(&bytes, &old);
    assert_eq!(
        decoded.attributes.as_path,
        Some(AsPath::from_sequence(vec![65001, 23456]))
    );
    decoded.attributes.merge_as4();
    assert_eq!(decoded.attributes, attrs);
}

#[test]
fn as4_merge_rules() {
    let seq = |asns: &[u32]| AsSegment {
        kind: SegmentType::Sequence,
        asns: asns.to_vec(),
    };
    let set = |asns: &[u32]| AsSegment {
        kind: SegmentType::Set,
        asns: asns.to_vec(),
    };
    // AS_PATH longer than AS4_PATH: leading ASes of AS_PATH are kept.
    let as_path = AsPath {
        segments: vec![seq(&[65001, 23456, 23456]), set(&[1, 2])],
    };
    let as4 = AsPath {
        segments: vec![seq(&[4_200_000_000, 4_200_000_001]), set(&[1, 2])],
    };
    assert_eq!(
        as_path.merge_as4(&as4),
        AsPath {
            segments: vec![seq(&[65001, 4_200_000_000, 4_200_000_001]), set(&[1, 2])]
        }
    );
    // AS4_PATH longer than AS_PATH: AS4_PATH is ignored.
    let short = AsPath::from_sequence(vec![23456]);
    assert_eq!(short.merge_as4(&AsPath::from_sequence(vec![1, 2])), short);
    // Leading confederation segments are kept.
    let confed = AsSegment {
        kind: SegmentType::ConfedSequence,
        asns: vec![64512],
    };
    let as_path = AsPath {
        segments: vec![confed.clone(), seq(&[23456])],
    };
    assert_eq!(
        as_path.merge_as4(&AsPath::from_sequence(vec![4_200_000_000])),
        AsPath {
            segments: vec![confed, seq(&[4_200_000_000])]
        }
    );
    // AGGREGATOR other than AS_TRANS: AS4_PATH and AS4_AGGREGATOR are ignored.
    let mut attrs = PathAttributes {
        as_path: Some(AsPath::from_sequence(vec![65001, 23456])),
        aggregator: Some(Aggregator {
            asn: 65001,
            address: Ipv4Addr::new(192, 0, 2, 1),
        }),
        as4_path: Some(AsPath::from_sequence(vec![4_200_000_000])),
        as4_aggregator: Some(Aggregator {
            asn: 4_200_000_000,
            address: Ipv4Addr::new(192, 0, 2, 1),
        }),
        ..PathAttributes::default()
    };
    attrs.merge_as4();
    assert_eq!(
        attrs.as_path,
        Some(AsPath::from_sequence(vec![65001, 23456]))
    );
    assert_eq!(attrs.aggregator.unwrap().asn, 65001);
    assert!(attrs.as4_path.is_none() && attrs.as4_aggregator.is_none());
    // Path helpers.
    let path = AsPath {
        segments: vec![seq(&[1, 2]), set(&[3, 4, 5])],
    };
    assert_eq!(
        (path.path_len(), path.first_asn(), path.contains(4)),
        (3, Some(1), true)
    );
}

#[test]
fn long_as_path_segments_are_split() {
    let path = AsPath::from_sequence((1..=300).collect());
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(path.clone()),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..PathAttributes::default()
        },
        nlri: vec![net("10.0.0.0/8")],
        ..Update::default()
    };
    let bytes = Message::Update(update).to_bytes(&ctx4()).unwrap();
    let decoded = decode_update(&bytes, &ctx4());
    let segments = &decoded.attributes.as_path.as_ref().unwrap().segments;
    assert_eq!(
        segments.iter().map(|s| s.asns.len()).collect::<Vec<_>>(),
        vec![255, 45]
    );
    assert_eq!(decoded.attributes.as_path.unwrap().path_len(), 300);
}

// ---------------------------------------------------------------------------------------------------------
// Splitting and size limits

fn slash24s(count: u32) -> Vec<Nlri> {
    (0..count)
        .map(|i| {
            Nlri::from(ipnet::Ipv4Net::new(Ipv4Addr::from((10 << 24) | (i << 8)), 24).unwrap())
        })
        .collect()
}

#[test]
fn announce_splits_to_the_message_size() {
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::from_sequence(vec![65001])),
        ..PathAttributes::default()
    };
    let prefixes = slash24s(5000);
    let ctx = ctx4();
    let updates = Update::announce(
        &attrs,
        NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)),
        &prefixes,
        &ctx,
    )
    .unwrap();
    // 4096 - 19 - 4 - 20 octets of attributes leave 4053 octets: 1013 /24s per UPDATE.
    assert_eq!(
        updates.iter().map(|u| u.nlri.len()).collect::<Vec<_>>(),
        vec![1013, 1013, 1013, 1013, 948]
    );
    let mut all = Vec::new();
    for update in &updates {
        let bytes = Message::Update(update.clone()).to_bytes(&ctx).unwrap();
        assert!(bytes.len() <= 4096);
        let decoded = decode_update(&bytes, &ctx);
        assert_eq!(decoded.raw_attributes, update.raw_attributes);
        all.extend(decoded.nlri);
    }
    assert_eq!(all, prefixes);
    // With Extended Message everything fits in one.
    let ext = CodecContext {
        extended_message: true,
        ..ctx
    };
    assert_eq!(
        Update::announce(
            &attrs,
            NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)),
            &prefixes,
            &ext
        )
        .unwrap()
        .len(),
        1
    );
    // Withdrawals likewise: 4096 - 23 = 4073 octets, 1018 /24s.
    let withdrawals = Update::withdraw(&prefixes, &ctx).unwrap();
    assert_eq!(withdrawals[0].withdrawn.len(), 1018);
    assert_eq!(
        withdrawals.iter().map(|u| u.withdrawn.len()).sum::<usize>(),
        5000
    );
}

#[test]
fn announce_ipv6_uses_mp_reach_and_checks_families() {
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::default()),
        ..PathAttributes::default()
    };
    let nh = NextHop::V6 {
        global: "2001:db8::1".parse().unwrap(),
        link_local: None,
    };
    let prefixes: Vec<Nlri> = (0..2000u32)
        .map(|i| {
            Nlri::from(
                ipnet::Ipv6Net::new(
                    Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64)),
                    64,
                )
                .unwrap(),
            )
        })
        .collect();
    let ctx = ctx4();
    let updates = Update::announce(&attrs, nh, &prefixes, &ctx).unwrap();
    assert!(updates.len() > 1);
    let mut all = Vec::new();
    for update in updates {
        assert!(update.nlri.is_empty() && update.attributes.next_hop.is_none());
        let bytes = Message::Update(update).to_bytes(&ctx).unwrap();
        assert!(bytes.len() <= 4096);
        all.extend(decode_update(&bytes, &ctx).mp_reach.unwrap().nlri);
    }
    assert_eq!(all, prefixes);
    assert_eq!(
        Update::announce(&attrs, NextHop::V4(Ipv4Addr::LOCALHOST), &prefixes, &ctx),
        Err(EncodeError::NextHopFamily(AfiSafi::IPV6_UNICAST))
    );
    assert_eq!(
        Update::announce(&attrs, nh, &[prefixes[0], net("10.0.0.0/8")], &ctx),
        Err(EncodeError::MixedFamilies)
    );
    // IPv4 over an IPv6 next hop only with RFC 8950 negotiated.
    assert!(Update::announce(&attrs, nh, &[net("10.0.0.0/8")], &ctx).is_err());
    let enh = CodecContext {
        extended_next_hop: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
        ..ctx
    };
    let updates = Update::announce(&attrs, nh, &[net("10.0.0.0/8")], &enh).unwrap();
    assert_eq!(
        updates[0].mp_reach.as_ref().unwrap().afi_safi,
        AfiSafi::IPV4_UNICAST
    );
}

#[test]
fn oversized_update_is_an_encode_error() {
    let update = Update {
        attributes: PathAttributes {
            communities: (0..1100).map(Community).collect(),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = Message::Update(update.clone())
        .encode(&ctx4(), &mut out)
        .unwrap_err();
    assert!(matches!(
        err,
        EncodeError::MessageTooLarge { max: 4096, .. }
    ));
    assert_eq!(&out[..], b"keep");
    let ext = CodecContext {
        extended_message: true,
        ..ctx4()
    };
    assert!(Message::Update(update).encode(&ext, &mut out).is_ok());
    // An MP_REACH next hop the receiver would reject is refused.
    let bad_nh = Update {
        mp_reach: Some(MpReach {
            afi_safi: AfiSafi::IPV6_UNICAST,
            next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)),
            nlri: vec![net("2001:db8::/32")],
        }),
        ..Update::default()
    };
    assert_eq!(
        Message::Update(bad_nh).to_bytes(&ctx4()),
        Err(EncodeError::NextHopFamily(AfiSafi::IPV6_UNICAST))
    );
    // A v6 prefix cannot go in the NLRI field.
    let bad = Update {
        nlri: vec![net("2001:db8::/32")],
        ..Update::default()
    };
    assert_eq!(
        Message::Update(bad).to_bytes(&ctx4()),
        Err(EncodeError::NotIpv4)
    );
}

#[test]
fn negotiate_takes_what_both_sides_advertise() {
    let id = Ipv4Addr::new(192, 0, 2, 1);
    let local = Open::new(
        65001,
        90,
        id,
        vec![
            Capability::FourOctetAs(65001),
            Capability::AddPath(vec![
                AddPathFamily {
                    afi_safi: AfiSafi::IPV4_UNICAST,
                    mode: AddPathMode::Receive,
                },
                AddPathFamily {
                    afi_safi: AfiSafi::IPV6_UNICAST,
                    mode: AddPathMode::Both,
                },
            ]),
            Capability::ExtendedNextHop(vec![ExtendedNextHopFamily {
                nlri: AfiSafi::IPV4_UNICAST,
                next_hop_afi: Afi::IPV6,
            }]),
            Capability::ExtendedMessage,
        ],
    );
    let remote = Open::new(
        65002,
        90,
        id,
        vec![
            Capability::AddPath(vec![
                AddPathFamily {
                    afi_safi: AfiSafi::IPV4_UNICAST,
                    mode: AddPathMode::Both,
                },
                AddPathFamily {
                    afi_safi: AfiSafi::IPV6_UNICAST,
                    mode: AddPathMode::Receive,
                },
            ]),
            Capability::ExtendedNextHop(vec![ExtendedNextHopFamily {
                nlri: AfiSafi::IPV4_UNICAST,
                next_hop_afi: Afi::IPV6,
            }]),
        ],
    );
    let ctx = CodecContext::negotiate(&local, &remote);
    assert!(!ctx.four_octet_as && !ctx.extended_message && !ctx.ibgp);
    assert_eq!(
        ctx.add_path_receive.iter().collect::<Vec<_>>(),
        vec![AfiSafi::IPV4_UNICAST]
    );
    assert_eq!(
        ctx.add_path_send.iter().collect::<Vec<_>>(),
        vec![AfiSafi::IPV6_UNICAST]
    );
    assert!(ctx.extended_next_hop.contains(AfiSafi::IPV4_UNICAST));
    assert_eq!(ctx.max_message_len(), 4096);
    // A received ADD-PATH mode outside 1-3 makes the capability uninterpreted (RFC 7911 §4).
    let bytes = msg("0025 01 04 fde9 005a c0000201 08 02 06 45 04 0001 01 09");
    let Message::Open(open) = decode(&bytes, &CodecContext::default()).unwrap() else {
        panic!()
    };
    assert!(matches!(
        open.capabilities[0],
        Capability::Unknown { code: 69, .. }
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Captures from other daemons

/// Whether the capture file `name` in `daemon_dir` was an iBGP session: the README lists each file
/// under a heading "## iBGP, ..." or "## eBGP, ...".
fn capture_is_ibgp(daemon_dir: &std::path::Path, name: &str) -> bool {
    let readme = std::fs::read_to_string(daemon_dir.join("README.md")).unwrap();
    let mut ibgp = None;
    for line in readme.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            ibgp = Some(heading.starts_with("iBGP"));
        } else if line.contains(&format!("`{name}`")) {
            return ibgp.unwrap_or_else(|| panic!("{name}: no iBGP/eBGP heading above it"));
        }
    }
    panic!("{name} is not listed in {}/README.md", daemon_dir.display())
}

/// The context a capture was sent under: what the sender's OPEN offers, mirrored (we receive what it
/// sends), iBGP or eBGP as captured. Before any OPEN, a 4-octet AS session (all daemons we test against
/// speak it).
fn capture_context(open: Option<&Open>, ibgp: bool) -> CodecContext {
    let Some(open) = open else {
        return CodecContext { ibgp, ..ctx4() };
    };
    let mirror = Open {
        capabilities: open
            .capabilities
            .iter()
            .map(|cap| match cap {
                Capability::AddPath(families) => Capability::AddPath(
                    families
                        .iter()
                        .map(|f| AddPathFamily {
                            afi_safi: f.afi_safi,
                            mode: match f.mode {
                                AddPathMode::Send => AddPathMode::Receive,
                                AddPathMode::Receive => AddPathMode::Send,
                                AddPathMode::Both => AddPathMode::Both,
                            },
                        })
                        .collect(),
                ),
                other => other.clone(),
            })
            .collect(),
        ..open.clone()
    };
    CodecContext {
        ibgp,
        ..CodecContext::negotiate(&mirror, open)
    }
}

/// Every `tests/fixtures/<daemon>/*.hex` file (hex of one or more messages; `#` starts a comment, files
/// of a daemon are one capture in name order) decodes without error or RFC 7606 fault under the context
/// of the last OPEN before it; canonical messages (KEEPALIVE, NOTIFICATION, ROUTE-REFRESH) re-encode to
/// the same octets; the content matches what the lab announced (see each README).
#[test]
fn daemon_captures_decode() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let Ok(daemons) = std::fs::read_dir(&root) else {
        return;
    };
    let known: Vec<Nlri> = [
        "10.1.0.0/24",
        "10.1.1.0/24",
        "10.2.0.0/24",
        "2001:db8:100::/48",
    ]
    .map(net)
    .to_vec();
    let lab_communities = vec![Community::new(65001, 100), Community::new(65001, 200)];
    let (mut files, mut announced) = (0, 0);
    for daemon in daemons {
        let daemon = daemon.unwrap().path();
        if !daemon.is_dir() {
            continue;
        }
        let mut paths: Vec<_> = std::fs::read_dir(&daemon)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "hex"))
            .collect();
        paths.sort();
        let mut open = None;
        for path in paths {
            files += 1;
            let name = path.display().to_string();
            let file_name = path.file_name().unwrap().to_string_lossy().to_string();
            let ibgp = capture_is_ibgp(&daemon, &file_name);
            let text = std::fs::read_to_string(&path).unwrap();
            let digits: String = text
                .lines()
                .map(|line| line.split('#').next().unwrap_or(""))
                .flat_map(|line| line.chars())
                .filter(char::is_ascii_hexdigit)
                .collect();
            let mut buf = hex(&digits);
            assert!(!buf.is_empty(), "{name}: no hex");
            while !buf.is_empty() {
                let ctx = capture_context(open.as_ref(), ibgp);
                let len = message_length(&buf, &ctx)
                    .unwrap_or_else(|e| panic!("{name}: framing: {e}"))
                    .unwrap_or_else(|| panic!("{name}: truncated message"));
                let bytes: Vec<u8> = buf.drain(..len).collect();
                let message = decode(&bytes, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
                match &message {
                    Message::Open(o) => open = Some(o.clone()),
                    Message::Update(u) => {
                        assert!(u.errors.is_empty(), "{name}: {:?}", u.errors);
                        let nlri: Vec<Nlri> = u
                            .nlri
                            .iter()
                            .chain(u.mp_reach.iter().flat_map(|mp| &mp.nlri))
                            .copied()
                            .collect();
                        assert!(nlri.iter().all(|n| known.contains(n)), "{name}: {nlri:?}");
                        if nlri.iter().any(|n| *n != net("10.2.0.0/24")) {
                            announced += 1;
                            assert_eq!(u.attributes.communities, lab_communities, "{name}");
                            assert_eq!(u.attributes.large_communities.len(), 1, "{name}");
                            // LOCAL_PREF is sent and read on iBGP only (RFC 4271 §5.1.5).
                            assert_eq!(u.attributes.local_pref.is_some(), ibgp, "{name}");
                        }
                    }
                    Message::Notification(n) => {
                        assert_eq!(
                            n.subcode,
                            ErrorSubcode::Cease(CeaseSubcode::AdministrativeShutdown),
                            "{name}"
                        );
                        assert_eq!(message.to_bytes(&ctx).unwrap().to_vec(), bytes, "{name}");
                    }
                    Message::Keepalive | Message::RouteRefresh(_) => {
                        assert_eq!(message.to_bytes(&ctx).unwrap().to_vec(), bytes, "{name}");
                    }
                }
            }
        }
    }
    eprintln!(
        "decoded {files} capture files ({announced} announcements) under {}",
        root.display()
    );
}
