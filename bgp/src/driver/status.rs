//! What the speaker reports about peers and routes (the admin API's JSON).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Serialize;

use crate::decision::{Explained, Ineligible, PeerKind, Selected, Verdict};
use crate::rib::{IgnoredRoute, Route};
use crate::wire::{Origin, PathAttributes, SegmentType};

/// One peer's session, as `GET /v1/bgp/peers` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub address: IpAddr,
    pub port: u16,
    pub remote_as: u32,
    pub local_as: u32,
    /// "ibgp" or "ebgp".
    #[serde(rename = "type")]
    pub peer_type: &'static str,
    /// RFC 4271 state name.
    pub state: &'static str,
    /// Last state change, RFC 3339 UTC.
    pub since: String,
    /// Seconds Established (None otherwise).
    pub uptime_seconds: Option<u64>,
    pub remote_router_id: Option<Ipv4Addr>,
    pub local_address: Option<IpAddr>,
    pub hold_time: Option<u16>,
    pub keepalive_time: Option<u16>,
    /// Capabilities both sides announced.
    pub capabilities: Vec<String>,
    pub prefixes_received: usize,
    pub prefixes_advertised: usize,
    /// Routes kept through the peer's graceful restart that it has not sent again yet.
    pub stale_routes: usize,
    /// UPDATE messages received since the speaker started (all sessions).
    pub updates_received: u64,
    /// Received routes ignored by error handling or the import check since the speaker started (RFC
    /// 7606 treat-as-withdraw, RFC 4271 §6.3 NEXT_HOP semantics; `GET /v1/bgp/routes` lists them).
    pub routes_ignored: u64,
    pub passive: bool,
    pub md5: bool,
    pub ttl_security: Option<u8>,
    /// The last error that took the session down (or kept it from coming up); kept once the session is
    /// back, like BIRD's "Last error".
    pub last_error: Option<String>,
    /// One-line human hint for `reefctl bgp status`.
    pub info: String,
}

/// One Adj-RIB-In route, as `GET /v1/bgp/routes` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    pub peer: IpAddr,
    pub prefix: IpNet,
    pub path_id: Option<u32>,
    pub next_hop: Option<IpAddr>,
    /// Space separated; AS_SETs in braces; confederation segments in parentheses.
    pub as_path: String,
    /// "igp", "egp", "incomplete" (None if missing).
    pub origin: Option<&'static str>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    /// Set when the route was received but is not used: why (error handling or a NEXT_HOP check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

impl RouteView {
    /// A received route that is not in the Adj-RIB-In (its attributes are not kept).
    pub fn ignored(peer: IpAddr, route: &IgnoredRoute) -> RouteView {
        RouteView {
            peer,
            prefix: route.prefix,
            path_id: route.path_id,
            next_hop: route.next_hop,
            as_path: String::new(),
            origin: None,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            ignored: Some(route.reason.to_string()),
        }
    }

    pub fn new(peer: IpAddr, route: &Route) -> RouteView {
        let attrs = &route.attrs;
        RouteView {
            peer,
            prefix: route.prefix,
            path_id: route.path_id,
            next_hop: route.next_hop(),
            as_path: as_path_text(attrs),
            origin: origin_name(attrs),
            med: attrs.med,
            local_pref: attrs.local_pref,
            communities: communities_text(attrs),
            large_communities: large_communities_text(attrs),
            ignored: None,
        }
    }
}

/// One path of a prefix in the Loc-RIB, ranked and explained (`reefctl bgp rib PREFIX`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RibPathView {
    pub rank: usize,
    /// The peer the path came from; `None` for a locally originated path.
    pub peer: Option<IpAddr>,
    /// "iBGP", "eBGP" or "local".
    pub peer_type: String,
    pub router_id: Ipv4Addr,
    /// "best", "multipath", "not selected", "ineligible: ...".
    pub verdict: String,
    /// Why the path won or lost ("higher LOCAL_PREF (200 > 100)").
    pub reason: Option<String>,
    /// The path it lost to, when not the best path.
    pub against: Option<IpAddr>,
    pub next_hop: Option<IpAddr>,
    pub as_path: String,
    pub origin: Option<&'static str>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Kept through the peer's graceful restart.
    pub stale: bool,
}

