//! OPEN message (RFC 4271 §4.2), optional parameters (RFC 9072) and capabilities (RFC 5492).

use std::net::Ipv4Addr;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, OpenError};
use super::types::{AS_TRANS, Afi, AfiSafi, BGP_VERSION, Reader, Safi};

/// Optional parameter type of Capabilities. RFC 5492 §4.
const PARAM_CAPABILITIES: u8 = 2;
/// Optional parameter type that marks the extended optional parameters length. RFC 9072 §2.
const PARAM_EXTENDED_LENGTH: u8 = 255;

/// Capability codes (IANA "Capability Codes").
pub mod capability_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    pub const EXTENDED_MESSAGE: u8 = 6;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    pub const ADD_PATH: u8 = 69;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
    pub const FQDN: u8 = 73;
}
use capability_code as code;

/// Per-family entry of the Graceful Restart capability. RFC 4724 §3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GracefulRestartFamily {
    pub afi_safi: AfiSafi,
    /// The "Forwarding State" (F) bit.
    pub forwarding_preserved: bool,
}

/// Graceful Restart capability. RFC 4724 §3, RFC 8538 (N bit).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct GracefulRestart {
    /// The "Restart State" (R) bit.
    pub restart_state: bool,
    /// The "Graceful Notification" (N) bit of RFC 8538.
    pub notification: bool,
    /// Restart time in seconds (12 bits on the wire).
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

/// ADD-PATH Send/Receive field. RFC 7911 §4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AddPathMode {
    Receive = 1,
    Send = 2,
    Both = 3,
}

impl AddPathMode {
    pub fn receives(self) -> bool {
        matches!(self, AddPathMode::Receive | AddPathMode::Both)
    }

    pub fn sends(self) -> bool {
        matches!(self, AddPathMode::Send | AddPathMode::Both)
    }
}

/// Per-family entry of the ADD-PATH capability. RFC 7911 §4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AddPathFamily {
    pub afi_safi: AfiSafi,
    pub mode: AddPathMode,
}

/// Entry of the Extended Next Hop Encoding capability: NLRI of `nlri` may carry a next hop of
/// `next_hop_afi`. RFC 8950 §3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ExtendedNextHopFamily {
    pub nlri: AfiSafi,
    pub next_hop_afi: Afi,
}

