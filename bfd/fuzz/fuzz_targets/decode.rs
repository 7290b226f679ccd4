//! Arbitrary bytes through the control packet decoder and, when accepted, through encode (the
//! result must decode to the same packet) and a session FSM (it must not panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reef_bfd::{Input, Jitter, Session, SessionConfig, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = decode(data) else {
        return;
    };
    let bytes = encode(&packet).expect("a decoded packet fits the 8-bit length");
    assert_eq!(decode(&bytes).as_ref(), Ok(&packet));
    let mut session = Session::new(1, SessionConfig::default());
    session.handle(Input::Packet { packet, ttl: 255 }, Jitter(u16::MAX));
    session.handle(Input::DetectionTimerExpired, Jitter::NONE);
});
