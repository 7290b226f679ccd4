//! Loc-RIB and the decision process (RFC 4271 §9.1.2.2, RFC 4456 §9), sans-IO.
//!
//! [`compare`] ranks two candidate paths for one prefix and names the step that decided
//! ([`Reason`]). [`LocRib`] keeps, per prefix, the candidates of every peer, selects the best path and
//! the ECMP multipath set, and reports each change of that selection as a [`BestChange`] so the FIB
//! programmer and the Adj-RIB-Out act on deltas only.
//!
//! Steps, in order (first difference decides; `a` better means `Ordering::Greater`):
//! 1. higher LOCAL_PREF (absent = 100);
//! 2. locally originated over learned (FRR);
//! 3. shorter AS_PATH (AS_SET counts 1, confederation segments 0);
//! 4. lower ORIGIN (IGP < EGP < INCOMPLETE);
//! 5. lower MED (absent = 0), only between paths with the same neighbour AS (first AS of the path;
//!    paths with no first AS form one group);
//! 6. eBGP over iBGP;
//! 7. lower IGP cost to the next hop;
//! 8. lower router id, the ORIGINATOR_ID when present (RFC 4456 §9);
//! 9. shorter CLUSTER_LIST (RFC 4456 §9);
//! 10. lower peer address.
//!
//! Step 5 makes [`compare`] non-transitive, so the best path is chosen like FRR's
//! `deterministic-med`: first the winner of each neighbour-AS group, then the best of the group
//! winners (they never compare MEDs, so that comparison is a total order). The result does not depend
//! on the order in which paths arrived.
//!
//! Multipath: a path joins the best path's ECMP set when it ties with it through step 7 (everything
//! before the router-id tie-breaks), is not beaten before step 8 inside its own neighbour-AS group, and,
//! when the best is eBGP, has the same neighbour AS (FRR and BIRD defaults, no `as-path multipath-relax`).
//! The set holds at most `max_paths` paths (best first, then by rank); `max_paths = 1` disables ECMP.
//!
//! Ineligible paths (AS_PATH holding our AS, next hop unreachable) stay stored but are never selected.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::rib::RouteKeyHasher;
use crate::wire::{Origin, PathAttributes};

/// LOCAL_PREF assumed when the attribute is absent (eBGP routes; RFC 4271 §5.1.5, common default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;
/// Default size of the ECMP set (FRR and BIRD commonly run with 8 or more).
pub const DEFAULT_MAX_PATHS: usize = 8;
/// Upper bound of `max_paths`: the selection is built on the stack, without allocating.
pub const MAX_PATHS_LIMIT: usize = 64;

/// How a path reached us.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PeerKind {
    Ibgp,
    Ebgp,
    /// Originated by this speaker (exported pod blocks, service IPs).
    Local,
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerKind::Ibgp => "iBGP",
            PeerKind::Ebgp => "eBGP",
            PeerKind::Local => "local",
        })
    }
}

/// The peer a path came from. `address` identifies the peer within a prefix's candidate set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerInfo {
    pub address: IpAddr,
    pub router_id: Ipv4Addr,
    pub remote_as: u32,
    pub kind: PeerKind,
}

/// A path's attributes with the address its packets are sent to (NEXT_HOP or the MP_REACH next hop;
/// `None` for locally originated paths). Shared by every prefix of one received attribute set; reads
/// as its [`PathAttributes`].
#[derive(Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct RoutePath {
    pub attrs: PathAttributes,
    pub next_hop: Option<IpAddr>,
}

impl std::ops::Deref for RoutePath {
    type Target = PathAttributes;
    fn deref(&self) -> &PathAttributes {
        &self.attrs
    }
}

/// One path for a prefix, as offered to the decision process. 24 octets: a full table holds one per
/// prefix and peer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Candidate {
    /// Shared by every path of the session (a full table holds a million candidates).
    pub peer: Arc<PeerInfo>,
    pub path: Arc<RoutePath>,
    /// IGP cost to the next hop (0 when there is no IGP, as on a Reef node).
    pub igp_cost: u32,
    /// False when the next hop cannot be resolved: the path is then never selected.
    pub next_hop_reachable: bool,
    /// How many times our AS may appear in the AS_PATH (the peer's `numAllowedLocalASNumbers`).
    pub own_as_allowed: u8,
    /// Graceful restart: the peer's session went down and this path is kept until the peer's
    /// End-of-RIB or the restart timer (RFC 4724 §4.2). It still forwards and is still selected.
    pub stale: bool,
}

impl Candidate {
    /// A path with a reachable next hop at IGP cost 0.
    pub fn new(peer: PeerInfo, attrs: PathAttributes) -> Candidate {
        Candidate::shared(
            Arc::new(peer),
            Arc::new(RoutePath {
                attrs,
                next_hop: None,
            }),
        )
    }

    /// A path with a reachable next hop at IGP cost 0, from a peer whose info the caller shares.
    pub fn shared(peer: Arc<PeerInfo>, path: Arc<RoutePath>) -> Candidate {
        Candidate {
            peer,
            path,
            igp_cost: 0,
            next_hop_reachable: true,
            own_as_allowed: 0,
            stale: false,
        }
    }

    fn local_pref(&self) -> u32 {
        self.path.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    fn as_path_len(&self) -> usize {
        self.path.as_path.as_ref().map_or(0, |path| path.path_len())
    }

    fn origin(&self) -> Origin {
        // A path without ORIGIN is malformed (RFC 7606 treat-as-withdraw); rank it last if one slips in.
        self.path.origin.unwrap_or(Origin::Incomplete)
    }

    fn med(&self) -> u32 {
        self.path.med.unwrap_or(0)
    }

    /// The neighbouring AS for the MED comparison: the first AS of the path.
    pub fn neighbour_as(&self) -> Option<u32> {
        self.path.as_path.as_ref().and_then(|path| path.first_asn())
    }

    /// RFC 4456 §9: "a route reflector ... SHOULD treat the ORIGINATOR_ID as the BGP Identifier".
    fn router_id(&self) -> Ipv4Addr {
        self.path.originator_id.unwrap_or(self.peer.router_id)
    }

    fn is_eligible(&self, local_as: u32) -> bool {
        let own = self.path.as_path.as_ref().map_or(0, |path| {
            path.segments
                .iter()
                .flat_map(|segment| &segment.asns)
                .filter(|asn| **asn == local_as)
                .count()
        });
        self.next_hop_reachable && own <= usize::from(self.own_as_allowed)
    }
}

/// The step of the decision process that ranked two paths, with the winner's and loser's values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    LocalPref {
        winner: u32,
        loser: u32,
    },
    LocallyOriginated,
    AsPathLength {
        winner: usize,
        loser: usize,
    },
    Origin {
        winner: Origin,
        loser: Origin,
    },
    Med {
        winner: u32,
        loser: u32,
    },
    EbgpOverIbgp,
    IgpCost {
        winner: u32,
        loser: u32,
    },
    RouterId {
        winner: Ipv4Addr,
        loser: Ipv4Addr,
    },
    ClusterListLength {
        winner: usize,
        loser: usize,
    },
    PeerAddress {
        winner: IpAddr,
        loser: IpAddr,
    },
    /// Same peer address: the two candidates are the same path.
    Equal,
}

