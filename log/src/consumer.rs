//! The consumer: reads assigned partitions in order, alone (manual assignment) or as a member
//! of a consumer group that shares a topic's partitions among its members.
//!
//! Group membership is kept by `poll`: it heartbeats the coordinator, gives up partitions the
//! coordinator moved elsewhere (committing their positions first when auto-commit is on) and
//! starts new ones at the group's committed offset, or per `auto_offset_reset` without one.
//! Pausing a partition stops fetching it without leaving the group.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{BatchError, BatchHeader, decode_records_bytes, split_batches};
use crate::error::{LogError, Result};
use crate::group::{Assignor, HeartbeatRequest, TopicPartition};
use crate::log::Log;
use crate::partition::{FetchResult, Isolation, OffsetSpec};
use crate::record::{Header, StoredRecord};

/// Where to start when a group has no committed offset for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The first offset held.
    Earliest,
    /// The end of the log (only new records).
    #[default]
    Latest,
    /// Fail with [`LogError::NoOffset`].
    None,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(OffsetReset::Earliest),
            "latest" => Ok(OffsetReset::Latest),
            "none" => Ok(OffsetReset::None),
            o => Err(format!("'{o}' is not earliest, latest or none")),
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Group id; needed for `subscribe` and for committing. Default none.
    pub group: Option<String>,
    /// read_committed (default) or read_uncommitted.
    pub isolation: Isolation,
    /// Start position without a committed offset. Default latest.
    pub auto_offset_reset: OffsetReset,
    /// A member that does not poll for this long is removed from its group. Default 45 s.
    pub session_timeout: Duration,
    /// How often `poll` heartbeats. Default 300 ms.
    pub heartbeat_interval: Duration,
    /// Partition assignment strategy of the group. Default range.
    pub assignor: Assignor,
    /// Most records one `poll` returns. Default 500.
    pub max_poll_records: usize,
    /// Bytes asked per partition fetch. Default 1 MiB.
    pub fetch_max_bytes: usize,
    /// Commit positions on revocation, on close, and every `auto_commit_interval`. Default off.
    pub enable_auto_commit: bool,
    /// Auto-commit period. Default 5 s.
    pub auto_commit_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            isolation: Isolation::ReadCommitted,
            auto_offset_reset: OffsetReset::Latest,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_millis(300),
            assignor: Assignor::Range,
            max_poll_records: 500,
            fetch_max_bytes: 1 << 20,
            enable_auto_commit: false,
            auto_commit_interval: Duration::from_secs(5),
        }
    }
}

/// A record as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
}

/// Decodes a fetch into records, dropping control batches and, for read_committed, batches
/// of aborted transactions. Returns the records and the offset after the last batch.
pub fn decode_fetch(
    result: &FetchResult,
    isolation: Isolation,
) -> Result<(Vec<StoredRecord>, i64), BatchError> {
    let mut out = Vec::new();
    let mut next = -1;
    let data = &result.data;
    let mut pos = 0usize;
    for batch in split_batches(data) {
        let batch = batch?;
        let len = batch.len();
        let h = BatchHeader::parse(batch)?;
        next = h.next_offset();
        let start = pos;
        pos += len;
        if h.is_control() {
            continue;
        }
        if isolation == Isolation::ReadCommitted && result.is_aborted(&h) {
            continue;
        }
        out.extend(decode_records_bytes(data.slice(start..start + len))?);
    }
    Ok((out, next))
}

#[derive(Debug)]
struct Member {
    id: String,
    epoch: u64,
}

/// Reads records. See the module docs.
#[derive(Debug)]
pub struct Consumer {
    log: Log,
    config: ConsumerConfig,
    subscription: BTreeSet<String>,
    member: Option<Member>,
    assigned: BTreeSet<TopicPartition>,
    positions: HashMap<TopicPartition, i64>,
    /// Fetched records not returned yet, and the offset after the fetched batches (past
    /// trailing transaction markers): the position once the records are all returned.
    buffers: BTreeMap<TopicPartition, (VecDeque<StoredRecord>, i64)>,
    paused: BTreeSet<TopicPartition>,
    topic_names: HashMap<String, Arc<str>>,
    last_heartbeat: Option<Instant>,
    last_auto_commit: Instant,
    cursor: usize,
}

