//! The tokio driver: UDP sockets (RFC 5881), session tasks around the pure [`Session`], and the
//! [`Bfd`] handle.
//!
//! One driver task owns the two receive sockets (UDP 3784 on IPv4 and IPv6, with the received TTL /
//! Hop Limit and destination address as ancillary data), decodes and demultiplexes packets: by Your
//! Discriminator when nonzero, else by (source, destination) address. Each session runs in its own
//! task with its own send socket (TTL 255, a source port from 49152-65535 kept for the session's
//! life) and its two timers; it publishes its [`SessionStatus`] on a `watch` channel.
//!
//! All sockets are created by tasks of the runtime the driver was spawned on, so a driver spawned
//! on a thread inside a network namespace lives in that namespace.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::packet::{self, ControlPacket, Diagnostic, State};
use crate::session::{Input, Jitter, Output, REQUIRED_TTL, Session, SessionConfig};

/// RFC 5881 §4: single-hop control packets go to UDP port 3784.
pub const CONTROL_PORT: u16 = 3784;
/// RFC 5881 §4: "The source port MUST be in the range 49152 through 65535."
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Attempts at a free random source port before giving up.
const SOURCE_PORT_ATTEMPTS: usize = 64;
/// Packets queued for one session before the demultiplexer drops new ones.
const SESSION_QUEUE: usize = 64;
const COMMAND_QUEUE: usize = 64;
/// Larger than any control packet (24 bytes + a 255-byte authentication section at most).
const RECEIVE_BUFFER: usize = 512;

/// A session is identified by the peer address and the local address it is run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub peer: IpAddr,
    pub local: IpAddr,
}

/// What a session's watchers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: State,
    /// The reason of the last change to Down (None once Up again).
    pub diag: Diagnostic,
    pub remote_state: State,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// How many times the session left Up: a watcher that missed a short flap (watch channels keep
    /// only the latest value) still sees it here.
    pub downs: u64,
    pub transmit_interval: Duration,
    pub detection_time: Option<Duration>,
}

impl SessionStatus {
    fn of(session: &Session, downs: u64) -> SessionStatus {
        SessionStatus {
            state: session.state(),
            diag: session.diag(),
            remote_state: session.remote_state(),
            local_discriminator: session.local_discriminator(),
            remote_discriminator: session.remote_discriminator(),
            downs,
            transmit_interval: session.transmit_interval(),
            detection_time: session.detection_time(),
        }
    }
}

#[derive(Debug, Error)]
pub enum BfdError {
    #[error("cannot open the {what} socket: {source}")]
    Socket {
        what: &'static str,
        source: io::Error,
    },
    #[error("peer {peer} and local address {local} are of different address families")]
    FamilyMismatch { peer: IpAddr, local: IpAddr },
    #[error("no BFD session with {} from {}", .0.peer, .0.local)]
    NoSession(SessionKey),
    #[error("the BFD session with {} from {} is busy, try again", .0.peer, .0.local)]
    Busy(SessionKey),
    #[error("the BFD driver has stopped")]
    Stopped,
}

/// A handle to a running driver; cheap to clone. The driver stops when the last handle is dropped
/// (its sessions send AdminDown first).
#[derive(Debug, Clone)]
pub struct Bfd {
    commands: mpsc::Sender<Command>,
}

type Reply<T> = oneshot::Sender<Result<T, BfdError>>;

#[derive(Debug)]
enum Command {
    Add {
        key: SessionKey,
        config: SessionConfig,
        reply: Reply<watch::Receiver<SessionStatus>>,
    },
    Remove {
        key: SessionKey,
        reply: Reply<()>,
    },
    Session {
        key: SessionKey,
        message: SessionMessage,
        reply: Reply<()>,
    },
}

#[derive(Debug)]
enum SessionMessage {
    Packet { packet: ControlPacket, ttl: u8 },
    AdminDown,
    AdminUp,
    Reconfigure(SessionConfig),
}

impl Bfd {
    /// Binds UDP 3784 on IPv4 and IPv6 in the current network namespace and spawns the driver on
    /// the current tokio runtime (panics outside one, like `tokio::spawn`).
    pub fn spawn() -> Result<Bfd, BfdError> {
        let rx4 = receive_socket(Domain::IPV4).map_err(|source| BfdError::Socket {
            what: "IPv4 receive",
            source,
        })?;
        let rx6 = receive_socket(Domain::IPV6).map_err(|source| BfdError::Socket {
            what: "IPv6 receive",
            source,
        })?;
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver {
            rx4,
            rx6,
            sessions: HashMap::new(),
            by_discriminator: HashMap::new(),
        };
        tokio::spawn(driver.run(inbox));
        Ok(Bfd { commands })
    }

