//! The group state: one store per input partition (by the group key's hash) behind a
//! write-back cache of groups, and the byte encoding of a group's accumulators.

use sluice_log::Log;
use sluice_state::{
    ChangelogTopic, KvStore, SessionOptions, SessionStore, StateEnv, StateStore, StoreId,
    WindowOptions, WindowStore,
};

use super::Aggregate;
use crate::error::{Result, SqlError};
use crate::operators::acc::{Acc, AggSpec, decode_acc, encode_acc};
use crate::operators::window::Windows;

/// Cached groups kept after a flush; beyond this the cache starts over (state stays in the
/// stores).
const CACHE_LIMIT: usize = 200_000;

/// Where an aggregate keeps its state.
#[derive(Debug)]
pub(super) enum Stores {
    /// Only the cache (push queries: nothing survives them).
    Memory,
    /// Unwindowed, one per partition.
    Kv(Vec<KvStore>),
    /// Tumbling and hopping windows.
    Window(Vec<WindowStore>),
    /// Session windows.
    Session(Vec<SessionStore>),
}

impl Stores {
    /// Opens the stores of a query (`<name>-<partition>` in `env`, changelog topic
    /// `<name>-changelog`) and restores them from the log; `env` `None` keeps state in the
    /// cache only.
    pub(super) fn open(
        windows: Option<Windows>,
        env: Option<(&StateEnv, &Log, &str, u32)>,
    ) -> Result<Stores> {
        let stores = match env {
            None => Stores::Memory,
            Some((env, log, name, partitions)) => {
                let changelog = format!("{name}-changelog");
                let ids = (0..partitions.max(1)).map(|p| {
                    (
                        StoreId::new(name, p),
                        ChangelogTopic::new(&changelog, p, partitions.max(1)),
                    )
                });
                let state_err = |e: sluice_state::StateError| {
                    SqlError::Invalid(format!("state of {name}: {e}"))
                };
                match windows {
                    None => Stores::Kv(
                        ids.map(|(id, cl)| {
                            let mut s = env.open_kv(id, cl).map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                    Some(w) if w.session => Stores::Session(
                        ids.map(|(id, cl)| {
                            let mut s = env
                                .open_session(
                                    id,
                                    cl,
                                    SessionOptions {
                                        retention_ms: w.retention,
                                    },
                                )
                                .map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                    Some(w) => Stores::Window(
                        ids.map(|(id, cl)| {
                            let mut s = env
                                .open_window(
                                    id,
                                    cl,
                                    WindowOptions {
                                        retention_ms: w.retention,
                                    },
                                )
                                .map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                }
            }
        };
        Ok(stores)
    }
}

/// The state of one group (one key in one window).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) accs: Vec<Acc>,
    pub(super) max_ts: i64,
    /// Input rows in the group (rows of a table input leave it when replaced or deleted).
    pub(super) rows: i64,
    /// Changed since the last flush.
    dirty: bool,
}

/// The cache key of a group: window start and end (big-endian), then the group key.
fn cache_key(buf: &mut Vec<u8>, start: i64, end: i64, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&start.to_be_bytes());
    buf.extend_from_slice(&end.to_be_bytes());
    buf.extend_from_slice(key);
}

/// The parts of a [`cache_key`].
pub(super) fn split_cache_key(ck: &[u8]) -> (i64, i64, &[u8]) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&ck[..8]);
    let start = i64::from_be_bytes(a);
    a.copy_from_slice(&ck[8..16]);
    (start, i64::from_be_bytes(a), &ck[16..])
}

pub(super) fn owned_cache_key(start: i64, end: i64, key: &[u8]) -> Vec<u8> {
    let mut ck = Vec::with_capacity(16 + key.len());
    cache_key(&mut ck, start, end, key);
    ck
}

/// Meta key of a key-value store (group keys are stored with prefix 1).
const KV_META: &[u8] = &[0];

impl Aggregate {
    pub(super) fn state_err(&self, e: sluice_state::StateError) -> SqlError {
        SqlError::Invalid(format!("aggregate state: {e}"))
    }

    pub(super) fn load_meta(&mut self) -> Result<()> {
        let meta = match &self.stores {
            Stores::Memory => None,
            Stores::Kv(s) => s[0].get(KV_META).map_err(|e| self.state_err(e))?,
            Stores::Window(s) => s[0].get(b"", i64::MAX).map_err(|e| self.state_err(e))?,
            Stores::Session(s) => s[0]
                .get(b"", i64::MAX, i64::MAX)
                .map_err(|e| self.state_err(e))?,
        };
        if let Some(m) = meta {
            if m.len() >= 16 {
                let mut a = [0u8; 8];
                a.copy_from_slice(&m[..8]);
                self.stream_time = i64::from_le_bytes(a);
                a.copy_from_slice(&m[8..16]);
                self.closed_before = i64::from_le_bytes(a);
            }
        }
        Ok(())
    }

    pub(super) fn store_index(&self, key: &[u8]) -> usize {
        let n = match &self.stores {
            Stores::Memory => 1,
            Stores::Kv(s) => s.len(),
            Stores::Window(s) => s.len(),
            Stores::Session(s) => s.len(),
        };
        sluice_log::partitioner::partition_for_key(key, n as u32) as usize
    }

    pub(super) fn decode_entry(&self, bytes: &[u8]) -> Result<Entry> {
        if bytes.len() < 8 {
            return Err(SqlError::Plan(
                "corrupt aggregate state: short value".into(),
            ));
        }
        if bytes.len() < 16 {
            return Err(SqlError::Plan(
                "corrupt aggregate state: short value".into(),
            ));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[8..16]);
        let rows = i64::from_le_bytes(a);
        a.copy_from_slice(&bytes[..8]);
        let mut pos = 16;
        let accs = self
            .plan
            .specs
            .iter()
            .map(|s| decode_acc(bytes, &mut pos, &s.input, &s.output))
            .collect::<Result<_>>()?;
        Ok(Entry {
            accs,
            max_ts: i64::from_le_bytes(a),
            rows,
            dirty: false,
        })
    }

    pub(super) fn encode_entry(e: &Entry) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&e.max_ts.to_le_bytes());
        out.extend_from_slice(&e.rows.to_le_bytes());
        for a in &e.accs {
            encode_acc(a, &mut out)?;
        }
        Ok(out)
    }

    pub(super) fn new_entry(&self) -> Result<Entry> {
        Ok(Entry {
            accs: self
                .plan
                .specs
                .iter()
                .map(AggSpec::init)
                .collect::<Result<_>>()?,
            max_ts: i64::MIN,
            rows: 0,
            dirty: false,
        })
    }

    /// The cached entry of (window, key), loading it from the store or creating it, marked
    /// dirty (every caller updates it).
    pub(super) fn entry(&mut self, start: i64, end: i64, key: &[u8]) -> Result<&mut Entry> {
        let mut ck = std::mem::take(&mut self.scratch);
        cache_key(&mut ck, start, end, key);
        if !self.cache.contains_key(ck.as_slice()) {
            let i = self.store_index(key);
            let stored = match &self.stores {
                Stores::Memory | Stores::Session(_) => None,
                Stores::Kv(s) => {
                    let mut k = Vec::with_capacity(key.len() + 1);
                    k.push(1);
                    k.extend_from_slice(key);
                    s[i].get(&k).map_err(|e| self.state_err(e))?
                }
                Stores::Window(_) if start > self.stored_max_start => None,
                Stores::Window(s) => s[i].get(key, start).map_err(|e| self.state_err(e))?,
            };
            let e = match stored {
                Some(b) => self.decode_entry(&b)?,
                None => self.new_entry()?,
            };
            self.cache.insert(ck.clone(), e);
        }
        let track = !matches!(self.stores, Stores::Memory);
        let e = self
            .cache
            .get_mut(ck.as_slice())
            .ok_or_else(|| SqlError::Plan("internal error: cache entry vanished".into()))?;
        if !e.dirty {
            e.dirty = true;
            if track {
                self.dirty.push(ck.clone());
            }
        }
        self.scratch = ck;
        Ok(e)
    }

    /// Forgets an unwindowed group.
    pub(super) fn delete_group(&mut self, key: &[u8]) -> Result<()> {
        self.cache.remove(owned_cache_key(0, 0, key).as_slice());
        let i = self.store_index(key);
        if let Stores::Kv(s) = &mut self.stores {
            let mut k = Vec::with_capacity(key.len() + 1);
            k.push(1);
            k.extend_from_slice(key);
            s[i].delete(&k);
        }
        Ok(())
    }

    /// Writes dirty cached groups and the stream time into the stores' overlays.
    pub(super) fn flush_cache(&mut self) -> Result<()> {
        if matches!(self.stores, Stores::Memory) {
            return Ok(());
        }
        let mut writes = Vec::new();
        for ck in std::mem::take(&mut self.dirty) {
            let Some(e) = self.cache.get_mut(ck.as_slice()) else {
                continue;
            };
            if e.dirty {
                e.dirty = false;
                let bytes = Self::encode_entry(e)?;
                let (start, _, key) = split_cache_key(&ck);
                writes.push((start, key.to_vec(), bytes));
            }
        }
        for (start, key, bytes) in writes {
            let i = self.store_index(&key);
            match &mut self.stores {
                Stores::Kv(s) => {
                    let mut k = Vec::with_capacity(key.len() + 1);
                    k.push(1);
                    k.extend_from_slice(&key);
                    s[i].put(&k, &bytes);
                }
                Stores::Window(s) => {
                    s[i].put(&key, start, &bytes)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                    self.stored_max_start = self.stored_max_start.max(start);
                }
                _ => {}
            }
        }
        let mut meta = self.stream_time.to_le_bytes().to_vec();
        meta.extend_from_slice(&self.closed_before.to_le_bytes());
        let r = match &mut self.stores {
            Stores::Memory => Ok(()),
            Stores::Kv(s) => {
                s[0].put(KV_META, &meta);
                Ok(())
            }
            Stores::Window(s) => s[0].put(b"", i64::MAX, &meta),
            Stores::Session(s) => s[0].put(b"", i64::MAX, i64::MAX, &meta),
        };
        r.map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        Ok(())
    }
}
