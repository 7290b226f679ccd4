//! The BFD control packet (RFC 5880 §4.1) and the packet-local reception checks of §6.8.6.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! |   Auth Type   |   Auth Len    |    Authentication Data...     |
//! ```
//!
//! Authentication (§4.2-4.4) is not implemented: an authentication section is decoded into
//! [`AuthSection`] as opaque bytes so it can be reported, and the session discards such packets
//! (§6.8.6: "If the Authentication Present (A) bit is set and authentication is not in use, the
//! packet MUST be discarded").

use thiserror::Error;

/// The only protocol version (§4.1).
pub const VERSION: u8 = 1;
/// Length of a control packet without authentication section.
pub const MIN_LEN: usize = 24;
/// Auth Type and Auth Len: the smallest authentication section.
const AUTH_HEADER_LEN: usize = 2;

/// Session state as carried on the wire (§4.1 "Sta") and kept by the FSM (§6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 0b11 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Diagnostic code (§4.1 "Diag"): why the sender's session last changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    None,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    /// Codes 9-31 are reserved; kept as received.
    Reserved(u8),
}

impl Diagnostic {
    fn from_bits(bits: u8) -> Diagnostic {
        match bits & 0x1f {
            0 => Diagnostic::None,
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFunctionFailed,
            3 => Diagnostic::NeighborSignaledSessionDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            other => Diagnostic::Reserved(other),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Diagnostic::None => 0,
            Diagnostic::ControlDetectionTimeExpired => 1,
            Diagnostic::EchoFunctionFailed => 2,
            Diagnostic::NeighborSignaledSessionDown => 3,
            Diagnostic::ForwardingPlaneReset => 4,
            Diagnostic::PathDown => 5,
            Diagnostic::ConcatenatedPathDown => 6,
            Diagnostic::AdministrativelyDown => 7,
            Diagnostic::ReverseConcatenatedPathDown => 8,
            Diagnostic::Reserved(code) => code & 0x1f,
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diagnostic::None => f.write_str("No Diagnostic"),
            Diagnostic::ControlDetectionTimeExpired => {
                f.write_str("Control Detection Time Expired")
            }
            Diagnostic::EchoFunctionFailed => f.write_str("Echo Function Failed"),
            Diagnostic::NeighborSignaledSessionDown => {
                f.write_str("Neighbor Signaled Session Down")
            }
            Diagnostic::ForwardingPlaneReset => f.write_str("Forwarding Plane Reset"),
            Diagnostic::PathDown => f.write_str("Path Down"),
            Diagnostic::ConcatenatedPathDown => f.write_str("Concatenated Path Down"),
            Diagnostic::AdministrativelyDown => f.write_str("Administratively Down"),
            Diagnostic::ReverseConcatenatedPathDown => {
                f.write_str("Reverse Concatenated Path Down")
            }
            Diagnostic::Reserved(code) => write!(f, "Reserved ({code})"),
        }
    }
}

/// The flag bits other than A (derived from [`ControlPacket::auth`]) and M (must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// P: the sender asks for verification of a parameter change (Poll Sequence, §6.5).
    pub poll: bool,
    /// F: the answer to a Poll.
    pub final_: bool,
    /// C: the sender's BFD does not share fate with its control plane.
    pub control_plane_independent: bool,
    /// D: the sender wishes to operate in Demand mode.
    pub demand: bool,
}

/// An authentication section (§4.2), kept as opaque bytes: authentication is not supported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSection {
    pub auth_type: u8,
    /// Everything after Auth Type and Auth Len.
    pub data: Vec<u8>,
}

/// A decoded BFD control packet. Intervals are in microseconds as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPacket {
    pub diag: Diagnostic,
    pub state: State,
    pub flags: Flags,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
    pub auth: Option<AuthSection>,
}

