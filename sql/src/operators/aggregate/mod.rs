//! The streaming aggregate: GROUP BY with or without a window, its state in `sluice-state`.
//!
//! A query `SELECT k, COUNT(*) FROM s [WINDOW ...] WHERE p GROUP BY k HAVING h` runs as
//!
//! ```text
//! decoded batch ─► [window expansion] ─► pre (WHERE, argument projection) ─► per row:
//!     group key ─► accumulators (cache ─► store) ─► EMIT CHANGES: the new result
//! stream time passes window end + grace ─► EMIT FINAL: each closed window once
//! results ─► post (HAVING, SELECT list) ─► output rows
//! ```
//!
//! Group keys are Arrow row-format bytes of the key columns (window columns excluded; they
//! are the window store's time dimension). Each output row of a windowed aggregate carries
//! its window ([`Emitted::windows`]), which its record key carries downstream
//! ([`crate::format::KeyWindow`]). The state of a group is its accumulators
//! ([`super::acc`]) plus the largest event time it has seen, which becomes the timestamp of
//! its output records. State is split over one store per partition of the query's input, by
//! the key's murmur2 hash, so it is "one store per operator and partition" whatever the
//! input's own keys are. Stores are reached through a write-back cache that is flushed into
//! the stores' epoch overlays after every batch; the task commits them with its log
//! transaction. The stream time (largest event time seen) is stored with the state, so a
//! restarted query closes windows exactly where it left off.
//!
//! # Layout
//!
//! - `mod.rs`: the operator, [`Aggregate`]: open, process a batch, flush, abort.
//! - `plan.rs`: [`AggregatePlan`], the group keys, aggregate calls and output schema.
//! - `cache.rs`: the stores per partition, the write-back group cache over them, and the
//!   encoding of a group's state.
//! - `session.rs`: session windows, merged as rows bridge them.
//! - `expiry.rs`: closing windows after their grace (EMIT FINAL) and expiring old state.
//! - `output.rs`: groups to output rows through HAVING and the SELECT list.

mod cache;
mod expiry;
mod output;
mod plan;
mod session;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use sluice_log::Log;
use sluice_state::{StateEnv, StateStore};

use self::cache::{Entry, Stores};
use crate::ast::Emit;
use crate::error::{Result, SqlError};

pub use self::plan::AggregatePlan;

/// Results of one batch: rows in the output schema, each with its record timestamp.
#[derive(Debug)]
pub struct Emitted {
    /// Output rows (after HAVING and the SELECT list).
    pub batch: RecordBatch,
    /// Event time of each row.
    pub timestamps: Vec<i64>,
    /// Rows of the input batch that were too late for every window they belong to.
    pub late: Vec<usize>,
    /// Rows of the input batch left out, with why: a grouping expression was NULL (ksqlDB
    /// drops such rows and logs them), or the aggregate update failed (an overflow). They
    /// changed no group.
    pub failed: Vec<(usize, String)>,
    /// Per output row: the group was deleted (emptied, or no longer passing HAVING) and its
    /// key gets a tombstone. Only unwindowed aggregates delete.
    pub deleted: Vec<bool>,
    /// Per output row: its group (the encoded key and the window start, 0 unwindowed).
    pub groups: Vec<(Vec<u8>, i64)>,
    /// Per output row of a windowed aggregate: its window (start, end), which its record
    /// key carries; empty unwindowed.
    pub windows: Vec<(i64, i64)>,
}

