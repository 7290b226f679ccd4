#![no_main]
//! Any OPEN body behind a valid header.

use libfuzzer_sys::fuzz_target;
use reef_bgp::wire::CodecContext;
use reef_bgp_fuzz::{decode_and_check, with_header};

fuzz_target!(|body: &[u8]| {
    if let Some(msg) = with_header(1, body) {
        decode_and_check(&msg, &CodecContext::default());
    }
});
