//! `GET /metrics`: Prometheus text exposition of the worker's counters, read when scraped
//! (tasks and queries keep plain atomics; nothing is updated per record for metrics' sake).
//!
//! Per task (`pipeline`, `task` labels): records and bytes in/out, dead letters, restarts
//! (errors), commits and commit time; per query: records in/out and rejected; per consumer
//! group and partition: lag.

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
            let _ = writeln!(out, "{}{{{labels}}} {v}", f.name);
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
    ];
    {
        let d = state.deployer.lock();
        for p in d.worker.pipelines() {
            for t in &p.tasks {
                let l = format!(
                    "pipeline=\"{}\",task=\"{}\"",
                    label(&p.name),
                    label(&t.name)
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
        }
        let engine = d.worker.engine();
        for q in engine.catalog().queries() {
            if let Some(s) = engine.queries().stats(&q.id) {
                let l = format!("query=\"{}\"", label(&q.id));
                let values = [
                    s.records_in.load(Ordering::Relaxed) as f64,
                    s.records_out.load(Ordering::Relaxed) as f64,
                    s.rejected.load(Ordering::Relaxed) as f64,
                ];
                for (f, v) in query.iter_mut().zip(values) {
                    f.samples.push((l.clone(), v));
                }
            }
        }
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
    let mut all: Vec<Family> = task.into_iter().chain(query).collect();
    all.push(lag);
    render(&all)
}

pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let body = blocking(move || Ok(text(&state))).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
}
