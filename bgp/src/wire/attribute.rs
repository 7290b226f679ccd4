//! Path attributes (RFC 4271 §4.3, §5) and their RFC 7606 error handling.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::aspath::AsPath;
use super::context::CodecContext;
use super::error::{EncodeError, UpdateError};
use super::nlri::{Nlri, decode_prefixes};
use super::types::{AS_TRANS, Afi, AfiSafi, Reader, Safi};

/// Attribute type codes (IANA "BGP Path Attributes").
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const IPV6_EXTENDED_COMMUNITIES: u8 = 25;
    pub const LARGE_COMMUNITY: u8 = 32;
}
use attr_type as ty;

/// Attribute flag bits. RFC 4271 §4.3.
pub mod attr_flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}
use attr_flags as fl;

const WELL_KNOWN: u8 = fl::TRANSITIVE;
const OPTIONAL_TRANSITIVE: u8 = fl::OPTIONAL | fl::TRANSITIVE;
const OPTIONAL_NON_TRANSITIVE: u8 = fl::OPTIONAL;

/// ORIGIN. RFC 4271 §5.1.1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// AGGREGATOR / AS4_AGGREGATOR. RFC 4271 §5.1.7, RFC 6793.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// A community. RFC 1997.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Community(pub u32);

impl Community {
    pub const GRACEFUL_SHUTDOWN: Community = Community(0xFFFF_0000);
    pub const BLACKHOLE: Community = Community(0xFFFF_029A);
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
    pub const NO_EXPORT_SUBCONFED: Community = Community(0xFFFF_FF03);
    pub const LLGR_STALE: Community = Community(0xFFFF_0006);
    pub const NO_LLGR: Community = Community(0xFFFF_0007);

    pub fn new(asn: u16, value: u16) -> Community {
        Community((u32::from(asn) << 16) | u32::from(value))
    }
}

/// An extended community (8 octets). RFC 4360.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ExtendedCommunity(pub u64);

/// A large community. RFC 8092.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LargeCommunity {
    pub global_admin: u32,
    pub local_data1: u32,
    pub local_data2: u32,
}

/// An attribute the codec does not interpret, kept to be passed on. Only optional transitive ones are
/// kept, with the Partial bit set (RFC 4271 §5: "If an optional transitive attribute is unrecognized, the
/// Partial bit MUST be set to 1 if the attribute is propagated").
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RawAttribute {
    /// Flags as they are sent on (the Extended Length bit is recomputed on encode).
    pub flags: u8,
    pub type_code: u8,
    pub value: Bytes,
}

/// The next hop of MP_REACH_NLRI. RFC 4760 §3, RFC 2545 §3 (IPv6 global + link-local), RFC 8950.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum NextHop {
    V4(Ipv4Addr),
    V6 {
        global: Ipv6Addr,
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    fn encoded_len(&self) -> usize {
        match self {
            NextHop::V4(_) => 4,
            NextHop::V6 {
                link_local: None, ..
            } => 16,
            NextHop::V6 {
                link_local: Some(_),
                ..
            } => 32,
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            NextHop::V4(addr) => out.put_slice(&addr.octets()),
            NextHop::V6 { global, link_local } => {
                out.put_slice(&global.octets());
                if let Some(ll) = link_local {
                    out.put_slice(&ll.octets());
                }
            }
        }
    }
}

/// MP_REACH_NLRI for a family the codec supports (IPv4/IPv6 unicast). RFC 4760 §3.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MpReach {
    pub afi_safi: AfiSafi,
    pub next_hop: NextHop,
    pub nlri: Vec<Nlri>,
}

/// MP_UNREACH_NLRI. RFC 4760 §4. For families the codec does not decode, only an empty one (an
/// End-of-RIB marker) is kept.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct MpUnreach {
    pub afi_safi: AfiSafi,
    pub withdrawn: Vec<Nlri>,
}

/// The path attributes of an UPDATE except MP_REACH_NLRI/MP_UNREACH_NLRI (which belong to the NLRI, see
/// [`super::Update`]). Absent attributes are `None`/empty/false. AS numbers are 4 octets whatever the
/// session: on a session without 4-octet AS, call [`PathAttributes::merge_as4`] to rebuild the true path
/// from AS_PATH and AS4_PATH.
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<Community>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub extended_communities: Vec<ExtendedCommunity>,
    pub as4_path: Option<AsPath>,
    pub as4_aggregator: Option<Aggregator>,
    pub large_communities: Vec<LargeCommunity>,
    /// Unrecognized optional transitive attributes, in received order.
    pub unknown: Vec<RawAttribute>,
}

impl PathAttributes {
    pub fn is_empty(&self) -> bool {
        *self == PathAttributes::default()
    }

    /// Decodes a Path Attributes field on its own: for octets kept from an UPDATE decoded before (a
    /// RIB stores attribute sets as octets). `has_ipv4_nlri` as for the UPDATE they came in: whether
    /// NEXT_HOP applies. MP_REACH/MP_UNREACH in the field are read but not returned.
    pub fn decode_field(
        field: &Bytes,
        ctx: &CodecContext,
        has_ipv4_nlri: bool,
    ) -> Result<PathAttributes, UpdateError> {
        decode_attributes(field, ctx, has_ipv4_nlri).map(|decoded| decoded.attrs)
    }

