//! RFC 4271 §8 session FSM (sans-IO).
//!
//! [`Session::handle`] takes one [`Input`] (an RFC 4271 §8.1 event) and appends [`Output`]s (actions
//! for the driver). There is no IO and no clock: the driver passes `now`, runs the timers it is told to
//! start, and owns the sockets, which it names by [`ConnId`].
//!
//! Connections: up to two at once, so that collisions (RFC 4271 §6.8) can be resolved here. Each one
//! has its own OpenSent/OpenConfirm/Established state; the session state is the most advanced of them,
//! or Idle/Connect/Active when there are none.
//!
//! Interpretation decisions (see also docs in the crate README):
//! - A failed or timed-out outbound connect goes to Active and retries when ConnectRetry expires (BIRD
//!   and FRR do the same), instead of RFC 4271's Idle: it is not an error of the peer.
//! - Every other loss of a connection goes to Idle and restarts after the IdleHold time, which doubles
//!   with each consecutive failure up to a cap and is reset once a session stayed Established for
//!   `stable_time` ("back off after repeated OPEN rejections").
//! - Inbound connections are refused while stopped; after a failure (Idle, IdleHold running) they are
//!   accepted, unlike RFC 4271 §8.2.2: the back-off limits our own attempts, and refusing a peer that
//!   retries on its own timer only delays convergence. In Established a new connection loses the
//!   collision at once.
//! - DelayOpen is not implemented (the OPEN is sent as soon as the connection is up).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::{
    AS_TRANS, AfiSafi, AfiSafiSet, Capability, CeaseSubcode, CodecContext, FsmSubcode,
    GracefulRestart, Message, MessageError, Notification, Open, OpenError, RouteRefresh, Update,
};

/// The hold time used while waiting for the peer's OPEN ("a large value", RFC 4271 §8.2.2 suggests 4 min).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// RFC 4271 §8.2.2 session states.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Idle,
        State::Connect,
        State::Active,
        State::OpenSent,
        State::OpenConfirm,
        State::Established,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The driver's name for one TCP connection.
pub type ConnId = u64;

/// Who opened a connection; decides which one survives a collision.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// We connected to the peer.
    Outbound,
    /// The peer connected to us.
    Inbound,
}

/// Timers the FSM asks the driver to run. Starting a running timer restarts it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    IdleHold,
}

impl Timer {
    pub const ALL: [Timer; 4] = [
        Timer::ConnectRetry,
        Timer::Hold,
        Timer::Keepalive,
        Timer::IdleHold,
    ];
}

/// RFC 4271 §8.1 events.
// Inputs are moved once into `handle`; boxing every received message would add an allocation per UPDATE.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// Event 1: the operator starts the session (resets the back-off).
    ManualStart,
    /// Event 2: the operator stops the session: Cease/Administrative Shutdown to the peer.
    ManualStop,
    /// Event 3/5: automatic start (active, or passive when the peer is configured passive).
    AutomaticStart,
    /// Event 16: our outbound connection is up.
    TcpConnectionAcknowledged { conn: ConnId },
    /// Event 17: the peer's connection was accepted.
    TcpConnectionConfirmed { conn: ConnId },
    /// Event 18 before any connection exists: our connect attempt failed (refused, unreachable).
    ConnectFailed,
    /// Event 18: an established TCP connection closed or failed.
    TcpConnectionFails { conn: ConnId },
    /// Events 19-28: a decoded message.
    MessageReceived { conn: ConnId, message: Message },
    /// A message that failed to decode in a way that resets the session.
    MessageError { conn: ConnId, error: MessageError },
    /// Events 9-13.
    TimerExpired(Timer),
    /// The driver drops the session (BFD down, maximum prefixes): every connection is closed, after
    /// `notification` if given; the next attempt waits `idle_hold` instead of the back-off when given.
    Reset {
        notification: Option<Notification>,
        reason: String,
        idle_hold: Option<Duration>,
    },
}

/// Why a session went down, for logs and status.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DownReason {
    /// We sent this NOTIFICATION (our error detection, hold timer expiry, shutdown).
    NotificationSent(Notification),
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// The TCP connection closed or failed without a NOTIFICATION.
    ConnectionClosed,
    /// The driver reset the session without a NOTIFICATION (e.g. BFD down).
    Reset(String),
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::NotificationSent(n) => write!(f, "sent NOTIFICATION: {n}"),
            DownReason::NotificationReceived(n) => write!(f, "received NOTIFICATION: {n}"),
            DownReason::ConnectionClosed => {
                f.write_str("TCP connection closed without NOTIFICATION")
            }
            DownReason::Reset(reason) => f.write_str(reason),
        }
    }
}

/// What the OPEN exchange agreed on; handed to the driver when the session is Established.
#[derive(Clone, Debug)]
pub struct NegotiatedSession {
    pub conn: ConnId,
    pub direction: Direction,
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    /// min(local, peer); 0 = no hold timer, no keepalives.
    pub hold_time: u16,
    pub keepalive_time: u16,
    pub codec: CodecContext,
    /// Families both sides announced (IPv4 unicast implied when the peer sent no Multiprotocol capability).
    pub families: AfiSafiSet,
    /// Both sides announced route refresh (RFC 2918).
    pub route_refresh: bool,
    pub local_open: Open,
    pub peer_open: Open,
}

/// An action for the driver.
#[derive(Debug)]
pub enum Output {
    /// Open an outbound connection; report `TcpConnectionAcknowledged` or `ConnectFailed`.
    Connect,
    /// Abandon the outbound connection attempt in progress (its result must be ignored).
    AbortConnect,
    SendMessage {
        conn: ConnId,
        message: Message,
    },
    /// Close after the messages already queued for it are written.
    CloseConnection {
        conn: ConnId,
    },
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    StateChanged {
        from: State,
        to: State,
    },
    Established(Box<NegotiatedSession>),
    RouteUpdate(Update),
    RouteRefreshRequested(RouteRefresh),
    /// The session (or its last connection) went down. `was_established`: routes learned must go.
    SessionDown {
        reason: DownReason,
        was_established: bool,
    },
}

/// Per-peer session configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub local_as: u32,
    /// The AS the peer must announce.
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds (0, or >= 3).
    pub hold_time: u16,
    /// Keepalive interval; default hold/3. Never more than a third of the negotiated hold time.
    pub keepalive_time: Option<u16>,
    pub connect_retry: Duration,
    /// Never connect, only accept.
    pub passive: bool,
    /// Families to announce in the Multiprotocol capability.
    pub families: AfiSafiSet,
    /// First IdleHold time after a failure; doubles per consecutive failure up to `idle_hold_max`.
    pub idle_hold: Duration,
    pub idle_hold_max: Duration,
    /// An Established period this long resets the back-off.
    pub stable_time: Duration,
    /// Graceful Restart capability to announce (RFC 4724).
    pub graceful_restart: Option<GracefulRestart>,
}

