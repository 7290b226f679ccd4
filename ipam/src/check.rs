//! Usage, the leak check and its repair.
//!
//! `check` reads one snapshot of pools, blocks, affinities and handles and reports every inconsistency a
//! human would act on. `release_from_report` frees exactly what a report lists: addresses are released
//! with the sequence number seen by the check, handles and affinities are deleted at the revision seen, so
//! anything reused or changed since the report is left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use reef_crds::{AffinityState, BlockAffinity, IPAMBlock, IPAMHandle};
use reef_datastore::{Datastore, Error as StoreError, Revision};
use serde::{Deserialize, Serialize};

use crate::block::{ATTR_TYPE, Block, ReleaseOutcome, ReleaseRequest, attribute_node};
use crate::client::{Ipam, pool_layout};
use crate::convert::{block_from_spec, block_name};
use crate::error::IpamError;
use crate::pool::PoolLayout;

/// What the caller knows about the live cluster. Categories that need a field it leaves `None` are skipped.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    /// Addresses live workloads use (e.g. from WorkloadEndpoints).
    pub in_use: Option<BTreeSet<IpAddr>>,
    /// Nodes that exist.
    pub nodes: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub ip: IpAddr,
    pub block: IpNet,
    pub handle_id: Option<String>,
    pub node: Option<String>,
    /// The allocation's sequence number when checked: a release from the report frees only this allocation.
    pub sequence_number: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    pub handle_id: String,
    /// Revision of the handle when checked.
    pub revision: Option<String>,
    /// Block -> count as the handle records it.
    pub recorded: BTreeMap<String, u32>,
    /// Block -> count of allocations actually found.
    pub found: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub name: String,
    pub cidr: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityRecord {
    pub name: String,
    pub node: String,
    pub cidr: String,
    pub state: AffinityState,
    pub revision: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedRecord {
    pub ip: IpAddr,
    pub block: IpNet,
    /// The node the block is affine to.
    pub block_node: String,
    /// The node that holds the address.
    pub node: String,
}

/// The result of `check`. Everything except `borrowed` (normal when a pool is full) is a problem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub pools: usize,
    pub blocks: usize,
    pub allocations: usize,
    pub handles: usize,
    /// Allocated, but no live workload uses the address (needs `CheckInput::in_use`).
    pub allocated_but_unused: Vec<AddressRecord>,
    /// Used by a live workload, but not allocated (needs `CheckInput::in_use`).
    pub used_but_unallocated: Vec<IpAddr>,
    /// Allocated by a node that no longer exists (needs `CheckInput::nodes`).
    pub addresses_of_missing_nodes: Vec<AddressRecord>,
    /// Allocations whose handle object is missing.
    pub allocations_without_handle: Vec<AddressRecord>,
    /// Handles that hold no allocation, or whose counts disagree with the blocks.
    pub orphan_handles: Vec<HandleRecord>,
    /// Blocks that do not parse, are inconsistent, lie outside every pool or have the wrong size.
    pub invalid_blocks: Vec<BlockRecord>,
    /// Affinities whose block is missing or affine to another node.
    pub stale_affinities: Vec<AffinityRecord>,
    /// Affinities of nodes that no longer exist (needs `CheckInput::nodes`).
    pub affinities_of_missing_nodes: Vec<AffinityRecord>,
    /// Addresses held by a node other than the block's (informational).
    pub borrowed: Vec<BorrowedRecord>,
}

impl CheckReport {
    pub fn problem_count(&self) -> usize {
        self.allocated_but_unused.len()
            + self.used_but_unallocated.len()
            + self.addresses_of_missing_nodes.len()
            + self.allocations_without_handle.len()
            + self.orphan_handles.len()
            + self.invalid_blocks.len()
            + self.stale_affinities.len()
            + self.affinities_of_missing_nodes.len()
    }
}

/// What `release_from_report` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairSummary {
    pub addresses_released: usize,
    /// Addresses reused or released since the report: left alone.
    pub addresses_skipped: usize,
    pub handles_deleted: usize,
    pub affinities_released: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockUsage {
    pub cidr: IpNet,
    pub affinity: Option<String>,
    pub used: usize,
    pub free: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub disabled: bool,
    /// Addresses in the pool (saturating for huge IPv6 pools).
    pub capacity: u128,
    pub in_use: u128,
    pub blocks: Vec<BlockUsage>,
}

struct Snapshot {
    pools: Vec<(String, bool, PoolLayout)>,
    invalid_pools: Vec<String>,
    blocks: Vec<IPAMBlock>,
    affinities: Vec<BlockAffinity>,
    handles: Vec<IPAMHandle>,
}

