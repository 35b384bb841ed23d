//! Classic consumer groups: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DescribeGroups,
//! DeleteGroups — the async shell around the log's state machine
//! ([`sluice_log::group::classic`]).
//!
//! A JoinGroup or SyncGroup that must wait parks a oneshot sender in [`Waiters`] under the
//! (group, member) it waits as; whichever request or tick completes the rebalance hands the
//! answers over. Waiters are registered and answers handed over under one lock, taken before
//! the coordinator's, so no answer can arrive before its waiter is in place.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::Encodable;
use sluice_log::TopicPartition;
use sluice_log::group::GroupState;
use sluice_log::group::classic::{ClassicError, Deliveries, JoinRequest, JoinResult, Reply};
use tokio::sync::oneshot;

use super::{Ctx, s};
use crate::errors;
use crate::server::Broker;

type Key = (String, String);

/// Requests waiting for a rebalance to complete.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    joins: HashMap<Key, oneshot::Sender<Result<JoinResult, ClassicError>>>,
    syncs: HashMap<Key, oneshot::Sender<Result<Bytes, ClassicError>>>,
}

impl Waiters {
    /// Hands answers to the requests waiting for them (a request whose connection went away
    /// has dropped its receiver; its answer is dropped too).
    fn deliver(&mut self, out: Deliveries) {
        for (g, m, r) in out.joins {
            if let Some(tx) = self.joins.remove(&(g, m)) {
                let _ = tx.send(r);
            }
        }
        for (g, m, r) in out.syncs {
            if let Some(tx) = self.syncs.remove(&(g, m)) {
                let _ = tx.send(r);
            }
        }
    }
}

/// Expires silent members and ends overdue rebalances; run every few hundred ms.
pub(crate) fn tick(broker: &Broker) {
    let mut w = broker.waiters.lock();
    let mut out = Deliveries::default();
    broker
        .log
        .with_group_coordinator(|c, now| c.classic.tick(now, &mut out));
    w.deliver(out);
}

/// How long past its rebalance timeout a waiting request gives up (the tick ends rebalances
/// at their deadline; this only guards against a lost wake-up).
const WAIT_SLACK: Duration = Duration::from_secs(5);

fn code(r: &ClassicError) -> i16 {
    errors::classic(r)
}

pub(crate) async fn join_group(ctx: &Ctx, req: JoinGroupRequest) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    let rebalance_ms = if ctx.version >= 1 {
        req.rebalance_timeout_ms
    } else {
        req.session_timeout_ms
    };
    let join = JoinRequest {
        group: group.clone(),
        member_id: req.member_id.to_string(),
        require_known_member_id: ctx.version >= 4,
        client_id: ctx.client.clone(),
        client_host: ctx.peer.to_string(),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        session_timeout_ms: req.session_timeout_ms.max(0) as u64,
        rebalance_timeout_ms: rebalance_ms.max(0) as u64,
        nonce: crate::sasl::random_u64(),
    };
    let (tx, rx) = oneshot::channel();
    let reply = {
        let mut w = ctx.broker.waiters.lock();
        let mut out = Deliveries::default();
        let reply = ctx
            .broker
            .log
            .with_group_coordinator(|c, now| c.classic_join(now, join, &mut out));
        if let Reply::Pending(member) = &reply {
            w.joins.insert((group.clone(), member.clone()), tx);
        }
        w.deliver(out);
        reply
    };
    let result = match reply {
        Reply::Now(r) => r,
        Reply::Pending(_) => {
            let wait = Duration::from_millis(rebalance_ms.max(0) as u64) + WAIT_SLACK;
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => r,
                _ => Err(ClassicError::RebalanceInProgress),
            }
        }
    };
    let out = JoinGroupResponse::default().with_generation_id(-1);
    match result {
        Ok(j) => out
            .with_generation_id(j.generation)
            .with_protocol_type(Some(s(j.protocol_type)))
            .with_protocol_name(Some(s(j.protocol)))
            .with_leader(s(j.leader))
            .with_member_id(s(j.member_id))
            .with_members(
                j.members
                    .into_iter()
                    .map(|(id, md)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(s(id))
                            .with_metadata(md)
                    })
                    .collect(),
            ),
        Err(ClassicError::MemberIdRequired(id)) => out
            .with_error_code(E::MemberIdRequired.code())
            .with_member_id(s(id)),
        Err(e) => {
            tracing::debug!(group, client = %ctx.client, error = %e, "A JoinGroup was refused.");
            out.with_error_code(code(&e)).with_member_id(req.member_id)
        }
    }
}

