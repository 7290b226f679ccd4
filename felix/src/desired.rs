//! The pure calculation: [`Model`] -> [`DesiredState`] (routes, the VXLAN device with its neighbour
//! and FDB entries, sysctls). No kernel here: interfaces are named, the driver resolves them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use reef_crds::VxlanMode;

use crate::model::{Mac, Model, Node};

/// The VXLAN device felix owns.
pub const VXLAN_DEVICE: &str = "vxlan.reef";
/// Its VNI and UDP port.
pub const VXLAN_VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN overhead over an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// ... over an IPv6 underlay (outer header 40).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// The host MTU assumed when neither the model nor the kernel tells.
pub const DEFAULT_HOST_MTU: u32 = 1500;

/// Where a desired route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Straight out of a workload interface (`dev reefXXX`, scope link).
    Interface(String),
    /// Dropped (an affine block's aggregate: unallocated addresses go nowhere).
    Blackhole,
    /// Via these gateways (several: ECMP); the kernel picks the interfaces.
    Gateways(Vec<IpAddr>),
    /// Via the remote node's tunnel address on [`VXLAN_DEVICE`], onlink.
    Vxlan(IpAddr),
}

/// The VXLAN device's desired configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// The underlay source address (this node's address).
    pub local: IpAddr,
    pub mac: Mac,
    pub mtu: u32,
    /// This node's tunnel address, put on the device as a /32.
    pub address: Ipv4Addr,
}

/// Something in the model felix cannot program; the rest is programmed regardless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{prefix} (node {node}) is in no IP pool: not routed")]
    OutsidePools { prefix: IpNet, node: String },
    #[error("{prefix}: node {node} is unknown")]
    UnknownNode { prefix: IpNet, node: String },
    #[error("{prefix}: node {node} has no underlay address of that family")]
    NoNodeAddress { prefix: IpNet, node: String },
    #[error("VXLAN is needed but this node has no tunnel address/MAC or no underlay address")]
    NoLocalTunnel,
    #[error("{prefix}: node {node} has no VXLAN tunnel address/MAC")]
    NoRemoteTunnel { prefix: IpNet, node: String },
    #[error("learned route {0} has no next hop")]
    NoNextHop(IpNet),
    #[error("nodes {0} and {1} share the tunnel MAC {2}")]
    DuplicateTunnelMac(String, String, Mac),
}

/// What felix wants in the kernel. Routes are all in the main table with protocol 82.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub routes: BTreeMap<IpNet, RouteTarget>,
    pub vxlan: Option<VxlanDevice>,
    /// Permanent neighbours on the VXLAN device: remote tunnel address -> remote device MAC.
    pub neighbours: BTreeMap<IpAddr, Mac>,
    /// FDB entries on the VXLAN device: remote device MAC -> remote node's underlay address.
    pub fdb: BTreeMap<Mac, IpAddr>,
    /// `/proc/sys/` paths -> values. Paths of interfaces that do not exist (yet) are skipped.
    pub sysctls: BTreeMap<String, String>,
    pub problems: Vec<Problem>,
}

/// The sysctls of one workload interface (Calico's): the host answers ARP for the pod's gateway
/// 169.254.1.1 at once (proxy ARP, no delay) and forwards; no router advertisements are taken
/// from a pod. IPv6 needs no proxy NDP: the pod's gateway is the host veth's own link-local address.
pub fn interface_sysctls(interface: &str) -> [(String, &'static str); 5] {
    [
        (format!("net/ipv4/conf/{interface}/forwarding"), "1"),
        (format!("net/ipv4/conf/{interface}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{interface}/proxy_delay"), "0"),
        (format!("net/ipv6/conf/{interface}/forwarding"), "1"),
        (format!("net/ipv6/conf/{interface}/accept_ra"), "0"),
    ]
}

/// Node-wide sysctls: forwarding on for both families.
pub const GLOBAL_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

fn same_subnet(a: &Node, b: &Node) -> bool {
    match (a.ipv4, b.ipv4, a.ipv6, b.ipv6) {
        (Some(a), Some(b), _, _) => a.contains(&b.addr()),
        (_, _, Some(a), Some(b)) => a.contains(&b.addr()),
        _ => false,
    }
}

fn host_prefix(addr: IpAddr) -> IpNet {
    // A full-length prefix is always valid.
    IpNet::new(addr, if addr.is_ipv4() { 32 } else { 128 }).unwrap_or_else(|_| IpNet::from(addr))
}

/// The underlay this node sends VXLAN over: its IPv4 address, else its IPv6 one.
fn underlay(node: &Node) -> Option<IpAddr> {
    node.address(true).or_else(|| node.address(false))
}

struct Calculation<'a> {
    model: &'a Model,
    state: DesiredState,
}

