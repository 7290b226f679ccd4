//! The calculation on in-memory snapshots: mesh, selectors, reflectors, filters, passwords, exports
//! and rejected resources.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use reef_crds::bgp::{BGPPassword, PrefixAdvertisement, SecretKeyRef};
use reef_crds::ipam::{AffinityType, BlockAffinitySpec, host_affinity};
use reef_crds::node::NodeBGPSpec;
use reef_crds::{BGPFilterSpec, BGPPeerSpec, IPPoolSpec, ReefNodeSpec};
use reef_ipam::block::{ATTR_NODE, Block, attribute};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn node(name: &str, address: &str, labels: &[(&str, &str)], cluster: Option<&str>) -> ReefNode {
    let mut node = ReefNode::new(
        name,
        ReefNodeSpec {
            bgp: Some(NodeBGPSpec {
                ipv4_address: Some(format!("{address}/24")),
                route_reflector_cluster_id: cluster.map(str::to_string),
                ..NodeBGPSpec::default()
            }),
            vxlan: None,
        },
    );
    node.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    node
}

/// Nodes a, b and c on 192.0.2.1-3, c labelled `role=edge`, a labelled `rack=r1`.
fn cluster() -> Snapshot {
    let mut snapshot = Snapshot::default();
    for n in [
        node("a", "192.0.2.1", &[("rack", "r1")], None),
        node("b", "192.0.2.2", &[], None),
        node("c", "192.0.2.3", &[("role", "edge")], None),
    ] {
        snapshot.apply(Delta::Node(Change::Stored(n)));
    }
    snapshot
}

fn peer(name: &str, spec: BGPPeerSpec) -> Delta {
    Delta::BgpPeer(Change::Stored(BGPPeer::new(name, spec)))
}

fn tor(node_selector: &str) -> BGPPeerSpec {
    BGPPeerSpec {
        peer_ip: "198.51.100.1".into(),
        as_number: Some(65001),
        node_selector: node_selector.into(),
        ..BGPPeerSpec::default()
    }
}

fn desired(snapshot: &Snapshot, name: &str) -> DesiredBgp {
    let calculated = calculate(snapshot, name);
    calculated
        .desired
        .unwrap_or_else(|| panic!("no desired state: {:?}", calculated.problem))
}

fn kinds(desired: &DesiredBgp) -> Vec<(IpAddr, PeerKind, bool)> {
    desired
        .peers
        .values()
        .map(|p| (p.config.address, p.kind, p.config.passive))
        .collect()
}

#[test]
fn full_mesh_has_one_active_side_per_pair() {
    let snapshot = cluster();
    let b = desired(&snapshot, "b");
    assert_eq!(
        b.speaker.router_id,
        "192.0.2.2".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(b.speaker.local_as, 64512);
    assert_eq!(b.speaker.listen, Some("0.0.0.0:179".parse().unwrap()));
    assert_eq!(
        kinds(&b),
        [
            (ip("192.0.2.1"), PeerKind::Mesh, true),
            (ip("192.0.2.3"), PeerKind::Mesh, false)
        ]
    );
    // Every pair: exactly one side connects.
    for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
        let dx = desired(&snapshot, x);
        let dy = desired(&snapshot, y);
        let address = |d: &DesiredBgp| IpAddr::V4(d.speaker.router_id);
        let x_passive = dx.peers[&address(&dy)].config.passive;
        let y_passive = dy.peers[&address(&dx)].config.passive;
        assert_ne!(x_passive, y_passive, "pair {x}-{y}");
    }
    let to_a = &b.peers[&ip("192.0.2.1")].config;
    assert_eq!(to_a.remote_as, 64512);
    assert_eq!(to_a.source_address, Some(ip("192.0.2.2")));
    let defaults = BGPConfigurationSpec::default();
    assert_eq!(
        u64::from(to_a.hold_time),
        defaults.hold_time_or_default().as_secs()
    );
    assert_eq!(
        to_a.keepalive_time.map(u64::from),
        Some(defaults.keepalive_time_or_default().as_secs())
    );
}

