//! The session store: per-key sessions `[start, end]` that a session-window operator finds,
//! merges and expires.

use bytes::Bytes;

use crate::codec::{self, SessionKey, TAG_DATA, TAG_INDEX};
use crate::error::Result;
use crate::store::{Core, delegate_state_store};

/// Options of a session store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// How long a session is kept after it ends (inactivity gap + grace period, or longer
    /// for pull queries), in ms. Sets the changelog topic's `retention.ms` (plus
    /// [`CHANGELOG_EXTRA_RETENTION_MS`](crate::CHANGELOG_EXTRA_RETENTION_MS)); expiry itself is
    /// driven by the operator through [`SessionStore::expire`].
    pub retention_ms: i64,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The grouping key.
    pub key: Bytes,
    /// Time of the session's first record, ms.
    pub start: i64,
    /// Time of the session's last record, ms (`>= start`).
    pub end: i64,
    /// The value (e.g. an aggregate's accumulator).
    pub value: Bytes,
}

/// Sessions per key, stored key-first (finding a key's sessions is one short scan) with an
/// end-time-first index (expiry and EMIT FINAL are one ordered scan, not a full scan).
///
/// Only the primary entries go to the changelog; the index entry is derived from the primary
/// key in the same atomic write, both at commit and at replay, so the two cannot diverge and
/// the changelog carries each change once.
#[derive(Debug)]
pub struct SessionStore {
    core: Core,
}

delegate_state_store!(SessionStore);

impl SessionStore {
    pub(crate) fn new(core: Core) -> Self {
        SessionStore { core }
    }

    fn body(&self, s: SessionKey<'_>) -> Result<Vec<u8>> {
        codec::session_body(s).ok_or_else(|| self.core.invalid("a session key longer than 4 GiB"))
    }

    /// The sessions of `key` that a record may merge with: those with
    /// `end >= earliest_end` and `start <= latest_start` (for a record at `t` with
    /// inactivity gap `g`: `earliest_end = t - g`, `latest_start = t + g`), in end order.
    pub fn find_sessions(
        &self,
        key: &[u8],
        earliest_end: i64,
        latest_start: i64,
    ) -> Result<Vec<Session>> {
        let prefix = codec::session_key_prefix(key)
            .ok_or_else(|| self.core.invalid("a session key longer than 4 GiB"))?;
        let tagged_prefix = codec::tagged(TAG_DATA, &prefix);
        let mut lower = tagged_prefix.clone();
        lower.extend_from_slice(&codec::encode_time(earliest_end));
        let upper = codec::prefix_successor(&tagged_prefix).unwrap_or_else(|| vec![TAG_DATA + 1]);
        let mut out = Vec::new();
        for r in self.core.scan(lower, upper)? {
            let (k, value) = r?;
            let s = self.decode(&k)?;
            if s.start <= latest_start {
                out.push(value_session(&k, s, value));
            }
        }
        Ok(out)
    }

    /// The value of one session.
    pub fn get(&self, key: &[u8], start: i64, end: i64) -> Result<Option<Bytes>> {
        let body = self.body(SessionKey { key, start, end })?;
        self.core.get(&codec::tagged(TAG_DATA, &body))
    }

    /// Stores a session (a new one, or the result of a merge after
    /// [`remove`](SessionStore::remove)-ing the merged ones).
    ///
    /// Fails for `end < start`, and with [`StateError::Expired`](crate::StateError::Expired)
    /// for a session ending before the expiry point.
    pub fn put(&mut self, key: &[u8], start: i64, end: i64, value: &[u8]) -> Result<()> {
        if end < start {
            return Err(self
                .core
                .invalid(format!("session end {end} is before its start {start}")));
        }
        if end < self.core.expired_before() {
            return Err(self.core.expired_error("session end", end));
        }
        let s = SessionKey { key, start, end };
        let body = self.body(s)?;
        let index = codec::session_index_key(s)
            .ok_or_else(|| self.core.invalid("a session key longer than 4 GiB"))?;
        self.core.write(
            codec::tagged(TAG_DATA, &body),
            Some(Bytes::copy_from_slice(value)),
        );
        self.core.write(index, Some(Bytes::new()));
        Ok(())
    }

