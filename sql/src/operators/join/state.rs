//! A join's state: ordered byte maps in memory (push queries) or in `sluice-state` key-value
//! stores with changelogs (persistent queries), and the stored form of a record.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::{BufMut, Bytes};
use sluice_log::Log;
use sluice_state::{ChangelogTopic, KvStore, StateEnv, StateStore, StoreId};

use crate::error::{Result, SqlError};
use crate::format::Input;

/// An ordered byte map: a join side's rows, buffers or index.
#[derive(Debug)]
pub(super) enum Kv {
    /// Push queries: nothing survives them.
    Memory(BTreeMap<Vec<u8>, Bytes>),
    /// Persistent queries: changes go to the changelog with the epoch.
    Store(Box<KvStore>),
}

fn state_err(e: sluice_state::StateError) -> SqlError {
    SqlError::Invalid(format!("join state: {e}"))
}

impl Kv {
    /// The store `name` (one partition, changelog `<name>-changelog`) restored from the log,
    /// or a map in memory.
    pub(super) fn open(state: Option<(&StateEnv, &Log, &str)>, name: &str) -> Result<Kv> {
        let Some((env, log, prefix)) = state else {
            return Ok(Kv::Memory(BTreeMap::new()));
        };
        let store = format!("{prefix}-{name}");
        let mut s = env
            .open_kv(
                StoreId::new(&store, 0),
                ChangelogTopic::new(format!("{store}-changelog"), 0, 1),
            )
            .map_err(state_err)?;
        s.restore(log).map_err(state_err)?;
        Ok(Kv::Store(Box::new(s)))
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        match self {
            Kv::Memory(m) => Ok(m.get(key).cloned()),
            Kv::Store(s) => s.get(key).map_err(state_err),
        }
    }

    pub(super) fn put(&mut self, key: &[u8], value: Bytes) {
        match self {
            Kv::Memory(m) => {
                m.insert(key.to_vec(), value);
            }
            Kv::Store(s) => s.put(key, &value),
        }
    }

    /// Sets a key no committed epoch holds (see [`KvStore::insert_new`]).
    pub(super) fn insert_new(&mut self, key: &[u8], value: Bytes) {
        match self {
            Kv::Memory(m) => {
                m.insert(key.to_vec(), value);
            }
            Kv::Store(s) => s.insert_new(key, value),
        }
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        match self {
            Kv::Memory(m) => {
                m.remove(key);
            }
            Kv::Store(s) => s.delete(key),
        }
    }

    /// Entries with keys in `[from, to)`, in key order, at most `limit`.
    pub(super) fn range(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        match self {
            Kv::Memory(m) => Ok(m
                .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                .take(limit)
                .map(|(k, v)| (Bytes::copy_from_slice(k), v.clone()))
                .collect()),
            Kv::Store(s) => s
                .range(from..to)
                .map_err(state_err)?
                .take(limit)
                .map(|r| r.map_err(state_err))
                .collect(),
        }
    }

    /// Whether the epoch has written nothing yet (it just began: the store holds exactly
    /// the committed state).
    pub(super) fn epoch_is_empty(&self) -> bool {
        match self {
            Kv::Memory(_) => false,
            Kv::Store(s) => s.pending_bytes() == 0,
        }
    }

    /// Entries whose keys start with `prefix`, in key order.
    pub(super) fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>> {
        match self {
            Kv::Memory(m) => Ok(m
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (Bytes::copy_from_slice(k), v.clone()))
                .collect()),
            Kv::Store(s) => s
                .prefix(prefix)
                .map_err(state_err)?
                .map(|r| r.map_err(state_err))
                .collect(),
        }
    }

    /// Entries held (memory) or estimated (stores), for bounds in tests and metrics.
    pub(super) fn approximate_len(&self) -> usize {
        match self {
            Kv::Memory(m) => m.len(),
            Kv::Store(s) => s.approximate_num_keys().unwrap_or(0) as usize,
        }
    }

    pub(super) fn store_mut(&mut self) -> Option<&mut dyn StateStore> {
        match self {
            Kv::Memory(_) => None,
            Kv::Store(s) => Some(s.as_mut()),
        }
    }

    pub(super) fn abort(&mut self) {
        if let Kv::Store(s) = self {
            s.abort();
        }
    }
}

/// A record as a join keeps it: what it needs to decode the record again.
#[derive(Debug, Clone)]
pub(super) struct Rec {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub ts: i64,
}

impl Rec {
    pub(super) fn input(&self) -> Input<'_> {
        Input {
            key: self.key.as_deref(),
            value: Some(&self.value),
            timestamp: self.ts,
        }
    }

    /// The stored form of a record: `prefix`, then timestamp, key length (u32::MAX: no
    /// key), key, value (a tombstone stores an empty value).
    pub(super) fn encode_input(input: &Input<'_>, prefix: &[u8]) -> Bytes {
        let key = input.key.unwrap_or_default();
        let value = input.value.unwrap_or_default();
        let mut b = Vec::with_capacity(prefix.len() + 12 + key.len() + value.len());
        b.put_slice(prefix);
        b.put_i64_le(input.timestamp);
        b.put_u32_le(input.key.map_or(u32::MAX, |k| k.len() as u32));
        b.put_slice(key);
        b.put_slice(value);
        Bytes::from(b)
    }

    /// The record stored after `skip` bytes of `b`.
    pub(super) fn decode(b: &Bytes, skip: usize) -> Result<Rec> {
        let bad = || SqlError::Invalid("join state: a stored record is truncated".into());
        let rest = b.get(skip..).ok_or_else(bad)?;
        if rest.len() < 12 {
            return Err(bad());
        }
        let ts = i64::from_le_bytes(rest[..8].try_into().map_err(|_| bad())?);
        let klen = u32::from_le_bytes(rest[8..12].try_into().map_err(|_| bad())?);
        let (key, at) = if klen == u32::MAX {
            (None, skip + 12)
        } else {
            let k = klen as usize;
            if rest.len() < 12 + k {
                return Err(bad());
            }
            (Some(b.slice(skip + 12..skip + 12 + k)), skip + 12 + k)
        };
        Ok(Rec {
            key,
            value: b.slice(at..),
            ts,
        })
    }
}

/// `bytes` with its length before it, so that a key made of several parts has one reading.
pub(super) fn len_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(bytes.len() + 4);
    b.put_u32(bytes.len() as u32);
    b.put_slice(bytes);
    b
}

/// A timestamp as bytes that sort as the numbers do.
pub(super) fn time_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The timestamp of [`time_bytes`].
pub(super) fn time_of(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}
