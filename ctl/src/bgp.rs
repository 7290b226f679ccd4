//! `reefctl bgp`: BGP sessions and routes of a running reefd, through its admin API (HTTP over the
//! unix socket; API in agent/README.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

#[derive(clap::Args)]
pub struct Args {
    /// The admin socket of reefd.
    #[arg(
        long,
        global = true,
        env = "REEF_SOCKET",
        default_value = "/run/reef/reefd.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Sessions, like `birdc show protocols`.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Routes received (Adj-RIB-In) from one peer or all.
    Routes {
        #[arg(long)]
        peer: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Start advertising a prefix to every peer.
    Advertise { prefix: String },
    /// Stop advertising a prefix.
    Withdraw { prefix: String },
    /// Ask a peer to re-send its routes (ROUTE-REFRESH).
    Refresh { peer: String },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(args))
}

async fn execute(args: Args) -> anyhow::Result<()> {
    let socket = args.socket.as_path();
    match args.command {
        Command::Status { output } => {
            let peers = get(socket, "/v1/bgp/peers").await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&peers)?),
                Output::Table => print!("{}", status_table(&peers)),
            }
        }
        Command::Routes { peer, output } => {
            let path = match &peer {
                Some(peer) => format!("/v1/bgp/routes?peer={peer}"),
                None => "/v1/bgp/routes".to_string(),
            };
            let routes = get(socket, &path).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&routes)?),
                Output::Table => print!("{}", routes_table(&routes)),
            }
        }
        Command::Advertise { prefix } => {
            call(
                socket,
                Method::POST,
                "/v1/bgp/prefixes",
                Some(json!({ "prefix": prefix })),
            )
            .await?;
            println!("advertising {prefix}");
        }
        Command::Withdraw { prefix } => {
            call(
                socket,
                Method::DELETE,
                "/v1/bgp/prefixes",
                Some(json!({ "prefix": prefix })),
            )
            .await?;
            println!("withdrawn {prefix}");
        }
        Command::Refresh { peer } => {
            call(
                socket,
                Method::POST,
                &format!("/v1/bgp/peers/{peer}/refresh"),
                None,
            )
            .await?;
            println!("ROUTE-REFRESH sent to {peer}");
        }
    }
    Ok(())
}

async fn get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    call(socket, Method::GET, path, None).await
}

/// One HTTP/1.1 request over the unix socket; a non-2xx answer becomes an error with reefd's message.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow!(
            "cannot reach reefd at {}: {e} (is reefd running? use --socket)",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with reefd failed")?;
    tokio::spawn(connection);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "reefd")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender
        .send_request(request)
        .await
        .context("request to reefd failed")?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading reefd's answer")?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    if status != StatusCode::OK {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        bail!("reefd: {message} (HTTP {status})");
    }
    Ok(value)
}

/// `2026-11-29T17:40:00.123Z` as `2026-11-29T17:40:00Z`: seconds are enough in a table, the API keeps
/// milliseconds.
fn whole_seconds(timestamp: String) -> String {
    match timestamp.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => timestamp,
    }
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) if s.is_empty() => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

fn status_table(peers: &Value) -> String {
    let rows: Vec<Vec<String>> = peers
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|p| {
                    vec![
                        text(p, "address"),
                        text(p, "remoteAs"),
                        text(p, "type"),
                        text(p, "state"),
                        whole_seconds(text(p, "since")),
                        format!(
                            "{}/{}",
                            text(p, "prefixesReceived"),
                            text(p, "prefixesAdvertised")
                        ),
                        text(p, "info"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "PEER",
            "AS",
            "TYPE",
            "STATE",
            "SINCE",
            "ROUTES IN/OUT",
            "INFO",
        ],
        &rows,
    )
}

fn routes_table(routes: &Value) -> String {
    let rows: Vec<Vec<String>> = routes
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    let communities: Vec<String> = ["communities", "largeCommunities"]
                        .iter()
                        .filter_map(|k| r.get(*k)?.as_array().cloned())
                        .flatten()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect();
                    vec![
                        text(r, "prefix"),
                        text(r, "nextHop"),
                        text(r, "peer"),
                        text(r, "asPath"),
                        text(r, "origin"),
                        text(r, "med"),
                        text(r, "localPref"),
                        if communities.is_empty() {
                            "-".into()
                        } else {
                            communities.join(" ")
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "PREFIX",
            "NEXT HOP",
            "PEER",
            "AS PATH",
            "ORIGIN",
            "MED",
            "LOCAL PREF",
            "COMMUNITIES",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_one_line_per_peer() {
        let peers = json!([{ "address": "198.51.100.2", "remoteAs": 65001, "type": "ebgp", "state": "Established",
            "since": "2026-11-29T17:40:00.123Z", "prefixesReceived": 3, "prefixesAdvertised": 2, "info": "Established" }]);
        let out = status_table(&peers);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("PEER"));
        assert!(
            lines[1].contains("198.51.100.2")
                && lines[1].contains("65001")
                && lines[1].contains("3/2")
        );
        assert!(lines[1].contains("2026-11-29T17:40:00Z "), "{}", lines[1]);
    }

    #[tokio::test]
    async fn unreachable_socket_names_the_path_and_the_fix() {
        let error = get(Path::new("/nonexistent/reefd.sock"), "/v1/bgp/peers")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot reach reefd at /nonexistent/reefd.sock"),
            "{error}"
        );
        assert!(error.contains("use --socket"), "{error}");
    }
}
