//! NOTIFICATION message (RFC 4271 §4.5) with every IANA-registered error code and subcode
//! ("BGP Error (Notification) Codes" and "BGP Error Subcodes" registries).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Defines a `u8` wire enum with its IANA name.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The IANA registry name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

wire_enum! {
    /// Message Header Error subcodes (RFC 4271 §6.1).
    HeaderSubcode {
        ConnectionNotSynchronized = 1 => "Connection Not Synchronized",
        BadMessageLength = 2 => "Bad Message Length",
        BadMessageType = 3 => "Bad Message Type",
    }
}

wire_enum! {
    /// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492, RFC 9234).
    OpenSubcode {
        UnsupportedVersionNumber = 1 => "Unsupported Version Number",
        BadPeerAs = 2 => "Bad Peer AS",
        BadBgpIdentifier = 3 => "Bad BGP Identifier",
        UnsupportedOptionalParameter = 4 => "Unsupported Optional Parameter",
        /// Deprecated (RFC 4271).
        AuthenticationFailure = 5 => "Authentication Failure (deprecated)",
        UnacceptableHoldTime = 6 => "Unacceptable Hold Time",
        UnsupportedCapability = 7 => "Unsupported Capability",
        /// Deprecated (IANA).
        Deprecated8 = 8 => "Deprecated (8)",
        /// Deprecated (IANA).
        Deprecated9 = 9 => "Deprecated (9)",
        /// Deprecated (IANA).
        Deprecated10 = 10 => "Deprecated (10)",
        RoleMismatch = 11 => "Role Mismatch",
    }
}

wire_enum! {
    /// UPDATE Message Error subcodes (RFC 4271 §6.3).
    UpdateSubcode {
        MalformedAttributeList = 1 => "Malformed Attribute List",
        UnrecognizedWellKnownAttribute = 2 => "Unrecognized Well-known Attribute",
        MissingWellKnownAttribute = 3 => "Missing Well-known Attribute",
        AttributeFlagsError = 4 => "Attribute Flags Error",
        AttributeLengthError = 5 => "Attribute Length Error",
        InvalidOriginAttribute = 6 => "Invalid ORIGIN Attribute",
        /// Deprecated (RFC 4271).
        AsRoutingLoop = 7 => "AS Routing Loop (deprecated)",
        InvalidNextHopAttribute = 8 => "Invalid NEXT_HOP Attribute",
        OptionalAttributeError = 9 => "Optional Attribute Error",
        InvalidNetworkField = 10 => "Invalid Network Field",
        MalformedAsPath = 11 => "Malformed AS_PATH",
    }
}

wire_enum! {
    /// Finite State Machine Error subcodes (RFC 6608).
    FsmSubcode {
        UnexpectedMessageInOpenSent = 1 => "Receive Unexpected Message in OpenSent State",
        UnexpectedMessageInOpenConfirm = 2 => "Receive Unexpected Message in OpenConfirm State",
        UnexpectedMessageInEstablished = 3 => "Receive Unexpected Message in Established State",
    }
}

wire_enum! {
    /// Cease subcodes (RFC 4486, RFC 8538, RFC 9384).
    CeaseSubcode {
        MaximumPrefixesReached = 1 => "Maximum Number of Prefixes Reached",
        AdministrativeShutdown = 2 => "Administrative Shutdown",
        PeerDeconfigured = 3 => "Peer De-configured",
        AdministrativeReset = 4 => "Administrative Reset",
        ConnectionRejected = 5 => "Connection Rejected",
        OtherConfigurationChange = 6 => "Other Configuration Change",
        ConnectionCollisionResolution = 7 => "Connection Collision Resolution",
        OutOfResources = 8 => "Out of Resources",
        HardReset = 9 => "Hard Reset",
        BfdDown = 10 => "BFD Down",
    }
}

wire_enum! {
    /// ROUTE-REFRESH Message Error subcodes (RFC 7313).
    RouteRefreshSubcode {
        InvalidMessageLength = 1 => "Invalid Message Length",
    }
}

/// NOTIFICATION error code. Codes we do not know are kept as `Unknown`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    MessageHeader,
    OpenMessage,
    UpdateMessage,
    HoldTimerExpired,
    FiniteStateMachine,
    Cease,
    RouteRefreshMessage,
    /// RFC 9687.
    SendHoldTimerExpired,
    Unknown(u8),
}

