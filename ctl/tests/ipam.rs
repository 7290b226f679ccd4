//! `reefctl ipam` against a real etcd: show, check a deleted node, release from the report.

use std::process::Command;

use reef_crds::{IPPool, IPPoolSpec};
use reef_datastore::{Datastore, EtcdConfig};
use reef_ipam::{AutoAssignArgs, Ipam};
use reef_lab::etcd::EtcdServer;

fn reefctl(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reefctl"))
        .arg("ipam")
        .args(args)
        .env("REEF_ETCD_ENDPOINTS", endpoint)
        .output()
        .expect("run reefctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn check_finds_a_deleted_node_and_release_from_report_frees_it() {
    let etcd = EtcdServer::start().expect("start etcd");
    let endpoint = etcd.endpoint();
    let datastore = Datastore::etcd(EtcdConfig::new([endpoint.clone()]))
        .await
        .unwrap();
    let spec: IPPoolSpec =
        serde_json::from_value(serde_json::json!({"cidr": "10.66.0.0/24"})).unwrap();
    datastore
        .store::<IPPool>()
        .create(&IPPool::new("pods", spec))
        .await
        .unwrap();
    let ipam = Ipam::new(&datastore);
    let assign = |node: &str, handle: &str, n| AutoAssignArgs {
        handle_id: handle.into(),
        num_v4: n,
        node: node.into(),
        ..Default::default()
    };
    let kept = ipam
        .auto_assign(&assign("node-a", "net.a", 3))
        .await
        .unwrap();
    ipam.auto_assign(&assign("node-gone", "net.g", 2))
        .await
        .unwrap();

    let (ok, text) = reefctl(&endpoint, &["show", "--show-blocks"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("10.66.0.0/24")
            && text.contains("host:node-a")
            && text.contains("host:node-gone"),
        "{text}"
    );
    assert!(text.contains("2.0%"), "5 of 256 in use: {text}");

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let report_arg = report.to_str().unwrap();
    let (ok, text) = reefctl(&endpoint, &["check", "-o", report_arg, "--nodes", "node-a"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("allocated by nodes that no longer exist (2)"),
        "{text}"
    );
    assert!(
        text.contains("block affinities of nodes that no longer exist (1)"),
        "{text}"
    );
    assert!(text.contains("3 problems found"), "{text}");

    let (ok, text) = reefctl(&endpoint, &["release", "--from-report", report_arg]);
    assert!(ok, "{text}");
    assert!(text.contains("released 2 addresses"), "{text}");
    let (ok, text) = reefctl(&endpoint, &["check", "--nodes", "node-a"]);
    assert!(ok && text.contains("0 problems found"), "{text}");

    let ip = kept.v4[0].ip.to_string();
    let (ok, text) = reefctl(&endpoint, &["release", "--ip", &ip]);
    assert!(
        ok && text.contains(&format!("released {ip} (handle net.a)")),
        "{text}"
    );
    assert_eq!(ipam.ips_by_handle("net.a").await.unwrap().len(), 2);
}

#[test]
fn an_unreachable_etcd_is_named_in_the_error() {
    let (ok, text) = reefctl("http://127.0.0.1:9", &["show"]);
    assert!(!ok);
    assert!(text.contains("http://127.0.0.1:9"), "{text}");
}
