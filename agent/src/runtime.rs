//! What both modes run: the kernel route programmer (opened before the speaker, so routes left by a
//! previous run make the start a graceful restart), the speaker with its BFD sessions
//! ([`BgpRunner`]), and the admin API; and the signals that stop them.
//!
//! Learned routes reach the kernel through one seam: `Speaker::take_fib_updates()` (the Loc-RIB's
//! selections) consumed by [`fib::FibTask`]. When felix owns every Reef route, this stream goes to
//! felix's model instead and `fib` leaves reefd.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin;
use crate::desired::{BgpRunner, DesiredBgp};
use crate::fib::{self, FibStats, FibTask};

/// Reads the Reef routes of `table` left by a previous run (blocking netlink, on the blocking pool).
pub async fn open_fib(table: u32) -> anyhow::Result<fib::Fib> {
    let fib = tokio::task::spawn_blocking(move || fib::Fib::open(table))
        .await
        .context("the FIB task failed")?
        .with_context(|| format!("cannot read the kernel routing table {table}"))?;
    let left_over = fib.installed_routes();
    if left_over > 0 {
        info!(
            routes = left_over,
            "Reef routes found in the kernel: they stay until every peer's End-of-RIB"
        );
    }
    Ok(fib)
}

/// Where the admin API and the health endpoints are served.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// The unix socket of the full API (mode 0660, its group may change routing).
    pub socket: admin::AdminSocket,
    /// Optional HTTP listener for `/healthz`, `/readyz` and `/metrics` only.
    pub health_listen: Option<SocketAddr>,
}

/// The running speaker, kernel routes and admin API.
pub struct Runtime {
    pub bgp: BgpRunner,
    fib: Option<FibTask>,
    pub fib_stats: Option<Arc<FibStats>>,
    admin: JoinHandle<()>,
    health: Option<JoinHandle<()>>,
    admin_options: AdminOptions,
}

impl Runtime {
    /// Starts the speaker with `desired` (peers and prefixes applied), the route programmer on `fib`
    /// and the admin API on `admin_socket`.
    pub async fn start(
        desired: &DesiredBgp,
        fib: Option<fib::Fib>,
        admin_options: &AdminOptions,
    ) -> anyhow::Result<Runtime> {
        let listen = desired.speaker.listen;
        let mut bgp = BgpRunner::start(desired)
            .await
            .with_context(|| format!("cannot start the BGP speaker (listen {listen:?})"))?;
        let fib_stats = fib.as_ref().map(fib::Fib::stats);
        let fib = match fib {
            Some(fib) => {
                let updates = bgp
                    .speaker
                    .take_fib_updates()
                    .context("the speaker gives no FIB updates")?;
                Some(FibTask::start(fib, updates))
            }
            None => None,
        };
        bgp.apply(desired).await?;
        let state = admin::AdminState {
            speaker: bgp.speaker.clone(),
            fib: fib_stats.clone(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            // Ready once the speaker and the route programmer run with the desired state applied.
            ready: Arc::new(AtomicBool::new(true)),
        };
        let admin = admin::serve(&admin_options.socket, state.clone()).await?;
        let health = match admin_options.health_listen {
            Some(address) => Some(admin::serve_health(address, state).await?.0),
            None => None,
        };
        Ok(Runtime {
            bgp,
            fib,
            fib_stats,
            admin,
            health,
            admin_options: admin_options.clone(),
        })
    }

    /// Stops everything. With `graceful_restart` the sessions close without NOTIFICATION and the
    /// kernel routes stay (peers and we keep forwarding until the next start); otherwise Cease and the
    /// routes are removed.
    pub async fn stop(self, graceful_restart: bool) {
        self.bgp.stop(graceful_restart).await;
        if let Some(fib) = self.fib {
            fib.stop(!graceful_restart).await;
        }
        self.admin.abort();
        if let Some(health) = self.health {
            health.abort();
        }
        let _ = std::fs::remove_file(&self.admin_options.socket.path);
    }
}

/// What a signal asks for.
pub enum Signalled {
    Stop(&'static str),
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
            hangup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    pub async fn next(&mut self) -> Signalled {
        tokio::select! {
            _ = self.terminate.recv() => Signalled::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signalled::Stop("SIGINT"),
            _ = self.hangup.recv() => Signalled::Reload,
        }
    }
}
