//! One BFD session as a pure state machine (RFC 5880 §6.2, §6.8; RFC 5881 §5), asynchronous mode.
//!
//! The driver feeds [`Input`]s (a received packet with its TTL, a timer that fired, an
//! administrative command) and carries out the [`Output`]s (send this packet, arm that timer,
//! report a state change). Time is never read here: timers are durations the driver arms, and the
//! random transmit jitter of §6.8.7 is an input ([`Jitter`]), so tests are deterministic.
//!
//! Not implemented: authentication (packets with the A bit are discarded), Demand mode for
//! ourselves (we never set D; a peer's D bit is honoured by not transmitting periodically), the
//! Echo function (we advertise Required Min Echo RX 0).

use std::time::Duration;

use crate::packet::{ControlPacket, Diagnostic, Flags, State};

/// §6.8.3: "When bfd.SessionState is not Up, the system MUST set bfd.DesiredMinTxInterval to a
/// value of not less than one second (1,000,000 microseconds)."
pub const SLOW_TX_US: u32 = 1_000_000;

/// RFC 5881 §5: packets of a session without authentication are sent with TTL 255 and received
/// packets whose TTL (or Hop Limit) is not 255 are discarded.
pub const REQUIRED_TTL: u8 = 255;

/// The timers a session asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// bfd.DesiredMinTxInterval once Up (1 s at least while not Up).
    pub min_tx: Duration,
    /// bfd.RequiredMinRxInterval.
    pub min_rx: Duration,
    /// bfd.DetectMult.
    pub multiplier: u8,
}

impl Default for SessionConfig {
    /// FRR's and most vendors' defaults: 300 ms x 3.
    fn default() -> Self {
        SessionConfig {
            min_tx: Duration::from_millis(300),
            min_rx: Duration::from_millis(300),
            multiplier: 3,
        }
    }
}

/// Microseconds for the wire, saturating (an interval above 71 minutes is not meaningful).
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// A random value for the transmit jitter of §6.8.7: 0 sends at the full interval, `u16::MAX` at
/// the shortest one allowed (75 %, or 90 % with a detect multiplier of 1 — where the range is
/// 75-90 %, so 0 gives 90 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jitter(pub u16);

impl Jitter {
    pub const NONE: Jitter = Jitter(0);

    /// "The periodic transmission of BFD Control packets MUST be jittered on a per-packet basis by
    /// up to 25%, that is, the interval MUST be reduced by a random value of 0 to 25% ... If
    /// bfd.DetectMult is equal to 1, the interval between transmitted BFD Control packets MUST be
    /// no more than 90% of the negotiated transmission interval, and MUST be no less than 75%."
    pub fn apply(self, interval_us: u32, detect_mult: u8) -> Duration {
        let fraction = u64::from(self.0);
        let max = u64::from(u16::MAX);
        // Reduction in parts per 10,000.
        let reduction = if detect_mult == 1 {
            1_000 + 1_500 * fraction / max
        } else {
            2_500 * fraction / max
        };
        let us = u64::from(interval_us) * (10_000 - reduction) / 10_000;
        Duration::from_micros(us)
    }
}

/// What happened that the session must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A control packet that passed [`crate::packet::decode`] and was demultiplexed to this
    /// session, with the TTL / Hop Limit it arrived with.
    Packet {
        packet: ControlPacket,
        ttl: u8,
    },
    TransmitTimerExpired,
    DetectionTimerExpired,
    AdminDown,
    AdminUp,
    /// New desired timers (§6.8.3: a Poll Sequence when Up).
    Reconfigure(SessionConfig),
}

/// Why a packet was dropped by the session-level checks of §6.8.6 / RFC 5881 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// TTL / Hop Limit other than 255.
    Ttl(u8),
    /// The A bit is set but authentication is not in use.
    AuthNotInUse,
    /// Your Discriminator names another session.
    WrongDiscriminator(u32),
    /// bfd.SessionState is AdminDown.
    AdminDown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet to the peer now.
    Send(ControlPacket),
    /// (Re)arm the transmit timer: fire [`Input::TransmitTimerExpired`] after this long.
    ArmTransmit(Duration),
    /// (Re)arm the detection timer: fire [`Input::DetectionTimerExpired`] after this long.
    ArmDetection(Duration),
    /// Stop the detection timer.
    DisarmDetection,
    StateChanged {
        from: State,
        to: State,
        diag: Diagnostic,
    },
    /// A packet was dropped (for counters and logs).
    Discarded(Discard),
}

