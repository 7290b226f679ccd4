//! The injector's BGP session: OPEN (4-octet AS, IPv4 unicast, route refresh), KEEPALIVE exchange, then
//! the pre-encoded UPDATEs written as fast as the peer reads them, then End-of-RIB; KEEPALIVEs every
//! third of the hold time. Every message goes through `reef_bgp::wire`.
//!
//! Blocking sockets and two threads (reader, writer) keep it small: the reader drains whatever the peer
//! sends and notes a NOTIFICATION or a closed connection; the writer sends the bulk UPDATEs and the
//! KEEPALIVEs. Single UPDATEs (the convergence benchmark's announce and withdraw) are written by the
//! caller; a lock keeps whole messages from interleaving.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use reef_bgp::wire::{
    AfiSafi, Capability, CodecContext, HEADER_LEN, Message, Open, message_length,
};

pub use crate::workload::EncodedUpdates;

/// Our side of the session.
#[derive(Debug, Clone, Copy)]
pub struct SessionParams {
    pub local_as: u32,
    pub bgp_id: Ipv4Addr,
    pub hold_time: u16,
}

impl SessionParams {
    fn open(&self) -> Open {
        Open::new(
            self.local_as,
            self.hold_time,
            self.bgp_id,
            vec![
                Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
                Capability::RouteRefresh,
                Capability::FourOctetAs(self.local_as),
            ],
        )
    }
}

/// What the reader and writer threads report.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Time from the first to the last UPDATE byte handed to the kernel.
    written: Mutex<Option<Duration>>,
    /// Held for each write, so that the writer thread and [`Session::write_now`] never interleave bytes.
    write_lock: Mutex<()>,
}

impl Shared {
    fn fail(&self, failure: String) {
        if !self.stop.load(Ordering::Relaxed) {
            let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert(failure);
        }
    }
}

