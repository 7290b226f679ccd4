//! Exit codes that mean something, and errors printed as one line.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | usage: bad arguments or flags (clap's own code) |
//! | 3 | not found: the resource, peer or prefix does not exist |
//! | 4 | unreachable: reefd's socket or etcd cannot be reached |
//! | 5 | conflict: the object changed since it was read (stale apply) or already exists |
//! | 6 | invalid: the object failed validation; nothing was written |

use std::process::ExitCode;

/// What went wrong, as the exit code tells it to scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Error = 1,
    Usage = 2,
    NotFound = 3,
    Unreachable = 4,
    Conflict = 5,
    Invalid = 6,
}

/// An error whose exit code is not the generic 1. Put it at the root of an `anyhow` chain (or anywhere
/// in it): [`exit_code`] finds it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    pub failure: Failure,
    pub message: String,
}

impl Classified {
    /// An `anyhow::Error` with this failure kind and message.
    pub fn error(failure: Failure, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Classified {
            failure,
            message: message.into(),
        })
    }
}

/// The exit code of an error: the first classified cause in the chain, a datastore error's kind, or 1.
pub fn failure(error: &anyhow::Error) -> Failure {
    error
        .chain()
        .find_map(|cause| {
            if let Some(classified) = cause.downcast_ref::<Classified>() {
                return Some(classified.failure);
            }
            match cause.downcast_ref::<reef_datastore::Error>()? {
                reef_datastore::Error::NotFound => Some(Failure::NotFound),
                reef_datastore::Error::Unavailable(_) => Some(Failure::Unreachable),
                reef_datastore::Error::Conflict | reef_datastore::Error::AlreadyExists => {
                    Some(Failure::Conflict)
                }
                reef_datastore::Error::Invalid(_) => Some(Failure::Invalid),
                _ => None,
            }
        })
        .unwrap_or(Failure::Error)
}

/// Prints the error as one line (its causes joined by ": ", never a backtrace, whatever
/// `RUST_BACKTRACE` says) and returns its exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    // `{:#}` is the Display chain; only `{:?}` would print anyhow's captured backtrace.
    eprintln!("error: {error:#}");
    ExitCode::from(failure(error) as u8)
}

/// A panic is a bug, but the user still gets one line rather than a backtrace (exit code 101).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_string());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: reefctl failed{location}: {message} (a bug: please report it)");
    }));
}
