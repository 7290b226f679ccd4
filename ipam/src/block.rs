//! The sans-IO allocation block: one CIDR of a pool, its allocations by ordinal, a free list and
//! per-allocation attributes. Every operation works on `&self` and returns the new block, so a caller
//! that loses a compare-and-swap race simply drops the result: a half-applied change is never saved.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use reef_crds::AllocationAttribute;
use serde::{Deserialize, Serialize};

use crate::addr::{self, Family};

/// Secondary attribute keys Calico uses on allocations (the CNI plugin fills them).
pub const ATTR_NODE: &str = "node";
pub const ATTR_NAMESPACE: &str = "namespace";
pub const ATTR_POD: &str = "pod";
/// Marks a tunnel address (Calico: `type: vxlanTunnelAddress`).
pub const ATTR_TYPE: &str = "type";

/// Builds the attribute of an allocation: its handle and secondary attributes.
pub fn attribute(handle_id: &str, secondary: BTreeMap<String, String>) -> AllocationAttribute {
    AllocationAttribute {
        handle_id: Some(handle_id.to_owned()),
        secondary,
    }
}

/// The node that allocated an address, when recorded.
pub fn attribute_node(attr: &AllocationAttribute) -> Option<&str> {
    attr.secondary.get(ATTR_NODE).map(String::as_str)
}

/// An allocation block. Field meanings follow Calico's `IPAMBlock`:
/// - `allocations[ordinal]` is the index into `attributes` of an allocated ordinal, `None` when free;
/// - `unallocated` lists the free ordinals in the order they are handed out (released ordinals go to
///   the back, so a just-freed address is reused last);
/// - `sequence_number` grows with every assignment; `sequence_number_for_allocation[ordinal]` is the
///   block sequence number at the time the ordinal was assigned. A release naming an older number is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    /// `host:<node>` when affine to a node.
    pub affinity: Option<String>,
    pub allocations: Vec<Option<usize>>,
    pub unallocated: Vec<u32>,
    pub attributes: Vec<AllocationAttribute>,
    pub sequence_number: u64,
    pub sequence_number_for_allocation: BTreeMap<u32, u64>,
}

/// One address handed out by an assignment, with the sequence number a later release must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub ip: IpAddr,
    pub sequence_number: u64,
}

/// A request to release one address. `sequence_number: None` releases whatever holds the address
/// (administrative release); `Some(n)` releases it only if it is still the allocation made at `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseRequest {
    pub ip: IpAddr,
    pub sequence_number: Option<u64>,
}

/// What a release did to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Freed; the handle that owned it (its count must be decremented).
    Released {
        ip: IpAddr,
        handle_id: Option<String>,
    },
    /// Was not allocated: nothing to do (release is idempotent).
    NotAllocated { ip: IpAddr },
    /// Allocated again since the caller's assignment: left alone.
    StaleSequence { ip: IpAddr, held: u64, current: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("{ip} is not inside block {block}")]
    NotInBlock { ip: IpAddr, block: IpNet },
    #[error("{ip} is already allocated in block {block} to handle {handle}")]
    AlreadyAllocated {
        ip: IpAddr,
        block: IpNet,
        handle: String,
    },
    #[error(
        "block {block}: invalid size /{prefix} (IPv4 blocks /20../32, IPv6 /116../128; fix the IPPool blockSize)"
    )]
    InvalidSize { block: IpNet, prefix: u8 },
    #[error("block {block} is inconsistent: {reason}")]
    Inconsistent { block: IpNet, reason: String },
}

/// Largest number of host bits a block may have (Calico: /20 for IPv4, /116 for IPv6).
pub const MAX_BLOCK_HOST_BITS: u8 = 12;

