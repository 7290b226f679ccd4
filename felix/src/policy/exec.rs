//! Running `nft`, `iptables-restore` and `ipset` with a time bound, optionally inside a named network
//! namespace (`ip netns exec`).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("{program}: cannot start: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program exited with a failure.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The program did not finish in time (it was killed).
    #[error("{program}: no answer within {timeout:?}")]
    Timeout {
        /// The program.
        program: String,
        /// The bound.
        timeout: Duration,
    },
}

/// Where commands run: this namespace, or `ip netns exec <name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runner {
    /// A named network namespace (`/run/netns/<name>`), or `None` for the caller's own.
    pub netns: Option<String>,
    /// Bound on each command.
    pub timeout: Duration,
}

impl Runner {
    /// Commands in the caller's namespace, 30 s bound.
    pub fn local() -> Runner {
        Runner {
            netns: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Commands in the named namespace, 30 s bound.
    pub fn in_netns(name: &str) -> Runner {
        Runner {
            netns: Some(name.to_string()),
            timeout: Duration::from_secs(30),
        }
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }

    /// Runs `program args` with `input` on stdin; returns stdout.
    pub fn run(&self, program: &str, args: &[&str], input: &[u8]) -> Result<String, CommandError> {
        let spawn_error = |source| CommandError::Spawn {
            program: program.to_string(),
            source,
        };
        let mut child = self
            .command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        // Readers on their own threads, so a full pipe never blocks the child while we wait for it.
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = stdout.as_mut() {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = stderr.as_mut() {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        if let Some(mut stdin) = child.stdin.take() {
            // A child that exits early closes the pipe; its exit status tells the story.
            let _ = stdin.write_all(input);
        }
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_micros(200);
        let status = loop {
            match child.try_wait().map_err(spawn_error)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CommandError::Timeout {
                        program: program.to_string(),
                        timeout: self.timeout,
                    });
                }
                None => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(CommandError::Failed {
                program: program.to_string(),
                status: status.to_string(),
                stderr: stderr.trim().chars().take(2000).collect(),
            });
        }
        Ok(stdout)
    }
}