impl SessionConfig {
    pub fn new(local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> SessionConfig {
        SessionConfig {
            local_as,
            remote_as,
            router_id,
            hold_time: 90,
            keepalive_time: None,
            connect_retry: Duration::from_secs(5),
            passive: false,
            families: [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
                .into_iter()
                .collect(),
            idle_hold: Duration::from_secs(1),
            idle_hold_max: Duration::from_secs(60),
            stable_time: Duration::from_secs(60),
            graceful_restart: None,
        }
    }

    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }

    /// Our OPEN: Multiprotocol per family, route refresh, 4-octet AS, extended message.
    pub fn local_open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .families
            .iter()
            .map(Capability::Multiprotocol)
            .collect();
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::FourOctetAs(self.local_as));
        capabilities.push(Capability::ExtendedMessage);
        if let Some(gr) = &self.graceful_restart {
            capabilities.push(Capability::GracefulRestart(gr.clone()));
        }
        Open::new(self.local_as, self.hold_time, self.router_id, capabilities)
    }
}

#[derive(Debug)]
enum ConnState {
    OpenSent,
    OpenConfirm(Box<NegotiatedSession>),
    Established,
}

#[derive(Clone, Copy, Debug)]
struct EstablishedConn {
    conn: ConnId,
    since: Instant,
    hold_time: u16,
    keepalive_time: u16,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    direction: Direction,
    state: ConnState,
}

