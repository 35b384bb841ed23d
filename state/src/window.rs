//! The window store: per-key values of tumbling and hopping windows, ordered by window start,
//! with expiry after retention.

use bytes::Bytes;

use crate::codec::{self, TAG_DATA};
use crate::error::Result;
use crate::store::{Core, delegate_state_store};

/// Options of a window store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowOptions {
    /// How long windows are kept after they start (window size + grace period, or longer for
    /// pull queries), in ms. Sets the changelog topic's `retention.ms` (plus
    /// [`CHANGELOG_EXTRA_RETENTION_MS`](crate::CHANGELOG_EXTRA_RETENTION_MS)); expiry itself is
    /// driven by the operator through [`WindowStore::expire`].
    pub retention_ms: i64,
}

/// One window's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEntry {
    /// Start of the window, ms.
    pub window_start: i64,
    /// The grouping key.
    pub key: Bytes,
    /// The value (e.g. an aggregate's accumulator).
    pub value: Bytes,
}

/// Values per (window start, key), ordered by window start then key, so that a range of
/// window starts (EMIT FINAL of closed windows, expiry) is one ordered scan.
///
/// Memory does not grow with closed windows: nothing is kept in memory beyond the epoch
/// overlay, and [`expire`](WindowStore::expire) deletes old windows from RocksDB (tombstones
/// in the changelog), scanning only windows not expired before.
#[derive(Debug)]
pub struct WindowStore {
    core: Core,
}

delegate_state_store!(WindowStore);

impl WindowStore {
    pub(crate) fn new(core: Core) -> Self {
        WindowStore { core }
    }

    /// The value of `key` in the window starting at `window_start`.
    pub fn get(&self, key: &[u8], window_start: i64) -> Result<Option<Bytes>> {
        self.core.get(&codec::tagged(
            TAG_DATA,
            &codec::window_body(key, window_start),
        ))
    }

    /// Sets `key`'s value in the window starting at `window_start`.
    ///
    /// Fails with [`StateError::Expired`](crate::StateError::Expired) for a window this store
    /// already expired: the operator must drop records past their grace period before.
    pub fn put(&mut self, key: &[u8], window_start: i64, value: &[u8]) -> Result<()> {
        if window_start < self.core.expired_before() {
            return Err(self.core.expired_error("window start", window_start));
        }
        self.core.write(
            codec::tagged(TAG_DATA, &codec::window_body(key, window_start)),
            Some(Bytes::copy_from_slice(value)),
        );
        Ok(())
    }

    /// Deletes `key`'s value in the window starting at `window_start`.
    pub fn delete(&mut self, key: &[u8], window_start: i64) {
        self.core.write(
            codec::tagged(TAG_DATA, &codec::window_body(key, window_start)),
            None,
        );
    }

