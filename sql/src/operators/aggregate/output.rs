//! From groups to output rows: the accumulators' values, then HAVING and the SELECT list,
//! and which rows are deletions.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, new_empty_array};
use datafusion::common::ScalarValue;

use super::Aggregate;
use super::cache::Entry;
use crate::ast::Emit;
use crate::error::{Result, SqlError};

/// Output rows, their timestamps, their deletion flags, their groups (key, window start)
/// and, windowed, their windows (start, end).
pub(super) type Finished = (
    RecordBatch,
    Vec<i64>,
    Vec<bool>,
    Vec<(Vec<u8>, i64)>,
    Vec<(i64, i64)>,
);

/// One emitted group before HAVING and projection.
pub(super) struct Out {
    key: Vec<u8>,
    start: i64,
    end: i64,
    values: Vec<ScalarValue>,
    /// With a HAVING clause: the group's values before this update (`None` for a new
    /// group), to tell whether its last output passed.
    pub(super) prev: Option<Vec<ScalarValue>>,
    pub(super) ts: i64,
    pub(super) deleted: bool,
}

impl Aggregate {
    /// The output of a group as it stands.
    pub(super) fn result(&self, key: Vec<u8>, start: i64, end: i64, e: &Entry) -> Result<Out> {
        Ok(Out {
            key,
            start,
            end,
            values: self.values(e)?,
            prev: None,
            ts: e.max_ts,
            deleted: false,
        })
    }

    /// The aggregates' values of a group.
    pub(super) fn values(&self, e: &Entry) -> Result<Vec<ScalarValue>> {
        self.plan
            .specs
            .iter()
            .zip(&e.accs)
            .map(|(s, a)| s.evaluate(a))
            .collect()
    }

    /// Builds the aggregate's output rows and applies HAVING and the SELECT list; returns
    /// the rows, their timestamps and which of them are deletions.
    pub(super) fn finish(&self, out: Vec<Out>) -> Result<Finished> {
        if out.is_empty() {
            return Ok((
                RecordBatch::new_empty(Arc::clone(self.plan.schema())),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ));
        }
        let keys: Vec<ArrayRef> = if self.plan.key_types.is_empty() {
            Vec::new()
        } else {
            let parser = self.converter.parser();
            self.converter
                .convert_rows(out.iter().map(|o| parser.parse(&o.key)))?
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.plan.agg_schema.fields().len());
        let mut next_key = keys.into_iter();
        for i in 0..self.plan.group.len() {
            match self.plan.window_pos {
                Some((s, _)) if s == i => columns.push(Arc::new(Int64Array::from_iter_values(
                    out.iter().map(|o| o.start),
                ))),
                Some((_, e)) if e == i => columns.push(Arc::new(Int64Array::from_iter_values(
                    out.iter().map(|o| o.end),
                ))),
                _ => {
                    columns.push(next_key.next().ok_or_else(|| {
                        SqlError::Plan("internal error: group key columns".into())
                    })?)
                }
            }
        }
        for (j, spec) in self.plan.specs.iter().enumerate() {
            let values: Vec<ScalarValue> = out.iter().map(|o| o.values[j].clone()).collect();
            let array = if values.is_empty() {
                new_empty_array(&spec.output)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(array);
        }
        let columns = columns
            .into_iter()
            .zip(self.plan.agg_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    datafusion::arrow::compute::cast(&c, f.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.plan.agg_schema), columns)?;
        let (projected, selected) = self.plan.post.process_all(&batch)?;
        let passes = |i: usize| {
            selected
                .as_ref()
                .is_none_or(|s| s.binary_search(&(i as u32)).is_ok())
        };
        let passed_before = self.passed_before(&batch, &out)?;
        let mut rows = Vec::new();
        let mut deleted = Vec::new();
        for (i, o) in out.iter().enumerate() {
            if !o.deleted && passes(i) {
                rows.push(i as u32);
                deleted.push(false);
            } else if (o.deleted && passes(i))
                || (passed_before[i] && self.plan.emit == Emit::Changes)
            {
                // A group (a window) that stops passing HAVING is deleted downstream, as
                // ksqlDB's table filter does; one whose last output did not pass either (or
                // that never had one) is just not emitted, and neither is the tombstone of a
                // session merged away whose result did not pass (the filter forwards no
                // change from nothing to nothing); EMIT FINAL drops such tombstones, as
                // ksqlDB's suppression does.
                rows.push(i as u32);
                deleted.push(true);
            }
        }
        let batch = datafusion::arrow::compute::take_record_batch(
            &projected,
            &datafusion::arrow::array::UInt32Array::from(rows.clone()),
        )?;
        Ok((
            batch,
            rows.iter().map(|&i| out[i as usize].ts).collect(),
            deleted,
            rows.iter()
                .map(|&i| (out[i as usize].key.clone(), out[i as usize].start))
                .collect(),
            if self.plan.windows.is_some() {
                rows.iter()
                    .map(|&i| (out[i as usize].start, out[i as usize].end))
                    .collect()
            } else {
                Vec::new()
            },
        ))
    }

    /// Per output row: the group's result before this update passed HAVING (false for a
    /// new group, and without HAVING). `batch` holds the new results, whose key and window
    /// columns the previous ones share.
    fn passed_before(&self, batch: &RecordBatch, out: &[Out]) -> Result<Vec<bool>> {
        if out.iter().all(|o| o.prev.is_none()) {
            return Ok(vec![false; out.len()]);
        }
        let mut columns = batch.columns().to_vec();
        let first = columns.len() - self.plan.specs.len();
        for (j, f) in self.plan.agg_schema.fields().iter().enumerate().skip(first) {
            let values = out
                .iter()
                .map(|o| o.prev.as_ref().unwrap_or(&o.values)[j - first].clone());
            let array = ScalarValue::iter_to_array(values)?;
            columns[j] = if array.data_type() == f.data_type() {
                array
            } else {
                datafusion::arrow::compute::cast(&array, f.data_type())?
            };
        }
        let before = RecordBatch::try_new(Arc::clone(&self.plan.agg_schema), columns)?;
        let (_, selected) = self.plan.post.process_all(&before)?;
        Ok(out
            .iter()
            .enumerate()
            .map(|(i, o)| {
                o.prev.is_some()
                    && selected
                        .as_ref()
                        .is_none_or(|s| s.binary_search(&(i as u32)).is_ok())
            })
            .collect())
    }
}
