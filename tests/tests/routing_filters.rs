//! Filters and limits on a reefd <-> FRR eBGP session: an import filter rejects a prefix range, an
//! export filter adds a community FRR sees, and a max-prefix limit ends the session with
//! Cease / Maximum Number of Prefixes Reached.

use std::net::IpAddr;
use std::time::Duration;

use reef_lab::{
    BgpConfig, BgpDaemon, Frr, FrrOptions, Neighbor, Netns, Reefd, require_root, veth, wait_until,
};
use reef_tests::routing::{
    POLL, REEF_AS, WAIT, fail, net, ok, peer_yaml, reef_rib_route, reef_rib_text, reef_state, via,
    wait_frr_path, wait_kernel_route,
};
use serde_json::Value;

const FRR_AS: u32 = 65001;

struct FilterLab {
    frr: Frr,
    reef: Reefd,
    frr_ip: IpAddr,
    reef_ip: IpAddr,
}

fn start(frr_prefixes: &[&str], reef_top: &str, peer_extra: &[&str]) -> FilterLab {
    start_with_frr(
        frr_prefixes,
        |_| FrrOptions::default(),
        reef_top,
        peer_extra,
    )
}

/// [`start`] with raw FRR config made for reefd's address.
fn start_with_frr(
    frr_prefixes: &[&str],
    frr_options: impl FnOnce(IpAddr) -> FrrOptions,
    reef_top: &str,
    peer_extra: &[&str],
) -> FilterLab {
    require_root();
    let reef_ns = Netns::new("flreef").unwrap();
    let frr_ns = Netns::new("flfrr").unwrap();
    let link = veth(&reef_ns, &frr_ns).unwrap();
    let (reef_ip, frr_ip): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
    let mut config = BgpConfig::new(FRR_AS, &link.b).neighbor(Neighbor::new(reef_ip, REEF_AS));
    for p in frr_prefixes {
        config = config.originate(net(p));
    }
    let frr = Frr::start_with(frr_ns, config, frr_options(reef_ip)).unwrap();
    let yaml = reef_yaml(reef_ip, frr_ip, reef_top, peer_extra);
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr], &[]);
    FilterLab {
        frr,
        reef,
        frr_ip,
        reef_ip,
    }
}

/// reefd's YAML: `reef_top` (e.g. `filters:`) at the top level, `peer_extra` in FRR's peer entry.
fn reef_yaml(reef_ip: IpAddr, frr_ip: IpAddr, reef_top: &str, peer_extra: &[&str]) -> String {
    format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nprefixes: [\"10.65.0.0/26\"]\n\
         fib: {{ table: 254 }}\n{reef_top}peers:\n{}",
        peer_yaml(frr_ip, FRR_AS, 9, 3, peer_extra)
    )
}

