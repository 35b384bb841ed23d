//! The worker's REST API and metrics, served on a loopback address by `sluice run --listen`.
//!
//! ```text
//!  client ─► axum router ─► auth (optional bearer token) ─► handlers
//!                              pipelines.rs: list, status, deploy (PUT TOML), delete, pause, resume, restart
//!                              log.rs:       topics, records, consumer groups with lag
//!                              sql.rs:       statements (JSON), push queries (server-sent events)
//!                              ingest.rs:    POST /ingest/{topic} (HTTP sources)
//!                              metrics.rs:   GET /metrics (Prometheus text)
//! ```
//!
//! Connections are bounded and time out ([`server`]); push queries are bounded too, and
//! their rows reach the client through a bounded buffer ([`sql`]). Handlers that touch the
//! worker run on tokio's blocking pool: deploying or stopping a pipeline joins task threads,
//! which must not stall the async workers. Nothing else waits on a thread: an ingest request
//! awaits its commit, `/metrics` reads the status board and `/health` answers its last counts
//! while a deploy holds the worker. The API is described
//! in `docs/openapi.yaml`, served at `GET /openapi.yaml`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use sluice_log::Log;

use crate::deployer::{Deployer, DeployerError};
use crate::worker::{DeployError, IngestRoutes};

pub mod cluster;
pub mod console;
pub mod consume;
mod ingest;
pub mod log;
pub mod metrics;
pub mod openapi;
pub mod pipelines;
pub mod schema;
pub mod server;
pub mod sql;

pub use server::Limits;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The worker and its pipelines folder.
    pub deployer: Arc<Mutex<Deployer>>,
    /// The log (read without taking the deployer's lock).
    pub log: Log,
    /// HTTP ingest sources by topic.
    pub ingest: IngestRoutes,
    /// The bearer token every request but `/health` must carry, if set.
    pub token: Option<Arc<str>>,
    /// Set once the worker deployed its pipelines at start: before, `/ingest` answers 503
    /// (retry) rather than 404 for topics whose source is not up yet.
    pub ready: Arc<AtomicBool>,
    /// Slots for push queries streaming at once.
    pub push_queries: Arc<tokio::sync::Semaphore>,
    /// What push queries did, for `/metrics`.
    pub push_stats: Arc<sql::PushStats>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// How long a push query waits for a client that reads none of its buffered rows.
    pub slow_client_timeout: std::time::Duration,
    /// What `/health` counted last, answered while a deploy holds the deployer.
    pub last_health: Arc<Mutex<HealthCounts>>,
    /// The worker's running tasks and queries, which `/metrics` reads without the deployer.
    pub status: Arc<crate::status::StatusBoard>,
    /// Open client-committed consume sessions.
    pub sessions: Arc<consume::Sessions>,
    /// The cluster this worker is a node of, if any.
    pub cluster: Arc<std::sync::OnceLock<sluice_cluster::Cluster>>,
}

impl ApiState {
    /// The state for a worker's API, not ready until [`ApiState::ready`] is set.
    pub fn new(
        deployer: Arc<Mutex<Deployer>>,
        log: Log,
        ingest: IngestRoutes,
        token: Option<Arc<str>>,
        limits: &Limits,
    ) -> ApiState {
        let status = deployer.lock().worker.status_board();
        ApiState {
            deployer,
            log,
            ingest,
            token,
            ready: Arc::new(AtomicBool::new(false)),
            push_queries: Arc::new(tokio::sync::Semaphore::new(limits.max_push_queries)),
            push_stats: Arc::new(sql::PushStats::new(limits.max_push_queries)),
            body_timeout: limits.body_read_timeout,
            slow_client_timeout: limits.slow_client_timeout,
            last_health: Arc::default(),
            status,
            sessions: Arc::default(),
            cluster: Arc::default(),
        }
    }
}

/// A JSON error answer, as Kafka Connect's REST API gives them: `{"error_code": <the HTTP
/// status>, "message": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({
            "error_code": self.0.as_u16(),
            "message": self.1,
        }));
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here is temporary: tell clients when to come back.
            return (self.0, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        (self.0, body).into_response()
    }
}

impl ApiError {
    fn bad_request(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    }

