//! Creating a replicated topic in a cluster, for Kafka's CreateTopics and the REST API alike:
//! the request is checked here, the controller places the replicas and commits the topic, and
//! each replica's node creates its copy when it applies the change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError as E;
use sluice_cluster::{Cluster, ClusterError, Command};
use sluice_log::TopicConfig;
use sluice_log::log::validate_topic_name;

use crate::errors;

/// Partitions one topic may have: a request for 2^31 would hold the topics lock while
/// creating that many folders.
pub const MAX_PARTITIONS: usize = 10_000;

/// The replication factor of a topic created without one: three copies, or one per node
/// in a smaller cluster.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// A topic to create; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions (default: the log's `default_partitions`).
    pub partitions: Option<i64>,
    /// Copies of each partition (default [`DEFAULT_REPLICATION_FACTOR`] or the live nodes).
    pub replication_factor: Option<i64>,
    /// Topic config overrides.
    pub configs: BTreeMap<String, String>,
    /// Made by Sluice itself: only then may it be the cluster's offsets topic.
    pub internal: bool,
    /// A pipeline's topic: its partitions get the followed partition's replicas (the
    /// replication factor is theirs) and follow its leadership.
    pub anchor: Option<sluice_cluster::metadata::Anchor>,
}

/// A topic the controller committed (or would, when only validating).
#[derive(Debug, Clone)]
pub struct Created {
    /// Partitions.
    pub partitions: usize,
    /// Copies of each.
    pub replication_factor: usize,
    /// Its config, overrides over defaults.
    pub config: TopicConfig,
}

/// Why a topic was not created: Kafka's error code (the REST API maps it to a status) and
/// a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Kafka error code.
    pub code: i16,
    /// What was wrong.
    pub message: String,
}

impl Refused {
    fn new(code: E, message: impl Into<String>) -> Refused {
        Refused {
            code: code.code(),
            message: message.into(),
        }
    }

    /// Whether the topic exists already (HTTP 409).
    pub fn exists(&self) -> bool {
        self.code == E::TopicAlreadyExists.code()
    }

    /// Whether no controller committed it in time (HTTP 503; the request may be retried).
    pub fn unavailable(&self) -> bool {
        self.code == E::RequestTimedOut.code()
    }

    /// Whether the cluster's state refused it (no controller in time, a followed partition
    /// not there yet), not the request: it may succeed later.
    pub fn is_transient(&self) -> bool {
        self.unavailable()
            || self.code == E::CoordinatorNotAvailable.code()
            || self.code == E::UnknownTopicOrPartition.code()
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks `topic`, and unless `validate_only` has the controller commit it; waits (up to
/// 5 s) until this node's copy of the metadata has it, so the caller's next look here sees
/// the topic. Blocking: call it off the async threads.
pub fn create_replicated(
    cluster: &Cluster,
    default_partitions: u32,
    topic: NewTopic,
    validate_only: bool,
) -> Result<Created, Refused> {
    let NewTopic {
        name,
        partitions,
        replication_factor,
        configs,
        internal,
        anchor,
    } = topic;
    if crate::coordinators::is_coordinators_topic(&name) && !internal {
        return Err(Refused::new(
            E::InvalidRequest,
            format!(
                "'{name}' is one of the cluster's own topics (of group offsets or transactions); it is created when a coordinator first needs it"
            ),
        ));
    }
    if let Err(e) = validate_topic_name(&name) {
        return Err(Refused {
            code: errors::code(&e),
            message: errors::message(&e),
        });
    }
    let partitions = match partitions {
        None => default_partitions as usize,
        Some(n) if n <= 0 || n > MAX_PARTITIONS as i64 => {
            return Err(Refused::new(
                E::InvalidPartitions,
                format!("{n} partitions: from 1 to {MAX_PARTITIONS} per topic"),
            ));
        }
        Some(n) => n as usize,
    };
    let metadata = std::sync::Arc::clone(&cluster.metadata().borrow());
    let alive = metadata.alive().count();
    let followed = match &anchor {
        None => None,
        Some(a) => Some(
            metadata
                .partition(&a.topic, a.partition)
                .map(|p| p.replicas.clone())
                .ok_or_else(|| {
                    Refused::new(
                        E::UnknownTopicOrPartition,
                        format!(
                            "{}-{}, which pipeline '{}' follows, is not in the metadata",
                            a.topic, a.partition, a.pipeline
                        ),
                    )
                })?,
        ),
    };
    let factor = match replication_factor {
        _ if followed.is_some() => followed.as_ref().map_or(0, Vec::len),
        None => DEFAULT_REPLICATION_FACTOR.min(alive.max(1)),
        Some(n) if n <= 0 || n > i64::from(i16::MAX) => {
            return Err(Refused::new(
                E::InvalidReplicationFactor,
                format!("replication factor {n}: from 1 to the number of nodes"),
            ));
        }
        Some(n) => n as usize,
    };
    let config = TopicConfig::from_overrides(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| {
            let e = sluice_log::LogError::from(e);
            Refused {
                code: errors::code(&e),
                message: errors::message(&e),
            }
        })?;
    if config.min_insync_replicas as usize > factor {
        return Err(Refused::new(
            E::InvalidConfig,
            format!(
                "min.insync.replicas {} is more than the replication factor {factor}: no acks=all write could succeed",
                config.min_insync_replicas
            ),
        ));
    }
    if metadata.topics.contains_key(&name) {
        return Err(Refused::new(
            E::TopicAlreadyExists,
            format!("topic '{name}' already exists"),
        ));
    }
    let replicas = match followed {
        Some(r) => vec![r; partitions],
        None => sluice_cluster::controller::place(&metadata, &name, partitions, factor)
            .map_err(|e| Refused::new(E::InvalidReplicationFactor, e.to_string()))?,
    };
    if !validate_only {
        let command = Command::CreateTopic {
            name: name.clone(),
            replicas,
            configs,
            anchor,
        };
        match cluster.propose_blocking(command) {
            Ok(_) => {}
            Err(ClusterError::Refused(reason)) if reason.contains("already exists") => {
                return Err(Refused::new(E::TopicAlreadyExists, reason));
            }
            Err(e) => return Err(Refused::new(E::RequestTimedOut, e.to_string())),
        }
        // This node's copy of the metadata lags the controller's a little.
        let mut watch = cluster.metadata();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !watch.borrow_and_update().topics.contains_key(&name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Created {
        partitions,
        replication_factor: factor,
        config,
    })
}
