//! Configs and record deletion: DescribeConfigs, IncrementalAlterConfigs, DeleteRecords,
//! and OffsetForLeaderEpoch (one node: every partition has leader epoch 0 and that epoch ends
//! at the log end).

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use sluice_log::{LogError, TopicConfig};

use super::{Ctx, s};
use crate::errors;

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's config sources.
const TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;
/// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;

pub(crate) fn describe_configs(ctx: &Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let log = &ctx.broker.log;
    let results = req
        .resources
        .into_iter()
        .map(|r| {
            let out = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let wanted = |k: &str| {
                r.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            match r.resource_type {
                TOPIC => match log.describe_topic(&r.resource_name) {
                    Ok(d) => out.with_configs(
                        d.config
                            .into_iter()
                            .filter(|(k, _, _)| wanted(k))
                            .map(|(k, v, set)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(s(k))
                                    .with_value(Some(s(v)))
                                    .with_config_source(if set {
                                        TOPIC_CONFIG
                                    } else {
                                        DEFAULT_CONFIG
                                    })
                            })
                            .collect(),
                    ),
                    Err(e) => out
                        .with_error_code(errors::code(&e))
                        .with_error_message(Some(s(errors::message(&e)))),
                },
                // The node has no settable configs of its own: an empty list, as for a
                // broker with every value at its default and none asked for.
                BROKER if r.resource_name.as_str() == ctx.broker.node_id.to_string() => out,
                _ => out
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(format!(
                        "resource type {} '{}' has no configs here (topics, and broker {})",
                        r.resource_type,
                        r.resource_name.as_str(),
                        ctx.broker.node_id
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub(crate) fn incremental_alter_configs(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let log = &ctx.broker.log;
    let responses = req
        .resources
        .into_iter()
        .map(|r| {
            let out = AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let fail = |code: i16, message: String| {
                out.clone()
                    .with_error_code(code)
                    .with_error_message(Some(s(message)))
            };
            if r.resource_type != TOPIC {
                return fail(
                    E::InvalidRequest.code(),
                    "only topic configs can be altered".into(),
                );
            }
            let topic = r.resource_name.to_string();
            if let Some(reason) = super::admin::replicated_refusal(ctx, &topic, "altered") {
                return fail(E::InvalidRequest.code(), reason);
            }
            if sluice_log::is_internal_topic(&topic) {
                return fail(
                    E::InvalidTopicException.code(),
                    format!("'{topic}' is an internal topic: its configs are the log's"),
                );
            }
            let mut set = Vec::new();
            let mut delete = Vec::new();
            for c in &r.configs {
                match (c.config_operation, &c.value) {
                    (SET, Some(v)) => set.push((c.name.to_string(), v.to_string())),
                    (DELETE, _) => delete.push(c.name.to_string()),
                    (SET, None) => {
                        return fail(
                            E::InvalidConfig.code(),
                            format!("config '{}' has no value", c.name.as_str()),
                        );
                    }
                    (op, _) => {
                        // APPEND and SUBTRACT apply to list configs; none here is a list.
                        return fail(
                            E::InvalidConfig.code(),
                            format!(
                                "operation {op} on '{}' applies only to list configs",
                                c.name.as_str()
                            ),
                        );
                    }
                }
            }
            // The whole change must validate on a copy first, so that a bad SET does not
            // leave an applied DELETE behind.
            let checked = log.topic(&topic).and_then(|t| {
                let cfg = t.config();
                let mut pairs: Vec<(String, String)> = cfg
                    .overrides()
                    .iter()
                    .filter(|(k, _)| !delete.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pairs.extend(set.iter().cloned());
                TopicConfig::from_overrides(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .map(drop)
                    .map_err(LogError::from)
            });
            let result = match checked {
                Err(e) => Err(e),
                Ok(()) if req.validate_only => Ok(()),
                Ok(()) => {
                    let r = if delete.is_empty() {
                        Ok(())
                    } else {
                        log.reset_config(&topic, &delete)
                    };
                    r.and_then(|()| {
                        if set.is_empty() {
                            Ok(())
                        } else {
                            log.alter_config(&topic, &set)
                        }
                    })
                }
            };
            match result {
                Ok(()) => out,
                Err(e) => fail(errors::code(&e), errors::message(&e)),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub(crate) fn delete_records(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let log = &ctx.broker.log;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(-1);
                    let Ok(partition) = u32::try_from(p.partition_index) else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    match log.delete_records(&t.name, partition, p.offset) {
                        Ok(start) => out.with_low_watermark(start),
                        Err(e) => out.with_error_code(errors::code(&e)),
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

pub(crate) fn offset_for_leader_epoch(
    ctx: &Ctx,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let log = &ctx.broker.log;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let found = u32::try_from(p.partition)
                        .ok()
                        .and_then(|i| log.partition(&t.topic, i).ok());
                    let Some(part) = found else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    let info = part.info();
                    if p.current_leader_epoch > info.leader_epoch {
                        return out.with_error_code(E::UnknownLeaderEpoch.code());
                    }
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch < info.leader_epoch {
                        return out.with_error_code(E::FencedLeaderEpoch.code());
                    }
                    // A later epoch than this log knows is unknown (-1 / -1, as Kafka
                    // answers); otherwise where that epoch (or the last one before it) ended.
                    if p.leader_epoch > part.latest_epoch() {
                        return out;
                    }
                    match part.end_offset_for_epoch(p.leader_epoch) {
                        Some((epoch, end)) => out.with_leader_epoch(epoch).with_end_offset(end),
                        None => out,
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
