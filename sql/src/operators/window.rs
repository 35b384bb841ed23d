//! Window assignment: which windows a record with event time `ts` belongs to, and the
//! expansion of a decoded batch into one row per (record, window) with `WINDOWSTART` and
//! `WINDOWEND` columns, which is what a windowed GROUP BY groups on.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::ast::{WindowKind, WindowSpec};
use crate::error::{Result, SqlError};

/// The column holding a window's start (ms, inclusive).
pub const WINDOWSTART: &str = "WINDOWSTART";
/// The column holding a window's end (ms, exclusive).
pub const WINDOWEND: &str = "WINDOWEND";

/// True for the names of the window pseudo-columns, `WINDOWSTART` and `WINDOWEND`.
pub fn is_window_column(name: &str) -> bool {
    name == WINDOWSTART || name == WINDOWEND
}

/// ksqlDB's default grace period when a window gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// At most this many hopping windows per record (`SIZE / ADVANCE BY`, rounded up). Every
/// record is copied into each window it belongs to, so the ratio multiplies the rows, state
/// updates and memory of a batch: `SIZE 10 MINUTES, ADVANCE BY 1 MILLISECONDS` made 600,000
/// rows per record and exhausted memory. Kafka Streams and ksqlDB only require
/// `0 < ADVANCE BY <= SIZE`; 100 keeps a full poll (8,192 records) under a million rows and
/// allows the usual shapes (an hour every minute is 60, a day every 15 minutes 96).
pub const MAX_WINDOWS_PER_RECORD: u64 = 100;

/// The longest window SIZE, session gap, GRACE PERIOD and RETENTION: a year. Longer
/// windows are not streaming aggregates any more, and the bound keeps window arithmetic
/// on milliseconds far from overflowing.
pub const MAX_WINDOW_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Checks a window clause against the bounds above: durations positive where they must
/// be and at most [`MAX_WINDOW_DURATION`], `ADVANCE BY` at most `SIZE`, at most
/// [`MAX_WINDOWS_PER_RECORD`] hopping windows per record. The parser calls it, so a
/// statement outside them is refused when it is created and when a stored query is loaded.
pub fn validate(spec: &WindowSpec) -> Result<()> {
    let invalid = |m: String| Err(SqlError::Invalid(m));
    let (kind, size) = match spec.kind {
        WindowKind::Tumbling { size } => ("TUMBLING window: SIZE", size),
        WindowKind::Hopping { size, .. } => ("HOPPING window: SIZE", size),
        WindowKind::Session { gap } => ("SESSION window: the gap", gap),
    };
    if size.is_zero() {
        return invalid(format!("{kind} must be more than zero"));
    }
    let too_long = |what: &str, d: Duration| {
        invalid(format!(
            "{what} ({}) is longer than the limit of {} days",
            human(d),
            MAX_WINDOW_DURATION.as_secs() / 86_400
        ))
    };
    if size > MAX_WINDOW_DURATION {
        return too_long(kind, size);
    }
    if let Some(g) = spec.grace.filter(|g| *g > MAX_WINDOW_DURATION) {
        return too_long("GRACE PERIOD", g);
    }
    if let Some(r) = spec.retention.filter(|r| *r > MAX_WINDOW_DURATION) {
        return too_long("RETENTION", r);
    }
    if let WindowKind::Hopping { size, advance } = spec.kind {
        if advance.is_zero() || advance > size {
            return invalid(format!(
                "HOPPING window: ADVANCE BY ({}) must be more than zero and at most SIZE ({})",
                human(advance),
                human(size)
            ));
        }
        let per_record = size.as_millis().div_ceil(advance.as_millis().max(1));
        if per_record > u128::from(MAX_WINDOWS_PER_RECORD) {
            return invalid(format!(
                "HOPPING window: SIZE {} with ADVANCE BY {} puts every record in {per_record} windows; the limit is {MAX_WINDOWS_PER_RECORD} (make ADVANCE BY at least {})",
                human(size),
                human(advance),
                human(Duration::from_millis(
                    u64::try_from(
                        size.as_millis()
                            .div_ceil(u128::from(MAX_WINDOWS_PER_RECORD))
                    )
                    .unwrap_or(u64::MAX)
                ))
            ));
        }
    }
    Ok(())
}

