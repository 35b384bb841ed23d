//! Topics (list, describe, create, delete), records (read a partition, produce) and consumer
//! groups with lag. The JSON documents here are also what the CLI renders, locally or
//! fetched from a worker (see `cli::remote`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use sluice_log::{
    ConsumerConfig, Isolation, Log, LogError, OffsetReset, ProducerConfig, Record, TopicPartition,
};

use super::schema::{
    ConfigValue, CreateTopic, ErrorBody, GroupDoc, GroupList, GroupPartitionDoc, GroupSummary,
    HeaderDoc, Message, PartitionDoc, ProducedDoc, RecordDoc, RecordsDoc, ResetDoc,
    ResetPartitionDoc, ResetRequest, TopicDoc, TopicList, TopicSummary,
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

/// Every topic with partitions, offsets and bytes (`all`: internal ones too).
pub fn topic_list(log: &Log, all: bool) -> TopicList {
    let topics = log
        .topic_names()
        .into_iter()
        .filter_map(|n| log.describe_topic(&n).ok())
        .filter(|d| all || !d.internal)
        .map(|d| TopicSummary {
            // Offsets, not records: transaction markers take offsets too, and counting
            // records would read every batch header of the topic.
            offsets: d
                .partitions
                .iter()
                .map(|p| p.log_end_offset - p.log_start_offset)
                .sum(),
            bytes: d.partitions.iter().map(|p| p.size_bytes).sum(),
            partitions: d.partitions.len(),
            internal: d.internal,
            name: d.name,
        })
        .collect();
    TopicList { topics }
}

/// [`topic_list`] as JSON, for the CLI.
pub fn topics_json(log: &Log, all: bool) -> Value {
    serde_json::to_value(topic_list(log, all)).unwrap_or_default()
}

/// One topic: its partitions' offsets and sizes, and its config.
pub fn topic_doc(log: &Log, name: &str) -> Result<TopicDoc, LogError> {
    let d = log.describe_topic(name)?;
    let partitions = d
        .partitions
        .iter()
        .map(|p| PartitionDoc {
            partition: p.partition,
            log_start_offset: p.log_start_offset,
            log_end_offset: p.log_end_offset,
            high_watermark: p.high_watermark,
            last_stable_offset: p.last_stable_offset,
            leader_epoch: p.leader_epoch,
            segments: p.segments,
            size_bytes: p.size_bytes,
            local_log_start_offset: p.local_log_start_offset,
            remote_log_start_offset: p.remote.map(|r| r.0),
            remote_log_end_offset: p.remote.map(|r| r.1),
            remote_segments: p.remote_segments,
            remote_size_bytes: p.remote_size_bytes,
        })
        .collect();
    let config = d
        .config
        .iter()
        .map(|(k, v, set)| {
            (
                (*k).to_string(),
                ConfigValue {
                    value: v.clone(),
                    overridden: *set,
                },
            )
        })
        .collect();
    Ok(TopicDoc {
        name: d.name,
        internal: d.internal,
        partitions,
        config,
    })
}

/// [`topic_doc`] as JSON, for the CLI.
pub fn topic_json(log: &Log, name: &str) -> Result<Value, LogError> {
    Ok(serde_json::to_value(topic_doc(log, name)?).unwrap_or_default())
}

/// Every consumer group with its state and members.
pub fn group_list(log: &Log) -> GroupList {
    GroupList {
        groups: log
            .list_groups()
            .into_iter()
            .map(|(group, s, members)| GroupSummary {
                group,
                state: format!("{s:?}"),
                members,
            })
            .collect(),
    }
}

/// [`group_list`] as JSON, for the CLI.
pub fn groups_json(log: &Log) -> Value {
    serde_json::to_value(group_list(log)).unwrap_or_default()
}

/// One group: committed offsets, log end and lag per partition.
pub fn group_doc(log: &Log, group: &str) -> Option<GroupDoc> {
    let info = log.describe_group(group)?;
    Some(GroupDoc {
        members: info.description.as_ref().map_or(0, |d| d.members.len()),
        state: format!("{:?}", info.state),
        partitions: info
            .partitions
            .into_iter()
            .map(|p| GroupPartitionDoc {
                topic: p.tp.topic,
                partition: p.tp.partition,
                committed: p.committed,
                log_end: p.log_end,
                lag: p.lag,
                member: p.member,
            })
            .collect(),
        group: info.group,
    })
}

/// [`group_doc`] as JSON, for the CLI.
pub fn group_json(log: &Log, group: &str) -> Option<Value> {
    group_doc(log, group).map(|d| serde_json::to_value(d).unwrap_or_default())
}

/// The query of `GET /topics`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopicsQuery {
    /// Include internal topics (`__*`, `*-changelog`).
    #[serde(default)]
    all: bool,
}

