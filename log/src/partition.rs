//! One partition: an ordered list of segments with offsets, producer and transaction state,
//! group-committed fsync, fetch, offset lookup, retention and compaction.
//!
//! ```text
//!  append ──► check producer seq/epoch ──► assign offsets ──► active segment ──► HW = LEO
//!                                                              │ roll by size/age
//!  fetch(offset) ─► floor segment ─► index ─► scan headers ─► read up to HW / LSO
//! ```
//!
//! Two locks: `state` guards the segments and counters and is held only for in-memory work and
//! short page-cache writes; `sync` coordinates fsyncs so that many appenders waiting for
//! durability share one (the first waiter fsyncs for everyone who appended before it started).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::batch::{
    BatchBuilder, BatchHeader, BatchOptions, ControlType, decode_records, encode_control_batch,
    verify_crc,
};
use crate::checkpoint::{self, Checkpoint, DataLoss, OnDisk};
use crate::config::{FsyncPolicy, TopicConfig};
use crate::epochs::LeaderEpochs;
use crate::error::{LogError, Result};
use crate::producer_state::{AbortedTxn, ProducerStates, SequenceCheck, SequenceError};
use crate::record::now_ms;
use crate::remote::manifest::{Manifest, RemoteSegment};
use crate::remote::{READ_CHUNK, RemoteTier};
use crate::segment::{Segment, lookup, lookup_time};

/// Which records a reader may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark, including open and aborted transactions.
    ReadUncommitted,
    /// Only committed data, up to the last stable offset.
    #[default]
    ReadCommitted,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read_committed" => Ok(Isolation::ReadCommitted),
            "read_uncommitted" => Ok(Isolation::ReadUncommitted),
            o => Err(format!("'{o}' is not read_committed or read_uncommitted")),
        }
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// True when the batch was a retry of one already appended (nothing was written).
    pub duplicate: bool,
}

/// The answer to a fetch.
#[derive(Debug, Clone)]
pub struct FetchResult {
    /// Whole record batches, concatenated (possibly none).
    pub data: Bytes,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's last stable offset.
    pub last_stable_offset: i64,
    /// The first offset still held.
    pub log_start_offset: i64,
    /// For read_committed: aborted transactions overlapping the returned range.
    pub aborted: Vec<AbortedTxn>,
}

impl FetchResult {
    /// Whether the batch with header `h` belongs to one of the aborted transactions this
    /// fetch names (what a read_committed reader skips).
    pub fn is_aborted(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && self.aborted.iter().any(|a| {
                a.producer_id == h.producer_id
                    && a.first_offset <= h.base_offset
                    && h.base_offset <= a.last_offset
            })
    }
}

/// What a position lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset held.
    Earliest,
    /// The offset the next record will get (for read_committed: the last stable offset).
    Latest,
    /// The first offset whose record timestamp is at least this.
    Timestamp(i64),
}

/// A snapshot of a partition for describe and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// First offset held.
    pub log_start_offset: i64,
    /// Next offset to be written.
    pub log_end_offset: i64,
    /// Offset up to which records are visible to read_uncommitted readers.
    pub high_watermark: i64,
    /// Offset up to which records are visible to read_committed readers.
    pub last_stable_offset: i64,
    /// Leader epoch (always 0 on one node; kept so replication fits without a format change).
    pub leader_epoch: i32,
    /// Number of segments.
    pub segments: usize,
    /// Bytes on disk in `.log` files.
    pub size_bytes: u64,
    /// The first offset held on local disk (above the log start when older segments are
    /// in remote storage only).
    pub local_log_start_offset: i64,
    /// Offsets held in remote storage, `start..end` (tiered topics; `None` when nothing was
    /// uploaded).
    pub remote: Option<(i64, i64)>,
    /// Segments in remote storage.
    pub remote_segments: usize,
    /// Bytes in remote storage.
    pub remote_size_bytes: u64,
}

/// Counters of a partition's appends since open, showing how well group commit shares writes
/// and fsyncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Batches appended (data and markers).
    pub batches: u64,
    /// `write` calls to segment files.
    pub writes: u64,
    /// fsyncs of the active segment.
    pub fsyncs: u64,
}

/// Result of one compaction pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments rewritten.
    pub segments: usize,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes before and after.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
}

#[derive(Debug)]
struct State {
    config: Arc<TopicConfig>,
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    high_watermark: i64,
    leader_epoch: i32,
    producers: ProducerStates,
    dirty: bool,
    /// Offset below which the log has been compacted since open.
    cleaned_up_to: i64,
    /// Timestamp of the oldest tombstone the last compaction kept: once it passes
    /// `delete.retention.ms`, the clean part is compacted again to drop it.
    oldest_kept_tombstone: Option<i64>,
    /// Segments uploaded to remote storage (tiered topics), as `remote.json` lists them.
    remote: Manifest,
    /// Each leader epoch's first offset (KIP-101).
    epochs: LeaderEpochs,
    /// A replica of a replicated topic: the high watermark moves only when the replication
    /// layer says every in-sync replica has the records, not at each append.
    replicated: bool,
    /// A follower: only the leader's batches are appended ([`Partition::append_replicated`]);
    /// a write of its own would make this copy diverge from the leader's.
    follower: bool,
    /// The log end when this copy last became the leader in this process: every record a
    /// former leader (or this node before a restart) acknowledged is below it.
    lead_start: i64,
}

impl State {
    fn active(&self) -> &Segment {
        // Invariant: a partition always has at least one segment (created on open).
        self.segments
            .values()
            .next_back()
            .expect("partition has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("partition has an active segment")
    }
    fn leo(&self) -> i64 {
        self.active().next_offset()
    }
    fn lso(&self) -> i64 {
        self.producers
            .first_unstable_offset()
            .unwrap_or(self.high_watermark)
            .min(self.high_watermark)
    }
    /// The first offset on local disk.
    fn local_start(&self) -> i64 {
        self.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(0)
            .max(self.log_start_offset)
    }
    /// Remote segments with no local copy (those below the first local segment), including
    /// any below the log start that wait for deletion.
    fn remote_only(&self) -> impl Iterator<Item = &RemoteSegment> {
        let first_local = self.segments.keys().next().copied().unwrap_or(i64::MAX);
        self.remote
            .segments
            .iter()
            .filter(move |r| r.base < first_local)
    }

    /// The remote segment to read `offset` from, when it is no longer on local disk.
    fn remote_for(&self, offset: i64) -> Option<RemoteSegment> {
        let first_local = *self.segments.keys().next()?;
        self.remote
            .find(offset)
            .filter(|r| offset < first_local && r.base < first_local)
            .cloned()
    }
}

/// A partition's place in remote storage.
#[derive(Debug)]
struct RemoteHandle {
    tier: Arc<RemoteTier>,
    /// `<prefix>/<topic>-<topic id>/<partition>`.
    path: String,
}

/// The last range read from a remote segment: consumers read on from where they stopped,
/// so one request to the store serves many fetches.
#[derive(Debug)]
struct Chunk {
    stem: String,
    start: u64,
    data: Bytes,
}

impl Chunk {
    fn covers(&self, stem: &str, pos: u64, len: u64) -> bool {
        self.stem == stem && pos >= self.start && pos + len <= self.start + self.data.len() as u64
    }
    fn slice(&self, pos: u64, len: u64) -> Bytes {
        let at = (pos - self.start) as usize;
        self.data.slice(at..at + len as usize)
    }
}

/// A batch waiting in the append queue.
#[derive(Debug)]
struct Queued {
    ticket: u64,
    batch: Vec<u8>,
}

/// The append queue of group commit, and results for appenders whose batch another thread
/// wrote.
#[derive(Debug, Default)]
struct AppendQueue {
    next_ticket: u64,
    items: Vec<Queued>,
    results: HashMap<u64, Result<AppendInfo>>,
}

/// Batches numbered and checked, to be written with one write.
#[derive(Debug, Default)]
struct Group {
    buf: Vec<u8>,
    headers: Vec<(u64, BatchHeader)>,
    producers: Vec<i64>,
}

#[derive(Debug, Default)]
struct SyncState {
    synced_to: i64,
    syncing: bool,
}

/// One partition of a topic.
#[derive(Debug)]
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    dir: PathBuf,
    fsync: FsyncPolicy,
    state: Mutex<State>,
    queue: Mutex<AppendQueue>,
    stats: [AtomicU64; 3],
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Notified when the high watermark moves or leadership changes (acks=all waiters).
    hw_moved: Condvar,
    /// Held for a whole compaction pass: two cleaners at once (housekeeping and an explicit
    /// call) would write the same `.cleaned` file and swap segments under each other.
    cleaner: Mutex<()>,
    /// The last checkpoint written. Lock order: this before `state`, so writers of the
    /// checkpoint (housekeeping, retention, close) never write an older one over a newer one.
    checkpointed: Mutex<Checkpointed>,
    /// Data loss found on open, until the log takes it.
    detected: Mutex<Vec<DataLoss>>,
    /// Segments rolled, and how many of those the last checkpoint had seen: a roll is
    /// checkpointed at once (not at the next housekeeping round), so files deleted after a
    /// kill that follows a roll are found missing.
    rolls: AtomicU64,
    rolls_checkpointed: AtomicU64,
    /// The remote storage, for tiered topics (set once, after open).
    tier: OnceLock<RemoteHandle>,
    /// The read-ahead of remote reads. Held across a read from the store, so remote readers
    /// of one partition take turns.
    chunk: Mutex<Option<Chunk>>,
    /// Held for a whole upload: the upload thread and an explicit call never upload the same
    /// segment at once.
    uploader: Mutex<()>,
}

