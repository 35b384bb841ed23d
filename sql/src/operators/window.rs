//! Window assignment: which windows a record with event time `ts` belongs to, and the
//! expansion of a decoded batch into one row per (record, window) with `windowstart` and
//! `windowend` columns, which is what a windowed GROUP BY groups on.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::ast::{WindowKind, WindowSpec};
use crate::error::Result;

/// The column holding a window's start (ms, inclusive).
pub const WINDOWSTART: &str = "windowstart";
/// The column holding a window's end (ms, exclusive).
pub const WINDOWEND: &str = "windowend";

/// ksqlDB's default grace period when a window gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A window clause with its durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Tumbling and hopping: size; session: the inactivity gap.
    pub size: i64,
    /// Hopping: advance (= size for tumbling); 0 for sessions.
    pub advance: i64,
    /// Session windows.
    pub session: bool,
    /// Grace period.
    pub grace: i64,
    /// How long closed windows are kept in state.
    pub retention: i64,
}

impl Windows {
    /// From the parsed clause, with defaults (grace 24 h, retention size + grace).
    pub fn new(spec: &WindowSpec) -> Windows {
        let grace = ms(spec.grace.unwrap_or(DEFAULT_GRACE));
        let (size, advance, session) = match spec.kind {
            WindowKind::Tumbling { size } => (ms(size), ms(size), false),
            WindowKind::Hopping { size, advance } => (ms(size), ms(advance), false),
            WindowKind::Session { gap } => (ms(gap), 0, true),
        };
        let minimum = size.saturating_add(grace);
        let retention = spec.retention.map_or(minimum, |r| ms(r).max(minimum));
        Windows {
            size: size.max(1),
            advance: advance.max(if session { 0 } else { 1 }),
            session,
            grace,
            retention,
        }
    }

    /// The windows of event time `ts` as (start, end); a session's initial window is
    /// `(ts, ts)`.
    pub fn assign(&self, ts: i64, out: &mut Vec<(i64, i64)>) {
        out.clear();
        if self.session {
            out.push((ts, ts));
            return;
        }
        let last = ts - ts.rem_euclid(self.advance);
        let mut start = last;
        while start > ts - self.size {
            out.push((start, start + self.size));
            start -= self.advance;
        }
        out.reverse();
    }

    /// True when a window ending at `end` no longer takes records at stream time `now`.
    pub fn closed(&self, end: i64, now: i64) -> bool {
        if self.session {
            end.saturating_add(self.grace) < now
        } else {
            end.saturating_add(self.grace) <= now
        }
    }
}

/// `schema` plus the two window columns (the table a windowed query plans against).
pub fn with_window_columns(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WINDOWSTART, DataType::Int64, false));
    fields.push(Field::new(WINDOWEND, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// One row per (row of `batch`, window of its time in `times`) that is still open at
/// `stream_time`, with the window columns appended; also the source row of each output row
/// and the rows none of whose windows is open (late).
pub fn expand(
    windows: &Windows,
    batch: &RecordBatch,
    times: &[i64],
    schema: &SchemaRef,
    stream_time: &mut i64,
) -> Result<(RecordBatch, Vec<u32>, Vec<usize>)> {
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut starts = Vec::with_capacity(batch.num_rows());
    let mut ends = Vec::with_capacity(batch.num_rows());
    let mut late = Vec::new();
    let mut assigned = Vec::new();
    for (i, &ts) in times.iter().enumerate() {
        *stream_time = (*stream_time).max(ts);
        windows.assign(ts, &mut assigned);
        let before = rows.len();
        for &(s, e) in &assigned {
            let end = if windows.session { s } else { e };
            if !windows.closed(end, *stream_time) {
                rows.push(i as u32);
                starts.push(s);
                ends.push(e);
            }
        }
        if rows.len() == before {
            late.push(i);
        }
    }
    let idx = UInt32Array::from(rows.clone());
    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<std::result::Result<_, _>>()?;
    columns.push(Arc::new(Int64Array::from(starts)));
    columns.push(Arc::new(Int64Array::from(ends)));
    Ok((
        RecordBatch::try_new(Arc::clone(schema), columns)?,
        rows,
        late,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: WindowKind, grace_ms: u64) -> Windows {
        Windows::new(&WindowSpec {
            kind,
            grace: Some(Duration::from_millis(grace_ms)),
            retention: None,
        })
    }

    #[test]
    fn tumbling_and_hopping_assignment_including_negative_times() {
        let t = w(
            WindowKind::Tumbling {
                size: Duration::from_millis(10),
            },
            0,
        );
        let mut out = Vec::new();
        t.assign(25, &mut out);
        assert_eq!(out, vec![(20, 30)]);
        t.assign(-1, &mut out);
        assert_eq!(out, vec![(-10, 0)]);
        let h = w(
            WindowKind::Hopping {
                size: Duration::from_millis(10),
                advance: Duration::from_millis(5),
            },
            0,
        );
        h.assign(12, &mut out);
        assert_eq!(out, vec![(5, 15), (10, 20)]);
        h.assign(10, &mut out);
        assert_eq!(out, vec![(5, 15), (10, 20)]);
    }

    #[test]
    fn windows_close_after_grace() {
        let t = w(
            WindowKind::Tumbling {
                size: Duration::from_millis(10),
            },
            5,
        );
        assert!(!t.closed(10, 14));
        assert!(t.closed(10, 15));
        assert_eq!(t.retention, 15);
    }
}
