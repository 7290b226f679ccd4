//! `reefctl bgp`: BGP sessions and routes of a running reefd, through its admin API (HTTP over the
//! unix socket; API in agent/README.md).

use std::path::{Path, PathBuf};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use crate::exit::{Classified, Failure};
use crate::output::{Format, structured, table, text, whole_seconds};

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

#[derive(clap::Subcommand)]
enum Command {
    /// Sessions, like `birdc show protocols`.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Routes received (Adj-RIB-In) from one peer or all.
    Routes {
        #[arg(long)]
        peer: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Start advertising a prefix to every peer.
    Advertise { prefix: String },
    /// Stop advertising a prefix.
    Withdraw { prefix: String },
    /// Ask a peer to re-send its routes (ROUTE-REFRESH).
    Refresh { peer: String },
    /// The Loc-RIB (selected routes), or every path of one prefix with its verdict and the reason.
    Rib {
        /// A prefix (10.0.0.0/24) or an address (its host prefix).
        prefix: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
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
                Format::Table => print!("{}", status_table(&peers)),
                format => print!("{}", structured(&peers, format)?),
            }
        }
        Command::Routes { peer, output } => {
            let path = match &peer {
                Some(peer) => format!("/v1/bgp/routes?peer={peer}"),
                None => "/v1/bgp/routes".to_string(),
            };
            let routes = get(socket, &path).await?;
            match output {
                Format::Table => print!("{}", routes_table(&routes)),
                format => print!("{}", structured(&routes, format)?),
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
        Command::Rib { prefix, output } => {
            let path = match &prefix {
                Some(prefix) => format!("/v1/bgp/rib/{}", prefix.replace('/', "%2F")),
                None => "/v1/bgp/rib".to_string(),
            };
            let rib = get(socket, &path).await?;
            match (output, &prefix) {
                (Format::Table, Some(prefix)) => print!("{}", paths_text(prefix, &rib)),
                (Format::Table, None) => print!("{}", rib_table(&rib)),
                (format, _) => print!("{}", structured(&rib, format)?),
            }
        }
    }
    Ok(())
}

pub async fn get(socket: &Path, path: &str) -> anyhow::Result<Value> {
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
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "the admin socket is mode 0660: run as root or as a member of its group"
        } else {
            "is reefd running? use --socket"
        };
        Classified::error(
            Failure::Unreachable,
            format!("cannot reach reefd at {}: {e} ({hint})", socket.display()),
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
        let failure = match status {
            StatusCode::NOT_FOUND => Failure::NotFound,
            StatusCode::CONFLICT => Failure::Conflict,
            StatusCode::BAD_REQUEST => Failure::Invalid,
            _ => Failure::Error,
        };
        return Err(Classified::error(
            failure,
            format!("reefd: {message} (HTTP {status})"),
        ));
    }
    Ok(value)
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

/// Received routes, then (when there are any) the received routes that were ignored, with the reason.
fn routes_table(routes: &Value) -> String {
    let all = routes.as_array().cloned().unwrap_or_default();
    let (ignored, used): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|r| r.get("ignored").is_some());
    let mut out = received_routes_table(&used);
    if !ignored.is_empty() {
        let rows: Vec<Vec<String>> = ignored
            .iter()
            .map(|r| {
                vec![
                    text(r, "prefix"),
                    text(r, "nextHop"),
                    text(r, "peer"),
                    text(r, "ignored"),
                ]
            })
            .collect();
        out.push_str("\nReceived but ignored:\n");
        out.push_str(&table(&["PREFIX", "NEXT HOP", "PEER", "REASON"], &rows));
    }
    out
}

fn received_routes_table(routes: &[Value]) -> String {
    let rows: Vec<Vec<String>> = routes
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
        .collect();
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

fn list(value: &Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn joined_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(" ")
    }
}

/// `reefctl bgp rib`: one line per Loc-RIB prefix.
fn rib_table(rib: &Value) -> String {
    let rows: Vec<Vec<String>> = rib
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|r| {
                    let from = match r.get("peer") {
                        None | Some(Value::Null) => "local".to_string(),
                        Some(_) => text(r, "peer"),
                    };
                    let stale = r.get("stale").and_then(Value::as_bool) == Some(true);
                    vec![
                        text(r, "prefix"),
                        joined_or_dash(&list(r, "nextHops")),
                        from,
                        text(r, "asPath"),
                        text(r, "localPref"),
                        text(r, "paths"),
                        if stale { "stale".into() } else { "-".into() },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "PREFIX",
            "NEXT HOPS",
            "FROM",
            "AS PATH",
            "LOCAL PREF",
            "PATHS",
            "FLAGS",
        ],
        &rows,
    )
}

