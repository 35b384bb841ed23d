//! Topics (list, describe, create, delete), records (read a partition, produce) and consumer
//! groups with lag. The JSON documents here are also what the CLI renders, locally or
//! fetched from a worker (see `cli::remote`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_log::{
    ConsumerConfig, Isolation, Log, LogError, OffsetReset, ProducerConfig, Record, TopicPartition,
};

use super::{ApiError, ApiState, blocking};

/// Refuses a user's change to an internal topic (403): the worker and the log write those
/// through the log directly, never through this API.
fn refuse_internal(name: &str, action: &'static str) -> Result<(), ApiError> {
    if sluice_log::is_internal_topic(name) {
        return Err(log_error(LogError::InternalTopic {
            name: name.into(),
            action,
        }));
    }
    Ok(())
}

pub(super) fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => ApiError::not_found(e),
        LogError::TopicExists(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        LogError::InternalTopic { .. } => ApiError(StatusCode::FORBIDDEN, e.to_string()),
        LogError::MessageTooLarge { .. } | LogError::RecordTooLarge { .. } => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        e if e.is_user_error() => ApiError::bad_request(e),
        e if e.is_retryable() => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => ApiError::internal(e),
    }
}

/// Every topic with partitions, records and bytes (`all`: internal ones too).
pub fn topics_json(log: &Log, all: bool) -> Value {
    let topics: Vec<Value> = log
        .topic_names()
        .into_iter()
        .filter(|n| all || !n.starts_with("__"))
        .filter_map(|n| log.describe_topic(&n).ok())
        .map(|d| {
            // Offsets, not records: transaction markers take offsets too, and counting
            // records would read every batch header of the topic.
            let offsets: i64 = d
                .partitions
                .iter()
                .map(|p| p.log_end_offset - p.log_start_offset)
                .sum();
            let bytes: u64 = d.partitions.iter().map(|p| p.size_bytes).sum();
            json!({ "name": d.name, "partitions": d.partitions.len(), "offsets": offsets, "bytes": bytes })
        })
        .collect();
    json!({ "topics": topics })
}

/// One topic: its partitions' offsets and sizes, and its config.
pub fn topic_json(log: &Log, name: &str) -> Result<Value, LogError> {
    let d = log.describe_topic(name)?;
    let partitions: Vec<Value> = d
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.log_end_offset,
                "high_watermark": p.high_watermark,
                "last_stable_offset": p.last_stable_offset,
                "leader_epoch": p.leader_epoch,
                "segments": p.segments,
                "size_bytes": p.size_bytes,
                "local_log_start_offset": p.local_log_start_offset,
                "remote_log_start_offset": p.remote.map(|r| r.0),
                "remote_log_end_offset": p.remote.map(|r| r.1),
                "remote_segments": p.remote_segments,
                "remote_size_bytes": p.remote_size_bytes,
            })
        })
        .collect();
    let config: BTreeMap<&str, Value> = d
        .config
        .iter()
        .map(|(k, v, set)| (*k, json!({ "value": v, "overridden": set })))
        .collect();
    Ok(
        json!({ "name": d.name, "internal": d.internal, "partitions": partitions, "config": config }),
    )
}

/// Every consumer group with its state and members.
pub fn groups_json(log: &Log) -> Value {
    let groups: Vec<Value> = log
        .list_groups()
        .into_iter()
        .map(|(g, s, n)| json!({ "group": g, "state": format!("{s:?}"), "members": n }))
        .collect();
    json!({ "groups": groups })
}

/// One group: committed offsets, log end and lag per partition.
pub fn group_json(log: &Log, group: &str) -> Option<Value> {
    let info = log.describe_group(group)?;
    let partitions: Vec<Value> = info
        .partitions
        .iter()
        .map(|p| {
            json!({
                "topic": p.tp.topic,
                "partition": p.tp.partition,
                "committed": p.committed,
                "log_end": p.log_end,
                "lag": p.lag,
                "member": p.member,
            })
        })
        .collect();
    Some(json!({
        "group": info.group,
        "state": format!("{:?}", info.state),
        "members": info.description.as_ref().map_or(0, |d| d.members.len()),
        "partitions": partitions,
    }))
}