    /// Rebuilds AS path and aggregator from AS4_PATH/AS4_AGGREGATOR (received from a 2-octet speaker)
    /// and removes those two. RFC 6793 §4.2.3: "If the AGGREGATOR attribute contains an AS number other
    /// than AS_TRANS, then: ... the AS4_AGGREGATOR attribute and the AS4_PATH attribute SHALL be ignored
    /// ..."; otherwise AS4_AGGREGATOR replaces AGGREGATOR and AS4_PATH is merged into AS_PATH
    /// ([`AsPath::merge_as4`]).
    pub fn merge_as4(&mut self) {
        let as4_path = self.as4_path.take();
        let as4_aggregator = self.as4_aggregator.take();
        if let (Some(aggregator), Some(as4_aggregator)) = (self.aggregator, as4_aggregator) {
            if aggregator.asn != AS_TRANS {
                return;
            }
            self.aggregator = Some(as4_aggregator);
        }
        if let (Some(as_path), Some(as4_path)) = (&self.as_path, &as4_path) {
            self.as_path = Some(as_path.merge_as4(as4_path));
        }
    }
}

/// What RFC 7606 has us do with a malformed attribute that does not reset the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum ErrorAction {
    /// "attribute discard": the attribute is dropped, the UPDATE is otherwise used.
    AttributeDiscard,
    /// "treat-as-withdraw": every NLRI of the UPDATE is withdrawn.
    TreatAsWithdraw,
}

/// A malformed attribute and what was done about it (for logging and counters).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AttributeError {
    pub type_code: u8,
    pub action: ErrorAction,
    /// The error RFC 4271 would have reported (its NOTIFICATION is never sent for these).
    pub error: UpdateError,
}

impl std::fmt::Display for AttributeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.action {
            ErrorAction::AttributeDiscard => "attribute discarded",
            ErrorAction::TreatAsWithdraw => "treat-as-withdraw",
        };
        write!(
            f,
            "{} (attribute type {}; {action})",
            self.error, self.type_code
        )
    }
}

/// Outcome of one attribute's decoding.
enum Fault {
    /// RFC 7606 "attribute discard".
    Discard(UpdateError),
    /// RFC 7606 "treat-as-withdraw".
    Withdraw(UpdateError),
    /// RFC 7606 "session reset".
    Reset(UpdateError),
    /// Not an error, but the attribute is dropped (RFC says to ignore it).
    Ignore,
}

/// The decoded path attribute field.
pub(crate) struct DecodedAttributes {
    pub attrs: PathAttributes,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub errors: Vec<AttributeError>,
    pub treat_as_withdraw: bool,
    /// The field without MP attributes and dropped attributes.
    pub raw: Bytes,
}

/// Expected (Optional, Transitive) flag bits of a recognized attribute.
fn expected_flags(type_code: u8) -> Option<u8> {
    Some(match type_code {
        ty::ORIGIN | ty::AS_PATH | ty::NEXT_HOP | ty::LOCAL_PREF | ty::ATOMIC_AGGREGATE => {
            WELL_KNOWN
        }
        ty::MULTI_EXIT_DISC
        | ty::ORIGINATOR_ID
        | ty::CLUSTER_LIST
        | ty::MP_REACH_NLRI
        | ty::MP_UNREACH_NLRI => OPTIONAL_NON_TRANSITIVE,
        ty::AGGREGATOR
        | ty::COMMUNITIES
        | ty::EXTENDED_COMMUNITIES
        | ty::AS4_PATH
        | ty::AS4_AGGREGATOR
        | ty::LARGE_COMMUNITY => OPTIONAL_TRANSITIVE,
        _ => return None,
    })
}