impl Block {
    /// A new empty block. `cidr` is normalised to its network address.
    pub fn new(cidr: IpNet, affinity: Option<String>) -> Result<Self, BlockError> {
        let cidr = cidr.trunc();
        let size = block_size(cidr)?;
        Ok(Self {
            cidr,
            affinity,
            allocations: vec![None; size as usize],
            unallocated: (0..size).collect(),
            attributes: Vec::new(),
            sequence_number: 0,
            sequence_number_for_allocation: BTreeMap::new(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.allocations.len()
    }

    pub fn free_count(&self) -> usize {
        self.unallocated.len()
    }

    pub fn used_count(&self) -> usize {
        self.capacity().saturating_sub(self.free_count())
    }

    pub fn is_empty(&self) -> bool {
        self.unallocated.len() == self.allocations.len()
    }

    /// The node this block is affine to (`host:<node>`).
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
    }

    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let offset = addr::to_u128(ip).checked_sub(addr::to_u128(self.cidr.network()))?;
        u32::try_from(offset)
            .ok()
            .filter(|o| (*o as usize) < self.allocations.len())
    }

    pub fn ip_of(&self, ordinal: u32) -> IpAddr {
        let base = addr::to_u128(self.cidr.network());
        // Ordinals are below the block size, which fits inside the family's address space.
        addr::from_u128(base + u128::from(ordinal), Family::of(self.cidr))
    }

    /// The attribute of an allocated address.
    pub fn attribute_of(&self, ip: IpAddr) -> Option<&AllocationAttribute> {
        let ordinal = self.ordinal_of(ip)?;
        let index = (*self.allocations.get(ordinal as usize)?)?;
        self.attributes.get(index)
    }

    /// The sequence number of the allocation currently holding `ip`.
    pub fn sequence_of(&self, ip: IpAddr) -> Option<u64> {
        let ordinal = self.ordinal_of(ip)?;
        self.allocations.get(ordinal as usize)?.as_ref()?;
        Some(
            self.sequence_number_for_allocation
                .get(&ordinal)
                .copied()
                .unwrap_or(0),
        )
    }

    /// Every allocated address with its attribute, in address order.
    pub fn allocated(&self) -> impl Iterator<Item = (IpAddr, &AllocationAttribute)> + '_ {
        self.allocations
            .iter()
            .enumerate()
            .filter_map(|(ordinal, index)| {
                let attr = self.attributes.get((*index)?)?;
                Some((self.ip_of(ordinal as u32), attr))
            })
    }

