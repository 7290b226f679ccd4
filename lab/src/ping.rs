//! A bounded background ping inside a namespace, to prove a data path kept forwarding while
//! something was restarted (`ping -c N -i INTERVAL`, summary parsed at the end).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::bgp::workdir;
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::Process;

/// A running `ping`: `-D -O` log a timestamped line for every reply that did not come back in time,
/// so a loss can be placed in time against the daemons' logs.
pub struct Ping {
    process: Process,
    log: PathBuf,
    count: u32,
    interval: Duration,
    _dir: tempfile::TempDir,
}

/// The end of a ping run.
#[derive(Debug, Clone)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
    /// Everything ping printed (per-reply lines, outstanding-reply lines, the summary).
    pub output: String,
}

impl PingSummary {
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }

    /// The lines that report a missing reply or an ICMP error (for failure messages).
    pub fn loss_lines(&self) -> Vec<&str> {
        self.output
            .lines()
            .filter(|l| {
                l.contains("no answer yet")
                    || l.contains("Unreachable")
                    || l.contains("unreachable")
            })
            .collect()
    }
}

impl Ping {
    /// Starts `ping -n -D -O -c COUNT -i INTERVAL -W 1 TARGET` inside `ns`.
    pub fn start(ns: &Netns, target: IpAddr, count: u32, interval: Duration) -> Result<Ping> {
        let dir = workdir("ping")?;
        let log = dir.path().join("ping.out");
        let interval_text = format!("{:.3}", interval.as_secs_f64());
        let count_text = count.to_string();
        let target_text = target.to_string();
        let process = ns.spawn(
            "ping",
            "ping",
            &[
                "-n",
                "-D",
                "-O",
                "-c",
                &count_text,
                "-i",
                &interval_text,
                "-W",
                "1",
                &target_text,
            ],
            &log,
        )?;
        Ok(Ping {
            process,
            log,
            count,
            interval,
            _dir: dir,
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// What ping printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for ping to send all its packets and exit (bounded: the run's length plus a margin),
    /// then parses the summary line.
    pub fn finish(mut self) -> Result<PingSummary> {
        let length = self.interval * self.count + Duration::from_secs(15);
        self.process.wait_timeout(length)?;
        let output = self.output();
        parse_summary(&output)
    }
}

/// `N packets transmitted, M received, ...`.
fn parse_summary(output: &str) -> Result<PingSummary> {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| LabError::parse("ping output", format!("no summary in {output:?}")))?;
    let number_before = |word: &str| -> Result<u32> {
        line.split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| LabError::parse("ping summary", line))
    };
    Ok(PingSummary {
        transmitted: number_before("transmitted")?,
        received: number_before("received")?,
        output: output.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary() {
        let out = "[1.0] 64 bytes from 10.65.1.2: icmp_seq=1 ttl=62 time=0.1 ms\n\
                   [1.1] no answer yet for icmp_seq=2\n\n--- 10.65.1.2 ping statistics ---\n\
                   800 packets transmitted, 798 received, +1 errors, 0.25% packet loss, time 40000ms\n";
        let s = parse_summary(out).unwrap();
        assert_eq!((s.transmitted, s.received, s.lost()), (800, 798, 2));
        assert_eq!(s.loss_lines(), ["[1.1] no answer yet for icmp_seq=2"]);
        assert!(parse_summary("nothing").is_err());
    }
}