/// Decodes the Path Attributes field of an UPDATE. `has_ipv4_nlri` says whether the NLRI field is
/// non-empty (NEXT_HOP only matters then). `Err` is a session reset.
pub(crate) fn decode_attributes(
    field: &Bytes,
    ctx: &CodecContext,
    has_ipv4_nlri: bool,
) -> Result<DecodedAttributes, UpdateError> {
    let data: &[u8] = field;
    let mut out = DecodedAttributes {
        attrs: PathAttributes::default(),
        mp_reach: None,
        mp_unreach: None,
        errors: Vec::new(),
        treat_as_withdraw: false,
        raw: Bytes::new(),
    };
    let mut excluded: Vec<Range<usize>> = Vec::new();
    let mut seen = [0u64; 4];
    let mut r = Reader::new(data);
    while !r.is_empty() {
        // Offsets into the field: the reader only shrinks, so `remaining() <= data.len()`.
        let start = data.len() - r.remaining();
        let flags = r.u8();
        let type_code = r.u8();
        let len = match flags {
            Some(f) if f & fl::EXTENDED_LENGTH != 0 => r.u16().map(usize::from),
            _ => r.u8().map(usize::from),
        };
        let (Some(flags), Some(type_code), Some(value)) =
            (flags, type_code, len.and_then(|len| r.take(len)))
        else {
            // RFC 7606 §4: "... the length of the last encountered path attribute would cause the Total
            // Attribute Length to be exceeded ... [or] fewer than three octets remain ... In either of
            // these cases, an error condition exists and the "treat-as-withdraw" approach MUST be used".
            out.errors.push(AttributeError {
                type_code: data.get(start + 1).copied().unwrap_or(0),
                action: ErrorAction::TreatAsWithdraw,
                error: UpdateError::MalformedAttributeList,
            });
            out.treat_as_withdraw = true;
            excluded.push(start..data.len());
            break;
        };
        let end = data.len() - r.remaining();
        let whole = || field.slice(start..end);

        // RFC 7606 §3 (g): "If the MP_REACH_NLRI attribute or the MP_UNREACH_NLRI [RFC4760] attribute
        // appears more than once in the UPDATE message, then a NOTIFICATION message MUST be sent with the
        // Error Subcode "Malformed Attribute List". If any other attribute (whether recognized or
        // unrecognized) appears more than once in an UPDATE message, then all the occurrences of the
        // attribute other than the first one SHALL be discarded and the UPDATE message will continue to
        // be processed."
        let (word, bit) = (usize::from(type_code / 64), 1u64 << (type_code % 64));
        let duplicate = seen[word] & bit != 0;
        seen[word] |= bit;
        let outcome = if ignored(type_code, ctx, has_ipv4_nlri) {
            Err(Fault::Ignore)
        } else if duplicate {
            Err(
                if matches!(type_code, ty::MP_REACH_NLRI | ty::MP_UNREACH_NLRI) {
                    Fault::Reset(UpdateError::MalformedAttributeList)
                } else {
                    Fault::Discard(UpdateError::MalformedAttributeList)
                },
            )
        } else if let Some(fault) = check_flags(flags, type_code, &whole) {
            Err(fault)
        } else {
            decode_one(flags, type_code, value, field, start, end, ctx, &mut out)
        };
        let keep = match outcome {
            // Stored. MP attributes are not part of the raw attribute set (they carry the NLRI).
            Ok(()) => !matches!(type_code, ty::MP_REACH_NLRI | ty::MP_UNREACH_NLRI),
            Err(Fault::Ignore) => false,
            Err(Fault::Discard(error)) => {
                out.errors.push(AttributeError {
                    type_code,
                    action: ErrorAction::AttributeDiscard,
                    error,
                });
                false
            }
            Err(Fault::Withdraw(error)) => {
                out.errors.push(AttributeError {
                    type_code,
                    action: ErrorAction::TreatAsWithdraw,
                    error,
                });
                out.treat_as_withdraw = true;
                false
            }
            Err(Fault::Reset(error)) => return Err(error),
        };
        if !keep {
            excluded.push(start..end);
        }
    }
    out.raw = without_ranges(field, &excluded);
    Ok(out)
}

/// The attribute field without the excluded byte ranges; zero-copy when nothing is excluded.
fn without_ranges(field: &Bytes, excluded: &[Range<usize>]) -> Bytes {
    if excluded.is_empty() {
        return field.clone();
    }
    let mut raw = BytesMut::with_capacity(field.len());
    let mut at = 0;
    for range in excluded {
        raw.put_slice(field.get(at..range.start).unwrap_or_default());
        at = range.end;
    }
    raw.put_slice(field.get(at..).unwrap_or_default());
    raw.freeze()
}

/// Attributes that are dropped before any check because the RFCs say to ignore them on this session.
fn ignored(type_code: u8, ctx: &CodecContext, has_ipv4_nlri: bool) -> bool {
    match type_code {
        // RFC 4760 §3: an UPDATE that carries no NLRI other than in MP_REACH_NLRI "SHOULD NOT carry the
        // NEXT_HOP attribute. If such a message contains the NEXT_HOP attribute, the BGP speaker that
        // receives the message SHOULD ignore this attribute."
        ty::NEXT_HOP => !has_ipv4_nlri,
        // RFC 7606 §7.5: "If the LOCAL_PREF attribute is received from an external neighbor, it SHALL be
        // discarded using the approach of "attribute discard"". §7.9 and §7.10 say the same of
        // ORIGINATOR_ID and CLUSTER_LIST. Not an error of the peer (RFC 4271 §5.1.5 says to ignore it), so
        // it is not reported in `Update::errors`.
        ty::LOCAL_PREF | ty::ORIGINATOR_ID | ty::CLUSTER_LIST => !ctx.ibgp,
        _ => false,
    }
}

/// RFC 4271 §6.3: "If any recognized attribute has Attribute Flags that conflict with the Attribute Type
/// Code, then the Error Subcode MUST be set to Attribute Flags Error." RFC 7606 §3 (c): "If the value of
/// either the Optional or Transitive bits in the Attribute Flags is in conflict with their specified
/// values, then the attribute MUST be treated as malformed and the "treat-as-withdraw" approach used,
/// unless the specification for this document or another document mandates different handling for
/// incorrect Attribute Flags." MP_REACH/MP_UNREACH errors reset the session (RFC 7606 §7.11).
fn check_flags(flags: u8, type_code: u8, whole: &dyn Fn() -> Bytes) -> Option<Fault> {
    let expected = expected_flags(type_code)?;
    if flags & (fl::OPTIONAL | fl::TRANSITIVE) == expected {
        // RFC 4271 §4.3: "For well-known attributes and for optional non-transitive attributes, the
        // Partial bit MUST be set to 0." We only enforce it for well-known attributes, as FRR does.
        if expected != WELL_KNOWN || flags & fl::PARTIAL == 0 {
            return None;
        }
    }
    let error = UpdateError::AttributeFlags { attribute: whole() };
    Some(
        if matches!(type_code, ty::MP_REACH_NLRI | ty::MP_UNREACH_NLRI) {
            Fault::Reset(error)
        } else {
            Fault::Withdraw(error)
        },
    )
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Reader::new(value).u32().filter(|_| value.len() == 4)
}

