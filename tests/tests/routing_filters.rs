//! Filters and limits on a reefd <-> FRR eBGP session: an import filter rejects a prefix range, an
//! export filter adds a community FRR sees, and a max-prefix limit ends the session with
//! Cease / Maximum Number of Prefixes Reached.

use std::net::IpAddr;

use reef_lab::{BgpConfig, BgpDaemon, Frr, Neighbor, Netns, Reefd, require_root, veth, wait_until};
use reef_tests::routing::{
    POLL, REEF_AS, WAIT, fail, net, ok, peer_yaml, reef_rib_text, via, wait_frr_path,
    wait_kernel_route,
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
    require_root();
    let reef_ns = Netns::new("flreef").unwrap();
    let frr_ns = Netns::new("flfrr").unwrap();
    let link = veth(&reef_ns, &frr_ns).unwrap();
    let (reef_ip, frr_ip): (IpAddr, IpAddr) = (link.a.v4.into(), link.b.v4.into());
    let mut config = BgpConfig::new(FRR_AS, &link.b).neighbor(Neighbor::new(reef_ip, REEF_AS));
    for p in frr_prefixes {
        config = config.originate(net(p));
    }
    let frr = Frr::start(frr_ns, config).unwrap();
    let yaml = format!(
        "routerId: {reef_ip}\nasNumber: {REEF_AS}\nprefixes: [\"10.65.0.0/26\"]\n\
         fib: {{ table: 254 }}\n{reef_top}peers:\n{}",
        peer_yaml(frr_ip, FRR_AS, 9, 3, peer_extra)
    );
    let reef = ok(Reefd::start_yaml(reef_ns, &yaml), &[&frr], &[]);
    FilterLab {
        frr,
        reef,
        frr_ip,
        reef_ip,
    }
}

impl FilterLab {
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
    if !matches!(kernel, Ok(None)) {
        lab.fail(&format!(
            "{rejected} should have been rejected on import: kernel {kernel:?}"
        ));
    }
    if let Ok(rib) = lab.reef.rib_json(None) {
        if rib.to_string().contains("\"10.99.1.0/24\"") {
            // Present in the RIB view: only acceptable as a path marked rejected/filtered.
            let paths = lab.reef.rib_json(Some(rejected)).map(|p| p.to_string());
            let best = rib
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r.get("prefix").and_then(Value::as_str) == Some("10.99.1.0/24"));
            if best {
                lab.fail(&format!(
                    "{rejected} is in reefd's Loc-RIB despite the import filter: {paths:?}"
                ));
            }
        }
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
    let lab = start(
        &["10.98.1.0/24", "10.98.2.0/24", "10.98.3.0/24"],
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
}
