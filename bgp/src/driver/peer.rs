//! The task of one peer: FSM, timers, connections, Adj-RIB-In writes and the advertisement.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

use super::status::{PeerStatus, rfc3339};
use super::{PeerConfig, SpeakerConfig, SpeakerError, lock, socket};
use crate::fsm::{
    ConnId, DownReason, Input, NegotiatedSession, Output, Session, SessionConfig, State, Timer,
};
use crate::rib::AdjRibIn;
use crate::wire::{
    AfiSafi, AsPath, CodecContext, Message, MessageError, NextHop, Nlri, Origin, PathAttributes,
    RouteRefresh, RouteRefreshSubtype, Update, decode_bytes, message_length,
};

/// Connect attempts without an answer before the status blames the path or the MD5 key.
const CONNECT_TIMEOUT_HINT_AFTER: u32 = 3;
/// Receive buffer growth step: large reads keep syscalls per prefix low on a full-table load.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks of received messages in flight between a reader and the peer task.
const READ_QUEUE: usize = 4;
/// Control commands in flight to a peer task.
const COMMAND_QUEUE: usize = 64;

pub(super) enum PeerCommand {
    Inbound(TcpStream),
    Advertise(IpNet),
    Withdraw(IpNet),
    Refresh(oneshot::Sender<Result<(), SpeakerError>>),
    SuppressKeepalives(bool),
    Stop(oneshot::Sender<()>),
}

enum Event {
    Connected {
        attempt: u64,
        result: io::Result<TcpStream>,
    },
    /// Complete messages the reader could not decode yet (before the session context was known).
    Received { conn: ConnId, chunk: Bytes },
    /// Messages the reader decoded with the Established session's context.
    Decoded {
        conn: ConnId,
        messages: Vec<Result<Message, MessageError>>,
    },
    /// A framing error: the header of the next message is bad.
    FrameError { conn: ConnId, error: MessageError },
    Closed {
        conn: ConnId,
        error: Option<io::Error>,
    },
}

/// What the API reads while the task runs.
pub(super) struct PeerShared {
    pub(super) rib: Arc<Mutex<AdjRibIn>>,
    status: Mutex<PeerStatus>,
    established_at: Mutex<Option<Instant>>,
    updates_received: AtomicU64,
}

impl PeerShared {
    pub(super) fn snapshot(&self) -> PeerStatus {
        let mut status = lock(&self.status).clone();
        status.prefixes_received = lock(&self.rib).len();
        status.uptime_seconds = lock(&self.established_at).map(|at| at.elapsed().as_secs());
        status.updates_received = self.updates_received.load(Ordering::Relaxed);
        status
    }
}

struct Connection {
    writer: mpsc::UnboundedSender<Bytes>,
    reader: JoinHandle<()>,
    ctx: CodecContext,
    /// Tells the reader the negotiated context, so that it decodes in parallel with this task.
    reader_ctx: watch::Sender<Option<CodecContext>>,
    local: SocketAddr,
}

struct EstablishedSession {
    negotiated: Box<NegotiatedSession>,
    local: SocketAddr,
    advertised: BTreeSet<IpNet>,
}

struct PeerTask {
    config: PeerConfig,
    local_as: u32,
    session: Session,
    outputs: Vec<Output>,
    timers: HashMap<Timer, Instant>,
    conns: HashMap<ConnId, Connection>,
    connect_attempt: u64,
    connect_task: Option<JoinHandle<()>>,
    last_connect_error: Option<String>,
    events_tx: mpsc::Sender<Event>,
    next_conn: Arc<AtomicU64>,
    prefixes: Arc<Mutex<BTreeSet<IpNet>>>,
    shared: Arc<PeerShared>,
    established: Option<EstablishedSession>,
    pending_updates: Vec<Update>,
    suppress_keepalives: bool,
}

