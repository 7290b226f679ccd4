//! Helpers shared by the fuzz targets.

use bytes::Bytes;
use reef_bgp::wire::{AfiSafi, AfiSafiSet, CodecContext, Message, decode_bytes};

/// A codec context from the bits of one fuzzer byte, so every target covers every context variant:
/// 4-octet AS, Extended Message, ADD-PATH (receive and send, IPv4 and IPv6), internal peer, extended
/// next hop for IPv4.
pub fn context(selector: u8) -> CodecContext {
    let families = |on: bool| {
        if on {
            [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
                .into_iter()
                .collect()
        } else {
            AfiSafiSet::EMPTY
        }
    };
    CodecContext {
        four_octet_as: selector & 1 != 0,
        extended_message: selector & 2 != 0,
        add_path_receive: families(selector & 4 != 0),
        add_path_send: families(selector & 4 != 0),
        ibgp: selector & 8 != 0,
        extended_next_hop: if selector & 16 != 0 {
            [AfiSafi::IPV4_UNICAST].into_iter().collect()
        } else {
            AfiSafiSet::EMPTY
        },
    }
}

/// A message of `message_type` with a correct header around `body`.
pub fn with_header(message_type: u8, body: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(19 + body.len()).ok()?;
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&len.to_be_bytes());
    msg.push(message_type);
    msg.extend_from_slice(body);
    Some(msg)
}

/// Decodes; a clean decode must re-encode and decode to the same message. The NOTIFICATION of every
/// error must build.
pub fn decode_and_check(msg: &[u8], ctx: &CodecContext) {
    let message = match decode_bytes(Bytes::copy_from_slice(msg), ctx) {
        Ok(message) => message,
        Err(e) => {
            let _ = e.notification().to_string();
            return;
        }
    };
    if let Message::Update(update) = &message {
        if !update.errors.is_empty() {
            return;
        }
        let _ = update.end_of_rib();
    }
    let Ok(bytes) = message.to_bytes(ctx) else {
        return;
    };
    let again = decode_bytes(bytes, ctx).expect("a re-encoded message decodes");
    assert_eq!(
        strip(again),
        strip(message),
        "decode(encode(decode(x))) != decode(x)"
    );
}

fn strip(message: Message) -> Message {
    match message {
        Message::Update(mut update) => {
            update.raw_attributes = Bytes::new();
            Message::Update(update)
        }
        other => other,
    }
}
