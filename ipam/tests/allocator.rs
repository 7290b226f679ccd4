//! The allocator on the in-memory datastore: Calico's semantics, one behaviour per test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{add_pool, memory, set_config, v4};
use ipnet::IpNet;
use reef_crds::{
    AffinityState, AffinityType, BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMHandle,
};
use reef_ipam::convert::{affinity_name, block_name};
use reef_ipam::{
    AssignIpArgs, AutoAssignArgs, CheckInput, IpamError, ReleaseOutcome, ReleaseRequest, Use,
};
use serde_json::json;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[tokio::test]
async fn assigns_from_a_claimed_affine_block_and_releases_by_handle() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p4", json!({"cidr": "10.10.0.0/24"})).await;
    add_pool(&ds, "p6", json!({"cidr": "fd00:10::/120"})).await;
    let mut args = v4("node-a", "net.c1", 2);
    args.num_v6 = 1;
    let got = ipam.auto_assign(&args).await.unwrap();
    assert_eq!(got.v4.len(), 2);
    assert_eq!(got.v6.len(), 1);
    let blocks = ipam.node_blocks("node-a").await.unwrap();
    assert_eq!(blocks.len(), 2, "one /26 and one /122: {blocks:?}");
    for a in got.v4.iter().chain(&got.v6) {
        assert!(
            blocks.iter().any(|b| b.contains(&a.ip)),
            "{} inside an affine block",
            a.ip
        );
    }
    let v4_block = *blocks.iter().find(|b| b.addr().is_ipv4()).unwrap();
    assert_eq!(v4_block.prefix_len(), 26);
    let affinity = ds
        .store::<BlockAffinity>()
        .get(None, &affinity_name("node-a", v4_block))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(affinity.spec.state, AffinityState::Confirmed);
    let block = ds
        .store::<IPAMBlock>()
        .get(None, &block_name(v4_block))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(block.spec.affinity.as_deref(), Some("host:node-a"));
    let handle = ds
        .store::<IPAMHandle>()
        .get(None, "net.c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.spec.block.values().sum::<u32>(), 3);

    let mut released = ipam.release_by_handle("net.c1").await.unwrap();
    released.sort();
    let mut expected: Vec<IpAddr> = got.v4.iter().chain(&got.v6).map(|a| a.ip).collect();
    expected.sort();
    assert_eq!(released, expected);
    assert!(
        ds.store::<IPAMHandle>()
            .get(None, "net.c1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ipam.release_by_handle("net.c1").await.unwrap().is_empty(),
        "idempotent"
    );
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
    assert_eq!(report.allocations, 0);
}

#[tokio::test]
async fn borrows_only_when_no_block_can_be_claimed_and_never_under_strict_affinity() {
    let (ds, ipam) = memory();
    // Two /26 blocks in total.
    add_pool(&ds, "p", json!({"cidr": "10.20.0.0/25"})).await;
    ipam.auto_assign(&v4("a", "net.a", 60)).await.unwrap();
    ipam.auto_assign(&v4("b", "net.b", 10)).await.unwrap();
    // a's block has 4 free addresses, b's 54: a must claim nothing (none left), then borrow from b.
    let got = ipam.auto_assign(&v4("a", "net.a2", 10)).await.unwrap();
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.borrowed.len(), 6, "{:?}", report.borrowed);
    assert!(
        report
            .borrowed
            .iter()
            .all(|b| b.node == "a" && b.block_node == "b")
    );
    assert_eq!(report.problem_count(), 0);
    assert_eq!(got.v4.len(), 10);
    ipam.release_by_handle("net.a2").await.unwrap();

    let (ds2, strict) = memory();
    add_pool(&ds2, "p", json!({"cidr": "10.20.0.0/25"})).await;
    set_config(&ds2, true, 0).await;
    strict.auto_assign(&v4("a", "net.a", 64)).await.unwrap();
    strict.auto_assign(&v4("b", "net.b", 1)).await.unwrap();
    let err = strict.auto_assign(&v4("a", "net.a2", 1)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IpamError::Exhausted(_)), "{text}");
    assert!(
        text.contains("10.20.0.0/25") && text.contains("strictAffinity is on"),
        "{text}"
    );
    drop(ds);
}

#[tokio::test]
async fn max_blocks_per_host_and_all_or_nothing() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.30.0.0/24", "blockSize": 28})).await;
    set_config(&ds, true, 2).await;
    let err = ipam.auto_assign(&v4("a", "net.big", 40)).await.unwrap_err();
    assert!(err.to_string().contains("maxBlocksPerHost=2"), "{err}");
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(
        report.allocations, 0,
        "a failed assignment leaves nothing allocated"
    );
    assert!(report.orphan_handles.is_empty(), "{report:#?}");
    ipam.auto_assign(&v4("a", "net.ok", 32)).await.unwrap();
    assert_eq!(ipam.node_blocks("a").await.unwrap().len(), 2);
}