#[test]
fn mesh_off_and_bgp_configuration_settings() {
    let mut snapshot = cluster();
    snapshot.apply(Delta::BgpConfiguration(Change::Stored(
        BGPConfiguration::new(
            "default",
            BGPConfigurationSpec {
                node_to_node_mesh_enabled: Some(false),
                as_number: Some(65100),
                ..BGPConfigurationSpec::default()
            },
        ),
    )));
    snapshot.apply(Delta::BgpConfiguration(Change::Stored(
        BGPConfiguration::new(
            "node.b",
            BGPConfigurationSpec {
                listen_port: Some(1179),
                ..BGPConfigurationSpec::default()
            },
        ),
    )));
    let b = desired(&snapshot, "b");
    assert!(b.peers.is_empty(), "{:?}", kinds(&b));
    assert_eq!(b.speaker.local_as, 65100);
    assert_eq!(b.speaker.listen, Some("0.0.0.0:1179".parse().unwrap()));
    // A peer of b connects to b's own listen port.
    snapshot.apply(Delta::BgpConfiguration(Change::Stored(
        BGPConfiguration::new("default", BGPConfigurationSpec::default()),
    )));
    assert_eq!(
        desired(&snapshot, "a").peers[&ip("192.0.2.2")].config.port,
        1179
    );
}

#[test]
fn bgp_peers_select_nodes_by_name_selector_and_peer_selector() {
    let mut snapshot = cluster();
    snapshot.apply(peer("tor-r1", tor("rack == 'r1'")));
    snapshot.apply(peer(
        "only-b",
        BGPPeerSpec {
            node: "b".into(),
            peer_ip: "198.51.100.2:1179".into(),
            as_number: Some(65002),
            ..BGPPeerSpec::default()
        },
    ));
    snapshot.apply(peer(
        "to-edge",
        BGPPeerSpec {
            peer_selector: "role == 'edge'".into(),
            ..BGPPeerSpec::default()
        },
    ));
    let a = desired(&snapshot, "a");
    assert_eq!(
        kinds(&a),
        [
            (ip("192.0.2.2"), PeerKind::Mesh, false),
            (ip("192.0.2.3"), PeerKind::Global, false),
            (ip("198.51.100.1"), PeerKind::Global, false),
        ]
    );
    assert_eq!(a.peers[&ip("198.51.100.1")].config.remote_as, 65001);
    assert_eq!(a.peers[&ip("198.51.100.1")].origin, "BGPPeer/tor-r1");
    let b = desired(&snapshot, "b");
    let only_b = &b.peers[&ip("198.51.100.2")];
    assert_eq!((only_b.kind, only_b.config.port), (PeerKind::Node, 1179));
    assert!(
        !b.peers.contains_key(&ip("198.51.100.1")),
        "b is not in rack r1"
    );
    // c is selected by its own peerSelector: never a peer of itself.
    let c = desired(&snapshot, "c");
    assert!(!c.peers.contains_key(&ip("192.0.2.3")));
    assert!(
        !desired(&snapshot, "c")
            .peers
            .contains_key(&ip("198.51.100.2"))
    );

    // Labelling b into the selector gives b the session.
    let mut relabelled = node("b", "192.0.2.2", &[("rack", "r1")], None);
    relabelled.metadata.labels.get_or_insert_default();
    snapshot.apply(Delta::Node(Change::Stored(relabelled)));
    assert_eq!(
        desired(&snapshot, "b").peers[&ip("198.51.100.1")].kind,
        PeerKind::Global
    );
}

