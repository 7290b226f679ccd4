//! Validation messages name the field and the fix.

use kube::core::ObjectMeta;
use reef_crds::bgp::{BfdConfig, MatchOperator, PrefixLength};
use reef_crds::policy::{EntityRule, IcmpFields, Port, Protocol, Rule};
use reef_crds::{
    BGPConfiguration, BGPConfigurationSpec, BGPFilter, BGPFilterRule, BGPFilterSpec, BGPPeer,
    BGPPeerSpec, IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, NetworkPolicy, NetworkPolicySpec,
    ReefNode, ReefNodeSpec, Validate, ValidationErrors,
};

fn pool(cidr: &str, block_size: Option<u8>) -> IPPool {
    let yaml = format!("cidr: {cidr}");
    let mut spec: IPPoolSpec = serde_saphyr::from_str(&yaml).unwrap();
    spec.block_size = block_size;
    IPPool::new("p", spec)
}

fn messages(result: Result<(), ValidationErrors>) -> Vec<String> {
    result
        .err()
        .map(|e| e.0.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn ippool_cidr_and_block_size() {
    assert_eq!(
        messages(pool("10.244.0.0/16", None).validate()),
        Vec::<String>::new()
    );
    assert_eq!(
        messages(pool("fd00:10:244::/56", Some(122)).validate()),
        Vec::<String>::new()
    );
    assert_eq!(
        messages(pool("10.0.0.0/33", None).validate()),
        [
            "spec.cidr: \"10.0.0.0/33\" is not a valid CIDR (expected e.g. 192.168.0.0/16 or fd00:10:244::/56)"
        ]
    );
    assert_eq!(
        messages(pool("10.0.0.1/16", None).validate()),
        ["spec.cidr: \"10.0.0.1/16\" has host bits set (did you mean 10.0.0.0/16?)"]
    );
    assert_eq!(
        messages(pool("10.0.0.0/16", Some(19)).validate()),
        ["spec.blockSize: 19 is out of range for IPv4 (20..=32 allowed; default 26)"]
    );
    assert_eq!(
        messages(pool("fd00::/48", Some(64)).validate()),
        ["spec.blockSize: 64 is out of range for IPv6 (116..=128 allowed; default 122)"]
    );
    assert_eq!(
        messages(pool("10.0.0.0/28", Some(26)).validate()),
        ["spec.blockSize: /26 blocks do not fit in the /28 pool (set blockSize to at least 28)"]
    );
    assert_eq!(
        messages(pool("10.0.0.0/28", None).validate()),
        [
            "spec.blockSize: /26 blocks (the default) do not fit in the /28 pool (set blockSize to at least 28)"
        ]
    );
    let mut ipip = pool("10.0.0.0/16", None);
    ipip.spec.ipip_mode = Some(reef_crds::VxlanMode::Always);
    assert_eq!(
        messages(ipip.validate()),
        [
            "spec.ipipMode: Always is not supported: Reef has no IP-in-IP (set vxlanMode: Always instead, and ipipMode: Never or omit it)"
        ]
    );
    let mut bad_selector = pool("10.0.0.0/16", None);
    bad_selector.spec.node_selector = "rack = 'a'".into();
    let msgs = messages(bad_selector.validate());
    assert!(msgs[0].starts_with("spec.nodeSelector: invalid selector \"rack = 'a'\": at position 5: expected an operator"), "{msgs:?}");
}

#[test]
fn ippool_cidr_and_block_size_are_immutable() {
    let old = pool("10.244.0.0/16", None);
    // Setting the default explicitly is not a change.
    assert!(IPPool::validate_update(&old, &pool("10.244.0.0/16", Some(26))).is_ok());
    let mut disabled = old.clone();
    disabled.spec.disabled = true;
    assert!(IPPool::validate_update(&old, &disabled).is_ok());
    let err = IPPool::validate_update(&old, &pool("10.244.0.0/16", Some(24))).unwrap_err();
    assert!(err.has_path("spec.blockSize"), "{err}");
    assert!(
        err.to_string()
            .contains("is immutable (Some(26) -> Some(24))"),
        "{err}"
    );
    let err = IPPool::validate_update(&old, &pool("10.245.0.0/16", None)).unwrap_err();
    assert!(err.has_path("spec.cidr"), "{err}");
    assert!(err.to_string().contains("create a new IPPool"), "{err}");
}

fn peer(spec: BGPPeerSpec) -> BGPPeer {
    BGPPeer::new("p", spec)
}

#[test]
fn bgp_peer_rules() {
    let ok = BGPPeerSpec {
        peer_ip: "[2001:db8::1]:179".into(),
        as_number: Some(65001),
        ..Default::default()
    };
    assert!(peer(ok.clone()).validate().is_ok());
    let err = peer(BGPPeerSpec {
        as_number: Some(0),
        ..ok.clone()
    })
    .validate()
    .unwrap_err();
    assert!(
        err.has_path("spec.asNumber") && err.to_string().contains("1..=4294967295"),
        "{err}"
    );
    let err = peer(BGPPeerSpec {
        peer_ip: "192.0.2.1:x".into(),
        ..ok.clone()
    })
    .validate()
    .unwrap_err();
    assert!(err.to_string().starts_with("spec.peerIP: \"192.0.2.1:x\" is not a peer address (expected IP, IP:port or [IPv6]:port"), "{err}");
    let err = peer(BGPPeerSpec {
        as_number: None,
        ..ok.clone()
    })
    .validate()
    .unwrap_err();
    assert!(err.has_path("spec.asNumber"), "{err}");
    let err = peer(BGPPeerSpec {
        peer_selector: "has(rr)".into(),
        ..ok.clone()
    })
    .validate()
    .unwrap_err();
    assert!(err.has_path("spec.peerSelector"), "{err}");
    let err = peer(BGPPeerSpec::default()).validate().unwrap_err();
    assert!(err.has_path("spec.peerIP"), "{err}");
    let err = peer(BGPPeerSpec {
        node: "n1".into(),
        node_selector: "all()".into(),
        ..ok.clone()
    })
    .validate()
    .unwrap_err();
    assert!(err.has_path("spec.nodeSelector"), "{err}");
    let timers = BGPPeerSpec {
        hold_time: Some("2s".parse().unwrap()),
        keepalive_time: Some("5s".parse().unwrap()),
        ttl_security: Some(0),
        bfd: Some(BfdConfig {
            enabled: true,
            multiplier: Some(0),
            ..Default::default()
        }),
        ..ok
    };
    let err = peer(timers).validate().unwrap_err();
    for path in [
        "spec.holdTime",
        "spec.keepaliveTime",
        "spec.ttlSecurity",
        "spec.bfd.multiplier",
    ] {
        assert!(err.has_path(path), "{path}: {err}");
    }
}

#[test]
fn bgp_configuration_rules() {
    let mut config = BGPConfiguration::new("node.n1", BGPConfigurationSpec::default());
    assert!(config.validate().is_ok());
    config.metadata = ObjectMeta {
        name: Some("cluster".into()),
        ..Default::default()
    };
    config.spec.as_number = Some(0);
    config.spec.communities = vec![reef_crds::bgp::Community {
        name: "c".into(),
        value: "65536:1".into(),
    }];
    config.spec.prefix_advertisements = vec![reef_crds::bgp::PrefixAdvertisement {
        cidr: "10.0.0.0/8".into(),
        communities: vec!["c".into(), "nope".into()],
    }];
    let err = config.validate().unwrap_err();
    for path in [
        "metadata.name",
        "spec.asNumber",
        "spec.communities[0].value",
        "spec.prefixAdvertisements[0].communities[1]",
    ] {
        assert!(err.has_path(path), "{path}: {err}");
    }
    assert!(
        !err.has_path("spec.prefixAdvertisements[0].communities[0]"),
        "{err}"
    );
}

#[test]
fn bgp_filter_rules() {
    let rule = |cidr: &str, min, max| BGPFilterRule {
        cidr: cidr.into(),
        match_operator: Some(MatchOperator::In),
        prefix_length: Some(PrefixLength { min, max }),
        ..Default::default()
    };
    let filter = |v4: Vec<BGPFilterRule>, v6: Vec<BGPFilterRule>| {
        BGPFilter::new(
            "f",
            BGPFilterSpec {
                import_v4: v4,
                export_v6: v6,
                ..Default::default()
            },
        )
    };
    assert!(
        filter(
            vec![rule("10.0.0.0/8", Some(8), Some(32))],
            vec![rule("fd00::/8", Some(64), Some(128))]
        )
        .validate()
        .is_ok()
    );
    let err = filter(
        vec![
            rule("10.0.0.0/8", Some(24), Some(16)),
            rule("10.0.0.0/8", Some(4), Some(33)),
            rule("fd00::/8", None, None),
        ],
        vec![rule("fd00::/8", Some(64), Some(129))],
    )
    .validate()
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("spec.importV4[0].prefixLength: min 24 is greater than max 16"),
        "{text}"
    );
    assert!(
        text.contains(
            "spec.importV4[1].prefixLength.max: 33 is longer than an IPv4 prefix (0..=32)"
        ),
        "{text}"
    );
    assert!(
        text.contains("spec.importV4[1].prefixLength.min: 4 is shorter than the cidr's /8"),
        "{text}"
    );
    assert!(
        text.contains("spec.importV4[2].cidr: \"fd00::/8\" is not an IPv4 CIDR"),
        "{text}"
    );
    assert!(
        text.contains(
            "spec.exportV6[0].prefixLength.max: 129 is longer than an IPv6 prefix (0..=128)"
        ),
        "{text}"
    );
}

#[test]
fn reef_node_rules() {
    let mut node: ReefNode = ReefNode::new("n1", ReefNodeSpec::default());
    node.spec = serde_json::from_value(serde_json::json!({
        "bgp": {"ipv4Address": "198.51.100.10", "ipv6Address": "2001:db8::1/64", "routeReflectorClusterID": "x"},
        "vxlan": {"tunnelAddress": "10.0.0.1", "tunnelMAC": "66:a0:2c:11:22"}
    }))
    .unwrap();
    let err = node.validate().unwrap_err();
    assert!(err.to_string().contains("spec.bgp.ipv4Address: \"198.51.100.10\" is not an IPv4 address with prefix length (expected e.g. 198.51.100.10/24)"), "{err}");
    for path in ["spec.bgp.routeReflectorClusterID", "spec.vxlan.tunnelMAC"] {
        assert!(err.has_path(path), "{path}: {err}");
    }
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn policy_rules() {
    let rule = Rule {
        action: reef_crds::policy::Action::Allow,
        ip_version: Some(4),
        protocol: Some(Protocol::Name("ICMP".into())),
        not_protocol: None,
        icmp: Some(IcmpFields {
            type_: None,
            code: Some(0),
        }),
        not_icmp: None,
        source: EntityRule {
            nets: vec!["2001:db8::/32".into(), "10.0.0.1".into()],
            ..Default::default()
        },
        destination: EntityRule {
            ports: vec![
                Port::Number(80),
                Port::Range(90, 80),
                Port::Named("Not_A_Name".into()),
                Port::Number(70000),
            ],
            selector: "app in {'a'".into(),
            ..Default::default()
        },
    };
    let policy = NetworkPolicy::new(
        "np",
        NetworkPolicySpec {
            selector: "has(app) &&".into(),
            types: vec![reef_crds::policy::PolicyType::Egress],
            ingress: vec![rule],
            ..Default::default()
        },
    );
    let err = policy.validate().unwrap_err();
    let text = err.to_string();
    for path in [
        "spec.selector",
        "spec.ingress",
        "spec.ingress[0].icmp.code",
        "spec.ingress[0].source.nets[0]",
        "spec.ingress[0].destination.selector",
        "spec.ingress[0].destination.ports[1]",
        "spec.ingress[0].destination.ports[2]",
        "spec.ingress[0].destination.ports[3]",
        "spec.ingress[0].destination.ports",
    ] {
        assert!(err.has_path(path), "{path}: {text}");
    }
    assert!(!err.has_path("spec.ingress[0].source.nets[1]"), "{text}");
    assert!(
        !err.has_path("spec.ingress[0].destination.ports[0]"),
        "{text}"
    );
    assert!(
        text.contains("range 90:80 is empty (write it as 80:90)"),
        "{text}"
    );
}

#[test]
fn ipam_block_consistency() {
    let mut spec = IPAMBlockSpec {
        cidr: "10.244.0.0/30".into(),
        affinity: Some("host:n1".into()),
        allocations: vec![Some(0), None, None, None],
        unallocated: vec![1, 2, 3],
        attributes: vec![Default::default()],
        sequence_number: 1,
        sequence_number_for_allocation: [("0".to_string(), 1)].into(),
        deleted: false,
        strict_affinity: false,
    };
    assert!(IPAMBlock::new("b", spec.clone()).validate().is_ok());
    spec.affinity = Some("n1".into());
    spec.allocations = vec![Some(3), None, None];
    spec.unallocated = vec![0, 1, 1];
    let err = IPAMBlock::new("b", spec).validate().unwrap_err();
    for path in [
        "spec.affinity",
        "spec.allocations",
        "spec.allocations[0]",
        "spec.unallocated[0]",
        "spec.unallocated[2]",
    ] {
        assert!(err.has_path(path), "{path}: {err}");
    }
}
