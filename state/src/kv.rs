//! The key-value store: tables, aggregates without windows, join sides.

use std::ops::RangeBounds;

use bytes::Bytes;

use crate::codec::{self, TAG_DATA};
use crate::error::Result;
use crate::scan::Scan;
use crate::store::{Core, delegate_state_store};

/// Byte keys to byte values, ordered by key. Epoch semantics are [`StateStore`]'s; changelog
/// record keys are the store keys as given.
///
/// [`StateStore`]: crate::StateStore
#[derive(Debug)]
pub struct KvStore {
    core: Core,
}

delegate_state_store!(KvStore);

impl KvStore {
    pub(crate) fn new(core: Core) -> Self {
        KvStore { core }
    }

    /// The value of `key`, as written this epoch or committed before.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.core.get(&codec::tagged(TAG_DATA, key))
    }

    /// Sets `key` to `value` in this epoch.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.core.write(
            codec::tagged(TAG_DATA, key),
            Some(Bytes::copy_from_slice(value)),
        );
    }

    /// Sets `key`, which no committed epoch holds (the caller guarantees it: a key with a
    /// sequence number never reused, say), to `value` in this epoch. Deleting it again in the
    /// same epoch leaves no trace: no RocksDB write, no changelog record.
    pub fn insert_new(&mut self, key: &[u8], value: impl Into<Bytes>) {
        self.core
            .write_new(codec::tagged(TAG_DATA, key), value.into());
    }

    /// Deletes `key` in this epoch (a tombstone in the changelog, even if the key was absent,
    /// which keeps the operation blind: no read needed), unless [`KvStore::insert_new`] wrote
    /// it in this epoch.
    pub fn delete(&mut self, key: &[u8]) {
        self.core.delete(codec::tagged(TAG_DATA, key));
    }

    /// The entries with keys in `range`, in key order, this epoch's writes merged over the
    /// committed state, e.g. `range(&b"a"[..]..&b"c"[..])`. Lazy: memory does not grow with
    /// the range; a reversed range is empty.
    pub fn range<K, R>(&self, range: R) -> Result<KvIter<'_>>
    where
        K: AsRef<[u8]> + ?Sized,
        R: RangeBounds<K>,
    {
        let (lower, upper) = codec::tagged_bounds(
            TAG_DATA,
            range.start_bound().map(AsRef::as_ref),
            range.end_bound().map(AsRef::as_ref),
        );
        Ok(KvIter {
            scan: self.core.scan(lower, upper)?,
        })
    }

    /// The entries whose keys start with `prefix`, in key order; see [`KvStore::range`].
    pub fn prefix(&self, prefix: &[u8]) -> Result<KvIter<'_>> {
        let (lower, upper) = codec::prefix_bounds(TAG_DATA, prefix);
        Ok(KvIter {
            scan: self.core.scan(lower, upper)?,
        })
    }

    /// Every entry in key order; see [`KvStore::range`].
    pub fn iter(&self) -> Result<KvIter<'_>> {
        self.range::<[u8], _>(..)
    }
}

/// Entries of a [`KvStore`] scan, `(key, value)` in key order; a RocksDB error ends the scan
/// after it is yielded.
pub struct KvIter<'a> {
    scan: Scan<'a>,
}

impl std::fmt::Debug for KvIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvIter").finish_non_exhaustive()
    }
}

