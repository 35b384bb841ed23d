//! `GET /cluster`: the cluster as this node sees it — nodes, the controller, and each
//! partition's replicas, leader and in-sync replicas.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::schema::ErrorBody;
use super::{ApiError, ApiState};

/// The cluster as one node sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterDoc {
    /// The node answering.
    pub node_id: u64,
    /// The controller (the metadata log's Raft leader); absent while none is elected.
    pub controller: Option<u64>,
    /// The metadata log's Raft term.
    pub term: u64,
    /// The last metadata log index this node applied.
    pub applied_index: Option<u64>,
    /// Voters and registered nodes.
    pub nodes: Vec<ClusterNodeDoc>,
    /// Every partition's placement and leadership.
    pub partitions: Vec<ClusterPartitionDoc>,
    /// Partitions whose ISR is smaller than their replica list.
    pub under_replicated_partitions: usize,
    /// Partitions without a leader.
    pub offline_partitions: usize,
    /// The pipelines that made topics, with the node running each (the leader of its
    /// partition of `__cluster_transactions`; absent while none can).
    pub pipelines: Vec<ClusterPipelineDoc>,
}

/// One pipeline of [`ClusterDoc`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPipelineDoc {
    /// Its name.
    pub name: String,
    /// The node running it.
    pub node: Option<u64>,
}

/// One node of [`ClusterDoc`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterNodeDoc {
    /// Its id.
    pub id: u64,
    /// Its Kafka listener (`host:port`), where clients and peers connect.
    pub addr: String,
    /// Its REST API.
    pub api: Option<String>,
    /// `alive`, `fenced` (no heartbeat within the session timeout) or `unregistered`.
    pub state: String,
    /// Whether it votes in the metadata log.
    pub voter: bool,
    /// Whether it is the controller.
    pub controller: bool,
}

/// One partition of [`ClusterDoc`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterPartitionDoc {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The nodes holding a copy, the preferred leader first.
    pub replicas: Vec<u64>,
    /// The node taking writes; absent while offline.
    pub leader: Option<u64>,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The in-sync replicas.
    pub isr: Vec<u64>,
    /// The pipeline that made the topic (its leader is the pipeline's node).
    pub pipeline: Option<String>,
}

/// The cluster as this node sees it.
#[utoipa::path(get, operation_id = "getCluster", path = "/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Nodes, controller, partitions", body = ClusterDoc),
        (status = 404, description = "The worker runs alone, not in a cluster", body = ErrorBody)))]
pub async fn cluster(State(state): State<ApiState>) -> Result<Json<ClusterDoc>, ApiError> {
    let Some(cluster) = state.cluster.get() else {
        return Err(ApiError::not_found(
            "this worker runs alone, not in a cluster (start it with --node-id and --cluster)",
        ));
    };
    let status = cluster.status();
    let md = &status.metadata;
    let mut pipelines = std::collections::BTreeMap::new();
    for a in md.topics.values().filter_map(|t| t.anchor.as_ref()) {
        let node = md.partition(&a.topic, a.partition).and_then(|p| p.leader);
        pipelines.insert(a.pipeline.clone(), node);
    }
    let mut partitions = Vec::new();
    for topic in status.metadata.topics.values() {
        for (i, p) in topic.partitions.iter().enumerate() {
            partitions.push(ClusterPartitionDoc {
                topic: topic.name.clone(),
                partition: i as u32,
                replicas: p.replicas.clone(),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                isr: p.isr.clone(),
                pipeline: topic.anchor.as_ref().map(|a| a.pipeline.clone()),
            });
        }
    }
    Ok(Json(ClusterDoc {
        node_id: status.node_id,
        controller: status.controller,
        term: status.term,
        applied_index: status.applied_index,
        under_replicated_partitions: partitions
            .iter()
            .filter(|p| p.isr.len() < p.replicas.len())
            .count(),
        offline_partitions: partitions.iter().filter(|p| p.leader.is_none()).count(),
        nodes: status
            .nodes
            .into_iter()
            .map(|n| ClusterNodeDoc {
                id: n.id,
                addr: n.addr,
                api: n.api,
                state: n.state.to_string(),
                voter: n.voter,
                controller: n.controller,
            })
            .collect(),
        partitions,
        pipelines: pipelines
            .into_iter()
            .map(|(name, node)| ClusterPipelineDoc { name, node })
            .collect(),
    }))
}
