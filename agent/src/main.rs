//! reefd: the Reef node agent. Node mode (`--node-name`): BGP from the resources of the datastore,
//! live. Speaker mode (`--config`): a BGP speaker from a YAML file. Both drive the speaker through the
//! same desired-state path (`desired::BgpRunner`) and serve the admin API on a unix socket (see
//! README.md).

mod admin;
mod bfd;
mod config;
mod desired;
mod fib;
mod filters;
mod metrics;
mod node;
mod runtime;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use reef_datastore::{Datastore, EtcdConfig};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use runtime::{Runtime, Signalled, Signals};

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatastoreKind {
    Etcd,
    Kubernetes,
}

#[derive(Parser)]
#[command(
    name = "reefd",
    version,
    about = "The Reef node agent: node mode (--node-name, resources from the datastore) or speaker mode (--config, BGP from a YAML file)"
)]
struct Cli {
    /// Speaker mode: the YAML config file.
    #[arg(
        long,
        short = 'c',
        conflicts_with = "node_name",
        required_unless_present = "node_name"
    )]
    config: Option<PathBuf>,
    /// Node mode: this node's name (its ReefNode).
    #[arg(long, env = "REEF_NODE_NAME")]
    node_name: Option<String>,
    /// Node mode: where the resources are.
    #[arg(long, env = "REEF_DATASTORE", value_enum, default_value = "etcd")]
    datastore: DatastoreKind,
    /// Node mode, etcd: client URLs, comma separated.
    #[arg(
        long,
        env = "REEF_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// Node mode: how to find the node's IPv4 address: first-found, interface=<regex>,
    /// can-reach=<ip>, cidr=<cidr>[,<cidr>].
    #[arg(
        long,
        env = "REEF_IP_AUTODETECTION_METHOD",
        default_value = "first-found"
    )]
    ip_autodetection_method: String,
    /// Node mode: the node's IPv4 address with its prefix length (skips autodetection).
    #[arg(long, env = "REEF_NODE_IP")]
    node_ip: Option<Ipv4Net>,
    /// Node mode: the node's AS number, written to its ReefNode (default: the BGPConfiguration's).
    #[arg(long, env = "REEF_AS_NUMBER")]
    as_number: Option<u32>,
    /// Node mode: the namespace of the Secrets holding BGP passwords.
    #[arg(long, env = "REEF_SECRETS_NAMESPACE", default_value = "reef")]
    secrets_namespace: String,
    /// Node mode: the kernel table for learned routes.
    #[arg(long, env = "REEF_FIB_TABLE", default_value_t = reef_felix::fib::MAIN_TABLE)]
    fib_table: u32,
    /// Node mode: the admin API socket (speaker mode: `admin.socket` of the file).
    #[arg(
        long,
        env = "REEF_ADMIN_SOCKET",
        default_value = "/run/reef/reefd.sock"
    )]
    admin_socket: PathBuf,
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
    let signals = Signals::install()?;
    match (&cli.config, &cli.node_name) {
        (Some(path), _) => speaker_mode(&cli, path, signals).await,
        (None, Some(name)) => node_mode(&cli, name, signals).await,
        // clap requires one of them.
        (None, None) => bail!("give --config FILE (speaker mode) or --node-name NAME (node mode)"),
    }
}

async fn node_mode(cli: &Cli, name: &str, signals: Signals) -> anyhow::Result<()> {
    let datastore = match cli.datastore {
        DatastoreKind::Etcd => Datastore::etcd(EtcdConfig::new(cli.etcd_endpoints.clone()))
            .await
            .with_context(|| format!("cannot use etcd at {}", cli.etcd_endpoints.join(",")))?,
        DatastoreKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster or KUBECONFIG)")?;
            Datastore::kubernetes(client)
        }
    };
    let address = match cli.node_ip {
        Some(address) => node::AddressSource::Given(address),
        None => node::AddressSource::Detect(
            cli.ip_autodetection_method
                .parse()
                .context("--ip-autodetection-method")?,
        ),
    };
    node::run(
        node::NodeOptions {
            name: name.to_string(),
            datastore,
            address,
            as_number: cli.as_number,
            secrets_namespace: cli.secrets_namespace.clone(),
            fib_table: cli.fib_table,
            admin: runtime::AdminOptions {
                socket: admin::AdminSocket {
                    path: cli.admin_socket.clone(),
                    group: cli.admin_group.clone(),
                },
                health_listen: cli.health_listen,
            },
        },
        signals,
    )
    .await
}

async fn speaker_mode(
    cli: &Cli,
    path: &std::path::Path,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let mut config = config::Config::load(path)?;
    // The kernel table is read before the speaker starts: Reef routes left there by a previous run
    // make this start a graceful restart (they stay until the Loc-RIB has converged).
    let fib = match &config.fib {
        Some(fib) => Some(runtime::open_fib(fib.table).await?),
        None => None,
    };
    let restarting = fib.as_ref().is_some_and(|f| f.installed_routes() > 0);
    let desired = config.desired(restarting)?;
    let admin = runtime::AdminOptions {
        socket: admin::AdminSocket {
            path: config.admin.socket.clone(),
            group: cli.admin_group.clone(),
        },
        health_listen: cli.health_listen,
    };
    let mut runtime = Runtime::start(&desired, fib, &admin).await?;
    info!(
        router_id = %config.router_id, asn = config.as_number, peers = config.peers.len(),
        admin = %config.admin.socket.display(), "reefd started (speaker mode)"
    );
    loop {
        match signals.next().await {
            Signalled::Stop(name) => {
                info!("{name}: shutting down");
                break;
            }
            Signalled::Reload => {
                if let Some(reloaded) = reload(path, &mut runtime).await {
                    config = reloaded;
                }
            }
        }
    }
    runtime.stop(config.graceful_restart.is_some()).await;
    info!("reefd stopped");
    Ok(())
}

/// SIGHUP: reads the config file again and applies it live (peers added, removed and changed, routing
/// settings without a reset, prefixes). Returns the config now in effect, `None` when the file was
/// refused.
async fn reload(path: &std::path::Path, runtime: &mut Runtime) -> Option<config::Config> {
    let loaded = config::Config::load(path).and_then(|new| {
        let desired = new.desired(false)?;
        Ok((new, desired))
    });
    let (new, desired) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            warn!(error = format!("{e:#}"), "SIGHUP: config not reloaded");
            return None;
        }
    };
    match runtime.bgp.apply(&desired).await {
        Ok(applied) => info!(
            changed = applied.changes.len(),
            refused = applied.errors.len(),
            "SIGHUP: config applied"
        ),
        Err(e) => warn!(error = format!("{e:#}"), "SIGHUP: config partly applied"),
    }
    Some(new)
}
