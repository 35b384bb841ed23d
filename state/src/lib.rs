//! Keyed state for Sluice's stateful operators.
//!
//! Each stateful operator (an aggregate, a window, a join) keeps its state in a local RocksDB
//! store per input partition. The store is only a *materialization*: every change is also
//! written to a compacted changelog topic in the embedded log, and the store records the
//! changelog offset it has applied. On restart a store reopens its local files (or a local
//! checkpoint) and replays the changelog from that offset, so the log stays the single source
//! of truth (see `DESIGN.md`, "Exactly-once").
//!
//! Writes of an epoch stay in an in-memory overlay until the epoch's log transaction has
//! committed; only then do they reach RocksDB, together with the new applied offset, in one
//! atomic write. RocksDB therefore never holds uncommitted state, and a crash at any point
//! is repaired by replaying the committed changelog from the applied offset.
//!
//! ```text
//!            put / delete / expire                 changes()
//!  operator ───────────────────► overlay (epoch) ───────────► task: changelog records
//!      ▲  get / range / fetch        │                          in the epoch's log txn
//!      └─────── merged ◄─────────────┤                                │ committed
//!                                    ▼ commit(next_offset)            ▼
//!                 RocksDB  <dir>/<store>/<partition>/  ◄── restore: replay [applied, LSO)
//!                 (one instance per store; block cache and write-buffer budget shared
//!                  by every store of the worker through StateEnv)
//! ```
//!
//! # Layout
//!
//! - [`env`]: [`StateConfig`], [`StoreId`] and [`StateEnv`], which owns the shared block
//!   cache and write-buffer budget, opens stores and installs checkpoints.
//! - [`store`]: the [`StateStore`] contract (overlay, commit, abort, restore, checkpoint)
//!   and its one implementation over RocksDB.
//! - `scan` (private): ordered scans merging the overlay over RocksDB.
//! - [`changelog`]: [`ChangelogTopic`], the [`Change`] records of an epoch, topic creation
//!   and the read_committed replay reader.
//! - [`kv`]: [`KvStore`], byte keys to byte values with range and prefix scans.
//! - [`window`]: [`WindowStore`], values per (window start, key) with expiry.
//! - [`session`]: [`SessionStore`], sessions per key with an end-time index for expiry.
//! - `codec` (private): the persistent byte layouts of keys.
//! - [`error`]: the error type, [`StateError`].

pub mod changelog;
mod codec;
pub mod env;
pub mod error;
pub mod kv;
mod scan;
pub mod session;
pub mod store;
pub mod window;

#[cfg(test)]
mod testutil;

pub use crate::changelog::{CHANGELOG_EXTRA_RETENTION_MS, Change, ChangelogTopic};
pub use crate::env::{
    DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_WRITE_BUFFER_BYTES, StateConfig, StateEnv, StoreId,
};
pub use crate::error::{Result, StateError};
pub use crate::kv::{KvIter, KvStore};
pub use crate::session::{Session, SessionOptions, SessionStore};
pub use crate::store::{Changes, StateStore};
pub use crate::window::{WindowEntry, WindowOptions, WindowStore};
