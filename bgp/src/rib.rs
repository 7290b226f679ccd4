//! Adj-RIB-In: the routes one peer sent us, as received (RFC 4271 §3.2).
//!
//! Built for full tables: a route is a 16-octet (IPv4) or 28-octet (IPv6) hash-table entry — the prefix,
//! its ADD-PATH path id and a `u32` handle to an interned attribute set. Every distinct attribute set
//! (the raw path-attribute octets plus the MP_REACH next hop) is stored once, decoded once, and
//! reference counted by its routes, so 1M prefixes sharing 1000 attribute sets cost ~1000 decodes and
//! ~17 MiB of table, not 1M copies of the attributes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::wire::{
    AfiSafi, AfiSafiSet, CodecContext, ErrorAction, NextHop, Nlri, PathAttributes, Update,
};

/// FxHash-style multiplicative hasher for route keys: keys are small integers and a full table is
/// hashed a million times per load, where SipHash would cost several times more. Peers are configured,
/// not anonymous, so hash-flooding resistance is traded for speed here (attribute sets use SipHash).
#[derive(Default, Clone, Copy)]
pub struct RouteKeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl RouteKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for RouteKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits (hashbrown's bucket index) depending only on the low bits of
        // the last word; prefixes differ in their middle bits. MurmurHash3's fmix64 spreads them.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<RouteKeyHasher>>;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct KeyV4 {
    addr: u32,
    path_id: u32,
    len: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct KeyV6 {
    addr: [u8; 16],
    path_id: u32,
    len: u8,
}

/// Handle of an interned attribute set.
type AttrId = u32;

/// One distinct set of path attributes as received, with the next hop the routes use. Only the octets
/// are kept (a decoded `PathAttributes` is several times larger); [`AdjRibIn::get`] and
/// [`AdjRibIn::routes`] decode them on demand.
#[derive(Debug, PartialEq, Eq)]
pub struct AttributeSet {
    /// The path attribute octets without MP_REACH/MP_UNREACH (an owned copy: a slice of the receive
    /// buffer would pin the whole buffer).
    pub raw: Bytes,
    /// NEXT_HOP for IPv4 NLRI, the MP_REACH next hop for MP NLRI.
    pub next_hop: Option<NextHop>,
}

impl AttributeSet {
    /// Decodes the stored octets under the session's context. IPv4 sets are decoded as carrying
    /// NLRI (so NEXT_HOP is read as it was), MP sets without. Octets that were accepted once decode
    /// again; should they not, the result is empty rather than an error.
    pub fn decode(&self, ctx: &CodecContext) -> PathAttributes {
        let ipv4_nlri = matches!(self.next_hop, Some(NextHop::V4(_)) | None);
        let Ok(mut attributes) = PathAttributes::decode_field(&self.raw, ctx, ipv4_nlri) else {
            return PathAttributes::default();
        };
        if !ctx.four_octet_as {
            // RFC 6793 §4.2.3: a 2-octet speaker's path is AS_PATH merged with AS4_PATH.
            attributes.merge_as4();
        }
        attributes
    }
}

#[derive(Default, Debug)]
struct AttrTable {
    sets: Vec<Option<(Arc<AttributeSet>, u32)>>,
    free: Vec<AttrId>,
    index: HashMap<AttrKey, AttrId>,
}

/// The interning key: equal raw attributes with equal next hops share one set.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct AttrKey {
    raw: Bytes,
    next_hop: Option<NextHop>,
}

impl AttrTable {
    /// The id of this attribute set, interning it on first sight. The reference is not counted yet.
    fn intern(&mut self, raw: &Bytes, next_hop: Option<NextHop>) -> AttrId {
        let probe = AttrKey {
            raw: raw.clone(),
            next_hop,
        };
        if let Some(&id) = self.index.get(&probe) {
            return id;
        }
        let owned = Bytes::copy_from_slice(raw);
        let set = Arc::new(AttributeSet {
            raw: owned.clone(),
            next_hop,
        });
        let id = match self.free.pop() {
            Some(id) => {
                self.sets[id as usize] = Some((set, 0));
                id
            }
            None => {
                self.sets.push(Some((set, 0)));
                // More than 4G distinct attribute sets cannot exist in memory anyway.
                (self.sets.len() - 1) as AttrId
            }
        };
        self.index.insert(
            AttrKey {
                raw: owned,
                next_hop,
            },
            id,
        );
        id
    }

    fn acquire(&mut self, id: AttrId) {
        if let Some(Some((_, refs))) = self.sets.get_mut(id as usize) {
            *refs += 1;
        }
    }

