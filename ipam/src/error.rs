//! Errors of the datastore-backed allocator. Each message names the cause and, where there is one, the fix.

use std::net::IpAddr;

use crate::addr::Family;
use crate::block::BlockError;
use crate::pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The datastore failed; `Unavailable` names the endpoint (e.g. "etcd at http://127.0.0.1:2379 ...").
    #[error(transparent)]
    Datastore(#[from] reef_datastore::Error),
    #[error("no {family} IP pool matches node {node}: {reason}")]
    NoPool {
        family: FamilyName,
        node: String,
        reason: String,
    },
    #[error("{0}")]
    Exhausted(String),
    #[error("{ip} is not inside any IP pool: create an IPPool that contains it")]
    NotInPool { ip: IpAddr },
    #[error("{ip} is already allocated to handle {handle}")]
    AlreadyAllocated { ip: IpAddr, handle: String },
    #[error("block {block} of node {node} still holds {used} addresses: release them first")]
    BlockNotEmpty {
        block: String,
        node: String,
        used: usize,
    },
    #[error(
        "gave up {operation} after {attempts} compare-and-swap conflicts: too much contention, retry later"
    )]
    TooManyConflicts { operation: String, attempts: u32 },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("IP pool {pool}: nodeSelector {selector:?} is invalid: {reason}")]
    Selector {
        pool: String,
        selector: String,
        reason: String,
    },
}

impl IpamError {
    /// Whether the datastore could not be reached (the caller may retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            IpamError::Datastore(reef_datastore::Error::Unavailable(_))
        )
    }
}

/// "IPv4" / "IPv6" in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyName(pub Family);

impl std::fmt::Display for FamilyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}