/// Why a received packet is discarded by the packet-local checks of §6.8.6.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet of {0} bytes is shorter than the 24-byte control packet")]
    Truncated(usize),
    #[error("version {0} is not 1")]
    BadVersion(u8),
    #[error("length field {length} is below the minimum {minimum}")]
    LengthTooSmall { length: u8, minimum: usize },
    #[error("length field {length} exceeds the {received} bytes received")]
    LengthExceedsPayload { length: u8, received: usize },
    #[error("authentication length {auth_len} does not match the {section} bytes after the header")]
    BadAuthLength { auth_len: u8, section: usize },
    #[error("detect multiplier is zero")]
    ZeroDetectMult,
    #[error("multipoint (M) bit is set")]
    Multipoint,
    #[error("my discriminator is zero")]
    ZeroMyDiscriminator,
    #[error("your discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    // Only called with `at + 4 <= MIN_LEN` on a slice checked to hold MIN_LEN bytes.
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// Decodes a control packet and applies the reception checks of RFC 5880 §6.8.6 that need no
/// session. Bytes beyond the Length field are ignored. Never panics.
pub fn decode(bytes: &[u8]) -> Result<ControlPacket, DecodeError> {
    if bytes.len() < MIN_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    // "If the version number is not correct (1), the packet MUST be discarded."
    let version = bytes[0] >> 5;
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let diag = Diagnostic::from_bits(bytes[0]);
    let state = State::from_bits(bytes[1] >> 6);
    let auth_present = bytes[1] & 0x04 != 0;
    let flags = Flags {
        poll: bytes[1] & 0x20 != 0,
        final_: bytes[1] & 0x10 != 0,
        control_plane_independent: bytes[1] & 0x08 != 0,
        demand: bytes[1] & 0x02 != 0,
    };
    let multipoint = bytes[1] & 0x01 != 0;
    let detect_mult = bytes[2];
    let length = bytes[3];
    // "If the Length field is less than the minimum correct value (24 if the A bit is clear, or 26
    // if the A bit is set), the packet MUST be discarded."
    let minimum = if auth_present {
        MIN_LEN + AUTH_HEADER_LEN
    } else {
        MIN_LEN
    };
    if usize::from(length) < minimum {
        return Err(DecodeError::LengthTooSmall { length, minimum });
    }
    // "If the Length field is greater than the payload of the encapsulating protocol, the packet
    // MUST be discarded."
    if usize::from(length) > bytes.len() {
        return Err(DecodeError::LengthExceedsPayload {
            length,
            received: bytes.len(),
        });
    }
    // "If the Detect Mult field is zero, the packet MUST be discarded."
    if detect_mult == 0 {
        return Err(DecodeError::ZeroDetectMult);
    }
    // "If the Multipoint (M) bit is nonzero, the packet MUST be discarded."
    if multipoint {
        return Err(DecodeError::Multipoint);
    }
    let my_discriminator = be32(bytes, 4);
    // "If the My Discriminator field is zero, the packet MUST be discarded."
    if my_discriminator == 0 {
        return Err(DecodeError::ZeroMyDiscriminator);
    }
    let your_discriminator = be32(bytes, 8);
    // "If the Your Discriminator field is zero and the State field is not Down or AdminDown, the
    // packet MUST be discarded."
    if your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
        return Err(DecodeError::ZeroYourDiscriminator(state));
    }
    let auth = if auth_present {
        // length >= 26 was checked above, and length <= bytes.len().
        let section = &bytes[MIN_LEN..usize::from(length)];
        let auth_len = section[1];
        if usize::from(auth_len) != section.len() {
            return Err(DecodeError::BadAuthLength {
                auth_len,
                section: section.len(),
            });
        }
        Some(AuthSection {
            auth_type: section[0],
            data: section[AUTH_HEADER_LEN..].to_vec(),
        })
    } else {
        None
    };
    Ok(ControlPacket {
        diag,
        state,
        flags,
        detect_mult,
        my_discriminator,
        your_discriminator,
        desired_min_tx_us: be32(bytes, 12),
        required_min_rx_us: be32(bytes, 16),
        required_min_echo_rx_us: be32(bytes, 20),
        auth,
    })
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("authentication data of {0} bytes does not fit the 8-bit length fields")]
    AuthTooLong(usize),
}

