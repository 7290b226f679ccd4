//! Memory figures of a daemon process from `/proc/<pid>/status`.

use anyhow::{Context, Result, anyhow};

/// Resident set size now (`VmRSS`) and its high-water mark (`VmHWM`) of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Memory {
    /// Reads the figures of one process.
    pub fn of_pid(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        Memory::parse_status(&status).with_context(|| format!("parse {path}"))
    }

    /// The sum over several processes (FRR: bgpd + zebra).
    pub fn of_pids(pids: &[u32]) -> Result<Memory> {
        pids.iter().try_fold(Memory::default(), |sum, &pid| {
            let one = Memory::of_pid(pid)?;
            Ok(Memory {
                rss_kib: sum.rss_kib + one.rss_kib,
                peak_rss_kib: sum.peak_rss_kib + one.peak_rss_kib,
            })
        })
    }

    fn parse_status(status: &str) -> Result<Memory> {
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .ok_or_else(|| anyhow!("no {name} line"))?;
            let kib = line.trim().trim_end_matches("kB").trim();
            kib.parse().with_context(|| format!("{name} {kib:?}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_rss_kib: field("VmHWM:")?,
        })
    }
}

/// KiB to MiB for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_and_high_water_mark() {
        let status = "Name:\tbird\nVmPeak:\t  200000 kB\nVmHWM:\t   94208 kB\nVmRSS:\t   90112 kB\nThreads:\t1\n";
        let memory = Memory::parse_status(status).unwrap();
        assert_eq!(
            memory,
            Memory {
                rss_kib: 90112,
                peak_rss_kib: 94208
            }
        );
    }

    #[test]
    fn missing_field_is_an_error() {
        assert!(Memory::parse_status("Name:\tx\nVmRSS:\t1 kB\n").is_err());
    }

    #[test]
    fn reads_this_process() {
        let memory = Memory::of_pid(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0);
        assert!(memory.peak_rss_kib >= memory.rss_kib);
    }
}