    fn release(&mut self, id: AttrId) {
        let Some(slot) = self.sets.get_mut(id as usize) else {
            return;
        };
        let Some((set, refs)) = slot else { return };
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            let key = AttrKey {
                raw: set.raw.clone(),
                next_hop: set.next_hop,
            };
            self.index.remove(&key);
            *slot = None;
            self.free.push(id);
        }
    }

    /// Drops sets interned by an UPDATE whose routes all went elsewhere (refcount still zero).
    fn collect_unused(&mut self, id: AttrId) {
        if let Some(Some((_, 0))) = self.sets.get(id as usize) {
            self.acquire(id);
            self.release(id);
        }
    }

    fn get(&self, id: AttrId) -> Option<&Arc<AttributeSet>> {
        self.sets.get(id as usize)?.as_ref().map(|(set, _)| set)
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// A route as stored: prefix, path id and its shared attributes.
#[derive(Clone, Debug)]
pub struct Route {
    pub prefix: IpNet,
    pub path_id: Option<u32>,
    pub attributes: Arc<AttributeSet>,
    /// `attributes` decoded (shared by the routes of one listing).
    pub attrs: Arc<PathAttributes>,
}

impl Route {
    /// The next hop the route was received with.
    pub fn next_hop(&self) -> Option<IpAddr> {
        match self.attributes.next_hop {
            Some(NextHop::V4(v4)) => Some(v4.into()),
            Some(NextHop::V6 { global, .. }) => Some(global.into()),
            None => None,
        }
    }
}

/// Routes listed as ignored per peer: a peer that sends many bad routes cannot grow the list further
/// (they are still counted in [`AdjRibIn::ignored_total`]).
pub const IGNORED_LIST_LIMIT: usize = 512;

/// Why a received route is not used although the UPDATE was accepted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum IgnoreReason {
    /// RFC 7606 treat-as-withdraw: the UPDATE carried a malformed attribute (the errors, as text).
    Malformed(String),
    /// RFC 4271 §6.3: the next hop is not a valid host address (0.0.0.0, multicast, class E, or the
    /// IPv6 unspecified address).
    NextHopNotHost(IpAddr),
    /// A loopback next hop from a peer that is not on this host.
    NextHopLoopback(IpAddr),
    /// RFC 4271 §6.3: "It MUST NOT be the IP address of the receiving speaker."
    NextHopOwnAddress(IpAddr),
    /// RFC 4271 §6.3: on single-hop eBGP the next hop is neither the sender's address nor on a subnet
    /// we share with it.
    NextHopNotOnSharedSubnet(IpAddr),
    /// RFC 4760 §7: MP_REACH_NLRI of a family that was not negotiated.
    FamilyNotNegotiated(AfiSafi),
    /// RFC 4271 §6.3: from an external peer, the leftmost AS of the AS_PATH is not the peer's AS
    /// (`None`: the path is empty or starts with an AS_SET).
    FirstAsNotPeer(Option<u32>),
    /// RFC 5065 §5.3: confederation segments in an AS_PATH from an external peer (a malformed AS_PATH,
    /// treat-as-withdraw by RFC 7606 §7.2).
    ConfedSegmentsFromExternalPeer,
}

impl std::fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IgnoreReason::Malformed(errors) => write!(f, "malformed UPDATE: {errors}"),
            IgnoreReason::NextHopNotHost(nh) => {
                write!(f, "next hop {nh} is not a valid host address")
            }
            IgnoreReason::NextHopLoopback(nh) => {
                write!(f, "next hop {nh} is a loopback address of a remote peer")
            }
            IgnoreReason::NextHopOwnAddress(nh) => write!(f, "next hop {nh} is our own address"),
            IgnoreReason::NextHopNotOnSharedSubnet(nh) => write!(
                f,
                "next hop {nh} is neither the peer's address nor on a subnet shared with it \
                 (single-hop eBGP)"
            ),
            IgnoreReason::FamilyNotNegotiated(family) => {
                write!(f, "address family {family} was not negotiated")
            }
            IgnoreReason::FirstAsNotPeer(Some(asn)) => {
                write!(
                    f,
                    "AS_PATH starts with AS {asn}, not the external peer's AS"
                )
            }
            IgnoreReason::FirstAsNotPeer(None) => {
                f.write_str("AS_PATH does not start with the external peer's AS")
            }
            IgnoreReason::ConfedSegmentsFromExternalPeer => {
                f.write_str("AS_PATH from an external peer holds confederation segments")
            }
        }
    }
}

/// A received route that is not in the table, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IgnoredRoute {
    pub prefix: IpNet,
    pub path_id: Option<u32>,
    pub next_hop: Option<IpAddr>,
    pub reason: IgnoreReason,
}

/// What the session tells the Adj-RIB-In to check received routes against (RFC 4271 §6.3 semantic
/// NEXT_HOP checks, RFC 4760 §7 families). Without one (`AdjRibIn::new`), routes are not checked.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ImportCheck {
    /// The peer's address on the session.
    pub peer: Option<IpAddr>,
    /// Our addresses: the session's local address and the next hops we send.
    pub own: Vec<IpAddr>,
    /// Single-hop eBGP: the subnets of our interface that holds the session's local address (an IPv4
    /// next hop must be the peer or in one of them). `None`: not single-hop eBGP, no subnet check.
    pub shared_subnets: Option<Vec<IpNet>>,
    /// Negotiated families; MP_REACH_NLRI of others is ignored.
    pub families: AfiSafiSet,
    /// An external peer's AS: the AS_PATH must start with it.
    pub ebgp_peer_as: Option<u32>,
}

impl ImportCheck {
    /// Why a route with this next hop is not usable, if it is not.
    pub fn next_hop_problem(&self, next_hop: IpAddr) -> Option<IgnoreReason> {
        let not_host = match next_hop {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.octets()[0] >= 240,
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        };
        // A peer on this host (its address is a loopback one) may use loopback next hops.
        let remote = self.peer.is_some_and(|peer| !peer.is_loopback());
        if not_host {
            Some(IgnoreReason::NextHopNotHost(next_hop))
        } else if next_hop.is_loopback() && remote {
            Some(IgnoreReason::NextHopLoopback(next_hop))
        } else if self.own.contains(&next_hop) {
            Some(IgnoreReason::NextHopOwnAddress(next_hop))
        } else if let (IpAddr::V4(_), Some(subnets)) = (next_hop, &self.shared_subnets)
            && Some(next_hop) != self.peer
            && !subnets.iter().any(|subnet| subnet.contains(&next_hop))
        {
            // IPv6 next hops are not checked against subnets: FRR sends a link-local address as the
            // global one on unnumbered sessions.
            Some(IgnoreReason::NextHopNotOnSharedSubnet(next_hop))
        } else {
            None
        }
    }
}

