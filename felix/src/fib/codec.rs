//! Netlink encoding of FIB operations and decoding of the kernel's answers: pure functions on
//! bytes, so they are tested without a socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::diff::FibOp;
use super::model::{NextHop, REEF_ROUTE_PROTOCOL, Route, RouteKind};

/// Length of `struct nlmsghdr`.
const NLMSG_HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended ACK's human-readable error text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why a desired route cannot be sent to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoute {
    #[error("destination {0} has host bits set")]
    HostBits(IpNet),
    #[error("unicast route without next hops")]
    NoNextHop,
    #[error("next hop with neither gateway nor interface")]
    EmptyNextHop,
    #[error("next hop weight {0} outside 1..=256")]
    Weight(u16),
    #[error("IPv6 destination with IPv4 gateway {0}")]
    Ipv4GatewayForIpv6(IpAddr),
    #[error("table 0 (RT_TABLE_UNSPEC) is not a table")]
    Table,
}

/// One decoded netlink message of interest to the programmer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A route, link, address or neighbour from a dump or a get (routes of any owner: filter
    /// with [`decode_route`]). `interrupted`: the table changed while the kernel was dumping it
    /// (`NLM_F_DUMP_INTR`), so the dump may be inconsistent.
    Message {
        message: RouteNetlinkMessage,
        sequence: u32,
        interrupted: bool,
    },
    /// The end of a dump; `errno` non-zero if the dump failed (e.g. `ENOENT`: no such table).
    Done {
        sequence: u32,
        interrupted: bool,
        errno: i32,
    },
    /// An ACK (`errno == 0`) or an error for the request with this sequence number.
    Ack(Ack),
    /// Anything else (ignored).
    Other,
}

/// The kernel's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub sequence: u32,
    /// 0 for success, else a positive errno.
    pub errno: i32,
    /// The extended ACK text (`NLMSGERR_ATTR_MSG`), e.g. "Nexthop has invalid gateway".
    pub message: Option<String>,
}

fn family(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

/// The header and the attributes every message about `dst` in `table` carries.
fn base_message(dst: IpNet, table: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family(&dst);
    message.header.destination_prefix_length = dst.prefix_len();
    // Tables above 255 only fit RTA_TABLE; the header then says RT_TABLE_UNSPEC, as iproute2 does.
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.header.protocol = RouteProtocol::from(REEF_ROUTE_PROTOCOL);
    message.attributes.push(RouteAttribute::Table(table));
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    message
}

/// The gateway attribute: `RTA_GATEWAY` in the route's family, `RTA_VIA` for an IPv6 gateway of an
/// IPv4 route.
fn gateway_attribute(dst: &IpNet, gateway: IpAddr) -> Result<RouteAttribute, InvalidRoute> {
    match (dst, gateway) {
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_)) => {
            Ok(RouteAttribute::Gateway(RouteAddress::from(gateway)))
        }
        (IpNet::V4(_), IpAddr::V6(v6)) => Ok(RouteAttribute::Via(RouteVia::Inet6(v6))),
        (IpNet::V6(_), IpAddr::V4(_)) => Err(InvalidRoute::Ipv4GatewayForIpv6(gateway)),
    }
}

fn check_hop(hop: &NextHop) -> Result<(), InvalidRoute> {
    if hop.gateway.is_none() && hop.ifindex.is_none() {
        return Err(InvalidRoute::EmptyNextHop);
    }
    if !(1..=NextHop::MAX_WEIGHT).contains(&hop.weight) {
        return Err(InvalidRoute::Weight(hop.weight));
    }
    Ok(())
}

