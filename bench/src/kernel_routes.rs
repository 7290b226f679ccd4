//! Watching a namespace's kernel routing table as it changes: a netlink socket created inside the
//! namespace, subscribed to the IPv4 route multicast group (`RTNLGRP_IPV4_ROUTE`), reports every IPv4
//! route added (`RTM_NEWROUTE`) or removed (`RTM_DELROUTE`), stamped with the instant the
//! notification was read. The convergence benchmark takes its end times from here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};

/// The watcher thread checks for a stop this often (its receive timeout).
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Large enough that a burst of notifications (a daemon flushing a million routes: one message of
/// about 1 KiB truesize each) is not lost to ENOBUFS while the watcher catches up.
const RECEIVE_BUFFER: libc::c_int = 256 << 20;

/// Whether a route appeared or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
}

/// One IPv4 route notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEvent {
    pub change: Change,
    pub prefix: Ipv4Net,
    pub table: u32,
    /// `rtm_protocol`: 12 = BIRD, 186 = BGP (FRR), 82 = Reef.
    pub protocol: u8,
    /// When the watcher read the notification.
    pub at: Instant,
}

/// A running watcher. Dropping it stops its thread.
pub struct RouteWatch {
    events: Receiver<RouteEvent>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl RouteWatch {
    /// Starts watching the namespace `netns` (by name, `/var/run/netns/NAME`). Notifications of changes
    /// made after this returns are all delivered.
    pub fn open(netns: &str) -> Result<RouteWatch> {
        let path = format!("/var/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("open {path}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let (events_tx, events) = mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            let failure = Arc::clone(&failure);
            std::thread::spawn(move || {
                // SAFETY: setns(2) on a namespace fd we own; it moves only this thread, which exists
                // for the watcher alone.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = std::io::Error::last_os_error();
                    let _ = ready_tx.send(Err(anyhow!("setns {path}: {error}")));
                    return;
                }
                let socket = match subscribe() {
                    Ok(socket) => socket,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Err(error) = watch(&socket, &stop, &events_tx) {
                    *failure.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(format!("{error:#}"));
                }
            })
        };
        let mut watch = RouteWatch {
            events,
            stop,
            failure,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(watch),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                watch.stop_thread();
                bail!("route watcher did not start")
            }
        }
    }

