//! Fetch: stored batches as they are on disk, long-polling until `min_bytes` arrived or
//! `max_wait_ms` passed; with incremental fetch sessions (`fetch_sessions`) for clients that
//! open one.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};
use sluice_log::Isolation;

use super::fetch_sessions::Plan;
use super::{Ctx, blocking};
use crate::errors;
use crate::server::ConnError;

/// The longest a fetch waits, whatever the client asks (Kafka has no cap; clients ask 500 ms).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most record bytes one answer carries, whatever the client asks (Kafka's broker-side
/// `fetch.max.bytes` default, 55 MiB); the first batch goes out even if larger.
const MAX_RESPONSE_BYTES: usize = 55 << 20;

pub(crate) async fn fetch(ctx: &Ctx, mut req: FetchRequest) -> Result<FetchResponse, ConnError> {
    // Sessions exist from v7.
    let plan = if ctx.version >= 7 {
        ctx.broker.fetch_sessions.lock().begin(&mut req)
    } else {
        Ok(Plan::Sessionless)
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(code) => return Ok(FetchResponse::default().with_error_code(code)),
    };
    let mut resp = poll(ctx, req).await?;
    ctx.broker.fetch_sessions.lock().finish(plan, &mut resp);
    Ok(resp)
}

async fn poll(ctx: &Ctx, req: FetchRequest) -> Result<FetchResponse, ConnError> {
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let req = Arc::new(req);
    // Subscribed before the first read, so an append between the read and the wait wakes it
    // (and in a cluster, a high watermark that moves: records become readable then).
    let mut appends = ctx.broker.log.watch_appends();
    let mut marks = ctx
        .broker
        .replicas
        .as_ref()
        .map(|r| r.watch_high_watermarks());
    loop {
        appends.borrow_and_update();
        if let Some(m) = marks.as_mut() {
            m.borrow_and_update();
        }
        let r = Arc::clone(&req);
        let (resp, bytes, failed) = blocking(ctx, move |c| read(c, &r)).await?;
        if bytes >= min_bytes || failed || tokio::time::Instant::now() >= deadline {
            return Ok(resp);
        }
        tokio::select! {
            changed = appends.changed() => {
                if changed.is_err() {
                    return Ok(resp);
                }
            }
            Some(changed) = async {
                match marks.as_mut() {
                    Some(m) => Some(m.changed().await),
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    return Ok(resp);
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// One pass over the requested partitions: the answer, its record bytes, whether any
/// partition answered an error (which ends the wait, as in Kafka).
fn read(ctx: &Ctx, req: &FetchRequest) -> (FetchResponse, usize, bool) {
    let log = &ctx.broker.log;
    let replicas = ctx.broker.replicas.as_ref();
    // A follower of this node's partitions (Kafka's replica id; consumers send -1).
    let follower = u64::try_from(req.replica_id.0)
        .ok()
        .filter(|_| replicas.is_some());
    let isolation = if req.isolation_level == 1 {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let max_bytes = if req.max_bytes > 0 {
        (req.max_bytes as usize).min(MAX_RESPONSE_BYTES)
    } else {
        MAX_RESPONSE_BYTES
    };
    // A partition named twice is read once (the later copies answer empty).
    let mut seen = std::collections::HashSet::new();
    let mut total = 0usize;
    let mut failed = false;
    let responses = req
        .topics
        .iter()
        .map(|t| {
            let topic = t.topic.0.as_str();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1);
                    let Ok(partition) = u32::try_from(p.partition) else {
                        failed = true;
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    // A follower copies them: a pipeline's positions move with it.
                    if hidden(topic) && !(follower.is_some() && ctx.node) {
                        failed = true;
                        return out.with_error_code(E::TopicAuthorizationFailed.code());
                    }
                    // Past the request's byte budget the partition still reports its offsets.
                    let room = max_bytes.saturating_sub(total);
                    let asked = (p.partition_max_bytes.max(0) as usize).min(MAX_RESPONSE_BYTES);
                    let limit = if !seen.insert((topic, p.partition)) {
                        0
                    } else if total == 0 {
                        asked.max(1)
                    } else {
                        room.min(asked)
                    };
                    if limit == 0 {
                        return match log.partition(topic, partition) {
                            Ok(part) => {
                                let i = part.info();
                                out.with_high_watermark(i.high_watermark)
                                    .with_last_stable_offset(i.last_stable_offset)
                                    .with_log_start_offset(i.log_start_offset)
                                    .with_records(Some(bytes::Bytes::new()))
                            }
                            Err(e) => {
                                failed = true;
                                out.with_error_code(errors::code(&e))
                            }
                        };
                    }
                    if let Some(reps) = replicas {
                        let checked = match follower {
                            // Copies go only to the cluster's nodes (when they authenticate).
                            Some(_) if !ctx.node => Err((
                                E::ClusterAuthorizationFailed.code(),
                                "a replica fetch from a connection that is not a node's".into(),
                            )),
                            Some(f) => reps
                                .follower_fetch(
                                    &(topic.to_string(), partition),
                                    f,
                                    p.fetch_offset,
                                    p.current_leader_epoch,
                                )
                                .map(Some),
                            None => reps.check_read(topic, partition).map(|()| None),
                        };
                        match checked {
                            Err((code, _)) => {
                                failed = true;
                                return out.with_error_code(code);
                            }
                            Ok(Some(part)) => {
                                return match part.fetch_replica(p.fetch_offset, limit) {
                                    Ok(r) => {
                                        total += r.data.len();
                                        out.with_high_watermark(r.high_watermark)
                                            .with_last_stable_offset(r.last_stable_offset)
                                            .with_log_start_offset(r.log_start_offset)
                                            .with_records(Some(r.data))
                                    }
                                    Err(e) => {
                                        failed = true;
                                        // Below the log start: the follower starts again
                                        // there.
                                        out.with_error_code(errors::code(&e))
                                            .with_log_start_offset(part.log_start_offset())
                                    }
                                };
                            }
                            Ok(None) => {}
                        }
                    }
                    match log.fetch(topic, partition, p.fetch_offset, limit, isolation) {
                        Ok(r) => {
                            total += r.data.len();
                            let aborted = match isolation {
                                Isolation::ReadCommitted => Some(
                                    r.aborted
                                        .iter()
                                        .map(|a| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(a.producer_id))
                                                .with_first_offset(a.first_offset)
                                        })
                                        .collect(),
                                ),
                                Isolation::ReadUncommitted => None,
                            };
                            out.with_high_watermark(r.high_watermark)
                                .with_last_stable_offset(r.last_stable_offset)
                                .with_log_start_offset(r.log_start_offset)
                                .with_aborted_transactions(aborted)
                                .with_records(Some(r.data))
                        }
                        Err(e) => {
                            failed = true;
                            out.with_error_code(errors::code(&e))
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        total,
        failed,
    )
}

/// Topics Kafka clients may not read: Sluice's own bookkeeping (`__sluice_*`: the catalog
/// holds pipelines' SQL with their secrets' values, the schema registry's records), as the
/// REST API also refuses. `__consumer_offsets` and `__transaction_state` stay readable, as in
/// Kafka.
pub(crate) fn hidden(topic: &str) -> bool {
    topic.starts_with("__sluice")
}