#[allow(clippy::too_many_arguments)]
fn decode_one(
    flags: u8,
    type_code: u8,
    value: &[u8],
    field: &Bytes,
    start: usize,
    end: usize,
    ctx: &CodecContext,
    out: &mut DecodedAttributes,
) -> Result<(), Fault> {
    let whole = || field.slice(start..end);
    let length_error = || UpdateError::AttributeLength { attribute: whole() };
    let attrs = &mut out.attrs;
    match type_code {
        ty::ORIGIN => {
            // RFC 7606 §7.1: "The attribute is considered malformed if its length is not 1 or it has an
            // undefined value [RFC4271]. An UPDATE message with a malformed ORIGIN attribute SHALL be
            // handled using the approach of "treat-as-withdraw"."
            let [origin] = value else {
                return Err(Fault::Withdraw(length_error()));
            };
            attrs.origin = Some(match origin {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => {
                    return Err(Fault::Withdraw(UpdateError::InvalidOrigin {
                        attribute: whole(),
                    }));
                }
            });
        }
        ty::AS_PATH => {
            // RFC 7606 §7.2: "An UPDATE message with a malformed AS_PATH attribute SHALL be handled using
            // the approach of "treat-as-withdraw"." (see AsPath::decode for what is malformed)
            let path = AsPath::decode(value, ctx.four_octet_as)
                .ok_or(Fault::Withdraw(UpdateError::MalformedAsPath))?;
            // RFC 7607 §2: "An UPDATE message that contains the AS number of zero in the AS_PATH ...
            // attribute MUST be considered as malformed and be handled by the procedures specified in
            // [RFC7606]" (treat-as-withdraw, §7.2).
            if path.contains(0) {
                return Err(Fault::Withdraw(UpdateError::MalformedAsPath));
            }
            attrs.as_path = Some(path);
        }
        ty::NEXT_HOP => {
            // RFC 7606 §7.3: "The attribute is considered malformed if its length is not 4 [RFC4271]. An
            // UPDATE message with a malformed NEXT_HOP attribute SHALL be handled using the approach of
            // "treat-as-withdraw"."
            let next_hop = u32_of(value)
                .map(Ipv4Addr::from)
                .ok_or_else(|| Fault::Withdraw(length_error()))?;
            // RFC 4271 §6.3: "If the NEXT_HOP attribute field is syntactically incorrect, then the Error
            // Subcode MUST be set to Invalid NEXT_HOP Attribute. ... Syntactic correctness means that the
            // NEXT_HOP attribute represents a valid IP host address."
            // 0.0.0.0, multicast (224/4) and class E (240/4, which holds 255.255.255.255) are never
            // host addresses. Loopback and our own addresses are session-dependent: checked on import
            // (`rib::ImportCheck`).
            if next_hop.is_unspecified() || next_hop.is_multicast() || next_hop.octets()[0] >= 240 {
                return Err(Fault::Withdraw(UpdateError::InvalidNextHop {
                    attribute: whole(),
                }));
            }
            attrs.next_hop = Some(next_hop);
        }
        ty::MULTI_EXIT_DISC => {
            // RFC 7606 §7.4: "The attribute is considered malformed if its length is not 4 [RFC4271]. An
            // UPDATE message with a malformed MULTI_EXIT_DISC attribute SHALL be handled using the
            // approach of "treat-as-withdraw"."
            attrs.med = Some(u32_of(value).ok_or_else(|| Fault::Withdraw(length_error()))?);
        }
        ty::LOCAL_PREF => {
            // RFC 7606 §7.5: "If the LOCAL_PREF attribute is received from an external neighbor, it SHALL
            // be discarded using the approach of "attribute discard"; or if received from an internal
            // neighbor, it SHALL be considered malformed if its length is not equal to 4. If malformed,
            // the UPDATE message SHALL be handled using the approach of "treat-as-withdraw"."
            attrs.local_pref = Some(u32_of(value).ok_or_else(|| Fault::Withdraw(length_error()))?);
        }
        ty::ATOMIC_AGGREGATE => {
            // RFC 7606 §7.6: "The attribute SHALL be considered malformed if its length is not 0
            // [RFC4271]. An UPDATE message with a malformed ATOMIC_AGGREGATE attribute SHALL be handled
            // using the approach of "attribute discard"."
            if !value.is_empty() {
                return Err(Fault::Discard(length_error()));
            }
            attrs.atomic_aggregate = true;
        }
        ty::AGGREGATOR => {
            // RFC 7606 §7.7: "The error handling of [RFC4271] is revised as follows: - The attribute SHALL
            // be considered malformed if any of the following applies: - Its length is not 6 (when the
            // 4-octet AS number capability is not advertised to, or not received from, the peer
            // [RFC6793]). - Its length is not 8 (when the 4-octet AS number capability is both advertised
            // to and received from the peer). An UPDATE message with a malformed AGGREGATOR attribute
            // SHALL be handled using the approach of "attribute discard"."
            let aggregator = decode_aggregator(value, ctx.four_octet_as)
                .ok_or_else(|| Fault::Discard(length_error()))?;
            // RFC 7607 §2: AS 0 in AGGREGATOR is malformed, handled per RFC 7606 (§7.7: attribute
            // discard).
            if aggregator.asn == 0 {
                return Err(Fault::Discard(UpdateError::OptionalAttribute {
                    attribute: whole(),
                }));
            }
            attrs.aggregator = Some(aggregator);
        }
        ty::COMMUNITIES => {
            // RFC 7606 §7.8: "The error handling of [RFC1997] is revised as follows: - The COMMUNITIES
            // attribute SHALL be considered malformed if its length is not a non-zero multiple of 4. - An
            // UPDATE message with a malformed COMMUNITIES attribute SHALL be handled using the approach of
            // "treat-as-withdraw"."
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(Fault::Withdraw(length_error()));
            }
            attrs.communities = value
                .chunks_exact(4)
                .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
        }
        ty::ORIGINATOR_ID => {
            // RFC 7606 §7.9: "The error handling of [RFC4456] is revised as follows: - if the
            // ORIGINATOR_ID attribute is received from an external neighbor, it SHALL be discarded using
            // the approach of "attribute discard"; or - if received from an internal neighbor, it SHALL be
            // considered malformed if its length is not equal to 4. If malformed, the UPDATE message SHALL
            // be handled using the approach of "treat-as-withdraw"."
            let id = u32_of(value).ok_or_else(|| Fault::Withdraw(length_error()))?;
            attrs.originator_id = Some(Ipv4Addr::from(id));
        }
        ty::CLUSTER_LIST => {
            // RFC 7606 §7.10: "- if the CLUSTER_LIST attribute is received from an external neighbor, it
            // SHALL be discarded using the approach of "attribute discard"; or - if received from an
            // internal neighbor, it SHALL be considered malformed if its length is not a non-zero multiple
            // of 4. If malformed, the UPDATE message SHALL be handled using the approach of
            // "treat-as-withdraw"."
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(Fault::Withdraw(length_error()));
            }
            attrs.cluster_list = value
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect();
        }
        ty::MP_REACH_NLRI => {
            // RFC 7606 §7.11 and §3 (j): an MP_REACH_NLRI we cannot parse makes treat-as-withdraw
            // impossible, so "the "session reset" approach (or the "AFI/SAFI disable" approach) MUST be
            // followed"; RFC 4760 §7 names the subcode: "Optional Attribute Error".
            out.mp_reach = decode_mp_reach(value, ctx).ok_or_else(|| {
                Fault::Reset(UpdateError::OptionalAttribute { attribute: whole() })
            })?;
            if out.mp_reach.is_none() {
                return Err(Fault::Ignore);
            }
        }
        ty::MP_UNREACH_NLRI => {
            out.mp_unreach = decode_mp_unreach(value, ctx).ok_or_else(|| {
                Fault::Reset(UpdateError::OptionalAttribute { attribute: whole() })
            })?;
            if out.mp_unreach.is_none() {
                return Err(Fault::Ignore);
            }
        }
        ty::EXTENDED_COMMUNITIES => {
            // RFC 7606 §7.14: "The error handling of [RFC4360] is revised as follows: - The Extended
            // Communities attribute SHALL be considered malformed if its length is not a non-zero multiple
            // of 8. - An UPDATE message with a malformed Extended Communities attribute SHALL be handled
            // using the approach of "treat-as-withdraw"."
            if value.is_empty() || !value.len().is_multiple_of(8) {
                return Err(Fault::Withdraw(length_error()));
            }
            let mut r = Reader::new(value);
            attrs.extended_communities = std::iter::from_fn(|| r.u64())
                .map(ExtendedCommunity)
                .collect();
        }
        ty::AS4_PATH | ty::AS4_AGGREGATOR if ctx.four_octet_as => {
            // RFC 6793 §6: "A NEW BGP speaker that receives the AS4_PATH attribute or the AS4_AGGREGATOR
            // attribute in an UPDATE message from another NEW BGP speaker MUST discard the path attribute
            // and continue processing the UPDATE message. This case SHOULD be logged locally for
            // analysis." (reported in `Update::errors` for the log)
            return Err(Fault::Discard(UpdateError::OptionalAttribute {
                attribute: whole(),
            }));
        }
        ty::AS4_PATH => {
            // RFC 6793 §6: "... the "attribute discard" approach is chosen to handle a malformed AS4_PATH
            // attribute." ... "The AS4_PATH attribute in an UPDATE message SHALL be considered malformed
            // under the following conditions: the attribute length is not a multiple of two or is too
            // small (i.e., less than 6) for the attribute to carry at least one AS number, or the path
            // segment length in the attribute is either zero or is inconsistent with the attribute
            // length, or the path segment type in the attribute is not one of the types defined".
            let mut path = AsPath::decode(value, true)
                .filter(|_| value.len() >= 6)
                .ok_or_else(|| {
                    Fault::Discard(UpdateError::OptionalAttribute { attribute: whole() })
                })?;
            // RFC 6793 §6: "A NEW BGP speaker that receives these path segment types [AS_CONFED_SEQUENCE
            // and AS_CONFED_SET] in the AS4_PATH attribute of an UPDATE message from an OLD BGP speaker
            // MUST discard these path segments, adjust the relevant attribute fields accordingly, and
            // continue processing the UPDATE message."
            path.segments.retain(|seg| !seg.kind.is_confed());
            // RFC 7607 §2: "An UPDATE message that contains the AS number of zero in the AS4_PATH ...
            // attribute MUST be considered as malformed and be handled by the procedures specified in
            // [RFC6793]", which would discard it and leave AS_TRANS in the path. Reef withdraws instead,
            // as FRR does: AS 0 in the path the route would really carry means the path is bogus, and
            // an AS_PATH of AS_TRANS placeholders would make it look valid (docs/RFC_NOTES.md).
            if path.contains(0) {
                return Err(Fault::Withdraw(UpdateError::MalformedAsPath));
            }
            if path.segments.is_empty() {
                // Nothing left to merge.
                return Err(Fault::Ignore);
            }
            attrs.as4_path = Some(path);
        }
        ty::AS4_AGGREGATOR => {
            // RFC 6793 §6: "... the "attribute discard" approach is chosen to handle a malformed
            // AS4_AGGREGATOR attribute." Its length is 8 (4-octet AS, IPv4 address).
            let aggregator =
                decode_aggregator(value, true).ok_or_else(|| Fault::Discard(length_error()))?;
            // RFC 7607 §2: AS 0 in AS4_AGGREGATOR is malformed, handled per RFC 6793 (§6: attribute
            // discard).
            if aggregator.asn == 0 {
                return Err(Fault::Discard(UpdateError::OptionalAttribute {
                    attribute: whole(),
                }));
            }
            attrs.as4_aggregator = Some(aggregator);
        }
        ty::LARGE_COMMUNITY => {
            // RFC 8092 §6: "A Large Communities attribute SHALL be considered malformed if the length of
            // the value field is either zero or is not a non-zero multiple of 12." ... "A BGP UPDATE
            // message with a malformed Large Communities attribute SHALL be handled using the approach of
            // "treat-as-withdraw" as described in Section 2 of [RFC7606]."
            if value.is_empty() || !value.len().is_multiple_of(12) {
                return Err(Fault::Withdraw(length_error()));
            }
            attrs.large_communities = value
                .chunks_exact(12)
                .map(|c| LargeCommunity {
                    global_admin: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    local_data1: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                    local_data2: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                })
                .collect();
        }
        ty::IPV6_EXTENDED_COMMUNITIES
            if flags & fl::OPTIONAL != 0
                && (value.is_empty() || !value.len().is_multiple_of(20)) =>
        {
            // RFC 7606 §7.15: "The IPv6 Address Specific Extended Community attribute SHALL be
            // considered malformed if its length is not a non-zero multiple of 20. An UPDATE message
            // with a malformed IPv6 Address Specific Extended Community attribute SHALL be handled using
            // the approach of "treat-as-withdraw"." Well-formed ones are passed on uninterpreted below.
            return Err(Fault::Withdraw(length_error()));
        }
        _ => {
            // RFC 4271 §6.3: "If any of the well-known mandatory attributes are not recognized, then the
            // Error Subcode MUST be set to Unrecognized Well-known Attribute." (not relaxed by RFC 7606)
            if flags & fl::OPTIONAL == 0 {
                return Err(Fault::Reset(UpdateError::UnrecognizedWellKnownAttribute {
                    attribute: whole(),
                }));
            }
            // RFC 4271 §5: "Unrecognized non-transitive optional attributes MUST be quietly ignored and
            // not passed along to other BGP peers." and "If an optional transitive attribute is
            // unrecognized, the Partial bit MUST be set to 1 if the attribute is propagated".
            if flags & fl::TRANSITIVE == 0 {
                return Err(Fault::Ignore);
            }
            attrs.unknown.push(RawAttribute {
                flags: (flags | fl::PARTIAL) & !fl::EXTENDED_LENGTH,
                type_code,
                value: field.slice_ref(value),
            });
        }
    }
    Ok(())
}