    fn not_found(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, e.to_string())
    }

    /// 503 with `Retry-After`: the request may succeed if sent again shortly.
    fn retry_later(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<DeployError> for ApiError {
    /// 404 for an unknown pipeline; 409 when another pipeline holds the name, a task's
    /// internal name or the ingest route; 400 for other faults of the file; 503 when the
    /// log or an external system failed (retry).
    fn from(e: DeployError) -> ApiError {
        let status = match &e {
            DeployError::NotFound(_) | DeployError::NoSuchTask { .. } => StatusCode::NOT_FOUND,
            DeployError::WrongState { .. } => StatusCode::CONFLICT,
            DeployError::NameTaken { .. }
            | DeployError::SharedWith { .. }
            | DeployError::IngestTaken { .. } => StatusCode::CONFLICT,
            e if e.is_user_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<DeployerError> for ApiError {
    fn from(e: DeployerError) -> ApiError {
        let status = match e {
            DeployerError::Deploy(e) => return e.into(),
            DeployerError::BadName(_)
            | DeployerError::Invalid(_)
            | DeployerError::NameMismatch { .. } => StatusCode::BAD_REQUEST,
            DeployerError::NotFound(_) => StatusCode::NOT_FOUND,
            // The pipeline is down, or the folder is out of step: an operator must look.
            DeployerError::NotRestored { .. } | DeployerError::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string())
    }
}

/// Runs `f` on the blocking pool (worker operations join threads and take locks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// True when the request carries `Authorization: Bearer <token>` (the scheme name in any
/// case, as RFC 7235 says).
fn bearer_is(req: &axum::http::HeaderMap, token: &str) -> bool {
    req.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, t)| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn auth(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // Health is open (load balancers), and the API's description; ingest checks its
    // source's own token too; the console's files are open (the page asks for the token and
    // sends it on API calls).
    let open = matches!(path, "/health" | "/openapi.yaml" | "/openapi.json")
        || path.starts_with("/ingest/")
        || console::is_console_path(path);
    match &state.token {
        Some(t) if !open && !bearer_is(req.headers(), t) => (
            [(header::WWW_AUTHENTICATE, "Bearer")],
            ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)".into(),
            ),
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// The largest body of requests other than `/ingest` (pipeline files, SQL): axum's default.
const BODY_LIMIT: usize = 2 << 20;

/// Reads the body of every request but `/ingest` (which reads its own, to its source's
/// limit) within the body timeout, so a client trickling a body cannot hold a connection
/// and a worker thread forever.
async fn read_body_in_time(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/ingest/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(_)) => ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {BODY_LIMIT} bytes"),
        )
        .into_response(),
        Err(_) => body_timeout(state.body_timeout).into_response(),
    }
}

/// 408: the body did not arrive in time.
fn body_timeout(limit: std::time::Duration) -> ApiError {
    ApiError(
        StatusCode::REQUEST_TIMEOUT,
        format!("the request body did not arrive within {limit:?}"),
    )
}

/// Makes every error answer JSON: those the framework writes as text (an unsupported
/// content type, a body that does not parse, a wrong method) get the same
/// `{error_code, message}` shape as the handlers' own, keeping their other headers (`Allow`,
/// `Retry-After`).
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// A method the path does not take: a JSON 405.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Any other path or method: a JSON 404 naming it.
async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}: see GET /openapi.yaml for the API",
            uri.path()
        ),
    )
}

/// This document, as YAML (also in the repository as `docs/openapi.yaml`).
#[utoipa::path(get, operation_id = "openapiYaml", path = "/openapi.yaml", tag = "worker", security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/yaml", body = String)))]
async fn openapi_yaml() -> Response {
    match openapi::yaml() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/yaml")], text).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// This document, as JSON.
#[utoipa::path(get, operation_id = "openapiJson", path = "/openapi.json", tag = "worker", security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    axum::Json(openapi::document()).into_response()
}

/// How long `/health` waits for the deployer, which a deploy holds while tasks stop and
/// start; past it, the last counts are answered with `deploying: true`.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// What `/health` counted last: pipelines, tasks, failing tasks, broken files, persistent
/// queries in error or failed to start.
#[derive(Debug, Default, Clone, Copy)]
pub struct HealthCounts {
    pipelines: usize,
    tasks: usize,
    failing: usize,
    broken: usize,
    failing_queries: usize,
}

/// Liveness and a summary: `ok`, or `degraded` when a task or query fails or the log lost
/// records (still 200: the worker serves). Open without the token (load balancers).
#[utoipa::path(get, operation_id = "health", path = "/health", tag = "worker", security(()),
    responses((status = 200, description = "The worker's state", body = schema::Health)))]
async fn health(State(state): State<ApiState>) -> Result<axum::Json<schema::Health>, ApiError> {
    blocking(move || {
        let counted = state.deployer.try_lock_for(HEALTH_WAIT).map(|d| {
            let tasks: Vec<_> = d
                .worker
                .pipelines()
                .iter()
                .flat_map(|p| p.tasks.iter())
                .collect();
            HealthCounts {
                pipelines: d.worker.pipelines().len(),
                tasks: tasks.len(),
                failing: tasks
                    .iter()
                    .filter(|t| matches!(t.status.state(), "retrying" | "failed"))
                    .count(),
                broken: d.errors().len(),
                failing_queries: {
                    let engine = d.worker.engine();
                    engine
                        .catalog()
                        .queries()
                        .filter(|q| {
                            engine.queries().failure(&q.id).is_some()
                                || engine
                                    .queries()
                                    .stats(&q.id)
                                    .is_some_and(|s| s.error.lock().is_some())
                        })
                        .count()
                },
            }
        });
        let deploying = counted.is_none();
        let c = match counted {
            Some(c) => {
                *state.last_health.lock() = c;
                c
            }
            None => *state.last_health.lock(),
        };
        // Records the log lost (until `data-loss.json` is deleted) keep the worker degraded:
        // still serving, but an operator must look. 200 either way, as for failing tasks.
        let data_loss = state.log.data_loss();
        let ok = c.failing == 0 && c.failing_queries == 0 && data_loss.is_empty();
        Ok(axum::Json(schema::Health {
            status: if ok {
                schema::HealthStatus::Ok
            } else {
                schema::HealthStatus::Degraded
            },
            pipelines: c.pipelines,
            tasks: c.tasks,
            failing_tasks: c.failing,
            failing_queries: c.failing_queries,
            broken_files: c.broken,
            data_loss: data_loss
                .into_iter()
                .map(|l| schema::DataLossDoc {
                    topic: l.topic,
                    partition: l.partition,
                    from: l.from,
                    to: l.to,
                    reason: l.reason,
                    detected_at: l.detected_at,
                })
                .collect(),
            deploying,
        }))
    })
    .await
}

