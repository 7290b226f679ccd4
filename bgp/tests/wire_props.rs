//! Property tests: decode(encode(m)) == m for generated messages under contexts with and without 4-octet
//! AS and ADD-PATH, and no panic on random bytes, truncations and corruptions of valid messages.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use reef_bgp::wire::*;

fn ctx_strategy() -> impl Strategy<Value = CodecContext> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(four_octet_as, add_path, ibgp, extended_message)| {
            let families: AfiSafiSet = if add_path {
                [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
                    .into_iter()
                    .collect()
            } else {
                AfiSafiSet::EMPTY
            };
            CodecContext {
                four_octet_as,
                extended_message,
                add_path_receive: families,
                add_path_send: families,
                ibgp,
                ..CodecContext::default()
            }
        },
    )
}

fn v4_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(addr, len)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc()))
}

fn v6_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(addr, len)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc()))
}

fn nlris(
    prefix: BoxedStrategy<IpNet>,
    add_path: bool,
    max: usize,
) -> impl Strategy<Value = Vec<Nlri>> {
    vec((prefix, any::<u32>()), 0..max).prop_map(move |items| {
        items
            .into_iter()
            .map(|(p, id)| {
                if add_path {
                    Nlri::with_path_id(p, id)
                } else {
                    Nlri::new(p)
                }
            })
            .collect()
    })
}

fn asn(four_octet: bool) -> BoxedStrategy<u32> {
    if four_octet {
        (1u32..).boxed()
    } else {
        (1u32..=65535).boxed()
    }
}

fn as_path(four_octet: bool) -> impl Strategy<Value = AsPath> {
    let kind = prop_oneof![
        Just(SegmentType::Set),
        Just(SegmentType::Sequence),
        Just(SegmentType::ConfedSequence),
        Just(SegmentType::ConfedSet)
    ];
    vec((kind, vec(asn(four_octet), 1..8)), 0..4).prop_map(|segments| AsPath {
        segments: segments
            .into_iter()
            .map(|(kind, asns)| AsSegment { kind, asns })
            .collect(),
    })
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    (1u32..0xe000_0000).prop_map(Ipv4Addr::from)
}

fn attributes(ctx: CodecContext, with_next_hop: bool) -> impl Strategy<Value = PathAttributes> {
    let four = ctx.four_octet_as;
    let ibgp = ctx.ibgp;
    let origin = prop_oneof![
        Just(Origin::Igp),
        Just(Origin::Egp),
        Just(Origin::Incomplete)
    ];
    let aggregator = (asn(four), any::<u32>()).prop_map(|(asn, a)| Aggregator {
        asn,
        address: Ipv4Addr::from(a),
    });
    let large = (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(g, l1, l2)| LargeCommunity {
        global_admin: g,
        local_data1: l1,
        local_data2: l2,
    });
    let unknown = proptest::collection::btree_map(100u8..=120, vec(any::<u8>(), 0..10), 0..3);
    (
        (
            origin,
            as_path(four),
            unicast_v4(),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            any::<bool>(),
        ),
        (
            option::of(aggregator),
            vec(any::<u32>(), 0..5),
            option::of(any::<u32>()),
            vec(any::<u32>(), 0..4),
        ),
        (vec(any::<u64>(), 0..4), vec(large, 0..3), unknown),
    )
        .prop_map(
            move |(
                (origin, as_path, next_hop, med, local_pref, atomic),
                (aggregator, communities, originator, cluster),
                (ext, large, unknown),
            )| {
                let unknown: BTreeMap<u8, Vec<u8>> = unknown;
                PathAttributes {
                    origin: Some(origin),
                    as_path: Some(as_path),
                    next_hop: with_next_hop.then_some(next_hop),
                    med,
                    local_pref: local_pref.filter(|_| ibgp),
                    atomic_aggregate: atomic,
                    aggregator,
                    communities: communities.into_iter().map(Community).collect(),
                    originator_id: originator.filter(|_| ibgp).map(Ipv4Addr::from),
                    cluster_list: if ibgp {
                        cluster.into_iter().map(Ipv4Addr::from).collect()
                    } else {
                        Vec::new()
                    },
                    extended_communities: ext.into_iter().map(ExtendedCommunity).collect(),
                    as4_path: None,
                    as4_aggregator: None,
                    large_communities: large,
                    unknown: unknown
                        .into_iter()
                        .map(|(type_code, value)| RawAttribute {
                            flags: 0xe0,
                            type_code,
                            value: Bytes::from(value),
                        })
                        .collect(),
                }
            },
        )
}

