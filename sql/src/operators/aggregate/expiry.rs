//! Event time in the aggregate: windows close once the stream time reaches their end plus
//! the grace period (sessions: passes their end plus the gap plus the grace period, see
//! [`Windows::closed`](crate::operators::window::Windows::closed)); EMIT FINAL emits each of
//! them once then, as ksqlDB's suppression does, and state older than the retention
//! expires.

use bytes::Bytes;

use super::Aggregate;
use super::cache::{Entry, Stores, owned_cache_key, split_cache_key};
use super::output::Out;
use crate::error::{Result, SqlError};

impl Aggregate {
    /// EMIT FINAL: every window that closed, once, then forgotten.
    pub(super) fn close_windows(&mut self) -> Result<Vec<Out>> {
        let Some(w) = self.plan.windows else {
            return Ok(Vec::new());
        };
        if self.stream_time == i64::MIN {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if w.session {
            // Closed: end + gap + grace < stream time.
            let bound = self
                .stream_time
                .saturating_sub(w.grace)
                .saturating_sub(w.size)
                .saturating_sub(1);
            let mut closed: Vec<(usize, Bytes, i64, i64, Entry)> = Vec::new();
            match &self.stores {
                Stores::Session(st) => {
                    for (i, s) in st.iter().enumerate() {
                        for sess in s
                            .fetch_by_end(i64::MIN, bound)
                            .map_err(|e| self.state_err(e))?
                        {
                            let sess = sess.map_err(|e| self.state_err(e))?;
                            if sess.key.is_empty() {
                                continue;
                            }
                            let e = self.decode_entry(&sess.value)?;
                            closed.push((i, sess.key, sess.start, sess.end, e));
                        }
                    }
                }
                _ => {
                    for (ck, v) in &self.cache {
                        let (s, e, k) = split_cache_key(ck);
                        if e <= bound {
                            closed.push((0, Bytes::copy_from_slice(k), s, e, v.clone()));
                        }
                    }
                }
            }
            closed.sort_by(|a, b| (a.3, &a.1, a.2).cmp(&(b.3, &b.1, b.2)));
            for (i, key, s, e, entry) in closed {
                let mut result = self.result(key.to_vec(), s, e, &entry)?;
                result.ts = e;
                out.push(result);
                match &mut self.stores {
                    Stores::Session(st) => st[i]
                        .remove(&key, s, e)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?,
                    _ => {
                        self.cache.remove(owned_cache_key(s, e, &key).as_slice());
                    }
                }
            }
            return Ok(out);
        }
        // Tumbling/hopping: closed when start + size + grace <= stream time.
        let bound = self
            .stream_time
            .saturating_sub(w.grace)
            .saturating_sub(w.size);
        if bound < self.closed_before {
            return Ok(out);
        }
        let mut closed: Vec<(usize, i64, Bytes, Entry)> = Vec::new();
        match &self.stores {
            Stores::Window(st) => {
                for (i, s) in st.iter().enumerate() {
                    for entry in s
                        .fetch_range(self.closed_before, bound)
                        .map_err(|e| self.state_err(e))?
                    {
                        let entry = entry.map_err(|e| self.state_err(e))?;
                        let e = self.decode_entry(&entry.value)?;
                        closed.push((i, entry.window_start, entry.key, e));
                    }
                }
            }
            _ => {
                for (ck, v) in &self.cache {
                    let (s, _, k) = split_cache_key(ck);
                    if s >= self.closed_before && s <= bound {
                        closed.push((0, s, Bytes::copy_from_slice(k), v.clone()));
                    }
                }
            }
        }
        closed.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
        for (i, start, key, entry) in closed {
            out.push(self.result(key.to_vec(), start, start + w.size, &entry)?);
            self.cache
                .remove(owned_cache_key(start, start + w.size, &key).as_slice());
            if let Stores::Window(st) = &mut self.stores {
                st[i].delete(&key, start);
            }
        }
        self.closed_before = bound.saturating_add(1);
        Ok(out)
    }

    /// Drops windows older than the retention.
    pub(super) fn expire(&mut self) -> Result<()> {
        let Some(w) = self.plan.windows else {
            return Ok(());
        };
        if self.stream_time == i64::MIN {
            return Ok(());
        }
        let before = self.stream_time.saturating_sub(w.retention);
        // Expiry scans the cache and the stores: do it when the bound moved by a sixteenth of
        // the retention (or a second), which bounds the extra state kept to that much.
        let step = (w.retention / 16).max(1000);
        if self.expired_to != i64::MIN && before < self.expired_to.saturating_add(step) {
            return Ok(());
        }
        self.expired_to = before;
        self.cache.retain(|ck, _| {
            let (s, e, _) = split_cache_key(ck);
            if w.session { e >= before } else { s >= before }
        });
        match &mut self.stores {
            Stores::Window(st) => {
                for s in st {
                    s.expire(before)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                }
            }
            Stores::Session(st) => {
                for s in st {
                    s.expire(before)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
