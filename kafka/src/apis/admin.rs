//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions.

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse,
};
use sluice_log::TopicConfig;
use sluice_log::log::validate_topic_name;

use super::{Ctx, s};
use crate::errors;

use crate::topics::MAX_PARTITIONS;

/// Kafka's `config_source` for a value set on the topic, and for a default.
const TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

pub(crate) fn create_topics(ctx: &Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let log = &ctx.broker.log;
    let node = ctx.broker.node_id;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            if let Some(cluster) = &ctx.broker.cluster {
                return create_replicated(ctx, cluster, &t, req.validate_only);
            }
            let name = t.name.0.to_string();
            let out = CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            let fail = |code: i16, message: String| {
                out.clone()
                    .with_error_code(code)
                    .with_error_message(Some(s(message)))
            };
            // One node holds every replica: a factor above 1 cannot be met.
            if t.replication_factor > 1 {
                return fail(
                    E::InvalidReplicationFactor.code(),
                    format!(
                        "replication factor {} is larger than the 1 node of this cluster",
                        t.replication_factor
                    ),
                );
            }
            let partitions = if !t.assignments.is_empty() {
                if t.num_partitions != -1 || t.replication_factor != -1 {
                    return fail(
                        E::InvalidRequest.code(),
                        "give either assignments or partitions and replication factor".into(),
                    );
                }
                let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
                indexes.sort_unstable();
                let dense = indexes.iter().enumerate().all(|(i, p)| *p == i as i32);
                let here = t
                    .assignments
                    .iter()
                    .all(|a| a.broker_ids.len() == 1 && a.broker_ids[0].0 == node);
                if !dense || !here {
                    return fail(
                        E::InvalidReplicaAssignment.code(),
                        format!("every partition 0..n must have exactly this node ({node}) as its replica"),
                    );
                }
                if indexes.len() > MAX_PARTITIONS {
                    return fail(
                        E::InvalidPartitions.code(),
                        format!("at most {MAX_PARTITIONS} partitions per topic"),
                    );
                }
                indexes.len() as u32
            } else if t.num_partitions == -1 {
                log.options().default_partitions
            } else if t.num_partitions > MAX_PARTITIONS as i32 {
                return fail(
                    E::InvalidPartitions.code(),
                    format!("{} partitions: at most {MAX_PARTITIONS} per topic", t.num_partitions),
                );
            } else if t.num_partitions <= 0 {
                return fail(
                    E::InvalidPartitions.code(),
                    format!("{} partitions: a topic needs at least one", t.num_partitions),
                );
            } else {
                t.num_partitions as u32
            };
            let config: Vec<(String, String)> = match requested_configs(&t) {
                Ok(c) => c,
                Err(message) => return fail(E::InvalidConfig.code(), message),
            };
            let result = if req.validate_only {
                validate_topic_name(&name).and_then(|()| {
                    TopicConfig::from_overrides(config.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .map(drop)
                        .map_err(Into::into)
                })
                .and_then(|()| match log.topic(&name) {
                    Ok(_) => Err(sluice_log::LogError::TopicExists(name.clone())),
                    Err(_) => Ok(()),
                })
            } else {
                log.create_topic(&name, partitions, &config)
            };
            match result {
                Ok(()) => {
                    let configs = match log.topic(&name) {
                        Ok(topic) => topic.config().entries(),
                        Err(_) => TopicConfig::from_overrides(config.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map(|c| c.entries()).unwrap_or_default(),
                    };
                    out.with_num_partitions(partitions as i32)
                        .with_replication_factor(1)
                        .with_configs(Some(config_answer(configs)))
                }
                Err(e) => fail(errors::code(&e), errors::message(&e)),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// Why a replicated topic cannot be `done` here yet (each node would change only its own
/// copy), or `None` for a topic outside the cluster metadata.
pub(crate) fn replicated_refusal(ctx: &Ctx, topic: &str, done: &str) -> Option<String> {
    let cluster = ctx.broker.cluster.as_ref()?;
    let replicated = cluster.metadata().borrow().topics.contains_key(topic);
    replicated.then(|| {
        format!("'{topic}' is replicated in the cluster and cannot be {done} yet (not supported in a cluster)")
    })
}

/// A CreateTopics topic's config overrides, or which one has no value.
fn requested_configs<C: FromIterator<(String, String)>>(
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<C, String> {
    t.configs
        .iter()
        .map(|c| match &c.value {
            Some(v) => Ok((c.name.to_string(), v.to_string())),
            None => Err(format!("config '{}' has no value", c.name.as_str())),
        })
        .collect()
}

/// A created topic's config as CreateTopics answers it: every key, and whether it was set.
fn config_answer(entries: Vec<(&'static str, String, bool)>) -> Vec<CreatableTopicConfigs> {
    entries
        .into_iter()
        .map(|(k, v, set)| {
            CreatableTopicConfigs::default()
                .with_name(s(k))
                .with_value(Some(s(v)))
                .with_config_source(if set { TOPIC_CONFIG } else { DEFAULT_CONFIG })
        })
        .collect()
}

/// CreateTopics in a cluster: the controller places the replicas and commits the topic
/// ([`crate::topics::create_replicated`]).
fn create_replicated(
    ctx: &Ctx,
    cluster: &sluice_cluster::Cluster,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> CreatableTopicResult {
    let out = CreatableTopicResult::default()
        .with_name(t.name.clone())
        .with_num_partitions(-1)
        .with_replication_factor(-1);
    if !t.assignments.is_empty() {
        return out
            .with_error_code(E::InvalidReplicaAssignment.code())
            .with_error_message(Some(s(
                "explicit replica assignments are not supported; give partitions and a replication factor",
            )));
    }
    let configs = match requested_configs(t) {
        Ok(c) => c,
        Err(message) => {
            return out
                .with_error_code(E::InvalidConfig.code())
                .with_error_message(Some(s(message)));
        }
    };
    let request = crate::topics::NewTopic {
        name: t.name.0.to_string(),
        partitions: (t.num_partitions != -1).then_some(i64::from(t.num_partitions)),
        replication_factor: (t.replication_factor != -1).then_some(i64::from(t.replication_factor)),
        configs,
        internal: false,
        anchor: None,
    };
    let default_partitions = ctx.broker.log.options().default_partitions;
    match crate::topics::create_replicated(cluster, default_partitions, request, validate_only) {
        Ok(created) => out
            .with_num_partitions(created.partitions as i32)
            .with_replication_factor(created.replication_factor as i16)
            .with_configs(Some(config_answer(created.config.entries()))),
        Err(e) => out
            .with_error_code(e.code)
            .with_error_message(Some(s(e.message))),
    }
}

pub(crate) fn delete_topics(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let log = &ctx.broker.log;
    let responses = req
        .topic_names
        .into_iter()
        .map(|name| {
            let out = DeletableTopicResult::default().with_name(Some(name.clone()));
            if let Some(reason) = replicated_refusal(ctx, &name.0, "deleted") {
                return out
                    .with_error_code(E::InvalidRequest.code())
                    .with_error_message(Some(s(reason)));
            }
            match log.delete_topic(&name.0) {
                Ok(()) => out,
                Err(e) => out
                    .with_error_code(errors::code(&e))
                    .with_error_message(Some(s(errors::message(&e)))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) fn create_partitions(
    ctx: &Ctx,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let log = &ctx.broker.log;
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let out = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let fail = |code: i16, message: String| {
                out.clone()
                    .with_error_code(code)
                    .with_error_message(Some(s(message)))
            };
            if sluice_log::is_internal_topic(&t.name.0) {
                return fail(
                    E::InvalidTopicException.code(),
                    format!(
                        "'{}' is an internal topic: its partitions are the log's",
                        t.name.0.as_str()
                    ),
                );
            }
            if let Some(reason) = replicated_refusal(ctx, &t.name.0, "given partitions") {
                return fail(E::InvalidRequest.code(), reason);
            }
            if t.count > MAX_PARTITIONS as i32 {
                return fail(
                    E::InvalidPartitions.code(),
                    format!("{} partitions: at most {MAX_PARTITIONS} per topic", t.count),
                );
            }
            let current = match log.topic(&t.name.0) {
                Ok(topic) => topic.partition_count(),
                Err(e) => return fail(errors::code(&e), errors::message(&e)),
            };
            if t.count <= current as i32 {
                return fail(
                    E::InvalidPartitions.code(),
                    format!(
                        "'{}' has {current} partitions; it can only grow (asked for {})",
                        t.name.0.as_str(),
                        t.count
                    ),
                );
            }
            if req.validate_only {
                return out;
            }
            match log.alter_partitions(&t.name.0, t.count as u32) {
                Ok(()) => out,
                Err(e) => fail(errors::code(&e), errors::message(&e)),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
