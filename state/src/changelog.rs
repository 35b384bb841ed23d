//! The changelog side of a store: which topic partition backs it, the change records an epoch
//! produces, topic creation and the read_committed reader that replay uses.

use std::fmt;

use bytes::Bytes;
use sluice_log::consumer::decode_fetch;
use sluice_log::{Isolation, Log, LogError, OffsetSpec, Record, StoredRecord};

/// Bytes asked per fetch during restore; one fetch becomes one RocksDB `WriteBatch`, so this
/// also bounds the memory restore holds.
pub(crate) const RESTORE_FETCH_BYTES: usize = 1 << 20;

/// Extra time a windowed store's changelog keeps records beyond the store's retention, so a
/// store restored after downtime still finds every window it could be asked for (Kafka
/// Streams' `windowstore.changelog.additional.retention.ms`).
pub const CHANGELOG_EXTRA_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// The changelog topic partition that backs one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChangelogTopic {
    /// Topic name, e.g. `<query>-<operator>-changelog`.
    pub topic: String,
    /// The partition this store writes and replays; equal to the store's input partition.
    pub partition: u32,
    /// Partitions to create the topic with when it does not exist yet (the operator's input
    /// partition count). Ignored when the topic exists.
    pub partitions: u32,
}

impl ChangelogTopic {
    /// The changelog `topic`, partition `partition` of `partitions`.
    pub fn new(topic: impl Into<String>, partition: u32, partitions: u32) -> Self {
        ChangelogTopic {
            topic: topic.into(),
            partition,
            partitions,
        }
    }
}

impl fmt::Display for ChangelogTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// One change of an epoch: a store key and its new value, `None` for a deletion (a tombstone,
/// which compaction of the changelog topic eventually drops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The store key (for window and session stores, their encoded key).
    pub key: Bytes,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Bytes>,
}

impl Change {
    /// The changelog record for this change, stamped `timestamp`.
    ///
    /// Stamp with the epoch's wall-clock time: changelogs of window and session stores are
    /// also deleted by `retention.ms`, which counts from the record timestamps.
    pub fn into_record(self, timestamp: i64) -> Record {
        Record {
            key: Some(self.key),
            value: self.value,
            headers: Vec::new(),
            timestamp,
        }
    }
}

/// What the changelog topic's configuration must be for a store kind.
pub(crate) fn topic_config(retention_ms: Option<i64>) -> Vec<(String, String)> {
    match retention_ms {
        None => vec![("cleanup.policy".into(), "compact".into())],
        Some(ms) => vec![
            ("cleanup.policy".into(), "compact,delete".into()),
            (
                "retention.ms".into(),
                ms.saturating_add(CHANGELOG_EXTRA_RETENTION_MS).to_string(),
            ),
        ],
    }
}

/// Creates the changelog topic unless it exists; another task of the same operator may create
/// it at the same time, which is fine. In a cluster `owner` makes it.
pub(crate) fn ensure_topic(
    log: &Log,
    changelog: &ChangelogTopic,
    config: &[(String, String)],
    owner: Option<&sluice_log::OwnerRef>,
) -> Result<(), LogError> {
    if let Some(owner) = owner {
        return owner.create_topic(&changelog.topic, changelog.partitions.max(1), config);
    }
    match log.topic(&changelog.topic) {
        Ok(topic) => {
            if !topic.config().cleanup_policy.compact {
                tracing::warn!(
                    topic = %changelog.topic,
                    "The changelog topic is not compacted; restores will read its whole history."
                );
            }
            Ok(())
        }
        Err(LogError::UnknownTopic(_)) => {
            match log.create_topic(&changelog.topic, changelog.partitions.max(1), config) {
                Ok(()) | Err(LogError::TopicExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The committed range of a changelog partition: (first offset held, last stable offset).
pub(crate) fn committed_range(
    log: &Log,
    changelog: &ChangelogTopic,
) -> Result<(i64, i64), LogError> {
    let start = log
        .list_offset(
            &changelog.topic,
            changelog.partition,
            OffsetSpec::Earliest,
            Isolation::ReadCommitted,
        )?
        .unwrap_or(0);
    let end = log
        .list_offset(
            &changelog.topic,
            changelog.partition,
            OffsetSpec::Latest,
            Isolation::ReadCommitted,
        )?
        .unwrap_or(0);
    Ok((start, end))
}

/// One fetch of committed changelog records from `offset`: the records at or after `offset`
/// (aborted transactions and control batches dropped) and the offset to read next. An empty
/// answer with `next == offset` means nothing committed is left below the last stable offset.
pub(crate) fn read_committed(
    log: &Log,
    changelog: &ChangelogTopic,
    offset: i64,
) -> Result<(Vec<StoredRecord>, i64), LogError> {
    let fetch = log.fetch(
        &changelog.topic,
        changelog.partition,
        offset,
        RESTORE_FETCH_BYTES,
        Isolation::ReadCommitted,
    )?;
    let (mut records, next) =
        decode_fetch(&fetch, Isolation::ReadCommitted).map_err(|source| LogError::Batch {
            topic: changelog.topic.clone(),
            partition: changelog.partition,
            source,
        })?;
    // A fetch returns whole batches, so the first one may start before `offset`.
    records.retain(|r| r.offset >= offset);
    Ok((records, next.max(offset)))
}
