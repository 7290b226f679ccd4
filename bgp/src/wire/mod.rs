//! BGP wire codec: every message of RFC 4271 and the extensions Reef speaks, decoded and encoded under a
//! [`CodecContext`] derived from the negotiated capabilities. Pure, no IO, never panics on input.
//!
//! - Framing: [`message_length`] on the receive buffer, then [`decode_bytes`] (or [`decode`]) on exactly
//!   one message.
//! - Errors that reset the session are [`MessageError`]s; [`MessageError::notification`] gives the
//!   NOTIFICATION to send. UPDATE attribute errors that RFC 7606 handles without a reset are reported in
//!   the decoded [`Update`] (see its docs).
//! - [`Message::encode`] appends to a `BytesMut`; [`Update::announce`] and [`Update::withdraw`] split
//!   prefix sets into UPDATEs that fit the negotiated size.

mod aspath;
mod attribute;
mod context;
mod error;
mod message;
mod nlri;
mod notification;
mod open;
mod route_refresh;
mod types;
mod update;

pub use aspath::{AsPath, AsSegment, SegmentType};
pub use attribute::{
    Aggregator, AttributeError, Community, ErrorAction, ExtendedCommunity, LargeCommunity, MpReach,
    MpUnreach, NextHop, Origin, PathAttributes, RawAttribute, attr_flags, attr_type,
};
pub use context::CodecContext;
pub use error::{
    EncodeError, HeaderError, MessageError, OpenError, RouteRefreshError, UpdateError,
};
pub use message::{Message, MessageType, decode, decode_bytes, message_length};
pub use nlri::Nlri;
pub use notification::{
    CeaseSubcode, ErrorCode, ErrorSubcode, FsmSubcode, HeaderSubcode,
    MAX_SHUTDOWN_COMMUNICATION_LEN, Notification, OpenSubcode, RouteRefreshSubcode, UpdateSubcode,
};
pub use open::{
    AddPathFamily, AddPathMode, Capability, ExtendedNextHopFamily, GracefulRestart,
    GracefulRestartFamily, Open, capability_code,
};
pub use route_refresh::{RouteRefresh, RouteRefreshSubtype};
pub use types::{
    AS_TRANS, Afi, AfiSafi, AfiSafiSet, BGP_VERSION, HEADER_LEN, MAX_EXTENDED_MESSAGE_LEN,
    MAX_MESSAGE_LEN, Safi,
};
pub use update::Update;
