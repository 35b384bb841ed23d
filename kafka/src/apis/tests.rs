//! Every handler answers at every advertised version, and its answer decodes again: a field
//! set where a version lacks it fails the encoder, which would close the client's connection.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_log::batch::{BatchBuilder, BatchOptions};
use sluice_log::{Log, LogOptions, Record};

use super::{Ctx, dispatch};
use crate::server::Broker;
use crate::versions::SUPPORTED;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.into()))
}

fn batch() -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push(&Record {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"v")),
        headers: Vec::new(),
        timestamp: 1_700_000_000_000,
    })
    .unwrap();
    Bytes::from(b.build().unwrap())
}

/// The request of `api` at `version`, encoded (body only), naming `topic` (and, to create
/// and delete, `c{round}`, or `topic` itself when `fail` asks for the error answers).
fn request(api: ApiKey, version: i16, round: usize, topic: &str, fail: bool) -> BytesMut {
    let mut out = BytesMut::new();
    let t = || name(topic);
    let fresh = if fail {
        topic.to_string()
    } else {
        format!("c{round}")
    };
    macro_rules! enc {
        ($r:expr) => {
            $r.encode(&mut out, version).unwrap()
        };
    }
    match api {
        ApiKey::ApiVersions => enc!(ApiVersionsRequest::default()),
        ApiKey::SaslHandshake => {
            enc!(SaslHandshakeRequest::default().with_mechanism("PLAIN".into()))
        }
        ApiKey::SaslAuthenticate => {
            enc!(SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0u\0p")))
        }
        ApiKey::Metadata => enc!(MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(t()))
        ]))),
        ApiKey::Produce => enc!(
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![
                    produce_request::TopicProduceData::default()
                        .with_name(t())
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch()))
                        ])
                ])
        ),
        ApiKey::Fetch => enc!(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_bytes(1 << 20)
                .with_isolation_level(1)
                .with_topics(vec![
                    fetch_request::FetchTopic::default()
                        .with_topic(t())
                        .with_partitions(vec![
                            fetch_request::FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(1 << 20)
                        ])
                ])
        ),
        ApiKey::ListOffsets => enc!(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    list_offsets_request::ListOffsetsTopic::default()
                        .with_name(t())
                        .with_partitions(
                            [-1, -2, 0]
                                .into_iter()
                                .map(|ts| list_offsets_request::ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(ts))
                                .collect()
                        )
                ])
        ),
        ApiKey::CreateTopics => enc!(CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(name(&fresh))
                    .with_num_partitions(2)
                    .with_replication_factor(1)
                    .with_configs(vec![
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name("retention.ms".into())
                            .with_value(Some("1000".into()))
                    ])
            ])),
        ApiKey::DeleteTopics => {
            enc!(DeleteTopicsRequest::default().with_topic_names(vec![name(&fresh)]))
        }
        ApiKey::CreatePartitions => enc!(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(t())
                    .with_count(2 + round as i32)
            ])),
        ApiKey::FindCoordinator => enc!(FindCoordinatorRequest::default().with_key("g".into())),
        ApiKey::OffsetCommit => enc!(
            OffsetCommitRequest::default()
                .with_group_id(GroupId("g".into()))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)
                        ])
                ])
        ),
        ApiKey::OffsetFetch => enc!(
            OffsetFetchRequest::default()
                .with_group_id(GroupId("g".into()))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(t())
                        .with_partition_indexes(vec![0, 1])
                ]))
        ),
        ApiKey::ListGroups => enc!(ListGroupsRequest::default()),
        ApiKey::InitProducerId => {
            enc!(InitProducerIdRequest::default().with_transaction_timeout_ms(60_000))
        }
        // Each version joins its own group: with a member id only from v4 (KIP-394), so a
        // v4+ join answers MEMBER_ID_REQUIRED; an older one forms generation 1 at once.
        ApiKey::JoinGroup => enc!(
            JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(format!("j{round}{fail}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type("consumer".into())
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name("range".into())
                        .with_metadata(Bytes::from_static(b"md"))
                ])
        ),
        ApiKey::SyncGroup => enc!(
            SyncGroupRequest::default()
                .with_group_id(GroupId("nope".into()))
                .with_generation_id(1)
                .with_member_id("m".into())
                .with_protocol_type(Some("consumer".into()))
                .with_protocol_name(Some("range".into()))
        ),
        ApiKey::Heartbeat => enc!(
            HeartbeatRequest::default()
                .with_group_id(GroupId("nope".into()))
                .with_generation_id(1)
                .with_member_id("m".into())
        ),
        ApiKey::LeaveGroup => enc!(
            LeaveGroupRequest::default()
                .with_group_id(GroupId("nope".into()))
                .with_member_id(if version < 3 {
                    "m".into()
                } else {
                    StrBytes::default()
                })
                .with_members(if version >= 3 {
                    vec![leave_group_request::MemberIdentity::default().with_member_id("m".into())]
                } else {
                    vec![]
                })
        ),
        ApiKey::DescribeGroups => enc!(
            DescribeGroupsRequest::default()
                .with_groups(vec![GroupId("g".into()), GroupId("nope".into())])
        ),
        ApiKey::AddPartitionsToTxn => enc!(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId("x".into()))
                .with_v3_and_below_producer_id(ProducerId(1))
                .with_v3_and_below_topics(vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(t())
                        .with_partitions(vec![0])
                ])
        ),
        ApiKey::AddOffsetsToTxn => enc!(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId("x".into()))
                .with_group_id(GroupId("g".into()))
        ),
        ApiKey::EndTxn => enc!(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId("x".into()))
                .with_committed(true)
        ),
        ApiKey::TxnOffsetCommit => enc!(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId("x".into()))
                .with_group_id(GroupId("g".into()))
                .with_topics(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)
                        ])
                ])
        ),
        ApiKey::DescribeConfigs => enc!(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(topic.into())),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name("0".into()),
            ])),
        ApiKey::IncrementalAlterConfigs => enc!(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(topic.into()))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name("retention.ms".into())
                            .with_value(Some("60000".into()))
                    ]),
            ])
        ),
        ApiKey::DeleteRecords => enc!(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(t())
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(0)
                    ])
            ])),
        ApiKey::OffsetForLeaderEpoch => enc!(
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(t())
                        .with_partitions(vec![
                            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(0)
                                .with_leader_epoch(0)
                        ])
                ])
        ),
        ApiKey::DeleteGroups => {
            enc!(DeleteGroupsRequest::default().with_groups_names(vec![GroupId("nope".into())]))
        }
        // Between the nodes of a cluster: a worker alone refuses every partition.
        ApiKey::WriteTxnMarkers => enc!(WriteTxnMarkersRequest::default().with_markers(vec![
            write_txn_markers_request::WritableTxnMarker::default()
                .with_producer_id(ProducerId(1))
                .with_topics(vec![
                    write_txn_markers_request::WritableTxnMarkerTopic::default()
                        .with_name(t())
                        .with_partition_indexes(vec![0])
                ])
        ])),
        other => panic!("no test request for {other:?}"),
    }
    out
}

