//! Address families, protocol constants and the bounds-checked reader every decoder uses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Length of the fixed message header: marker (16), length (2), type (1). RFC 4271 §4.1.
pub const HEADER_LEN: usize = 19;
/// Maximum message size without the Extended Message capability. RFC 4271 §4.1.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Maximum message size with the Extended Message capability. RFC 8654 §4.
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;
/// The only BGP version we speak.
pub const BGP_VERSION: u8 = 4;
/// The 2-octet AS number that stands in for a 4-octet one. RFC 6793 §9.
pub const AS_TRANS: u32 = 23456;

/// Address Family Identifier (IANA "Address Family Numbers").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Afi(pub u16);

impl Afi {
    pub const IPV4: Afi = Afi(1);
    pub const IPV6: Afi = Afi(2);
}

impl fmt::Display for Afi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Afi::IPV4 => f.write_str("IPv4"),
            Afi::IPV6 => f.write_str("IPv6"),
            Afi(other) => write!(f, "AFI {other}"),
        }
    }
}

/// Subsequent Address Family Identifier (IANA "SAFI Values").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Safi(pub u8);

impl Safi {
    pub const UNICAST: Safi = Safi(1);
    pub const MULTICAST: Safi = Safi(2);
}

impl fmt::Display for Safi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Safi::UNICAST => f.write_str("unicast"),
            Safi::MULTICAST => f.write_str("multicast"),
            Safi(other) => write!(f, "SAFI {other}"),
        }
    }
}

/// An AFI/SAFI pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AfiSafi {
    pub afi: Afi,
    pub safi: Safi,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi::new(Afi::IPV4, Safi::UNICAST);
    pub const IPV6_UNICAST: AfiSafi = AfiSafi::new(Afi::IPV6, Safi::UNICAST);

    pub const fn new(afi: Afi, safi: Safi) -> AfiSafi {
        AfiSafi { afi, safi }
    }

    /// True for the families whose NLRI this codec decodes (IPv4 and IPv6 unicast).
    pub fn is_supported(self) -> bool {
        self == AfiSafi::IPV4_UNICAST || self == AfiSafi::IPV6_UNICAST
    }
}

impl fmt::Display for AfiSafi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.afi, self.safi)
    }
}

/// A set of the families the codec supports ([`AfiSafi::is_supported`]); `Copy`, so the context is too.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct AfiSafiSet(u8);

impl AfiSafiSet {
    pub const EMPTY: AfiSafiSet = AfiSafiSet(0);

    fn bit(afi_safi: AfiSafi) -> u8 {
        match afi_safi {
            AfiSafi::IPV4_UNICAST => 1,
            AfiSafi::IPV6_UNICAST => 2,
            _ => 0,
        }
    }

    /// Adds a family; families the codec does not support are not stored and return false.
    pub fn insert(&mut self, afi_safi: AfiSafi) -> bool {
        let bit = Self::bit(afi_safi);
        self.0 |= bit;
        bit != 0
    }

    pub fn contains(self, afi_safi: AfiSafi) -> bool {
        let bit = Self::bit(afi_safi);
        bit != 0 && self.0 & bit != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = AfiSafi> {
        [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
            .into_iter()
            .filter(move |af| self.contains(*af))
    }
}

impl FromIterator<AfiSafi> for AfiSafiSet {
    fn from_iter<I: IntoIterator<Item = AfiSafi>>(iter: I) -> Self {
        let mut set = AfiSafiSet::EMPTY;
        for af in iter {
            set.insert(af);
        }
        set
    }
}

/// Bounds-checked big-endian reader over a wire slice: every read returns `None` instead of panicking when
/// the input is short, so decoders turn a short read into the RFC error that applies where they are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread rest.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&byte, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(byte)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let (bytes, rest) = self.buf.split_first_chunk::<2>()?;
        self.buf = rest;
        Some(u16::from_be_bytes(*bytes))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (bytes, rest) = self.buf.split_first_chunk::<4>()?;
        self.buf = rest;
        Some(u32::from_be_bytes(*bytes))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_be_bytes(*bytes))
    }

    pub(crate) fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }

    pub(crate) fn ipv6(&mut self) -> Option<Ipv6Addr> {
        let (bytes, rest) = self.buf.split_first_chunk::<16>()?;
        self.buf = rest;
        Some(Ipv6Addr::from(*bytes))
    }

    pub(crate) fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.buf.len() {
            return None;
        }
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(taken)
    }
}