/// A Poll Sequence in progress (§6.5) with the timer values in force before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Poll {
    prior_tx_us: u32,
    prior_rx_us: u32,
}

/// The state variables of §6.8.1 for one session.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    remote_state: State,
    local_discr: u32,
    remote_discr: u32,
    local_diag: Diagnostic,
    /// bfd.RemoteMinRxInterval: 1 µs until the peer tells (§6.8.1).
    remote_min_rx_us: u32,
    /// The last Desired Min TX Interval received.
    remote_desired_tx_us: u32,
    /// The last Detect Mult received; 0 before any packet.
    remote_detect_mult: u8,
    remote_demand: bool,
    poll: Option<Poll>,
}

impl Session {
    /// A session in Down state. `local_discr` must be nonzero and unique in the system (§6.8.1).
    pub fn new(local_discr: u32, config: SessionConfig) -> Session {
        Session {
            config,
            state: State::Down,
            remote_state: State::Down,
            local_discr,
            remote_discr: 0,
            local_diag: Diagnostic::None,
            remote_min_rx_us: 1,
            remote_desired_tx_us: 0,
            remote_detect_mult: 0,
            remote_demand: false,
            poll: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    pub fn diag(&self) -> Diagnostic {
        self.local_diag
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// The first packet and the first transmit timer.
    pub fn start(&mut self, jitter: Jitter) -> Vec<Output> {
        let mut out = Vec::new();
        self.transmit(false, jitter, &mut out);
        out
    }

    pub fn handle(&mut self, input: Input, jitter: Jitter) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Packet { packet, ttl } => self.receive(packet, ttl, jitter, &mut out),
            Input::TransmitTimerExpired => self.transmit(false, jitter, &mut out),
            Input::DetectionTimerExpired => self.detection_expired(jitter, &mut out),
            Input::AdminDown => {
                if self.state != State::AdminDown {
                    self.poll = None;
                    self.set_state(State::AdminDown, Diagnostic::AdministrativelyDown, &mut out);
                    out.push(Output::DisarmDetection);
                    self.transmit(false, jitter, &mut out);
                }
            }
            Input::AdminUp => {
                if self.state == State::AdminDown {
                    self.set_state(State::Down, Diagnostic::None, &mut out);
                    self.transmit(false, jitter, &mut out);
                }
            }
            Input::Reconfigure(config) => self.reconfigure(config, jitter, &mut out),
        }
        out
    }

    /// bfd.DesiredMinTxInterval as advertised: slow start while not Up (§6.8.3).
    fn desired_tx_us(&self) -> u32 {
        let configured = micros(self.config.min_tx);
        if self.state == State::Up {
            configured
        } else {
            configured.max(SLOW_TX_US)
        }
    }

    /// The TX interval in force: "If bfd.DesiredMinTxInterval is increased and bfd.SessionState is
    /// Up, the actual transmission interval used MUST NOT change until the Poll Sequence ... has
    /// terminated." A decrease is safe at once (the peer only sees packets sooner).
    fn tx_in_force_us(&self) -> u32 {
        let desired = self.desired_tx_us();
        match self.poll {
            Some(poll) if desired > poll.prior_tx_us => poll.prior_tx_us,
            _ => desired,
        }
    }

    /// The RX interval for our detection time: "If bfd.RequiredMinRxInterval is reduced and
    /// bfd.SessionState is Up, the previous value ... MUST be used when calculating the Detection
    /// Time for the remote system until the Poll Sequence ... has terminated." An increase makes
    /// detection more lenient, so it applies at once.
    fn rx_in_force_us(&self) -> u32 {
        let configured = micros(self.config.min_rx);
        match self.poll {
            Some(poll) => configured.max(poll.prior_rx_us),
            None => configured,
        }
    }

    /// §6.8.7: the transmit interval is the larger of our desired TX and the peer's required RX.
    pub fn transmit_interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.tx_in_force_us().max(self.remote_min_rx_us)))
    }

    /// §6.8.4, asynchronous mode: the remote Detect Mult times the agreed interval (the larger of
    /// our required RX and the peer's last desired TX). `None` before the first packet.
    pub fn detection_time(&self) -> Option<Duration> {
        if self.remote_detect_mult == 0 {
            return None;
        }
        let interval = self.rx_in_force_us().max(self.remote_desired_tx_us);
        Some(Duration::from_micros(
            u64::from(self.remote_detect_mult) * u64::from(interval),
        ))
    }

    /// §6.8.7 packet contents.
    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            flags: Flags {
                // "A system MUST NOT set the Poll and Final bits at the same time."
                poll: self.poll.is_some() && !final_,
                final_,
                control_plane_independent: false,
                demand: false,
            },
            detect_mult: self.config.multiplier,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx_us: self.desired_tx_us(),
            required_min_rx_us: micros(self.config.min_rx),
            required_min_echo_rx_us: 0,
            auth: None,
        }
    }

    /// Sends a packet (unless periodic transmission is suppressed) and re-arms the transmit timer,
    /// so an immediate packet (state change, Poll, Final) also restarts the periodic cadence.
    fn transmit(&mut self, final_: bool, jitter: Jitter, out: &mut Vec<Output>) {
        // "If bfd.RemoteMinRxInterval is zero, the local system MUST NOT periodically transmit";
        // nor when the peer is in Demand mode and both sides are Up. A Final is always sent.
        let suppressed = self.remote_min_rx_us == 0
            || (self.remote_demand && self.state == State::Up && self.remote_state == State::Up);
        if final_ || !suppressed {
            out.push(Output::Send(self.packet(final_)));
        }
        let interval = micros(self.transmit_interval());
        out.push(Output::ArmTransmit(
            jitter.apply(interval, self.config.multiplier),
        ));
    }

    fn set_state(&mut self, to: State, diag: Diagnostic, out: &mut Vec<Output>) {
        let from = self.state;
        self.state = to;
        self.local_diag = diag;
        match to {
            State::Up => {
                // Leaving slow start changes bfd.DesiredMinTxInterval while Up: Poll (§6.8.3).
                if micros(self.config.min_tx) < SLOW_TX_US {
                    self.poll = Some(Poll {
                        prior_tx_us: SLOW_TX_US,
                        prior_rx_us: micros(self.config.min_rx),
                    });
                }
            }
            _ => self.poll = None,
        }
        out.push(Output::StateChanged { from, to, diag });
    }

    /// §6.8.6, the checks and actions after the packet-local ones done by `decode`.
    fn receive(&mut self, packet: ControlPacket, ttl: u8, jitter: Jitter, out: &mut Vec<Output>) {
        if ttl != REQUIRED_TTL {
            out.push(Output::Discarded(Discard::Ttl(ttl)));
            return;
        }
        if packet.auth.is_some() {
            out.push(Output::Discarded(Discard::AuthNotInUse));
            return;
        }
        if packet.your_discriminator != 0 && packet.your_discriminator != self.local_discr {
            out.push(Output::Discarded(Discard::WrongDiscriminator(
                packet.your_discriminator,
            )));
            return;
        }
        self.remote_discr = packet.my_discriminator;
        self.remote_state = packet.state;
        self.remote_demand = packet.flags.demand;
        self.remote_min_rx_us = packet.required_min_rx_us;
        self.remote_desired_tx_us = packet.desired_min_tx_us;
        self.remote_detect_mult = packet.detect_mult;
        // "If the Final (F) bit is set, terminate any Poll Sequence in progress."
        if packet.flags.final_ {
            self.poll = None;
        }
        // "If bfd.SessionState is AdminDown: Discard the packet."
        if self.state == State::AdminDown {
            out.push(Output::Discarded(Discard::AdminDown));
            return;
        }
        let before = self.state;
        if packet.state == State::AdminDown {
            if self.state != State::Down {
                self.set_state(State::Down, Diagnostic::NeighborSignaledSessionDown, out);
            }
        } else {
            match (self.state, packet.state) {
                (State::Down, State::Down) => self.set_state(State::Init, Diagnostic::None, out),
                (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                    self.set_state(State::Up, Diagnostic::None, out);
                }
                (State::Up, State::Down) => {
                    self.set_state(State::Down, Diagnostic::NeighborSignaledSessionDown, out);
                }
                _ => {}
            }
        }
        if let Some(detection) = self.detection_time() {
            out.push(Output::ArmDetection(detection));
        }
        // "If the Poll (P) bit is set, send a BFD Control packet to the remote system with the Poll
        // (P) bit clear, and the Final (F) bit set." A state change is sent at once too, so the
        // three-way handshake does not wait for the (slow-start) transmit timer.
        if packet.flags.poll || self.state != before {
            self.transmit(packet.flags.poll, jitter, out);
        }
    }

    /// §6.8.4 and §6.8.1: the session goes Down and bfd.RemoteDiscr is forgotten.
    fn detection_expired(&mut self, jitter: Jitter, out: &mut Vec<Output>) {
        self.remote_discr = 0;
        if matches!(self.state, State::Init | State::Up) {
            self.set_state(State::Down, Diagnostic::ControlDetectionTimeExpired, out);
            self.transmit(false, jitter, out);
        }
    }

    /// §6.8.3: "If either bfd.DesiredMinTxInterval is changed or bfd.RequiredMinRxInterval is
    /// changed, a Poll Sequence MUST be initiated" (when Up).
    fn reconfigure(&mut self, config: SessionConfig, jitter: Jitter, out: &mut Vec<Output>) {
        let prior = Poll {
            prior_tx_us: self.tx_in_force_us(),
            prior_rx_us: self.rx_in_force_us(),
        };
        let advertised_before = (self.desired_tx_us(), micros(self.config.min_rx));
        self.config = config;
        let advertised_after = (self.desired_tx_us(), micros(self.config.min_rx));
        if advertised_before == advertised_after {
            return;
        }
        if self.state == State::Up && self.poll.is_none() {
            self.poll = Some(prior);
        }
        if self.state != State::AdminDown {
            self.transmit(false, jitter, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: u32 = 0x1111;
    const REMOTE: u32 = 0x2222;

    fn fast() -> SessionConfig {
        SessionConfig {
            min_tx: Duration::from_millis(50),
            min_rx: Duration::from_millis(50),
            multiplier: 3,
        }
    }

    /// A packet from the peer: 100 ms TX / 100 ms RX x 4.
    fn peer(state: State, your: u32) -> ControlPacket {
        ControlPacket {
            diag: Diagnostic::None,
            state,
            flags: Flags::default(),
            detect_mult: 4,
            my_discriminator: REMOTE,
            your_discriminator: your,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            required_min_echo_rx_us: 0,
            auth: None,
        }
    }

    fn rx(session: &mut Session, packet: ControlPacket) -> Vec<Output> {
        session.handle(Input::Packet { packet, ttl: 255 }, Jitter::NONE)
    }

    fn sent(out: &[Output]) -> Vec<&ControlPacket> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn changes(out: &[Output]) -> Vec<(State, State, Diagnostic)> {
        out.iter()
            .filter_map(|o| match o {
                Output::StateChanged { from, to, diag } => Some((*from, *to, *diag)),
                _ => None,
            })
            .collect()
    }

    fn armed_tx(out: &[Output]) -> Option<Duration> {
        out.iter().rev().find_map(|o| match o {
            Output::ArmTransmit(d) => Some(*d),
            _ => None,
        })
    }

    fn armed_detection(out: &[Output]) -> Option<Duration> {
        out.iter().rev().find_map(|o| match o {
            Output::ArmDetection(d) => Some(*d),
            _ => None,
        })
    }

    /// Down -> Init -> Up through the three-way handshake, with the peer's F answering our Poll.
    fn up(config: SessionConfig) -> Session {
        let mut s = Session::new(LOCAL, config);
        s.start(Jitter::NONE);
        rx(&mut s, peer(State::Down, 0));
        rx(&mut s, peer(State::Up, LOCAL));
        assert_eq!(s.state(), State::Up);
        let mut last = peer(State::Up, LOCAL);
        last.flags.final_ = true;
        rx(&mut s, last);
        s
    }

    #[test]
    fn starts_down_sending_slow_with_zero_your_discriminator() {
        let mut s = Session::new(LOCAL, fast());
        let out = s.start(Jitter::NONE);
        let packets = sent(&out);
        assert_eq!(packets.len(), 1);
        let p = packets[0];
        assert_eq!(p.state, State::Down);
        assert_eq!((p.my_discriminator, p.your_discriminator), (LOCAL, 0));
        assert_eq!(p.desired_min_tx_us, SLOW_TX_US, "slow start while not Up");
        assert_eq!(p.required_min_rx_us, 50_000);
        assert_eq!(p.detect_mult, 3);
        assert!(!p.flags.poll && !p.flags.final_);
        assert_eq!(armed_tx(&out), Some(Duration::from_secs(1)));
    }

    #[test]
    fn three_way_handshake_down_init_up() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        s.start(Jitter::NONE);
        let out = rx(&mut s, peer(State::Down, 0));
        assert_eq!(
            changes(&out),
            [(State::Down, State::Init, Diagnostic::None)]
        );
        let reply = sent(&out);
        assert_eq!(reply.len(), 1, "a state change is sent at once");
        assert_eq!(reply[0].state, State::Init);
        assert_eq!(reply[0].your_discriminator, REMOTE);
        // Detection: the peer's mult 4 x max(our 300 ms RX, its 100 ms TX).
        assert_eq!(armed_detection(&out), Some(Duration::from_millis(1200)));
        let out = rx(&mut s, peer(State::Up, LOCAL));
        assert_eq!(changes(&out), [(State::Init, State::Up, Diagnostic::None)]);
        assert_eq!(sent(&out)[0].state, State::Up);
    }

    #[test]
    fn down_receiving_init_goes_straight_up() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        let out = rx(&mut s, peer(State::Init, LOCAL));
        assert_eq!(changes(&out), [(State::Down, State::Up, Diagnostic::None)]);
    }

    #[test]
    fn down_ignores_up_from_peer() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        let out = rx(&mut s, peer(State::Up, LOCAL));
        assert!(changes(&out).is_empty());
        assert_eq!(s.state(), State::Down);
    }

    #[test]
    fn leaving_slow_start_polls_and_speeds_up_at_once() {
        let mut s = Session::new(LOCAL, fast());
        rx(&mut s, peer(State::Down, 0));
        let out = rx(&mut s, peer(State::Up, LOCAL));
        let p = sent(&out)[0];
        assert_eq!(p.state, State::Up);
        assert!(p.flags.poll, "the TX change out of slow start is polled");
        assert_eq!(p.desired_min_tx_us, 50_000);
        // A decrease applies at once; the peer's 100 ms RX bounds it.
        assert_eq!(armed_tx(&out), Some(Duration::from_millis(100)));
        // Periodic packets keep P until the peer answers F.
        let out = s.handle(Input::TransmitTimerExpired, Jitter::NONE);
        assert!(sent(&out)[0].flags.poll);
        let mut fin = peer(State::Up, LOCAL);
        fin.flags.final_ = true;
        rx(&mut s, fin);
        let out = s.handle(Input::TransmitTimerExpired, Jitter::NONE);
        assert!(!sent(&out)[0].flags.poll, "F ended the Poll Sequence");
    }

    #[test]
    fn default_timers_at_or_above_one_second_need_no_poll() {
        let slow = SessionConfig {
            min_tx: Duration::from_secs(2),
            ..SessionConfig::default()
        };
        let mut s = Session::new(LOCAL, slow);
        rx(&mut s, peer(State::Down, 0));
        let out = rx(&mut s, peer(State::Up, LOCAL));
        assert!(!sent(&out)[0].flags.poll);
    }

    #[test]
    fn poll_from_peer_is_answered_with_final_at_once() {
        let mut s = up(SessionConfig::default());
        let mut poll = peer(State::Up, LOCAL);
        poll.flags.poll = true;
        poll.required_min_rx_us = 500_000;
        let out = rx(&mut s, poll);
        let reply = sent(&out);
        assert_eq!(reply.len(), 1);
        assert!(reply[0].flags.final_ && !reply[0].flags.poll);
        // The peer's slower RX takes effect for our transmissions.
        assert_eq!(armed_tx(&out), Some(Duration::from_millis(500)));
    }

    #[test]
    fn detection_expiry_takes_up_session_down() {
        let mut s = up(SessionConfig::default());
        let out = s.handle(Input::DetectionTimerExpired, Jitter::NONE);
        assert_eq!(
            changes(&out),
            [(
                State::Up,
                State::Down,
                Diagnostic::ControlDetectionTimeExpired
            )]
        );
        let p = sent(&out)[0];
        assert_eq!(p.state, State::Down);
        assert_eq!(p.diag, Diagnostic::ControlDetectionTimeExpired);
        assert_eq!(p.your_discriminator, 0, "bfd.RemoteDiscr is reset");
        assert_eq!(p.desired_min_tx_us, SLOW_TX_US, "back to slow start");
        assert_eq!(s.remote_discriminator(), 0);
    }

    #[test]
    fn detection_expiry_in_down_only_forgets_the_remote() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        rx(&mut s, peer(State::AdminDown, 0));
        assert_eq!(s.remote_discriminator(), REMOTE);
        let out = s.handle(Input::DetectionTimerExpired, Jitter::NONE);
        assert!(out.is_empty());
        assert_eq!(s.remote_discriminator(), 0);
    }

    #[test]
    fn detection_time_is_remote_mult_times_agreed_interval() {
        let mut s = up(fast());
        // Peer mult 4 x max(our 50 ms RX, its 100 ms TX).
        assert_eq!(s.detection_time(), Some(Duration::from_millis(400)));
        let mut p = peer(State::Up, LOCAL);
        p.desired_min_tx_us = 20_000;
        p.detect_mult = 3;
        let out = rx(&mut s, p);
        assert_eq!(armed_detection(&out), Some(Duration::from_millis(150)));
    }

    #[test]
    fn neighbor_down_or_admin_down_signals_session_down() {
        for remote in [State::Down, State::AdminDown] {
            let mut s = up(SessionConfig::default());
            let your = if remote == State::Down { 0 } else { LOCAL };
            let out = rx(&mut s, peer(remote, your));
            assert_eq!(
                changes(&out),
                [(
                    State::Up,
                    State::Down,
                    Diagnostic::NeighborSignaledSessionDown
                )]
            );
        }
    }

    #[test]
    fn init_goes_down_on_peer_admin_down() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        rx(&mut s, peer(State::Down, 0));
        let out = rx(&mut s, peer(State::AdminDown, 0));
        assert_eq!(
            changes(&out),
            [(
                State::Init,
                State::Down,
                Diagnostic::NeighborSignaledSessionDown
            )]
        );
    }

    #[test]
    fn gtsm_discards_ttl_other_than_255() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        for ttl in [0, 1, 64, 254] {
            let out = s.handle(
                Input::Packet {
                    packet: peer(State::Down, 0),
                    ttl,
                },
                Jitter::NONE,
            );
            assert_eq!(out, [Output::Discarded(Discard::Ttl(ttl))]);
        }
        assert_eq!((s.state(), s.remote_discriminator()), (State::Down, 0));
    }

    #[test]
    fn authenticated_packets_and_foreign_discriminators_are_discarded() {
        let mut s = Session::new(LOCAL, SessionConfig::default());
        let mut auth = peer(State::Down, 0);
        auth.auth = Some(crate::packet::AuthSection {
            auth_type: 1,
            data: vec![1, 0],
        });
        assert_eq!(rx(&mut s, auth), [Output::Discarded(Discard::AuthNotInUse)]);
        assert_eq!(
            rx(&mut s, peer(State::Init, 0x9999)),
            [Output::Discarded(Discard::WrongDiscriminator(0x9999))]
        );
        assert_eq!(s.state(), State::Down);
    }

    #[test]
    fn admin_down_and_up() {
        let mut s = up(SessionConfig::default());
        let out = s.handle(Input::AdminDown, Jitter::NONE);
        assert_eq!(
            changes(&out),
            [(
                State::Up,
                State::AdminDown,
                Diagnostic::AdministrativelyDown
            )]
        );
        assert!(out.contains(&Output::DisarmDetection));
        let p = sent(&out)[0];
        assert_eq!(
            (p.state, p.diag),
            (State::AdminDown, Diagnostic::AdministrativelyDown)
        );
        // Packets are discarded while AdminDown.
        let out = rx(&mut s, peer(State::Up, LOCAL));
        assert_eq!(out, [Output::Discarded(Discard::AdminDown)]);
        let out = s.handle(Input::AdminUp, Jitter::NONE);
        assert_eq!(
            changes(&out),
            [(State::AdminDown, State::Down, Diagnostic::None)]
        );
    }

    #[test]
    fn increasing_tx_while_up_waits_for_final() {
        let mut s = up(fast());
        // Peer RX 100 ms bounds our 50 ms TX.
        assert_eq!(s.transmit_interval(), Duration::from_millis(100));
        let slower = SessionConfig {
            min_tx: Duration::from_millis(500),
            ..fast()
        };
        let out = s.handle(Input::Reconfigure(slower), Jitter::NONE);
        let p = sent(&out)[0];
        assert!(p.flags.poll);
        assert_eq!(p.desired_min_tx_us, 500_000);
        assert_eq!(
            armed_tx(&out),
            Some(Duration::from_millis(100)),
            "old rate until F"
        );
        let mut fin = peer(State::Up, LOCAL);
        fin.flags.final_ = true;
        let out = rx(&mut s, fin);
        assert!(sent(&out).is_empty());
        assert_eq!(s.transmit_interval(), Duration::from_millis(500));
    }

    #[test]
    fn reducing_rx_while_up_keeps_old_detection_until_final() {
        let mut s = up(SessionConfig::default());
        let mut p = peer(State::Up, LOCAL);
        p.desired_min_tx_us = 10_000;
        rx(&mut s, p.clone());
        // 4 x max(300 ms, 10 ms).
        assert_eq!(s.detection_time(), Some(Duration::from_millis(1200)));
        let faster_rx = SessionConfig {
            min_rx: Duration::from_millis(50),
            ..SessionConfig::default()
        };
        let out = s.handle(Input::Reconfigure(faster_rx), Jitter::NONE);
        assert_eq!(sent(&out)[0].required_min_rx_us, 50_000);
        assert_eq!(s.detection_time(), Some(Duration::from_millis(1200)));
        p.flags.final_ = true;
        rx(&mut s, p);
        assert_eq!(s.detection_time(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn reconfigure_to_same_timers_does_nothing() {
        let mut s = up(SessionConfig::default());
        assert!(
            s.handle(Input::Reconfigure(SessionConfig::default()), Jitter::NONE)
                .is_empty()
        );
    }

    #[test]
    fn zero_remote_min_rx_suppresses_periodic_but_not_final() {
        let mut s = up(SessionConfig::default());
        let mut p = peer(State::Up, LOCAL);
        p.required_min_rx_us = 0;
        rx(&mut s, p.clone());
        let out = s.handle(Input::TransmitTimerExpired, Jitter::NONE);
        assert!(sent(&out).is_empty());
        assert!(armed_tx(&out).is_some(), "the timer keeps re-checking");
        p.flags.poll = true;
        assert_eq!(sent(&rx(&mut s, p)).len(), 1);
    }

    #[test]
    fn remote_demand_mode_suppresses_periodic_when_both_up() {
        let mut s = up(SessionConfig::default());
        let mut p = peer(State::Up, LOCAL);
        p.flags.demand = true;
        rx(&mut s, p);
        assert!(sent(&s.handle(Input::TransmitTimerExpired, Jitter::NONE)).is_empty());
    }

    #[test]
    fn jitter_stays_in_the_rfc_ranges() {
        let us = 1_000_000;
        assert_eq!(Jitter::NONE.apply(us, 3), Duration::from_millis(1000));
        assert_eq!(Jitter(u16::MAX).apply(us, 3), Duration::from_millis(750));
        assert_eq!(Jitter::NONE.apply(us, 1), Duration::from_millis(900));
        assert_eq!(Jitter(u16::MAX).apply(us, 1), Duration::from_millis(750));
        for v in (0..=u16::MAX).step_by(997) {
            let d = Jitter(v).apply(us, 3);
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1000));
            let d = Jitter(v).apply(us, 1);
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(900));
        }
        // The transmit timer of a session uses it.
        let mut s = Session::new(LOCAL, SessionConfig::default());
        let out = s.start(Jitter(u16::MAX));
        assert_eq!(armed_tx(&out), Some(Duration::from_millis(750)));
    }

    #[test]
    fn state_change_reports_then_up_clears_diag() {
        let mut s = up(SessionConfig::default());
        s.handle(Input::DetectionTimerExpired, Jitter::NONE);
        assert_eq!(s.diag(), Diagnostic::ControlDetectionTimeExpired);
        rx(&mut s, peer(State::Init, LOCAL));
        assert_eq!((s.state(), s.diag()), (State::Up, Diagnostic::None));
    }
}
