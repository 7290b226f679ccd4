//! Packet captures with tcpdump inside a namespace (for byte fixtures and wire-level checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::run::wait_for;

/// A running `tcpdump -U -w FILE` on one interface of a namespace; dropping it stops tcpdump.
pub struct Capture {
    process: Process,
    path: PathBuf,
}

impl Capture {
    /// Captures packets matching `filter` (e.g. `tcp port 179`) on `ifname` inside `ns` into
    /// `path`; returns once tcpdump is listening.
    pub fn start(ns: &Netns, ifname: &str, filter: &str, path: &Path) -> Result<Capture> {
        let log = path.with_extension("tcpdump.log");
        let file = path.to_string_lossy();
        // -U: write each packet as it arrives, so the file is complete when we stop it.
        let mut process = ns.spawn(
            "tcpdump",
            "tcpdump",
            &["-U", "-n", "-i", ifname, "-w", &file, filter],
            &log,
        )?;
        let listening = wait_for(
            "tcpdump to listen",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if !process.is_running() {
                    return Some(false);
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("listening on").then_some(true)
            },
        )?;
        if !listening {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(LabError::Daemon(format!("tcpdump exited: {text}")));
        }
        Ok(Capture {
            process,
            path: path.to_path_buf(),
        })
    }

    /// Stops tcpdump (SIGTERM: it closes the file) and returns the capture file.
    pub fn stop(mut self) -> PathBuf {
        self.process.stop();
        self.path.clone()
    }
}
