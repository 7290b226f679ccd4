//! `reefctl node status`: this node's BGP sessions like `birdc show protocols` (from reefd's admin API),
//! and its ReefNode status from the datastore when one is given.

use std::path::PathBuf;

use anyhow::Context;
use reef_crds::ReefNode;
use serde_json::{Value, json};

use crate::exit::{Classified, Failure};
use crate::output::{Format, structured, table, text, whole_seconds};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// BGP sessions (name, type, state, since, info), and the ReefNode status with --etcd-endpoints.
    Status {
        /// The admin socket of reefd.
        #[arg(long, env = "REEF_SOCKET", default_value = "/run/reef/reefd.sock")]
        socket: PathBuf,
        /// etcd client URLs (comma separated): also show the node's ReefNode status.
        #[arg(long, env = "REEF_ETCD_ENDPOINTS", value_delimiter = ',')]
        etcd_endpoints: Option<Vec<String>>,
        /// The node's name (default: this host's name).
        #[arg(long, env = "REEF_NODE_NAME")]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        Command::Status {
            socket,
            etcd_endpoints,
            node,
            output,
        } => runtime.block_on(status(socket, etcd_endpoints, node, output)),
    }
}

async fn status(
    socket: PathBuf,
    etcd_endpoints: Option<Vec<String>>,
    node: Option<String>,
    output: Format,
) -> anyhow::Result<()> {
    // reefd down is exactly when the ReefNode status helps: read both, then report.
    let peers = crate::bgp::get(&socket, "/v1/bgp/peers").await;
    let reef_node = match &etcd_endpoints {
        Some(endpoints) => {
            let name = match node {
                Some(name) => name,
                None => host_name()?,
            };
            let datastore = crate::etcd::connect(endpoints).await?;
            let node = datastore
                .store::<ReefNode>()
                .get(None, &name)
                .await
                .with_context(|| format!("reading ReefNode {name}"))?
                .ok_or_else(|| {
                    Classified::error(
                        Failure::NotFound,
                        format!("ReefNode {name} not found: has reefd registered this node? (list them: reefctl get reefnodes; pick one with --node)"),
                    )
                })?;
            Some(serde_json::to_value(&node)?)
        }
        None => None,
    };
    match output {
        Format::Table => {
            if let Ok(peers) = &peers {
                print!("{}", protocols_table(peers));
            }
            if let Some(node) = &reef_node {
                if peers.is_ok() {
                    println!();
                }
                print!("{}", reef_node_text(node));
            }
        }
        format => {
            let peers = peers.as_ref().ok().cloned();
            print!(
                "{}",
                structured(&json!({ "peers": peers, "reefNode": reef_node }), format)?
            );
        }
    }
    peers.map(|_| ())
}

fn host_name() -> anyhow::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .context("cannot read this host's name: give --node NAME")
}

/// Like `birdc show protocols`: one line per session, the last error in the info column.
pub fn protocols_table(peers: &Value) -> String {
    let rows: Vec<Vec<String>> = peers
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|peer| {
            let info = text(peer, "info");
            let info = match peer.get("lastError").and_then(Value::as_str) {
                Some(error) if !info.contains(error) => format!("{info} (last error: {error})"),
                _ => info,
            };
            vec![
                text(peer, "address"),
                text(peer, "type"),
                text(peer, "state"),
                whole_seconds(text(peer, "since")),
                info,
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "STATE", "SINCE", "INFO"], &rows)
}

/// The ReefNode's status: summary line, then its sessions.
fn reef_node_text(node: &Value) -> String {
    let status = node.get("status").cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "ReefNode {}: sessions {} established, {} programmed routes, last error: {}\n",
        text(&node["metadata"], "name"),
        text(&status, "sessionSummary"),
        status
            .get("programmedRoutes")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        text(&status, "lastError"),
    );
    let sessions = status
        .get("sessions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !sessions.is_empty() {
        let rows: Vec<Vec<String>> = sessions
            .iter()
            .map(|s| {
                vec![
                    text(s, "peer"),
                    text(s, "type"),
                    text(s, "state"),
                    whole_seconds(text(s, "since")),
                    format!("{}/{}", text(s, "prefixesIn"), text(s, "prefixesOut")),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PEER", "TYPE", "STATE", "SINCE", "PREFIXES IN/OUT"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_table_shows_the_last_error_beside_the_info() {
        let peers = json!([
            { "address": "198.51.100.2", "type": "ebgp", "state": "Established",
              "since": "2026-11-29T17:40:00.123Z", "info": "Established", "lastError": null },
            { "address": "198.51.100.3", "type": "ibgp", "state": "Active",
              "since": "2026-11-29T17:41:00.000Z", "info": "connect: Connection refused",
              "lastError": "received NOTIFICATION: Cease / Administrative Shutdown" }
        ]);
        let out = protocols_table(&peers);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "TYPE", "STATE", "SINCE", "INFO"]
        );
        assert!(
            lines[1]
                .starts_with("198.51.100.2  ebgp  Established  2026-11-29T17:40:00Z  Established"),
            "{out}"
        );
        assert!(lines[2].ends_with("connect: Connection refused (last error: received NOTIFICATION: Cease / Administrative Shutdown)"), "{out}");
    }

    #[test]
    fn reef_node_text_lists_the_sessions() {
        let node = json!({ "metadata": { "name": "node-a" }, "status": {
            "sessionSummary": "1/1", "programmedRoutes": 7,
            "sessions": [{ "peer": "198.51.100.1", "type": "GlobalPeer", "state": "Established",
                           "since": "2026-11-29T17:40:00Z", "prefixesIn": 3, "prefixesOut": 2 }] } });
        let out = reef_node_text(&node);
        assert!(
            out.starts_with(
                "ReefNode node-a: sessions 1/1 established, 7 programmed routes, last error: -\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("198.51.100.1  GlobalPeer  Established  2026-11-29T17:40:00Z  3/2"),
            "{out}"
        );
    }
}