/// What one UPDATE did to the table.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ApplyStats {
    pub announced: usize,
    pub withdrawn: usize,
    /// RFC 7606 treat-as-withdraw applied to the UPDATE's NLRI.
    pub treated_as_withdraw: bool,
    /// The UPDATE was an End-of-RIB marker of this family.
    pub end_of_rib: Option<AfiSafi>,
    /// Announcements dropped because their AS_PATH holds our AS.
    pub looped: usize,
    /// Routes ignored by error handling or the import check (see [`IgnoredRoute`]).
    pub ignored: usize,
    /// Ignored routes listed for the first time with this reason (the ones to log: a peer repeating
    /// a bad route is logged once per prefix and reason).
    pub newly_ignored: Vec<IgnoredRoute>,
}

/// One peer's Adj-RIB-In.
#[derive(Default, Debug)]
pub struct AdjRibIn {
    v4: FastMap<KeyV4, AttrId>,
    v6: FastMap<KeyV6, AttrId>,
    attrs: AttrTable,
    end_of_rib: AfiSafiSet,
    /// The session's codec context, to decode stored attribute sets.
    context: CodecContext,
    /// Our AS on this session: routes whose AS_PATH holds it are loops and are not kept.
    local_as: Option<u32>,
    /// How many times `local_as` may appear before a route is a loop (Calico's
    /// `numAllowedLocalASNumbers`).
    allowed_own_as: u8,
    /// The session's import check (`None`: routes are not checked).
    check: Option<ImportCheck>,
    /// Routes ignored by error handling or the import check, until the peer withdraws or replaces
    /// them; at most [`IGNORED_LIST_LIMIT`].
    ignored: std::collections::BTreeMap<(IpNet, u32), IgnoredRoute>,
    /// Routes ignored since the table was made (a metric: not reset with the session).
    ignored_total: u64,
}

fn key_v4(net: Ipv4Net, path_id: Option<u32>) -> KeyV4 {
    KeyV4 {
        addr: u32::from(net.network()),
        path_id: path_id.unwrap_or(0),
        len: net.prefix_len(),
    }
}

fn key_v6(net: Ipv6Net, path_id: Option<u32>) -> KeyV6 {
    KeyV6 {
        addr: net.network().octets(),
        path_id: path_id.unwrap_or(0),
        len: net.prefix_len(),
    }
}

impl AdjRibIn {
    pub fn new() -> AdjRibIn {
        AdjRibIn::default()
    }

    /// A table that drops looped routes: RFC 4271 §9.1.2 excludes a route whose AS_PATH contains our
    /// own AS, and like BIRD and FRR we drop it on input (a peer that sends our routes back is common
    /// on eBGP, and the route must never be used).
    pub fn with_local_as(local_as: u32) -> AdjRibIn {
        AdjRibIn {
            local_as: Some(local_as),
            ..AdjRibIn::default()
        }
    }

    /// Number of routes (prefix + path id).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct attribute sets in use.
    pub fn attribute_sets(&self) -> usize {
        self.attrs.len()
    }

    /// Families whose End-of-RIB the peer sent.
    pub fn end_of_rib(&self) -> AfiSafiSet {
        self.end_of_rib
    }

    /// Accept routes holding our AS up to `times` times.
    pub fn set_allowed_own_as(&mut self, times: u8) {
        self.allowed_own_as = times;
    }

    /// Removes every route and the ignored list (the session went down); the loop check and the
    /// ignored count stay. The next session sets its own import check.
    pub fn clear(&mut self) {
        *self = AdjRibIn {
            local_as: self.local_as,
            allowed_own_as: self.allowed_own_as,
            ignored_total: self.ignored_total,
            ..AdjRibIn::default()
        };
    }

    /// Sets the session's import check (RFC 4271 §6.3 NEXT_HOP semantics, negotiated families).
    pub fn set_import_check(&mut self, check: ImportCheck) {
        self.check = Some(check);
    }

    /// Received routes that are not in the table and why, sorted by prefix.
    pub fn ignored(&self) -> impl Iterator<Item = &IgnoredRoute> {
        self.ignored.values()
    }

    /// Routes ignored since the table was made.
    pub fn ignored_total(&self) -> u64 {
        self.ignored_total
    }

    /// Counts an ignored route and lists it if there is room (in `stats.newly_ignored` when new).
    fn ignore(
        &mut self,
        nlri: &Nlri,
        next_hop: Option<IpAddr>,
        reason: IgnoreReason,
        stats: &mut ApplyStats,
    ) {
        self.ignored_total += 1;
        stats.ignored += 1;
        let key = (nlri.prefix, nlri.path_id.unwrap_or(0));
        if self
            .ignored
            .get(&key)
            .is_some_and(|known| known.reason == reason)
        {
            return;
        }
        if self.ignored.len() >= IGNORED_LIST_LIMIT && !self.ignored.contains_key(&key) {
            return;
        }
        let route = IgnoredRoute {
            prefix: nlri.prefix,
            path_id: nlri.path_id,
            next_hop,
            reason,
        };
        self.ignored.insert(key, route.clone());
        stats.newly_ignored.push(route);
    }

