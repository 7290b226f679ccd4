//! Side-by-side benchmarks of Reef against BIRD, FRR, GoBGP and the reference CNI plugins.
//!
//! BGP ingest (`bgp_ingest` binary): [`workload`] pre-encodes the UPDATEs, [`injector`] speaks BGP to
//! one daemon at a time ([`receivers`]), each in its own network namespace ([`netns_socket`]),
//! [`ingest`] measures time to all prefixes received and peak memory ([`procfs`]), [`report`] prints.
//!
//! Convergence (`convergence` binary, [`convergence`]): the daemons install routes into their
//! namespace's kernel table; [`kernel_routes`] timestamps the kernel's route notifications after a
//! withdraw or a link cut seen by BFD ([`bfd_peer`]). RIB memory (`rib_memory` binary, [`rib_memory`]):
//! the same prefixes from two injector peers.

pub mod bfd_peer;
pub mod convergence;
pub mod ingest;
pub mod injector;
pub mod kernel_routes;
pub mod netns_socket;
pub mod procfs;
pub mod receivers;
pub mod report;
pub mod rib_memory;
pub mod workload;