/// Lists topics.
#[utoipa::path(get, operation_id = "listTopics", path = "/topics", tag = "topics", params(TopicsQuery),
    responses((status = 200, description = "Topics with partitions, offsets and bytes", body = TopicList)))]
pub async fn topics(
    State(state): State<ApiState>,
    Query(q): Query<TopicsQuery>,
) -> Result<Json<TopicList>, ApiError> {
    blocking(move || Ok(Json(topic_list(&state.log, q.all)))).await
}

/// Describes a topic: partitions (offsets, segments, bytes, tiered storage) and config.
#[utoipa::path(get, operation_id = "getTopic", path = "/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic")),
    responses((status = 200, description = "The topic", body = TopicDoc),
        (status = 404, description = "Unknown topic", body = ErrorBody)))]
pub async fn describe_topic(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<TopicDoc>, ApiError> {
    blocking(move || topic_doc(&state.log, &name).map(Json).map_err(log_error)).await
}

/// Creates a topic.
#[utoipa::path(post, operation_id = "createTopic", path = "/topics", tag = "topics", request_body = CreateTopic,
    responses((status = 201, description = "Created", body = TopicDoc),
        (status = 400, description = "A bad name, partition count or config key", body = ErrorBody),
        (status = 403, description = "An internal name (`__*`, `*-changelog`)", body = ErrorBody),
        (status = 409, description = "The topic exists", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "In a cluster: no controller committed the topic in time", body = ErrorBody)))]
pub async fn create_topic(
    State(state): State<ApiState>,
    Json(c): Json<CreateTopic>,
) -> Result<(StatusCode, Json<TopicDoc>), ApiError> {
    blocking(move || {
        refuse_internal(&c.name, "created")?;
        if let Some(cluster) = state.cluster.get() {
            return create_replicated(&state, cluster, c);
        }
        if let Some(factor) = c.replication_factor.filter(|f| *f > 1) {
            return Err(ApiError::bad_request(format!(
                "replication factor {factor}: a worker alone holds one copy (start a cluster with --node-id and --cluster)"
            )));
        }
        let config: Vec<(String, String)> = c.config.into_iter().collect();
        state
            .log
            .create_topic(&c.name, c.partitions, &config)
            .map_err(log_error)?;
        Ok((
            StatusCode::CREATED,
            Json(topic_doc(&state.log, &c.name).map_err(log_error)?),
        ))
    })
    .await
}

/// `POST /topics` in a cluster: the controller places and commits the topic; the answer is
/// this node's copy once it has made it (partitions empty when this node holds none).
fn create_replicated(
    state: &ApiState,
    cluster: &sluice_cluster::Cluster,
    c: CreateTopic,
) -> Result<(StatusCode, Json<TopicDoc>), ApiError> {
    let request = sluice_kafka::topics::NewTopic {
        name: c.name.clone(),
        partitions: Some(i64::from(c.partitions)),
        replication_factor: c.replication_factor.map(i64::from),
        configs: c.config,
        internal: false,
        anchor: None,
    };
    let default_partitions = state.log.options().default_partitions;
    let created =
        sluice_kafka::topics::create_replicated(cluster, default_partitions, request, false)
            .map_err(|e| {
                let status = if e.exists() {
                    StatusCode::CONFLICT
                } else if e.unavailable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_REQUEST
                };
                ApiError(status, e.message)
            })?;
    let holds = cluster
        .metadata()
        .borrow()
        .topics
        .get(&c.name)
        .is_some_and(|t| {
            t.partitions
                .iter()
                .any(|p| p.replicas.contains(&cluster.node_id()))
        });
    // The replica layer makes the local copy when it applies the change: shortly after.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while holds && state.log.topic(&c.name).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let doc = match topic_doc(&state.log, &c.name) {
        Ok(doc) => doc,
        Err(_) => TopicDoc {
            name: c.name,
            internal: false,
            partitions: Vec::new(),
            config: created
                .config
                .entries()
                .into_iter()
                .map(|(k, value, overridden)| (k.to_string(), ConfigValue { value, overridden }))
                .collect(),
        },
    };
    Ok((StatusCode::CREATED, Json(doc)))
}

/// Deletes a topic (with its copies in tiered storage).
#[utoipa::path(delete, operation_id = "deleteTopic", path = "/topics/{name}", tag = "topics",
    params(("name" = String, Path, description = "Topic")),
    responses((status = 200, description = "Deleted", body = Message),
        (status = 400, description = "In a cluster: a replicated topic (not supported yet)", body = ErrorBody),
        (status = 403, description = "An internal topic", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody)))]
