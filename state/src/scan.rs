//! Ordered scans that merge the epoch overlay over RocksDB: overlay entries, deletions
//! included, take precedence over RocksDB's for the same key.

use std::collections::btree_map;
use std::iter::Peekable;

use bytes::Bytes;
use rocksdb::{DBRawIterator, ReadOptions};

use crate::error::Result;
use crate::store::{Core, Slot};

/// Tagged `(key, value)` pairs in key order within `[lower, upper)`; see the module docs.
///
/// Lazy: RocksDB is read as the scan advances, so memory does not grow with the range. A
/// RocksDB error ends the scan after yielding it.
pub(crate) struct Scan<'a> {
    core: &'a Core,
    db: DBRawIterator<'a>,
    overlay: Peekable<btree_map::Range<'a, Bytes, Slot>>,
    done: bool,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(core: &'a Core, lower: Vec<u8>, upper: Vec<u8>) -> Result<Scan<'a>> {
        let overlay = core.overlay_range(&lower, &upper).peekable();
        let empty = lower >= upper;
        let mut opts = ReadOptions::default();
        // Bounds let RocksDB stop at the range end instead of walking on over tombstones.
        opts.set_iterate_lower_bound(lower.clone());
        opts.set_iterate_upper_bound(upper);
        let mut db = core.db()?.raw_iterator_opt(opts);
        if !empty {
            db.seek(&lower);
        }
        Ok(Scan {
            core,
            db,
            overlay,
            done: empty,
        })
    }

    fn db_entry(&mut self) -> (Bytes, Bytes) {
        let item = self
            .db
            .item()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .unwrap_or_default();
        self.db.next();
        item
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let db_key = if self.db.valid() {
                self.db.key()
            } else {
                if let Err(e) = self.db.status() {
                    self.done = true;
                    return Some(Err(self.core.map_scan_error(e)));
                }
                None
            };
            let overlay_key = self.overlay.peek().map(|(k, _)| k.as_ref());
            let take_overlay = match (db_key, overlay_key) {
                (None, None) => {
                    self.done = true;
                    return None;
                }
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(d), Some(o)) => match d.cmp(o) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => {
                        // The overlay shadows RocksDB's entry for the same key.
                        self.db.next();
                        true
                    }
                    std::cmp::Ordering::Greater => true,
                },
            };
            if take_overlay {
                // A deletion in the overlay hides the key: skip it and look further.
                if let Some((k, Slot { value: Some(v), .. })) = self.overlay.next() {
                    return Some(Ok((k.clone(), v.clone())));
                }
            } else {
                return Some(Ok(self.db_entry()));
            }
        }
        None
    }
}
