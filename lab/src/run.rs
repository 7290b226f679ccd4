//! Running commands with a time bound, polling with a time bound, finding the workspace binaries.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// The time bound of one short command (`ip`, `birdc`, `vtysh`, `gobgp`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion, capturing stdout and stderr; kills it (by pid) if it runs longer than
/// `timeout`. A non-zero exit is returned as `Ok` with its status: see [`run_ok`].
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    // The reader thread owns the child so both pipes are drained while we wait with a deadline.
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(|source| LabError::Spawn { command, source }),
        Err(_) => {
            // SAFETY: plain kill(2) on the pid of our own child, which is not yet reaped (the
            // reader thread is still waiting on it), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(LabError::CommandTimeout {
                command,
                seconds: timeout.as_secs_f64(),
            })
        }
    }
}

/// Runs `cmd` within [`COMMAND_TIMEOUT`] and returns its stdout; a non-zero exit is an error that
/// carries stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let output = run_bounded(cmd, COMMAND_TIMEOUT)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        Err(LabError::CommandFailed {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr,
        })
    }
}

/// Calls `probe` every `poll_interval` until it returns `Some`, at most for `timeout`.
/// Returns `None` when the time is up (the probe is always called at least once, and once more at
/// the deadline).
pub fn wait_until<T>(
    timeout: Duration,
    poll_interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(poll_interval.min(deadline - now));
    }
}

/// [`wait_until`] that names what it waited for in the error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    wait_until(timeout, poll_interval, probe).ok_or_else(|| LabError::Timeout {
        what: what.to_string(),
        seconds: timeout.as_secs_f64(),
    })
}

/// The path of a workspace binary (`reefd`, `reefctl`, `reef-cni`) built into the same target
/// profile directory as the running test (`target/<profile>/`; tests run from `target/<profile>/deps/`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LabError::file("current executable", e))?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::BinaryNotFound {
            name: name.to_string(),
            dir,
        })
    }
}

/// Whether this process runs as root (network namespaces need CAP_NET_ADMIN; we ask for root).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with guidance when not root. Tests that need it are marked
/// `#[ignore = "needs root: network namespaces"]`, so a non-root `cargo nextest run` skips them and
/// `scripts/test` run as root includes them (`--run-ignored all`).
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, veth links, routing daemons): run it as root with \
         `cargo nextest run -p reef-tests --run-ignored all`, or run scripts/test as root"
    );
}
