//! The thin FIB driver on one [`NetlinkSocket`] (batched requests closed by a barrier, see there).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::codec::{self, Ack, InvalidRoute, Reply};
use super::diff::{FibDiff, FibOp};
use super::model::{Route, RouteKey};
use crate::netlink::{DUMP_ATTEMPTS, NetlinkSocket};

/// A failure of the netlink driver itself (not of one route: see [`RouteFailure`]).
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
    pub(crate) fn kernel(what: impl Into<String>, ack: Ack) -> FibError {
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
    socket: NetlinkSocket,
}

impl FibProgrammer {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<FibProgrammer, FibError> {
        Ok(FibProgrammer {
            socket: NetlinkSocket::open()?,
        })
    }

    /// Opens the socket inside the network namespace at `path` (e.g. `/run/netns/NAME`); it stays
    /// bound to that namespace wherever it is used from. The calling thread does not change
    /// namespace.
    pub fn open_in_netns(path: impl AsRef<Path>) -> Result<FibProgrammer, FibError> {
        Ok(FibProgrammer {
            socket: NetlinkSocket::open_in_netns(path)?,
        })
    }

    /// Requests per datagram, sized from the socket buffers the kernel granted.
    pub fn batch_size(&self) -> usize {
        self.socket.batch_size()
    }

    /// The index of interface `name` in this programmer's namespace.
    pub fn link_index(&mut self, name: &str) -> Result<u32, FibError> {
        let sequence = self.socket.sequence();
        codec::encode_get_link(name, sequence, self.socket.start_datagram());
        self.socket.send()?;
        let mut ifindex = None;
        loop {
            for reply in self.socket.receive()? {
                match reply {
                    Reply::Message {
                        message: RouteNetlinkMessage::NewLink(link),
                        ..
                    } => ifindex = Some(link.header.index),
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
        let sequence = self.socket.sequence();
        codec::encode_dump(family, table, sequence, self.socket.start_datagram());
        self.socket.send()?;
        let mut interrupted = false;
        loop {
            for reply in self.socket.receive()? {
                match reply {
                    Reply::Message {
                        message: RouteNetlinkMessage::NewRoute(message),
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
        for chunk in ops.chunks(self.socket.batch_size()) {
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
        let first = self.socket.sequence();
        let datagram = self.socket.start_datagram();
        for (i, op) in ops.iter().enumerate() {
            let sequence = first.wrapping_add(i as u32);
            if let Err(invalid) = codec::encode_op(op, sequence, datagram) {
                tracing::debug!(?op, error = %invalid, "route not sent");
                failures.push(RouteFailure {
                    op: ops[i].clone(),
                    error: invalid.into(),
                });
            }
        }
        let barrier = first.wrapping_add(ops.len() as u32);
        codec::encode_barrier(barrier, datagram);
        self.socket.skip_sequences(ops.len() as u32);
        self.socket.send()?;
        loop {
            for reply in self.socket.receive()? {
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
}
