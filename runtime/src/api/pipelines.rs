//! Pipelines: list, status with per-task state, deploy (PUT a TOML file), its file back,
//! validate without deploying, delete, pause, resume, restart (the pipeline or one task), and
//! its sources' and sinks' committed offsets (read, and reset while paused), as Kafka
//! Connect's REST API offers them for connectors. Also the persistent queries.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use sluice_task::TaskStatus;

use super::schema::{
    ActionDoc, BrokenFile, DeployDoc, ElsewhereDoc, ErrorBody, Message, OffsetDoc, OffsetsDoc,
    PipelineDoc, PipelineList, PipelineState, QueryDoc, QueryList, TaskDoc, TaskStateDoc,
    ValidationDoc,
};
use super::{ApiError, ApiState, blocking};
use crate::deployer::Deployer;
use crate::worker::Deployed;

/// A task's document from its status.
pub fn task_doc(name: &str, s: &TaskStatus) -> TaskDoc {
    let commits = s.commits.load(Ordering::Relaxed);
    let last_commit_ms = s.last_commit_ms.load(Ordering::Relaxed);
    TaskDoc {
        name: name.to_string(),
        state: match s.task_state() {
            sluice_task::TaskState::Running => TaskStateDoc::Running,
            sluice_task::TaskState::Retrying => TaskStateDoc::Retrying,
            sluice_task::TaskState::Failed => TaskStateDoc::Failed,
            sluice_task::TaskState::Stopped => TaskStateDoc::Stopped,
        },
        records_in: s.records_in.load(Ordering::Relaxed),
        records_out: s.records_out.load(Ordering::Relaxed),
        bytes_in: s.bytes_in.load(Ordering::Relaxed),
        bytes_out: s.bytes_out.load(Ordering::Relaxed),
        dead_letters: s.rejected.load(Ordering::Relaxed),
        dropped: s.dropped.load(Ordering::Relaxed),
        restarts: s.restarts.load(Ordering::Relaxed),
        last_error: s.error(),
        lag_bytes: *s.source_lag_bytes.lock(),
        commits,
        last_commit_ms: (last_commit_ms > 0).then_some(last_commit_ms),
        commit_ms_avg: (commits > 0)
            .then(|| s.commit_micros.load(Ordering::Relaxed) as f64 / commits as f64 / 1000.0),
    }
}

/// A pipeline's status document.
pub fn pipeline_doc(d: &Deployed) -> PipelineDoc {
    let tasks: Vec<TaskDoc> = d
        .tasks
        .iter()
        .map(|t| task_doc(&t.name, &t.status))
        .collect();
    let state = if d.paused {
        PipelineState::Paused
    } else if tasks
        .iter()
        .any(|t| matches!(t.state, TaskStateDoc::Retrying | TaskStateDoc::Failed))
    {
        PipelineState::Degraded
    } else {
        PipelineState::Running
    };
    PipelineDoc {
        name: d.name.clone(),
        file: d.path.display().to_string(),
        state,
        tasks,
    }
}

/// 404 for a pipeline not deployed here, naming the node that runs it in a cluster.
fn not_deployed(d: &Deployer, name: &str) -> ApiError {
    let elsewhere = d.elsewhere().into_iter().find(|e| e.pipeline == name);
    match elsewhere.map(|e| (e.node, e.api)) {
        Some((Some(node), api)) => ApiError::not_found(format!(
            "pipeline {name} runs on node {node} of the cluster, not here{}: ask there",
            api.map(|a| format!(" (its API: {a})")).unwrap_or_default()
        )),
        Some((None, _)) => ApiError::not_found(format!(
            "pipeline {name} runs on no node now (the cluster is electing its node)"
        )),
        None => ApiError::not_found(format!("no pipeline named '{name}' is deployed")),
    }
}

/// Lists the deployed pipelines and the files that failed to load.
#[utoipa::path(get, operation_id = "listPipelines", path = "/pipelines", tag = "pipelines",
    responses((status = 200, description = "Pipelines with per-task state", body = PipelineList)))]
pub async fn list(State(state): State<ApiState>) -> Result<Json<PipelineList>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        Ok(Json(PipelineList {
            pipelines: d.worker.pipelines().iter().map(pipeline_doc).collect(),
            broken_files: d
                .errors()
                .iter()
                .map(|(f, e)| BrokenFile {
                    file: f.display().to_string(),
                    error: e.clone(),
                })
                .collect(),
            elsewhere: d
                .elsewhere()
                .into_iter()
                .map(|e| ElsewhereDoc {
                    name: e.pipeline,
                    node: e.node,
                })
                .collect(),
        }))
    })
    .await
}

/// One pipeline's status.
#[utoipa::path(get, operation_id = "getPipeline", path = "/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    responses((status = 200, description = "The pipeline", body = PipelineDoc),
        (status = 404, description = "Not deployed", body = ErrorBody)))]
pub async fn status(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PipelineDoc>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        d.worker
            .pipeline(&name)
            .map(|p| Json(pipeline_doc(p)))
            .ok_or_else(|| not_deployed(&d, &name))
    })
    .await
}