#[tokio::test]
async fn pools_are_filtered_by_selector_disabled_and_use() {
    let (ds, ipam) = memory();
    add_pool(
        &ds,
        "rack1",
        json!({"cidr": "10.40.0.0/24", "nodeSelector": "rack == 'r1'"}),
    )
    .await;
    add_pool(
        &ds,
        "off",
        json!({"cidr": "10.41.0.0/24", "disabled": true}),
    )
    .await;
    add_pool(
        &ds,
        "tunnels",
        json!({"cidr": "10.42.0.0/24", "allowedUses": ["Tunnel"]}),
    )
    .await;
    let err = ipam.auto_assign(&v4("n1", "net.x", 1)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no IPv4 IP pool matches node n1") && text.contains("nodeSelector"),
        "{text}"
    );
    assert!(text.contains("10.41.0.0/24 is disabled"), "{text}");

    let mut args = v4("n1", "net.y", 1);
    args.node_labels = BTreeMap::from([("rack".into(), "r1".into())]);
    let got = ipam.auto_assign(&args).await.unwrap();
    assert!(net("10.40.0.0/24").contains(&got.v4[0].ip));

    let tunnel = AutoAssignArgs {
        use_: Use::Tunnel,
        ..v4("n1", &reef_ipam::tunnel_handle("n1"), 1)
    };
    let got = ipam.auto_assign(&tunnel).await.unwrap();
    assert!(
        net("10.42.0.0/24").contains(&got.v4[0].ip),
        "tunnel from the tunnel pool: {}",
        got.v4[0].ip
    );
    assert!(
        ds.store::<IPAMHandle>()
            .get(None, "vxlan-tunnel-addr-n1")
            .await
            .unwrap()
            .is_some()
    );

    let err = ipam
        .auto_assign(&AutoAssignArgs {
            num_v4: 0,
            num_v6: 1,
            ..v4("n1", "net.z", 0)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no IPv6 IPPool exists"), "{err}");
}

#[tokio::test]
async fn a_pending_affinity_left_by_a_crash_is_reused() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.50.0.0/26"})).await;
    let cidr = net("10.50.0.0/26");
    let pending = BlockAffinity::new(
        &affinity_name("a", cidr),
        BlockAffinitySpec {
            state: AffinityState::Pending,
            node: "a".into(),
            cidr: cidr.to_string(),
            deleted: false,
            type_: AffinityType::Host,
        },
    );
    ds.store::<BlockAffinity>().create(&pending).await.unwrap();
    let got = ipam.auto_assign(&v4("a", "net.c", 1)).await.unwrap();
    assert!(cidr.contains(&got.v4[0].ip));
    let affinity = ds
        .store::<BlockAffinity>()
        .get(None, &affinity_name("a", cidr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(affinity.spec.state, AffinityState::Confirmed);
    // Another node that raced for the same block lost it: its pending affinity is gone, it borrows.
    let got = ipam.auto_assign(&v4("b", "net.d", 1)).await.unwrap();
    assert!(cidr.contains(&got.v4[0].ip));
    assert!(
        ds.store::<BlockAffinity>()
            .get(None, &affinity_name("b", cidr))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_stale_release_never_frees_a_reused_address() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.60.0.0/26"})).await;
    let ip: IpAddr = "10.60.0.7".parse().unwrap();
    let first = ipam
        .assign_ip(&AssignIpArgs {
            ip,
            handle_id: "net.old".into(),
            node: "a".into(),
            attrs: BTreeMap::new(),
        })
        .await
        .unwrap();
    let out = ipam
        .release_ips(&[ReleaseRequest {
            ip,
            sequence_number: Some(first.sequence_number),
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], ReleaseOutcome::Released { .. }));
    ipam.assign_ip(&AssignIpArgs {
        ip,
        handle_id: "net.new".into(),
        node: "a".into(),
        attrs: BTreeMap::new(),
    })
    .await
    .unwrap();
    let err = ipam
        .assign_ip(&AssignIpArgs {
            ip,
            handle_id: "net.third".into(),
            node: "a".into(),
            attrs: BTreeMap::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, IpamError::AlreadyAllocated { ref handle, .. } if handle == "net.new"),
        "{err}"
    );
    let out = ipam
        .release_ips(&[ReleaseRequest {
            ip,
            sequence_number: Some(first.sequence_number),
        }])
        .await
        .unwrap();
    assert!(
        matches!(out[0], ReleaseOutcome::StaleSequence { .. }),
        "{out:?}"
    );
    assert_eq!(ipam.ips_by_handle("net.new").await.unwrap(), vec![ip]);
    assert!(
        ds.store::<IPAMHandle>()
            .get(None, "net.old")
            .await
            .unwrap()
            .is_none()
    );
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
}

#[tokio::test]
async fn empty_blocks_are_released_after_grace_but_the_last_is_kept() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.70.0.0/24", "blockSize": 28})).await;
    ipam.auto_assign(&v4("a", "net.c", 40)).await.unwrap();
    assert_eq!(ipam.node_blocks("a").await.unwrap().len(), 3);
    ipam.release_by_handle("net.c").await.unwrap();
    // First sighting starts the grace period.
    assert!(
        ipam.release_empty_blocks("a", Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    let released = ipam
        .release_empty_blocks("a", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(released.len(), 2);
    assert_eq!(
        ipam.node_blocks("a").await.unwrap().len(),
        1,
        "the last block stays"
    );
    assert_eq!(ds.store::<IPAMBlock>().list(None).await.unwrap().0.len(), 1);
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
}

#[tokio::test]
async fn check_finds_a_deleted_node_and_release_from_report_frees_it() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.80.0.0/24"})).await;
    let a = ipam.auto_assign(&v4("a", "net.a", 3)).await.unwrap();
    let gone = ipam.auto_assign(&v4("gone", "net.g", 2)).await.unwrap();
    let in_use: BTreeSet<IpAddr> =
        a.v4.iter()
            .chain(&gone.v4)
            .map(|x| x.ip)
            .chain(["10.99.0.1".parse().unwrap()])
            .collect();
    let input = CheckInput {
        in_use: Some(in_use),
        nodes: Some(BTreeSet::from(["a".to_owned()])),
    };
    let report = ipam.check(&input).await.unwrap();
    let missing: BTreeSet<IpAddr> = report
        .addresses_of_missing_nodes
        .iter()
        .map(|r| r.ip)
        .collect();
    assert_eq!(missing, gone.v4.iter().map(|x| x.ip).collect());
    assert_eq!(report.affinities_of_missing_nodes.len(), 1);
    assert_eq!(
        report.used_but_unallocated,
        vec!["10.99.0.1".parse::<IpAddr>().unwrap()]
    );
    let json = serde_json::to_string(&report).unwrap();
    let report: reef_ipam::CheckReport = serde_json::from_str(&json).unwrap();
    let summary = ipam.release_from_report(&report).await.unwrap();
    assert_eq!(summary.addresses_released, 2);
    assert_eq!(summary.affinities_released, 1);
    let after = ipam
        .check(&CheckInput {
            in_use: None,
            nodes: input.nodes.clone(),
        })
        .await
        .unwrap();
    assert_eq!(after.problem_count(), 0, "{after:#?}");
    assert_eq!(after.allocations, 3);
    assert_eq!(
        ds.store::<IPAMBlock>().list(None).await.unwrap().0.len(),
        1,
        "the dead node's empty block is gone"
    );
}

#[tokio::test]
async fn check_reports_orphan_handles_and_invalid_blocks() {
    let (ds, ipam) = memory();
    add_pool(&ds, "p", json!({"cidr": "10.90.0.0/24"})).await;
    ipam.auto_assign(&v4("a", "net.a", 1)).await.unwrap();
    let orphan = IPAMHandle::new(
        "net.orphan",
        reef_crds::IPAMHandleSpec {
            handle_id: "net.orphan".into(),
            block: BTreeMap::from([("10.90.0.0/26".into(), 1)]),
            deleted: false,
        },
    );
    ds.store::<IPAMHandle>().create(&orphan).await.unwrap();
    let stray = reef_ipam::convert::new_block_object(
        &reef_ipam::block::Block::new(net("10.91.0.0/26"), Some("host:a".into())).unwrap(),
    );
    ds.store::<IPAMBlock>().create(&stray).await.unwrap();
    let report = ipam.check(&CheckInput::default()).await.unwrap();
    assert_eq!(report.orphan_handles.len(), 1, "{report:#?}");
    assert_eq!(report.orphan_handles[0].handle_id, "net.orphan");
    assert_eq!(report.invalid_blocks.len(), 1);
    assert!(
        report.invalid_blocks[0]
            .reason
            .contains("outside every IP pool"),
        "{:?}",
        report.invalid_blocks
    );
    ipam.release_from_report(&report).await.unwrap();
    assert!(
        ds.store::<IPAMHandle>()
            .get(None, "net.orphan")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn concurrent_nodes_never_get_the_same_address() {
    let (ds, ipam) = memory();
    // 4 blocks for 6 nodes x 40 addresses = 240 of 256: claims race, then borrowing.
    add_pool(&ds, "p", json!({"cidr": "10.100.0.0/24"})).await;
    let ipam = Arc::new(ipam);
    let mut tasks = Vec::new();
    for n in 0..6 {
        let ipam = ipam.clone();
        tasks.push(tokio::spawn(async move {
            let mut ips = Vec::new();
            for i in 0..40 {
                let got = ipam
                    .auto_assign(&v4(&format!("n{n}"), &format!("net.{n}-{i}"), 1))
                    .await
                    .unwrap();
                ips.push(got.v4[0].ip);
            }
            ips
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for ip in t.await.unwrap() {
            assert!(all.insert(ip), "{ip} handed out twice");
        }
    }
    assert_eq!(all.len(), 240);
    let report = ipam
        .check(&CheckInput {
            in_use: Some(all),
            nodes: None,
        })
        .await
        .unwrap();
    assert_eq!(report.problem_count(), 0, "{report:#?}");
    drop(ds);
}
