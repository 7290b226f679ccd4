//! The admin API: HTTP/1.1 over a unix socket (routes in README.md).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use reef_bgp::driver::{PeerStatus, RouteView, Speaker, SpeakerError};
use reef_bgp::fsm::State as SessionState;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::UnixListener;

use crate::config::check_prefix;
use crate::fib::FibStats;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub speaker: Arc<Speaker>,
    /// Set when reefd programs kernel routes.
    pub fib: Option<Arc<FibStats>>,
}

impl FromRef<AdminState> for Arc<Speaker> {
    fn from_ref(state: &AdminState) -> Arc<Speaker> {
        state.speaker.clone()
    }
}

type Api = State<Arc<Speaker>>;

/// An error answer: `{"error": "..."}` with a status code.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<SpeakerError> for ApiError {
    fn from(error: SpeakerError) -> ApiError {
        let status = match error {
            SpeakerError::UnknownPeer(_) => StatusCode::NOT_FOUND,
            SpeakerError::NotEstablished(_) | SpeakerError::NoRouteRefresh(_) => {
                StatusCode::CONFLICT
            }
            SpeakerError::DuplicatePeer(_) | SpeakerError::InvalidConfig(_) => {
                StatusCode::BAD_REQUEST
            }
            SpeakerError::Md5 { .. } | SpeakerError::PeerGone(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, error.to_string())
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/bgp/peers", get(peers))
        .route("/v1/bgp/routes", get(routes))
        .route(
            "/v1/bgp/prefixes",
            get(prefixes).post(advertise).delete(withdraw),
        )
        .route("/v1/bgp/peers/{addr}/refresh", post(refresh))
        .route("/v1/bgp/rib", get(rib))
        .route("/v1/bgp/rib/{prefix}", get(rib_prefix))
        .route("/v1/bgp/rib/{address}/{length}", get(rib_prefix_unencoded))
        .with_state(state)
}

/// Binds the socket (replacing a stale one, creating the directory) and serves until the task ends.
pub async fn serve(path: &Path, state: AdminState) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove stale socket {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind admin socket {}", path.display()))?;
    let app = router(state);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }))
}

async fn peers(State(speaker): Api) -> axum::Json<Vec<PeerStatus>> {
    axum::Json(speaker.peers())
}

#[derive(Deserialize)]
struct RoutesQuery {
    peer: Option<String>,
}

async fn routes(
    State(speaker): Api,
    Query(query): Query<RoutesQuery>,
) -> Result<axum::Json<Vec<RouteView>>, ApiError> {
    let peer = match query.peer.as_deref() {
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("peer {text:?} is not an IP address"),
            )
        })?),
        None => None,
    };
    // Building a full table's JSON takes a while: off the async workers.
    let routes = tokio::task::spawn_blocking(move || speaker.routes(peer))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(axum::Json(routes))
}

async fn prefixes(State(speaker): Api) -> axum::Json<serde_json::Value> {
    let prefixes: Vec<String> = speaker.prefixes().iter().map(|p| p.to_string()).collect();
    axum::Json(json!({ "prefixes": prefixes }))
}

#[derive(Deserialize, Serialize)]
struct PrefixBody {
    prefix: String,
}

fn parse_prefix_body(body: &[u8]) -> Result<IpNet, ApiError> {
    let body: PrefixBody = serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"prefix\": \"...\"}}: {e}"),
        )
    })?;
    let prefix: IpNet = body.prefix.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not an IP prefix", body.prefix),
        )
    })?;
    check_prefix(&prefix).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(prefix)
}

async fn advertise(
    State(speaker): Api,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let prefix = parse_prefix_body(&body)?;
    speaker.advertise(prefix);
    tracing::info!(%prefix, "prefix advertised through the admin API");
    Ok(axum::Json(
        json!({ "prefix": prefix.to_string(), "advertised": true }),
    ))
}

async fn withdraw(
    State(speaker): Api,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let prefix = parse_prefix_body(&body)?;
    if !speaker.withdraw(prefix) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{prefix} is not advertised"),
        ));
    }
    tracing::info!(%prefix, "prefix withdrawn through the admin API");
    Ok(axum::Json(
        json!({ "prefix": prefix.to_string(), "advertised": false }),
    ))
}