async fn snapshot(datastore: &Datastore) -> Result<Snapshot, IpamError> {
    let pool_store = datastore.store::<reef_crds::IPPool>();
    let (pool_objs, _) = pool_store.list(None).await?;
    let mut pools = Vec::new();
    let mut invalid_pools = Vec::new();
    for pool in pool_objs {
        let name = pool.metadata.name.clone().unwrap_or_default();
        match pool_layout(&pool.spec) {
            Ok(layout) => pools.push((name, pool.spec.disabled, layout)),
            Err(e) => invalid_pools.push(format!("{name}: {e}")),
        }
    }
    let (blocks, _) = datastore.store::<IPAMBlock>().list(None).await?;
    let (affinities, _) = datastore.store::<BlockAffinity>().list(None).await?;
    let (handles, _) = datastore.store::<IPAMHandle>().list(None).await?;
    Ok(Snapshot {
        pools,
        invalid_pools,
        blocks,
        affinities,
        handles,
    })
}

impl Ipam {
    /// Pools with their use and blocks, for `reefctl ipam show`.
    pub async fn usage(&self) -> Result<Vec<PoolUsage>, IpamError> {
        let snap = snapshot(self.datastore()).await?;
        let mut pools: Vec<PoolUsage> = snap
            .pools
            .iter()
            .map(|(name, disabled, layout)| PoolUsage {
                name: name.clone(),
                cidr: layout.cidr,
                block_size: layout.block_prefix,
                disabled: *disabled,
                capacity: layout.capacity(),
                in_use: 0,
                blocks: Vec::new(),
            })
            .collect();
        for obj in &snap.blocks {
            let Ok(block) = block_from_spec(&obj.spec) else {
                continue;
            };
            if let Some(pool) = pools.iter_mut().find(|p| p.cidr.contains(&block.cidr)) {
                pool.in_use += block.used_count() as u128;
                pool.blocks.push(BlockUsage {
                    cidr: block.cidr,
                    affinity: block.affinity.clone(),
                    used: block.used_count(),
                    free: block.free_count(),
                });
            }
        }
        for pool in &mut pools {
            pool.blocks.sort_by_key(|b| b.cidr);
        }
        Ok(pools)
    }

