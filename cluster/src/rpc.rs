//! The messages nodes send each other, and their framing on the Kafka listener.
//!
//! Nodes talk over the same port and framing as Kafka clients (a size, then a request
//! header's API key, version and correlation id), under an API key no Kafka client uses:
//! one listener per node, one framing to bound and fuzz. The body is JSON; the metadata it
//! carries is small, and the partitions' records travel as Kafka Fetch requests instead.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metadata::{Applied, Command, NodeId};
use crate::raft::TypeConfig;

/// The request API key of node-to-node messages: far above Kafka's own keys (below 100).
pub const API_KEY: i16 = 32_100;
/// The largest answer a node accepts from a peer (a metadata snapshot chunk and its JSON).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PeerRequest {
    /// Raft: entries (or a heartbeat) from the leader.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: a candidate asks for a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a chunk of a snapshot from the leader.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// To the controller: propose this command.
    Propose(Command),
    /// To the controller: this node (this run of it) is alive.
    Heartbeat {
        /// The node.
        id: NodeId,
        /// Its incarnation, as registered.
        incarnation: u64,
    },
}

/// Why the controller did not take a proposal or heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum NotTaken {
    /// The receiver is not the controller.
    #[error("node is not the controller (the controller is {})", leader.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotController {
        /// The controller it knows of.
        leader: Option<NodeId>,
    },
    /// The command could not be committed (no majority, shutting down).
    #[error("{0}")]
    Failed(String),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<Applied, NotTaken>),
    Heartbeat(Result<(), NotTaken>),
    /// The request could not be read.
    Invalid(String),
}

/// One connection to a peer, used for one request at a time; reconnects after a failure.
#[derive(Debug)]
pub(crate) struct PeerClient {
    addr: String,
    conn: Option<crate::transport::PeerStream>,
    correlation: i32,
    client_id: String,
    /// Proven on every new connection ([`crate::auth`]).
    secret: Option<crate::auth::Secret>,
    /// TLS, when the peers' listeners serve it.
    tls: Option<crate::transport::PeerTls>,
}

impl PeerClient {
    /// A client of the node listening at `addr`, calling itself node `from`, proving
    /// `secret` on every connection when there is one, over TLS with `tls`.
    pub(crate) fn new(
        addr: String,
        from: NodeId,
        secret: Option<crate::auth::Secret>,
        tls: Option<crate::transport::PeerTls>,
    ) -> PeerClient {
        PeerClient {
            addr,
            conn: None,
            correlation: 0,
            client_id: format!("sluice-node-{from}"),
            secret,
            tls,
        }
    }

    /// Sends `request` and waits up to `timeout` for its answer. Any failure drops the
    /// connection, so a late answer is never read as the next request's.
    pub(crate) async fn call(
        &mut self,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        match tokio::time::timeout(timeout, self.call_inner(request)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(CallError::Timeout(timeout))
            }
        }
    }

    async fn call_inner(&mut self, request: &PeerRequest) -> Result<PeerResponse, CallError> {
        if self.conn.is_none() {
            let mut stream = crate::transport::connect(&self.addr, self.tls.as_ref())
                .await
                .map_err(CallError::Connect)?;
            if let Some(secret) = &self.secret {
                crate::auth::authenticate(
                    &mut stream,
                    crate::auth::NODE_USER,
                    secret,
                    &self.client_id,
                    &mut self.correlation,
                )
                .await
                .map_err(CallError::Auth)?;
            }
            self.conn = Some(stream);
        }
        let conn = self.conn.as_mut().expect("connected");
        self.correlation = self.correlation.wrapping_add(1);
        let body = serde_json::to_vec(request).map_err(|e| CallError::Io(e.into()))?;
        let client = self.client_id.as_bytes();
        let mut frame = Vec::with_capacity(body.len() + 16 + client.len());
        let len = 2 + 2 + 4 + 2 + client.len() + body.len();
        frame.extend_from_slice(&(len as i32).to_be_bytes());
        frame.extend_from_slice(&API_KEY.to_be_bytes());
        frame.extend_from_slice(&0i16.to_be_bytes());
        frame.extend_from_slice(&self.correlation.to_be_bytes());
        frame.extend_from_slice(&(client.len() as i16).to_be_bytes());
        frame.extend_from_slice(client);
        frame.extend_from_slice(&body);
        conn.write_all(&frame).await.map_err(CallError::Io)?;
        let len = conn.read_i32().await.map_err(CallError::Io)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_ANSWER_BYTES).contains(l))
            .ok_or_else(|| CallError::Protocol(format!("an answer of {len} bytes")))?;
        let mut answer = vec![0u8; len];
        conn.read_exact(&mut answer).await.map_err(CallError::Io)?;
        let correlation = i32::from_be_bytes(answer[..4].try_into().expect("4 bytes"));
        if correlation != self.correlation {
            return Err(CallError::Protocol(format!(
                "answer {correlation} to request {}",
                self.correlation
            )));
        }
        serde_json::from_slice(&answer[4..]).map_err(|e| CallError::Protocol(e.to_string()))
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad answer: {0}")]
    Protocol(String),
    #[error("cannot authenticate as a node of the cluster: {0}")]
    Auth(String),
}

/// Reads a peer request's body: what follows the request header (API key, version,
/// correlation id, client id) in `frame`.
pub(crate) fn decode_request(body: &[u8]) -> Result<PeerRequest, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a node request: {e}"))
}

/// Encodes an answer as its frame: size, correlation id, JSON body.
pub(crate) fn encode_response(correlation: i32, response: &PeerResponse) -> Vec<u8> {
    let body = serde_json::to_vec(response).expect("responses serialize");
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&body);
    out
}