impl Iterator for KvIter<'_> {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        // The key-space tag is not part of the user's key; `slice` shares the bytes.
        Some(self.scan.next()?.map(|(k, v)| (k.slice(1..), v)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use crate::StateStore;
    use crate::testutil::{Harness, collect};

    #[test]
    fn overlay_then_commit_then_abort() {
        let h = Harness::new();
        let mut s = h.kv("kv", 0);
        s.put(b"a", b"1");
        s.put(b"b", b"2");
        assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        h.commit_epoch(&mut s);
        assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));

        s.delete(b"a");
        s.put(b"b", b"3");
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"b").unwrap().as_deref(), Some(&b"3"[..]));
        let changes: Vec<_> = s.changes().collect();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].key.as_ref(), b"a");
        assert_eq!(changes[0].value, None);
        s.abort();
        assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.changes().count(), 0);
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn a_new_key_deleted_in_its_own_epoch_leaves_nothing_to_commit() {
        let h = Harness::new();
        let mut s = h.kv("kv", 0);
        s.insert_new(b"n1", &b"v"[..]);
        s.insert_new(b"n2", &b"v"[..]);
        s.put(b"old", b"1");
        assert_eq!(s.get(b"n1").unwrap().as_deref(), Some(&b"v"[..]));
        s.delete(b"n1");
        assert_eq!(s.get(b"n1").unwrap(), None);
        let keys: Vec<_> = s.changes().map(|c| c.key.to_vec()).collect();
        assert_eq!(keys, vec![b"n2".to_vec(), b"old".to_vec()]);
        h.commit_epoch(&mut s);
        // Committed now: deleting it is a deletion to commit, like any other.
        s.delete(b"n2");
        let changes: Vec<_> = s.changes().collect();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].value, None);
        h.commit_epoch(&mut s);
        assert_eq!(s.get(b"n2").unwrap(), None);
        assert_eq!(s.pending_bytes(), 0);
        // An aborted epoch forgets what it wrote new.
        s.insert_new(b"n3", &b"v"[..]);
        s.abort();
        s.delete(b"n3");
        assert_eq!(s.changes().count(), 1);
    }

    #[test]
    fn commit_rejects_offsets_that_do_not_advance() {
        let h = Harness::new();
        let mut s = h.kv("kv", 0);
        s.put(b"a", b"1");
        s.commit(5).unwrap();
        assert_eq!(s.applied_offset(), 5);
        s.put(b"a", b"2");
        let err = s.commit(5).unwrap_err();
        assert!(
            err.is_bug() && err.to_string().contains("applied offset 5"),
            "{err}"
        );
        let err = s.commit(4).unwrap_err();
        assert!(err.to_string().contains("below"), "{err}");
        // An empty epoch may commit at the same offset.
        s.abort();
        s.commit(5).unwrap();
    }

    #[test]
    fn range_and_prefix_merge_overlay_over_rocksdb() {
        let h = Harness::new();
        let mut s = h.kv("kv", 0);
        for k in [&b"a1"[..], b"a2", b"a3", b"b1", b"c1"] {
            s.put(k, k);
        }
        h.commit_epoch(&mut s);
        s.delete(b"a2");
        s.put(b"a3", b"new");
        s.put(b"a0", b"ins");
        s.delete(b"zz");
        let all = collect(s.iter().unwrap());
        assert_eq!(
            all,
            vec![
                (b"a0".to_vec(), b"ins".to_vec()),
                (b"a1".to_vec(), b"a1".to_vec()),
                (b"a3".to_vec(), b"new".to_vec()),
                (b"b1".to_vec(), b"b1".to_vec()),
                (b"c1".to_vec(), b"c1".to_vec()),
            ]
        );
        let a = collect(s.prefix(b"a").unwrap());
        assert_eq!(a.len(), 3);
        let r = collect(s.range(&b"a1"[..]..&b"b1"[..]).unwrap());
        assert_eq!(
            r.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
            vec![b"a1".to_vec(), b"a3".to_vec()]
        );
        let r = collect(s.range(&b"a1"[..]..=&b"b1"[..]).unwrap());
        assert_eq!(r.len(), 3);
        // Reversed ranges are empty, not a panic.
        assert!(collect(s.range(&b"c"[..]..&b"a"[..]).unwrap()).is_empty());
        // 0xFF prefixes have no successor.
        s.put(&[0xFF, 0xFF], b"x");
        assert_eq!(collect(s.prefix(&[0xFF]).unwrap()).len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        Commit,
        Abort,
        Range(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..16, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..16).prop_map(Op::Delete),
            1 => Just(Op::Commit),
            1 => Just(Op::Abort),
            2 => (0u8..17, 0u8..17).prop_map(|(a, b)| Op::Range(a, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The store behaves like a map with an epoch overlay, across commits and aborts.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 1..80)) {
            let h = Harness::new();
            let mut s = h.kv("model", 0);
            let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut current = committed.clone();
            let mut offset = 0;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        s.put(&[b'k', k], &[v]);
                        current.insert(vec![b'k', k], vec![v]);
                    }
                    Op::Delete(k) => {
                        s.delete(&[b'k', k]);
                        current.remove(&vec![b'k', k]);
                    }
                    Op::Commit => {
                        offset += s.changes().count() as i64;
                        s.commit(offset).unwrap();
                        committed = current.clone();
                    }
                    Op::Abort => {
                        s.abort();
                        current = committed.clone();
                    }
                    Op::Range(a, b) => {
                        let (lo, hi) = (vec![b'k', a], vec![b'k', b]);
                        let got = collect(s.range(&lo[..]..&hi[..]).unwrap());
                        let want: Vec<_> = if lo <= hi {
                            current.range(lo..hi).map(|(k, v)| (k.clone(), v.clone())).collect()
                        } else {
                            Vec::new()
                        };
                        prop_assert_eq!(got, want);
                    }
                }
                for k in 0u8..16 {
                    let key = [b'k', k];
                    prop_assert_eq!(
                        s.get(&key).unwrap().map(|v| v.to_vec()),
                        current.get(&key[..]).cloned()
                    );
                }
            }
            let all: Vec<_> = current.into_iter().collect();
            prop_assert_eq!(collect(s.iter().unwrap()), all);
        }
    }
}
