//! A TCP forwarder from a lab namespace's loopback to a service on the root namespace's loopback.
//!
//! Why: the test's etcd listens on 127.0.0.1 of the root namespace, and a process that must run inside a
//! node namespace (the CNI plugin, reefd) cannot reach that loopback. The forwarder's listening socket is
//! created by a thread that entered the namespace (a socket keeps the namespace it was made in); the
//! connections it forwards to are made from this process's own namespace. No link, address or route is
//! created anywhere, and nothing leaves the machine.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::Netns;

/// How long the accept loop waits in poll(2) before it looks at its stop flag again.
const ACCEPT_POLL_MS: libc::c_int = 100;
/// Bound on connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards `127.0.0.1:<port>` inside a namespace to a target address of this process's namespace.
/// Dropping it stops accepting and closes every forwarded connection.
pub struct NetnsForward {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl NetnsForward {
    /// Listens on `127.0.0.1:port` inside `ns` (`port` 0 picks a free one) and forwards each connection
    /// to `target`.
    pub fn start(ns: &Netns, port: u16, target: SocketAddr) -> Result<NetnsForward> {
        let listener = listen_in(ns, port)?;
        let port = listener
            .local_addr()
            .map_err(|e| LabError::Daemon(format!("forwarder in {}: {e}", ns.name())))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| LabError::Daemon(format!("forwarder in {}: {e}", ns.name())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("fwd-{port}"))
                .spawn(move || accept_loop(listener, target, &stop))
                .map_err(|e| LabError::Daemon(format!("forwarder thread: {e}")))?
        };
        Ok(NetnsForward {
            port,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The port on the namespace's loopback.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: the URL a process inside the namespace uses.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for NetnsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Binds the listener from a short-lived thread that entered the namespace.
fn listen_in(ns: &Netns, port: u16) -> Result<TcpListener> {
    let path = format!("/run/netns/{}", ns.name());
    let netns = File::open(&path).map_err(|e| LabError::file(&path, e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<TcpListener> {
                // SAFETY: setns on a valid namespace fd; it changes only this (scoped, soon ended) thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("listener thread panicked")))
    })
    .map_err(|e| LabError::Daemon(format!("forwarder: listen in {}: {e}", ns.name())))
}

fn accept_loop(listener: TcpListener, target: SocketAddr, stop: &AtomicBool) {
    let mut open: Vec<(TcpStream, TcpStream)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((inbound, _)) => {
                let _ = inbound.set_nonblocking(false);
                match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
                    Ok(outbound) => {
                        // Small request/response protocols (etcd's gRPC) would otherwise wait on
                        // Nagle and the peer's delayed ACK: ~40 ms per round trip.
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        if let Some(pair) = pump(inbound, outbound) {
                            open.push(pair);
                        }
                    }
                    Err(e) => tracing::debug!(%target, error = %e, "forwarder: target refused"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(e) => {
                tracing::debug!(error = %e, "forwarder: accept failed");
                wait_readable(&listener);
            }
        }
        // Forget connections both of whose directions are finished.
        open.retain(|(a, _)| a.peer_addr().is_ok());
    }
    // Closing both sockets ends the pump threads (their reads return).
    for (a, b) in open {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

/// Waits until a connection is pending, or for [`ACCEPT_POLL_MS`].
fn wait_readable(listener: &TcpListener) {
    let mut fd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(listener),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, ACCEPT_POLL_MS) };
}

/// Two threads copy the bytes each way; each closes the other side's write half at end of stream.
/// Returns handles to both sockets so the forwarder can close them when it stops.
fn pump(inbound: TcpStream, outbound: TcpStream) -> Option<(TcpStream, TcpStream)> {
    let handles = (inbound.try_clone().ok()?, outbound.try_clone().ok()?);
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    let (in_read, out_write) = (inbound.try_clone().ok()?, outbound.try_clone().ok()?);
    std::thread::Builder::new()
        .spawn(copy(in_read, out_write))
        .ok()?;
    std::thread::Builder::new()
        .spawn(copy(outbound, inbound))
        .ok()?;
    Some(handles)
}