impl RibPathView {
    pub fn new(explained: &Explained) -> RibPathView {
        let c = &explained.candidate;
        let attrs = &c.path.attrs;
        RibPathView {
            rank: explained.rank,
            peer: (c.peer.kind != PeerKind::Local).then_some(c.peer.address),
            peer_type: c.peer.kind.to_string(),
            router_id: c.peer.router_id,
            verdict: match explained.verdict {
                Verdict::Best => "best".into(),
                Verdict::Multipath => "multipath".into(),
                Verdict::NotSelected => "not selected".into(),
                Verdict::Ineligible(Ineligible::AsLoop) => "ineligible: AS loop".into(),
                Verdict::Ineligible(Ineligible::NextHopUnreachable) => {
                    "ineligible: next hop unreachable".into()
                }
            },
            reason: explained.reason.map(|r| r.to_string()),
            against: explained.against,
            next_hop: c.path.next_hop,
            as_path: as_path_text(attrs),
            origin: origin_name(attrs),
            local_pref: attrs.local_pref,
            med: attrs.med,
            communities: communities_text(attrs),
            large_communities: large_communities_text(attrs),
            originator_id: attrs.originator_id,
            cluster_list: attrs.cluster_list.clone(),
            stale: c.stale,
        }
    }
}

/// A prefix of the Loc-RIB with its selection (`reefctl bgp rib`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocRibRouteView {
    pub prefix: IpNet,
    /// The best path's peer; `None` when locally originated.
    pub peer: Option<IpAddr>,
    /// Next hops of the best path and its ECMP set (what the kernel gets).
    pub next_hops: Vec<IpAddr>,
    pub as_path: String,
    pub local_pref: Option<u32>,
    /// Number of candidate paths.
    pub paths: usize,
    pub stale: bool,
}

impl LocRibRouteView {
    pub fn new(prefix: IpNet, selected: &Selected, paths: usize) -> LocRibRouteView {
        let best = &selected.best;
        LocRibRouteView {
            prefix,
            peer: (best.peer.kind != PeerKind::Local).then_some(best.peer.address),
            next_hops: crate::routing::fib_next_hops(Some(selected)),
            as_path: as_path_text(&best.path.attrs),
            local_pref: best.path.local_pref,
            paths,
            stale: best.stale,
        }
    }
}

/// An AS path as BIRD and FRR print it: sequences space-separated, sets in braces.
fn as_path_text(attrs: &PathAttributes) -> String {
    let mut as_path = String::new();
    for segment in attrs.as_path.iter().flat_map(|p| p.segments.iter()) {
        let (open, close) = match segment.kind {
            SegmentType::Sequence => ("", ""),
            SegmentType::Set => ("{", "}"),
            SegmentType::ConfedSequence => ("(", ")"),
            SegmentType::ConfedSet => ("[", "]"),
        };
        if !as_path.is_empty() {
            as_path.push(' ');
        }
        as_path.push_str(open);
        for (i, asn) in segment.asns.iter().enumerate() {
            if i > 0 {
                as_path.push(' ');
            }
            let _ = write!(as_path, "{asn}");
        }
        as_path.push_str(close);
    }
    as_path
}

fn origin_name(attrs: &PathAttributes) -> Option<&'static str> {
    attrs.origin.map(|origin| match origin {
        Origin::Igp => "igp",
        Origin::Egp => "egp",
        Origin::Incomplete => "incomplete",
    })
}

fn communities_text(attrs: &PathAttributes) -> Vec<String> {
    attrs
        .communities
        .iter()
        .map(|c| format!("{}:{}", c.0 >> 16, c.0 & 0xffff))
        .collect()
}

fn large_communities_text(attrs: &PathAttributes) -> Vec<String> {
    attrs
        .large_communities
        .iter()
        .map(|c| format!("{}:{}:{}", c.global_admin, c.local_data1, c.local_data2))
        .collect()
}

/// `time` as RFC 3339 UTC with milliseconds (`2026-11-30T00:53:20.042Z`); times before 1970 (a clock
/// set back) show as the epoch.
pub fn rfc3339(time: SystemTime) -> String {
    let time = time.max(UNIX_EPOCH);
    // A SystemTime past jiff's range (year 9999) cannot come from a running clock.
    let timestamp = jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::MAX);
    format!("{timestamp:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_000_000_042)),
            "2026-11-30T00:53:20.042Z"
        );
    }
}
