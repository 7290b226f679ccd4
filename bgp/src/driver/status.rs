//! What the speaker reports about peers and routes (the admin API's JSON).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Serialize;

use crate::rib::Route;
use crate::wire::{Origin, SegmentType};

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
    /// UPDATE messages received since the speaker started (all sessions).
    pub updates_received: u64,
    pub passive: bool,
    pub md5: bool,
    pub ttl_security: Option<u8>,
    /// The last error that took the session down (or kept it from coming up).
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
}

impl RouteView {
    pub fn new(peer: IpAddr, route: &Route) -> RouteView {
        let attrs = &route.attrs;
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
        RouteView {
            peer,
            prefix: route.prefix,
            path_id: route.path_id,
            next_hop: route.next_hop(),
            as_path,
            origin: attrs.origin.map(|origin| match origin {
                Origin::Igp => "igp",
                Origin::Egp => "egp",
                Origin::Incomplete => "incomplete",
            }),
            med: attrs.med,
            local_pref: attrs.local_pref,
            communities: attrs
                .communities
                .iter()
                .map(|c| format!("{}:{}", c.0 >> 16, c.0 & 0xffff))
                .collect(),
            large_communities: attrs
                .large_communities
                .iter()
                .map(|c| format!("{}:{}:{}", c.global_admin, c.local_data1, c.local_data2))
                .collect(),
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate. Milliseconds because a session that
/// drops and comes back within one second must still show a new `since`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
