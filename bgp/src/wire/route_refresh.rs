//! ROUTE-REFRESH message (RFC 2918 §3, RFC 7313 §3).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::RouteRefreshError;
use super::types::{Afi, Reader, Safi};

/// Message Subtype. RFC 7313 §3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RouteRefreshSubtype {
    /// 0: a normal route refresh request (RFC 2918).
    Normal,
    /// 1: Beginning of Route Refresh (BoRR).
    BeginningOfRouteRefresh,
    /// 2: End of Route Refresh (EoRR).
    EndOfRouteRefresh,
    /// RFC 7313 §5: "When the BGP speaker receives a ROUTE-REFRESH message with a "Message Subtype"
    /// field other than 0, 1, or 2, it MUST ignore the received ROUTE-REFRESH message." (the FSM does)
    Unknown(u8),
}

impl RouteRefreshSubtype {
    pub fn from_u8(value: u8) -> RouteRefreshSubtype {
        match value {
            0 => RouteRefreshSubtype::Normal,
            1 => RouteRefreshSubtype::BeginningOfRouteRefresh,
            2 => RouteRefreshSubtype::EndOfRouteRefresh,
            other => RouteRefreshSubtype::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            RouteRefreshSubtype::Normal => 0,
            RouteRefreshSubtype::BeginningOfRouteRefresh => 1,
            RouteRefreshSubtype::EndOfRouteRefresh => 2,
            RouteRefreshSubtype::Unknown(other) => other,
        }
    }
}

/// A ROUTE-REFRESH message: AFI (2), Message Subtype (1, "Reserved" in RFC 2918), SAFI (1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RouteRefresh {
    pub afi: Afi,
    pub safi: Safi,
    pub subtype: RouteRefreshSubtype,
}

impl RouteRefresh {
    /// Decodes the body; `message` is the whole message, which the error carries.
    pub(crate) fn decode(message: &Bytes, body: &[u8]) -> Result<RouteRefresh, RouteRefreshError> {
        let mut r = Reader::new(body);
        let invalid = || RouteRefreshError::InvalidMessageLength {
            message: message.clone(),
        };
        let afi = Afi(r.u16().ok_or_else(invalid)?);
        let subtype = RouteRefreshSubtype::from_u8(r.u8().ok_or_else(invalid)?);
        let safi = Safi(r.u8().ok_or_else(invalid)?);
        // RFC 7313 §5: "If the length, excluding the fixed-size message header, of the received
        // ROUTE-REFRESH message with Message Subtype 1 and 2 is not 4, then the BGP speaker MUST send a
        // NOTIFICATION message with the Error Code of "ROUTE-REFRESH Message Error" and the subcode of
        // "Invalid Message Length"." Subtype 0 is held to the same length: we negotiate no ORF (RFC 5291).
        if !r.is_empty() && !matches!(subtype, RouteRefreshSubtype::Unknown(_)) {
            return Err(invalid());
        }
        Ok(RouteRefresh { afi, safi, subtype })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(self.afi.0);
        out.put_u8(self.subtype.to_u8());
        out.put_u8(self.safi.0);
    }
}