/// An Established session. Dropping it closes the connection and joins its threads.
pub struct Session {
    stream: TcpStream,
    ctx: CodecContext,
    keepalive_interval: Duration,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    /// Runs the OPEN/KEEPALIVE exchange on a connected stream. The negotiated codec context must be
    /// `ctx`, the one the UPDATEs were encoded for.
    pub fn establish(
        mut stream: TcpStream,
        params: &SessionParams,
        ctx: CodecContext,
        timeout: Duration,
    ) -> Result<Session> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let ours = params.open();
        let before_open = CodecContext::default();
        stream.write_all(&Message::Open(ours.clone()).to_bytes(&before_open)?)?;
        let theirs = match read_message(&mut stream, &before_open).context("waiting for OPEN")? {
            Message::Open(open) => open,
            Message::Notification(notification) => bail!("received NOTIFICATION: {notification}"),
            other => bail!("expected OPEN, got {:?}", other.message_type()),
        };
        let negotiated = CodecContext::negotiate(&ours, &theirs);
        if negotiated != ctx {
            bail!("peer negotiated {negotiated:?}, the UPDATEs are encoded for {ctx:?}");
        }
        if !theirs
            .multiprotocol()
            .any(|family| family == AfiSafi::IPV4_UNICAST)
            && theirs.multiprotocol().next().is_some()
        {
            bail!("peer does not offer IPv4 unicast");
        }
        stream.write_all(&Message::Keepalive.to_bytes(&ctx)?)?;
        match read_message(&mut stream, &ctx).context("waiting for KEEPALIVE")? {
            Message::Keepalive => {}
            Message::Notification(notification) => bail!("received NOTIFICATION: {notification}"),
            other => bail!("expected KEEPALIVE, got {:?}", other.message_type()),
        }
        stream.set_read_timeout(None)?;
        // RFC 4271 §4.4: hold time 0 means no KEEPALIVEs; then the interval is never reached.
        let hold = theirs.hold_time.min(params.hold_time);
        let keepalive_interval = if hold == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(u64::from(hold / 3).max(1))
        };
        let shared = Arc::new(Shared::default());
        let reader = {
            let mut stream = stream.try_clone()?;
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                loop {
                    match read_message(&mut stream, &ctx) {
                        Ok(Message::Notification(notification)) => {
                            shared.fail(format!("received NOTIFICATION: {notification}"));
                            return;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            shared.fail(format!("{error:#}"));
                            return;
                        }
                    }
                }
            })
        };
        Ok(Session {
            stream,
            ctx,
            keepalive_interval,
            shared,
            threads: vec![reader],
        })
    }

    /// Starts writing all UPDATEs and then End-of-RIB, and keeps the session alive afterwards. Returns
    /// the instant just before the first byte is written.
    pub fn send(&mut self, updates: &EncodedUpdates) -> Result<Instant> {
        self.spawn_writer(Some(updates.clone()))
    }

    /// Only keeps the session alive (KEEPALIVE every third of the hold time): UPDATEs are then written
    /// one at a time with [`Session::write_now`].
    pub fn keep_alive(&mut self) -> Result<()> {
        self.spawn_writer(None).map(|_| ())
    }

    /// Writes whole encoded messages now, from the calling thread. Returns the instant just before the
    /// first byte is written (after the write lock is taken).
    pub fn write_now(&self, bytes: &[u8]) -> Result<Instant> {
        if let Some(failure) = self.failure() {
            bail!("session is down: {failure}");
        }
        let _guard = self
            .shared
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        (&self.stream).write_all(bytes).context("write UPDATE")?;
        Ok(started)
    }

    fn spawn_writer(&mut self, updates: Option<EncodedUpdates>) -> Result<Instant> {
        let mut stream = self.stream.try_clone()?;
        let shared = Arc::clone(&self.shared);
        let keepalive = Message::Keepalive.to_bytes(&self.ctx)?;
        let interval = self.keepalive_interval;
        let started = Instant::now();
        let writer = std::thread::spawn(move || {
            let mut last_keepalive = started;
            let mut write = |bytes: &[u8]| -> bool {
                let _guard = shared
                    .write_lock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match stream.write_all(bytes) {
                    Ok(()) => true,
                    Err(error) => {
                        shared.fail(format!("write: {error}"));
                        false
                    }
                }
            };
            if let Some(updates) = updates {
                let mut offset = 0;
                for &end in &updates.chunk_ends {
                    if !write(&updates.bytes[offset..end]) {
                        return;
                    }
                    offset = end;
                    if last_keepalive.elapsed() >= interval {
                        if !write(&keepalive) {
                            return;
                        }
                        last_keepalive = Instant::now();
                    }
                }
                if !write(&updates.end_of_rib) {
                    return;
                }
                *shared
                    .written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(started.elapsed());
            }
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last_keepalive.elapsed() >= interval {
                    if !write(&keepalive) {
                        return;
                    }
                    last_keepalive = Instant::now();
                }
            }
        });
        self.threads.push(writer);
        Ok(started)
    }

    /// Why the session is down, if it is.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Time it took to write all UPDATEs and End-of-RIB, once done.
    pub fn written(&self) -> Option<Duration> {
        *self
            .shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wakes the reader (EOF) and a writer blocked on a full socket (EPIPE).
        let _ = self.stream.shutdown(Shutdown::Both);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads one whole message and decodes it.
fn read_message(stream: &mut TcpStream, ctx: &CodecContext) -> Result<Message> {
    let mut buf = BytesMut::zeroed(HEADER_LEN);
    stream.read_exact(&mut buf).context("read BGP header")?;
    // Checks marker, length and type; `None` means the body is still to come.
    let len = match message_length(&buf, ctx).map_err(|e| anyhow!("bad header from peer: {e}"))? {
        Some(len) => len,
        None => usize::from(u16::from_be_bytes([buf[16], buf[17]])),
    };
    buf.resize(len, 0);
    stream
        .read_exact(&mut buf[HEADER_LEN..])
        .context("read BGP message")?;
    reef_bgp::wire::decode_bytes(buf.freeze(), ctx)
        .map_err(|e| anyhow!("bad message from peer: {e}"))
}
