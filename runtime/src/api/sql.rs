//! SQL over HTTP: statements answered as JSON, and push queries streamed as server-sent
//! events (`event: row`, one JSON object per row; `event: end` when a LIMIT is reached,
//! `event: error` when the query failed or its client read too slowly).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use sluice_sql::engine::Output;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::schema::{ErrorBody, SqlRequest, SqlResult, SqlResults};
use super::{ApiError, ApiState, blocking};

/// The body of `POST /sql` and `POST /query`: the statement text, or `{"sql": "..."}`
/// (also ksqlDB's `{"ksql": "...", "streamsProperties": {...}}`, properties ignored). A body
/// with no SQL is refused rather than answered with nothing.
fn statement_text(body: &str) -> Result<String, ApiError> {
    let sql = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(o)) => {
            if let Some(k) = o
                .keys()
                .find(|k| !matches!(k.as_str(), "sql" | "ksql" | "streamsProperties"))
            {
                return Err(ApiError::bad_request(format!(
                    "unknown field \"{k}\": the body is SQL text or {{\"sql\": \"...\"}}"
                )));
            }
            match o.get("sql").or_else(|| o.get("ksql")) {
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(ApiError::bad_request("\"sql\" must be a string")),
                None => {
                    return Err(ApiError::bad_request(
                        "no SQL: the body is SQL text or {\"sql\": \"...\"}",
                    ));
                }
            }
        }
        _ => body.to_string(),
    };
    if sql.trim().is_empty() {
        return Err(ApiError::bad_request(
            "no SQL: the body is SQL text or {\"sql\": \"...\"}",
        ));
    }
    Ok(sql)
}

/// Rows of record batches as JSON objects (see [`crate::output::json_rows`]).
fn rows(batches: &[sluice_sql::RecordBatch]) -> Result<Vec<Value>, ApiError> {
    crate::output::json_rows(batches).map_err(ApiError::internal)
}

/// Rows as objects (what arrow's JSON writer makes of record batches).
fn row_objects(
    batches: &[sluice_sql::RecordBatch],
) -> Result<Vec<serde_json::Map<String, Value>>, ApiError> {
    Ok(rows(batches)?
        .into_iter()
        .filter_map(|r| match r {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .collect())
}

/// Runs statements on the worker's engine (an error is the client's: bad SQL, unknown names).
fn execute(state: &ApiState, sql: &str) -> Result<Vec<Output>, ApiError> {
    let mut d = state.deployer.lock();
    let outputs = d.worker.engine_mut().execute(sql);
    // Statements start and stop persistent queries: `/metrics` shows the ones now running.
    d.worker.publish_status();
    outputs.map_err(ApiError::bad_request)
}

/// Runs SQL statements (the body is the text, or `{"sql": "..."}`); each gives a message, or
/// rows with their columns in order. Push queries (`EMIT CHANGES`) go to `POST /query`.
#[utoipa::path(post, operation_id = "runStatements", path = "/sql", tag = "sql",
    request_body(content(
        (String = "text/plain"),
        (SqlRequest = "application/json"))),
    responses((status = 200, description = "One result per statement", body = SqlResults),
        (status = 400, description = "No SQL, or an SQL error with its line:column", body = ErrorBody)))]