    /// Removes a session (a tombstone in the changelog).
    pub fn remove(&mut self, key: &[u8], start: i64, end: i64) -> Result<()> {
        let s = SessionKey { key, start, end };
        let body = self.body(s)?;
        let index = codec::session_index_key(s)
            .ok_or_else(|| self.core.invalid("a session key longer than 4 GiB"))?;
        self.core.write(codec::tagged(TAG_DATA, &body), None);
        self.core.write(index, None);
        Ok(())
    }

    /// Sessions with `end_from <= end <= end_to`, in (end, key, start) order, this epoch's
    /// writes included: the sessions to emit once the watermark passes their end + gap.
    /// Lazy; each entry costs an index step and a point read.
    pub fn fetch_by_end(
        &self,
        end_from: i64,
        end_to: i64,
    ) -> Result<impl Iterator<Item = Result<Session>> + '_> {
        let lower = codec::tagged(TAG_INDEX, &codec::encode_time(end_from));
        let upper = match end_to.checked_add(1) {
            Some(t) => codec::tagged(TAG_INDEX, &codec::encode_time(t)),
            None => vec![TAG_INDEX + 1],
        };
        let core = &self.core;
        Ok(core.scan(lower, upper)?.filter_map(move |r| {
            let lookup = || -> Result<Option<Session>> {
                let (idx, _) = r?;
                let s = codec::decode_session_index_key(&idx).ok_or_else(|| {
                    core.corrupt(format!("a session index key of {} bytes", idx.len()))
                })?;
                let body = codec::session_body(s)
                    .ok_or_else(|| core.corrupt("a session key longer than 4 GiB".into()))?;
                let Some(value) = core.get(&codec::tagged(TAG_DATA, &body))? else {
                    return Ok(None);
                };
                Ok(Some(Session {
                    key: Bytes::copy_from_slice(s.key),
                    start: s.start,
                    end: s.end,
                    value,
                }))
            };
            lookup().transpose()
        }))
    }

    /// Removes every session ending before `before_end` (stream time minus retention),
    /// writing a tombstone per session to the changelog; returns how many.
    ///
    /// Walks the end-time index from the previous expiry point, so the cost is what
    /// expires. Sessions put later below that point are refused (see
    /// [`put`](SessionStore::put)).
    pub fn expire(&mut self, before_end: i64) -> Result<usize> {
        let watermark = self.core.expired_before();
        if before_end <= watermark {
            return Ok(0);
        }
        let lower = if watermark == i64::MIN {
            vec![TAG_INDEX]
        } else {
            codec::tagged(TAG_INDEX, &codec::encode_time(watermark))
        };
        let upper = codec::tagged(TAG_INDEX, &codec::encode_time(before_end));
        // Collected first: the scan borrows the overlay that removal writes to.
        let expired: Vec<Bytes> = self
            .core
            .scan(lower, upper)?
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_>>()?;
        for idx in &expired {
            let s = codec::decode_session_index_key(idx).ok_or_else(|| {
                self.core
                    .corrupt(format!("a session index key of {} bytes", idx.len()))
            })?;
            let body = self.body(s)?;
            self.core.write(codec::tagged(TAG_DATA, &body), None);
            self.core.write(idx.to_vec(), None);
        }
        self.core.set_expired_before(before_end);
        Ok(expired.len())
    }

    /// Sessions ending before this were expired (`i64::MIN` until the first expiry after
    /// opening).
    pub fn expired_before(&self) -> i64 {
        self.core.expired_before()
    }

    fn decode<'k>(&self, tagged: &'k [u8]) -> Result<SessionKey<'k>> {
        codec::decode_session_body(&tagged[1..]).ok_or_else(|| {
            self.core
                .corrupt(format!("a session key of {} bytes", tagged.len()))
        })
    }
}

