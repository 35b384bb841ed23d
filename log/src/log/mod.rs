//! The log as a whole: one data directory of topics, plus the coordinators that live beside
//! them (consumer groups, committed offsets, transactions) and a housekeeping thread.
//!
//! ```text
//!  <data-dir>/
//!    .lock                    held while a process owns the directory
//!    .clean-shutdown          present only between a clean close and the next open
//!    producer-ids             the next unallocated producer-id block
//!    data-loss.json           records lost to damage or missing files (delete to acknowledge)
//!    remote-storage.json      the tiered storage's url and options (secrets left out)
//!    topics/<name>/topic.json partitions, config overrides, the topic id
//!    topics/<name>/<p>/       segments of partition p, its offsets.checkpoint, and for a
//!                             tiered topic remote.json (the segments uploaded)
//! ```
//!
//! The shell is split by concern; each file adds an `impl Log` block:
//!
//! - `topics`: names, create, alter, delete, and loading the topic folders on open.
//! - `data`: append, fetch, offset lookups, append notifications, producers and consumers.
//! - `transactions`: producer ids, `__transaction_state`, and the single executor that ends
//!   every transaction (commit, abort, fencing abort, timeout, recovery).
//! - `groups`: consumer groups and committed offsets in `__consumer_offsets`.
//! - `housekeeping`: the background thread for retention, compaction, timeouts and fsync.
//! - `tiering`: the background thread that uploads closed segments of tiered topics.
//! - `data_loss`: the list of lost records in `data-loss.json`.
//! - `schemas`: the schema registry's store in `__sluice_schemas` ([`Log::schemas`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint::DataLoss;
use crate::config::LogOptions;
use crate::error::{LogError, Result};
use crate::group::GroupCoordinator;
use crate::offsets::{OFFSETS_TOPIC, OffsetStore};
use crate::remote::{RemoteStorage, RemoteTier};
use crate::schema::store::SchemaStore;
use crate::segment::write_file;
use crate::txn::TxnCoordinator;

mod data;
mod data_loss;
mod groups;
mod housekeeping;
mod schemas;
mod tiering;
mod topics;
mod transactions;

pub use self::groups::{GroupInfo, GroupPartitionLag, LAG_SCAN_BYTES, PartitionReset, ResetTo};
pub use self::topics::{Topic, TopicDescription, is_internal_topic, validate_topic_name};
pub use self::transactions::TXN_TOPIC;

use self::data_loss::record_data_loss;
use self::housekeeping::Housekeeper;
use self::topics::load_topics;

/// Config of the log's compacted bookkeeping topics.
fn internal_topic_config() -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), (64u64 << 20).to_string()),
    ]
}

/// How many producer ids a log takes at once.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Hands out the first id of a new block of [`PRODUCER_ID_BLOCK`] producer ids, unique
/// across every log that shares the source.
#[derive(Clone)]
pub struct ProducerIdSource(pub Arc<dyn Fn() -> std::result::Result<i64, String> + Send + Sync>);

/// Writes the markers that end a transaction to partitions another node leads (a cluster's
/// replication layer, through their leaders), and answers once they are replicated there.
pub trait RemoteMarkers: Send + Sync {
    /// Whether every partition of `topic` goes through [`Self::write`], led here or not
    /// (a cluster's offsets topic: ending a transaction there settles group offsets).
    fn owns(&self, topic: &str) -> bool;

    /// Whether the cluster has `topic`-`partition` (this node may hold no copy of it).
    fn exists(&self, topic: &str, partition: u32) -> bool;

    /// Ends `producer_id`'s transaction (`commit` or abort) in `partitions`, as the
    /// coordinator of `coordinator_epoch`.
    fn write(
        &self,
        partitions: &[(String, u32)],
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<()>;
}

/// Keeps the transaction coordinator's records of replicated transactional ids (a Kafka
/// client's, in a cluster: [`crate::txn::TxnRecord::replicated`]) in the cluster's replicated
/// topic instead of this log's `__transaction_state`, so that the coordinator can move to
/// another node with them.
pub trait TxnReplication: Send + Sync {
    /// Persists `rec`, returning once every in-sync replica of its partition has it: the
    /// log acts on the record (writes markers, answers the client) only after that. On an
    /// error nothing may be assumed of the record, and the implementor makes the log read
    /// the replicated records again ([`Log::forget_transactions`]) before it answers for
    /// the id anew.
    fn replicate(&self, rec: &crate::txn::TxnRecord) -> Result<()>;

    /// Whether this node coordinates `transactional_id` now; a queued end of an id another
    /// node coordinates is dropped (that node ends it from the replicated records).
    fn coordinates(&self, transactional_id: &str) -> bool;

    /// The lock the implementor holds across its own changes of the ids sharing
    /// `transactional_id`'s replicated partition (a client's request, an import of the
    /// partition's records): the log holds it across a change it starts by itself
    /// (housekeeping's expiry and retried ends), so that no import replaces records under
    /// a change in flight.
    fn lock(&self, transactional_id: &str) -> Arc<Mutex<()>>;

    /// The coordinator epoch of `transactional_id` here (the leader epoch of its partition,
    /// which this node leads), carried by the markers: leaders refuse markers of an older
    /// coordinator epoch once a newer one wrote for the producer. An error when this node
    /// does not lead the partition (it must not borrow its successor's epoch).
    fn coordinator_epoch(&self, transactional_id: &str) -> Result<i32>;

