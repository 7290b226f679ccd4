//! The allocator on the datastore, with Calico's semantics.
//!
//! - Assignment: the node's affine blocks first, then a newly claimed block (walking the pool from a
//!   node-seeded offset), then, unless `strictAffinity`, a free address borrowed from another node's block.
//! - Claim in two phases: `BlockAffinity` Pending -> `IPAMBlock` created with `host:<node>` -> Confirmed.
//!   Creating the block decides a race; a pending affinity left by a crash is re-used by the same node.
//! - Every write is compare-and-swap on the revision last read; a conflict re-reads and recomputes from the
//!   sans-IO core (the rejected state is dropped), bounded by [`MAX_ATTEMPTS`] with jittered backoff.
//! - Ordering (as Calico): on assignment the handle is incremented before the block is written, and on
//!   release the block is written before the handle is decremented. So an allocation always has its handle
//!   (release by handle finds it, even after a crash); a crash in between leaves at worst a handle count
//!   without an allocation, which `check` reports and `release_by_handle` clears.
//! - Datastore failures are returned at once (`Unavailable` names the endpoint). A write whose answer was
//!   lost may have been applied: callers release by handle on failure (release is idempotent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reef_crds::selector::Selector;
use reef_crds::{
    AffinityState, AffinityType, AllocationAttribute, AllowedUse, BlockAffinity, BlockAffinitySpec,
    IPAMBlock, IPAMConfig, IPAMConfigSpec, IPAMHandle, IPAMHandleSpec, IPPool, IPPoolSpec,
};
use reef_datastore::{Datastore, Error as StoreError, Revision, Store};
use serde::{Deserialize, Serialize};

use crate::addr::Family;
use crate::block::{
    ATTR_NODE, ATTR_TYPE, Assigned, Block, ReleaseOutcome, ReleaseRequest, attribute,
};
use crate::convert::{
    affinity_name, block_from_spec, block_name, handle_name, new_block_object, store_block,
};
use crate::error::{FamilyName, IpamError};
use crate::pool::PoolLayout;

/// Compare-and-swap attempts per write before giving up.
pub const MAX_ATTEMPTS: u32 = 100;
/// Upper bound of the jittered backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// Name of the `IPAMConfig` singleton.
const CONFIG_NAME: &str = "default";

/// What an address is for; a pool's `allowedUses` must include it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Use {
    #[default]
    Workload,
    Tunnel,
}

/// The handle of a pod's addresses: `<network>.<containerID>`.
pub fn pod_handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// The handle of a node's VXLAN tunnel address.
pub fn tunnel_handle(node: &str) -> String {
    format!("vxlan-tunnel-addr-{node}")
}

#[derive(Debug, Clone, Default)]
pub struct AutoAssignArgs {
    pub handle_id: String,
    pub num_v4: usize,
    pub num_v6: usize,
    pub node: String,
    /// The node's labels, matched against the pools' `nodeSelector`.
    pub node_labels: BTreeMap<String, String>,
    /// Only these pools (by CIDR); empty means every pool that fits.
    pub pools: Vec<IpNet>,
    /// Secondary attributes (namespace, pod); `node` is added.
    pub attrs: BTreeMap<String, String>,
    pub use_: Use,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoAssignResult {
    pub v4: Vec<Assigned>,
    pub v6: Vec<Assigned>,
}

#[derive(Debug, Clone)]
pub struct AssignIpArgs {
    pub ip: IpAddr,
    pub handle_id: String,
    pub node: String,
    pub attrs: BTreeMap<String, String>,
}

/// Counters of one client, for benchmarks and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Writes rejected by compare-and-swap and retried.
    pub conflicts: AtomicU64,
    /// Addresses taken from another node's block.
    pub borrowed: AtomicU64,
    /// Blocks claimed.
    pub claims: AtomicU64,
}

/// Per node: the blocks it is affine to (loaded lazily) and the lock that serialises its assignments, like
/// Calico's host-wide IPAM lock, so a node's own requests do not race each other for its blocks.
#[derive(Default)]
struct NodeState {
    affine: Option<BTreeSet<IpNet>>,
}

/// A stored block and the allocator's view of it.
struct CachedBlock {
    obj: IPAMBlock,
    block: Block,
}

/// The IPAM client. One per process is enough; it may serve several nodes.
pub struct Ipam {
    datastore: Datastore,
    pools: Arc<dyn Store<IPPool>>,
    blocks: Arc<dyn Store<IPAMBlock>>,
    affinities: Arc<dyn Store<BlockAffinity>>,
    handles: Arc<dyn Store<IPAMHandle>>,
    configs: Arc<dyn Store<IPAMConfig>>,
    /// The last seen version of blocks: the base of the next CAS write (a conflict evicts it).
    block_cache: Mutex<HashMap<IpNet, Arc<CachedBlock>>>,
    nodes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<NodeState>>>>,
    /// When each block was first seen empty by `release_empty_blocks`.
    empty_since: Mutex<HashMap<IpNet, Instant>>,
    /// Pools and the IPAM configuration, read at most once per `settings_ttl`: they change rarely, and
    /// reading them on every call would double the datastore round trips of an assignment.
    settings: Mutex<Option<(Instant, Arc<Settings>)>>,
    settings_ttl: Duration,
    stats: Stats,
}

