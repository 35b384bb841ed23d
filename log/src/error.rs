//! The log's error type: what went wrong, where (topic, partition, offset, path) and whose fault.

use std::path::PathBuf;

use crate::batch::BatchError;
use crate::config::ConfigError;
use crate::group::GroupError;
use crate::schema::{CompatibilityLevel, SchemaError};

/// Result alias for the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Everything the embedded log can fail with.
///
/// Variants fall in three kinds, told apart by [`LogError::is_retryable`] and
/// [`LogError::is_user_error`]: mistakes in a request (unknown topic, bad config, a record too
/// large), conditions a client waits out or retries (a full disk may free up, a rebalance
/// finishes), and corruption or bugs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another process (lock file {path}/.lock); stop it or pass another --data-dir"
    )]
    DataDirLocked {
        /// The data directory.
        path: PathBuf,
    },
    /// The topic does not exist.
    #[error("unknown topic '{0}' (create it first, or enable auto-create)")]
    UnknownTopic(String),
    /// The topic already exists.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// The topic name is not allowed.
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The partition does not exist.
    #[error("unknown partition {topic}-{partition} (topic has {partitions} partitions)")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Asked partition.
        partition: u32,
        /// How many the topic has.
        partitions: u32,
    },
    /// A request to change partitions that is not allowed (shrinking, zero).
    #[error("topic '{topic}': {reason}")]
    InvalidPartitions {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A bad topic or log configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A record batch larger than `max.message.bytes`.
    #[error("record batch of {size} bytes for {topic}-{partition} exceeds max.message.bytes={max}")]
    MessageTooLarge {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Size of the batch.
        size: usize,
        /// The topic's limit.
        max: u32,
    },
    /// A single record that cannot fit `max.message.bytes` even in a batch of its own:
    /// refused when it is sent, before it joins a batch (nothing else is affected).
    #[error(
        "a record of about {size} bytes for {topic}-{partition} cannot fit max.message.bytes={max}"
    )]
    RecordTooLarge {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Size of the record in a batch of its own (an upper estimate).
        size: usize,
        /// The topic's limit.
        max: u32,
    },
    /// A record that the topic cannot take (no key on a compacted topic, ...).
    #[error("invalid record for {topic}-{partition}: {reason}")]
    InvalidRecord {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// A fetch or seek outside the partition's offsets.
    #[error(
        "offset {offset} is out of range for {topic}-{partition} (log start {log_start}, log end {log_end})"
    )]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Asked offset.
        offset: i64,
        /// First offset still held.
        log_start: i64,
        /// Next offset to be written.
        log_end: i64,
    },
    /// A malformed or corrupt record batch.
    #[error("{topic}-{partition}: {source}")]
    Batch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What was wrong with it.
        source: BatchError,
    },
    /// Corrupt data found on disk.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What was found.
        reason: String,
    },
    /// A closed segment is damaged. The log refuses to start rather than guess: a closed
    /// segment was fsynced when it was rolled, so damage there is not a crash's torn tail.
    #[error(
        "topic '{topic}' partition {partition}: segment file {path} is damaged at byte {position} (offset {offset}): {reason}. It is a closed segment, which is not repaired automatically: restore the file from a backup, or move it out of the partition folder to start without its records (they are then reported as lost and their offsets are not reused)"
    )]
    DamagedSegment {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The segment's `.log` file.
        path: PathBuf,
        /// Byte position of the first bad batch.
        position: u64,
        /// The offset the bad batch should hold.
        offset: i64,
        /// What was found.
        reason: String,
    },
    /// A user asked to delete or write an internal topic (see [`crate::is_internal_topic`]).
    #[error(
        "'{name}' is an internal topic: it cannot be {action} by users (the worker and the log manage it)"
    )]
    InternalTopic {
        /// The topic.
        name: String,
        /// What was refused: "deleted", "written".
        action: &'static str,
    },
    /// An idempotent producer skipped sequence numbers.
    #[error(
        "out-of-order sequence for producer {producer_id} on {topic}-{partition}: expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Producer id.
        producer_id: i64,
        /// Expected first sequence.
        expected: i32,
        /// Received first sequence.
        got: i32,
    },
    /// A producer whose epoch has been superseded by a newer instance (zombie fencing).
    #[error(
        "producer {producer_id} with epoch {epoch} is fenced: a newer instance has epoch {current_epoch}"
    )]
    ProducerFenced {
        /// Producer id.
        producer_id: i64,
        /// The fenced epoch.
        epoch: i16,
        /// The current epoch.
        current_epoch: i16,
    },
    /// A transaction marker from a coordinator older than one that already wrote a marker
    /// for the producer here (a former coordinator's delayed request).
    #[error(
        "a marker of producer {producer_id} from coordinator epoch {coordinator_epoch} is fenced: coordinator epoch {current} already wrote here"
    )]
    CoordinatorFenced {
        /// Producer id.
        producer_id: i64,
        /// The marker's coordinator epoch.
        coordinator_epoch: i32,
        /// The latest coordinator epoch seen for the producer.
        current: i32,
    },
    /// A transactional call in the wrong state.
    #[error("transaction '{transactional_id}': {reason}")]
    InvalidTxnState {
        /// Transactional id.
        transactional_id: String,
        /// Why.
        reason: String,
    },
    /// The transaction ran longer than its timeout and was aborted.
    #[error("transaction '{0}' timed out and was aborted")]
    TxnTimedOut(String),
    /// Consumer-group protocol errors.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A consumer has no committed offset and `auto.offset.reset = none`.
    #[error(
        "no committed offset for group '{group}' on {topic}-{partition} and auto.offset.reset=none"
    )]
    NoOffset {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// An API call that makes no sense in the caller's state (subscribe without a group id...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The log has been closed.
    #[error("the log is closed")]
    Closed,
    /// The remote storage of tiered topics failed or is not configured (retryable unless
    /// the message says the configuration is wrong).
    #[error("tiered storage: {0}")]
    RemoteStorage(String),
    /// The cluster this log belongs to did not answer (no controller: a majority of its
    /// nodes is down or unreachable). Retryable.
    #[error("the cluster is unavailable: {0}")]
    ClusterUnavailable(String),
    /// An `acks=all` write to a partition whose in-sync replicas are fewer than its
    /// `min.insync.replicas` (Kafka's NOT_ENOUGH_REPLICAS). Retryable.
    #[error(
        "{topic}-{partition} has {in_sync} in-sync replica(s), fewer than its min.insync.replicas {min}; the write was refused"
    )]
    NotEnoughReplicas {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// In-sync replicas now.
        in_sync: usize,
        /// The topic's `min.insync.replicas`.
        min: u32,
    },
    /// An `acks=all` write appended at the leader that the in-sync replicas did not all
    /// copy in time (it may still be committed later, or cut by a new leader). Retryable.
    #[error(
        "{topic}-{partition}: the in-sync replicas did not all copy offsets below {end} within {waited_ms} ms"
    )]
    ReplicationTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The log end the write reached.
        end: i64,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The partition is a follower's copy in a cluster: only its leader takes writes.
    #[error(
        "{topic}-{partition} is led by another node of the cluster{leader}; write to its leader"
    )]
    NotLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Which node leads it, when known (` (node 2 at host:port)`), else empty.
        leader: String,
    },
    /// A pipeline in a cluster would write a topic it did not make ([`crate::Owner`]).
    #[error("{0}")]
    NotOwner(String),
    /// A schema (or a subject name) the registry refuses: malformed, too large, too deeply
    /// nested, or using an Avro construct the registry does not support.
    #[error("invalid schema for subject '{subject}': {source}")]
    InvalidSchema {
        /// The subject it was registered under (empty when none was involved).
        subject: String,
        /// What is wrong, and where in the schema.
        source: SchemaError,
    },
    /// A schema breaks its subject's compatibility level.
    #[error(
        "schema for subject '{subject}' is incompatible with version {version} under {level}: {reason}; change the schema or the subject's compatibility level"
    )]
    IncompatibleSchema {
        /// The subject.
        subject: String,
        /// The registered version it conflicts with.
        version: u32,
        /// The level in force.
        level: CompatibilityLevel,
        /// Which side cannot read which, the field path and why.
        reason: String,
    },
    /// The schema subject has no (live) version.
    #[error("unknown schema subject '{0}'")]
    UnknownSubject(String),
}

impl LogError {
    /// Builds an [`LogError::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for failures a caller may retry as is (I/O: a full disk may free up).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::Io { .. }
                | LogError::RemoteStorage(_)
                | LogError::ClusterUnavailable(_)
                | LogError::NotLeader { .. }
                | LogError::NotEnoughReplicas { .. }
                | LogError::ReplicationTimeout { .. }
        )
    }

    /// True when the request itself was wrong and retrying cannot help.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            LogError::UnknownTopic(_)
                | LogError::TopicExists(_)
                | LogError::InvalidTopicName { .. }
                | LogError::InternalTopic { .. }
                | LogError::UnknownPartition { .. }
                | LogError::InvalidPartitions { .. }
                | LogError::Config(_)
                | LogError::MessageTooLarge { .. }
                | LogError::RecordTooLarge { .. }
                | LogError::InvalidRecord { .. }
                | LogError::OffsetOutOfRange { .. }
                | LogError::NoOffset { .. }
                | LogError::InvalidSchema { .. }
                | LogError::IncompatibleSchema { .. }
                | LogError::UnknownSubject(_)
                | LogError::NotOwner(_)
        )
    }
}
