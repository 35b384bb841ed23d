//! Produce: each partition's record batch is appended as the client sent it (Kafka's
//! RecordBatch v2 is the log's format), so nothing is re-encoded.

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_log::batch::BatchHeader;
use sluice_log::is_internal_topic;

use super::{Ctx, s};
use crate::errors;

/// A replicated partition written by a request, the offset its records end before and the
/// leader epoch they were written in: what an `acks=all` answer waits for.
pub(crate) type Written = ((String, u32), i64, Option<i32>);

/// Appends the request's batches; the answer, and the replicated partitions written.
pub(crate) fn produce(ctx: &Ctx, req: ProduceRequest) -> (ProduceResponse, Vec<Written>) {
    let log = &ctx.broker.log;
    let replicas = ctx.broker.replicas.as_ref();
    let acks = req.acks;
    let mut written = Vec::new();
    let responses = req
        .topic_data
        .into_iter()
        .map(|t| {
            let topic = t.name.0.to_string();
            let partitions = t
                .partition_data
                .into_iter()
                .map(|p| {
                    let out = PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_base_offset(-1);
                    let fail = |code: i16, message: String| {
                        out.clone()
                            .with_error_code(code)
                            .with_error_message(Some(s(message)))
                    };
                    if is_internal_topic(&topic) {
                        return fail(
                            E::InvalidTopicException.code(),
                            format!("'{topic}' is an internal topic: clients cannot write to it"),
                        );
                    }
                    let Ok(partition) = u32::try_from(p.index) else {
                        return fail(
                            E::UnknownTopicOrPartition.code(),
                            format!("no partition {} in '{topic}'", p.index),
                        );
                    };
                    let Some(records) = p.records.filter(|r| !r.is_empty()) else {
                        return fail(E::InvalidRecord.code(), "no record batch".into());
                    };
                    if let Some(reps) = replicas
                        && let Err((code, message)) = reps.check_write(&topic, partition, acks)
                    {
                        return fail(code, message);
                    }
                    // A transactional batch must belong to its producer's open transaction
                    // (AddPartitionsToTxn first): otherwise no marker would ever end it and
                    // read_committed readers of the partition would wait forever.
                    // In a cluster the transaction may be another node's to coordinate: a
                    // replicated partition takes its batches as Kafka's brokers do (its
                    // coordinator writes the markers through this node).
                    let elsewhere = |pid: i64| {
                        replicas.is_some_and(|r| r.is_replicated(&topic, partition))
                            && !log.coordinates_producer(pid)
                    };
                    // Read before the append: a leadership change in between fails the
                    // acks=all wait rather than passing it wrongly.
                    let epoch = log
                        .partition(&topic, partition)
                        .map(|p| p.leader_epoch())
                        .ok();
                    let appended = match BatchHeader::parse(&records) {
                        Ok(h) if h.is_transactional() && !elsewhere(h.producer_id) => log.append_transactional(
                            &topic,
                            partition,
                            h.producer_id,
                            h.producer_epoch,
                            records.to_vec(),
                        ),
                        _ => log.append(&topic, partition, records.to_vec()),
                    };
                    match appended {
                        Ok(info) => {
                            if replicas.is_some_and(|r| r.is_replicated(&topic, partition)) {
                                written.push((
                                    (topic.clone(), partition),
                                    info.last_offset + 1,
                                    epoch,
                                ));
                            }
                            let start = log
                                .partition(&topic, partition)
                                .map(|p| p.log_start_offset())
                                .unwrap_or(-1);
                            out.with_base_offset(info.base_offset)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(start)
                        }
                        Err(e) => {
                            let code = errors::code(&e);
                            if code == E::KafkaStorageError.code()
                                || code == E::UnknownServerError.code()
                            {
                                tracing::error!(topic, partition, client = %ctx.client, error = %e, "A Kafka client's produce failed.");
                            }
                            fail(code, errors::message(&e))
                        }
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_partition_responses(partitions)
        })
        .collect();
    (
        ProduceResponse::default().with_responses(responses),
        written,
    )
}

/// Marks a partition of `resp` failed with `code` (an `acks=all` wait that did not end well).
pub(crate) fn fail_partition(
    resp: &mut ProduceResponse,
    topic: &str,
    partition: u32,
    code: i16,
    message: String,
) {
    for t in resp
        .responses
        .iter_mut()
        .filter(|t| t.name.0.as_str() == topic)
    {
        for p in t
            .partition_responses
            .iter_mut()
            .filter(|p| p.index == partition as i32)
        {
            p.error_code = code;
            p.error_message = Some(s(message.clone()));
            p.base_offset = -1;
        }
    }
}