/// A capability advertised in an OPEN (RFC 5492). Capabilities we do not know, and known ones whose
/// content RFC says to ignore (an ADD-PATH mode other than 1-3), are kept as `Unknown`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Capability {
    /// RFC 4760 §8.
    Multiprotocol(AfiSafi),
    /// RFC 2918.
    RouteRefresh,
    /// RFC 7313.
    EnhancedRouteRefresh,
    /// RFC 6793.
    FourOctetAs(u32),
    /// RFC 4724.
    GracefulRestart(GracefulRestart),
    /// RFC 8950.
    ExtendedNextHop(Vec<ExtendedNextHopFamily>),
    /// RFC 8654.
    ExtendedMessage,
    /// RFC 7911.
    AddPath(Vec<AddPathFamily>),
    /// draft-walton-bgp-hostname-capability.
    Fqdn {
        hostname: String,
        domain: String,
    },
    Unknown {
        code: u8,
        value: Bytes,
    },
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol(_) => code::MULTIPROTOCOL,
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => code::ENHANCED_ROUTE_REFRESH,
            Capability::FourOctetAs(_) => code::FOUR_OCTET_AS,
            Capability::GracefulRestart(_) => code::GRACEFUL_RESTART,
            Capability::ExtendedNextHop(_) => code::EXTENDED_NEXT_HOP,
            Capability::ExtendedMessage => code::EXTENDED_MESSAGE,
            Capability::AddPath(_) => code::ADD_PATH,
            Capability::Fqdn { .. } => code::FQDN,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Decodes one capability value. `None` means a known capability with a malformed value.
    fn decode(cap_code: u8, value: &[u8]) -> Option<Capability> {
        let mut r = Reader::new(value);
        let unknown = || Capability::Unknown {
            code: cap_code,
            value: Bytes::copy_from_slice(value),
        };
        let cap = match cap_code {
            code::MULTIPROTOCOL => {
                // RFC 4760 §8: AFI (2 octets), Reserved (1 octet), SAFI (1 octet).
                let afi = Afi(r.u16()?);
                let _reserved = r.u8()?;
                let safi = Safi(r.u8()?);
                Capability::Multiprotocol(AfiSafi::new(afi, safi))
            }
            code::ROUTE_REFRESH => Capability::RouteRefresh,
            code::ENHANCED_ROUTE_REFRESH => Capability::EnhancedRouteRefresh,
            code::EXTENDED_MESSAGE => Capability::ExtendedMessage,
            // RFC 6793 §3: "... the Capability Value field ... contains the 4-octet AS number".
            code::FOUR_OCTET_AS => Capability::FourOctetAs(r.u32()?),
            code::GRACEFUL_RESTART => {
                // RFC 4724 §3: Restart Flags (4 bits), Restart Time (12 bits), then per family AFI (2),
                // SAFI (1), Flags for Address Family (1).
                let head = r.u16()?;
                let mut families = Vec::with_capacity(r.remaining() / 4);
                while !r.is_empty() {
                    let afi = Afi(r.u16()?);
                    let safi = Safi(r.u8()?);
                    let flags = r.u8()?;
                    families.push(GracefulRestartFamily {
                        afi_safi: AfiSafi::new(afi, safi),
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                })
            }
            code::EXTENDED_NEXT_HOP => {
                // RFC 8950 §3: NLRI AFI (2), NLRI SAFI (2), Nexthop AFI (2), repeated.
                let mut families = Vec::with_capacity(r.remaining() / 6);
                while !r.is_empty() {
                    let afi = Afi(r.u16()?);
                    let safi = r.u16()?;
                    let next_hop_afi = Afi(r.u16()?);
                    let Ok(safi) = u8::try_from(safi) else {
                        // No SAFI above 255 exists; keep the capability uninterpreted.
                        return Some(unknown());
                    };
                    families.push(ExtendedNextHopFamily {
                        nlri: AfiSafi::new(afi, Safi(safi)),
                        next_hop_afi,
                    });
                }
                Capability::ExtendedNextHop(families)
            }
            code::ADD_PATH => {
                // RFC 7911 §4: AFI (2), SAFI (1), Send/Receive (1), repeated.
                let mut families = Vec::with_capacity(r.remaining() / 4);
                while !r.is_empty() {
                    let afi = Afi(r.u16()?);
                    let safi = Safi(r.u8()?);
                    let mode = match r.u8()? {
                        1 => AddPathMode::Receive,
                        2 => AddPathMode::Send,
                        3 => AddPathMode::Both,
                        // RFC 7911 §4: "If any other value is received, then the capability SHOULD be
                        // treated as not understood and ignored."
                        _ => return Some(unknown()),
                    };
                    families.push(AddPathFamily {
                        afi_safi: AfiSafi::new(afi, safi),
                        mode,
                    });
                }
                Capability::AddPath(families)
            }
            code::FQDN => {
                let hostname_len = r.u8()?;
                let hostname = r.take(usize::from(hostname_len))?;
                let domain_len = r.u8()?;
                let domain = r.take(usize::from(domain_len))?;
                match (std::str::from_utf8(hostname), std::str::from_utf8(domain)) {
                    (Ok(hostname), Ok(domain)) => Capability::Fqdn {
                        hostname: hostname.to_owned(),
                        domain: domain.to_owned(),
                    },
                    _ => return Some(unknown()),
                }
            }
            _ => return Some(unknown()),
        };
        // Fixed-size capabilities with trailing octets are malformed.
        r.is_empty().then_some(cap)
    }

    /// Appends code, length and value (e.g. for the data of an Unsupported Capability NOTIFICATION).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_u8(self.code());
        out.put_u8(0);
        match self {
            Capability::Multiprotocol(af) => {
                out.put_u16(af.afi.0);
                out.put_u8(0);
                out.put_u8(af.safi.0);
            }
            Capability::RouteRefresh
            | Capability::EnhancedRouteRefresh
            | Capability::ExtendedMessage => {}
            Capability::FourOctetAs(asn) => out.put_u32(*asn),
            Capability::GracefulRestart(gr) => {
                let mut head = gr.restart_time & 0x0fff;
                if gr.restart_state {
                    head |= 0x8000;
                }
                if gr.notification {
                    head |= 0x4000;
                }
                out.put_u16(head);
                for family in &gr.families {
                    out.put_u16(family.afi_safi.afi.0);
                    out.put_u8(family.afi_safi.safi.0);
                    out.put_u8(if family.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::ExtendedNextHop(families) => {
                for family in families {
                    out.put_u16(family.nlri.afi.0);
                    out.put_u16(u16::from(family.nlri.safi.0));
                    out.put_u16(family.next_hop_afi.0);
                }
            }
            Capability::AddPath(families) => {
                for family in families {
                    out.put_u16(family.afi_safi.afi.0);
                    out.put_u8(family.afi_safi.safi.0);
                    out.put_u8(family.mode as u8);
                }
            }
            Capability::Fqdn { hostname, domain } => {
                for text in [hostname, domain] {
                    let len =
                        u8::try_from(text.len()).map_err(|_| EncodeError::CapabilityTooLong {
                            code: code::FQDN,
                            size: text.len(),
                        })?;
                    out.put_u8(len);
                    out.put_slice(text.as_bytes());
                }
            }
            Capability::Unknown { value, .. } => out.put_slice(value),
        }
        let value_len = out.len() - start - 2;
        let len = u8::try_from(value_len).map_err(|_| {
            out.truncate(start);
            EncodeError::CapabilityTooLong {
                code: self.code(),
                size: value_len,
            }
        })?;
        out[start + 1] = len;
        Ok(())
    }
}

/// An OPEN message. Non-capability optional parameters are rejected on decode (RFC 4271 §6.2: "If one
/// of the Optional Parameters in the OPEN message is not recognized, then the Error Subcode MUST be set
/// to Unsupported Optional Parameters."), so only capabilities are kept.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Open {
    pub version: u8,
    /// The 2-octet "My Autonomous System" field: [`AS_TRANS`] when the AS does not fit.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    /// In received order, flattened over all Capabilities parameters.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn`: fills `my_as` (AS_TRANS for a 4-octet AS, RFC 6793 §4.1) and version 4. The
    /// caller lists the capabilities, including [`Capability::FourOctetAs`].
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Open {
        Open {
            version: BGP_VERSION,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS as u16),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The speaker's AS: from the 4-octet AS capability if present, else `my_as`. RFC 6793 §4.1.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// The AS of the 4-octet AS capability, if advertised.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|cap| match cap {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    pub fn has_capability(&self, cap_code: u8) -> bool {
        self.capabilities.iter().any(|cap| cap.code() == cap_code)
    }

    /// Families of the Multiprotocol capabilities (in order, may repeat).
    pub fn multiprotocol(&self) -> impl Iterator<Item = AfiSafi> + '_ {
        self.capabilities.iter().filter_map(|cap| match cap {
            Capability::Multiprotocol(af) => Some(*af),
            _ => None,
        })
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|cap| match cap {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    pub fn add_path(&self) -> impl Iterator<Item = &AddPathFamily> + '_ {
        self.capabilities
            .iter()
            .filter_map(|cap| match cap {
                Capability::AddPath(families) => Some(families.iter()),
                _ => None,
            })
            .flatten()
    }

    pub fn extended_next_hop(&self) -> impl Iterator<Item = &ExtendedNextHopFamily> + '_ {
        self.capabilities
            .iter()
            .filter_map(|cap| match cap {
                Capability::ExtendedNextHop(families) => Some(families.iter()),
                _ => None,
            })
            .flatten()
    }

    /// Decodes the OPEN body (after the header).
    pub(crate) fn decode(body: &[u8]) -> Result<Open, OpenError> {
        let mut r = Reader::new(body);
        // The header check guarantees at least 10 octets (minimum OPEN length 29); a short body is still
        // reported, not assumed.
        let (version, my_as, hold_time, bgp_id, opt_len) =
            match (r.u8(), r.u16(), r.u16(), r.ipv4(), r.u8()) {
                (Some(v), Some(a), Some(h), Some(id), Some(l)) => (v, a, h, id, l),
                _ => return Err(OpenError::Malformed),
            };
        // RFC 4271 §6.2: "If the version number in the Version field of the received OPEN message is not
        // supported, then the Error Subcode MUST be set to Unsupported Version Number."
        if version != BGP_VERSION {
            return Err(OpenError::UnsupportedVersionNumber { version });
        }
        // RFC 4271 §6.2: "If the Hold Time field of the OPEN message is unacceptable, then the Error
        // Subcode MUST be set to Unacceptable Hold Time. An implementation MUST reject Hold Time values
        // of one or two seconds."
        if hold_time == 1 || hold_time == 2 {
            return Err(OpenError::UnacceptableHoldTime { hold_time });
        }
        // RFC 6286 §2.2: "... the BGP Identifier ... is a 4-octet, unsigned, non-zero integer" (which
        // relaxes RFC 4271's "valid unicast IP host address").
        if bgp_id.is_unspecified() {
            return Err(OpenError::BadBgpIdentifier { id: bgp_id });
        }

        // RFC 9072 §2: "If the value of the Optional Parameters Length field is 255 and the value of the
        // ... first Optional Parameter Type field is 255, then the ... extended format is used": a
        // 2-octet length follows, and each parameter has a 2-octet length.
        let extended = opt_len == 255 && r.rest().first() == Some(&PARAM_EXTENDED_LENGTH);
        let params = if extended {
            let _marker = r.u8();
            let len = r.u16().ok_or(OpenError::Malformed)?;
            r.take(usize::from(len)).ok_or(OpenError::Malformed)?
        } else {
            r.take(usize::from(opt_len)).ok_or(OpenError::Malformed)?
        };
        // The optional parameters must end the message.
        if !r.is_empty() {
            return Err(OpenError::Malformed);
        }

        let mut capabilities = Vec::new();
        let mut params = Reader::new(params);
        while !params.is_empty() {
            let param_type = params.u8().ok_or(OpenError::Malformed)?;
            let len = if extended {
                params.u16()
            } else {
                params.u8().map(u16::from)
            };
            let value = len
                .and_then(|len| params.take(usize::from(len)))
                .ok_or(OpenError::Malformed)?;
            if param_type != PARAM_CAPABILITIES {
                return Err(OpenError::UnsupportedOptionalParameter { param_type });
            }
            // RFC 5492 §4: a list of <Capability Code (1), Capability Length (1), Capability Value>.
            let mut caps = Reader::new(value);
            while !caps.is_empty() {
                let cap_code = caps.u8().ok_or(OpenError::Malformed)?;
                let cap_len = caps.u8().ok_or(OpenError::Malformed)?;
                let cap_value = caps
                    .take(usize::from(cap_len))
                    .ok_or(OpenError::Malformed)?;
                capabilities
                    .push(Capability::decode(cap_code, cap_value).ok_or(OpenError::Malformed)?);
            }
        }

        let open = Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        };
        // RFC 7607 §2: "... A BGP speaker MUST NOT originate or propagate AS 0 ... if a BGP speaker
        // receives zero as the peer AS in an OPEN message, it MUST abort the connection and send a
        // NOTIFICATION with Error Code "OPEN Message Error" and subcode "Bad Peer AS"".
        if open.asn() == 0 || my_as == 0 {
            return Err(OpenError::BadPeerAs { asn: open.asn() });
        }
        Ok(open)
    }

    /// Appends the OPEN body (after the header).
    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.version);
        out.put_u16(self.my_as);
        out.put_u16(self.hold_time);
        out.put_slice(&self.bgp_id.octets());
        let mut caps = BytesMut::new();
        for cap in &self.capabilities {
            cap.encode(&mut caps)?;
        }
        if caps.is_empty() {
            out.put_u8(0);
            return Ok(());
        }
        // One Capabilities parameter holds every capability (as BIRD and FRR send); when it exceeds 255
        // octets the RFC 9072 extended format is used.
        match u8::try_from(caps.len()) {
            Ok(cap_len) if caps.len() + 2 <= 255 => {
                out.put_u8(cap_len + 2);
                out.put_u8(PARAM_CAPABILITIES);
                out.put_u8(cap_len);
            }
            _ => {
                let total = caps.len() + 3;
                let total = u16::try_from(total)
                    .map_err(|_| EncodeError::OptionalParametersTooLong { size: total })?;
                out.put_u8(255);
                out.put_u8(PARAM_EXTENDED_LENGTH);
                out.put_u16(total);
                out.put_u8(PARAM_CAPABILITIES);
                // `total` fits u16 and is larger.
                out.put_u16(total - 3);
            }
        }
        out.put_slice(&caps);
        Ok(())
    }
}