pub(super) fn spawn(
    config: PeerConfig,
    speaker: &SpeakerConfig,
    prefixes: Arc<Mutex<BTreeSet<IpNet>>>,
    next_conn: Arc<AtomicU64>,
) -> (mpsc::Sender<PeerCommand>, Arc<PeerShared>, JoinHandle<()>) {
    let local_as = config.local_as.unwrap_or(speaker.local_as);
    let mut session_config = SessionConfig::new(local_as, config.remote_as, speaker.router_id);
    session_config.hold_time = config.hold_time;
    session_config.keepalive_time = config.keepalive_time;
    session_config.connect_retry = config.connect_retry;
    session_config.passive = config.passive;
    session_config.idle_hold = config.idle_hold;
    let status = PeerStatus {
        address: config.address,
        port: config.port,
        remote_as: config.remote_as,
        local_as,
        peer_type: if local_as == config.remote_as {
            "ibgp"
        } else {
            "ebgp"
        },
        state: State::Idle.name(),
        since: rfc3339(SystemTime::now()),
        uptime_seconds: None,
        remote_router_id: None,
        local_address: None,
        hold_time: None,
        keepalive_time: None,
        capabilities: Vec::new(),
        prefixes_received: 0,
        prefixes_advertised: 0,
        updates_received: 0,
        passive: config.passive,
        md5: config.password.is_some(),
        ttl_security: config.ttl_security,
        last_error: None,
        info: String::new(),
    };
    let shared = Arc::new(PeerShared {
        rib: Arc::new(Mutex::new(AdjRibIn::with_local_as(local_as))),
        status: Mutex::new(status),
        established_at: Mutex::new(None),
        updates_received: AtomicU64::new(0),
    });
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events_rx) = mpsc::channel(READ_QUEUE);
    let task = PeerTask {
        config,
        local_as,
        session: Session::new(session_config),
        outputs: Vec::new(),
        timers: HashMap::new(),
        conns: HashMap::new(),
        connect_attempt: 0,
        connect_task: None,
        last_connect_error: None,
        events_tx,
        next_conn,
        prefixes,
        shared: shared.clone(),
        established: None,
        pending_updates: Vec::new(),
        suppress_keepalives: false,
    };
    let handle = tokio::spawn(task.run(commands_rx, events_rx));
    (commands_tx, shared, handle)
}

