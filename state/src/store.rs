//! What every store shares: the [`StateStore`] contract (epoch overlay, commit, abort,
//! restore, checkpoint) and its one implementation over a RocksDB instance, `Core`.
//!
//! ```text
//!  operator ── put/delete ──► overlay (BTreeMap, this epoch only) ◄── get/range read it first
//!                                │ changes()
//!                                ▼
//!  task ── changelog records ──► log transaction ── commits ──► commit(next_offset)
//!                                                                │ one WriteBatch:
//!                                                                ▼ overlay + applied offset
//!                                                             RocksDB
//!  restart: RocksDB (local files or a checkpoint) + replay changelog [applied, LSO)
//! ```

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{DB, WriteBatch};
use sluice_log::{Log, LogError};

use crate::changelog::{self, Change, ChangelogTopic};
use crate::codec::{
    self, META_APPLIED, META_KIND, TAG_DATA, decode_session_body, session_index_key,
};
use crate::env::{StateEnv, StoreId, remove_dir};
use crate::error::{Result, StateError};
use crate::scan::Scan;

/// A file whose presence in a store folder makes the next open wipe and rebuild the store;
/// written when RocksDB reports corruption while the store is in use.
const CORRUPT_MARKER: &str = "SLUICE-CORRUPT";

/// Estimated bookkeeping bytes per overlay entry (map node share, two `Bytes` headers), so
/// [`StateStore::pending_bytes`] tracks memory rather than payload only.
const OVERLAY_ENTRY_OVERHEAD: usize = 64;

/// The exactly-once contract of a store, common to every kind.
///
/// A task drives its stores through epochs:
///
/// 1. the operator reads and writes; writes land in an in-memory overlay that reads consult
///    first, RocksDB is untouched;
/// 2. the task writes [`changes`](StateStore::changes) to the store's changelog partition
///    inside the epoch's log transaction;
/// 3. once that transaction committed, the task calls [`commit`](StateStore::commit) with the
///    changelog offset after the last record it wrote: the overlay and that offset reach
///    RocksDB in one atomic write. If the transaction aborted, it calls
///    [`abort`](StateStore::abort) and the overlay is dropped.
///
/// So RocksDB never holds uncommitted state and [`applied_offset`](StateStore::applied_offset)
/// says exactly which changelog prefix it reflects. After a crash between steps 2 and 3 the
/// committed changes are still in the changelog, and [`restore`](StateStore::restore) replays
/// them.
pub trait StateStore: std::fmt::Debug + Send {
    /// The store's name and partition.
    fn id(&self) -> &StoreId;

    /// The changelog partition backing the store.
    fn changelog(&self) -> &ChangelogTopic;

    /// The changelog offset up to which (exclusive) RocksDB reflects the changelog; 0 for a
    /// new store.
    fn applied_offset(&self) -> i64;

    /// The epoch's changes in store-key order: one record per key written this epoch, its
    /// last value or a tombstone.
    fn changes(&self) -> Changes<'_>;

    /// Approximate memory held by the epoch's overlay. A task may close its epoch early when
    /// this grows past its budget; nothing else bounds it.
    fn pending_bytes(&self) -> usize;

    /// Makes the epoch durable in RocksDB after its log transaction committed.
    ///
    /// `changelog_next_offset` is the offset after the last changelog record this epoch wrote
    /// (or [`applied_offset`](StateStore::applied_offset) when it wrote none). It must not be
    /// below the applied offset, and must be above it when there are changes. Idempotent for
    /// an empty epoch.
    fn commit(&mut self, changelog_next_offset: i64) -> Result<()>;

    /// Drops the epoch's overlay (its log transaction aborted).
    fn abort(&mut self);

    /// Brings RocksDB up to the committed end of the changelog and returns how many records
    /// were replayed. Call it after opening, before the first epoch, with an empty overlay.
    ///
    /// Creates the changelog topic if missing. Reads it read_committed from the applied
    /// offset; each fetch is applied in one atomic write together with the new applied
    /// offset, so an interrupted restore resumes where it stopped. When the applied offset is
    /// outside the changelog (its start was deleted by retention, or the topic was recreated
    /// shorter) the local files cannot be trusted and the store is rebuilt from the
    /// changelog alone.
    fn restore(&mut self, log: &Log) -> Result<u64>;

