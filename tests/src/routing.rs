//! Shared pieces of the routing tests (`tests/routing_*.rs`, issue #4): reefd YAML snippets, waits on
//! kernel routes and on FRR's RIB, and failure messages that carry the evidence (every daemon's
//! log tail, the namespaces' route tables).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reef_lab::{BgpDaemon, Frr, KernelRoute, Netns, Reefd, wait_until};
use serde_json::Value;

/// Reef's AS in every routing test.
pub const REEF_AS: u32 = 64512;
/// Bound for sessions to come up and routes to arrive.
pub const WAIT: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(100);
/// The kernel table reefd programs (`fib: {table: 254}`).
pub const MAIN_TABLE: u32 = 254;

pub fn net(text: &str) -> IpNet {
    text.parse().expect("prefixes in the tests are valid")
}

/// One reefd `peers:` entry with test timers (connect retry 1 s) and `extra` lines (YAML at the
/// peer's indentation, e.g. `"routeReflectorClient: true"`).
pub fn peer_yaml(address: IpAddr, asn: u32, hold: u16, keepalive: u16, extra: &[&str]) -> String {
    let mut entry = format!(
        "  - address: \"{address}\"\n    asNumber: {asn}\n    holdTime: {hold}\n    \
         keepaliveTime: {keepalive}\n    connectRetryTime: 1\n"
    );
    for line in extra {
        entry.push_str("    ");
        entry.push_str(line);
        entry.push('\n');
    }
    entry
}

/// What went wrong plus the evidence: each daemon's logs and each namespace's routes.
pub fn evidence(daemons: &[&dyn BgpDaemon], namespaces: &[&Netns]) -> String {
    let mut text = String::new();
    for ns in namespaces {
        let routes = ns
            .ip(&["route", "show", "table", "all"])
            .unwrap_or_else(|e| e.to_string());
        text.push_str(&format!("==> ip route ({}) <==\n{routes}\n", ns.name()));
    }
    for d in daemons {
        text.push_str(&d.diagnostics());
        text.push('\n');
    }
    text
}

/// Panics with `message` and the evidence.
pub fn fail(message: &str, daemons: &[&dyn BgpDaemon], namespaces: &[&Netns]) -> ! {
    panic!("{message}\n{}", evidence(daemons, namespaces))
}

/// Unwraps a lab result or fails with the evidence.
pub fn ok<T>(result: reef_lab::Result<T>, daemons: &[&dyn BgpDaemon], namespaces: &[&Netns]) -> T {
    result.unwrap_or_else(|e| fail(&e.to_string(), daemons, namespaces))
}

/// Waits (bounded by `timeout`) until the kernel route for `prefix` in `ns` (main table) satisfies
/// `test` (`None` = no route); returns it, or the last one seen as the error.
pub fn wait_kernel_route(
    ns: &Netns,
    prefix: IpNet,
    timeout: Duration,
    test: impl Fn(Option<&KernelRoute>) -> bool,
) -> Result<Option<KernelRoute>, String> {
    let mut last = None;
    let found = wait_until(timeout, POLL, || {
        let route = ns.kernel_route(prefix, MAIN_TABLE).ok()?;
        let done = test(route.as_ref());
        last = Some(route.clone());
        done.then_some(route)
    });
    found.ok_or_else(|| format!("kernel route {prefix} in {}: last seen {last:?}", ns.name()))
}

/// The kernel route for `prefix` has exactly these next hops.
pub fn via(next_hops: &[IpAddr]) -> impl Fn(Option<&KernelRoute>) -> bool {
    let expected: std::collections::BTreeSet<IpAddr> = next_hops.iter().copied().collect();
    move |route| route.is_some_and(|r| r.next_hops == expected)
}

/// The paths FRR holds for `prefix` (`show bgp ... PREFIX json` → `paths`); empty when none.
pub fn frr_paths(frr: &Frr, prefix: IpNet) -> reef_lab::Result<Vec<Value>> {
    Ok(frr
        .route_json(prefix)?
        .get("paths")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// The first next hop address of an FRR path (`nexthops[0].ip`).
pub fn frr_next_hop(path: &Value) -> Option<IpAddr> {
    path.pointer("/nexthops/0/ip")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok())
}

/// Waits (bounded) until FRR has a path for `prefix` that satisfies `test`; returns it.
pub fn wait_frr_path(
    frr: &Frr,
    prefix: IpNet,
    timeout: Duration,
    test: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let mut last = Vec::new();
    let found = wait_until(timeout, POLL, || {
        last = frr_paths(frr, prefix).ok()?;
        last.iter().find(|p| test(p)).cloned()
    });
    found.ok_or_else(|| format!("FRR paths for {prefix}: last seen {last:?}"))
}

/// Reef's session state with `peer` ("Established", "Active", ...), empty when unknown.
pub fn reef_state(reef: &Reefd, peer: IpAddr) -> String {
    reef.peer(peer)
        .ok()
        .and_then(|p| p.get("state").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

/// Reef's Adj-RIB-In entry for `prefix` from `peer` (`reefctl bgp routes --peer -o json`).
pub fn reef_route(reef: &Reefd, peer: IpAddr, prefix: IpNet) -> Option<Value> {
    let text = prefix.to_string();
    reef.routes_json(peer)
        .ok()?
        .into_iter()
        .find(|r| r.get("prefix").and_then(Value::as_str) == Some(text.as_str()))
}

/// `reefctl bgp rib -o json` as text for failure messages (or why it is not available).
pub fn reef_rib_text(reef: &Reefd) -> String {
    match reef.rib_json(None) {
        Ok(rib) => rib.to_string(),
        Err(e) => format!("(reefctl bgp rib: {e})"),
    }
}

/// A stopwatch for the timings the tests report (never assert on).
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }

    pub fn millis(&self) -> u128 {
        self.0.elapsed().as_millis()
    }
}

/// reefd's Loc-RIB entry for `prefix` (`reefctl bgp rib -o json`: `prefix`, `nextHops`, `stale`, ...).
pub fn reef_rib_route(reef: &Reefd, prefix: IpNet) -> reef_lab::Result<Option<Value>> {
    let text = prefix.to_string();
    Ok(reef
        .rib_json(None)?
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r.get("prefix").and_then(Value::as_str) == Some(text.as_str()))
        .cloned())
}

/// Whether a Loc-RIB entry is marked stale (graceful restart).
pub fn is_stale(route: &Value) -> bool {
    route.get("stale").and_then(Value::as_bool).unwrap_or(false)
}