impl Consumer {
    pub(crate) fn new(log: Log, config: ConsumerConfig) -> Consumer {
        Consumer {
            log,
            config,
            subscription: BTreeSet::new(),
            member: None,
            assigned: BTreeSet::new(),
            positions: HashMap::new(),
            buffers: BTreeMap::new(),
            paused: BTreeSet::new(),
            topic_names: HashMap::new(),
            last_heartbeat: None,
            last_auto_commit: Instant::now(),
            cursor: 0,
        }
    }

    fn group(&self) -> Result<String> {
        self.config.group.clone().ok_or_else(|| {
            LogError::InvalidRequest(
                "this consumer has no group id; set one to subscribe or commit".into(),
            )
        })
    }

    /// Joins the group for these topics (it needs a group id). Partitions come with `poll`.
    pub fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        self.group()?;
        for t in topics {
            self.log.topic(t)?;
        }
        self.subscription = topics.iter().map(|t| t.to_string()).collect();
        self.heartbeat()?;
        Ok(())
    }

    /// Reads exactly these partitions, outside any group membership.
    pub fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        for tp in partitions {
            self.log.partition(&tp.topic, tp.partition)?;
        }
        self.subscription.clear();
        self.assigned = partitions.iter().cloned().collect();
        self.positions.retain(|tp, _| partitions.contains(tp));
        self.buffers.retain(|tp, _| partitions.contains(tp));
        Ok(())
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> &BTreeSet<TopicPartition> {
        &self.assigned
    }

    /// Moves a partition's position.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        self.buffers.remove(tp);
        self.positions.insert(tp.clone(), offset);
    }

    /// The end of a partition as this consumer sees it (the last stable offset for
    /// read_committed).
    fn end_offset(&self, tp: &TopicPartition) -> Result<i64> {
        let end = self.log.list_offset(
            &tp.topic,
            tp.partition,
            OffsetSpec::Latest,
            self.config.isolation,
        )?;
        Ok(end.unwrap_or(0))
    }

    /// Moves a partition to its earliest / latest / by-timestamp offset.
    pub fn seek_to(&mut self, tp: &TopicPartition, spec: OffsetSpec) -> Result<()> {
        let end = self.end_offset(tp)?;
        let o = self
            .log
            .list_offset(&tp.topic, tp.partition, spec, self.config.isolation)?
            .unwrap_or(end);
        self.seek(tp, o);
        Ok(())
    }

    /// The next offset this consumer will read from a partition, if known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.get(tp).copied()
    }

    /// Stops fetching these partitions without leaving the group.
    pub fn pause(&mut self, tps: &[TopicPartition]) {
        self.paused.extend(tps.iter().cloned());
    }

    /// Fetches these partitions again.
    pub fn resume(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.paused.remove(tp);
        }
    }

    /// Partitions paused now.
    pub fn paused(&self) -> &BTreeSet<TopicPartition> {
        &self.paused
    }

    fn heartbeat(&mut self) -> Result<()> {
        let group = self.group()?;
        let req = HeartbeatRequest {
            group: group.clone(),
            member_id: self.member.as_ref().map(|m| m.id.clone()),
            member_epoch: self.member.as_ref().map_or(0, |m| m.epoch),
            subscription: self.subscription.clone(),
            owned: self.assigned.clone(),
            assignor: self.config.assignor,
            session_timeout_ms: self.config.session_timeout.as_millis() as u64,
            partitions: BTreeMap::new(),
        };
        let resp = match self.log.group_heartbeat(req) {
            Ok(r) => r,
            Err(LogError::Group(e)) if e.requires_rejoin() => {
                // Our membership is gone (session timeout, fenced): drop everything and join
                // again as a new member, as a Kafka consumer does.
                tracing::info!(group = %group, error = %e, "Rejoining the group.");
                self.member = None;
                self.revoke_all();
                return self.heartbeat();
            }
            Err(e) => return Err(e),
        };
        self.last_heartbeat = Some(Instant::now());
        self.member = Some(Member {
            id: resp.member_id.clone(),
            epoch: resp.member_epoch,
        });
        let revoked: Vec<TopicPartition> = self
            .assigned
            .difference(&resp.assignment)
            .cloned()
            .collect();
        if !revoked.is_empty() {
            if self.config.enable_auto_commit {
                let offsets: Vec<(TopicPartition, i64)> = revoked
                    .iter()
                    .filter_map(|tp| self.positions.get(tp).map(|o| (tp.clone(), *o)))
                    .collect();
                if let Err(e) = self.log.commit_offsets(
                    &group,
                    Some((&resp.member_id, resp.member_epoch)),
                    &offsets,
                ) {
                    tracing::warn!(group = %group, error = %e, "Could not commit revoked partitions.");
                }
            }
            for tp in &revoked {
                self.positions.remove(tp);
                self.buffers.remove(tp);
            }
        }
        self.assigned = resp.assignment;
        Ok(())
    }

    fn revoke_all(&mut self) {
        self.assigned.clear();
        self.positions.clear();
        self.buffers.clear();
    }

    fn init_position(&mut self, tp: &TopicPartition) -> Result<i64> {
        if let Some(group) = &self.config.group {
            if let Some(o) = self.log.committed(group, tp) {
                return Ok(o);
            }
        }
        let spec = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OffsetSpec::Earliest,
            OffsetReset::Latest => OffsetSpec::Latest,
            OffsetReset::None => {
                return Err(LogError::NoOffset {
                    group: self.config.group.clone().unwrap_or_default(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                });
            }
        };
        Ok(self
            .log
            .list_offset(&tp.topic, tp.partition, spec, self.config.isolation)?
            .unwrap_or(0))
    }

    fn topic_arc(&mut self, topic: &str) -> Arc<str> {
        self.topic_names
            .entry(topic.to_string())
            .or_insert_with(|| Arc::from(topic))
            .clone()
    }

    /// Fetches into the buffer of each readable partition that has none; true if any data
    /// was found.
    fn fill(&mut self) -> Result<bool> {
        let tps: Vec<TopicPartition> = self
            .assigned
            .iter()
            .filter(|tp| !self.paused.contains(*tp))
            .cloned()
            .collect();
        let mut any = false;
        for tp in tps {
            if self.buffers.get(&tp).is_some_and(|b| !b.0.is_empty()) {
                any = true;
                continue;
            }
            let pos = match self.positions.get(&tp) {
                Some(p) => *p,
                None => {
                    let p = self.init_position(&tp)?;
                    self.positions.insert(tp.clone(), p);
                    p
                }
            };
            let r = match self.log.fetch(
                &tp.topic,
                tp.partition,
                pos,
                self.config.fetch_max_bytes,
                self.config.isolation,
            ) {
                Ok(r) => r,
                Err(LogError::OffsetOutOfRange {
                    log_start, log_end, ..
                }) => {
                    // Retention moved the start past us (normal), or the position is beyond
                    // the end: offsets are never reused, so that means the log lost records
                    // this consumer had read, and an operator must know.
                    if pos > log_end {
                        tracing::error!(
                            topic = %tp.topic, partition = tp.partition, position = pos, log_end,
                            reset = ?self.config.auto_offset_reset,
                            "The position is beyond the log end: records this consumer read are no longer in the log."
                        );
                    }
                    let reset = match self.config.auto_offset_reset {
                        OffsetReset::Earliest => log_start,
                        OffsetReset::Latest => log_end,
                        OffsetReset::None => {
                            return Err(LogError::OffsetOutOfRange {
                                topic: tp.topic.clone(),
                                partition: tp.partition,
                                offset: pos,
                                log_start,
                                log_end,
                            });
                        }
                    };
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, from = pos, to = reset, "Position out of range; reset.");
                    self.positions.insert(tp.clone(), reset);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if r.data.is_empty() {
                let bound = match self.config.isolation {
                    Isolation::ReadCommitted => r.last_stable_offset,
                    Isolation::ReadUncommitted => r.high_watermark,
                };
                if pos < bound {
                    // Nothing from `pos` up to the visible end: a gap left by compaction or
                    // lost records. The next existing offset is at or past the end.
                    self.positions.insert(tp.clone(), bound);
                    any = true;
                }
                continue;
            }
            let (records, next) =
                decode_fetch(&r, self.config.isolation).map_err(|source| LogError::Batch {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    source,
                })?;
            // Skip records before the position (a fetch starts at a batch boundary).
            let records: VecDeque<StoredRecord> =
                records.into_iter().filter(|r| r.offset >= pos).collect();
            if records.is_empty() {
                // Only control or aborted batches: move past them.
                self.positions.insert(tp.clone(), next.max(pos));
                any = true;
                continue;
            }
            any = true;
            self.buffers.insert(tp, (records, next));
        }
        Ok(any)
    }

    fn drain(&mut self, max: usize) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        let keys: Vec<TopicPartition> = self.buffers.keys().cloned().collect();
        if keys.is_empty() {
            return out;
        }
        let n = keys.len();
        for i in 0..n {
            let tp = &keys[(self.cursor + i) % n];
            if self.paused.contains(tp) {
                continue;
            }
            let topic = self.topic_arc(&tp.topic);
            let Some((buf, end)) = self.buffers.get_mut(tp) else {
                continue;
            };
            while out.len() < max {
                let Some(r) = buf.pop_front() else { break };
                // Once the last record is out, the position moves past the markers after
                // it too, so lag reads 0 when everything readable was read.
                let next = if buf.is_empty() { *end } else { r.offset + 1 };
                self.positions.insert(tp.clone(), next.max(r.offset + 1));
                out.push(ConsumerRecord {
                    topic: Arc::clone(&topic),
                    partition: tp.partition,
                    offset: r.offset,
                    timestamp: r.record.timestamp,
                    key: r.record.key,
                    value: r.record.value,
                    headers: r.record.headers,
                });
            }
            if out.len() >= max {
                break;
            }
        }
        self.cursor = self.cursor.wrapping_add(1);
        self.buffers.retain(|_, b| !b.0.is_empty());
        out
    }

    /// Returns the next records, waiting up to `timeout` for some to arrive. Keeps group
    /// membership alive; call it at least once per session timeout.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.poll_until(timeout, &|| false)
    }

    /// [`Consumer::poll`] that also returns (empty) as soon as `stopped()` is true. Whoever
    /// makes it true then calls [`Log::wake_waiters`], which ends the wait at once: a
    /// stopping task's poll does not sit out its timeout.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.subscription.is_empty()
                && self
                    .last_heartbeat
                    .is_none_or(|t| t.elapsed() >= self.config.heartbeat_interval)
            {
                self.heartbeat()?;
            }
            if self.config.enable_auto_commit
                && self.last_auto_commit.elapsed() >= self.config.auto_commit_interval
            {
                self.commit()?;
            }
            let generation = self.log.append_generation();
            let moved = self.fill()?;
            let out = self.drain(self.config.max_poll_records);
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline || stopped() {
                return Ok(out);
            }
            if moved {
                // A position moved past a gap or markers without records: return now (empty)
                // rather than wait for an append. The caller sees the new positions at once
                // (its lag changed: a reader merging partitions by time was waiting for this
                // partition) and polls again.
                return Ok(out);
            }
            let mut wait = deadline - now;
            if !self.subscription.is_empty() {
                wait = wait.min(self.config.heartbeat_interval);
            }
            self.log.wait_for_append(generation, wait);
        }
    }

    /// Commits the current position of every assigned partition.
    pub fn commit(&mut self) -> Result<()> {
        let offsets: Vec<(TopicPartition, i64)> = self
            .assigned
            .iter()
            .filter_map(|tp| self.positions.get(tp).map(|o| (tp.clone(), *o)))
            .collect();
        self.commit_offsets(&offsets)
    }

    /// Commits explicit offsets (each the next offset to read).
    pub fn commit_offsets(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let group = self.group()?;
        self.last_auto_commit = Instant::now();
        let member = self.member.as_ref().map(|m| (m.id.as_str(), m.epoch));
        self.log.commit_offsets(&group, member, offsets)
    }

    /// Lag per assigned partition: log end (last stable offset for read_committed) minus
    /// position.
    pub fn lag(&self) -> Result<Vec<(TopicPartition, i64)>> {
        let mut out = Vec::new();
        for tp in &self.assigned {
            let end = self.end_offset(tp)?;
            let pos = self.positions.get(tp).copied().unwrap_or(end);
            out.push((tp.clone(), (end - pos).max(0)));
        }
        Ok(out)
    }

    /// Leaves the group (committing first with auto-commit), freeing its partitions at once.
    pub fn close(mut self) -> Result<()> {
        self.leave()
    }

    fn leave(&mut self) -> Result<()> {
        if let Some(m) = self.member.take() {
            let group = self.group()?;
            if self.config.enable_auto_commit {
                let offsets: Vec<(TopicPartition, i64)> = self
                    .assigned
                    .iter()
                    .filter_map(|tp| self.positions.get(tp).map(|o| (tp.clone(), *o)))
                    .collect();
                self.log
                    .commit_offsets(&group, Some((&m.id, m.epoch)), &offsets)?;
            }
            self.log.group_leave(&group, &m.id)?;
            self.revoke_all();
        }
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            tracing::debug!(error = %e, "Leaving the group on drop failed; the session timeout will free the partitions.");
        }
    }
}
