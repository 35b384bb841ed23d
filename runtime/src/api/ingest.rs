//! `POST /ingest/{topic}`: hands the body to the topic's HTTP ingest source and answers once
//! its records are committed (2xx means durable). Errors: 401 (token), 404 (no HTTP source
//! for the topic), 413 (body over the source's `max-body-bytes`), 400 (not JSON), 503 with
//! `Retry-After` (queue full, not committed, or the worker still starting: retry, with the
//! same `Idempotency-Key`). The handler awaits the source's answer on a oneshot channel, so
//! a waiting request holds no thread.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use sluice_connectors::http_ingest::IngestError;

use super::schema::{ErrorBody, IngestAckDoc};
use super::{ApiError, ApiState, bearer_is};

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_BYTES: usize = 256;

/// How long a request waits for its commit before it is answered 503.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Writes records through the topic's HTTP source; answered after they are committed.
///
/// `application/json`: one object or an array (a body that is not JSON gets 400 and
/// nothing is written). `application/x-ndjson`: one value per line; bad lines go to the
/// pipeline's dead-letter topic. Values are stored as sent (field order kept). An
/// `Idempotency-Key` makes retries safe: a key among the source's latest accepted ones
/// answers `duplicate: true` and writes nothing (a retry racing its uncommitted original
/// waits for the original's commit, so `duplicate: true` always means committed).
#[utoipa::path(post, operation_id = "ingest", path = "/ingest/{topic}", tag = "ingest",
    params(("topic" = String, Path, description = "The topic of an HTTP source"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    request_body(content = String, content_type = "application/json", description = "A JSON document, or NDJSON with Content-Type application/x-ndjson"),
    security((), ("bearer" = [])),
    responses((status = 200, description = "Committed", body = IngestAckDoc),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Token missing or wrong", body = ErrorBody),
        (status = 404, description = "No HTTP source for the topic", body = ErrorBody),
        (status = 413, description = "Larger than the source's max-body-bytes", body = ErrorBody),
        (status = 503, description = "Queue full, not committed, or still starting: retry after Retry-After with the same Idempotency-Key", body = ErrorBody)))]
pub async fn ingest(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestAckDoc>, ApiError> {
    let Some((_, handle)) = state.ingest.lock().get(&topic).cloned() else {
        if !state.ready.load(Ordering::SeqCst) {
            return Err(ApiError::retry_later(format!(
                "the worker is starting; topic '{topic}' may get an HTTP source shortly"
            )));
        }
        // A paused pipeline's source comes back on resume: retry, not a wrong address.
        let paused = state
            .deployer
            .try_lock_for(Duration::from_millis(200))
            .and_then(|d| {
                d.worker
                    .pipelines()
                    .iter()
                    .find(|p| {
                        p.paused
                            && p.pipeline()
                                .config
                                .sources
                                .iter()
                                .any(|s| s.http.is_some() && s.topic == topic)
                    })
                    .map(|p| p.name.clone())
            });
        if let Some(p) = paused {
            return Err(ApiError::retry_later(format!(
                "pipeline {p}, whose HTTP source ingests into topic '{topic}', is paused: retry once it is resumed"
            )));
        }
        // In a cluster the pipeline may run on another node (or be moving).
        let elsewhere = state
            .deployer
            .try_lock_for(Duration::from_millis(200))
            .and_then(|d| d.ingest_elsewhere(&topic));
        if let Some(e) = elsewhere {
            let p = &e.pipeline;
            return Err(ApiError::retry_later(match e.node {
                Some(n) => format!(
                    "pipeline {p}, whose HTTP source ingests into topic '{topic}', runs on node {n}{}: send it there",
                    e.api.map(|a| format!(" (API {a})")).unwrap_or_default()
                ),
                None => format!(
                    "pipeline {p}, whose HTTP source ingests into topic '{topic}', runs on no node now (the cluster is electing its node): retry"
                ),
            }));
        }
        return Err(ApiError::not_found(format!(
            "no HTTP source ingests into topic '{topic}' (declare one: [[sources]] http = {{ }})"
        )));
    };
    let source_token = handle.config().token.clone();
    let allowed = match (&source_token, &state.token) {
        (None, None) => true,
        (s, a) => {
            s.as_deref().is_some_and(|t| bearer_is(&headers, t))
                || a.as_deref().is_some_and(|t| bearer_is(&headers, t))
        }
    };
    if !allowed {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)".into(),
        ));
    }
    let limit = handle.config().max_body_bytes;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than this source's max-body-bytes ({limit})"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let body = tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| super::body_timeout(state.body_timeout))?
        .map_err(|_| too_large())?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("ndjson") || t.contains("jsonlines"));
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if key.as_ref().is_some_and(|k| k.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "the Idempotency-Key is empty: send a unique key, or no header",
        ));
    }
    // Keys are held in memory (up to `idempotency-keys` of them): bound each one.
    if key.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
        return Err(ApiError::bad_request(format!(
            "the Idempotency-Key is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    // A record that cannot fit the topic's `max.message.bytes` is the client's to fix: a
    // whole-body document or an NDJSON line over it is refused here (an oversized item of
    // an array goes to the dead-letter topic, like any record the topic cannot take).
    if let Ok(t) = state.log.topic(&topic) {
        let max = t.config().max_message_bytes as usize;
        let overhead = 128;
        let too_big = |n: usize| n + overhead > max;
        let oversized = if ndjson {
            body.split(|b| *b == b'\n')
                .map(<[u8]>::len)
                .find(|n| too_big(*n))
        } else if body.trim_ascii_start().first() != Some(&b'[') && too_big(body.len()) {
            Some(body.len())
        } else {
            None
        };
        if let Some(n) = oversized {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a record of {n} bytes does not fit topic '{topic}' (max.message.bytes {max})"
                ),
            ));
        }
    }
    let answer = handle.submit(body, ndjson, key).map_err(ingest_error)?;
    // Awaited, not received on a thread: a request waiting for its commit holds a small
    // future and nothing else. A dropped sender (the task restarted or stopped before the
    // commit) means "not committed", as the timeout does.
    match tokio::time::timeout(COMMIT_WAIT, answer).await {
        Ok(Ok(Ok(ack))) => Ok(Json(IngestAckDoc {
            accepted: ack.accepted,
            rejected: ack.rejected,
            duplicate: ack.duplicate,
        })),
        Ok(Ok(Err(e))) => Err(ingest_error(e)),
        Ok(Err(_)) | Err(_) => Err(ingest_error(IngestError::NotCommitted)),
    }
}

fn ingest_error(e: IngestError) -> ApiError {
    match e {
        IngestError::BadRequest(m) => ApiError::bad_request(m),
        e => ApiError::retry_later(e),
    }
}
