#![no_main]
//! Any UPDATE body behind a valid header, under every codec context (first byte selects it).

use libfuzzer_sys::fuzz_target;
use reef_bgp_fuzz::{context, decode_and_check, with_header};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if let Some(msg) = with_header(2, body) {
        decode_and_check(&msg, &context(selector));
    }
});