    /// Starts a session to `key.peer` from `key.local` and returns its status. Adding a key that
    /// exists returns another receiver of the existing session (its timers unchanged).
    pub async fn add_session(
        &self,
        key: SessionKey,
        config: SessionConfig,
    ) -> Result<watch::Receiver<SessionStatus>, BfdError> {
        self.request(|reply| Command::Add { key, config, reply })
            .await
    }

    /// Stops a session; it sends AdminDown to the peer on its way out.
    pub async fn remove_session(&self, key: SessionKey) -> Result<(), BfdError> {
        self.request(|reply| Command::Remove { key, reply }).await
    }

    /// Administratively disables (AdminDown, §6.8.16) or re-enables a session.
    pub async fn set_admin_down(&self, key: SessionKey, down: bool) -> Result<(), BfdError> {
        let message = if down {
            SessionMessage::AdminDown
        } else {
            SessionMessage::AdminUp
        };
        self.request(|reply| Command::Session {
            key,
            message,
            reply,
        })
        .await
    }

    /// Changes a session's timers (a Poll Sequence when Up).
    pub async fn reconfigure(
        &self,
        key: SessionKey,
        config: SessionConfig,
    ) -> Result<(), BfdError> {
        self.request(|reply| Command::Session {
            key,
            message: SessionMessage::Reconfigure(config),
            reply,
        })
        .await
    }

    async fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, BfdError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| BfdError::Stopped)?;
        answer.await.map_err(|_| BfdError::Stopped)?
    }
}

struct SessionEntry {
    discriminator: u32,
    inbox: mpsc::Sender<SessionMessage>,
    status: watch::Receiver<SessionStatus>,
}

enum Event {
    Command(Option<Command>),
    V4(io::Result<Received>),
    V6(io::Result<Received>),
}

