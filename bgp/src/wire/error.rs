//! Decode and encode errors. Every decode error that resets the session maps one-to-one to an
//! RFC 4271 §6 NOTIFICATION (code, subcode and data) through [`MessageError::notification`].

use std::net::Ipv4Addr;

use bytes::Bytes;
use thiserror::Error;

use super::notification::{
    HeaderSubcode, Notification, OpenSubcode, RouteRefreshSubcode, UpdateSubcode,
};
use super::types::{AfiSafi, BGP_VERSION};

/// A received message that must reset the session.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum MessageError {
    #[error("message header error: {0}")]
    Header(#[from] HeaderError),
    #[error("OPEN message error: {0}")]
    Open(#[from] OpenError),
    #[error("UPDATE message error: {0}")]
    Update(#[from] UpdateError),
    #[error("ROUTE-REFRESH message error: {0}")]
    RouteRefresh(#[from] RouteRefreshError),
}

impl MessageError {
    /// The NOTIFICATION to send for this error (RFC 4271 §6, RFC 5492, RFC 7313).
    pub fn notification(&self) -> Notification {
        match self {
            MessageError::Header(e) => e.notification(),
            MessageError::Open(e) => e.notification(),
            MessageError::Update(e) => e.notification(),
            MessageError::RouteRefresh(e) => e.notification(),
        }
    }
}

/// Message Header errors (RFC 4271 §6.1).
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum HeaderError {
    #[error("connection not synchronized: marker is not all ones")]
    ConnectionNotSynchronized,
    #[error("bad message length {length}")]
    BadMessageLength { length: u16 },
    #[error("bad message type {message_type}")]
    BadMessageType { message_type: u8 },
}

impl HeaderError {
    pub fn notification(&self) -> Notification {
        match self {
            HeaderError::ConnectionNotSynchronized => {
                Notification::header(HeaderSubcode::ConnectionNotSynchronized, Bytes::new())
            }
            // RFC 4271 §6.1: "The Data field MUST contain the erroneous Length field."
            HeaderError::BadMessageLength { length } => Notification::header(
                HeaderSubcode::BadMessageLength,
                Bytes::copy_from_slice(&length.to_be_bytes()),
            ),
            // RFC 4271 §6.1: "The Data field MUST contain the erroneous Type field."
            HeaderError::BadMessageType { message_type } => Notification::header(
                HeaderSubcode::BadMessageType,
                Bytes::copy_from_slice(&[*message_type]),
            ),
        }
    }
}

/// OPEN message errors (RFC 4271 §6.2, RFC 5492 §5).
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum OpenError {
    #[error("unsupported version number {version}")]
    UnsupportedVersionNumber { version: u8 },
    #[error("bad peer AS {asn}")]
    BadPeerAs { asn: u32 },
    #[error("bad BGP identifier {id}")]
    BadBgpIdentifier { id: Ipv4Addr },
    #[error("unsupported optional parameter type {param_type}")]
    UnsupportedOptionalParameter { param_type: u8 },
    #[error("unacceptable hold time {hold_time}")]
    UnacceptableHoldTime { hold_time: u16 },
    /// `capabilities` are the capability TLVs (code, length, value) we require but the peer lacks, or that
    /// the peer sent and we cannot accept.
    #[error("unsupported capability")]
    UnsupportedCapability { capabilities: Bytes },
    /// Optional parameters or a known capability that cannot be parsed (no specific subcode exists:
    /// OPEN Message Error / Unspecific, as FRR and BIRD send).
    #[error("malformed optional parameters or capability")]
    Malformed,
}

impl OpenError {
    pub fn notification(&self) -> Notification {
        match self {
            // RFC 4271 §6.2: "The Data field is a 2-octet unsigned integer, which indicates the largest,
            // locally-supported version number less than the version the remote BGP peer bid (as
            // indicated in the received OPEN message), or if the smallest, locally-supported version
            // number is greater than the version the remote BGP peer bid, then the smallest,
            // locally-supported version number."
            OpenError::UnsupportedVersionNumber { .. } => Notification::open(
                OpenSubcode::UnsupportedVersionNumber,
                Bytes::copy_from_slice(&u16::from(BGP_VERSION).to_be_bytes()),
            ),
            OpenError::BadPeerAs { .. } => Notification::open(OpenSubcode::BadPeerAs, Bytes::new()),
            OpenError::BadBgpIdentifier { .. } => {
                Notification::open(OpenSubcode::BadBgpIdentifier, Bytes::new())
            }
            OpenError::UnsupportedOptionalParameter { .. } => {
                Notification::open(OpenSubcode::UnsupportedOptionalParameter, Bytes::new())
            }
            OpenError::UnacceptableHoldTime { .. } => {
                Notification::open(OpenSubcode::UnacceptableHoldTime, Bytes::new())
            }
            // RFC 5492 §5: "The Data field of the NOTIFICATION message SHOULD list the set of
            // capabilities that cause the speaker to send the message."
            OpenError::UnsupportedCapability { capabilities } => {
                Notification::open(OpenSubcode::UnsupportedCapability, capabilities.clone())
            }
            OpenError::Malformed => Notification::new(
                super::notification::ErrorCode::OpenMessage,
                super::notification::ErrorSubcode::Unspecific,
                Bytes::new(),
            ),
        }
    }
}

/// UPDATE message errors (RFC 4271 §6.3). `attribute` is the whole offending attribute (flags, type,
/// length, value) as received, which RFC 4271 puts in the NOTIFICATION data.
///
/// Under RFC 7606 most of these do not reset the session: they appear in [`super::Update::errors`] with
/// the action taken; only the ones that need a session reset are returned as [`MessageError::Update`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, Error)]
pub enum UpdateError {
    #[error("malformed attribute list")]
    MalformedAttributeList,
    #[error("unrecognized well-known attribute")]
    UnrecognizedWellKnownAttribute { attribute: Bytes },
    #[error("missing well-known attribute {type_code}")]
    MissingWellKnownAttribute { type_code: u8 },
    #[error("attribute flags error")]
    AttributeFlags { attribute: Bytes },
    #[error("attribute length error")]
    AttributeLength { attribute: Bytes },
    #[error("invalid ORIGIN attribute")]
    InvalidOrigin { attribute: Bytes },
    #[error("invalid NEXT_HOP attribute")]
    InvalidNextHop { attribute: Bytes },
    #[error("optional attribute error")]
    OptionalAttribute { attribute: Bytes },
    #[error("invalid network field")]
    InvalidNetworkField,
    #[error("malformed AS_PATH")]
    MalformedAsPath,
}

impl UpdateError {
    pub fn subcode(&self) -> UpdateSubcode {
        match self {
            UpdateError::MalformedAttributeList => UpdateSubcode::MalformedAttributeList,
            UpdateError::UnrecognizedWellKnownAttribute { .. } => {
                UpdateSubcode::UnrecognizedWellKnownAttribute
            }
            UpdateError::MissingWellKnownAttribute { .. } => {
                UpdateSubcode::MissingWellKnownAttribute
            }
            UpdateError::AttributeFlags { .. } => UpdateSubcode::AttributeFlagsError,
            UpdateError::AttributeLength { .. } => UpdateSubcode::AttributeLengthError,
            UpdateError::InvalidOrigin { .. } => UpdateSubcode::InvalidOriginAttribute,
            UpdateError::InvalidNextHop { .. } => UpdateSubcode::InvalidNextHopAttribute,
            UpdateError::OptionalAttribute { .. } => UpdateSubcode::OptionalAttributeError,
            UpdateError::InvalidNetworkField => UpdateSubcode::InvalidNetworkField,
            UpdateError::MalformedAsPath => UpdateSubcode::MalformedAsPath,
        }
    }

    pub fn notification(&self) -> Notification {
        let data = match self {
            // RFC 4271 §6.3: "... the Data field MUST contain the Attribute Type Code of the missing,
            // well-known attribute."
            UpdateError::MissingWellKnownAttribute { type_code } => {
                Bytes::copy_from_slice(&[*type_code])
            }
            // RFC 4271 §6.3: "The Data field MUST contain the erroneous attribute (type, length, and
            // value)." (unrecognized well-known, flags, length, ORIGIN, NEXT_HOP, optional attribute)
            UpdateError::UnrecognizedWellKnownAttribute { attribute }
            | UpdateError::AttributeFlags { attribute }
            | UpdateError::AttributeLength { attribute }
            | UpdateError::InvalidOrigin { attribute }
            | UpdateError::InvalidNextHop { attribute }
            | UpdateError::OptionalAttribute { attribute } => attribute.clone(),
            UpdateError::MalformedAttributeList
            | UpdateError::InvalidNetworkField
            | UpdateError::MalformedAsPath => Bytes::new(),
        };
        Notification::update(self.subcode(), data)
    }
}

/// ROUTE-REFRESH message errors (RFC 7313 §5).
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum RouteRefreshError {
    /// `message` is the complete received message.
    #[error("invalid ROUTE-REFRESH message length")]
    InvalidMessageLength { message: Bytes },
}

impl RouteRefreshError {
    pub fn notification(&self) -> Notification {
        match self {
            // RFC 7313 §5: "The Data field of the NOTIFICATION message MUST contain the complete
            // ROUTE-REFRESH message."
            RouteRefreshError::InvalidMessageLength { message } => Notification::new(
                super::notification::ErrorCode::RouteRefreshMessage,
                super::notification::ErrorSubcode::RouteRefresh(
                    RouteRefreshSubcode::InvalidMessageLength,
                ),
                message.clone(),
            ),
        }
    }
}

/// A message that cannot be encoded under the given context.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum EncodeError {
    #[error("message of {size} octets exceeds the maximum of {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("OPEN optional parameters of {size} octets do not fit")]
    OptionalParametersTooLong { size: usize },
    #[error("capability {code} with a value of {size} octets does not fit")]
    CapabilityTooLong { code: u8, size: usize },
    #[error("attribute {type_code} with a value of {size} octets does not fit")]
    AttributeTooLong { type_code: u8, size: usize },
    #[error("a non-IPv4 prefix cannot go in the UPDATE withdrawn routes or NLRI field")]
    NotIpv4,
    #[error("prefixes of different address families in one batch")]
    MixedFamilies,
    #[error("next hop family does not fit {0} (extended next hop not negotiated?)")]
    NextHopFamily(AfiSafi),
    #[error("{0} is not supported by the codec")]
    UnsupportedFamily(AfiSafi),
}
