//! The contract tests every connector runs (STYLE: one suite per contract). Each takes a way
//! to build the connector over a fresh environment and to feed or read that environment, and
//! panics on a violation.

// A test suite: a failing connector call is a failed test, so it panics with the error.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_log::ConsumerRecord;

use crate::{Sink, Source, Wait};

fn values(batch: &crate::SourceBatch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// A source opened at the position of a poll continues exactly after that poll's input: no
/// gap, no repeat, and an empty poll has no position. `append` adds input lines; `make`
/// builds a fresh source over the same input.
pub fn source_resumes_exactly_after_its_position(
    make: &dyn Fn() -> Box<dyn Source>,
    append: &dyn Fn(&[&str]),
) {
    append(&["a1", "a2", "a3"]);
    let mut s = make();
    s.open(None).unwrap();
    let first = s.poll(2, &Wait::timeout(Duration::ZERO)).unwrap();
    assert_eq!(values(&first), ["a1", "a2"], "max is honoured, order kept");
    let pos = first
        .position
        .expect("a poll that read input has a position");
    append(&["a4"]);
    let mut again = make();
    again.open(Some(&pos)).unwrap();
    let rest = again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
    assert_eq!(
        values(&rest),
        ["a3", "a4"],
        "resumes exactly after the position"
    );
    let empty = again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
    assert!(
        empty.records.is_empty() && empty.position.is_none(),
        "nothing new, no position"
    );
}

/// The records a sink conformance run writes: 12 records with offset gaps (as transaction
/// markers leave), record times 1 s apart.
pub fn sample_records() -> Vec<ConsumerRecord> {
    (0..12i64)
        .map(|i| ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: i + i / 3,
            timestamp: 1_700_000_000_000 + i * 1_000,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{{\"v\": {i}, \"name\": \"n{i}\"}}"))),
            headers: Vec::new(),
        })
        .collect()
}

/// A sink replays idempotently. `make(i)` builds a sink over environment `i` (0, 1 and 2 are
/// separate); `output(i)` lists what environment `i` holds as `(object or file name, record)`
/// pairs, one per stored record.
///
/// - A crash before any flush, then a replay from the start, leaves exactly the output of
///   writing once: the same names and records.
/// - A crash after a flush, then replays (twice) from the offsets that flush returned,
///   leaves every record exactly once.
/// - The offsets `flush` returns never pass a record that is not in the output.
pub fn sink_replays_are_idempotent(
    make: &dyn Fn(usize) -> Box<dyn Sink>,
    output: &dyn Fn(usize) -> Vec<(String, String)>,
) {
    sink_replays_are_idempotent_with(None, make, output);
}

/// The schema of [`sample_records`]' values: `v` BIGINT, `name` VARCHAR.
pub fn sample_schema() -> sluice_log::RecordSchema {
    use sluice_log::{FieldSchema, FieldType, RecordSchema};
    RecordSchema::new(vec![
        FieldSchema::new("v", FieldType::Int64),
        FieldSchema::nullable("name", FieldType::String),
    ])
}

/// [`sink_replays_are_idempotent`] with every sink opened with `schema` (as the worker opens
/// a sink with its topic's recorded value schema).
pub fn sink_replays_are_idempotent_with(
    schema: Option<&sluice_log::RecordSchema>,
    make: &dyn Fn(usize) -> Box<dyn Sink>,
    output: &dyn Fn(usize) -> Vec<(String, String)>,
) {
    let make = |i: usize| -> Box<dyn Sink> {
        let mut sink = make(i);
        sink.open(schema).unwrap();
        sink
    };
    let records = sample_records();
    let from = |d: &crate::Durable| -> Vec<ConsumerRecord> {
        let start = d.get(&0).copied().unwrap_or(0);
        records
            .iter()
            .filter(|r| r.offset >= start)
            .cloned()
            .collect()
    };
    let records_of = |i: usize| -> Vec<String> {
        let mut v: Vec<String> = output(i).into_iter().map(|(_, r)| r).collect();
        v.sort();
        v
    };

    let mut once = make(0);
    assert!(once.write(&records).unwrap().is_empty());
    let done = once.flush().unwrap();
    drop(once);
    let stored = output(0).len();
    let durable = records
        .iter()
        .filter(|r| r.offset < done.get(&0).copied().unwrap_or(0))
        .count();
    assert!(
        stored >= durable && durable > 0,
        "flush said {durable} records are durable, the output holds {stored}"
    );

    let mut crashed = make(2);
    crashed.write(&records).unwrap();
    drop(crashed);
    let mut again = make(2);
    again.write(&records).unwrap();
    again.flush().unwrap();
    drop(again);
    let mut a = output(2);
    let mut b = output(0);
    a.sort();
    b.sort();
    assert_eq!(a, b, "a replay from the start left different output");

    let mut s = make(1);
    s.write(&records[..5]).unwrap();
    let mid = s.flush().unwrap();
    s.write(&records[5..]).unwrap();
    drop(s);
    for _ in 0..2 {
        let mut s = make(1);
        s.write(&from(&mid)).unwrap();
        let end = s.flush().unwrap();
        assert_eq!(end, done, "the same input reaches the same durable offsets");
        drop(s);
    }
    assert_eq!(
        records_of(1),
        records_of(0),
        "replays after a flush lost or repeated records"
    );
}