/// `reefctl bgp rib PREFIX`: every path, best first, like `birdc show route all for PREFIX`.
fn paths_text(prefix: &str, paths: &Value) -> String {
    let paths = paths.as_array().map(Vec::as_slice).unwrap_or_default();
    if paths.is_empty() {
        return format!("{prefix}: no paths in the RIB\n");
    }
    let mut out = format!("{prefix}: {} path(s)\n", paths.len());
    for (n, p) in paths.iter().enumerate() {
        let rank = p
            .get("rank")
            .and_then(Value::as_u64)
            .map_or(n + 1, |r| r as usize);
        let from = match p.get("peer") {
            None | Some(Value::Null) => "local".to_string(),
            Some(_) => text(p, "peer"),
        };
        out.push_str(&format!(
            "#{rank} {}  from {from} ({}, router id {})  via {}\n",
            text(p, "verdict"),
            text(p, "peerType"),
            text(p, "routerId"),
            text(p, "nextHop"),
        ));
        if let Some(reason) = p.get("reason").and_then(Value::as_str) {
            let against = p
                .get("against")
                .and_then(Value::as_str)
                .map(|a| format!(" (vs {a})"))
                .unwrap_or_default();
            out.push_str(&format!("     reason: {reason}{against}\n"));
        }
        out.push_str(&format!(
            "     AS path: {}  origin: {}  local pref: {}  MED: {}\n",
            text(p, "asPath"),
            text(p, "origin"),
            text(p, "localPref"),
            text(p, "med"),
        ));
        let mut communities = list(p, "communities");
        communities.extend(list(p, "largeCommunities"));
        if !communities.is_empty() {
            out.push_str(&format!("     communities: {}\n", communities.join(" ")));
        }
        let cluster_list = list(p, "clusterList");
        if p.get("originatorId").is_some_and(|o| !o.is_null()) || !cluster_list.is_empty() {
            out.push_str(&format!(
                "     originator: {}  cluster list: {}\n",
                text(p, "originatorId"),
                joined_or_dash(&cluster_list)
            ));
        }
        if p.get("stale").and_then(Value::as_bool) == Some(true) {
            out.push_str("     stale (kept through the peer's graceful restart)\n");
        }
    }
    out
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

    #[test]
    fn routes_table_lists_ignored_routes_with_their_reason() {
        let routes = json!([
            { "peer": "198.51.100.2", "prefix": "10.66.0.0/26", "nextHop": "198.51.100.2",
              "asPath": "65001", "origin": "igp", "med": null, "localPref": null,
              "communities": [], "largeCommunities": [] },
            { "peer": "198.51.100.2", "prefix": "10.67.0.0/26", "nextHop": "198.51.100.1",
              "asPath": "", "origin": null, "med": null, "localPref": null, "communities": [],
              "largeCommunities": [], "ignored": "next hop 198.51.100.1 is our own address" }
        ]);
        let out = routes_table(&routes);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert!(lines[1].starts_with("10.66.0.0/26"), "{out}");
        assert_eq!(lines[3], "Received but ignored:");
        assert!(
            lines[4].starts_with("PREFIX") && lines[4].ends_with("REASON"),
            "{out}"
        );
        assert!(
            lines[5].starts_with("10.67.0.0/26")
                && lines[5].ends_with("next hop 198.51.100.1 is our own address"),
            "{out}"
        );
    }

    #[test]
    fn rib_table_marks_local_and_stale_routes() {
        let rib = json!([
            { "prefix": "10.66.0.0/26", "peer": "198.51.100.2", "nextHops": ["198.51.100.2", "198.51.100.3"],
              "asPath": "65001", "localPref": 100, "paths": 2, "stale": true },
            { "prefix": "10.65.0.0/26", "peer": null, "nextHops": [], "asPath": "", "localPref": null,
              "paths": 1, "stale": false }
        ]);
        let out = rib_table(&rib);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("PREFIX"));
        assert!(lines[1].contains("198.51.100.2 198.51.100.3") && lines[1].ends_with("stale"));
        assert!(
            lines[2].contains(" local ") && lines[2].ends_with('-'),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn paths_text_shows_verdicts_and_reasons() {
        let paths = json!([
            { "rank": 1, "peer": "198.51.100.2", "peerType": "eBGP", "routerId": "198.51.100.2",
              "verdict": "best", "reason": "higher LOCAL_PREF (200 > 100)", "against": "198.51.100.3",
              "nextHop": "198.51.100.2", "asPath": "65001 65002", "origin": "igp", "localPref": 200,
              "med": null, "communities": ["65001:100"], "largeCommunities": ["65001:1:2"],
              "originatorId": null, "clusterList": [], "stale": false },
            { "rank": 2, "peer": "198.51.100.3", "peerType": "eBGP", "routerId": "198.51.100.3",
              "verdict": "not selected", "reason": "lower LOCAL_PREF (100 < 200)", "against": "198.51.100.2",
              "nextHop": "198.51.100.3", "asPath": "65003", "origin": "igp", "localPref": 100,
              "med": 5, "communities": [], "largeCommunities": [], "originatorId": "192.0.2.9",
              "clusterList": ["192.0.2.1"], "stale": true }
        ]);
        let out = paths_text("10.66.0.0/26", &paths);
        assert!(out.starts_with("10.66.0.0/26: 2 path(s)\n"), "{out}");
        assert!(
            out.contains(
                "#1 best  from 198.51.100.2 (eBGP, router id 198.51.100.2)  via 198.51.100.2"
            ),
            "{out}"
        );
        assert!(
            out.contains("reason: higher LOCAL_PREF (200 > 100) (vs 198.51.100.3)"),
            "{out}"
        );
        assert!(out.contains("communities: 65001:100 65001:1:2"), "{out}");
        assert!(out.contains("#2 not selected"), "{out}");
        assert!(
            out.contains("originator: 192.0.2.9  cluster list: 192.0.2.1"),
            "{out}"
        );
        assert!(out.contains("stale (kept"), "{out}");
        assert_eq!(
            paths_text("10.0.0.0/8", &json!([])),
            "10.0.0.0/8: no paths in the RIB\n"
        );
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