    /// Writes a RocksDB checkpoint (hard links where possible) of the committed state to
    /// `path`, which must not exist, and returns the applied offset it holds. Install it with
    /// [`StateEnv::install_checkpoint`], then open and `restore` to replay the tail.
    fn checkpoint(&self, path: &Path) -> Result<i64>;

    /// RocksDB's estimate of the keys it holds (`rocksdb.estimate-num-keys`), overlay
    /// excluded.
    fn approximate_num_keys(&self) -> Result<u64>;
}

/// Delegates [`StateStore`] to the store's `core` field.
macro_rules! delegate_state_store {
    ($ty:ty) => {
        impl $crate::store::StateStore for $ty {
            fn id(&self) -> &$crate::env::StoreId {
                self.core.id()
            }
            fn changelog(&self) -> &$crate::changelog::ChangelogTopic {
                self.core.changelog()
            }
            fn applied_offset(&self) -> i64 {
                self.core.applied_offset()
            }
            fn changes(&self) -> $crate::store::Changes<'_> {
                self.core.changes()
            }
            fn pending_bytes(&self) -> usize {
                self.core.pending_bytes()
            }
            fn commit(&mut self, changelog_next_offset: i64) -> $crate::error::Result<()> {
                self.core.commit(changelog_next_offset)
            }
            fn abort(&mut self) {
                self.core.abort()
            }
            fn restore(&mut self, log: &sluice_log::Log) -> $crate::error::Result<u64> {
                self.core.restore(log)
            }
            fn checkpoint(&self, path: &std::path::Path) -> $crate::error::Result<i64> {
                self.core.checkpoint(path)
            }
            fn approximate_num_keys(&self) -> $crate::error::Result<u64> {
                self.core.approximate_num_keys()
            }
        }
    };
}
pub(crate) use delegate_state_store;

/// The epoch's changelog records, in store-key order; see [`StateStore::changes`].
#[derive(Debug)]
pub struct Changes<'a> {
    inner: std::collections::btree_map::Range<'a, Bytes, Slot>,
}

/// An overlay entry: the key's value this epoch (`None`: deleted), and whether the key is
/// new to the store this epoch ([`Core::write_new`]), so that deleting it again in the
/// same epoch leaves nothing to commit.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) value: Option<Bytes>,
    fresh: bool,
}

impl Iterator for Changes<'_> {
    type Item = Change;

    fn next(&mut self) -> Option<Change> {
        let (k, v) = self.inner.next()?;
        Some(Change {
            // The tag is not part of the changelog key; `slice` shares the bytes.
            key: k.slice(1..),
            value: v.value.clone(),
        })
    }
}

/// The kinds of store, which decide how a changelog record maps to RocksDB keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    KeyValue,
    Window,
    Session,
}

impl StoreKind {
    fn as_str(self) -> &'static str {
        match self {
            StoreKind::KeyValue => "kv",
            StoreKind::Window => "window",
            StoreKind::Session => "session",
        }
    }

    /// Adds one replayed changelog record to `batch`, deriving index keys where the kind has
    /// them; `Err` names what is malformed.
    fn apply(
        self,
        batch: &mut WriteBatch,
        body: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let key = codec::tagged(TAG_DATA, body);
        match self {
            StoreKind::KeyValue => {}
            StoreKind::Window => {
                if codec::decode_window_body(body).is_none() {
                    return Err(format!("a window key of {} bytes is too short", body.len()));
                }
            }
            StoreKind::Session => {
                let s = decode_session_body(body)
                    .ok_or_else(|| "not a session key (len, key, end, start)".to_string())?;
                let idx = session_index_key(s)
                    .ok_or_else(|| "session key longer than 4 GiB".to_string())?;
                match value {
                    Some(_) => batch.put(idx, b""),
                    None => batch.delete(idx),
                }
            }
        }
        match value {
            Some(v) => batch.put(key, v),
            None => batch.delete(key),
        }
        Ok(())
    }
}

