//! Where a cluster's pipelines run. Pipeline P runs on the node that leads P's partition of
//! [`TRANSACTIONS_TOPIC`] (the murmur2 of its name, as a transactional id's): that node
//! coordinates P's transactions, and P's topics (declared, dead letters, positions) follow
//! that partition's leadership ([`sluice_cluster::metadata::Anchor`]), so everything P
//! writes is written where it runs. When the node dies, the controller elects the
//! partition's next leader and moves P's topics with it in the same plan; the new leader
//! imports P's transaction records, and P's tasks, started there, fence their former
//! instances and abort what they left open (or complete what was decided) before writing.
//!
//! ```text
//!  __cluster_transactions-k ── leader: node 2 ──► P runs on node 2
//!        ▲ follows                                 P's transactional ids land in k
//!  P's topics (replicas of k, led by k's leader)   P's writes: local, acks=all
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_cluster::metadata::Anchor;
use sluice_cluster::{Cluster, NodeId};
use sluice_log::{Log, LogError, Owner, OwnerRef};

use crate::coordinators::{Coordinators, TRANSACTIONS_TOPIC, partition_count, partition_of};
use crate::topics::{NewTopic, Refused};

/// A pipeline's [`Owner`] on this node (from [`Placement::owner`]): its SQL queries and
/// state stores make topics, take transactional ids and keep positions through it.
#[derive(Debug)]
struct PipelineOwner {
    placement: Placement,
    pipeline: String,
    positions_topic: String,
}

impl PipelineOwner {
    fn refused(e: Refused) -> LogError {
        if e.is_transient() {
            // No controller in time, or this node does not lead the topic yet: the task
            // tries again (or the pipeline has moved, and this node stops it).
            LogError::ClusterUnavailable(e.message)
        } else if e.code == kafka_protocol::ResponseError::InvalidRequest.code() {
            LogError::NotOwner(e.message)
        } else {
            LogError::InvalidRequest(e.message)
        }
    }
}

impl Owner for PipelineOwner {
    fn pipeline(&self) -> &str {
        &self.pipeline
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: &[(String, String)],
    ) -> sluice_log::Result<()> {
        self.placement
            .create_topic(&self.pipeline, name, partitions, config)
            .map_err(Self::refused)
    }

    fn check_writes(&self, name: &str) -> sluice_log::Result<()> {
        self.placement
            .check_owner(&self.pipeline, name)
            .map_err(LogError::NotOwner)
    }

    fn transactional_id(&self, base: &str) -> sluice_log::Result<String> {
        self.placement
            .transactional_id(&self.pipeline, base)
            .ok_or_else(|| {
                LogError::ClusterUnavailable(format!("{TRANSACTIONS_TOPIC} is not created yet"))
            })
    }

    fn positions_topic(&self) -> &str {
        &self.positions_topic
    }
}

/// How long [`Placement::create_topic`] waits for this node's copies to lead.
const LEAD_WAIT: Duration = Duration::from_secs(10);

/// How long [`Placement::runs_here`] waits for this node to read a partition it leads.
const READY_WAIT: Duration = Duration::from_secs(3);

/// The placement of pipelines on this node's cluster (from [`crate::KafkaServer::placement`]).
#[derive(Clone)]
pub struct Placement {
    cluster: Cluster,
    log: Log,
    transactions: Arc<Coordinators>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("node", &self.cluster.node_id())
            .finish()
    }
}

