//! Multi-host tests in network namespaces: interop, end-to-end and faults.
//!
//! [`interop`] is the table-driven BGP interop harness: Reef's speaker (`reefd`) against each
//! reference daemon, one test per daemon x case (see `tests/interop_*.rs` and docs/INTEROP.md).
//! [`routing`] holds what the routing tests (`tests/routing_*.rs`: reflection, graceful restart, BFD,
//! ECMP, filters) share.

pub mod interop;
pub mod routing;