impl Reason {
    /// True for the steps after which paths count as equal for multipath (router id onwards).
    pub fn is_tie_break(self) -> bool {
        matches!(
            self,
            Reason::RouterId { .. }
                | Reason::ClusterListLength { .. }
                | Reason::PeerAddress { .. }
                | Reason::Equal
        )
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Igp => "IGP",
        Origin::Egp => "EGP",
        Origin::Incomplete => "INCOMPLETE",
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LocalPref { winner, loser } => {
                write!(f, "higher LOCAL_PREF ({winner} > {loser})")
            }
            Reason::LocallyOriginated => f.write_str("locally originated"),
            Reason::AsPathLength { winner, loser } => {
                write!(f, "shorter AS_PATH ({winner} < {loser})")
            }
            Reason::Origin { winner, loser } => write!(
                f,
                "lower ORIGIN ({} < {})",
                origin_name(*winner),
                origin_name(*loser)
            ),
            Reason::Med { winner, loser } => write!(f, "lower MED ({winner} < {loser})"),
            Reason::EbgpOverIbgp => f.write_str("eBGP over iBGP"),
            Reason::IgpCost { winner, loser } => {
                write!(f, "lower IGP cost ({winner} < {loser})")
            }
            Reason::RouterId { winner, loser } => {
                write!(f, "lower router id ({winner} < {loser})")
            }
            Reason::ClusterListLength { winner, loser } => {
                write!(f, "shorter CLUSTER_LIST ({winner} < {loser})")
            }
            Reason::PeerAddress { winner, loser } => {
                write!(f, "lower peer address ({winner} < {loser})")
            }
            Reason::Equal => f.write_str("equal"),
        }
    }
}

/// Orders by "higher is better", naming the step.
fn prefer_higher<T: Ord + Copy>(
    a: T,
    b: T,
    reason: fn(T, T) -> Reason,
) -> Option<(Ordering, Reason)> {
    match a.cmp(&b) {
        Ordering::Equal => None,
        Ordering::Greater => Some((Ordering::Greater, reason(a, b))),
        Ordering::Less => Some((Ordering::Less, reason(b, a))),
    }
}

/// Orders by "lower is better", naming the step.
fn prefer_lower<T: Ord + Copy>(
    a: T,
    b: T,
    reason: fn(T, T) -> Reason,
) -> Option<(Ordering, Reason)> {
    match a.cmp(&b) {
        Ordering::Equal => None,
        Ordering::Less => Some((Ordering::Greater, reason(a, b))),
        Ordering::Greater => Some((Ordering::Less, reason(b, a))),
    }
}

/// Orders by a flag that wins when set.
fn prefer_flag(a: bool, b: bool, reason: Reason) -> Option<(Ordering, Reason)> {
    match (a, b) {
        (true, false) => Some((Ordering::Greater, reason)),
        (false, true) => Some((Ordering::Less, reason)),
        _ => None,
    }
}

/// Ranks `a` against `b`: `Greater` when `a` is the better path. Does not allocate.
pub fn compare(a: &Candidate, b: &Candidate) -> (Ordering, Reason) {
    prefer_higher(a.local_pref(), b.local_pref(), |winner, loser| {
        Reason::LocalPref { winner, loser }
    })
    .or_else(|| {
        prefer_flag(
            a.peer.kind == PeerKind::Local,
            b.peer.kind == PeerKind::Local,
            Reason::LocallyOriginated,
        )
    })
    .or_else(|| {
        prefer_lower(a.as_path_len(), b.as_path_len(), |winner, loser| {
            Reason::AsPathLength { winner, loser }
        })
    })
    .or_else(|| {
        prefer_lower(a.origin(), b.origin(), |winner, loser| Reason::Origin {
            winner,
            loser,
        })
    })
    .or_else(|| {
        (a.neighbour_as() == b.neighbour_as())
            .then(|| {
                prefer_lower(a.med(), b.med(), |winner, loser| Reason::Med {
                    winner,
                    loser,
                })
            })
            .flatten()
    })
    .or_else(|| {
        prefer_flag(
            a.peer.kind == PeerKind::Ebgp,
            b.peer.kind == PeerKind::Ebgp,
            Reason::EbgpOverIbgp,
        )
    })
    .or_else(|| {
        prefer_lower(a.igp_cost, b.igp_cost, |winner, loser| Reason::IgpCost {
            winner,
            loser,
        })
    })
    .or_else(|| {
        prefer_lower(a.router_id(), b.router_id(), |winner, loser| {
            Reason::RouterId { winner, loser }
        })
    })
    .or_else(|| {
        prefer_lower(
            a.path.cluster_list.len(),
            b.path.cluster_list.len(),
            |winner, loser| Reason::ClusterListLength { winner, loser },
        )
    })
    .or_else(|| {
        prefer_lower(a.peer.address, b.peer.address, |winner, loser| {
            Reason::PeerAddress { winner, loser }
        })
    })
    .unwrap_or((Ordering::Equal, Reason::Equal))
}

/// The paths in use for a prefix: the best and the other members of its ECMP set, by rank.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Selected {
    pub best: Candidate,
    /// Further equal-cost paths (not including `best`); empty when ECMP is off or nothing ties.
    pub multipath: Vec<Candidate>,
}

impl Selected {
    /// The best path followed by the multipath set.
    pub fn paths(&self) -> impl Iterator<Item = &Candidate> {
        std::iter::once(&self.best).chain(&self.multipath)
    }
}

/// One change of a prefix's selection: `old = None` is a new route, `new = None` a withdrawal, both
/// set a new best path or a changed multipath set.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BestChange {
    pub prefix: IpNet,
    pub old: Option<Selected>,
    pub new: Option<Selected>,
}

/// Why an explained path is not usable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ineligible {
    /// Its AS_PATH holds our AS (RFC 4271 §9.1.2).
    AsLoop,
    NextHopUnreachable,
}

/// The role of an explained path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    Best,
    Multipath,
    NotSelected,
    Ineligible(Ineligible),
}

