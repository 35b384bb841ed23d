//! The Raft log and the metadata state machine on the node's disk.
//!
//! The log, the vote and the purge point live in a small RocksDB (`<data-dir>/cluster/raft`),
//! every write synced before it is acknowledged: a vote or entry a node answered for must
//! survive its crash, or two leaders could be elected in one term. The state machine is the
//! [`Metadata`] in memory; its snapshots are written to the same database, so a restart
//! loads the last snapshot and openraft replays the committed entries after it.

use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Peer, TypeConfig};
use crate::metadata::{Applied, Metadata, NodeId};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";
const SNAPSHOT: &[u8] = b"m/snapshot";
const LOG_PREFIX: u8 = b'l';

/// Opens (or creates) the store in `dir`.
pub(crate) fn open(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Metadata is small: keep RocksDB's own footprint small too.
    opts.set_max_background_jobs(1);
    opts.set_write_buffer_size(4 << 20);
    opts.set_keep_log_file_num(2);
    opts.set_recycle_log_file_num(0);
    DB::open(&opts, dir).map(Arc::new)
}

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn read_err(subject: ErrorSubject<NodeId>, e: &dyn std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::error(e.to_string())).into()
}

fn write_err(subject: ErrorSubject<NodeId>, e: &dyn std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::new(subject, ErrorVerb::Write, AnyError::error(e.to_string())).into()
}

fn get_json<T: for<'de> Deserialize<'de>>(
    db: &DB,
    key: &[u8],
    subject: ErrorSubject<NodeId>,
) -> StorageResult<Option<T>> {
    match db.get(key).map_err(|e| read_err(subject.clone(), &e))? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| read_err(subject, &e)),
    }
}

fn put_json<T: Serialize>(
    db: &DB,
    key: &[u8],
    value: &T,
    subject: ErrorSubject<NodeId>,
) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| write_err(subject.clone(), &e))?;
    db.put_opt(key, bytes, &synced())
        .map_err(|e| write_err(subject, &e))
}