/// `RTM_NEWROUTE` body for `route`.
pub fn route_message(route: &Route) -> Result<RouteMessage, InvalidRoute> {
    if route.dst != route.dst.trunc() {
        return Err(InvalidRoute::HostBits(route.dst));
    }
    if route.table == 0 {
        return Err(InvalidRoute::Table);
    }
    let mut message = base_message(route.dst, route.table);
    match &route.kind {
        RouteKind::Blackhole => {
            message.header.kind = RouteType::BlackHole;
            message.header.scope = RouteScope::Universe;
        }
        RouteKind::Unicast { next_hops } => {
            message.header.kind = RouteType::Unicast;
            // IPv4 routes straight out of an interface are link-scoped, like `ip route add X dev D`.
            let on_link = next_hops.iter().all(|hop| hop.gateway.is_none());
            message.header.scope = if on_link && route.dst.addr().is_ipv4() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
            match next_hops.as_slice() {
                [] => return Err(InvalidRoute::NoNextHop),
                [hop] => {
                    check_hop(hop)?;
                    if let Some(gateway) = hop.gateway {
                        message
                            .attributes
                            .push(gateway_attribute(&route.dst, gateway)?);
                    }
                    if let Some(ifindex) = hop.ifindex {
                        message.attributes.push(RouteAttribute::Oif(ifindex));
                    }
                    if hop.onlink {
                        message.header.flags |= RouteFlags::Onlink;
                    }
                }
                hops => {
                    let mut multipath = Vec::with_capacity(hops.len());
                    for hop in hops {
                        check_hop(hop)?;
                        let mut encoded = RouteNextHop::default();
                        // Checked above: 1..=256, so weight - 1 fits rtnh_hops.
                        encoded.hops = u8::try_from(hop.weight - 1)
                            .map_err(|_| InvalidRoute::Weight(hop.weight))?;
                        encoded.interface_index = hop.ifindex.unwrap_or(0);
                        if hop.onlink {
                            encoded.flags |= RouteNextHopFlags::Onlink;
                        }
                        if let Some(gateway) = hop.gateway {
                            encoded
                                .attributes
                                .push(gateway_attribute(&route.dst, gateway)?);
                        }
                        multipath.push(encoded);
                    }
                    message
                        .attributes
                        .push(RouteAttribute::MultiPath(multipath));
                }
            }
        }
    }
    Ok(message)
}

/// `RTM_DELROUTE` body: matches only a route with Reef's protocol number (the kernel compares
/// `rtm_protocol` when it is set), of any type, scope and next hops.
pub fn delete_message(dst: IpNet, table: u32) -> RouteMessage {
    let mut message = base_message(dst, table);
    message.header.scope = RouteScope::NoWhere;
    message
}

/// Appends one netlink message to `out` (4-byte aligned, as netlink requires).
pub(crate) fn append(
    out: &mut Vec<u8>,
    flags: u16,
    sequence: u32,
    payload: NetlinkPayload<RouteNetlinkMessage>,
) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, payload);
    message.finalize();
    let start = out.len();
    let len = message.buffer_len();
    out.resize(start + len.next_multiple_of(4), 0);
    message.serialize(&mut out[start..start + len]);
}

/// Appends the request for `op`, without asking for an ACK: the kernel answers a route request
/// only when it fails, and [`encode_barrier`] closes the batch.
pub fn encode_op(op: &FibOp, sequence: u32, out: &mut Vec<u8>) -> Result<(), InvalidRoute> {
    match op {
        FibOp::Add(route) => append(
            out,
            NLM_F_CREATE | NLM_F_EXCL,
            sequence,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route_message(route)?)),
        ),
        FibOp::Replace(route) => append(
            out,
            NLM_F_CREATE | NLM_F_REPLACE,
            sequence,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route_message(route)?)),
        ),
        FibOp::Delete(key) => append(
            out,
            0,
            sequence,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(delete_message(
                key.dst, key.table,
            ))),
        ),
    }
    Ok(())
}

/// Appends an `NLMSG_NOOP` request with `NLM_F_ACK`. The kernel handles the messages of one send
/// in order, so the ACK of this last one says every request before it has been handled and its
/// error, if any, already came back.
pub fn encode_barrier(sequence: u32, out: &mut Vec<u8>) {
    append(out, NLM_F_ACK, sequence, NetlinkPayload::Noop);
}

/// Appends a dump request for the routes of `family` with Reef's protocol number in `table`
/// (`None`: all tables). With `NETLINK_GET_STRICT_CHK` the kernel filters by protocol and table
/// itself; [`decode_route`] filters again for kernels that do not.
pub fn encode_dump(family: AddressFamily, table: Option<u32>, sequence: u32, out: &mut Vec<u8>) {
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.protocol = RouteProtocol::from(REEF_ROUTE_PROTOCOL);
    if let Some(table) = table {
        message.attributes.push(RouteAttribute::Table(table));
    }
    append(
        out,
        NLM_F_DUMP,
        sequence,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(message)),
    );
}