    /// Why the routes of this announcement (the NLRI field's with `NEXT_HOP`, or MP_REACH_NLRI's) are
    /// not usable on this session, if they are not.
    fn import_problem(
        &self,
        update: &Update,
        family: AfiSafi,
        next_hop: Option<IpAddr>,
    ) -> Option<IgnoreReason> {
        let check = self.check.as_ref()?;
        if family != AfiSafi::IPV4_UNICAST && !check.families.contains(family) {
            return Some(IgnoreReason::FamilyNotNegotiated(family));
        }
        // RFC 4271 §6.3: "If the UPDATE message is received from an external peer, the local system MAY
        // check whether the leftmost (with respect to the position of octets in the protocol message)
        // AS in the AS_PATH attribute is equal to the autonomous system number of the peer that sent
        // the message. If the check determines this is not the case, the Error Subcode MUST be set to
        // Malformed AS_PATH." RFC 7606 makes that treat-as-withdraw; FRR checks by default.
        if let Some(peer_as) = check.ebgp_peer_as {
            // RFC 5065 §5.3: AS_CONFED_SEQUENCE or AS_CONFED_SET segments from a neighbor outside our
            // confederation make a malformed AS_PATH: treat-as-withdraw (RFC 7606 §7.2), as FRR does.
            let mut segments = update.attributes.as_path.iter().flat_map(|p| &p.segments);
            if segments.any(|segment| segment.kind.is_confed()) {
                return Some(IgnoreReason::ConfedSegmentsFromExternalPeer);
            }
            let first = update
                .attributes
                .as_path
                .as_ref()
                .and_then(|p| p.first_asn());
            if first != Some(peer_as) {
                return Some(IgnoreReason::FirstAsNotPeer(first));
            }
        }
        check.next_hop_problem(next_hop?)
    }

    /// Whether the UPDATE's AS path holds our AS. From a 2-octet speaker our 4-octet AS shows as
    /// AS_TRANS in AS_PATH and in full in AS4_PATH, so both are looked at.
    fn is_loop(&self, update: &Update) -> bool {
        let Some(local_as) = self.local_as else {
            return false;
        };
        let attributes = &update.attributes;
        let allowed = usize::from(self.allowed_own_as);
        [&attributes.as_path, &attributes.as4_path]
            .into_iter()
            .flatten()
            .any(|path| {
                let times = path
                    .segments
                    .iter()
                    .flat_map(|segment| &segment.asns)
                    .filter(|asn| **asn == local_as)
                    .count();
                times > allowed
            })
    }

    /// The codec context stored sets decode under.
    pub fn context(&self) -> CodecContext {
        self.context
    }

    /// Sets the codec context of the session the routes come from (stored sets decode under it).
    pub fn set_context(&mut self, context: CodecContext) {
        self.context = context;
    }

    /// Applies one UPDATE: withdrawals, then announcements (an announcement of a known prefix replaces
    /// it: implicit withdraw, RFC 4271 §3.1).
    pub fn apply(&mut self, update: &Update) -> ApplyStats {
        self.apply_inner(update, |_, _| {})
    }

    /// [`AdjRibIn::apply`] that also calls `each` for every change of the table, once the UPDATE is
    /// applied: the prefix and its new attribute set, or `None` when withdrawn (withdrawals of unknown
    /// prefixes are not changes). The sets are borrowed: a caller that keeps one past the next UPDATE
    /// clones its `Arc` (a set nothing refers to any more is freed by the next UPDATE).
    pub fn apply_with(
        &mut self,
        update: &Update,
        mut each: impl FnMut(IpNet, Option<&Arc<AttributeSet>>),
    ) -> ApplyStats {
        let mut ids: Vec<(IpNet, Option<AttrId>)> = Vec::new();
        let stats = self.apply_inner(update, |prefix, id| ids.push((prefix, id)));
        for (prefix, id) in ids {
            each(prefix, id.and_then(|id| self.attrs.get(id)));
        }
        stats
    }

    fn apply_inner(
        &mut self,
        update: &Update,
        mut record: impl FnMut(IpNet, Option<AttrId>),
    ) -> ApplyStats {
        let mut stats = ApplyStats {
            end_of_rib: update.end_of_rib(),
            ..ApplyStats::default()
        };
        if let Some(family) = stats.end_of_rib {
            self.end_of_rib.insert(family);
            return stats;
        }
        for nlri in update
            .withdrawn
            .iter()
            .chain(update.mp_unreach.iter().flat_map(|mp| mp.withdrawn.iter()))
        {
            if self.remove(nlri) {
                stats.withdrawn += 1;
                record(nlri.prefix, None);
            }
            self.ignored
                .remove(&(nlri.prefix, nlri.path_id.unwrap_or(0)));
        }
        // The codec has already moved the NLRI of a treat-as-withdraw UPDATE to the withdrawals.
        stats.treated_as_withdraw = update.treat_as_withdraw;
        if update.treat_as_withdraw {
            let errors: Vec<String> = update
                .errors
                .iter()
                .filter(|e| e.action == ErrorAction::TreatAsWithdraw)
                .map(|e| e.to_string())
                .collect();
            let reason = IgnoreReason::Malformed(errors.join("; "));
            for nlri in &update.withdrawn_by_error {
                self.ignore(nlri, None, reason.clone(), &mut stats);
            }
        }
        if self.is_loop(update) {
            // A looped announcement still replaces what the peer sent before for these prefixes.
            let mp_nlri = update.mp_reach.iter().flat_map(|mp| mp.nlri.iter());
            for nlri in update.nlri.iter().chain(mp_nlri) {
                if self.remove(nlri) {
                    stats.withdrawn += 1;
                    record(nlri.prefix, None);
                }
                stats.looped += 1;
            }
            return stats;
        }
        if !update.nlri.is_empty() {
            let next_hop = update.attributes.next_hop.map(NextHop::V4);
            self.announce(
                update,
                &update.nlri,
                AfiSafi::IPV4_UNICAST,
                next_hop,
                &mut stats,
                &mut record,
            );
        }
        if let Some(mp) = update.mp_reach.as_ref().filter(|mp| !mp.nlri.is_empty()) {
            self.announce(
                update,
                &mp.nlri,
                mp.afi_safi,
                Some(mp.next_hop),
                &mut stats,
                &mut record,
            );
        }
        stats
    }