/// Decodes an answer frame's body as `api`'s response at `version`.
fn decode_answer(api: ApiKey, version: i16, mut frame: Bytes) {
    let len = bytes::Buf::get_i32(&mut frame);
    assert_eq!(len as usize, frame.len());
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    ResponseHeader::decode(&mut frame, header_version).unwrap();
    macro_rules! dec {
        ($t:ty) => {{
            <$t>::decode(&mut frame, version).unwrap();
        }};
    }
    match api {
        ApiKey::ApiVersions => dec!(ApiVersionsResponse),
        ApiKey::SaslHandshake => dec!(SaslHandshakeResponse),
        ApiKey::SaslAuthenticate => dec!(SaslAuthenticateResponse),
        ApiKey::Metadata => dec!(MetadataResponse),
        ApiKey::Produce => dec!(ProduceResponse),
        ApiKey::Fetch => dec!(FetchResponse),
        ApiKey::ListOffsets => dec!(ListOffsetsResponse),
        ApiKey::CreateTopics => dec!(CreateTopicsResponse),
        ApiKey::DeleteTopics => dec!(DeleteTopicsResponse),
        ApiKey::CreatePartitions => dec!(CreatePartitionsResponse),
        ApiKey::FindCoordinator => dec!(FindCoordinatorResponse),
        ApiKey::OffsetCommit => dec!(OffsetCommitResponse),
        ApiKey::OffsetFetch => dec!(OffsetFetchResponse),
        ApiKey::ListGroups => dec!(ListGroupsResponse),
        ApiKey::InitProducerId => dec!(InitProducerIdResponse),
        ApiKey::JoinGroup => dec!(JoinGroupResponse),
        ApiKey::SyncGroup => dec!(SyncGroupResponse),
        ApiKey::Heartbeat => dec!(HeartbeatResponse),
        ApiKey::LeaveGroup => dec!(LeaveGroupResponse),
        ApiKey::DescribeGroups => dec!(DescribeGroupsResponse),
        ApiKey::DeleteGroups => dec!(DeleteGroupsResponse),
        ApiKey::WriteTxnMarkers => dec!(WriteTxnMarkersResponse),
        ApiKey::DescribeConfigs => dec!(DescribeConfigsResponse),
        ApiKey::IncrementalAlterConfigs => dec!(IncrementalAlterConfigsResponse),
        ApiKey::DeleteRecords => dec!(DeleteRecordsResponse),
        ApiKey::OffsetForLeaderEpoch => dec!(OffsetForLeaderEpochResponse),
        ApiKey::AddPartitionsToTxn => dec!(AddPartitionsToTxnResponse),
        ApiKey::AddOffsetsToTxn => dec!(AddOffsetsToTxnResponse),
        ApiKey::EndTxn => dec!(EndTxnResponse),
        ApiKey::TxnOffsetCommit => dec!(TxnOffsetCommitResponse),
        other => panic!("no decoder for {other:?}"),
    }
    assert!(
        frame.is_empty(),
        "{api:?} v{version}: {} bytes left over",
        frame.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_answers_at_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.create_topic("t", 1, &[]).unwrap();
    let broker = Arc::new(Broker {
        log: log.clone(),
        node_id: 0,
        host: "127.0.0.1".into(),
        port: 9092,
        waiters: Default::default(),
        users: Default::default(),
        client_auth: false,
        fetch_sessions: Default::default(),
        cluster: None,
        replicas: None,
        coordinators: Arc::new(crate::coordinators::Coordinators::new(
            crate::coordinators::Kind::Groups,
        )),
        transactions: Arc::new(crate::coordinators::Coordinators::new(
            crate::coordinators::Kind::Transactions,
        )),
    });
    let mut round = 0;
    // Produce first, so that fetches and offset lookups find a record; then every answer
    // again with its errors: an unknown topic, and creating one that exists.
    let mut order: Vec<_> = SUPPORTED.to_vec();
    order.sort_by_key(|(k, _, _)| *k != ApiKey::Produce);
    for (topic, fail) in [("t", false), ("nope", true), ("t", true)] {
        for &(api, min, max) in &order {
            // Answered by the connection's session (the server), not `dispatch`.
            if matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
                continue;
            }
            for version in min..=max {
                round += 1;
                let ctx = Ctx {
                    broker: Arc::clone(&broker),
                    api,
                    version,
                    correlation: 7,
                    client: "test".into(),
                    peer: "/127.0.0.1".into(),
                    node: false,
                };
                let body = request(api, version, round, topic, fail).freeze();
                let answer = dispatch(ctx, body)
                    .await
                    .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
                    .unwrap_or_else(|| panic!("{api:?} v{version}: no answer"));
                decode_answer(api, version, answer.freeze());
            }
        }
    }
    // Before authenticating, every API answers SASL_AUTHENTICATION_FAILED where it has an
    // error field (and decodes), or nothing; the connection closes after either.
    for &(api, min, max) in &order {
        if matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            continue;
        }
        for version in min..=max {
            let ctx = Ctx {
                broker: Arc::clone(&broker),
                api,
                version,
                correlation: 7,
                client: "test".into(),
                peer: "/127.0.0.1".into(),
                node: false,
            };
            let body = request(api, version, 0, "t", false).freeze();
            if let Some(answer) =
                super::refuse(&ctx, body, 58).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
            {
                decode_answer(api, version, answer.freeze());
            }
        }
    }
}
