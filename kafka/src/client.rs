//! A minimal Kafka client for node-to-node requests (a follower's Fetch and
//! OffsetForLeaderEpoch to its leader): one connection, one request at a time.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_cluster::transport::{PeerStream, PeerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest answer taken from a peer (a fetch answer is capped well below).
const MAX_ANSWER: usize = 128 << 20;

/// One connection to another node's Kafka listener.
#[derive(Debug)]
pub struct PeerConnection {
    addr: String,
    client_id: String,
    conn: Option<PeerStream>,
    correlation: i32,
    /// Proven on every new connection: a user and its password (a cluster's node and its
    /// secret).
    credentials: Option<(String, sluice_cluster::auth::Secret)>,
    /// TLS, when the listener serves it.
    tls: Option<PeerTls>,
}

impl PeerConnection {
    /// A connection (opened at the first call) to `addr`, naming itself `client_id`.
    pub fn new(addr: String, client_id: String) -> PeerConnection {
        PeerConnection {
            addr,
            client_id,
            conn: None,
            correlation: 0,
            credentials: None,
            tls: None,
        }
    }

    /// Connects with TLS, verified with `tls`, when there is one.
    pub fn with_tls(mut self, tls: Option<PeerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Authenticates every connection as a node of the cluster with `secret`
    /// ([`sluice_cluster::auth`]), when there is one.
    pub fn with_secret(mut self, secret: Option<sluice_cluster::auth::Secret>) -> Self {
        self.credentials = secret.map(|s| (sluice_cluster::auth::NODE_USER.to_string(), s));
        self
    }

    /// Authenticates every connection as `user` (SASL SCRAM-SHA-256).
    pub fn with_user(mut self, user: &str, password: sluice_cluster::auth::Secret) -> Self {
        self.credentials = Some((user.to_string(), password));
        self
    }

    /// Sends `request` as `api` `version` and decodes the answer; any failure drops the
    /// connection.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let result = tokio::time::timeout(timeout, self.call_inner(api, version, request)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    async fn call_inner<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, String> {
        if self.conn.is_none() {
            let mut s = sluice_cluster::transport::connect(&self.addr, self.tls.as_ref())
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            if let Some((user, secret)) = &self.credentials {
                sluice_cluster::auth::authenticate(
                    &mut s,
                    user,
                    secret,
                    &self.client_id,
                    &mut self.correlation,
                )
                .await
                .map_err(|e| format!("cannot authenticate to {} as {user}: {e}", self.addr))?;
            }
            self.conn = Some(s);
        }
        self.correlation = self.correlation.wrapping_add(1);
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| e.to_string())?;
        request
            .encode(&mut buf, version)
            .map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let conn = self.conn.as_mut().expect("connected");
        conn.write_all(&buf).await.map_err(|e| e.to_string())?;
        let len = conn.read_i32().await.map_err(|e| e.to_string())?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_ANSWER).contains(l))
            .ok_or_else(|| format!("an answer of {len} bytes"))?;
        let mut answer = vec![0u8; len];
        conn.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, api.response_header_version(version))
            .map_err(|e| e.to_string())?;
        if header.correlation_id != self.correlation {
            return Err(format!(
                "answer {} to request {}",
                header.correlation_id, self.correlation
            ));
        }
        let resp = Resp::decode(&mut answer, version).map_err(|e| e.to_string())?;
        let _ = answer.remaining();
        Ok(resp)
    }
}

/// Creates `name` through the node at `addr` (CreateTopics v5); a Kafka error's name and
/// message on failure.
pub async fn create_topic(
    addr: &str,
    name: &str,
    partitions: i32,
    factor: i16,
) -> Result<(), String> {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let mut c = PeerConnection::new(addr.to_string(), "sluice-admin".into());
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(factor),
        ]);
    let resp: CreateTopicsResponse = c
        .call(ApiKey::CreateTopics, 5, &req, Duration::from_secs(40))
        .await?;
    match resp.topics.first() {
        Some(t) if t.error_code == 0 => Ok(()),
        Some(t) => Err(format!(
            "error {}: {}",
            t.error_code,
            t.error_message.as_deref().unwrap_or("")
        )),
        None => Err("no answer for the topic".into()),
    }
}

/// The leader of `topic`-`partition` as the node at `addr` knows it: its id and address.
pub async fn partition_leader(
    addr: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<(i32, String)>, String> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
    let mut c = PeerConnection::new(addr.to_string(), "sluice-admin".into());
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]));
    let resp: MetadataResponse = c
        .call(ApiKey::Metadata, 9, &req, Duration::from_secs(5))
        .await?;
    let leader = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .map(|p| p.leader_id.0)
        .filter(|l| *l >= 0);
    Ok(leader.and_then(|l| {
        resp.brokers
            .iter()
            .find(|b| b.node_id.0 == l)
            .map(|b| (l, format!("{}:{}", b.host.as_str(), b.port)))
    }))
}

/// A producer of single batches over one connection (Produce v9), for latency probes.
#[derive(Debug)]
pub struct BatchProducer {
    conn: PeerConnection,
}

impl BatchProducer {
    /// A producer connected (lazily) to `addr`.
    pub fn new(addr: &str) -> BatchProducer {
        BatchProducer {
            conn: PeerConnection::new(addr.to_string(), "sluice-bench".into()),
        }
    }

    /// Appends one record batch (RecordBatch v2 bytes) to `topic`-`partition` with `acks`
    /// (-1 = all) and waits for the answer: the base offset, or the Kafka error code and
    /// message (a connection failure is code -1).
    pub async fn send(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
    ) -> Result<i64, (i16, String)> {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch)),
                    ]),
            ]);
        let resp: ProduceResponse = self
            .conn
            .call(ApiKey::Produce, 9, &req, Duration::from_secs(15))
            .await
            .map_err(|e| (-1, e))?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or((-1, "no answer for the partition".to_string()))?;
        if p.error_code != 0 {
            return Err((
                p.error_code,
                p.error_message.as_deref().unwrap_or("").to_string(),
            ));
        }
        Ok(p.base_offset)
    }
}
