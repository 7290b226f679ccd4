//! reefd: the Reef node agent. Speaker mode: a BGP speaker from a YAML file, driven by an admin API
//! on a unix socket (see README.md).

mod admin;
mod config;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use reef_bgp::driver::Speaker;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
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
    let config = config::Config::load(&cli.config)?;
    let speaker = Speaker::start(config.speaker(), config.peers(), config.prefixes.clone())
        .await
        .with_context(|| {
            format!(
                "cannot start the BGP speaker (listen {:?})",
                config.speaker().listen
            )
        })?;
    let speaker = Arc::new(speaker);
    let admin = admin::serve(&config.admin.socket, speaker.clone()).await?;
    info!(
        router_id = %config.router_id, asn = config.as_number, peers = config.peers.len(),
        admin = %config.admin.socket.display(), "reefd started (speaker mode)"
    );

    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => info!("SIGINT: shutting down"),
    }
    // Cease/Administrative Shutdown to every peer before we go.
    speaker.shutdown().await;
    admin.abort();
    let _ = std::fs::remove_file(&config.admin.socket);
    info!("reefd stopped");
    Ok(())
}
