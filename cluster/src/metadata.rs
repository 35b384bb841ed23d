//! The cluster's metadata and the commands that change it: the state machine every node
//! applies from the Raft log, in the same order, to the same result.
//!
//! Like KRaft's metadata log, it holds what a node needs to play its part: the nodes and
//! whether each is alive (unfenced), the topics with each partition's replicas, leader,
//! leader epoch and in-sync replicas, and which pipeline owns a topic. `apply` is pure
//! and deterministic (no clocks, no randomness): the controller decides, the log orders,
//! every node applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's id, as given by `--node-id` (Kafka's `node.id`).
pub type NodeId = u64;

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Its id.
    pub id: NodeId,
    /// `host:port` of its Kafka listener: clients, followers and peers connect there.
    pub addr: String,
    /// Its REST API's address, when it serves one.
    pub api: Option<String>,
    /// Fenced: it stopped sending heartbeats, so it leads nothing and is in no ISR.
    pub fenced: bool,
    /// Bumped at each registration, so a stale heartbeat of an earlier run is told apart.
    pub incarnation: u64,
}

/// One partition's placement and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The nodes holding a copy, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The node that takes writes; `None` while no in-sync replica is alive (offline).
    pub leader: Option<NodeId>,
    /// Bumped at every change of leader, so writes and fetches of an old leader are fenced
    /// and a returning node knows where its log diverged (KIP-101).
    pub leader_epoch: i32,
    /// The in-sync replicas: the leader and the followers caught up with it. A record is
    /// committed (below the high watermark) once every one of them has it.
    pub isr: Vec<NodeId>,
    /// Bumped at every change of this state, so an ISR change based on an old view is
    /// refused (Kafka's partition epoch).
    pub partition_epoch: i32,
}

/// A topic's partitions and settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    /// Its name.
    pub name: String,
    /// Its partitions, by id.
    pub partitions: Vec<PartitionState>,
    /// Topic configs set at creation or altered later (Kafka's names).
    pub configs: BTreeMap<String, String>,
    /// The pipeline owning it, whose node leads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
}

/// A pipeline's topic: its partitions are led by the node that leads the pipeline's
/// `partition` of `topic` (the partition of `__cluster_transactions` coordinating the
/// pipeline's transactions), so that the one node running the pipeline writes all it
/// writes, and they move together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The pipeline.
    pub pipeline: String,
    /// The topic of the partition followed.
    pub topic: String,
    /// The partition followed.
    pub partition: u32,
}

/// A change to the metadata, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A node (re)starts: it is alive and reachable at `addr`.
    RegisterNode {
        /// Its id.
        id: NodeId,
        /// Its Kafka listener's `host:port`.
        addr: String,
        /// Its REST API's address.
        api: Option<String>,
    },
    /// The controller heard nothing from a node for the session timeout: fence it.
    FenceNode {
        /// Its id.
        id: NodeId,
        /// The incarnation the controller saw; a newer registration wins.
        incarnation: u64,
    },
    /// Creates a topic with the replicas the controller placed.
    CreateTopic {
        /// Its name.
        name: String,
        /// Each partition's replicas, the preferred leader first.
        replicas: Vec<Vec<NodeId>>,
        /// Its configs.
        configs: BTreeMap<String, String>,
        /// The pipeline owning it, whose node leads it (its replicas are the followed
        /// partition's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor: Option<Anchor>,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Its name.
        name: String,
    },
    /// Changes a partition's leader or ISR (Kafka's AlterPartition and elections), valid
    /// only against the `partition_epoch` it was decided on.
    AlterPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The partition epoch the change was based on.
        partition_epoch: i32,
        /// The new leader.
        leader: Option<NodeId>,
        /// The new ISR.
        isr: Vec<NodeId>,
    },
    /// Hands a node the next block of producer ids (KIP-730: ids are unique in the cluster).
    AllocateProducerIds {
        /// The node asking.
        node: NodeId,
        /// How many ids.
        count: i64,
    },
    /// Unused: kept so that metadata logs of earlier versions apply (pipelines now run where
    /// their partition of `__cluster_transactions` is led; see [`Anchor`]).
    AssignPipeline {
        /// The pipeline's name.
        name: String,
        /// The node.
        node: Option<NodeId>,
    },
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Applied {
    /// Why it changed nothing, if it did not.
    pub refused: Option<String>,
    /// A registration's incarnation.
    pub incarnation: Option<u64>,
    /// The first producer id of an allocated block.
    pub producer_ids: Option<i64>,
}

