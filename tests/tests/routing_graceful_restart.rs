//! Graceful restart (RFC 4724) across a routed path: host A — FRR — reefd — host B, FRR with
//! `bgp graceful-restart` (and `preserve-fw-state`), reefd with `gracefulRestart` and `fib`. A bounded
//! continuous ping from host A to host B runs while one of the speakers is killed with SIGKILL and
//! started again: not one ping may be lost.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reef_lab::{
    BgpConfig, BgpDaemon, Frr, FrrOptions, Neighbor, Netns, Ping, Reefd, require_root, veth,
    wait_until,
};
use reef_tests::routing::{
    POLL, REEF_AS, Stopwatch, WAIT, fail, frr_paths, is_stale, net, ok, peer_yaml, reef_rib_route,
    reef_rib_text, reef_state, via, wait_frr_path, wait_kernel_route,
};
use serde_json::Value;

const FRR_AS: u32 = 65001;
/// 40 s of pings, 50 ms apart: long enough for a kill, a restart and End-of-RIB.
const PING_COUNT: u32 = 800;
const PING_INTERVAL: Duration = Duration::from_millis(50);

const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 65, 1, 2);

/// Graceful restart timers of a [`GrLab`].
struct GrTimes {
    /// What FRR advertises (how long reefd keeps FRR's routes while it restarts).
    frr_restart_time: u16,
    /// reefd's `selectionDeferralTime`.
    selection_deferral: u32,
    /// Extra lines of reefd's peer entry for FRR (e.g. `maxRestartTime`).
    peer_extra: &'static [&'static str],
}

impl Default for GrTimes {
    fn default() -> Self {
        GrTimes {
            frr_restart_time: 120,
            selection_deferral: 30,
            peer_extra: &[],
        }
    }
}

/// The four namespaces and the two speakers.
struct GrLab {
    // Drop order: speakers first, then the hosts.
    frr: Frr,
    reef: Reefd,
    frr_ip: IpAddr,
    reef_ip: IpAddr,
    /// reefd's YAML (to restart it with a changed copy).
    yaml: String,
    host_a: Netns,
    host_b: Netns,
}

impl GrLab {
    /// FRR originates `frr_prefixes` (10.66.1.0/24 is host A's subnet); reefd originates
    /// 10.65.1.0/24 (host B's subnet). Restart times 120 s, selection deferral 30 s.
    fn start(frr_prefixes: &[&str]) -> GrLab {
        GrLab::start_with(frr_prefixes, GrTimes::default())
    }

