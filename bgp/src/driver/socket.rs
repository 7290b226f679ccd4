//! Socket options of BGP sessions: TCP MD5 (RFC 2385), GTSM (RFC 5082) and the session TTL.
//!
//! No crate wraps `TCP_MD5SIG`, so these are thin `libc::setsockopt` calls on the raw fd of a tokio
//! `TcpSocket` (before `connect`/`listen`, so the SYN is already signed) or of an accepted `TcpStream`.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use tokio::net::{TcpListener, TcpSocket};

/// `TCP_MD5SIG_MAXKEYLEN` of linux/tcp.h.
pub const MD5_MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of linux/tcp.h (libc does not export it).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// Per-session socket security and TTL settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP MD5 key shared with the peer.
    pub md5_key: Option<String>,
    /// TTL (hop limit) of our packets: 1 for single-hop eBGP, 255 for iBGP and GTSM.
    pub ttl: u8,
    /// GTSM: accept only packets with TTL >= 256 - hops.
    pub ttl_security_hops: Option<u8>,
}

impl SocketOptions {
    /// The effective outgoing TTL: GTSM always sends 255.
    pub fn outgoing_ttl(&self) -> u8 {
        if self.ttl_security_hops.is_some() {
            255
        } else {
            self.ttl
        }
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised `T` of exactly `size_of::<T>()` bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socket_is_ipv6(fd: RawFd) -> io::Result<bool> {
    // SAFETY: an all-zero sockaddr_storage is a valid value; getsockname writes at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len are valid for writes as above.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(storage.ss_family) == libc::AF_INET6)
}

/// Fills a sockaddr_storage for `peer` in the address family of the socket: an IPv4 peer on an IPv6
/// socket (dual-stack listener) is keyed by its IPv4-mapped address, as the kernel sees it.
fn peer_sockaddr(peer: IpAddr, ipv6_socket: bool) -> libc::sockaddr_storage {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let peer = match (peer, ipv6_socket) {
        (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
        (peer, _) => peer,
    };
    match peer {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
        }
        IpAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    storage
}

/// Sets (or with `None` removes) the TCP MD5 key for `peer` on `fd`: on a listening socket this signs
/// the SYN-ACK and admits the peer's signed SYNs; on a connecting socket it signs our SYN.
pub fn set_md5_key(fd: RawFd, peer: IpAddr, key: Option<&str>) -> io::Result<()> {
    let key = key.unwrap_or("").as_bytes();
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 key is {} bytes, the kernel accepts at most {MD5_MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    let mut sig = TcpMd5Sig {
        addr: peer_sockaddr(peer, socket_is_ipv6(fd)?),
        flags: 0,
        prefix_len: 0,
        // key.len() <= 80, checked above.
        key_len: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    match setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig) {
        // Removing a key that was never set is not an error for us.
        Err(e) if key.is_empty() && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Sets the TTL / hop limit of outgoing packets and, for GTSM, the minimum accepted TTL.
pub fn set_ttl_options(fd: RawFd, ipv6: bool, options: &SocketOptions) -> io::Result<()> {
    let ttl = libc::c_int::from(options.outgoing_ttl());
    let min_ttl = options
        .ttl_security_hops
        .map(|hops| 256 - libc::c_int::from(hops.max(1)));
    if ipv6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)?;
        if let Some(min) = min_ttl {
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &min)?;
        }
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)?;
        if let Some(min) = min_ttl {
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &min)?;
        }
    }
    Ok(())
}

/// Applies TTL and GTSM to an accepted or connected stream; `peer` decides v4 vs v6 semantics
/// (an IPv4-mapped peer on a dual-stack socket still needs the IPv4 options).
pub fn apply_to_stream(
    stream: &tokio::net::TcpStream,
    peer: IpAddr,
    options: &SocketOptions,
) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let ipv6_peer = matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none());
    set_ttl_options(fd, ipv6_peer, options)?;
    if socket_is_ipv6(fd)? && !ipv6_peer {
        // IPv4 traffic on an AF_INET6 socket uses the IPv4 options too; set both (best effort for v6).
        let _ = set_ttl_options(fd, true, options);
    }
    Ok(())
}

/// A socket for an active connection to `remote`, bound to `source` when given, with MD5 and TTL set
/// before the SYN is sent.
pub fn connect_socket(
    remote: SocketAddr,
    source: Option<IpAddr>,
    options: &SocketOptions,
) -> io::Result<TcpSocket> {
    let socket = if remote.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_nodelay(true)?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let fd = socket.as_raw_fd();
    if let Some(key) = options.md5_key.as_deref() {
        set_md5_key(fd, remote.ip(), Some(key))?;
    }
    set_ttl_options(fd, remote.is_ipv6(), options)?;
    Ok(socket)
}

