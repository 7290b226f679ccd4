#![no_main]
//! Framing of any receive buffer.

use libfuzzer_sys::fuzz_target;
use reef_bgp::wire::message_length;
use reef_bgp_fuzz::context;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    if let Ok(Some(len)) = message_length(buf, &context(selector)) {
        assert!((19..=buf.len()).contains(&len));
    }
});
