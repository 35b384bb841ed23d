//! The log as a whole: one data directory of topics, plus the coordinators that live beside
//! them (consumer groups, committed offsets, transactions) and a housekeeping thread.
//!
//! ```text
//!  <data-dir>/
//!    .lock                    held while a process owns the directory
//!    .clean-shutdown          present only between a clean close and the next open
//!    producer-ids             the next unallocated producer-id block
//!    data-loss.json           records lost to damage or missing files (delete to acknowledge)
//!    topics/<name>/topic.json partitions and config overrides
//!    topics/<name>/<p>/       segments of partition p and its offsets.checkpoint
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::batch::{BatchBuilder, BatchOptions};
use crate::checkpoint::DataLoss;
use crate::config::{FsyncPolicy, LogOptions, TopicConfig};
use crate::consumer::{Consumer, ConsumerConfig, decode_fetch};
use crate::error::{LogError, Result};
use crate::group::{
    GroupCoordinator, GroupDescription, GroupState, HeartbeatRequest, HeartbeatResponse,
    TopicPartition,
};
use crate::offsets::{CommittedOffset, OFFSETS_TOPIC, OffsetKey, OffsetStore};
use crate::partition::{AppendInfo, FetchResult, Isolation, OffsetSpec, Partition, PartitionInfo};
use crate::producer::{Producer, ProducerConfig};
use crate::record::{Record, now_ms};
use crate::segment::write_file;
use crate::txn::{EndPlan, TxnCoordinator, TxnError, TxnRecord};

/// Name of the internal transaction-state topic.
pub const TXN_TOPIC: &str = "__transaction_state";

/// The file listing data loss, in the data directory.
const DATA_LOSS_FILE: &str = "data-loss.json";

/// Tells apart the trash folders of deletes within one millisecond.
static DELETE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether a topic is internal: bookkeeping of the log and the worker, which users may read
/// but not delete or write (the API and the CLI refuse it; the worker's own writers go
/// through the log directly).
///
/// Internal are names starting with `__` (`__consumer_offsets`, `__transaction_state`,
/// `__sluice_source_positions`, `__sluice_catalog`, ...) and state-store changelogs, named
/// `<store>-changelog` as the state crate and Kafka Streams name them (a SQL query's are
/// `<query id>-changelog` and `<query id>-source-changelog`): a record written into a
/// changelog by hand would change a query's state behind its back.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name.ends_with("-changelog")
}

/// Producer ids are handed out in blocks; the end of the current block is persisted before
/// any id of it is used, so a crash never reuses one.
const PID_BLOCK: i64 = 1000;

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// A topic: its config and partitions.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().len() as u32
    }
    /// The effective config.
    pub fn config(&self) -> Arc<TopicConfig> {
        Arc::clone(&self.config.read())
    }
    fn save_meta(&self) -> Result<()> {
        let meta = TopicMeta {
            partitions: self.partition_count(),
            config: self.config.read().overrides().clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_file(&self.dir.join("topic.json"), &json)
    }
}

/// A topic as shown by list and describe.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    /// Name.
    pub name: String,
    /// Whether it is internal ([`is_internal_topic`]).
    pub internal: bool,
    /// Each partition's offsets and size.
    pub partitions: Vec<PartitionInfo>,
    /// Every config key: (key, effective value, set explicitly).
    pub config: Vec<(&'static str, String, bool)>,
}

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

#[derive(Debug)]
struct Housekeeper {
    stop: Mutex<bool>,
    wake: Condvar,
    handle: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    dir: PathBuf,
    options: LogOptions,
    lock: Mutex<Option<File>>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    groups: Mutex<GroupCoordinator>,
    offsets: Mutex<OffsetStore>,
    txns: Mutex<TxnCoordinator>,
    next_pid: Mutex<(i64, i64)>,
    appended: Mutex<u64>,
    appended_cv: Condvar,
    closed: AtomicBool,
    housekeeper: Housekeeper,
    /// Records lost to damage or missing files, as kept in `data-loss.json`.
    losses: Mutex<Vec<DataLoss>>,
}

/// The embedded log. Cheap to clone; every clone is the same log. The directory is closed
/// cleanly by [`Log::close`] or when the last clone (and every producer and consumer made
/// from it) is dropped.
#[derive(Debug, Clone)]
pub struct Log {
    pub(crate) inner: Arc<Inner>,
}

