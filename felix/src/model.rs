//! The dataplane model felix takes: this node, the other nodes, the IP pools, the blocks and their
//! nodes, the local workload endpoints, and the routes learned by BGP as plain data (felix knows
//! nothing of BGP: the agent hands it the Loc-RIB's selections).
//!
//! Everything is parsed and checked here; the constructors from the `reef-crds` types return
//! [`ModelError`] for a malformed object so the agent can report it and keep the rest.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reef_crds::ipam::{BlockAffinitySpec, IPAMBlockSpec};
use reef_crds::node::ReefNodeSpec;
use reef_crds::workload::{HOST_INTERFACE_PREFIX, WorkloadEndpointSpec};
use reef_crds::{AffinityState, IPPoolSpec, VxlanMode};

/// Why an object cannot become part of the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{field}: {value:?} is not a {what}")]
    Parse {
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("interface {0:?} is not a Reef workload interface (reef + at most 11 characters)")]
    Interface(String),
    #[error("block {0} has no node affinity")]
    NoAffinity(String),
}

fn parse<T: FromStr>(
    field: &'static str,
    value: &str,
    what: &'static str,
) -> Result<T, ModelError> {
    value.parse().map_err(|_| ModelError::Parse {
        field,
        value: value.to_string(),
        what,
    })
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ModelError;

    /// `aa:bb:cc:dd:ee:ff` (also with `-`), case-insensitive.
    fn from_str(text: &str) -> Result<Mac, ModelError> {
        let error = || ModelError::Parse {
            field: "mac",
            value: text.to_string(),
            what: "MAC address",
        };
        let mut mac = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(error)?;
            if part.len() != 2 {
                return Err(error());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| error())?;
        }
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Mac {
    /// The IPv6 link-local address the kernel gives an interface with this MAC (EUI-64,
    /// RFC 4291 appendix A): felix routes IPv6 blocks over VXLAN via the remote device's one.
    pub fn link_local(&self) -> Ipv6Addr {
        let [a, b, c, d, e, g] = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            a ^ 0x02,
            b,
            c,
            0xff,
            0xfe,
            d,
            e,
            g,
        ])
    }
}

/// A node's underlay and tunnel identity (this node or another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Underlay IPv4 address with its subnet (`ReefNode.spec.bgp.ipv4Address`).
    pub ipv4: Option<Ipv4Net>,
    /// Underlay IPv6 address with its subnet.
    pub ipv6: Option<Ipv6Net>,
    /// VXLAN tunnel device identity (address from IPAM, MAC), when the node has one.
    pub tunnel: Option<Tunnel>,
}

/// A node's VXLAN tunnel device identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub address: Ipv4Addr,
    pub mac: Mac,
}

impl Node {
    /// A node with no addresses yet; fill the fields in.
    pub fn new(name: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            ipv4: None,
            ipv6: None,
            tunnel: None,
        }
    }

    /// From a `ReefNode` named `name`.
    pub fn from_reef_node(name: &str, spec: &ReefNodeSpec) -> Result<Node, ModelError> {
        let mut node = Node::new(name);
        if let Some(bgp) = &spec.bgp {
            if let Some(v4) = &bgp.ipv4_address {
                node.ipv4 = Some(parse("bgp.ipv4Address", v4, "IPv4 address/prefix")?);
            }
            if let Some(v6) = &bgp.ipv6_address {
                node.ipv6 = Some(parse("bgp.ipv6Address", v6, "IPv6 address/prefix")?);
            }
        }
        if let Some(vxlan) = &spec.vxlan
            && let (Some(address), Some(mac)) = (&vxlan.tunnel_address, &vxlan.tunnel_mac)
        {
            node.tunnel = Some(Tunnel {
                address: parse("vxlan.tunnelAddress", address, "IPv4 address")?,
                mac: mac.parse()?,
            });
        }
        Ok(node)
    }

    /// The node's underlay address of `family`'s kind (`v4`: IPv4).
    pub fn address(&self, v4: bool) -> Option<IpAddr> {
        if v4 {
            self.ipv4.map(|net| IpAddr::V4(net.addr()))
        } else {
            self.ipv6.map(|net| IpAddr::V6(net.addr()))
        }
    }
}

