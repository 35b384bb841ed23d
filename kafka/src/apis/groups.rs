//! Coordinator lookup and committed offsets: FindCoordinator (alone this node coordinates
//! every group and transaction; in a cluster the leaders of the coordinators' topics do),
//! OffsetCommit, OffsetFetch, ListGroups. Groups here are the log's
//! groups: offsets a Kafka client commits are the ones `sluice groups` and pipelines see.

use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, TopicName,
};
use sluice_log::TopicPartition;
use std::collections::BTreeMap;

use super::{Ctx, s};
use crate::errors;

pub(crate) fn find_coordinator(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let b = &ctx.broker;
    if let Some(cluster) = &b.cluster {
        let coordinators = if req.key_type == 0 {
            &b.coordinators
        } else {
            &b.transactions
        };
        let mut answer = clustered_coordinator(ctx, cluster, coordinators, req.key.as_str());
        if ctx.version == 0 {
            // v0 has no room for a message.
            answer.error_message = None;
        }
        return answer;
    }
    FindCoordinatorResponse::default()
        .with_node_id(BrokerId(b.node_id))
        .with_host(s(b.host.clone()))
        .with_port(b.port)
}

/// In a cluster, a consumer group's (a transactional id's) coordinator is the leader of its
/// partition of the replicated offsets (transactions) topic ([`crate::coordinators`]).
fn clustered_coordinator(
    ctx: &Ctx,
    cluster: &sluice_cluster::Cluster,
    coordinators: &std::sync::Arc<crate::coordinators::Coordinators>,
    key: &str,
) -> FindCoordinatorResponse {
    use crate::coordinators::Located;
    let default_partitions = ctx.broker.log.options().default_partitions;
    let located = coordinators.locate_or_start(cluster, default_partitions, key);
    let at = match located.map(|(l, _)| l) {
        Ok(Located::Here(_)) => Ok((cluster.node_id(), ctx.broker.host.clone(), ctx.broker.port)),
        Ok(Located::There(id, addr)) => crate::config::host_port(&addr)
            .map(|(h, p)| (id, h, i32::from(p)))
            .ok_or((
                E::CoordinatorNotAvailable.code(),
                format!("node {id} has no usable address ({addr})"),
            )),
        Err(refusal) => Err(refusal),
    };
    match at {
        Ok((id, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(id as i32))
            .with_host(s(host))
            .with_port(port),
        Err((code, message)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(code)
            .with_error_message(Some(s(message))),
    }
}

/// Whether this node may answer for `group`: in a cluster, only its coordinator does (after
/// importing the group's offsets when it just became the coordinator). Blocking.
pub(crate) fn coordinator_refusal(ctx: &Ctx, group: &str) -> Option<crate::replica::Refusal> {
    coordinator_partition(ctx, group).err()
}

/// In a cluster, the partition of the replicated offsets topic holding `group` when this
/// node coordinates it (`Ok(None)` alone), else why not.
pub(crate) fn coordinator_partition(
    ctx: &Ctx,
    group: &str,
) -> Result<Option<u32>, crate::replica::Refusal> {
    let b = &ctx.broker;
    b.coordinators
        .here(b.cluster.as_ref(), &b.log, group)
        .map(|here| here.map(|(partition, _)| partition))
}

/// A commit's answer, and in a cluster the end of its copy in the replicated offsets topic
/// that every in-sync replica must have before the answer goes out.
pub(crate) type Committed = (OffsetCommitResponse, Option<crate::coordinators::Mirrored>);

/// Every partition of an OffsetCommit answered with `code`.
pub(crate) fn commit_failed(req: &OffsetCommitRequest, code: i16) -> OffsetCommitResponse {
    commit_answer(req, |_, _| code)
}

/// An OffsetCommit's answer: each partition's code from `code(topic, partition)`.
fn commit_answer(
    req: &OffsetCommitRequest,
    code: impl Fn(&str, i32) -> i16,
) -> OffsetCommitResponse {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code(t.name.0.as_str(), p.partition_index))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub(crate) fn offset_commit(ctx: &Ctx, req: OffsetCommitRequest) -> Committed {
    let log = &ctx.broker.log;
    let group = req.group_id.0.to_string();
    let home = match coordinator_partition(ctx, &group) {
        Ok(home) => home,
        Err((code, message)) => {
            tracing::debug!(group, client = %ctx.client, message, "An offset commit at a node that does not coordinate the group.");
            return (commit_failed(&req, code), None);
        }
    };
    // In a cluster the coordinator may hold no copy of a committed topic: the metadata
    // knows its partitions.
    let clustered = |topic: &str| {
        let md = std::sync::Arc::clone(&ctx.broker.cluster.as_ref()?.metadata().borrow());
        md.topics.get(topic).map(|t| t.partitions.len())
    };
    // Check every partition first: a commit is all or nothing in the log.
    let mut offsets = Vec::new();
    let mut bad: BTreeMap<(String, i32), i16> = BTreeMap::new();
    for t in &req.topics {
        for p in &t.partitions {
            let topic = t.name.0.to_string();
            let count = clustered(&topic)
                .map(|n| n as u32)
                .or_else(|| log.topic(&topic).ok().map(|h| h.partition_count()));
            match (u32::try_from(p.partition_index), count) {
                (Ok(partition), Some(count)) if partition < count => {
                    offsets.push((TopicPartition::new(topic, partition), p.committed_offset))
                }
                _ => {
                    bad.insert(
                        (topic, p.partition_index),
                        E::UnknownTopicOrPartition.code(),
                    );
                }
            }
        }
    }
    let code = if group.is_empty() {
        E::InvalidGroupId.code()
    } else {
        // A member of a classic group commits with its generation; a standalone consumer
        // (assign(), no group membership) with -1 and no member id.
        let committed = if req.generation_id_or_member_epoch >= 0 || !req.member_id.is_empty() {
            log.commit_classic_offsets(
                &group,
                req.generation_id_or_member_epoch,
                &req.member_id,
                &offsets,
            )
        } else {
            log.commit_offsets(&group, None, &offsets)
        };
        match committed {
            Ok(()) => 0,
            Err(e) => {
                tracing::debug!(group, client = %ctx.client, error = %e, "A Kafka client's offset commit was refused.");
                errors::code(&e)
            }
        }
    };
    // In a cluster: the commit's copy in the replicated offsets topic.
    let mut replicated = None;
    let mut code = code;
    if let Some(partition) = home.filter(|_| code == 0 && !offsets.is_empty()) {
        let copy: Vec<(TopicPartition, Option<i64>)> = offsets
            .iter()
            .map(|(tp, o)| (tp.clone(), Some(*o)))
            .collect();
        match ctx
            .broker
            .coordinators
            .mirror(log, &group, partition, &copy)
        {
            Ok(end) => replicated = Some(end),
            Err((c, message)) => {
                tracing::warn!(group, message, "Cannot replicate a group's offset commit.");
                code = c;
            }
        }
    }
    let answer = commit_answer(&req, |topic, partition| {
        bad.get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(code)
    });
    (answer, replicated)
}

pub(crate) fn offset_fetch(ctx: &Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let log = &ctx.broker.log;
    let group = req.group_id.0.to_string();
    if let Some((code, _)) = coordinator_refusal(ctx, &group) {
        // v2+ has the group's error; v1 only the partitions'.
        let topics = req
            .topics
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                OffsetFetchResponseTopic::default()
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&i| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(i)
                                    .with_committed_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
                    .with_name(t.name)
            })
            .collect();
        return OffsetFetchResponse::default()
            .with_error_code(code)
            .with_topics(topics);
    }
    // v7 (KIP-447): with require_stable, an offset a transaction is still committing is
    // answered UNSTABLE_OFFSET_COMMIT (the client retries), so a new owner of a partition
    // never starts from before what a zombie's transaction is about to commit.
    let stable = ctx.version >= 7 && req.require_stable;
    let partition = |topic: &str, index: i32| {
        let tp = u32::try_from(index)
            .ok()
            .map(|p| TopicPartition::new(topic, p));
        let out = OffsetFetchResponsePartition::default()
            .with_partition_index(index)
            .with_committed_leader_epoch(-1)
            .with_metadata(Some(s("")));
        match tp {
            Some(tp) if stable && log.has_pending_offsets(&group, &tp) => out
                .with_committed_offset(-1)
                .with_error_code(E::UnstableOffsetCommit.code()),
            Some(tp) => out.with_committed_offset(log.committed(&group, &tp).unwrap_or(-1)),
            None => out.with_committed_offset(-1),
        }
    };
    let topics = match req.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.to_string();
                OffsetFetchResponseTopic::default()
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&i| partition(&name, i))
                            .collect(),
                    )
                    .with_name(t.name)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartition>> = BTreeMap::new();
            for (tp, c) in log.committed_offsets(&group) {
                by_topic.entry(tp.topic).or_default().push(
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(tp.partition as i32)
                        .with_committed_offset(c.offset)
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(s(c.metadata))),
                );
            }
            by_topic
                .into_iter()
                .map(|(t, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(partitions)
                })
                .collect()
        }
    };
    OffsetFetchResponse::default().with_topics(topics)
}

pub(crate) fn list_groups(ctx: &Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let groups = ctx
        .broker
        .log
        .list_groups()
        .into_iter()
        .map(|(name, state, _)| (name, kafka_state(&state.to_string())))
        .filter(|(_, state)| {
            req.states_filter.is_empty()
                || req
                    .states_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(state))
        })
        .map(|(name, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(s(name)))
                .with_protocol_type(s("consumer"))
                .with_group_state(s(state))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// The log's group states in Kafka's words.
fn kafka_state(state: &str) -> &'static str {
    match state.to_ascii_lowercase().as_str() {
        "empty" => "Empty",
        "stable" => "Stable",
        _ => "PreparingRebalance",
    }
}
