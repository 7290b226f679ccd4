//! reefd: the Reef node agent. Speaker mode: a BGP speaker from a YAML file, driven by an admin API
//! on a unix socket (see README.md).

mod admin;
mod bfd;
mod config;
mod fib;
mod filters;
mod metrics;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use reef_bgp::driver::Speaker;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "reefd",
    version,
    about = "The Reef node agent (speaker mode: BGP from a YAML config)"
)]
struct Cli {
    /// The YAML config file.
    #[arg(long, short = 'c')]
    config: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or tracing filter; RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Group of the admin socket (name or gid): its members may use reefctl bgp/node.
    #[arg(long, env = "REEF_ADMIN_GROUP")]
    admin_group: Option<String>,
    /// Serve /healthz, /readyz and /metrics over HTTP here (e.g. 0.0.0.0:9099).
    #[arg(long, env = "REEF_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
}

fn init_logging(cli: &Cli) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cli.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let mut config = config::Config::load(&cli.config)?;

    // The kernel table is read before the speaker starts: Reef routes left there by a previous run
    // make this start a graceful restart (they stay until the Loc-RIB has converged).
    let fib = match &config.fib {
        Some(fib) => {
            let table = fib.table;
            let fib = tokio::task::spawn_blocking(move || fib::Fib::open(table))
                .await
                .context("the FIB task failed")?
                .with_context(|| format!("cannot read the kernel routing table {table}"))?;
            Some(fib)
        }
        None => None,
    };
    let left_over = fib.as_ref().map_or(0, fib::Fib::installed_routes);
    let restarting = left_over > 0;
    if restarting {
        info!(
            routes = left_over,
            "Reef routes found in the kernel: they stay until every peer's End-of-RIB"
        );
    }

    let speaker_config = config.speaker(restarting);
    let listen = speaker_config.listen;
    let speaker = Speaker::start(speaker_config, config.peers()?, config.prefixes.clone())
        .await
        .with_context(|| format!("cannot start the BGP speaker (listen {listen:?})"))?;
    let speaker = Arc::new(speaker);
    let fib_stats = fib.as_ref().map(fib::Fib::stats);
    let fib_task = match fib {
        Some(fib) => {
            let updates = speaker
                .take_fib_updates()
                .context("the speaker gives no FIB updates")?;
            Some(fib::FibTask::start(fib, updates))
        }
        None => None,
    };
    let bfd = bfd::start(speaker.clone(), config.bfd_peers())?;
    let admin_state = admin::AdminState {
        speaker: speaker.clone(),
        fib: fib_stats,
        metrics: Arc::new(metrics::Metrics::new()),
        // Speaker mode has no datastore: ready once the speaker, FIB task and BFD run.
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    };
    let admin_socket = admin::AdminSocket {
        path: config.admin.socket.clone(),
        group: cli.admin_group.clone(),
    };
    let admin = admin::serve(&admin_socket, admin_state.clone()).await?;
    let health = match cli.health_listen {
        Some(address) => Some(admin::serve_health(address, admin_state).await?.0),
        None => None,
    };
    info!(
        router_id = %config.router_id, asn = config.as_number, peers = config.peers.len(),
        admin = %config.admin.socket.display(), "reefd started (speaker mode)"
    );

    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let admin_socket = config.admin.socket.clone();
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                info!("SIGTERM: shutting down");
                break;
            }
            _ = interrupt.recv() => {
                info!("SIGINT: shutting down");
                break;
            }
            _ = hangup.recv() => {
                if let Some(reloaded) = reload(&cli.config, &config, &speaker) {
                    config = reloaded;
                }
            }
        }
    }
    bfd.stop().await;
    let graceful_restart = config.graceful_restart.is_some();
    if graceful_restart {
        // Sessions closed without NOTIFICATION: peers keep our routes (and we keep theirs in the
        // kernel) for the restart time.
        speaker.shutdown_for_restart().await;
    } else {
        // Cease/Administrative Shutdown to every peer before we go.
        speaker.shutdown().await;
    }
    if let Some(fib_task) = fib_task {
        fib_task.stop(!graceful_restart).await;
    }
    admin.abort();
    if let Some(health) = health {
        health.abort();
    }
    let _ = std::fs::remove_file(&admin_socket);
    info!("reefd stopped");
    Ok(())
}

/// SIGHUP: reads the config file again and applies peers' routing changes (filters, communities,
/// route reflection, next hop mode, limits) without resetting sessions; other changes are logged as
/// needing a restart. Returns the config now in effect, `None` when the file was refused.
fn reload(
    path: &std::path::Path,
    running: &config::Config,
    speaker: &Speaker,
) -> Option<config::Config> {
    let loaded = config::Config::load(path)
        .and_then(|new| running.reload(&new).map(|changes| (changes, new)));
    let (changes, new) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!(error = format!("{e:#}"), "SIGHUP: config not reloaded");
            return None;
        }
    };
    for (address, routing) in changes.routing {
        match speaker.set_peer_routing(address, routing) {
            Ok(()) => info!(peer = %address, "SIGHUP: peer routing updated"),
            Err(e) => warn!(peer = %address, error = %e, "SIGHUP: peer routing not updated"),
        }
    }
    for change in &changes.needs_restart {
        warn!(
            change,
            "SIGHUP: this change takes effect at the next restart"
        );
    }
    Some(new)
}