/// One line of [`LocRib::explain`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Explained {
    /// 1-based position in the ranking (ineligible paths last).
    pub rank: usize,
    pub candidate: Candidate,
    pub verdict: Verdict,
    /// For the best path: why it beat the runner-up. For the others: why they lost, against `against`
    /// (the best path, or the path of their own neighbour AS that beat them on MED). `None` for the
    /// only path and for ineligible paths.
    pub reason: Option<Reason>,
    pub against: Option<IpAddr>,
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.candidate;
        write!(
            f,
            "#{} {} {} AS{} id {} lp {} path {} origin {} med {}",
            self.rank,
            c.peer.address,
            c.peer.kind,
            c.peer.remote_as,
            c.router_id(),
            c.local_pref(),
            c.as_path_len(),
            origin_name(c.origin()),
            c.med()
        )?;
        match self.verdict {
            Verdict::Best => f.write_str(" best")?,
            Verdict::Multipath => f.write_str(" multipath")?,
            Verdict::NotSelected => {}
            Verdict::Ineligible(Ineligible::AsLoop) => f.write_str(" ineligible: AS loop")?,
            Verdict::Ineligible(Ineligible::NextHopUnreachable) => {
                f.write_str(" ineligible: next hop unreachable")?
            }
        }
        match (self.verdict, self.reason, self.against) {
            (Verdict::Best, Some(reason), _) => write!(f, ", won: {reason}"),
            (_, Some(reason), Some(against)) => write!(f, ", lost to {against}: {reason}"),
            _ => Ok(()),
        }
    }
}

/// Indices of the selected paths, best first; on the stack, and small (it is built and returned once
/// or twice per route change: `u16` indices keep it at 136 octets instead of 520).
struct Selection {
    len: usize,
    idx: [u16; MAX_PATHS_LIMIT],
}

impl Selection {
    fn get(&self, m: usize) -> usize {
        usize::from(self.idx[m])
    }

    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.idx[..self.len].iter().map(|&i| usize::from(i))
    }
}

/// True if some other included path with the same neighbour AS beats `cands[i]`; with
/// `before_tie_break`, only a win before the router-id steps counts.
fn beaten_in_group(
    cands: &[Candidate],
    i: usize,
    include: &impl Fn(usize) -> bool,
    before_tie_break: bool,
) -> bool {
    let c = &cands[i];
    cands.iter().enumerate().any(|(j, other)| {
        j != i
            && include(j)
            && other.neighbour_as() == c.neighbour_as()
            && match compare(other, c) {
                (Ordering::Greater, reason) => !(before_tie_break && reason.is_tie_break()),
                _ => false,
            }
    })
}

/// The best of the included paths: the best of the neighbour-AS group winners. O(n²) compares on
/// the few paths a prefix has; allocation-free.
fn best_among(cands: &[Candidate], include: &impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in (0..cands.len()).filter(|&i| include(i)) {
        if beaten_in_group(cands, i, include, false) {
            continue;
        }
        if best.is_none_or(|b| compare(&cands[i], &cands[b]).0 == Ordering::Greater) {
            best = Some(i);
        }
    }
    best
}

fn select(cands: &[Candidate], local_as: u32, max_paths: usize) -> Selection {
    let mut selection = Selection {
        len: 0,
        idx: [0; MAX_PATHS_LIMIT],
    };
    let eligible = |i: usize| cands[i].is_eligible(local_as);
    // Paths beyond index 65535 (more peers than that for one prefix) are never selected.
    let eligible = |i: usize| i <= usize::from(u16::MAX) && eligible(i);
    let Some(best) = best_among(cands, &eligible) else {
        return selection;
    };
    let Ok(best_index) = u16::try_from(best) else {
        return selection;
    };
    selection.idx[0] = best_index;
    selection.len = 1;
    let best_path = &cands[best];
    for i in (0..cands.len()).filter(|&i| i != best && eligible(i)) {
        let c = &cands[i];
        let Ok(index) = u16::try_from(i) else {
            continue;
        };
        let ties = compare(best_path, c).1.is_tie_break()
            && (best_path.peer.kind != PeerKind::Ebgp
                || best_path.neighbour_as() == c.neighbour_as())
            && !beaten_in_group(cands, i, &eligible, true);
        if !ties {
            continue;
        }
        // Insert by rank (the tie-break steps are a total order); drop the lowest when full.
        let mut pos = selection.len;
        while pos > 1 && compare(c, &cands[selection.get(pos - 1)]).0 == Ordering::Greater {
            pos -= 1;
        }
        if pos >= max_paths {
            continue;
        }
        let end = selection.len.min(max_paths - 1);
        selection.idx.copy_within(pos..end, pos + 1);
        selection.idx[pos] = index;
        selection.len = end + 1;
    }
    selection
}

/// The path that eliminated `cands[i]`: the best path when it wins directly, else the path of
/// `i`'s neighbour AS that beats it (MED makes the direct comparison with the best inconclusive).
fn beaten_by(cands: &[Candidate], i: usize, eligible: &impl Fn(usize) -> bool) -> usize {
    let best = 0;
    if compare(&cands[best], &cands[i]).0 == Ordering::Greater {
        return best;
    }
    let group = cands[i].neighbour_as();
    (0..cands.len())
        .filter(|&j| j != i && eligible(j) && cands[j].neighbour_as() == group)
        .find(|&j| compare(&cands[j], &cands[i]).0 == Ordering::Greater)
        .unwrap_or(best)
}

/// What an operation did to a prefix's candidate list, to recover the selection before it.
enum Displaced {
    Nothing,
    Replaced(usize, Candidate),
    Removed(usize, Candidate),
}

/// The paths of one prefix. Invariant: the first `selected` candidates are the current selection (best
/// first, then multipath).
#[derive(Debug)]
enum Entry {
    /// The common case, stored inline (no allocation): one path, selected when eligible.
    One(Candidate),
    /// Several paths in a slice exactly as long as needed. The size of the selection is not stored (a
    /// count would not fit beside the inline path without growing every entry by a word): `select`
    /// recomputes it from the few paths.
    Many(Box<[Candidate]>),
}

impl Default for Entry {
    fn default() -> Entry {
        Entry::Many(Box::default())
    }
}

impl Entry {
    fn candidates(&self) -> &[Candidate] {
        match self {
            Entry::One(candidate) => std::slice::from_ref(candidate),
            Entry::Many(candidates) => candidates,
        }
    }

    fn candidates_mut(&mut self) -> &mut [Candidate] {
        match self {
            Entry::One(candidate) => std::slice::from_mut(candidate),
            Entry::Many(candidates) => candidates,
        }
    }

    /// Size of the current selection (the candidates are kept with the selection in front).
    fn selected(&self, local_as: u32, max_paths: usize) -> usize {
        match self {
            Entry::One(candidate) => usize::from(candidate.is_eligible(local_as)),
            Entry::Many(candidates) if candidates.is_empty() => 0,
            Entry::Many(candidates) => select(candidates, local_as, max_paths).len,
        }
    }

