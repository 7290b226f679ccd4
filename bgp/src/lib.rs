//! reef-bgp: Reef's own BGP speaker.
//!
//! - [`wire`]: the codec. Every message of RFC 4271 and its extensions, decoded under a [`wire::CodecContext`]
//!   built from the negotiated capabilities; every malformed input is a typed error that maps to a
//!   NOTIFICATION or an RFC 7606 action. Pure, no IO.
//! - [`fsm`]: the RFC 4271 §8 session state machine. Typed inputs in, typed outputs out; no IO, no clocks.
//! - [`rib`]: the Adj-RIB-In of a peer, with interned attribute sets.
//! - [`driver`]: the tokio driver around the FSM: sockets (TCP MD5, GTSM, TTL), timers, many peers.

pub mod decision;
pub mod driver;
pub mod fsm;
pub mod policy;
pub mod rib;
pub mod routing;
pub mod wire;