    /// Every window with `start_from <= window_start <= start_to`, in (window start, key)
    /// order, this epoch's writes merged over the committed state. Lazy.
    pub fn fetch_range(
        &self,
        start_from: i64,
        start_to: i64,
    ) -> Result<impl Iterator<Item = Result<WindowEntry>> + '_> {
        let lower = codec::tagged(TAG_DATA, &codec::encode_time(start_from));
        let upper = match start_to.checked_add(1) {
            Some(t) => codec::tagged(TAG_DATA, &codec::encode_time(t)),
            None => vec![TAG_DATA + 1],
        };
        let core = &self.core;
        Ok(core.scan(lower, upper)?.map(move |r| {
            let (k, value) = r?;
            let (window_start, key) = codec::decode_window_body(&k[1..])
                .ok_or_else(|| core.corrupt(format!("a window key of {} bytes", k.len())))?;
            let key = k.slice_ref(key);
            Ok(WindowEntry {
                window_start,
                key,
                value,
            })
        }))
    }

    /// Deletes every window starting before `before_window_start` (stream time minus
    /// retention), writing a tombstone per window to the changelog; returns how many.
    ///
    /// Scans only from the previous expiry point, so repeated expiry costs what expires, not
    /// what expired before. Windows put later below that point are refused (see
    /// [`put`](WindowStore::put)).
    pub fn expire(&mut self, before_window_start: i64) -> Result<usize> {
        let watermark = self.core.expired_before();
        if before_window_start <= watermark {
            return Ok(0);
        }
        let lower = if watermark == i64::MIN {
            vec![TAG_DATA]
        } else {
            codec::tagged(TAG_DATA, &codec::encode_time(watermark))
        };
        let upper = codec::tagged(TAG_DATA, &codec::encode_time(before_window_start));
        // Collected first because the scan borrows the overlay it would write to; bounded
        // by the windows expiring now, which the epoch's overlay holds anyway.
        let expired: Vec<Bytes> = self
            .core
            .scan(lower, upper)?
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_>>()?;
        for k in &expired {
            self.core.write(k.to_vec(), None);
        }
        self.core.set_expired_before(before_window_start);
        Ok(expired.len())
    }

    /// Windows starting before this were expired (`i64::MIN` until the first expiry after
    /// opening).
    pub fn expired_before(&self) -> i64 {
        self.core.expired_before()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateStore;
    use crate::testutil::Harness;

    fn entries(s: &WindowStore, from: i64, to: i64) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
        s.fetch_range(from, to)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.window_start, e.key.to_vec(), e.value.to_vec())
            })
            .collect()
    }

    #[test]
    fn fetch_range_is_in_time_order_across_negative_and_positive_times() {
        let h = Harness::new();
        let mut s = h.window("w", 0, 60_000);
        for (start, key) in [
            (10, "b"),
            (-5, "a"),
            (0, "z"),
            (10, "a"),
            (i64::MIN, "m"),
            (i64::MAX, "x"),
        ] {
            s.put(key.as_bytes(), start, start.to_string().as_bytes())
                .unwrap();
        }
        h.commit_epoch(&mut s);
        s.put(b"c", -1, b"-1").unwrap();
        s.delete(b"b", 10);
        let got: Vec<_> = entries(&s, i64::MIN, i64::MAX)
            .into_iter()
            .map(|(t, k, _)| (t, String::from_utf8(k).unwrap()))
            .collect();
        let want: Vec<(i64, String)> = [
            (i64::MIN, "m"),
            (-5, "a"),
            (-1, "c"),
            (0, "z"),
            (10, "a"),
            (i64::MAX, "x"),
        ]
        .into_iter()
        .map(|(t, k)| (t, k.to_string()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(entries(&s, -1, 0).len(), 2);
        assert_eq!(s.get(b"a", 10).unwrap().as_deref(), Some(&b"10"[..]));
        assert_eq!(s.get(b"b", 10).unwrap(), None);
        assert_eq!(s.get(b"a", 11).unwrap(), None);
    }

    #[test]
    fn expire_deletes_old_windows_and_logs_tombstones() {
        let h = Harness::new();
        let mut s = h.window("w", 0, 60_000);
        for t in 0..10 {
            s.put(b"k", t * 100, b"v").unwrap();
        }
        h.commit_epoch(&mut s);
        assert_eq!(s.expire(500).unwrap(), 5);
        let tombstones: Vec<_> = s.changes().collect();
        assert_eq!(tombstones.len(), 5);
        assert!(tombstones.iter().all(|c| c.value.is_none()));
        assert_eq!(entries(&s, i64::MIN, i64::MAX).len(), 5);
        // Late writes below the expiry point are refused, not silently kept forever.
        let err = s.put(b"k", 100, b"late").unwrap_err();
        assert!(err.is_bug() && err.to_string().contains("expired"), "{err}");
        // An aborted epoch undoes its expiry.
        s.abort();
        assert_eq!(s.expired_before(), i64::MIN);
        assert_eq!(entries(&s, i64::MIN, i64::MAX).len(), 10);
        assert_eq!(s.expire(500).unwrap(), 5);
        h.commit_epoch(&mut s);
        assert_eq!(s.expire(500).unwrap(), 0);
        assert_eq!(s.get(b"k", 400).unwrap(), None);
        assert_eq!(s.get(b"k", 500).unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// Memory and disk stay bounded by the open windows, not by all windows ever written.
    #[test]
    fn live_keys_stay_bounded_while_100k_windows_pass() {
        let h = Harness::new();
        let mut s = h.window("w", 0, 1_000);
        let total = 100_000i64;
        let epoch = 2_000;
        let mut max_pending = 0;
        for t in 0..total {
            s.put(format!("key{}", t % 7).as_bytes(), t, b"accumulator")
                .unwrap();
            if t % epoch == epoch - 1 {
                // Keep the 1000 most recent windows.
                s.expire(t - 1_000).unwrap();
                max_pending = max_pending.max(s.pending_bytes());
                h.commit_epoch(&mut s);
            }
        }
        s.core.compact().unwrap();
        // Windows 98_999..=99_999 are within retention.
        assert_eq!(entries(&s, i64::MIN, i64::MAX).len(), 1_001);
        let estimate = s.approximate_num_keys().unwrap();
        assert!(estimate < 5_000, "RocksDB estimates {estimate} keys");
        // An epoch's overlay holds that epoch's puts and expiries only.
        assert!(max_pending < 1 << 20, "{max_pending} bytes pending");
    }
}
