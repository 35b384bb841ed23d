//! The error type of the crate, [`StateError`], with the store, path and changelog position
//! each failure happened at.

use std::path::PathBuf;

use sluice_log::LogError;

use crate::changelog::ChangelogTopic;
use crate::env::StoreId;

/// Why a state operation failed.
///
/// Three families, told apart by [`StateError::is_retryable`] and [`StateError::is_bug`]:
/// external failures (disk, RocksDB I/O, the log) that a task restart may cure; misuse by the
/// calling operator (a bug: offsets going backwards, writes to expired windows); and bad
/// configuration, reported once at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A [`StateConfig`](crate::StateConfig) field was rejected.
    #[error("invalid state config: {field}: {reason}")]
    InvalidConfig {
        /// The field, as spelled in the config file.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A store name that cannot be a folder name.
    #[error("invalid store name '{name}': {reason}")]
    InvalidStoreName {
        /// The name given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// RocksDB failed.
    #[error("RocksDB failed to {op} store {store} at {}: {source}", path.display())]
    Rocks {
        /// What was attempted.
        op: &'static str,
        /// The store.
        store: StoreId,
        /// The store's folder.
        path: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// RocksDB found the store's local files corrupt. The store is marked, and the next open
    /// wipes its folder and rebuilds it from the changelog alone.
    #[error("store {store} at {} is corrupt ({reason}); it is rebuilt from its changelog when reopened", path.display())]
    Corrupt {
        /// The store.
        store: StoreId,
        /// Its folder.
        path: PathBuf,
        /// What RocksDB reported.
        reason: String,
    },
    /// A file-system operation on a store folder failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the changelog topic (or creating it) failed.
    #[error("store {store}: changelog {changelog} at offset {offset}: {source}")]
    Changelog {
        /// The store being restored.
        store: StoreId,
        /// Its changelog.
        changelog: ChangelogTopic,
        /// The offset being read.
        offset: i64,
        /// The log's error (boxed: it is large, and this path is rare).
        #[source]
        source: Box<LogError>,
    },
    /// A changelog record this store could not have written (no key, or a key of the wrong
    /// shape): something else wrote to the changelog topic.
    #[error(
        "store {store}: changelog {changelog} holds a malformed record at offset {offset}: {reason}"
    )]
    MalformedChangelog {
        /// The store being restored.
        store: StoreId,
        /// Its changelog.
        changelog: ChangelogTopic,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// The folder holds a store of another kind (e.g. a window store opened as key-value):
    /// two operators were given the same store name.
    #[error("store {store} at {} is a {found} store, not a {expected} store", path.display())]
    KindMismatch {
        /// The store.
        store: StoreId,
        /// Its folder.
        path: PathBuf,
        /// The kind asked for.
        expected: &'static str,
        /// The kind found on disk.
        found: String,
    },
    /// `commit` was given a changelog offset that does not move forward (a bug in the task).
    #[error(
        "store {store}: cannot commit at changelog offset {offset}: {reason} (applied offset {applied})"
    )]
    OffsetRegression {
        /// The store.
        store: StoreId,
        /// The offset given.
        offset: i64,
        /// The offset already applied.
        applied: i64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An operation that needs an empty overlay (restore, checkpoint install) was called with
    /// uncommitted changes.
    #[error("store {store} has uncommitted changes; commit or abort them before {op}")]
    Uncommitted {
        /// The store.
        store: StoreId,
        /// The operation refused.
        op: &'static str,
    },
    /// A write to a window or session that the store already expired. The operator must drop
    /// (and count) records later than its grace period before they reach the store.
    #[error(
        "store {store}: {what} {time} is already expired (everything before {expired_before} was); drop late records before they reach the store"
    )]
    Expired {
        /// The store.
        store: StoreId,
        /// `window start` or `session end`.
        what: &'static str,
        /// The time written.
        time: i64,
        /// The expiry watermark.
        expired_before: i64,
    },
    /// An argument that can never be valid (a session ending before it starts).
    #[error("store {store}: {reason}")]
    InvalidArgument {
        /// The store.
        store: StoreId,
        /// What is wrong.
        reason: String,
    },
    /// An earlier rebuild closed the RocksDB instance and could not reopen it; reopen the store.
    #[error("store {store} is closed after a failed rebuild; reopen it")]
    Closed {
        /// The store.
        store: StoreId,
    },
}

impl StateError {
    /// True for external failures a task restart may cure (disk, RocksDB I/O, the log).
    pub fn is_retryable(&self) -> bool {
        match self {
            StateError::Io { .. } | StateError::Closed { .. } | StateError::Corrupt { .. } => true,
            StateError::Rocks { source, .. } => matches!(
                source.kind(),
                rocksdb::ErrorKind::IOError
                    | rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::TryAgain
            ),
            StateError::Changelog { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// True when the calling operator or task broke a documented contract.
    pub fn is_bug(&self) -> bool {
        matches!(
            self,
            StateError::OffsetRegression { .. }
                | StateError::Uncommitted { .. }
                | StateError::Expired { .. }
                | StateError::InvalidArgument { .. }
        )
    }
}

/// The crate's result type.
pub type Result<T, E = StateError> = std::result::Result<T, E>;