fn decode_aggregator(value: &[u8], four_octet: bool) -> Option<Aggregator> {
    let mut r = Reader::new(value);
    let asn = if four_octet {
        r.u32()?
    } else {
        u32::from(r.u16()?)
    };
    let address = r.ipv4()?;
    r.is_empty().then_some(Aggregator { asn, address })
}

/// `Ok(None)`: a family the codec does not decode (ignored). `None` (outer): malformed.
fn decode_mp_reach(value: &[u8], ctx: &CodecContext) -> Option<Option<MpReach>> {
    let mut r = Reader::new(value);
    let afi_safi = AfiSafi::new(Afi(r.u16()?), Safi(r.u8()?));
    if !afi_safi.is_supported() {
        return Some(None);
    }
    let nh_len = r.u8()?;
    let mut nh = Reader::new(r.take(usize::from(nh_len))?);
    // RFC 4760 §3 (Length of Next Hop Network Address) with RFC 2545 §3 (IPv6: 16 or 32 octets, global
    // then link-local) and RFC 8950 §3 (IPv4 NLRI with an IPv6 next hop when negotiated).
    let v6_next_hop = |nh: &mut Reader<'_>| -> Option<NextHop> {
        let global = nh.ipv6()?;
        let link_local = if nh.is_empty() {
            None
        } else {
            Some(nh.ipv6()?)
        };
        Some(NextHop::V6 { global, link_local })
    };
    let next_hop = match (afi_safi.afi, nh_len) {
        (Afi::IPV4, 4) => NextHop::V4(nh.ipv4()?),
        (Afi::IPV4, 16 | 32) if ctx.extended_next_hop.contains(afi_safi) => v6_next_hop(&mut nh)?,
        (Afi::IPV6, 16 | 32) => v6_next_hop(&mut nh)?,
        _ => return None,
    };
    // RFC 4760 §3: "Reserved: A 1 octet field that MUST be set to 0, and SHOULD be ignored upon receipt."
    let _reserved = r.u8()?;
    let mut nlri = Vec::new();
    decode_prefixes(r.rest(), afi_safi.afi, ctx.add_path_rx(afi_safi), &mut nlri)?;
    Some(Some(MpReach {
        afi_safi,
        next_hop,
        nlri,
    }))
}