    /// Inserts announced routes sharing one attribute set, or — when the import check finds them
    /// unusable — ignores them: RFC 4271 §6.3 "If the NEXT_HOP attribute is semantically incorrect, the
    /// error SHOULD be logged, and the route SHOULD be ignored." The announcement still replaces what
    /// the peer sent before for these prefixes (it is no longer the peer's route).
    fn announce(
        &mut self,
        update: &Update,
        nlri: &[Nlri],
        family: AfiSafi,
        next_hop: Option<NextHop>,
        stats: &mut ApplyStats,
        record: &mut impl FnMut(IpNet, Option<AttrId>),
    ) {
        let address = next_hop.map(|nh| match nh {
            NextHop::V4(v4) => IpAddr::V4(v4),
            NextHop::V6 { global, .. } => IpAddr::V6(global),
        });
        if let Some(reason) = self.import_problem(update, family, address) {
            for route in nlri {
                if self.remove(route) {
                    stats.withdrawn += 1;
                    record(route.prefix, None);
                }
                self.ignore(route, address, reason.clone(), stats);
            }
            return;
        }
        let id = self.attrs.intern(&update.raw_attributes, next_hop);
        for route in nlri {
            self.insert(route, id);
            record(route.prefix, Some(id));
            if !self.ignored.is_empty() {
                self.ignored
                    .remove(&(route.prefix, route.path_id.unwrap_or(0)));
            }
        }
        stats.announced += nlri.len();
        self.attrs.collect_unused(id);
    }

    fn insert(&mut self, nlri: &Nlri, id: AttrId) {
        self.attrs.acquire(id);
        let previous = match nlri.prefix {
            IpNet::V4(net) => self.v4.insert(key_v4(net, nlri.path_id), id),
            IpNet::V6(net) => self.v6.insert(key_v6(net, nlri.path_id), id),
        };
        if let Some(previous) = previous {
            self.attrs.release(previous);
        }
    }

    fn remove(&mut self, nlri: &Nlri) -> bool {
        let removed = match nlri.prefix {
            IpNet::V4(net) => self.v4.remove(&key_v4(net, nlri.path_id)),
            IpNet::V6(net) => self.v6.remove(&key_v6(net, nlri.path_id)),
        };
        match removed {
            Some(id) => {
                self.attrs.release(id);
                true
            }
            None => false,
        }
    }

    /// The route for a prefix (path id 0 / none).
    pub fn get(&self, prefix: IpNet) -> Option<Route> {
        let id = match prefix {
            IpNet::V4(net) => *self.v4.get(&key_v4(net.trunc(), None))?,
            IpNet::V6(net) => *self.v6.get(&key_v6(net.trunc(), None))?,
        };
        let attributes = self.attrs.get(id)?.clone();
        Some(Route {
            prefix: prefix.trunc(),
            path_id: None,
            attrs: Arc::new(attributes.decode(&self.context)),
            attributes,
        })
    }

