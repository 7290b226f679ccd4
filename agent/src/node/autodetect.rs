//! Node address autodetection (Calico's `IP_AUTODETECTION_METHOD`): `first-found`,
//! `interface=<regex>`, `can-reach=<ip>`, `cidr=<cidr>[,<cidr>...]`. The choice is pure
//! ([`choose`]) over the interface addresses read by [`interface_addresses`]; the result says why the
//! address was chosen, because a wrong choice is the most common BGP failure in the field.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;
use thiserror::Error;

/// Interfaces `first-found` never picks (Calico's default exclusions plus Reef's own devices).
const EXCLUDED_INTERFACES: &[&str] = &[
    "^lo$",
    "^docker",
    "^cbr",
    "^dummy",
    "^virbr",
    "^lxcbr",
    "^veth",
    "^cali",
    "^tunl",
    "^flannel",
    "^kube-ipvs",
    "^cni",
    "^vxlan",
    "^reef",
    "^br-",
];

/// How to find the node's address.
#[derive(Clone, Debug)]
pub enum Method {
    FirstFound,
    Interface(Regex),
    CanReach(IpAddr),
    Cidrs(Vec<IpNet>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AutodetectError {
    #[error(
        "unknown autodetection method {0:?}: use first-found, interface=<regex>, can-reach=<ip> or cidr=<cidr>[,<cidr>]"
    )]
    UnknownMethod(String),
    #[error("interface={0:?}: not a regular expression: {1}")]
    BadRegex(String, String),
    #[error("can-reach={0:?}: not an IP address (e.g. can-reach=198.51.100.1)")]
    BadAddress(String),
    #[error("cidr={0:?}: not a CIDR (e.g. cidr=198.51.100.0/24)")]
    BadCidr(String),
    #[error("no IPv4 address found by {method}; addresses seen: {seen}")]
    NotFound { method: String, seen: String },
    #[error("cannot read the interface addresses: {0}")]
    Io(String),
}

impl FromStr for Method {
    type Err = AutodetectError;

    fn from_str(text: &str) -> Result<Method, AutodetectError> {
        let (name, value) = text.split_once('=').unwrap_or((text, ""));
        match name {
            "first-found" if value.is_empty() => Ok(Method::FirstFound),
            "interface" => Regex::new(value)
                .map(Method::Interface)
                .map_err(|e| AutodetectError::BadRegex(value.into(), e.to_string())),
            "can-reach" => value
                .parse()
                .map(Method::CanReach)
                .map_err(|_| AutodetectError::BadAddress(value.into())),
            "cidr" => value
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse()
                        .map_err(|_| AutodetectError::BadCidr(c.into()))
                })
                .collect::<Result<_, _>>()
                .map(Method::Cidrs),
            _ => Err(AutodetectError::UnknownMethod(text.into())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::FirstFound => write!(f, "first-found"),
            Method::Interface(regex) => write!(f, "interface={regex}"),
            Method::CanReach(ip) => write!(f, "can-reach={ip}"),
            Method::Cidrs(cidrs) => {
                let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                write!(f, "cidr={}", list.join(","))
            }
        }
    }
}

/// One address of an interface that is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Net,
}

/// The chosen address and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub address: Ipv4Net,
    pub interface: String,
    pub reason: String,
}

fn usable(address: Ipv4Addr) -> bool {
    !address.is_loopback() && !address.is_link_local() && !address.is_unspecified()
}

