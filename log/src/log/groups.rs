//! Consumer groups: membership through the coordinator, committed offsets in `__consumer_offsets`, describe and reset.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::Log;
use crate::error::Result;
use crate::group::{
    GroupCoordinator, GroupDescription, GroupError, GroupState, HeartbeatRequest,
    HeartbeatResponse, TopicPartition,
};
use crate::offsets::{CommittedOffset, OFFSETS_TOPIC, OffsetKey, OffsetStore};
use crate::partition::{Isolation, OffsetSpec};
use crate::record::{Record, now_ms};

/// One partition of a group as shown by describe: committed offset and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionLag {
    /// The partition.
    pub tp: TopicPartition,
    /// Committed offset, if any.
    pub committed: Option<i64>,
    /// Log end offset (last stable offset for the read_committed view).
    pub log_end: i64,
    /// Records a consumer would still read between the committed offset (the log start
    /// when nothing is committed) and `log_end`: transaction markers and aborted records
    /// do not count, so a partition ending with a marker shows no lag once its last record
    /// is consumed. Exact up to [`LAG_SCAN_BYTES`] of log; beyond, the offsets left.
    pub lag: i64,
    /// The member consuming it now, if any.
    pub member: Option<String>,
}

/// A consumer group as shown by describe.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Group id.
    pub group: String,
    /// Membership state (Empty when only committed offsets exist).
    pub state: GroupState,
    /// Members and their assignments, from the coordinator.
    pub description: Option<GroupDescription>,
    /// Committed offsets with lag.
    pub partitions: Vec<GroupPartitionLag>,
}

/// How much of a partition describe reads past a group's committed offset to count the
/// records left (markers and aborted records excluded).
pub const LAG_SCAN_BYTES: usize = 1 << 20;

/// Where `reset-offsets` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset held.
    Earliest,
    /// The end of the log.
    Latest,
    /// This offset (clamped into the partition's range).
    Offset(i64),
    /// The first record at or after this time (ms since the epoch); the end when none is.
    Datetime(i64),
    /// The committed offset (the log start when none) moved by this many, clamped.
    ShiftBy(i64),
}

/// One partition of a reset: what the group had and what it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReset {
    /// The partition.
    pub partition: u32,
    /// The committed offset before, if any.
    pub old: Option<i64>,
    /// The offset after.
    pub new: i64,
}

impl Log {
    pub(super) fn load_offsets(&self) -> Result<()> {
        let n = self.topic(OFFSETS_TOPIC)?.partition_count();
        let mut store = OffsetStore::default();
        for p in 0..n {
            self.read_all(OFFSETS_TOPIC, p, |_, r| {
                if let Some(k) = &r.key {
                    store.apply(k, r.value.as_deref());
                }
            })?;
        }
        *self.inner.offsets.lock() = store;
        Ok(())
    }

    /// The `__consumer_offsets` partition of a group.
    pub(crate) fn offsets_partition(&self, group: &str) -> u32 {
        let n = self
            .topic(OFFSETS_TOPIC)
            .map(|t| t.partition_count())
            .unwrap_or(1)
            .max(1);
        crate::partitioner::partition_for_key(group.as_bytes(), n)
    }

