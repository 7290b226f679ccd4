//! The task of one peer: FSM, timers, connections, Adj-RIB-In writes, and the encoding of the route
//! batches the routing task decides to send.

use std::collections::HashMap;
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
use super::{PeerConfig, SpeakerConfig, SpeakerError, lock, release_free_memory, socket};
use crate::decision::{PeerInfo, PeerKind, RoutePath};
use crate::fsm::{
    ConnId, DownReason, Input, NegotiatedSession, Output, Session, SessionConfig, State, Timer,
};
use crate::policy::{MaxPrefixAction, MaxPrefixState};
use crate::rib::{AdjRibIn, AttributeSet, ImportCheck};
use crate::routing::{self, OutChange, OutPath, PeerRouting, ReceivedPath, SessionInfo};
use crate::wire::{
    AfiSafi, AfiSafiSet, CodecContext, GracefulRestart, GracefulRestartFamily, Message,
    MessageError, NextHop, Nlri, RouteRefresh, RouteRefreshSubtype, Update, decode_bytes,
    message_length,
};

/// Connect attempts without an answer before the status blames the path or the MD5 key.
const CONNECT_TIMEOUT_HINT_AFTER: u32 = 3;
/// Receive buffer growth step: large reads keep syscalls per prefix low on a full-table load.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks of received messages in flight between a reader and the peer task.
const READ_QUEUE: usize = 4;
/// Control commands in flight to a peer task.
const COMMAND_QUEUE: usize = 64;
/// Route changes in flight to the routing task above which peer tasks stop reading their sockets (TCP
/// pushes back to the peers), so that a table load does not queue up in memory.
const BACKLOG_LIMIT: usize = 65_536;
/// How often a held-back peer task looks at the backlog again.
const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// The routing task's input, with the count of route changes it has not handled yet.
pub(super) struct RouterLink {
    pub(super) inputs: mpsc::UnboundedSender<routing::Input>,
    pub(super) backlog: Arc<std::sync::atomic::AtomicUsize>,
}

pub(super) enum PeerCommand {
    Inbound(TcpStream),
    Refresh(oneshot::Sender<Result<(), SpeakerError>>),
    SuppressKeepalives(bool),
    /// Drop the session without a NOTIFICATION (BFD down).
    Reset(String),
    SetRouting(Box<PeerRouting>),
    /// End the task; with `notify`, Cease/Administrative Shutdown first.
    Stop {
        notify: bool,
        done: oneshot::Sender<()>,
    },
}

/// What the routing task sends to a peer task.
pub(super) enum Export {
    Routes {
        conn: ConnId,
        changes: Vec<OutChange>,
    },
    EndOfRib {
        conn: ConnId,
        families: AfiSafiSet,
    },
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
        let rib = lock(&self.rib);
        status.prefixes_received = rib.len();
        status.routes_ignored = rib.ignored_total();
        drop(rib);
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
    router: RouterLink,
    shared: Arc<PeerShared>,
    established: Option<EstablishedSession>,
    pending_updates: Vec<Update>,
    suppress_keepalives: bool,
    max_prefix: Option<MaxPrefixState>,
    /// Our Graceful Restart capability (its Restart State bit is cleared after the first session).
    graceful_restart: Option<GracefulRestart>,
}

pub(super) type SpawnedPeer = (
    mpsc::Sender<PeerCommand>,
    mpsc::UnboundedSender<Export>,
    Arc<PeerShared>,
    JoinHandle<()>,
);

