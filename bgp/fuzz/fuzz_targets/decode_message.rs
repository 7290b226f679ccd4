#![no_main]
//! Any bytes as one message, under every codec context (first byte selects it).

use libfuzzer_sys::fuzz_target;
use reef_bgp_fuzz::{context, decode_and_check};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, msg)) = data.split_first() else {
        return;
    };
    decode_and_check(msg, &context(selector));
});
