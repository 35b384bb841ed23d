//! `GET /topics/{name}/consume`: a topic's records streamed as server-sent events, alone or
//! as a member of a consumer group, what `sluice consume` does through a running worker.
//!
//! The reader is a real consumer of the log on a thread of its own: with `group` it joins
//! the group (rebalancing with the group's other members, embedded or over the API). What it
//! commits:
//!
//! - by default (`auto_commit`), the positions after the records it sent, when the stream
//!   ends by itself (`max_messages`, or caught up without `follow`); nothing when the client
//!   goes away, so records a client may not have read are read again (at least once);
//! - with `auto_commit=false`, only what the client commits: the stream's first event is
//!   `session` (`{"session": id}`), and `POST /topics/{name}/consume/{session}/commit` with
//!   the offsets the client has processed commits those on the partitions the member still
//!   owns. The stream then ends only when the client closes it (`caught_up` tells that the
//!   end was reached), so a client commits what it printed, then closes: what `sluice
//!   consume --group` does through a worker.
//!
//! The rows reach the client through the same bounded buffer as push queries, so a client
//! that stops reading holds at most that much.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_log::{ConsumerConfig, Isolation, Log, OffsetReset, OffsetSpec, TopicPartition};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use super::schema::ErrorBody;
use super::sql::{Handed, PUSH_BUFFER, hand, stream_slot, thread_stream};
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
    /// With `group`: commit what was sent when the stream ends by itself (default true);
    /// false: the client commits through the session (see the module docs).
    pub auto_commit: Option<bool>,
}

/// A client's commit: the offsets after the records it processed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Per partition, the offset to commit (the next one to read).
    pub offsets: Vec<PartitionOffset>,
}

/// A partition's offset.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionOffset {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
}

/// What a session commit did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommitDoc {
    /// Committed.
    pub committed: Vec<PartitionOffset>,
    /// Not committed: the member no longer owns these partitions (a rebalance moved them;
    /// their records will be read again by their new owner from its last commit).
    pub not_owned: Vec<u32>,
}

/// A commit handed to a session's thread, and where its answer goes.
type SessionCommit = (
    Vec<PartitionOffset>,
    oneshot::Sender<Result<CommitDoc, String>>,
);

/// The open client-committed sessions: id → the channel to their thread.
#[derive(Debug, Default)]
pub struct Sessions {
    next: std::sync::atomic::AtomicU64,
    open: parking_lot::Mutex<HashMap<u64, std::sync::mpsc::Sender<SessionCommit>>>,
}

/// How long the reader waits for records before it looks whether its client is still there.
const POLL: Duration = Duration::from_millis(200);