impl FilterLab {
    fn ok<T>(&self, result: reef_lab::Result<T>) -> T {
        result.unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    fn yaml(&self, reef_top: &str, peer_extra: &[&str]) -> String {
        reef_yaml(self.reef_ip, self.frr_ip, reef_top, peer_extra)
    }

    fn fail(&self, message: &str) -> ! {
        fail(
            &format!("{message}\nreefd rib: {}", reef_rib_text(&self.reef)),
            &[&self.frr, &self.reef],
            &[self.reef.netns()],
        )
    }
}

/// importV4 Reject 10.99.0.0/16 In: of 10.99.1.0/24 and 10.98.1.0/24 only the latter is used
/// (kernel, Loc-RIB); exportV4 on 10.65.0.0/16 adds community 64512:100, which FRR shows.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn import_filter_rejects_a_range_and_export_filter_adds_a_community() {
    let filters = "filters:\n  - name: lab-policy\n    importV4: [{cidr: 10.99.0.0/16, matchOperator: In, action: Reject}]\n    \
                   exportV4: [{cidr: 10.65.0.0/16, matchOperator: In, action: Accept, \
                   operations: [{addCommunity: {value: \"64512:100\"}}]}]\n";
    let lab = start(
        &["10.99.1.0/24", "10.98.1.0/24"],
        filters,
        &["filters: [lab-policy]"],
    );
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.98.1.0/24"),
        WAIT,
        via(&[lab.frr_ip]),
    ) {
        lab.fail(&e);
    }
    // Both prefixes came in one UPDATE from FRR: the rejected one has been decided on too.
    let rejected = net("10.99.1.0/24");
    let kernel = lab.reef.netns().kernel_route(rejected, 254);
    let rib = reef_rib_route(&lab.reef, rejected);
    if !matches!(kernel, Ok(None)) || !matches!(rib, Ok(None)) {
        let paths = lab.reef.rib_json(Some(rejected)).map(|p| p.to_string());
        lab.fail(&format!(
            "{rejected} should have been rejected on import: kernel {kernel:?}, Loc-RIB {rib:?}, \
             paths {paths:?}"
        ));
    }

    let path = wait_frr_path(&lab.frr, net("10.65.0.0/26"), WAIT, |p| {
        p.pointer("/community/string")
            .and_then(Value::as_str)
            .is_some_and(|c| c.split_whitespace().any(|c| c == "64512:100"))
    })
    .unwrap_or_else(|e| {
        lab.fail(&format!(
            "FRR should see community 64512:100 on 10.65.0.0/26: {e}"
        ))
    });
    eprintln!("FRR's path for 10.65.0.0/26: {path}");
}

/// maxPrefixes limit 2 and FRR sends 3: reefd ends the session with Cease / Maximum Number of
/// Prefixes Reached, which FRR reports as received.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn max_prefix_limit_sends_cease() {
    max_prefix_cease(false);
}

/// After the max-prefix Cease the session stays down for `restartTime` (30 s), also when FRR keeps
/// connecting (every 1 s): watched for 5 s.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn max_prefix_session_stays_down_for_restart_time() {
    max_prefix_stays_down(false);
}

/// The same with a passive FRR: only reefd's own reconnection could bring the session back.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn max_prefix_session_stays_down_against_a_passive_peer() {
    max_prefix_stays_down(true);
}

fn max_prefix_stays_down(frr_passive: bool) {
    let lab = max_prefix_cease(frr_passive);
    let connections = lab
        .frr
        .neighbor_json(lab.reef_ip)
        .ok()
        .and_then(|n| n.get("connectionsEstablished").and_then(Value::as_u64));
    let mut came_back = None;
    wait_until(Duration::from_secs(5), POLL, || {
        let now = lab
            .frr
            .neighbor_json(lab.reef_ip)
            .ok()
            .and_then(|n| n.get("connectionsEstablished").and_then(Value::as_u64));
        if now != connections || reef_state(&lab.reef, lab.frr_ip) == "Established" {
            came_back.get_or_insert(now);
        }
        None::<()>
    });
    if let Some(now) = came_back {
        lab.fail(&format!(
            "within 5 s of the max-prefix Cease (restartTime 30 s) the session came back (FRR \
             passive: {frr_passive}): FRR connections {connections:?} -> {now:?}"
        ));
    }
}

/// Starts the max-prefix lab and waits for the Cease, checked on both sides.
/// `frr_passive`: FRR never connects (only reefd's own reconnection can bring the session back).
fn max_prefix_cease(frr_passive: bool) -> FilterLab {
    let lab = start_with_frr(
        &["10.98.1.0/24", "10.98.2.0/24", "10.98.3.0/24"],
        |reef_ip| FrrOptions {
            router: if frr_passive {
                format!(" neighbor {reef_ip} passive")
            } else {
                String::new()
            },
            ..FrrOptions::default()
        },
        "",
        &["maxPrefixes: {limit: 2, warningPercent: 75, restartTime: 30}"],
    );
    let mut last = Value::Null;
    let seen = wait_until(WAIT, POLL, || {
        last = lab.frr.neighbor_json(lab.reef_ip).ok()?;
        let text = last.to_string();
        text.contains("Maximum Number of Prefixes Reached")
            .then_some(())
    });
    if seen.is_none() {
        lab.fail(&format!(
            "FRR never reported reefd's Cease / Maximum Number of Prefixes Reached; FRR neighbor: {last}\nreefd peer: {:?}",
            lab.reef.peer(lab.frr_ip)
        ));
    }
    let reset = last
        .get("lastResetDueTo")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !reset.to_lowercase().contains("received") {
        lab.fail(&format!(
            "FRR should have received the NOTIFICATION (lastResetDueTo {reset:?}): {last}"
        ));
    }
    // reefd's status names what it sent.
    let mut status = Value::Null;
    let explained = wait_until(WAIT, POLL, || {
        status = lab.reef.peer(lab.frr_ip).ok()?;
        let error = status.get("lastError").and_then(Value::as_str)?;
        error.contains("Maximum Number of Prefixes").then_some(())
    });
    if explained.is_none() {
        lab.fail(&format!(
            "reefd's status should name the Cease / Maximum Number of Prefixes Reached it sent: {status}"
        ));
    }
    eprintln!("reefd peer after the limit: {status}");
    lab
}