impl<'a> Calculation<'a> {
    fn node(&self, name: &str) -> Option<&'a Node> {
        let model = self.model;
        model
            .nodes
            .iter()
            .find(|node| node.name == name && name != model.this_node.name)
    }

    /// The route to `prefix` on remote node `node_name`, by the mode of the pool holding it.
    /// `None`: not felix's to compute (`Never`: BGP brings it) or not possible (a problem).
    fn remote_target(&mut self, prefix: IpNet, node_name: &str) -> Option<RouteTarget> {
        let model = self.model;
        let this = &model.this_node;
        let problem = |kind: fn(IpNet, String) -> Problem| kind(prefix, node_name.to_string());
        let Some(pool) = model.pools.iter().find(|pool| pool.cidr.contains(&prefix)) else {
            self.state
                .problems
                .push(problem(|prefix, node| Problem::OutsidePools {
                    prefix,
                    node,
                }));
            return None;
        };
        let Some(node) = self.node(node_name) else {
            self.state
                .problems
                .push(problem(|prefix, node| Problem::UnknownNode {
                    prefix,
                    node,
                }));
            return None;
        };
        let encapsulate = match pool.vxlan_mode {
            VxlanMode::Never => return None,
            VxlanMode::Always => true,
            VxlanMode::CrossSubnet => !same_subnet(this, node),
        };
        if !encapsulate {
            return match node.address(prefix.addr().is_ipv4()) {
                Some(gateway) => Some(RouteTarget::Gateways(vec![gateway])),
                None => {
                    self.state
                        .problems
                        .push(problem(|prefix, node| Problem::NoNodeAddress {
                            prefix,
                            node,
                        }));
                    None
                }
            };
        }
        // The device's absence is reported once, by `vxlan_device`.
        self.state.vxlan.as_ref()?;
        match node.tunnel {
            Some(tunnel) if prefix.addr().is_ipv4() => {
                Some(RouteTarget::Vxlan(IpAddr::V4(tunnel.address)))
            }
            Some(tunnel) => Some(RouteTarget::Vxlan(IpAddr::V6(tunnel.mac.link_local()))),
            None => {
                self.state
                    .problems
                    .push(problem(|prefix, node| Problem::NoRemoteTunnel {
                        prefix,
                        node,
                    }));
                None
            }
        }
    }

    fn vxlan_device(&mut self) {
        let model = self.model;
        if model
            .pools
            .iter()
            .all(|pool| pool.vxlan_mode == VxlanMode::Never)
        {
            return;
        }
        let this = &model.this_node;
        let (Some(tunnel), Some(local)) = (this.tunnel, underlay(this)) else {
            self.state.problems.push(Problem::NoLocalTunnel);
            return;
        };
        let overhead = if local.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        self.state.vxlan = Some(VxlanDevice {
            local,
            mac: tunnel.mac,
            mtu: model
                .host_mtu
                .unwrap_or(DEFAULT_HOST_MTU)
                .saturating_sub(overhead),
            address: tunnel.address,
        });
        let ipv6_pools = model
            .pools
            .iter()
            .any(|pool| pool.cidr.addr().is_ipv6() && pool.vxlan_mode != VxlanMode::Never);
        let mut owners: BTreeMap<Mac, &str> = BTreeMap::new();
        for node in model.nodes.iter().filter(|node| node.name != this.name) {
            let (Some(remote), Some(address)) = (node.tunnel, node.address(local.is_ipv4())) else {
                continue;
            };
            if let Some(owner) = owners.insert(remote.mac, &node.name) {
                self.state.problems.push(Problem::DuplicateTunnelMac(
                    owner.to_string(),
                    node.name.clone(),
                    remote.mac,
                ));
                continue;
            }
            self.state
                .neighbours
                .insert(IpAddr::V4(remote.address), remote.mac);
            if ipv6_pools {
                self.state
                    .neighbours
                    .insert(IpAddr::V6(remote.mac.link_local()), remote.mac);
            }
            self.state.fdb.insert(remote.mac, address);
        }
    }
}