/// Deploys the TOML body as pipeline `name` (written to the pipelines folder as
/// `<name>.toml`; a redeploy replaces the running version, and a failed one brings the
/// previous version back).
#[utoipa::path(put, operation_id = "deployPipeline", path = "/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    request_body(content = String, content_type = "application/toml", description = "The pipeline file"),
    responses((status = 200, description = "Deployed", body = DeployDoc),
        (status = 400, description = "Invalid file or SQL: the error names file:line:key or line:column", body = ErrorBody),
        (status = 409, description = "Another pipeline holds the name, an internal name or the ingest route", body = ErrorBody),
        (status = 500, description = "The pipelines folder could not be written", body = ErrorBody),
        (status = 503, description = "The log or an external system failed: retry (Retry-After)", body = ErrorBody)))]
pub async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: String,
) -> Result<Json<DeployDoc>, ApiError> {
    blocking(move || {
        let mut d = state.deployer.lock();
        let message = d.put(&name, &body)?;
        let pipeline = d.worker.pipeline(&name).map(pipeline_doc);
        Ok(Json(DeployDoc { message, pipeline }))
    })
    .await
}

/// The pipeline's file as deployed (TOML, as written: secrets given as `${VAR}` stay
/// references; their values are only ever in the worker's memory).
#[utoipa::path(get, operation_id = "getPipelineConfig", path = "/pipelines/{name}/config", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    responses((status = 200, description = "The TOML file", content_type = "application/toml", body = String),
        (status = 404, description = "Not deployed", body = ErrorBody)))]
pub async fn config(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let path = blocking(move || {
        let d = state.deployer.lock();
        d.worker
            .pipeline(&name)
            .map(|p| p.path.clone())
            .ok_or_else(|| not_deployed(&d, &name))
    })
    .await?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| ApiError::internal(format!("read {}: {e}", path.display())))?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text))
}

/// The query of `POST /pipelines/validate`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ValidateQuery {
    /// The name it would be deployed under (default: the file's `name`, else `pipeline`).
    name: Option<String>,
}

/// Checks a pipeline file without deploying or writing anything: its keys and values, its
/// SQL's syntax, its connectors' settings, and the names other deployed pipelines hold. What
/// needs the deploy itself is not checked: SQL against the catalog (an unknown stream), and
/// topics a sink reads that neither exist nor are declared.
#[utoipa::path(post, operation_id = "validatePipeline", path = "/pipelines/validate", tag = "pipelines", params(ValidateQuery),
    request_body(content = String, content_type = "application/toml", description = "The pipeline file"),
    responses((status = 200, description = "Valid: what it would deploy", body = ValidationDoc),
        (status = 400, description = "Invalid: file:line:key or SQL line:column", body = ErrorBody),
        (status = 409, description = "Another pipeline holds one of its names", body = ErrorBody)))]
pub async fn validate(
    State(state): State<ApiState>,
    Query(q): Query<ValidateQuery>,
    body: String,
) -> Result<Json<ValidationDoc>, ApiError> {
    blocking(move || {
        let name = q.name.clone().unwrap_or_else(|| "pipeline".into());
        if !crate::pipeline::valid_name(&name) {
            return Err(crate::deployer::DeployerError::BadName(name).into());
        }
        // Parsed and built outside the deployer's lock: only the check against the deployed
        // pipelines needs it.
        let dir = state.deployer.lock().dir().to_path_buf();
        let path = dir.join(format!("{name}.toml"));
        let p = crate::pipeline::parse(&body, &path)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if q.name.is_some() && p.name != name {
            return Err(crate::deployer::DeployerError::NameMismatch {
                file: p.name,
                request: name,
            }
            .into());
        }
        crate::pipeline::build_check(&p)
            .map_err(|e| ApiError::bad_request(e.redact(&p.secrets).to_string()))?;
        state.deployer.lock().worker.check(&p)?;
        Ok(Json(ValidationDoc {
            valid: true,
            statements: p
                .config
                .sql
                .as_deref()
                .map_or(0, |s| sluice_sql::parse(s).map_or(0, |v| v.len())),
            topics: p.config.topics.len(),
            sources: p.config.sources.len(),
            sinks: p.config.sinks.len(),
            name: p.name,
        }))
    })
    .await
}

/// Stops the pipeline and removes its file (topics, SQL objects and positions stay).
#[utoipa::path(delete, operation_id = "deletePipeline", path = "/pipelines/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    responses((status = 200, description = "Removed", body = Message),
        (status = 404, description = "Not deployed", body = ErrorBody),
        (status = 500, description = "The file could not be removed", body = ErrorBody)))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Message>, ApiError> {
    blocking(move || {
        let message = state.deployer.lock().delete(&name)?;
        Ok(Json(Message { message }))
    })
    .await
}

/// What `POST /pipelines/{name}/{action}` does.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop the sources and sinks (they commit first); queries keep running.
    Pause,
    /// Start them again from their committed positions.
    Resume,
    /// Stop and start them.
    Restart,
}