fn decode_mp_unreach(value: &[u8], ctx: &CodecContext) -> Option<Option<MpUnreach>> {
    let mut r = Reader::new(value);
    let afi_safi = AfiSafi::new(Afi(r.u16()?), Safi(r.u8()?));
    if !afi_safi.is_supported() {
        // Keep only an End-of-RIB marker of a family we do not decode. RFC 4724 §2.
        return Some(r.is_empty().then_some(MpUnreach {
            afi_safi,
            withdrawn: Vec::new(),
        }));
    }
    let mut withdrawn = Vec::new();
    decode_prefixes(
        r.rest(),
        afi_safi.afi,
        ctx.add_path_rx(afi_safi),
        &mut withdrawn,
    )?;
    Some(Some(MpUnreach {
        afi_safi,
        withdrawn,
    }))
}

/// Writes attribute flags, type and length (Extended Length only when needed).
fn put_header(out: &mut BytesMut, flags: u8, type_code: u8, len: usize) -> Result<(), EncodeError> {
    let len16 = u16::try_from(len).map_err(|_| EncodeError::AttributeTooLong {
        type_code,
        size: len,
    })?;
    match u8::try_from(len16) {
        Ok(len8) => {
            out.put_u8(flags & !fl::EXTENDED_LENGTH);
            out.put_u8(type_code);
            out.put_u8(len8);
        }
        Err(_) => {
            out.put_u8(flags | fl::EXTENDED_LENGTH);
            out.put_u8(type_code);
            out.put_u16(len16);
        }
    }
    Ok(())
}