pub(super) fn spawn(
    config: PeerConfig,
    speaker: &SpeakerConfig,
    router: RouterLink,
    next_conn: Arc<AtomicU64>,
) -> SpawnedPeer {
    let local_as = config.local_as.unwrap_or(speaker.local_as);
    let mut session_config = SessionConfig::new(local_as, config.remote_as, speaker.router_id);
    session_config.hold_time = config.hold_time;
    session_config.keepalive_time = config.keepalive_time;
    session_config.connect_retry = config.connect_retry;
    session_config.passive = config.passive;
    session_config.idle_hold = config.idle_hold;
    // RFC 4724 §3: our forwarding state survives a restart (the kernel keeps Reef's routes), so the F
    // bit is set for both families; R only on the first session after a restart.
    let graceful_restart = speaker
        .routing
        .graceful_restart
        .as_ref()
        .map(|gr| GracefulRestart {
            restart_state: gr.restarting,
            notification: false,
            restart_time: gr.restart_time.min(4095),
            families: session_config
                .families
                .iter()
                .map(|afi_safi| GracefulRestartFamily {
                    afi_safi,
                    forwarding_preserved: true,
                })
                .collect(),
        });
    session_config.graceful_restart = graceful_restart.clone();
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
        stale_routes: 0,
        updates_received: 0,
        routes_ignored: 0,
        passive: config.passive,
        md5: config.password.is_some(),
        ttl_security: config.ttl_security,
        last_error: None,
        info: String::new(),
    };
    let mut rib = AdjRibIn::with_local_as(local_as);
    rib.set_allowed_own_as(config.routing.allow_own_as);
    let shared = Arc::new(PeerShared {
        rib: Arc::new(Mutex::new(rib)),
        status: Mutex::new(status),
        established_at: Mutex::new(None),
        updates_received: AtomicU64::new(0),
    });
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (events_tx, events_rx) = mpsc::channel(READ_QUEUE);
    let (exports_tx, exports_rx) = mpsc::unbounded_channel();
    let max_prefix = config.routing.max_prefix.map(MaxPrefixState::new);
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
        router,
        shared: shared.clone(),
        established: None,
        pending_updates: Vec::new(),
        suppress_keepalives: false,
        max_prefix,
        graceful_restart,
    };
    let handle = tokio::spawn(task.run(commands_rx, events_rx, exports_rx));
    (commands_tx, exports_tx, shared, handle)
}

