//! Sysctls under `/proc/sys`, read and written only when they differ, inside the target namespace
//! (`/proc/sys/net` shows the namespace of the thread that opens it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::fib::FibError;
use crate::netlink::in_netns;

/// What [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SysctlReport {
    pub written: usize,
    /// Paths that do not exist (an interface not there yet): skipped, not failed.
    pub missing: Vec<String>,
    /// (path, error) of the writes that failed.
    pub failures: Vec<(String, String)>,
}

/// Sets every `path` (relative to `/proc/sys`) to its value in the namespace at `netns`.
pub fn apply(
    netns: Option<&Path>,
    sysctls: &BTreeMap<String, String>,
) -> Result<SysctlReport, FibError> {
    in_netns(netns, || {
        let mut report = SysctlReport::default();
        for (path, value) in sysctls {
            let file = PathBuf::from("/proc/sys").join(path);
            match std::fs::read_to_string(&file) {
                Ok(current) if current.trim() == value => {}
                Ok(_) => match std::fs::write(&file, value) {
                    Ok(()) => report.written += 1,
                    Err(e) => report.failures.push((path.clone(), e.to_string())),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.missing.push(path.clone())
                }
                Err(e) => report.failures.push((path.clone(), e.to_string())),
            }
        }
        Ok(report)
    })
}