#[test]
fn route_reflectors_are_skipped_by_the_mesh_and_peer_with_clients_and_each_other() {
    let mut snapshot = cluster();
    snapshot.apply(Delta::Node(Change::Stored(node(
        "rr1",
        "192.0.2.10",
        &[],
        Some("244.0.0.1"),
    ))));
    snapshot.apply(Delta::Node(Change::Stored(node(
        "rr2",
        "192.0.2.11",
        &[],
        Some("244.0.0.1"),
    ))));
    let a = desired(&snapshot, "a");
    assert_eq!(a.speaker.routing.cluster_id, None);
    let to_rr1 = &a.peers[&ip("192.0.2.10")];
    assert_eq!(to_rr1.kind, PeerKind::Reflector);
    assert!(!to_rr1.config.routing.route_reflector_client);
    assert_eq!(a.peers[&ip("192.0.2.2")].kind, PeerKind::Mesh);

    let rr1 = desired(&snapshot, "rr1");
    assert_eq!(
        rr1.speaker.routing.cluster_id,
        Some("244.0.0.1".parse().unwrap())
    );
    let clients: Vec<(IpAddr, bool)> = rr1
        .peers
        .values()
        .map(|p| (p.config.address, p.config.routing.route_reflector_client))
        .collect();
    assert_eq!(
        clients,
        [
            (ip("192.0.2.1"), true),
            (ip("192.0.2.2"), true),
            (ip("192.0.2.3"), true),
            (ip("192.0.2.11"), false)
        ]
    );
    assert!(rr1.peers.values().all(|p| p.kind == PeerKind::Reflector));

    // Without the mesh the clients peer only with the reflectors.
    snapshot.apply(Delta::BgpConfiguration(Change::Stored(
        BGPConfiguration::new(
            "default",
            BGPConfigurationSpec {
                node_to_node_mesh_enabled: Some(false),
                ..BGPConfigurationSpec::default()
            },
        ),
    )));
    let a = desired(&snapshot, "a");
    assert_eq!(
        a.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.0.2.10"), ip("192.0.2.11")]
    );
}

#[test]
fn invalid_bgp_peers_are_rejected_with_the_reason_and_the_rest_applies() {
    let mut snapshot = cluster();
    snapshot.apply(peer("good", tor("")));
    snapshot.apply(peer(
        "bad-ip",
        BGPPeerSpec {
            peer_ip: "198.51.100.300".into(),
            as_number: Some(65001),
            ..BGPPeerSpec::default()
        },
    ));
    snapshot.apply(peer(
        "no-filter",
        BGPPeerSpec {
            peer_ip: "198.51.100.5".into(),
            as_number: Some(65001),
            filters: vec!["missing".into()],
            ..BGPPeerSpec::default()
        },
    ));
    snapshot.apply(peer(
        "no-secret",
        BGPPeerSpec {
            peer_ip: "198.51.100.6".into(),
            as_number: Some(65001),
            password: Some(BGPPassword {
                secret_key_ref: Some(SecretKeyRef {
                    name: "bgp".into(),
                    key: "tor".into(),
                }),
            }),
            ..BGPPeerSpec::default()
        },
    ));
    snapshot.apply(peer("same-address", tor("")));
    let calculated = calculate(&snapshot, "a");
    let reasons: BTreeMap<String, String> = calculated
        .rejected
        .iter()
        .map(|r| (r.object.clone(), r.reason.clone()))
        .collect();
    assert!(
        reasons["BGPPeer/bad-ip"].contains("spec.peerIP"),
        "{reasons:?}"
    );
    assert!(
        reasons["BGPPeer/no-filter"].contains("BGPFilter \"missing\" does not exist"),
        "{reasons:?}"
    );
    assert!(
        reasons["BGPPeer/no-secret"].contains("Secret \"bgp\""),
        "{reasons:?}"
    );
    assert!(
        reasons["BGPPeer/same-address"].contains("already configured by BGPPeer/good"),
        "{reasons:?}"
    );
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let desired = calculated.desired.unwrap();
    assert_eq!(
        desired.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.0.2.2"), ip("192.0.2.3"), ip("198.51.100.1")]
    );

    // The Secret appearing makes the peer valid, with its password.
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some("bgp".into()),
            namespace: Some("reef".into()),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    };
    secret.data = Some(BTreeMap::from([(
        "tor".to_string(),
        ByteString(b"s3cret".to_vec()),
    )]));
    snapshot.apply(Delta::Secret(Change::Stored(secret)));
    let with_secret = calculate(&snapshot, "a");
    assert_eq!(
        with_secret.desired.unwrap().peers[&ip("198.51.100.6")]
            .config
            .password
            .as_deref(),
        Some("s3cret")
    );
    assert!(
        with_secret
            .rejected
            .iter()
            .all(|r| r.object != "BGPPeer/no-secret")
    );
}