/// The expiry watermark of window and session stores: everything below it was expired.
/// Kept per epoch so that an aborted epoch's expiry is undone with its tombstones.
#[derive(Debug, Clone, Copy)]
struct Watermark {
    committed: i64,
    pending: i64,
}

/// One store: a RocksDB instance, the epoch overlay and the applied changelog offset.
pub(crate) struct Core {
    env: StateEnv,
    id: StoreId,
    kind: StoreKind,
    path: PathBuf,
    changelog: ChangelogTopic,
    topic_config: Vec<(String, String)>,
    /// `None` only while a rebuild swaps the instance (RocksDB must be closed before its
    /// folder is deleted), or after a rebuild failed to reopen.
    db: Option<DB>,
    /// Tagged key → new value (`None`: deleted) of the current epoch.
    overlay: BTreeMap<Bytes, Slot>,
    overlay_bytes: usize,
    applied: i64,
    expired: Watermark,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("changelog", &self.changelog)
            .field("applied", &self.applied)
            .field("overlay_entries", &self.overlay.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens the store's RocksDB instance, wiping local files that are marked or found
    /// corrupt (restore then rebuilds them from the changelog).
    pub(crate) fn open(
        env: StateEnv,
        id: StoreId,
        kind: StoreKind,
        changelog: ChangelogTopic,
        retention_ms: Option<i64>,
    ) -> Result<Core> {
        id.validate()?;
        let path = env.store_dir(&id);
        let mut core = Core {
            env,
            id,
            kind,
            path,
            changelog,
            topic_config: changelog::topic_config(retention_ms),
            db: None,
            overlay: BTreeMap::new(),
            overlay_bytes: 0,
            applied: 0,
            expired: Watermark {
                committed: i64::MIN,
                pending: i64::MIN,
            },
        };
        if core.path.join(CORRUPT_MARKER).exists() {
            tracing::warn!(
                store = %core.id,
                path = %core.path.display(),
                "The store was marked corrupt; wiping it to rebuild it from its changelog."
            );
            remove_dir(&core.path)?;
        }
        match core.try_open() {
            Ok(()) => {}
            Err(StateError::Corrupt { reason, .. }) => {
                tracing::warn!(
                    store = %core.id,
                    path = %core.path.display(),
                    %reason,
                    "The store's local files are corrupt; wiping them to rebuild the store from its changelog."
                );
                core.db = None;
                remove_dir(&core.path)?;
                core.try_open()?;
            }
            Err(e) => return Err(e),
        }
        Ok(core)
    }

    /// Opens RocksDB and reads the kind and applied offset.
    fn try_open(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|source| StateError::Io {
            op: "create the store folder",
            path: self.path.clone(),
            source,
        })?;
        let db = DB::open(&self.env.db_options(), &self.path).map_err(|e| self.rocks("open", e))?;
        match db
            .get_pinned(META_KIND)
            .map_err(|e| self.rocks("read the kind of", e))?
        {
            Some(found) if found.as_ref() != self.kind.as_str().as_bytes() => {
                return Err(StateError::KindMismatch {
                    store: self.id.clone(),
                    path: self.path.clone(),
                    expected: self.kind.as_str(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                });
            }
            Some(_) => {}
            None => db
                .put(META_KIND, self.kind.as_str())
                .map_err(|e| self.rocks("write the kind of", e))?,
        }
        self.applied = match db
            .get_pinned(META_APPLIED)
            .map_err(|e| self.rocks("read the applied offset of", e))?
        {
            None => 0,
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => i64::from_be_bytes(b),
                Err(_) => {
                    return Err(StateError::Corrupt {
                        store: self.id.clone(),
                        path: self.path.clone(),
                        reason: format!("the applied offset has {} bytes, not 8", v.len()),
                    });
                }
            },
        };
        self.db = Some(db);
        Ok(())
    }

    /// Closes RocksDB, deletes the folder and opens an empty store.
    fn wipe(&mut self) -> Result<()> {
        // Dropping closes RocksDB and releases its lock before the files go.
        self.db = None;
        self.overlay.clear();
        self.overlay_bytes = 0;
        self.applied = 0;
        remove_dir(&self.path)?;
        self.try_open()
    }