#[derive(Debug, Deserialize)]
pub struct TopicsQuery {
    #[serde(default)]
    all: bool,
}

pub async fn topics(
    State(state): State<ApiState>,
    Query(q): Query<TopicsQuery>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(topics_json(&state.log, q.all)))).await
}

pub async fn describe_topic(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || topic_json(&state.log, &name).map(Json).map_err(log_error)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

pub async fn create_topic(
    State(state): State<ApiState>,
    Json(c): Json<CreateTopic>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    blocking(move || {
        refuse_internal(&c.name, "created")?;
        let config: Vec<(String, String)> = c.config.into_iter().collect();
        state
            .log
            .create_topic(&c.name, c.partitions, &config)
            .map_err(log_error)?;
        Ok((
            StatusCode::CREATED,
            Json(topic_json(&state.log, &c.name).map_err(log_error)?),
        ))
    })
    .await
}

pub async fn delete_topic(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        refuse_internal(&name, "deleted")?;
        state.log.delete_topic(&name).map_err(log_error)?;
        Ok(Json(json!({ "message": format!("Deleted topic {name}.") })))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct RecordsQuery {
    #[serde(default)]
    partition: u32,
    #[serde(default)]
    offset: i64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// A record as JSON: key, value and header values as text (lossy UTF-8), with its
/// coordinates. Headers keep their order and duplicates (`[{key, value}]`), as Kafka's do.
pub fn record_json(r: &sluice_log::ConsumerRecord) -> Value {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| json!({ "key": h.key, "value": h.value.as_ref().map(text) }))
        .collect();
    json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": r.key.as_ref().map(text),
        "value": r.value.as_ref().map(text),
        "headers": headers,
    })
}

/// The headers of a produced line: `{"k": "v", ...}` or `[{"key": "k", "value": "v"}, ...]`
/// (a value string, any JSON written as its text, or null).
fn headers_of(v: &Value, line: usize) -> Result<Vec<sluice_log::Header>, ApiError> {
    let text = |v: &Value| match v {
        Value::Null => None,
        Value::String(s) => Some(Bytes::from(s.clone())),
        other => Some(Bytes::from(other.to_string())),
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(o) => Ok(o
            .iter()
            .map(|(k, v)| sluice_log::Header {
                key: k.clone(),
                value: text(v),
            })
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|h| match h["key"].as_str() {
                Some(k) => Ok(sluice_log::Header {
                    key: k.to_string(),
                    value: text(&h["value"]),
                }),
                None => Err(ApiError::bad_request(format!(
                    "line {line}: a header needs a string \"key\""
                ))),
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!(
            "line {line}: \"headers\" must be an object or an array of {{key, value}}"
        ))),
    }
}

/// Committed records of one partition from `offset` (at most `limit`).
pub async fn read_records(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        let tp = TopicPartition {
            topic: name.clone(),
            partition: q.partition,
        };
        let end = state
            .log
            .describe_topic(&name)
            .map_err(log_error)?
            .partitions
            .get(q.partition as usize)
            .map(|p| p.last_stable_offset)
            .ok_or_else(|| {
                ApiError::not_found(format!("topic {name} has no partition {}", q.partition))
            })?;
        let mut consumer = state.log.consumer(ConsumerConfig {
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: q.limit.clamp(1, 10_000),
            ..ConsumerConfig::default()
        });
        consumer
            .assign(std::slice::from_ref(&tp))
            .map_err(log_error)?;
        consumer.seek(&tp, q.offset);
        let mut out = Vec::new();
        let mut next = q.offset;
        while out.len() < q.limit && next < end {
            let records = consumer
                .poll(Duration::from_millis(50))
                .map_err(log_error)?;
            // Where the consumer is: past transaction markers, aborted batches and gaps it
            // read over, so `next_offset` moves even when no record came back.
            let position = consumer.position(&tp).unwrap_or(next);
            if records.is_empty() {
                if position > next {
                    next = position;
                    continue;
                }
                break;
            }
            let room = q.limit - out.len();
            for r in records.iter().take(room) {
                next = r.offset + 1;
                out.push(record_json(r));
            }
            if records.len() <= room {
                next = next.max(position);
            }
        }
        Ok(Json(json!({ "records": out, "next_offset": next })))
    })
    .await
}

