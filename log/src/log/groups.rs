//! Consumer groups: membership through the coordinator, committed offsets in `__consumer_offsets`, describe and reset.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::Log;
use crate::error::Result;
use crate::group::{
    GroupDescription, GroupState, HeartbeatRequest, HeartbeatResponse, TopicPartition,
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
    /// `log_end - committed` (the whole partition when nothing is committed).
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

/// Where `reset-offsets` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset held.
    Earliest,
    /// The end of the log.
    Latest,
    /// This offset (clamped into the partition's range).
    Offset(i64),
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
        let (values, records) = Self::offset_commit(group, offsets);
        self.append_records(OFFSETS_TOPIC, self.offsets_partition(group), &records)?;
        let mut store = self.inner.offsets.lock();
        for (tp, v) in values {
            store.set(group, tp, v);
        }
        Ok(())
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
        let mut tps: Vec<TopicPartition> = committed.keys().cloned().collect();
        for tp in owners.keys() {
            if !committed.contains_key(tp) {
                tps.push(tp.clone());
            }
        }
        tps.sort();
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
                    lag: (log_end - c.unwrap_or(start)).max(0),
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

    /// Moves a group's committed offsets on every partition of `topic`. The group must have
    /// no active members. Returns (partition, old, new) per partition.
    pub fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<(u32, Option<i64>, i64)>> {
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
            let new = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o.clamp(start, end),
            };
            out.push((p, self.committed(group, &tp), new));
            commits.push((tp, new));
        }
        self.commit_offsets(group, None, &commits)?;
        Ok(out)
    }
}
