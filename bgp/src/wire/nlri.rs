//! Prefix encoding of the withdrawn routes and NLRI fields and of MP_REACH/MP_UNREACH (RFC 4271 §4.3,
//! RFC 4760 §5, RFC 7911 §3).

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::types::Afi;

/// A prefix with its ADD-PATH Path Identifier (`Some` only on sessions that negotiated ADD-PATH for the
/// family). Host bits are always zero: decoding clears the trailing bits, which RFC 4271 §4.3 calls
/// irrelevant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Nlri {
    pub prefix: IpNet,
    pub path_id: Option<u32>,
}

impl Nlri {
    pub fn new(prefix: IpNet) -> Nlri {
        Nlri {
            prefix: prefix.trunc(),
            path_id: None,
        }
    }

    pub fn with_path_id(prefix: IpNet, path_id: u32) -> Nlri {
        Nlri {
            prefix: prefix.trunc(),
            path_id: Some(path_id),
        }
    }

    pub fn afi(&self) -> Afi {
        match self.prefix {
            IpNet::V4(_) => Afi::IPV4,
            IpNet::V6(_) => Afi::IPV6,
        }
    }

    /// Octets on the wire.
    pub(crate) fn encoded_len(&self, add_path: bool) -> usize {
        let path_id = if add_path { 4 } else { 0 };
        path_id + 1 + usize::from(self.prefix.prefix_len()).div_ceil(8)
    }

    pub(crate) fn encode(&self, add_path: bool, out: &mut BytesMut) {
        if add_path {
            out.put_u32(self.path_id.unwrap_or(0));
        }
        let len = self.prefix.prefix_len();
        let octets = usize::from(len).div_ceil(8);
        out.put_u8(len);
        // `octets` <= 4 (IPv4) or <= 16 (IPv6) because IpNet keeps prefix_len within the address width.
        match self.prefix {
            IpNet::V4(net) => out.put_slice(&net.network().octets()[..octets]),
            IpNet::V6(net) => out.put_slice(&net.network().octets()[..octets]),
        }
    }
}

impl From<IpNet> for Nlri {
    fn from(prefix: IpNet) -> Nlri {
        Nlri::new(prefix)
    }
}

impl From<Ipv4Net> for Nlri {
    fn from(prefix: Ipv4Net) -> Nlri {
        Nlri::new(IpNet::V4(prefix))
    }
}

impl From<Ipv6Net> for Nlri {
    fn from(prefix: Ipv6Net) -> Nlri {
        Nlri::new(IpNet::V6(prefix))
    }
}

/// Decodes a sequence of prefixes of `afi` (IPv4 or IPv6) into `out`. `None` on a prefix length above
/// the address width or a truncated prefix; the caller picks the RFC error for its field.
///
/// This is the hot path of a full-table ingest: one bounds check per prefix, no allocation besides the
/// `Vec` growth (reserved up front from the field length).
pub(crate) fn decode_prefixes(
    mut buf: &[u8],
    afi: Afi,
    add_path: bool,
    out: &mut Vec<Nlri>,
) -> Option<()> {
    // A prefix takes at least 1 octet (a /0), typically 4: reserve for the typical case.
    out.reserve(buf.len() / if add_path { 8 } else { 4 });
    let v6 = afi == Afi::IPV6;
    let max_len: u8 = if v6 { 128 } else { 32 };
    while !buf.is_empty() {
        let path_id = if add_path {
            let (id, rest) = buf.split_first_chunk::<4>()?;
            buf = rest;
            Some(u32::from_be_bytes(*id))
        } else {
            None
        };
        let (&len, rest) = buf.split_first()?;
        if len > max_len {
            return None;
        }
        let octets = usize::from(len).div_ceil(8);
        if rest.len() < octets {
            return None;
        }
        let (addr, rest) = rest.split_at(octets);
        buf = rest;
        let prefix = if v6 {
            let mut bytes = [0u8; 16];
            bytes[..octets].copy_from_slice(addr);
            let bits = u128::from_be_bytes(bytes)
                & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).ok()?)
        } else {
            let mut bytes = [0u8; 4];
            bytes[..octets].copy_from_slice(addr);
            let bits =
                u32::from_be_bytes(bytes) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(bits), len).ok()?)
        };
        out.push(Nlri { prefix, path_id });
    }
    Some(())
}