impl ConsumeQuery {
    fn isolation(&self) -> Result<Isolation, ApiError> {
        self.isolation
            .as_deref()
            .map_or(Ok(Isolation::ReadCommitted), |i| {
                i.parse()
                    .map_err(|e| ApiError::bad_request(format!("isolation: {e}")))
            })
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

/// Commits `offsets` on the partitions of `topic` the member owns.
fn commit_owned(
    consumer: &mut sluice_log::Consumer,
    topic: &str,
    offsets: &[PartitionOffset],
) -> Result<CommitDoc, String> {
    let (owned, not): (Vec<&PartitionOffset>, Vec<&PartitionOffset>) =
        offsets.iter().partition(|o| {
            consumer.assignment().contains(&TopicPartition {
                topic: topic.to_string(),
                partition: o.partition,
            })
        });
    let commit: Vec<(TopicPartition, i64)> = owned
        .iter()
        .map(|o| {
            (
                TopicPartition {
                    topic: topic.to_string(),
                    partition: o.partition,
                },
                o.offset,
            )
        })
        .collect();
    consumer
        .commit_offsets(&commit)
        .map_err(|e| e.to_string())?;
    Ok(CommitDoc {
        committed: owned.into_iter().copied().collect(),
        not_owned: not.iter().map(|o| o.partition).collect(),
    })
}

/// The reader's thread: polls, hands each record to the client's buffer, and ends at
/// `max_messages` or at the end of the log (unless `follow`), when the client goes away or
/// stops reading; in a session it answers commits, and ends only when the client goes away.
fn stream_records(
    mut consumer: sluice_log::Consumer,
    q: &ConsumeQuery,
    topic: &str,
    session: Option<std::sync::mpsc::Receiver<SessionCommit>>,
    tx: &mpsc::Sender<Event>,
    last: oneshot::Sender<Event>,
    stall: Duration,
) {
    let max = q.max_messages.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut handed: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut caught_up_told = false;
    let error = |message: String| Event::default().event("error").data(message);
    let end: Option<Event> = 'outer: loop {
        if let Some(commits) = &session {
            while let Ok((offsets, reply)) = commits.try_recv() {
                let _ = reply.send(commit_owned(&mut consumer, topic, &offsets));
            }
        }
        if tx.is_closed() {
            break None;
        }
        if sent >= max || (caught_up_told && !q.follow) {
            if session.is_none() {
                break None;
            }
            // The client commits, then closes.
            std::thread::sleep(Duration::from_millis(20));
            continue;
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
                caught_up_told = true;
                if session.is_some()
                    && !matches!(
                        hand(tx, Event::default().event("caught_up").data("{}"), stall),
                        Handed::Sent
                    )
                {
                    break None;
                }
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
                continue 'outer;
            }
        }
    };
    let mut end = end;
    // Auto-commit only when the stream ended by itself: a client that went away may not
    // have read what was sent (it is read again).
    let ended_by_itself = end.is_none() && !tx.is_closed();
    if q.group.is_some() && session.is_none() && ended_by_itself && !handed.is_empty() {
        let offsets: Vec<PartitionOffset> = handed
            .iter()
            .map(|(tp, o)| PartitionOffset {
                partition: tp.partition,
                offset: *o,
            })
            .collect();
        if let Err(e) = commit_owned(&mut consumer, topic, &offsets) {
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

/// Commits what a session's client processed (see the module docs).
#[utoipa::path(post, operation_id = "commitConsumed", path = "/topics/{name}/consume/{session}/commit", tag = "topics",
    params(("name" = String, Path, description = "Topic"), ("session" = u64, Path, description = "The stream's session id")),
    request_body = CommitRequest,
    responses((status = 200, description = "Committed (and what the member no longer owns)", body = CommitDoc),
        (status = 404, description = "No such open session", body = ErrorBody),
        (status = 503, description = "The commit failed: retry", body = ErrorBody)))]
pub async fn commit(
    State(state): State<ApiState>,
    Path((_topic, session)): Path<(String, u64)>,
    axum::Json(body): axum::Json<CommitRequest>,
) -> Result<axum::Json<CommitDoc>, ApiError> {
    let sender = state
        .sessions
        .open
        .lock()
        .get(&session)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no open consume session {session}")))?;
    let (reply, answer) = oneshot::channel();
    sender
        .send((body.offsets, reply))
        .map_err(|_| ApiError::not_found(format!("consume session {session} has ended")))?;
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok(Ok(doc))) => Ok(axum::Json(doc)),
        Ok(Ok(Err(e))) => Err(ApiError::retry_later(e)),
        _ => Err(ApiError::retry_later(format!(
            "consume session {session} did not answer"
        ))),
    }
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
    let permit = stream_slot(&state)?;
    if q.group.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::bad_request("group: the group id is empty"));
    }
    let log = state.log.clone();
    let (consumer, q, topic) = super::blocking(move || {
        let c = q.consumer(&log, &topic)?;
        Ok((c, q, topic))
    })
    .await?;
    // A client-committed session: its id goes first to the client.
    let session = (q.group.is_some() && q.auto_commit == Some(false)).then(|| {
        let id = state.sessions.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (commits_tx, commits_rx) = std::sync::mpsc::channel();
        state.sessions.open.lock().insert(id, commits_tx);
        (id, commits_rx)
    });
    let sessions = Arc::clone(&state.sessions);
    let stall = state.slow_client_timeout;
    thread_stream(
        Arc::clone(&state.push_stats),
        permit,
        "sluice-consume",
        move |tx, last| {
            let (id, commits) = session.unzip();
            let told = id.is_none_or(|id| {
                let event = Event::default()
                    .event("session")
                    .data(json!({ "session": id }).to_string());
                matches!(hand(&tx, event, stall), Handed::Sent)
            });
            if told {
                stream_records(consumer, &q, &topic, commits, &tx, last, stall);
            }
            if let Some(id) = id {
                sessions.open.lock().remove(&id);
            }
        },
    )
}