/// A duration as the window clause writes it (`90 SECONDS`, `250 MILLISECONDS`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("DAYS", 86_400_000u128),
        ("HOURS", 3_600_000),
        ("MINUTES", 60_000),
        ("SECONDS", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{} {unit}", ms / per);
        }
    }
    format!("{ms} MILLISECONDS")
}

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
    ///
    /// Tumbling and hopping windows are those `[start, start + size)` holding `ts` whose
    /// start is a multiple of the advance (aligned to the epoch), and, as Kafka Streams'
    /// `TimeWindows::windowsFor`, none starts before the epoch when `ts` is at or after it:
    /// with `SIZE 10 SECONDS, ADVANCE BY 5 SECONDS` a record at 1 s is in `[0, 10 s)` only.
    /// (Kafka drops records before the epoch; Sluice windows them the same way, aligned.)
    pub fn assign(&self, ts: i64, out: &mut Vec<(i64, i64)>) {
        out.clear();
        if self.session {
            out.push((ts, ts));
            return;
        }
        let last = ts - ts.rem_euclid(self.advance);
        let mut start = last;
        while start > ts - self.size && (start >= 0 || ts < 0) {
            out.push((start, start + self.size));
            start -= self.advance;
        }
        out.reverse();
    }

    /// True when a window ending at `end` no longer takes records at stream time `now`:
    /// a time window once `now` reaches its end plus the grace period; a session once `now`
    /// passes its end plus the inactivity gap plus the grace period (a record within the gap
    /// could still extend it until then), as Kafka Streams' session aggregate.
    pub fn closed(&self, end: i64, now: i64) -> bool {
        if self.session {
            end.saturating_add(self.size).saturating_add(self.grace) < now
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
/// `stream_time`, with the window columns appended; also the source row of each output row,
/// the stream time when it arrived, and the rows none of whose windows is open (late).
///
/// A session row is always kept: whether it is late depends on the sessions it merges
/// with, which the aggregate finds (see [`Windows::closed`]).
pub fn expand(
    windows: &Windows,
    batch: &RecordBatch,
    times: &[i64],
    schema: &SchemaRef,
    stream_time: &mut i64,
) -> Result<Expanded> {
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut arrival = Vec::with_capacity(batch.num_rows());
    let mut starts = Vec::with_capacity(batch.num_rows());
    let mut ends = Vec::with_capacity(batch.num_rows());
    let mut late = Vec::new();
    let mut assigned = Vec::new();
    for (i, &ts) in times.iter().enumerate() {
        *stream_time = (*stream_time).max(ts);
        windows.assign(ts, &mut assigned);
        let before = rows.len();
        for &(s, e) in &assigned {
            if windows.session || !windows.closed(e, *stream_time) {
                rows.push(i as u32);
                arrival.push(*stream_time);
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
    Ok(Expanded {
        batch: RecordBatch::try_new(Arc::clone(schema), columns)?,
        rows,
        arrival,
        late,
    })
}

/// A batch expanded into its windows.
#[derive(Debug)]
pub struct Expanded {
    /// One row per (input row, open window), with `WINDOWSTART` and `WINDOWEND`.
    pub batch: RecordBatch,
    /// The input row of each row.
    pub rows: Vec<u32>,
    /// The stream time when each row's record arrived (its lateness is judged at it).
    pub arrival: Vec<i64>,
    /// Input rows none of whose windows was open.
    pub late: Vec<usize>,
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
        // No window starts before the epoch for a record after it (Kafka's windowsFor).
        h.assign(3, &mut out);
        assert_eq!(out, vec![(0, 10)]);
        h.assign(-3, &mut out);
        assert_eq!(out, vec![(-10, 0), (-5, 5)]);
    }

    fn hopping(size_ms: u64, advance_ms: u64) -> WindowSpec {
        WindowSpec {
            kind: WindowKind::Hopping {
                size: Duration::from_millis(size_ms),
                advance: Duration::from_millis(advance_ms),
            },
            grace: None,
            retention: None,
        }
    }

    fn refused(spec: &WindowSpec) -> String {
        match validate(spec) {
            Err(SqlError::Invalid(m)) => m,
            other => panic!("expected {spec:?} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn bounds_on_windows_per_record_and_durations() {
        const MIN: u64 = 60_000;
        const DAY: u64 = 24 * 60 * MIN;
        // The probe's window: 600,000 windows per record.
        let m = refused(&hopping(10 * MIN, 1));
        assert!(
            m.contains("600000 windows") && m.contains("limit is 100") && m.contains("6 SECONDS"),
            "{m}"
        );
        assert!(refused(&hopping(DAY, 1)).contains("86400000 windows"));
        // Exactly at the bound, and the usual shapes.
        validate(&hopping(100 * MIN, MIN)).unwrap();
        validate(&hopping(60 * MIN, MIN)).unwrap();
        validate(&hopping(DAY, 15 * MIN)).unwrap();
        assert!(refused(&hopping(101 * MIN, MIN)).contains("101 windows"));
        // ADVANCE BY more than zero and at most SIZE.
        assert!(refused(&hopping(MIN, 2 * MIN)).contains("at most SIZE"));
        assert!(refused(&hopping(MIN, 0)).contains("more than zero"));
        // SIZE, gap, GRACE PERIOD and RETENTION: more than zero, at most a year.
        let tumbling = |size: u64| WindowSpec {
            kind: WindowKind::Tumbling {
                size: Duration::from_millis(size),
            },
            grace: None,
            retention: None,
        };
        assert!(refused(&tumbling(0)).contains("more than zero"));
        assert!(refused(&tumbling(366 * DAY)).contains("365 days"));
        validate(&tumbling(365 * DAY)).unwrap();
        let session = WindowSpec {
            kind: WindowKind::Session {
                gap: Duration::ZERO,
            },
            grace: None,
            retention: None,
        };
        assert!(refused(&session).contains("gap"));
        let mut graceful = tumbling(MIN);
        graceful.grace = Some(Duration::from_millis(400 * DAY));
        assert!(refused(&graceful).contains("GRACE PERIOD (400 DAYS)"));
        graceful.grace = None;
        graceful.retention = Some(Duration::from_millis(u64::MAX));
        assert!(refused(&graceful).contains("RETENTION"));
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
        // A session closes after its end plus the gap plus the grace period.
        let s = w(
            WindowKind::Session {
                gap: Duration::from_millis(10),
            },
            5,
        );
        assert!(!s.closed(100, 115));
        assert!(s.closed(100, 116));
    }
}