/// A listening socket on `addr` (an IPv6 wildcard also accepts IPv4), with the MD5 keys of the
/// configured peers installed before `listen`, so the first SYN of a peer is already verified.
pub fn listen_socket(addr: SocketAddr, md5_keys: &[(IpAddr, String)]) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        let off: libc::c_int = 0;
        setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &off,
        )?;
    }
    socket.bind(addr)?;
    // The SYN-ACK leaves with the listener's TTL: 255, so that peers using GTSM accept it (the TTL of
    // each session is set on the accepted socket).
    let gtsm = SocketOptions {
        ttl: 255,
        ..SocketOptions::default()
    };
    set_ttl_options(socket.as_raw_fd(), addr.is_ipv6(), &gtsm)?;
    if addr.is_ipv6() {
        // Dual-stack: IPv4 SYN-ACKs use the IPv4 option.
        set_ttl_options(socket.as_raw_fd(), false, &gtsm)?;
    }
    for (peer, key) in md5_keys {
        if addr.is_ipv4() && peer.is_ipv6() {
            continue;
        }
        set_md5_key(socket.as_raw_fd(), *peer, Some(key))?;
    }
    socket.listen(1024)
}

/// The peer address as configured: IPv4-mapped IPv6 addresses seen on dual-stack sockets become IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One address of a local interface: the interface name, the address and its prefix length.
struct InterfaceAddress {
    name: Vec<u8>,
    address: IpAddr,
    prefix_len: u8,
}

/// Every IPv4 and IPv6 address of the local interfaces (getifaddrs); empty if it fails.
fn interface_addresses() -> Vec<InterfaceAddress> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated interface name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_bytes()
            .to_vec();
        // SAFETY: ifa_addr is non-null and starts with a sockaddr whose family tells its real type;
        // a non-null ifa_netmask has the same family.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let (address, prefix_len) = if family == libc::AF_INET {
            // SAFETY: AF_INET addresses (and their netmasks) are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let mask = (!ifa.ifa_netmask.is_null()).then(|| {
                // SAFETY: see above.
                let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
            });
            (
                IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                mask.unwrap_or(32),
            )
        } else if family == libc::AF_INET6 {
            // SAFETY: AF_INET6 addresses (and their netmasks) are sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let mask = (!ifa.ifa_netmask.is_null()).then(|| {
                // SAFETY: see above.
                let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                u128::from_be_bytes(mask.sin6_addr.s6_addr).count_ones() as u8
            });
            (
                IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                mask.unwrap_or(128),
            )
        } else {
            continue;
        };
        addresses.push(InterfaceAddress {
            name,
            address,
            prefix_len,
        });
    }
    // SAFETY: `list` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    addresses
}

/// The addresses of the interfaces that hold `local`.
fn addresses_beside(local: IpAddr) -> Vec<InterfaceAddress> {
    let addresses = interface_addresses();
    let interfaces: Vec<Vec<u8>> = addresses
        .iter()
        .filter(|a| a.address == local)
        .map(|a| a.name.clone())
        .collect();
    addresses
        .into_iter()
        .filter(|a| interfaces.contains(&a.name))
        .collect()
}

/// The subnets of the interface that holds `local` (a session's local address): where a single-hop
/// eBGP peer's next hops must be (RFC 4271 §6.3). Empty if no interface holds it.
pub fn subnets_beside(local: IpAddr) -> Vec<ipnet::IpNet> {
    addresses_beside(local)
        .iter()
        .filter_map(|a| ipnet::IpNet::new(a.address, a.prefix_len).ok())
        .map(|net| net.trunc())
        .collect()
}

/// A global IPv6 address on the interface that holds `local` (an IPv4 session's local address), to use
/// as the next hop of IPv6 routes sent over that session: an IPv4-mapped next hop is unusable (BIRD
/// ignores such routes, the kernel refuses them). Link-local and loopback addresses are skipped; the
/// lowest address wins so that the choice is stable.
pub fn global_ipv6_beside(local: std::net::Ipv4Addr) -> Option<std::net::Ipv6Addr> {
    addresses_beside(IpAddr::V4(local))
        .iter()
        .filter_map(|a| match a.address {
            IpAddr::V6(v6)
                if !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified() =>
            {
                Some(v6)
            }
            _ => None,
        })
        .min()
}