pub(crate) fn encode_mp_reach(
    mp: &MpReach,
    ctx: &CodecContext,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    // The receiver accepts only these combinations (see `decode_mp_reach`).
    let next_hop_fits = match (mp.afi_safi.afi, &mp.next_hop) {
        (Afi::IPV4, NextHop::V4(_)) => true,
        (Afi::IPV4, NextHop::V6 { .. }) => ctx.extended_next_hop.contains(mp.afi_safi),
        (Afi::IPV6, NextHop::V6 { .. }) => true,
        _ => false,
    };
    if !next_hop_fits {
        return Err(EncodeError::NextHopFamily(mp.afi_safi));
    }
    let add_path = ctx.add_path_tx(mp.afi_safi);
    let nlri_len: usize = mp.nlri.iter().map(|n| n.encoded_len(add_path)).sum();
    put_header(
        out,
        OPTIONAL_NON_TRANSITIVE,
        ty::MP_REACH_NLRI,
        5 + mp.next_hop.encoded_len() + nlri_len,
    )?;
    out.put_u16(mp.afi_safi.afi.0);
    out.put_u8(mp.afi_safi.safi.0);
    // At most 32.
    out.put_u8(mp.next_hop.encoded_len() as u8);
    mp.next_hop.encode(out);
    out.put_u8(0);
    for nlri in &mp.nlri {
        nlri.encode(add_path, out);
    }
    Ok(())
}

pub(crate) fn encode_mp_unreach(
    mp: &MpUnreach,
    ctx: &CodecContext,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let add_path = ctx.add_path_tx(mp.afi_safi);
    let nlri_len: usize = mp.withdrawn.iter().map(|n| n.encoded_len(add_path)).sum();
    put_header(
        out,
        OPTIONAL_NON_TRANSITIVE,
        ty::MP_UNREACH_NLRI,
        3 + nlri_len,
    )?;
    out.put_u16(mp.afi_safi.afi.0);
    out.put_u8(mp.afi_safi.safi.0);
    for nlri in &mp.withdrawn {
        nlri.encode(add_path, out);
    }
    Ok(())
}

/// Octets of the MP_REACH_NLRI attribute without its NLRI (with an extended-length header).
pub(crate) fn mp_reach_overhead(next_hop: &NextHop) -> usize {
    4 + 5 + next_hop.encoded_len()
}

/// Octets of the MP_UNREACH_NLRI attribute without its NLRI (with an extended-length header).
pub(crate) const MP_UNREACH_OVERHEAD: usize = 4 + 3;

