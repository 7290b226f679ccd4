//! The etcd datastore flags shared by the commands that read or write resources.

use anyhow::Context;
use reef_datastore::{Datastore, EtcdConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        global = true,
        env = "REEF_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
}

impl EtcdArgs {
    /// The datastore on these endpoints (connects lazily: an unreachable etcd shows on the first call as
    /// `Unavailable`, exit code 4).
    pub async fn connect(&self) -> anyhow::Result<Datastore> {
        connect(&self.etcd_endpoints).await
    }
}

pub async fn connect(endpoints: &[String]) -> anyhow::Result<Datastore> {
    Datastore::etcd(EtcdConfig::new(endpoints.to_vec()))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))
}