pub async fn statements(
    State(state): State<ApiState>,
    body: String,
) -> Result<Json<SqlResults>, ApiError> {
    let sql = statement_text(&body)?;
    blocking(move || {
        let outputs = execute(&state, &sql)?;
        let mut results = Vec::new();
        // Statements and rows may quote a pipeline's SQL, which holds its secrets' values
        // (SHOW QUERIES, DESCRIBE): never shown.
        let redact = state.deployer.lock().worker.redactor();
        for o in outputs {
            results.push(match o {
                Output::Message(message) => SqlResult::Message {
                    message: redact(&message),
                },
                Output::Rows(b) => SqlResult::Rows {
                    columns: b
                        .first()
                        .map(|b| {
                            b.schema_ref()
                                .fields()
                                .iter()
                                .map(|f| f.name().clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                    rows: row_objects(&b)?
                        .into_iter()
                        .map(|mut row| {
                            for v in row.values_mut() {
                                if let Value::String(s) = v {
                                    *s = redact(s);
                                }
                            }
                            row
                        })
                        .collect(),
                },
                Output::Push(_) => {
                    return Err(ApiError::bad_request(
                        "a push query (EMIT CHANGES) streams: send it to POST /query",
                    ));
                }
            });
        }
        Ok(Json(SqlResults { results }))
    })
    .await
}

/// Rows buffered between a push query's thread and its client's connection: with the
/// connection's own buffers, all a client that stops reading can make the worker hold.
pub const PUSH_BUFFER: usize = 64;

/// How long a push query's thread waits for records before it looks whether its client is
/// still there.
const PUSH_POLL: Duration = Duration::from_millis(200);

/// How often a push query's thread looks for room in a full buffer.
const PUSH_RETRY: Duration = Duration::from_millis(10);

/// What push queries did, read by `/metrics`.
#[derive(Debug)]
pub struct PushStats {
    /// The most that stream at once (`--max-push-queries`).
    pub max: usize,
    /// Push queries running now (their threads hold a slot until they end).
    pub running: std::sync::atomic::AtomicUsize,
    /// Rows handed to clients' buffers, over all push queries.
    pub rows: AtomicU64,
    /// Push queries stopped because their client read too slowly.
    pub slow_clients: AtomicU64,
}

impl PushStats {
    /// No queries yet, at most `max` at once.
    pub fn new(max: usize) -> PushStats {
        PushStats {
            max,
            running: Default::default(),
            rows: AtomicU64::new(0),
            slow_clients: AtomicU64::new(0),
        }
    }
}

/// How handing one event to the client's buffer went.
pub(super) enum Handed {
    Sent,
    /// The client went away: its response (and the receiver) was dropped.
    Gone,
    /// The buffer stayed full for the slow-client timeout.
    Stalled,
}

/// Puts `event` into the bounded buffer, waiting up to `stall` for room. A plain thread
/// waits here (the query's), so it sleeps between tries rather than block on a future.
pub(super) fn hand(tx: &mpsc::Sender<Event>, mut event: Event, stall: Duration) -> Handed {
    let since = Instant::now();
    loop {
        match tx.try_send(event) {
            Ok(()) => return Handed::Sent,
            Err(TrySendError::Closed(_)) => return Handed::Gone,
            Err(TrySendError::Full(e)) if since.elapsed() < stall => {
                event = e;
                std::thread::sleep(PUSH_RETRY);
            }
            Err(TrySendError::Full(_)) => return Handed::Stalled,
        }
    }
}

/// The body of a push query's thread: polls the query and hands each row to the client's
/// buffer until a LIMIT ends it, it fails, the client goes away or stops reading. The last
/// event (`end` or `error`) goes on `last`, which the response sends after the buffered
/// rows, so it is never refused for want of room.
fn stream_rows(
    mut query: Box<sluice_sql::engine::PushQuery>,
    tx: mpsc::Sender<Event>,
    last: oneshot::Sender<Event>,
    stall: Duration,
    stats: &PushStats,
) {
    let mut sent = 0u64;
    let error = |message: String| Event::default().event("error").data(message);
    // The columns first, in the query's order (a row object's keys may come in any order).
    let columns: Vec<String> = query
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let header = Event::default()
        .event("columns")
        .data(json!(columns).to_string());
    if !matches!(hand(&tx, header, stall), Handed::Sent) {
        return;
    }
    let end = loop {
        if query.done() {
            let end = json!({ "rows": sent, "undecodable_records_skipped": query.rejected() });
            break Event::default().event("end").data(end.to_string());
        }
        if tx.is_closed() {
            return;
        }
        let batch = match query.poll(PUSH_POLL) {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => break error(e.to_string()),
        };
        let rows = match rows(&[batch]) {
            Ok(rows) => rows,
            Err(e) => break error(e.1),
        };
        let mut stalled = false;
        for r in rows {
            match hand(
                &tx,
                Event::default().event("row").data(r.to_string()),
                stall,
            ) {
                Handed::Sent => {
                    sent += 1;
                    stats.rows.fetch_add(1, Ordering::Relaxed);
                }
                Handed::Gone => return,
                Handed::Stalled => {
                    stalled = true;
                    break;
                }
            }
        }
        if stalled {
            stats.slow_clients.fetch_add(1, Ordering::Relaxed);
            break error(format!(
                "the client did not read: {PUSH_BUFFER} rows waited for it for {stall:?}, so the query stopped after {sent} rows (read faster, or add a LIMIT)"
            ));
        }
    };
    let _ = last.send(end);
}

/// Runs one push query (`SELECT ... EMIT CHANGES`) and streams its rows as server-sent
/// events: `columns` first (data: the column names in order), then `row` (data: one JSON
/// object), and at the end `end` (after a LIMIT; data `{rows, undecodable_records_skipped}`)
/// or `error` (the query failed, or the client read nothing for `--slow-client-timeout-secs`
/// while 64 rows waited). Closing the connection stops the query.
#[utoipa::path(post, operation_id = "pushQuery", path = "/query", tag = "sql",
    request_body(content(
        (String = "text/plain"),
        (SqlRequest = "application/json"))),
    responses((status = 200, description = "Server-sent events: columns, row, end, error", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not one push query, or an SQL error", body = ErrorBody),
        (status = 503, description = "--max-push-queries streams are open: retry (Retry-After)", body = ErrorBody)))]
/// Runs one push query and streams its rows until the client disconnects, a LIMIT ends it
/// or the client stops reading for the slow-client timeout.
///
/// ```text
///  query thread: poll ─► rows ─► try_send ─► [bounded buffer: PUSH_BUFFER] ─► SSE response
///                   └─────── end / error ─► oneshot ─────────────────────────► last event
/// ```
///
/// The query runs on a thread of its own, since its consumer blocks while it waits for
/// records; the async side only awaits the buffer. A full buffer stops the thread (it stops
/// reading the log, where the rows wait), so memory stays bounded whatever the client does;
/// a dropped connection closes the buffer and the thread ends within [`PUSH_POLL`].
pub async fn push_query(
    State(state): State<ApiState>,
    body: String,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = stream_slot(&state)?;
    let sql = statement_text(&body)?;
    let stall = state.slow_client_timeout;
    let stats = Arc::clone(&state.push_stats);
    let thread_stats = Arc::clone(&stats);
    let query = blocking(move || {
        let outputs = execute(&state, &sql)?;
        match outputs.into_iter().last() {
            Some(Output::Push(q)) => Ok(q),
            _ => Err(ApiError::bad_request(
                "not a push query: POST /query takes one SELECT ... EMIT CHANGES (use POST /sql for other statements)",
            )),
        }
    })
    .await?;
    thread_stream(stats, permit, "sluice-push-query", move |tx, last| {
        stream_rows(query, tx, last, stall, &thread_stats);
    })
}

/// A slot for one stream (a push query or an API consumer): at most `--max-push-queries`
/// stream at once, more get 503.
pub(super) fn stream_slot(state: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    Arc::clone(&state.push_queries)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::retry_later(
                "too many streams are open (push queries and consumers); close one or raise --max-push-queries",
            )
        })
}

