//! The metadata log's Raft group: openraft's types for Sluice, the network between
//! nodes, and the storage on disk.

// openraft's traits fix their error types (StorageError, RPCError): large, and not ours to box.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::metadata::{Applied, Command, NodeId};
use crate::rpc::{CallError, PeerClient, PeerRequest, PeerResponse};

pub(crate) mod store;

/// A voter of the metadata log: where its Kafka listener is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// `host:port`.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// openraft's types for the metadata log.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft instance of the metadata log.
pub type Raft = openraft::Raft<TypeConfig>;

/// Opens connections to peers for openraft.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) from: NodeId,
    /// How this node reaches each voter (its own `--cluster` list): the address in the
    /// membership is the one of the node that started the group, and a node may reach its
    /// peers by other names.
    pub(crate) peers: std::collections::BTreeMap<NodeId, String>,
    /// What the connections authenticate with.
    pub(crate) secret: Option<crate::auth::Secret>,
    /// TLS to the peers, when their listeners serve it.
    pub(crate) tls: Option<crate::transport::PeerTls>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Connection {
        Connection {
            target,
            client: PeerClient::new(
                self.peers.get(&target).unwrap_or(&node.addr).clone(),
                self.from,
                self.secret.clone(),
                self.tls.clone(),
            ),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub(crate) struct Connection {
    target: NodeId,
    client: PeerClient,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Peer, RaftError<NodeId, E>>>;

impl Connection {
    async fn send<E: std::error::Error>(
        &mut self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, Peer, RaftError<NodeId, E>>> {
        // openraft times the call itself; this bound only keeps a dead socket from
        // outliving it.
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        match self.client.call(&request, timeout).await {
            Ok(PeerResponse::Invalid(reason)) => Err(RPCError::Network(NetworkError::from(
                openraft::AnyError::error(format!("node {} refused: {reason}", self.target)),
            ))),
            Ok(r) => Ok(r),
            Err(e @ CallError::Connect(_)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<T, E: std::error::Error>(
        &self,
    ) -> Result<T, RPCError<NodeId, Peer, RaftError<NodeId, E>>> {
        Err(RPCError::Network(NetworkError::from(
            openraft::AnyError::error(format!("node {} answered another request", self.target)),
        )))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.send(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self
            .send(PeerRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            PeerResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.send(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => self.unexpected(),
        }
    }
}
