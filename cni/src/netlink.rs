//! The thin kernel driver: applies a [`PodWiring`] with rtnetlink, tears it down, and reads back what
//! CHECK compares. One netlink socket per namespace: the pod's is opened by a short-lived thread that
//! entered the pod's namespace (a socket keeps the namespace it was made in).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use reef_felix::REEF_ROUTE_PROTOCOL;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressScope};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::spec::{CniError, ErrorCode};
use crate::wiring::{HostLink, PodWiring, host_link_local, host_mac};

/// A netlink handle in one namespace; its connection task runs on the current tokio runtime.
pub struct Kernel {
    handle: Handle,
}

fn kernel_error(what: impl std::fmt::Display, e: &rtnetlink::Error) -> CniError {
    CniError::new(ErrorCode::Kernel, format!("{what}: {}", describe(e)))
}

/// The errno of a netlink error answer (positive), if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.to_string(),
    }
}

impl Kernel {
    /// The namespace this process runs in (the node's).
    pub fn open_host() -> Result<Kernel, CniError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
            CniError::new(ErrorCode::Io, format!("cannot open a netlink socket: {e}"))
        })?;
        tokio::spawn(connection);
        Ok(Kernel { handle })
    }

    /// The namespace behind `netns` (an open `/proc/PID/ns/net` or `/run/netns/NAME`).
    pub fn open_in(netns: &File) -> Result<Kernel, CniError> {
        let runtime = tokio::runtime::Handle::current();
        let fd = netns.as_raw_fd();
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let _entered = runtime.enter();
                    // SAFETY: setns on a namespace fd we hold open; it changes only this scoped thread.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    rtnetlink::new_connection()
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")))
        });
        let (connection, handle, _) = opened.map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                format!("cannot open a netlink socket in the container's network namespace: {e}"),
            )
        })?;
        tokio::spawn(connection);
        Ok(Kernel { handle })
    }

    /// The index of the link called `name`, if there is one.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, CniError> {
        Ok(self.link(name).await?.map(|l| l.header.index))
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>, CniError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel_error(format_args!("reading link {name}"), &e)),
        }
    }

    /// Deletes link `name` if it exists; true if it did.
    pub async fn delete_link(&self, name: &str) -> Result<bool, CniError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(kernel_error(format_args!("deleting link {name}"), &e)),
        }
    }

    /// Every link with its MTU, state and whether it holds a global address (for the MTU detection).
    pub async fn host_links(&self) -> Result<Vec<HostLink>, CniError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error("listing links", &e))?;
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error("listing addresses", &e))?;
        Ok(links
            .iter()
            .map(|link| HostLink {
                name: link_name(link),
                mtu: link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(0),
                up: link.header.flags.contains(LinkFlags::Up),
                has_global_address: addresses.iter().any(|a| {
                    a.header.index == link.header.index && a.header.scope == AddressScope::Universe
                }),
            })
            .collect())
    }

    /// The link's MAC as `aa:bb:..`.
    async fn mac_of(&self, name: &str) -> Result<String, CniError> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| CniError::new(ErrorCode::Kernel, format!("link {name} vanished")))?;
        Ok(link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(octets) => Some(format_mac(octets)),
                _ => None,
            })
            .unwrap_or_default())
    }

    async fn set_up(&self, index: u32, what: &str) -> Result<(), CniError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel_error(format_args!("setting {what} up"), &e))
    }

    async fn add_address(&self, index: u32, net: IpNet, what: &str) -> Result<(), CniError> {
        let mut request = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        // Fixed addresses on a point-to-point link: duplicate detection would only delay the pod.
        request.message_mut().header.flags = AddressHeaderFlags::Nodad;
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(kernel_error(format_args!("adding {net} to {what}"), &e)),
        }
    }

    async fn add_route(&self, message: RouteMessage, what: String) -> Result<(), CniError> {
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| kernel_error(what, &e))
    }

    /// Every route of the main table with its destination, gateway, output link and protocol.
    async fn routes(&self) -> Result<Vec<KernelRoute>, CniError> {
        let mut all = Vec::new();
        for v6 in [false, true] {
            let query = if v6 {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            };
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel_error("listing routes", &e))?;
            all.extend(routes.iter().filter_map(KernelRoute::from_message));
        }
        Ok(all)
    }

    /// The addresses on link `index`.
    async fn addresses_of(&self, index: u32) -> Result<Vec<IpNet>, CniError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error("listing addresses", &e))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNet::new(addr, m.header.prefix_len).ok()
            })
            .collect())
    }
}

/// One route as CHECK compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelRoute {
    dst: IpNet,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    protocol: RouteProtocol,
}