struct Driver {
    rx4: UdpSocket,
    rx6: UdpSocket,
    sessions: HashMap<SessionKey, SessionEntry>,
    by_discriminator: HashMap<u32, SessionKey>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf4 = [0u8; RECEIVE_BUFFER];
        let mut buf6 = [0u8; RECEIVE_BUFFER];
        loop {
            let event = tokio::select! {
                command = commands.recv() => Event::Command(command),
                r = receive(&self.rx4, &mut buf4) => Event::V4(r),
                r = receive(&self.rx6, &mut buf6) => Event::V6(r),
            };
            match event {
                Event::Command(Some(command)) => self.command(command),
                Event::Command(None) => break,
                Event::V4(Ok(meta)) => self.dispatch(&meta, &buf4[..meta.len]),
                Event::V6(Ok(meta)) => self.dispatch(&meta, &buf6[..meta.len]),
                Event::V4(Err(e)) | Event::V6(Err(e)) => {
                    tracing::warn!(error = %e, "bfd receive");
                }
            }
        }
        // Dropping the sessions' inboxes ends their tasks (each sends AdminDown).
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Add { key, config, reply } => {
                let _ = reply.send(self.add(key, config));
            }
            Command::Remove { key, reply } => {
                let result = match self.sessions.remove(&key) {
                    Some(entry) => {
                        self.by_discriminator.remove(&entry.discriminator);
                        Ok(())
                    }
                    None => Err(BfdError::NoSession(key)),
                };
                let _ = reply.send(result);
            }
            Command::Session {
                key,
                message,
                reply,
            } => {
                let result = match self.sessions.get(&key) {
                    Some(entry) => entry.inbox.try_send(message).map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => BfdError::Busy(key),
                        mpsc::error::TrySendError::Closed(_) => BfdError::Stopped,
                    }),
                    None => Err(BfdError::NoSession(key)),
                };
                let _ = reply.send(result);
            }
        }
    }

    fn add(
        &mut self,
        key: SessionKey,
        config: SessionConfig,
    ) -> Result<watch::Receiver<SessionStatus>, BfdError> {
        if key.peer.is_ipv4() != key.local.is_ipv4() {
            return Err(BfdError::FamilyMismatch {
                peer: key.peer,
                local: key.local,
            });
        }
        let entry = match self.sessions.entry(key) {
            Entry::Occupied(existing) => return Ok(existing.get().status.clone()),
            Entry::Vacant(vacant) => vacant,
        };
        let discriminator = loop {
            // Nonzero and unique (§6.8.1); a collision among 2^32 values is rare, so this ends.
            let candidate: u32 = rand::random();
            if candidate != 0 && !self.by_discriminator.contains_key(&candidate) {
                break candidate;
            }
        };
        let socket = send_socket(key.local).map_err(|source| BfdError::Socket {
            what: "send",
            source,
        })?;
        let session = Session::new(discriminator, config);
        let (status_tx, status) = watch::channel(SessionStatus::of(&session, 0));
        let (inbox_tx, inbox) = mpsc::channel(SESSION_QUEUE);
        tracing::info!(peer = %key.peer, local = %key.local, discriminator, "bfd session added");
        tokio::spawn(run_session(key, session, socket, inbox, status_tx));
        entry.insert(SessionEntry {
            discriminator,
            inbox: inbox_tx,
            status: status.clone(),
        });
        self.by_discriminator.insert(discriminator, key);
        Ok(status)
    }

    /// §6.8.6: "If the Your Discriminator field is nonzero, it MUST be used to select the session
    /// with which this BFD packet is associated. If no session is found, the packet MUST be
    /// discarded." Otherwise the addresses select it.
    fn dispatch(&self, meta: &Received, bytes: &[u8]) {
        let packet = match packet::decode(bytes) {
            Ok(packet) => packet,
            Err(e) => {
                tracing::debug!(source = %meta.source, error = %e, "bfd packet discarded");
                return;
            }
        };
        let peer = meta.source.ip();
        let key = if packet.your_discriminator != 0 {
            match self.by_discriminator.get(&packet.your_discriminator) {
                // Single hop: the discriminator must also come from the session's peer.
                Some(key) if key.peer == peer => Some(*key),
                _ => None,
            }
        } else {
            meta.destination.map(|local| SessionKey { peer, local })
        };
        let Some(entry) = key.and_then(|key| self.sessions.get(&key)) else {
            tracing::debug!(source = %meta.source, your = packet.your_discriminator, "bfd packet for no session");
            return;
        };
        // A missing TTL (no ancillary data) cannot pass the RFC 5881 check: 0 is discarded.
        let ttl = meta.ttl.unwrap_or(0);
        if entry
            .inbox
            .try_send(SessionMessage::Packet { packet, ttl })
            .is_err()
        {
            tracing::debug!(source = %meta.source, "bfd session queue full, packet dropped");
        }
    }
}

/// One session: feeds its inbox and timers to the FSM, carries out the outputs.
async fn run_session(
    key: SessionKey,
    mut session: Session,
    socket: UdpSocket,
    mut inbox: mpsc::Receiver<SessionMessage>,
    status: watch::Sender<SessionStatus>,
) {
    let peer = SocketAddr::new(key.peer, CONTROL_PORT);
    let mut downs = 0;
    let mut transmit_at = Instant::now();
    let mut detection_at: Option<Instant> = None;
    let mut outputs = session.start(jitter());
    loop {
        for output in outputs {
            match output {
                Output::Send(packet) => send(&socket, peer, &packet).await,
                Output::ArmTransmit(after) => transmit_at = Instant::now() + after,
                Output::ArmDetection(after) => detection_at = Some(Instant::now() + after),
                Output::DisarmDetection => detection_at = None,
                Output::StateChanged { from, to, diag } => {
                    if from == State::Up {
                        downs += 1;
                    }
                    tracing::info!(peer = %key.peer, local = %key.local, %from, %to, %diag, "bfd session state");
                }
                Output::Discarded(reason) => {
                    tracing::debug!(peer = %key.peer, ?reason, "bfd packet discarded");
                }
            }
        }
        status.send_if_modified(|current| {
            let next = SessionStatus::of(&session, downs);
            let changed = *current != next;
            *current = next;
            changed
        });
        let input = tokio::select! {
            message = inbox.recv() => match message {
                Some(SessionMessage::Packet { packet, ttl }) => Input::Packet { packet, ttl },
                Some(SessionMessage::AdminDown) => Input::AdminDown,
                Some(SessionMessage::AdminUp) => Input::AdminUp,
                Some(SessionMessage::Reconfigure(config)) => Input::Reconfigure(config),
                None => break,
            },
            () = sleep_until(transmit_at) => Input::TransmitTimerExpired,
            () = sleep_until(detection_at.unwrap_or(transmit_at)), if detection_at.is_some() => {
                detection_at = None;
                Input::DetectionTimerExpired
            }
        };
        outputs = session.handle(input, jitter());
    }
    // Removed: tell the peer we are going away (AdminDown) rather than let it time out.
    for output in session.handle(Input::AdminDown, jitter()) {
        if let Output::Send(packet) = output {
            send(&socket, peer, &packet).await;
        }
    }
    status.send_modify(|current| *current = SessionStatus::of(&session, downs));
    tracing::info!(peer = %key.peer, local = %key.local, "bfd session removed");
}