/// The desired dataplane for `model`. Routes of one prefix from several sources: a local endpoint
/// wins over a local block's blackhole, which wins over a remote block or borrowed address, which
/// wins over a route learned by BGP (felix's own knowledge is the more specific).
pub fn desired_state(model: &Model) -> DesiredState {
    let mut calculation = Calculation {
        model,
        state: DesiredState::default(),
    };
    calculation.vxlan_device();
    for learned in &model.learned_routes {
        let prefix = learned.prefix.trunc();
        if learned.next_hops.is_empty() {
            calculation.state.problems.push(Problem::NoNextHop(prefix));
            continue;
        }
        let mut hops = learned.next_hops.clone();
        hops.sort();
        hops.dedup();
        calculation
            .state
            .routes
            .insert(prefix, RouteTarget::Gateways(hops));
    }
    let this = &model.this_node.name;
    let remote = model
        .blocks
        .iter()
        .map(|block| (block.cidr, &block.node))
        .chain(
            model
                .borrowed
                .iter()
                .map(|borrowed| (host_prefix(borrowed.addr), &borrowed.node)),
        )
        .filter(|(_, node)| *node != this);
    for (prefix, node) in remote {
        if let Some(target) = calculation.remote_target(prefix, node) {
            calculation.state.routes.insert(prefix, target);
        }
    }
    let mut state = calculation.state;
    for block in model.blocks.iter().filter(|block| &block.node == this) {
        state.routes.insert(block.cidr, RouteTarget::Blackhole);
    }
    for (key, value) in GLOBAL_SYSCTLS {
        state.sysctls.insert(key.to_string(), value.to_string());
    }
    for endpoint in &model.endpoints {
        for addr in &endpoint.ips {
            state.routes.insert(
                host_prefix(*addr),
                RouteTarget::Interface(endpoint.interface.clone()),
            );
        }
        for (key, value) in interface_sysctls(&endpoint.interface) {
            state.sysctls.insert(key, value.to_string());
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Block, Borrowed, Endpoint, LearnedRoute, Pool, Tunnel};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, v4: &str, v6: &str, tunnel: Option<(&str, &str)>) -> Node {
        Node {
            name: name.into(),
            ipv4: Some(v4.parse::<Ipv4Net>().unwrap()),
            ipv6: Some(v6.parse::<Ipv6Net>().unwrap()),
            tunnel: tunnel.map(|(address, mac)| Tunnel {
                address: address.parse().unwrap(),
                mac: mac.parse().unwrap(),
            }),
        }
    }

    fn pool(cidr: &str, vxlan_mode: VxlanMode) -> Pool {
        Pool {
            cidr: net(cidr),
            vxlan_mode,
            nat_outgoing: false,
            disabled: false,
        }
    }

    /// Node a (this one) and b on 198.51.100.0/24, c on 203.0.113.0/24; pools 10.244.0.0/16 and
    /// fd00:244::/56 in `mode`; one block per node and family; one endpoint on a.
    fn cluster(mode: VxlanMode) -> Model {
        let a = node(
            "a",
            "198.51.100.1/24",
            "2001:db8:1::1/64",
            Some(("10.244.0.0", "66:00:00:00:00:0a")),
        );
        let mut model = Model::new(a.clone());
        model.nodes = vec![
            a,
            node(
                "b",
                "198.51.100.2/24",
                "2001:db8:1::2/64",
                Some(("10.244.1.0", "66:00:00:00:00:0b")),
            ),
            node(
                "c",
                "203.0.113.3/24",
                "2001:db8:2::3/64",
                Some(("10.244.2.0", "66:00:00:00:00:0c")),
            ),
        ];
        model.pools = vec![pool("10.244.0.0/16", mode), pool("fd00:244::/56", mode)];
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            model.blocks.push(Block {
                cidr: net(&format!("10.244.{i}.0/26")),
                node: name.into(),
            });
            model.blocks.push(Block {
                cidr: net(&format!("fd00:244:0:{i}::/122")),
                node: name.into(),
            });
        }
        model.endpoints.push(Endpoint {
            interface: "reef0123456789a".into(),
            ips: vec![ip("10.244.0.5"), ip("fd00:244::5")],
            mac: None,
        });
        model.host_mtu = Some(9000);
        model
    }

    #[test]
    fn never_mode_routes_local_only_and_takes_remote_blocks_from_bgp() {
        let mut model = cluster(VxlanMode::Never);
        model.learned_routes.push(LearnedRoute {
            prefix: net("10.244.1.0/26"),
            next_hops: vec![ip("198.51.100.2")],
        });
        let state = desired_state(&model);
        let dev = RouteTarget::Interface("reef0123456789a".into());
        assert_eq!(
            state.routes,
            BTreeMap::from([
                (net("10.244.0.0/26"), RouteTarget::Blackhole),
                (net("10.244.0.5/32"), dev.clone()),
                (
                    net("10.244.1.0/26"),
                    RouteTarget::Gateways(vec![ip("198.51.100.2")])
                ),
                (net("fd00:244::/122"), RouteTarget::Blackhole),
                (net("fd00:244::5/128"), dev),
            ])
        );
        assert_eq!(state.vxlan, None);
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        assert!(state.problems.is_empty(), "{:?}", state.problems);
        assert_eq!(
            state.sysctls["net/ipv4/conf/reef0123456789a/proxy_arp"],
            "1"
        );
        assert_eq!(
            state.sysctls["net/ipv4/neigh/reef0123456789a/proxy_delay"],
            "0"
        );
        assert_eq!(
            state.sysctls["net/ipv6/conf/reef0123456789a/accept_ra"],
            "0"
        );
        assert_eq!(state.sysctls["net/ipv4/ip_forward"], "1");
    }

    #[test]
    fn always_mode_encapsulates_to_every_node() {
        let state = desired_state(&cluster(VxlanMode::Always));
        assert_eq!(
            state.vxlan,
            Some(VxlanDevice {
                local: ip("198.51.100.1"),
                mac: "66:00:00:00:00:0a".parse().unwrap(),
                mtu: 9000 - 50,
                address: "10.244.0.0".parse().unwrap(),
            })
        );
        assert_eq!(
            state.routes[&net("10.244.1.0/26")],
            RouteTarget::Vxlan(ip("10.244.1.0"))
        );
        assert_eq!(
            state.routes[&net("10.244.2.0/26")],
            RouteTarget::Vxlan(ip("10.244.2.0"))
        );
        let mac_b: Mac = "66:00:00:00:00:0b".parse().unwrap();
        assert_eq!(
            state.routes[&net("fd00:244:0:1::/122")],
            RouteTarget::Vxlan(IpAddr::V6(mac_b.link_local()))
        );
        assert_eq!(state.neighbours[&ip("10.244.1.0")], mac_b);
        assert_eq!(state.neighbours[&IpAddr::V6(mac_b.link_local())], mac_b);
        assert_eq!(state.neighbours.len(), 4);
        assert_eq!(state.fdb[&mac_b], ip("198.51.100.2"));
        assert_eq!(
            state.fdb[&"66:00:00:00:00:0c".parse().unwrap()],
            ip("203.0.113.3")
        );
        assert!(state.problems.is_empty(), "{:?}", state.problems);
    }

    #[test]
    fn cross_subnet_encapsulates_only_outside_our_subnet() {
        let state = desired_state(&cluster(VxlanMode::CrossSubnet));
        assert_eq!(
            state.routes[&net("10.244.1.0/26")],
            RouteTarget::Gateways(vec![ip("198.51.100.2")])
        );
        assert_eq!(
            state.routes[&net("fd00:244:0:1::/122")],
            RouteTarget::Gateways(vec![ip("2001:db8:1::2")])
        );
        assert_eq!(
            state.routes[&net("10.244.2.0/26")],
            RouteTarget::Vxlan(ip("10.244.2.0"))
        );
        assert!(state.vxlan.is_some());
    }

    #[test]
    fn ipv6_underlay_costs_70() {
        let mut model = cluster(VxlanMode::Always);
        model.this_node.ipv4 = None;
        let state = desired_state(&model);
        let vxlan = state.vxlan.unwrap();
        assert_eq!((vxlan.local, vxlan.mtu), (ip("2001:db8:1::1"), 9000 - 70));
        assert_eq!(
            state.fdb[&"66:00:00:00:00:0b".parse().unwrap()],
            ip("2001:db8:1::2")
        );
    }

    #[test]
    fn borrowed_addresses_are_host_routes_to_their_node() {
        let mut model = cluster(VxlanMode::Always);
        model.borrowed = vec![
            // Borrowed by b from a's block: more specific than a's blackhole.
            Borrowed {
                addr: ip("10.244.0.9"),
                node: "b".into(),
            },
            // Borrowed by a itself: the endpoint route covers it.
            Borrowed {
                addr: ip("10.244.1.7"),
                node: "a".into(),
            },
        ];
        let state = desired_state(&model);
        assert_eq!(
            state.routes[&net("10.244.0.9/32")],
            RouteTarget::Vxlan(ip("10.244.1.0"))
        );
        assert!(!state.routes.contains_key(&net("10.244.1.7/32")));
    }

    #[test]
    fn bad_input_is_reported_and_the_rest_programmed() {
        let mut model = cluster(VxlanMode::Always);
        model.blocks.push(Block {
            cidr: net("192.168.0.0/26"),
            node: "b".into(),
        });
        model.blocks.push(Block {
            cidr: net("10.244.9.0/26"),
            node: "ghost".into(),
        });
        model.nodes[1].tunnel = None;
        model.learned_routes.push(LearnedRoute {
            prefix: net("192.0.2.0/24"),
            next_hops: vec![],
        });
        let state = desired_state(&model);
        assert_eq!(
            state.problems,
            vec![
                Problem::NoNextHop(net("192.0.2.0/24")),
                Problem::NoRemoteTunnel {
                    prefix: net("10.244.1.0/26"),
                    node: "b".into()
                },
                Problem::NoRemoteTunnel {
                    prefix: net("fd00:244:0:1::/122"),
                    node: "b".into()
                },
                Problem::OutsidePools {
                    prefix: net("192.168.0.0/26"),
                    node: "b".into()
                },
                Problem::UnknownNode {
                    prefix: net("10.244.9.0/26"),
                    node: "ghost".into()
                },
            ]
        );
        assert_eq!(
            state.routes[&net("10.244.2.0/26")],
            RouteTarget::Vxlan(ip("10.244.2.0"))
        );
        let mut no_tunnel = cluster(VxlanMode::Always);
        no_tunnel.this_node.tunnel = None;
        let state = desired_state(&no_tunnel);
        assert_eq!(state.problems, vec![Problem::NoLocalTunnel]);
        assert!(!state.routes.contains_key(&net("10.244.1.0/26")));
        assert!(state.routes.contains_key(&net("10.244.0.5/32")));
    }

    fn arb_mode() -> impl Strategy<Value = VxlanMode> {
        prop_oneof![
            Just(VxlanMode::Never),
            Just(VxlanMode::Always),
            Just(VxlanMode::CrossSubnet)
        ]
    }

    proptest! {
        /// Whatever the modes and learned routes: every local endpoint address has its host route,
        /// every local block its blackhole, no route goes via VXLAN without the device, and every
        /// VXLAN next hop has its neighbour entry whose MAC has an FDB entry.
        #[test]
        fn invariants(
            mode_v4 in arb_mode(),
            mode_v6 in arb_mode(),
            learned in proptest::collection::vec((0u8..4, 0u8..3), 0..6),
            endpoints in proptest::collection::vec(0u8..60, 0..8),
        ) {
            let mut model = cluster(mode_v4);
            model.pools[1].vxlan_mode = mode_v6;
            for (block, hop) in learned {
                model.learned_routes.push(LearnedRoute {
                    prefix: net(&format!("10.244.{block}.0/26")),
                    next_hops: vec![IpAddr::from([198, 51, 100, hop])],
                });
            }
            for (i, host) in endpoints.into_iter().enumerate() {
                model.endpoints.push(Endpoint {
                    interface: format!("reef{i:011x}"),
                    ips: vec![IpAddr::from([10, 244, 0, host])],
                    mac: None,
                });
            }
            let state = desired_state(&model);
            for endpoint in &model.endpoints {
                for addr in &endpoint.ips {
                    prop_assert!(matches!(&state.routes[&host_prefix(*addr)], RouteTarget::Interface(_)));
                }
            }
            prop_assert_eq!(&state.routes[&net("10.244.0.0/26")], &RouteTarget::Blackhole);
            prop_assert_eq!(&state.routes[&net("fd00:244::/122")], &RouteTarget::Blackhole);
            for target in state.routes.values() {
                if let RouteTarget::Vxlan(gateway) = target {
                    prop_assert!(state.vxlan.is_some());
                    let mac = state.neighbours.get(gateway);
                    prop_assert!(mac.is_some_and(|mac| state.fdb.contains_key(mac)));
                }
            }
            prop_assert!(state.problems.is_empty(), "{:?}", state.problems);
        }
    }
}