    fn into_vec(self) -> Vec<Candidate> {
        match self {
            Entry::One(candidate) => vec![candidate],
            Entry::Many(candidates) => candidates.into_vec(),
        }
    }

    fn push(&mut self, candidate: Candidate) {
        let mut candidates = std::mem::take(self).into_vec();
        candidates.reserve_exact(1);
        candidates.push(candidate);
        *self = Entry::Many(candidates.into_boxed_slice());
    }

    fn remove(&mut self, i: usize) -> Candidate {
        let mut candidates = std::mem::take(self).into_vec();
        let removed = candidates.remove(i);
        *self = Entry::Many(candidates.into_boxed_slice());
        removed
    }

    /// Goes back to the inline form when a single path is left.
    fn normalize(&mut self) {
        if matches!(self, Entry::Many(candidates) if candidates.len() == 1)
            && let Some(candidate) = std::mem::take(self).into_vec().pop()
        {
            *self = Entry::One(candidate);
        }
    }

    /// The candidate at position `m` of the selection as it was before the operation.
    fn old_at<'a>(&'a self, m: usize, displaced: &'a Displaced) -> &'a Candidate {
        let candidates = self.candidates();
        match displaced {
            Displaced::Replaced(i, old) if *i == m => old,
            Displaced::Removed(i, old) if *i == m => old,
            Displaced::Removed(i, _) if *i < m => &candidates[m - 1],
            _ => &candidates[m],
        }
    }

    /// The selection before the operation, which had `selected` paths.
    fn old_selection(&self, displaced: &Displaced, selected: usize) -> Option<Selected> {
        (selected > 0).then(|| Selected {
            best: self.old_at(0, displaced).clone(),
            multipath: (1..selected)
                .map(|m| self.old_at(m, displaced).clone())
                .collect(),
        })
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<RouteKeyHasher>>;

/// Prefix → entry, with IPv4 keys packed in 8 octets (an `IpNet` key would take 24 of every bucket of a
/// million-prefix table).
#[derive(Default, Debug)]
struct PrefixTable {
    v4: FastMap<u64, Entry>,
    v6: FastMap<[u8; 17], Entry>,
}

fn key_v4(net: &Ipv4Net) -> u64 {
    (u64::from(u32::from(net.addr())) << 8) | u64::from(net.prefix_len())
}

fn key_v6(net: &Ipv6Net) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[..16].copy_from_slice(&net.addr().octets());
    key[16] = net.prefix_len();
    key
}

fn net_v4(key: u64) -> Option<IpNet> {
    // Keys are built from valid nets by `key_v4`: the length is at most 32.
    let addr = Ipv4Addr::from((key >> 8) as u32);
    Ipv4Net::new(addr, (key & 0xff) as u8).ok().map(IpNet::V4)
}

fn net_v6(key: &[u8; 17]) -> Option<IpNet> {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&key[..16]);
    Ipv6Net::new(Ipv6Addr::from(octets), key[16])
        .ok()
        .map(IpNet::V6)
}

impl PrefixTable {
    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn get(&self, prefix: &IpNet) -> Option<&Entry> {
        match prefix {
            IpNet::V4(net) => self.v4.get(&key_v4(net)),
            IpNet::V6(net) => self.v6.get(&key_v6(net)),
        }
    }

    fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut Entry> {
        match prefix {
            IpNet::V4(net) => self.v4.get_mut(&key_v4(net)),
            IpNet::V6(net) => self.v6.get_mut(&key_v6(net)),
        }
    }

    fn entry(&mut self, prefix: IpNet) -> &mut Entry {
        match prefix {
            IpNet::V4(net) => self.v4.entry(key_v4(&net)).or_default(),
            IpNet::V6(net) => self.v6.entry(key_v6(&net)).or_default(),
        }
    }

    fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(net) => self.v4.remove(&key_v4(net)),
            IpNet::V6(net) => self.v6.remove(&key_v6(net)),
        };
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, &Entry)> + '_ {
        let v4 = self.v4.iter().filter_map(|(k, e)| Some((net_v4(*k)?, e)));
        let v6 = self.v6.iter().filter_map(|(k, e)| Some((net_v6(k)?, e)));
        v4.chain(v6)
    }
}

/// The Loc-RIB: every peer's path per prefix and the selection made from them.
#[derive(Debug)]
pub struct LocRib {
    local_as: u32,
    max_paths: usize,
    table: PrefixTable,
}

impl LocRib {
    /// A Loc-RIB for a speaker in `local_as`, with up to [`DEFAULT_MAX_PATHS`] ECMP paths.
    pub fn new(local_as: u32) -> LocRib {
        LocRib::with_max_paths(local_as, DEFAULT_MAX_PATHS)
    }

    /// `max_paths` is clamped to `1..=MAX_PATHS_LIMIT`; 1 disables multipath.
    pub fn with_max_paths(local_as: u32, max_paths: usize) -> LocRib {
        LocRib {
            local_as,
            max_paths: max_paths.clamp(1, MAX_PATHS_LIMIT),
            table: PrefixTable::default(),
        }
    }

    pub fn max_paths(&self) -> usize {
        self.max_paths
    }

    /// Number of prefixes with at least one candidate.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Adds `candidate` or replaces the path of the same peer. Returns the selection change, if any.
    pub fn insert(&mut self, prefix: IpNet, candidate: Candidate) -> Option<BestChange> {
        let (local_as, max_paths) = (self.local_as, self.max_paths);
        let entry = self.table.entry(prefix);
        if entry.candidates().is_empty() {
            // A new prefix (most changes of a table load): its only path is the selection if eligible.
            let eligible = candidate.is_eligible(local_as);
            *entry = Entry::One(candidate);
            return eligible.then(|| BestChange {
                prefix,
                old: None,
                new: entry.old_selection(&Displaced::Nothing, 1),
            });
        }
        let position = entry
            .candidates()
            .iter()
            .position(|c| c.peer.address == candidate.peer.address);
        let old_selected = entry.selected(local_as, max_paths);
        let displaced = match position {
            Some(i) if entry.candidates()[i] == candidate => return None,
            Some(i) => Displaced::Replaced(
                i,
                std::mem::replace(&mut entry.candidates_mut()[i], candidate),
            ),
            None => {
                entry.push(candidate);
                Displaced::Nothing
            }
        };
        self.reselect(prefix, displaced, old_selected)
    }