    pub fn ips_of_handle<'a>(&'a self, handle_id: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.allocated()
            .filter(move |(_, attr)| attr.handle_id.as_deref() == Some(handle_id))
            .map(|(ip, _)| ip)
    }

    /// Assign up to `num` free addresses to `attr`. Returns the new block and the addresses (fewer than
    /// `num` when the block runs out; none when it is full).
    pub fn assign(&self, num: usize, attr: &AllocationAttribute) -> (Block, Vec<Assigned>) {
        let take = num.min(self.unallocated.len());
        if take == 0 {
            return (self.clone(), Vec::new());
        }
        let mut next = self.clone();
        let index = next.attribute_index(attr);
        let ordinals: Vec<u32> = next.unallocated.drain(..take).collect();
        let assigned = ordinals
            .into_iter()
            .map(|ordinal| next.mark_allocated(ordinal, index))
            .collect();
        (next, assigned)
    }

    /// Assign one specific address.
    pub fn assign_ip(
        &self,
        ip: IpAddr,
        attr: &AllocationAttribute,
    ) -> Result<(Block, Assigned), BlockError> {
        let ordinal = self.ordinal_of(ip).ok_or(BlockError::NotInBlock {
            ip,
            block: self.cidr,
        })?;
        if let Some(existing) = self.attribute_of(ip) {
            return Err(BlockError::AlreadyAllocated {
                ip,
                block: self.cidr,
                handle: existing
                    .handle_id
                    .clone()
                    .unwrap_or_else(|| "<none>".into()),
            });
        }
        let mut next = self.clone();
        next.unallocated.retain(|o| *o != ordinal);
        let index = next.attribute_index(attr);
        let assigned = next.mark_allocated(ordinal, index);
        Ok((next, assigned))
    }

    /// Release addresses. Addresses outside the block are an error (the caller grouped them wrongly);
    /// free addresses and stale sequence numbers are reported, not errors.
    pub fn release(
        &self,
        requests: &[ReleaseRequest],
    ) -> Result<(Block, Vec<ReleaseOutcome>), BlockError> {
        let mut next = self.clone();
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            let ip = request.ip;
            let ordinal = next.ordinal_of(ip).ok_or(BlockError::NotInBlock {
                ip,
                block: self.cidr,
            })?;
            let Some(index) = next.allocations[ordinal as usize] else {
                outcomes.push(ReleaseOutcome::NotAllocated { ip });
                continue;
            };
            let current = next
                .sequence_number_for_allocation
                .get(&ordinal)
                .copied()
                .unwrap_or(0);
            if let Some(held) = request.sequence_number
                && held != current
            {
                outcomes.push(ReleaseOutcome::StaleSequence { ip, held, current });
                continue;
            }
            let handle_id = next.attributes.get(index).and_then(|a| a.handle_id.clone());
            next.allocations[ordinal as usize] = None;
            next.sequence_number_for_allocation.remove(&ordinal);
            next.unallocated.push(ordinal);
            outcomes.push(ReleaseOutcome::Released { ip, handle_id });
        }
        next.compact_attributes();
        Ok((next, outcomes))
    }

    /// Release every address of `handle_id`. Returns the new block and the released addresses.
    pub fn release_by_handle(&self, handle_id: &str) -> (Block, Vec<IpAddr>) {
        let requests: Vec<ReleaseRequest> = self
            .ips_of_handle(handle_id)
            .map(|ip| ReleaseRequest {
                ip,
                sequence_number: None,
            })
            .collect();
        match self.release(&requests) {
            Ok((next, _)) => {
                let ips = requests.iter().map(|r| r.ip).collect();
                (next, ips)
            }
            // The requests come from this block's own allocations, so they are all inside it.
            Err(_) => (self.clone(), Vec::new()),
        }
    }

    /// Structural consistency: sizes, free list and allocations partition the ordinals, attribute
    /// indices resolve. Used when reading blocks from the datastore and by the leak check.
    pub fn validate(&self) -> Result<(), BlockError> {
        let size = block_size(self.cidr)? as usize;
        let bad = |reason: String| {
            Err(BlockError::Inconsistent {
                block: self.cidr,
                reason,
            })
        };
        if self.cidr != self.cidr.trunc() {
            return bad(format!("{} is not a network address", self.cidr));
        }
        if self.allocations.len() != size {
            return bad(format!(
                "{} allocation slots, expected {size}",
                self.allocations.len()
            ));
        }
        let mut seen = vec![false; size];
        for &ordinal in &self.unallocated {
            let Some(slot) = seen.get_mut(ordinal as usize) else {
                return bad(format!("free ordinal {ordinal} out of range"));
            };
            if std::mem::replace(slot, true) {
                return bad(format!("free ordinal {ordinal} listed twice"));
            }
            if self.allocations[ordinal as usize].is_some() {
                return bad(format!("ordinal {ordinal} is both free and allocated"));
            }
        }
        for (ordinal, index) in self.allocations.iter().enumerate() {
            match index {
                Some(i) if *i >= self.attributes.len() => {
                    return bad(format!("ordinal {ordinal} points at missing attribute {i}"));
                }
                Some(_) => {}
                None if !seen[ordinal] => {
                    return bad(format!("ordinal {ordinal} is neither free nor allocated"));
                }
                None => {}
            }
        }
        Ok(())
    }

    fn attribute_index(&mut self, attr: &AllocationAttribute) -> usize {
        if let Some(i) = self.attributes.iter().position(|a| a == attr) {
            return i;
        }
        self.attributes.push(attr.clone());
        self.attributes.len() - 1
    }

    fn mark_allocated(&mut self, ordinal: u32, attr_index: usize) -> Assigned {
        self.sequence_number += 1;
        self.allocations[ordinal as usize] = Some(attr_index);
        self.sequence_number_for_allocation
            .insert(ordinal, self.sequence_number);
        Assigned {
            ip: self.ip_of(ordinal),
            sequence_number: self.sequence_number,
        }
    }

    /// Drop attributes no allocation refers to and renumber the rest, so blocks do not grow forever.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for index in self.allocations.iter().flatten() {
            if let Some(u) = used.get_mut(*index) {
                *u = true;
            }
        }
        if used.iter().all(|u| *u) {
            return;
        }
        let mut renumber = vec![None; self.attributes.len()];
        let mut kept = Vec::new();
        for (i, attr) in std::mem::take(&mut self.attributes).into_iter().enumerate() {
            if used[i] {
                renumber[i] = Some(kept.len());
                kept.push(attr);
            }
        }
        self.attributes = kept;
        for slot in self.allocations.iter_mut() {
            *slot = slot.and_then(|i| renumber.get(i).copied().flatten());
        }
    }
}