fn update(ctx: CodecContext) -> impl Strategy<Value = Update> {
    let add_path = !ctx.add_path_send.is_empty();
    let next_hop6 = (any::<u128>(), option::of(any::<u128>())).prop_map(|(g, ll)| NextHop::V6 {
        global: Ipv6Addr::from(g),
        link_local: ll.map(Ipv6Addr::from),
    });
    let mp_reach =
        option::of((next_hop6, nlris(v6_prefix().boxed(), add_path, 10))).prop_map(|mp| {
            mp.map(|(next_hop, nlri)| MpReach {
                afi_safi: AfiSafi::IPV6_UNICAST,
                next_hop,
                nlri,
            })
        });
    let mp_unreach = option::of(nlris(v6_prefix().boxed(), add_path, 10)).prop_map(|w| {
        w.map(|withdrawn| MpUnreach {
            afi_safi: AfiSafi::IPV6_UNICAST,
            withdrawn,
        })
    });
    (
        nlris(v4_prefix().boxed(), add_path, 20),
        nlris(v4_prefix().boxed(), add_path, 20),
        mp_reach,
        mp_unreach,
    )
        .prop_flat_map(move |(withdrawn, nlri, mp_reach, mp_unreach)| {
            let with_next_hop = !nlri.is_empty();
            attributes(ctx, with_next_hop).prop_map(move |attributes| Update {
                withdrawn: withdrawn.clone(),
                attributes,
                nlri: nlri.clone(),
                mp_reach: mp_reach.clone(),
                mp_unreach: mp_unreach.clone(),
                ..Update::default()
            })
        })
}

fn capability() -> impl Strategy<Value = Capability> {
    let afi_safi = (any::<u16>(), any::<u8>()).prop_map(|(a, s)| AfiSafi::new(Afi(a), Safi(s)));
    let mode = prop_oneof![
        Just(AddPathMode::Receive),
        Just(AddPathMode::Send),
        Just(AddPathMode::Both)
    ];
    prop_oneof![
        afi_safi.clone().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        Just(Capability::EnhancedRouteRefresh),
        Just(Capability::ExtendedMessage),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..4096,
            vec((afi_safi.clone(), any::<bool>()), 0..4)
        )
            .prop_map(|(r, n, t, f)| {
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: r,
                    notification: n,
                    restart_time: t,
                    families: f
                        .into_iter()
                        .map(|(afi_safi, fwd)| GracefulRestartFamily {
                            afi_safi,
                            forwarding_preserved: fwd,
                        })
                        .collect(),
                })
            }),
        vec((afi_safi.clone(), any::<u16>()), 0..4).prop_map(|f| Capability::ExtendedNextHop(
            f.into_iter()
                .map(|(nlri, nh)| ExtendedNextHopFamily {
                    nlri,
                    next_hop_afi: Afi(nh)
                })
                .collect()
        )),
        vec((afi_safi, mode), 0..4).prop_map(|f| Capability::AddPath(
            f.into_iter()
                .map(|(afi_safi, mode)| AddPathFamily { afi_safi, mode })
                .collect()
        )),
        ("[a-z0-9.-]{0,20}", "[a-z0-9.-]{0,20}")
            .prop_map(|(hostname, domain)| Capability::Fqdn { hostname, domain }),
        (100u8..=200, vec(any::<u8>(), 0..10)).prop_map(|(code, value)| Capability::Unknown {
            code,
            value: Bytes::from(value)
        }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        1u16..,
        any::<u16>().prop_filter("hold time 1-2", |h| *h != 1 && *h != 2),
        1u32..,
        option::of(1u32..),
        vec(capability(), 0..10),
    )
        .prop_map(|(my_as, hold_time, id, four_octet, mut capabilities)| {
            if let Some(asn) = four_octet {
                capabilities.insert(0, Capability::FourOctetAs(asn));
            }
            Open {
                version: 4,
                my_as,
                hold_time,
                bgp_id: Ipv4Addr::from(id),
                capabilities,
            }
        })
}

fn message(ctx: CodecContext) -> impl Strategy<Value = Message> {
    prop_oneof![
        open().prop_map(Message::Open),
        update(ctx).prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..100)).prop_map(|(code, subcode, data)| {
            Message::Notification(Notification::from_wire(code, subcode, Bytes::from(data)))
        }),
        Just(Message::Keepalive),
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(afi, subtype, safi)| {
            Message::RouteRefresh(RouteRefresh {
                afi: Afi(afi),
                safi: Safi(safi),
                subtype: RouteRefreshSubtype::from_u8(subtype),
            })
        }),
    ]
}