#[test]
fn filters_are_converted_in_order_and_invalid_ones_reject_their_peers() {
    let mut snapshot = cluster();
    let filter: BGPFilterSpec = serde_json::from_value(serde_json::json!({
        "importV4": [{"cidr": "10.99.0.0/16", "matchOperator": "In", "action": "Reject"}],
        "exportV4": [{"cidr": "10.65.0.0/16", "matchOperator": "In", "action": "Accept"}]
    }))
    .unwrap();
    snapshot.apply(Delta::BgpFilter(Change::Stored(BGPFilter::new(
        "f", filter,
    ))));
    let broken: BGPFilterSpec = serde_json::from_value(serde_json::json!({
        "importV4": [{"cidr": "10.0.0.1/8", "matchOperator": "In", "action": "Reject"}]
    }))
    .unwrap();
    snapshot.apply(Delta::BgpFilter(Change::Stored(BGPFilter::new(
        "broken", broken,
    ))));
    let mut with_filter = tor("");
    with_filter.filters = vec!["f".into()];
    with_filter.bfd = Some(reef_crds::bgp::BfdConfig {
        enabled: true,
        ..Default::default()
    });
    snapshot.apply(peer("tor", with_filter));
    let mut with_broken = tor("");
    with_broken.peer_ip = "198.51.100.9".into();
    with_broken.filters = vec!["broken".into()];
    snapshot.apply(peer("tor-broken", with_broken));

    let calculated = calculate(&snapshot, "a");
    let rejected: Vec<&str> = calculated
        .rejected
        .iter()
        .map(|r| r.object.as_str())
        .collect();
    assert_eq!(rejected, ["BGPFilter/broken", "BGPPeer/tor-broken"]);
    let desired = calculated.desired.unwrap();
    let tor = &desired.peers[&ip("198.51.100.1")];
    assert_eq!(tor.config.routing.import.len(), 1);
    assert_eq!(tor.config.routing.import[0].rules.len(), 1);
    assert_eq!(tor.config.routing.export.len(), 1);
    assert_eq!(tor.bfd, Some(reef_bfd::SessionConfig::default()));
}

/// A pool, its blocks and affinities: a's confirmed block, a's pending block, b's block with one
/// address allocated to a workload of a, and a block in a pool without BGP export.
fn ipam(snapshot: &mut Snapshot) {
    let pool = |cidr: &str, disable: bool| {
        IPPool::new(
            &cidr.replace(['.', '/'], "-"),
            IPPoolSpec {
                cidr: cidr.into(),
                block_size: None,
                vxlan_mode: Default::default(),
                ipip_mode: None,
                nat_outgoing: false,
                disabled: false,
                disable_bgp_export: disable,
                node_selector: String::new(),
                allowed_uses: Vec::new(),
            },
        )
    };
    snapshot.apply(Delta::Pool(Change::Stored(pool("10.65.0.0/16", false))));
    snapshot.apply(Delta::Pool(Change::Stored(pool("10.66.0.0/16", true))));
    let block =
        |cidr: &str, owner: &str| Block::new(net(cidr), Some(host_affinity(owner))).unwrap();
    let affinity = |owner: &str, cidr: &str, state: AffinityState| {
        BlockAffinity::new(
            &format!("{owner}-{}", cidr.replace(['.', '/'], "-")),
            BlockAffinitySpec {
                state,
                node: owner.into(),
                cidr: cidr.into(),
                deleted: false,
                type_: AffinityType::Host,
            },
        )
    };
    let (borrowed_from_b, _) = block("10.65.0.128/26", "b").assign(
        1,
        &attribute(
            "pod-x",
            BTreeMap::from([(ATTR_NODE.to_string(), "a".to_string())]),
        ),
    );
    for b in [
        block("10.65.0.0/26", "a"),
        block("10.65.0.64/26", "a"),
        borrowed_from_b,
        block("10.66.0.0/26", "a"),
    ] {
        snapshot.apply(Delta::Block(Change::Stored(
            reef_ipam::convert::new_block_object(&b),
        )));
    }
    for a in [
        affinity("a", "10.65.0.0/26", AffinityState::Confirmed),
        affinity("a", "10.65.0.64/26", AffinityState::Pending),
        affinity("b", "10.65.0.128/26", AffinityState::Confirmed),
        affinity("a", "10.66.0.0/26", AffinityState::Confirmed),
    ] {
        snapshot.apply(Delta::Affinity(Change::Stored(a)));
    }
}