/// Picks the node's IPv4 address from `addresses` (in interface order). `route_source` is, for
/// `can-reach`, the source address the kernel would use towards the target.
pub fn choose(
    method: &Method,
    addresses: &[InterfaceAddress],
    route_source: Option<IpAddr>,
) -> Result<Chosen, AutodetectError> {
    let candidates = addresses.iter().filter(|a| usable(a.address.addr()));
    let found = match method {
        Method::FirstFound => {
            let excluded: Vec<Regex> = EXCLUDED_INTERFACES
                .iter()
                // The patterns are literals above; a typo would show in the unit tests.
                .filter_map(|p| Regex::new(p).ok())
                .collect();
            candidates
                .filter(|a| !excluded.iter().any(|r| r.is_match(&a.interface)))
                .map(|a| (a, "the first address of an interface that is up and not excluded (lo, docker*, veth*, reef*, ...)".to_string()))
                .next()
        }
        Method::Interface(regex) => candidates
            .filter(|a| regex.is_match(&a.interface))
            .map(|a| (a, format!("interface {} matches {regex}", a.interface)))
            .next(),
        Method::CanReach(target) => candidates
            .filter(|a| route_source == Some(IpAddr::V4(a.address.addr())))
            .map(|a| (a, format!("the kernel routes {target} from this address")))
            .next(),
        Method::Cidrs(cidrs) => candidates
            .filter_map(|a| {
                let cidr = cidrs
                    .iter()
                    .find(|c| c.contains(&IpAddr::V4(a.address.addr())))?;
                Some((a, format!("it is inside {cidr}")))
            })
            .next(),
    };
    match found {
        Some((address, reason)) => Ok(Chosen {
            address: address.address,
            interface: address.interface.clone(),
            reason,
        }),
        None => Err(AutodetectError::NotFound {
            method: method.to_string(),
            seen: if addresses.is_empty() {
                "none".to_string()
            } else {
                addresses
                    .iter()
                    .map(|a| format!("{} on {}", a.address, a.interface))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

/// Runs `method` on this host's interfaces (the current network namespace).
pub fn detect(method: &Method) -> Result<Chosen, AutodetectError> {
    let addresses = interface_addresses().map_err(|e| AutodetectError::Io(e.to_string()))?;
    let route_source = match method {
        Method::CanReach(target) => route_source(*target).ok(),
        _ => None,
    };
    choose(method, &addresses, route_source)
}

/// The source address the kernel picks towards `target`: a connected UDP socket sends nothing.
fn route_source(target: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect((target, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// The IPv4 addresses of the interfaces that are up, in the kernel's order.
pub fn interface_addresses() -> io::Result<Vec<InterfaceAddress>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || ifa.ifa_netmask.is_null()
            || ifa.ifa_flags & libc::IFF_UP as u32 == 0
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET entries hold sockaddr_in for the address and the netmask.
        let (addr, mask) = unsafe {
            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
            (addr.sin_addr.s_addr, mask.sin_addr.s_addr)
        };
        let prefix_len = u32::from_be(mask).leading_ones() as u8;
        // SAFETY: ifa_name is a NUL-terminated interface name.
        let interface = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if let Ok(address) = Ipv4Net::new(Ipv4Addr::from(u32::from_be(addr)), prefix_len) {
            found.push(InterfaceAddress { interface, address });
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(interface: &str, address: &str) -> InterfaceAddress {
        InterfaceAddress {
            interface: interface.into(),
            address: address.parse().unwrap(),
        }
    }

    fn host() -> Vec<InterfaceAddress> {
        vec![
            addr("lo", "127.0.0.1/8"),
            addr("docker0", "172.17.0.1/16"),
            addr("eth0", "192.0.2.10/24"),
            addr("eth1", "198.51.100.10/24"),
            addr("reef1234", "169.254.1.1/32"),
        ]
    }

    #[test]
    fn every_exclusion_pattern_compiles() {
        for pattern in EXCLUDED_INTERFACES {
            assert!(Regex::new(pattern).is_ok(), "{pattern}");
        }
    }

    #[test]
    fn methods_pick_the_documented_address_and_say_why() {
        let first = choose(&"first-found".parse().unwrap(), &host(), None).unwrap();
        assert_eq!(first.address, "192.0.2.10/24".parse().unwrap());
        assert_eq!(first.interface, "eth0");
        assert!(first.reason.contains("not excluded"), "{}", first.reason);

        let by_name = choose(&"interface=eth1".parse().unwrap(), &host(), None).unwrap();
        assert_eq!(by_name.address, "198.51.100.10/24".parse().unwrap());
        assert!(by_name.reason.contains("eth1 matches eth1"));

        let reach = choose(
            &"can-reach=198.51.100.1".parse().unwrap(),
            &host(),
            Some("198.51.100.10".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(reach.interface, "eth1");

        let cidr = choose(
            &"cidr=203.0.113.0/24,198.51.100.0/24".parse().unwrap(),
            &host(),
            None,
        )
        .unwrap();
        assert_eq!(cidr.interface, "eth1");
        assert!(cidr.reason.contains("198.51.100.0/24"));
    }

    #[test]
    fn failures_name_the_method_and_what_was_seen() {
        let error = choose(&"cidr=203.0.113.0/24".parse().unwrap(), &host(), None).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("cidr=203.0.113.0/24"), "{text}");
        assert!(text.contains("192.0.2.10/24 on eth0"), "{text}");
        assert!(matches!(
            "nearest".parse::<Method>(),
            Err(AutodetectError::UnknownMethod(_))
        ));
        assert!(matches!(
            "interface=(".parse::<Method>(),
            Err(AutodetectError::BadRegex(..))
        ));
        assert!(matches!(
            "can-reach=host".parse::<Method>(),
            Err(AutodetectError::BadAddress(_))
        ));
    }

    #[test]
    fn reads_this_hosts_interfaces() {
        // The test host's lo is up with 127.0.0.1/8.
        let addresses = interface_addresses().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a.interface == "lo" && a.address == "127.0.0.1/8".parse().unwrap()),
            "{addresses:?}"
        );
    }
}