/// Runs `body` on a thread of its own (it blocks on the log), holding `permit` and counted
/// in `stats.running` while it runs, and streams as server-sent events what it hands to its
/// bounded buffer ([`hand`]), then the last event it sends on the oneshot.
pub(super) fn thread_stream(
    stats: Arc<PushStats>,
    permit: tokio::sync::OwnedSemaphorePermit,
    name: &str,
    body: impl FnOnce(mpsc::Sender<Event>, oneshot::Sender<Event>) + Send + 'static,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (tx, rx) = mpsc::channel::<Event>(PUSH_BUFFER);
    let (last_tx, last_rx) = oneshot::channel::<Event>();
    stats.running.fetch_add(1, Ordering::SeqCst);
    let thread_stats = Arc::clone(&stats);
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _permit = permit;
            body(tx, last_tx);
            thread_stats.running.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        stats.running.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::retry_later(format!(
            "cannot start a thread ({name}): {e}"
        )));
    }
    let events =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let last = futures::stream::once(last_rx).filter_map(|e| std::future::ready(e.ok()));
    Ok(Sse::new(opened().chain(events).chain(last).map(Ok)).keep_alive(KeepAlive::default()))
}

/// A comment sent as soon as a stream opens, so a client (or a proxy that holds headers
/// until body bytes come) sees it answered before the first event.
pub(super) fn opened() -> impl Stream<Item = Event> {
    futures::stream::once(std::future::ready(Event::default().comment("ok")))
}