#[test]
fn exports_confirmed_blocks_and_borrowed_addresses_but_not_unexported_pools() {
    let mut snapshot = cluster();
    ipam(&mut snapshot);
    let a = desired(&snapshot, "a");
    assert_eq!(
        a.prefixes.iter().copied().collect::<Vec<_>>(),
        [net("10.65.0.0/26"), net("10.65.0.128/32")]
    );
    let b = desired(&snapshot, "b");
    assert_eq!(
        b.prefixes.iter().copied().collect::<Vec<_>>(),
        [net("10.65.0.128/26")]
    );
    // The pool deleted: nothing of it is exported any more.
    snapshot.apply(Delta::Pool(Change::Replaced(Vec::new())));
    assert!(desired(&snapshot, "a").prefixes.is_empty());
}

#[test]
fn prefix_advertisements_add_communities_last_in_every_export_chain() {
    let mut snapshot = cluster();
    snapshot.apply(Delta::BgpConfiguration(Change::Stored(
        BGPConfiguration::new(
            "default",
            BGPConfigurationSpec {
                communities: vec![reef_crds::bgp::Community {
                    name: "pods".into(),
                    value: "64512:300".into(),
                }],
                prefix_advertisements: vec![PrefixAdvertisement {
                    cidr: "10.65.0.0/16".into(),
                    communities: vec!["pods".into(), "64512:1:2".into()],
                }],
                ..BGPConfigurationSpec::default()
            },
        ),
    )));
    let a = desired(&snapshot, "a");
    let export = &a.peers[&ip("192.0.2.2")].config.routing.export;
    assert_eq!(export.len(), 1);
    let rule = &export[0].rules[0];
    assert_eq!(rule.action, Action::Accept);
    assert_eq!(
        rule.operations,
        [
            Operation::AddCommunity(reef_bgp::wire::Community::new(64512, 300)),
            Operation::AddLargeCommunity(reef_bgp::wire::LargeCommunity {
                global_admin: 64512,
                local_data1: 1,
                local_data2: 2
            })
        ]
    );
}

#[test]
fn without_a_usable_reef_node_nothing_is_configured_and_the_reason_is_given() {
    let snapshot = Snapshot::default();
    let calculated = calculate(&snapshot, "a");
    assert!(calculated.desired.is_none());
    assert!(
        calculated
            .problem
            .unwrap()
            .contains("ReefNode a does not exist")
    );
    let mut snapshot = cluster();
    let mut bare = node("a", "192.0.2.1", &[], None);
    bare.spec.bgp = None;
    snapshot.apply(Delta::Node(Change::Stored(bare.clone())));
    assert!(
        calculate(&snapshot, "a")
            .problem
            .unwrap()
            .contains("ipv4Address")
    );
    // Others stop meshing with a node that has no address; deleting it is the same.
    assert!(!desired(&snapshot, "b").peers.contains_key(&ip("192.0.2.1")));
    snapshot.apply(Delta::Node(Change::Deleted(bare)));
    assert_eq!(desired(&snapshot, "b").peers.len(), 1);
}
