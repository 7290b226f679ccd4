//! reef-bfd: Bidirectional Forwarding Detection (RFC 5880, single hop per RFC 5881, asynchronous
//! mode) for fast failure detection of BGP sessions.
//!
//! - [`packet`]: the control packet codec with the packet-local reception checks (sans-IO).
//! - [`session`]: the session state machine (sans-IO, timers and jitter as inputs).
//! - [`driver`]: the tokio driver (UDP 3784, TTL 255) and the [`Bfd`] handle: `add_session`
//!   returns a `watch::Receiver<SessionStatus>`; a transition from `State::Up` to anything else (or
//!   a change of `downs`) is the signal to take the protected session down.

pub mod driver;
pub mod packet;
pub mod session;

pub use driver::{Bfd, BfdError, CONTROL_PORT, SessionKey, SessionStatus};
pub use packet::{ControlPacket, DecodeError, Diagnostic, State, decode, encode};
pub use session::{Input, Jitter, Output, Session, SessionConfig};