    fn start_with(frr_prefixes: &[&str], times: GrTimes) -> GrLab {
        require_root();
        let host_a = Netns::new("grha").unwrap();
        let frr_ns = Netns::new("grfrr").unwrap();
        let reef_ns = Netns::new("grreef").unwrap();
        let host_b = Netns::new("grhb").unwrap();
        let a_link = veth(&frr_ns, &host_a).unwrap();
        let core = veth(&frr_ns, &reef_ns).unwrap();
        let b_link = veth(&reef_ns, &host_b).unwrap();
        for (router, host, router_end, host_end, router_addr, host_addr) in [
            (
                &frr_ns,
                &host_a,
                &a_link.a,
                &a_link.b,
                "10.66.1.1",
                "10.66.1.2",
            ),
            (
                &reef_ns,
                &host_b,
                &b_link.a,
                &b_link.b,
                "10.65.1.1",
                "10.65.1.2",
            ),
        ] {
            router
                .ip(&[
                    "addr",
                    "add",
                    &format!("{router_addr}/24"),
                    "dev",
                    &router_end.ifname,
                ])
                .unwrap();
            host.ip(&[
                "addr",
                "add",
                &format!("{host_addr}/24"),
                "dev",
                &host_end.ifname,
            ])
            .unwrap();
            host.ip(&["route", "add", "default", "via", router_addr])
                .unwrap();
            router.enable_forwarding().unwrap();
        }
        let (frr_ip, reef_ip): (IpAddr, IpAddr) = (core.a.v4.into(), core.b.v4.into());

        let mut frr_config =
            BgpConfig::new(FRR_AS, &core.a).neighbor(Neighbor::new(reef_ip, REEF_AS));
        for p in frr_prefixes {
            frr_config = frr_config.originate(net(p));
        }
        let frr = Frr::start_with(
            frr_ns,
            frr_config,
            FrrOptions {
                router: format!(
                    " bgp graceful-restart\n bgp graceful-restart preserve-fw-state\n \
                     bgp graceful-restart restart-time {}",
                    times.frr_restart_time
                ),
                ..FrrOptions::default()
            },
        )
        .unwrap();
        let yaml = format!(
            "routerId: {reef_ip}\nasNumber: {REEF_AS}\nprefixes: [\"10.65.1.0/24\"]\n\
             gracefulRestart: {{ restartTime: 120, staleRoutesTime: 360, selectionDeferralTime: {} }}\n\
             fib: {{ table: 254 }}\npeers:\n{}",
            times.selection_deferral,
            peer_yaml(frr_ip, FRR_AS, 9, 3, times.peer_extra)
        );
        let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr], &[]);
        let lab = GrLab {
            frr,
            reef,
            frr_ip,
            reef_ip,
            yaml,
            host_a,
            host_b,
        };
        lab.ok(lab.reef.wait_established(frr_ip, WAIT));
        lab.ok(lab.frr.wait_established(reef_ip, WAIT));
        for p in frr_prefixes {
            lab.kernel_via(lab.reef.netns(), p, frr_ip);
        }
        lab.kernel_via(lab.frr.netns(), "10.65.1.0/24", reef_ip);
        // The path works before the test starts counting.
        let pinged = wait_until(WAIT, POLL, || {
            lab.host_a
                .exec(&["ping", "-n", "-c", "1", "-W", "1", &HOST_B.to_string()])
                .ok()
        });
        if pinged.is_none() {
            lab.fail("host A never reached host B before the restart");
        }
        lab
    }

    fn daemons(&self) -> [&dyn BgpDaemon; 2] {
        [&self.frr, &self.reef]
    }

    fn fail(&self, message: &str) -> ! {
        fail(
            &format!("{message}\nreefd rib: {}", reef_rib_text(&self.reef)),
            &self.daemons(),
            &[
                &self.host_a,
                self.frr.netns(),
                self.reef.netns(),
                &self.host_b,
            ],
        )
    }

    fn ok<T>(&self, result: reef_lab::Result<T>) -> T {
        result.unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    fn kernel_via(&self, ns: &Netns, prefix: &str, next_hop: IpAddr) {
        if let Err(e) = wait_kernel_route(ns, net(prefix), WAIT, via(&[next_hop])) {
            self.fail(&e);
        }
    }

    fn ping(&self) -> Ping {
        self.ok(Ping::start(
            &self.host_a,
            HOST_B.into(),
            PING_COUNT,
            PING_INTERVAL,
        ))
    }

    /// Waits for the ping to end and fails unless every echo came back.
    fn assert_no_loss(&self, mut ping: Ping) {
        let covered = ping.is_running();
        let summary = self.ok(ping.finish());
        eprintln!(
            "ping: {} transmitted, {} received (still running when the restart was over: {covered})",
            summary.transmitted, summary.received
        );
        if summary.lost() > 0 || summary.transmitted == 0 {
            self.fail(&format!(
                "{} of {} pings lost across the restart:\n{}\n{}",
                summary.lost(),
                summary.transmitted,
                summary.loss_lines().join("\n"),
                summary
                    .output
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
}

/// FRR's path for `prefix` from reefd: `None` = no path, `Some(stale)` otherwise.
fn frr_path_stale(frr: &Frr, prefix: &str) -> Option<bool> {
    let paths = frr_paths(frr, net(prefix)).ok()?;
    let path = paths.first()?;
    Some(path.get("stale").and_then(Value::as_bool).unwrap_or(false))
}

/// reefd killed with SIGKILL and started again with the same config: FRR (helper) keeps reefd's
/// route as stale the whole time (never withdrawn), the ping loses nothing, and after reefd's
/// End-of-RIB the stale flag is gone.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_restart_keeps_forwarding() {
    restart_reefd_under_ping(|lab| lab.reef.crash());
}

/// The same with a planned restart: SIGTERM makes reefd (graceful restart configured) close its
/// session without NOTIFICATION, leave its kernel routes and exit 0.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_graceful_stop_keeps_forwarding() {
    restart_reefd_under_ping(|lab| {
        let status = lab.reef.terminate(Duration::from_secs(10));
        let status = lab.ok(status);
        if !status.is_some_and(|s| s.success()) {
            lab.fail(&format!("reefd did not exit 0 on SIGTERM: {status:?}"));
        }
    });
}

/// Stops reefd with `stop` while host A pings host B, starts it again and checks FRR's view of
/// reefd's prefix throughout (stale, never withdrawn, fresh after End-of-RIB) and the ping.
fn restart_reefd_under_ping(stop: impl FnOnce(&mut GrLab)) {
    let mut lab = GrLab::start(&["10.66.1.0/24"]);
    let prefix = "10.65.1.0/24";
    let ping = lab.ping();
    std::thread::sleep(Duration::from_secs(1));
    let clock = Stopwatch::start();
    stop(&mut lab);

    // FRR marks the route stale and keeps it; it must never disappear.
    let mut withdrawn_at = None;
    let mut stale_at = None;
    let went_stale = wait_until(Duration::from_secs(15), POLL, || {
        match frr_path_stale(&lab.frr, prefix) {
            None => {
                withdrawn_at.get_or_insert(clock.millis());
                None
            }
            Some(true) => {
                stale_at = Some(clock.millis());
                Some(())
            }
            Some(false) => None,
        }
    });
    if went_stale.is_none() {
        lab.fail(&format!(
            "FRR never marked {prefix} stale after reefd stopped (withdrawn at {withdrawn_at:?} ms); paths {:?}",
            frr_paths(&lab.frr, net(prefix))
        ));
    }

    let restarted = lab.reef.respawn();
    lab.ok(restarted);
    // Until End-of-RIB the route stays (stale or refreshed); after it, it is fresh.
    let mut fresh = false;
    let settled = wait_until(Duration::from_secs(40), POLL, || {
        match frr_path_stale(&lab.frr, prefix) {
            None => {
                withdrawn_at.get_or_insert(clock.millis());
                None
            }
            Some(stale) => {
                let up = lab.frr.is_established(lab.reef_ip).unwrap_or(false)
                    && reef_state(&lab.reef, lab.frr_ip) == "Established";
                fresh = !stale;
                (up && !stale).then_some(())
            }
        }
    });
    eprintln!(
        "reefd restart: FRR stale after {stale_at:?} ms, fresh again after {} ms",
        clock.millis()
    );
    if let Some(at) = withdrawn_at {
        lab.fail(&format!(
            "FRR withdrew {prefix} {at} ms after reefd stopped (graceful restart not honoured)"
        ));
    }
    if settled.is_none() {
        lab.fail(&format!(
            "after reefd's restart FRR's {prefix} never lost its stale flag (no End-of-RIB from reefd?); fresh={fresh}, paths {:?}, FRR neighbor {:?}",
            frr_paths(&lab.frr, net(prefix)),
            lab.frr.neighbor_json(lab.reef_ip).map(|n| n.get("gracefulRestartInfo").cloned())
        ));
    }
    // reefd's own kernel route to host A survived its restart (kept, then confirmed).
    lab.kernel_via(lab.reef.netns(), "10.66.1.0/24", lab.frr_ip);
    lab.assert_no_loss(ping);
}

/// FRR (bgpd, bfdd and zebra) killed with SIGKILL and started again with GR: reefd (helper) keeps
/// FRR's routes in the kernel while FRR is away, the ping loses nothing; after FRR's End-of-RIB the
/// route FRR no longer sends (10.66.2.0/24) is removed and the one it sends again stays.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn frr_restart_reefd_keeps_routes() {
    let mut lab = GrLab::start(&["10.66.1.0/24", "10.66.2.0/24"]);
    let ping = lab.ping();
    std::thread::sleep(Duration::from_secs(1));
    let clock = Stopwatch::start();
    lab.frr.crash();
    lab.frr.set_originated(vec![net("10.66.1.0/24")]);

    // reefd notices (TCP closed without NOTIFICATION) and keeps both routes in the kernel.
    let noticed = wait_until(Duration::from_secs(15), POLL, || {
        (reef_state(&lab.reef, lab.frr_ip) != "Established").then_some(())
    });
    if noticed.is_none() {
        lab.fail("reefd never noticed that FRR went away");
    }
    let mut removed = Vec::new();
    // Watch for 2 s while FRR is down: both routes must stay.
    wait_until(Duration::from_secs(2), POLL, || {
        for p in ["10.66.1.0/24", "10.66.2.0/24"] {
            if !matches!(lab.reef.netns().kernel_route(net(p), 254), Ok(Some(_)))
                && !removed.iter().any(|(q, _)| *q == p)
            {
                removed.push((p, clock.millis()));
            }
        }
        None::<()>
    });
    let stale_in_rib = reef_rib_text(&lab.reef);
    if !removed.is_empty() {
        lab.fail(&format!(
            "reefd removed FRR's routes from the kernel while FRR restarted (GR helper): {removed:?}\nrib while FRR was down: {stale_in_rib}"
        ));
    }
    // ... and marks them stale in its Loc-RIB.
    for p in ["10.66.1.0/24", "10.66.2.0/24"] {
        let route = lab.ok(reef_rib_route(&lab.reef, net(p)));
        if !route.as_ref().is_some_and(is_stale) {
            lab.fail(&format!(
                "while FRR restarts reefd should hold {p} as stale: {route:?}"
            ));
        }
    }

    let restarted = lab.frr.respawn(Some(120));
    lab.ok(restarted);
    lab.ok(lab.reef.wait_established(lab.frr_ip, WAIT));
    // After FRR's End-of-RIB: the route FRR no longer sends goes, the other stays.
    if let Err(e) = wait_kernel_route(lab.reef.netns(), net("10.66.2.0/24"), WAIT, |r| r.is_none())
    {
        lab.fail(&format!(
            "the stale route FRR did not send again was not removed after FRR's End-of-RIB: {e}"
        ));
    }
    eprintln!(
        "FRR restart: stale route removed {} ms after the kill",
        clock.millis()
    );
    lab.kernel_via(lab.reef.netns(), "10.66.1.0/24", lab.frr_ip);
    // Nothing of FRR's is still marked stale after its End-of-RIB.
    let route = lab.ok(reef_rib_route(&lab.reef, net("10.66.1.0/24")));
    if route.as_ref().is_none_or(is_stale) {
        lab.fail(&format!(
            "after FRR's End-of-RIB 10.66.1.0/24 should be fresh in reefd's Loc-RIB: {route:?}"
        ));
    }
    eprintln!("reefd rib while FRR was down: {stale_in_rib}");
    lab.assert_no_loss(ping);
}

/// reefd killed; while it is down FRR stops originating 10.66.2.0/24 (so it will never send it
/// again); reefd started again: once it has FRR's End-of-RIB (FIB sync after the restart) the
/// kernel route its previous run left for 10.66.2.0/24 is removed, 10.66.1.0/24 stays, and no ping
/// through 10.66.1.0/24 is lost.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_restart_removes_routes_withdrawn_meanwhile() {
    let mut lab = GrLab::start(&["10.66.1.0/24", "10.66.2.0/24"]);
    let ping = lab.ping();
    std::thread::sleep(Duration::from_secs(1));
    lab.reef.crash();
    let withdrawn = lab.frr.withdraw(net("10.66.2.0/24"));
    lab.ok(withdrawn);
    // The kernel route of the previous run is still there while reefd is away.
    if !matches!(
        lab.reef.netns().kernel_route(net("10.66.2.0/24"), 254),
        Ok(Some(_))
    ) {
        lab.fail("the kernel route of reefd's previous run vanished while reefd was down");
    }
    let restarted = lab.reef.respawn();
    lab.ok(restarted);
    lab.ok(lab.reef.wait_established(lab.frr_ip, WAIT));
    // Bound: the selection deferral (30 s) plus a margin, should FRR's End-of-RIB not count.
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.66.2.0/24"),
        Duration::from_secs(45),
        |r| r.is_none(),
    ) {
        lab.fail(&format!(
            "after the restart reefd kept a kernel route FRR no longer sends: {e}"
        ));
    }
    lab.kernel_via(lab.reef.netns(), "10.66.1.0/24", lab.frr_ip);
    lab.assert_no_loss(ping);
}