/// Produces records: an NDJSON body of `{"key": ..., "value": ..., "timestamp": ...}` objects
/// (value a string or any JSON, written as its text; timestamp in ms, default now), answered
/// after the records are written.
pub async fn produce(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        refuse_internal(&name, "written")?;
        state.log.topic(&name).map_err(log_error)?;
        let mut records = Vec::new();
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let v: Value = serde_json::from_slice(line)
                .map_err(|e| ApiError::bad_request(format!("line {}: not JSON: {e}", i + 1)))?;
            let text = |v: &Value| match v {
                Value::Null => None,
                Value::String(s) => Some(Bytes::from(s.clone())),
                other => Some(Bytes::from(other.to_string())),
            };
            records.push(Record {
                key: text(&v["key"]),
                value: text(&v["value"]),
                headers: headers_of(&v["headers"], i + 1)?,
                timestamp: v["timestamp"]
                    .as_i64()
                    .unwrap_or_else(sluice_log::record::now_ms),
            });
        }
        let mut producer = state
            .log
            .producer(ProducerConfig::default())
            .map_err(log_error)?;
        let n = records.len();
        for r in records {
            producer.send(&name, r).map_err(log_error)?;
        }
        producer.flush().map_err(log_error)?;
        Ok(Json(json!({ "produced": n })))
    })
    .await
}

pub async fn groups(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(groups_json(&state.log)))).await
}

pub async fn describe_group(
    State(state): State<ApiState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        group_json(&state.log, &group)
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("unknown group '{group}'")))
    })
    .await
}

/// Deletes a group with no active members (its committed offsets).
pub async fn delete_group(
    State(state): State<ApiState>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    blocking(move || {
        if state.log.describe_group(&group).is_none() {
            return Err(ApiError::not_found(format!("unknown group '{group}'")));
        }
        let n = state.log.delete_group(&group).map_err(group_error)?;
        Ok(Json(json!({
            "message": format!("Deleted group {group} ({n} committed offset(s))."),
        })))
    })
    .await
}

/// A group error: 409 when the group has members (it must be empty), else as the log's.
fn group_error(e: LogError) -> ApiError {
    match e {
        LogError::Group(sluice_log::group::GroupError::GroupNotEmpty { .. }) => {
            ApiError(StatusCode::CONFLICT, e.to_string())
        }
        e => log_error(e),
    }
}

/// The body of `POST /groups/{group}/reset-offsets`: one target, and whether to make the
/// change (else the plan is answered, as Kafka's tool's dry run).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    topic: String,
    #[serde(default)]
    to_earliest: bool,
    #[serde(default)]
    to_latest: bool,
    to_offset: Option<i64>,
    /// Milliseconds since the epoch.
    to_datetime: Option<i64>,
    shift_by: Option<i64>,
    #[serde(default)]
    execute: bool,
}

/// Plans (and with `execute`, makes) a reset of a group's offsets on a topic.
pub async fn reset_offsets(
    State(state): State<ApiState>,
    Path(group): Path<String>,
    Json(b): Json<ResetBody>,
) -> Result<Json<Value>, ApiError> {
    let targets = [
        b.to_earliest,
        b.to_latest,
        b.to_offset.is_some(),
        b.to_datetime.is_some(),
        b.shift_by.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        return Err(ApiError::bad_request(
            "give exactly one of to_earliest, to_latest, to_offset, to_datetime, shift_by",
        ));
    }
    let to = crate::cli::groups::GroupsCommand::reset_to(
        b.to_latest,
        b.to_offset,
        b.to_datetime,
        b.shift_by,
    );
    blocking(move || {
        let plan = state
            .log
            .reset_offsets(&group, &b.topic, to, b.execute)
            .map_err(group_error)?;
        let partitions: Vec<Value> = plan
            .iter()
            .map(|r| json!({ "partition": r.partition, "old": r.old, "new": r.new }))
            .collect();
        Ok(Json(json!({
            "group": group,
            "topic": b.topic,
            "executed": b.execute,
            "partitions": partitions,
        })))
    })
    .await
}
