//! Block IPAM on the datastore: pools cut into node-affine blocks, handles, borrowing, release and leak checks.
//!
//! `block` and `pool` are the sans-IO core (no IO, exhaustively tested); `client` drives it on the datastore
//! with compare-and-swap writes; `check` finds leaks and inconsistencies.

pub mod addr;
pub mod block;
pub mod check;
pub mod client;
pub mod convert;
pub mod error;
pub mod pool;

pub use block::{Assigned, ReleaseOutcome, ReleaseRequest};
pub use check::{CheckInput, CheckReport, RepairSummary};
pub use client::{
    AssignIpArgs, AutoAssignArgs, AutoAssignResult, Ipam, Use, pod_handle, tunnel_handle,
};
pub use error::IpamError;
