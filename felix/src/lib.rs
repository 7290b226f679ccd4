//! Dataplane programmer: desired state from the model, reconciled into kernel routes, links and nft rules.
//!
//! [`model`] (what felix is told) -> [`desired`] (pure: routes, the VXLAN device, neighbours, FDB,
//! sysctls) -> [`dataplane`] (the driver: dump, diff, apply only the difference), on the kernel FIB
//! programmer ([`fib`]), the VXLAN link codec ([`links`]), [`sysctl`] and one netlink socket
//! ([`netlink`]). Network policy and natOutgoing: [`policy`] (compiler and the nftables / iptables
//! backends).

pub mod dataplane;
pub mod desired;
pub mod fib;
pub mod links;
pub mod model;
pub mod netlink;
pub mod policy;
pub mod sysctl;

pub use dataplane::{Dataplane, DataplaneConfig, DataplaneMetrics, SyncReport};
pub use desired::{DesiredState, Problem, RouteTarget, VXLAN_DEVICE, desired_state};
pub use fib::{
    ApplyReport, FibDiff, FibError, FibOp, FibProgrammer, MAIN_TABLE, NextHop, REEF_ROUTE_PROTOCOL,
    Route, RouteError, RouteFailure, RouteKey, RouteKind,
};
pub use model::{
    Block, Borrowed, Endpoint, LearnedRoute, Mac, Model, ModelError, Node, Pool, Tunnel,
};
