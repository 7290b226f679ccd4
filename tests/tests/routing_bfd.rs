//! BFD (RFC 5880/5881) between reefd and FRR's bfdd, 100 ms x 3: when the link goes silent (an
//! nftables drop inside FRR's namespace; the interfaces stay up) both sides take the BGP session
//! down long before the 60 s hold time and reefd removes the peer's route from the kernel. Without
//! BFD the same cut leaves the session up until the hold timer expires.

use std::net::IpAddr;
use std::time::Duration;

use reef_lab::{
    BgpConfig, BgpDaemon, Frr, FrrOptions, Neighbor, Netns, Reefd, require_root, veth, wait_until,
};
use reef_tests::routing::{
    POLL, REEF_AS, Stopwatch, WAIT, fail, net, ok, peer_yaml, reef_rib_text, reef_state, via,
    wait_kernel_route,
};
use serde_json::Value;

const FRR_AS: u32 = 65001;
const FRR_PREFIX: &str = "10.66.1.0/24";

struct BfdLab {
    frr: Frr,
    reef: Reefd,
    frr_ip: IpAddr,
    reef_ip: IpAddr,
}

impl BfdLab {
    /// `graceful_restart`: both sides configured for it (FRR `bgp graceful-restart`, reefd
    /// `gracefulRestart`), so only BFD's "withdraw at once" rule removes the route quickly.
    fn start(bfd: bool, graceful_restart: bool, hold: u16, keepalive: u16) -> BfdLab {
        require_root();
        let reef_ns = Netns::new("bfdreef").unwrap();
        let frr_ns = Netns::new("bfdfrr").unwrap();
        let link = veth(&reef_ns, &frr_ns).unwrap();
        let (reef_ip, frr_ip): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
        let mut options = if bfd {
            FrrOptions {
                global: "bfd\n profile lab\n  receive-interval 100\n  transmit-interval 100\n  \
                         detect-multiplier 3"
                    .to_string(),
                router: format!(" neighbor {reef_ip} bfd\n neighbor {reef_ip} bfd profile lab\n"),
                bfdd: true,
                ..FrrOptions::default()
            }
        } else {
            FrrOptions::default()
        };
        if graceful_restart {
            options
                .router
                .push_str(" bgp graceful-restart\n bgp graceful-restart preserve-fw-state\n");
        }
        let frr = Frr::start_with(
            frr_ns,
            BgpConfig::new(FRR_AS, &link.b)
                .neighbor(Neighbor::new(reef_ip, REEF_AS))
                .originate(net(FRR_PREFIX))
                .timers(hold, keepalive),
            options,
        )
        .unwrap();
        let bfd_line = "bfd: { enabled: true, minRx: 100ms, minTx: 100ms, multiplier: 3 }";
        let extra: &[&str] = if bfd { &[bfd_line] } else { &[] };
        let gr = if graceful_restart {
            "gracefulRestart: { restartTime: 120 }\n"
        } else {
            ""
        };
        let yaml = format!(
            "routerId: {reef_ip}\nasNumber: {REEF_AS}\nprefixes: [\"10.65.1.0/26\"]\n\
             fib: {{ table: 254 }}\n{gr}peers:\n{}",
            peer_yaml(frr_ip, FRR_AS, hold, keepalive, extra)
        );
        let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr], &[]);
        let lab = BfdLab {
            frr,
            reef,
            frr_ip,
            reef_ip,
        };
        lab.ok(lab.reef.wait_established(frr_ip, WAIT));
        lab.ok(lab.frr.wait_established(reef_ip, WAIT));
        if let Err(e) = wait_kernel_route(lab.reef.netns(), net(FRR_PREFIX), WAIT, via(&[frr_ip])) {
            lab.fail(&e);
        }
        lab
    }

    fn fail(&self, message: &str) -> ! {
        fail(
            &format!("{message}\nreefd rib: {}", reef_rib_text(&self.reef)),
            &[&self.frr, &self.reef],
            &[self.reef.netns()],
        )
    }

    fn ok<T>(&self, result: reef_lab::Result<T>) -> T {
        result.unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    /// FRR's `show bfd peers json` entry for reefd.
    fn frr_bfd_peer(&self) -> Option<Value> {
        let text = self.frr.vtysh(&["show bfd peers json"]).ok()?;
        let peers: Value = serde_json::from_str(&text).ok()?;
        let address = self.reef_ip.to_string();
        peers
            .as_array()?
            .iter()
            .find(|p| p.get("peer").and_then(Value::as_str) == Some(address.as_str()))
            .cloned()
    }

    fn frr_session_up(&self) -> bool {
        self.frr.is_established(self.reef_ip).unwrap_or(false)
    }

    fn reef_session_up(&self) -> bool {
        reef_state(&self.reef, self.frr_ip) == "Established"
    }

    fn kernel_route_present(&self) -> bool {
        matches!(
            self.reef.netns().kernel_route(net(FRR_PREFIX), 254),
            Ok(Some(_))
        )
    }
}

