//! What a pod attachment looks like in the kernel, computed without touching it: the veth pair, the
//! pod's addresses and routes, the host's routes and sysctls, and the MTU. The netlink driver applies
//! this plan; CHECK compares the kernel with it; felix recomputes the same from the WorkloadEndpoint.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reef_crds::workload::{HOST_INTERFACE_MAC, POD_GATEWAY_V4};

use crate::spec::{CniResult, Interface, IpConfig, Route};

/// VXLAN's overhead over IPv4 and over IPv6 underlays.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// The MTU used when no host interface tells one.
pub const FALLBACK_MTU: u32 = 1500;

/// The host veth's MAC as octets.
pub fn host_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (octet, text) in mac.iter_mut().zip(HOST_INTERFACE_MAC.split(':')) {
        *octet = u8::from_str_radix(text, 16).unwrap_or(0xee);
    }
    mac
}

/// The IPv6 link-local address of the host veth (EUI-64 of its fixed MAC): the pods' IPv6 gateway.
/// Fixed, so a pod's default route never depends on reading it back from the kernel.
pub fn host_link_local() -> Ipv6Addr {
    let m = host_mac();
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// A route inside the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNet,
    /// `None`: directly on the link (scope link).
    pub via: Option<IpAddr>,
}

/// The whole attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWiring {
    pub host_ifname: String,
    pub pod_ifname: String,
    pub mtu: u32,
    /// The pod's addresses: /32 and /128.
    pub addresses: Vec<IpNet>,
    pub pod_routes: Vec<PodRoute>,
    /// Gateways the pod gets a permanent neighbour entry for (-> the host veth's MAC): the pod never
    /// waits for ARP/ND, and does not depend on the host having a route that proxy ARP needs.
    pub gateway_neighbours: Vec<IpAddr>,
    /// Host routes `<addr> dev <host_ifname>`, with Reef's route protocol.
    pub host_routes: Vec<IpNet>,
    /// Host-side sysctls, as (path under /proc/sys, value).
    pub host_sysctls: Vec<(String, &'static str)>,
}

impl PodWiring {
    pub fn plan(host_ifname: &str, pod_ifname: &str, mtu: u32, ips: &[IpAddr]) -> PodWiring {
        let addresses: Vec<IpNet> = ips.iter().map(|ip| IpNet::from(*ip)).collect();
        let has_v4 = ips.iter().any(IpAddr::is_ipv4);
        let has_v6 = ips.iter().any(IpAddr::is_ipv6);
        let mut pod_routes = Vec::new();
        if has_v4 {
            pod_routes.push(PodRoute {
                dst: IpNet::V4(Ipv4Net::from(POD_GATEWAY_V4)),
                via: None,
            });
            pod_routes.push(PodRoute {
                dst: IpNet::V4(Ipv4Net::default()),
                via: Some(POD_GATEWAY_V4.into()),
            });
        }
        if has_v6 {
            pod_routes.push(PodRoute {
                dst: IpNet::V6(Ipv6Net::default()),
                via: Some(host_link_local().into()),
            });
        }
        let conf = |family: &str, key: &str| format!("net/{family}/conf/{host_ifname}/{key}");
        let mut host_sysctls = Vec::new();
        if has_v4 {
            host_sysctls.push((conf("ipv4", "proxy_arp"), "1"));
            host_sysctls.push((format!("net/ipv4/neigh/{host_ifname}/proxy_delay"), "0"));
            host_sysctls.push((conf("ipv4", "forwarding"), "1"));
        }
        if has_v6 {
            // Router advertisements and DAD on a point-to-point link with fixed addresses only delay
            // the pod's first packets.
            host_sysctls.push((conf("ipv6", "disable_ipv6"), "0"));
            host_sysctls.push((conf("ipv6", "accept_ra"), "0"));
            host_sysctls.push((conf("ipv6", "accept_dad"), "0"));
            host_sysctls.push((conf("ipv6", "forwarding"), "1"));
        } else {
            host_sysctls.push((conf("ipv6", "disable_ipv6"), "1"));
        }
        let mut gateway_neighbours = Vec::new();
        if has_v4 {
            gateway_neighbours.push(IpAddr::V4(POD_GATEWAY_V4));
        }
        if has_v6 {
            gateway_neighbours.push(IpAddr::V6(host_link_local()));
        }
        PodWiring {
            gateway_neighbours,
            host_ifname: host_ifname.to_string(),
            pod_ifname: pod_ifname.to_string(),
            mtu,
            host_routes: addresses.clone(),
            addresses,
            pod_routes,
            host_sysctls,
        }
    }

