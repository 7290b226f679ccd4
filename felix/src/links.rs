//! The VXLAN device, its tunnel address, its neighbour and FDB entries: netlink messages and the
//! diffs that decide them (pure), and the dumps that read the kernel's state. Only `vxlan.reef` and
//! entries on it are ever changed; other links are only read (names, indices, MTUs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::desired::{VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI, VxlanDevice};
use crate::fib::FibError;
use crate::model::Mac;
use crate::netlink::NetlinkSocket;

/// A link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    /// `Some` for a VXLAN link: its VNI, port, local address and learning flag.
    pub vxlan: Option<VxlanAttributes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanAttributes {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub learning: Option<bool>,
}

/// A change to the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOp {
    Create(VxlanDevice),
    /// Fix MTU and MAC and bring it up (ifindex).
    Update(u32, VxlanDevice),
    /// Remove it (ifindex): no pool needs VXLAN, or its identity (VNI, port, local address,
    /// learning) changed, which the kernel does not change in place.
    Delete(u32),
}

fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

pub fn decode_link(message: &LinkMessage) -> LinkState {
    let mut link = LinkState {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => link.mac = mac_of(bytes),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Vxlan) => {
                            link.vxlan.get_or_insert_with(Default::default);
                        }
                        LinkInfo::Data(InfoData::Vxlan(attributes)) => {
                            let vxlan = link.vxlan.get_or_insert_with(Default::default);
                            for attribute in attributes {
                                match attribute {
                                    InfoVxlan::Id(vni) => vxlan.vni = Some(*vni),
                                    InfoVxlan::Port(port) => vxlan.port = Some(*port),
                                    InfoVxlan::Local(addr) => vxlan.local = Some((*addr).into()),
                                    InfoVxlan::Local6(addr) => vxlan.local = Some((*addr).into()),
                                    InfoVxlan::Learning(on) => vxlan.learning = Some(*on),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// What to do so that `actual` (the link called `vxlan.reef`, if any) becomes `desired`.
pub fn vxlan_ops(desired: Option<&VxlanDevice>, actual: Option<&LinkState>) -> Vec<LinkOp> {
    match (desired, actual) {
        (None, None) => vec![],
        (None, Some(link)) => vec![LinkOp::Delete(link.index)],
        (Some(device), None) => vec![LinkOp::Create(device.clone())],
        (Some(device), Some(link)) => {
            let identity = VxlanAttributes {
                vni: Some(VXLAN_VNI),
                port: Some(VXLAN_PORT),
                local: Some(device.local),
                learning: Some(false),
            };
            if link.vxlan.as_ref() != Some(&identity) {
                vec![LinkOp::Delete(link.index), LinkOp::Create(device.clone())]
            } else if link.mtu != device.mtu || link.mac != Some(device.mac) || !link.up {
                vec![LinkOp::Update(link.index, device.clone())]
            } else {
                vec![]
            }
        }
    }
}

/// The netlink request for `op`: (flags, message).
pub fn link_request(op: &LinkOp) -> (u16, RouteNetlinkMessage) {
    let mut message = LinkMessage::default();
    match op {
        LinkOp::Create(device) | LinkOp::Update(_, device) => {
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
            message.attributes.push(LinkAttribute::Mtu(device.mtu));
            message
                .attributes
                .push(LinkAttribute::Address(device.mac.0.to_vec()));
            if let LinkOp::Update(index, _) = op {
                message.header.index = *index;
                return (0, RouteNetlinkMessage::SetLink(message));
            }
            let local = match device.local {
                IpAddr::V4(addr) => InfoVxlan::Local(addr),
                IpAddr::V6(addr) => InfoVxlan::Local6(addr),
            };
            message
                .attributes
                .push(LinkAttribute::IfName(VXLAN_DEVICE.to_string()));
            message.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(VXLAN_VNI),
                    local,
                    InfoVxlan::Port(VXLAN_PORT),
                    InfoVxlan::Learning(false),
                ])),
            ]));
            (
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewLink(message),
            )
        }
        LinkOp::Delete(index) => {
            message.header.index = *index;
            (0, RouteNetlinkMessage::DelLink(message))
        }
    }
}

/// Every link of the namespace.
pub fn dump_links(socket: &mut NetlinkSocket) -> Result<Vec<LinkState>, FibError> {
    Ok(socket
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(decode_link(link)),
            _ => None,
        })
        .collect())
}

/// An interface address: (ifindex, address, prefix length, scope is universe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub global: bool,
}