/// With BFD: the BFD session comes up (reefd answers FRR's bfdd); after the cut both BGP sessions
/// go down and reefd's kernel route goes within a 10 s bound, while the hold time is 60 s. After the
/// cut is lifted the session and route come back.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn bfd_takes_the_session_down_before_hold_expiry() {
    bfd_cut(false);
}

/// The same with graceful restart on both sides: a BFD failure is not a restart, so reefd
/// withdraws FRR's route at once instead of keeping it stale for FRR's 120 s restart time.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn bfd_down_withdraws_at_once_despite_graceful_restart() {
    bfd_cut(true);
}

fn bfd_cut(graceful_restart: bool) {
    let lab = BfdLab::start(true, graceful_restart, 60, 20);
    let mut last = None;
    let bfd_up = wait_until(WAIT, POLL, || {
        last = lab.frr_bfd_peer();
        let status = last.as_ref()?.get("status").and_then(Value::as_str)?;
        (status == "up").then_some(())
    });
    if bfd_up.is_none() {
        lab.fail(&format!(
            "FRR's BFD session with reefd never came up: {last:?}"
        ));
    }

    let ok_cut = lab.frr.netns().cut(lab.reef_ip);
    lab.ok(ok_cut);
    let clock = Stopwatch::start();
    let (mut reef_down, mut frr_down, mut route_gone) = (None, None, None);
    // Bounded well below the 60 s hold time: only BFD can explain a drop within it.
    wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        if reef_down.is_none() && !lab.reef_session_up() {
            reef_down = Some(clock.millis());
        }
        if frr_down.is_none() && !lab.frr_session_up() {
            frr_down = Some(clock.millis());
        }
        if route_gone.is_none() && !lab.kernel_route_present() {
            route_gone = Some(clock.millis());
        }
        (reef_down.is_some() && frr_down.is_some() && route_gone.is_some()).then_some(())
    });
    eprintln!(
        "after the cut (ms): reefd session down {reef_down:?}, FRR session down {frr_down:?}, \
         kernel route gone {route_gone:?}"
    );
    if reef_down.is_none() || frr_down.is_none() || route_gone.is_none() {
        lab.fail(&format!(
            "with BFD (100 ms x 3) and hold time 60 s, 10 s after the cut: reefd session down at \
             {reef_down:?} ms, FRR session down at {frr_down:?} ms, reefd kernel route gone at \
             {route_gone:?} ms (None = not yet); reefd peer {:?}; FRR bfd peer {:?}",
            lab.reef.peer(lab.frr_ip),
            lab.frr_bfd_peer()
        ));
    }
    // reefd says why it dropped the session.
    let status = lab.ok(lab.reef.peer(lab.frr_ip));
    let error = status
        .get("lastError")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !error.contains("BFD") {
        lab.fail(&format!(
            "reefd's status should name BFD as the reason: {status}"
        ));
    }
    // FRR says why it dropped the session: a Cease "BFD Down" it tried to send.
    let neighbor = lab.ok(lab.frr.neighbor_json(lab.reef_ip));
    let reason = neighbor
        .get("lastNotificationReason")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !reason.contains("BFD") {
        lab.fail(&format!(
            "FRR's session went down for another reason than BFD: {neighbor}"
        ));
    }

    // The link heals: BFD, the session and the route come back.
    let healed = lab.frr.netns().uncut();
    lab.ok(healed);
    lab.ok(lab
        .reef
        .wait_established(lab.frr_ip, Duration::from_secs(60)));
    if let Err(e) = wait_kernel_route(lab.reef.netns(), net(FRR_PREFIX), WAIT, via(&[lab.frr_ip])) {
        lab.fail(&format!("after the cut was lifted: {e}"));
    }
}

