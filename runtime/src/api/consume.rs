//! `GET /topics/{name}/consume`: a topic's records streamed as server-sent events, alone or
//! as a member of a consumer group, what `sluice consume` does through a running worker.
//!
//! The reader is a real consumer of the log on a thread of its own: with `group` it joins
//! the group (rebalancing with the group's other members, embedded or over the API) and,
//! when the stream ends, commits the positions after the records it handed to the
//! connection, as Kafka's console consumer commits what it polled. The rows reach the
//! client through the same bounded buffer as push queries, so a client that stops reading
//! holds at most that much.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use sluice_log::{ConsumerConfig, Isolation, Log, OffsetReset, OffsetSpec, TopicPartition};
use tokio::sync::{mpsc, oneshot};

use super::schema::ErrorBody;
use super::sql::{Handed, PUSH_BUFFER, hand};
use super::{ApiError, ApiState};

/// The query of `GET /topics/{name}/consume`.
#[derive(Debug, Default, Deserialize, serde::Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsumeQuery {
    /// Read as a member of this group, from its committed offsets, and commit at the end.
    pub group: Option<String>,
    /// Without committed offsets: start at the earliest offset (else at the end).
    #[serde(default)]
    pub from_beginning: bool,
    /// Read only this partition (not with `group`).
    pub partition: Option<u32>,
    /// With `partition`: a start offset, `earliest` or `latest`.
    pub offset: Option<String>,
    /// `read_committed` (default) or `read_uncommitted`.
    pub isolation: Option<String>,
    /// Stop after this many records.
    pub max_messages: Option<u64>,
    /// Keep waiting for new records at the end instead of ending the stream.
    #[serde(default)]
    pub follow: bool,
}

/// How long the reader waits for records before it looks whether its client is still there.
const POLL: Duration = Duration::from_millis(200);

impl ConsumeQuery {
    fn isolation(&self) -> Result<Isolation, ApiError> {
        match self.isolation.as_deref() {
            None | Some("read_committed") => Ok(Isolation::ReadCommitted),
            Some("read_uncommitted") => Ok(Isolation::ReadUncommitted),
            Some(other) => Err(ApiError::bad_request(format!(
                "isolation '{other}': use read_committed or read_uncommitted"
            ))),
        }
    }

    /// A consumer positioned as asked (a group member subscribed to `topic`, or assigned
    /// partitions at their start offsets); `sluice consume` opens the same.
    pub fn consumer(&self, log: &Log, topic: &str) -> Result<sluice_log::Consumer, ApiError> {
        let isolation = self.isolation()?;
        let t = log.topic(topic).map_err(super::log::log_error)?;
        if self.group.is_some() && self.partition.is_some() {
            return Err(ApiError::bad_request(
                "group and partition cannot be combined: a group assigns partitions itself",
            ));
        }
        if self.offset.is_some() && self.partition.is_none() {
            return Err(ApiError::bad_request("offset needs partition"));
        }
        let mut consumer = log.consumer(ConsumerConfig {
            group: self.group.clone(),
            isolation,
            auto_offset_reset: if self.from_beginning {
                OffsetReset::Earliest
            } else {
                OffsetReset::Latest
            },
            ..ConsumerConfig::default()
        });
        let error = super::log::log_error;
        if self.group.is_some() {
            consumer.subscribe(&[topic]).map_err(error)?;
            return Ok(consumer);
        }
        let parts: Vec<TopicPartition> = match self.partition {
            Some(p) if p >= t.partition_count() => {
                return Err(ApiError::not_found(format!(
                    "topic {topic} has no partition {p}"
                )));
            }
            Some(p) => vec![TopicPartition {
                topic: topic.into(),
                partition: p,
            }],
            None => (0..t.partition_count())
                .map(|p| TopicPartition {
                    topic: topic.into(),
                    partition: p,
                })
                .collect(),
        };
        consumer.assign(&parts).map_err(error)?;
        for tp in &parts {
            let spec = match self.offset.as_deref() {
                Some("earliest") => OffsetSpec::Earliest,
                Some("latest") => OffsetSpec::Latest,
                Some(n) => {
                    let o: i64 = n.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "offset '{n}' is not a number, earliest or latest"
                        ))
                    })?;
                    log.partition(&tp.topic, tp.partition)
                        .and_then(|p| p.fetch(o, 1, isolation))
                        .map_err(error)?;
                    consumer.seek(tp, o);
                    continue;
                }
                None if self.from_beginning => OffsetSpec::Earliest,
                None => OffsetSpec::Latest,
            };
            consumer.seek_to(tp, spec).map_err(error)?;
        }
        Ok(consumer)
    }
}