/// How long pools and the IPAM configuration are cached by default: a disabled pool or a changed
/// `strictAffinity` is honoured within this time.
pub const DEFAULT_SETTINGS_TTL: Duration = Duration::from_secs(1);

struct Settings {
    config: IPAMConfigSpec,
    pools: Vec<(IPPool, PoolLayout)>,
}

impl Ipam {
    pub fn new(datastore: &Datastore) -> Self {
        Self {
            datastore: datastore.clone(),
            pools: datastore.store(),
            blocks: datastore.store(),
            affinities: datastore.store(),
            handles: datastore.store(),
            configs: datastore.store(),
            block_cache: Mutex::default(),
            nodes: Mutex::default(),
            empty_since: Mutex::default(),
            settings: Mutex::default(),
            settings_ttl: DEFAULT_SETTINGS_TTL,
            stats: Stats::default(),
        }
    }

    /// Cache pools and configuration for `ttl` (zero: read them on every call).
    pub fn with_settings_ttl(mut self, ttl: Duration) -> Self {
        self.settings_ttl = ttl;
        self
    }

    pub fn datastore(&self) -> &Datastore {
        &self.datastore
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The IPAM configuration (defaults when no `IPAMConfig` named `default` exists).
    pub async fn config(&self) -> Result<IPAMConfigSpec, IpamError> {
        Ok(self
            .configs
            .get(None, CONFIG_NAME)
            .await?
            .map(|c| c.spec)
            .unwrap_or_default())
    }

    /// All pools with their layouts; pools whose CIDR or block size is invalid are skipped (`check` names them).
    pub async fn pools(&self) -> Result<Vec<(IPPool, PoolLayout)>, IpamError> {
        let (pools, _) = self.pools.list(None).await?;
        Ok(pools
            .into_iter()
            .filter_map(|p| pool_layout(&p.spec).ok().map(|l| (p, l)))
            .collect())
    }

    async fn settings(&self) -> Result<Arc<Settings>, IpamError> {
        {
            let cached = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((read_at, settings)) = cached.as_ref()
                && read_at.elapsed() < self.settings_ttl
            {
                return Ok(settings.clone());
            }
        }
        let (config, pools) = tokio::join!(self.config(), self.pools());
        let settings = Arc::new(Settings {
            config: config?,
            pools: pools?,
        });
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), settings.clone()));
        Ok(settings)
    }

    /// Assign `num_v4` IPv4 and `num_v6` IPv6 addresses to a handle. All or nothing: when not every address
    /// can be found, the ones taken are released again and the error says why.
    pub async fn auto_assign(&self, args: &AutoAssignArgs) -> Result<AutoAssignResult, IpamError> {
        let node_lock = self.node_state(&args.node);
        let mut node = node_lock.lock().await;
        let settings = self.settings().await?;
        let (config, pools) = (&settings.config, &settings.pools);
        let mut result = AutoAssignResult::default();
        for (family, num) in [(Family::V4, args.num_v4), (Family::V6, args.num_v6)] {
            if num == 0 {
                continue;
            }
            let outcome = self
                .assign_family(&mut node, config, pools, args, family, num)
                .await;
            if outcome.is_err() {
                // A claim may have stopped half way: learn the node's blocks afresh next time.
                node.affine = None;
            }
            match outcome {
                Ok(got) if family == Family::V4 => result.v4 = got,
                Ok(got) => result.v6 = got,
                Err(e) => {
                    // All or nothing: give back what this call took (exact sequence numbers, so nothing else).
                    let taken: Vec<ReleaseRequest> = result
                        .v4
                        .iter()
                        .chain(&result.v6)
                        .map(|a| ReleaseRequest {
                            ip: a.ip,
                            sequence_number: Some(a.sequence_number),
                        })
                        .collect();
                    if !taken.is_empty()
                        && let Err(undo) = self.release_ips(&taken).await
                    {
                        tracing::warn!(error = %undo, handle = %args.handle_id, "could not undo a partial assignment; release the handle");
                    }
                    return Err(e);
                }
            }
        }
        Ok(result)
    }

    async fn assign_family(
        &self,
        node: &mut NodeState,
        config: &IPAMConfigSpec,
        pools: &[(IPPool, PoolLayout)],
        args: &AutoAssignArgs,
        family: Family,
        num: usize,
    ) -> Result<Vec<Assigned>, IpamError> {
        let candidates = candidate_pools(pools, args, family)?;
        let mut attrs = args.attrs.clone();
        attrs.insert(ATTR_NODE.into(), args.node.clone());
        if args.use_ == Use::Tunnel {
            attrs
                .entry(ATTR_TYPE.into())
                .or_insert_with(|| "vxlanTunnelAddress".into());
        }
        let attr = attribute(&args.handle_id, attrs);
        let in_candidates = |cidr: &IpNet| candidates.iter().any(|p| p.owns_block(*cidr));
        let mut got: Vec<Assigned> = Vec::new();

        // 1. The node's affine blocks.
        let affine = self.affine_blocks(node, &args.node).await?;
        for cidr in affine.iter().filter(|c| in_candidates(c)) {
            let need = num - got.len();
            if need == 0 {
                break;
            }
            match self
                .assign_in_block(*cidr, need, &attr, Some(&args.node))
                .await?
            {
                Some(more) => got.extend(more),
                None => {
                    node.affine.as_mut().map(|a| a.remove(cidr));
                }
            }
        }

        // 2. New blocks, while allowed.
        let mut claim_blocked = None;
        while got.len() < num {
            if !config.auto_allocate_blocks {
                claim_blocked = Some("autoAllocateBlocks is off".to_owned());
                break;
            }
            let owned = node.affine.as_ref().map_or(0, |a| {
                a.iter().filter(|c| Family::of(**c) == family).count()
            });
            if config.max_blocks_per_host > 0 && owned >= config.max_blocks_per_host as usize {
                claim_blocked = Some(format!(
                    "node {} has maxBlocksPerHost={} blocks",
                    args.node, config.max_blocks_per_host
                ));
                break;
            }
            let known = node.affine.clone().unwrap_or_default();
            let Some(cidr) = self
                .claim_next_block(&args.node, &candidates, &known)
                .await?
            else {
                claim_blocked = Some("no free block left".to_owned());
                break;
            };
            node.affine.get_or_insert_with(BTreeSet::new).insert(cidr);
            if let Some(more) = self
                .assign_in_block(cidr, num - got.len(), &attr, Some(&args.node))
                .await?
            {
                got.extend(more);
            }
        }

        // 3. Borrow from other nodes' blocks.
        if got.len() < num && !config.strict_affinity {
            let (blocks, _) = self.blocks.list(None).await?;
            let mut lenders: Vec<IpNet> = Vec::new();
            for obj in blocks {
                let Ok(block) = block_from_spec(&obj.spec) else {
                    continue;
                };
                if in_candidates(&block.cidr)
                    && !obj.spec.deleted
                    && !obj.spec.strict_affinity
                    && block.free_count() > 0
                {
                    lenders.push(block.cidr);
                }
                self.cache_block(obj, block);
            }
            for cidr in lenders {
                let need = num - got.len();
                if need == 0 {
                    break;
                }
                if let Some(more) = self.assign_in_block(cidr, need, &attr, None).await? {
                    self.stats
                        .borrowed
                        .fetch_add(more.len() as u64, Ordering::Relaxed);
                    got.extend(more);
                }
            }
        }

        if got.len() < num {
            let pools_text: Vec<String> = candidates.iter().map(|p| p.cidr.to_string()).collect();
            let why = claim_blocked.unwrap_or_default();
            let borrow = if config.strict_affinity {
                "strictAffinity is on, so no address is borrowed from other nodes' blocks"
            } else {
                "no other node's block has a free address"
            };
            let message = format!(
                "{} exhausted for node {}: found {} of {} {} addresses ({why}; {borrow}): add an IPPool or release addresses",
                pools_text.join(", "),
                args.node,
                got.len(),
                num,
                FamilyName(family)
            );
            let taken: Vec<ReleaseRequest> = got
                .iter()
                .map(|a| ReleaseRequest {
                    ip: a.ip,
                    sequence_number: Some(a.sequence_number),
                })
                .collect();
            if !taken.is_empty() {
                self.release_ips(&taken).await?;
            }
            return Err(IpamError::Exhausted(message));
        }
        Ok(got)
    }

    /// Assign one specific address. A block that does not exist yet is claimed for `node` first.
    pub async fn assign_ip(&self, args: &AssignIpArgs) -> Result<Assigned, IpamError> {
        let ip = args.ip;
        let settings = self.settings().await?;
        let pools = &settings.pools;
        let layout = pools
            .iter()
            .find_map(|(_, l)| l.cidr.contains(&ip).then_some(*l))
            .ok_or(IpamError::NotInPool { ip })?;
        let cidr = layout
            .block_containing(ip)
            .ok_or(IpamError::NotInPool { ip })?;
        let mut attrs = args.attrs.clone();
        attrs.insert(ATTR_NODE.into(), args.node.clone());
        let attr = attribute(&args.handle_id, attrs);
        for attempt in 0..MAX_ATTEMPTS {
            let Some(cached) = self.read_block(cidr).await? else {
                // No block yet: claim it for this node (someone else may win; then we borrow from theirs).
                if self.claim_affinity(&args.node, cidr).await? {
                    let lock = self.node_state(&args.node);
                    let mut node = lock.lock().await;
                    if let Some(affine) = node.affine.as_mut() {
                        affine.insert(cidr);
                    }
                }
                continue;
            };
            let (next, assigned) = cached.block.assign_ip(ip, &attr).map_err(|e| match e {
                crate::block::BlockError::AlreadyAllocated { handle, .. } => {
                    IpamError::AlreadyAllocated { ip, handle }
                }
                other => IpamError::Block(other),
            })?;
            if self
                .write_assignment(&cached.obj, next, &args.handle_id, 1)
                .await?
            {
                return Ok(assigned);
            }
            backoff(attempt).await;
        }
        Err(too_many("assigning an address", MAX_ATTEMPTS))
    }

    /// Release addresses. `sequence_number: Some(n)` releases an address only if it still holds the
    /// allocation made at `n` (a stale release is a no-op). Addresses not allocated are reported as such.
    pub async fn release_ips(
        &self,
        requests: &[ReleaseRequest],
    ) -> Result<Vec<ReleaseOutcome>, IpamError> {
        let mut by_block: BTreeMap<IpNet, Vec<ReleaseRequest>> = BTreeMap::new();
        let mut outcomes = Vec::new();
        let settings = self.settings().await?;
        let pools = &settings.pools;
        let mut all_blocks: Option<Vec<IpNet>> = None;
        for request in requests {
            let located = match pools
                .iter()
                .find_map(|(_, l)| l.block_containing(request.ip))
            {
                Some(cidr) => Some(cidr),
                None => {
                    // The pool is gone: find the block among the stored ones.
                    if all_blocks.is_none() {
                        let (objs, _) = self.blocks.list(None).await?;
                        all_blocks = Some(objs.iter().filter_map(|o| o.spec.cidr_net()).collect());
                    }
                    all_blocks
                        .iter()
                        .flatten()
                        .find(|c| c.contains(&request.ip))
                        .copied()
                }
            };
            match located {
                Some(cidr) => by_block.entry(cidr).or_default().push(*request),
                None => outcomes.push(ReleaseOutcome::NotAllocated { ip: request.ip }),
            }
        }
        for (cidr, requests) in by_block {
            outcomes.extend(self.release_in_block(cidr, &requests).await?);
        }
        Ok(outcomes)
    }

    /// Release every address of a handle and delete the handle. Idempotent: an unknown handle releases
    /// nothing. Returns the released addresses.
    pub async fn release_by_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let name = handle_name(handle_id);
        let mut released = Vec::new();
        for attempt in 0..MAX_ATTEMPTS {
            let Some(handle) = self.handles.get(None, &name).await? else {
                return Ok(released);
            };
            for cidr in handle
                .spec
                .block
                .keys()
                .filter_map(|c| c.parse::<IpNet>().ok())
            {
                released.extend(self.release_handle_in_block(cidr, handle_id).await?);
            }
            // Block first, then the handle: delete it only if nobody added to it meanwhile.
            match self
                .handles
                .delete(None, &name, Revision::of(&handle).as_ref())
                .await
            {
                Ok(()) | Err(StoreError::NotFound) => return Ok(released),
                Err(StoreError::Conflict) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_many("releasing a handle", MAX_ATTEMPTS))
    }

    /// The addresses a handle holds (from its blocks).
    pub async fn ips_by_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(handle) = self.handles.get(None, &handle_name(handle_id)).await? else {
            return Ok(Vec::new());
        };
        let mut ips = Vec::new();
        for cidr in handle
            .spec
            .block
            .keys()
            .filter_map(|c| c.parse::<IpNet>().ok())
        {
            if let Some(obj) = self.blocks.get(None, &block_name(cidr)).await? {
                ips.extend(block_from_spec(&obj.spec)?.ips_of_handle(handle_id));
            }
        }
        Ok(ips)
    }

    /// Claim block `cidr` for `node` in two phases. Returns false when another node owns the block.
    /// A pending affinity of ours left by a crash is re-used; a lost race removes ours.
    pub async fn claim_affinity(&self, node: &str, cidr: IpNet) -> Result<bool, IpamError> {
        let name = affinity_name(node, cidr);
        // Phase 1: pending affinity (or ours from an earlier, interrupted claim).
        let pending = BlockAffinity::new(
            &name,
            BlockAffinitySpec {
                state: AffinityState::Pending,
                node: node.to_owned(),
                cidr: cidr.to_string(),
                deleted: false,
                type_: AffinityType::Host,
            },
        );
        let mut affinity = match self.affinities.create(&pending).await {
            Ok(a) => a,
            Err(StoreError::AlreadyExists) => match self.affinities.get(None, &name).await? {
                Some(a) => a,
                None => self.affinities.create(&pending).await?,
            },
            Err(e) => return Err(e.into()),
        };
        // Phase 2: the block; creating it decides a race for the CIDR.
        let host = format!("host:{node}");
        let block = Block::new(cidr, Some(host.clone()))?;
        match self.blocks.create(&new_block_object(&block)).await {
            Ok(stored) => self.cache_block(stored, block),
            Err(StoreError::AlreadyExists) => {
                let existing = self.blocks.get(None, &block_name(cidr)).await?;
                if existing.as_ref().and_then(|b| b.spec.affinity.as_deref()) != Some(host.as_str())
                {
                    match self
                        .affinities
                        .delete(None, &name, Revision::of(&affinity).as_ref())
                        .await
                    {
                        Ok(()) | Err(StoreError::NotFound | StoreError::Conflict) => {}
                        Err(e) => return Err(e.into()),
                    }
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
        // Phase 3: confirm.
        for attempt in 0..MAX_ATTEMPTS {
            if affinity.spec.state == AffinityState::Confirmed {
                self.stats.claims.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            let mut confirmed = affinity.clone();
            confirmed.spec.state = AffinityState::Confirmed;
            match self.affinities.update(&confirmed).await {
                Ok(a) => affinity = a,
                Err(StoreError::Conflict) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    backoff(attempt).await;
                    affinity = self
                        .affinities
                        .get(None, &name)
                        .await?
                        .unwrap_or(pending.clone());
                }
                Err(StoreError::NotFound) => affinity = self.affinities.create(&confirmed).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_many("confirming a block affinity", MAX_ATTEMPTS))
    }

    /// Give up `node`'s affinity to `cidr`. An empty block is deleted; with `require_empty` a block that
    /// still holds addresses is an error, otherwise it stays without affinity (its addresses live on).
    pub async fn release_affinity(
        &self,
        node: &str,
        cidr: IpNet,
        require_empty: bool,
    ) -> Result<(), IpamError> {
        let host = format!("host:{node}");
        for attempt in 0..MAX_ATTEMPTS {
            let Some(obj) = self.blocks.get(None, &block_name(cidr)).await? else {
                break;
            };
            if obj.spec.affinity.as_deref() != Some(host.as_str()) {
                break;
            }
            let block = block_from_spec(&obj.spec)?;
            let written = if block.is_empty() {
                // The CAS on the revision guarantees no address was handed out since we looked.
                self.blocks
                    .delete(None, &block_name(cidr), Revision::of(&obj).as_ref())
                    .await
            } else if require_empty {
                return Err(IpamError::BlockNotEmpty {
                    block: cidr.to_string(),
                    node: node.into(),
                    used: block.used_count(),
                });
            } else {
                let mut unaffine = obj.clone();
                unaffine.spec.affinity = None;
                self.blocks.update(&unaffine).await.map(drop)
            };
            match written {
                Ok(()) | Err(StoreError::NotFound) => break,
                Err(StoreError::Conflict) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.evict_block(cidr);
        match self
            .affinities
            .delete(None, &affinity_name(node, cidr), None)
            .await
        {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let lock = self.node_state(node);
        let mut state = lock.lock().await;
        if let Some(affine) = state.affine.as_mut() {
            affine.remove(&cidr);
        }
        Ok(())
    }

    /// Release `node`'s affine blocks that have been empty for at least `grace` (as seen by earlier calls of
    /// this client; `Duration::ZERO` releases at once). The node keeps its last block of each family.
    pub async fn release_empty_blocks(
        &self,
        node: &str,
        grace: Duration,
    ) -> Result<Vec<IpNet>, IpamError> {
        let lock = self.node_state(node);
        let mut state = lock.lock().await;
        state.affine = None;
        let affine = self.affine_blocks(&mut state, node).await?;
        let mut empty = Vec::new();
        let mut kept_per_family: HashMap<Family, usize> = HashMap::new();
        for cidr in &affine {
            match self.blocks.get(None, &block_name(*cidr)).await? {
                Some(obj) if block_from_spec(&obj.spec).is_ok_and(|b| b.is_empty()) => {
                    empty.push(*cidr)
                }
                _ => *kept_per_family.entry(Family::of(*cidr)).or_default() += 1,
            }
        }
        drop(state);
        let now = Instant::now();
        let mut release = Vec::new();
        {
            let mut since = self.empty_since.lock().unwrap_or_else(|p| p.into_inner());
            since.retain(|c, _| empty.contains(c));
            for cidr in &empty {
                let kept = kept_per_family.entry(Family::of(*cidr)).or_default();
                if *kept == 0 {
                    // The node's last block of this family stays.
                    *kept += 1;
                    continue;
                }
                let first_seen = *since.entry(*cidr).or_insert(now);
                if now.duration_since(first_seen) >= grace {
                    release.push(*cidr);
                }
            }
        }
        let mut released = Vec::new();
        for cidr in release {
            match self.release_affinity(node, cidr, true).await {
                Ok(()) => released.push(cidr),
                // An address was handed out meanwhile: keep the block.
                Err(IpamError::BlockNotEmpty { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    }

    /// The blocks `node` is affine to, from its confirmed (or its own pending, block present) affinities.
    pub async fn node_blocks(&self, node: &str) -> Result<BTreeSet<IpNet>, IpamError> {
        let lock = self.node_state(node);
        let mut state = lock.lock().await;
        state.affine = None;
        self.affine_blocks(&mut state, node).await
    }

    // --- internals ---

    fn node_state(&self, node: &str) -> Arc<tokio::sync::Mutex<NodeState>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.entry(node.to_owned()).or_default().clone()
    }

    async fn affine_blocks(
        &self,
        state: &mut NodeState,
        node: &str,
    ) -> Result<BTreeSet<IpNet>, IpamError> {
        if let Some(affine) = &state.affine {
            return Ok(affine.clone());
        }
        let (affinities, _) = self.affinities.list(None).await?;
        let mut affine = BTreeSet::new();
        for affinity in affinities.iter().filter(|a| a.spec.node == node) {
            let Ok(cidr) = affinity.spec.cidr.parse::<IpNet>() else {
                continue;
            };
            match affinity.spec.state {
                AffinityState::Confirmed => {
                    affine.insert(cidr);
                }
                // A claim interrupted by a crash or an outage: finish it (or drop it if the block was lost).
                AffinityState::Pending => {
                    if self.claim_affinity(node, cidr).await? {
                        affine.insert(cidr);
                    }
                }
                AffinityState::PendingDeletion => {}
            }
        }
        state.affine = Some(affine.clone());
        Ok(affine)
    }

    fn cache_block(&self, obj: IPAMBlock, block: Block) {
        self.block_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(block.cidr, Arc::new(CachedBlock { obj, block }));
    }

    fn evict_block(&self, cidr: IpNet) {
        self.block_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&cidr);
    }

    /// The last seen version of a block, or a fresh read.
    async fn read_block(&self, cidr: IpNet) -> Result<Option<Arc<CachedBlock>>, IpamError> {
        let cached = self
            .block_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cidr)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(obj) = self.blocks.get(None, &block_name(cidr)).await? else {
            return Ok(None);
        };
        let block = block_from_spec(&obj.spec)?;
        let cached = Arc::new(CachedBlock { obj, block });
        self.block_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cidr, cached.clone());
        Ok(Some(cached))
    }

    /// Take up to `num` addresses from one block. `affine_to`: only while the block is still that node's.
    /// `None` when the block is gone or no longer affine; `Some(vec![])` when it is full.
    async fn assign_in_block(
        &self,
        cidr: IpNet,
        num: usize,
        attr: &AllocationAttribute,
        affine_to: Option<&str>,
    ) -> Result<Option<Vec<Assigned>>, IpamError> {
        let handle_id = attr.handle_id.clone().unwrap_or_default();
        for attempt in 0..MAX_ATTEMPTS {
            let cached = match self.read_block(cidr).await {
                Ok(Some(cached)) => cached,
                Ok(None) => return Ok(None),
                Err(IpamError::Block(e)) => {
                    tracing::warn!(block = %cidr, error = %e, "skipping an invalid block (see `reefctl ipam check`)");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let (obj, block) = (&cached.obj, &cached.block);
            if obj.spec.deleted || affine_to.is_some_and(|n| block.affine_node() != Some(n)) {
                return Ok(None);
            }
            let (next, assigned) = block.assign(num, attr);
            if assigned.is_empty() {
                return Ok(Some(assigned));
            }
            if self
                .write_assignment(obj, next, &handle_id, assigned.len())
                .await?
            {
                return Ok(Some(assigned));
            }
            backoff(attempt).await;
        }
        Err(too_many("assigning from a block", MAX_ATTEMPTS))
    }

    /// Handle first, then the block (CAS). `false` on a block conflict: the handle increment is undone and
    /// the caller recomputes from a fresh read.
    async fn write_assignment(
        &self,
        obj: &IPAMBlock,
        next: Block,
        handle_id: &str,
        count: usize,
    ) -> Result<bool, IpamError> {
        let cidr = next.cidr;
        self.change_handle(handle_id, cidr, count as i64).await?;
        match self.blocks.update(&store_block(obj, &next)).await {
            Ok(stored) => {
                self.cache_block(stored, next);
                Ok(true)
            }
            Err(StoreError::Conflict | StoreError::NotFound) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                self.evict_block(cidr);
                self.change_handle(handle_id, cidr, -(count as i64)).await?;
                Ok(false)
            }
            Err(e) => {
                self.evict_block(cidr);
                Err(e.into())
            }
        }
    }

    /// Add `delta` addresses of block `cidr` to a handle; a handle left with none is deleted.
    async fn change_handle(
        &self,
        handle_id: &str,
        cidr: IpNet,
        delta: i64,
    ) -> Result<(), IpamError> {
        let name = handle_name(handle_id);
        let key = cidr.to_string();
        for attempt in 0..MAX_ATTEMPTS {
            let current = if delta > 0 {
                // Most handles are new (one per pod): try to create first, read only when it exists.
                let fresh = IPAMHandle::new(
                    &name,
                    IPAMHandleSpec {
                        handle_id: handle_id.to_owned(),
                        block: BTreeMap::from([(key.clone(), delta as u32)]),
                        deleted: false,
                    },
                );
                match self.handles.create(&fresh).await {
                    Ok(_) => return Ok(()),
                    Err(StoreError::AlreadyExists) => self.handles.get(None, &name).await?,
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.handles.get(None, &name).await?
            };
            let Some(mut handle) = current else {
                if delta > 0 {
                    continue;
                }
                return Ok(());
            };
            let count = handle.spec.block.get(&key).copied().unwrap_or(0);
            let updated = i64::from(count).saturating_add(delta).max(0);
            if updated == 0 {
                handle.spec.block.remove(&key);
            } else {
                handle
                    .spec
                    .block
                    .insert(key.clone(), u32::try_from(updated).unwrap_or(u32::MAX));
            }
            let written = if handle.spec.block.is_empty() {
                self.handles
                    .delete(None, &name, Revision::of(&handle).as_ref())
                    .await
            } else {
                self.handles.update(&handle).await.map(drop)
            };
            match written {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict | StoreError::NotFound) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    backoff(attempt).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(too_many("updating a handle", MAX_ATTEMPTS))
    }

    /// Release addresses of one block: block first (CAS), then the handles of what was freed.
    async fn release_in_block(
        &self,
        cidr: IpNet,
        requests: &[ReleaseRequest],
    ) -> Result<Vec<ReleaseOutcome>, IpamError> {
        let released = self
            .update_block(cidr, "releasing addresses", |block| {
                let (next, outcomes) = block.release(requests)?;
                if outcomes
                    .iter()
                    .any(|o| matches!(o, ReleaseOutcome::Released { .. }))
                {
                    Ok(BlockStep::Write(next, outcomes))
                } else {
                    Ok(BlockStep::Done(outcomes))
                }
            })
            .await?;
        let Some(outcomes) = released else {
            return Ok(requests
                .iter()
                .map(|r| ReleaseOutcome::NotAllocated { ip: r.ip })
                .collect());
        };
        // Only `Released` outcomes count, and those exist only when the block was written.
        let mut per_handle: BTreeMap<String, i64> = BTreeMap::new();
        for outcome in &outcomes {
            if let ReleaseOutcome::Released {
                handle_id: Some(h), ..
            } = outcome
            {
                *per_handle.entry(h.clone()).or_default() += 1;
            }
        }
        for (handle, count) in per_handle {
            self.change_handle(&handle, cidr, -count).await?;
        }
        Ok(outcomes)
    }

    async fn release_handle_in_block(
        &self,
        cidr: IpNet,
        handle_id: &str,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let released = self
            .update_block(cidr, "releasing a handle's addresses", |block| {
                let (next, ips) = block.release_by_handle(handle_id);
                Ok(if ips.is_empty() {
                    BlockStep::Done(ips)
                } else {
                    BlockStep::Write(next, ips)
                })
            })
            .await?;
        Ok(released.unwrap_or_default())
    }

    /// Compare-and-swap one block: `step` computes its next state from the current one, and runs again on a
    /// fresh read after a conflicting write. `None` when the block does not exist.
    async fn update_block<T>(
        &self,
        cidr: IpNet,
        operation: &str,
        mut step: impl FnMut(&Block) -> Result<BlockStep<T>, IpamError>,
    ) -> Result<Option<T>, IpamError> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some(cached) = self.read_block(cidr).await? else {
                return Ok(None);
            };
            let (next, value) = match step(&cached.block)? {
                BlockStep::Done(value) => return Ok(Some(value)),
                BlockStep::Write(next, value) => (next, value),
            };
            match self.blocks.update(&store_block(&cached.obj, &next)).await {
                Ok(stored) => {
                    self.cache_block(stored, next);
                    return Ok(Some(value));
                }
                Err(StoreError::Conflict | StoreError::NotFound) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.evict_block(cidr);
                    backoff(attempt).await;
                }
                Err(e) => {
                    self.evict_block(cidr);
                    return Err(e.into());
                }
            }
        }
        Err(too_many(operation, MAX_ATTEMPTS))
    }

    /// Claim the first free block of the candidate pools in the node's walk order.
    async fn claim_next_block(
        &self,
        node: &str,
        pools: &[PoolLayout],
        known: &BTreeSet<IpNet>,
    ) -> Result<Option<IpNet>, IpamError> {
        // Affinities, not blocks, tell which blocks are taken: they are small, while a list of full blocks
        // is megabytes. A block without affinity (rare: released by its node while still in use) is found
        // when creating it fails, which `claim_affinity` handles.
        let (affinities, _) = self.affinities.list(None).await?;
        let mut taken = BTreeSet::new();
        for affinity in &affinities {
            let Ok(cidr) = affinity.spec.cidr.parse::<IpNet>() else {
                continue;
            };
            // A block of this node it lost track of (an interrupted claim) comes first.
            if affinity.spec.node == node
                && affinity.spec.state != AffinityState::PendingDeletion
                && !known.contains(&cidr)
                && pools.iter().any(|p| p.owns_block(cidr))
                && self.claim_affinity(node, cidr).await?
            {
                return Ok(Some(cidr));
            }
            taken.insert(cidr);
        }
        for pool in pools {
            for cidr in pool.blocks_for_node(node) {
                if taken.contains(&cidr) {
                    continue;
                }
                if self.claim_affinity(node, cidr).await? {
                    return Ok(Some(cidr));
                }
            }
        }
        Ok(None)
    }
}

/// The layout of a pool spec.
pub fn pool_layout(spec: &IPPoolSpec) -> Result<PoolLayout, IpamError> {
    let cidr = spec.cidr_net().ok_or_else(|| {
        IpamError::Exhausted(format!(
            "IP pool cidr {:?} does not parse: fix the IPPool",
            spec.cidr
        ))
    })?;
    let size = spec
        .effective_block_size()
        .unwrap_or_else(|| PoolLayout::default_block_size(cidr));
    Ok(PoolLayout::new(cidr, size)?)
}

/// The pools `args` may allocate from in `family`, or an error that says why there are none.
fn candidate_pools(
    pools: &[(IPPool, PoolLayout)],
    args: &AutoAssignArgs,
    family: Family,
) -> Result<Vec<PoolLayout>, IpamError> {
    let use_ = match args.use_ {
        Use::Workload => AllowedUse::Workload,
        Use::Tunnel => AllowedUse::Tunnel,
    };
    let no_pool = |reason: String| IpamError::NoPool {
        family: FamilyName(family),
        node: args.node.clone(),
        reason,
    };
    let of_family: Vec<&(IPPool, PoolLayout)> =
        pools.iter().filter(|(_, l)| l.family() == family).collect();
    if of_family.is_empty() {
        return Err(no_pool(format!(
            "no {} IPPool exists: create one",
            FamilyName(family)
        )));
    }
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for (pool, layout) in of_family {
        if !args.pools.is_empty() && !args.pools.contains(&layout.cidr) {
            continue;
        }
        if pool.spec.disabled {
            skipped.push(format!("{} is disabled", layout.cidr));
            continue;
        }
        if !pool.spec.allows(use_) {
            skipped.push(format!(
                "{} does not allow {use_:?} (allowedUses)",
                layout.cidr
            ));
            continue;
        }
        let selector =
            Selector::parse(&pool.spec.node_selector).map_err(|e| IpamError::Selector {
                pool: layout.cidr.to_string(),
                selector: pool.spec.node_selector.clone(),
                reason: e.to_string(),
            })?;
        if !selector.matches(&args.node_labels) {
            skipped.push(format!(
                "{} nodeSelector {:?} does not select it",
                layout.cidr, pool.spec.node_selector
            ));
            continue;
        }
        chosen.push(*layout);
    }
    if chosen.is_empty() {
        let requested = if args.pools.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = args.pools.iter().map(|p| p.to_string()).collect();
            format!("requested pools {}; ", list.join(", "))
        };
        let why = if skipped.is_empty() {
            "none of the requested pools exists".to_owned()
        } else {
            skipped.join("; ")
        };
        return Err(no_pool(format!(
            "{requested}{why}: check the IPPools' nodeSelector, disabled and allowedUses"
        )));
    }
    Ok(chosen)
}

/// What one compare-and-swap step on a block decided.
enum BlockStep<T> {
    /// Nothing to write: the operation is done with this result.
    Done(T),
    /// Write this next state of the block; once stored, the operation is done with this result.
    Write(Block, T),
}

fn too_many(operation: &str, attempts: u32) -> IpamError {
    IpamError::TooManyConflicts {
        operation: operation.to_owned(),
        attempts,
    }
}

/// Sleep a random time below an exponentially growing bound, so retrying writers spread out.
async fn backoff(attempt: u32) {
    let bound = Duration::from_micros(500)
        .saturating_mul(1u32 << attempt.min(7))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = u64::from(nanos ^ std::process::id().rotate_left(16))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> 32;
    let jitter = Duration::from_nanos(mixed % (bound.as_nanos() as u64).max(1));
    tokio::time::sleep(jitter).await;
}