impl PeerTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<PeerCommand>,
        mut events: mpsc::Receiver<Event>,
    ) {
        self.input(Input::ManualStart);
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(PeerCommand::Stop(done)) => {
                        self.input(Input::ManualStop);
                        // Let the writers flush the NOTIFICATION (bounded by the caller's timeout).
                        for (_, conn) in self.conns.drain() {
                            conn.reader.abort();
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => return,
                },
                Some(event) = events.recv() => self.event(event),
                _ = sleep_until(tokio::time::Instant::from_std(deadline.unwrap_or_else(Instant::now))), if deadline.is_some() => {
                    let now = Instant::now();
                    let expired: Vec<Timer> = self.timers.iter().filter(|(_, at)| **at <= now).map(|(t, _)| *t).collect();
                    for timer in expired {
                        self.timers.remove(&timer);
                        self.input(Input::TimerExpired(timer));
                    }
                    // Connect timeouts change the hint without a state change.
                    self.update_info();
                }
            }
        }
    }

    fn peer(&self) -> IpAddr {
        self.config.address
    }

    /// Runs one FSM input and carries out its outputs.
    fn input(&mut self, input: Input) {
        let mut outputs = std::mem::take(&mut self.outputs);
        self.session.handle(input, Instant::now(), &mut outputs);
        for output in outputs.drain(..) {
            self.output(output);
        }
        self.outputs = outputs;
    }

    fn output(&mut self, output: Output) {
        match output {
            Output::Connect => self.connect(),
            Output::AbortConnect => {
                self.connect_attempt += 1;
                if let Some(task) = self.connect_task.take() {
                    task.abort();
                }
            }
            Output::SendMessage { conn, message } => {
                if self.suppress_keepalives && matches!(message, Message::Keepalive) {
                    return;
                }
                if let Message::Notification(n) = &message {
                    warn!(peer = %self.peer(), notification = %n, "sending NOTIFICATION");
                }
                self.send(conn, &message);
            }
            Output::CloseConnection { conn } => {
                if let Some(connection) = self.conns.remove(&conn) {
                    // The writer ends (and shuts the socket) when its queue is drained and dropped.
                    connection.reader.abort();
                }
            }
            Output::StartTimer(timer, after) => {
                self.timers.insert(timer, Instant::now() + after);
            }
            Output::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Output::StateChanged { from, to } => self.state_changed(from, to),
            Output::Established(negotiated) => self.established(negotiated),
            Output::RouteUpdate(update) => self.pending_updates.push(update),
            Output::RouteRefreshRequested(refresh) => self.refresh_requested(refresh),
            Output::SessionDown {
                reason,
                was_established,
            } => self.session_down(reason, was_established),
        }
    }

    fn state_changed(&mut self, from: State, to: State) {
        info!(peer = %self.peer(), %from, %to, "BGP session state changed");
        let mut status = lock(&self.shared.status);
        status.state = to.name();
        status.since = rfc3339(SystemTime::now());
        drop(status);
        self.update_info();
    }

    /// Recomputes the one-line hint of the status.
    fn update_info(&self) {
        let mut status = lock(&self.shared.status);
        let timeouts = self.session.connect_timeouts();
        status.info = if self.established.is_some() {
            "Established".to_string()
        } else if timeouts >= CONNECT_TIMEOUT_HINT_AFTER {
            format!(
                "no response to SYN/OPEN after {timeouts} connect attempts; check reachability, \
                 ttlSecurity/multihop and the TCP MD5 password on both sides"
            )
        } else if self.session.state() == State::OpenSent {
            "connected; waiting for the peer's OPEN (a peer that does not know us, or whose packets \
             fail ttlSecurity, stays silent)"
                .to_string()
        } else if let Some(error) = &self.last_connect_error {
            format!("connect: {error}")
        } else if let Some(error) = &status.last_error {
            error.clone()
        } else if self.config.passive {
            let md5 = if self.config.password.is_some() {
                " (a TCP MD5 password mismatch drops its SYNs silently)"
            } else {
                ""
            };
            format!("passive: waiting for the peer to connect{md5}")
        } else {
            String::new()
        };
    }

    fn connect(&mut self) {
        self.connect_attempt += 1;
        let attempt = self.connect_attempt;
        let remote = SocketAddr::new(self.config.address, self.config.port);
        let options = self.config.socket_options(self.local_as);
        let source = self.config.source_address;
        let events = self.events_tx.clone();
        debug!(peer = %self.peer(), %remote, "connecting");
        self.connect_task = Some(tokio::spawn(async move {
            let result = match socket::connect_socket(remote, source, &options) {
                Ok(socket) => socket.connect(remote).await,
                Err(e) => Err(e),
            };
            let _ = events.send(Event::Connected { attempt, result }).await;
        }));
    }

    fn command(&mut self, command: PeerCommand) {
        match command {
            PeerCommand::Inbound(stream) => {
                let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
                if self.attach(conn, stream) {
                    self.input(Input::TcpConnectionConfirmed { conn });
                }
            }
            PeerCommand::Advertise(prefix) => self.announce(&[prefix]),
            PeerCommand::Withdraw(prefix) => self.withdraw(prefix),
            PeerCommand::Refresh(reply) => {
                let _ = reply.send(self.send_refresh());
            }
            PeerCommand::SuppressKeepalives(suppress) => self.suppress_keepalives = suppress,
            // Handled in `run` (it ends the task).
            PeerCommand::Stop(_) => {}
        }
    }

    /// Splits a connected stream into reader and writer tasks. False if the stream is unusable.
    fn attach(&mut self, conn: ConnId, stream: TcpStream) -> bool {
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(e) => {
                warn!(peer = %self.peer(), error = %e, "connection without a local address; dropped");
                return false;
            }
        };
        let (read, write) = stream.into_split();
        let (writer, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, queue));
        let (reader_ctx, ctx_rx) = watch::channel(None);
        let reader = tokio::spawn(read_loop(conn, read, ctx_rx, self.events_tx.clone()));
        self.conns.insert(
            conn,
            Connection {
                writer,
                reader,
                ctx: CodecContext::default(),
                reader_ctx,
                local,
            },
        );
        true
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Connected { attempt, result } => {
                if attempt != self.connect_attempt {
                    return; // an abandoned attempt
                }
                self.connect_task = None;
                match result {
                    Ok(stream) => {
                        self.last_connect_error = None;
                        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
                        if self.attach(conn, stream) {
                            self.input(Input::TcpConnectionAcknowledged { conn });
                        } else {
                            self.input(Input::ConnectFailed);
                        }
                    }
                    Err(e) => {
                        debug!(peer = %self.peer(), error = %e, "connect failed");
                        self.last_connect_error = Some(e.to_string());
                        self.input(Input::ConnectFailed);
                        self.update_info();
                    }
                }
            }
            Event::Received { conn, chunk } => self.received(conn, chunk),
            Event::Decoded { conn, messages } => {
                for message in messages {
                    if !self.conns.contains_key(&conn) {
                        break; // closed by an earlier message of the batch
                    }
                    self.input(match message {
                        Ok(message) => Input::MessageReceived { conn, message },
                        Err(error) => {
                            warn!(peer = %self.peer(), %error, "malformed message");
                            Input::MessageError { conn, error }
                        }
                    });
                }
                self.flush_updates();
            }
            Event::FrameError { conn, error } => {
                warn!(peer = %self.peer(), %error, "malformed message header");
                self.input(Input::MessageError { conn, error });
            }
            Event::Closed { conn, error } => {
                if self.conns.contains_key(&conn) {
                    match &error {
                        Some(e) => info!(peer = %self.peer(), error = %e, "connection failed"),
                        None => info!(peer = %self.peer(), "connection closed by the peer"),
                    }
                    self.input(Input::TcpConnectionFails { conn });
                }
            }
        }
    }

    /// Decodes every message of a chunk with the connection's current codec context (it changes when
    /// the session is Established, so decoding happens here and not in the reader), then applies the
    /// UPDATEs to the Adj-RIB-In under one lock.
    fn received(&mut self, conn: ConnId, mut chunk: Bytes) {
        // The reader framed the chunk with the same function: lengths are known to be complete.
        let framing = CodecContext {
            extended_message: true,
            ..CodecContext::default()
        };
        while !chunk.is_empty() {
            let Some(connection) = self.conns.get(&conn) else {
                break;
            };
            let ctx = connection.ctx;
            let len = match message_length(&chunk, &framing) {
                Ok(Some(len)) => len,
                _ => break,
            };
            let message = chunk.split_to(len);
            let input = match decode_bytes(message, &ctx) {
                Ok(message) => Input::MessageReceived { conn, message },
                Err(error) => {
                    warn!(peer = %self.peer(), %error, "malformed message");
                    Input::MessageError { conn, error }
                }
            };
            self.input(input);
        }
        self.flush_updates();
    }

    fn flush_updates(&mut self) {
        if self.pending_updates.is_empty() {
            return;
        }
        self.shared
            .updates_received
            .fetch_add(self.pending_updates.len() as u64, Ordering::Relaxed);
        let mut rib = lock(&self.shared.rib);
        let mut trim_heap = false;
        for update in self.pending_updates.drain(..) {
            let stats = rib.apply(&update);
            if stats.treated_as_withdraw {
                warn!(peer = %self.config.address, errors = ?update.errors, "UPDATE treated as withdraw (RFC 7606)");
            }
            if let Some(family) = stats.end_of_rib {
                info!(peer = %self.config.address, %family, routes = rib.len(), "End-of-RIB received");
                trim_heap = true;
            }
        }
        drop(rib);
        if trim_heap {
            release_free_memory();
        }
    }

    fn send(&mut self, conn: ConnId, message: &Message) {
        let Some(connection) = self.conns.get(&conn) else {
            return;
        };
        let mut buf = BytesMut::new();
        match message.encode(&connection.ctx, &mut buf) {
            Ok(()) => {
                let _ = connection.writer.send(buf.freeze());
            }
            Err(e) => warn!(peer = %self.peer(), error = %e, "cannot encode message"),
        }
    }

    fn established(&mut self, negotiated: Box<NegotiatedSession>) {
        let Some(connection) = self.conns.get_mut(&negotiated.conn) else {
            return;
        };
        connection.ctx = negotiated.codec;
        lock(&self.shared.rib).set_context(negotiated.codec);
        let _ = connection.reader_ctx.send(Some(negotiated.codec));
        let local = connection.local;
        let mut capabilities = Vec::new();
        for family in negotiated.families.iter() {
            capabilities.push(family_name(family).to_string());
        }
        if negotiated.route_refresh {
            capabilities.push("route-refresh".into());
        }
        if negotiated.codec.four_octet_as {
            capabilities.push("four-octet-as".into());
        }
        if negotiated.codec.extended_message {
            capabilities.push("extended-message".into());
        }
        info!(
            peer = %self.peer(), remote_as = negotiated.peer_as, router_id = %negotiated.peer_id,
            hold_time = negotiated.hold_time, ?capabilities, "BGP session Established"
        );
        {
            let mut status = lock(&self.shared.status);
            status.remote_router_id = Some(negotiated.peer_id);
            status.local_address = Some(socket::canonical_ip(local.ip()));
            status.hold_time = Some(negotiated.hold_time);
            status.keepalive_time = Some(negotiated.keepalive_time);
            status.capabilities = capabilities;
            status.last_error = None;
        }
        *lock(&self.shared.established_at) = Some(Instant::now());
        self.last_connect_error = None;
        self.established = Some(EstablishedSession {
            negotiated,
            local,
            advertised: BTreeSet::new(),
        });
        let prefixes: Vec<IpNet> = lock(&self.prefixes).iter().copied().collect();
        self.announce(&prefixes);
        if let Some(session) = &self.established {
            let conn = session.negotiated.conn;
            for family in session.negotiated.families.iter().collect::<Vec<_>>() {
                self.send(conn, &Message::Update(Update::end_of_rib_marker(family)));
            }
        }
        self.update_info();
    }

    fn session_down(&mut self, reason: DownReason, was_established: bool) {
        match &reason {
            DownReason::NotificationReceived(n) => {
                warn!(peer = %self.peer(), notification = %n, "NOTIFICATION received; session down")
            }
            _ => warn!(peer = %self.peer(), %reason, "session down"),
        }
        self.pending_updates.clear();
        if was_established {
            let removed = {
                let mut rib = lock(&self.shared.rib);
                let removed = rib.len();
                rib.clear();
                removed
            };
            info!(peer = %self.peer(), routes = removed, "routes of the session removed");
            release_free_memory();
        }
        self.established = None;
        *lock(&self.shared.established_at) = None;
        {
            let mut status = lock(&self.shared.status);
            status.last_error = Some(reason.to_string());
            status.prefixes_advertised = 0;
            status.hold_time = None;
            status.keepalive_time = None;
            status.local_address = None;
            status.capabilities.clear();
        }
        self.update_info();
    }

    /// Our path attributes: iBGP keeps an empty AS_PATH and sets LOCAL_PREF 100; eBGP prepends our AS.
    fn attributes(&self, negotiated: &NegotiatedSession) -> PathAttributes {
        let ibgp = negotiated.codec.ibgp;
        PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(if ibgp {
                AsPath::default()
            } else {
                AsPath::from_sequence(vec![self.local_as])
            }),
            local_pref: ibgp.then_some(100),
            ..PathAttributes::default()
        }
    }

    /// The next hop for a family on this session, `None` when the family cannot be sent.
    fn next_hop(&self, session: &EstablishedSession, family: AfiSafi) -> Option<NextHop> {
        if !session.negotiated.families.contains(family) {
            return None;
        }
        let local = socket::canonical_ip(session.local.ip());
        if family == AfiSafi::IPV4_UNICAST {
            match (self.config.next_hop_v4, local) {
                (Some(v4), _) | (None, IpAddr::V4(v4)) => Some(NextHop::V4(v4)),
                (None, IpAddr::V6(_)) => None,
            }
        } else {
            let global = match (self.config.next_hop_v6, local) {
                (Some(v6), _) | (None, IpAddr::V6(v6)) => v6,
                (None, IpAddr::V4(v4)) => v4.to_ipv6_mapped(),
            };
            Some(NextHop::V6 {
                global,
                link_local: None::<Ipv6Addr>,
            })
        }
    }

    fn announce(&mut self, prefixes: &[IpNet]) {
        let Some(session) = &self.established else {
            return;
        };
        let attributes = self.attributes(&session.negotiated);
        let mut sent = Vec::new();
        let mut buf = BytesMut::new();
        for family in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
            let nlri: Vec<Nlri> = prefixes
                .iter()
                .filter(|p| {
                    matches!(
                        (p, family.afi),
                        (IpNet::V4(_), crate::wire::Afi::IPV4)
                            | (IpNet::V6(_), crate::wire::Afi::IPV6)
                    )
                })
                .map(|p| Nlri::new(*p))
                .collect();
            if nlri.is_empty() {
                continue;
            }
            let Some(next_hop) = self.next_hop(session, family) else {
                debug!(peer = %self.peer(), %family, "family not negotiated or no next hop; not advertised");
                continue;
            };
            let updates = match Update::announce(
                &attributes,
                next_hop,
                &nlri,
                &session.negotiated.codec,
            ) {
                Ok(updates) => updates,
                Err(e) => {
                    warn!(peer = %self.peer(), %family, error = %e, "cannot build the advertisement");
                    continue;
                }
            };
            for update in updates {
                if let Err(e) = Message::Update(update).encode(&session.negotiated.codec, &mut buf)
                {
                    warn!(peer = %self.peer(), error = %e, "cannot encode UPDATE");
                }
            }
            sent.extend(nlri.iter().map(|n| n.prefix));
        }
        let conn = session.negotiated.conn;
        if let Some(connection) = self.conns.get(&conn).filter(|_| !buf.is_empty()) {
            let _ = connection.writer.send(buf.freeze());
        }
        if let Some(session) = &mut self.established {
            session.advertised.extend(sent);
            lock(&self.shared.status).prefixes_advertised = session.advertised.len();
        }
    }

    fn withdraw(&mut self, prefix: IpNet) {
        let Some(session) = &mut self.established else {
            return;
        };
        if !session.advertised.remove(&prefix) {
            return;
        }
        let ctx = session.negotiated.codec;
        let conn = session.negotiated.conn;
        lock(&self.shared.status).prefixes_advertised = session.advertised.len();
        match Update::withdraw(&[Nlri::new(prefix)], &ctx) {
            Ok(updates) => {
                for update in updates {
                    self.send(conn, &Message::Update(update));
                }
            }
            Err(e) => warn!(peer = %self.peer(), error = %e, "cannot build the withdrawal"),
        }
    }

    /// RFC 2918 §4: on a ROUTE-REFRESH, re-advertise the Adj-RIB-Out of that family.
    fn refresh_requested(&mut self, refresh: RouteRefresh) {
        if refresh.subtype != RouteRefreshSubtype::Normal {
            return; // BoRR/EoRR are enhanced route refresh (not negotiated); unknown subtypes are ignored
        }
        let family = AfiSafi::new(refresh.afi, refresh.safi);
        info!(peer = %self.peer(), %family, "ROUTE-REFRESH received; re-advertising");
        let Some(session) = &self.established else {
            return;
        };
        if !session.negotiated.families.contains(family) {
            return;
        }
        let prefixes: Vec<IpNet> = session
            .advertised
            .iter()
            .copied()
            .filter(|p| (family.afi == crate::wire::Afi::IPV4) == matches!(p, IpNet::V4(_)))
            .collect();
        self.announce(&prefixes);
    }

    fn send_refresh(&mut self) -> Result<(), SpeakerError> {
        let Some(session) = &self.established else {
            return Err(SpeakerError::NotEstablished(self.peer()));
        };
        if !session.negotiated.route_refresh {
            return Err(SpeakerError::NoRouteRefresh(self.peer()));
        }
        let conn = session.negotiated.conn;
        let families: Vec<AfiSafi> = session.negotiated.families.iter().collect();
        for family in families {
            info!(peer = %self.peer(), %family, "sending ROUTE-REFRESH");
            let refresh = RouteRefresh {
                afi: family.afi,
                safi: family.safi,
                subtype: RouteRefreshSubtype::Normal,
            };
            self.send(conn, &Message::RouteRefresh(refresh));
        }
        Ok(())
    }
}

