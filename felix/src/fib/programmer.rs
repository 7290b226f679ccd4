//! The thin netlink driver: one `NETLINK_ROUTE` socket in one network namespace, batched requests.
//!
//! Why batches and no pipelining machinery: the kernel handles every message of one `send` before
//! the call returns (rtnetlink runs in the sender's context), so N requests in one datagram cost one
//! system call instead of N round trips. Requests ask for no ACK: the kernel answers only failures,
//! each naming its request's sequence number; a final `NLMSG_NOOP` with `NLM_F_ACK` closes the batch.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::codec::{self, Ack, InvalidRoute, Reply};
use super::diff::{FibDiff, FibOp};
use super::model::{Route, RouteKey};

/// The bound on waiting for one answer of the kernel (it answers within the `send`; this only
/// guards against a lost reply).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket buffers asked for (root may exceed `net.core.{r,w}mem_max` with the `*BUFFORCE` options).
const SOCKET_BUFFER: usize = 4 << 20;
/// Most requests in one datagram.
const MAX_BATCH: usize = 2048;
/// Kernel memory one error reply may take in our receive buffer (its `truesize`, generously):
/// a batch whose every request fails must still fit, or answers would be dropped.
const ERROR_REPLY_TRUESIZE: usize = 2048;
/// Largest datagram the kernel sends us (dump parts are at most 32 KiB).
const RECEIVE_BUFFER: usize = 64 << 10;
/// Bound on dump restarts when the table keeps changing under the dump.
const DUMP_ATTEMPTS: usize = 5;

/// A failure of the programmer itself (not of one route: see [`RouteFailure`]).
#[derive(Debug, thiserror::Error)]
pub enum FibError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the kernel answered {errno} ({text}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel {
        what: String,
        errno: i32,
        text: String,
        message: Option<String>,
    },
    #[error("undecodable netlink reply: {0}")]
    Decode(String),
    #[error("no reply from the kernel within {0:?}")]
    Timeout(Duration),
    #[error(
        "the kernel dropped replies (receive buffer overrun): outcome of the batch unknown, resync"
    )]
    Overrun,
    #[error("the routing table kept changing during {DUMP_ATTEMPTS} dumps")]
    DumpInterrupted,
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FibError {
    fn kernel(what: impl Into<String>, ack: Ack) -> FibError {
        FibError::Kernel {
            what: what.into(),
            errno: ack.errno,
            text: std::io::Error::from_raw_os_error(ack.errno).to_string(),
            message: ack.message,
        }
    }
}

/// Why one operation did not take effect. The rest of its batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not sent: {0}")]
    Invalid(#[from] InvalidRoute),
    #[error("{}{}", std::io::Error::from_raw_os_error(*errno), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel { errno: i32, message: Option<String> },
}

impl RouteError {
    /// The errno the kernel answered (`libc::ENETUNREACH`, `libc::EEXIST`, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            RouteError::Kernel { errno, .. } => Some(*errno),
            RouteError::Invalid(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    pub op: FibOp,
    pub error: RouteError,
}

/// What [`FibProgrammer::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Operations handled (sent or refused before sending).
    pub ops: usize,
    pub failures: Vec<RouteFailure>,
}

impl ApplyReport {
    pub fn succeeded(&self) -> usize {
        self.ops - self.failures.len()
    }
}

/// Programs the routing tables of the network namespace it was opened in.
pub struct FibProgrammer {
    socket: Socket,
    next_sequence: u32,
    batch: usize,
    send_buffer: Vec<u8>,
    receive_buffer: Vec<u8>,
}