/// One peer's session state machine.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    local_open: Open,
    /// The state when no connection exists (Idle, Connect or Active).
    phase: State,
    /// The state last reported through `StateChanged`.
    reported: State,
    conns: Vec<Conn>,
    /// An outbound connect is in progress.
    connecting: bool,
    /// ManualStart/AutomaticStart seen and no ManualStop since.
    started: bool,
    /// Consecutive failures, for the IdleHold back-off.
    failures: u32,
    established: Option<EstablishedConn>,
    /// Consecutive connect attempts abandoned by ConnectRetry without an answer (wrong MD5 key, filter).
    connect_timeouts: u32,
    /// A `Reset` with its own IdleHold (maximum prefixes) is in force: the peer's connections are
    /// refused too until IdleHold expires.
    held_down: bool,
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        Session {
            local_open: config.local_open(),
            config,
            phase: State::Idle,
            reported: State::Idle,
            conns: Vec::new(),
            connecting: false,
            started: false,
            failures: 0,
            established: None,
            held_down: false,
            connect_timeouts: 0,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.reported
    }

    /// The connection of the Established session.
    pub fn established_conn(&self) -> Option<ConnId> {
        self.established.map(|e| e.conn)
    }

    /// Consecutive outbound connect attempts that got no answer before ConnectRetry expired.
    pub fn connect_timeouts(&self) -> u32 {
        self.connect_timeouts
    }

    /// Changes the Graceful Restart capability of the next OPEN (the Restart State bit is set only for
    /// the first session after a restart).
    pub fn set_graceful_restart(&mut self, graceful_restart: Option<GracefulRestart>) {
        self.config.graceful_restart = graceful_restart;
        self.local_open = self.config.local_open();
    }

    /// Consecutive session failures (drives the IdleHold back-off).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Handles one event; appends the actions to `out` (the driver reuses the buffer).
    pub fn handle(&mut self, input: Input, now: Instant, out: &mut Vec<Output>) {
        match input {
            Input::ManualStart => {
                self.failures = 0;
                self.held_down = false;
                self.start(out);
            }
            Input::AutomaticStart => self.start(out),
            Input::ManualStop => self.stop(out),
            Input::TcpConnectionAcknowledged { conn } => self.outbound_connected(conn, out),
            Input::TcpConnectionConfirmed { conn } => self.inbound_connected(conn, out),
            Input::ConnectFailed => self.connect_failed(),
            Input::TcpConnectionFails { conn } => self.connection_failed(conn, now, out),
            Input::MessageReceived { conn, message } => self.message(conn, message, now, out),
            Input::MessageError { conn, error } => {
                self.connection_error(conn, error.notification(), now, out)
            }
            Input::TimerExpired(timer) => self.timer(timer, now, out),
            Input::Reset {
                notification,
                reason,
                idle_hold,
            } => {
                if self.conns.is_empty() && self.established.is_none() {
                    return self.report_state(out);
                }
                let reason = match notification {
                    Some(notification) => DownReason::NotificationSent(notification),
                    None => DownReason::Reset(reason),
                };
                self.go_down(reason, now, out);
                if let Some(hold) = idle_hold.filter(|_| self.started) {
                    self.held_down = true;
                    out.push(Output::StartTimer(Timer::IdleHold, hold));
                }
            }
        }
        self.report_state(out);
    }

    fn report_state(&mut self, out: &mut Vec<Output>) {
        let current = if self.established.is_some() {
            State::Established
        } else if self
            .conns
            .iter()
            .any(|c| matches!(c.state, ConnState::OpenConfirm(_)))
        {
            State::OpenConfirm
        } else if !self.conns.is_empty() {
            State::OpenSent
        } else {
            self.phase
        };
        if current != self.reported {
            out.push(Output::StateChanged {
                from: self.reported,
                to: current,
            });
            self.reported = current;
        }
    }

    fn start(&mut self, out: &mut Vec<Output>) {
        self.started = true;
        if self.phase == State::Idle && self.conns.is_empty() {
            out.push(Output::StopTimer(Timer::IdleHold));
            self.begin_connecting(out);
        }
    }

    /// Idle -> Connect (active) or Active (passive).
    fn begin_connecting(&mut self, out: &mut Vec<Output>) {
        if self.config.passive {
            self.phase = State::Active;
        } else {
            self.phase = State::Connect;
            self.connect(out);
        }
    }

    fn connect(&mut self, out: &mut Vec<Output>) {
        self.connecting = true;
        out.push(Output::Connect);
        out.push(Output::StartTimer(
            Timer::ConnectRetry,
            self.config.connect_retry,
        ));
    }

    fn abort_connect(&mut self, out: &mut Vec<Output>) {
        if self.connecting {
            self.connecting = false;
            out.push(Output::AbortConnect);
        }
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        self.started = false;
        let notification = Notification::cease(CeaseSubcode::AdministrativeShutdown);
        let had_conns = !self.conns.is_empty();
        for conn in std::mem::take(&mut self.conns) {
            out.push(Output::SendMessage {
                conn: conn.id,
                message: Message::Notification(notification.clone()),
            });
            out.push(Output::CloseConnection { conn: conn.id });
        }
        self.abort_connect(out);
        for timer in Timer::ALL {
            out.push(Output::StopTimer(timer));
        }
        if had_conns {
            out.push(Output::SessionDown {
                reason: DownReason::NotificationSent(notification),
                was_established: self.established.is_some(),
            });
        }
        self.established = None;
        self.failures = 0;
        self.phase = State::Idle;
    }

    fn outbound_connected(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        if !self.connecting
            || self.phase == State::Idle
            || self.established.is_some()
            || self.conns.len() >= 2
        {
            // A late result of an abandoned attempt.
            out.push(Output::CloseConnection { conn });
            return;
        }
        self.connecting = false;
        self.connect_timeouts = 0;
        out.push(Output::StopTimer(Timer::ConnectRetry));
        self.open_connection(conn, Direction::Outbound, out);
    }

    fn inbound_connected(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        if !self.started || self.held_down || self.conns.len() >= 2 {
            out.push(Output::CloseConnection { conn });
            return;
        }
        if self.established.is_some() {
            // RFC 4271 §6.8: "collision with existing BGP connection that is in the Established state
            // causes closing of the newly created connection."
            let cease = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
            out.push(Output::SendMessage {
                conn,
                message: Message::Notification(cease),
            });
            out.push(Output::CloseConnection { conn });
            return;
        }
        // Our own connect attempt, if any, goes on: if both complete, collision detection picks one
        // (abandoning it in favour of the peer's connection fails when the peer does the same). In
        // Idle (IdleHold running after a failure) the peer's initiative is accepted: the back-off
        // limits our own attempts only.
        if self.conns.is_empty() && self.phase == State::Idle {
            out.push(Output::StopTimer(Timer::IdleHold));
            self.phase = if self.config.passive {
                State::Active
            } else {
                State::Connect
            };
        }
        self.open_connection(conn, Direction::Inbound, out);
    }

    fn open_connection(&mut self, conn: ConnId, direction: Direction, out: &mut Vec<Output>) {
        if self.conns.is_empty() {
            out.push(Output::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
        }
        self.conns.push(Conn {
            id: conn,
            direction,
            state: ConnState::OpenSent,
        });
        out.push(Output::SendMessage {
            conn,
            message: Message::Open(self.local_open.clone()),
        });
    }

    fn connect_failed(&mut self) {
        if self.connecting {
            self.connecting = false;
            if self.phase == State::Connect {
                // ConnectRetry keeps running and brings us back to Connect.
                self.phase = State::Active;
            }
        }
    }

    fn connection_failed(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Output>) {
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else {
            return;
        };
        let lost = self.conns.remove(index);
        let was_established = matches!(lost.state, ConnState::Established);
        out.push(Output::CloseConnection { conn });
        if was_established || self.conns.is_empty() {
            self.go_down(DownReason::ConnectionClosed, now, out);
        }
    }

    /// An error on one connection: NOTIFICATION, close; the session goes down unless a collision
    /// partner remains.
    fn connection_error(
        &mut self,
        conn: ConnId,
        notification: Notification,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else {
            return;
        };
        let lost = self.conns.remove(index);
        out.push(Output::SendMessage {
            conn,
            message: Message::Notification(notification.clone()),
        });
        out.push(Output::CloseConnection { conn });
        if matches!(lost.state, ConnState::Established) || self.conns.is_empty() {
            self.go_down(DownReason::NotificationSent(notification), now, out);
        }
    }

    /// All connections are gone or must go: close the rest and wait IdleHold before the next attempt.
    fn go_down(&mut self, reason: DownReason, now: Instant, out: &mut Vec<Output>) {
        for conn in std::mem::take(&mut self.conns) {
            if let DownReason::NotificationSent(n) = &reason {
                out.push(Output::SendMessage {
                    conn: conn.id,
                    message: Message::Notification(n.clone()),
                });
            }
            out.push(Output::CloseConnection { conn: conn.id });
        }
        self.abort_connect(out);
        for timer in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Output::StopTimer(timer));
        }
        let was_established = match self.established.take() {
            Some(established) => {
                if now.saturating_duration_since(established.since) >= self.config.stable_time {
                    self.failures = 0;
                }
                true
            }
            None => false,
        };
        self.failures = self.failures.saturating_add(1);
        self.phase = State::Idle;
        if self.started {
            out.push(Output::StartTimer(Timer::IdleHold, self.idle_hold_time()));
        }
        out.push(Output::SessionDown {
            reason,
            was_established,
        });
    }

    /// IdleHold after the current number of consecutive failures: idle_hold * 2^(failures-1), capped.
    pub fn idle_hold_time(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        self.config
            .idle_hold
            .saturating_mul(1 << doublings)
            .min(self.config.idle_hold_max)
    }

    fn timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Output>) {
        match timer {
            Timer::ConnectRetry => {
                if !self.conns.is_empty() || !self.started || self.config.passive {
                    return;
                }
                if self.connecting {
                    // The SYN got no answer within ConnectRetry: try again.
                    self.connect_timeouts = self.connect_timeouts.saturating_add(1);
                    self.abort_connect(out);
                }
                self.phase = State::Connect;
                self.connect(out);
            }
            Timer::Hold => {
                if !self.conns.is_empty() {
                    self.go_down(
                        DownReason::NotificationSent(Notification::hold_timer_expired()),
                        now,
                        out,
                    );
                }
            }
            Timer::Keepalive => {
                let mut sent = false;
                for conn in &self.conns {
                    if matches!(
                        conn.state,
                        ConnState::OpenConfirm(_) | ConnState::Established
                    ) {
                        out.push(Output::SendMessage {
                            conn: conn.id,
                            message: Message::Keepalive,
                        });
                        sent = true;
                    }
                }
                if let Some(keepalive) = self.keepalive_interval().filter(|_| sent) {
                    out.push(Output::StartTimer(Timer::Keepalive, keepalive));
                }
            }
            Timer::IdleHold => {
                self.held_down = false;
                if self.started && self.phase == State::Idle && self.conns.is_empty() {
                    self.begin_connecting(out);
                }
            }
        }
    }

    /// The keepalive interval of the most advanced connection (None: hold time 0, none sent).
    fn keepalive_interval(&self) -> Option<Duration> {
        let keepalive = match self.established {
            Some(established) => established.keepalive_time,
            None => self.conns.iter().find_map(|c| match &c.state {
                ConnState::OpenConfirm(n) => Some(n.keepalive_time),
                _ => None,
            })?,
        };
        (keepalive > 0).then(|| Duration::from_secs(keepalive.into()))
    }

    fn hold_interval(&self, conn: ConnId) -> Option<Duration> {
        let hold = match self.established {
            Some(established) if established.conn == conn => established.hold_time,
            _ => return None,
        };
        (hold > 0).then(|| Duration::from_secs(hold.into()))
    }

    fn message(&mut self, conn: ConnId, message: Message, now: Instant, out: &mut Vec<Output>) {
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else {
            return;
        };
        if let Message::Notification(notification) = message {
            let lost = self.conns.remove(index);
            out.push(Output::CloseConnection { conn });
            if matches!(lost.state, ConnState::Established) || self.conns.is_empty() {
                self.go_down(DownReason::NotificationReceived(notification), now, out);
            }
            return;
        }
        match (&self.conns[index].state, message) {
            (ConnState::OpenSent, Message::Open(open)) => self.open_received(index, open, now, out),
            (ConnState::OpenSent, _) => self.connection_error(
                conn,
                Notification::fsm(FsmSubcode::UnexpectedMessageInOpenSent),
                now,
                out,
            ),
            (ConnState::OpenConfirm(_), Message::Keepalive) => self.establish(index, now, out),
            (ConnState::OpenConfirm(_), _) => self.connection_error(
                conn,
                Notification::fsm(FsmSubcode::UnexpectedMessageInOpenConfirm),
                now,
                out,
            ),
            (ConnState::Established, Message::Open(_)) => self.connection_error(
                conn,
                Notification::fsm(FsmSubcode::UnexpectedMessageInEstablished),
                now,
                out,
            ),
            (ConnState::Established, message) => {
                if let Some(hold) = self.hold_interval(conn) {
                    out.push(Output::StartTimer(Timer::Hold, hold));
                }
                match message {
                    Message::Update(update) => out.push(Output::RouteUpdate(update)),
                    Message::RouteRefresh(refresh) => {
                        out.push(Output::RouteRefreshRequested(refresh))
                    }
                    _ => {}
                }
            }
        }
    }

    fn open_received(&mut self, index: usize, open: Open, now: Instant, out: &mut Vec<Output>) {
        let conn = self.conns[index].id;
        let negotiated = match self.negotiate(conn, self.conns[index].direction, open) {
            Ok(negotiated) => negotiated,
            Err(error) => {
                return self.connection_error(
                    conn,
                    MessageError::Open(error).notification(),
                    now,
                    out,
                );
            }
        };
        // RFC 4271 §6.8: "the connection initiated by the BGP speaker with the higher-valued BGP
        // Identifier" survives. The peer's identifier is known now for every connection to it, so
        // connections still in OpenSent are examined too (which the RFC allows).
        let keep_outbound = u32::from(self.config.router_id) > u32::from(negotiated.peer_id);
        let collision = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
        if self.conns.len() > 1 {
            let this_survives =
                (self.conns[index].direction == Direction::Outbound) == keep_outbound;
            let loser = if this_survives {
                self.conns.iter().position(|c| c.id != conn)
            } else {
                Some(index)
            };
            if let Some(loser) = loser {
                let lost = self.conns.remove(loser);
                out.push(Output::SendMessage {
                    conn: lost.id,
                    message: Message::Notification(collision),
                });
                out.push(Output::CloseConnection { conn: lost.id });
            }
            if !this_survives {
                return;
            }
        }
        let Some(index) = self.conns.iter().position(|c| c.id == conn) else {
            return;
        };
        out.push(Output::SendMessage {
            conn,
            message: Message::Keepalive,
        });
        if negotiated.hold_time > 0 {
            out.push(Output::StartTimer(
                Timer::Hold,
                Duration::from_secs(negotiated.hold_time.into()),
            ));
            out.push(Output::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(negotiated.keepalive_time.into()),
            ));
        } else {
            out.push(Output::StopTimer(Timer::Hold));
            out.push(Output::StopTimer(Timer::Keepalive));
        }
        self.conns[index].state = ConnState::OpenConfirm(Box::new(negotiated));
    }

    fn establish(&mut self, index: usize, now: Instant, out: &mut Vec<Output>) {
        let state = std::mem::replace(&mut self.conns[index].state, ConnState::Established);
        let ConnState::OpenConfirm(negotiated) = state else {
            return;
        };
        let conn = self.conns[index].id;
        // Any other connection lost the race.
        let collision = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
        self.conns.retain(|c| {
            if c.id != conn {
                out.push(Output::SendMessage {
                    conn: c.id,
                    message: Message::Notification(collision.clone()),
                });
                out.push(Output::CloseConnection { conn: c.id });
            }
            c.id == conn
        });
        self.abort_connect(out);
        self.established = Some(EstablishedConn {
            conn,
            since: now,
            hold_time: negotiated.hold_time,
            keepalive_time: negotiated.keepalive_time,
        });
        if let Some(hold) = self.hold_interval(conn) {
            out.push(Output::StartTimer(Timer::Hold, hold));
        }
        out.push(Output::Established(negotiated));
    }

    /// RFC 4271 §6.2 OPEN checks and capability negotiation.
    fn negotiate(
        &self,
        conn: ConnId,
        direction: Direction,
        open: Open,
    ) -> Result<NegotiatedSession, OpenError> {
        if open.version != 4 {
            return Err(OpenError::UnsupportedVersionNumber {
                version: open.version,
            });
        }
        // RFC 6793 §4.2: the AS is the 4-octet AS capability's when present; a 2-octet-only speaker of a
        // 4-octet AS shows up as AS_TRANS and cannot match a configured 4-octet AS.
        let peer_as = open.asn();
        if peer_as != self.config.remote_as
            || (peer_as == AS_TRANS && open.four_octet_as().is_none())
        {
            return Err(OpenError::BadPeerAs { asn: peer_as });
        }
        // RFC 4271 §6.2: "An implementation MUST reject Hold Time values of one or two seconds."
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(OpenError::UnacceptableHoldTime {
                hold_time: open.hold_time,
            });
        }
        // RFC 6286 §2.2: a non-zero identifier, unique within the AS (so iBGP must differ from ours).
        if open.bgp_id.is_unspecified()
            || (self.config.is_ibgp() && open.bgp_id == self.config.router_id)
        {
            return Err(OpenError::BadBgpIdentifier { id: open.bgp_id });
        }
        let hold_time = self.config.hold_time.min(open.hold_time);
        let keepalive_time = if hold_time == 0 {
            0
        } else {
            let third = (hold_time / 3).max(1);
            self.config
                .keepalive_time
                .map_or(third, |k| k.clamp(1, third))
        };
        // RFC 4760 §8: without Multiprotocol capabilities the peer speaks IPv4 unicast only.
        let mut peer_families: AfiSafiSet = open.multiprotocol().collect();
        if open.multiprotocol().next().is_none() {
            peer_families.insert(AfiSafi::IPV4_UNICAST);
        }
        let families = self
            .config
            .families
            .iter()
            .filter(|af| peer_families.contains(*af))
            .collect();
        let route_refresh = open.has_capability(crate::wire::capability_code::ROUTE_REFRESH);
        Ok(NegotiatedSession {
            conn,
            direction,
            peer_as,
            peer_id: open.bgp_id,
            hold_time,
            keepalive_time,
            codec: CodecContext::negotiate(&self.local_open, &open),
            families,
            route_refresh,
            local_open: self.local_open.clone(),
            peer_open: open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorCode, ErrorSubcode, OpenSubcode, RouteRefreshSubtype, Safi};

    const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const LOWER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const HIGHER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
    const LOCAL_AS: u32 = 64512;
    const PEER_AS: u32 = 65001;

    fn config() -> SessionConfig {
        let mut config = SessionConfig::new(LOCAL_AS, PEER_AS, LOCAL_ID);
        config.hold_time = 9;
        config
    }

    fn open(asn: u32, hold_time: u16, id: Ipv4Addr) -> Open {
        let caps = vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(asn),
        ];
        Open::new(asn, hold_time, id, caps)
    }

    struct Harness {
        session: Session,
        now: Instant,
    }

    impl Harness {
        fn new(config: SessionConfig) -> Harness {
            Harness {
                session: Session::new(config),
                now: Instant::now(),
            }
        }

        fn run(&mut self, input: Input) -> Vec<Output> {
            let mut out = Vec::new();
            self.session.handle(input, self.now, &mut out);
            out
        }

        fn receive(&mut self, conn: ConnId, message: Message) -> Vec<Output> {
            self.run(Input::MessageReceived { conn, message })
        }

        /// Started, outbound connection 1 up, OPEN exchanged, KEEPALIVE received.
        fn established(config: SessionConfig) -> Harness {
            let mut h = Harness::new(config);
            h.run(Input::ManualStart);
            h.run(Input::TcpConnectionAcknowledged { conn: 1 });
            h.receive(1, Message::Open(open(PEER_AS, 9, HIGHER_ID)));
            let out = h.receive(1, Message::Keepalive);
            assert!(
                out.iter().any(|o| matches!(o, Output::Established(_))),
                "{out:?}"
            );
            h
        }
    }

    fn sent(out: &[Output], conn: ConnId) -> Vec<&Message> {
        out.iter()
            .filter_map(|o| match o {
                Output::SendMessage { conn: c, message } if *c == conn => Some(message),
                _ => None,
            })
            .collect()
    }

    fn notification(out: &[Output], conn: ConnId) -> Option<Notification> {
        sent(out, conn).into_iter().find_map(|m| match m {
            Message::Notification(n) => Some(n.clone()),
            _ => None,
        })
    }

    fn closed(out: &[Output], conn: ConnId) -> bool {
        out.iter()
            .any(|o| matches!(o, Output::CloseConnection { conn: c } if *c == conn))
    }

    fn timer_started(out: &[Output], timer: Timer) -> Option<Duration> {
        out.iter().rev().find_map(|o| match o {
            Output::StartTimer(t, d) if *t == timer => Some(*d),
            _ => None,
        })
    }

    fn down_reason(out: &[Output]) -> Option<(DownReason, bool)> {
        out.iter().find_map(|o| match o {
            Output::SessionDown {
                reason,
                was_established,
            } => Some((reason.clone(), *was_established)),
            _ => None,
        })
    }

    fn negotiated(out: &[Output]) -> Option<&NegotiatedSession> {
        out.iter().find_map(|o| match o {
            Output::Established(n) => Some(n.as_ref()),
            _ => None,
        })
    }

    fn open_error(subcode: OpenSubcode) -> Notification {
        MessageError::Open(match subcode {
            OpenSubcode::BadPeerAs => OpenError::BadPeerAs { asn: 0 },
            OpenSubcode::UnacceptableHoldTime => OpenError::UnacceptableHoldTime { hold_time: 0 },
            OpenSubcode::BadBgpIdentifier => OpenError::BadBgpIdentifier {
                id: Ipv4Addr::UNSPECIFIED,
            },
            _ => OpenError::UnsupportedVersionNumber { version: 0 },
        })
        .notification()
    }

    /// Runs an OPEN from the peer on a fresh outbound connection and returns the outputs.
    fn answer_open(config: SessionConfig, peer: Open) -> (Harness, Vec<Output>) {
        let mut h = Harness::new(config);
        h.run(Input::ManualStart);
        h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        let out = h.receive(1, Message::Open(peer));
        (h, out)
    }

    #[test]
    fn active_start_connects_with_connect_retry() {
        let mut h = Harness::new(config());
        let out = h.run(Input::ManualStart);
        assert!(out.iter().any(|o| matches!(o, Output::Connect)));
        assert_eq!(
            timer_started(&out, Timer::ConnectRetry),
            Some(Duration::from_secs(5))
        );
        assert_eq!(h.session.state(), State::Connect);
    }

    #[test]
    fn passive_start_waits_in_active_without_connecting() {
        let mut config = config();
        config.passive = true;
        let mut h = Harness::new(config);
        let out = h.run(Input::ManualStart);
        assert!(!out.iter().any(|o| matches!(o, Output::Connect)));
        assert_eq!(h.session.state(), State::Active);
        let out = h.run(Input::TcpConnectionConfirmed { conn: 7 });
        assert!(matches!(sent(&out, 7).as_slice(), [Message::Open(_)]));
        assert_eq!(h.session.state(), State::OpenSent);
    }

    #[test]
    fn connection_sends_our_open_and_waits_with_the_large_hold_timer() {
        let mut h = Harness::new(config());
        h.run(Input::ManualStart);
        let out = h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        let [Message::Open(ours)] = sent(&out, 1).as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(ours.asn(), LOCAL_AS);
        assert_eq!(ours.hold_time, 9);
        assert_eq!(ours.bgp_id, LOCAL_ID);
        assert!(ours.has_capability(crate::wire::capability_code::ROUTE_REFRESH));
        assert_eq!(ours.multiprotocol().count(), 2);
        assert_eq!(timer_started(&out, Timer::Hold), Some(OPEN_HOLD_TIME));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::StopTimer(Timer::ConnectRetry)))
        );
        assert!(out.iter().any(|o| matches!(
            o,
            Output::StateChanged {
                from: State::Connect,
                to: State::OpenSent
            }
        )));
    }

    #[test]
    fn hold_time_is_the_smaller_one_and_keepalive_a_third() {
        let (mut h, out) = answer_open(config(), open(PEER_AS, 6, HIGHER_ID));
        assert!(matches!(sent(&out, 1).as_slice(), [Message::Keepalive]));
        assert_eq!(
            timer_started(&out, Timer::Hold),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            timer_started(&out, Timer::Keepalive),
            Some(Duration::from_secs(2))
        );
        assert_eq!(h.session.state(), State::OpenConfirm);
        let out = h.receive(1, Message::Keepalive);
        let negotiated = negotiated(&out).expect("established");
        assert_eq!((negotiated.hold_time, negotiated.keepalive_time), (6, 2));
        assert_eq!(negotiated.peer_as, PEER_AS);
        assert_eq!(negotiated.peer_id, HIGHER_ID);
        assert!(negotiated.route_refresh);
        assert!(negotiated.codec.four_octet_as);
        assert!(negotiated.families.contains(AfiSafi::IPV6_UNICAST));
        assert_eq!(h.session.state(), State::Established);
        assert_eq!(h.session.established_conn(), Some(1));
    }

    #[test]
    fn configured_keepalive_is_kept_below_a_third_of_the_hold_time() {
        let mut config = config();
        config.keepalive_time = Some(30);
        let (_, out) = answer_open(config, open(PEER_AS, 9, HIGHER_ID));
        assert_eq!(
            timer_started(&out, Timer::Keepalive),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn hold_time_zero_runs_no_hold_and_no_keepalive_timer() {
        let (mut h, out) = answer_open(config(), open(PEER_AS, 0, HIGHER_ID));
        assert_eq!(timer_started(&out, Timer::Hold), None);
        assert_eq!(timer_started(&out, Timer::Keepalive), None);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::StopTimer(Timer::Hold)))
        );
        let out = h.receive(1, Message::Keepalive);
        assert_eq!(
            negotiated(&out).map(|n| (n.hold_time, n.keepalive_time)),
            Some((0, 0))
        );
        assert_eq!(timer_started(&out, Timer::Hold), None);
        // A KEEPALIVE later does not start a hold timer either.
        let out = h.receive(1, Message::Keepalive);
        assert_eq!(timer_started(&out, Timer::Hold), None);
    }

    #[test]
    fn hold_time_of_one_or_two_seconds_is_rejected() {
        for hold in [1, 2] {
            let (mut h, out) = answer_open(config(), open(PEER_AS, hold, HIGHER_ID));
            assert_eq!(
                notification(&out, 1),
                Some(open_error(OpenSubcode::UnacceptableHoldTime))
            );
            assert!(closed(&out, 1));
            assert_eq!(h.session.state(), State::Idle);
            let (reason, was_established) = down_reason(&out).expect("down");
            assert!(!was_established);
            assert!(
                reason.to_string().contains("Unacceptable Hold Time"),
                "{reason}"
            );
            assert!(h.run(Input::TimerExpired(Timer::Hold)).is_empty());
        }
    }

    #[test]
    fn wrong_peer_as_is_rejected_with_bad_peer_as() {
        let (_, out) = answer_open(config(), open(65002, 9, HIGHER_ID));
        assert_eq!(
            notification(&out, 1),
            Some(open_error(OpenSubcode::BadPeerAs))
        );
    }

    #[test]
    fn four_octet_peer_as_comes_from_the_capability() {
        let mut config = config();
        config.remote_as = 4_200_000_001;
        let peer = open(4_200_000_001, 9, HIGHER_ID);
        assert_eq!(peer.my_as, AS_TRANS as u16);
        let (h, out) = answer_open(config.clone(), peer);
        assert_eq!(notification(&out, 1), None, "{out:?}");
        assert_eq!(h.session.state(), State::OpenConfirm);
        // A 2-octet-only speaker shows AS_TRANS, which never matches a 4-octet AS.
        let old = Open::new(4_200_000_001, 9, HIGHER_ID, vec![]);
        let (_, out) = answer_open(config, old);
        assert_eq!(
            notification(&out, 1),
            Some(open_error(OpenSubcode::BadPeerAs))
        );
    }

    #[test]
    fn zero_or_own_ibgp_identifier_is_rejected() {
        let (_, out) = answer_open(config(), open(PEER_AS, 9, Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            notification(&out, 1),
            Some(open_error(OpenSubcode::BadBgpIdentifier))
        );
        let mut ibgp = config();
        ibgp.remote_as = LOCAL_AS;
        let (_, out) = answer_open(ibgp, open(LOCAL_AS, 9, LOCAL_ID));
        assert_eq!(
            notification(&out, 1),
            Some(open_error(OpenSubcode::BadBgpIdentifier))
        );
    }

    #[test]
    fn unsupported_version_is_rejected_with_our_version() {
        let mut peer = open(PEER_AS, 9, HIGHER_ID);
        peer.version = 3;
        let (_, out) = answer_open(config(), peer);
        let n = notification(&out, 1).expect("notification");
        assert_eq!(
            n.subcode,
            ErrorSubcode::Open(OpenSubcode::UnsupportedVersionNumber)
        );
        assert_eq!(&n.data[..], &[0, 4]);
    }

    #[test]
    fn peer_without_multiprotocol_speaks_ipv4_unicast_only() {
        let (mut h, _) = answer_open(config(), Open::new(PEER_AS, 9, HIGHER_ID, vec![]));
        let out = h.receive(1, Message::Keepalive);
        let families: Vec<AfiSafi> = negotiated(&out)
            .expect("established")
            .families
            .iter()
            .collect();
        assert_eq!(families, [AfiSafi::IPV4_UNICAST]);
        assert!(!negotiated(&out).unwrap().route_refresh);
    }

    #[test]
    fn hold_timer_expiry_notifies_and_backs_off() {
        let mut h = Harness::established(config());
        let out = h.run(Input::TimerExpired(Timer::Hold));
        let n = notification(&out, 1).expect("notification");
        assert_eq!(n.code, ErrorCode::HoldTimerExpired);
        assert!(closed(&out, 1));
        let (reason, was_established) = down_reason(&out).expect("down");
        assert!(was_established);
        assert_eq!(reason.to_string(), "sent NOTIFICATION: Hold Timer Expired");
        assert_eq!(
            timer_started(&out, Timer::IdleHold),
            Some(Duration::from_secs(1))
        );
        assert_eq!(h.session.state(), State::Idle);
        // IdleHold expiry starts over.
        let out = h.run(Input::TimerExpired(Timer::IdleHold));
        assert!(out.iter().any(|o| matches!(o, Output::Connect)));
    }

    #[test]
    fn keepalive_timer_sends_keepalive_and_restarts() {
        let mut h = Harness::established(config());
        let out = h.run(Input::TimerExpired(Timer::Keepalive));
        assert!(matches!(sent(&out, 1).as_slice(), [Message::Keepalive]));
        assert_eq!(
            timer_started(&out, Timer::Keepalive),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn update_and_route_refresh_restart_the_hold_timer_and_are_passed_on() {
        let mut h = Harness::established(config());
        let out = h.receive(1, Message::Update(Update::default()));
        assert!(out.iter().any(|o| matches!(o, Output::RouteUpdate(_))));
        assert_eq!(
            timer_started(&out, Timer::Hold),
            Some(Duration::from_secs(9))
        );
        let refresh = RouteRefresh {
            afi: crate::wire::Afi::IPV4,
            safi: Safi::UNICAST,
            subtype: RouteRefreshSubtype::Normal,
        };
        let out = h.receive(1, Message::RouteRefresh(refresh));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::RouteRefreshRequested(r) if *r == refresh))
        );
    }

    #[test]
    fn received_notification_is_reported_decoded() {
        let mut h = Harness::established(config());
        let out = h.receive(
            1,
            Message::Notification(Notification::cease(CeaseSubcode::AdministrativeShutdown)),
        );
        assert!(
            notification(&out, 1).is_none(),
            "no NOTIFICATION answers a NOTIFICATION"
        );
        assert!(closed(&out, 1));
        let (reason, was_established) = down_reason(&out).expect("down");
        assert!(was_established);
        assert_eq!(
            reason.to_string(),
            "received NOTIFICATION: Cease: Administrative Shutdown"
        );
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let mut h = Harness::new(config());
        h.run(Input::ManualStart);
        h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        let out = h.receive(1, Message::Keepalive);
        assert_eq!(
            notification(&out, 1),
            Some(Notification::fsm(FsmSubcode::UnexpectedMessageInOpenSent))
        );

        let (mut h, _) = answer_open(config(), open(PEER_AS, 9, HIGHER_ID));
        let out = h.receive(1, Message::Update(Update::default()));
        assert_eq!(
            notification(&out, 1),
            Some(Notification::fsm(
                FsmSubcode::UnexpectedMessageInOpenConfirm
            ))
        );

        let mut h = Harness::established(config());
        let out = h.receive(1, Message::Open(open(PEER_AS, 9, HIGHER_ID)));
        assert_eq!(
            notification(&out, 1),
            Some(Notification::fsm(
                FsmSubcode::UnexpectedMessageInEstablished
            ))
        );
    }

    #[test]
    fn decode_errors_send_the_codec_notification() {
        let mut h = Harness::established(config());
        let error = MessageError::Update(crate::wire::UpdateError::MalformedAsPath);
        let out = h.run(Input::MessageError {
            conn: 1,
            error: error.clone(),
        });
        assert_eq!(notification(&out, 1), Some(error.notification()));
        assert!(
            down_reason(&out)
                .expect("down")
                .0
                .to_string()
                .contains("Malformed AS_PATH")
        );
    }

    /// Outbound connection 1 and inbound connection 2 both in OpenSent, then the peer's OPEN on `on`.
    fn collide(peer_id: Ipv4Addr, on: ConnId) -> (Harness, Vec<Output>) {
        let mut h = Harness::new(config());
        h.run(Input::ManualStart);
        h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        let out = h.run(Input::TcpConnectionConfirmed { conn: 2 });
        assert!(matches!(sent(&out, 2).as_slice(), [Message::Open(_)]));
        let out = h.receive(on, Message::Open(open(PEER_AS, 9, peer_id)));
        (h, out)
    }

    #[test]
    fn collision_keeps_our_connection_when_our_id_is_higher() {
        let cease = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
        // OPEN on the inbound connection: it loses.
        let (mut h, out) = collide(LOWER_ID, 2);
        assert_eq!(notification(&out, 2), Some(cease.clone()));
        assert!(closed(&out, 2) && !closed(&out, 1));
        assert_eq!(h.session.state(), State::OpenSent);
        h.receive(1, Message::Open(open(PEER_AS, 9, LOWER_ID)));
        let out = h.receive(1, Message::Keepalive);
        assert_eq!(
            negotiated(&out).map(|n| n.direction),
            Some(Direction::Outbound)
        );
        // OPEN on the outbound connection: the inbound one is closed.
        let (_, out) = collide(LOWER_ID, 1);
        assert_eq!(notification(&out, 2), Some(cease));
        assert!(matches!(sent(&out, 1).as_slice(), [Message::Keepalive]));
    }

    #[test]
    fn collision_keeps_the_peers_connection_when_its_id_is_higher() {
        let cease = Notification::cease(CeaseSubcode::ConnectionCollisionResolution);
        let (mut h, out) = collide(HIGHER_ID, 2);
        assert_eq!(notification(&out, 1), Some(cease));
        assert!(closed(&out, 1) && !closed(&out, 2));
        assert!(matches!(sent(&out, 2).as_slice(), [Message::Keepalive]));
        let out = h.receive(2, Message::Keepalive);
        assert_eq!(
            negotiated(&out).map(|n| n.direction),
            Some(Direction::Inbound)
        );
        assert!(down_reason(&out).is_none());
    }

    #[test]
    fn connection_while_established_is_closed() {
        let mut h = Harness::established(config());
        let out = h.run(Input::TcpConnectionConfirmed { conn: 2 });
        assert_eq!(
            notification(&out, 2),
            Some(Notification::cease(
                CeaseSubcode::ConnectionCollisionResolution
            ))
        );
        assert!(closed(&out, 2) && !closed(&out, 1));
        assert_eq!(h.session.established_conn(), Some(1));
    }

    #[test]
    fn inbound_connection_is_refused_while_stopped_and_accepted_during_idle_hold() {
        let mut h = Harness::new(config());
        let out = h.run(Input::TcpConnectionConfirmed { conn: 3 });
        assert!(closed(&out, 3));
        assert!(sent(&out, 3).is_empty());
        // After a failure the session waits in Idle; the peer's connection is taken.
        let mut h = Harness::established(config());
        h.run(Input::TimerExpired(Timer::Hold));
        assert_eq!(h.session.state(), State::Idle);
        let out = h.run(Input::TcpConnectionConfirmed { conn: 4 });
        assert!(matches!(sent(&out, 4).as_slice(), [Message::Open(_)]));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::StopTimer(Timer::IdleHold)))
        );
        assert_eq!(h.session.state(), State::OpenSent);
    }

    #[test]
    fn reset_with_its_own_idle_hold_refuses_the_peer_until_it_expires() {
        let mut h = Harness::established(config());
        let cease = Notification::cease(CeaseSubcode::MaximumPrefixesReached);
        let out = h.run(Input::Reset {
            notification: Some(cease.clone()),
            reason: "too many prefixes".into(),
            idle_hold: Some(Duration::from_secs(30)),
        });
        assert_eq!(notification(&out, 1), Some(cease));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::StartTimer(Timer::IdleHold, d) if *d == Duration::from_secs(30)
        )));
        // The peer reconnects at once: refused, unlike after an ordinary failure.
        let out = h.run(Input::TcpConnectionConfirmed { conn: 5 });
        assert!(closed(&out, 5));
        assert!(sent(&out, 5).is_empty());
        assert_eq!(h.session.state(), State::Idle);
        // When the hold is over, both sides may connect again.
        h.run(Input::TimerExpired(Timer::IdleHold));
        let out = h.run(Input::TcpConnectionConfirmed { conn: 6 });
        assert!(matches!(sent(&out, 6).as_slice(), [Message::Open(_)]));
    }

    #[test]
    fn graceful_restart_capability_follows_set_graceful_restart() {
        let mut h = Harness::new(config());
        let gr = GracefulRestart {
            restart_state: true,
            notification: false,
            restart_time: 120,
            families: Vec::new(),
        };
        h.session.set_graceful_restart(Some(gr.clone()));
        h.run(Input::ManualStart);
        let out = h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        let open = match sent(&out, 1).as_slice() {
            [Message::Open(open)] => open.clone(),
            other => panic!("expected OPEN, got {other:?}"),
        };
        assert_eq!(open.graceful_restart(), Some(&gr));
    }

    #[test]
    fn idle_hold_doubles_per_failure_caps_and_resets_after_a_stable_session() {
        let mut config = config();
        config.idle_hold = Duration::from_secs(2);
        config.idle_hold_max = Duration::from_secs(10);
        let mut h = Harness::new(config);
        h.run(Input::ManualStart);
        let mut waits = Vec::new();
        for conn in 1..=4 {
            h.run(Input::TimerExpired(Timer::IdleHold));
            h.run(Input::TcpConnectionAcknowledged { conn });
            let out = h.receive(conn, Message::Open(open(65002, 9, HIGHER_ID)));
            waits.push(timer_started(&out, Timer::IdleHold).expect("idle hold"));
        }
        assert_eq!(waits, [2, 4, 8, 10].map(Duration::from_secs));
        // A session that stays up for the stable time resets the back-off.
        h.run(Input::TimerExpired(Timer::IdleHold));
        h.run(Input::TcpConnectionAcknowledged { conn: 9 });
        h.receive(9, Message::Open(open(PEER_AS, 9, HIGHER_ID)));
        h.receive(9, Message::Keepalive);
        h.now += Duration::from_secs(61);
        let out = h.run(Input::TimerExpired(Timer::Hold));
        assert_eq!(
            timer_started(&out, Timer::IdleHold),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn unanswered_connects_are_counted_and_retried() {
        let mut h = Harness::new(config());
        h.run(Input::ManualStart);
        for attempt in 1..=3 {
            let out = h.run(Input::TimerExpired(Timer::ConnectRetry));
            assert!(out.iter().any(|o| matches!(o, Output::AbortConnect)));
            assert!(out.iter().any(|o| matches!(o, Output::Connect)));
            assert_eq!(h.session.connect_timeouts(), attempt);
        }
        // A refused connect goes to Active; ConnectRetry brings us back to Connect.
        h.run(Input::ConnectFailed);
        assert_eq!(h.session.state(), State::Active);
        let out = h.run(Input::TimerExpired(Timer::ConnectRetry));
        assert!(!out.iter().any(|o| matches!(o, Output::AbortConnect)));
        assert!(out.iter().any(|o| matches!(o, Output::Connect)));
        assert_eq!(h.session.state(), State::Connect);
        // An answer resets the count.
        h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        assert_eq!(h.session.connect_timeouts(), 0);
    }

    #[test]
    fn our_connect_goes_on_after_an_inbound_connection_and_late_results_are_closed() {
        let mut h = Harness::new(config());
        h.run(Input::ManualStart);
        let out = h.run(Input::TcpConnectionConfirmed { conn: 2 });
        assert!(!out.iter().any(|o| matches!(o, Output::AbortConnect)));
        // Both connections get an OPEN; the peer's OPEN will resolve the collision.
        let out = h.run(Input::TcpConnectionAcknowledged { conn: 1 });
        assert!(matches!(sent(&out, 1).as_slice(), [Message::Open(_)]));
        h.receive(2, Message::Open(open(PEER_AS, 9, HIGHER_ID)));
        let out = h.receive(2, Message::Keepalive);
        assert!(negotiated(&out).is_some());
        // A connect result after Established is closed unused.
        let out = h.run(Input::TcpConnectionAcknowledged { conn: 3 });
        assert!(closed(&out, 3) && sent(&out, 3).is_empty());
    }

    #[test]
    fn manual_stop_sends_administrative_shutdown_and_stays_idle() {
        let mut h = Harness::established(config());
        let out = h.run(Input::ManualStop);
        assert_eq!(
            notification(&out, 1),
            Some(Notification::cease(CeaseSubcode::AdministrativeShutdown))
        );
        assert!(closed(&out, 1));
        assert_eq!(timer_started(&out, Timer::IdleHold), None);
        assert_eq!(h.session.state(), State::Idle);
        assert!(h.run(Input::TimerExpired(Timer::IdleHold)).is_empty());
        assert!(closed(&h.run(Input::TcpConnectionConfirmed { conn: 5 }), 5));
    }

    #[test]
    fn tcp_failure_in_established_drops_the_session() {
        let mut h = Harness::established(config());
        let out = h.run(Input::TcpConnectionFails { conn: 1 });
        assert_eq!(
            down_reason(&out),
            Some((DownReason::ConnectionClosed, true))
        );
        assert_eq!(h.session.state(), State::Idle);
    }
}
