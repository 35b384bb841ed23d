//! The request handlers, one file per group of APIs, and the dispatch from API key to
//! handler.
//!
//! Handlers that touch the log are plain functions run on tokio's blocking pool (appends wait
//! for fsync, fetches read files); Fetch alone is async, because it long-polls.

mod admin;
mod auth;
mod configs;
mod fetch;
mod fetch_sessions;
mod groups;
mod membership;
mod metadata;
mod offsets;
mod produce;
mod producer_id;
#[cfg(test)]
mod tests;
mod transactions;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest, EndTxnRequest,
    FetchRequest, FindCoordinatorRequest, HeartbeatRequest, HeartbeatResponse,
    IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListOffsetsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest,
    SyncGroupRequest, SyncGroupResponse, TxnOffsetCommitRequest, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

pub(crate) use self::auth::{Session, authenticate, handshake, refuse};
pub(crate) use self::fetch_sessions::FetchSessions;
pub(crate) use self::membership::{Waiters, tick};
use crate::server::{Broker, ConnError, encode};
use crate::versions;

/// One request's context.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) broker: Arc<Broker>,
    pub(crate) api: ApiKey,
    pub(crate) version: i16,
    pub(crate) correlation: i32,
    /// The client's `client.id`, for log lines.
    pub(crate) client: String,
    /// The client's address as Kafka shows it (`/127.0.0.1`).
    pub(crate) peer: Arc<str>,
    /// Whether the connection may make the cluster's own requests (replica fetches,
    /// transaction markers): it authenticated as a node, or nodes do not authenticate.
    pub(crate) node: bool,
}

impl Ctx {
    pub(crate) fn decode<R: Decodable>(&self, body: &mut Bytes) -> Result<R, ConnError> {
        R::decode(body, self.version).map_err(|e| ConnError::Decode {
            api: self.api,
            version: self.version,
            correlation: self.correlation,
            reason: e.to_string(),
        })
    }

    pub(crate) fn answer<R: Encodable>(&self, body: &R) -> Result<Option<BytesMut>, ConnError> {
        encode(self.api, self.version, self.correlation, body).map(Some)
    }
}

/// Runs a blocking handler on tokio's blocking pool. A handler that panics is a bug: its
/// connection is closed (the panic's message is in the log) and the worker goes on.
async fn blocking<R: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&Ctx) -> R + Send + 'static,
) -> Result<R, ConnError> {
    let c = ctx.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| {
            ConnError::Io(std::io::Error::other(format!(
                "the {:?} handler failed: {e}",
                ctx.api
            )))
        })
}