    /// All routes, sorted by prefix then path id.
    pub fn routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::with_capacity(self.len());
        let path_id = |id: u32| (id != 0).then_some(id);
        // Each set is decoded once per listing.
        let mut decoded: HashMap<AttrId, Arc<PathAttributes>> = HashMap::new();
        let mut decode = |id: AttrId, set: &AttributeSet| {
            decoded
                .entry(id)
                .or_insert_with(|| Arc::new(set.decode(&self.context)))
                .clone()
        };
        for (key, id) in &self.v4 {
            let (Some(attributes), Ok(net)) = (
                self.attrs.get(*id),
                Ipv4Net::new(Ipv4Addr::from(key.addr), key.len),
            ) else {
                continue;
            };
            routes.push(Route {
                prefix: IpNet::V4(net),
                path_id: path_id(key.path_id),
                attrs: decode(*id, attributes),
                attributes: attributes.clone(),
            });
        }
        for (key, id) in &self.v6 {
            let (Some(attributes), Ok(net)) = (
                self.attrs.get(*id),
                Ipv6Net::new(Ipv6Addr::from(key.addr), key.len),
            ) else {
                continue;
            };
            routes.push(Route {
                prefix: IpNet::V6(net),
                path_id: path_id(key.path_id),
                attrs: decode(*id, attributes),
                attributes: attributes.clone(),
            });
        }
        routes.sort_by_key(|route| (route.prefix, route.path_id));
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsPath, Message, MpReach, Origin, decode};
    use std::net::Ipv4Addr;

    fn attrs(med: u32) -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(vec![65001])),
            med: Some(med),
            ..PathAttributes::default()
        }
    }

    fn nlri(prefixes: &[&str]) -> Vec<Nlri> {
        prefixes
            .iter()
            .map(|p| Nlri::new(p.parse().unwrap()))
            .collect()
    }

    fn rib() -> AdjRibIn {
        let mut rib = AdjRibIn::new();
        rib.set_context(CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        });
        rib
    }

    /// An UPDATE as it arrives: encoded and decoded, so `raw_attributes` is the wire form.
    fn received(update: Update) -> Update {
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let bytes = Message::Update(update).to_bytes(&ctx).unwrap();
        match decode(&bytes, &ctx).unwrap() {
            Message::Update(update) => update,
            other => panic!("{other:?}"),
        }
    }

    fn announce(med: u32, prefixes: &[&str]) -> Update {
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let next_hop = NextHop::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mut updates = Update::announce(&attrs(med), next_hop, &nlri(prefixes), &ctx).unwrap();
        received(updates.remove(0))
    }

    #[test]
    fn routes_holding_our_as_are_dropped_and_replace_earlier_ones() {
        // attrs() carries AS_PATH 65001: from our side that is the peer's AS, a normal route.
        let mut rib = AdjRibIn::with_local_as(64512);
        rib.set_context(CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        });
        rib.apply(&announce(1, &["10.0.0.0/24", "10.0.1.0/24"]));
        assert_eq!(rib.len(), 2);

        let mut looped = attrs(1);
        looped.as_path = Some(AsPath::from_sequence(vec![65001, 64512]));
        let next_hop = NextHop::V4(Ipv4Addr::new(192, 0, 2, 1));
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let mut updates = Update::announce(
            &looped,
            next_hop,
            &nlri(&["10.0.0.0/24", "10.0.9.0/24"]),
            &ctx,
        )
        .unwrap();
        let stats = rib.apply(&received(updates.remove(0)));
        assert_eq!(stats.looped, 2);
        assert_eq!(stats.announced, 0);
        assert_eq!(
            stats.withdrawn, 1,
            "the looped path replaced the earlier route"
        );
        assert!(rib.get("10.0.0.0/24".parse().unwrap()).is_none());
        assert!(rib.get("10.0.9.0/24".parse().unwrap()).is_none());
        assert!(rib.get("10.0.1.0/24".parse().unwrap()).is_some());

        rib.clear();
        let stats = rib.apply(&received(
            Update::announce(&looped, next_hop, &nlri(&["10.0.5.0/24"]), &ctx)
                .unwrap()
                .remove(0),
        ));
        assert_eq!(stats.looped, 1, "the loop check survives a session reset");
    }

    #[test]
    fn equal_attributes_are_interned_once() {
        let mut rib = rib();
        rib.apply(&announce(1, &["10.0.0.0/24", "10.0.1.0/24"]));
        rib.apply(&announce(1, &["10.0.2.0/24"]));
        rib.apply(&announce(2, &["10.0.3.0/24"]));
        assert_eq!(rib.len(), 4);
        assert_eq!(rib.attribute_sets(), 2);
        let a = rib.get("10.0.0.0/24".parse().unwrap()).unwrap();
        let b = rib.get("10.0.2.0/24".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a.attributes, &b.attributes));
        // Stored as octets, decoded on demand with the session's 4-octet AS context.
        let mut expected = attrs(1);
        expected.next_hop = Some(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(*a.attrs, expected);
        assert_eq!(a.next_hop(), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    }

    #[test]
    fn implicit_withdraw_replaces_and_frees_unused_sets() {
        let mut rib = rib();
        rib.apply(&announce(1, &["10.0.0.0/24"]));
        rib.apply(&announce(2, &["10.0.0.0/24"]));
        assert_eq!(rib.len(), 1);
        assert_eq!(
            rib.attribute_sets(),
            1,
            "the set of MED 1 has no route left"
        );
        assert_eq!(
            rib.get("10.0.0.0/24".parse().unwrap()).unwrap().attrs.med,
            Some(2)
        );
    }

    #[test]
    fn withdrawals_remove_routes_and_sets() {
        let mut rib = rib();
        rib.apply(&announce(1, &["10.0.0.0/24", "10.0.1.0/24"]));
        let ctx = CodecContext::default();
        let withdraw = received(
            Update::withdraw(&nlri(&["10.0.0.0/24", "10.9.0.0/24"]), &ctx)
                .unwrap()
                .remove(0),
        );
        let stats = rib.apply(&withdraw);
        assert_eq!(stats.withdrawn, 1, "only known prefixes count");
        assert_eq!(rib.len(), 1);
        let withdraw = received(
            Update::withdraw(&nlri(&["10.0.1.0/24"]), &ctx)
                .unwrap()
                .remove(0),
        );
        rib.apply(&withdraw);
        assert!(rib.is_empty());
        assert_eq!(rib.attribute_sets(), 0);
    }

    #[test]
    fn ipv6_routes_key_the_set_by_their_mp_next_hop() {
        let mut rib = rib();
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        for host in [1u16, 2] {
            let next_hop = NextHop::V6 {
                global: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host),
                link_local: None,
            };
            let prefix = format!("2001:db8:{host}::/48");
            let update = Update::announce(&attrs(1), next_hop, &nlri(&[prefix.as_str()]), &ctx)
                .unwrap()
                .remove(0);
            assert!(matches!(update.mp_reach, Some(MpReach { .. })));
            rib.apply(&received(update));
        }
        assert_eq!(rib.len(), 2);
        assert_eq!(
            rib.attribute_sets(),
            2,
            "same attributes, different next hops"
        );
        let route = rib.get("2001:db8:2::/48".parse().unwrap()).unwrap();
        assert_eq!(route.attrs.med, Some(1), "MP sets decode without NEXT_HOP");
        assert_eq!(
            route.attrs.as_path,
            Some(AsPath::from_sequence(vec![65001]))
        );
        assert_eq!(route.next_hop(), Some("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn end_of_rib_is_tracked_per_family_and_clear_empties_everything() {
        let mut rib = rib();
        rib.apply(&announce(1, &["10.0.0.0/24"]));
        let stats = rib.apply(&received(Update::end_of_rib_marker(AfiSafi::IPV4_UNICAST)));
        assert_eq!(stats.end_of_rib, Some(AfiSafi::IPV4_UNICAST));
        assert!(rib.end_of_rib().contains(AfiSafi::IPV4_UNICAST));
        assert!(!rib.end_of_rib().contains(AfiSafi::IPV6_UNICAST));
        rib.clear();
        assert!(rib.is_empty() && rib.attribute_sets() == 0 && rib.end_of_rib().is_empty());
    }

    /// One UPDATE announcing `prefixes` with MED 1 via `next_hop`, as received.
    fn announce_via(next_hop: NextHop, prefixes: &[&str]) -> Update {
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let mut updates = Update::announce(&attrs(1), next_hop, &nlri(prefixes), &ctx).unwrap();
        received(updates.remove(0))
    }

    fn v4(text: &str) -> NextHop {
        NextHop::V4(text.parse().unwrap())
    }

    /// A single-hop eBGP session 198.51.100.1 (us) - 198.51.100.2 (peer) on 198.51.100.0/24.
    fn checked_rib() -> AdjRibIn {
        let mut rib = rib();
        rib.set_import_check(ImportCheck {
            peer: Some("198.51.100.2".parse().unwrap()),
            own: vec![
                "198.51.100.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
            shared_subnets: Some(vec!["198.51.100.0/24".parse().unwrap()]),
            families: [AfiSafi::IPV4_UNICAST].into_iter().collect(),
            ebgp_peer_as: Some(65001),
        });
        rib
    }

    fn reasons(rib: &AdjRibIn) -> Vec<(String, String)> {
        rib.ignored()
            .map(|route| (route.prefix.to_string(), route.reason.to_string()))
            .collect()
    }

    #[test]
    fn next_hop_semantics_rfc4271_6_3() {
        let check = checked_rib().check.unwrap();
        let problem = |nh: &str| check.next_hop_problem(nh.parse().unwrap());
        // The peer itself and a third party on the shared subnet are fine.
        assert_eq!(problem("198.51.100.2"), None);
        assert_eq!(problem("198.51.100.77"), None);
        assert_eq!(
            problem("2001:db8::2"),
            None,
            "IPv6 is not checked against subnets"
        );
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            problem("198.51.100.1"),
            Some(IgnoreReason::NextHopOwnAddress(ip("198.51.100.1")))
        );
        assert_eq!(
            problem("2001:db8::1"),
            Some(IgnoreReason::NextHopOwnAddress(ip("2001:db8::1")))
        );
        assert_eq!(
            problem("203.0.113.9"),
            Some(IgnoreReason::NextHopNotOnSharedSubnet(ip("203.0.113.9")))
        );
        for not_host in [
            "0.0.0.0",
            "224.0.0.5",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "ff02::1",
        ] {
            assert_eq!(
                problem(not_host),
                Some(IgnoreReason::NextHopNotHost(ip(not_host))),
                "{not_host}"
            );
        }
        for loopback in ["127.0.0.1", "::1"] {
            assert_eq!(
                problem(loopback),
                Some(IgnoreReason::NextHopLoopback(ip(loopback)))
            );
        }
        // Multihop eBGP and iBGP: no subnet check. A peer on this host may use loopback next hops.
        let multihop = ImportCheck {
            shared_subnets: None,
            ..check.clone()
        };
        assert_eq!(multihop.next_hop_problem(ip("203.0.113.9")), None);
        let local_peer = ImportCheck {
            peer: Some(ip("127.0.0.2")),
            shared_subnets: None,
            ..check
        };
        assert_eq!(local_peer.next_hop_problem(ip("127.0.0.1")), None);
    }

    #[test]
    fn ignored_routes_replace_the_earlier_route_and_are_listed_until_fixed() {
        let mut rib = checked_rib();
        rib.apply(&announce_via(
            v4("198.51.100.2"),
            &["10.0.0.0/24", "10.0.1.0/24"],
        ));
        assert_eq!(rib.len(), 2);

        // Our own address as next hop: not installed, the earlier route of the prefix is gone.
        let mut changes = Vec::new();
        let stats = rib.apply_with(
            &announce_via(v4("198.51.100.1"), &["10.0.0.0/24"]),
            |p, set| changes.push((p, set.is_some())),
        );
        assert_eq!((stats.announced, stats.withdrawn, stats.ignored), (0, 1, 1));
        assert_eq!(changes, [("10.0.0.0/24".parse().unwrap(), false)]);
        assert!(rib.get("10.0.0.0/24".parse().unwrap()).is_none());
        assert_eq!(
            reasons(&rib),
            [(
                "10.0.0.0/24".to_string(),
                "next hop 198.51.100.1 is our own address".to_string()
            )]
        );
        assert_eq!(stats.newly_ignored.len(), 1);
        // The same again: counted, not listed (or logged) twice.
        let stats = rib.apply(&announce_via(v4("198.51.100.1"), &["10.0.0.0/24"]));
        assert_eq!((stats.ignored, stats.newly_ignored.len()), (1, 0));
        assert_eq!(rib.ignored_total(), 2);
        // Off the shared subnet: a new reason is listed (and logged) again.
        let stats = rib.apply(&announce_via(v4("203.0.113.9"), &["10.0.0.0/24"]));
        assert_eq!(stats.newly_ignored.len(), 1);
        assert!(
            reasons(&rib)[0].1.contains("nor on a subnet shared"),
            "{:?}",
            reasons(&rib)
        );

        // A usable announcement takes the prefix off the list; so does a withdrawal.
        rib.apply(&announce_via(v4("198.51.100.2"), &["10.0.0.0/24"]));
        assert!(rib.get("10.0.0.0/24".parse().unwrap()).is_some());
        assert_eq!(rib.ignored().count(), 0);
        rib.apply(&announce_via(v4("0.0.0.1"), &["10.0.5.0/24"]));
        assert_eq!(rib.ignored().count(), 1);
        let withdraw = received(
            Update::withdraw(&nlri(&["10.0.5.0/24"]), &CodecContext::default())
                .unwrap()
                .remove(0),
        );
        rib.apply(&withdraw);
        assert_eq!(rib.ignored().count(), 0);
        // A session reset empties the list but keeps the count (a metric).
        rib.apply(&announce_via(v4("198.51.100.1"), &["10.0.6.0/24"]));
        rib.clear();
        assert_eq!((rib.ignored().count(), rib.ignored_total()), (0, 5));
    }

    #[test]
    fn mp_reach_of_a_family_not_negotiated_is_ignored() {
        let mut rib = checked_rib();
        let next_hop = NextHop::V6 {
            global: "2001:db8::2".parse().unwrap(),
            link_local: None,
        };
        let stats = rib.apply(&announce_via(next_hop, &["2001:db8:5::/48"]));
        assert_eq!((stats.announced, stats.ignored), (0, 1));
        assert_eq!(
            reasons(&rib),
            [(
                "2001:db8:5::/48".to_string(),
                "address family IPv6 unicast was not negotiated".to_string()
            )]
        );
    }

    #[test]
    fn treat_as_withdraw_is_listed_with_the_error() {
        let mut rib = checked_rib();
        rib.apply(&announce_via(v4("198.51.100.2"), &["10.0.0.0/24"]));
        // ORIGIN, AS_PATH [65001 0], NEXT_HOP 198.51.100.2, NLRI 10.0.0.0/24 (RFC 7607).
        let attrs = [
            0x40, 1, 1, 0, 0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0, 0, 0x40, 3, 4, 198, 51,
            100, 2,
        ];
        let mut message = vec![0xff; 16];
        message.extend_from_slice(
            &u16::try_from(19 + 4 + attrs.len() + 4)
                .unwrap()
                .to_be_bytes(),
        );
        message.extend_from_slice(&[2, 0, 0, 0, attrs.len() as u8]);
        message.extend_from_slice(&attrs);
        message.extend_from_slice(&[24, 10, 0, 0]);
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let Ok(Message::Update(update)) = decode(&message, &ctx) else {
            panic!("not an UPDATE");
        };
        let stats = rib.apply(&update);
        assert!(stats.treated_as_withdraw);
        assert_eq!((stats.withdrawn, stats.ignored), (1, 1));
        assert!(rib.is_empty());
        let listed = reasons(&rib);
        assert_eq!(listed[0].0, "10.0.0.0/24");
        assert!(
            listed[0].1.starts_with(
                "malformed UPDATE: malformed AS_PATH (attribute type 2; treat-as-withdraw)"
            ),
            "{listed:?}"
        );
    }

    #[test]
    fn external_paths_must_start_with_the_peer_as() {
        let mut rib = checked_rib();
        let mut path = attrs(1);
        path.as_path = Some(AsPath::from_sequence(vec![65009, 65001]));
        let ctx = CodecContext {
            four_octet_as: true,
            ..CodecContext::default()
        };
        let update = |attributes: &PathAttributes| {
            received(
                Update::announce(
                    attributes,
                    v4("198.51.100.2"),
                    &nlri(&["10.0.0.0/24"]),
                    &ctx,
                )
                .unwrap()
                .remove(0),
            )
        };
        let stats = rib.apply(&update(&path));
        assert_eq!((stats.announced, stats.ignored), (0, 1));
        assert_eq!(
            reasons(&rib)[0].1,
            "AS_PATH starts with AS 65009, not the external peer's AS"
        );
        path.as_path = Some(AsPath::default());
        rib.apply(&update(&path));
        assert_eq!(
            reasons(&rib)[0].1,
            "AS_PATH does not start with the external peer's AS"
        );
        // Confederation segments behind the peer's AS (RFC 5065 §5.3).
        path.as_path = Some(AsPath {
            segments: vec![
                crate::wire::AsSegment {
                    kind: crate::wire::SegmentType::Sequence,
                    asns: vec![65001],
                },
                crate::wire::AsSegment {
                    kind: crate::wire::SegmentType::ConfedSequence,
                    asns: vec![65100],
                },
            ],
        });
        rib.apply(&update(&path));
        assert_eq!(
            reasons(&rib)[0].1,
            "AS_PATH from an external peer holds confederation segments"
        );
        // The peer's own AS first: used. Without the eBGP check (iBGP), any path is.
        assert_eq!(rib.apply(&update(&attrs(1))).announced, 1);
        let mut ibgp = checked_rib();
        ibgp.check.as_mut().unwrap().ebgp_peer_as = None;
        path.as_path = Some(AsPath::from_sequence(vec![65009]));
        assert_eq!(ibgp.apply(&update(&path)).announced, 1);
    }

    #[test]
    fn the_ignored_list_is_bounded() {
        let mut rib = checked_rib();
        let prefixes: Vec<String> = (0..IGNORED_LIST_LIMIT + 100)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        for chunk in prefixes.chunks(200) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            rib.apply(&announce_via(v4("198.51.100.1"), &chunk));
        }
        assert_eq!(rib.ignored().count(), IGNORED_LIST_LIMIT);
        assert_eq!(rib.ignored_total(), (IGNORED_LIST_LIMIT + 100) as u64);
        assert!(rib.is_empty());
    }

    #[test]
    fn routes_are_listed_sorted() {
        let mut rib = rib();
        rib.apply(&announce(1, &["10.0.2.0/24", "10.0.0.0/24", "10.0.1.0/24"]));
        let listed: Vec<String> = rib.routes().iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(listed, ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"]);
    }
}
