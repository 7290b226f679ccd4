//! The main captured daemon messages (bgp/tests/fixtures, see each README) decode to exactly what
//! the lab configured: Reef's codec read against the daemons' own bytes.

use std::path::Path;

use reef_bgp::wire::{
    AfiSafi, AsPath, Capability, CeaseSubcode, CodecContext, Community, ErrorCode, ErrorSubcode,
    LargeCommunity, Message, NextHop, Nlri, Open, Origin, RouteRefreshSubtype, Update, decode,
};

fn bytes(daemon: &str, file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bgp/tests/fixtures")
        .join(daemon)
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn open(daemon: &str, file: &str) -> Open {
    match decode(&bytes(daemon, file), &CodecContext::default()) {
        Ok(Message::Open(open)) => open,
        other => panic!("{daemon}/{file}: {other:?}"),
    }
}

/// Decodes an UPDATE under the context both sides would negotiate with the daemon's OPEN `open_file`
/// (the captured peers advertised the same families and the 4-octet AS capability), as an iBGP or
/// eBGP session as captured (see the README's headings): LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST
/// are read only on iBGP.
fn update(daemon: &str, open_file: &str, file: &str, ibgp: bool) -> Update {
    let open = open(daemon, open_file);
    let ctx = CodecContext {
        ibgp,
        ..CodecContext::negotiate(&open, &open)
    };
    match decode(&bytes(daemon, file), &ctx) {
        Ok(Message::Update(update)) => {
            assert!(
                update.errors.is_empty(),
                "{daemon}/{file}: {:?}",
                update.errors
            );
            update
        }
        other => panic!("{daemon}/{file}: {other:?}"),
    }
}

fn nlri(list: &[&str]) -> Vec<Nlri> {
    list.iter().map(|p| Nlri::new(p.parse().unwrap())).collect()
}

fn lab_communities() -> Vec<Community> {
    vec![Community::new(65001, 100), Community::new(65001, 200)]
}

fn large(asn: u32) -> Vec<LargeCommunity> {
    vec![LargeCommunity {
        global_admin: asn,
        local_data1: 1,
        local_data2: 2,
    }]
}

#[test]
fn bird_ebgp_open_uses_as_trans_and_four_octet_capability() {
    let open = open("bird", "01-open.hex");
    assert_eq!(open.my_as, 23456);
    assert_eq!(open.four_octet_as(), Some(4_200_000_002));
    assert_eq!(open.asn(), 4_200_000_002);
    assert_eq!(open.hold_time, 9);
    for cap in [
        Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
        Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
        Capability::RouteRefresh,
        Capability::EnhancedRouteRefresh,
    ] {
        assert!(
            open.capabilities.contains(&cap),
            "{cap:?} in {:?}",
            open.capabilities
        );
    }
}

#[test]
fn frr_ebgp_update_carries_the_lab_attributes() {
    let u = update("frr", "01-open.hex", "03-update.hex", false);
    assert_eq!(u.attributes.origin, Some(Origin::Igp));
    assert_eq!(
        u.attributes.as_path,
        Some(AsPath::from_sequence(vec![4_200_000_001]))
    );
    assert_eq!(u.attributes.med, Some(50));
    assert_eq!(u.attributes.local_pref, None);
    assert_eq!(u.attributes.communities, lab_communities());
    assert_eq!(u.attributes.large_communities, large(4_200_000_001));
    assert_eq!(u.nlri, nlri(&["10.1.0.0/24", "10.1.1.0/24"]));
    let next_hop = u.attributes.next_hop.expect("NEXT_HOP");
    assert_eq!(
        next_hop.octets()[3],
        1,
        "the sender's link address: {next_hop}"
    );

    // IPv6 in MP_REACH_NLRI with a global and a link-local next hop.
    let u = update("frr", "01-open.hex", "04-update.hex", false);
    let reach = u.mp_reach.expect("MP_REACH_NLRI");
    assert_eq!(reach.afi_safi, AfiSafi::IPV6_UNICAST);
    assert_eq!(reach.nlri, nlri(&["2001:db8:100::/48"]));
    assert!(
        matches!(reach.next_hop, NextHop::V6 { link_local: Some(ll), .. } if ll.segments()[0] == 0xfe80),
        "{:?}",
        reach.next_hop
    );
}

#[test]
fn frr_ibgp_update_has_local_pref_and_empty_path() {
    let u = update("frr", "15-open.hex", "17-update.hex", true);
    assert_eq!(u.attributes.local_pref, Some(100));
    assert_eq!(u.attributes.as_path.map(|p| p.path_len()), Some(0));
    assert_eq!(u.attributes.med, Some(50));
    assert_eq!(u.attributes.large_communities, large(65001));
}

#[test]
fn bird_end_of_rib_withdrawals_and_route_refresh() {
    let eor = update("bird", "01-open.hex", "04-update.hex", false);
    assert_eq!(eor.end_of_rib(), Some(AfiSafi::IPV4_UNICAST));
    let eor6 = update("bird", "01-open.hex", "06-update.hex", false);
    assert_eq!(eor6.end_of_rib(), Some(AfiSafi::IPV6_UNICAST));
    assert_eq!(
        update("bird", "01-open.hex", "07-update.hex", false).withdrawn,
        nlri(&["10.1.1.0/24"])
    );
    let gone = update("bird", "01-open.hex", "08-update.hex", false)
        .mp_unreach
        .expect("MP_UNREACH_NLRI");
    assert_eq!(gone.withdrawn, nlri(&["2001:db8:100::/48"]));
    match decode(
        &bytes("bird", "09-route-refresh.hex"),
        &CodecContext::default(),
    ) {
        Ok(Message::RouteRefresh(rr)) => {
            assert_eq!(AfiSafi::new(rr.afi, rr.safi), AfiSafi::IPV4_UNICAST);
            assert_eq!(rr.subtype, RouteRefreshSubtype::Normal);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gobgp_originates_incomplete() {
    let u = update("gobgp", "01-open.hex", "03-update.hex", false);
    assert_eq!(u.attributes.origin, Some(Origin::Incomplete));
    assert_eq!(
        u.attributes.as_path,
        Some(AsPath::from_sequence(vec![4_200_000_003]))
    );
    assert_eq!(u.attributes.communities, lab_communities());
    assert_eq!(u.nlri, nlri(&["10.1.0.0/24", "10.1.1.0/24"]));
}

#[test]
fn exabgp_shutdown_notification_carries_a_shutdown_communication() {
    match decode(
        &bytes("exabgp", "11-notification.hex"),
        &CodecContext::default(),
    ) {
        Ok(Message::Notification(n)) => {
            assert_eq!(n.code, ErrorCode::Cease);
            assert_eq!(
                n.subcode,
                ErrorSubcode::Cease(CeaseSubcode::AdministrativeShutdown)
            );
            assert_eq!(
                n.shutdown_message().as_deref(),
                Some("Administrative Shutdown")
            );
        }
        other => panic!("{other:?}"),
    }
    // ExaBGP withdraws IPv6 with the other path attributes still attached.
    let u = update("exabgp", "01-open.hex", "08-update.hex", false);
    assert_eq!(
        u.mp_unreach.expect("MP_UNREACH_NLRI").withdrawn,
        nlri(&["2001:db8:100::/48"])
    );
    assert!(u.mp_reach.is_none() && u.nlri.is_empty());
}