impl Emitted {
    /// Without the rows of the groups `later` emits too: a table row updated within its
    /// group is retracted and added back in one record, and only the group's final row is
    /// emitted (not a tombstone or an intermediate value first).
    pub fn superseded_by(self, later: &Emitted) -> Result<Emitted> {
        let keep: Vec<u32> = (0..self.groups.len())
            .filter(|&i| !later.groups.contains(&self.groups[i]))
            .map(|i| i as u32)
            .collect();
        if keep.len() == self.groups.len() {
            return Ok(self);
        }
        let batch = datafusion::arrow::compute::take_record_batch(
            &self.batch,
            &datafusion::arrow::array::UInt32Array::from(keep.clone()),
        )?;
        let pick = |i: &u32| *i as usize;
        Ok(Emitted {
            batch,
            timestamps: keep.iter().map(|i| self.timestamps[pick(i)]).collect(),
            late: self.late,
            failed: self.failed,
            deleted: keep.iter().map(|i| self.deleted[pick(i)]).collect(),
            groups: keep.iter().map(|i| self.groups[pick(i)].clone()).collect(),
            windows: if self.windows.is_empty() {
                Vec::new()
            } else {
                keep.iter().map(|i| self.windows[pick(i)]).collect()
            },
        })
    }
}

/// A running aggregate.
#[derive(Debug)]
pub struct Aggregate {
    plan: AggregatePlan,
    converter: RowConverter,
    stores: Stores,
    /// Groups by [`cache_key`](cache::cache_key): window start and end, then the group key.
    /// (DataFusion's hashbrown map with a fast hasher: this is the per-row lookup.)
    cache: datafusion::common::HashMap<Vec<u8>, Entry>,
    /// Window stores: no window starting after this is stored yet, so looking one up can be
    /// skipped (most new windows are newer than everything flushed).
    stored_max_start: i64,
    /// Cache keys written since the last flush.
    dirty: Vec<Vec<u8>>,
    /// Reused to build cache keys without allocating.
    scratch: Vec<u8>,
    /// Stream time minus retention at the last expiry.
    expired_to: i64,
    stream_time: i64,
    /// Window stores: windows starting before this were emitted (FINAL) or expired.
    closed_before: i64,
    scan_schema: SchemaRef,
}

