//! Transactions: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn — the log's
//! transaction coordinator ([`sluice_log::Log::end_txn`] and friends), the same one the
//! embedded exactly-once tasks use. InitProducerId is in `producer_id`; read_committed
//! fetches (last stable offset, aborted transactions) in `fetch`.

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse,
};
use std::time::Duration;

use sluice_log::{LogError, TopicPartition};

use super::Ctx;
use crate::errors;
use crate::replica::Refusal;

/// In a cluster, whether this node coordinates transactional id `id` (reading its partition
/// of the replicated transactions topic first when it just took it): that partition and
/// its leader epoch, else why not (NOT_COORDINATOR: the client asks FindCoordinator again).
fn coordinated_here(ctx: &Ctx, id: &str) -> Result<Option<(u32, i32)>, Refusal> {
    let b = &ctx.broker;
    b.transactions.here(b.cluster.as_ref(), &b.log, id)
}

/// Waits until every in-sync replica has what this node's copy of the id's partition holds:
/// no answer rests on a record a new coordinator would lack (an answer that changed
/// nothing, after a record whose replication failed).
fn settled(ctx: &Ctx, at: Option<(u32, i32)>) -> Result<(), i16> {
    let Some((partition, epoch)) = at else {
        return Ok(());
    };
    let unavailable = |_| E::CoordinatorNotAvailable.code();
    let p = ctx
        .broker
        .log
        .partition(crate::coordinators::TRANSACTIONS_TOPIC, partition)
        .map_err(unavailable)?;
    p.wait_high_watermark(p.log_end_offset(), epoch, Duration::from_secs(10))
        .map_err(unavailable)
}

/// Runs `op` on transactional id `id` if this node coordinates it (in a cluster, holding
/// its partition's lock): the answer's error code.
pub(crate) fn at_coordinator(
    ctx: &Ctx,
    id: &str,
    op: impl FnOnce() -> Result<(), LogError>,
) -> i16 {
    let refused = |(code, message): Refusal| {
        tracing::debug!(transactional_id = id, client = %ctx.client, message, "A transactional request at a node that does not coordinate the id.");
        code
    };
    let tx = &ctx.broker.transactions;
    let lock = match &ctx.broker.cluster {
        Some(cluster) => {
            match tx.locate(cluster, ctx.broker.log.options().default_partitions, id) {
                Ok((_, partition)) => Some(tx.partition_lock(partition)),
                Err(refusal) => return refused(refusal),
            }
        }
        None => None,
    };
    let _held = lock.as_ref().map(|l| l.lock());
    let at = match coordinated_here(ctx, id) {
        Ok(at) => at,
        Err(refusal) => return refused(refusal),
    };
    match op() {
        Ok(()) => settled(ctx, at).err().unwrap_or(0),
        // The leadership moved while it ran (the ids were forgotten): the client asks the
        // next coordinator rather than taking the error as final.
        Err(_) if at.is_some() && coordinated_here(ctx, id).is_err() => E::NotCoordinator.code(),
        Err(e) => failed(ctx, id, &e),
    }
}

/// The error code of a transactional request's failure, logged when it is the broker's.
fn failed(ctx: &Ctx, id: &str, e: &LogError) -> i16 {
    let code = errors::code(e);
    if code == E::KafkaStorageError.code() || code == E::UnknownServerError.code() {
        tracing::error!(transactional_id = id, client = %ctx.client, error = %e, "A Kafka client's transaction failed.");
    } else {
        tracing::debug!(transactional_id = id, client = %ctx.client, error = %e, "A Kafka client's transactional request was refused.");
    }
    code
}

pub(crate) fn add_partitions(
    ctx: &Ctx,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let id = req.v3_and_below_transactional_id.0.to_string();
    let mut partitions = Vec::new();
    let mut bad = false;
    for t in &req.v3_and_below_topics {
        for &p in &t.partitions {
            match u32::try_from(p) {
                Ok(p) => partitions.push((t.name.0.to_string(), p)),
                Err(_) => bad = true,
            }
        }
    }
    let code = if bad {
        E::UnknownTopicOrPartition.code()
    } else {
        at_coordinator(ctx, &id, || {
            ctx.broker.log.add_partitions_to_txn(
                &id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &partitions,
            )
        })
    };
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
        req.v3_and_below_topics
            .into_iter()
            .map(|t| {
                AddPartitionsToTxnTopicResult::default()
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    )
                    .with_name(t.name)
            })
            .collect(),
    )
}