#[derive(Debug)]
struct Checkpointed {
    last: Option<Checkpoint>,
    retired: bool,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`. With `recover`, the active segment is
    /// validated batch by batch and a torn tail truncated (after an unclean shutdown).
    pub fn open(
        topic: Arc<str>,
        id: u32,
        dir: &Path,
        config: Arc<TopicConfig>,
        fsync: FsyncPolicy,
        recover: bool,
    ) -> Result<Partition> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io("create partition dir", dir, e))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
            let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".cleaned") || name.ends_with(".tmp") {
                // Left by a compaction or index write that a crash interrupted; the segment
                // it was replacing is still whole.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let checkpoint = Checkpoint::read(dir);
        let remote = Manifest::read(dir)?;
        let mut segments = BTreeMap::new();
        let mut producers = ProducerStates::default();
        let last = bases.last().copied();
        let mut damage = None;
        for base in bases {
            let is_last = Some(base) == last;
            let validate = recover && is_last;
            let mut opened = Segment::open(dir, base, config.index_interval_bytes, validate)?;
            if let Some(d) = opened.damage.as_ref().filter(|_| !validate) {
                if !is_last {
                    return Err(LogError::DamagedSegment {
                        topic: topic.to_string(),
                        partition: id,
                        path: d.path.clone(),
                        position: d.position,
                        offset: d.offset,
                        reason: d.reason.clone(),
                    });
                }
                // After a clean shutdown the active segment should be whole. It takes appends
                // like after a crash, so it is repaired the same way, but loudly: whatever it
                // loses is recorded as data loss below.
                tracing::error!(
                    topic = %topic, partition = id, path = %d.path.display(), position = d.position,
                    offset = d.offset, reason = %d.reason,
                    "The active segment is damaged although the log was shut down cleanly; cutting it at the damage as after a crash."
                );
                opened = Segment::open(dir, base, config.index_interval_bytes, true)?;
            }
            if is_last {
                damage = opened.damage.take();
            }
            for b in &opened.batches {
                replay(&mut producers, &opened.segment, b)?;
            }
            segments.insert(base, opened.segment);
        }
        // Segments in remote storage only count as present: tiering deleted them locally.
        let first_local = segments.keys().next().copied().unwrap_or(i64::MAX);
        let disk: Vec<OnDisk> = remote
            .segments
            .iter()
            .filter(|r| r.base < first_local)
            .map(|r| OnDisk {
                base: r.base,
                end: r.end,
            })
            .chain(segments.values().map(|s| OnDisk {
                base: s.base_offset,
                end: s.next_offset(),
            }))
            .collect();
        let reconciled = checkpoint::reconcile(checkpoint.as_ref(), &disk, damage.as_ref());
        let log_start_offset = reconciled.log_start_offset;
        let leo = reconciled.log_end_offset;
        // Segments wholly below the log start: retention checkpointed their removal, then
        // the process stopped before it deleted the files.
        while segments.len() > 1 {
            match segments.first_key_value() {
                Some((&base, s))
                    if base < log_start_offset && s.next_offset() <= log_start_offset =>
                {
                    if let Some(s) = segments.remove(&base) {
                        s.delete_files();
                    }
                }
                _ => break,
            }
        }
        producers.trim_below(log_start_offset);
        let active_end = segments.values().next_back().map(Segment::next_offset);
        if active_end != Some(leo) {
            // The files end before offsets already handed out: appends continue after them,
            // in a segment of its own whose name keeps the end even without a checkpoint.
            if let Some(a) = segments.values().next_back() {
                a.sync()?;
                a.write_index_files()?;
            }
            segments.insert(leo, Segment::create(dir, leo, config.index_interval_bytes)?);
        }
        let detected_at = now_ms();
        let detected: Vec<DataLoss> = reconciled
            .lost
            .into_iter()
            .map(|(from, to, reason)| {
                tracing::error!(
                    topic = %topic, partition = id, from, to, %reason,
                    "Records were lost: offsets from..to are gone and will not be reused. Restore the partition from a backup if you need them."
                );
                DataLoss {
                    topic: topic.to_string(),
                    partition: id,
                    from,
                    to,
                    reason,
                    detected_at,
                }
            })
            .collect();
        let epochs = LeaderEpochs::load(dir)?;
        // A replica of a replicated topic reopens as a follower that takes no writes until
        // the cluster tells it whether it leads, and with the high watermark it had: records
        // past it may still be cut by a new leader, so consumers do not see them yet.
        let replica_hw = checkpoint.as_ref().and_then(|c| c.high_watermark);
        let state = State {
            config,
            segments,
            log_start_offset,
            high_watermark: replica_hw.map_or(leo, |hw| hw.clamp(log_start_offset, leo)),
            leader_epoch: epochs.latest().unwrap_or(0),
            epochs,
            replicated: replica_hw.is_some(),
            follower: replica_hw.is_some(),
            lead_start: i64::MAX,
            producers,
            dirty: false,
            cleaned_up_to: log_start_offset,
            oldest_kept_tombstone: None,
            remote,
        };
        Ok(Partition {
            topic,
            id,
            dir: dir.to_path_buf(),
            fsync,
            state: Mutex::new(state),
            queue: Mutex::new(AppendQueue::default()),
            stats: Default::default(),
            sync: Mutex::new(SyncState {
                synced_to: leo,
                syncing: false,
            }),
            synced: Condvar::new(),
            hw_moved: Condvar::new(),
            cleaner: Mutex::new(()),
            checkpointed: Mutex::new(Checkpointed {
                last: None,
                retired: false,
            }),
            detected: Mutex::new(detected),
            rolls: AtomicU64::new(0),
            rolls_checkpointed: AtomicU64::new(0),
            tier: OnceLock::new(),
            chunk: Mutex::new(None),
            uploader: Mutex::new(()),
        })
    }

    /// Gives the partition its place in remote storage (once, after open): uploads and
    /// remote reads need it.
    pub(crate) fn attach_remote(&self, tier: Arc<RemoteTier>, topic_id: &str) {
        let path = tier.partition_path(&self.topic, topic_id, self.id);
        let _ = self.tier.set(RemoteHandle { tier, path });
    }

    /// Data loss found when the partition was opened, handed out once (the log records it).
    pub(crate) fn take_detected_losses(&self) -> Vec<DataLoss> {
        std::mem::take(&mut *self.detected.lock())
    }

    /// Writes the offsets checkpoint when it changed since the last write: the log start,
    /// the log end and the segments, which a later open compares its files with.
    pub fn checkpoint(&self) -> Result<()> {
        let mut cp = self.checkpointed.lock();
        if cp.retired {
            return Ok(());
        }
        let now = {
            let st = self.state.lock();
            Checkpoint {
                log_start_offset: st.log_start_offset,
                log_end_offset: st.leo(),
                high_watermark: st.replicated.then_some(st.high_watermark),
                // Remote segments too: a manifest lost with the data it lists is data loss.
                segments: st
                    .remote_only()
                    .map(|r| r.base)
                    .chain(st.segments.keys().copied())
                    .collect(),
            }
        };
        if cp.last.as_ref() == Some(&now) {
            return Ok(());
        }
        now.write(&self.dir)?;
        cp.last = Some(now);
        Ok(())
    }

    /// Stops checkpoint writes for good (the topic is being deleted): a write racing the
    /// deletion must not land in a new topic of the same name.
    pub(crate) fn retire(&self) {
        self.checkpointed.lock().retired = true;
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Applies a changed topic config (alter).
    pub fn set_config(&self, config: Arc<TopicConfig>) {
        self.state.lock().config = config;
    }

    fn batch_err(&self, source: crate::batch::BatchError) -> LogError {
        LogError::Batch {
            topic: self.topic.to_string(),
            partition: self.id,
            source,
        }
    }

    /// Appends one record batch (built by a producer, base offset unset) and waits for
    /// durability as the fsync policy says.
    ///
    /// Group commit: concurrent appenders queue their batches; whichever gets the partition
    /// lock first writes everything queued so far in one write (and later one fsync), and the
    /// others find their result waiting when they get the lock.
    pub fn append(&self, batch: Vec<u8>) -> Result<AppendInfo> {
        let header = BatchHeader::parse(&batch).map_err(|e| self.batch_err(e))?;
        if header.total_size() != batch.len() {
            return Err(LogError::InvalidRecord {
                topic: self.topic.to_string(),
                partition: self.id,
                reason: format!(
                    "batch length field says {} bytes, got {}",
                    header.total_size(),
                    batch.len()
                ),
            });
        }
        if header.is_control() {
            return Err(LogError::InvalidRecord {
                topic: self.topic.to_string(),
                partition: self.id,
                reason: "producers may not write control batches".into(),
            });
        }
        verify_crc(&batch).map_err(|e| self.batch_err(e))?;
        let ticket = {
            let mut q = self.queue.lock();
            let ticket = q.next_ticket;
            q.next_ticket += 1;
            q.items.push(Queued { ticket, batch });
            ticket
        };
        let result = {
            let mut st = self.state.lock();
            // A leader that held the lock before us may have written our batch already; if
            // not, it is still queued and we lead: results for everything we take are stored
            // before the lock is released, so no appender waits in vain.
            let done = self.queue.lock().results.remove(&ticket);
            match done {
                Some(r) => r,
                None => {
                    let items = std::mem::take(&mut self.queue.lock().items);
                    let mut mine = None;
                    let mut others = Vec::new();
                    for (t, r) in self.write_group(&mut st, items) {
                        if t == ticket {
                            mine = Some(r)
                        } else {
                            others.push((t, r))
                        }
                    }
                    self.queue.lock().results.extend(others);
                    mine.unwrap_or_else(|| {
                        Err(LogError::InvalidRecord {
                            topic: self.topic.to_string(),
                            partition: self.id,
                            reason: "internal error: the batch vanished from the append queue"
                                .into(),
                        })
                    })
                }
            }
        };
        let info = result?;
        if !info.duplicate {
            self.after_append(info.last_offset + 1)?;
        }
        Ok(info)
    }

    /// Validates, numbers and writes queued batches, sharing one write per run of batches
    /// that fit the active segment. Returns each ticket's result.
    fn write_group(&self, st: &mut State, items: Vec<Queued>) -> Vec<(u64, Result<AppendInfo>)> {
        let mut out = Vec::with_capacity(items.len());
        let mut group = Group::default();
        for Queued { ticket, mut batch } in items {
            if st.follower {
                out.push((ticket, Err(self.not_leader())));
                continue;
            }
            let max = st.config.max_message_bytes;
            if batch.len() > max as usize {
                out.push((
                    ticket,
                    Err(LogError::MessageTooLarge {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        size: batch.len(),
                        max,
                    }),
                ));
                continue;
            }
            if st.config.cleanup_policy.compact {
                match decode_records(&batch) {
                    Err(e) => {
                        out.push((ticket, Err(self.batch_err(e))));
                        continue;
                    }
                    Ok(records) if records.iter().any(|r| r.record.key.is_none()) => {
                        out.push((
                            ticket,
                            Err(LogError::InvalidRecord {
                                topic: self.topic.to_string(),
                                partition: self.id,
                                reason: "a compacted topic needs a key on every record".into(),
                            }),
                        ));
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            let header = match BatchHeader::parse(&batch) {
                Ok(h) => h,
                Err(e) => {
                    out.push((ticket, Err(self.batch_err(e))));
                    continue;
                }
            };
            // Producer state is applied when a group is written; a second batch of the same
            // producer must see the first, so the group is written before it.
            if header.producer_id >= 0 && group.producers.contains(&header.producer_id) {
                self.flush_group(st, &mut group, &mut out);
            }
            match st.producers.check(&header) {
                Ok(SequenceCheck::Append) => {}
                Ok(SequenceCheck::Duplicate {
                    base_offset,
                    last_offset,
                }) => {
                    out.push((
                        ticket,
                        Ok(AppendInfo {
                            base_offset,
                            last_offset,
                            duplicate: true,
                        }),
                    ));
                    continue;
                }
                Err(e) => {
                    out.push((ticket, Err(self.sequence_error(&header, e))));
                    continue;
                }
            }
            let base = group
                .headers
                .last()
                .map_or_else(|| st.leo(), |(_, h)| h.next_offset());
            crate::batch::set_base_offset(&mut batch, base);
            crate::batch::set_partition_leader_epoch(&mut batch, st.leader_epoch);
            let header = match BatchHeader::parse(&batch) {
                Ok(h) => h,
                Err(e) => {
                    out.push((ticket, Err(self.batch_err(e))));
                    continue;
                }
            };
            if self.needs_roll(st, &group, &header, batch.len()) {
                self.flush_group(st, &mut group, &mut out);
                if let Err(e) = self.roll(st) {
                    out.push((ticket, Err(e)));
                    continue;
                }
            }
            if header.producer_id >= 0 {
                group.producers.push(header.producer_id);
            }
            group.buf.extend_from_slice(&batch);
            group.headers.push((ticket, header));
        }
        self.flush_group(st, &mut group, &mut out);
        out
    }

    /// Writes a group with one write and applies it to producer state and the watermarks.
    fn flush_group(
        &self,
        st: &mut State,
        group: &mut Group,
        out: &mut Vec<(u64, Result<AppendInfo>)>,
    ) {
        if group.headers.is_empty() {
            return;
        }
        let headers: Vec<BatchHeader> = group.headers.iter().map(|(_, h)| *h).collect();
        match st.active_mut().append_many(&group.buf, &headers) {
            Ok(()) => {
                self.stats[0].fetch_add(headers.len() as u64, Ordering::Relaxed);
                self.stats[1].fetch_add(1, Ordering::Relaxed);
                for (ticket, h) in &group.headers {
                    st.producers.on_data(h);
                    out.push((
                        *ticket,
                        Ok(AppendInfo {
                            base_offset: h.base_offset,
                            last_offset: h.last_offset(),
                            duplicate: false,
                        }),
                    ));
                }
                // Alone, every appended record is "replicated" at once.
                if !st.replicated {
                    st.high_watermark = st.leo();
                }
                st.dirty = true;
            }
            Err(e) => {
                let (path, kind, msg) = match &e {
                    LogError::Io { path, source, .. } => {
                        (path.clone(), source.kind(), source.to_string())
                    }
                    other => (
                        self.dir.clone(),
                        std::io::ErrorKind::Other,
                        other.to_string(),
                    ),
                };
                for (ticket, _) in &group.headers {
                    out.push((
                        *ticket,
                        Err(LogError::io(
                            "append to segment",
                            path.clone(),
                            std::io::Error::new(kind, msg.clone()),
                        )),
                    ));
                }
            }
        }
        group.buf.clear();
        group.headers.clear();
        group.producers.clear();
    }

    fn sequence_error(&self, h: &BatchHeader, e: SequenceError) -> LogError {
        match e {
            SequenceError::Fenced { current_epoch } => LogError::ProducerFenced {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current_epoch,
            },
            SequenceError::OutOfOrder { expected } => LogError::OutOfOrderSequence {
                topic: self.topic.to_string(),
                partition: self.id,
                producer_id: h.producer_id,
                expected,
                got: h.base_sequence,
            },
        }
    }

    /// Writes one batch that already has its offsets to the active segment, and applies it
    /// to the producer and transaction state; the caller holds the state lock.
    fn write_numbered(&self, st: &mut State, batch: &[u8], header: &BatchHeader) -> Result<()> {
        st.active_mut().append(batch, header)?;
        self.stats[0].fetch_add(1, Ordering::Relaxed);
        self.stats[1].fetch_add(1, Ordering::Relaxed);
        if header.is_control() {
            let (kind, coordinator_epoch) =
                crate::batch::decode_control(batch).map_err(|e| self.batch_err(e))?;
            st.producers.on_marker(
                header.producer_id,
                header.producer_epoch,
                kind == ControlType::Commit,
                header.base_offset,
                coordinator_epoch,
            );
        } else {
            st.producers.on_data(header);
        }
        Ok(())
    }

    fn not_leader(&self) -> LogError {
        LogError::NotLeader {
            topic: self.topic.to_string(),
            partition: self.id,
            leader: String::new(),
        }
    }

    /// Assigns offsets, rolls if needed and writes; the caller holds the state lock.
    fn append_locked(&self, st: &mut State, batch: &mut [u8]) -> Result<AppendInfo> {
        if st.follower {
            return Err(self.not_leader());
        }
        let leo = st.leo();
        crate::batch::set_base_offset(batch, leo);
        crate::batch::set_partition_leader_epoch(batch, st.leader_epoch);
        let header = BatchHeader::parse(batch).map_err(|e| self.batch_err(e))?;
        if self.needs_roll(st, &Group::default(), &header, batch.len()) {
            self.roll(st)?;
        }
        self.write_numbered(st, batch, &header)?;
        // Alone, every appended record is "replicated" at once.
        if !st.replicated {
            st.high_watermark = st.leo();
        }
        st.dirty = true;
        Ok(AppendInfo {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
            duplicate: false,
        })
    }

    /// Whether `header` (of `len` bytes) must go to a new segment, counting the bytes of the
    /// group not yet written.
    fn needs_roll(&self, st: &State, group: &Group, header: &BatchHeader, len: usize) -> bool {
        let active = st.active();
        let size = active.size() + group.buf.len() as u64;
        if size == 0 {
            return false;
        }
        let too_big = size + len as u64 > st.config.segment_bytes;
        // As in Kafka, age is measured in record time (this batch against the segment's first
        // batch), so replaying old data does not roll a segment per batch.
        let first = active
            .first_batch_timestamp()
            .or(group.headers.first().map(|(_, h)| h.max_timestamp));
        let too_old = first.is_some_and(|first| {
            first >= 0 && header.max_timestamp - first >= st.config.segment_ms
        });
        // Index entries hold offsets and positions relative to the segment as u32.
        let overflow = header.last_offset() - active.base_offset > i64::from(u32::MAX)
            || size + len as u64 > u64::from(u32::MAX);
        too_big || too_old || overflow
    }

    fn roll(&self, st: &mut State) -> Result<()> {
        let active = st.active();
        // A closed segment is fsynced and indexed once, so crash recovery only has to check
        // the active segment.
        active.sync()?;
        active.write_index_files()?;
        let base = active.next_offset();
        tracing::debug!(topic = %self.topic, partition = self.id, base_offset = base, "Rolled a new segment.");
        let seg = Segment::create(&self.dir, base, st.config.index_interval_bytes)?;
        st.segments.insert(base, seg);
        self.rolls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Runs after an append, outside the state lock.
    fn after_append(&self, end: i64) -> Result<()> {
        if self.fsync == FsyncPolicy::Always {
            self.wait_durable(end)?;
        }
        let rolls = self.rolls.load(Ordering::SeqCst);
        if self.rolls_checkpointed.swap(rolls, Ordering::SeqCst) != rolls {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Blocks until everything below `end` is fsynced; concurrent callers share one fsync.
    fn wait_durable(&self, end: i64) -> Result<()> {
        let mut s = self.sync.lock();
        loop {
            if s.synced_to >= end {
                return Ok(());
            }
            if !s.syncing {
                break;
            }
            self.synced.wait(&mut s);
        }
        s.syncing = true;
        drop(s);
        let result = self.sync_now();
        let mut s = self.sync.lock();
        s.syncing = false;
        if let Ok(upto) = result {
            s.synced_to = s.synced_to.max(upto);
        }
        self.synced.notify_all();
        result.map(|_| ())
    }

    /// Fsyncs the active segment; returns the offset everything below which is durable.
    fn sync_now(&self) -> Result<i64> {
        let (file, path, upto) = {
            let mut st = self.state.lock();
            st.dirty = false;
            let a = st.active();
            (a.file(), a.log_path(), a.next_offset())
        };
        file.sync_data()
            .map_err(|e| LogError::io("fsync segment", path, e))?;
        self.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(upto)
    }

    /// Fsyncs if anything was appended since the last fsync (the interval policy's timer).
    pub fn sync_if_dirty(&self) -> Result<()> {
        let end = {
            let st = self.state.lock();
            if !st.dirty {
                return Ok(());
            }
            st.leo()
        };
        self.wait_durable(end)
    }

    /// Appends a transaction marker for `producer_id` if it has an open transaction here;
    /// otherwise only raises the producer's epoch to `epoch`, fencing older instances.
    /// Returns the marker's offset, or `None` when there was nothing to end.
    pub fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<Option<i64>> {
        let offset = {
            let mut st = self.state.lock();
            if let Some(current) = st.producers.current_epoch(producer_id) {
                if epoch < current {
                    return Err(LogError::ProducerFenced {
                        producer_id,
                        epoch,
                        current_epoch: current,
                    });
                }
            }
            // Kafka's coordinator epoch: a marker a former coordinator sent before a newer
            // one ended the producer's transaction here must not end its next one.
            let current = st.producers.coordinator_epoch(producer_id);
            if coordinator_epoch < current {
                return Err(LogError::CoordinatorFenced {
                    producer_id,
                    coordinator_epoch,
                    current,
                });
            }
            if !st.producers.has_open_txn(producer_id) {
                // Nothing to end, but a zombie must not open a transaction here later, nor
                // an older coordinator end the next one.
                st.producers.fence(producer_id, epoch, coordinator_epoch);
                return Ok(None);
            }
            let kind = if commit {
                ControlType::Commit
            } else {
                ControlType::Abort
            };
            let mut batch =
                encode_control_batch(kind, producer_id, epoch, coordinator_epoch, now_ms());
            self.append_locked(&mut st, &mut batch)?.base_offset
        };
        self.after_append(offset + 1)?;
        Ok(Some(offset))
    }

    /// The latest epoch seen here for a producer id.
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.state.lock().producers.current_epoch(producer_id)
    }

    /// Producer ids with a transaction open in this partition.
    pub fn open_transactions(&self) -> Vec<i64> {
        self.state.lock().producers.open_txn_producers()
    }

    /// Whether offset `offset` of `producer_id` is part of an aborted transaction.
    pub fn is_aborted(&self, producer_id: i64, offset: i64) -> bool {
        self.state.lock().producers.is_aborted(producer_id, offset)
    }

    /// Makes this partition the leader of a replicated topic in `epoch`: its appends carry
    /// the epoch, and its high watermark moves only through [`Self::advance_high_watermark`].
    pub fn become_leader(&self, epoch: i32) -> Result<()> {
        let mut st = self.state.lock();
        let first = !st.replicated;
        st.replicated = true;
        st.follower = false;
        st.leader_epoch = epoch;
        let leo = st.leo();
        st.lead_start = leo;
        if st.epochs.assign(epoch, leo) {
            st.epochs.save(&self.dir)?;
        }
        drop(st);
        if first {
            // Recorded at once: reopened, it is a replica before the cluster says anything.
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes this partition a follower of a replicated topic, led in `epoch`: it takes the
    /// leader's batches through [`Self::append_replicated`].
    pub fn become_follower(&self, epoch: i32) -> Result<()> {
        let mut st = self.state.lock();
        let first = !st.replicated;
        st.replicated = true;
        st.follower = true;
        st.leader_epoch = epoch;
        drop(st);
        // An acks=all writer waiting here learns that it will not be answered by this copy.
        self.hw_moved.notify_all();
        if first {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes a replica this node's own again (the node runs without its cluster): it takes
    /// writes, and everything it holds is readable. Whatever the cluster had past this
    /// copy stays with the cluster.
    pub fn detach(&self) -> Result<()> {
        let mut st = self.state.lock();
        st.replicated = false;
        st.follower = false;
        st.high_watermark = st.leo();
        drop(st);
        self.checkpoint()
    }

    /// Whether this copy follows another node's (it takes only its leader's batches).
    pub fn is_follower(&self) -> bool {
        let st = self.state.lock();
        st.replicated && st.follower
    }

    /// Whether this copy is a replica of a replicated topic (now or when last open).
    pub fn is_replica(&self) -> bool {
        self.state.lock().replicated
    }

    /// Empties the log and starts it again at `offset`: a follower whose log ends before its
    /// leader's log start (retention on the leader deleted what it still lacked) copies on
    /// from there, as Kafka's `truncateFullyAndStartAt`. Producer state and leader epochs go
    /// with the records; the offsets below `offset` are not a loss of this copy, they left
    /// the leader by retention.
    /// Refused unless this copy follows its leader in `epoch` and ends before `offset` (an
    /// answer from a former leader must not empty it).
    pub fn reset_to(&self, offset: i64, epoch: i32) -> Result<()> {
        let _cleaner = self.cleaner.lock();
        let mut cp = self.checkpointed.lock();
        let mut st = self.state.lock();
        let from = st.leo();
        if from >= offset {
            return Ok(());
        }
        if !st.follower || st.leader_epoch != epoch {
            return Err(self.not_leader());
        }
        // The checkpoint first: a crash before the files go reopens at the new start with
        // the old files below it (deleted then), never with files missing that it lists.
        let checkpoint = Checkpoint {
            log_start_offset: offset,
            log_end_offset: offset,
            segments: Vec::new(),
            high_watermark: st.replicated.then_some(offset),
        };
        checkpoint.write(&self.dir)?;
        cp.last = Some(checkpoint);
        for (_, seg) in std::mem::take(&mut st.segments) {
            seg.delete_files();
        }
        st.epochs = LeaderEpochs::default();
        st.epochs.save(&self.dir)?;
        let mut next = self.reread(&st)?;
        next.high_watermark = offset;
        *st = next;
        drop(st);
        let mut s = self.sync.lock();
        s.synced_to = offset;
        tracing::warn!(topic = %self.topic, partition = self.id, from, to = offset, "This copy ended before the leader's log start; it starts again there.");
        Ok(())
    }

    /// Moves the high watermark up to `offset` (never past the log end, never down); the
    /// high watermark after.
    pub fn advance_high_watermark(&self, offset: i64) -> i64 {
        let mut st = self.state.lock();
        let target = offset.min(st.leo());
        if target > st.high_watermark {
            st.high_watermark = target;
            self.hw_moved.notify_all();
        }
        st.high_watermark
    }

    /// The leader epoch this copy is in now (led or followed).
    pub fn leader_epoch(&self) -> i32 {
        self.state.lock().leader_epoch
    }

    /// Whether this copy leads a replicated topic's partition in `epoch` (the replication
    /// layer made it so, not only the metadata).
    pub fn leads(&self, epoch: i32) -> bool {
        let st = self.state.lock();
        st.replicated && !st.follower && st.leader_epoch == epoch
    }

    /// Whether this copy leads in `epoch` with a high watermark at or past its log end when
    /// it became the leader: then it covers every record a former leader (or this node,
    /// before a restart) acknowledged, all of which this copy, elected from the in-sync
    /// replicas, holds below that end. A new leader's high watermark lags until its
    /// followers fetch (a restarted one's is its checkpoint's), and a read below it would
    /// miss them.
    pub fn leads_settled(&self, epoch: i32) -> bool {
        let st = self.state.lock();
        st.replicated
            && !st.follower
            && st.leader_epoch == epoch
            && st.high_watermark >= st.lead_start
    }

    /// Waits until the high watermark reaches `end` (every in-sync replica has the offsets
    /// below it): an `acks=all` write made while this copy led in `epoch`. At once for a
    /// partition of this node alone; refused as soon as this copy is not the leader of that
    /// epoch any more (its records may have been cut and the offsets written again by
    /// another leader, so a high watermark past `end` would prove nothing); bounded by
    /// `timeout`.
    pub fn wait_high_watermark(
        &self,
        end: i64,
        epoch: i32,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        let deadline = start + timeout;
        let mut st = self.state.lock();
        loop {
            if !st.replicated {
                return Ok(());
            }
            if st.follower || st.leader_epoch != epoch {
                return Err(self.not_leader());
            }
            if st.high_watermark >= end {
                return Ok(());
            }
            if self.hw_moved.wait_until(&mut st, deadline).timed_out() && st.high_watermark < end {
                return Err(LogError::ReplicationTimeout {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    end,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
    }

    /// The log end offset: the next offset to be written.
    pub fn log_end_offset(&self) -> i64 {
        self.state.lock().leo()
    }

    /// Where `epoch` ended in this log (Kafka's OffsetForLeaderEpoch): the largest epoch at or
    /// below it and its end offset; `None` when this log knows no epoch that old.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let st = self.state.lock();
        if st.epochs.latest().is_none() {
            // Never replicated: one epoch, 0, from the start.
            return (epoch >= 0).then(|| (0, st.leo()));
        }
        st.epochs.end_offset_for(epoch, st.leo())
    }

    /// The latest leader epoch this log holds records of (or was led in).
    pub fn latest_epoch(&self) -> i32 {
        let st = self.state.lock();
        st.epochs.latest().unwrap_or(st.leader_epoch)
    }

    /// Appends a leader's batches as they are (offsets, epochs, producer ids): a follower's
    /// copy. Batches below the log end are skipped (fetched twice); a batch past it is a gap
    /// and an error. Returns the log end after.
    pub fn append_replicated(&self, mut batches: &[u8], epoch: i32) -> Result<i64> {
        let end = {
            let mut st = self.state.lock();
            // An answer of a leader this copy no longer follows (a long poll that outlived a
            // leader change) would make it diverge from the current leader.
            if !st.follower || st.leader_epoch != epoch {
                return Err(LogError::InvalidRequest(format!(
                    "{}-{}: records of leader epoch {epoch}, this copy follows epoch {}",
                    self.topic, self.id, st.leader_epoch
                )));
            }
            let mut epochs_changed = false;
            while !batches.is_empty() {
                let header = BatchHeader::parse(batches).map_err(|e| self.batch_err(e))?;
                let len = header.total_size();
                if len > batches.len() {
                    // A fetch answer may end with a partial batch: the rest comes next time.
                    break;
                }
                let (batch, rest) = batches.split_at(len);
                batches = rest;
                let leo = st.leo();
                if header.last_offset() < leo {
                    continue;
                }
                if header.base_offset != leo {
                    return Err(LogError::InvalidRecord {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        reason: format!(
                            "a replicated batch at offset {} does not continue the log, which ends at {leo}",
                            header.base_offset
                        ),
                    });
                }
                verify_crc(batch).map_err(|e| self.batch_err(e))?;
                if self.needs_roll(&st, &Group::default(), &header, len) {
                    self.roll(&mut st)?;
                }
                self.write_numbered(&mut st, batch, &header)?;
                epochs_changed |= st
                    .epochs
                    .assign(header.partition_leader_epoch, header.base_offset);
                st.dirty = true;
            }
            if epochs_changed {
                st.epochs.save(&self.dir)?;
            }
            st.leo()
        };
        self.after_append(end)?;
        Ok(end)
    }

    /// Cuts the log at `offset` (a follower dropping what a former leader wrote but never
    /// committed, KIP-101): every batch from the one holding `offset` on is deleted, and the
    /// offsets are written again by the leader's copies. Returns the new log end (the start of
    /// that batch). Producer and transaction state are rebuilt from what is left.
    pub fn truncate_to(&self, offset: i64) -> Result<i64> {
        let _cleaner = self.cleaner.lock();
        let mut cp = self.checkpointed.lock();
        let mut st = self.state.lock();
        let leo = st.leo();
        if offset >= leo {
            return Ok(leo);
        }
        let offset = offset.max(st.log_start_offset);
        // The cut: the start of the batch holding `offset` in the segment holding it.
        let mut cut = None;
        if let Some((&base, seg)) = st.segments.range(..=offset).next_back() {
            let at = seg.seek_from(seg.lookup(offset), offset)?;
            cut = Some(match at {
                Some((pos, h)) => (base, pos, h.base_offset.min(offset)),
                None => (base, seg.size(), seg.next_offset()),
            });
        }
        let (keep_base, pos, new_end) = cut.unwrap_or((offset, 0, offset));
        let doomed: Vec<i64> = st
            .segments
            .range(keep_base + 1..)
            .map(|(b, _)| *b)
            .collect();
        for base in doomed {
            if let Some(seg) = st.segments.remove(&base) {
                seg.delete_files();
            }
        }
        if let Some(seg) = st.segments.get(&keep_base) {
            seg.file()
                .set_len(pos)
                .map_err(|e| LogError::io("truncate segment", seg.log_path(), e))?;
            seg.file()
                .sync_all()
                .map_err(|e| LogError::io("truncate segment", seg.log_path(), e))?;
            // Its index files are stale; open rebuilds an active segment's from the data.
            for ext in ["index", "timeindex"] {
                let _ = std::fs::remove_file(
                    self.dir
                        .join(format!("{}.{ext}", crate::segment::file_stem(keep_base))),
                );
            }
        }
        st.epochs.truncate_from(new_end);
        st.epochs.save(&self.dir)?;
        let checkpoint = Checkpoint {
            log_start_offset: st.log_start_offset.min(new_end),
            log_end_offset: new_end,
            high_watermark: st.replicated.then_some(st.high_watermark.min(new_end)),
            segments: st
                .remote_only()
                .map(|r| r.base)
                .chain(st.segments.keys().copied())
                .collect(),
        };
        checkpoint.write(&self.dir)?;
        cp.last = Some(checkpoint);
        let mut next = self.reread(&st)?;
        next.high_watermark = st.high_watermark.min(next.leo());
        let end = next.leo();
        *st = next;
        drop(st);
        let mut s = self.sync.lock();
        s.synced_to = s.synced_to.min(end);
        tracing::info!(topic = %self.topic, partition = self.id, from = leo, to = end, "Truncated the log to the leader's.");
        Ok(end)
    }

    /// The state as the files hold it now (after a truncation or a reset rewrote them), with
    /// the replication role of `st` kept.
    fn reread(&self, st: &State) -> Result<State> {
        let fresh = Partition::open(
            Arc::clone(&self.topic),
            self.id,
            &self.dir,
            Arc::clone(&st.config),
            self.fsync,
            true,
        )?;
        let mut next = fresh.state.into_inner();
        next.replicated = st.replicated;
        next.follower = st.follower;
        next.leader_epoch = st.leader_epoch;
        Ok(next)
    }

    /// Reads whole batches from `offset`, about `max_bytes` (at least one batch if any).
    pub fn fetch(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<FetchResult> {
        self.read(offset, max_bytes, Some(isolation))
    }

    /// Reads whole batches from `offset` up to the log end, above the high watermark too: what
    /// a follower copies.
    pub fn fetch_replica(&self, offset: i64, max_bytes: usize) -> Result<FetchResult> {
        self.read(offset, max_bytes, None)
    }

    /// A fetch under `isolation`, or a replica's (`None`).
    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Option<Isolation>,
    ) -> Result<FetchResult> {
        let (bound, plan, remote, hw, lso, start, aborted) = {
            let st = self.state.lock();
            let leo = st.leo();
            if offset < st.log_start_offset || offset > leo {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    offset,
                    log_start: st.log_start_offset,
                    log_end: leo,
                });
            }
            let lso = st.lso();
            let bound = match isolation {
                Some(Isolation::ReadCommitted) => lso,
                Some(Isolation::ReadUncommitted) => st.high_watermark,
                None => leo,
            };
            let mut plan = None;
            let mut remote = None;
            if offset < bound {
                remote = st.remote_for(offset);
            }
            if offset < bound && remote.is_none() {
                // Compaction can leave gaps: the floor segment may end before `offset`.
                for seg in st
                    .segments
                    .range(..=offset)
                    .next_back()
                    .into_iter()
                    .map(|(_, s)| s)
                    .chain(st.segments.range(offset + 1..).map(|(_, s)| s))
                {
                    if let Some((pos, _)) = seg.seek_from(seg.lookup(offset), offset)? {
                        plan = Some((seg.file(), seg.log_path(), pos, seg.size()));
                        break;
                    }
                }
            }
            let aborted = match isolation {
                Some(Isolation::ReadCommitted) => st.producers.aborted_in(offset, bound),
                _ => Vec::new(),
            };
            (
                bound,
                plan,
                remote,
                st.high_watermark,
                lso,
                st.log_start_offset,
                aborted,
            )
        };
        let (data, aborted) = match (remote, plan) {
            (Some(seg), _) => {
                let data = self.read_remote(&seg, offset, max_bytes, bound)?;
                let aborted = match isolation {
                    Some(Isolation::ReadCommitted) => seg.aborted_in(offset, seg.end),
                    _ => Vec::new(),
                };
                (data, aborted)
            }
            (None, Some((file, path, pos, end))) => (
                read_batches(&file, &path, pos, end, max_bytes, bound)?,
                aborted,
            ),
            (None, None) => (Bytes::new(), aborted),
        };
        Ok(FetchResult {
            data,
            high_watermark: hw,
            last_stable_offset: lso,
            log_start_offset: start,
            aborted,
        })
    }

    /// Resolves an offset spec. `Timestamp` returns `None` when no record is that recent.
    pub fn list_offset(&self, spec: OffsetSpec, isolation: Isolation) -> Result<Option<i64>> {
        let mut st = self.state.lock();
        match spec {
            OffsetSpec::Earliest => Ok(Some(st.log_start_offset)),
            OffsetSpec::Latest => Ok(Some(match isolation {
                Isolation::ReadCommitted => st.lso(),
                Isolation::ReadUncommitted => st.high_watermark,
            })),
            OffsetSpec::Timestamp(ts) => {
                let remote: Vec<RemoteSegment> = st
                    .remote_only()
                    .filter(|r| r.end > st.log_start_offset && r.max_timestamp >= ts)
                    .cloned()
                    .collect();
                if !remote.is_empty() {
                    drop(st);
                    for r in &remote {
                        if let Some(o) = self.remote_offset_for_time(r, ts)? {
                            return Ok(Some(o));
                        }
                    }
                    st = self.state.lock();
                }
                for seg in st.segments.values() {
                    if seg.max_timestamp() < ts {
                        continue;
                    }
                    let mut pos = seg.lookup_time(ts);
                    while let Some(h) = seg.header_at(pos)? {
                        if h.max_timestamp >= ts && !h.is_control() {
                            let mut buf = vec![0u8; h.total_size()];
                            seg.file()
                                .read_exact_at(&mut buf, pos)
                                .map_err(|e| LogError::io("read segment", seg.log_path(), e))?;
                            let recs = decode_records(&buf).map_err(|e| self.batch_err(e))?;
                            if let Some(r) = recs.iter().find(|r| r.record.timestamp >= ts) {
                                return Ok(Some(r.offset));
                            }
                        }
                        pos += h.total_size() as u64;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Append, write and fsync counters since open.
    pub fn io_stats(&self) -> IoStats {
        IoStats {
            batches: self.stats[0].load(Ordering::Relaxed),
            writes: self.stats[1].load(Ordering::Relaxed),
            fsyncs: self.stats[2].load(Ordering::Relaxed),
        }
    }

    /// The first offset held (cheaper than [`Partition::info`]).
    pub fn log_start_offset(&self) -> i64 {
        self.state.lock().log_start_offset
    }

    /// A snapshot of offsets and sizes.
    pub fn info(&self) -> PartitionInfo {
        let st = self.state.lock();
        PartitionInfo {
            partition: self.id,
            log_start_offset: st.log_start_offset,
            log_end_offset: st.leo(),
            high_watermark: st.high_watermark,
            last_stable_offset: st.lso(),
            leader_epoch: st.leader_epoch,
            segments: st.segments.len(),
            size_bytes: st.segments.values().map(Segment::size).sum(),
            local_log_start_offset: st.local_start(),
            remote: st
                .remote
                .start()
                .zip(st.remote.end())
                .map(|(s, e)| (s.max(st.log_start_offset), e))
                .filter(|(s, e)| s < e),
            remote_segments: st
                .remote
                .segments
                .iter()
                .filter(|r| r.end > st.log_start_offset)
                .count(),
            remote_size_bytes: st
                .remote
                .segments
                .iter()
                .filter(|r| r.end > st.log_start_offset)
                .map(|r| r.size)
                .sum(),
        }
    }

    /// Deletes closed segments past `retention.ms` / `retention.bytes` (for a tiered topic,
    /// over the whole log: remote copies first), and local copies of uploaded segments past
    /// `local.retention.ms` / `local.retention.bytes`; returns how many segments went.
    pub fn enforce_retention(&self, now: i64) -> Result<usize> {
        let (removed, expired) = {
            let mut st = self.state.lock();
            if !st.config.cleanup_policy.delete {
                return Ok(0);
            }
            let (retention_ms, retention_bytes) =
                (st.config.retention_ms, st.config.retention_bytes);
            let past = |size: u64, max_ts: i64, total: u64| {
                if retention_ms >= 0 && max_ts < now - retention_ms {
                    Some("retention.ms")
                } else if retention_bytes >= 0
                    && total > retention_bytes as u64
                    && total - size >= retention_bytes as u64
                {
                    Some("retention.bytes")
                } else {
                    None
                }
            };
            let remote_only: Vec<&RemoteSegment> = st
                .remote_only()
                .filter(|r| r.end > st.log_start_offset)
                .collect();
            let mut total: u64 = remote_only.iter().map(|r| r.size).sum::<u64>()
                + st.segments.values().map(Segment::size).sum::<u64>();
            // The whole log, oldest first: segments only in remote storage, then local ones.
            let mut new_start = st.log_start_offset;
            let mut all_remote_gone = true;
            for r in &remote_only {
                match past(r.size, r.max_timestamp, total) {
                    Some(reason) => {
                        total -= r.size;
                        new_start = r.end;
                        tracing::info!(
                            topic = %self.topic, partition = self.id, base_offset = r.base,
                            reason, "A remote segment is past retention; deleting it."
                        );
                    }
                    None => {
                        all_remote_gone = false;
                        break;
                    }
                }
            }
            let mut removed = Vec::new();
            while all_remote_gone && st.segments.len() > 1 {
                let Some((&base, seg)) = st.segments.iter().next() else {
                    break;
                };
                // Data above the last stable offset may still be aborted or committed; keep it.
                let stable = seg.next_offset() <= st.lso();
                let Some(reason) = past(seg.size(), seg.max_timestamp(), total).filter(|_| stable)
                else {
                    break;
                };
                total -= seg.size();
                if let Some(seg) = st.segments.remove(&base) {
                    new_start = seg.next_offset();
                    removed.push((seg, reason));
                }
            }
            // Tiered: local copies of uploaded segments past local retention. The log start
            // stays; readers go to the remote copy.
            if st.config.remote_storage_enable {
                let local_ms = st.config.effective_local_retention_ms();
                let local_bytes = st.config.effective_local_retention_bytes();
                let mut local: u64 = st.segments.values().map(Segment::size).sum();
                while st.segments.len() > 1 {
                    let Some((&base, seg)) = st.segments.iter().next() else {
                        break;
                    };
                    // Nothing leaves the disk before its upload completed (an empty segment,
                    // left by a recovery, has nothing to upload).
                    if !st.remote.contains(base) && seg.size() > 0 {
                        break;
                    }
                    let reason = if local_ms >= 0 && seg.max_timestamp() < now - local_ms {
                        "local.retention.ms"
                    } else if local_bytes >= 0
                        && local > local_bytes as u64
                        && local - seg.size() >= local_bytes as u64
                    {
                        "local.retention.bytes"
                    } else {
                        break;
                    };
                    local -= seg.size();
                    if let Some(seg) = st.segments.remove(&base) {
                        removed.push((seg, reason));
                    }
                }
            }
            if new_start > st.log_start_offset {
                st.log_start_offset = new_start;
                st.producers.trim_below(new_start);
            }
            let ls = st.log_start_offset;
            let expired: Vec<RemoteSegment> = st
                .remote
                .segments
                .iter()
                .filter(|r| r.end <= ls)
                .cloned()
                .collect();
            (removed, expired)
        };
        if removed.is_empty() && expired.is_empty() {
            return Ok(0);
        }
        // The checkpoint first: files that outlive a crash here are removed on open, while
        // files gone before the checkpoint said so would be reported as lost.
        self.checkpoint()?;
        for (seg, reason) in &removed {
            seg.delete_files();
            tracing::info!(
                topic = %self.topic, partition = self.id, base_offset = seg.base_offset,
                reason, "Deleted a segment past retention."
            );
        }
        // Remote copies below the log start are never read again; the upload thread deletes
        // them (`delete_expired_remote`), so a store that is down never holds up retention.
        Ok(removed.len() + expired.len())
    }

    /// Deletes remote segments below the log start (past retention): their objects, then
    /// their manifest entries (a crash between leaves entries below the log start, deleted
    /// again later); returns how many went.
    pub fn delete_expired_remote(&self) -> Result<usize> {
        let Some(h) = self.tier.get() else {
            return Ok(0);
        };
        let _one = self.uploader.lock();
        // The durable log start: a start moved in memory whose checkpoint has not been
        // written yet would come back after a crash, and the segments with it.
        let Some(ls) = self
            .checkpointed
            .lock()
            .last
            .as_ref()
            .map(|c| c.log_start_offset)
        else {
            return Ok(0);
        };
        let expired: Vec<RemoteSegment> = {
            let st = self.state.lock();
            st.remote
                .segments
                .iter()
                .filter(|r| r.end <= ls)
                .cloned()
                .collect()
        };
        if expired.is_empty() {
            return Ok(0);
        }
        h.tier
            .delete(expired.iter().flat_map(|r| r.objects(&h.path)).collect())?;
        // Lock order: `checkpointed` before `state`. A retired partition's folder is gone
        // (or is a new topic's of the same name): no manifest is written there.
        let cp = self.checkpointed.lock();
        if cp.retired {
            return Ok(0);
        }
        // As in `upload_next`: the file outside the state lock, then memory.
        let mut manifest = self.state.lock().remote.clone();
        manifest
            .segments
            .retain(|r| !expired.iter().any(|e| e.base == r.base));
        manifest.write(&self.dir)?;
        self.state.lock().remote = manifest;
        drop(cp);
        for r in &expired {
            tracing::info!(
                topic = %self.topic, partition = self.id, base_offset = r.base,
                "Deleted a remote segment past retention."
            );
        }
        Ok(expired.len())
    }

    /// Uploads the oldest closed, stable segment not yet in remote storage (tiered topics);
    /// returns whether one was uploaded. The objects first, then the manifest: a crash between
    /// uploads the same bytes under the same names again.
    pub fn upload_next(&self) -> Result<bool> {
        let Some(h) = self.tier.get() else {
            return Ok(false);
        };
        let _one = self.uploader.lock();
        if self.checkpointed.lock().retired {
            return Ok(false);
        }
        let job = {
            let st = self.state.lock();
            if !st.config.remote_storage_enable {
                return Ok(false);
            }
            let uploaded_to = st.remote.end().unwrap_or(i64::MIN);
            let (active, lso) = (st.active().base_offset, st.lso());
            st.segments
                .values()
                .find(|s| {
                    s.base_offset != active
                        && s.base_offset >= uploaded_to.max(st.log_start_offset)
                        && s.size() > 0
                })
                .filter(|s| s.next_offset() <= lso)
                .map(|s| {
                    let seg = RemoteSegment {
                        base: s.base_offset,
                        end: s.next_offset(),
                        size: s.size(),
                        max_timestamp: s.max_timestamp(),
                        aborted: st
                            .producers
                            .aborted_in(s.base_offset, s.next_offset())
                            .into_iter()
                            .map(|a| (a.producer_id, a.first_offset, a.last_offset))
                            .collect(),
                    };
                    (seg, s.file(), s.index_bytes())
                })
        };
        let Some((seg, file, (index, time_index))) = job else {
            return Ok(false);
        };
        let stem = seg.stem(&h.path);
        h.tier.upload_file(file, seg.size, &format!("{stem}.log"))?;
        h.tier.put(&format!("{stem}.index"), index)?;
        h.tier.put(&format!("{stem}.timeindex"), time_index)?;
        crate::fault::point("remote-after-upload");
        // Lock order: `checkpointed` before `state`. A topic deleted (and perhaps created
        // again) while the objects went up must not get this manifest in its folder.
        let cp = self.checkpointed.lock();
        if cp.retired {
            return Ok(false);
        }
        // The file first, outside the state lock (its fsync must not stall appends), then
        // memory: local retention goes by memory, so it never deletes what the file does not
        // list. Only holders of `uploader` change the manifest.
        let mut manifest = self.state.lock().remote.clone();
        manifest.segments.push(seg.clone());
        manifest.write(&self.dir)?;
        self.state.lock().remote = manifest;
        drop(cp);
        tracing::info!(
            topic = %self.topic, partition = self.id, base_offset = seg.base, end_offset = seg.end,
            bytes = seg.size, "Uploaded a segment to remote storage."
        );
        Ok(true)
    }

    /// Reads whole batches of a remote segment from `offset`, about `max_bytes` (at least one
    /// batch), through the partition's read-ahead chunk.
    fn read_remote(
        &self,
        seg: &RemoteSegment,
        offset: i64,
        max_bytes: usize,
        bound: i64,
    ) -> Result<Bytes> {
        let h = self.tier.get().ok_or_else(|| {
            LogError::RemoteStorage(format!(
                "{}-{} offset {offset} is in remote storage, but the log was opened without one (give --remote-storage)",
                self.topic, self.id
            ))
        })?;
        let stem = seg.stem(&h.path);
        let idx = h.tier.indexes(&stem)?;
        let mut pos = lookup(&idx.index, seg.base, offset);
        let mut chunk = self.chunk.lock();
        let load = |chunk: &mut Option<Chunk>, pos: u64, len: u64| -> Result<()> {
            let end = (pos + len.max(READ_CHUNK)).min(seg.size);
            let data = h.tier.get_range(&format!("{stem}.log"), pos..end)?;
            if (data.len() as u64) < end - pos {
                return Err(LogError::RemoteStorage(format!(
                    "{stem}.log is shorter than its manifest entry ({} bytes from byte {pos}, expected {})",
                    data.len(),
                    end - pos
                )));
            }
            *chunk = Some(Chunk {
                stem: stem.clone(),
                start: pos,
                data,
            });
            Ok(())
        };
        let header_len = crate::batch::BATCH_HEADER_LEN as u64;
        let mut first: Option<u64> = None;
        let mut end = pos;
        while pos + header_len <= seg.size {
            // What is returned comes from one chunk: a batch past it ends this fetch.
            if !chunk
                .as_ref()
                .is_some_and(|c| c.covers(&stem, pos, header_len))
            {
                if first.is_some() {
                    break;
                }
                load(&mut chunk, pos, header_len)?;
            }
            let Some(c) = chunk.as_ref() else { break };
            let h = BatchHeader::parse(&c.slice(pos, header_len)).map_err(|e| {
                LogError::RemoteStorage(format!("{stem}.log is corrupt at byte {pos}: {e}"))
            })?;
            let total = h.total_size() as u64;
            if h.last_offset() < offset {
                pos += total;
                continue;
            }
            if h.base_offset >= bound || first.is_some_and(|f| end - f + total > max_bytes as u64) {
                break;
            }
            if !c.covers(&stem, pos, total) {
                if first.is_some() {
                    break;
                }
                load(&mut chunk, pos, total)?;
            }
            first.get_or_insert(pos);
            pos += total;
            end = pos;
        }
        let data = match (first, chunk.as_ref()) {
            (Some(f), Some(c)) => c.slice(f, end - f),
            _ => Bytes::new(),
        };
        // A reader at the segment's end goes on to the next segment: the chunk is of no
        // more use, and idle partitions should not each hold one.
        if end >= seg.size {
            *chunk = None;
        }
        Ok(data)
    }

    /// The first offset of a remote segment whose record timestamp is at least `ts`.
    fn remote_offset_for_time(&self, seg: &RemoteSegment, ts: i64) -> Result<Option<i64>> {
        let Some(h) = self.tier.get() else {
            return Err(LogError::RemoteStorage(format!(
                "{}-{}: a lookup by time needs the remote storage the log was opened without",
                self.topic, self.id
            )));
        };
        let stem = seg.stem(&h.path);
        let idx = h.tier.indexes(&stem)?;
        let from = lookup_time(&idx.index, &idx.time_index, seg.base, ts);
        let mut offset = seg.base
            + i64::from(
                idx.index
                    .iter()
                    .find(|e| u64::from(e.1) == from)
                    .map_or(0, |e| e.0),
            );
        while offset < seg.end {
            let data = self.read_remote(seg, offset, 1 << 20, i64::MAX)?;
            if data.is_empty() {
                break;
            }
            let mut at = 0;
            while at + crate::batch::BATCH_HEADER_LEN <= data.len() {
                let hd = BatchHeader::parse(&data[at..]).map_err(|e| self.batch_err(e))?;
                let batch = &data[at..at + hd.total_size()];
                if hd.max_timestamp >= ts && !hd.is_control() {
                    let recs = decode_records(batch).map_err(|e| self.batch_err(e))?;
                    if let Some(r) = recs.iter().find(|r| r.record.timestamp >= ts) {
                        return Ok(Some(r.offset));
                    }
                }
                offset = hd.next_offset();
                at += hd.total_size();
            }
        }
        Ok(None)
    }

    /// Deletes every object of the partition in remote storage (its topic is being deleted),
    /// after an upload in flight is done.
    pub(crate) fn delete_remote_folder(&self) -> Result<()> {
        let Some(h) = self.tier.get() else {
            return Ok(());
        };
        let _one = self.uploader.lock();
        {
            // A topic that never tiered has nothing there: no request (the store may be down).
            let st = self.state.lock();
            if !st.config.remote_storage_enable && st.remote.segments.is_empty() {
                return Ok(());
            }
        }
        let objects = h.tier.list(&h.path)?;
        h.tier.delete(objects)
    }

    /// Whether some of the partition's segments are in remote storage.
    pub fn has_remote_segments(&self) -> bool {
        !self.state.lock().remote.segments.is_empty()
    }

    /// Moves the log start forward (delete-records), never past the high watermark.
    pub fn truncate_before(&self, offset: i64) -> Result<()> {
        let mut st = self.state.lock();
        st.log_start_offset = st.log_start_offset.max(offset.min(st.high_watermark));
        Ok(())
    }

    /// Rewrites closed, stable segments keeping only the latest record per key.
    ///
    /// Runs beside producers: the closed segments it reads never change, and the state lock
    /// is taken only to pick them and to swap each rewritten file in.
    pub fn compact(&self, now: i64) -> Result<CompactionStats> {
        let _cleaner = self.cleaner.lock();
        let (segs, delete_retention_ms, interval, cleaned_up_to, oldest_tombstone) = {
            let st = self.state.lock();
            if !st.config.cleanup_policy.compact {
                return Ok(CompactionStats::default());
            }
            let limit = st.lso().min(st.active().base_offset);
            let segs: Vec<(i64, Arc<File>, PathBuf, i64)> = st
                .segments
                .values()
                .filter(|s| s.next_offset() <= limit && s.base_offset != st.active().base_offset)
                .map(|s| (s.base_offset, s.file(), s.log_path(), s.next_offset()))
                .collect();
            (
                segs,
                st.config.delete_retention_ms,
                st.config.index_interval_bytes,
                st.cleaned_up_to,
                st.oldest_kept_tombstone,
            )
        };
        let Some(dirty_end) = segs.last().map(|s| s.3) else {
            return Ok(CompactionStats::default());
        };
        let tombstone_horizon = now - delete_retention_ms;
        let tombstones_expired = oldest_tombstone.is_some_and(|ts| ts < tombstone_horizon);
        if dirty_end <= cleaned_up_to && !tombstones_expired {
            return Ok(CompactionStats::default());
        }
        // Pass 1: the latest offset of every key among committed records.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for (_, file, path, _) in &segs {
            for_each_batch(file, path, |h, buf| {
                if h.is_control()
                    || (h.is_transactional() && self.is_aborted(h.producer_id, h.base_offset))
                {
                    return Ok(());
                }
                for r in decode_records(buf).map_err(|e| self.batch_err(e))? {
                    if let Some(k) = r.record.key {
                        latest.insert(k, r.offset);
                    }
                }
                Ok(())
            })?;
        }
        // Pass 2: rewrite each segment with the survivors, in offset order, as Kafka's log
        // cleaner decides: aborted data goes; a batch left empty goes unless it is its
        // producer's last (its sequence must survive a restart); a transaction marker goes
        // once no data of its transaction is left before it and it is older than
        // `delete.retention.ms` (until then a reader in the middle of the log may still need
        // it). Dropping a marker in the pass that drops its data is safe because segments are
        // swapped in offset order: a crash in between leaves the marker without the data,
        // never aborted data without its marker.
        let last_batches: HashMap<i64, i64> = {
            let st = self.state.lock();
            st.producers.last_data_offsets()
        };
        // Producers whose transaction (the one the scan is in) kept a batch so far.
        let mut txn_kept: HashMap<i64, bool> = HashMap::new();
        let mut stats = CompactionStats::default();
        let mut oldest_kept_tombstone: Option<i64> = None;
        let mut emptied = Vec::new();
        for (base, file, path, _) in &segs {
            let cleaned = PathBuf::from(format!("{}.cleaned", path.display()));
            let mut out: Vec<u8> = Vec::new();
            let mut removed = 0u64;
            let mut changed = false;
            for_each_batch(file, path, |h, buf| {
                if h.is_control() {
                    let kept_data = txn_kept.remove(&h.producer_id).unwrap_or(false);
                    if kept_data || h.max_timestamp >= tombstone_horizon {
                        if !kept_data {
                            let ts = h.max_timestamp;
                            oldest_kept_tombstone =
                                Some(oldest_kept_tombstone.map_or(ts, |o| o.min(ts)));
                        }
                        out.extend_from_slice(buf);
                    } else {
                        changed = true;
                    }
                    return Ok(());
                }
                let aborted = h.is_transactional() && self.is_aborted(h.producer_id, h.base_offset);
                let records = decode_records(buf).map_err(|e| self.batch_err(e))?;
                let keep: Vec<_> = records
                    .iter()
                    .filter(|r| {
                        !aborted
                            && r.record
                                .key
                                .as_ref()
                                .is_some_and(|k| latest.get(k) == Some(&r.offset))
                            && (r.record.value.is_some() || r.record.timestamp >= tombstone_horizon)
                    })
                    .collect();
                removed += (records.len() - keep.len()) as u64;
                for r in keep.iter().filter(|r| r.record.value.is_none()) {
                    let ts = r.record.timestamp;
                    oldest_kept_tombstone = Some(oldest_kept_tombstone.map_or(ts, |o| o.min(ts)));
                }
                let producers_last = h.producer_id >= 0
                    && last_batches.get(&h.producer_id) == Some(&h.last_offset());
                if keep.is_empty() && !producers_last {
                    changed = true;
                    return Ok(());
                }
                if h.is_transactional() {
                    txn_kept.insert(h.producer_id, true);
                }
                if keep.len() == records.len() {
                    out.extend_from_slice(buf);
                } else {
                    changed = true;
                    // Survivors only; with none, an empty batch keeps the producer's offsets
                    // and last sequence so they survive a restart (as Kafka's cleaner does).
                    let mut b = BatchBuilder::new(BatchOptions {
                        compression: if keep.is_empty() {
                            crate::compression::Compression::None
                        } else {
                            h.compression()
                        },
                        producer_id: h.producer_id,
                        producer_epoch: h.producer_epoch,
                        base_sequence: h.base_sequence,
                        transactional: h.is_transactional(),
                        partition_leader_epoch: h.partition_leader_epoch,
                    });
                    for r in &keep {
                        b.push_with_delta((r.offset - h.base_offset) as i32, &r.record)
                            .map_err(|e| self.batch_err(e))?;
                    }
                    b.set_last_offset_delta(h.last_offset_delta);
                    let mut nb = b.build().map_err(|e| self.batch_err(e))?;
                    crate::batch::set_base_offset(&mut nb, h.base_offset);
                    out.extend_from_slice(&nb);
                }
                Ok(())
            })?;
            stats.bytes_before += file.metadata().map(|m| m.len()).unwrap_or(0);
            if !changed {
                stats.bytes_after += out.len() as u64;
                continue;
            }
            std::fs::write(&cleaned, &out).map_err(|e| LogError::io("write", &cleaned, e))?;
            File::open(&cleaned)
                .and_then(|f| f.sync_all())
                .map_err(|e| LogError::io("fsync", &cleaned, e))?;
            let mut st = self.state.lock();
            if !st.segments.contains_key(base) {
                // Retention deleted it meanwhile.
                let _ = std::fs::remove_file(&cleaned);
                continue;
            }
            // Drop the index files first: a crash between here and the rename leaves the old
            // log without indexes (rebuilt on open), never new data with old indexes.
            let stem = crate::segment::file_stem(*base);
            for ext in ["index", "timeindex"] {
                let _ = std::fs::remove_file(self.dir.join(format!("{stem}.{ext}")));
            }
            std::fs::rename(&cleaned, path).map_err(|e| LogError::io("rename", path, e))?;
            let seg = Segment::open(&self.dir, *base, interval, false)?.segment;
            seg.write_index_files()?;
            stats.bytes_after += seg.size();
            if seg.size() == 0 {
                emptied.push(*base);
            }
            st.segments.insert(*base, seg);
            stats.segments += 1;
            stats.records_removed += removed;
        }
        // Segments left empty go, so a compacted topic does not gather files without bound.
        // The log start stays (as in Kafka, compaction does not move it): a fetch there goes
        // on to the next segment. The checkpoint is written before the files go, so a
        // missing empty segment is never taken for lost records.
        let mut gone = Vec::new();
        {
            let mut st = self.state.lock();
            for base in emptied {
                if st.active().base_offset != base {
                    if let Some(seg) = st.segments.remove(&base) {
                        gone.push(seg);
                    }
                }
            }
            st.cleaned_up_to = dirty_end;
            st.oldest_kept_tombstone = oldest_kept_tombstone;
        }
        if !gone.is_empty() {
            self.checkpoint()?;
            for seg in &gone {
                seg.delete_files();
            }
        }
        if stats.segments > 0 {
            tracing::info!(
                topic = %self.topic, partition = self.id, segments = stats.segments,
                segments_removed = gone.len(), records_removed = stats.records_removed,
                bytes_before = stats.bytes_before, bytes_after = stats.bytes_after,
                "Compacted a partition."
            );
        }
        Ok(stats)
    }

    /// Writes indexes, fsyncs and checkpoints: the clean-shutdown half of [`Partition::open`].
    pub fn close(&self) -> Result<()> {
        {
            let st = self.state.lock();
            let a = st.active();
            a.sync()?;
            a.write_index_files()?;
        }
        self.checkpoint()
    }

    /// Rolls the active segment now (used by tests and `segment.ms` checks).
    pub fn force_roll(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.active().size() > 0 {
            self.roll(&mut st)?;
        }
        Ok(())
    }

    /// The partition's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replays one batch header into producer state on open.
fn replay(
    producers: &mut ProducerStates,
    seg: &Segment,
    b: &crate::segment::BatchPosition,
) -> Result<()> {
    let h = &b.header;
    match &b.control {
        Some(control) => {
            let (kind, coordinator_epoch) =
                control.as_ref().map_err(|reason| LogError::Corrupt {
                    path: seg.log_path(),
                    position: 0,
                    reason: format!("the marker at offset {}: {reason}", h.base_offset),
                })?;
            producers.on_marker(
                h.producer_id,
                h.producer_epoch,
                *kind == ControlType::Commit,
                h.base_offset,
                *coordinator_epoch,
            );
        }
        None => producers.on_data(h),
    }
    Ok(())
}

/// Calls `f` with every batch of a closed segment file, in order.
fn for_each_batch(
    file: &File,
    path: &Path,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat", path, e))?
        .len();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    let mut hb = [0u8; crate::batch::BATCH_HEADER_LEN];
    while pos + hb.len() as u64 <= len {
        file.read_exact_at(&mut hb, pos)
            .map_err(|e| LogError::io("read segment", path, e))?;
        let h = BatchHeader::parse(&hb).map_err(|e| LogError::Corrupt {
            path: path.to_path_buf(),
            position: pos,
            reason: e.to_string(),
        })?;
        buf.resize(h.total_size(), 0);
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read segment", path, e))?;
        f(&h, &buf)?;
        pos += h.total_size() as u64;
    }
    Ok(())
}

/// Reads whole batches from `pos`: about `max_bytes`, at least one batch, none at or past
/// `bound`, never past `end`.
fn read_batches(
    file: &File,
    path: &Path,
    pos: u64,
    end: u64,
    max_bytes: usize,
    bound: i64,
) -> Result<Bytes> {
    let avail = (end - pos) as usize;
    let mut want = max_bytes
        .min(avail)
        .max(crate::batch::BATCH_HEADER_LEN.min(avail));
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, pos)
        .map_err(|e| LogError::io("read segment", path, e))?;
    // The first batch may be larger than max_bytes: a fetch always makes progress.
    if let Ok(h) = BatchHeader::parse(&buf) {
        if h.total_size() > want && h.total_size() <= avail {
            want = h.total_size();
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| LogError::io("read segment", path, e))?;
        }
    }
    let mut cut = 0;
    while cut + crate::batch::BATCH_HEADER_LEN <= buf.len() {
        let Ok(h) = BatchHeader::parse(&buf[cut..]) else {
            break;
        };
        if h.base_offset >= bound || cut + h.total_size() > buf.len() {
            break;
        }
        cut += h.total_size();
    }
    buf.truncate(cut);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn batch(i: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push(&Record::from_value(format!("v{i}"), 1_000 + i as i64))
            .unwrap();
        b.build().unwrap()
    }

    fn open_always(dir: &Path) -> Arc<Partition> {
        Arc::new(
            Partition::open(
                Arc::from("t"),
                0,
                dir,
                Arc::new(TopicConfig::default()),
                FsyncPolicy::Always,
                false,
            )
            .unwrap(),
        )
    }

    fn open_at(dir: &Path) -> Partition {
        let mut config = TopicConfig::default();
        config.segment_bytes = 300;
        Partition::open(
            Arc::from("t"),
            0,
            dir,
            Arc::new(config),
            FsyncPolicy::Never,
            true,
        )
        .unwrap()
    }

    /// A leader's high watermark waits for the replication layer; a follower copies the
    /// leader's batches byte for byte, a batch fetched twice once, and refuses a gap.
    #[test]
    fn a_follower_copies_the_leader_and_the_high_watermark_waits_for_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = open_at(a.path());
        let follower = open_at(b.path());
        leader.become_leader(3).unwrap();
        follower.become_follower(3).unwrap();
        for i in 0..20 {
            leader.append(batch(i)).unwrap();
        }
        assert_eq!(leader.info().high_watermark, 0);
        let uncommitted = leader
            .fetch(0, 1 << 20, Isolation::ReadUncommitted)
            .unwrap();
        assert!(
            uncommitted.data.is_empty(),
            "nothing below the high watermark"
        );
        let mut next = 0;
        while next < 20 {
            let got = leader.fetch_replica(next, 200).unwrap();
            next = follower.append_replicated(&got.data, 3).unwrap();
            // Fetched again: skipped, not appended twice.
            assert_eq!(follower.append_replicated(&got.data, 3).unwrap(), next);
        }
        assert_eq!(leader.advance_high_watermark(next), 20);
        assert_eq!(leader.advance_high_watermark(5), 20, "never down");
        let records = |p: &Partition| {
            let mut out = Vec::new();
            let mut at = 0;
            while at < 20 {
                let data = p.fetch_replica(at, 1 << 20).unwrap().data;
                for r in decode_records(&data).unwrap() {
                    at = r.offset + 1;
                    out.push((r.offset, r.record.value));
                }
            }
            out
        };
        assert_eq!(records(&follower), records(&leader));
        assert_eq!(follower.log_end_offset(), 20);
        assert_eq!(follower.end_offset_for_epoch(3), Some((3, 20)));
        assert!(
            matches!(follower.append(batch(99)), Err(LogError::NotLeader { .. })),
            "a follower takes only its leader's batches"
        );
        let gap = leader.fetch_replica(0, 1).unwrap().data;
        let far_dir = tempfile::tempdir().unwrap();
        let far = open_at(far_dir.path());
        far.append(batch(0)).unwrap();
        far.append(batch(1)).unwrap();
        assert!(far.append_replicated(&gap, 0).is_err(), "not a follower");
        far.become_follower(0).unwrap();
        assert!(
            far.append_replicated(&gap, 0).is_ok(),
            "below the end: skipped"
        );
        let later = leader.fetch_replica(5, 1).unwrap().data;
        assert!(far.append_replicated(&later, 0).is_err(), "a gap");
    }

    /// A former leader's tail past the new leader's epoch end is cut, the new leader's
    /// records take its offsets, and a reopen finds the log whole: no loss reported.
    #[test]
    fn truncating_a_divergent_tail_reuses_its_offsets_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = open_at(dir.path());
            p.become_leader(1).unwrap();
            for i in 0..12 {
                p.append(batch(i)).unwrap();
            }
            p.become_leader(2).unwrap();
            for i in 12..20 {
                p.append(batch(i)).unwrap();
            }
            assert_eq!(p.end_offset_for_epoch(1), Some((1, 12)));
            assert_eq!(p.end_offset_for_epoch(0), None);
            // The new leader (epoch 3) had epoch 1 up to offset 12 only.
            assert_eq!(p.truncate_to(12).unwrap(), 12);
            assert_eq!(p.latest_epoch(), 1);
            p.become_follower(3).unwrap();
            let mut theirs = BatchBuilder::new(BatchOptions::default());
            theirs.push(&Record::from_value("new", 5_000)).unwrap();
            let mut bytes = theirs.build().unwrap();
            crate::batch::set_base_offset(&mut bytes, 12);
            crate::batch::set_partition_leader_epoch(&mut bytes, 3);
            assert_eq!(p.append_replicated(&bytes, 3).unwrap(), 13);
            p.close().unwrap();
        }
        let p = open_at(dir.path());
        assert!(p.take_detected_losses().is_empty());
        assert_eq!(p.log_end_offset(), 13);
        assert_eq!(p.end_offset_for_epoch(2), Some((1, 12)));
        assert_eq!(p.end_offset_for_epoch(3), Some((3, 13)));
        assert_eq!(p.info().high_watermark, 0, "a replica's, checkpointed");
        let last = p.fetch_replica(12, 1 << 20).unwrap();
        let records = decode_records(&last.data).unwrap();
        assert_eq!(records[0].record.value.as_deref(), Some(&b"new"[..]));
    }

    /// A replica reopens as a follower with the high watermark it checkpointed (not its log
    /// end), so neither a pipeline's write nor a consumer's read gets ahead of the cluster;
    /// a follower behind its leader's log start starts again there.
    #[test]
    fn a_reopened_replica_keeps_its_high_watermark_and_takes_no_writes_until_told() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = open_at(dir.path());
            p.become_leader(1).unwrap();
            for i in 0..10 {
                p.append(batch(i)).unwrap();
            }
            assert_eq!(p.advance_high_watermark(6), 6);
            p.close().unwrap();
        }
        let p = open_at(dir.path());
        assert!(p.is_replica());
        assert_eq!(p.info().high_watermark, 6, "the checkpointed one");
        assert_eq!(p.log_end_offset(), 10);
        assert!(
            matches!(p.append(batch(99)), Err(LogError::NotLeader { .. })),
            "a follower until the cluster says it leads"
        );
        p.become_leader(2).unwrap();
        p.append(batch(10)).unwrap();
        assert_eq!(
            p.info().high_watermark,
            6,
            "moved by the replication layer only"
        );

        // Never replicated: the high watermark is the log end, as before.
        let alone_dir = tempfile::tempdir().unwrap();
        let alone = open_at(alone_dir.path());
        alone.append(batch(0)).unwrap();
        assert!(!alone.is_replica());
        assert_eq!(alone.info().high_watermark, 1);

        p.become_follower(3).unwrap();
        assert!(p.reset_to(40, 2).is_err(), "not the epoch followed");
        p.reset_to(40, 3).unwrap();
        assert_eq!(p.log_end_offset(), 40);
        assert_eq!(p.log_start_offset(), 40);
        assert_eq!(
            p.latest_epoch(),
            3,
            "no epoch left in the file: the one followed"
        );
        let mut theirs = BatchBuilder::new(BatchOptions::default());
        theirs.push(&Record::from_value("after", 5_000)).unwrap();
        let mut bytes = theirs.build().unwrap();
        crate::batch::set_base_offset(&mut bytes, 40);
        crate::batch::set_partition_leader_epoch(&mut bytes, 3);
        assert_eq!(p.append_replicated(&bytes, 3).unwrap(), 41);
        p.close().unwrap();
        let p = open_at(dir.path());
        assert!(p.take_detected_losses().is_empty(), "a restart, not a loss");
        assert_eq!((p.log_start_offset(), p.log_end_offset()), (40, 41));
        assert_eq!(p.end_offset_for_epoch(3), Some((3, 41)));
    }

    /// Appenders that queue while another holds the partition lock are written by one
    /// leader in one write and made durable by one fsync. The lock is held by the test
    /// until all of them have queued, so the grouping does not depend on timing.
    #[test]
    fn group_commit_shares_writes_and_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let p = open_always(dir.path());
        let before = p.io_stats();
        let threads = {
            let _held = p.state.lock();
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let p = Arc::clone(&p);
                    std::thread::spawn(move || p.append(batch(t)).unwrap().base_offset)
                })
                .collect();
            while p.queue.lock().items.len() < 8 {
                std::thread::yield_now();
            }
            threads
        };
        let mut offsets: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..8).collect::<Vec<i64>>(),
            "dense, unique offsets"
        );
        let stats = p.io_stats();
        assert_eq!(stats.batches - before.batches, 8);
        assert_eq!(
            stats.writes - before.writes,
            1,
            "one write for 8 appenders: {stats:?}"
        );
        assert_eq!(
            stats.fsyncs - before.fsyncs,
            1,
            "one fsync for 8 appenders: {stats:?}"
        );
    }

    #[test]
    fn concurrent_appenders_get_dense_offsets_and_every_append_is_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let p = open_always(dir.path());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    (0..100)
                        .map(|i| p.append(batch(t * 1000 + i)).unwrap().base_offset)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut offsets: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..800).collect::<Vec<i64>>(),
            "dense, unique offsets"
        );
        let stats = p.io_stats();
        assert_eq!(stats.batches, 800);
        assert!((1..=800).contains(&stats.writes), "{stats:?}");
        assert!((1..=stats.writes).contains(&stats.fsyncs), "{stats:?}");
    }

    #[test]
    fn duplicate_in_the_same_group_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(
            Arc::from("t"),
            0,
            dir.path(),
            Arc::new(TopicConfig::default()),
            FsyncPolicy::Never,
            false,
        )
        .unwrap();
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: 5,
            producer_epoch: 0,
            base_sequence: 0,
            ..BatchOptions::default()
        });
        b.push(&Record::from_value("x", 1)).unwrap();
        let bytes = b.build().unwrap();
        let first = p.append(bytes.clone()).unwrap();
        let again = p.append(bytes).unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.base_offset, again.base_offset);
        assert_eq!(p.info().log_end_offset, 1);
    }
}
