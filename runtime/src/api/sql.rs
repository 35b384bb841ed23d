//! SQL over HTTP: statements answered as JSON, and push queries streamed as server-sent
//! events (`event: row`, one JSON object per row; `event: end` when a LIMIT is reached).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::{Value, json};
use sluice_sql::engine::Output;

use super::{ApiError, ApiState, blocking};

/// The body of `POST /sql` and `POST /query`: `{"sql": "..."}` or the statement text.
fn statement_text(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(o)) => o
            .get("sql")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => body.to_string(),
    }
}

/// Rows of record batches as JSON objects.
fn rows(batches: &[sluice_sql::RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut w = arrow_json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(b).map_err(ApiError::internal)?;
    }
    w.finish().map_err(ApiError::internal)?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_slice(&bytes).map_err(ApiError::internal)? {
        Value::Array(rows) => Ok(rows),
        _ => Ok(Vec::new()),
    }
}

/// Runs statements on the worker's engine (an error is the client's: bad SQL, unknown names).
fn execute(state: &ApiState, sql: &str) -> Result<Vec<Output>, ApiError> {
    state
        .deployer
        .lock()
        .worker
        .engine_mut()
        .execute(sql)
        .map_err(ApiError::bad_request)
}

/// Runs statements; each gives `{"message": ...}` or `{"rows": [...]}`.
pub async fn statements(
    State(state): State<ApiState>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let sql = statement_text(&body);
    blocking(move || {
        let outputs = execute(&state, &sql)?;
        let mut results = Vec::new();
        for o in outputs {
            results.push(match o {
                Output::Message(m) => json!({ "message": m }),
                Output::Rows(b) => json!({ "rows": rows(&b)? }),
                Output::Push(_) => {
                    return Err(ApiError::bad_request(
                        "a push query (EMIT CHANGES) streams: send it to POST /query",
                    ));
                }
            });
        }
        Ok(Json(json!({ "results": results })))
    })
    .await
}

/// Runs one push query and streams its rows until the client disconnects or a LIMIT ends it.
pub async fn push_query(
    State(state): State<ApiState>,
    body: String,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Each stream holds a thread of the blocking pool, which `/health` and `/ingest` need too.
    let permit = Arc::clone(&state.push_queries)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::retry_later(
                "too many push queries are streaming; close one or raise --max-push-queries",
            )
        })?;
    let sql = statement_text(&body);
    let mut query = blocking(move || {
        let outputs = execute(&state, &sql)?;
        match outputs.into_iter().last() {
            Some(Output::Push(q)) => Ok(q),
            _ => Err(ApiError::bad_request(
                "not a push query: POST /query takes one SELECT ... EMIT CHANGES (use POST /sql for other statements)",
            )),
        }
    })
    .await?;
    // Bounded: a slow client slows the query's polling instead of buffering without end.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut sent = 0usize;
        while !query.done() && !tx.is_closed() {
            match query.poll(Duration::from_millis(200)) {
                Ok(Some(batch)) => {
                    let Ok(rows) = rows(&[batch]) else { break };
                    for r in rows {
                        sent += 1;
                        let event = Event::default().event("row").data(r.to_string());
                        if tx.blocking_send(event).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Event::default().event("error").data(e.to_string()));
                    return;
                }
            }
        }
        let end = json!({ "rows": sent, "undecodable_records_skipped": query.rejected() });
        let _ = tx.blocking_send(Event::default().event("end").data(end.to_string()));
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