    /// The ADD result: the host interface (index 0), the pod interface (index 1), its addresses with
    /// their gateways, and the default routes.
    pub fn result(
        &self,
        pod_mac: &str,
        sandbox: &str,
        dns: Option<serde_json::Value>,
    ) -> CniResult {
        let ips = self
            .addresses
            .iter()
            .map(|a| IpConfig {
                address: *a,
                gateway: Some(gateway_for(a.addr())),
                interface: Some(1),
            })
            .collect();
        let routes = self
            .pod_routes
            .iter()
            .filter(|r| r.dst.prefix_len() == 0)
            .map(|r| Route {
                dst: r.dst,
                gw: r.via,
            })
            .collect();
        CniResult {
            interfaces: vec![
                Interface {
                    name: self.host_ifname.clone(),
                    mac: HOST_INTERFACE_MAC.to_string(),
                    mtu: Some(self.mtu),
                    sandbox: None,
                },
                Interface {
                    name: self.pod_ifname.clone(),
                    mac: pod_mac.to_string(),
                    mtu: Some(self.mtu),
                    sandbox: Some(sandbox.to_string()),
                },
            ],
            ips,
            routes,
            dns,
        }
    }
}

/// The gateway a pod uses for an address of this family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => POD_GATEWAY_V4.into(),
        IpAddr::V6(_) => host_link_local().into(),
    }
}

/// One host interface as the MTU detection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// Holds an address of global scope (so it carries node traffic).
    pub has_global_address: bool,
}

/// The pods' MTU when the configuration sets none: the smallest MTU of the host's interfaces that carry
/// node traffic (up, with a global address; not loopback, not a pod veth, not the VXLAN device), less
/// the VXLAN overhead when one of the pod's pools encapsulates (70 when an IPv6 pool does, else 50).
pub fn auto_mtu(links: &[HostLink], vxlan_v4: bool, vxlan_v6: bool) -> u32 {
    let host = links
        .iter()
        .filter(|l| l.up && l.has_global_address)
        .filter(|l| {
            l.name != "lo"
                && !l
                    .name
                    .starts_with(reef_crds::workload::HOST_INTERFACE_PREFIX)
                && !l.name.starts_with("vxlan")
        })
        .map(|l| l.mtu)
        .min()
        .unwrap_or(FALLBACK_MTU);
    let overhead = if vxlan_v6 {
        VXLAN_OVERHEAD_V6
    } else if vxlan_v4 {
        VXLAN_OVERHEAD_V4
    } else {
        0
    };
    host.saturating_sub(overhead).max(1280)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_link_local_is_the_eui64_of_the_fixed_mac() {
        assert_eq!(
            host_link_local(),
            "fe80::ecee:eeff:feee:eeee".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn dual_stack_plan() {
        let w = PodWiring::plan(
            "reefc440f455693",
            "eth0",
            1450,
            &[ip("10.244.0.5"), ip("fd00:244::5")],
        );
        assert_eq!(
            w.addresses,
            vec![
                "10.244.0.5/32".parse::<IpNet>().unwrap(),
                "fd00:244::5/128".parse().unwrap()
            ]
        );
        assert_eq!(w.host_routes, w.addresses);
        assert_eq!(
            w.pod_routes,
            vec![
                PodRoute {
                    dst: "169.254.1.1/32".parse().unwrap(),
                    via: None
                },
                PodRoute {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    via: Some(ip("169.254.1.1"))
                },
                PodRoute {
                    dst: "::/0".parse().unwrap(),
                    via: Some(ip("fe80::ecee:eeff:feee:eeee"))
                },
            ]
        );
        assert!(
            w.host_sysctls
                .contains(&("net/ipv4/conf/reefc440f455693/proxy_arp".into(), "1"))
        );
        assert!(
            w.host_sysctls
                .contains(&("net/ipv4/neigh/reefc440f455693/proxy_delay".into(), "0"))
        );
        let r = w.result("0a:00:00:00:00:01", "/proc/1/ns/net", None);
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[1].gateway, Some(ip("fe80::ecee:eeff:feee:eeee")));
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/proc/1/ns/net"));
    }

    #[test]
    fn ipv4_only_pods_get_no_ipv6_on_the_host_side() {
        let w = PodWiring::plan("reef0", "eth0", 1500, &[ip("10.0.0.1")]);
        assert!(
            w.host_sysctls
                .contains(&("net/ipv6/conf/reef0/disable_ipv6".into(), "1"))
        );
        assert_eq!(w.pod_routes.len(), 2);
    }

    #[test]
    fn auto_mtu_takes_the_smallest_node_link_less_vxlan() {
        let link = |name: &str, mtu, up, global| HostLink {
            name: name.into(),
            mtu,
            up,
            has_global_address: global,
        };
        let links = [
            link("lo", 65536, true, true),
            link("eth0", 9000, true, true),
            link("eth1", 1500, true, true),
            link("eth2", 1400, false, true),
            link("eth3", 1300, true, false),
            link("reef0123456789a", 1000, true, true),
            link("vxlan.reef", 1450, true, true),
        ];
        assert_eq!(auto_mtu(&links, false, false), 1500);
        assert_eq!(auto_mtu(&links, true, false), 1450);
        assert_eq!(auto_mtu(&links, true, true), 1430);
        assert_eq!(auto_mtu(&[], false, false), FALLBACK_MTU);
    }
}