pub(crate) async fn sync_group(ctx: &Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let member = req.member_id.to_string();
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let (tx, rx) = oneshot::channel();
    let reply = {
        let mut w = ctx.broker.waiters.lock();
        let mut out = Deliveries::default();
        let reply = ctx.broker.log.with_group_coordinator(|c, now| {
            c.classic.sync(
                now,
                &group,
                req.generation_id,
                &member,
                assignments,
                &mut out,
            )
        });
        if let Reply::Pending(m) = &reply {
            w.syncs.insert((group.clone(), m.clone()), tx);
        }
        w.deliver(out);
        reply
    };
    let result = match reply {
        Reply::Now(r) => r,
        Reply::Pending(_) => {
            // The leader syncs right after its join; the tick ends a rebalance whose leader
            // never does, which answers this with RebalanceInProgress.
            match tokio::time::timeout(super::fetch::MAX_WAIT, rx).await {
                Ok(Ok(r)) => r,
                _ => Err(ClassicError::RebalanceInProgress),
            }
        }
    };
    let (protocol_type, protocol) = ctx
        .broker
        .log
        .with_group_coordinator(|c, _| c.classic.describe(&group))
        .map(|d| (d.protocol_type, d.protocol))
        .unwrap_or_default();
    match result {
        Ok(a) => SyncGroupResponse::default()
            .with_assignment(a)
            .with_protocol_type(Some(s(protocol_type)))
            .with_protocol_name(Some(s(protocol))),
        Err(e) => SyncGroupResponse::default().with_error_code(code(&e)),
    }
}

pub(crate) fn heartbeat(ctx: &Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let r = ctx.broker.log.with_group_coordinator(|c, now| {
        c.classic
            .heartbeat(now, &group, req.generation_id, &req.member_id)
    });
    HeartbeatResponse::default().with_error_code(r.err().map_or(0, |e| code(&e)))
}

pub(crate) fn leave_group(ctx: &Ctx, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let group = req.group_id.0.to_string();
    let members: Vec<String> = if ctx.version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let answers = {
        let mut w = ctx.broker.waiters.lock();
        let mut out = Deliveries::default();
        let answers = ctx
            .broker
            .log
            .with_group_coordinator(|c, now| c.classic.leave(now, &group, &members, &mut out));
        w.deliver(out);
        answers
    };
    if ctx.version >= 3 {
        LeaveGroupResponse::default().with_members(
            members
                .iter()
                .zip(&answers)
                .map(|(id, r)| {
                    MemberResponse::default()
                        .with_member_id(s(id.clone()))
                        .with_error_code(r.as_ref().err().map_or(0, code))
                })
                .collect(),
        )
    } else {
        LeaveGroupResponse::default().with_error_code(
            answers
                .first()
                .and_then(|r| r.as_ref().err())
                .map_or(0, code),
        )
    }
}

