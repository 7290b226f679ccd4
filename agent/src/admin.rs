//! The admin API: HTTP/1.1 over a unix socket (routes in README.md), and the read-only health and
//! metrics endpoints over TCP for the kubelet's probes and Prometheus.
//!
//! Access: the socket is created with mode 0660 (owner and group; never the umask's choice) and the
//! group given in [`AdminSocket`], and it is the only way to the verbs that change routing (advertise,
//! withdraw, refresh). The TCP listener serves `/healthz`, `/readyz` and `/metrics` only.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use reef_bgp::driver::{PeerStatus, RouteView, Speaker, SpeakerError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::{TcpListener, UnixListener};

use crate::config::check_prefix;
use crate::fib::FibStats;
use crate::metrics::Metrics;

/// Mode of the admin socket: read and write (= connect) for its owner and group only.
pub const SOCKET_MODE: u32 = 0o660;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub speaker: Arc<Speaker>,
    /// Set when reefd programs kernel routes.
    pub fib: Option<Arc<FibStats>>,
    pub metrics: Arc<Metrics>,
    /// `/readyz` answers 200 once this is true (datastore synced and dataplane programmed).
    pub ready: Arc<AtomicBool>,
}

/// Where the admin socket is and who may use it.
#[derive(Clone, Debug)]
pub struct AdminSocket {
    pub path: PathBuf,
    /// Group owning the socket (a name from /etc/group or a numeric gid); its members may use the
    /// API. `None`: reefd's own group.
    pub group: Option<String>,
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

/// The routes the TCP listener serves: health and metrics, nothing that changes or lists routing.
fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Every route: the admin socket's.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
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

/// Binds the socket (mode 0660, the configured group; replacing a stale one, creating the directory)
/// and serves until the task is aborted.
pub async fn serve(
    socket: &AdminSocket,
    state: AdminState,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = bind_socket(socket)?;
    let app = router(state);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }))
}

/// Serves `/healthz`, `/readyz` and `/metrics` over HTTP on `address` until the task is aborted;
/// returns the task and the address bound (port 0 = any).
pub async fn serve_health(
    address: SocketAddr,
    state: AdminState,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot bind the health port {address}"))?;
    let bound = listener.local_addr()?;
    let app = health_router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    Ok((task, bound))
}

/// The group's id: a number as is, a name looked up in /etc/group.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
        .with_context(|| {
            format!(
                "admin socket group {group:?} is not in /etc/group: create it or give a numeric gid"
            )
        })
}