/// protectedPrefixes 10.65.0.0/16 and 10.66.0.0/16: learned routes inside (10.65.7.0/24) or
/// covering (10.0.0.0/8) them are refused; one explicitly accepted by an import filter
/// (10.66.1.0/24, Equal) is used, and so is an unrelated one (10.98.1.0/24).
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn protected_prefixes_are_refused_unless_a_filter_accepts() {
    let top = "protectedPrefixes: [\"10.65.0.0/16\", \"10.66.0.0/16\"]\nfilters:\n  - name: allow-one\n    \
               importV4: [{cidr: 10.66.1.0/24, matchOperator: Equal, action: Accept}]\n";
    let lab = start(
        &["10.65.7.0/24", "10.0.0.0/8", "10.66.1.0/24", "10.98.1.0/24"],
        top,
        &["filters: [allow-one]"],
    );
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    for used in ["10.98.1.0/24", "10.66.1.0/24"] {
        if let Err(e) = wait_kernel_route(lab.reef.netns(), net(used), WAIT, via(&[lab.frr_ip])) {
            lab.fail(&e);
        }
    }
    for refused in ["10.65.7.0/24", "10.0.0.0/8"] {
        let kernel = lab.reef.netns().kernel_route(net(refused), 254);
        let rib = reef_rib_route(&lab.reef, net(refused));
        if !matches!(kernel, Ok(None)) || !matches!(rib, Ok(None)) {
            lab.fail(&format!(
                "{refused} overlaps a protected prefix and should be refused: kernel {kernel:?}, Loc-RIB {rib:?}"
            ));
        }
    }
}

/// A peer's `communities` (a standard and a large one) are added to every route sent to it.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn peer_communities_are_added_on_export() {
    let lab = start(&[], "", &["communities: [\"64512:200\", \"64512:1:2\"]"]);
    let path = wait_frr_path(&lab.frr, net("10.65.0.0/26"), WAIT, |_| true)
        .unwrap_or_else(|e| lab.fail(&format!("FRR never learned 10.65.0.0/26: {e}")));
    let community = path
        .pointer("/community/string")
        .and_then(Value::as_str)
        .unwrap_or("");
    let large = path
        .pointer("/largeCommunity/string")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !community.split_whitespace().any(|c| c == "64512:200")
        || !large.split_whitespace().any(|c| c == "64512:1:2")
    {
        lab.fail(&format!(
            "FRR should see community 64512:200 and large community 64512:1:2: {path}"
        ));
    }
}

