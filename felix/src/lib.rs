//! Dataplane programmer: desired state from the model, reconciled into kernel routes, links and nft rules.
//!
//! So far: the kernel FIB programmer ([`fib`]) and network policy with natOutgoing ([`policy`]).

pub mod fib;
pub mod policy;

pub use fib::{
    ApplyReport, FibDiff, FibError, FibOp, FibProgrammer, MAIN_TABLE, NextHop, REEF_ROUTE_PROTOCOL,
    Route, RouteError, RouteFailure, RouteKey, RouteKind,
};
