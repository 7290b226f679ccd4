//! The policy dataplane: one backend (nftables or iptables), writes retried with backoff, a periodic
//! resync that repairs drift, and counters for the agent to publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::exec::{CommandError, Runner};
use super::iptables::IptablesBackend;
use super::model::{Changes, PolicyProgram};
use super::nft::NftBackend;

/// Mark bit a policy's Allow sets (Calico-like bits in the upper half, clear of kube-proxy's 0xc000).
pub const ACCEPT_MARK: u32 = 0x0200_0000;
/// Mark bit a policy's Pass sets.
pub const PASS_MARK: u32 = 0x0400_0000;
/// Mask that clears both bits.
pub const CLEAR_MARKS: u32 = !(ACCEPT_MARK | PASS_MARK);
/// TCP ports to the host that no policy blocks (SSH, BGP, etcd, Kubernetes API).
pub const FAILSAFE_TCP_PORTS: [u16; 5] = [22, 179, 2379, 2380, 6443];

/// Why a backend write or read failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The kernel's state could not be read back.
    #[error("cannot read the rules back: {0}")]
    Read(String),
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// One `inet reef` nftables table.
    Nftables,
    /// iptables-restore + ipset, chains prefixed `reef-`.
    Iptables,
}

impl BackendKind {
    /// nftables when `nft` works in the namespace, else iptables.
    pub fn detect(runner: &Runner) -> BackendKind {
        if NftBackend::available(runner) {
            BackendKind::Nftables
        } else {
            BackendKind::Iptables
        }
    }
}

/// Counters the agent publishes (as Prometheus counters).
#[derive(Debug, Default)]
pub struct PolicyCounters {
    /// Successful writes.
    pub writes: AtomicU64,
    /// Failed write attempts (each retry counts).
    pub write_failures: AtomicU64,
    /// Operations written (set elements, rules, map elements...).
    pub operations: AtomicU64,
    /// Resyncs run.
    pub resyncs: AtomicU64,
    /// Resyncs that found drift and repaired it.
    pub drift_repairs: AtomicU64,
    /// Objects reported invalid in the last program.
    pub invalid_objects: AtomicU64,
}

impl PolicyCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Retry policy for failed writes.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in total (>= 1).
    pub attempts: u32,
    /// Pause before the first retry; doubled each time.
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_backoff: Duration::from_millis(50),
        }
    }
}

enum Backend {
    Nft(NftBackend),
    Iptables(IptablesBackend),
}

/// Policy and NAT rules of one network namespace, kept equal to the compiled program.
///
/// Blocking (a write is a few short commands); call it from `spawn_blocking` in async code.
pub struct PolicyDataplane {
    backend: Backend,
    counters: Arc<PolicyCounters>,
    retry: Retry,
    resync_interval: Duration,
    last_resync: Option<Instant>,
}

impl PolicyDataplane {
    /// A dataplane for the namespace `runner` runs in, with the given backend.
    pub fn new(kind: BackendKind, runner: Runner) -> PolicyDataplane {
        let backend = match kind {
            BackendKind::Nftables => Backend::Nft(NftBackend::new(runner)),
            BackendKind::Iptables => Backend::Iptables(IptablesBackend::new(runner)),
        };
        PolicyDataplane {
            backend,
            counters: Arc::default(),
            retry: Retry::default(),
            resync_interval: Duration::from_secs(60),
            last_resync: None,
        }
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how often [`PolicyDataplane::tick`] resyncs.
    pub fn with_resync_interval(mut self, interval: Duration) -> Self {
        self.resync_interval = interval;
        self
    }

    /// The counters (shared with whoever publishes them).
    pub fn counters(&self) -> Arc<PolicyCounters> {
        self.counters.clone()
    }

    /// Writes what `changes` names (everything on the first call). Retries with backoff; a failed
    /// write makes the next attempt a full resync. Returns the operations written.
    pub fn apply(
        &mut self,
        program: &PolicyProgram,
        changes: &Changes,
    ) -> Result<usize, BackendError> {
        self.counters
            .invalid_objects
            .store(program.errors.len() as u64, Ordering::Relaxed);
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let result = match &mut self.backend {
                Backend::Nft(b) => b.sync(program, changes),
                Backend::Iptables(b) => b.sync(program, changes),
            };
            match result {
                Ok(n) => {
                    PolicyCounters::add(&self.counters.writes, 1);
                    PolicyCounters::add(&self.counters.operations, n as u64);
                    return Ok(n);
                }
                Err(e) => {
                    PolicyCounters::add(&self.counters.write_failures, 1);
                    tracing::warn!(attempt, error = %e, "policy write failed");
                    if attempt >= self.retry.attempts.max(1) {
                        return Err(e);
                    }
                    std::thread::sleep(backoff);
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// Reads the kernel's state and repairs any difference from `program` (deleted rules, set or map
    /// elements, chains). Returns the operations written (0: no drift).
    pub fn resync(&mut self, program: &PolicyProgram) -> Result<usize, BackendError> {
        PolicyCounters::add(&self.counters.resyncs, 1);
        self.last_resync = Some(Instant::now());
        let result = match &mut self.backend {
            Backend::Nft(b) => b.resync(program),
            Backend::Iptables(b) => b.resync(program),
        };
        match result {
            Ok(n) => {
                if n > 0 {
                    PolicyCounters::add(&self.counters.drift_repairs, 1);
                    tracing::info!(operations = n, "policy resync repaired drift");
                }
                PolicyCounters::add(&self.counters.operations, n as u64);
                Ok(n)
            }
            Err(e) => {
                PolicyCounters::add(&self.counters.write_failures, 1);
                Err(e)
            }
        }
    }

    /// Resyncs when the interval has passed since the last resync; call it from the agent's timer.
    pub fn tick(&mut self, now: Instant, program: &PolicyProgram) -> Result<usize, BackendError> {
        match self.last_resync {
            Some(last) if now.duration_since(last) < self.resync_interval => Ok(0),
            _ => self.resync(program),
        }
    }

    /// When the next resync is due.
    pub fn next_resync(&self) -> Option<Instant> {
        self.last_resync.map(|t| t + self.resync_interval)
    }

    /// Removes every rule, chain and set of ours (nothing else).
    pub fn remove(&mut self) -> Result<(), BackendError> {
        match &mut self.backend {
            Backend::Nft(b) => b.remove(),
            Backend::Iptables(b) => b.remove(),
        }
    }
}