impl Aggregate {
    /// Opens the aggregate's stores (`<name>-<partition>` in `env`, changelog topic
    /// `<name>-changelog`) and restores them from the log; `env` `None` keeps state in
    /// memory only.
    pub fn open(
        plan: AggregatePlan,
        scan_schema: SchemaRef,
        env: Option<(&StateEnv, &Log, &str, u32)>,
    ) -> Result<Aggregate> {
        let converter = RowConverter::new(
            plan.key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let stores = Stores::open(plan.windows, env)?;
        let mut agg = Aggregate {
            plan,
            converter,
            stores,
            cache: datafusion::common::HashMap::default(),
            stored_max_start: i64::MAX,
            dirty: Vec::new(),
            scratch: Vec::new(),
            expired_to: i64::MIN,
            stream_time: i64::MIN,
            closed_before: i64::MIN,
            scan_schema,
        };
        agg.load_meta()?;
        // Every stored window started at or before the stream time they were stored at.
        agg.stored_max_start = agg.stream_time;
        Ok(agg)
    }

    /// The plan.
    pub fn plan(&self) -> &AggregatePlan {
        &self.plan
    }

    /// The largest event time seen (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Processes one decoded batch of the input (`times`: event time per row) and returns
    /// what it emits. `sign` is 1 for new rows, -1 to retract rows (table updates).
    ///
    /// When an expression fails on some row (a division by zero), the error comes before
    /// any group changed and the stream time is put back, so the caller can retry row by row.
    pub fn process(&mut self, batch: &RecordBatch, times: &[i64], sign: i64) -> Result<Emitted> {
        let saved = (self.stream_time, self.closed_before);
        let result = self.process_inner(batch, times, sign);
        if let Err(SqlError::Plan(_)) = &result {
            (self.stream_time, self.closed_before) = saved;
        }
        result
    }

    fn process_inner(&mut self, batch: &RecordBatch, times: &[i64], sign: i64) -> Result<Emitted> {
        // Columns nothing reads become null arrays: expansion copies every column once per
        // window, and wide unread text (URLs, payloads) would dominate.
        let slim;
        let batch = match (&self.plan.used_columns, self.plan.windows) {
            (Some(used), Some(_)) if used.len() < batch.num_columns() => {
                let columns: Vec<ArrayRef> = batch
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if used.binary_search(&i).is_ok() {
                            Arc::clone(c)
                        } else {
                            datafusion::arrow::array::new_null_array(c.data_type(), c.len())
                        }
                    })
                    .collect();
                slim = RecordBatch::try_new_with_options(
                    batch.schema(),
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(batch.num_rows())),
                );
                match &slim {
                    Ok(b) => b,
                    // A column declared NOT NULL cannot be nulled; keep the batch as it is.
                    Err(_) => batch,
                }
            }
            _ => batch,
        };
        let (expanded, src_rows, arrival, mut late) = match self.plan.windows {
            Some(w) => {
                let mut st = self.stream_time;
                let r = super::window::expand(&w, batch, times, &self.scan_schema, &mut st)?;
                self.stream_time = st;
                (r.batch, r.rows, r.arrival, r.late)
            }
            None => {
                let batch =
                    RecordBatch::try_new(Arc::clone(&self.scan_schema), batch.columns().to_vec())?;
                (
                    batch,
                    (0..times.len() as u32).collect(),
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
        let (pre, selected) = self.plan.pre.process_indexed(&expanded)?;
        let n = pre.num_rows();
        let group: Vec<ArrayRef> = self
            .plan
            .group
            .iter()
            .map(|g| g.evaluate(&pre).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let key_arrays: Vec<ArrayRef> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| self.plan.window_pos.is_none_or(|(s, e)| *i != s && *i != e))
            .map(|(_, a)| Arc::clone(a))
            .collect();
        let rows = if key_arrays.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_arrays)?)
        };
        let args: Vec<ArrayRef> = self
            .plan
            .args
            .iter()
            .map(|a| a.evaluate(&pre).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let (starts, ends) = match self.plan.window_pos {
            Some((s, e)) => (
                Some(group[s].as_primitive::<Int64Type>().clone()),
                Some(group[e].as_primitive::<Int64Type>().clone()),
            ),
            None => (None, None),
        };
        let mut out = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let emit_changes = self.plan.emit == Emit::Changes;
        let windowed = self.plan.windows.is_some();
        let specs = Arc::clone(&self.plan.specs);
        for r in 0..n {
            let src = selected.as_ref().map_or(r, |s| s[r] as usize);
            let ts = times[src_rows[src] as usize];
            if let Some(null) = key_arrays.iter().position(|a| a.is_null(r)) {
                let row = src_rows[src] as usize;
                if !failed.iter().any(|(r, _)| *r == row) {
                    failed.push((row, self.plan.null_key_reason(null)));
                }
                continue;
            }
            let key: &[u8] = rows.as_ref().map_or(&[], |rs| rs.row(r).data());
            let values: Vec<ScalarValue> = args
                .iter()
                .map(|a| ScalarValue::try_from_array(a.as_ref(), r))
                .collect::<datafusion::error::Result<_>>()?;
            if self.plan.windows.is_some_and(|w| w.session) {
                match self.session_update(key, ts, &values, sign, arrival[src])? {
                    Some(outs) if emit_changes => out.extend(outs),
                    Some(_) => {}
                    None => {
                        let row = src_rows[src] as usize;
                        if !late.contains(&row) {
                            late.push(row);
                        }
                    }
                }
                continue;
            }
            let (start, end) = match (&starts, &ends) {
                (Some(s), Some(e)) => (s.value(r), e.value(r)),
                _ => (0, 0),
            };
            let having = self.plan.post.filters();
            let e = self.entry(start, end, key)?;
            let prev = (having && e.rows > 0).then(|| e.clone());
            // A row whose update fails (a SUM past BIGINT) is taken back out of the specs it
            // already updated and becomes a dead letter; the group and the query go on.
            let mut failure = None;
            // Values that only grow are restored from a copy when the group would get too
            // large (LATEST_BY_OFFSET(x, n) cannot take a value back). The copy is made only
            // for a group this row could take past the bound, not on every update.
            let max = crate::operators::acc::MAX_COLLECTED_BYTES;
            let may_pass = sign > 0
                && specs.iter().any(|s| s.collects())
                && specs
                    .iter()
                    .zip(&e.accs)
                    .map(|(s, a)| s.collected_bytes(a))
                    .chain(values.iter().map(ScalarValue::size))
                    .sum::<usize>()
                    > max;
            let before = may_pass.then(|| e.accs.clone());
            let mut collected = 0;
            for (i, ((spec, acc), v)) in
                specs.iter().zip(e.accs.iter_mut()).zip(&values).enumerate()
            {
                if let Err(err) = spec.update(acc, v, sign) {
                    failure = Some((i, err));
                    break;
                }
                spec.compact(acc);
                if may_pass {
                    collected += spec.collected_bytes(acc);
                }
            }
            if let Some(before) = before.filter(|_| failure.is_none() && collected > max) {
                e.accs = before;
                let row = src_rows[src] as usize;
                if !failed.iter().any(|(r, _)| *r == row) {
                    failed.push((
                        row,
                        format!(
                            "aggregate update refused: the group's collected values would pass {} KiB (its state and its result are one record each)",
                            max / 1024
                        ),
                    ));
                }
                continue;
            }
            if let Some((failed_at, err)) = failure {
                for ((spec, acc), v) in specs
                    .iter()
                    .zip(e.accs.iter_mut())
                    .zip(&values)
                    .take(failed_at)
                {
                    spec.update(acc, v, -sign).map_err(|e| {
                        SqlError::Invalid(format!(
                            "aggregate update failed and could not be taken back (the query stops): {e}"
                        ))
                    })?;
                    spec.compact(acc);
                }
                let row = src_rows[src] as usize;
                if !failed.iter().any(|(r, _)| *r == row) {
                    failed.push((row, format!("aggregate update failed: {err}")));
                }
                continue;
            }
            e.max_ts = e.max_ts.max(ts);
            e.rows += sign;
            if e.rows <= 0 && !windowed {
                // The group lost its last row (a table input deleted or moved it): as in
                // ksqlDB, its result over no rows is written (COUNT 0), not a tombstone (unless
                // HAVING then fails); its state goes, a later row starts it afresh.
                let e = e.clone();
                let mut o = self.result(key.to_vec(), start, end, &e)?;
                o.prev = prev.map(|p| self.values(&p)).transpose()?;
                self.delete_group(key)?;
                out.push(o);
                continue;
            }
            if emit_changes {
                let e = e.clone();
                let mut o = self.result(key.to_vec(), start, end, &e)?;
                o.prev = prev.map(|p| self.values(&p)).transpose()?;
                out.push(o);
            }
        }
        self.flush_cache()?;
        if !emit_changes {
            out.extend(self.close_windows()?);
        }
        self.expire()?;
        let (batch, timestamps, deleted, groups, windows) = self.finish(out)?;
        late.sort_unstable();
        Ok(Emitted {
            batch,
            timestamps,
            late,
            failed,
            deleted,
            groups,
            windows,
        })
    }

    /// The input columns it may read (`None`: any of them).
    pub fn read_columns(&self) -> Option<&[usize]> {
        match self.plan.pre.explodes() {
            true => None,
            false => self.plan.used_columns.as_deref(),
        }
    }

    /// Writes the cache into the stores (call before taking their changes).
    pub fn flush(&mut self) -> Result<()> {
        self.flush_cache()
    }

    /// The stores, for the task's epoch commit.
    pub fn stores_mut(&mut self) -> Vec<&mut dyn StateStore> {
        match &mut self.stores {
            Stores::Memory => Vec::new(),
            Stores::Kv(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
            Stores::Window(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
            Stores::Session(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
        }
    }

    /// Drops the epoch's uncommitted state (its log transaction aborted).
    pub fn abort(&mut self) -> Result<()> {
        for s in self.stores_mut() {
            s.abort();
        }
        self.cache.clear();
        self.dirty.clear();
        self.expired_to = i64::MIN;
        self.stored_max_start = i64::MAX;
        self.stream_time = i64::MIN;
        self.closed_before = i64::MIN;
        self.load_meta()?;
        self.stored_max_start = self.stream_time;
        Ok(())
    }
}