/// FRR killed for good: reefd keeps its routes while FRR's advertised restart time runs, then
/// removes them. `times` make that short in one of two ways; `bound` is well below 120 s (FRR's
/// default restart time), so only the configured time can explain the removal.
fn frr_gone_for_good(times: GrTimes, what: &str) {
    let mut lab = GrLab::start_with(&["10.66.1.0/24"], times);
    lab.frr.crash();
    let noticed = wait_until(Duration::from_secs(15), POLL, || {
        (reef_state(&lab.reef, lab.frr_ip) != "Established").then_some(())
    });
    if noticed.is_none() {
        lab.fail("reefd never noticed that FRR went away");
    }
    let clock = Stopwatch::start();
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.66.1.0/24"),
        Duration::from_secs(30),
        |r| r.is_none(),
    ) {
        lab.fail(&format!(
            "FRR stayed away, yet {what} did not end the stale routes: {e}"
        ));
    }
    eprintln!(
        "{what}: FRR's route removed {} ms after reefd noticed",
        clock.millis()
    );
    let rib = lab.ok(reef_rib_route(&lab.reef, net("10.66.1.0/24")));
    if rib.is_some() {
        lab.fail(&format!(
            "FRR's route left the kernel but not the Loc-RIB: {rib:?}"
        ));
    }
}