    /// Hands every event to `done` until it returns true (`Ok(true)`), at most for `timeout` or until
    /// `interrupted` says so (`Ok(false)`).
    pub fn watch_until(
        &self,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
        done: &mut dyn FnMut(&RouteEvent) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if interrupted() {
                return Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.events.recv_timeout(left.min(RECEIVE_TIMEOUT)) {
                Ok(event) if done(&event) => return Ok(true),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "route watcher stopped: {}",
                    self.failure().unwrap_or_else(|| "no reason".to_string())
                ),
            }
        }
    }

    /// Waits at most `timeout` for `change` of `prefix` in `table`, discarding every other event, and
    /// returns it; `Ok(None)` on timeout or when `interrupted` says so.
    pub fn wait_for(
        &self,
        change: Change,
        prefix: Ipv4Net,
        table: u32,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<RouteEvent>> {
        let mut found = None;
        self.watch_until(timeout, interrupted, &mut |event| {
            let wanted = event.change == change && event.prefix == prefix && event.table == table;
            if wanted {
                found = Some(*event);
            }
            wanted
        })?;
        Ok(found)
    }

    /// Counts `change` events of `table` (any prefix) until `count` of them arrived, at most for
    /// `timeout` or until `interrupted`; returns how many arrived.
    pub fn count(
        &self,
        change: Change,
        table: u32,
        count: u64,
        timeout: Duration,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<u64> {
        let mut seen = 0;
        if count > 0 {
            self.watch_until(timeout, interrupted, &mut |event| {
                if event.change == change && event.table == table {
                    seen += 1;
                }
                seen >= count
            })?;
        }
        Ok(seen)
    }

    /// Why the watcher stopped, if it did (e.g. ENOBUFS: notifications were lost).
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// A route netlink socket in the calling thread's namespace, member of `RTNLGRP_IPV4_ROUTE`.
fn subscribe() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    socket.bind_auto().context("bind netlink socket")?;
    socket
        .add_membership(libc::RTNLGRP_IPV4_ROUTE)
        .context("join RTNLGRP_IPV4_ROUTE")?;
    let fd = socket.as_raw_fd();
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a value of the size we pass.
    let set = |level, name, value: *const libc::c_void, len: usize| unsafe {
        libc::setsockopt(fd, level, name, value, len as libc::socklen_t)
    };
    // Root may exceed net.core.rmem_max with SO_RCVBUFFORCE; if not granted, the default has to do.
    let size = RECEIVE_BUFFER;
    let size_ptr = (&raw const size).cast();
    if set(
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        size_ptr,
        size_of_val(&size),
    ) != 0
    {
        let _ = set(
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            size_ptr,
            size_of_val(&size),
        );
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: RECEIVE_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    if set(
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        (&raw const timeout).cast(),
        size_of_val(&timeout),
    ) != 0
    {
        bail!(
            "SO_RCVTIMEO on the netlink socket: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(socket)
}

/// Reads notifications until `stop`; each route change goes to `events` with the instant it was read.
fn watch(socket: &Socket, stop: &AtomicBool, events: &mpsc::Sender<RouteEvent>) -> Result<()> {
    let mut buffer = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        buffer.clear();
        match socket.recv(&mut buffer, 0) {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => return Err(anyhow!(error).context("receive route notifications")),
        }
        let at = Instant::now();
        for event in decode_events(&buffer, at)? {
            if events.send(event).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The IPv4 route changes in one datagram of notifications.
pub fn decode_events(datagram: &[u8], at: Instant) -> Result<Vec<RouteEvent>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let buffer =
            NetlinkBuffer::new_checked(rest).map_err(|e| anyhow!("netlink header: {e}"))?;
        let len = buffer.length() as usize;
        // new_checked guarantees header length <= len <= rest.len().
        let (message, after) = rest.split_at(len);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
            .map_err(|e| anyhow!("netlink message: {e}"))?;
        let decoded = match parsed.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                route_event(&route, Change::Added, at)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route)) => {
                route_event(&route, Change::Removed, at)
            }
            _ => None,
        };
        out.extend(decoded);
        rest = after
            .get(len.next_multiple_of(4) - len..)
            .unwrap_or_default();
    }
    Ok(out)
}

fn route_event(route: &RouteMessage, change: Change, at: Instant) -> Option<RouteEvent> {
    if route.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(route.header.table);
    let mut destination = std::net::Ipv4Addr::UNSPECIFIED;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(addr)) => destination = *addr,
            _ => {}
        }
    }
    let prefix = Ipv4Net::new(destination, route.header.destination_prefix_length).ok()?;
    Some(RouteEvent {
        change,
        prefix,
        table,
        protocol: u8::from(route.header.protocol),
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::NetlinkHeader;
    use rtnetlink::packet_route::route::{RouteHeader, RouteProtocol};

    fn notification(delete: bool, prefix: Ipv4Net, table: u32) -> Vec<u8> {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = prefix.prefix_len();
        route.header.table = RouteHeader::RT_TABLE_UNSPEC;
        route.header.protocol = RouteProtocol::from(12);
        route.attributes.push(RouteAttribute::Table(table));
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                prefix.addr(),
            )));
        let payload = if delete {
            RouteNetlinkMessage::DelRoute(route)
        } else {
            RouteNetlinkMessage::NewRoute(route)
        };
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), payload.into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn decodes_added_and_removed_routes_of_one_datagram() {
        let prefix: Ipv4Net = "100.64.3.0/24".parse().unwrap();
        let mut datagram = notification(false, prefix, 254);
        datagram.extend(notification(true, prefix, 1000));
        let at = Instant::now();
        let events = decode_events(&datagram, at).unwrap();
        assert_eq!(
            events,
            vec![
                RouteEvent {
                    change: Change::Added,
                    prefix,
                    table: 254,
                    protocol: 12,
                    at
                },
                RouteEvent {
                    change: Change::Removed,
                    prefix,
                    table: 1000,
                    protocol: 12,
                    at
                },
            ]
        );
    }

    #[test]
    fn truncated_datagram_is_an_error() {
        let prefix: Ipv4Net = "100.64.3.0/24".parse().unwrap();
        let datagram = notification(false, prefix, 254);
        assert!(decode_events(&datagram[..datagram.len() - 4], Instant::now()).is_err());
    }
}
