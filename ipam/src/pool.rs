//! A pool's block layout: which blocks a pool is cut into, the block containing an address, and the
//! order in which a node walks the pool when it claims a new block (seeded by the node name, so nodes
//! start at different places and rarely race for the same block).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr::{self, Family};
use crate::block::MAX_BLOCK_HOST_BITS;

/// Calico's default block sizes.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(
        "IP pool {cidr}: blockSize /{block_size} is invalid (must be at least the pool's /{}, at most \
         {MAX_BLOCK_HOST_BITS} host bits: IPv4 /20../32, IPv6 /116../128)",
        cidr.prefix_len()
    )]
    InvalidBlockSize { cidr: IpNet, block_size: u8 },
}

/// A pool CIDR cut into blocks of `block_prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    pub cidr: IpNet,
    pub block_prefix: u8,
}

impl PoolLayout {
    pub fn new(cidr: IpNet, block_prefix: u8) -> Result<Self, PoolError> {
        let cidr = cidr.trunc();
        let invalid = PoolError::InvalidBlockSize {
            cidr,
            block_size: block_prefix,
        };
        if block_prefix < cidr.prefix_len() || block_prefix > cidr.max_prefix_len() {
            return Err(invalid);
        }
        if cidr.max_prefix_len() - block_prefix > MAX_BLOCK_HOST_BITS {
            return Err(invalid);
        }
        // The block count must fit a u128 (only ::/0 cut into /128s does not).
        if 1u128
            .checked_shl(u32::from(block_prefix - cidr.prefix_len()))
            .is_none()
        {
            return Err(invalid);
        }
        Ok(Self { cidr, block_prefix })
    }

    /// The default block size of the pool's family.
    pub fn default_block_size(cidr: IpNet) -> u8 {
        match Family::of(cidr) {
            Family::V4 => DEFAULT_BLOCK_SIZE_V4,
            Family::V6 => DEFAULT_BLOCK_SIZE_V6,
        }
    }

    pub fn family(&self) -> Family {
        Family::of(self.cidr)
    }

    pub fn block_count(&self) -> u128 {
        // Checked in `new`.
        1u128 << (self.block_prefix - self.cidr.prefix_len())
    }

    pub fn addresses_per_block(&self) -> u128 {
        1u128 << (self.cidr.max_prefix_len() - self.block_prefix)
    }

    /// Total addresses of the pool (saturating for huge IPv6 pools).
    pub fn capacity(&self) -> u128 {
        self.block_count()
            .saturating_mul(self.addresses_per_block())
    }

    /// The `index`-th block of the pool (`index < block_count()`).
    pub fn block_at(&self, index: u128) -> IpNet {
        let base = addr::to_u128(self.cidr.network());
        let offset = index.wrapping_mul(self.addresses_per_block());
        let network = addr::from_u128(base.wrapping_add(offset), self.family());
        // The prefix is a valid length for the family (checked in `new`).
        IpNet::new(network, self.block_prefix).unwrap_or(self.cidr)
    }

    /// The block that holds `ip`, if the pool does.
    pub fn block_containing(&self, ip: IpAddr) -> Option<IpNet> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        IpNet::new(ip, self.block_prefix).ok().map(|n| n.trunc())
    }

    /// Whether `block` is one of this pool's blocks (inside it and of its block size).
    pub fn owns_block(&self, block: IpNet) -> bool {
        block.prefix_len() == self.block_prefix
            && self.cidr.contains(&block)
            && block == block.trunc()
    }

    /// Every block of the pool exactly once, starting at an offset derived from the node name.
    pub fn blocks_for_node(&self, node: &str) -> impl Iterator<Item = IpNet> + '_ {
        let count = self.block_count();
        let start = u128::from(fnv1a64(node.as_bytes())) % count;
        (0..count).map(move |i| self.block_at((start + i) % count))
    }
}

/// FNV-1a: a stable hash (unlike std's, its value is fixed across Rust releases and processes).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn enumerates_every_block_once_from_a_node_seeded_start() {
        let pool = PoolLayout::new("10.1.0.0/22".parse().unwrap(), 26).unwrap();
        assert_eq!(pool.block_count(), 16);
        let a: Vec<IpNet> = pool.blocks_for_node("node-a").collect();
        let b: Vec<IpNet> = pool.blocks_for_node("node-b").collect();
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 16);
        assert!(a.iter().all(|blk| pool.owns_block(*blk)));
        assert_ne!(a[0], b[0], "different nodes start at different blocks");
        assert_eq!(
            a,
            pool.blocks_for_node("node-a").collect::<Vec<_>>(),
            "order is stable"
        );
    }

    #[test]
    fn ipv6_pools_use_u128_arithmetic() {
        let pool = PoolLayout::new("fd00:1::/64".parse().unwrap(), 122).unwrap();
        assert_eq!(pool.block_count(), 1 << 58);
        let first = pool.blocks_for_node("n").next().unwrap();
        assert!(pool.owns_block(first));
        let ip: IpAddr = "fd00:1::1:2:3:47".parse().unwrap();
        assert_eq!(
            pool.block_containing(ip).unwrap().to_string(),
            "fd00:1::1:2:3:40/122"
        );
    }

    #[test]
    fn rejects_bad_block_sizes() {
        for (cidr, size) in [
            ("10.0.0.0/24", 20),
            ("10.0.0.0/16", 19),
            ("fd00::/64", 115),
            ("::/0", 128),
        ] {
            assert!(
                PoolLayout::new(cidr.parse().unwrap(), size).is_err(),
                "{cidr} /{size}"
            );
        }
        assert!(PoolLayout::new("10.0.0.0/24".parse().unwrap(), 32).is_ok());
    }
}
