//! Network policy and natOutgoing.
//!
//! - [`model`]: plain-data inputs and the backend-neutral program (sets, policy chains, dispatch, NAT).
//! - [`engine`]: the compiler ([`compile`], and [`PolicyEngine`] which keeps the program up to date
//!   incrementally and says what changed); Kubernetes NetworkPolicy in [`k8s`]; selections in
//!   [`selection`].
//! - [`nft`] and [`iptables`]: the two backends; [`backend`]: [`PolicyDataplane`] (retries, resync,
//!   counters).

pub mod backend;
pub mod engine;
pub mod exec;
pub mod iptables;
pub mod k8s;
pub mod model;
pub mod nft;
pub mod selection;

pub use backend::{BackendError, BackendKind, PolicyCounters, PolicyDataplane, Retry};
pub use engine::{PolicyEngine, compile};
pub use exec::Runner;
pub use model::{
    Changes, Endpoint, EndpointError, K8sNetworkPolicy, Labels, NamedPort, PolicyError,
    PolicyInput, PolicyObject, PolicyProblem, PolicyProgram,
};