/// Every address of the namespace.
pub fn dump_addresses(socket: &mut NetlinkSocket) -> Result<Vec<InterfaceAddress>, FibError> {
    Ok(socket
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
        .iter()
        .filter_map(|message| {
            let RouteNetlinkMessage::NewAddress(message) = message else {
                return None;
            };
            let mut addr = None;
            for attribute in &message.attributes {
                match attribute {
                    // IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's, on
                    // point-to-point links); IPv6 sends only IFA_ADDRESS.
                    AddressAttribute::Local(local) => addr = Some(*local),
                    AddressAttribute::Address(address) if addr.is_none() => addr = Some(*address),
                    _ => {}
                }
            }
            Some(InterfaceAddress {
                ifindex: message.header.index,
                addr: addr?,
                prefix_len: message.header.prefix_len,
                global: message.header.scope == AddressScope::Universe,
            })
        })
        .collect())
}

/// The request adding (`add`) or removing the host address `addr` on `ifindex`.
pub fn address_request(ifindex: u32, addr: IpAddr, add: bool) -> (u16, RouteNetlinkMessage) {
    let mut message = AddressMessage::default();
    message.header.family = family_of(addr);
    message.header.prefix_len = if addr.is_ipv4() { 32 } else { 128 };
    message.header.index = ifindex;
    message.header.scope = AddressScope::Universe;
    message.attributes.push(AddressAttribute::Local(addr));
    message.attributes.push(AddressAttribute::Address(addr));
    if add {
        (
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewAddress(message),
        )
    } else {
        (0, RouteNetlinkMessage::DelAddress(message))
    }
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(addr) => NeighbourAddress::Inet(addr),
        IpAddr::V6(addr) => NeighbourAddress::Inet6(addr),
    }
}

/// A neighbour or FDB entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    pub ifindex: u32,
    pub dst: Option<IpAddr>,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

fn decode_neighbour(message: &NeighbourMessage) -> NeighbourEntry {
    let mut entry = NeighbourEntry {
        ifindex: message.header.ifindex,
        dst: None,
        mac: None,
        permanent: message.header.state == NeighbourState::Permanent,
    };
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => {
                entry.dst = Some((*addr).into())
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(addr)) => {
                entry.dst = Some((*addr).into())
            }
            // FDB entries (AF_BRIDGE) carry the remote's address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                entry.dst = ip_of(bytes)
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => entry.mac = mac_of(bytes),
            _ => {}
        }
    }
    entry
}