fn family_name(family: AfiSafi) -> &'static str {
    match family {
        AfiSafi::IPV4_UNICAST => "ipv4-unicast",
        AfiSafi::IPV6_UNICAST => "ipv6-unicast",
        _ => "other",
    }
}

/// Reads large chunks and forwards every run of complete messages as one `Bytes` (zero-copy split).
async fn read_loop(
    conn: ConnId,
    mut read: OwnedReadHalf,
    session_ctx: watch::Receiver<Option<CodecContext>>,
    events: mpsc::Sender<Event>,
) {
    // Framing accepts extended messages; the peer task rejects them if they were not negotiated.
    let framing = CodecContext {
        extended_message: true,
        ..CodecContext::default()
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = events.send(Event::Closed { conn, error: None }).await;
                return;
            }
            Ok(_) => {}
            Err(error) => {
                let _ = events
                    .send(Event::Closed {
                        conn,
                        error: Some(error),
                    })
                    .await;
                return;
            }
        }
        let mut complete = 0;
        loop {
            match message_length(&buf[complete..], &framing) {
                Ok(Some(len)) => complete += len,
                Ok(None) => break,
                Err(error) => {
                    if complete > 0 {
                        let chunk = buf.split_to(complete).freeze();
                        let _ = events.send(Event::Received { conn, chunk }).await;
                    }
                    let _ = events.send(Event::FrameError { conn, error }).await;
                    return;
                }
            }
        }
        if complete > 0 {
            let chunk = buf.split_to(complete).freeze();
            // Once Established, decode here so that decoding overlaps the session task's RIB writes.
            let ctx = *session_ctx.borrow();
            let event = match ctx {
                Some(ctx) => Event::Decoded {
                    conn,
                    messages: decode_all(chunk, &ctx),
                },
                None => Event::Received { conn, chunk },
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Hands memory freed by a table load (decoded batches spread over the worker threads' malloc arenas,
/// the hash tables' smaller predecessors) back to the kernel; glibc keeps it otherwise.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Decodes a run of complete messages, stopping after the first error (it resets the session).
fn decode_all(mut chunk: Bytes, ctx: &CodecContext) -> Vec<Result<Message, MessageError>> {
    let framing = CodecContext {
        extended_message: true,
        ..*ctx
    };
    let mut messages = Vec::new();
    while let Ok(Some(len)) = message_length(&chunk, &framing) {
        let message = decode_bytes(chunk.split_to(len), ctx);
        let failed = message.is_err();
        messages.push(message);
        if failed {
            break;
        }
    }
    messages
}

/// Writes queued buffers; ends (shutting the socket down) when the queue is dropped or a write fails.
async fn write_loop(mut write: OwnedWriteHalf, mut queue: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(data) = queue.recv().await {
        if write.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}