/// SIGHUP with a new import filter and export community: applied from the stored routes without a
/// session reset (10.99.1.0/24 leaves the kernel, FRR sees the community, the session keeps its
/// `since`); removing the filter again brings 10.99.1.0/24 back, still without a reset.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn sighup_filter_change_applies_without_a_session_reset() {
    let mut lab = start(&["10.99.1.0/24", "10.98.1.0/24"], "", &[]);
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    for p in ["10.99.1.0/24", "10.98.1.0/24"] {
        if let Err(e) = wait_kernel_route(lab.reef.netns(), net(p), WAIT, via(&[lab.frr_ip])) {
            lab.fail(&e);
        }
    }
    let since = |lab: &FilterLab| {
        lab.reef
            .peer(lab.frr_ip)
            .ok()
            .and_then(|p| p.get("since").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    };
    let established_since = since(&lab);
    let frr_connections = |lab: &FilterLab| {
        lab.frr
            .neighbor_json(lab.reef_ip)
            .ok()
            .and_then(|n| n.get("connectionsEstablished").and_then(Value::as_u64))
    };
    let connections = frr_connections(&lab);

    let filtered = lab.yaml(
        "filters:\n  - name: lab-policy\n    importV4: [{cidr: 10.99.0.0/16, matchOperator: In, action: Reject}]\n    \
         exportV4: [{cidr: 10.65.0.0/16, matchOperator: In, action: Accept, \
         operations: [{addCommunity: {value: \"64512:100\"}}]}]\n",
        &["filters: [lab-policy]"],
    );
    let reloaded = lab.reef.reload_yaml(&filtered);
    lab.ok(reloaded);
    if let Err(e) = wait_kernel_route(lab.reef.netns(), net("10.99.1.0/24"), WAIT, |r| r.is_none())
    {
        lab.fail(&format!("after SIGHUP with an import filter: {e}"));
    }
    wait_frr_path(&lab.frr, net("10.65.0.0/26"), WAIT, |p| {
        p.pointer("/community/string")
            .and_then(Value::as_str)
            .is_some_and(|c| c.split_whitespace().any(|c| c == "64512:100"))
    })
    .unwrap_or_else(|e| {
        lab.fail(&format!(
            "after SIGHUP FRR should see community 64512:100: {e}"
        ))
    });

    let unfiltered = lab.yaml("", &[]);
    let reloaded = lab.reef.reload_yaml(&unfiltered);
    lab.ok(reloaded);
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.99.1.0/24"),
        WAIT,
        via(&[lab.frr_ip]),
    ) {
        lab.fail(&format!(
            "after SIGHUP without the filter 10.99.1.0/24 should be used again (from the stored Adj-RIB-In): {e}"
        ));
    }
    if since(&lab) != established_since || frr_connections(&lab) != connections {
        lab.fail(&format!(
            "the session was reset by the reloads: since {established_since} -> {}, FRR connections {connections:?} -> {:?}",
            since(&lab),
            frr_connections(&lab)
        ));
    }
}

/// `rfc8212: true` on an eBGP session without filters: nothing is accepted (10.98.1.0/24 arrives but
/// is not used) and nothing is sent (FRR gets reefd's End-of-RIBs and no route).
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn rfc8212_without_filters_blocks_ebgp_both_ways() {
    let lab = start(&["10.98.1.0/24"], "", &["rfc8212: true"]);
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    // reefd has received FRR's route and FRR has reefd's End-of-RIB: both sides have decided.
    let decided = wait_until(WAIT, POLL, || {
        let received = lab
            .reef
            .peer(lab.frr_ip)
            .ok()?
            .get("updatesReceived")
            .and_then(Value::as_u64)?;
        // Without graceful restart FRR does not track End-of-RIB: count UPDATEs instead, the
        // two End-of-RIBs (IPv4, IPv6) are reefd's only ones when it exports nothing.
        let neighbor = lab.frr.neighbor_json(lab.reef_ip).ok()?;
        let updates = neighbor
            .pointer("/messageStats/updatesRecv")
            .and_then(Value::as_u64)?;
        (received >= 1 && updates >= 2).then_some(())
    });
    if decided.is_none() {
        lab.fail(&format!(
            "reefd never got FRR's UPDATE, or FRR never got reefd's End-of-RIB: reefd peer {:?}, \
             FRR neighbor {:?}",
            lab.reef.peer(lab.frr_ip),
            lab.frr.neighbor_json(lab.reef_ip)
        ));
    }
    let prefix = net("10.98.1.0/24");
    let used = wait_kernel_route(lab.reef.netns(), prefix, Duration::from_secs(2), |r| {
        r.is_some()
    });
    let rib = reef_rib_route(&lab.reef, prefix);
    if used.is_ok() || !matches!(rib, Ok(None)) {
        lab.fail(&format!(
            "rfc8212 without filters: {prefix} should not be used: kernel {used:?}, Loc-RIB {rib:?}"
        ));
    }
    let sent = lab.frr.routes_from(lab.reef_ip);
    if !matches!(&sent, Ok(set) if set.is_empty()) {
        lab.fail(&format!(
            "rfc8212 without filters: reefd should send nothing, FRR has {sent:?}"
        ));
    }
}