fn value_session(k: &Bytes, s: SessionKey<'_>, value: Bytes) -> Session {
    Session {
        key: k.slice_ref(s.key),
        start: s.start,
        end: s.end,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateStore;
    use crate::testutil::Harness;

    fn spans(v: &[Session]) -> Vec<(i64, i64)> {
        v.iter().map(|s| (s.start, s.end)).collect()
    }

    #[test]
    fn find_merge_remove() {
        let h = Harness::new();
        let mut s = h.session("s", 0, 60_000);
        s.put(b"u", 0, 10, b"2").unwrap();
        s.put(b"u", 50, 60, b"3").unwrap();
        s.put(b"u", 200, 200, b"1").unwrap();
        // A key that is a prefix of another must not see the other's sessions.
        s.put(b"uu", 20, 30, b"9").unwrap();
        s.put(b"", -100, -90, b"empty").unwrap();
        h.commit_epoch(&mut s);

        // A record at t=35 with gap 25 may merge with [0,10]? no (10 < 10); with [50,60] yes.
        assert_eq!(
            spans(&s.find_sessions(b"u", 10, 60).unwrap()),
            vec![(0, 10), (50, 60)]
        );
        assert_eq!(
            spans(&s.find_sessions(b"u", 11, 60).unwrap()),
            vec![(50, 60)]
        );
        assert_eq!(spans(&s.find_sessions(b"u", 11, 49).unwrap()), vec![]);
        assert_eq!(
            spans(&s.find_sessions(b"", i64::MIN, i64::MAX).unwrap()),
            vec![(-100, -90)]
        );

        // Merge [0,10] and [50,60] with a record at 30: remove both, put the union.
        for old in s.find_sessions(b"u", 5, 55).unwrap() {
            s.remove(&old.key, old.start, old.end).unwrap();
        }
        s.put(b"u", 0, 60, b"6").unwrap();
        let found = s.find_sessions(b"u", i64::MIN, i64::MAX).unwrap();
        assert_eq!(spans(&found), vec![(0, 60), (200, 200)]);
        assert_eq!(found[0].value.as_ref(), b"6");
        assert_eq!(found[0].key.as_ref(), b"u");
        assert_eq!(s.get(b"u", 50, 60).unwrap(), None);
        assert_eq!(s.get(b"u", 0, 60).unwrap().as_deref(), Some(&b"6"[..]));
        // Only primary entries reach the changelog: two tombstones and one put.
        assert_eq!(s.changes().count(), 3);
        h.commit_epoch(&mut s);

        let by_end: Vec<_> = s
            .fetch_by_end(i64::MIN, i64::MAX)
            .unwrap()
            .map(|r| r.unwrap())
            .map(|s| (String::from_utf8(s.key.to_vec()).unwrap(), s.start, s.end))
            .collect();
        assert_eq!(
            by_end,
            vec![
                ("".to_string(), -100, -90),
                ("uu".to_string(), 20, 30),
                ("u".to_string(), 0, 60),
                ("u".to_string(), 200, 200),
            ]
        );
        assert!(s.put(b"u", 5, 4, b"x").unwrap_err().is_bug());
    }

    #[test]
    fn expire_uses_the_end_index_and_sees_the_overlay() {
        let h = Harness::new();
        let mut s = h.session("s", 0, 60_000);
        for i in 0..10 {
            s.put(format!("k{i}").as_bytes(), i * 10, i * 10 + 5, b"v")
                .unwrap();
        }
        h.commit_epoch(&mut s);
        // Written this epoch and already expirable.
        s.put(b"new", 1, 2, b"v").unwrap();
        // Removed this epoch: expiry must not count it again.
        s.remove(b"k0", 0, 5).unwrap();
        assert_eq!(s.expire(36).unwrap(), 4); // k1..k3 + new
        let left: Vec<_> = s
            .fetch_by_end(i64::MIN, i64::MAX)
            .unwrap()
            .map(|r| r.unwrap().end)
            .collect();
        assert_eq!(left, vec![45, 55, 65, 75, 85, 95]);
        assert!(
            s.put(b"k1", 10, 15, b"late")
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        h.commit_epoch(&mut s);
        s.core.compact().unwrap();
        assert_eq!(s.find_sessions(b"k2", i64::MIN, i64::MAX).unwrap(), vec![]);
        assert_eq!(s.find_sessions(b"k5", i64::MIN, i64::MAX).unwrap().len(), 1);
    }
}
