//! reef-lab: the test lab. Network namespaces and veth links with unique names that are removed on drop,
//! and the real daemons (BIRD, FRR, GoBGP, ExaBGP, etcd, and Reef's own reefd) started inside them and
//! stopped by pid. The BGP daemons share one config type and one trait ([`BgpDaemon`]).
//!
//! Nothing is ever created in the root namespace: links are made inside a namespace of ours
//! (`ip -n NS link add ... peer ... netns OTHER`), daemons run under `ip netns exec`.

pub mod bgp;
pub mod bird;
pub mod capture;
pub mod error;
pub mod etcd;
pub mod exabgp;
pub mod forward;
pub mod frr;
pub mod gobgp;
pub mod netns;
pub mod ping;
pub mod pod;
pub mod process;
pub mod reef;
pub mod run;

pub use bgp::{BgpConfig, BgpDaemon, DaemonKind, Neighbor, RouteAttrs};
pub use bird::{Bird, BirdOptions};
pub use capture::Capture;
pub use error::{LabError, Result};
pub use exabgp::ExaBgp;
pub use forward::NetnsForward;
pub use frr::{Frr, FrrOptions};
pub use gobgp::GoBgp;
pub use netns::{KernelRoute, Lan, Link, LinkEnd, Netns, veth};
pub use ping::{Ping, PingSummary};
pub use pod::Pod;
pub use process::Process;
pub use reef::Reefd;
pub use run::{binary, is_root, require_root, run_bounded, run_ok, wait_for, wait_until};