/// FRR prepends reefd's AS 64512 to 10.97.1.0/24 (not to 10.98.1.0/24): a loop for reefd unless
/// `numAllowedLocalASNumbers` allows one occurrence.
fn own_as_in_path(allowed: u8) {
    let prepend = |reef_ip: IpAddr| FrrOptions {
        global: format!(
            "ip prefix-list OWN seq 5 permit 10.97.1.0/24\n\
             route-map PREPEND permit 10\n match ip address prefix-list OWN\n set as-path prepend {REEF_AS}\nexit\n\
             route-map PREPEND permit 20\nexit"
        ),
        ipv4: format!("  neighbor {reef_ip} route-map PREPEND out"),
        ..FrrOptions::default()
    };
    let allow = format!("numAllowedLocalASNumbers: {allowed}");
    let lab = start_with_frr(&["10.97.1.0/24", "10.98.1.0/24"], prepend, "", &[&allow]);
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.98.1.0/24"),
        WAIT,
        via(&[lab.frr_ip]),
    ) {
        lab.fail(&e);
    }
    let own = net("10.97.1.0/24");
    if allowed == 0 {
        // Sent in the same burst as 10.98.1.0/24: decided by now.
        let kernel = lab.reef.netns().kernel_route(own, 254);
        let rib = reef_rib_route(&lab.reef, own);
        if !matches!(kernel, Ok(None)) || !matches!(rib, Ok(None)) {
            lab.fail(&format!(
                "{own} carries our AS (a loop) and should be dropped: kernel {kernel:?}, Loc-RIB {rib:?}"
            ));
        }
    } else if let Err(e) = wait_kernel_route(lab.reef.netns(), own, WAIT, via(&[lab.frr_ip])) {
        lab.fail(&format!(
            "numAllowedLocalASNumbers {allowed}: {own} (our AS once in the path) should be used: {e}"
        ));
    }
}

#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn own_as_in_the_path_is_a_loop() {
    own_as_in_path(0);
}

#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn own_as_in_the_path_allowed_once() {
    own_as_in_path(1);
}

/// importV6 Reject fd00:99::/32 In: of fd00:99:1::/64 and fd00:98:1::/64 (IPv6 over the IPv4
/// session) only the latter is used.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn import_v6_filter_rejects_a_range() {
    let filters = "filters:\n  - name: no-fd00-99\n    importV6: [{cidr: \"fd00:99::/32\", matchOperator: In, action: Reject}]\n";
    let lab = start(
        &["fd00:99:1::/64", "fd00:98:1::/64"],
        filters,
        &["filters: [no-fd00-99]"],
    );
    let all: [&dyn BgpDaemon; 2] = [&lab.frr, &lab.reef];
    ok(lab.reef.wait_established(lab.frr_ip, WAIT), &all, &[]);
    if let Err(e) = wait_kernel_route(lab.reef.netns(), net("fd00:98:1::/64"), WAIT, |r| {
        r.is_some_and(|r| r.next_hops.len() == 1)
    }) {
        lab.fail(&e);
    }
    let rejected = net("fd00:99:1::/64");
    let kernel = lab.reef.netns().kernel_route(rejected, 254);
    let rib = reef_rib_route(&lab.reef, rejected);
    if !matches!(kernel, Ok(None)) || !matches!(rib, Ok(None)) {
        lab.fail(&format!(
            "{rejected} should have been rejected on import: kernel {kernel:?}, Loc-RIB {rib:?}"
        ));
    }
}