impl Applied {
    fn ok() -> Applied {
        Applied::default()
    }

    fn refused(reason: impl Into<String>) -> Applied {
        Applied {
            refused: Some(reason.into()),
            ..Applied::default()
        }
    }
}

/// The whole cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The nodes that ever registered.
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// The topics.
    pub topics: BTreeMap<String, TopicState>,
    /// Unused (see [`Command::AssignPipeline`]).
    pub pipelines: BTreeMap<String, Option<NodeId>>,
    /// The first producer id not yet handed out.
    #[serde(default)]
    pub next_producer_id: i64,
}

impl Metadata {
    /// Applies `command`; a refused command changes nothing.
    pub fn apply(&mut self, command: &Command) -> Applied {
        match command {
            Command::RegisterNode { id, addr, api } => {
                let incarnation = self.nodes.get(id).map_or(1, |n| n.incarnation + 1);
                self.nodes.insert(
                    *id,
                    NodeState {
                        id: *id,
                        addr: addr.clone(),
                        api: api.clone(),
                        fenced: false,
                        incarnation,
                    },
                );
                Applied {
                    incarnation: Some(incarnation),
                    ..Applied::default()
                }
            }
            Command::FenceNode { id, incarnation } => {
                let Some(node) = self.nodes.get_mut(id) else {
                    return Applied::refused(format!("node {id} is not registered"));
                };
                if node.incarnation != *incarnation {
                    return Applied::refused(format!(
                        "node {id} registered again (incarnation {} now, {incarnation} fenced)",
                        node.incarnation
                    ));
                }
                node.fenced = true;
                Applied::ok()
            }
            Command::CreateTopic {
                name,
                replicas,
                configs,
                anchor,
            } => {
                if self.topics.contains_key(name) {
                    return Applied::refused(format!("topic '{name}' already exists"));
                }
                if replicas.is_empty() || replicas.iter().any(Vec::is_empty) {
                    return Applied::refused(format!(
                        "topic '{name}' has a partition without replicas"
                    ));
                }
                // A pipeline's topic starts where the pipeline runs, if that node holds it.
                let followed = anchor
                    .as_ref()
                    .and_then(|a| self.partition(&a.topic, a.partition))
                    .and_then(|p| p.leader);
                let partitions = replicas
                    .iter()
                    .map(|r| {
                        let alive: Vec<NodeId> = r
                            .iter()
                            .copied()
                            .filter(|n| self.nodes.get(n).is_some_and(|s| !s.fenced))
                            .collect();
                        let leader = followed
                            .filter(|l| alive.contains(l))
                            .or_else(|| alive.first().copied());
                        PartitionState {
                            replicas: r.clone(),
                            leader,
                            leader_epoch: 0,
                            // A new partition is empty everywhere: every live replica is in sync.
                            isr: alive,
                            partition_epoch: 0,
                        }
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicState {
                        name: name.clone(),
                        partitions,
                        configs: configs.clone(),
                        anchor: anchor.clone(),
                    },
                );
                Applied::ok()
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => Applied::ok(),
                None => Applied::refused(format!("topic '{name}' does not exist")),
            },
            Command::AlterPartition {
                topic,
                partition,
                partition_epoch,
                leader,
                isr,
            } => {
                let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return Applied::refused(format!("no partition {topic}-{partition}"));
                };
                if p.partition_epoch != *partition_epoch {
                    return Applied::refused(format!(
                        "{topic}-{partition} changed (partition epoch {} now, the change was based on {partition_epoch})",
                        p.partition_epoch
                    ));
                }
                if let Some(l) = leader
                    && !p.replicas.contains(l)
                {
                    return Applied::refused(format!(
                        "node {l} holds no replica of {topic}-{partition}"
                    ));
                }
                if isr.iter().any(|n| !p.replicas.contains(n)) {
                    return Applied::refused(format!(
                        "the ISR {isr:?} of {topic}-{partition} names a node without a replica"
                    ));
                }
                if p.leader != *leader {
                    p.leader_epoch += 1;
                }
                p.leader = *leader;
                p.isr = isr.clone();
                p.partition_epoch += 1;
                Applied::ok()
            }
            Command::AllocateProducerIds { node: _, count } => {
                if *count <= 0 || *count > 1_000_000 {
                    return Applied::refused(format!("a block of {count} producer ids"));
                }
                let start = self.next_producer_id;
                self.next_producer_id += count;
                Applied {
                    producer_ids: Some(start),
                    ..Applied::default()
                }
            }
            Command::AssignPipeline { name, node } => {
                self.pipelines.insert(name.clone(), *node);
                Applied::ok()
            }
        }
    }