async fn send(socket: &UdpSocket, peer: SocketAddr, packet: &ControlPacket) {
    match packet::encode(packet) {
        Ok(bytes) => {
            if let Err(e) = socket.send_to(&bytes, peer).await {
                // The link may be down: the detection timers deal with it.
                tracing::debug!(%peer, error = %e, "bfd send");
            }
        }
        Err(e) => tracing::warn!(%peer, error = %e, "bfd encode"),
    }
}

fn jitter() -> Jitter {
    Jitter(rand::random())
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// UDP 3784 on the wildcard address, reporting each datagram's TTL / Hop Limit and destination.
fn receive_socket(domain: Domain) -> io::Result<UdpSocket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    let address: SocketAddr = if domain == Domain::IPV4 {
        set_int_option(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL)?;
        set_int_option(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO)?;
        (Ipv4Addr::UNSPECIFIED, CONTROL_PORT).into()
    } else {
        socket.set_only_v6(true)?;
        socket.set_recv_hoplimit_v6(true)?;
        set_int_option(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
        )?;
        (Ipv6Addr::UNSPECIFIED, CONTROL_PORT).into()
    };
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket bound to `local` and a random source port in 49152-65535, sending with TTL / Hop
/// Limit 255 (RFC 5881 §5) and the Internetwork Control class (CS6) like routing protocols.
fn send_socket(local: IpAddr) -> io::Result<UdpSocket> {
    let domain = Domain::for_address(SocketAddr::new(local, 0));
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    const CS6: u32 = 0xc0;
    if local.is_ipv4() {
        socket.set_ttl_v4(u32::from(REQUIRED_TTL))?;
        socket.set_tos_v4(CS6)?;
    } else {
        socket.set_unicast_hops_v6(u32::from(REQUIRED_TTL))?;
        socket.set_tclass_v6(CS6)?;
    }
    socket.set_nonblocking(true)?;
    let mut last_error = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..SOURCE_PORT_ATTEMPTS {
        let port = rand::random_range(SOURCE_PORTS);
        match socket.bind(&SocketAddr::new(local, port).into()) {
            Ok(()) => return UdpSocket::from_std(socket.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_error)
}

/// A datagram's metadata.
#[derive(Debug)]
struct Received {
    len: usize,
    source: SocketAddr,
    ttl: Option<u8>,
    destination: Option<IpAddr>,
}

async fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    socket
        .async_io(Interest::READABLE, || recvmsg(socket.as_raw_fd(), buf))
        .await
}

/// recvmsg(2) with the TTL / Hop Limit and packet-info control messages.
fn recvmsg(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut source: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 32];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut source as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it states, for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // n >= 0 was just checked; it is at most buf.len().
    let len = n as usize;
    let source = socket_address(&source)
        .ok_or_else(|| io::Error::other("datagram without an IP source address"))?;
    let mut ttl = None;
    let mut destination = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; each payload is read unaligned with the type its level and type announce.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let value = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    ttl = u8::try_from(value).ok();
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    let addr = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    destination = Some(IpAddr::V4(addr));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    destination = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len,
        source,
        ttl,
        destination,
    })
}

/// The IP socket address in a `sockaddr_storage` filled by the kernel.
fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let sin = unsafe {
                std::ptr::read_unaligned(
                    (storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                )
            };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it is large enough for.
            let sin6 = unsafe {
                std::ptr::read_unaligned(
                    (storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                )
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}