/// The neighbour entries (`fdb`: the bridge FDB entries) of interface `ifindex`.
pub fn dump_neighbours(
    socket: &mut NetlinkSocket,
    ifindex: u32,
    fdb: bool,
) -> Result<Vec<NeighbourEntry>, FibError> {
    let families: &[AddressFamily] = if fdb {
        &[AddressFamily::Bridge]
    } else {
        &[AddressFamily::Inet, AddressFamily::Inet6]
    };
    let mut entries = Vec::new();
    for family in families {
        let mut request = NeighbourMessage::default();
        request.header.family = *family;
        for message in socket.dump(RouteNetlinkMessage::GetNeighbour(request))? {
            if let RouteNetlinkMessage::NewNeighbour(message) = message {
                let entry = decode_neighbour(&message);
                if entry.ifindex == ifindex {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(entries)
}

/// What changes `actual` into `desired`: entries to set (add or replace), keys to delete.
pub fn map_diff<K: Ord + Copy, V: PartialEq + Copy>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let set = desired
        .iter()
        .filter(|(key, value)| actual.get(key) != Some(value))
        .map(|(key, value)| (*key, *value))
        .collect();
    let delete = actual
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    (set, delete)
}

/// Felix's neighbours in a dump: the permanent ones with an address and a MAC (the kernel's own
/// entries are never touched).
pub fn permanent_neighbours(entries: &[NeighbourEntry]) -> BTreeMap<IpAddr, Mac> {
    entries
        .iter()
        .filter(|entry| entry.permanent)
        .filter_map(|entry| Some((entry.dst?, entry.mac?)))
        .collect()
}

/// The FDB entries in a dump: MAC -> remote address.
pub fn fdb_entries(entries: &[NeighbourEntry]) -> BTreeMap<Mac, IpAddr> {
    entries
        .iter()
        .filter(|entry| entry.permanent)
        .filter_map(|entry| Some((entry.mac?, entry.dst?)))
        .collect()
}

/// Set (`Some(mac)`) or delete the permanent neighbour `dst` on `ifindex`.
pub fn neighbour_request(
    ifindex: u32,
    dst: IpAddr,
    mac: Option<Mac>,
) -> (u16, RouteNetlinkMessage) {
    let mut message = NeighbourMessage::default();
    message.header.family = family_of(dst);
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message
        .attributes
        .push(NeighbourAttribute::Destination(neighbour_address(dst)));
    match mac {
        Some(mac) => {
            message
                .attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            (
                NLM_F_CREATE | NLM_F_REPLACE,
                RouteNetlinkMessage::NewNeighbour(message),
            )
        }
        None => (0, RouteNetlinkMessage::DelNeighbour(message)),
    }
}

/// Set (`Some(remote)`) or delete the VXLAN FDB entry for `mac` on `ifindex` (`bridge fdb replace
/// MAC dev vxlan.reef dst REMOTE self permanent`).
pub fn fdb_request(ifindex: u32, mac: Mac, remote: Option<IpAddr>) -> (u16, RouteNetlinkMessage) {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    match remote {
        Some(remote) => {
            message
                .attributes
                .push(NeighbourAttribute::Destination(neighbour_address(remote)));
            (
                NLM_F_CREATE | NLM_F_REPLACE,
                RouteNetlinkMessage::NewNeighbour(message),
            )
        }
        None => (0, RouteNetlinkMessage::DelNeighbour(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> VxlanDevice {
        VxlanDevice {
            local: "198.51.100.1".parse().unwrap(),
            mac: "66:00:00:00:00:0a".parse().unwrap(),
            mtu: 1450,
            address: "10.244.0.0".parse().unwrap(),
        }
    }

    /// The link the kernel reports for the create request (the create message decoded).
    fn created() -> LinkState {
        let (_, RouteNetlinkMessage::NewLink(message)) = link_request(&LinkOp::Create(device()))
        else {
            panic!("not a new link")
        };
        LinkState {
            index: 7,
            ..decode_link(&message)
        }
    }

    #[test]
    fn a_right_device_needs_nothing_a_wrong_one_is_fixed() {
        let device = device();
        let link = created();
        assert_eq!(link.name, VXLAN_DEVICE);
        assert!(link.up);
        assert_eq!(vxlan_ops(Some(&device), Some(&link)), vec![]);
        assert_eq!(
            vxlan_ops(Some(&device), None),
            vec![LinkOp::Create(device.clone())]
        );
        assert_eq!(vxlan_ops(None, Some(&link)), vec![LinkOp::Delete(7)]);
        let smaller = LinkState {
            mtu: 1400,
            ..link.clone()
        };
        assert_eq!(
            vxlan_ops(Some(&device), Some(&smaller)),
            vec![LinkOp::Update(7, device.clone())]
        );
        let moved = VxlanDevice {
            local: "198.51.100.9".parse().unwrap(),
            ..device.clone()
        };
        assert_eq!(
            vxlan_ops(Some(&moved), Some(&link)),
            vec![LinkOp::Delete(7), LinkOp::Create(moved.clone())]
        );
        let not_vxlan = LinkState {
            vxlan: None,
            ..link
        };
        assert_eq!(vxlan_ops(Some(&device), Some(&not_vxlan)).len(), 2);
    }

    #[test]
    fn neighbour_and_fdb_diffs() {
        let mac_b: Mac = "66:00:00:00:00:0b".parse().unwrap();
        let mac_c: Mac = "66:00:00:00:00:0c".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let entries = vec![
            NeighbourEntry {
                ifindex: 7,
                dst: Some(ip("10.244.1.0")),
                mac: Some(mac_b),
                permanent: true,
            },
            // Learned by the kernel: not ours, never deleted.
            NeighbourEntry {
                ifindex: 7,
                dst: Some(ip("fe80::1")),
                mac: Some(mac_c),
                permanent: false,
            },
            NeighbourEntry {
                ifindex: 7,
                dst: Some(ip("10.244.9.0")),
                mac: Some(mac_c),
                permanent: true,
            },
        ];
        let actual = permanent_neighbours(&entries);
        let desired = BTreeMap::from([(ip("10.244.1.0"), mac_b), (ip("10.244.2.0"), mac_c)]);
        assert_eq!(
            map_diff(&desired, &actual),
            (vec![(ip("10.244.2.0"), mac_c)], vec![ip("10.244.9.0")])
        );
        assert_eq!(fdb_entries(&entries)[&mac_b], ip("10.244.1.0"));
    }

    #[test]
    fn requests_carry_what_the_kernel_needs() {
        let mac: Mac = "66:00:00:00:00:0b".parse().unwrap();
        let (flags, RouteNetlinkMessage::NewNeighbour(message)) =
            fdb_request(7, mac, Some("198.51.100.2".parse().unwrap()))
        else {
            panic!("not a new neighbour")
        };
        assert_eq!(flags, NLM_F_CREATE | NLM_F_REPLACE);
        assert_eq!(message.header.family, AddressFamily::Bridge);
        assert!(message.header.flags.contains(NeighbourFlags::Own));
        let entry = decode_neighbour(&message);
        assert_eq!(entry.mac, Some(mac));
        assert_eq!(entry.dst, Some("198.51.100.2".parse().unwrap()));
        assert!(entry.permanent);
        let (_, delete) = neighbour_request(7, "10.244.1.0".parse().unwrap(), None);
        assert!(matches!(delete, RouteNetlinkMessage::DelNeighbour(_)));
    }
}