/// FRR advertises restart time 5 s and never comes back: its routes go after about 5 s.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn frr_gone_for_good_routes_go_after_its_restart_time() {
    frr_gone_for_good(
        GrTimes {
            frr_restart_time: 5,
            ..GrTimes::default()
        },
        "FRR's restart time (5 s)",
    );
}

/// FRR advertises 120 s, reefd caps it with `maxRestartTime: 3`.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn max_restart_time_caps_how_long_stale_routes_stay() {
    frr_gone_for_good(
        GrTimes {
            peer_extra: &["maxRestartTime: 3"],
            ..GrTimes::default()
        },
        "maxRestartTime (3 s)",
    );
}

/// reefd killed, FRR killed too and never back, reefd started again (selection deferral 5 s): with
/// no End-of-RIB to wait for, reefd syncs its FIB when the deferral ends and removes the kernel route
/// its previous run installed for FRR's prefix.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_restart_without_its_peer_syncs_after_the_selection_deferral() {
    let mut lab = GrLab::start_with(
        &["10.66.1.0/24"],
        GrTimes {
            selection_deferral: 5,
            ..GrTimes::default()
        },
    );
    lab.reef.crash();
    lab.frr.crash();
    let restarted = lab.reef.respawn();
    lab.ok(restarted);
    // Right after the restart the previous run's route is still there (the sync is deferred).
    if !matches!(
        lab.reef.netns().kernel_route(net("10.66.1.0/24"), 254),
        Ok(Some(_))
    ) {
        lab.fail(
            "reefd removed the previous run's kernel route at start, before the selection deferral",
        );
    }
    if let Err(e) = wait_kernel_route(
        lab.reef.netns(),
        net("10.66.1.0/24"),
        Duration::from_secs(30),
        |r| r.is_none(),
    ) {
        lab.fail(&format!(
            "with no peer back, the selection deferral (5 s) should end in a FIB sync removing the stale route: {e}"
        ));
    }
}