async fn refresh(
    State(speaker): Api,
    UrlPath(addr): UrlPath<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let peer: IpAddr = addr.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{addr:?} is not an IP address"),
        )
    })?;
    speaker.refresh(peer).await?;
    Ok(axum::Json(json!({ "peer": peer, "sent": true })))
}

async fn rib(State(speaker): Api) -> Result<Response, ApiError> {
    // A full table's JSON takes a while: off the async workers.
    tokio::task::spawn_blocking(move || axum::Json(speaker.loc_rib()).into_response())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /v1/bgp/rib/10.0.0.0%2F24` (the path segment is percent-decoded by the extractor); a bare
/// address means its host prefix.
async fn rib_prefix(
    State(speaker): Api,
    UrlPath(prefix): UrlPath<String>,
) -> Result<Response, ApiError> {
    explain(&speaker, &prefix)
}

/// `GET /v1/bgp/rib/10.0.0.0/24`: the same with the slash unencoded.
async fn rib_prefix_unencoded(
    State(speaker): Api,
    UrlPath((address, length)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    explain(&speaker, &format!("{address}/{length}"))
}

fn explain(speaker: &Speaker, text: &str) -> Result<Response, ApiError> {
    let prefix = match text.parse::<IpNet>() {
        Ok(prefix) => prefix,
        Err(_) => text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "{text:?} is not an IP prefix (e.g. 10.0.0.0/24, URL-encoded as 10.0.0.0%2F24)"
                ),
            )
        })?,
    };
    check_prefix(&prefix).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(axum::Json(speaker.explain(prefix)).into_response())
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let peers = state.speaker.peers();
    let mut text = render_metrics(&peers);
    if let Some(fib) = &state.fib {
        render_fib_metrics(&mut text, fib);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Prometheus text of the kernel route programming.
pub fn render_fib_metrics(out: &mut String, fib: &FibStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let metrics = [
        (
            "reef_fib_routes",
            "gauge",
            "Reef routes installed in the kernel routing table.",
            fib.routes.load(Relaxed),
        ),
        (
            "reef_fib_errors_total",
            "counter",
            "Route operations the kernel refused and failed netlink exchanges.",
            fib.errors.load(Relaxed),
        ),
        (
            "reef_fib_synced",
            "gauge",
            "1 once the kernel table was synced with the converged Loc-RIB.",
            fib.synced.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Name, help text and value of a per-peer metric.
type PeerGauge = (&'static str, &'static str, fn(&PeerStatus) -> u64);

/// Prometheus text exposition of the session and prefix gauges.
pub fn render_metrics(peers: &[PeerStatus]) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP reef_bgp_sessions BGP sessions by state.\n# TYPE reef_bgp_sessions gauge\n",
    );
    for state in SessionState::ALL {
        let count = peers.iter().filter(|p| p.state == state.name()).count();
        let _ = writeln!(
            out,
            "reef_bgp_sessions{{state=\"{}\"}} {count}",
            state.name()
        );
    }
    let gauges: [PeerGauge; 5] = [
        (
            "reef_bgp_session_established",
            "1 if the session is Established.",
            |p| u64::from(p.state == "Established"),
        ),
        (
            "reef_bgp_prefixes_received",
            "Routes in the peer's Adj-RIB-In.",
            |p| p.prefixes_received as u64,
        ),
        (
            "reef_bgp_prefixes_advertised",
            "Prefixes advertised to the peer.",
            |p| p.prefixes_advertised as u64,
        ),
        (
            "reef_bgp_updates_received_total",
            "UPDATE messages received from the peer.",
            |p| p.updates_received,
        ),
        (
            "reef_bgp_routes_ignored_total",
            "Received routes ignored by error handling or NEXT_HOP checks.",
            |p| p.routes_ignored,
        ),
    ];
    for (name, help, value) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for peer in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", peer.address, value(peer));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_bgp::driver::{PeerConfig, SpeakerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// One raw HTTP/1.1 exchange over the socket: (status code, body).
    async fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: reefd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn admin_api_serves_peers_prefixes_routes_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sub/reefd.sock");
        let config = SpeakerConfig {
            router_id: "192.0.2.1".parse().unwrap(),
            local_as: 64512,
            listen: None,
            routing: Default::default(),
        };
        let mut peer = PeerConfig::new("192.0.2.2".parse().unwrap(), 65001);
        peer.passive = true;
        let speaker = Arc::new(Speaker::start(config, vec![peer], vec![]).await.unwrap());
        let fib = Arc::new(FibStats::default());
        fib.routes.store(3, std::sync::atomic::Ordering::Relaxed);
        let server = serve(
            &socket,
            AdminState {
                speaker: speaker.clone(),
                fib: Some(fib),
            },
        )
        .await
        .unwrap();

        assert_eq!(
            http(&socket, "GET", "/healthz", "").await,
            (200, "ok\n".into())
        );
        let (status, body) = http(&socket, "GET", "/v1/bgp/peers", "").await;
        assert_eq!(status, 200);
        let peers: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(peers[0]["address"], "192.0.2.2");
        assert_eq!(peers[0]["remoteAs"], 65001);
        assert_eq!(peers[0]["type"], "ebgp");
        assert_eq!(peers[0]["state"], "Active");

        let (status, _) = http(
            &socket,
            "POST",
            "/v1/bgp/prefixes",
            r#"{"prefix":"10.65.0.0/26"}"#,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            speaker.prefixes(),
            ["10.65.0.0/26".parse::<IpNet>().unwrap()]
        );
        // The routing task takes the prefix into the Loc-RIB asynchronously: bounded wait.
        let mut rib = serde_json::Value::Null;
        for _ in 0..100 {
            let (status, body) = http(&socket, "GET", "/v1/bgp/rib", "").await;
            assert_eq!(status, 200);
            rib = serde_json::from_str(&body).unwrap();
            if rib.as_array().is_some_and(|routes| !routes.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(rib[0]["prefix"], "10.65.0.0/26", "{rib}");
        assert_eq!(rib[0]["peer"], serde_json::Value::Null, "{rib}");
        let (status, body) = http(&socket, "GET", "/v1/bgp/rib/10.65.0.0%2F26", "").await;
        assert_eq!(status, 200);
        let paths: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(paths[0]["verdict"], "best", "{paths}");
        assert_eq!(paths[0]["peerType"], "local", "{paths}");
        let (status, body) = http(
            &socket,
            "POST",
            "/v1/bgp/prefixes",
            r#"{"prefix":"10.65.0.1/26"}"#,
        )
        .await;
        assert_eq!(status, 400);
        assert!(body.contains("host bits"), "{body}");
        let (status, _) = http(
            &socket,
            "DELETE",
            "/v1/bgp/prefixes",
            r#"{"prefix":"10.65.0.0/26"}"#,
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = http(
            &socket,
            "DELETE",
            "/v1/bgp/prefixes",
            r#"{"prefix":"10.65.0.0/26"}"#,
        )
        .await;
        assert_eq!(status, 404);
        assert!(speaker.prefixes().is_empty());

        assert_eq!(
            http(&socket, "GET", "/v1/bgp/routes?peer=192.0.2.2", "").await,
            (200, "[]".into())
        );
        assert_eq!(
            http(&socket, "GET", "/v1/bgp/routes?peer=192.0.2.9", "")
                .await
                .0,
            404
        );
        assert_eq!(
            http(&socket, "POST", "/v1/bgp/peers/192.0.2.2/refresh", "")
                .await
                .0,
            409
        );
        assert_eq!(
            http(&socket, "POST", "/v1/bgp/peers/192.0.2.9/refresh", "")
                .await
                .0,
            404
        );

        let (status, metrics) = http(&socket, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("reef_bgp_sessions{state=\"Active\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("reef_bgp_prefixes_received{peer=\"192.0.2.2\"} 0"),
            "{metrics}"
        );
        assert!(metrics.contains("\nreef_fib_routes 3\n"), "{metrics}");
        assert!(metrics.contains("\nreef_fib_errors_total 0\n"), "{metrics}");

        // Never advertised: no paths, with the slash encoded or not, or as a bare address.
        for path in [
            "/v1/bgp/rib/10.66.0.0%2F26",
            "/v1/bgp/rib/10.66.0.0/26",
            "/v1/bgp/rib/10.66.0.1",
        ] {
            assert_eq!(http(&socket, "GET", path, "").await, (200, "[]".into()));
        }
        let (status, body) = http(&socket, "GET", "/v1/bgp/rib/10.65.0.1%2F26", "").await;
        assert_eq!(status, 400);
        assert!(body.contains("host bits"), "{body}");
        assert_eq!(
            http(&socket, "GET", "/v1/bgp/rib/nonsense", "").await.0,
            400
        );
        server.abort();
        speaker.shutdown().await;
    }
}
