//! The per-worker state environment: the state folder, and the block cache and write-buffer
//! budget that every store of the worker shares.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::WriteBufferManager;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, DBRecoveryMode, Options};
use serde::Deserialize;

use crate::changelog::ChangelogTopic;
use crate::error::{Result, StateError};
use crate::kv::KvStore;
use crate::session::{SessionOptions, SessionStore};
use crate::store::{Core, StoreKind};
use crate::window::{WindowOptions, WindowStore};

/// Default size of the shared block cache: 64 MiB.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Default write-buffer (memtable) budget shared by all stores: 64 MiB.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// The smallest budget accepted for either: below this RocksDB flushes tiny files constantly.
pub const MIN_BUDGET_BYTES: usize = 1 << 20;

/// Where state lives and how much memory RocksDB may use for it.
///
/// RocksDB memory of a worker is about `block_cache_bytes + write_buffer_bytes` whatever the
/// number of stores: data, index and filter blocks all live in the one cache, and memtables of
/// all stores are flushed when their sum reaches the write-buffer budget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateConfig {
    /// The folder holding one RocksDB instance per store, at `<dir>/<store>/<partition>/`.
    pub dir: PathBuf,
    /// Size of the block cache shared by every store (data, index and filter blocks).
    /// Default 64 MiB, at least 1 MiB.
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: usize,
    /// Memtable budget shared by every store; reaching it flushes memtables to disk.
    /// Default 64 MiB, at least 1 MiB.
    #[serde(default = "default_write_buffer_bytes")]
    pub write_buffer_bytes: usize,
}

fn default_block_cache_bytes() -> usize {
    DEFAULT_BLOCK_CACHE_BYTES
}

fn default_write_buffer_bytes() -> usize {
    DEFAULT_WRITE_BUFFER_BYTES
}

impl StateConfig {
    /// State in `dir` with the default budgets.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateConfig {
            dir: dir.into(),
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
        }
    }

    /// Checks the budgets.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("block-cache-bytes", self.block_cache_bytes),
            ("write-buffer-bytes", self.write_buffer_bytes),
        ] {
            if v < MIN_BUDGET_BYTES {
                return Err(StateError::InvalidConfig {
                    field,
                    reason: format!("{v} is below the minimum of {MIN_BUDGET_BYTES} bytes"),
                });
            }
        }
        Ok(())
    }
}

/// Names one store: the operator's store name and the input partition it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreId {
    /// Store name, unique per worker (e.g. `<query>-<operator>`); a folder name, so made of
    /// ASCII letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Partition.
    pub partition: u32,
}

impl StoreId {
    /// Store `name`, partition `partition`.
    pub fn new(name: impl Into<String>, partition: u32) -> Self {
        StoreId {
            name: name.into(),
            partition,
        }
    }