/// Without BFD (hold 9 s, keepalive 3 s): 3 s after the cut both sessions are still up and the
/// route still in the kernel; the session goes down only when reefd's hold timer expires.
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn without_bfd_the_session_waits_for_the_hold_timer() {
    let lab = BfdLab::start(false, false, 9, 3);
    let ok_cut = lab.frr.netns().cut(lab.reef_ip);
    lab.ok(ok_cut);
    // The last KEEPALIVE came at most 3 s before the cut: the 9 s hold timer cannot expire
    // within 3 s of it.
    std::thread::sleep(Duration::from_secs(3));
    if !lab.reef_session_up() || !lab.frr_session_up() || !lab.kernel_route_present() {
        lab.fail(&format!(
            "3 s after the cut without BFD: reefd up {}, FRR up {}, kernel route {}",
            lab.reef_session_up(),
            lab.frr_session_up(),
            lab.kernel_route_present()
        ));
    }
    let down = wait_until(WAIT, POLL, || (!lab.reef_session_up()).then_some(()));
    if down.is_none() {
        lab.fail("without BFD the session never went down after the hold time");
    }
    let status = lab.ok(lab.reef.peer(lab.frr_ip));
    let error = status
        .get("lastError")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !error.to_lowercase().contains("hold") {
        lab.fail(&format!(
            "reefd's session went down, but not by hold timer expiry: {status}"
        ));
    }
}

/// reefd with BFD enabled towards an FRR without BFD: the BFD session never comes up, which must not
/// keep the BGP session down or take it down (RFC 5882 §4.2: BFD only acts once it was up).
#[test]
#[ignore = "needs root: network namespaces and daemons"]
fn bfd_on_one_side_only_leaves_the_session_alone() {
    require_root();
    let reef_ns = Netns::new("bfdreef").unwrap();
    let frr_ns = Netns::new("bfdfrr").unwrap();
    let link = veth(&reef_ns, &frr_ns).unwrap();
    let (reef_ip, frr_ip): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
    let frr = Frr::start(
        frr_ns,
        BgpConfig::new(FRR_AS, &link.b)
            .neighbor(Neighbor::new(reef_ip, REEF_AS))
            .originate(net(FRR_PREFIX)),
    )
    .unwrap();
    let yaml = format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nfib: {{ table: 254 }}\npeers:\n{}",
        peer_yaml(
            frr_ip,
            FRR_AS,
            9,
            3,
            &["bfd: { enabled: true, minRx: 100ms, minTx: 100ms, multiplier: 3 }"]
        )
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr], &[]);
    let lab = BfdLab {
        frr,
        reef,
        frr_ip,
        reef_ip,
    };
    lab.ok(lab.reef.wait_established(frr_ip, WAIT));
    if let Err(e) = wait_kernel_route(lab.reef.netns(), net(FRR_PREFIX), WAIT, via(&[frr_ip])) {
        lab.fail(&e);
    }
    // Watch for 5 s (many BFD detection times): the session stays up.
    let mut dropped = None;
    wait_until(Duration::from_secs(5), POLL, || {
        if !lab.reef_session_up() || !lab.frr_session_up() {
            dropped.get_or_insert_with(|| lab.reef.peer(lab.frr_ip).map(|p| p.to_string()));
        }
        None::<()>
    });
    if let Some(status) = dropped {
        lab.fail(&format!(
            "the session went down although BFD never came up (peer without BFD): {status:?}"
        ));
    }
}