/// Appends `RTM_GETLINK` for the interface called `name`.
pub fn encode_get_link(name: &str, sequence: u32, out: &mut Vec<u8>) {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    append(
        out,
        NLM_F_ACK,
        sequence,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(message)),
    );
}

/// Splits one received datagram into its netlink messages and decodes them.
pub fn decode_replies(datagram: &[u8]) -> Result<Vec<Reply>, String> {
    let mut replies = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let buffer = NetlinkBuffer::new_checked(rest).map_err(|e| e.to_string())?;
        let len = buffer.length() as usize;
        // new_checked guarantees NLMSG_HEADER_LEN <= len <= rest.len().
        let (message, after) = rest.split_at(len);
        replies.push(decode_reply(message)?);
        rest = after
            .get(len.next_multiple_of(4) - len..)
            .unwrap_or_default();
    }
    Ok(replies)
}

fn decode_reply(message: &[u8]) -> Result<Reply, String> {
    let flags = NetlinkBuffer::new_checked(message)
        .map_err(|e| e.to_string())?
        .flags();
    let interrupted = flags & NLM_F_DUMP_INTR != 0;
    let parsed =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(message).map_err(|e| e.to_string())?;
    let sequence = parsed.header.sequence_number;
    Ok(match parsed.payload {
        NetlinkPayload::InnerMessage(message) => Reply::Message {
            message,
            sequence,
            interrupted,
        },
        NetlinkPayload::Done(done) => Reply::Done {
            sequence,
            interrupted,
            errno: done.code.saturating_abs(),
        },
        NetlinkPayload::Error(error) => {
            Reply::Ack(decode_ack(flags, error.raw_code(), &error.header)?)
        }
        _ => Reply::Other,
    })
}

/// An `NLMSG_ERROR` body after its code: the request's header (and, unless capped, the whole
/// request), then the extended ACK attributes.
fn decode_ack(flags: u16, code: i32, payload: &[u8]) -> Result<Ack, String> {
    let request = payload
        .get(..NLMSG_HEADER_LEN)
        .ok_or_else(|| format!("NLMSG_ERROR of {} bytes", payload.len()))?;
    let field = |at: usize| {
        u32::from_ne_bytes([
            request[at],
            request[at + 1],
            request[at + 2],
            request[at + 3],
        ])
    };
    // `request` has NLMSG_HEADER_LEN bytes: length at 0..4, sequence number at 8..12.
    let (request_len, sequence) = (field(0) as usize, field(8));
    let attributes_at = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HEADER_LEN
    } else {
        request_len.next_multiple_of(4)
    };
    Ok(Ack {
        sequence,
        errno: code.saturating_abs(),
        message: payload.get(attributes_at..).and_then(error_text),
    })
}

/// The `NLMSGERR_ATTR_MSG` string among the extended ACK attributes.
fn error_text(mut attributes: &[u8]) -> Option<String> {
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        let value = attributes.get(4..len)?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attributes = attributes.get(len.next_multiple_of(4).max(4)..)?;
    }
    None
}

/// The Reef route in a kernel route message; `None` for routes of other owners, cached clones and
/// kinds Reef never installs.
pub fn decode_route(message: &RouteMessage) -> Option<Route> {
    let header = &message.header;
    if u8::from(header.protocol) != REEF_ROUTE_PROTOCOL || header.flags.contains(RouteFlags::Cloned)
    {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut dst_addr = None;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(addr) => dst_addr = address(addr),
            RouteAttribute::Gateway(addr) => gateway = address(addr),
            RouteAttribute::Via(via) => gateway = via_address(via),
            RouteAttribute::Oif(ifindex) => oif = Some(*ifindex),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            _ => {}
        }
    }
    let dst_addr = match (header.address_family, dst_addr) {
        (AddressFamily::Inet, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (AddressFamily::Inet6, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (AddressFamily::Inet, Some(addr @ IpAddr::V4(_)))
        | (AddressFamily::Inet6, Some(addr @ IpAddr::V6(_))) => addr,
        _ => return None,
    };
    let dst = IpNet::new(dst_addr, header.destination_prefix_length).ok()?;
    match header.kind {
        RouteType::BlackHole => Some(Route::blackhole(dst, table)),
        RouteType::Unicast => {
            let next_hops = match multipath {
                Some(hops) => hops.iter().map(decode_next_hop).collect(),
                None => vec![NextHop {
                    gateway,
                    ifindex: oif,
                    weight: 1,
                    onlink: header.flags.contains(RouteFlags::Onlink),
                }],
            };
            Some(Route::unicast(dst, table, next_hops))
        }
        _ => None,
    }
}

fn decode_next_hop(hop: &RouteNextHop) -> NextHop {
    let gateway = hop.attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Gateway(addr) => address(addr),
        RouteAttribute::Via(via) => via_address(via),
        _ => None,
    });
    NextHop {
        gateway,
        ifindex: (hop.interface_index != 0).then_some(hop.interface_index),
        weight: u16::from(hop.hops) + 1,
        onlink: hop.flags.contains(RouteNextHopFlags::Onlink),
    }
}