pub async fn delete_topic(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Message>, ApiError> {
    blocking(move || {
        refuse_internal(&name, "deleted")?;
        if let Some(cluster) = state.cluster.get()
            && cluster.metadata().borrow().topics.contains_key(&name)
        {
            return Err(ApiError::bad_request(format!(
                "'{name}' is replicated in the cluster and cannot be deleted yet (not supported in a cluster)"
            )));
        }
        state.log.delete_topic(&name).map_err(log_error)?;
        Ok(Json(Message {
            message: format!("Deleted topic {name}."),
        }))
    })
    .await
}

/// The query of `GET /topics/{name}/records`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// Partition (default 0).
    #[serde(default)]
    partition: u32,
    /// First offset (default 0; below the log start: from the log start).
    #[serde(default)]
    offset: i64,
    /// Most records (default 100, at most 10,000).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// A record as the API shows it: key, value and header values as text (lossy UTF-8), with
/// its coordinates. Headers keep their order and duplicates, as Kafka's do.
pub fn record_doc(r: &sluice_log::ConsumerRecord) -> RecordDoc {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    RecordDoc {
        topic: r.topic.to_string(),
        partition: r.partition,
        offset: r.offset,
        timestamp: r.timestamp,
        key: r.key.as_ref().map(text),
        value: r.value.as_ref().map(text),
        headers: r
            .headers
            .iter()
            .map(|h| HeaderDoc {
                key: h.key.clone(),
                value: h.value.as_ref().map(text),
            })
            .collect(),
    }
}

/// A line of `POST /topics/{name}/records`, its key and value borrowed as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProducedLine<'a> {
    #[serde(borrow)]
    key: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    value: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    headers: Value,
    timestamp: Option<i64>,
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
#[utoipa::path(get, operation_id = "readRecords", path = "/topics/{name}/records", tag = "topics",
    params(("name" = String, Path, description = "Topic"), RecordsQuery),
    responses((status = 200, description = "Records and where to read next", body = RecordsDoc),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody)))]
pub async fn read_records(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<RecordsDoc>, ApiError> {
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
                out.push(record_doc(r));
            }
            if records.len() <= room {
                next = next.max(position);
            }
        }
        if sluice_log::is_internal_topic(&name) {
            // The catalog holds pipelines' SQL with their secrets' values.
            let redact = state.deployer.lock().worker.redactor();
            for d in &mut out {
                d.key = d.key.as_deref().map(&redact);
                d.value = d.value.as_deref().map(&redact);
            }
        }
        Ok(Json(RecordsDoc {
            records: out,
            next_offset: next,
        }))
    })
    .await
}

/// The query of `POST /topics/{name}/records`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProduceQuery {
    /// `all` (default): answered once every in-sync replica has the records (in a cluster;
    /// alone, when written); `1`: once this node wrote them.
    acks: Option<String>,
}

/// Produces records: an NDJSON body of `{"key": ..., "value": ..., "timestamp": ...}` objects
/// (value a string or any JSON, written as its text; timestamp in ms, default now), answered
/// after the records are written (`acks`).
#[utoipa::path(post, operation_id = "produceRecords", path = "/topics/{name}/records", tag = "topics",
    params(("name" = String, Path, description = "Topic"), ProduceQuery),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One `{\"key\": ..., \"value\": ..., \"headers\": {...}, \"timestamp\": ms}` object per line"),
    responses((status = 200, description = "Written", body = ProducedDoc),
        (status = 400, description = "A line is not JSON (named)", body = ErrorBody),
        (status = 403, description = "An internal topic", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 413, description = "A record larger than max.message.bytes", body = ErrorBody),
        (status = 503, description = "In a cluster: this node does not lead the partition, too few in-sync replicas for acks=all, or they did not copy the records in time", body = ErrorBody)))]
