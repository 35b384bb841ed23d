//! Metadata: the one broker, and topics with their partitions (this node leads them all).

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use sluice_log::{LogError, is_internal_topic};

use super::{Ctx, s};
use crate::errors;

/// The cluster id clients see (one node, one cluster).
pub(crate) const CLUSTER_ID: &str = "sluice";

pub(crate) fn metadata(ctx: &Ctx, req: MetadataRequest) -> MetadataResponse {
    let b = &ctx.broker;
    let log = &b.log;
    // v0: an empty list means every topic; v1+: null means every topic, empty means none.
    let wanted: Option<Vec<String>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && ctx.version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| t.name.map(|n| n.0.to_string()).unwrap_or_default())
                .collect(),
        ),
    };
    if let Some(cluster) = &b.cluster {
        return clustered(ctx, cluster, wanted);
    }
    // Before v4 every Metadata request may create topics (when the log allows it at all).
    let may_create = ctx.version < 4 || req.allow_auto_topic_creation;
    let topics = match wanted {
        None => {
            let mut names = log.topic_names();
            names.retain(|n| !super::fetch::hidden(n));
            names.sort();
            names.iter().map(|n| topic(ctx, n, false)).collect()
        }
        Some(names) => names.iter().map(|n| topic(ctx, n, may_create)).collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(s(b.host.clone()))
                .with_port(b.port),
        ])
        .with_cluster_id(Some(s(CLUSTER_ID)))
        .with_controller_id(BrokerId(b.node_id))
        .with_topics(topics)
}

fn topic(ctx: &Ctx, name: &str, may_create: bool) -> MetadataResponseTopic {
    let log = &ctx.broker.log;
    let node = BrokerId(ctx.broker.node_id);
    let out = MetadataResponseTopic::default().with_name(Some(TopicName(s(name))));
    if super::fetch::hidden(name) {
        return out.with_error_code(E::TopicAuthorizationFailed.code());
    }
    let found = if may_create && !name.is_empty() {
        log.topic_or_create(name)
    } else {
        log.topic(name)
    };
    let description = found.and_then(|_| log.describe_topic(name));
    match description {
        Ok(d) => out
            .with_is_internal(is_internal_topic(name))
            .with_partitions(
                d.partitions
                    .iter()
                    .map(|p| {
                        MetadataResponsePartition::default()
                            .with_partition_index(p.partition as i32)
                            .with_leader_id(node)
                            .with_leader_epoch(p.leader_epoch)
                            .with_replica_nodes(vec![node])
                            .with_isr_nodes(vec![node])
                    })
                    .collect(),
            ),
        Err(LogError::UnknownTopic(_)) => out.with_error_code(E::UnknownTopicOrPartition.code()),
        Err(e) => {
            if !matches!(e, LogError::InvalidTopicName { .. }) {
                tracing::warn!(topic = name, client = %ctx.client, error = %e, "Metadata for a topic failed.");
            }
            out.with_error_code(errors::code(&e))
        }
    }
}

/// Metadata in a cluster: the live nodes, and each topic's partitions as the controller
/// placed them. Topics outside the cluster metadata (this node's own, such as its group
/// offsets) are described as led here.
fn clustered(
    ctx: &Ctx,
    cluster: &sluice_cluster::Cluster,
    wanted: Option<Vec<String>>,
) -> MetadataResponse {
    let md = std::sync::Arc::clone(&cluster.metadata().borrow());
    let brokers = md
        .nodes
        .values()
        .filter(|n| !n.fenced)
        .filter_map(|n| {
            let (host, port) = crate::config::host_port(&n.addr)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n.id as i32))
                    .with_host(s(host))
                    .with_port(i32::from(port)),
            )
        })
        .collect();
    let names: Vec<String> = match wanted {
        Some(names) => names,
        None => {
            let mut names: Vec<String> = md.topics.keys().cloned().collect();
            for n in ctx.broker.log.topic_names() {
                if !md.topics.contains_key(&n) && !super::fetch::hidden(&n) {
                    names.push(n);
                }
            }
            names.sort();
            names
        }
    };
    let topics = names
        .iter()
        .map(|name| match md.topics.get(name) {
            None => topic(ctx, name, false),
            Some(t) => MetadataResponseTopic::default()
                .with_name(Some(TopicName(s(name.clone()))))
                .with_partitions(
                    t.partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let ids = |v: &[u64]| v.iter().map(|n| BrokerId(*n as i32)).collect();
                            MetadataResponsePartition::default()
                                .with_error_code(if p.leader.is_some() {
                                    0
                                } else {
                                    E::LeaderNotAvailable.code()
                                })
                                .with_partition_index(i as i32)
                                .with_leader_id(BrokerId(p.leader.map_or(-1, |l| l as i32)))
                                .with_leader_epoch(p.leader_epoch)
                                .with_replica_nodes(ids(&p.replicas))
                                .with_isr_nodes(ids(&p.isr))
                        })
                        .collect(),
                ),
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(s(CLUSTER_ID)))
        .with_controller_id(BrokerId(cluster.controller().map_or(-1, |c| c as i32)))
        .with_topics(topics)
}