/// Encodes a control packet (M bit clear, A bit set when it carries an authentication section).
pub fn encode(packet: &ControlPacket) -> Result<Vec<u8>, EncodeError> {
    let auth_len = match &packet.auth {
        Some(auth) => AUTH_HEADER_LEN + auth.data.len(),
        None => 0,
    };
    let total = MIN_LEN + auth_len;
    let length = u8::try_from(total).map_err(|_| EncodeError::AuthTooLong(auth_len))?;
    let mut out = Vec::with_capacity(total);
    out.push((VERSION << 5) | packet.diag.bits());
    let f = &packet.flags;
    let flag_bits = (u8::from(f.poll) << 5)
        | (u8::from(f.final_) << 4)
        | (u8::from(f.control_plane_independent) << 3)
        | (u8::from(packet.auth.is_some()) << 2)
        | (u8::from(f.demand) << 1);
    out.push((packet.state.bits() << 6) | flag_bits);
    out.push(packet.detect_mult);
    out.push(length);
    for word in [
        packet.my_discriminator,
        packet.your_discriminator,
        packet.desired_min_tx_us,
        packet.required_min_rx_us,
        packet.required_min_echo_rx_us,
    ] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    if let Some(auth) = &packet.auth {
        out.push(auth.auth_type);
        // total fits a u8, so does auth_len.
        out.push(auth_len as u8);
        out.extend_from_slice(&auth.data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Up packet with FRR's default timers, laid out by hand from §4.1: diag 0, Up, detect
    /// mult 3, discriminators 0x12345678 / 0x9abcdef0, 300 ms / 300 ms, echo 50 ms.
    const FRR_UP: [u8; 24] = [
        0x20, 0xc0, 0x03, 0x18, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x00, 0x04, 0x93,
        0xe0, 0x00, 0x04, 0x93, 0xe0, 0x00, 0x00, 0xc3, 0x50,
    ];

    fn frr_up() -> ControlPacket {
        ControlPacket {
            diag: Diagnostic::None,
            state: State::Up,
            flags: Flags::default(),
            detect_mult: 3,
            my_discriminator: 0x1234_5678,
            your_discriminator: 0x9abc_def0,
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            required_min_echo_rx_us: 50_000,
            auth: None,
        }
    }

    #[test]
    fn fixture_decodes_and_encodes_both_ways() {
        assert_eq!(decode(&FRR_UP), Ok(frr_up()));
        assert_eq!(encode(&frr_up()).unwrap(), FRR_UP);
    }

    /// FRR 8.4.4 bfdd's first packet to a new peer, captured with tcpdump in a lab namespace: Down,
    /// Your Discriminator 0, slow start (1 s TX and RX), echo 50 ms.
    const FRR_DOWN_CAPTURED: [u8; 24] = [
        0x20, 0x40, 0x03, 0x18, 0xaa, 0x0c, 0x7c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x42,
        0x40, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x00, 0xc3, 0x50,
    ];

    #[test]
    fn captured_frr_down_packet() {
        let packet = decode(&FRR_DOWN_CAPTURED).unwrap();
        assert_eq!(
            packet,
            ControlPacket {
                diag: Diagnostic::None,
                state: State::Down,
                flags: Flags::default(),
                detect_mult: 3,
                my_discriminator: 0xaa0c_7c01,
                your_discriminator: 0,
                desired_min_tx_us: 1_000_000,
                required_min_rx_us: 1_000_000,
                required_min_echo_rx_us: 50_000,
                auth: None,
            }
        );
        assert_eq!(encode(&packet).unwrap(), FRR_DOWN_CAPTURED);
    }

    #[test]
    fn down_with_detection_expired_and_poll() {
        let bytes = [
            0x21, 0x60, 0x05, 0x18, 0, 0, 0, 1, 0, 0, 0, 0, 0x00, 0x0f, 0x42, 0x40, 0, 0, 0xc3,
            0x50, 0, 0, 0, 0,
        ];
        let packet = decode(&bytes).unwrap();
        assert_eq!(packet.diag, Diagnostic::ControlDetectionTimeExpired);
        assert_eq!(packet.state, State::Down);
        assert!(packet.flags.poll && !packet.flags.final_);
        assert_eq!(packet.detect_mult, 5);
        assert_eq!(packet.desired_min_tx_us, 1_000_000);
        assert_eq!(packet.required_min_rx_us, 50_000);
        assert_eq!(encode(&packet).unwrap(), bytes);
    }

    #[test]
    fn trailing_bytes_beyond_length_are_ignored() {
        let mut bytes = FRR_UP.to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        assert_eq!(decode(&bytes), Ok(frr_up()));
    }

    #[test]
    fn auth_section_is_kept_opaque() {
        let mut packet = frr_up();
        packet.auth = Some(AuthSection {
            auth_type: 1,
            data: vec![7, b's', b'e', b'c'],
        });
        let bytes = encode(&packet).unwrap();
        assert_eq!(bytes[1] & 0x04, 0x04);
        assert_eq!(bytes[3], 30);
        assert_eq!(&bytes[24..], &[1, 6, 7, b's', b'e', b'c']);
        assert_eq!(decode(&bytes), Ok(packet));
    }

    fn with(mut bytes: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
        bytes[at] = value;
        bytes
    }

    #[test]
    fn packet_local_checks_reject_with_typed_errors() {
        let ok = FRR_UP.to_vec();
        assert_eq!(decode(&ok[..23]), Err(DecodeError::Truncated(23)));
        assert_eq!(
            decode(&with(ok.clone(), 0, 0x40)),
            Err(DecodeError::BadVersion(2))
        );
        assert_eq!(
            decode(&with(ok.clone(), 3, 20)),
            Err(DecodeError::LengthTooSmall {
                length: 20,
                minimum: 24
            })
        );
        assert_eq!(
            decode(&with(ok.clone(), 3, 30)),
            Err(DecodeError::LengthExceedsPayload {
                length: 30,
                received: 24
            })
        );
        assert_eq!(
            decode(&with(ok.clone(), 2, 0)),
            Err(DecodeError::ZeroDetectMult)
        );
        assert_eq!(
            decode(&with(ok.clone(), 1, 0xc1)),
            Err(DecodeError::Multipoint)
        );
        let mut zero_my = ok.clone();
        zero_my[4..8].fill(0);
        assert_eq!(decode(&zero_my), Err(DecodeError::ZeroMyDiscriminator));
        let mut zero_your = ok.clone();
        zero_your[8..12].fill(0);
        assert_eq!(
            decode(&zero_your),
            Err(DecodeError::ZeroYourDiscriminator(State::Up))
        );
        // Zero Your Discriminator is fine in Down and AdminDown.
        for state_bits in [0x40, 0x00] {
            assert!(decode(&with(zero_your.clone(), 1, state_bits)).is_ok());
        }
        // A bit set: the length must leave room for Auth Type and Auth Len...
        assert_eq!(
            decode(&with(ok.clone(), 1, 0xc4)),
            Err(DecodeError::LengthTooSmall {
                length: 24,
                minimum: 26
            })
        );
        // ... and Auth Len must match the section.
        let mut bad_auth = with(with(ok, 1, 0xc4), 3, 28);
        bad_auth.extend_from_slice(&[1, 5, 0, 0]);
        assert_eq!(
            decode(&bad_auth),
            Err(DecodeError::BadAuthLength {
                auth_len: 5,
                section: 4
            })
        );
    }

    fn arb_packet() -> impl Strategy<Value = ControlPacket> {
        let diag = prop_oneof![
            (0u8..=8).prop_map(Diagnostic::from_bits),
            (9u8..=31).prop_map(Diagnostic::Reserved),
        ];
        let state = (0u8..4).prop_map(State::from_bits);
        let flags = any::<[bool; 4]>().prop_map(|[poll, final_, c, demand]| Flags {
            poll,
            final_,
            control_plane_independent: c,
            demand,
        });
        let auth = proptest::option::of(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(auth_type, data)| AuthSection { auth_type, data }),
        );
        (
            diag,
            state,
            flags,
            1u8..,
            1u32..,
            any::<u32>(),
            any::<[u32; 3]>(),
            auth,
        )
            .prop_map(
                |(diag, state, flags, detect_mult, my, your, [tx, rx, echo], auth)| {
                    let your = if matches!(state, State::Init | State::Up) {
                        your.max(1)
                    } else {
                        your
                    };
                    ControlPacket {
                        diag,
                        state,
                        flags,
                        detect_mult,
                        my_discriminator: my,
                        your_discriminator: your,
                        desired_min_tx_us: tx,
                        required_min_rx_us: rx,
                        required_min_echo_rx_us: echo,
                        auth,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(packet in arb_packet()) {
            let bytes = encode(&packet).unwrap();
            prop_assert_eq!(decode(&bytes), Ok(packet));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&bytes);
        }
    }
}
