//! The lab's error type.

use std::path::PathBuf;

/// What went wrong while building the lab or driving a daemon.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {seconds:.1} s (killed)")]
    CommandTimeout { command: String, seconds: f64 },
    #[error("timed out after {seconds:.1} s waiting for {what}")]
    Timeout { what: String, seconds: f64 },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "binary `{name}` not found next to the test executable (looked in {dir}); build it first (cargo build --bins)"
    )]
    BinaryNotFound { name: String, dir: PathBuf },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("{0}")]
    Daemon(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::File {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        LabError::Parse {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}