/// An IP pool, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNet,
    pub vxlan_mode: VxlanMode,
    pub nat_outgoing: bool,
    /// A disabled pool gives no new addresses; the ones in use are still routed.
    pub disabled: bool,
}

impl TryFrom<&IPPoolSpec> for Pool {
    type Error = ModelError;

    fn try_from(spec: &IPPoolSpec) -> Result<Pool, ModelError> {
        Ok(Pool {
            cidr: parse::<IpNet>("cidr", &spec.cidr, "CIDR")?.trunc(),
            vxlan_mode: spec.vxlan_mode,
            nat_outgoing: spec.nat_outgoing,
            disabled: spec.disabled,
        })
    }
}

/// An IPAM block and the node it is affine to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    pub node: String,
}

impl TryFrom<&IPAMBlockSpec> for Block {
    type Error = ModelError;

    fn try_from(spec: &IPAMBlockSpec) -> Result<Block, ModelError> {
        let node = spec
            .affine_node()
            .ok_or_else(|| ModelError::NoAffinity(spec.cidr.clone()))?;
        Ok(Block {
            cidr: parse::<IpNet>("cidr", &spec.cidr, "CIDR")?.trunc(),
            node: node.to_string(),
        })
    }
}

impl Block {
    /// From a confirmed `BlockAffinity` (pending ones are not routed: the block may not exist).
    pub fn from_affinity(spec: &BlockAffinitySpec) -> Result<Option<Block>, ModelError> {
        if spec.state != AffinityState::Confirmed || spec.deleted {
            return Ok(None);
        }
        Ok(Some(Block {
            cidr: parse::<IpNet>("cidr", &spec.cidr, "CIDR")?.trunc(),
            node: spec.node.clone(),
        }))
    }
}

/// An address used on `node` from a block affine to another node (IPAM borrowing): routed as its
/// own /32 or /128.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Borrowed {
    pub addr: IpAddr,
    pub node: String,
}

/// A workload interface on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host side of the veth (`reef` + 11 hex digits).
    pub interface: String,
    /// The workload's addresses (each routed as a /32 or /128).
    pub ips: Vec<IpAddr>,
    /// The workload side's MAC, when known.
    pub mac: Option<Mac>,
}

impl TryFrom<&WorkloadEndpointSpec> for Endpoint {
    type Error = ModelError;

    fn try_from(spec: &WorkloadEndpointSpec) -> Result<Endpoint, ModelError> {
        let interface = &spec.interface_name;
        if !interface.starts_with(HOST_INTERFACE_PREFIX) || interface.len() > 15 {
            return Err(ModelError::Interface(interface.clone()));
        }
        let ips = spec
            .ip_networks
            .iter()
            .map(|net| {
                // `10.244.3.65/32` (or a bare address).
                let addr = net.split('/').next().unwrap_or_default();
                parse::<IpAddr>("ipNetworks", addr, "IP address")
            })
            .collect::<Result<_, _>>()?;
        let mac = match spec.mac.as_str() {
            "" => None,
            mac => Some(mac.parse()?),
        };
        Ok(Endpoint {
            interface: interface.clone(),
            ips,
            mac,
        })
    }
}

/// A route the agent learned by BGP (the Loc-RIB's selection): several next hops are ECMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    pub prefix: IpNet,
    pub next_hops: Vec<IpAddr>,
}

/// Everything felix programs from. Build it with the constructors above; the agent replaces the
/// whole model on every change (felix diffs the desired state, not the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub this_node: Node,
    /// The other nodes (this node, if listed, is ignored).
    pub nodes: Vec<Node>,
    pub pools: Vec<Pool>,
    /// Blocks of every node, this one's included (blackholed here, routed to their node elsewhere).
    pub blocks: Vec<Block>,
    pub borrowed: Vec<Borrowed>,
    pub endpoints: Vec<Endpoint>,
    pub learned_routes: Vec<LearnedRoute>,
    /// The underlay interface MTU; `None`: the driver detects it from the interface holding the
    /// node's address (1500 if none does).
    pub host_mtu: Option<u32>,
}