impl KernelRoute {
    fn from_message(message: &RouteMessage) -> Option<KernelRoute> {
        let address = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        };
        let mut dst = None;
        let mut gateway = None;
        let mut oif = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(a) => dst = address(a),
                RouteAttribute::Gateway(a) => gateway = address(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let len = message.header.destination_prefix_length;
        let dst = match dst {
            Some(ip) => IpNet::new(ip, len).ok()?,
            None if message.header.address_family
                == rtnetlink::packet_route::AddressFamily::Inet6 =>
            {
                IpNet::new(std::net::Ipv6Addr::UNSPECIFIED.into(), len).ok()?
            }
            None => IpNet::new(std::net::Ipv4Addr::UNSPECIFIED.into(), len).ok()?,
        };
        Some(KernelRoute {
            dst,
            gateway,
            oif,
            protocol: message.header.protocol,
        })
    }
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn format_mac(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|o| format!("{o:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn write_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    let file = Path::new("/proc/sys").join(path);
    std::fs::write(&file, value).map_err(|e| {
        CniError::new(
            ErrorCode::Kernel,
            format!("setting {} to {value}: {e}", file.display()),
        )
    })
}

/// Creates the attachment: the veth pair (the pod end made straight inside the pod's namespace), the
/// host side's MAC, sysctls and routes, the pod side's addresses and routes. Returns the pod side's MAC.
/// On error the caller removes the host link (which takes the pod end and the routes with it).
pub async fn create(
    host: &Kernel,
    pod: &Kernel,
    netns: &File,
    plan: &PodWiring,
) -> Result<String, CniError> {
    let peer: LinkMessage = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.pod_ifname.clone())
        .mtu(plan.mtu)
        .setns_by_fd(netns.as_raw_fd() as RawFd)
        .build();
    let veth = LinkVeth::new(&plan.host_ifname, &plan.pod_ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(plan.mtu)
        .address(host_mac().to_vec())
        .build();
    host.handle.link().add(veth).execute().await.map_err(|e| {
        kernel_error(
            format_args!("creating veth {} / {}", plan.host_ifname, plan.pod_ifname),
            &e,
        )
    })?;
    let host_index = host.link_index(&plan.host_ifname).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!("veth {} vanished after creation", plan.host_ifname),
        )
    })?;
    // Sysctls before the link comes up, so IPv6 never autoconfigures on it.
    for (path, value) in &plan.host_sysctls {
        write_sysctl(path, value)?;
    }
    host.set_up(host_index, &plan.host_ifname).await?;
    if plan.addresses.iter().any(|a| a.addr().is_ipv6()) {
        let link_local = IpNet::new(host_link_local().into(), 64).map_err(|e| {
            CniError::new(ErrorCode::Kernel, format!("host link-local address: {e}"))
        })?;
        host.add_address(host_index, link_local, &plan.host_ifname)
            .await?;
    }

    let pod_index = pod.link_index(&plan.pod_ifname).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!(
                "{} did not appear in the container's namespace",
                plan.pod_ifname
            ),
        )
    })?;
    for address in &plan.addresses {
        pod.add_address(pod_index, *address, &plan.pod_ifname)
            .await?;
    }
    pod.set_up(pod_index, &plan.pod_ifname).await?;
    for gateway in &plan.gateway_neighbours {
        pod.handle
            .neighbours()
            .add(pod_index, *gateway)
            .link_layer_address(&host_mac())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                kernel_error(
                    format_args!("adding neighbour {gateway} in the container"),
                    &e,
                )
            })?;
    }
    for route in &plan.pod_routes {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .map_err(|e| CniError::new(ErrorCode::Kernel, e.to_string()))?
            .output_interface(pod_index);
        builder = match route.via {
            Some(via) => builder
                .gateway(via)
                .map_err(|e| CniError::new(ErrorCode::Kernel, e.to_string()))?,
            None => builder.scope(RouteScope::Link),
        };
        // As `ip route add` marks them: the pod's own routes, not a daemon's.
        builder = builder.protocol(RouteProtocol::Boot);
        pod.add_route(
            builder.build(),
            format!("adding route {} in the container", route.dst),
        )
        .await?;
    }
    for dst in &plan.host_routes {
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| CniError::new(ErrorCode::Kernel, e.to_string()))?
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(REEF_ROUTE_PROTOCOL))
            .build();
        host.add_route(
            message,
            format!("adding host route {dst} dev {}", plan.host_ifname),
        )
        .await?;
    }
    pod.mac_of(&plan.pod_ifname).await
}

/// What differs between the kernel and the plan, one line each (empty: all as planned).
pub async fn differences(
    host: &Kernel,
    pod: &Kernel,
    plan: &PodWiring,
) -> Result<Vec<String>, CniError> {
    let mut found = Vec::new();
    let host_index = host.link_index(&plan.host_ifname).await?;
    match host_index {
        None => found.push(format!("host interface {} is missing", plan.host_ifname)),
        Some(_) => {
            let mac = host.mac_of(&plan.host_ifname).await?;
            if mac != reef_crds::workload::HOST_INTERFACE_MAC {
                found.push(format!(
                    "host interface {} has MAC {mac}, not {}",
                    plan.host_ifname,
                    reef_crds::workload::HOST_INTERFACE_MAC
                ));
            }
        }
    }
    let pod_index = pod.link_index(&plan.pod_ifname).await?;
    match pod_index {
        None => found.push(format!(
            "interface {} is missing in the container",
            plan.pod_ifname
        )),
        Some(index) => {
            let present = pod.addresses_of(index).await?;
            for address in &plan.addresses {
                if !present.contains(address) {
                    found.push(format!(
                        "address {address} is missing on {} in the container",
                        plan.pod_ifname
                    ));
                }
            }
            let routes = pod.routes().await?;
            for want in &plan.pod_routes {
                let ok = routes
                    .iter()
                    .any(|r| r.dst == want.dst && r.gateway == want.via && r.oif == Some(index));
                if !ok {
                    let via = want.via.map(|v| format!(" via {v}")).unwrap_or_default();
                    found.push(format!(
                        "route {}{via} dev {} is missing in the container",
                        want.dst, plan.pod_ifname
                    ));
                }
            }
        }
    }
    if let Some(index) = host_index {
        let routes = host.routes().await?;
        for dst in &plan.host_routes {
            let ok = routes.iter().any(|r| {
                r.dst == *dst
                    && r.oif == Some(index)
                    && r.protocol == RouteProtocol::Other(REEF_ROUTE_PROTOCOL)
            });
            if !ok {
                found.push(format!(
                    "host route {dst} dev {} proto {REEF_ROUTE_PROTOCOL} is missing",
                    plan.host_ifname
                ));
            }
        }
    }
    Ok(found)
}
