//! Authentication: SaslHandshake and SaslAuthenticate against the configured users, and the
//! answer a request gets before its connection authenticated: `SASL_AUTHENTICATION_FAILED`
//! in the API's own error fields, after which the connection is closed.

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError as E;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, FindCoordinatorResponse, HeartbeatResponse,
    InitProducerIdResponse, JoinGroupResponse, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetFetchResponse, ProduceRequest,
    ProduceResponse, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse, SyncGroupResponse,
};

use super::{Ctx, s};
use crate::sasl::{Exchange, FAILED, MECHANISMS, Step, Users};
use crate::server::ConnError;

/// A connection's authentication state.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// The user it authenticated as.
    pub(crate) user: Option<String>,
    exchange: Exchange,
}

pub(crate) fn handshake(
    users: &Users,
    session: &mut Session,
    req: &SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let offered: Vec<_> = if users.is_empty() {
        Vec::new()
    } else {
        MECHANISMS.iter().map(|m| s(*m)).collect()
    };
    // v0 would send raw SASL tokens next, outside Kafka's framing: only v1 is spoken.
    let ok = !users.is_empty() && version >= 1 && session.exchange.handshake(&req.mechanism);
    SaslHandshakeResponse::default()
        .with_error_code(if ok {
            0
        } else {
            E::UnsupportedSaslMechanism.code()
        })
        .with_mechanisms(offered)
}

/// The answer, and whether the connection must close after it (a failed exchange).
pub(crate) fn authenticate(
    users: &Users,
    session: &mut Session,
    req: &SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    match session.exchange.step(users, &req.auth_bytes) {
        Step::Continue(bytes) => (
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes)),
            false,
        ),
        Step::Done(user, bytes) => {
            session.user = Some(user);
            // Session lifetime 0: no re-authentication (KIP-368) is asked for.
            (
                SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes)),
                false,
            )
        }
        Step::Failed => (
            SaslAuthenticateResponse::default()
                .with_error_code(E::SaslAuthenticationFailed.code())
                .with_error_message(Some(s(FAILED))),
            true,
        ),
    }
}

/// A refusal with `code` (a request sent before authenticating, or in a version not
/// served), where the API has a place for an error code; `None` for the others (the
/// connection is then closed without an answer).
pub(crate) fn refuse(ctx: &Ctx, mut body: Bytes, code: i16) -> Result<Option<BytesMut>, ConnError> {
    match ctx.api {
        ApiKey::Metadata => {
            let req: MetadataRequest = ctx.decode(&mut body)?;
            let topics = req
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    MetadataResponseTopic::default()
                        .with_name(t.name)
                        .with_error_code(code)
                })
                .collect();
            ctx.answer(&MetadataResponse::default().with_topics(topics))
        }
        ApiKey::Produce => {
            let req: ProduceRequest = ctx.decode(&mut body)?;
            let responses = req
                .topic_data
                .into_iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| {
                                    PartitionProduceResponse::default()
                                        .with_index(p.index)
                                        .with_base_offset(-1)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                        .with_name(t.name)
                })
                .collect();
            ctx.answer(&ProduceResponse::default().with_responses(responses))
        }
        ApiKey::Fetch => {
            let req: FetchRequest = ctx.decode(&mut body)?;
            let responses = req
                .topics
                .into_iter()
                .map(|t| {
                    FetchableTopicResponse::default()
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    PartitionData::default()
                                        .with_partition_index(p.partition)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                        .with_topic(t.topic)
                })
                .collect();
            let top = if ctx.version >= 7 { code } else { 0 };
            ctx.answer(
                &FetchResponse::default()
                    .with_error_code(top)
                    .with_responses(responses),
            )
        }
        ApiKey::ListOffsets => {
            let req: ListOffsetsRequest = ctx.decode(&mut body)?;
            let topics = req
                .topics
                .into_iter()
                .map(|t| {
                    ListOffsetsTopicResponse::default()
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                        .with_name(t.name)
                })
                .collect();
            ctx.answer(&ListOffsetsResponse::default().with_topics(topics))
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorResponse::default().with_error_code(code);
            if ctx.version >= 1 && code == E::SaslAuthenticationFailed.code() {
                r = r.with_error_message(Some(s(FAILED)));
            }
            ctx.answer(&r)
        }
        ApiKey::InitProducerId => {
            ctx.answer(&InitProducerIdResponse::default().with_error_code(code))
        }
        ApiKey::JoinGroup => ctx.answer(&JoinGroupResponse::default().with_error_code(code)),
        ApiKey::SyncGroup => ctx.answer(&SyncGroupResponse::default().with_error_code(code)),
        ApiKey::Heartbeat => ctx.answer(&HeartbeatResponse::default().with_error_code(code)),
        ApiKey::ListGroups => ctx.answer(&ListGroupsResponse::default().with_error_code(code)),
        ApiKey::OffsetFetch if ctx.version >= 2 => {
            ctx.answer(&OffsetFetchResponse::default().with_error_code(code))
        }
        _ => Ok(None),
    }
}