/// Decodes the request, runs its handler and encodes the answer (`None`: no answer).
pub(crate) async fn dispatch(ctx: Ctx, mut body: Bytes) -> Result<Option<BytesMut>, ConnError> {
    macro_rules! on_pool {
        ($req:ty, $handler:path) => {{
            let req: $req = ctx.decode(&mut body)?;
            let resp = blocking(&ctx, move |c| $handler(c, req)).await?;
            ctx.answer(&resp)
        }};
    }
    match ctx.api {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = ctx.decode(&mut body)?;
            ctx.answer(&versions::api_versions(false))
        }
        ApiKey::Metadata => on_pool!(MetadataRequest, metadata::metadata),
        ApiKey::Produce => {
            let req: ProduceRequest = ctx.decode(&mut body)?;
            let acks = req.acks;
            let timeout = std::time::Duration::from_millis(req.timeout_ms.clamp(1, 300_000) as u64);
            let (mut resp, written) = blocking(&ctx, move |c| produce::produce(c, req)).await?;
            // acks=all in a cluster: answered once every in-sync replica has the records.
            if acks == -1
                && let Some(reps) = &ctx.broker.replicas
            {
                for (tp, end, epoch) in written {
                    if let Err((code, message)) =
                        reps.wait_replicated(&tp, end, epoch, timeout).await
                    {
                        produce::fail_partition(&mut resp, &tp.0, tp.1, code, message);
                    }
                }
            }
            // acks=0: the client expects no answer (errors are only in the worker's log).
            if acks == 0 {
                return Ok(None);
            }
            ctx.answer(&resp)
        }
        ApiKey::Fetch => {
            let req: FetchRequest = ctx.decode(&mut body)?;
            let resp = fetch::fetch(&ctx, req).await?;
            ctx.answer(&resp)
        }
        ApiKey::ListOffsets => on_pool!(ListOffsetsRequest, offsets::list_offsets),
        ApiKey::CreateTopics => on_pool!(CreateTopicsRequest, admin::create_topics),
        ApiKey::DeleteTopics => on_pool!(DeleteTopicsRequest, admin::delete_topics),
        ApiKey::CreatePartitions => on_pool!(CreatePartitionsRequest, admin::create_partitions),
        // On the pool: in a cluster it may create the offsets topic through the controller.
        ApiKey::FindCoordinator => on_pool!(FindCoordinatorRequest, groups::find_coordinator),
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = ctx.decode(&mut body)?;
            let asked = req.clone();
            let (mut resp, replicated) =
                blocking(&ctx, move |c| groups::offset_commit(c, req)).await?;
            // In a cluster: answered once every in-sync replica has the commit's copy (Kafka's
            // offsets.commit.timeout.ms, 5 s); a client that is told otherwise commits again.
            if let (Some(m), Some(reps)) = (replicated, &ctx.broker.replicas)
                && let Err((code, message)) = reps
                    .wait_replicated(
                        &m.tp,
                        m.end,
                        Some(m.epoch),
                        std::time::Duration::from_secs(5),
                    )
                    .await
            {
                tracing::debug!(
                    code,
                    message,
                    "A group's offset commit was not replicated in time."
                );
                let code = if code == kafka_protocol::ResponseError::NotLeaderOrFollower.code() {
                    kafka_protocol::ResponseError::NotCoordinator.code()
                } else {
                    kafka_protocol::ResponseError::CoordinatorNotAvailable.code()
                };
                resp = groups::commit_failed(&asked, code);
            }
            ctx.answer(&resp)
        }
        ApiKey::OffsetFetch => on_pool!(OffsetFetchRequest, groups::offset_fetch),
        ApiKey::ListGroups => on_pool!(ListGroupsRequest, groups::list_groups),
        ApiKey::InitProducerId => on_pool!(InitProducerIdRequest, producer_id::init_producer_id),
        ApiKey::JoinGroup => {
            let req: JoinGroupRequest = ctx.decode(&mut body)?;
            if let Some(code) = not_coordinator(&ctx, &req.group_id.0).await? {
                return ctx.answer(
                    &JoinGroupResponse::default()
                        .with_error_code(code)
                        .with_generation_id(-1),
                );
            }
            ctx.answer(&membership::join_group(&ctx, req).await)
        }
        ApiKey::SyncGroup => {
            let req: SyncGroupRequest = ctx.decode(&mut body)?;
            if let Some(code) = not_coordinator(&ctx, &req.group_id.0).await? {
                return ctx.answer(&SyncGroupResponse::default().with_error_code(code));
            }
            ctx.answer(&membership::sync_group(&ctx, req).await)
        }
        ApiKey::Heartbeat => {
            let req: HeartbeatRequest = ctx.decode(&mut body)?;
            if let Some(code) = not_coordinator(&ctx, &req.group_id.0).await? {
                return ctx.answer(&HeartbeatResponse::default().with_error_code(code));
            }
            ctx.answer(&membership::heartbeat(&ctx, req))
        }
        ApiKey::LeaveGroup => {
            let req: LeaveGroupRequest = ctx.decode(&mut body)?;
            if let Some(code) = not_coordinator(&ctx, &req.group_id.0).await? {
                return ctx.answer(&LeaveGroupResponse::default().with_error_code(code));
            }
            ctx.answer(&membership::leave_group(&ctx, req))
        }
        ApiKey::DescribeGroups => on_pool!(DescribeGroupsRequest, membership::describe_groups),
        ApiKey::DeleteGroups => on_pool!(DeleteGroupsRequest, membership::delete_groups),
        ApiKey::AddPartitionsToTxn => {
            on_pool!(AddPartitionsToTxnRequest, transactions::add_partitions)
        }
        ApiKey::AddOffsetsToTxn => on_pool!(AddOffsetsToTxnRequest, transactions::add_offsets),
        ApiKey::TxnOffsetCommit => {
            on_pool!(TxnOffsetCommitRequest, transactions::txn_offset_commit)
        }
        ApiKey::EndTxn => on_pool!(EndTxnRequest, transactions::end_txn),
        ApiKey::WriteTxnMarkers => {
            on_pool!(WriteTxnMarkersRequest, transactions::write_txn_markers)
        }
        ApiKey::DescribeConfigs => on_pool!(DescribeConfigsRequest, configs::describe_configs),
        ApiKey::IncrementalAlterConfigs => {
            on_pool!(
                IncrementalAlterConfigsRequest,
                configs::incremental_alter_configs
            )
        }
        ApiKey::DeleteRecords => on_pool!(DeleteRecordsRequest, configs::delete_records),
        ApiKey::OffsetForLeaderEpoch => {
            on_pool!(
                OffsetForLeaderEpochRequest,
                configs::offset_for_leader_epoch
            )
        }
        // `versions::range` let nothing else through.
        other => Err(ConnError::UnknownApi {
            key: other as i16,
            version: ctx.version,
            correlation: ctx.correlation,
        }),
    }
}

/// In a cluster, the error code that sends a client of `group` to its coordinator, when
/// this node is not it.
async fn not_coordinator(ctx: &Ctx, group: &str) -> Result<Option<i16>, ConnError> {
    if ctx.broker.cluster.is_none() {
        return Ok(None);
    }
    let group = group.to_string();
    blocking(ctx, move |c| {
        groups::coordinator_refusal(c, &group).map(|(code, _)| code)
    })
    .await
}

/// A protocol string from ours.
pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}