/// reefd killed and started again with a config that no longer originates 10.65.2.0/24 (it still
/// originates 10.65.1.0/24): FRR keeps both stale meanwhile, and after reefd's End-of-RIB drops the
/// one reefd did not send again and keeps the other, fresh.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn reefd_restart_with_a_prefix_less_drops_it_after_end_of_rib() {
    let mut lab = GrLab::start(&["10.66.1.0/24"]);
    let two = lab.yaml.replace(
        "prefixes: [\"10.65.1.0/24\"]",
        "prefixes: [\"10.65.1.0/24\", \"10.65.2.0/24\"]",
    );
    // Prefixes are not changed by a SIGHUP reload: restart with both.
    let changed = lab.reef.set_yaml(&two);
    lab.ok(changed);
    let restarted = lab.reef.respawn();
    lab.ok(restarted);
    if let Err(e) = wait_frr_path(&lab.frr, net("10.65.2.0/24"), WAIT, |p| {
        p.get("stale").is_none()
    }) {
        lab.fail(&format!("FRR never learned 10.65.2.0/24: {e}"));
    }
    lab.reef.crash();
    let went_stale = wait_until(Duration::from_secs(15), POLL, || {
        (frr_path_stale(&lab.frr, "10.65.2.0/24") == Some(true)).then_some(())
    });
    if went_stale.is_none() {
        lab.fail("FRR never marked 10.65.2.0/24 stale after reefd was killed");
    }
    let one = lab.yaml.clone();
    let changed = lab.reef.set_yaml(&one);
    lab.ok(changed);
    let restarted = lab.reef.respawn();
    lab.ok(restarted);
    let gone = wait_until(WAIT, POLL, || {
        (frr_path_stale(&lab.frr, "10.65.2.0/24").is_none()
            && frr_path_stale(&lab.frr, "10.65.1.0/24") == Some(false))
        .then_some(())
    });
    if gone.is_none() {
        lab.fail(&format!(
            "after reefd's restart FRR should have dropped 10.65.2.0/24 and hold 10.65.1.0/24 fresh: \
             {:?} / {:?}",
            frr_paths(&lab.frr, net("10.65.2.0/24")),
            frr_paths(&lab.frr, net("10.65.1.0/24"))
        ));
    }
}