    /// The leak check.
    pub async fn check(&self, input: &CheckInput) -> Result<CheckReport, IpamError> {
        let snap = snapshot(self.datastore()).await?;
        let mut report = CheckReport {
            pools: snap.pools.len(),
            blocks: snap.blocks.len(),
            handles: snap.handles.len(),
            ..CheckReport::default()
        };
        for reason in &snap.invalid_pools {
            report.invalid_blocks.push(BlockRecord {
                name: String::new(),
                cidr: String::new(),
                reason: format!("invalid pool {reason}"),
            });
        }
        let handles: BTreeMap<String, &IPAMHandle> = snap
            .handles
            .iter()
            .map(|h| (h.spec.handle_id.clone(), h))
            .collect();
        // Handle -> block -> allocations found.
        let mut found: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        let mut allocated: BTreeSet<IpAddr> = BTreeSet::new();
        let mut blocks_by_cidr: BTreeMap<IpNet, Block> = BTreeMap::new();
        for obj in &snap.blocks {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let invalid = |reason: String| BlockRecord {
                name: name.clone(),
                cidr: obj.spec.cidr.clone(),
                reason,
            };
            let block = match block_from_spec(&obj.spec) {
                Ok(b) => b,
                Err(e) => {
                    report.invalid_blocks.push(invalid(e.to_string()));
                    continue;
                }
            };
            if name != block_name(block.cidr) {
                report.invalid_blocks.push(invalid(format!(
                    "object name {name} does not match its cidr"
                )));
            }
            if !snap.pools.iter().any(|(_, _, l)| l.owns_block(block.cidr)) {
                let reason = match snap
                    .pools
                    .iter()
                    .find(|(_, _, l)| l.cidr.contains(&block.cidr))
                {
                    Some((pool, _, l)) => format!(
                        "size /{} differs from pool {pool}'s blockSize /{}",
                        block.cidr.prefix_len(),
                        l.block_prefix
                    ),
                    None => "outside every IP pool (was its pool deleted?)".to_owned(),
                };
                report.invalid_blocks.push(invalid(reason));
            }
            for (ip, attr) in block.allocated() {
                report.allocations += 1;
                allocated.insert(ip);
                let record = AddressRecord {
                    ip,
                    block: block.cidr,
                    handle_id: attr.handle_id.clone(),
                    node: attribute_node(attr).map(str::to_owned),
                    sequence_number: block.sequence_of(ip).unwrap_or(0),
                };
                match &attr.handle_id {
                    Some(h) if handles.contains_key(h) => {
                        *found
                            .entry(h.clone())
                            .or_default()
                            .entry(block.cidr.to_string())
                            .or_default() += 1;
                    }
                    _ => report.allocations_without_handle.push(record.clone()),
                }
                let node_gone = match (&input.nodes, &record.node) {
                    (Some(nodes), Some(node)) => !nodes.contains(node),
                    _ => false,
                };
                if node_gone {
                    report.addresses_of_missing_nodes.push(record.clone());
                } else if let Some(in_use) = &input.in_use {
                    // A tunnel address is used by its (live) node, not by a workload.
                    let tunnel = attr.secondary.contains_key(ATTR_TYPE);
                    if !tunnel && !in_use.contains(&ip) {
                        report.allocated_but_unused.push(record.clone());
                    }
                }
                if let (Some(block_node), Some(node)) =
                    (block.affine_node(), record.node.as_deref())
                    && block_node != node
                {
                    report.borrowed.push(BorrowedRecord {
                        ip,
                        block: block.cidr,
                        block_node: block_node.into(),
                        node: node.into(),
                    });
                }
            }
            blocks_by_cidr.insert(block.cidr, block);
        }
        if let Some(in_use) = &input.in_use {
            report.used_but_unallocated = in_use.difference(&allocated).copied().collect();
        }
        for handle in &snap.handles {
            let found = found.remove(&handle.spec.handle_id).unwrap_or_default();
            let recorded: BTreeMap<String, u32> = handle
                .spec
                .block
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(b, c)| (b.clone(), *c))
                .collect();
            if found != recorded {
                report.orphan_handles.push(HandleRecord {
                    handle_id: handle.spec.handle_id.clone(),
                    revision: Revision::of(handle).map(|r| r.to_string()),
                    recorded,
                    found,
                });
            }
        }
        for affinity in &snap.affinities {
            let record = |reason: String| AffinityRecord {
                name: affinity.metadata.name.clone().unwrap_or_default(),
                node: affinity.spec.node.clone(),
                cidr: affinity.spec.cidr.clone(),
                state: affinity.spec.state,
                revision: Revision::of(affinity).map(|r| r.to_string()),
                reason,
            };
            if let Some(nodes) = &input.nodes
                && !nodes.contains(&affinity.spec.node)
            {
                report.affinities_of_missing_nodes.push(record(format!(
                    "node {} does not exist",
                    affinity.spec.node
                )));
                continue;
            }
            let host = format!("host:{}", affinity.spec.node);
            let block = affinity
                .spec
                .cidr
                .parse::<IpNet>()
                .ok()
                .and_then(|c| blocks_by_cidr.get(&c));
            match block {
                None => report
                    .stale_affinities
                    .push(record("its block does not exist".into())),
                Some(b) if b.affinity.as_deref() != Some(host.as_str()) => {
                    report.stale_affinities.push(record(format!(
                        "its block is affine to {}",
                        b.affinity.as_deref().unwrap_or("no node")
                    )))
                }
                Some(_) if affinity.spec.state == AffinityState::PendingDeletion => report
                    .stale_affinities
                    .push(record("left pending deletion".into())),
                Some(_) => {}
            }
        }
        Ok(report)
    }

    /// Free what a report lists (see the module notes on why this is safe against changes since the check).
    pub async fn release_from_report(
        &self,
        report: &CheckReport,
    ) -> Result<RepairSummary, IpamError> {
        let ipam = self;
        let datastore = self.datastore();
        let mut summary = RepairSummary::default();
        let mut seen = BTreeSet::new();
        let requests: Vec<ReleaseRequest> = report
            .allocated_but_unused
            .iter()
            .chain(&report.addresses_of_missing_nodes)
            .chain(&report.allocations_without_handle)
            .filter(|r| seen.insert(r.ip))
            .map(|r| ReleaseRequest {
                ip: r.ip,
                sequence_number: Some(r.sequence_number),
            })
            .collect();
        for outcome in ipam.release_ips(&requests).await? {
            match outcome {
                ReleaseOutcome::Released { .. } => summary.addresses_released += 1,
                _ => summary.addresses_skipped += 1,
            }
        }
        let handles = datastore.store::<IPAMHandle>();
        for record in report.orphan_handles.iter().filter(|h| h.found.is_empty()) {
            let revision = record.revision.clone().map(Revision::new);
            let name = crate::convert::handle_name(&record.handle_id);
            match handles.delete(None, &name, revision.as_ref()).await {
                Ok(()) => summary.handles_deleted += 1,
                // Changed (used again) or gone since the report: leave it.
                Err(StoreError::Conflict | StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let affinities = datastore.store::<BlockAffinity>();
        for record in &report.stale_affinities {
            let revision = record.revision.clone().map(Revision::new);
            match affinities
                .delete(None, &record.name, revision.as_ref())
                .await
            {
                Ok(()) => summary.affinities_released += 1,
                Err(StoreError::Conflict | StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for record in &report.affinities_of_missing_nodes {
            if let Ok(cidr) = record.cidr.parse::<IpNet>() {
                ipam.release_affinity(&record.node, cidr, false).await?;
                summary.affinities_released += 1;
            }
        }
        Ok(summary)
    }
}