fn address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn via_address(via: &RouteVia) -> Option<IpAddr> {
    match via {
        RouteVia::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteVia::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::model::{MAIN_TABLE, RouteKey};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Encodes `op`, decodes the bytes as the kernel would echo the route in a dump.
    fn round_trip(route: &Route) -> Route {
        let mut out = Vec::new();
        encode_op(&FibOp::Replace(route.clone()), 7, &mut out).unwrap();
        let replies = decode_replies(&out).unwrap();
        assert_eq!(replies.len(), 1);
        let Reply::Message {
            message: RouteNetlinkMessage::NewRoute(message),
            ..
        } = &replies[0]
        else {
            panic!("not a route: {replies:?}")
        };
        decode_route(message).unwrap()
    }

    #[test]
    fn routes_survive_encoding() {
        let routes = [
            Route::unicast(
                net("10.1.0.0/24"),
                MAIN_TABLE,
                vec![NextHop::via(ip("198.18.0.2"))],
            ),
            Route::unicast(
                net("10.1.1.0/24"),
                1000,
                vec![
                    NextHop::via(ip("198.18.0.2"))
                        .with_ifindex(2)
                        .with_weight(3),
                    NextHop::via(ip("198.18.1.2")).with_ifindex(3).onlink(),
                ],
            ),
            Route::unicast(net("10.1.2.7/32"), MAIN_TABLE, vec![NextHop::dev(9)]),
            Route::unicast(
                net("10.1.3.0/24"),
                MAIN_TABLE,
                vec![NextHop::via(ip("fe80::1")).with_ifindex(2)],
            ),
            Route::unicast(
                net("2001:db8:5::/48"),
                100,
                vec![NextHop::via(ip("2001:db8::2")).onlink()],
            ),
            Route::blackhole(net("10.1.4.0/26"), MAIN_TABLE),
            Route::blackhole(net("2001:db8:6::/122"), MAIN_TABLE),
            Route::unicast(net("0.0.0.0/0"), 100, vec![NextHop::via(ip("198.18.0.1"))]),
        ];
        for route in routes {
            assert_eq!(round_trip(&route), route);
        }
    }

    #[test]
    fn request_flags_and_header() {
        let route = Route::unicast(net("10.1.0.0/24"), 300, vec![NextHop::dev(4)]);
        let mut out = Vec::new();
        encode_op(&FibOp::Add(route.clone()), 1, &mut out).unwrap();
        encode_op(&FibOp::Replace(route.clone()), 2, &mut out).unwrap();
        encode_op(&FibOp::Delete(route.key()), 3, &mut out).unwrap();
        let routes_len = out.len();
        encode_barrier(4, &mut out);
        let noop_type = 1u16.to_ne_bytes();
        let flags = (NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes();
        assert_eq!(
            out[routes_len + 4..routes_len + 8],
            [noop_type, flags].concat()
        );
        out.truncate(routes_len);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < out.len() {
            let buffer = NetlinkBuffer::new_checked(&out[at..]).unwrap();
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&out[at..]).unwrap();
            let NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(body) | RouteNetlinkMessage::DelRoute(body),
            ) = message.payload
            else {
                panic!("not a route message")
            };
            seen.push((
                buffer.flags(),
                buffer.sequence_number(),
                body.header.table,
                body.header.scope,
            ));
            at += (buffer.length() as usize).next_multiple_of(4);
        }
        let link = RouteScope::Link;
        assert_eq!(
            seen,
            vec![
                (NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, 1, 0, link),
                (NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, 2, 0, link),
                (NLM_F_REQUEST, 3, 0, RouteScope::NoWhere),
            ]
        );
    }

    #[test]
    fn invalid_routes_are_refused() {
        let cases = [
            (
                Route::unicast(net("10.1.0.1/24"), MAIN_TABLE, vec![NextHop::dev(1)]),
                InvalidRoute::HostBits(net("10.1.0.1/24")),
            ),
            (
                Route::unicast(net("10.1.0.0/24"), MAIN_TABLE, vec![]),
                InvalidRoute::NoNextHop,
            ),
            (
                Route::unicast(
                    net("10.1.0.0/24"),
                    MAIN_TABLE,
                    vec![NextHop::dev(1), NextHop::dev(2).with_weight(257)],
                ),
                InvalidRoute::Weight(257),
            ),
            (
                Route::unicast(
                    net("10.1.0.0/24"),
                    MAIN_TABLE,
                    vec![NextHop {
                        gateway: None,
                        ifindex: None,
                        weight: 1,
                        onlink: false,
                    }],
                ),
                InvalidRoute::EmptyNextHop,
            ),
            (
                Route::unicast(
                    net("2001:db8::/64"),
                    MAIN_TABLE,
                    vec![NextHop::via(ip("198.18.0.1"))],
                ),
                InvalidRoute::Ipv4GatewayForIpv6(ip("198.18.0.1")),
            ),
            (Route::blackhole(net("10.1.0.0/24"), 0), InvalidRoute::Table),
        ];
        for (route, error) in cases {
            assert_eq!(route_message(&route), Err(error));
        }
    }

    #[test]
    fn routes_of_other_owners_are_not_ours() {
        let route = Route::blackhole(net("10.1.0.0/24"), MAIN_TABLE);
        let mut message = route_message(&route).unwrap();
        assert!(decode_route(&message).is_some());
        message.header.protocol = RouteProtocol::Static;
        assert_eq!(decode_route(&message), None);
    }

    #[test]
    fn delete_carries_the_key() {
        let key = RouteKey {
            table: MAIN_TABLE,
            dst: net("2001:db8:7::/48"),
        };
        let message = delete_message(key.dst, key.table);
        assert_eq!(message.header.address_family, AddressFamily::Inet6);
        assert_eq!(message.header.destination_prefix_length, 48);
        assert_eq!(u8::from(message.header.protocol), REEF_ROUTE_PROTOCOL);
    }

    /// An `NLMSG_ERROR` as the kernel sends it with `NETLINK_CAP_ACK` and `NETLINK_EXT_ACK`:
    /// ENETUNREACH for sequence number 42, with its text.
    #[test]
    fn decodes_a_capped_error_with_its_text() {
        let text = b"Nexthop has invalid gateway\0";
        let attribute_len = 4 + text.len();
        let total = NLMSG_HEADER_LEN + 4 + NLMSG_HEADER_LEN + attribute_len.next_multiple_of(4);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(total as u32).to_ne_bytes());
        bytes.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        bytes.extend_from_slice(&(NLM_F_CAPPED | 0x200).to_ne_bytes()); // capped, ACK TLVs
        bytes.extend_from_slice(&42u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&(-libc::ENETUNREACH).to_ne_bytes());
        // The request's header: length 60, RTM_NEWROUTE, sequence 42.
        bytes.extend_from_slice(&60u32.to_ne_bytes());
        bytes.extend_from_slice(&24u16.to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_CREATE).to_ne_bytes());
        bytes.extend_from_slice(&42u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
        bytes.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        bytes.extend_from_slice(text);
        bytes.resize(total, 0);
        assert_eq!(
            decode_replies(&bytes).unwrap(),
            vec![Reply::Ack(Ack {
                sequence: 42,
                errno: libc::ENETUNREACH,
                message: Some("Nexthop has invalid gateway".to_string()),
            })]
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode_dump(AddressFamily::Inet, None, 1, &mut out);
        for len in 0..out.len() {
            let _ = decode_replies(&out[..len]);
        }
        assert!(decode_replies(&out[..10]).is_err());
        assert_eq!(
            decode_ack(0, -1, &[0; 8]).map(|_| ()),
            Err("NLMSG_ERROR of 8 bytes".to_string())
        );
    }
}