fn ctx_and_message() -> impl Strategy<Value = (CodecContext, Message)> {
    ctx_strategy().prop_flat_map(|ctx| (Just(ctx), message(ctx)))
}

/// Decoding sets `raw_attributes`; it is checked separately.
fn without_raw(message: Message) -> Message {
    match message {
        Message::Update(update) => Message::Update(Update {
            raw_attributes: Bytes::new(),
            ..update
        }),
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_identity((ctx, message) in ctx_and_message()) {
        let bytes = message.to_bytes(&ctx).unwrap();
        prop_assert_eq!(message_length(&bytes, &ctx).unwrap(), Some(bytes.len()));
        let decoded = decode(&bytes, &ctx).unwrap();
        if let Message::Update(update) = &decoded {
            prop_assert!(update.errors.is_empty() && !update.treat_as_withdraw);
            // The raw attribute set is exactly what the encoder wrote for the non-MP attributes.
            let mut raw = bytes::BytesMut::new();
            update.attributes.encode(&ctx, &mut raw).unwrap();
            prop_assert_eq!(&update.raw_attributes[..], &raw[..]);
        }
        prop_assert_eq!(without_raw(decoded), message);
    }

    #[test]
    fn truncated_and_corrupted_messages_never_panic((ctx, message) in ctx_and_message(), flips in vec((any::<usize>(), any::<u8>()), 1..4)) {
        let bytes = message.to_bytes(&ctx).unwrap();
        for len in 0..bytes.len() {
            let prefix = &bytes[..len];
            // Framing of a prefix either waits for more or reports an error; it never claims a message.
            if let Ok(Some(n)) = message_length(prefix, &ctx) {
                prop_assert!(n <= len);
            }
            prop_assert!(decode(prefix, &ctx).is_err());
        }
        let mut corrupted = bytes.to_vec();
        for (at, value) in flips {
            let at = at % corrupted.len();
            corrupted[at] = value;
        }
        let _ = message_length(&corrupted, &ctx);
        if let Ok(Message::Update(update)) = decode(&corrupted, &ctx) {
            // Whatever survives re-encodes (a decoded message is always encodable, if it fits).
            let _ = Message::Update(update).to_bytes(&CodecContext { extended_message: true, ..ctx });
        }
    }

    #[test]
    fn random_bytes_never_panic(ctx in ctx_strategy(), msg_type in 1u8..=6, body in vec(any::<u8>(), 0..300), raw in vec(any::<u8>(), 0..64)) {
        // A valid header with a random body reaches every body decoder.
        let mut bytes = vec![0xff; 16];
        bytes.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        bytes.push(msg_type);
        bytes.extend_from_slice(&body);
        let _ = message_length(&bytes, &ctx);
        let _ = decode(&bytes, &ctx).map_err(|e| e.notification());
        let _ = message_length(&raw, &ctx);
        let _ = decode(&raw, &ctx);
    }

    #[test]
    fn random_attribute_lists_never_panic(ctx in ctx_strategy(), attrs in vec((any::<u8>(), 0u8..=40, 0u8..8, vec(any::<u8>(), 0..12)), 0..8), nlri in vec(any::<u8>(), 0..10)) {
        // Structured random attributes: plausible flags and type codes with random values.
        let mut field = Vec::new();
        for (flags, type_code, len, value) in attrs {
            field.extend_from_slice(&[flags & 0xe0, type_code, len]);
            field.extend_from_slice(&value);
        }
        let mut bytes = vec![0xff; 16];
        bytes.extend_from_slice(&u16::try_from(23 + field.len() + nlri.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&[2, 0, 0]);
        bytes.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&field);
        bytes.extend_from_slice(&nlri);
        match decode(&bytes, &ctx) {
            Ok(Message::Update(update)) => {
                // Treat-as-withdraw leaves nothing announced.
                if update.treat_as_withdraw {
                    prop_assert!(update.nlri.is_empty() && update.mp_reach.is_none() && update.attributes.is_empty());
                }
            }
            Ok(other) => prop_assert!(false, "not an UPDATE: {other:?}"),
            Err(e) => prop_assert_eq!(e.notification().code, ErrorCode::UpdateMessage),
        }
    }
}