pub(crate) fn add_offsets(ctx: &Ctx, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
    let id = req.transactional_id.0.to_string();
    let log = &ctx.broker.log;
    let code = at_coordinator(ctx, &id, || match &ctx.broker.cluster {
        // In a cluster the transaction includes the group's partition of the replicated
        // offsets topic: its marker goes to the group's coordinator, its leader.
        Some(cluster) => {
            let located = ctx.broker.coordinators.locate(
                cluster,
                log.options().default_partitions,
                &req.group_id.0,
            );
            match located {
                Ok((_, partition)) => log.add_partitions_to_txn(
                    &id,
                    req.producer_id.0,
                    req.producer_epoch,
                    &[(crate::coordinators::GROUPS_TOPIC.to_string(), partition)],
                ),
                Err((_, message)) => Err(LogError::ClusterUnavailable(message)),
            }
        }
        None => log.add_offsets_to_txn(&id, req.producer_id.0, req.producer_epoch, &req.group_id.0),
    });
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub(crate) fn txn_offset_commit(ctx: &Ctx, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
    let id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let home = super::groups::coordinator_partition(ctx, &group);
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            if let Ok(partition) = u32::try_from(p.partition_index) {
                offsets.push((
                    TopicPartition::new(t.name.0.to_string(), partition),
                    p.committed_offset,
                ));
            }
        }
    }
    // v3 (KIP-447) names the member: its generation must be current.
    let member = (ctx.version >= 3 && req.generation_id >= 0)
        .then(|| (req.member_id.as_str(), req.generation_id));
    // The group's partition's lock, across the log's commit and its copy: a marker
    // (`settle`) or an import of the partition must not come between them.
    let lock = home
        .as_ref()
        .ok()
        .and_then(|h| *h)
        .map(|partition| ctx.broker.coordinators.partition_lock(partition));
    let _held = lock.as_ref().map(|l| l.lock());
    let code = match home {
        // Another node coordinates the group (a cluster): the client asks again.
        Err((code, _)) => code,
        Ok(home) => match ctx.broker.log.txn_offset_commit(
            &id,
            req.producer_id.0,
            req.producer_epoch,
            &group,
            member,
            &offsets,
        ) {
            Ok(()) => match home {
                // In a cluster the pending offsets are replicated too, in a transactional
                // batch of the producer in the group's partition (its marker ends them
                // there): a coordinator that takes over before the commit still has them.
                Some(partition) => mirror_pending(
                    ctx,
                    &group,
                    partition,
                    (req.producer_id.0, req.producer_epoch),
                    &offsets,
                ),
                None => 0,
            },
            Err(e) => failed(ctx, &id, &e),
        },
    };
    TxnOffsetCommitResponse::default().with_topics(
        req.topics
            .into_iter()
            .map(|t| {
                TxnOffsetCommitResponseTopic::default()
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
                    .with_name(t.name)
            })
            .collect(),
    )
}

/// Copies a transaction's pending offsets to the group's `partition` of the replicated
/// offsets topic and waits for its in-sync replicas (10 s): the answer's error code.
fn mirror_pending(
    ctx: &Ctx,
    group: &str,
    partition: u32,
    producer: (i64, i16),
    offsets: &[(TopicPartition, i64)],
) -> i16 {
    let offsets: Vec<(TopicPartition, Option<i64>)> = offsets
        .iter()
        .map(|(tp, o)| (tp.clone(), Some(*o)))
        .collect();
    let log = &ctx.broker.log;
    let mirrored = crate::coordinators::mirror(log, group, partition, &offsets, Some(producer));
    let waited = mirrored.and_then(|m| {
        log.partition(&m.tp.0, m.tp.1)
            .and_then(|p| p.wait_high_watermark(m.end, m.epoch, Duration::from_secs(10)))
            .map_err(|e| (E::CoordinatorNotAvailable.code(), e.to_string()))
    });
    match waited {
        Ok(()) => 0,
        Err((code, message)) => {
            tracing::debug!(group, client = %ctx.client, message, "A transaction's offsets were not replicated in time.");
            code
        }
    }
}