impl Placement {
    pub(crate) fn new(cluster: Cluster, log: Log, transactions: Arc<Coordinators>) -> Placement {
        Placement {
            cluster,
            log,
            transactions,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.cluster.node_id()
    }

    /// The partition of [`TRANSACTIONS_TOPIC`] `pipeline` follows, once the topic exists.
    pub fn anchor(&self, pipeline: &str) -> Option<Anchor> {
        let count = partition_count(&self.cluster, TRANSACTIONS_TOPIC);
        (count > 0).then(|| Anchor {
            pipeline: pipeline.to_string(),
            topic: TRANSACTIONS_TOPIC.to_string(),
            partition: partition_of(pipeline, count),
        })
    }

    /// The node running `pipeline` now (`None`: none can, the partition has no leader or
    /// the topic is not created yet).
    pub fn home(&self, pipeline: &str) -> Option<NodeId> {
        let a = self.anchor(pipeline)?;
        self.cluster
            .metadata()
            .borrow()
            .partition(&a.topic, a.partition)?
            .leader
    }

    /// Whether `pipeline` runs on this node: it leads the pipeline's partition, and has
    /// read the partition's transaction records in this leader epoch (reading them now if
    /// not). Creates [`TRANSACTIONS_TOPIC`] at the first call of the cluster. Blocking.
    pub fn runs_here(&self, pipeline: &str) -> Result<bool, String> {
        if !self.cluster.is_current() {
            // Its copy of the metadata may still say what was true before it went down.
            return Err(
                "this node has not caught up with the cluster's metadata yet (it is joining)"
                    .into(),
            );
        }
        if self.anchor(pipeline).is_none() {
            // Created (three copies) through the controller, as at a client's first
            // FindCoordinator for a transaction.
            let default = self.log.options().default_partitions;
            self.transactions
                .locate(&self.cluster, default, pipeline)
                .map_err(|(_, reason)| reason)?;
        }
        // Led here but not read yet (the local copy still takes the former leader's last
        // records): a moment's wait, as the replication loop reads it within a tick.
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if self.home(pipeline) != Some(self.node()) {
                return Ok(false);
            }
            let partition = self.transactions.partition_for(&self.cluster, pipeline);
            let lock = self.transactions.partition_lock(partition);
            let checked = {
                let _held = lock.lock();
                self.transactions
                    .check_here(&self.cluster, &self.log, pipeline)
            };
            match checked {
                // Its topics' copies here must show all that was acknowledged before it
                // reads its positions from them.
                Ok(_) if self.settled(pipeline) => return Ok(true),
                Ok(_) if Instant::now() >= deadline => {
                    return Err(
                        "its topics' copies here do not all lead with a settled high watermark yet (catching up)"
                            .into(),
                    );
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err((_, reason)) if Instant::now() >= deadline => {
                    return Err(format!(
                        "this node leads its partition {partition} of {TRANSACTIONS_TOPIC} but cannot coordinate it yet: {reason}"
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The transactional id of `pipeline`'s task whose id alone would be `base`: `base`
    /// itself when it lands in the pipeline's partition, else `base#n` for the smallest `n`
    /// that does (a dozen tries on average; the same on every node), so the pipeline's
    /// transactions are coordinated where it runs. `None` before [`TRANSACTIONS_TOPIC`]
    /// exists.
    pub fn transactional_id(&self, pipeline: &str, base: &str) -> Option<String> {
        let count = partition_count(&self.cluster, TRANSACTIONS_TOPIC);
        if count == 0 {
            return None;
        }
        let target = partition_of(pipeline, count);
        if partition_of(base, count) == target {
            return Some(base.to_string());
        }
        (1u64..)
            .map(|n| format!("{base}#{n}"))
            .find(|id| partition_of(id, count) == target)
    }

    /// Whether `pipeline` may write topic `name`: it does not exist yet, or the pipeline
    /// made it. Otherwise why not (its partitions are led elsewhere).
    pub fn check_owner(&self, pipeline: &str, name: &str) -> Result<(), String> {
        let md = Arc::clone(&self.cluster.metadata().borrow());
        let Some(t) = md.topics.get(name) else {
            return Ok(());
        };
        match &t.anchor {
            Some(a) if a.pipeline == pipeline => Ok(()),
            Some(a) => Err(format!(
                "topic '{name}' exists, made by pipeline {}: a pipeline writes only topics it made, which are led where it runs",
                a.pipeline
            )),
            None => Err(format!(
                "topic '{name}' exists, made outside a pipeline (by a Kafka client or the API): a pipeline writes only topics it made, which are led where it runs"
            )),
        }
    }

    /// Creates `pipeline`'s topic `name` through the controller, with the replicas of the
    /// pipeline's partition, led where the pipeline runs (an existing topic of the pipeline
    /// is left as it is); returns once this node's copies lead it (up to 10 s), so that the
    /// pipeline's first writes here are taken, else a transient refusal naming the
    /// partitions' leaders. Blocking.
    pub fn create_topic(
        &self,
        pipeline: &str,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
    ) -> Result<(), Refused> {
        let anchor = self.anchor(pipeline).ok_or_else(|| Refused {
            code: kafka_protocol::ResponseError::CoordinatorNotAvailable.code(),
            message: format!("{TRANSACTIONS_TOPIC} is not created yet"),
        })?;
        self.check_owner(pipeline, name)
            .map_err(|message| Refused {
                code: kafka_protocol::ResponseError::InvalidRequest.code(),
                message,
            })?;
        let exists = self.cluster.metadata().borrow().topics.contains_key(name);
        if !exists {
            let request = NewTopic {
                name: name.to_string(),
                partitions: Some(i64::from(partitions)),
                replication_factor: None,
                configs: configs.iter().cloned().collect(),
                internal: true,
                anchor: Some(anchor),
            };
            let default = self.log.options().default_partitions;
            match crate::topics::create_replicated(&self.cluster, default, request, false) {
                Ok(_) => {}
                Err(e) if e.exists() => {}
                Err(e) => return Err(e),
            }
        }
        let deadline = Instant::now() + LEAD_WAIT;
        while !self.leads_here(name) {
            if Instant::now() >= deadline {
                let md = Arc::clone(&self.cluster.metadata().borrow());
                let leaders: Vec<String> = md.topics.get(name).map_or(Vec::new(), |t| {
                    t.partitions
                        .iter()
                        .map(|p| p.leader.map_or("none".into(), |l| l.to_string()))
                        .collect()
                });
                return Err(Refused {
                    code: kafka_protocol::ResponseError::RequestTimedOut.code(),
                    message: format!(
                        "topic '{name}' is not led by this node yet (its partitions' leaders: {}); its copies here are catching up",
                        leaders.join(", ")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `pipeline`'s [`Owner`] on this node, whose tasks keep their positions in
    /// `positions_topic`.
    pub fn owner(&self, pipeline: &str, positions_topic: &str) -> OwnerRef {
        OwnerRef(Arc::new(PipelineOwner {
            placement: self.clone(),
            pipeline: pipeline.to_string(),
            positions_topic: positions_topic.to_string(),
        }))
    }

    /// Waits (blocking, up to `timeout`) until this node has joined the cluster and caught
    /// up with its metadata, so that where pipelines run is known; whether it has.
    pub fn wait_current(&self, timeout: Duration) -> bool {
        self.cluster.wait_current(timeout)
    }

    /// Whether this node leads every partition of `pipeline`'s topics with a settled high
    /// watermark ([`sluice_log::partition::Partition::leads_settled`]): its tasks read
    /// their positions and state from these copies. (A partition whose copy here is not in
    /// sync yet is led elsewhere meanwhile, and the pipeline waits for it.)
    fn settled(&self, pipeline: &str) -> bool {
        let md = Arc::clone(&self.cluster.metadata().borrow());
        md.topics
            .values()
            .filter(|t| t.anchor.as_ref().is_some_and(|a| a.pipeline == pipeline))
            .all(|t| {
                t.partitions.iter().enumerate().all(|(i, p)| {
                    p.leader == Some(self.node())
                        && self
                            .log
                            .partition(&t.name, i as u32)
                            .is_ok_and(|c| c.leads_settled(p.leader_epoch))
                })
            })
    }

    /// The REST API address node `node` registered, if any.
    pub fn api_of(&self, node: NodeId) -> Option<String> {
        self.cluster
            .metadata()
            .borrow()
            .nodes
            .get(&node)?
            .api
            .clone()
    }

    /// Whether this node's copy of every partition of `topic` leads it now.
    pub fn leads_here(&self, topic: &str) -> bool {
        let md = Arc::clone(&self.cluster.metadata().borrow());
        md.topics.get(topic).is_some_and(|t| {
            t.partitions.iter().enumerate().all(|(i, p)| {
                p.leader == Some(self.node())
                    && self
                        .log
                        .partition(topic, i as u32)
                        .is_ok_and(|c| c.leads(p.leader_epoch))
            })
        })
    }
}