/// Checks a topic name: what `create_topic` accepts.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(LogError::InvalidTopicName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("it is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("use only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

impl Log {
    /// Opens (creating if needed) the data directory and takes its lock.
    ///
    /// After an unclean shutdown the active segment of every partition is checked batch by
    /// batch and a torn tail truncated; transactions left open are aborted and those already
    /// decided are completed.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| LogError::io("create data directory", &dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::DataDirLocked { path: dir });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(LogError::io("lock", &lock_path, e));
            }
        }
        let clean_marker = dir.join(".clean-shutdown");
        let recover = !clean_marker.exists();
        if recover {
            tracing::info!(dir = %dir.display(), "Recovering after an unclean shutdown.");
        }

        let mut topics = BTreeMap::new();
        for entry in
            std::fs::read_dir(&topics_dir).map_err(|e| LogError::io("list", &topics_dir, e))?
        {
            let entry = entry.map_err(|e| LogError::io("list", &topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".deleting-") {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let meta_path = path.join("topic.json");
            let raw = match std::fs::read(&meta_path) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A create that crashed before writing its metadata.
                    tracing::warn!(path = %path.display(), "Removing a topic folder without topic.json.");
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
                Err(e) => return Err(LogError::io("read", &meta_path, e)),
            };
            let meta: TopicMeta = serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
                path: meta_path.clone(),
                position: 0,
                reason: e.to_string(),
            })?;
            let config = Arc::new(TopicConfig::from_overrides(
                meta.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?);
            let topic = open_topic(
                &name,
                &path,
                meta.partitions,
                config,
                options.fsync,
                recover,
            )?;
            topics.insert(name, Arc::new(topic));
        }
        let losses = record_data_loss(&dir, &topics)?;
        // Only now, with every segment checked and every loss recorded, is the clean-shutdown
        // marker dropped: a start that fails above leaves it, so the next gives the same answer.
        let _ = std::fs::remove_file(&clean_marker);

        let inner = Arc::new(Inner {
            dir: dir.clone(),
            next_pid: Mutex::new((0, 0)),
            options,
            lock: Mutex::new(Some(lock)),
            topics: RwLock::new(topics),
            groups: Mutex::new(GroupCoordinator::default()),
            offsets: Mutex::new(OffsetStore::default()),
            txns: Mutex::new(TxnCoordinator::default()),
            appended: Mutex::new(0),
            appended_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            losses: Mutex::new(losses),
            housekeeper: Housekeeper {
                stop: Mutex::new(false),
                wake: Condvar::new(),
                handle: Mutex::new(None),
            },
        });
        let log = Log { inner };
        log.load_pid_block()?;
        log.ensure_internal_topics()?;
        log.recover_transactions()?;
        log.load_offsets()?;
        log.start_housekeeper();
        Ok(log)
    }

    /// Records this log lost to damage or missing files (a deleted segment, a corrupt batch
    /// cut by recovery), oldest first, kept across restarts in `<data-dir>/data-loss.json`
    /// until that file is deleted. Their offsets are never handed out again. A torn tail
    /// after a crash (a batch whose write was cut off, never acknowledged) is not a loss.
    pub fn data_loss(&self) -> Vec<DataLoss> {
        self.inner.losses.lock().clone()
    }

    /// Adds a loss found outside the log (a reader whose committed position is past the end
    /// of what the log holds) to the list [`Log::data_loss`] returns, unless it is there.
    pub fn report_data_loss(&self, loss: DataLoss) -> Result<()> {
        let mut losses = self.inner.losses.lock();
        let known = losses.iter().any(|l| {
            (
                l.topic.as_str(),
                l.partition,
                l.from,
                l.to,
                l.reason.as_str(),
            ) == (
                loss.topic.as_str(),
                loss.partition,
                loss.from,
                loss.to,
                loss.reason.as_str(),
            )
        });
        if !known {
            losses.push(loss);
            save_data_loss(&self.inner.dir, &losses)?;
        }
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(LogError::Closed)
        } else {
            Ok(())
        }
    }

    // ----- topics -----

    /// Creates a topic with `partitions` partitions and config overrides.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: &[(String, String)],
    ) -> Result<()> {
        self.check_open()?;
        validate_topic_name(name)?;
        if partitions == 0 {
            return Err(LogError::InvalidPartitions {
                topic: name.into(),
                reason: "a topic needs at least one partition".into(),
            });
        }
        let config = Arc::new(TopicConfig::from_overrides(
            config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?);
        let mut topics = self.inner.topics.write();
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.into()));
        }
        let dir = self.inner.dir.join("topics").join(name);
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let topic = open_topic(
            name,
            &dir,
            partitions,
            config,
            self.inner.options.fsync,
            false,
        )?;
        topic.save_meta()?;
        for p in topic.partitions.read().iter() {
            p.checkpoint()?;
        }
        tracing::info!(topic = name, partitions, "Created a topic.");
        topics.insert(name.to_string(), Arc::new(topic));
        Ok(())
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.into()))
    }

    /// The topic, created with the default partitions if auto-create is on.
    pub fn topic_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        match self.topic(name) {
            Err(LogError::UnknownTopic(_)) if self.inner.options.auto_create_topics => {
                match self.create_topic(name, self.inner.options.default_partitions, &[]) {
                    Ok(()) | Err(LogError::TopicExists(_)) => self.topic(name),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Names of all topics, internal ones included.
    pub fn topic_names(&self) -> Vec<String> {
        self.inner.topics.read().keys().cloned().collect()
    }

    /// Describes a topic.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let t = self.topic(name)?;
        let partitions = t.partitions.read().iter().map(|p| p.info()).collect();
        Ok(TopicDescription {
            name: name.into(),
            internal: is_internal_topic(name),
            partitions,
            config: t.config().entries(),
        })
    }

    /// Grows a topic to `partitions`. Existing records stay where they are, so keys written
    /// before may now hash to another partition (as in Kafka).
    pub fn alter_partitions(&self, name: &str, partitions: u32) -> Result<()> {
        self.check_open()?;
        let t = self.topic(name)?;
        let mut parts = t.partitions.write();
        let current = parts.len() as u32;
        if partitions < current {
            return Err(LogError::InvalidPartitions {
                topic: name.into(),
                reason: format!(
                    "partitions can only grow: it has {current}, asked for {partitions}; create a new topic to shrink"
                ),
            });
        }
        for id in current..partitions {
            let p = Partition::open(
                Arc::clone(&t.name),
                id,
                &t.dir.join(id.to_string()),
                t.config(),
                self.inner.options.fsync,
                false,
            )?;
            p.checkpoint()?;
            parts.push(Arc::new(p));
        }
        drop(parts);
        t.save_meta()?;
        tracing::info!(
            topic = name,
            from = current,
            to = partitions,
            "Added partitions."
        );
        Ok(())
    }

    /// Changes config keys of a topic.
    pub fn alter_config(&self, name: &str, pairs: &[(String, String)]) -> Result<()> {
        self.check_open()?;
        let t = self.topic(name)?;
        let mut cfg = (*t.config()).clone();
        for (k, v) in pairs {
            cfg.set(k, v)?;
        }
        let cfg = Arc::new(cfg);
        *t.config.write() = Arc::clone(&cfg);
        for p in t.partitions.read().iter() {
            p.set_config(Arc::clone(&cfg));
        }
        t.save_meta()
    }

    /// Deletes a topic and its data. Topics starting with `__` (the log's and the worker's
    /// bookkeeping) cannot be deleted. All or nothing: when the folder cannot be moved
    /// away, the topic stays as it was.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        if name.starts_with("__") {
            return Err(LogError::InternalTopic {
                name: name.into(),
                action: "deleted",
            });
        }
        let mut topics = self.inner.topics.write();
        let t = topics
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.into()))?;
        // Renamed first so a crash mid-delete never leaves half a topic to reopen. The trash
        // name does not contain the topic's: a 249-character name plus a prefix would pass
        // the file system's 255-byte limit on a name.
        let trash = self.inner.dir.join("topics").join(format!(
            ".deleting-{}-{}",
            now_ms(),
            DELETE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&t.dir, &trash).map_err(|e| LogError::io("rename", &t.dir, e))?;
        for p in t.partitions.read().iter() {
            p.retire();
        }
        topics.remove(name);
        drop(topics);
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            // The topic is gone already; the next open removes what is left.
            tracing::warn!(topic = name, path = %trash.display(), error = %e, "Could not remove a deleted topic's files.");
        }
        let mut losses = self.inner.losses.lock();
        if losses.iter().any(|l| l.topic == name) {
            losses.retain(|l| l.topic != name);
            if let Err(e) = save_data_loss(&self.inner.dir, &losses) {
                tracing::warn!(topic = name, error = %e, "Could not update the data-loss list.");
            }
        }
        tracing::info!(topic = name, "Deleted a topic.");
        Ok(())
    }

    /// One partition of a topic.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        let parts = t.partitions.read();
        parts
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.into(),
                partition,
                partitions: parts.len() as u32,
            })
    }

    // ----- data -----

    /// Appends a raw record batch (built with [`BatchBuilder`]) to a partition; an unknown
    /// topic is created first when [`LogOptions::auto_create_topics`] is on.
    pub fn append(&self, topic: &str, partition: u32, batch: Vec<u8>) -> Result<AppendInfo> {
        self.check_open()?;
        self.topic_or_create(topic)?;
        let info = self.partition(topic, partition)?.append(batch)?;
        self.notify_appended();
        Ok(info)
    }

    /// Appends plain records (no producer id) in one batch; a convenience for tools and tests.
    pub fn append_records(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<AppendInfo> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        let err = |source| LogError::Batch {
            topic: topic.into(),
            partition,
            source,
        };
        for r in records {
            b.push(r).map_err(err)?;
        }
        let batch = b.build().map_err(err)?;
        self.append(topic, partition, batch)
    }

    /// Reads whole batches from `offset`.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<FetchResult> {
        self.partition(topic, partition)?
            .fetch(offset, max_bytes, isolation)
    }

    /// Resolves earliest / latest / by-timestamp offsets.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
        isolation: Isolation,
    ) -> Result<Option<i64>> {
        self.partition(topic, partition)?
            .list_offset(spec, isolation)
    }

    pub(crate) fn notify_appended(&self) {
        let mut g = self.inner.appended.lock();
        *g = g.wrapping_add(1);
        self.inner.appended_cv.notify_all();
    }

    /// Wakes every [`Log::wait_for_append`] (and so every consumer's poll) now, as if
    /// something was appended: a stopping task's consumer returns at once.
    pub fn wake_waiters(&self) {
        self.notify_appended();
    }

    /// A counter that changes on every append; pass it to [`Log::wait_for_append`].
    pub fn append_generation(&self) -> u64 {
        *self.inner.appended.lock()
    }

    /// Waits until something was appended after `generation` was read, or `timeout`.
    pub fn wait_for_append(&self, generation: u64, timeout: Duration) {
        let mut g = self.inner.appended.lock();
        if *g == generation && !self.inner.closed.load(Ordering::Acquire) {
            self.inner.appended_cv.wait_for(&mut g, timeout);
        }
    }

    /// A producer (idempotent unless configured otherwise).
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer> {
        Producer::new(self.clone(), config, None)
    }

    /// A transactional producer; fences any older instance with the same id.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        config: ProducerConfig,
    ) -> Result<Producer> {
        Producer::new(self.clone(), config, Some(transactional_id.to_string()))
    }

    /// A consumer.
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }

    // ----- producer ids and transactions -----

    fn load_pid_block(&self) -> Result<()> {
        let path = self.inner.dir.join("producer-ids");
        let start = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<i64>().map_err(|e| LogError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(LogError::io("read", &path, e)),
        };
        *self.inner.next_pid.lock() = (start, start);
        Ok(())
    }

    pub(crate) fn allocate_producer_id(&self) -> Result<i64> {
        let mut g = self.inner.next_pid.lock();
        if g.0 >= g.1 {
            let end = g.1.max(g.0) + PID_BLOCK;
            write_file(
                &self.inner.dir.join("producer-ids"),
                end.to_string().as_bytes(),
            )?;
            g.1 = end;
        }
        let id = g.0;
        g.0 += 1;
        Ok(id)
    }

    fn ensure_internal_topics(&self) -> Result<()> {
        let compact = vec![
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("segment.bytes".to_string(), (64u64 << 20).to_string()),
        ];
        if self.topic(OFFSETS_TOPIC).is_err() {
            self.create_topic(
                OFFSETS_TOPIC,
                self.inner.options.offsets_topic_partitions.max(1),
                &compact,
            )?;
        }
        if self.topic(TXN_TOPIC).is_err() {
            self.create_topic(TXN_TOPIC, 1, &compact)?;
        }
        Ok(())
    }

    /// Reads every committed record of a topic partition, from its start to its last stable
    /// offset, calling `f` with each record and its offset: how the log, the SQL catalog and
    /// the worker load their compacted bookkeeping topics.
    pub fn read_all(
        &self,
        topic: &str,
        partition: u32,
        mut f: impl FnMut(i64, Record),
    ) -> Result<()> {
        let p = self.partition(topic, partition)?;
        let mut offset = p.info().log_start_offset;
        loop {
            let r = p.fetch(offset, 4 << 20, Isolation::ReadCommitted)?;
            if r.data.is_empty() {
                return Ok(());
            }
            let (records, next) =
                decode_fetch(&r, Isolation::ReadCommitted).map_err(|source| LogError::Batch {
                    topic: topic.into(),
                    partition,
                    source,
                })?;
            for rec in records {
                f(rec.offset, rec.record);
            }
            offset = next;
        }
    }

    fn write_txn_record(&self, rec: &TxnRecord) -> Result<()> {
        let value = serde_json::to_vec(rec).unwrap_or_default();
        let r = Record {
            key: Some(Bytes::from(rec.transactional_id.clone())),
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
            timestamp: now_ms(),
        };
        self.append_records(TXN_TOPIC, 0, &[r])?;
        Ok(())
    }

    fn recover_transactions(&self) -> Result<()> {
        let mut records = Vec::new();
        self.read_all(TXN_TOPIC, 0, |_, r| {
            if let Some(v) = r.value {
                if let Ok(rec) = serde_json::from_slice::<TxnRecord>(&v) {
                    records.push(rec);
                }
            }
        })?;
        let mut coord = self.inner.txns.lock();
        for rec in records {
            coord.load(rec);
        }
        let unfinished = coord.unfinished();
        drop(coord);
        for rec in unfinished {
            let commit = rec.status == crate::txn::TxnStatus::PrepareCommit;
            tracing::info!(transactional_id = %rec.transactional_id, commit, "Completing a transaction left open by a crash.");
            let plan = EndPlan {
                partitions: rec.partitions.clone(),
                commit,
                producer_id: rec.producer_id,
                epoch: rec.epoch,
                prepare: rec.clone(),
            };
            self.execute_end(&rec.transactional_id, &plan)?;
        }
        // Transactions open in partitions that the coordinator never recorded (a crash
        // between the data and its record cannot happen, but a bug must not hang readers
        // behind the last stable offset forever).
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions.read().iter() {
                for pid in p.open_transactions() {
                    tracing::warn!(topic = %t.name, partition = p.id(), producer_id = pid, "Aborting an orphaned open transaction.");
                    // The producer's own epoch: aborting must not fence its id for good.
                    let epoch = p.producer_epoch(pid).unwrap_or(0);
                    p.append_marker(pid, epoch, false, 0)?;
                }
            }
        }
        Ok(())
    }

    fn load_offsets(&self) -> Result<()> {
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

    /// Writes markers for a decided transaction and marks it complete. Idempotent: markers
    /// go only where the producer still has a transaction open.
    fn execute_end(&self, id: &str, plan: &EndPlan) -> Result<()> {
        self.write_txn_record(&plan.prepare)?;
        crate::fault::point("txn-after-prepare");
        for (topic, partition) in &plan.partitions {
            match self.partition(topic, *partition) {
                Ok(p) => {
                    p.append_marker(plan.producer_id, plan.epoch, plan.commit, 0)?;
                }
                // A topic deleted mid-transaction has nothing left to mark.
                Err(LogError::UnknownTopic(_)) | Err(LogError::UnknownPartition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        crate::fault::point("txn-after-markers");
        self.inner
            .offsets
            .lock()
            .end_txn(plan.producer_id, plan.commit);
        let done = self.inner.txns.lock().complete(id, plan.commit);
        if let Some(done) = done {
            self.write_txn_record(&done)?;
        }
        self.notify_appended();
        Ok(())
    }

    fn txn_error(&self, id: &str, e: TxnError) -> LogError {
        match e {
            TxnError::Fenced { epoch, current, .. } => {
                let pid = self.inner.txns.lock().get(id).map_or(-1, |r| r.producer_id);
                LogError::ProducerFenced {
                    producer_id: pid,
                    epoch,
                    current_epoch: current,
                }
            }
            other => LogError::InvalidTxnState {
                transactional_id: id.into(),
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn txn_init(&self, id: &str, timeout: Duration) -> Result<(i64, i16)> {
        self.check_open()?;
        let timeout = timeout.min(self.inner.options.max_transaction_timeout);
        let mut new_pid = None;
        let result = {
            let mut coord = self.inner.txns.lock();
            let pid =
                if coord.get(id).is_none() || coord.get(id).is_some_and(|r| r.epoch == i16::MAX) {
                    Some(self.allocate_producer_id()?)
                } else {
                    None
                };
            coord.init(id, timeout.as_millis() as u64, || {
                new_pid = pid;
                pid.unwrap_or(-1)
            })
        };
        let (rec, abort) = result.map_err(|e| self.txn_error(id, e))?;
        if let Some(plan) = abort {
            self.write_txn_record(&plan.prepare)?;
            for (topic, partition) in &plan.partitions {
                if let Ok(p) = self.partition(topic, *partition) {
                    p.append_marker(plan.producer_id, plan.epoch, false, 0)?;
                }
            }
            self.inner.offsets.lock().end_txn(plan.producer_id, false);
            self.notify_appended();
        }
        self.write_txn_record(&rec)?;
        Ok((rec.producer_id, rec.epoch))
    }

    pub(crate) fn txn_add_partitions(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        parts: &[(String, u32)],
    ) -> Result<()> {
        let rec = self
            .inner
            .txns
            .lock()
            .add_partitions(now_ms(), id, pid, epoch, parts);
        match rec.map_err(|e| self.txn_error(id, e))? {
            Some(rec) => self.write_txn_record(&rec),
            None => Ok(()),
        }
    }

    pub(crate) fn txn_add_offsets(
        &self,
        pid: i64,
        group: &str,
        offsets: &[(TopicPartition, CommittedOffset)],
    ) {
        let mut store = self.inner.offsets.lock();
        for (tp, v) in offsets {
            store.add_pending(pid, group, tp.clone(), v.clone());
        }
    }

    pub(crate) fn txn_end(&self, id: &str, pid: i64, epoch: i16, commit: bool) -> Result<()> {
        let plan = self.inner.txns.lock().end(id, pid, epoch, commit);
        match plan.map_err(|e| self.txn_error(id, e))? {
            Some(plan) => self.execute_end(id, &plan),
            None => Ok(()),
        }
    }

    /// Transactional ids and their state.
    pub fn transactions(&self) -> Vec<TxnRecord> {
        self.inner.txns.lock().list()
    }

    // ----- consumer groups -----

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

    // ----- housekeeping and shutdown -----

    fn start_housekeeper(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let handle = std::thread::Builder::new()
            .name("sluice-log-housekeeper".into())
            .spawn(move || housekeeping_loop(weak));
        match handle {
            Ok(h) => *self.inner.housekeeper.handle.lock() = Some(h),
            Err(e) => {
                tracing::error!(error = %e, "Could not start the log housekeeping thread; retention, compaction and timeouts will not run.")
            }
        }
    }

    /// Runs one round of retention, compaction, transaction and session timeouts now.
    pub fn run_housekeeping(&self) -> Result<()> {
        let now = now_ms();
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in &topics {
            let parts: Vec<Arc<Partition>> = t.partitions.read().clone();
            for p in parts {
                p.enforce_retention(now)?;
                p.compact(now)?;
                p.checkpoint()?;
            }
        }
        let expired = self.inner.txns.lock().expire(now);
        for (id, plan) in expired {
            tracing::warn!(transactional_id = %id, "Aborting a transaction that passed its timeout.");
            self.execute_end(&id, &plan)?;
        }
        let gone = self.inner.groups.lock().expire(now as u64);
        for (group, member) in gone {
            tracing::info!(group = %group, member = %member, "Removed a group member whose session timed out.");
        }
        Ok(())
    }

    /// Fsyncs every partition with unsynced appends.
    pub fn sync_all(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions.read().iter() {
                p.sync_if_dirty()?;
            }
        }
        Ok(())
    }

    /// Closes the log cleanly: stops housekeeping, fsyncs and indexes every partition, marks
    /// the shutdown clean and releases the directory lock. Later calls do nothing.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl Inner {
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        *self.housekeeper.stop.lock() = true;
        self.housekeeper.wake.notify_all();
        self.appended_cv.notify_all();
        if let Some(h) = self.housekeeper.handle.lock().take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in topics {
            for p in t.partitions.read().iter() {
                p.close()?;
            }
        }
        write_file(&self.dir.join(".clean-shutdown"), b"")?;
        if let Some(lock) = self.lock.lock().take() {
            let _ = lock.unlock();
        }
        tracing::debug!(dir = %self.dir.display(), "Closed the log.");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "Closing the log failed; the next open will recover.");
        }
    }
}

fn housekeeping_loop(weak: Weak<Inner>) {
    let mut last_full = Instant::now();
    let mut last_sync = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = inner
            .options
            .housekeeping_interval
            .min(match inner.options.fsync {
                FsyncPolicy::Interval(d) => d,
                _ => Duration::from_secs(3600),
            });
        {
            let mut stop = inner.housekeeper.stop.lock();
            if *stop {
                return;
            }
            inner
                .housekeeper
                .wake
                .wait_for(&mut stop, tick.max(Duration::from_millis(5)));
            if *stop {
                return;
            }
        }
        let log = Log { inner };
        if let FsyncPolicy::Interval(d) = log.inner.options.fsync {
            if last_sync.elapsed() >= d {
                if let Err(e) = log.sync_all() {
                    tracing::error!(error = %e, "Periodic fsync failed.");
                }
                last_sync = Instant::now();
            }
        }
        if last_full.elapsed() >= log.inner.options.housekeeping_interval {
            if let Err(e) = log.run_housekeeping() {
                tracing::error!(error = %e, "Log housekeeping failed; will retry.");
            }
            last_full = Instant::now();
        }
        // Drop our strong reference before sleeping so the last user can close the log.
        drop(log);
    }
}

/// Takes the data loss the partitions found on open, logs it and adds it to the list in
/// `data-loss.json`; then checkpoints every partition, so a loss is found once and recorded
/// before the files that show it are forgotten. Returns the whole list.
fn record_data_loss(dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) -> Result<Vec<DataLoss>> {
    let path = dir.join(DATA_LOSS_FILE);
    let mut losses: Vec<DataLoss> = match std::fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
            path: path.clone(),
            position: 0,
            reason: format!("{e}; fix or delete the file (it only lists earlier data loss)"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(LogError::io("read", &path, e)),
    };
    let mut found = Vec::new();
    for t in topics.values() {
        for p in t.partitions.read().iter() {
            found.extend(p.take_detected_losses());
        }
    }
    if !found.is_empty() {
        losses.extend(found);
        save_data_loss(dir, &losses)?;
    }
    for t in topics.values() {
        for p in t.partitions.read().iter() {
            p.checkpoint()?;
        }
    }
    if !losses.is_empty() {
        tracing::error!(
            count = losses.len(),
            file = %path.display(),
            "This log has lost records (listed in the file and on the worker's /health); delete the file to acknowledge."
        );
    }
    Ok(losses)
}

fn save_data_loss(dir: &Path, losses: &[DataLoss]) -> Result<()> {
    let json = serde_json::to_vec_pretty(losses).unwrap_or_default();
    write_file(&dir.join(DATA_LOSS_FILE), &json)
}

fn open_topic(
    name: &str,
    dir: &Path,
    partitions: u32,
    config: Arc<TopicConfig>,
    fsync: FsyncPolicy,
    recover: bool,
) -> Result<Topic> {
    std::fs::create_dir_all(dir).map_err(|e| LogError::io("create topic dir", dir, e))?;
    let name: Arc<str> = Arc::from(name);
    let mut parts = Vec::with_capacity(partitions as usize);
    for id in 0..partitions {
        parts.push(Arc::new(Partition::open(
            Arc::clone(&name),
            id,
            &dir.join(id.to_string()),
            Arc::clone(&config),
            fsync,
            recover,
        )?));
    }
    Ok(Topic {
        name,
        dir: dir.to_path_buf(),
        config: RwLock::new(config),
        partitions: RwLock::new(parts),
    })
}
