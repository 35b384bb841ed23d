//! Session windows: a row joins its key's session, and the sessions it bridges (those
//! within the inactivity gap on either side) merge into one, as Kafka Streams' session
//! aggregate (and so ksqlDB) does: a session's bounds are its first and last record's times,
//! each session merged away gets a tombstone (its key carries its old bounds), then the
//! merged session is emitted, each stamped with its session's end.

use datafusion::common::ScalarValue;

use super::Aggregate;
use super::cache::{Entry, Stores, owned_cache_key, split_cache_key};
use super::output::Out;
use crate::error::{Result, SqlError};

impl Aggregate {
    /// Adds a row to its key's session, merging the sessions it bridges; returns the
    /// tombstones of the sessions merged away and the session's new result, or `None` when
    /// the row is late: the session it would make closed before `arrival`, the stream time
    /// when it arrived (nothing changed then).
    pub(super) fn session_update(
        &mut self,
        key: &[u8],
        ts: i64,
        values: &[ScalarValue],
        sign: i64,
        arrival: i64,
    ) -> Result<Option<Vec<Out>>> {
        let Some(windows) = self.plan.windows else {
            return Err(SqlError::Plan(
                "internal error: a session without windows".into(),
            ));
        };
        let gap = windows.size;
        let specs = self.plan.specs.clone();
        let i = self.store_index(key);
        // Sessions that end at or after ts - gap and start at or before ts + gap.
        let found: Vec<(i64, i64, Entry)> = match &self.stores {
            Stores::Session(s) => s[i]
                .find_sessions(key, ts.saturating_sub(gap), ts.saturating_add(gap))
                .map_err(|e| self.state_err(e))?
                .into_iter()
                .map(|s| Ok((s.start, s.end, self.decode_entry(&s.value)?)))
                .collect::<Result<_>>()?,
            _ => self
                .cache
                .iter()
                .filter_map(|(ck, v)| {
                    let (s, e, k) = split_cache_key(ck);
                    (k == key && e >= ts.saturating_sub(gap) && s <= ts.saturating_add(gap))
                        .then(|| (s, e, v.clone()))
                })
                .collect(),
        };
        let start = found.iter().map(|f| f.0).fold(ts, i64::min);
        let end = found.iter().map(|f| f.1).fold(ts, i64::max);
        if windows.closed(end, arrival) {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut merged = self.new_entry()?;
        // In time order, the row between the sessions before and after it: an order-keeping
        // aggregate (COLLECT_LIST, LATEST_BY_OFFSET) sees the earlier session's rows, then
        // this row, then the later session's, as ksqlDB merges them.
        let mut found = found;
        found.sort_by_key(|f| (f.0, f.1));
        // LATEST_BY_OFFSET and EARLIEST_BY_OFFSET go by offset, not time: this row is the
        // newest of all, so it comes after every merged session's rows for them.
        let mut row_added: Vec<bool> = specs.iter().map(|_| false).collect();
        for (s, e, entry) in &found {
            if *s > ts {
                for (((spec, acc), v), added) in specs
                    .iter()
                    .zip(merged.accs.iter_mut())
                    .zip(values)
                    .zip(row_added.iter_mut())
                {
                    if !*added && !spec.by_offset() {
                        spec.update(acc, v, sign)?;
                        *added = true;
                    }
                }
            }
            if (start, end) != (ts, ts) {
                // As Kafka Streams: every session merged into a new window is removed with a
                // tombstone (a session grown by a row inside it too), then the new one put.
                let mut gone = self.result(key.to_vec(), *s, *e, entry)?;
                gone.deleted = true;
                gone.ts = *e;
                out.push(gone);
            }
            for ((spec, acc), other) in specs.iter().zip(merged.accs.iter_mut()).zip(&entry.accs) {
                spec.merge(acc, other)?;
            }
            merged.max_ts = merged.max_ts.max(entry.max_ts);
            merged.rows += entry.rows;
            match &mut self.stores {
                Stores::Session(st) => st[i]
                    .remove(key, *s, *e)
                    .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?,
                _ => {
                    self.cache.remove(owned_cache_key(*s, *e, key).as_slice());
                }
            }
        }
        for (((spec, acc), v), added) in specs
            .iter()
            .zip(merged.accs.iter_mut())
            .zip(values)
            .zip(&row_added)
        {
            if !*added {
                spec.update(acc, v, sign)?;
            }
        }
        merged.max_ts = merged.max_ts.max(ts);
        merged.rows += sign;
        match &mut self.stores {
            Stores::Session(st) => {
                let bytes = Self::encode_entry(&merged)?;
                st[i]
                    .put(key, start, end, &bytes)
                    .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
            }
            _ => {
                self.cache
                    .insert(owned_cache_key(start, end, key), merged.clone());
            }
        }
        let mut result = self.result(key.to_vec(), start, end, &merged)?;
        result.ts = end;
        out.push(result);
        Ok(Some(out))
    }
}