impl PathAttributes {
    /// Appends the attributes in type code order (the same octets decoding puts in
    /// `Update::raw_attributes`, so locally built attribute sets intern like received ones). On a 2-octet AS session, AS numbers above 65535 become
    /// AS_TRANS and, unless given, AS4_PATH/AS4_AGGREGATOR are added (RFC 6793 §4.2.2); on a 4-octet
    /// session AS4_PATH/AS4_AGGREGATOR are never sent.
    pub fn encode(&self, ctx: &CodecContext, out: &mut BytesMut) -> Result<(), EncodeError> {
        let four = ctx.four_octet_as;
        if let Some(origin) = self.origin {
            put_header(out, WELL_KNOWN, ty::ORIGIN, 1)?;
            out.put_u8(origin as u8);
        }
        if let Some(path) = &self.as_path {
            put_header(out, WELL_KNOWN, ty::AS_PATH, path.encoded_len(four))?;
            path.encode(four, out);
        }
        if let Some(next_hop) = self.next_hop {
            put_header(out, WELL_KNOWN, ty::NEXT_HOP, 4)?;
            out.put_slice(&next_hop.octets());
        }
        if let Some(med) = self.med {
            put_header(out, OPTIONAL_NON_TRANSITIVE, ty::MULTI_EXIT_DISC, 4)?;
            out.put_u32(med);
        }
        if let Some(local_pref) = self.local_pref {
            put_header(out, WELL_KNOWN, ty::LOCAL_PREF, 4)?;
            out.put_u32(local_pref);
        }
        if self.atomic_aggregate {
            put_header(out, WELL_KNOWN, ty::ATOMIC_AGGREGATE, 0)?;
        }
        if let Some(aggregator) = self.aggregator {
            put_aggregator(out, ty::AGGREGATOR, aggregator, four)?;
        }
        if !self.communities.is_empty() {
            put_header(
                out,
                OPTIONAL_TRANSITIVE,
                ty::COMMUNITIES,
                4 * self.communities.len(),
            )?;
            for community in &self.communities {
                out.put_u32(community.0);
            }
        }
        if let Some(originator_id) = self.originator_id {
            put_header(out, OPTIONAL_NON_TRANSITIVE, ty::ORIGINATOR_ID, 4)?;
            out.put_slice(&originator_id.octets());
        }
        if !self.cluster_list.is_empty() {
            put_header(
                out,
                OPTIONAL_NON_TRANSITIVE,
                ty::CLUSTER_LIST,
                4 * self.cluster_list.len(),
            )?;
            for id in &self.cluster_list {
                out.put_slice(&id.octets());
            }
        }
        if !self.extended_communities.is_empty() {
            put_header(
                out,
                OPTIONAL_TRANSITIVE,
                ty::EXTENDED_COMMUNITIES,
                8 * self.extended_communities.len(),
            )?;
            for community in &self.extended_communities {
                out.put_u64(community.0);
            }
        }
        if !four {
            // RFC 6793 §4.2.2: "... if the NEW BGP speaker has to send any AS numbers that cannot be
            // represented in 2 octets, it MUST send the AS4_PATH attribute" (without confederation
            // segments), and the same for AS4_AGGREGATOR.
            let as4_path = self
                .as4_path
                .as_ref()
                .or(self.as_path.as_ref().filter(|p| p.has_four_octet_asn()))
                .map(AsPath::without_confed)
                // The receiver discards an AS4_PATH without AS numbers (RFC 6793 §6).
                .filter(|p| !p.segments.is_empty());
            if let Some(path) = as4_path {
                put_header(
                    out,
                    OPTIONAL_TRANSITIVE,
                    ty::AS4_PATH,
                    path.encoded_len(true),
                )?;
                path.encode(true, out);
            }
            let as4_aggregator = self
                .as4_aggregator
                .or(self.aggregator.filter(|a| a.asn > u32::from(u16::MAX)));
            if let Some(aggregator) = as4_aggregator {
                put_aggregator(out, ty::AS4_AGGREGATOR, aggregator, true)?;
            }
        }
        if !self.large_communities.is_empty() {
            put_header(
                out,
                OPTIONAL_TRANSITIVE,
                ty::LARGE_COMMUNITY,
                12 * self.large_communities.len(),
            )?;
            for community in &self.large_communities {
                out.put_u32(community.global_admin);
                out.put_u32(community.local_data1);
                out.put_u32(community.local_data2);
            }
        }
        for raw in &self.unknown {
            put_header(out, raw.flags, raw.type_code, raw.value.len())?;
            out.put_slice(&raw.value);
        }
        Ok(())
    }
}

fn put_aggregator(
    out: &mut BytesMut,
    type_code: u8,
    aggregator: Aggregator,
    four: bool,
) -> Result<(), EncodeError> {
    put_header(
        out,
        OPTIONAL_TRANSITIVE,
        type_code,
        if four { 8 } else { 6 },
    )?;
    if four {
        out.put_u32(aggregator.asn);
    } else {
        out.put_u16(u16::try_from(aggregator.asn).unwrap_or(AS_TRANS as u16));
    }
    out.put_slice(&aggregator.address.octets());
    Ok(())
}