pub async fn produce(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<ProduceQuery>,
    body: Bytes,
) -> Result<Json<ProducedDoc>, ApiError> {
    blocking(move || {
        refuse_internal(&name, "written")?;
        let acks = match q.acks.as_deref() {
            None | Some("all" | "-1") => sluice_log::Acks::All,
            Some("1") => sluice_log::Acks::Leader,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "acks={other}: give all (or -1) or 1"
                )));
            }
        };
        state.log.topic(&name).map_err(log_error)?;
        let mut records = Vec::new();
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let bad = |e: serde_json::Error| {
                ApiError::bad_request(format!(
                    "line {}: not a JSON object of key, value, headers and timestamp: {e}",
                    i + 1
                ))
            };
            let line: ProducedLine<'_> = serde_json::from_slice(line).map_err(bad)?;
            // A string as its text; other JSON as the client wrote it (fields keep their
            // order); null or absent as none.
            let text = |v: Option<&serde_json::value::RawValue>| match v.map(|r| r.get()) {
                None | Some("null") => Ok(None),
                Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw)
                    .map(|s| Some(Bytes::from(s)))
                    .map_err(bad),
                Some(raw) => Ok(Some(Bytes::copy_from_slice(raw.as_bytes()))),
            };
            records.push(Record {
                key: text(line.key)?,
                value: text(line.value)?,
                headers: headers_of(&line.headers, i + 1)?,
                timestamp: line.timestamp.unwrap_or_else(sluice_log::record::now_ms),
            });
        }
        let mut producer = state
            .log
            .producer(ProducerConfig {
                acks,
                ..ProducerConfig::default()
            })
            .map_err(log_error)?;
        let n = records.len();
        for r in records {
            producer.send(&name, r).map_err(log_error)?;
        }
        producer.flush().map_err(log_error)?;
        Ok(Json(ProducedDoc { produced: n }))
    })
    .await
}

/// Lists consumer groups (the worker's, the CLI's and those joined over the API alike).
#[utoipa::path(get, operation_id = "listGroups", path = "/groups", tag = "groups",
    responses((status = 200, description = "Groups with state and members", body = GroupList)))]
pub async fn groups(State(state): State<ApiState>) -> Result<Json<GroupList>, ApiError> {
    blocking(move || Ok(Json(group_list(&state.log)))).await
}

/// A group's committed offsets, log ends and lag, for every partition of its topics.
#[utoipa::path(get, operation_id = "getGroup", path = "/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses((status = 200, description = "The group", body = GroupDoc),
        (status = 404, description = "Unknown group", body = ErrorBody)))]
pub async fn describe_group(
    State(state): State<ApiState>,
    Path(group): Path<String>,
) -> Result<Json<GroupDoc>, ApiError> {
    blocking(move || {
        group_doc(&state.log, &group)
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("unknown group '{group}'")))
    })
    .await
}

/// Deletes a group with no active members (its committed offsets).
#[utoipa::path(delete, operation_id = "deleteGroup", path = "/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    responses((status = 200, description = "Deleted", body = Message),
        (status = 404, description = "Unknown group", body = ErrorBody),
        (status = 409, description = "The group has active members, or a running sink or query owns it", body = ErrorBody)))]
pub async fn delete_group(
    State(state): State<ApiState>,
    Path(group): Path<String>,
) -> Result<Json<Message>, ApiError> {
    blocking(move || {
        if state.log.describe_group(&group).is_none() {
            return Err(ApiError::not_found(format!("unknown group '{group}'")));
        }
        refuse_owned(&state, &group)?;
        let n = state.log.delete_group(&group).map_err(group_error)?;
        Ok(Json(Message {
            message: format!("Deleted group {group} ({n} committed offset(s))."),
        }))
    })
    .await
}

/// 409 when a running sink or query owns `group`: its next commit would undo the change.
fn refuse_owned(state: &ApiState, group: &str) -> Result<(), ApiError> {
    match state.deployer.lock().worker.group_owner(group) {
        Some(owner) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("group '{group}' belongs to the running {owner}"),
        )),
        None => Ok(()),
    }
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

/// Plans (and with `execute`, makes) a reset of a group's offsets on a topic, as Kafka's
/// `kafka-consumer-groups.sh --reset-offsets` (a dry run unless `execute`).
#[utoipa::path(post, operation_id = "resetGroupOffsets", path = "/groups/{group}/reset-offsets", tag = "groups",
    params(("group" = String, Path, description = "Group id")),
    request_body = ResetRequest,
    responses((status = 200, description = "The plan (made when `execute`)", body = ResetDoc),
        (status = 400, description = "Not exactly one target", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 409, description = "The group has active members, or a running sink or query owns it", body = ErrorBody)))]
pub async fn reset_offsets(
    State(state): State<ApiState>,
    Path(group): Path<String>,
    Json(b): Json<ResetRequest>,
) -> Result<Json<ResetDoc>, ApiError> {
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
        refuse_owned(&state, &group)?;
        let plan = state
            .log
            .reset_offsets(&group, &b.topic, to, b.execute)
            .map_err(group_error)?;
        Ok(Json(ResetDoc {
            group,
            topic: b.topic,
            executed: b.execute,
            partitions: plan
                .iter()
                .map(|r| ResetPartitionDoc {
                    partition: r.partition,
                    old: r.old,
                    new: r.new,
                })
                .collect(),
        }))
    })
    .await
}