    pub(crate) fn offset_record(
        group: &str,
        tp: &TopicPartition,
        v: Option<&CommittedOffset>,
    ) -> Record {
        let key = OffsetKey {
            group: group.into(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        };
        Record {
            key: Some(Bytes::from(key.encode())),
            value: v.map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
            headers: Vec::new(),
            timestamp: now_ms(),
        }
    }

    /// The offsets of a commit and the `__consumer_offsets` records that store them.
    pub(crate) fn offset_commit(
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> (Vec<(TopicPartition, CommittedOffset)>, Vec<Record>) {
        let commit_timestamp = now_ms();
        let values: Vec<(TopicPartition, CommittedOffset)> = offsets
            .iter()
            .map(|(tp, offset)| {
                let metadata = String::new();
                (
                    tp.clone(),
                    CommittedOffset {
                        offset: *offset,
                        metadata,
                        commit_timestamp,
                    },
                )
            })
            .collect();
        let records = values
            .iter()
            .map(|(tp, v)| Self::offset_record(group, tp, Some(v)))
            .collect();
        (values, records)
    }

    /// Commits offsets for a group. With `member`, the commit must come from a current member
    /// owning those partitions; without, the group must have no active members.
    pub fn commit_offsets(
        &self,
        group: &str,
        member: Option<(&str, u64)>,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        self.check_open()?;
        if offsets.is_empty() {
            return Ok(());
        }
        let tps: Vec<TopicPartition> = offsets.iter().map(|o| o.0.clone()).collect();
        self.inner.groups.lock().validate_commit(
            group,
            member.map(|m| m.0),
            member.map_or(0, |m| m.1),
            &tps,
        )?;
        self.write_commit(group, offsets)
    }

    /// Commits offsets for a member of a classic-protocol group (a Kafka client): it must be
    /// a member at `generation` of a group that is not rebalancing.
    pub fn commit_classic_offsets(
        &self,
        group: &str,
        generation: i32,
        member: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        self.check_open()?;
        self.validate_classic_member(group, generation, member)?;
        if offsets.is_empty() {
            return Ok(());
        }
        self.write_commit(group, offsets)
    }

    /// A classic group's member may commit: current at `generation`, the group not
    /// completing a rebalance.
    pub(crate) fn validate_classic_member(
        &self,
        group: &str,
        generation: i32,
        member: &str,
    ) -> Result<()> {
        Ok(self
            .inner
            .groups
            .lock()
            .classic
            .validate_commit(group, generation, member)
            .map_err(GroupError::from)?)
    }

    /// Runs `f` on the group coordinator, under its lock, with a monotonic clock in ms (not
    /// the wall clock: a clock step must not expire every member): how the Kafka listener
    /// drives classic-protocol groups.
    pub fn with_group_coordinator<R>(&self, f: impl FnOnce(&mut GroupCoordinator, u64) -> R) -> R {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64;
        f(&mut self.inner.groups.lock(), now)
    }

    /// Whether a transaction holds offsets of `group` on `tp` not yet committed (Kafka's
    /// `UNSTABLE_OFFSET_COMMIT` for OffsetFetch with `require_stable`).
    pub fn has_pending_offsets(&self, group: &str, tp: &TopicPartition) -> bool {
        self.inner.offsets.lock().has_pending(group, tp)
    }

    fn write_commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let (values, records) = Self::offset_commit(group, offsets);
        self.append_records(OFFSETS_TOPIC, self.offsets_partition(group), &records)?;
        let mut store = self.inner.offsets.lock();
        for (tp, v) in values {
            store.set(group, tp, v);
        }
        Ok(())
    }

    /// Writes a group's committed offsets as another coordinator had them (a cluster's group
    /// coordinator moving to this node): no membership check, the group's offsets are
    /// simply these from now on.
    pub fn restore_offsets(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        self.check_open()?;
        if offsets.is_empty() {
            return Ok(());
        }
        self.write_commit(group, offsets)
    }

    /// Takes `pending` (producer, group, partition, offset) as the offsets of transactions
    /// still open for the groups `mine` selects, in place of what this log held of them (a
    /// cluster's group coordinator moving here: the transactions' markers settle them).
    pub fn restore_pending_offsets(
        &self,
        mine: &dyn Fn(&str) -> bool,
        pending: Vec<(i64, String, TopicPartition, i64)>,
    ) {
        self.inner.offsets.lock().replace_pending(mine, pending);
    }

    /// Every committed offset of a group (Kafka's OffsetFetch for all partitions).
    pub fn committed_offsets(&self, group: &str) -> Vec<(TopicPartition, CommittedOffset)> {
        self.inner
            .offsets
            .lock()
            .group(group)
            .map(|m| m.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect())
            .unwrap_or_default()
    }

    /// The committed offset of a group on a partition.
    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<i64> {
        self.inner.offsets.lock().get(group, tp).map(|c| c.offset)
    }

    pub(crate) fn group_heartbeat(&self, mut req: HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.check_open()?;
        req.partitions = req
            .subscription
            .iter()
            .filter_map(|t| {
                self.topic(t)
                    .ok()
                    .map(|topic| (t.clone(), topic.partition_count()))
            })
            .collect();
        Ok(self.inner.groups.lock().heartbeat(now_ms() as u64, req)?)
    }

    pub(crate) fn group_leave(&self, group: &str, member: &str) -> Result<()> {
        Ok(self
            .inner
            .groups
            .lock()
            .leave(now_ms() as u64, group, member)?)
    }

    /// Groups known by membership or committed offsets: (name, state, members).
    pub fn list_groups(&self) -> Vec<(String, GroupState, usize)> {
        let mut out: BTreeMap<String, (GroupState, usize)> = self
            .inner
            .groups
            .lock()
            .list()
            .into_iter()
            .map(|(g, s, n)| (g, (s, n)))
            .collect();
        for g in self.inner.offsets.lock().groups() {
            out.entry(g.clone()).or_insert((GroupState::Empty, 0));
        }
        out.into_iter().map(|(g, (s, n))| (g, s, n)).collect()
    }

    /// A group's members, committed offsets and lag per partition.
    pub fn describe_group(&self, group: &str) -> Option<GroupInfo> {
        let description = self.inner.groups.lock().describe(group);
        let committed = self
            .inner
            .offsets
            .lock()
            .group(group)
            .cloned()
            .unwrap_or_default();
        if description.is_none() && committed.is_empty() {
            return None;
        }
        let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
        if let Some(d) = &description {
            for m in &d.members {
                for tp in &m.assignment {
                    owners.insert(tp.clone(), m.member_id.clone());
                }
            }
        }
        // Every partition of the topics the group reads, also those it has not committed
        // on yet (as Kafka's tool lists them, with no committed offset).
        let topics: std::collections::BTreeSet<&str> = committed
            .keys()
            .chain(owners.keys())
            .map(|tp| tp.topic.as_str())
            .collect();
        let mut tps: Vec<TopicPartition> = Vec::new();
        for t in topics {
            match self.topic(t) {
                Ok(topic) => tps.extend((0..topic.partition_count()).map(|p| TopicPartition {
                    topic: t.to_string(),
                    partition: p,
                })),
                // A deleted topic: its committed offsets are still shown.
                Err(_) => tps.extend(
                    committed
                        .keys()
                        .chain(owners.keys())
                        .filter(|tp| tp.topic == t)
                        .cloned(),
                ),
            }
        }
        tps.sort();
        tps.dedup();
        let partitions = tps
            .into_iter()
            .map(|tp| {
                let log_end = self
                    .list_offset(
                        &tp.topic,
                        tp.partition,
                        OffsetSpec::Latest,
                        Isolation::ReadCommitted,
                    )
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let start = self
                    .list_offset(
                        &tp.topic,
                        tp.partition,
                        OffsetSpec::Earliest,
                        Isolation::ReadCommitted,
                    )
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let c = committed.get(&tp).map(|c| c.offset);
                GroupPartitionLag {
                    lag: self.records_left(&tp, c.unwrap_or(start).max(start), log_end),
                    committed: c,
                    log_end,
                    member: owners.get(&tp).cloned(),
                    tp,
                }
            })
            .collect();
        Some(GroupInfo {
            group: group.into(),
            state: description.as_ref().map_or(GroupState::Empty, |d| d.state),
            description,
            partitions,
        })
    }

    /// Records a read_committed consumer would get in `[from, to)` of a partition: batches
    /// of aborted transactions and control batches (transaction markers) do not count.
    /// Reads at most [`LAG_SCAN_BYTES`]; what lies beyond counts as offsets.
    fn records_left(&self, tp: &TopicPartition, from: i64, to: i64) -> i64 {
        if from >= to {
            return 0;
        }
        let fetched = self
            .partition(&tp.topic, tp.partition)
            .and_then(|p| p.fetch(from, LAG_SCAN_BYTES, Isolation::ReadCommitted));
        let Ok(result) = fetched else {
            return to - from;
        };
        let mut left = 0;
        let mut next = from;
        for batch in crate::batch::split_batches(&result.data) {
            let Ok(h) = batch.and_then(crate::batch::BatchHeader::parse) else {
                break;
            };
            let end = h.next_offset().min(to);
            if !h.is_control() && !result.is_aborted(&h) {
                // Records of the batch from `from` on (a fetch starts at a batch boundary).
                left += (end - h.base_offset.max(from)).max(0);
            }
            next = h.next_offset();
            if next >= to {
                break;
            }
        }
        left + (to - next.max(from)).max(0)
    }

    /// Where `to` would move a group's committed offsets on every partition of `topic`, and,
    /// with `execute`, moves them. The group must have no active members (checked also on a
    /// dry run, which changes nothing).
    pub fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
        execute: bool,
    ) -> Result<Vec<PartitionReset>> {
        let t = self.topic(topic)?;
        let mut out = Vec::new();
        let mut commits = Vec::new();
        for p in 0..t.partition_count() {
            let tp = TopicPartition {
                topic: topic.into(),
                partition: p,
            };
            let start = self
                .list_offset(topic, p, OffsetSpec::Earliest, Isolation::ReadUncommitted)?
                .unwrap_or(0);
            let end = self
                .list_offset(topic, p, OffsetSpec::Latest, Isolation::ReadUncommitted)?
                .unwrap_or(0);
            let old = self.committed(group, &tp);
            let new = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o.clamp(start, end),
                ResetTo::Datetime(ms) => self
                    .list_offset(
                        topic,
                        p,
                        OffsetSpec::Timestamp(ms),
                        Isolation::ReadUncommitted,
                    )?
                    .unwrap_or(end),
                ResetTo::ShiftBy(n) => old.unwrap_or(start).saturating_add(n).clamp(start, end),
            };
            out.push(PartitionReset {
                partition: p,
                old,
                new,
            });
            commits.push((tp, new));
        }
        let tps: Vec<TopicPartition> = commits.iter().map(|c| c.0.clone()).collect();
        self.inner
            .groups
            .lock()
            .validate_commit(group, None, 0, &tps)?;
        if execute {
            self.commit_offsets(group, None, &commits)?;
        }
        Ok(out)
    }

    /// Deletes a group with no active members: its committed offsets (tombstones in
    /// `__consumer_offsets`, so a restart does not bring them back) and its membership
    /// record. Returns the partitions whose offsets were deleted.
    pub fn delete_group(&self, group: &str) -> Result<usize> {
        self.check_open()?;
        let committed: Vec<TopicPartition> = self
            .inner
            .offsets
            .lock()
            .group(group)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        {
            // Refused (GroupNotEmpty) while the group has members.
            match self.inner.groups.lock().delete_group(group) {
                Ok(()) => {}
                Err(GroupError::UnknownGroup { .. }) if !committed.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.forget_offsets(group, &committed)?;
        Ok(committed.len())
    }

    /// Removes a group's committed offsets on `tps` (tombstones in `__consumer_offsets`),
    /// with no membership check: a deleted group, or one its cluster coordinator deleted
    /// elsewhere.
    pub fn forget_offsets(&self, group: &str, tps: &[TopicPartition]) -> Result<()> {
        self.check_open()?;
        if tps.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = tps
            .iter()
            .map(|tp| Self::offset_record(group, tp, None))
            .collect();
        self.append_records(OFFSETS_TOPIC, self.offsets_partition(group), &records)?;
        let mut store = self.inner.offsets.lock();
        for tp in tps {
            let key = OffsetKey {
                group: group.into(),
                topic: tp.topic.clone(),
                partition: tp.partition,
            };
            store.apply(&key.encode(), None);
        }
        Ok(())
    }
}
