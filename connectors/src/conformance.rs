//! The contract tests every connector runs (STYLE: one suite per contract). Each takes a way
//! to build the connector over a fresh environment and to feed or read that environment, and
//! panics on a violation.

// A test suite: a failing connector call is a failed test, so it panics with the error.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_log::ConsumerRecord;

use crate::{Sink, Source};

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
    let first = s.poll(2, Duration::ZERO).unwrap();
    assert_eq!(values(&first), ["a1", "a2"], "max is honoured, order kept");
    let pos = first
        .position
        .expect("a poll that read input has a position");
    append(&["a4"]);
    let mut again = make();
    again.open(Some(&pos)).unwrap();
    let rest = again.poll(100, Duration::ZERO).unwrap();
    assert_eq!(
        values(&rest),
        ["a3", "a4"],
        "resumes exactly after the position"
    );
    let empty = again.poll(100, Duration::ZERO).unwrap();
    assert!(
        empty.records.is_empty() && empty.position.is_none(),
        "nothing new, no position"
    );
}

/// Writing records, crashing before the offsets commit, and writing them again from an
/// earlier offset leaves the same output as writing them once. `make(i)` builds a sink over
/// environment `i` (0 and 1 are separate), `output(i)` reads what environment `i` holds.
pub fn sink_replays_are_idempotent(
    make: &dyn Fn(usize) -> Box<dyn Sink>,
    output: &dyn Fn(usize) -> Vec<String>,
) {
    let records: Vec<ConsumerRecord> = (0..7)
        .map(|i| ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: i,
            timestamp: 1_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{{\"v\": {i}}}"))),
            headers: Vec::new(),
        })
        .collect();
    let mut once = make(0);
    once.write(&records).unwrap();
    once.flush().unwrap();
    let mut crashed = make(1);
    crashed.write(&records).unwrap();
    drop(crashed);
    for resume in [5usize, 2] {
        let mut again = make(1);
        again.write(&records[resume..]).unwrap();
        again.flush().unwrap();
    }
    assert_eq!(output(1), output(0), "a replay left different output");
    assert!(!output(0).is_empty());
}