/// Number of addresses in a block of this CIDR, or an error when the size is outside Calico's range.
pub fn block_size(cidr: IpNet) -> Result<u32, BlockError> {
    let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
    if host_bits > MAX_BLOCK_HOST_BITS {
        return Err(BlockError::InvalidSize {
            block: cidr,
            prefix: cidr.prefix_len(),
        });
    }
    Ok(1u32 << host_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(handle: &str) -> AllocationAttribute {
        attribute(
            handle,
            BTreeMap::from([(ATTR_NODE.to_owned(), "n1".to_owned())]),
        )
    }

    fn block(cidr: &str) -> Block {
        Block::new(cidr.parse().unwrap(), Some("host:n1".into())).unwrap()
    }

    #[test]
    fn assigns_in_order_and_reports_fewer_when_full() {
        let b = block("10.0.0.0/30");
        let (b, got) = b.assign(3, &attr("h1"));
        let ips: Vec<String> = got.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.0", "10.0.0.1", "10.0.0.2"]);
        let (b, got) = b.assign(5, &attr("h2"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip.to_string(), "10.0.0.3");
        let (_, got) = b.assign(1, &attr("h3"));
        assert!(got.is_empty());
        assert_eq!(b.attributes.len(), 2, "one attribute per distinct owner");
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let b = block("10.0.0.0/30");
        let (b, got) = b.assign(2, &attr("h1"));
        let (b, out) = b
            .release(&[ReleaseRequest {
                ip: got[0].ip,
                sequence_number: None,
            }])
            .unwrap();
        assert_eq!(
            out,
            [ReleaseOutcome::Released {
                ip: got[0].ip,
                handle_id: Some("h1".into())
            }]
        );
        let (_, next) = b.assign(3, &attr("h2"));
        let ips: Vec<String> = next.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.3", "10.0.0.0"]);
    }

    #[test]
    fn stale_release_keeps_the_reused_address() {
        let b = block("10.0.0.0/31");
        let (b, first) = b.assign(1, &attr("old"));
        let ip = first[0].ip;
        let (b, _) = b
            .release(&[ReleaseRequest {
                ip,
                sequence_number: Some(first[0].sequence_number),
            }])
            .unwrap();
        let (b, second) = b.assign_ip(ip, &attr("new")).unwrap();
        assert_ne!(second.sequence_number, first[0].sequence_number);
        let (after, out) = b
            .release(&[ReleaseRequest {
                ip,
                sequence_number: Some(first[0].sequence_number),
            }])
            .unwrap();
        assert!(matches!(out[0], ReleaseOutcome::StaleSequence { .. }));
        assert_eq!(after, b);
        assert_eq!(
            after.attribute_of(ip).unwrap().handle_id.as_deref(),
            Some("new")
        );
    }

    #[test]
    fn assign_ip_rejects_taken_and_foreign_addresses() {
        let b = block("10.0.0.0/30");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (b, _) = b.assign_ip(ip, &attr("h1")).unwrap();
        assert!(matches!(
            b.assign_ip(ip, &attr("h2")),
            Err(BlockError::AlreadyAllocated { .. })
        ));
        let outside: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(matches!(
            b.assign_ip(outside, &attr("h2")),
            Err(BlockError::NotInBlock { .. })
        ));
        let (b, ips) = b.assign(4, &attr("h3"));
        assert!(!ips.iter().any(|a| a.ip == ip));
        b.validate().unwrap();
    }

    #[test]
    fn release_by_handle_is_idempotent_and_compacts_attributes() {
        let b = block("fd00::/126");
        let (b, _) = b.assign(2, &attr("h1"));
        let (b, _) = b.assign(1, &attr("h2"));
        let (b, ips) = b.release_by_handle("h1");
        assert_eq!(ips.len(), 2);
        assert_eq!(b.attributes, vec![attr("h2")]);
        assert_eq!(
            b.attribute_of("fd00::2".parse().unwrap()),
            Some(&attr("h2"))
        );
        let (again, ips) = b.release_by_handle("h1");
        assert!(ips.is_empty());
        assert_eq!(again, b);
        b.validate().unwrap();
        let (b, _) = b.release_by_handle("h2");
        assert!(b.is_empty());
    }

    #[test]
    fn validate_catches_broken_free_lists_and_sizes() {
        let mut b = block("10.0.0.0/30");
        b.unallocated.push(0);
        assert!(b.validate().is_err());
        let mut b = block("10.0.0.0/30");
        b.unallocated.pop();
        assert!(b.validate().is_err());
        assert!(matches!(
            Block::new("10.0.0.0/16".parse().unwrap(), None),
            Err(BlockError::InvalidSize { .. })
        ));
    }
}