pub(crate) fn end_txn(ctx: &Ctx, req: EndTxnRequest) -> EndTxnResponse {
    let id = req.transactional_id.0.to_string();
    let code = at_coordinator(ctx, &id, || {
        ctx.broker
            .log
            .end_txn(&id, req.producer_id.0, req.producer_epoch, req.committed)
    });
    EndTxnResponse::default().with_error_code(code)
}

/// WriteTxnMarkers: another node's transaction coordinator ends a transaction in partitions
/// this node leads; each answered once the partition's in-sync replicas have the marker.
/// Only between the nodes of a cluster (a worker alone refuses it).
pub(crate) fn write_txn_markers(
    ctx: &Ctx,
    req: kafka_protocol::messages::WriteTxnMarkersRequest,
) -> kafka_protocol::messages::WriteTxnMarkersResponse {
    use kafka_protocol::messages::WriteTxnMarkersResponse;
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    let log = &ctx.broker.log;
    let replicas = ctx.broker.replicas.as_ref();
    let markers = req
        .markers
        .into_iter()
        .map(|m| {
            let topics = m
                .topics
                .iter()
                .map(|t| {
                    let name = t.name.0.to_string();
                    let partitions = t
                        .partition_indexes
                        .iter()
                        .map(|&index| {
                            let code = match (replicas, u32::try_from(index)) {
                                (None, _) => E::ClusterAuthorizationFailed.code(),
                                (Some(_), _) if !ctx.node => E::ClusterAuthorizationFailed.code(),
                                (Some(_), Err(_)) => E::UnknownTopicOrPartition.code(),
                                (Some(r), Ok(partition)) => r
                                    .check_write(&name, partition, 1)
                                    .map_err(|(c, _)| c)
                                    .and_then(|()| {
                                        if name == crate::coordinators::GROUPS_TOPIC {
                                            // The offsets of the transaction's groups, which
                                            // this node coordinates.
                                            let cluster = ctx.broker.cluster.as_ref();
                                            return cluster.map_or(Ok(()), |c| {
                                                crate::coordinators::settle(
                                                    log,
                                                    c,
                                                    &ctx.broker.coordinators,
                                                    &[partition],
                                                    m.producer_id.0,
                                                    m.producer_epoch,
                                                    m.transaction_result,
                                                    m.coordinator_epoch,
                                                )
                                                .map_err(|(c, _)| c)
                                            });
                                        }
                                        write_marker(log, &name, partition, &m)
                                            .map_err(|e| errors::code(&e))
                                    })
                                    .err()
                                    .unwrap_or(0),
                            };
                            WritableTxnMarkerPartitionResult::default()
                                .with_partition_index(index)
                                .with_error_code(code)
                        })
                        .collect();
                    WritableTxnMarkerTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(partitions)
                })
                .collect();
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics)
        })
        .collect();
    WriteTxnMarkersResponse::default().with_markers(markers)
}

/// One marker, answered once the in-sync replicas have it (10 s).
fn write_marker(
    log: &sluice_log::Log,
    topic: &str,
    partition: u32,
    m: &kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker,
) -> Result<(), LogError> {
    let written = log.write_marker(
        topic,
        partition,
        m.producer_id.0,
        m.producer_epoch,
        m.transaction_result,
        m.coordinator_epoch,
    )?;
    let p = log.partition(topic, partition)?;
    // Written before (a retry): it is below the log end, which is waited for instead.
    let (end, epoch) = written.map_or_else(
        || (p.log_end_offset(), p.leader_epoch()),
        |(offset, epoch)| (offset + 1, epoch),
    );
    p.wait_high_watermark(end, epoch, Duration::from_secs(10))?;
    Ok(())
}
