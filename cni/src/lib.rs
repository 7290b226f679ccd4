//! reef-cni: the CNI plugin the container runtime calls for every pod (`reef`), also usable as the IPAM
//! plugin of other main plugins (`reef-ipam`, the same binary under another name).
//!
//! Pure parts: [`spec`] (versions, errors, results), [`config`] (stdin and environment), [`wiring`] (the
//! attachment as data). Drivers: [`netlink`] (the kernel), [`store`] (datastore, IPAM, WorkloadEndpoint).
//! [`plugin`] runs the commands; [`install`] puts the binaries and the conflist where runtimes look.

pub mod config;
pub mod install;
pub mod invoke;
pub mod netlink;
pub mod plugin;
pub mod spec;
pub mod store;
pub mod wiring;
