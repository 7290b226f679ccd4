//! Message framing, header checks (RFC 4271 §4.1, §6.1) and the top-level decode/encode.

use bytes::{BufMut, Bytes, BytesMut};

use super::context::CodecContext;
use super::error::{EncodeError, HeaderError, MessageError};
use super::notification::Notification;
use super::open::Open;
use super::route_refresh::RouteRefresh;
use super::types::{HEADER_LEN, MAX_MESSAGE_LEN, Reader};
use super::update::Update;

/// Message type codes. RFC 4271 §4.1, RFC 2918 §3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MessageType {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

impl MessageType {
    pub fn from_u8(value: u8) -> Option<MessageType> {
        match value {
            1 => Some(MessageType::Open),
            2 => Some(MessageType::Update),
            3 => Some(MessageType::Notification),
            4 => Some(MessageType::Keepalive),
            5 => Some(MessageType::RouteRefresh),
            _ => None,
        }
    }

    /// Minimum and maximum length of the message including the header. RFC 4271 §4.2-4.5, RFC 2918 §3,
    /// RFC 8654 §4 ("... the BGP Extended Message Capability ... applies to all messages except for
    /// OPEN and KEEPALIVE messages").
    fn length_bounds(self, ctx: &CodecContext) -> (usize, usize) {
        match self {
            MessageType::Open => (29, MAX_MESSAGE_LEN),
            MessageType::Update => (23, ctx.max_message_len()),
            MessageType::Notification => (21, ctx.max_message_len()),
            MessageType::Keepalive => (HEADER_LEN, HEADER_LEN),
            MessageType::RouteRefresh => (23, ctx.max_message_len()),
        }
    }
}

/// A BGP message.
// An UPDATE is a few hundred octets inline; boxing it would cost an allocation per UPDATE to save copies
// on the few moves a message makes.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

const MARKER: [u8; 16] = [0xff; 16];

/// Checks marker, length and type of a header. RFC 4271 §6.1: "If the Length field of the message header
/// is less than 19 or greater than 4096, or if the Length field of an OPEN message is less than the
/// minimum length of the OPEN message, or if the Length field of an UPDATE message is less than the
/// minimum length of the UPDATE message, or if the Length field of a KEEPALIVE message is not equal to
/// 19, or if the Length field of a NOTIFICATION message is less than the minimum length of the
/// NOTIFICATION message, then the Error Subcode MUST be set to Bad Message Length." and "If the Type
/// field of the message header is not recognized, then the Error Subcode MUST be set to Bad Message
/// Type."
fn check_header(
    header: &[u8; HEADER_LEN],
    ctx: &CodecContext,
) -> Result<(MessageType, usize), HeaderError> {
    let [m @ .., l0, l1, type_code] = header;
    // RFC 4271 §6.1: "If the Marker field of the message header is not as expected, then a
    // synchronization error has occurred and the Error Subcode MUST be set to Connection Not
    // Synchronized."
    if *m != MARKER {
        return Err(HeaderError::ConnectionNotSynchronized);
    }
    let length = u16::from_be_bytes([*l0, *l1]);
    let bad_length = HeaderError::BadMessageLength { length };
    let len = usize::from(length);
    if len < HEADER_LEN || len > ctx.max_message_len() {
        return Err(bad_length);
    }
    let message_type = MessageType::from_u8(*type_code).ok_or(HeaderError::BadMessageType {
        message_type: *type_code,
    })?;
    let (min, max) = message_type.length_bounds(ctx);
    if len < min || len > max {
        return Err(bad_length);
    }
    Ok((message_type, len))
}

/// Framing: the length of the message at the start of `buf`, `Ok(None)` if more bytes are needed.
/// Checks the marker as soon as its bytes arrive, then length and type.
pub fn message_length(buf: &[u8], ctx: &CodecContext) -> Result<Option<usize>, MessageError> {
    if buf.iter().take(MARKER.len()).any(|&b| b != 0xff) {
        return Err(HeaderError::ConnectionNotSynchronized.into());
    }
    let Some((header, _)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (_, len) = check_header(header, ctx)?;
    Ok((buf.len() >= len).then_some(len))
}

/// Decodes exactly one message (header included). Copies `msg` once into a [`Bytes`]; a driver that
/// already holds the message in `Bytes` should call [`decode_bytes`] (zero-copy).
pub fn decode(msg: &[u8], ctx: &CodecContext) -> Result<Message, MessageError> {
    decode_bytes(Bytes::copy_from_slice(msg), ctx)
}

/// Decodes exactly one message (header included); attribute values and `Update::raw_attributes` are
/// slices of `msg`.
pub fn decode_bytes(msg: Bytes, ctx: &CodecContext) -> Result<Message, MessageError> {
    let Some((header, _)) = msg.split_first_chunk::<HEADER_LEN>() else {
        if msg.iter().take(MARKER.len()).any(|&b| b != 0xff) {
            return Err(HeaderError::ConnectionNotSynchronized.into());
        }
        let length = u16::try_from(msg.len()).unwrap_or(u16::MAX);
        return Err(HeaderError::BadMessageLength { length }.into());
    };
    let (message_type, len) = check_header(header, ctx)?;
    if len != msg.len() {
        // The buffer must hold exactly the message the header announces.
        let length = u16::try_from(len).unwrap_or(u16::MAX);
        return Err(HeaderError::BadMessageLength { length }.into());
    }
    let body = msg.slice(HEADER_LEN..);
    Ok(match message_type {
        MessageType::Open => Message::Open(Open::decode(&body)?),
        MessageType::Update => Message::Update(Update::decode(&body, ctx)?),
        MessageType::Notification => {
            let mut r = Reader::new(&body);
            // The header check guarantees 2 octets (minimum length 21).
            let (code, subcode) = (r.u8().unwrap_or(0), r.u8().unwrap_or(0));
            Message::Notification(Notification::from_wire(code, subcode, body.slice(2..)))
        }
        MessageType::Keepalive => Message::Keepalive,
        MessageType::RouteRefresh => Message::RouteRefresh(RouteRefresh::decode(&msg, &body)?),
    })
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Open(_) => MessageType::Open,
            Message::Update(_) => MessageType::Update,
            Message::Notification(_) => MessageType::Notification,
            Message::Keepalive => MessageType::Keepalive,
            Message::RouteRefresh(_) => MessageType::RouteRefresh,
        }
    }

    /// Appends the encoded message to `out`. On error `out` is left as it was.
    pub fn encode(&self, ctx: &CodecContext, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        out.put_slice(&MARKER);
        out.put_u16(0);
        out.put_u8(self.message_type() as u8);
        let result = match self {
            Message::Open(open) => open.encode_body(out),
            Message::Update(update) => update.encode_body(ctx, out),
            Message::Notification(notification) => {
                out.put_u8(notification.code.to_u8());
                out.put_u8(notification.subcode.to_u8());
                out.put_slice(&notification.data);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(refresh) => {
                refresh.encode_body(out);
                Ok(())
            }
        };
        let size = out.len() - start;
        let (_, max) = self.message_type().length_bounds(ctx);
        let result = result.and_then(|()| {
            // `max` <= 65535, so the length fits the 2-octet field.
            u16::try_from(size)
                .ok()
                .filter(|_| size <= max)
                .ok_or(EncodeError::MessageTooLarge { size, max })
        });
        match result {
            Ok(len) => {
                out[start + 16..start + 18].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self, ctx: &CodecContext) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(ctx, &mut out)?;
        Ok(out.freeze())
    }
}