    /// The nodes alive (registered and not fenced), by id.
    pub fn alive(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.values().filter(|n| !n.fenced).map(|n| n.id)
    }

    /// One partition's state.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.topics
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(m: &mut Metadata, id: NodeId) {
        let r = m.apply(&Command::RegisterNode {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id),
            api: None,
        });
        assert_eq!(r.refused, None);
    }

    #[test]
    fn a_new_topic_is_led_by_its_first_live_replica_with_every_live_replica_in_sync() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id);
        }
        m.apply(&Command::FenceNode {
            id: 2,
            incarnation: 1,
        });
        let r = m.apply(&Command::CreateTopic {
            name: "t".into(),
            replicas: vec![vec![2, 3, 1], vec![1, 2, 3]],
            configs: BTreeMap::new(),
            anchor: None,
        });
        assert_eq!(r, Applied::ok());
        let p0 = m.partition("t", 0).unwrap();
        assert_eq!((p0.leader, p0.isr.clone()), (Some(3), vec![3, 1]));
        let p1 = m.partition("t", 1).unwrap();
        assert_eq!((p1.leader, p1.isr.clone()), (Some(1), vec![1, 3]));
    }

    #[test]
    fn an_alter_based_on_an_old_partition_epoch_changes_nothing() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id);
        }
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            replicas: vec![vec![1, 2, 3]],
            configs: BTreeMap::new(),
            anchor: None,
        });
        let shrink = Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            partition_epoch: 0,
            leader: Some(1),
            isr: vec![1, 2],
        };
        assert_eq!(m.apply(&shrink), Applied::ok());
        assert_eq!(m.partition("t", 0).unwrap().leader_epoch, 0, "same leader");
        assert!(m.apply(&shrink).refused.is_some(), "epoch 0 is past");
        let elect = Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            partition_epoch: 1,
            leader: Some(2),
            isr: vec![2],
        };
        assert_eq!(m.apply(&elect), Applied::ok());
        let p = m.partition("t", 0).unwrap();
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch),
            (Some(2), 1, 2)
        );
        let outsider = Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            partition_epoch: 2,
            leader: Some(7),
            isr: vec![7],
        };
        assert!(m.apply(&outsider).refused.is_some());
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut m = Metadata::default();
        let mut starts = Vec::new();
        for node in [1, 2, 1] {
            let a = m.apply(&Command::AllocateProducerIds { node, count: 1000 });
            starts.push(a.producer_ids.unwrap());
        }
        assert_eq!(starts, vec![0, 1000, 2000]);
        let zero = m.apply(&Command::AllocateProducerIds { node: 1, count: 0 });
        assert!(zero.refused.is_some());
    }

    #[test]
    fn a_fence_of_an_earlier_incarnation_is_refused() {
        let mut m = Metadata::default();
        register(&mut m, 1);
        register(&mut m, 1);
        assert!(
            m.apply(&Command::FenceNode {
                id: 1,
                incarnation: 1
            })
            .refused
            .is_some()
        );
        assert!(!m.nodes[&1].fenced);
        assert_eq!(
            m.apply(&Command::FenceNode {
                id: 1,
                incarnation: 2
            }),
            Applied::ok()
        );
        assert!(m.nodes[&1].fenced);
    }
}