pub(crate) fn describe_groups(ctx: &Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let log = &ctx.broker.log;
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let name = id.0.to_string();
            let classic = log.with_group_coordinator(|c, _| c.classic.describe(&name));
            let out = DescribedGroup::default().with_group_id(id);
            if let Some(c) = classic.filter(|c| !c.members.is_empty()) {
                return out
                    .with_group_state(s(c.state.name()))
                    .with_protocol_type(s(c.protocol_type))
                    .with_protocol_data(s(c.protocol))
                    .with_members(
                        c.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    );
            }
            // Embedded groups (pipelines' and queries' consumers) shown as Kafka shows a
            // consumer group: their assignments in the consumer protocol's encoding.
            match log.describe_group(&name).and_then(|g| g.description) {
                Some(d) if !d.members.is_empty() => out
                    .with_group_state(s(match d.state {
                        GroupState::Stable => "Stable",
                        GroupState::Reconciling => "PreparingRebalance",
                        GroupState::Empty => "Empty",
                    }))
                    .with_protocol_type(s("consumer"))
                    .with_protocol_data(s(d.assignor.to_string()))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_client_id(s("sluice"))
                                    .with_member_assignment(assignment_blob(&m.assignment))
                            })
                            .collect(),
                    ),
                _ if log.list_groups().iter().any(|(g, _, _)| *g == name) => out
                    .with_group_state(s("Empty"))
                    .with_protocol_type(s("consumer")),
                // Kafka answers an unknown group as Dead, without an error.
                _ => out.with_group_state(s("Dead")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// Partitions in the consumer protocol's assignment encoding (a version, then the body).
fn assignment_blob(partitions: &std::collections::BTreeSet<TopicPartition>) -> Bytes {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for tp in partitions {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(tp.partition as i32);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, p)| {
                AssignedTopic::default()
                    .with_topic(TopicName(s(t)))
                    .with_partitions(p)
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(0);
    match a.encode(&mut out, 0) {
        Ok(()) => out.freeze(),
        Err(_) => Bytes::new(),
    }
}

/// Writes a deleted group's tombstones to its partition of the cluster's offsets topic and
/// waits for the in-sync replicas (5 s, as a commit).
fn replicate_deletion(
    ctx: &Ctx,
    group: &str,
    partition: u32,
    committed: &[TopicPartition],
) -> sluice_log::Result<()> {
    let log = &ctx.broker.log;
    let gone: Vec<(TopicPartition, Option<i64>)> =
        committed.iter().map(|tp| (tp.clone(), None)).collect();
    let m = ctx
        .broker
        .coordinators
        .mirror(log, group, partition, &gone)
        .map_err(|(_, message)| sluice_log::LogError::ClusterUnavailable(message))?;
    log.partition(&m.tp.0, m.tp.1)?
        .wait_high_watermark(m.end, m.epoch, Duration::from_secs(5))
}

pub(crate) fn delete_groups(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let results = req
        .groups_names
        .into_iter()
        .map(|g| {
            let home = match super::groups::coordinator_partition(ctx, &g.0) {
                Ok(home) => home,
                Err((code, _)) => {
                    return DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(code);
                }
            };
            let log = &ctx.broker.log;
            let committed: Vec<TopicPartition> = log
                .committed_offsets(&g.0)
                .into_iter()
                .map(|(tp, _)| tp)
                .collect();
            // In a cluster the deletion is replicated like a commit, before it is made
            // here (a client that retries after a failed copy copies again): a coordinator
            // that takes the group later must not bring its offsets back.
            let members = log
                .with_group_coordinator(|c, _| c.classic.describe(&g.0))
                .is_some_and(|d| !d.members.is_empty());
            let replicated = match home.filter(|_| !committed.is_empty()) {
                Some(_) if members => Ok(()),
                Some(partition) => replicate_deletion(ctx, &g.0, partition, &committed),
                None => Ok(()),
            };
            let r = replicated.and_then(|()| log.delete_group(&g.0));
            let code = match r {
                Ok(_) => 0,
                Err(sluice_log::LogError::Group(
                    sluice_log::group::GroupError::GroupNotEmpty { .. },
                )) => E::NonEmptyGroup.code(),
                Err(e) => errors::code(&e),
            };
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code)
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