/// The reader's thread: polls, hands each record to the client's buffer, and ends at
/// `max_messages`, at the end of the log (unless `follow`), when the client goes away or
/// stops reading. A group commits what was handed out, then leaves.
fn stream_records(
    mut consumer: sluice_log::Consumer,
    q: &ConsumeQuery,
    tx: &mpsc::Sender<Event>,
    last: oneshot::Sender<Event>,
    stall: Duration,
) {
    let max = q.max_messages.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut handed: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let error = |message: String| Event::default().event("error").data(message);
    let end: Option<Event> = 'outer: loop {
        if sent >= max {
            break None;
        }
        if tx.is_closed() {
            break None;
        }
        let records = match consumer.poll(POLL) {
            Ok(r) => r,
            Err(e) => break Some(error(e.to_string())),
        };
        if records.is_empty() {
            let caught_up = consumer
                .lag()
                .map(|l| l.iter().all(|(_, lag)| *lag == 0))
                .unwrap_or(false);
            if caught_up && !q.follow {
                break None;
            }
            continue;
        }
        for r in &records {
            let event = Event::default()
                .event("record")
                .data(serde_json::to_string(&super::log::record_doc(r)).unwrap_or_default());
            match hand(tx, event, stall) {
                Handed::Sent => {}
                Handed::Gone => break 'outer None,
                Handed::Stalled => {
                    break 'outer Some(error(format!(
                        "the client did not read: {PUSH_BUFFER} records waited for it for {stall:?}"
                    )));
                }
            }
            sent += 1;
            handed.insert(
                TopicPartition {
                    topic: r.topic.to_string(),
                    partition: r.partition,
                },
                r.offset + 1,
            );
            if sent >= max {
                break 'outer None;
            }
        }
    };
    let mut end = end;
    if q.group.is_some() && !handed.is_empty() {
        let offsets: Vec<(TopicPartition, i64)> = handed.into_iter().collect();
        if let Err(e) = consumer.commit_offsets(&offsets) {
            end = Some(error(format!(
                "the records were sent but their offsets were not committed: {e}"
            )));
        }
    }
    let _ = consumer.close();
    let end = end.unwrap_or_else(|| {
        Event::default()
            .event("end")
            .data(json!({ "records": sent }).to_string())
    });
    let _ = last.send(end);
}

/// Streams a topic's records as server-sent events: `record` (data: a record as `GET
/// /topics/{name}/records` gives it), then `end` (data: `{"records": n}`) or `error`. With
/// `group`, the stream is a member of the consumer group and commits what it sent when it
/// ends (also when the client closes it).
#[utoipa::path(get, operation_id = "consumeRecords", path = "/topics/{name}/consume", tag = "topics",
    params(("name" = String, Path, description = "Topic"), ConsumeQuery),
    responses((status = 200, description = "Server-sent events: record, end, error", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 503, description = "Too many streams open: retry (Retry-After)", body = ErrorBody)))]
pub async fn consume(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    Query(q): Query<ConsumeQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = Arc::clone(&state.push_queries)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::retry_later(
                "too many streams are open (push queries and consumers); close one or raise --max-push-queries",
            )
        })?;
    let log = state.log.clone();
    let (consumer, q) = super::blocking(move || {
        let c = q.consumer(&log, &topic)?;
        Ok((c, q))
    })
    .await?;
    let stall = state.slow_client_timeout;
    let stats = Arc::clone(&state.push_stats);
    let (tx, rx) = mpsc::channel::<Event>(PUSH_BUFFER);
    let (last_tx, last_rx) = oneshot::channel::<Event>();
    stats.running.fetch_add(1, Ordering::SeqCst);
    let thread_stats = Arc::clone(&stats);
    let spawned = std::thread::Builder::new()
        .name("sluice-consume".into())
        .spawn(move || {
            let _permit = permit;
            stream_records(consumer, &q, &tx, last_tx, stall);
            thread_stats.running.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        stats.running.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::retry_later(format!(
            "cannot start a thread for the consumer: {e}"
        )));
    }
    let records =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let last = futures::stream::once(last_rx).filter_map(|e| std::future::ready(e.ok()));
    Ok(
        Sse::new(super::sql::opened().chain(records).chain(last).map(Ok))
            .keep_alive(KeepAlive::default()),
    )
}