impl FibProgrammer {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<FibProgrammer, FibError> {
        let io = |what| move |source| FibError::Io { what, source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("netlink socket"))?;
        socket.bind_auto().map_err(io("bind netlink socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect netlink socket to the kernel"))?;
        // Errors carry only the request's header (smaller replies), plus the kernel's text for the
        // error. Both are optional: the codec reads errors with or without them.
        if let Err(e) = socket.set_cap_ack(true) {
            tracing::debug!(error = %e, "no NETLINK_CAP_ACK");
        }
        if let Err(e) = socket.set_ext_ack(true) {
            tracing::debug!(error = %e, "no NETLINK_EXT_ACK");
        }
        // Lets the kernel filter dumps by protocol and table (Linux >= 4.20); we filter again anyway.
        if let Err(e) = socket.set_netlink_get_strict_chk(true) {
            tracing::debug!(error = %e, "no NETLINK_GET_STRICT_CHK: dumps filtered in user space");
        }
        let receive = set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)?;
        let send = set_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)?;
        set_receive_timeout(&socket, REPLY_TIMEOUT)?;
        // A batch's requests must fit the send buffer (a route message is < 512 bytes even with
        // several next hops) and all their error replies the receive buffer.
        let batch = (receive / ERROR_REPLY_TRUESIZE)
            .min(send / 512)
            .clamp(1, MAX_BATCH);
        Ok(FibProgrammer {
            socket,
            next_sequence: 1,
            batch,
            send_buffer: Vec::new(),
            receive_buffer: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Opens the socket inside the network namespace at `path` (e.g. `/run/netns/NAME`): a
    /// short-lived thread enters it and creates the socket, which stays bound to that namespace
    /// wherever it is used from. The calling thread does not change namespace.
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<FibProgrammer, FibError> {
        let path = path.as_ref();
        let netns_error = |source| FibError::Netns {
            path: path.display().to_string(),
            source,
        };
        let netns = File::open(path).map_err(netns_error)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) with a namespace fd we own; it moves only this thread, which
                    // ends right after creating the socket.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(netns_error(std::io::Error::last_os_error()));
                    }
                    FibProgrammer::open()
                })
                .join()
                .unwrap_or_else(|_| Err(netns_error(std::io::Error::other("thread panicked"))))
        })
    }

    /// Requests per datagram, sized from the socket buffers the kernel granted.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    fn sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    /// The index of interface `name` in this programmer's namespace.
    pub fn link_index(&mut self, name: &str) -> Result<u32, FibError> {
        let sequence = self.sequence();
        self.send_buffer.clear();
        codec::encode_get_link(name, sequence, &mut self.send_buffer);
        self.send()?;
        let mut ifindex = None;
        loop {
            for reply in self.receive()? {
                match reply {
                    Reply::Link { ifindex: index } => ifindex = Some(index),
                    Reply::Ack(ack) if ack.sequence == sequence => {
                        return match (ack.errno, ifindex) {
                            (0, Some(ifindex)) => Ok(ifindex),
                            _ => Err(FibError::kernel(format!("link {name}"), ack)),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// The routes with Reef's protocol number, IPv4 and IPv6, in `table` (`None`: every table).
    /// Routes of other owners are never returned.
    pub fn dump_owned(
        &mut self,
        table: Option<u32>,
    ) -> Result<BTreeMap<RouteKey, Route>, FibError> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut routes = BTreeMap::new();
            let mut interrupted = false;
            for family in [AddressFamily::Inet, AddressFamily::Inet6] {
                interrupted |= self.dump_family(family, table, &mut routes)?;
            }
            if !interrupted {
                return Ok(routes);
            }
            tracing::debug!("routing table changed during the dump; dumping again");
        }
        Err(FibError::DumpInterrupted)
    }

    /// Dumps one family into `routes`; returns whether the dump was interrupted.
    fn dump_family(
        &mut self,
        family: AddressFamily,
        table: Option<u32>,
        routes: &mut BTreeMap<RouteKey, Route>,
    ) -> Result<bool, FibError> {
        let sequence = self.sequence();
        self.send_buffer.clear();
        codec::encode_dump(family, table, sequence, &mut self.send_buffer);
        self.send()?;
        let mut interrupted = false;
        loop {
            for reply in self.receive()? {
                match reply {
                    Reply::Route {
                        message,
                        sequence: seq,
                        interrupted: intr,
                    } if seq == sequence => {
                        interrupted |= intr;
                        if let Some(route) = codec::decode_route(&message)
                            && table.is_none_or(|table| table == route.table)
                        {
                            routes.insert(route.key(), route);
                        }
                    }
                    Reply::Done {
                        sequence: seq,
                        interrupted: intr,
                        errno,
                    } if seq == sequence => {
                        return match errno {
                            0 => Ok(interrupted || intr),
                            // A table that does not exist (yet) holds no routes.
                            libc::ENOENT if table.is_some() => Ok(false),
                            _ => Err(FibError::kernel(
                                "route dump",
                                Ack {
                                    sequence,
                                    errno,
                                    message: None,
                                },
                            )),
                        };
                    }
                    Reply::Ack(ack) if ack.sequence == sequence && ack.errno != 0 => {
                        if ack.errno == libc::ENOENT && table.is_some() {
                            return Ok(false);
                        }
                        return Err(FibError::kernel("route dump", ack));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Applies `ops` in batches. A failing operation (e.g. `ENETUNREACH` for a gateway no interface
    /// reaches, `EEXIST` for an add over another owner's route) is reported and the rest go on.
    pub fn apply(&mut self, ops: &[FibOp]) -> Result<ApplyReport, FibError> {
        let mut report = ApplyReport {
            ops: ops.len(),
            failures: Vec::new(),
        };
        for chunk in ops.chunks(self.batch) {
            self.apply_batch(chunk, &mut report.failures)?;
        }
        Ok(report)
    }

    fn apply_batch(
        &mut self,
        ops: &[FibOp],
        failures: &mut Vec<RouteFailure>,
    ) -> Result<(), FibError> {
        // Sequence numbers first..first+len for the ops, then one for the barrier.
        let first = self.next_sequence;
        self.send_buffer.clear();
        for (i, op) in ops.iter().enumerate() {
            let sequence = self.sequence();
            if let Err(invalid) = codec::encode_op(op, sequence, &mut self.send_buffer) {
                tracing::debug!(?op, error = %invalid, "route not sent");
                failures.push(RouteFailure {
                    op: ops[i].clone(),
                    error: invalid.into(),
                });
            }
        }
        let barrier = self.sequence();
        codec::encode_barrier(barrier, &mut self.send_buffer);
        self.send()?;
        loop {
            for reply in self.receive()? {
                let Reply::Ack(ack) = reply else { continue };
                if ack.sequence == barrier {
                    return Ok(());
                }
                let index = ack.sequence.wrapping_sub(first) as usize;
                if let Some(op) = ops.get(index).filter(|_| ack.errno != 0) {
                    tracing::debug!(?op, errno = ack.errno, message = ?ack.message, "route refused");
                    failures.push(RouteFailure {
                        op: op.clone(),
                        error: RouteError::Kernel {
                            errno: ack.errno,
                            message: ack.message,
                        },
                    });
                }
            }
        }
    }

    /// Makes the kernel's Reef routes (all tables) equal to `desired`: dump, diff, apply. Routes
    /// already right are left alone (no flush on start: a restarted agent changes only what differs).
    pub fn reconcile(
        &mut self,
        desired: &BTreeMap<RouteKey, Route>,
    ) -> Result<ApplyReport, FibError> {
        let actual = self.dump_owned(None)?;
        let ops = FibDiff::compute(desired, &actual);
        let report = self.apply(&ops)?;
        if !report.failures.is_empty() {
            tracing::warn!(
                ops = report.ops,
                failed = report.failures.len(),
                first = %report.failures[0].error,
                "some routes were refused"
            );
        }
        Ok(report)
    }

    fn send(&mut self) -> Result<(), FibError> {
        let sent = self
            .socket
            .send(&self.send_buffer, 0)
            .map_err(|source| FibError::Io {
                what: "netlink send",
                source,
            })?;
        if sent != self.send_buffer.len() {
            return Err(FibError::Io {
                what: "netlink send",
                source: std::io::Error::other(format!(
                    "sent {sent} of {} bytes",
                    self.send_buffer.len()
                )),
            });
        }
        Ok(())
    }

    /// Receives one datagram and decodes its messages.
    fn receive(&mut self) -> Result<Vec<Reply>, FibError> {
        let len = loop {
            // SAFETY: recv(2) into our own buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.receive_buffer.as_mut_ptr().cast(),
                    self.receive_buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                break n;
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Err(FibError::Timeout(REPLY_TIMEOUT)),
                Some(libc::ENOBUFS) => {
                    self.drain();
                    return Err(FibError::Overrun);
                }
                _ => {
                    return Err(FibError::Io {
                        what: "netlink receive",
                        source: error,
                    });
                }
            }
        };
        let datagram = self.receive_buffer.get(..len).ok_or_else(|| {
            FibError::Decode(format!(
                "datagram of {len} bytes truncated to {}",
                self.receive_buffer.len()
            ))
        })?;
        codec::decode_replies(datagram).map_err(FibError::Decode)
    }

    /// Discards every reply still queued (after an overrun their batch is lost anyway).
    fn drain(&mut self) {
        // Bounded: the queue holds at most a receive buffer's worth of datagrams.
        for _ in 0..SOCKET_BUFFER {
            // SAFETY: recv(2) into our own buffer of the length given.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.receive_buffer.as_mut_ptr().cast(),
                    self.receive_buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }
}

fn set_socket_option(
    socket: &Socket,
    option: libc::c_int,
    value: &impl Sized,
) -> std::io::Result<()> {
    // SAFETY: setsockopt(2) on our socket with a pointer to a value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const _) as *const libc::c_void,
            std::mem::size_of_val(value) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks for a [`SOCKET_BUFFER`]-sized buffer (`force`, as root, or `plain` up to the sysctl limit)
/// and returns what the kernel granted (it doubles the value for its bookkeeping).
fn set_buffer(socket: &Socket, force: libc::c_int, plain: libc::c_int) -> Result<usize, FibError> {
    let size = SOCKET_BUFFER as libc::c_int;
    if set_socket_option(socket, force, &size).is_err() {
        set_socket_option(socket, plain, &size).map_err(|source| FibError::Io {
            what: "socket buffer size",
            source,
        })?;
    }
    let mut granted: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on our socket into a c_int with its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            plain,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(FibError::Io {
            what: "socket buffer size",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(usize::try_from(granted).unwrap_or(0))
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> Result<(), FibError> {
    let timeval = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    set_socket_option(socket, libc::SO_RCVTIMEO, &timeval).map_err(|source| FibError::Io {
        what: "SO_RCVTIMEO",
        source,
    })
}