impl ErrorCode {
    pub fn from_u8(value: u8) -> ErrorCode {
        match value {
            1 => ErrorCode::MessageHeader,
            2 => ErrorCode::OpenMessage,
            3 => ErrorCode::UpdateMessage,
            4 => ErrorCode::HoldTimerExpired,
            5 => ErrorCode::FiniteStateMachine,
            6 => ErrorCode::Cease,
            7 => ErrorCode::RouteRefreshMessage,
            8 => ErrorCode::SendHoldTimerExpired,
            other => ErrorCode::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::MessageHeader => 1,
            ErrorCode::OpenMessage => 2,
            ErrorCode::UpdateMessage => 3,
            ErrorCode::HoldTimerExpired => 4,
            ErrorCode::FiniteStateMachine => 5,
            ErrorCode::Cease => 6,
            ErrorCode::RouteRefreshMessage => 7,
            ErrorCode::SendHoldTimerExpired => 8,
            ErrorCode::Unknown(other) => other,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::MessageHeader => "Message Header Error",
            ErrorCode::OpenMessage => "OPEN Message Error",
            ErrorCode::UpdateMessage => "UPDATE Message Error",
            ErrorCode::HoldTimerExpired => "Hold Timer Expired",
            ErrorCode::FiniteStateMachine => "Finite State Machine Error",
            ErrorCode::Cease => "Cease",
            ErrorCode::RouteRefreshMessage => "ROUTE-REFRESH Message Error",
            ErrorCode::SendHoldTimerExpired => "Send Hold Timer Expired",
            ErrorCode::Unknown(code) => return write!(f, "Unknown error code {code}"),
        };
        f.write_str(name)
    }
}

/// NOTIFICATION error subcode, typed by its code. Subcode 0 is "Unspecific" for every code; subcodes not
/// registered for the code are kept as `Unknown`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorSubcode {
    Unspecific,
    Header(HeaderSubcode),
    Open(OpenSubcode),
    Update(UpdateSubcode),
    Fsm(FsmSubcode),
    Cease(CeaseSubcode),
    RouteRefresh(RouteRefreshSubcode),
    Unknown(u8),
}

impl ErrorSubcode {
    /// Interprets a subcode under its code.
    pub fn from_u8(code: ErrorCode, value: u8) -> ErrorSubcode {
        if value == 0 {
            return ErrorSubcode::Unspecific;
        }
        let typed = match code {
            ErrorCode::MessageHeader => HeaderSubcode::from_u8(value).map(ErrorSubcode::Header),
            ErrorCode::OpenMessage => OpenSubcode::from_u8(value).map(ErrorSubcode::Open),
            ErrorCode::UpdateMessage => UpdateSubcode::from_u8(value).map(ErrorSubcode::Update),
            ErrorCode::FiniteStateMachine => FsmSubcode::from_u8(value).map(ErrorSubcode::Fsm),
            ErrorCode::Cease => CeaseSubcode::from_u8(value).map(ErrorSubcode::Cease),
            ErrorCode::RouteRefreshMessage => {
                RouteRefreshSubcode::from_u8(value).map(ErrorSubcode::RouteRefresh)
            }
            ErrorCode::HoldTimerExpired
            | ErrorCode::SendHoldTimerExpired
            | ErrorCode::Unknown(_) => None,
        };
        typed.unwrap_or(ErrorSubcode::Unknown(value))
    }

    pub fn to_u8(self) -> u8 {
        match self {
            ErrorSubcode::Unspecific => 0,
            ErrorSubcode::Header(s) => s as u8,
            ErrorSubcode::Open(s) => s as u8,
            ErrorSubcode::Update(s) => s as u8,
            ErrorSubcode::Fsm(s) => s as u8,
            ErrorSubcode::Cease(s) => s as u8,
            ErrorSubcode::RouteRefresh(s) => s as u8,
            ErrorSubcode::Unknown(value) => value,
        }
    }

    fn name(self) -> Option<&'static str> {
        match self {
            ErrorSubcode::Unspecific | ErrorSubcode::Unknown(_) => None,
            ErrorSubcode::Header(s) => Some(s.name()),
            ErrorSubcode::Open(s) => Some(s.name()),
            ErrorSubcode::Update(s) => Some(s.name()),
            ErrorSubcode::Fsm(s) => Some(s.name()),
            ErrorSubcode::Cease(s) => Some(s.name()),
            ErrorSubcode::RouteRefresh(s) => Some(s.name()),
        }
    }
}

