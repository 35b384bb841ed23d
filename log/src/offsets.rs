//! Committed consumer-group offsets: the records of the compacted `__consumer_offsets` topic
//! and the in-memory view built from them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::group::TopicPartition;

/// Name of the internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A committed position of a group on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset the group will read.
    pub offset: i64,
    /// Free-form metadata given with the commit.
    #[serde(default)]
    pub metadata: String,
    /// When it was committed (ms).
    pub commit_timestamp: i64,
}

/// The key of an offset record: readable JSON, so `sluice consume __consumer_offsets` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

impl OffsetKey {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The offsets-topic record of `group`'s committed `offset` on `tp` (`None`: a tombstone),
/// for a copy kept elsewhere (a cluster's replicated offsets topic) in the same format.
pub fn offset_record(group: &str, tp: &TopicPartition, offset: Option<i64>) -> crate::Record {
    let value = offset.map(|offset| CommittedOffset {
        offset,
        metadata: String::new(),
        commit_timestamp: crate::record::now_ms(),
    });
    crate::Log::offset_record(group, tp, value.as_ref())
}

/// Reads a record written by [`offset_record`] (or found in `__consumer_offsets`): the
/// group, the partition and the offset (`None`: a tombstone); `None` when it is not one.
pub fn read_offset_record(
    key: &[u8],
    value: Option<&[u8]>,
) -> Option<(String, TopicPartition, Option<i64>)> {
    let k = serde_json::from_slice::<OffsetKey>(key).ok()?;
    let offset = match value {
        Some(v) => Some(serde_json::from_slice::<CommittedOffset>(v).ok()?.offset),
        None => None,
    };
    Some((
        k.group,
        TopicPartition {
            topic: k.topic,
            partition: k.partition,
        },
        offset,
    ))
}

/// Every group's committed offsets, plus offsets written inside open transactions, which
/// become visible only when their transaction commits.
#[derive(Debug, Default)]
pub(crate) struct OffsetStore {
    committed: BTreeMap<String, BTreeMap<TopicPartition, CommittedOffset>>,
    pending: HashMap<i64, Vec<(String, TopicPartition, CommittedOffset)>>,
}

impl OffsetStore {
    /// Applies one record of the offsets topic (replay or a fresh commit); `None` value is a
    /// tombstone. Records that do not parse are skipped with a warning: they cannot be
    /// offsets Sluice wrote.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(k) = serde_json::from_slice::<OffsetKey>(key) else {
            tracing::warn!("Skipped an unreadable record in __consumer_offsets.");
            return;
        };
        let tp = TopicPartition {
            topic: k.topic,
            partition: k.partition,
        };
        match value.map(serde_json::from_slice::<CommittedOffset>) {
            Some(Ok(v)) => {
                self.committed.entry(k.group).or_default().insert(tp, v);
            }
            Some(Err(_)) => tracing::warn!(group = %k.group, "Skipped an unreadable offset value."),
            None => {
                if let Some(g) = self.committed.get_mut(&k.group) {
                    g.remove(&tp);
                    if g.is_empty() {
                        self.committed.remove(&k.group);
                    }
                }
            }
        }
    }

    /// Sets a committed offset directly.
    pub fn set(&mut self, group: &str, tp: TopicPartition, v: CommittedOffset) {
        self.committed
            .entry(group.to_string())
            .or_default()
            .insert(tp, v);
    }

    /// Holds offsets written in a producer's open transaction.
    pub fn add_pending(
        &mut self,
        producer_id: i64,
        group: &str,
        tp: TopicPartition,
        v: CommittedOffset,
    ) {
        self.pending
            .entry(producer_id)
            .or_default()
            .push((group.to_string(), tp, v));
    }

    /// Replaces the pending offsets of the groups `mine` selects with `pending` (producer,
    /// group, partition, offset): what a cluster's replicated offsets hold of transactions
    /// still open, taken by their groups' new coordinator.
    pub fn replace_pending(
        &mut self,
        mine: &dyn Fn(&str) -> bool,
        pending: Vec<(i64, String, TopicPartition, i64)>,
    ) {
        for list in self.pending.values_mut() {
            list.retain(|(g, _, _)| !mine(g));
        }
        self.pending.retain(|_, list| !list.is_empty());
        let commit_timestamp = crate::record::now_ms();
        for (producer_id, group, tp, offset) in pending {
            self.add_pending(
                producer_id,
                &group,
                tp,
                CommittedOffset {
                    offset,
                    metadata: String::new(),
                    commit_timestamp,
                },
            );
        }
    }

    /// Whether a transaction holds an uncommitted offset of `group` on `tp`.
    pub fn has_pending(&self, group: &str, tp: &TopicPartition) -> bool {
        self.pending
            .values()
            .flatten()
            .any(|(g, t, _)| g == group && t == tp)
    }

    /// Makes a producer's pending offsets visible (commit) or drops them (abort).
    pub fn end_txn(
        &mut self,
        producer_id: i64,
        commit: bool,
    ) -> Vec<(String, TopicPartition, i64)> {
        let mut settled = Vec::new();
        if let Some(list) = self.pending.remove(&producer_id) {
            if commit {
                for (g, tp, v) in list {
                    settled.push((g.clone(), tp.clone(), v.offset));
                    self.set(&g, tp, v);
                }
            }
        }
        settled
    }

    /// The committed offset of a group on a partition.
    pub fn get(&self, group: &str, tp: &TopicPartition) -> Option<&CommittedOffset> {
        self.committed.get(group)?.get(tp)
    }

    /// All committed offsets of a group.
    pub fn group(&self, group: &str) -> Option<&BTreeMap<TopicPartition, CommittedOffset>> {
        self.committed.get(group)
    }

    /// Groups with committed offsets.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        self.committed.keys()
    }
}
