//! Pipelines: list, status with per-task state, deploy (PUT a TOML file), delete, pause,
//! resume and restart.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiState, blocking};
use crate::worker::Deployed;

/// A pipeline's status document.
pub fn status_json(d: &Deployed) -> Value {
    let tasks: Vec<Value> = d
        .tasks
        .iter()
        .map(|t| {
            let s = &t.status;
            let commits = s.commits.load(Ordering::Relaxed);
            let last_commit_ms = s.last_commit_ms.load(Ordering::Relaxed);
            json!({
                "name": t.name,
                "state": s.state(),
                "records_in": s.records_in.load(Ordering::Relaxed),
                "records_out": s.records_out.load(Ordering::Relaxed),
                "bytes_in": s.bytes_in.load(Ordering::Relaxed),
                "bytes_out": s.bytes_out.load(Ordering::Relaxed),
                "dead_letters": s.rejected.load(Ordering::Relaxed),
                "dropped": s.dropped.load(Ordering::Relaxed),
                "restarts": s.restarts.load(Ordering::Relaxed),
                "last_error": *s.error.lock(),
                "lag_bytes": *s.source_lag_bytes.lock(),
                "commits": commits,
                "last_commit_ms": (last_commit_ms > 0).then_some(last_commit_ms),
                "commit_ms_avg": (commits > 0).then(|| {
                    s.commit_micros.load(Ordering::Relaxed) as f64 / commits as f64 / 1000.0
                }),
            })
        })
        .collect();
    let state = if d.paused {
        "paused"
    } else if d
        .tasks
        .iter()
        .any(|t| matches!(t.status.state(), "retrying" | "failed"))
    {
        "degraded"
    } else {
        "running"
    };
    json!({
        "name": d.name,
        "file": d.path.display().to_string(),
        "state": state,
        "tasks": tasks,
    })
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        let pipelines: Vec<Value> = d.worker.pipelines().iter().map(status_json).collect();
        let broken: Vec<Value> = d
            .errors()
            .iter()
            .map(|(f, e)| json!({ "file": f.display().to_string(), "error": e }))
            .collect();
        Ok(Json(
            json!({ "pipelines": pipelines, "broken_files": broken }),
        ))
    })
    .await
}

pub async fn status(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        d.worker
            .pipeline(&name)
            .map(|p| Json(status_json(p)))
            .ok_or_else(|| ApiError::not_found(format!("no pipeline named '{name}' is deployed")))
    })
    .await
}

/// Deploys the TOML body as pipeline `name` (written to the pipelines folder).
pub async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let mut d = state.deployer.lock();
        let message = d.put(&name, &body)?;
        let status = d.worker.pipeline(&name).map(status_json);
        Ok(Json(json!({ "message": message, "pipeline": status })))
    })
    .await
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let message = state.deployer.lock().delete(&name)?;
        Ok(Json(json!({ "message": message })))
    })
    .await
}

/// `pause`, `resume` or `restart`.
pub async fn action(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let mut d = state.deployer.lock();
        if d.worker.pipeline(&name).is_none() {
            return Err(ApiError::not_found(format!(
                "no pipeline named '{name}' is deployed"
            )));
        }
        let done = match action.as_str() {
            "pause" => d.worker.pause(&name),
            "resume" => d.worker.resume(&name),
            "restart" => d.worker.restart(&name),
            other => {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("unknown action '{other}': use pause, resume or restart"),
                ));
            }
        };
        done?;
        let status = d.worker.pipeline(&name).map(status_json);
        Ok(Json(json!({ "pipeline": status })))
    })
    .await
}