impl Model {
    /// A model of `this_node` alone; fill in the rest.
    pub fn new(this_node: Node) -> Model {
        Model {
            this_node,
            nodes: Vec::new(),
            pools: Vec::new(),
            blocks: Vec::new(),
            borrowed: Vec::new(),
            endpoints: Vec::new(),
            learned_routes: Vec::new(),
            host_mtu: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use reef_crds::node::{NodeBGPSpec, NodeVXLANSpec};

    use super::*;

    #[test]
    fn macs_parse_print_and_give_the_kernels_link_local() {
        let mac: Mac = "EE:ee:ee:ee:ee:ee".parse().unwrap();
        assert_eq!(mac.to_string(), "ee:ee:ee:ee:ee:ee");
        // The address `ip -6 addr` shows on a veth with this MAC.
        assert_eq!(
            mac.link_local(),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
        for bad in [
            "",
            "ee:ee:ee:ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "e:ee:ee:ee:ee:eee",
            "gg:ee:ee:ee:ee:ee",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_from_reef_node() {
        let spec = ReefNodeSpec {
            bgp: Some(NodeBGPSpec {
                ipv4_address: Some("198.51.100.10/24".into()),
                ipv6_address: Some("2001:db8::10/64".into()),
                ..Default::default()
            }),
            vxlan: Some(NodeVXLANSpec {
                tunnel_address: Some("10.244.0.1".into()),
                tunnel_mac: Some("66:a0:2c:11:22:33".into()),
            }),
        };
        let node = Node::from_reef_node("a", &spec).unwrap();
        assert_eq!(node.ipv4, Some("198.51.100.10/24".parse().unwrap()));
        assert_eq!(node.address(false), Some("2001:db8::10".parse().unwrap()));
        assert_eq!(node.tunnel.unwrap().mac.to_string(), "66:a0:2c:11:22:33");
        let bad = ReefNodeSpec {
            bgp: Some(NodeBGPSpec {
                ipv4_address: Some("198.51.100.300/24".into()),
                ..Default::default()
            }),
            vxlan: None,
        };
        assert!(matches!(
            Node::from_reef_node("b", &bad),
            Err(ModelError::Parse {
                field: "bgp.ipv4Address",
                ..
            })
        ));
    }

    #[test]
    fn endpoint_from_workload_endpoint() {
        let spec = WorkloadEndpointSpec {
            interface_name: "reefc440f455693".into(),
            ip_networks: vec!["10.244.3.65/32".into(), "fd00::5/128".into()],
            mac: "02:00:00:00:00:01".into(),
            ..Default::default()
        };
        let endpoint = Endpoint::try_from(&spec).unwrap();
        assert_eq!(endpoint.ips.len(), 2);
        let foreign = WorkloadEndpointSpec {
            interface_name: "eth0".into(),
            ..spec.clone()
        };
        assert_eq!(
            Endpoint::try_from(&foreign),
            Err(ModelError::Interface("eth0".into()))
        );
    }

    #[test]
    fn blocks_need_an_affinity() {
        let affinity = BlockAffinitySpec {
            state: AffinityState::Pending,
            node: "a".into(),
            cidr: "10.244.0.0/26".into(),
            deleted: false,
            type_: Default::default(),
        };
        assert_eq!(Block::from_affinity(&affinity), Ok(None));
        let confirmed = BlockAffinitySpec {
            state: AffinityState::Confirmed,
            ..affinity
        };
        assert_eq!(
            Block::from_affinity(&confirmed).unwrap().unwrap().cidr,
            "10.244.0.0/26".parse::<IpNet>().unwrap()
        );
    }
}
