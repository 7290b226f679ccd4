//! The kernel FIB programmer: a pure model and diff ([`model`], [`diff`]), the netlink codec
//! ([`codec`]) and the socket driver ([`programmer`]).

pub mod codec;
pub mod diff;
pub mod model;
pub mod programmer;

pub use codec::InvalidRoute;
pub use diff::{FibDiff, FibOp};
pub use model::{MAIN_TABLE, NextHop, REEF_ROUTE_PROTOCOL, Route, RouteKey, RouteKind, by_key};
pub use programmer::{ApplyReport, FibError, FibProgrammer, RouteError, RouteFailure};