/// The Raft log (and vote) of this node.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> LogStore {
        LogStore { db }
    }

    fn last_entry(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let mut it = self
            .db
            .iterator(IteratorMode::From(&log_key(u64::MAX), Direction::Reverse));
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(read_err(ErrorSubject::Logs, &e)),
            Some(Ok((k, v))) if k.first() == Some(&LOG_PREFIX) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(&v).map_err(|e| read_err(ErrorSubject::Logs, &e))?;
                Ok(Some(entry.log_id))
            }
            Some(Ok(_)) => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&log_key(start), Direction::Forward))
        {
            let (k, v) = item.map_err(|e| read_err(ErrorSubject::Logs, &e))?;
            if k.first() != Some(&LOG_PREFIX) || k.len() != 9 {
                break;
            }
            let index = u64::from_be_bytes(k[1..].try_into().expect("9-byte key"));
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| read_err(ErrorSubject::Logs, &e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            get_json(&self.db, PURGED, ErrorSubject::Store)?;
        let last_log_id = self.last_entry()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        put_json(&self.db, VOTE, vote, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_json(&self.db, VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        put_json(&self.db, COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(get_json::<Option<LogId<NodeId>>>(&self.db, COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| write_err(ErrorSubject::Log(entry.log_id), &e))?;
            batch.put(log_key(entry.log_id.index), bytes);
        }
        // Synced: the callback tells openraft the entries are durable.
        let result = self
            .db
            .write_opt(batch, &synced())
            .map_err(|e| std::io::Error::other(e.to_string()));
        let failed = result.as_ref().err().map(ToString::to_string);
        callback.log_io_completed(result);
        match failed {
            None => Ok(()),
            Some(e) => Err(write_err(ErrorSubject::Logs, &e)),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(log_id.index), log_key(u64::MAX));
        batch.delete(log_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| write_err(ErrorSubject::Logs, &e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The purge point first: a crash between the two leaves entries below it, which
        // are ignored, never a log that claims entries it no longer has.
        put_json(&self.db, PURGED, &log_id, ErrorSubject::Store)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(0), log_key(log_id.index + 1));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| write_err(ErrorSubject::Logs, &e))
    }
}

/// A snapshot as stored: its meta and the metadata it holds.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Peer>,
    data: Vec<u8>,
}

/// The metadata state machine: applies committed commands and publishes each new state.
#[derive(Debug)]
pub(crate) struct StateMachine {
    db: Arc<DB>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
    metadata: Metadata,
    publish: watch::Sender<Arc<Metadata>>,
    snapshots_built: u64,
}

impl StateMachine {
    /// The state machine of `db`, at its last snapshot; every new state goes to `publish`.
    pub(crate) fn load(db: Arc<DB>, publish: watch::Sender<Arc<Metadata>>) -> StorageResult<Self> {
        let mut sm = StateMachine {
            db,
            last_applied: None,
            membership: StoredMembership::default(),
            metadata: Metadata::default(),
            publish,
            snapshots_built: 0,
        };
        if let Some(s) = get_json::<StoredSnapshot>(&sm.db, SNAPSHOT, ErrorSubject::Snapshot(None))?
        {
            sm.restore(&s)?;
        }
        Ok(sm)
    }

    fn restore(&mut self, s: &StoredSnapshot) -> StorageResult<()> {
        self.metadata = serde_json::from_slice(&s.data)
            .map_err(|e| read_err(ErrorSubject::Snapshot(Some(s.meta.signature())), &e))?;
        self.last_applied = s.meta.last_log_id;
        self.membership = s.meta.last_membership.clone();
        self.publish.send_replace(Arc::new(self.metadata.clone()));
        Ok(())
    }
}

/// Builds a snapshot of the state as it was when asked.
#[derive(Debug)]
pub(crate) struct SnapshotBuilder {
    db: Arc<DB>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
    data: Vec<u8>,
    id: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.id),
            None => format!("--{}", self.id),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: std::mem::take(&mut self.data),
        };
        // A snapshot installed from the leader meanwhile may be newer than this one: keep it.
        let current: Option<StoredSnapshot> =
            get_json(&self.db, SNAPSHOT, ErrorSubject::Snapshot(None))?;
        if current.is_none_or(|c| c.meta.last_log_id <= meta.last_log_id) {
            put_json(
                &self.db,
                SNAPSHOT,
                &stored,
                ErrorSubject::Snapshot(Some(meta.signature())),
            )?;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut answers = Vec::new();
        let mut changed = false;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => answers.push(Applied::default()),
                EntryPayload::Normal(command) => {
                    let applied = self.metadata.apply(&command);
                    changed |= applied.refused.is_none();
                    answers.push(applied);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    answers.push(Applied::default());
                }
            }
        }
        if changed {
            self.publish.send_replace(Arc::new(self.metadata.clone()));
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            data: serde_json::to_vec(&self.metadata).expect("metadata serializes"),
            id: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.restore(&stored)?;
        put_json(
            &self.db,
            SNAPSHOT,
            &stored,
            ErrorSubject::Snapshot(Some(meta.signature())),
        )
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(
            get_json::<StoredSnapshot>(&self.db, SNAPSHOT, ErrorSubject::Snapshot(None))?.map(
                |s| Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                },
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    /// Stores in a fresh folder each, kept until the test ends.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let db = open(dir.path()).expect("a new store opens");
            let (publish, _) = watch::channel(Arc::new(Metadata::default()));
            let sm = StateMachine::load(Arc::clone(&db), publish)?;
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn the_store_passes_openraft_s_storage_suite() {
        Suite::test_all(Builder).expect("every storage test passes");
    }

    /// Entries, the vote and a snapshot outlive the process (reopened from disk).
    #[tokio::test]
    async fn a_reopened_store_has_its_entries_vote_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new_committed(3, 2);
        {
            let db = open(dir.path()).unwrap();
            let mut log = LogStore::new(Arc::clone(&db));
            log.save_vote(&vote).await.unwrap();
            let (publish, _) = watch::channel(Arc::new(Metadata::default()));
            let mut sm = StateMachine::load(Arc::clone(&db), publish).unwrap();
            let entry = Entry::<TypeConfig> {
                log_id: openraft::testing::log_id(3, 2, 1),
                payload: EntryPayload::Normal(crate::metadata::Command::RegisterNode {
                    id: 2,
                    addr: "127.0.0.1:9092".into(),
                    api: None,
                }),
            };
            sm.apply([entry]).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        let db = open(dir.path()).unwrap();
        let mut log = LogStore::new(Arc::clone(&db));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let (publish, metadata) = watch::channel(Arc::new(Metadata::default()));
        let mut sm = StateMachine::load(db, publish).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap().0,
            Some(openraft::testing::log_id(3, 2, 1))
        );
        assert_eq!(metadata.borrow().nodes[&2].addr, "127.0.0.1:9092");
    }
}
