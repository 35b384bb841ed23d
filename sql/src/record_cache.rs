//! The record cache of a persistent query whose result is a table: within an epoch, only
//! the latest update of each key is written, as ksqlDB does with its
//! `cache.max.bytes.buffering` (Kafka Streams' record cache, 10 MB by default).
//!
//! ```text
//!  result rows ─► encode ─► key → latest record (this epoch) ─► commit, or over its bytes ─► topic
//! ```
//!
//! A table is its latest row per key, so readers of the result (a table over its topic, a
//! pull query, a query downstream) see the same table at every commit, from fewer records:
//! an aggregate updated by every input record writes one record per group and epoch instead
//! of one per input record. The cache empties into the epoch's transaction before it
//! commits, so exactly-once holds as without it. Streams are never cached: each of their
//! records is an event.

use std::collections::HashMap;

use bytes::Bytes;
use sluice_log::Record;

/// ksqlDB's default for `cache.max.bytes.buffering`.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 10_000_000;

/// Bytes counted per cached record besides its key and value (map entry, record fields).
const ENTRY_OVERHEAD: usize = 96;

/// The latest record of each key written in an epoch, up to a size in bytes.
#[derive(Debug)]
pub struct RecordCache {
    max_bytes: usize,
    bytes: usize,
    /// Key → (order of its latest update, record).
    latest: HashMap<Bytes, (u64, Record)>,
    next: u64,
}

impl RecordCache {
    /// A cache holding up to `max_bytes` of records.
    pub fn new(max_bytes: usize) -> RecordCache {
        RecordCache {
            max_bytes,
            bytes: 0,
            latest: HashMap::new(),
            next: 0,
        }
    }

    /// Keeps `record` as the latest of `key`, replacing the one before; whether the cache
    /// is now over its size and should be drained.
    pub fn put(&mut self, key: Bytes, record: Record) -> bool {
        let size = |r: &Record| r.value.as_ref().map_or(0, Bytes::len);
        let added = size(&record);
        let key_len = key.len();
        let order = self.next;
        self.next += 1;
        match self.latest.insert(key, (order, record)) {
            Some((_, old)) => self.bytes = (self.bytes + added).saturating_sub(size(&old)),
            None => self.bytes += key_len + added + ENTRY_OVERHEAD,
        }
        self.bytes > self.max_bytes
    }

    /// The cached records, each key's latest, in the order of those updates; the cache is
    /// empty afterwards.
    pub fn drain(&mut self) -> Vec<Record> {
        let mut records: Vec<(u64, Record)> = self.latest.drain().map(|(_, r)| r).collect();
        records.sort_unstable_by_key(|(order, _)| *order);
        self.bytes = 0;
        records.into_iter().map(|(_, r)| r).collect()
    }

    /// Forgets the cached records (their epoch aborted).
    pub fn clear(&mut self) {
        self.latest.clear();
        self.bytes = 0;
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: Option<&'static str>, ts: i64) -> Record {
        Record {
            key: None,
            value: value.map(|v| Bytes::from_static(v.as_bytes())),
            headers: Vec::new(),
            timestamp: ts,
        }
    }

    #[test]
    fn keeps_the_latest_record_of_each_key_in_update_order() {
        let mut c = RecordCache::new(1 << 20);
        let k = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(!c.put(k("a"), rec(Some("1"), 1)));
        c.put(k("b"), rec(Some("1"), 2));
        c.put(k("a"), rec(Some("2"), 3));
        c.put(k("c"), rec(Some("1"), 4));
        c.put(k("b"), rec(None, 5));
        assert_eq!(c.len(), 3);
        let out: Vec<(Option<Bytes>, i64)> = c
            .drain()
            .into_iter()
            .map(|r| (r.value, r.timestamp))
            .collect();
        assert_eq!(
            out,
            vec![
                (Some(Bytes::from_static(b"2")), 3),
                (Some(Bytes::from_static(b"1")), 4),
                (None, 5),
            ]
        );
        assert!(c.is_empty());
    }

    #[test]
    fn says_when_it_is_over_its_size() {
        let mut c = RecordCache::new(1000);
        let big: &'static str = Box::leak("x".repeat(400).into_boxed_str());
        assert!(!c.put(Bytes::from_static(b"a"), rec(Some(big), 1)));
        // Replacing a key's record does not grow the cache by the record's size again.
        assert!(!c.put(Bytes::from_static(b"a"), rec(Some(big), 2)));
        assert!(!c.put(Bytes::from_static(b"b"), rec(Some(big), 3)));
        assert!(c.put(Bytes::from_static(b"c"), rec(Some(big), 4)));
        assert_eq!(c.drain().len(), 3);
        assert!(!c.put(Bytes::from_static(b"d"), rec(Some(big), 5)));
        c.clear();
        assert!(c.is_empty());
    }
}
