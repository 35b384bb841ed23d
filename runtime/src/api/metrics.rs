//! `GET /metrics`: Prometheus text exposition of the worker's counters, read when scraped
//! (tasks and queries keep plain atomics; nothing is updated per record for metrics' sake).
//!
//! Per task (`pipeline`, `task` labels): records and bytes in/out, dead letters, restarts
//! (errors), commits and commit time; per query: records in/out and rejected; push queries
//! streaming, their rows and slow clients; per consumer group and partition: lag. Tasks and
//! queries come from the worker's status board, so a scrape never waits for a deploy.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, ApiState, blocking};

/// One metric family: help, type, and samples as (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {v}", f.name);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
            }
        }
    }
    out
}

/// The metrics document.
pub fn text(state: &ApiState) -> String {
    let family = |name, help, kind| Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    };
    let mut task = [
        family(
            "sluice_task_records_in_total",
            "Records a task read.",
            "counter",
        ),
        family(
            "sluice_task_records_out_total",
            "Records a task wrote.",
            "counter",
        ),
        family(
            "sluice_task_bytes_in_total",
            "Key and value bytes a task read.",
            "counter",
        ),
        family(
            "sluice_task_bytes_out_total",
            "Key and value bytes a task wrote.",
            "counter",
        ),
        family(
            "sluice_task_dead_letters_total",
            "Records a task sent to the dead-letter topic.",
            "counter",
        ),
        family(
            "sluice_task_errors_total",
            "Task failures (each followed by a restart with backoff).",
            "counter",
        ),
        family(
            "sluice_task_commits_total",
            "Commits (source transactions, sink flush and offset commits).",
            "counter",
        ),
        family(
            "sluice_task_commit_seconds_total",
            "Time spent committing.",
            "counter",
        ),
        family(
            "sluice_task_up",
            "1 while the task runs without error.",
            "gauge",
        ),
    ];
    let mut query = [
        family(
            "sluice_query_records_in_total",
            "Records a persistent query read.",
            "counter",
        ),
        family(
            "sluice_query_records_out_total",
            "Records a persistent query wrote.",
            "counter",
        ),
        family(
            "sluice_query_dead_letters_total",
            "Records a persistent query sent to its dead-letter topic.",
            "counter",
        ),
        family(
            "sluice_query_records_dropped_total",
            "Records a persistent query left out by design: stream records whose inner-join key is NULL.",
            "counter",
        ),
    ];
    // From the status board, not the worker: a deploy holds the worker while it joins
    // task threads, and a scrape must not wait for that.
    let board = state.status.snapshot();
    for t in &board.tasks {
        let l = format!(
            "pipeline=\"{}\",task=\"{}\"",
            label(&t.pipeline),
            label(&t.task)
        );
        let s = &t.status;
        let values = [
            s.records_in.load(Ordering::Relaxed) as f64,
            s.records_out.load(Ordering::Relaxed) as f64,
            s.bytes_in.load(Ordering::Relaxed) as f64,
            s.bytes_out.load(Ordering::Relaxed) as f64,
            s.rejected.load(Ordering::Relaxed) as f64,
            s.restarts.load(Ordering::Relaxed) as f64,
            s.commits.load(Ordering::Relaxed) as f64,
            s.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
            f64::from(u8::from(s.state() == "running")),
        ];
        for (f, v) in task.iter_mut().zip(values) {
            f.samples.push((l.clone(), v));
        }
    }
    let mut source_lag = family(
        "sluice_source_lag_bytes",
        "How far behind its input a source is, in bytes (a Postgres CDC source: the WAL its replication slot holds back).",
        "gauge",
    );
    for t in &board.tasks {
        if let Some(lag) = *t.status.source_lag_bytes.lock() {
            let l = format!(
                "pipeline=\"{}\",task=\"{}\"",
                label(&t.pipeline),
                label(&t.task)
            );
            source_lag.samples.push((l, lag as f64));
        }
    }
    for (id, s) in &board.queries {
        let l = format!("query=\"{}\"", label(id));
        let values = [
            s.records_in.load(Ordering::Relaxed) as f64,
            s.records_out.load(Ordering::Relaxed) as f64,
            s.rejected.load(Ordering::Relaxed) as f64,
            s.dropped.load(Ordering::Relaxed) as f64,
        ];
        for (f, v) in query.iter_mut().zip(values) {
            f.samples.push((l.clone(), v));
        }
    }
    let push = &state.push_stats;
    let mut push_families = [
        family(
            "sluice_push_queries",
            "Push queries streaming now.",
            "gauge",
        ),
        family(
            "sluice_push_queries_max",
            "Push queries that may stream at once (--max-push-queries).",
            "gauge",
        ),
        family(
            "sluice_push_query_rows_total",
            "Rows push queries handed to their clients' buffers.",
            "counter",
        ),
        family(
            "sluice_push_query_slow_clients_total",
            "Push queries stopped because their client did not read.",
            "counter",
        ),
    ];
    let values = [
        push.running.load(Ordering::Relaxed) as f64,
        push.max as f64,
        push.rows.load(Ordering::Relaxed) as f64,
        push.slow_clients.load(Ordering::Relaxed) as f64,
    ];
    for (f, v) in push_families.iter_mut().zip(values) {
        f.samples.push((String::new(), v));
    }
    let mut lag = family(
        "sluice_consumer_lag",
        "Records between a group's committed offset and the log end.",
        "gauge",
    );
    for (g, _, _) in state.log.list_groups() {
        if let Some(info) = state.log.describe_group(&g) {
            for p in info.partitions {
                lag.samples.push((
                    format!(
                        "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                        label(&g),
                        label(&p.tp.topic),
                        p.tp.partition
                    ),
                    p.lag as f64,
                ));
            }
        }
    }
    let mut all: Vec<Family> = task.into_iter().chain(query).chain(push_families).collect();
    all.push(lag);
    all.push(source_lag);
    render(&all)
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "worker",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let body = blocking(move || Ok(text(&state))).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