/// The router over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(console::asset))
        .route("/index.html", get(console::asset))
        .route("/assets/{*file}", get(console::asset))
        .route("/health", get(health))
        .route("/openapi.yaml", get(openapi_yaml))
        .route("/openapi.json", get(openapi_json))
        .route("/queries", get(pipelines::queries))
        .route("/pipelines/validate", post(pipelines::validate))
        .route("/pipelines/{name}/config", get(pipelines::config))
        .route(
            "/pipelines/{name}/offsets",
            get(pipelines::offsets).delete(pipelines::reset_offsets),
        )
        .route(
            "/pipelines/{name}/tasks/{task}/restart",
            post(pipelines::restart_task),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/pipelines", get(pipelines::list))
        .route(
            "/pipelines/{name}",
            get(pipelines::status)
                .put(pipelines::put)
                .delete(pipelines::delete),
        )
        .route("/pipelines/{name}/{action}", post(pipelines::action))
        .route("/topics", get(log::topics).post(log::create_topic))
        .route(
            "/topics/{name}",
            get(log::describe_topic).delete(log::delete_topic),
        )
        .route(
            "/topics/{name}/records",
            get(log::read_records).post(log::produce),
        )
        .route("/groups", get(log::groups))
        .route("/cluster", get(cluster::cluster))
        .route("/topics/{name}/consume", get(consume::consume))
        .route(
            "/topics/{name}/consume/{session}/commit",
            post(consume::commit),
        )
        .route(
            "/groups/{group}",
            get(log::describe_group).delete(log::delete_group),
        )
        .route("/groups/{group}/reset-offsets", post(log::reset_offsets))
        .route("/sql", post(sql::statements))
        .route("/query", post(sql::push_query))
        .route("/ingest/{topic}", post(ingest::ingest))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// A running API server; dropping it stops the server.
#[derive(Debug)]
pub struct ApiServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Why the API server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source} (choose another --listen)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server's runtime or thread did not start (out of threads or memory).
    #[error("cannot start the API {what}: {source}")]
    Start {
        /// "runtime" or "thread".
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds `listen` and serves the API on its own small tokio runtime, within `limits`.
pub fn serve(listen: SocketAddr, state: ApiState, limits: Limits) -> Result<ApiServer, ServeError> {
    let listen_error = |source| ServeError::Listen {
        addr: listen,
        source,
    };
    let std_listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
    std_listener.set_nonblocking(true).map_err(listen_error)?;
    let addr = std_listener.local_addr().map_err(listen_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-api")
        .enable_all()
        .build()
        .map_err(|source| ServeError::Start {
            what: "runtime",
            source,
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(state);
    let thread = std::thread::Builder::new()
        .name("sluice-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "The API listener failed.");
                        return;
                    }
                };
                // On stop the server is dropped rather than drained: push-query streams
                // never end by themselves.
                tokio::select! {
                    () = server::serve(listener, app, limits) => {}
                    _ = stopped => {}
                }
            });
            // Open streams (push queries) must not hold the process.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })
        .map_err(|source| ServeError::Start {
            what: "thread",
            source,
        })?;
    Ok(ApiServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_errors_answer_by_kind_not_by_text() {
        let code = |e: DeployerError| ApiError::from(e).0;
        let deploy = |e: DeployError| code(DeployerError::Deploy(e));
        assert_eq!(
            deploy(DeployError::NotFound("p".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            deploy(DeployError::NameTaken {
                pipeline: "p".into(),
                file: "other.toml".into(),
            }),
            StatusCode::CONFLICT
        );
        let sql = |user_error| DeployError::Sql {
            pipeline: "p".into(),
            reason: "sql: unknown column 'nope'".into(),
            user_error,
        };
        assert_eq!(deploy(sql(true)), StatusCode::BAD_REQUEST);
        assert_eq!(deploy(sql(false)), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            code(DeployerError::BadName("a b".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            code(DeployerError::NotFound("p".into())),
            StatusCode::NOT_FOUND
        );
        let io = DeployerError::Io {
            op: "write",
            path: "p.toml".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(io.to_string(), "write p.toml: disk full");
        assert_eq!(code(io), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