/// Pauses, resumes or restarts a pipeline's tasks.
#[utoipa::path(post, operation_id = "pipelineAction", path = "/pipelines/{name}/{action}", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline"), ("action" = Action, Path, description = "pause, resume or restart")),
    responses((status = 200, description = "Done", body = ActionDoc),
        (status = 404, description = "Not deployed, or an unknown action", body = ErrorBody)))]
pub async fn action(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<ActionDoc>, ApiError> {
    let action: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
        .map_err(|_| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown action '{action}': use pause, resume or restart"),
            )
        })?;
    blocking(move || {
        let mut d = state.deployer.lock();
        if d.worker.pipeline(&name).is_none() {
            return Err(not_deployed(&d, &name));
        }
        match action {
            Action::Pause => d.worker.pause(&name),
            Action::Resume => d.worker.resume(&name),
            Action::Restart => d.worker.restart(&name),
        }?;
        let pipeline = d.worker.pipeline(&name).map(pipeline_doc);
        Ok(Json(ActionDoc { pipeline }))
    })
    .await
}

/// Restarts one task of a running pipeline (it resumes from its committed position).
#[utoipa::path(post, operation_id = "restartTask", path = "/pipelines/{name}/tasks/{task}/restart", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline"),
        ("task" = String, Path, description = "`source <name>` or `sink <name>`")),
    responses((status = 200, description = "Restarted", body = ActionDoc),
        (status = 404, description = "No such pipeline or task", body = ErrorBody),
        (status = 409, description = "The pipeline is paused", body = ErrorBody)))]
pub async fn restart_task(
    State(state): State<ApiState>,
    Path((name, task)): Path<(String, String)>,
) -> Result<Json<ActionDoc>, ApiError> {
    blocking(move || {
        let mut d = state.deployer.lock();
        if d.worker.pipeline(&name).is_none() {
            return Err(not_deployed(&d, &name));
        }
        d.worker.restart_task(&name, &task)?;
        let pipeline = d.worker.pipeline(&name).map(pipeline_doc);
        Ok(Json(ActionDoc { pipeline }))
    })
    .await
}

/// A stored position as JSON when it is JSON, else as text.
fn position_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The committed positions of the pipeline's sources and offsets of its sinks.
#[utoipa::path(get, operation_id = "getPipelineOffsets", path = "/pipelines/{name}/offsets", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    responses((status = 200, description = "Committed positions", body = OffsetsDoc),
        (status = 404, description = "Not deployed", body = ErrorBody)))]
pub async fn offsets(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<OffsetsDoc>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        if d.worker.pipeline(&name).is_none() {
            return Err(not_deployed(&d, &name));
        }
        let offsets = d
            .worker
            .offsets(&name)?
            .into_iter()
            .map(|o| OffsetDoc {
                offset: match o.partition {
                    Some(_) => std::str::from_utf8(&o.offset)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .map_or(serde_json::Value::Null, serde_json::Value::from),
                    None => position_value(&o.offset),
                },
                task: o.task,
                partition: o.partition,
            })
            .collect();
        Ok(Json(OffsetsDoc {
            pipeline: name,
            offsets,
        }))
    })
    .await
}

/// Forgets the committed positions of a paused pipeline's sources and sinks: resumed, its
/// sources read their input from the start and its sinks their topics (Kafka Connect's
/// offset reset).
#[utoipa::path(delete, operation_id = "resetPipelineOffsets", path = "/pipelines/{name}/offsets", tag = "pipelines",
    params(("name" = String, Path, description = "Pipeline")),
    responses((status = 200, description = "Reset", body = Message),
        (status = 404, description = "Not deployed", body = ErrorBody),
        (status = 409, description = "The pipeline is not paused", body = ErrorBody)))]
pub async fn reset_offsets(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Message>, ApiError> {
    blocking(move || {
        let mut d = state.deployer.lock();
        if d.worker.pipeline(&name).is_none() {
            return Err(not_deployed(&d, &name));
        }
        let n = d.worker.reset_offsets(&name)?;
        Ok(Json(Message {
            message: format!(
                "Reset pipeline {name}: {n} committed position(s) forgotten; it starts from the beginning when resumed."
            ),
        }))
    })
    .await
}

/// The persistent queries: statement, and task status while running.
#[utoipa::path(get, operation_id = "listQueries", path = "/queries", tag = "sql",
    responses((status = 200, description = "Persistent queries", body = QueryList)))]
pub async fn queries(State(state): State<ApiState>) -> Result<Json<QueryList>, ApiError> {
    blocking(move || {
        let d = state.deployer.lock();
        let engine = d.worker.engine();
        let redact = d.worker.redactor();
        let queries = engine
            .catalog()
            .queries()
            .map(|q| QueryDoc {
                id: q.id.clone(),
                sink: q.sink.clone(),
                statement: redact(&q.statement),
                failed_to_start: engine.queries().failure(&q.id).map(str::to_string),
                status: engine
                    .queries()
                    .stats(&q.id)
                    .map(|s| task_doc(&format!("query {}", q.id), &s)),
            })
            .collect();
        Ok(Json(QueryList { queries }))
    })
    .await
}