impl PeerTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<PeerCommand>,
        mut events: mpsc::Receiver<Event>,
        mut exports: mpsc::UnboundedReceiver<Export>,
    ) {
        self.input(Input::ManualStart);
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(PeerCommand::Stop { notify, done }) => {
                        if notify {
                            self.input(Input::ManualStop);
                        }
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
                Some(event) = events.recv(), if !self.backlogged() => self.event(event),
                _ = tokio::time::sleep(BACKLOG_POLL), if self.backlogged() => {}
                Some(export) = exports.recv() => self.export(export),
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
            PeerCommand::Refresh(reply) => {
                let _ = reply.send(self.send_refresh());
            }
            PeerCommand::SuppressKeepalives(suppress) => self.suppress_keepalives = suppress,
            PeerCommand::Reset(reason) => {
                warn!(peer = %self.peer(), %reason, "resetting the session");
                self.input(Input::Reset {
                    notification: None,
                    reason,
                    idle_hold: None,
                });
            }
            PeerCommand::SetRouting(routing) => self.set_routing(*routing),
            // Handled in `run` (it ends the task).
            PeerCommand::Stop { .. } => {}
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
        let Some(conn) = self.established.as_ref().map(|s| s.negotiated.conn) else {
            self.pending_updates.clear();
            return;
        };
        let address = self.peer();
        let mut rib = lock(&self.shared.rib);
        let ctx = rib.context();
        let mut trim_heap = false;
        // Each attribute set is decoded once per flush and its routes share the result. The cache
        // holds a clone of each set's `Arc`, so no set's address is reused while the flush runs.
        let mut decoded: HashMap<*const AttributeSet, (Arc<AttributeSet>, ReceivedPath)> =
            HashMap::new();
        let mut last: Option<(*const AttributeSet, ReceivedPath)> = None;
        let mut batch: Vec<(IpNet, Option<ReceivedPath>)> = Vec::new();
        let mut end_of_rib = Vec::new();
        for update in self.pending_updates.drain(..) {
            let stats = rib.apply_with(&update, |prefix, set| {
                let path = set.map(|set| {
                    let key = Arc::as_ptr(set);
                    // Consecutive routes mostly share their set: no map lookup for those.
                    if let Some((last_key, path)) = &last
                        && *last_key == key
                    {
                        return path.clone();
                    }
                    let path = decoded
                        .entry(key)
                        .or_insert_with(|| {
                            let path = Arc::new(RoutePath {
                                attrs: set.decode(&ctx),
                                next_hop: set_next_hop(set),
                            });
                            (set.clone(), path)
                        })
                        .1
                        .clone();
                    last = Some((key, path.clone()));
                    path
                });
                batch.push((prefix, path));
            });
            if stats.treated_as_withdraw {
                warn!(peer = %address, errors = ?update.errors, "UPDATE treated as withdraw (RFC 7606)");
            } else if !update.errors.is_empty() {
                // RFC 7606 §2 "attribute discard" and RFC 6793 §6: "This case SHOULD be logged".
                debug!(peer = %address, errors = ?update.errors, "malformed attributes discarded (RFC 7606)");
            }
            for route in &stats.newly_ignored {
                warn!(
                    peer = %address, prefix = %route.prefix, reason = %route.reason,
                    "received route ignored"
                );
            }
            if let Some(family) = stats.end_of_rib {
                info!(peer = %address, %family, routes = rib.len(), "End-of-RIB received");
                trim_heap = true;
                // The routes before the marker go first.
                end_of_rib.push((batch.len(), family));
            }
        }
        let count = rib.len();
        drop(rib);
        drop(decoded);
        let mut sent = 0;
        for (at, family) in end_of_rib {
            let before: Vec<(IpNet, Option<ReceivedPath>)> = batch.drain(..at - sent).collect();
            sent = at;
            self.route_batch(conn, before);
            self.route(routing::Input::EndOfRib { address, family });
        }
        self.route_batch(conn, batch);
        if trim_heap {
            release_free_memory();
        }
        self.check_max_prefix(count);
    }

    fn route(&self, input: routing::Input) {
        // The routing task lives as long as the speaker, which outlives this task.
        let _ = self.router.inputs.send(input);
    }

    fn backlogged(&self) -> bool {
        self.router.backlog.load(Ordering::Relaxed) > BACKLOG_LIMIT
    }

    fn route_batch(&self, conn: ConnId, batch: Vec<(IpNet, Option<ReceivedPath>)>) {
        if !batch.is_empty() {
            self.router
                .backlog
                .fetch_add(batch.len(), Ordering::Relaxed);
            self.route(routing::Input::Routes {
                address: self.peer(),
                conn,
                changes: batch,
            });
        }
    }

    /// RFC 4486: over the limit, Cease/Maximum Number of Prefixes Reached and down for the restart time
    /// (or until an operator resets it).
    fn check_max_prefix(&mut self, count: usize) {
        let Some(state) = &mut self.max_prefix else {
            return;
        };
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        match state.on_count(count) {
            MaxPrefixAction::None => {}
            MaxPrefixAction::Warn => {
                warn!(peer = %self.config.address, count, limit = state.config.limit, "prefix count reached the warning threshold")
            }
            MaxPrefixAction::Exceeded => {
                let config = state.config;
                warn!(peer = %self.config.address, count, limit = config.limit, "maximum prefixes exceeded; closing the session");
                let end_of_rib = lock(&self.shared.rib).end_of_rib();
                let family = if end_of_rib.contains(AfiSafi::IPV6_UNICAST)
                    && !end_of_rib.contains(AfiSafi::IPV4_UNICAST)
                {
                    AfiSafi::IPV6_UNICAST
                } else {
                    AfiSafi::IPV4_UNICAST
                };
                self.input(Input::Reset {
                    notification: Some(config.cease_notification(family)),
                    reason: format!("more than {} prefixes received", config.limit),
                    idle_hold: config.restart_after,
                });
                if config.restart_after.is_none() {
                    // Stays down until an operator restarts it (reefd restart or a config change).
                    self.input(Input::ManualStop);
                }
            }
        }
    }

    fn set_routing(&mut self, routing: PeerRouting) {
        self.config.routing = routing.clone();
        self.max_prefix = routing.max_prefix.map(MaxPrefixState::new);
        let adj_rib_in: Vec<(IpNet, ReceivedPath)> = {
            let mut rib = lock(&self.shared.rib);
            rib.set_allowed_own_as(routing.allow_own_as);
            // Routes of one attribute set share one path.
            let mut paths: HashMap<*const AttributeSet, ReceivedPath> = HashMap::new();
            rib.routes()
                .into_iter()
                .map(|route| {
                    let path = paths
                        .entry(Arc::as_ptr(&route.attributes))
                        .or_insert_with(|| {
                            Arc::new(RoutePath {
                                attrs: (*route.attrs).clone(),
                                next_hop: set_next_hop(&route.attributes),
                            })
                        })
                        .clone();
                    (route.prefix, path)
                })
                .collect()
        };
        info!(peer = %self.peer(), routes = adj_rib_in.len(), "routing configuration changed; re-evaluating");
        self.route(routing::Input::PeerRoutingChanged {
            address: self.peer(),
            routing,
            adj_rib_in,
        });
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
            // `last_error` stays, like BIRD's "Last error": a session that flapped and came straight
            // back still shows why it went down.
        }
        *lock(&self.shared.established_at) = Some(Instant::now());
        self.last_connect_error = None;
        if let Some(max_prefix) = &mut self.max_prefix {
            max_prefix.reset();
        }
        let local_ip = socket::canonical_ip(local.ip());
        let ibgp = negotiated.codec.ibgp;
        let info = SessionInfo {
            conn: negotiated.conn,
            peer: PeerInfo {
                address: self.peer(),
                router_id: negotiated.peer_id,
                remote_as: negotiated.peer_as,
                kind: if ibgp { PeerKind::Ibgp } else { PeerKind::Ebgp },
            },
            local_as: self.local_as,
            families: negotiated.families,
            next_hop_v4: match (self.config.next_hop_v4, local_ip) {
                (Some(v4), _) | (None, IpAddr::V4(v4)) => Some(v4),
                (None, IpAddr::V6(_)) => None,
            },
            next_hop_v6: Some(match (self.config.next_hop_v6, local_ip) {
                (Some(v6), _) | (None, IpAddr::V6(v6)) => v6,
                // IPv6 routes over an IPv4 session: the interface's global IPv6 address, else the
                // IPv4-mapped address (which receivers treat as unusable).
                (None, IpAddr::V4(v4)) => {
                    socket::global_ipv6_beside(v4).unwrap_or_else(|| v4.to_ipv6_mapped())
                }
            }),
            peer_graceful_restart: negotiated.peer_open.graceful_restart().cloned(),
        };
        lock(&self.shared.rib).set_import_check(self.import_check(&info, local_ip));
        self.established = Some(EstablishedSession { negotiated });
        // The Restart State bit describes this restart only: later sessions announce a normal start.
        if let Some(gr) = self.graceful_restart.as_mut().filter(|gr| gr.restart_state) {
            gr.restart_state = false;
            self.session.set_graceful_restart(Some(gr.clone()));
        }
        self.route(routing::Input::PeerUp(info));
        self.update_info();
    }

    /// What received routes are checked against on this session (RFC 4271 §6.3, RFC 4760 §7).
    fn import_check(&self, info: &SessionInfo, local_ip: IpAddr) -> ImportCheck {
        let mut own = vec![local_ip];
        own.extend(info.next_hop_v4.map(IpAddr::V4));
        // The IPv4-mapped fallback is not an address of ours on any interface.
        own.extend(
            info.next_hop_v6
                .filter(|v6| v6.to_ipv4_mapped().is_none())
                .map(IpAddr::V6),
        );
        // RFC 4271 §6.3 b): "In the case of an EBGP, where the sender and receiver are one IP hop away
        // from each other, ..." A peer at a loopback address is on this host: no link between us.
        let single_hop = info.peer.kind == PeerKind::Ebgp
            && !self.peer().is_loopback()
            && match self.config.ttl_security {
                Some(hops) => hops <= 1,
                None => self.config.multihop.unwrap_or(1) <= 1,
            };
        ImportCheck {
            peer: Some(self.peer()),
            own,
            shared_subnets: single_hop.then(|| socket::subnets_beside(local_ip)),
            families: info.families,
            ebgp_peer_as: (info.peer.kind == PeerKind::Ebgp).then_some(info.peer.remote_as),
        }
    }

    /// Encodes and sends a batch of the routing task (only to the session it was made for).
    fn export(&mut self, export: Export) {
        let Some(session) = &self.established else {
            return;
        };
        let ctx = session.negotiated.codec;
        let current = session.negotiated.conn;
        let mut buf = BytesMut::new();
        match export {
            Export::Routes { conn, changes } => {
                if conn != current {
                    return;
                }
                let mut withdrawn: [Vec<Nlri>; 2] = [Vec::new(), Vec::new()];
                let mut groups: Vec<(&OutPath, Vec<Nlri>)> = Vec::new();
                let mut index: HashMap<&OutPath, usize> = HashMap::new();
                for (prefix, path) in &changes {
                    match path {
                        None => {
                            withdrawn[usize::from(prefix.addr().is_ipv6())].push(Nlri::new(*prefix))
                        }
                        Some(path) => {
                            let i = *index.entry(path.as_ref()).or_insert_with(|| {
                                groups.push((path.as_ref(), Vec::new()));
                                groups.len() - 1
                            });
                            groups[i].1.push(Nlri::new(*prefix));
                        }
                    }
                }
                let mut updates = Vec::new();
                for nlri in withdrawn.iter().filter(|n| !n.is_empty()) {
                    match Update::withdraw(nlri, &ctx) {
                        Ok(more) => updates.extend(more),
                        Err(e) => {
                            warn!(peer = %self.peer(), error = %e, "cannot build the withdrawal")
                        }
                    }
                }
                for (path, nlri) in &groups {
                    let next_hop = match path.next_hop {
                        IpAddr::V4(v4) => NextHop::V4(v4),
                        IpAddr::V6(global) => NextHop::V6 {
                            global,
                            link_local: None::<Ipv6Addr>,
                        },
                    };
                    match Update::announce(&path.attrs, next_hop, nlri, &ctx) {
                        Ok(more) => updates.extend(more),
                        Err(e) => {
                            warn!(peer = %self.peer(), error = %e, "cannot build the advertisement")
                        }
                    }
                }
                for update in updates {
                    if let Err(e) = Message::Update(update).encode(&ctx, &mut buf) {
                        warn!(peer = %self.peer(), error = %e, "cannot encode UPDATE");
                    }
                }
            }
            Export::EndOfRib { conn, families } => {
                if conn != current {
                    return;
                }
                for family in families.iter() {
                    if let Err(e) =
                        Message::Update(Update::end_of_rib_marker(family)).encode(&ctx, &mut buf)
                    {
                        warn!(peer = %self.peer(), error = %e, "cannot encode End-of-RIB");
                    }
                }
            }
        }
        if let Some(connection) = self.conns.get(&current).filter(|_| !buf.is_empty()) {
            let _ = connection.writer.send(buf.freeze());
        }
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
            // RFC 4724 §4.2: a session lost without a NOTIFICATION lets a GR-capable peer's routes stay.
            let graceful = matches!(reason, DownReason::ConnectionClosed);
            info!(peer = %self.peer(), routes = removed, graceful, "session down; Adj-RIB-In cleared");
            self.route(routing::Input::PeerDown {
                address: self.peer(),
                graceful,
            });
            release_free_memory();
        }
        self.established = None;
        *lock(&self.shared.established_at) = None;
        {
            let mut status = lock(&self.shared.status);
            status.last_error = Some(reason.to_string());
            status.hold_time = None;
            status.keepalive_time = None;
            status.local_address = None;
            status.capabilities.clear();
        }
        self.update_info();
    }

    /// RFC 2918 §4: on a ROUTE-REFRESH, the routing task sends the Adj-RIB-Out of that family again.
    fn refresh_requested(&mut self, refresh: RouteRefresh) {
        if refresh.subtype != RouteRefreshSubtype::Normal {
            return; // BoRR/EoRR are enhanced route refresh (not negotiated); unknown subtypes are ignored
        }
        let family = AfiSafi::new(refresh.afi, refresh.safi);
        let Some(session) = &self.established else {
            return;
        };
        if !session.negotiated.families.contains(family) {
            return;
        }
        info!(peer = %self.peer(), %family, "ROUTE-REFRESH received; re-advertising");
        self.route(routing::Input::RefreshRequested {
            address: self.peer(),
            family,
        });
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

/// The next hop of a stored attribute set as an address (the global one for IPv6).
fn set_next_hop(set: &AttributeSet) -> Option<IpAddr> {
    match set.next_hop {
        Some(NextHop::V4(v4)) => Some(v4.into()),
        Some(NextHop::V6 { global, .. }) => Some(global.into()),
        None => None,
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