    /// Checks that the name can be a folder name.
    pub(crate) fn validate(&self) -> Result<()> {
        let reason = if self.name.is_empty() {
            Some("it is empty")
        } else if self.name.len() > 200 {
            Some("it is longer than 200 bytes")
        } else if self.name.starts_with('.') {
            Some("it starts with '.'")
        } else if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(StateError::InvalidStoreName {
                name: self.name.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.partition)
    }
}

/// The state of one worker: opens stores that share one block cache and one write-buffer
/// budget. Cheap to clone; clones share the budgets.
#[derive(Clone)]
pub struct StateEnv {
    inner: Arc<EnvInner>,
    /// In a cluster, the pipeline whose stores these are: their changelog topics are made
    /// through it ([`StateEnv::with_owner`]).
    owner: Option<sluice_log::OwnerRef>,
}

struct EnvInner {
    config: StateConfig,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl fmt::Debug for StateEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateEnv")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl StateEnv {
    /// Validates `config`, creates the state folder and the shared budgets.
    pub fn new(config: StateConfig) -> Result<StateEnv> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir).map_err(|source| StateError::Io {
            op: "create the state folder",
            path: config.dir.clone(),
            source,
        })?;
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        // Not charged to the block cache: two separate budgets are easier to size and to
        // reason about, and their sum is the bound.
        // No stall: a flush is triggered when the budget is reached; stalling writers would
        // block a task's thread on another store's flush.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager(config.write_buffer_bytes, false);
        Ok(StateEnv {
            inner: Arc::new(EnvInner {
                config,
                cache,
                write_buffers,
            }),
            owner: None,
        })
    }

    /// The same environment (and budgets) for the stores of `owner`'s tasks in a cluster:
    /// their changelog topics are made through it, so they move with the pipeline.
    pub fn with_owner(&self, owner: Option<sluice_log::OwnerRef>) -> StateEnv {
        StateEnv {
            inner: Arc::clone(&self.inner),
            owner,
        }
    }

    /// The pipeline whose stores these are, in a cluster.
    pub fn owner(&self) -> Option<&sluice_log::OwnerRef> {
        self.owner.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &StateConfig {
        &self.inner.config
    }

    /// Bytes held in the shared block cache now.
    pub fn block_cache_usage(&self) -> usize {
        self.inner.cache.get_usage()
    }

    /// Bytes of memtables of all stores now.
    pub fn write_buffer_usage(&self) -> usize {
        self.inner.write_buffers.get_usage()
    }

    /// The folder of a store: `<dir>/<name>/<partition>`.
    pub fn store_dir(&self, id: &StoreId) -> PathBuf {
        self.inner
            .config
            .dir
            .join(&id.name)
            .join(id.partition.to_string())
    }

    /// Opens (or creates) a key-value store. Call [`StateStore::restore`](crate::StateStore::restore)
    /// before using it. Local files that RocksDB reports corrupt are wiped, with a warning, and
    /// the store is then rebuilt from the changelog alone by `restore`.
    pub fn open_kv(&self, id: StoreId, changelog: ChangelogTopic) -> Result<KvStore> {
        Ok(KvStore::new(Core::open(
            self.clone(),
            id,
            StoreKind::KeyValue,
            changelog,
            None,
        )?))
    }

    /// Opens (or creates) a window store; see [`StateEnv::open_kv`].
    pub fn open_window(
        &self,
        id: StoreId,
        changelog: ChangelogTopic,
        options: WindowOptions,
    ) -> Result<WindowStore> {
        Ok(WindowStore::new(Core::open(
            self.clone(),
            id,
            StoreKind::Window,
            changelog,
            Some(options.retention_ms),
        )?))
    }

    /// Opens (or creates) a session store; see [`StateEnv::open_kv`].
    pub fn open_session(
        &self,
        id: StoreId,
        changelog: ChangelogTopic,
        options: SessionOptions,
    ) -> Result<SessionStore> {
        Ok(SessionStore::new(Core::open(
            self.clone(),
            id,
            StoreKind::Session,
            changelog,
            Some(options.retention_ms),
        )?))
    }

    /// Replaces a store's local files with a checkpoint made by
    /// [`StateStore::checkpoint`](crate::StateStore::checkpoint). The store must not be open.
    ///
    /// Table files are hard-linked (they are immutable, so the checkpoint stays valid), the
    /// rest is copied; open the store and `restore` it afterwards to replay the changelog
    /// tail written since the checkpoint.
    pub fn install_checkpoint(&self, id: &StoreId, checkpoint: &Path) -> Result<()> {
        id.validate()?;
        let dir = self.store_dir(id);
        remove_dir(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            op: "create the store folder",
            path: dir.clone(),
            source,
        })?;
        let entries = std::fs::read_dir(checkpoint).map_err(|source| StateError::Io {
            op: "read the checkpoint folder",
            path: checkpoint.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| StateError::Io {
                op: "read the checkpoint folder",
                path: checkpoint.to_path_buf(),
                source,
            })?;
            let from = entry.path();
            let to = dir.join(entry.file_name());
            let immutable = from.extension().is_some_and(|e| e == "sst" || e == "blob");
            // A hard link fails across file systems; a copy always works.
            let linked = immutable && std::fs::hard_link(&from, &to).is_ok();
            if !linked {
                std::fs::copy(&from, &to).map_err(|source| StateError::Io {
                    op: "copy a checkpoint file",
                    path: from.clone(),
                    source,
                })?;
            }
        }
        tracing::info!(store = %id, checkpoint = %checkpoint.display(), "Installed a state checkpoint.");
        Ok(())
    }

    /// Deletes a store's local files (a dropped query). The store must not be open.
    pub fn destroy(&self, id: &StoreId) -> Result<()> {
        id.validate()?;
        remove_dir(&self.store_dir(id))
    }

    /// RocksDB options for one store, sharing the cache and write-buffer budget.
    pub(crate) fn db_options(&self) -> Options {
        let config = &self.inner.config;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_manager(&self.inner.write_buffers);
        // A single store may use at most a quarter of the budget per memtable, so one busy
        // store cannot keep all others from buffering.
        opts.set_write_buffer_size((config.write_buffer_bytes / 4).clamp(256 << 10, 64 << 20));
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        // WAL on without sync (the default write options): a process crash loses nothing
        // RocksDB acknowledged; after a machine crash, point-in-time recovery yields a
        // consistent prefix whose applied offset is older, and replay redoes the rest.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.inner.cache);
        // Index and filter blocks in the cache too, so their memory is bounded by it rather
        // than growing with the number of table files.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts
    }
}

/// Removes a folder; a missing one is fine.
pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            op: "remove the store folder",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_kebab_case_with_defaults() {
        let c: StateConfig =
            serde_json::from_str(r#"{"dir": "/tmp/x", "block-cache-bytes": 2097152}"#).unwrap();
        assert_eq!(c.block_cache_bytes, 2 << 20);
        assert_eq!(c.write_buffer_bytes, DEFAULT_WRITE_BUFFER_BYTES);
        let err = serde_json::from_str::<StateConfig>(r#"{"dir": "/x", "cache": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let mut c = StateConfig::new("/tmp/x");
        c.write_buffer_bytes = 10;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("write-buffer-bytes"), "{err}");
    }

    #[test]
    fn env_and_stores_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<StateEnv>();
        send_sync::<KvStore>();
        send_sync::<WindowStore>();
        send_sync::<SessionStore>();
    }

    #[test]
    fn store_names_must_be_folder_names() {
        for bad in ["", "..", "a/b", ".hidden", "a b"] {
            assert!(StoreId::new(bad, 0).validate().is_err(), "{bad}");
        }
        StoreId::new("q1-agg_0.v2", 3).validate().unwrap();
    }
}