    /// Maps a RocksDB error; corruption also marks the folder so the next open rebuilds it.
    fn rocks(&self, op: &'static str, source: rocksdb::Error) -> StateError {
        if source.kind() == rocksdb::ErrorKind::Corruption {
            tracing::error!(
                store = %self.id,
                path = %self.path.display(),
                error = %source,
                "RocksDB reports corruption; the store will be rebuilt from its changelog when reopened."
            );
            // Best effort: without the marker the corruption is found again on next use.
            if self.path.is_dir() {
                let _ = std::fs::write(self.path.join(CORRUPT_MARKER), source.to_string());
            }
            return StateError::Corrupt {
                store: self.id.clone(),
                path: self.path.clone(),
                reason: source.into_string(),
            };
        }
        StateError::Rocks {
            op,
            store: self.id.clone(),
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn db(&self) -> Result<&DB> {
        self.db.as_ref().ok_or_else(|| StateError::Closed {
            store: self.id.clone(),
        })
    }

    pub(crate) fn id(&self) -> &StoreId {
        &self.id
    }

    pub(crate) fn changelog(&self) -> &ChangelogTopic {
        &self.changelog
    }

    pub(crate) fn applied_offset(&self) -> i64 {
        self.applied
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.overlay_bytes
    }

    /// The value of a tagged key: the overlay's if written this epoch, else RocksDB's.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if let Some(slot) = self.overlay.get(key) {
            return Ok(slot.value.clone());
        }
        let v = self
            .db()?
            .get_pinned(key)
            .map_err(|e| self.rocks("read", e))?;
        Ok(v.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Records a write of a tagged key in the overlay (a key written new this epoch stays
    /// new).
    pub(crate) fn write(&mut self, key: Vec<u8>, value: Option<Bytes>) {
        self.put_slot(key, value, false);
    }

    /// Records the write of a tagged key that the caller knows is in no committed epoch (a
    /// key made with a sequence number, say). Deleting it in the same epoch then drops it
    /// from the overlay: a record buffered and expired within one epoch costs neither a
    /// RocksDB write nor changelog records.
    pub(crate) fn write_new(&mut self, key: Vec<u8>, value: Bytes) {
        self.put_slot(key, Some(value), true);
    }

    fn put_slot(&mut self, key: Vec<u8>, value: Option<Bytes>, fresh: bool) {
        let key_len = key.len();
        let value_len = value.as_ref().map_or(0, Bytes::len);
        match self.overlay.entry(Bytes::from(key)) {
            // The key and its overhead were counted already; only the value changes.
            Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                let old_len = slot.value.as_ref().map_or(0, Bytes::len);
                self.overlay_bytes = (self.overlay_bytes + value_len).saturating_sub(old_len);
                slot.value = value;
                slot.fresh |= fresh;
            }
            Entry::Vacant(v) => {
                v.insert(Slot { value, fresh });
                self.overlay_bytes += key_len + value_len + OVERLAY_ENTRY_OVERHEAD;
            }
        }
    }

    /// Records the deletion of a tagged key: dropped from the overlay if it was written new
    /// this epoch, else a deletion to commit.
    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        let key_len = key.len();
        match self.overlay.entry(Bytes::from(key)) {
            Entry::Occupied(o) if o.get().fresh => {
                let (_, old) = o.remove_entry();
                let old_len = old.value.as_ref().map_or(0, Bytes::len);
                self.overlay_bytes = self
                    .overlay_bytes
                    .saturating_sub(key_len + old_len + OVERLAY_ENTRY_OVERHEAD);
            }
            Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                let old_len = slot.value.as_ref().map_or(0, Bytes::len);
                self.overlay_bytes = self.overlay_bytes.saturating_sub(old_len);
                slot.value = None;
            }
            Entry::Vacant(v) => {
                v.insert(Slot {
                    value: None,
                    fresh: false,
                });
                self.overlay_bytes += key_len + OVERLAY_ENTRY_OVERHEAD;
            }
        }
    }

