//! ListOffsets: earliest, latest (the last stable offset for read_committed) and by time.

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use sluice_log::batch::decode_records;
use sluice_log::{Isolation, Log, OffsetSpec, Result};

use super::Ctx;
use crate::errors;

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub(crate) fn list_offsets(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let log = &ctx.broker.log;
    let isolation = if req.isolation_level == 1 {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    let Ok(partition) = u32::try_from(p.partition_index) else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    if super::fetch::hidden(&topic) {
                        return out.with_error_code(E::TopicAuthorizationFailed.code());
                    }
                    let spec = match p.timestamp {
                        LATEST => OffsetSpec::Latest,
                        EARLIEST => OffsetSpec::Earliest,
                        t if t >= 0 => OffsetSpec::Timestamp(t),
                        // -3 (the record with the largest timestamp) and later specials.
                        _ => return out.with_error_code(E::InvalidRequest.code()),
                    };
                    let found = log
                        .list_offset(&topic, partition, spec, isolation)
                        .and_then(|offset| match (spec, offset) {
                            (OffsetSpec::Timestamp(_), Some(o)) => {
                                Ok((o, timestamp_at(log, &topic, partition, o)?))
                            }
                            (_, Some(o)) => Ok((o, -1)),
                            (_, None) => Ok((-1, -1)),
                        });
                    match found {
                        Ok((offset, timestamp)) => out
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(if ctx.version >= 4 { 0 } else { -1 }),
                        Err(e) => out.with_error_code(errors::code(&e)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// The timestamp of the record at `offset` (what a by-time lookup answers with it).
fn timestamp_at(log: &Log, topic: &str, partition: u32, offset: i64) -> Result<i64> {
    let r = log.fetch(topic, partition, offset, 1, Isolation::ReadUncommitted)?;
    if r.data.is_empty() {
        return Ok(-1);
    }
    // The first batch holds `offset` (a fetch starts at the batch containing it).
    let records = decode_records(&r.data).map_err(|source| sluice_log::LogError::Batch {
        topic: topic.into(),
        partition,
        source,
    })?;
    Ok(records
        .iter()
        .find(|r| r.offset >= offset)
        .map_or(-1, |r| r.record.timestamp))
}
