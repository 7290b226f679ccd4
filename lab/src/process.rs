//! A guard for a daemon process: killed by pid on drop.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::run::{describe, wait_until};

/// How long a stopped daemon gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A running process we started (or adopted from a pid file). Dropping it stops it: SIGCONT (in
/// case a test froze it), SIGTERM, a bounded wait, then SIGKILL.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: libc::pid_t,
    /// `Some` when it is our child (so we reap it); `None` for a pid adopted from a pid file.
    child: Option<Child>,
    exited: bool,
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Process> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::file(log, e))?;
        let err = out.try_clone().map_err(|e| LabError::file(log, e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: describe(&cmd),
                source,
            })?;
        tracing::debug!(name, pid = child.id(), command = %describe(&cmd), "started");
        Ok(Process {
            name: name.to_string(),
            pid: child.id() as libc::pid_t,
            child: Some(child),
            exited: false,
        })
    }

    /// Takes charge of a process that is not our child (a daemon that forked), by pid.
    pub fn adopt(name: &str, pid: libc::pid_t) -> Process {
        Process {
            name: name.to_string(),
            pid,
            child: None,
            exited: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether the process is still alive (a zombie child counts as exited).
    pub fn is_running(&mut self) -> bool {
        if self.exited {
            return false;
        }
        let running = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            // SAFETY: kill(pid, 0) only checks that the pid exists.
            None => unsafe { libc::kill(self.pid, 0) == 0 },
        };
        if !running {
            self.exited = true;
        }
        running
    }

    /// Sends `signal` to the process (e.g. SIGSTOP to freeze a peer, SIGCONT to thaw it).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        if self.exited {
            return Err(LabError::Daemon(format!("{} has exited", self.name)));
        }
        // SAFETY: kill(2) on a pid we started and have not reaped (exited is false).
        if unsafe { libc::kill(self.pid, signal) } == 0 {
            Ok(())
        } else {
            Err(LabError::Daemon(format!(
                "kill({}, {signal}) for {}: {}",
                self.pid,
                self.name,
                std::io::Error::last_os_error()
            )))
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but sends nothing.
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Waits at most `timeout` for the process to exit by itself; kills it (by pid) when the time
    /// is up. Returns the exit status when it is our child.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let status = wait_until(timeout, Duration::from_millis(20), || self.try_status());
        match status {
            Some(status) => Ok(status),
            None => {
                self.kill();
                Err(LabError::Timeout {
                    what: format!("{} (pid {}) to exit; killed it", self.name, self.pid),
                    seconds: timeout.as_secs_f64(),
                })
            }
        }
    }

    /// `Some(status)` once exited (status only for our own child).
    fn try_status(&mut self) -> Option<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = true;
                    Some(Some(status))
                }
                Ok(None) => None,
                Err(_) => {
                    self.exited = true;
                    Some(None)
                }
            },
            None => (!self.is_running()).then_some(None),
        }
    }

    /// Stops the process: SIGCONT, SIGTERM, wait up to a few seconds, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited {
            return;
        }
        let _ = self.signal(libc::SIGCONT);
        let _ = self.signal(libc::SIGTERM);
        if wait_until(TERM_GRACE, Duration::from_millis(20), || self.try_status()).is_none() {
            self.kill();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        let _ = self.signal(libc::SIGKILL);
        match &mut self.child {
            Some(child) => {
                let _ = child.wait();
            }
            None => {
                // Not our child: it is reaped by its parent; give it a moment to disappear.
                wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
                    (!self.is_running()).then_some(())
                });
            }
        }
        self.exited = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a pid file written by a daemon, waiting (bounded) for it to appear.
pub fn read_pid_file(path: &Path, timeout: Duration) -> Result<libc::pid_t> {
    crate::run::wait_for(
        &format!("pid file {}", path.display()),
        timeout,
        Duration::from_millis(20),
        || {
            std::fs::read_to_string(path)
                .ok()?
                .trim()
                .parse::<libc::pid_t>()
                .ok()
        },
    )
}