    /// Removes the path of `peer`. Returns the selection change, if any.
    pub fn remove(&mut self, prefix: IpNet, peer: IpAddr) -> Option<BestChange> {
        let (local_as, max_paths) = (self.local_as, self.max_paths);
        let entry = self.table.get_mut(&prefix)?;
        let i = entry
            .candidates()
            .iter()
            .position(|c| c.peer.address == peer)?;
        let old_selected = entry.selected(local_as, max_paths);
        let removed = entry.remove(i);
        self.reselect(prefix, Displaced::Removed(i, removed), old_selected)
    }

    /// Removes every path of `peer` (session down). Visits the whole table.
    pub fn remove_peer(&mut self, peer: IpAddr) -> Vec<BestChange> {
        self.prefixes_of(peer)
            .into_iter()
            .filter_map(|prefix| self.remove(prefix, peer))
            .collect()
    }

    /// Every prefix with at least one candidate, in no particular order.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.table.iter().map(|(prefix, _)| prefix)
    }

    /// Every prefix `peer` has a path for. Visits the whole table.
    pub fn prefixes_of(&self, peer: IpAddr) -> Vec<IpNet> {
        self.table
            .iter()
            .filter(|(_, entry)| entry.candidates().iter().any(|c| c.peer.address == peer))
            .map(|(prefix, _)| prefix)
            .collect()
    }

    /// Marks the path of `peer` for `prefix` stale (graceful restart). The selection does not change:
    /// staleness is not a decision step.
    pub fn mark_stale(&mut self, prefix: IpNet, peer: IpAddr) {
        if let Some(entry) = self.table.get_mut(&prefix)
            && let Some(candidate) = entry
                .candidates_mut()
                .iter_mut()
                .find(|c| c.peer.address == peer)
        {
            candidate.stale = true;
        }
    }

    /// The current selection of `prefix`.
    pub fn selected(&self, prefix: IpNet) -> Option<Selected> {
        let entry = self.table.get(&prefix)?;
        entry.old_selection(
            &Displaced::Nothing,
            entry.selected(self.local_as, self.max_paths),
        )
    }

    /// The best path of `prefix`.
    pub fn best(&self, prefix: IpNet) -> Option<&Candidate> {
        let entry = self.table.get(&prefix)?;
        entry.candidates()[..entry.selected(self.local_as, self.max_paths)].first()
    }

    /// Every candidate of `prefix`, in no particular order after the selected ones.
    pub fn candidates(&self, prefix: IpNet) -> &[Candidate] {
        self.table
            .get(&prefix)
            .map_or(&[], |entry| entry.candidates())
    }

    /// Every candidate of `prefix` ranked, with its role and the step that placed it (for the CLI).
    pub fn explain(&self, prefix: IpNet) -> Vec<Explained> {
        let cands = self.candidates(prefix);
        let selected = self
            .table
            .get(&prefix)
            .map_or(0, |entry| entry.selected(self.local_as, self.max_paths));
        let eligible = |i: usize| cands[i].is_eligible(self.local_as);
        let mut ranked: Vec<usize> = Vec::with_capacity(cands.len());
        loop {
            let next = best_among(cands, &|i| eligible(i) && !ranked.contains(&i));
            let Some(next) = next else { break };
            ranked.push(next);
        }
        let first_ineligible = ranked.len();
        ranked.extend((0..cands.len()).filter(|&i| !eligible(i)));
        // Ineligible paths are not ranked: list them by peer address, independent of storage order.
        ranked[first_ineligible..].sort_unstable_by_key(|&i| cands[i].peer.address);
        ranked
            .iter()
            .enumerate()
            .map(|(position, &i)| {
                let candidate = &cands[i];
                let verdict = if position >= first_ineligible {
                    Verdict::Ineligible(if candidate.next_hop_reachable {
                        Ineligible::AsLoop
                    } else {
                        Ineligible::NextHopUnreachable
                    })
                } else if i == 0 && selected > 0 {
                    Verdict::Best
                } else if i < selected {
                    Verdict::Multipath
                } else {
                    Verdict::NotSelected
                };
                let (reason, against) = match verdict {
                    Verdict::Ineligible(_) => (None, None),
                    Verdict::Best => match ranked.get(1).filter(|_| first_ineligible > 1) {
                        Some(&runner_up) => (Some(compare(candidate, &cands[runner_up]).1), None),
                        None => (None, None),
                    },
                    Verdict::Multipath | Verdict::NotSelected => {
                        let winner = beaten_by(cands, i, &eligible);
                        (
                            Some(compare(&cands[winner], candidate).1),
                            Some(cands[winner].peer.address),
                        )
                    }
                };
                Explained {
                    rank: position + 1,
                    candidate: candidate.clone(),
                    verdict,
                    reason,
                    against,
                }
            })
            .collect()
    }

    /// Recomputes the selection of `prefix` after an operation and reports it if it changed.
    /// `old_selected`: the selection size before the operation.
    fn reselect(
        &mut self,
        prefix: IpNet,
        displaced: Displaced,
        old_selected: usize,
    ) -> Option<BestChange> {
        let entry = self.table.get_mut(&prefix)?;
        let selection = select(entry.candidates(), self.local_as, self.max_paths);
        let changed = selection.len != old_selected
            || selection
                .indices()
                .enumerate()
                .any(|(m, i)| entry.candidates()[i] != *entry.old_at(m, &displaced));
        let change = changed.then(|| BestChange {
            prefix,
            old: entry.old_selection(&displaced, old_selected),
            new: (selection.len > 0).then(|| Selected {
                best: entry.candidates()[selection.get(0)].clone(),
                multipath: selection
                    .indices()
                    .skip(1)
                    .map(|i| entry.candidates()[i].clone())
                    .collect(),
            }),
        });
        // Move the selection to the front, in order, keeping the indices still to place valid.
        let mut order = selection.idx;
        for m in 0..selection.len {
            let from = order[m];
            let from_index = usize::from(from);
            if from_index != m {
                entry.candidates_mut().swap(m, from_index);
                for later in &mut order[m + 1..selection.len] {
                    if usize::from(*later) == m {
                        *later = from;
                    }
                }
            }
        }
        entry.normalize();
        if entry.candidates().is_empty() {
            self.table.remove(&prefix);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_stays_small() {
        // One per prefix and peer: 1M prefixes from 2 peers hold 2M of them.
        assert_eq!(std::mem::size_of::<Candidate>(), 24);
        // A single path is stored inline in the table entry, without a tag word.
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }
    use crate::wire::{AsPath, AsSegment, SegmentType};
    use proptest::prelude::*;

    const LOCAL_AS: u32 = 64512;

    fn prefix() -> IpNet {
        "203.0.113.0/24".parse().unwrap() // literal, valid
    }

    fn peer(n: u8, kind: PeerKind) -> PeerInfo {
        PeerInfo {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
            router_id: Ipv4Addr::new(10, 0, 0, n),
            remote_as: if kind == PeerKind::Ebgp {
                65000 + u32::from(n)
            } else {
                LOCAL_AS
            },
            kind,
        }
    }

    fn path(asns: &[u32]) -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::from_sequence(asns.to_vec())),
            ..PathAttributes::default()
        }
    }

    fn cand(n: u8, kind: PeerKind, attrs: PathAttributes) -> Candidate {
        Candidate::new(peer(n, kind), attrs)
    }

    fn assert_step(better: &Candidate, worse: &Candidate, reason: Reason) {
        assert_eq!(compare(better, worse), (Ordering::Greater, reason));
        assert_eq!(compare(worse, better), (Ordering::Less, reason));
    }

    #[test]
    fn decision_local_pref() {
        let high = cand(
            2,
            PeerKind::Ibgp,
            PathAttributes {
                local_pref: Some(200),
                ..path(&[1, 2, 3])
            },
        );
        let default = cand(1, PeerKind::Ebgp, path(&[1]));
        assert_step(
            &high,
            &default,
            Reason::LocalPref {
                winner: 200,
                loser: 100,
            },
        );
        let low = cand(
            3,
            PeerKind::Ebgp,
            PathAttributes {
                local_pref: Some(50),
                ..path(&[1])
            },
        );
        assert_step(
            &default,
            &low,
            Reason::LocalPref {
                winner: 100,
                loser: 50,
            },
        );
    }

    #[test]
    fn decision_locally_originated() {
        let local = cand(2, PeerKind::Local, path(&[]));
        let learned = cand(1, PeerKind::Ibgp, path(&[]));
        assert_step(&local, &learned, Reason::LocallyOriginated);
    }

    #[test]
    fn decision_as_path_length() {
        let short = cand(2, PeerKind::Ebgp, path(&[1, 2]));
        let long = cand(1, PeerKind::Ebgp, path(&[1, 2, 3]));
        assert_step(
            &short,
            &long,
            Reason::AsPathLength {
                winner: 2,
                loser: 3,
            },
        );
        // AS_SET counts 1, confederation segments 0: [1 {2 3 4}] + confed [7 8] has length 2.
        let mixed = PathAttributes {
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentType::ConfedSequence,
                        asns: vec![7, 8],
                    },
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: vec![1],
                    },
                    AsSegment {
                        kind: SegmentType::Set,
                        asns: vec![2, 3, 4],
                    },
                ],
            }),
            ..path(&[])
        };
        assert_step(
            &cand(3, PeerKind::Ibgp, mixed),
            &long,
            Reason::AsPathLength {
                winner: 2,
                loser: 3,
            },
        );
    }

    #[test]
    fn decision_origin() {
        let igp = cand(2, PeerKind::Ebgp, path(&[1]));
        let egp = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                origin: Some(Origin::Egp),
                ..path(&[1])
            },
        );
        let incomplete = cand(
            3,
            PeerKind::Ebgp,
            PathAttributes {
                origin: Some(Origin::Incomplete),
                ..path(&[1])
            },
        );
        assert_step(
            &igp,
            &egp,
            Reason::Origin {
                winner: Origin::Igp,
                loser: Origin::Egp,
            },
        );
        assert_step(
            &egp,
            &incomplete,
            Reason::Origin {
                winner: Origin::Egp,
                loser: Origin::Incomplete,
            },
        );
    }

    #[test]
    fn decision_med_same_neighbour_as_only() {
        let missing = cand(2, PeerKind::Ebgp, path(&[1, 9]));
        let high = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                med: Some(10),
                ..path(&[1, 8])
            },
        );
        assert_step(
            &missing,
            &high,
            Reason::Med {
                winner: 0,
                loser: 10,
            },
        );
        // Another neighbour AS: MED is skipped, the router id decides (10.0.0.1 < 10.0.0.2).
        let other_as = cand(2, PeerKind::Ebgp, path(&[2, 9]));
        assert_step(
            &high,
            &other_as,
            Reason::RouterId {
                winner: Ipv4Addr::new(10, 0, 0, 1),
                loser: Ipv4Addr::new(10, 0, 0, 2),
            },
        );
    }

    #[test]
    fn decision_ebgp_over_ibgp() {
        let ebgp = cand(2, PeerKind::Ebgp, path(&[1]));
        let ibgp = cand(1, PeerKind::Ibgp, path(&[1]));
        assert_step(&ebgp, &ibgp, Reason::EbgpOverIbgp);
    }

    #[test]
    fn decision_igp_cost() {
        let near = Candidate {
            igp_cost: 5,
            ..cand(2, PeerKind::Ibgp, path(&[1]))
        };
        let far = Candidate {
            igp_cost: 20,
            ..cand(1, PeerKind::Ibgp, path(&[1]))
        };
        assert_step(
            &near,
            &far,
            Reason::IgpCost {
                winner: 5,
                loser: 20,
            },
        );
    }

    #[test]
    fn decision_router_id_and_originator_id() {
        let low = cand(1, PeerKind::Ibgp, path(&[1]));
        let high = cand(2, PeerKind::Ibgp, path(&[1]));
        let id = |n| Ipv4Addr::new(10, 0, 0, n);
        assert_step(
            &low,
            &high,
            Reason::RouterId {
                winner: id(1),
                loser: id(2),
            },
        );
        // A reflected route is ranked by its ORIGINATOR_ID, not the reflector's router id.
        let reflected = cand(
            3,
            PeerKind::Ibgp,
            PathAttributes {
                originator_id: Some(id(0)),
                ..path(&[1])
            },
        );
        assert_step(
            &reflected,
            &low,
            Reason::RouterId {
                winner: id(0),
                loser: id(1),
            },
        );
    }

    #[test]
    fn decision_cluster_list_length() {
        let originator = Some(Ipv4Addr::new(10, 9, 9, 9));
        let short = cand(
            2,
            PeerKind::Ibgp,
            PathAttributes {
                originator_id: originator,
                cluster_list: vec![Ipv4Addr::new(1, 1, 1, 1)],
                ..path(&[1])
            },
        );
        let long = cand(
            1,
            PeerKind::Ibgp,
            PathAttributes {
                originator_id: originator,
                cluster_list: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)],
                ..path(&[1])
            },
        );
        assert_step(
            &short,
            &long,
            Reason::ClusterListLength {
                winner: 1,
                loser: 2,
            },
        );
    }

    #[test]
    fn decision_peer_address() {
        let originator = Some(Ipv4Addr::new(10, 9, 9, 9));
        let low = cand(
            1,
            PeerKind::Ibgp,
            PathAttributes {
                originator_id: originator,
                ..path(&[1])
            },
        );
        let high = cand(
            2,
            PeerKind::Ibgp,
            PathAttributes {
                originator_id: originator,
                ..path(&[1])
            },
        );
        assert_step(
            &low,
            &high,
            Reason::PeerAddress {
                winner: low.peer.address,
                loser: high.peer.address,
            },
        );
        assert_eq!(compare(&low, &low), (Ordering::Equal, Reason::Equal));
    }

    #[test]
    fn decision_reason_display() {
        assert_eq!(
            Reason::LocalPref {
                winner: 200,
                loser: 100
            }
            .to_string(),
            "higher LOCAL_PREF (200 > 100)"
        );
        assert_eq!(
            Reason::Origin {
                winner: Origin::Igp,
                loser: Origin::Incomplete
            }
            .to_string(),
            "lower ORIGIN (IGP < INCOMPLETE)"
        );
        assert_eq!(Reason::EbgpOverIbgp.to_string(), "eBGP over iBGP");
    }

    /// Classic MED non-transitivity: A (AS1, MED 50, id .1), B (AS2, id .2), C (AS1, MED 0, id .3).
    /// C beats A on MED; B beats C on router id; the result is B in every insertion order.
    #[test]
    fn decision_deterministic_med_any_order() {
        let a = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                med: Some(50),
                ..path(&[1])
            },
        );
        let b = cand(2, PeerKind::Ebgp, path(&[2]));
        let c = cand(
            3,
            PeerKind::Ebgp,
            PathAttributes {
                med: Some(0),
                ..path(&[1])
            },
        );
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let mut rib = LocRib::new(LOCAL_AS);
            let all = [&a, &b, &c];
            for i in order {
                rib.insert(prefix(), all[i].clone());
            }
            assert_eq!(rib.best(prefix()), Some(&b), "order {order:?}");
        }
        // Without C, A beats B on router id: MED is not compared across neighbour ASes.
        let mut rib = LocRib::new(LOCAL_AS);
        rib.insert(prefix(), a.clone());
        rib.insert(prefix(), b.clone());
        assert_eq!(rib.best(prefix()), Some(&a));
        rib.insert(prefix(), c.clone());
        let explained = rib.explain(prefix());
        let of = |p: &Candidate| {
            explained
                .iter()
                .find(|e| e.candidate == *p)
                .unwrap()
                .clone()
        }; // present
        assert_eq!(of(&a).against, Some(c.peer.address));
        assert_eq!(
            of(&a).reason,
            Some(Reason::Med {
                winner: 0,
                loser: 50
            })
        );
        assert_eq!(of(&b).verdict, Verdict::Best);
    }

    fn ecmp_path(n: u8) -> Candidate {
        cand(n, PeerKind::Ebgp, path(&[65001, 65100]))
    }

    #[test]
    fn decision_ecmp_forms_and_shrinks() {
        let mut rib = LocRib::new(LOCAL_AS);
        let first = rib.insert(prefix(), ecmp_path(3)).unwrap(); // new route: a change
        assert_eq!(first.old, None);
        assert_eq!(first.new.as_ref().map(|s| s.multipath.len()), Some(0));
        let grow = rib.insert(prefix(), ecmp_path(1)).unwrap(); // joins the set as best (id .1)
        assert_eq!(grow.new.as_ref().unwrap().best, ecmp_path(1));
        assert_eq!(grow.new.as_ref().unwrap().multipath, vec![ecmp_path(3)]);
        rib.insert(prefix(), ecmp_path(2)).unwrap();
        // Another neighbour AS with the same length is not eBGP multipath.
        assert_eq!(
            rib.insert(prefix(), cand(4, PeerKind::Ebgp, path(&[65002, 65100]))),
            None
        );
        // A longer path is not either.
        assert_eq!(
            rib.insert(
                prefix(),
                cand(5, PeerKind::Ebgp, path(&[65001, 65001, 65100]))
            ),
            None
        );
        let set = rib.selected(prefix()).unwrap();
        assert_eq!(set.best, ecmp_path(1));
        assert_eq!(set.multipath, vec![ecmp_path(2), ecmp_path(3)]);

        let shrink = rib.remove(prefix(), ecmp_path(2).peer.address).unwrap();
        assert_eq!(shrink.old, Some(set));
        assert_eq!(shrink.new.as_ref().unwrap().multipath, vec![ecmp_path(3)]);
        let best_gone = rib.remove(prefix(), ecmp_path(1).peer.address).unwrap();
        assert_eq!(best_gone.new.as_ref().unwrap().best, ecmp_path(3));
        assert!(best_gone.new.as_ref().unwrap().multipath.is_empty());
    }

    #[test]
    fn decision_max_paths() {
        for (max_paths, expected) in [(1, 0), (2, 1), (8, 3)] {
            let mut rib = LocRib::with_max_paths(LOCAL_AS, max_paths);
            for n in [4, 2, 3, 1] {
                rib.insert(prefix(), ecmp_path(n));
            }
            let set = rib.selected(prefix()).unwrap();
            assert_eq!(set.best, ecmp_path(1));
            assert_eq!(set.multipath.len(), expected, "max_paths {max_paths}");
            assert_eq!(
                set.multipath.first(),
                (expected > 0).then(|| ecmp_path(2)).as_ref()
            );
        }
    }

    #[test]
    fn decision_ibgp_multipath_across_neighbour_as() {
        let mut rib = LocRib::new(LOCAL_AS);
        rib.insert(prefix(), cand(1, PeerKind::Ibgp, path(&[65001])));
        rib.insert(prefix(), cand(2, PeerKind::Ibgp, path(&[65002])));
        assert_eq!(rib.selected(prefix()).unwrap().multipath.len(), 1);
    }

    #[test]
    fn decision_changes_only_when_something_changed() {
        let mut rib = LocRib::new(LOCAL_AS);
        let best = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                local_pref: Some(200),
                ..path(&[1])
            },
        );
        let worse = cand(2, PeerKind::Ebgp, path(&[2]));
        assert!(rib.insert(prefix(), best.clone()).is_some());
        assert_eq!(rib.insert(prefix(), best.clone()), None, "same path again");
        assert_eq!(rib.insert(prefix(), worse.clone()), None, "a worse path");
        assert_eq!(
            rib.remove(prefix(), worse.peer.address),
            None,
            "an unused path"
        );
        assert_eq!(
            rib.insert(prefix(), worse.clone()),
            None,
            "a worse path again"
        );
        assert_eq!(
            rib.remove(prefix(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))),
            None
        );
        // New attributes from the best peer: reported even though the peer stays best.
        let updated = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                local_pref: Some(300),
                ..path(&[1])
            },
        );
        let change = rib.insert(prefix(), updated.clone()).unwrap();
        assert_eq!(change.old.unwrap().best, best);
        assert_eq!(change.new.unwrap().best, updated);
        let gone = rib.remove(prefix(), updated.peer.address).unwrap();
        assert_eq!(gone.new.unwrap().best, worse);
        let withdrawn = rib.remove_peer(worse.peer.address);
        assert_eq!(withdrawn.len(), 1);
        assert_eq!(withdrawn[0].new, None);
        assert!(rib.is_empty());
    }

    #[test]
    fn decision_ineligible_paths_never_selected() {
        let mut rib = LocRib::new(LOCAL_AS);
        let looped = cand(
            1,
            PeerKind::Ebgp,
            PathAttributes {
                local_pref: Some(500),
                ..path(&[1, LOCAL_AS])
            },
        );
        let unreachable = Candidate {
            next_hop_reachable: false,
            ..cand(2, PeerKind::Ibgp, path(&[]))
        };
        assert_eq!(rib.insert(prefix(), looped.clone()), None);
        assert_eq!(rib.insert(prefix(), unreachable.clone()), None);
        assert_eq!(rib.best(prefix()), None);
        let usable = cand(3, PeerKind::Ebgp, path(&[3, 4, 5]));
        assert_eq!(
            rib.insert(prefix(), usable.clone())
                .unwrap()
                .new
                .unwrap()
                .best,
            usable
        );
        let verdicts: Vec<Verdict> = rib.explain(prefix()).iter().map(|e| e.verdict).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Best,
                Verdict::Ineligible(Ineligible::AsLoop),
                Verdict::Ineligible(Ineligible::NextHopUnreachable)
            ]
        );
    }

    #[test]
    fn decision_explain_output() {
        let mut rib = LocRib::with_max_paths(LOCAL_AS, 2);
        rib.insert(prefix(), cand(3, PeerKind::Ebgp, path(&[65001])));
        rib.insert(
            prefix(),
            cand(
                1,
                PeerKind::Ibgp,
                PathAttributes {
                    local_pref: Some(200),
                    ..path(&[65001])
                },
            ),
        );
        rib.insert(
            prefix(),
            cand(
                2,
                PeerKind::Ibgp,
                PathAttributes {
                    local_pref: Some(200),
                    ..path(&[65001])
                },
            ),
        );
        let lines: Vec<String> = rib
            .explain(prefix())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "#1 192.0.2.1 iBGP AS64512 id 10.0.0.1 lp 200 path 1 origin IGP med 0 best, \
                 won: lower router id (10.0.0.1 < 10.0.0.2)",
                "#2 192.0.2.2 iBGP AS64512 id 10.0.0.2 lp 200 path 1 origin IGP med 0 multipath, \
                 lost to 192.0.2.1: lower router id (10.0.0.1 < 10.0.0.2)",
                "#3 192.0.2.3 eBGP AS65003 id 10.0.0.3 lp 100 path 1 origin IGP med 0, \
                 lost to 192.0.2.1: higher LOCAL_PREF (200 > 100)",
            ]
        );
        assert!(rib.explain("198.51.100.0/24".parse().unwrap()).is_empty()); // literal, valid
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let one = (
            prop_oneof![Just(None), Just(Some(100u32)), Just(Some(200))],
            prop_oneof![Just(65001u32), Just(65002)],
            0usize..3,
            prop_oneof![Just(Origin::Igp), Just(Origin::Incomplete)],
            proptest::option::of(0u32..3),
            any::<bool>(),
            0u32..2,
            1u8..4,
            0usize..2,
            proptest::bool::weighted(0.9),
        );
        proptest::collection::vec(one, 1..9).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(
                    |(
                        i,
                        (lp, nbr, extra, origin, med, ebgp, igp_cost, id, clusters, reachable),
                    )| {
                        let n = u8::try_from(i).unwrap() + 1; // at most 8 rows
                        let mut asns = vec![nbr];
                        asns.extend(std::iter::repeat_n(65100, extra));
                        let attrs = PathAttributes {
                            local_pref: lp,
                            origin: Some(origin),
                            med,
                            cluster_list: vec![Ipv4Addr::new(1, 1, 1, 1); clusters],
                            ..path(&asns)
                        };
                        let mut c =
                            cand(n, if ebgp { PeerKind::Ebgp } else { PeerKind::Ibgp }, attrs);
                        Arc::make_mut(&mut c.peer).router_id = Ipv4Addr::new(10, 0, 0, id);
                        c.igp_cost = igp_cost;
                        c.next_hop_reachable = reachable;
                        c
                    },
                )
                .collect()
        })
    }

    /// Inserts in order and checks that the reported changes chain up to the final selection.
    fn build(cands: &[Candidate]) -> LocRib {
        let mut rib = LocRib::with_max_paths(LOCAL_AS, 3);
        let mut state = None;
        for c in cands {
            if let Some(change) = rib.insert(prefix(), c.clone()) {
                assert_eq!(change.old, state);
                assert_ne!(change.old, change.new);
                state = change.new;
            }
        }
        assert_eq!(state, rib.selected(prefix()));
        rib
    }

    proptest! {
        #[test]
        fn decision_shuffled_insertion_same_selection(
            (cands, one, other, removed) in arb_candidates().prop_flat_map(|v| {
                let len = v.len();
                (Just(v.clone()), Just(v.clone()).prop_shuffle(), Just(v).prop_shuffle(), 0..len)
            })
        ) {
            let rib_a = build(&one);
            let rib_b = build(&other);
            prop_assert_eq!(rib_a.selected(prefix()), rib_b.selected(prefix()));

            if let Some(sel) = rib_a.selected(prefix()) {
                for c in cands.iter().filter(|c| c.is_eligible(LOCAL_AS)) {
                    if c.neighbour_as() == sel.best.neighbour_as() && *c != sel.best {
                        prop_assert_eq!(compare(&sel.best, c).0, Ordering::Greater);
                    }
                }
                for m in &sel.multipath {
                    prop_assert!(compare(&sel.best, m).1.is_tie_break());
                }
            }

            // Removing a path gives the selection of never having had it.
            let mut rib = rib_a;
            let before = rib.selected(prefix());
            let change = rib.remove(prefix(), cands[removed].peer.address);
            let rest: Vec<Candidate> =
                one.iter().filter(|c| c.peer.address != cands[removed].peer.address).cloned().collect();
            let fresh = build(&rest);
            prop_assert_eq!(rib.selected(prefix()), fresh.selected(prefix()));
            match change {
                Some(change) => {
                    prop_assert_eq!(change.old, before);
                    prop_assert_eq!(change.new, fresh.selected(prefix()));
                }
                None => prop_assert_eq!(before, fresh.selected(prefix())),
            }
        }
    }
}