    /// Readies this node to change `transactional_id`'s records, for the log's own
    /// producers (a Kafka client's requests do the same themselves): an error when another
    /// node coordinates the id, and before `Ok` the records of its partition imported if
    /// this node took the partition's leadership since it last read them. Called with
    /// [`Self::lock`] held.
    fn acquire(&self, transactional_id: &str) -> Result<()>;
}

/// A [`TxnReplication`] as the log keeps it.
#[derive(Clone)]
pub(crate) struct TxnLog(pub(crate) Arc<dyn TxnReplication>);

impl std::fmt::Debug for TxnLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TxnReplication")
    }
}

/// A [`RemoteMarkers`] as the log keeps it.
#[derive(Clone)]
pub(crate) struct Markers(pub(crate) Arc<dyn RemoteMarkers>);

impl std::fmt::Debug for Markers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteMarkers")
    }
}

/// A [`WriteGate`] as the log keeps it.
#[derive(Clone)]
pub(crate) struct Gate(pub(crate) Arc<dyn WriteGate>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteGate")
    }
}

impl std::fmt::Debug for ProducerIdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerIdSource")
    }
}

/// Decides whether this node may take a write of a replicated partition now (a cluster's
/// replication layer): the embedded producer asks before it appends, with whether it wants
/// every in-sync replica (`acks=all`), and gets `NotLeader` or `NotEnoughReplicas` back.
pub trait WriteGate: Send + Sync {
    /// `Ok` when a write of `topic`-`partition` may go ahead here.
    fn check(&self, topic: &str, partition: u32, all: bool) -> Result<()>;
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
    /// Where blocks of producer ids come from when not from this log alone (a cluster).
    pid_source: RwLock<Option<ProducerIdSource>>,
    /// The replication layer's say on writes (a cluster).
    write_gate: RwLock<Option<Gate>>,
    /// Where markers for partitions led elsewhere go (a cluster).
    remote_markers: RwLock<Option<Markers>>,
    /// Where replicated transactional ids' records go (a cluster).
    txn_log: RwLock<Option<TxnLog>>,
    /// Ends whose remote markers could not be written yet: retried by housekeeping (the
    /// decision is durable in the Prepare record already).
    unfinished_ends: Mutex<Vec<(String, crate::txn::EndPlan)>>,
    /// Transactional ids whose end is being carried out (one at a time per id).
    ending: Mutex<std::collections::HashSet<String>>,
    appended: Mutex<u64>,
    appended_cv: Condvar,
    /// The same counter for async waiters (the Kafka listener's long-polling fetches), which
    /// must not hold a thread while they wait.
    appended_watch: tokio::sync::watch::Sender<u64>,
    closed: AtomicBool,
    housekeeper: Housekeeper,
    /// The tiered storage's upload thread (stopped like the housekeeper).
    uploader: Housekeeper,
    /// The object store of tiered topics, when the log has one.
    remote: Option<Arc<RemoteTier>>,
    /// Records lost to damage or missing files, as kept in `data-loss.json`.
    losses: Mutex<Vec<DataLoss>>,
    /// The schema registry's state, as replayed from `__sluice_schemas`.
    schemas: Mutex<SchemaStore>,
}

/// The embedded log. Cheap to clone; every clone is the same log. The directory is closed
/// cleanly by [`Log::close`] or when the last clone (and every producer and consumer made
/// from it) is dropped.
#[derive(Debug, Clone)]
pub struct Log {
    pub(crate) inner: Arc<Inner>,
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

        let storage = match &options.remote_storage {
            Some(s) => {
                s.save(&dir)?;
                Some(s.clone())
            }
            None => RemoteStorage::load(&dir)?,
        };
        let remote = match storage {
            Some(s) => Some(Arc::new(RemoteTier::new(s, options.remote_retry_timeout)?)),
            None => None,
        };
        let topics = load_topics(&topics_dir, &options, remote.as_ref(), recover)?;
        let losses = record_data_loss(&dir, &topics)?;
        // Only now, with every segment checked and every loss recorded, is the clean-shutdown
        // marker dropped: a start that fails above leaves it, so the next gives the same answer.
        let _ = std::fs::remove_file(&clean_marker);

        let inner = Arc::new(Inner {
            dir: dir.clone(),
            next_pid: Mutex::new((0, 0)),
            pid_source: RwLock::new(None),
            write_gate: RwLock::new(None),
            remote_markers: RwLock::new(None),
            txn_log: RwLock::new(None),
            unfinished_ends: Mutex::new(Vec::new()),
            ending: Mutex::new(std::collections::HashSet::new()),
            options,
            lock: Mutex::new(Some(lock)),
            topics: RwLock::new(topics),
            groups: Mutex::new(GroupCoordinator::default()),
            offsets: Mutex::new(OffsetStore::default()),
            txns: Mutex::new(TxnCoordinator::default()),
            appended: Mutex::new(0),
            appended_cv: Condvar::new(),
            appended_watch: tokio::sync::watch::Sender::new(0),
            closed: AtomicBool::new(false),
            losses: Mutex::new(losses),
            schemas: Mutex::new(SchemaStore::default()),
            housekeeper: Housekeeper::default(),
            uploader: Housekeeper::default(),
            remote,
        });
        let log = Log { inner };
        log.load_pid_block()?;
        log.ensure_internal_topics()?;
        log.recover_transactions()?;
        log.load_offsets()?;
        log.load_schemas()?;
        log.start_housekeeper();
        log.start_uploader();
        Ok(log)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    /// The remote storage of tiered topics, if the log has one.
    pub fn remote_storage(&self) -> Option<&RemoteStorage> {
        self.inner.remote.as_deref().map(RemoteTier::storage)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(LogError::Closed)
        } else {
            Ok(())
        }
    }

    fn ensure_internal_topics(&self) -> Result<()> {
        let compact = internal_topic_config();
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
        self.appended_cv.notify_all();
        self.uploader.stop();
        self.housekeeper.stop();
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