/// Maximum length of a shutdown communication in octets. RFC 9003 §2.
pub const MAX_SHUTDOWN_COMMUNICATION_LEN: usize = 255;

/// A NOTIFICATION message. Build it with the constructors so code and subcode agree.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Notification {
    pub code: ErrorCode,
    pub subcode: ErrorSubcode,
    pub data: Bytes,
}

impl Notification {
    pub fn new(code: ErrorCode, subcode: ErrorSubcode, data: Bytes) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Builds from raw wire values (e.g. a received NOTIFICATION).
    pub fn from_wire(code: u8, subcode: u8, data: Bytes) -> Notification {
        let code = ErrorCode::from_u8(code);
        Notification {
            code,
            subcode: ErrorSubcode::from_u8(code, subcode),
            data,
        }
    }

    pub fn header(subcode: HeaderSubcode, data: Bytes) -> Notification {
        Notification::new(
            ErrorCode::MessageHeader,
            ErrorSubcode::Header(subcode),
            data,
        )
    }

    pub fn open(subcode: OpenSubcode, data: Bytes) -> Notification {
        Notification::new(ErrorCode::OpenMessage, ErrorSubcode::Open(subcode), data)
    }

    pub fn update(subcode: UpdateSubcode, data: Bytes) -> Notification {
        Notification::new(
            ErrorCode::UpdateMessage,
            ErrorSubcode::Update(subcode),
            data,
        )
    }

    pub fn hold_timer_expired() -> Notification {
        Notification::new(
            ErrorCode::HoldTimerExpired,
            ErrorSubcode::Unspecific,
            Bytes::new(),
        )
    }

    pub fn send_hold_timer_expired() -> Notification {
        Notification::new(
            ErrorCode::SendHoldTimerExpired,
            ErrorSubcode::Unspecific,
            Bytes::new(),
        )
    }

    pub fn fsm(subcode: FsmSubcode) -> Notification {
        Notification::new(
            ErrorCode::FiniteStateMachine,
            ErrorSubcode::Fsm(subcode),
            Bytes::new(),
        )
    }

    pub fn cease(subcode: CeaseSubcode) -> Notification {
        Notification::new(ErrorCode::Cease, ErrorSubcode::Cease(subcode), Bytes::new())
    }

    /// Cease with a shutdown communication (RFC 9003; Administrative Shutdown or Reset). The message is
    /// cut at a character boundary to fit the 255-octet limit.
    pub fn cease_with_message(subcode: CeaseSubcode, message: &str) -> Notification {
        let mut end = message.len().min(MAX_SHUTDOWN_COMMUNICATION_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message.as_bytes()[..end];
        let mut data = BytesMut::with_capacity(1 + text.len());
        // `end` <= 255 by construction.
        data.put_u8(end as u8);
        data.put_slice(text);
        Notification::new(
            ErrorCode::Cease,
            ErrorSubcode::Cease(subcode),
            data.freeze(),
        )
    }

    /// The shutdown communication of a Cease/Administrative Shutdown or Reset (RFC 9003 §2), if the data
    /// holds a well-formed one. Invalid UTF-8 is replaced, never an error: it is only logged.
    pub fn shutdown_message(&self) -> Option<String> {
        if !matches!(
            self.subcode,
            ErrorSubcode::Cease(
                CeaseSubcode::AdministrativeShutdown | CeaseSubcode::AdministrativeReset
            )
        ) {
            return None;
        }
        let (&len, text) = self.data.split_first()?;
        // RFC 9003 §2: "... the Length field ... MUST NOT exceed the remaining data"; a mismatch means
        // the data is not a shutdown communication.
        let text = text.get(..usize::from(len))?;
        if text.is_empty() {
            return None;
        }
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        match (self.subcode.name(), self.subcode) {
            (Some(name), _) => write!(f, ": {name}")?,
            (None, ErrorSubcode::Unknown(value)) => write!(f, ": subcode {value}")?,
            (None, _) => {}
        }
        if let Some(message) = self.shutdown_message() {
            write!(f, ": {message:?}")?;
        }
        Ok(())
    }
}
