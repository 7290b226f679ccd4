//! Between the sans-IO [`Block`] and the stored `IPAMBlock`, and the object names Reef (like Calico) uses.

use std::collections::BTreeMap;

use ipnet::IpNet;
use reef_crds::{IPAMBlock, IPAMBlockSpec};

use crate::block::{Block, BlockError};

/// Name of the `IPAMBlock` object of a CIDR: `10-244-3-64-26`, `fd00-1---40-122`.
pub fn block_name(cidr: IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// Name of a node's `BlockAffinity` for a block: `<node>-<block name>`.
pub fn affinity_name(node: &str, cidr: IpNet) -> String {
    format!("{node}-{}", block_name(cidr))
}

/// Name of the `IPAMHandle` object of a handle id (object names are lower case).
pub fn handle_name(handle_id: &str) -> String {
    handle_id.to_ascii_lowercase()
}

/// The allocator's view of a stored block; an invalid block is an error naming what is wrong.
pub fn block_from_spec(spec: &IPAMBlockSpec) -> Result<Block, BlockError> {
    let cidr: IpNet = spec.cidr.parse().map_err(|_| BlockError::Inconsistent {
        block: IpNet::default(),
        reason: format!("cidr {:?} does not parse", spec.cidr),
    })?;
    let inconsistent = |reason: String| BlockError::Inconsistent {
        block: cidr,
        reason,
    };
    let mut sequence_number_for_allocation = BTreeMap::new();
    for (ordinal, seq) in &spec.sequence_number_for_allocation {
        let ordinal: u32 = ordinal
            .parse()
            .map_err(|_| inconsistent(format!("sequence key {ordinal:?} is no ordinal")))?;
        sequence_number_for_allocation.insert(ordinal, *seq);
    }
    let block = Block {
        cidr,
        affinity: spec.affinity.clone(),
        allocations: spec
            .allocations
            .iter()
            .map(|a| a.map(|i| i as usize))
            .collect(),
        unallocated: spec.unallocated.clone(),
        attributes: spec.attributes.clone(),
        sequence_number: spec.sequence_number,
        sequence_number_for_allocation,
    };
    block.validate()?;
    Ok(block)
}

/// Writes the allocator's state back into `obj` (keeping its metadata, so the update is a CAS on the
/// revision it was read at).
pub fn store_block(obj: &IPAMBlock, block: &Block) -> IPAMBlock {
    IPAMBlock {
        metadata: obj.metadata.clone(),
        spec: spec_of(block, obj.spec.deleted, obj.spec.strict_affinity),
    }
}

/// A new stored block object for `block`.
pub fn new_block_object(block: &Block) -> IPAMBlock {
    IPAMBlock::new(&block_name(block.cidr), spec_of(block, false, false))
}

fn spec_of(block: &Block, deleted: bool, strict_affinity: bool) -> IPAMBlockSpec {
    IPAMBlockSpec {
        cidr: block.cidr.to_string(),
        affinity: block.affinity.clone(),
        // Block sizes are at most 4096 addresses, so attribute indices fit u32.
        allocations: block
            .allocations
            .iter()
            .map(|a| a.map(|i| i as u32))
            .collect(),
        unallocated: block.unallocated.clone(),
        attributes: block.attributes.clone(),
        sequence_number: block.sequence_number,
        sequence_number_for_allocation: block
            .sequence_number_for_allocation
            .iter()
            .map(|(o, s)| (o.to_string(), *s))
            .collect(),
        deleted,
        strict_affinity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::attribute;

    #[test]
    fn round_trips_through_the_stored_form() {
        let block = Block::new("10.0.0.64/26".parse().unwrap(), Some("host:n1".into())).unwrap();
        let (block, _) = block.assign(3, &attribute("net.c1", BTreeMap::new()));
        let obj = new_block_object(&block);
        assert_eq!(obj.metadata.name.as_deref(), Some("10-0-0-64-26"));
        assert_eq!(block_from_spec(&obj.spec).unwrap(), block);
        let mut broken = obj.spec.clone();
        broken.unallocated.push(1);
        assert!(block_from_spec(&broken).is_err());
        assert_eq!(
            affinity_name("n1", "fd00::40/122".parse().unwrap()),
            "n1-fd00--40-122"
        );
    }
}