    /// The tagged entries in `[lower, upper)`, overlay merged over RocksDB.
    pub(crate) fn scan(&self, lower: Vec<u8>, upper: Vec<u8>) -> Result<Scan<'_>> {
        Scan::new(self, lower, upper)
    }

    pub(crate) fn overlay_range(
        &self,
        lower: &[u8],
        upper: &[u8],
    ) -> std::collections::btree_map::Range<'_, Bytes, Slot> {
        if lower > upper {
            // BTreeMap::range panics on reversed bounds; a reversed user range is empty.
            return self
                .overlay
                .range::<[u8], _>((Bound::Included(&[][..]), Bound::Excluded(&[][..])));
        }
        self.overlay
            .range::<[u8], _>((Bound::Included(lower), Bound::Excluded(upper)))
    }

    pub(crate) fn map_scan_error(&self, e: rocksdb::Error) -> StateError {
        self.rocks("scan", e)
    }

    /// The expiry watermark of this epoch.
    pub(crate) fn expired_before(&self) -> i64 {
        self.expired.pending
    }

    /// Raises the expiry watermark of this epoch.
    pub(crate) fn set_expired_before(&mut self, t: i64) {
        self.expired.pending = self.expired.pending.max(t);
    }

    pub(crate) fn expired_error(&self, what: &'static str, time: i64) -> StateError {
        StateError::Expired {
            store: self.id.clone(),
            what,
            time,
            expired_before: self.expired.pending,
        }
    }

    /// A key read back from RocksDB that this crate cannot have written.
    pub(crate) fn corrupt(&self, reason: String) -> StateError {
        StateError::Corrupt {
            store: self.id.clone(),
            path: self.path.clone(),
            reason,
        }
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> StateError {
        StateError::InvalidArgument {
            store: self.id.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn changes(&self) -> Changes<'_> {
        Changes {
            inner: self.overlay_range(&[TAG_DATA], &[TAG_DATA + 1]),
        }
    }

    pub(crate) fn commit(&mut self, next: i64) -> Result<()> {
        let regression = |reason| StateError::OffsetRegression {
            store: self.id.clone(),
            offset: next,
            applied: self.applied,
            reason,
        };
        if next < self.applied {
            return Err(regression("it is below the applied offset"));
        }
        let has_changes = self.changes().next().is_some();
        if has_changes && next == self.applied {
            return Err(regression(
                "the epoch has changes, so its changelog records must lie past the applied offset",
            ));
        }
        if !self.overlay.is_empty() || next != self.applied {
            let mut batch = WriteBatch::with_capacity_bytes(self.overlay_bytes + 64);
            for (k, slot) in &self.overlay {
                match &slot.value {
                    Some(v) => batch.put(k, v),
                    None => batch.delete(k),
                }
            }
            batch.put(META_APPLIED, next.to_be_bytes());
            // On failure the overlay stays: the task fails, and restore redoes the epoch
            // from the changelog where its transaction already committed.
            self.db()?
                .write(batch)
                .map_err(|e| self.rocks("commit to", e))?;
        }
        self.overlay.clear();
        self.overlay_bytes = 0;
        self.applied = next;
        self.expired.committed = self.expired.pending;
        Ok(())
    }

    pub(crate) fn abort(&mut self) {
        self.overlay.clear();
        self.overlay_bytes = 0;
        self.expired.pending = self.expired.committed;
    }

    pub(crate) fn restore(&mut self, log: &Log) -> Result<u64> {
        if !self.overlay.is_empty() {
            return Err(StateError::Uncommitted {
                store: self.id.clone(),
                op: "restore",
            });
        }
        let log_err = |core: &Core, offset: i64, source: LogError| StateError::Changelog {
            store: core.id.clone(),
            changelog: core.changelog.clone(),
            offset,
            source: Box::new(source),
        };
        changelog::ensure_topic(log, &self.changelog, &self.topic_config, self.env.owner())
            .map_err(|e| log_err(self, self.applied, e))?;
        let (start, end) = changelog::committed_range(log, &self.changelog)
            .map_err(|e| log_err(self, self.applied, e))?;
        if self.applied > end || (self.applied != 0 && self.applied < start) {
            tracing::warn!(
                store = %self.id,
                changelog = %self.changelog,
                applied = self.applied,
                log_start = start,
                log_end = end,
                "The store's applied offset is outside its changelog; rebuilding it from the changelog alone."
            );
            self.wipe()?;
        }
        let began = Instant::now();
        let from = self.applied.max(start);
        let mut pos = from;
        let mut replayed = 0u64;
        while pos < end {
            let (records, next) = changelog::read_committed(log, &self.changelog, pos)
                .map_err(|e| log_err(self, pos, e))?;
            // Nothing committed left below the last stable offset (e.g. compacted away).
            let next = if records.is_empty() && next <= pos {
                end
            } else {
                next
            };
            let mut batch = WriteBatch::default();
            for r in &records {
                let malformed = |reason: String| StateError::MalformedChangelog {
                    store: self.id.clone(),
                    changelog: self.changelog.clone(),
                    offset: r.offset,
                    reason,
                };
                let key = r
                    .record
                    .key
                    .as_deref()
                    .ok_or_else(|| malformed("the record has no key".into()))?;
                self.kind
                    .apply(&mut batch, key, r.record.value.as_deref())
                    .map_err(malformed)?;
            }
            batch.put(META_APPLIED, next.to_be_bytes());
            self.db()?
                .write(batch)
                .map_err(|e| self.rocks("restore", e))?;
            replayed += records.len() as u64;
            self.applied = next;
            pos = next;
        }
        tracing::info!(
            store = %self.id,
            changelog = %self.changelog,
            from,
            to = self.applied,
            records = replayed,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "Restored the store from its changelog."
        );
        Ok(replayed)
    }

    pub(crate) fn checkpoint(&self, path: &Path) -> Result<i64> {
        let db = self.db()?;
        let cp = Checkpoint::new(db).map_err(|e| self.rocks("checkpoint", e))?;
        cp.create_checkpoint(path)
            .map_err(|e| self.rocks("checkpoint", e))?;
        Ok(self.applied)
    }

    pub(crate) fn approximate_num_keys(&self) -> Result<u64> {
        Ok(self
            .db()?
            .property_int_value(rocksdb::properties::ESTIMATE_NUM_KEYS)
            .map_err(|e| self.rocks("read a property of", e))?
            .unwrap_or(0))
    }

    /// Compacts the whole key space, dropping tombstones (tests and maintenance).
    #[cfg(test)]
    pub(crate) fn compact(&self) -> Result<()> {
        let db = self.db()?;
        db.flush().map_err(|e| self.rocks("flush", e))?;
        db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sluice_log::ProducerConfig;

    use super::*;
    use crate::testutil::{Harness, collect};
    use crate::{KvStore, WindowOptions};

    fn contents(s: &KvStore) -> Vec<(String, String)> {
        collect(s.iter().unwrap())
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Two epochs committed through the store, then a store dropped before more changelog
    /// records (committed by a later epoch whose store commit never happened) arrive.
    fn history(h: &Harness) -> i64 {
        let mut s = h.kv("agg", 1);
        s.put(b"a", b"1");
        s.put(b"b", b"2");
        h.commit_epoch(&mut s);
        s.delete(b"a");
        s.put(b"c", b"3");
        let applied = h.commit_epoch(&mut s);
        assert_eq!(s.applied_offset(), applied);
        // An aborted epoch leaves no trace anywhere.
        s.put(b"zzz", b"aborted");
        s.abort();
        drop(s);
        let changelog = Harness::changelog("agg", 1);
        h.append(&changelog, &[("d", Some("4")), ("b", None)]);
        // A transaction that aborted in the log must not be replayed.
        let mut p = h
            .log
            .transactional_producer("zombie", ProducerConfig::default())
            .unwrap();
        p.begin_transaction().unwrap();
        p.send_to(
            &changelog.topic,
            changelog.partition,
            sluice_log::Record::with_key("e", "aborted", 0),
        )
        .unwrap();
        p.flush().unwrap();
        p.abort_transaction().unwrap();
        applied
    }

    fn reopen(h: &Harness) -> KvStore {
        h.env
            .open_kv(Harness::id("agg", 1), Harness::changelog("agg", 1))
            .unwrap()
    }

    const FINAL: &[(&str, &str)] = &[("c", "3"), ("d", "4")];

    #[test]
    fn restart_replays_the_changelog_from_the_applied_offset() {
        let h = Harness::new();
        let applied = history(&h);
        let mut s = reopen(&h);
        assert_eq!(s.applied_offset(), applied);
        assert_eq!(s.restore(&h.log).unwrap(), 2);
        assert_eq!(contents(&s), pairs(FINAL));
        let end = h.changelog_end(&Harness::changelog("agg", 1));
        assert_eq!(s.applied_offset(), end);
        // A second restore has nothing to do.
        assert_eq!(s.restore(&h.log).unwrap(), 0);
        drop(s);
        // The applied offset survived the restore itself.
        assert_eq!(reopen(&h).applied_offset(), end);
    }

    #[test]
    fn a_deleted_folder_is_rebuilt_from_the_changelog() {
        let h = Harness::new();
        history(&h);
        std::fs::remove_dir_all(h.env.store_dir(&Harness::id("agg", 1))).unwrap();
        let mut s = reopen(&h);
        assert_eq!(s.applied_offset(), 0);
        // a=1, b=2, a=del, c=3, d=4, b=del: every committed record, none of the aborted.
        assert_eq!(s.restore(&h.log).unwrap(), 6);
        assert_eq!(contents(&s), pairs(FINAL));
    }

    #[test]
    fn corrupt_files_are_wiped_and_rebuilt() {
        let h = Harness::new();
        history(&h);
        let dir = h.env.store_dir(&Harness::id("agg", 1));
        // No trailing newline: RocksDB reports Corruption, not a missing manifest.
        std::fs::write(dir.join("CURRENT"), b"garbage").unwrap();
        let mut s = reopen(&h);
        assert_eq!(s.applied_offset(), 0);
        s.restore(&h.log).unwrap();
        assert_eq!(contents(&s), pairs(FINAL));
        drop(s);

        // Corruption found while running marks the folder; the next open rebuilds.
        std::fs::write(dir.join(CORRUPT_MARKER), b"test").unwrap();
        let mut s = reopen(&h);
        assert_eq!(s.applied_offset(), 0);
        s.restore(&h.log).unwrap();
        assert_eq!(contents(&s), pairs(FINAL));
        assert!(!dir.join(CORRUPT_MARKER).exists());
    }

    #[test]
    fn a_recreated_changelog_invalidates_local_files() {
        let h = Harness::new();
        history(&h);
        h.log.delete_topic("agg-changelog").unwrap();
        let mut s = reopen(&h);
        assert_eq!(s.restore(&h.log).unwrap(), 0);
        assert_eq!(s.applied_offset(), 0);
        assert!(contents(&s).is_empty());
    }

    #[test]
    fn restore_refuses_uncommitted_changes() {
        let h = Harness::new();
        let mut s = h.kv("agg", 0);
        s.put(b"k", b"v");
        let err = s.restore(&h.log).unwrap_err();
        assert!(
            err.is_bug() && err.to_string().contains("uncommitted"),
            "{err}"
        );
    }

    #[test]
    fn checkpoint_plus_changelog_tail_restores_exactly() {
        let h = Harness::new();
        let mut s = h.kv("agg", 1);
        for i in 0..50 {
            s.put(format!("k{i:02}").as_bytes(), b"old");
        }
        h.commit_epoch(&mut s);
        let cp = h.dir.path().join("checkpoint-1");
        let cp_offset = s.checkpoint(&cp).unwrap();
        assert_eq!(cp_offset, s.applied_offset());
        for i in 25..75 {
            s.put(format!("k{i:02}").as_bytes(), b"new");
        }
        s.delete(b"k00");
        h.commit_epoch(&mut s);
        let want = contents(&s);
        drop(s);

        h.env
            .install_checkpoint(&Harness::id("agg", 1), &cp)
            .unwrap();
        let mut s = reopen(&h);
        assert_eq!(s.applied_offset(), cp_offset);
        assert_eq!(s.restore(&h.log).unwrap(), 51);
        assert_eq!(contents(&s), want);
        // The checkpoint itself was not modified by using it.
        drop(s);
        h.env
            .install_checkpoint(&Harness::id("agg", 1), &cp)
            .unwrap();
        assert_eq!(reopen(&h).applied_offset(), cp_offset);
    }

    #[test]
    fn a_store_keeps_its_kind() {
        let h = Harness::new();
        drop(h.kv("agg", 0));
        let err = h
            .env
            .open_window(
                Harness::id("agg", 0),
                Harness::changelog("agg", 0),
                WindowOptions { retention_ms: 1 },
            )
            .unwrap_err();
        assert!(matches!(err, StateError::KindMismatch { .. }), "{err}");
    }

    #[test]
    fn window_and_session_changelogs_also_delete_by_retention() {
        let h = Harness::new();
        drop(h.window("win", 0, 60_000));
        let config = h.log.topic("win-changelog").unwrap().config();
        assert!(config.cleanup_policy.compact && config.cleanup_policy.delete);
        assert_eq!(
            config.retention_ms,
            60_000 + changelog::CHANGELOG_EXTRA_RETENTION_MS
        );
        drop(h.kv("tbl", 0));
        let config = h.log.topic("tbl-changelog").unwrap().config();
        assert!(config.cleanup_policy.compact && !config.cleanup_policy.delete);
    }

    #[test]
    fn window_store_restores_with_tombstones() {
        let h = Harness::new();
        let mut w = h.window("win", 0, 60_000);
        for t in 0..20 {
            w.put(b"k", t, b"v").unwrap();
        }
        h.commit_epoch(&mut w);
        w.expire(15).unwrap();
        h.commit_epoch(&mut w);
        drop(w);
        std::fs::remove_dir_all(h.env.store_dir(&Harness::id("win", 0))).unwrap();
        let w = h.window("win", 0, 60_000);
        let starts: Vec<i64> = w
            .fetch_range(i64::MIN, i64::MAX)
            .unwrap()
            .map(|e| e.unwrap().window_start)
            .collect();
        assert_eq!(starts, vec![15, 16, 17, 18, 19]);
    }

    #[test]
    fn session_index_is_rebuilt_on_replay() {
        let h = Harness::new();
        let mut s = h.session("ses", 0, 60_000);
        s.put(b"a", 0, 10, b"1").unwrap();
        s.put(b"b", 5, 50, b"2").unwrap();
        h.commit_epoch(&mut s);
        s.remove(b"a", 0, 10).unwrap();
        s.put(b"a", 0, 20, b"3").unwrap();
        h.commit_epoch(&mut s);
        drop(s);
        std::fs::remove_dir_all(h.env.store_dir(&Harness::id("ses", 0))).unwrap();
        let mut s = h.session("ses", 0, 60_000);
        let ends: Vec<i64> = s
            .fetch_by_end(i64::MIN, i64::MAX)
            .unwrap()
            .map(|r| r.unwrap().end)
            .collect();
        assert_eq!(ends, vec![20, 50]);
        assert_eq!(s.expire(30).unwrap(), 1);
        assert_eq!(s.find_sessions(b"a", i64::MIN, i64::MAX).unwrap(), vec![]);
    }

    #[test]
    fn stores_share_the_budgets() {
        let h = Harness::new();
        let mut a = h.kv("a", 0);
        let mut b = h.kv("b", 0);
        for i in 0..1000 {
            a.put(format!("{i}").as_bytes(), &[7; 100]);
            b.put(format!("{i}").as_bytes(), &[7; 100]);
        }
        h.commit_epoch(&mut a);
        h.commit_epoch(&mut b);
        assert!(h.env.write_buffer_usage() > 0);
        assert!(h.env.write_buffer_usage() <= h.env.config().write_buffer_bytes * 2);
        assert_eq!(a.get(b"999").unwrap().map(|v| v.len()), Some(100));
        assert!(h.env.block_cache_usage() <= h.env.config().block_cache_bytes);
    }
}
