//! One `NETLINK_ROUTE` socket in one network namespace, shared by the FIB programmer and the link,
//! neighbour and address reconcilers: batched requests closed by a barrier, dumps, and running code
//! inside another namespace ([`in_netns`]).
//!
//! Why batches and no pipelining machinery: the kernel handles every message of one `send` before
//! the call returns (rtnetlink runs in the sender's context), so N requests in one datagram cost one
//! system call instead of N round trips. Requests ask for no ACK: the kernel answers only failures,
//! each naming its request's sequence number; a final `NLMSG_NOOP` with `NLM_F_ACK` closes the batch.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use rtnetlink::packet_core::{NLM_F_DUMP, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::fib::FibError;
use crate::fib::codec::{self, Ack, Reply};

/// The bound on waiting for one answer of the kernel (it answers within the `send`; this only
/// guards against a lost reply).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
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
pub(crate) const DUMP_ATTEMPTS: usize = 5;

/// Runs `f` in the network namespace at `path` (e.g. `/run/netns/NAME`; `None`: the caller's own)
/// on a short-lived thread that enters it; the calling thread does not change namespace. Sockets
/// made by `f` stay bound to that namespace, and `/proc/sys/net` opened by `f` is that namespace's.
pub fn in_netns<T: Send>(
    path: Option<&Path>,
    f: impl FnOnce() -> Result<T, FibError> + Send,
) -> Result<T, FibError> {
    let Some(path) = path else { return f() };
    let netns_error = |source| FibError::Netns {
        path: path.display().to_string(),
        source,
    };
    let netns = File::open(path).map_err(netns_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) with a namespace fd we own; it moves only this thread, which
                // ends right after `f`.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(netns_error(std::io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(netns_error(std::io::Error::other("thread panicked"))))
    })
}

/// A `NETLINK_ROUTE` socket bound to the namespace it was opened in.
pub struct NetlinkSocket {
    socket: Socket,
    next_sequence: u32,
    batch: usize,
    send_buffer: Vec<u8>,
    receive_buffer: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<NetlinkSocket, FibError> {
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
        Ok(NetlinkSocket {
            socket,
            next_sequence: 1,
            batch,
            send_buffer: Vec::new(),
            receive_buffer: vec![0; RECEIVE_BUFFER],
        })
    }

    /// Opens the socket inside the network namespace at `path` (see [`in_netns`]).
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<NetlinkSocket, FibError> {
        in_netns(Some(path.as_ref()), NetlinkSocket::open)
    }

    /// Requests per datagram, sized from the socket buffers the kernel granted.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The next sequence number (requests of one batch take consecutive ones).
    pub(crate) fn sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        sequence
    }

    /// Reserves the next `n` sequence numbers (for a batch numbered from one [`Self::sequence`]).
    pub(crate) fn skip_sequences(&mut self, n: u32) {
        self.next_sequence = self.next_sequence.wrapping_add(n);
    }

    /// The buffer the next datagram is built in (cleared).
    pub(crate) fn start_datagram(&mut self) -> &mut Vec<u8> {
        self.send_buffer.clear();
        &mut self.send_buffer
    }

    /// Sends the datagram built in [`Self::start_datagram`]'s buffer.
    pub(crate) fn send(&mut self) -> Result<(), FibError> {
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
    pub(crate) fn receive(&mut self) -> Result<Vec<Reply>, FibError> {
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

    /// Sends `requests` (netlink flags beside `NLM_F_REQUEST`, message) in batches, each closed by
    /// a barrier, and returns the kernel's errors as (index into `requests`, error).
    pub(crate) fn transact(
        &mut self,
        requests: &[(u16, RouteNetlinkMessage)],
    ) -> Result<Vec<(usize, Ack)>, FibError> {
        let mut failures = Vec::new();
        for (chunk_index, chunk) in requests.chunks(self.batch).enumerate() {
            let first = self.next_sequence;
            self.send_buffer.clear();
            for (flags, message) in chunk {
                let sequence = self.sequence();
                codec::append(
                    &mut self.send_buffer,
                    *flags,
                    sequence,
                    NetlinkPayload::InnerMessage(message.clone()),
                );
            }
            let barrier = self.sequence();
            codec::encode_barrier(barrier, &mut self.send_buffer);
            self.send()?;
            'batch: loop {
                for reply in self.receive()? {
                    let Reply::Ack(ack) = reply else { continue };
                    if ack.sequence == barrier {
                        break 'batch;
                    }
                    let index = ack.sequence.wrapping_sub(first) as usize;
                    if index < chunk.len() && ack.errno != 0 {
                        failures.push((chunk_index * self.batch + index, ack));
                    }
                }
            }
        }
        Ok(failures)
    }

    /// Dumps with `request` (an `RTM_GET*` message) and returns the kernel's answers, dumping
    /// again while the kernel says the dump was interrupted by a change.
    pub(crate) fn dump(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, FibError> {
        for _ in 0..DUMP_ATTEMPTS {
            let sequence = self.sequence();
            self.send_buffer.clear();
            codec::append(
                &mut self.send_buffer,
                NLM_F_DUMP,
                sequence,
                NetlinkPayload::InnerMessage(request.clone()),
            );
            self.send()?;
            let mut replies = Vec::new();
            let mut interrupted = false;
            let done = 'dump: loop {
                for reply in self.receive()? {
                    match reply {
                        Reply::Message {
                            message,
                            sequence: seq,
                            interrupted: intr,
                        } if seq == sequence => {
                            interrupted |= intr;
                            replies.push(message);
                        }
                        Reply::Done {
                            sequence: seq,
                            interrupted: intr,
                            errno,
                        } if seq == sequence => {
                            interrupted |= intr;
                            break 'dump errno;
                        }
                        Reply::Ack(ack) if ack.sequence == sequence => {
                            if ack.errno == 0 {
                                break 'dump 0;
                            }
                            return Err(FibError::kernel("dump", ack));
                        }
                        _ => {}
                    }
                }
            };
            if done != 0 {
                return Err(FibError::kernel(
                    "dump",
                    Ack {
                        sequence,
                        errno: done,
                        message: None,
                    },
                ));
            }
            if !interrupted {
                return Ok(replies);
            }
            tracing::debug!("table changed during the dump; dumping again");
        }
        Err(FibError::DumpInterrupted)
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