/// Creates the socket with its final mode and group before it appears at its path: it is bound in
/// a private (0700) directory beside it, given mode and group there, then renamed into place. So no
/// client can connect while it still has the permissions the umask gave it.
fn bind_socket(socket: &AdminSocket) -> anyhow::Result<UnixListener> {
    let path = &socket.path;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let gid = socket.group.as_deref().map(group_id).transpose()?;
    let file_name = path
        .file_name()
        .with_context(|| format!("admin socket {} has no file name", path.display()))?;
    let staging = dir.join(format!(
        ".{}.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    // A staging directory left by a crashed run of the same pid (a restarted container) goes first.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let bound = (|| {
        let temporary = staging.join("sock");
        let listener = UnixListener::bind(&temporary)
            .with_context(|| format!("cannot bind admin socket {}", path.display()))?;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(SOCKET_MODE))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&temporary, None, Some(gid)).with_context(|| {
                format!("cannot give admin socket {} to group {gid}", path.display())
            })?;
        }
        // rename(2) replaces a stale socket atomically.
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot move the admin socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
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
    let text = state.metrics.render(&peers, state.fib.as_deref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reef_bgp::driver::{PeerConfig, SpeakerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// A speaker that does not listen, with one passive peer 192.0.2.2 (AS 65001).
    async fn passive_speaker() -> Arc<Speaker> {
        let config = SpeakerConfig {
            router_id: "192.0.2.1".parse().unwrap(),
            local_as: 64512,
            listen: None,
            routing: Default::default(),
        };
        let mut peer = PeerConfig::new("192.0.2.2".parse().unwrap(), 65001);
        peer.passive = true;
        Arc::new(Speaker::start(config, vec![peer], vec![]).await.unwrap())
    }

    /// `curl` run as uid/gid 65534 with the supplementary `groups`, advertising a prefix through
    /// the socket: the HTTP status, or `None` when it could not connect.
    async fn advertise_as_nobody(socket: &Path, groups: &str) -> Option<u16> {
        let output = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(if groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                format!("--groups={groups}")
            })
            .args([
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(socket)
            .args(["-X", "POST", "-d", r#"{"prefix":"10.65.0.0/26"}"#])
            .arg("http://reefd/v1/bgp/prefixes")
            .output()
            .await
            .expect("run setpriv and curl");
        String::from_utf8_lossy(&output.stdout)
            .parse()
            .ok()
            .filter(|&code| code != 0)
    }

    #[tokio::test]
    #[ignore = "needs root: connects as another uid through setpriv"]
    async fn admin_socket_is_0660_with_its_group_whatever_the_umask() {
        // With umask 0 a plain bind would leave the socket 0777: open to every local user.
        // SAFETY: umask(2) cannot fail; nextest runs each test in its own process.
        unsafe { libc::umask(0) };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("reefd.sock");
        std::fs::write(&socket, "stale").unwrap();
        let speaker = passive_speaker().await;
        let server = serve(
            &AdminSocket {
                path: socket.clone(),
                group: Some("4242".into()),
            },
            AdminState {
                speaker: speaker.clone(),
                fib: None,
                metrics: Arc::new(Metrics::new()),
                ready: Arc::new(AtomicBool::new(true)),
            },
        )
        .await
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            metadata.mode() & 0o7777,
            SOCKET_MODE,
            "{:o}",
            metadata.mode()
        );
        assert_eq!(metadata.gid(), 4242);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no staging directory left"
        );

        // Neither owner nor in the group: cannot connect, so cannot change routing.
        assert_eq!(advertise_as_nobody(&socket, "").await, None);
        assert!(speaker.prefixes().is_empty());
        // A member of the socket's group can.
        assert_eq!(advertise_as_nobody(&socket, "4242").await, Some(200));
        assert_eq!(speaker.prefixes().len(), 1);
        server.abort();
        speaker.shutdown().await;
    }

    #[test]
    fn an_unknown_group_name_is_an_error_that_says_what_to_do() {
        let error = group_id("no-such-group-reef").unwrap_err().to_string();
        assert!(error.contains("create it or give a numeric gid"), "{error}");
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
    }

    /// A GET over TCP: (status code, body).
    async fn tcp_http(address: SocketAddr, path: &str) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        exchange(stream, "GET", path, "").await
    }

    /// One raw HTTP/1.1 exchange over the socket: (status code, body).
    async fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
        exchange(
            UnixStream::connect(socket).await.unwrap(),
            method,
            path,
            body,
        )
        .await
    }

    async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
        mut stream: S,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
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
        let speaker = passive_speaker().await;
        let fib = Arc::new(FibStats::default());
        fib.routes.store(3, std::sync::atomic::Ordering::Relaxed);
        let ready = Arc::new(AtomicBool::new(false));
        let state = AdminState {
            speaker: speaker.clone(),
            fib: Some(fib),
            metrics: Arc::new(Metrics::new()),
            ready: ready.clone(),
        };
        let server = serve(
            &AdminSocket {
                path: socket.clone(),
                group: None,
            },
            state.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            http(&socket, "GET", "/readyz", "").await,
            (503, "not ready\n".into())
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(
            http(&socket, "GET", "/readyz", "").await,
            (200, "ready\n".into())
        );
        // The TCP health listener serves health and metrics, never the routing verbs.
        let (health, address) = serve_health("127.0.0.1:0".parse().unwrap(), state.clone())
            .await
            .unwrap();
        let (status, text) = tcp_http(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("reef_bgp_sessions{state=\"Active\"} 1"),
            "{text}"
        );
        assert_eq!(tcp_http(address, "/readyz").await.0, 200);
        assert_eq!(tcp_http(address, "/v1/bgp/peers").await.0, 404);
        let refresh = exchange(
            tokio::net::TcpStream::connect(address).await.unwrap(),
            "POST",
            "/v1/bgp/peers/192.0.2.2/refresh",
            "",
        )
        .await;
        assert_eq!(refresh.0, 404);
        health.abort();

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
