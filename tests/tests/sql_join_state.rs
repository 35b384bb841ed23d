//! A windowed stream-stream join's state stays bounded by its window: far more distinct keys
//! stream through a persistent join than one window holds, and the state the query commits
//! never holds more than a small multiple of one window's records.
//!
//! The state is measured from the join store's changelog, the record of every committed
//! change that a restore replays: folding it up to each epoch's end gives the exact entries
//! the store held then (RocksDB's own key count is an estimate that deletions of keys
//! written and expired within one epoch pull below the truth, so it proves nothing).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::runner::RunnerConfig;

/// Left records: left record `i` has key `k{i}` and time `i` ms; a right record with that key
/// exists for even `i`, at the end of its 100 ms block (so that the sides come in runs of 100
/// and 50 records, not alternating record by record).
fn keys() -> u64 {
    crate::common::env_or("SLUICE_JOIN_STATE_KEYS", 100_000)
}
/// Records of one side per millisecond of event time: 1 (left) and 1/2 (right).
const WITHIN_MS: i64 = 500;

fn record(key: &str, value: String, ts: i64) -> Record {
    Record {
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp: ts,
    }
}

/// An engine whose queries commit every `commit_ms` and take `max_poll_records` at a time.
fn engine(log: &Log, commit_ms: u64, max_poll_records: usize) -> Engine {
    Engine::open_with(
        log,
        EngineConfig {
            runner: RunnerConfig {
                commit_interval: Duration::from_millis(commit_ms),
                max_poll_records,
                ..RunnerConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn stream_stream_join_state_stays_within_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    // Now, not 1970: the output topic's 7-day retention would delete older records.
    let base = sluice_log::record::now_ms() / 1000 * 1000;
    let mut e = engine(&log, 20, 500);
    e.execute(
        "CREATE STREAM l (id VARCHAR KEY, k VARCHAR) WITH (topic='l', partitions=1);
         CREATE STREAM r (id VARCHAR KEY, k VARCHAR) WITH (topic='r', partitions=1);",
    )
    .unwrap();
    let started = Instant::now();
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    for i in 0..keys() {
        let ts = base + i as i64;
        let v = format!(r#"{{"k": "k{i}"}}"#);
        p.send("l", record(&format!("l{i}"), v.clone(), ts))
            .unwrap();
        if i % 2 == 0 {
            let block_end = base + (i as i64 / 100 + 1) * 100;
            p.send("r", record(&format!("r{i}"), v, block_end)).unwrap();
        }
    }
    // A last pair far later closes every window: each left record comes out once.
    let end = base + keys() as i64 + 60_000;
    p.send("l", record("lend", r#"{"k": "end"}"#.into(), end))
        .unwrap();
    p.send("r", record("rend", r#"{"k": "end"}"#.into(), end))
        .unwrap();
    p.flush().unwrap();
    e.execute(&format!(
        "CREATE STREAM j WITH (topic='j') AS SELECT l.k, l.id AS lid, r.id AS rid FROM l \
         LEFT JOIN r WITHIN {WITHIN_MS} MILLISECONDS GRACE PERIOD 0 SECONDS ON l.k = r.k;"
    ))
    .unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(300)).unwrap());
    let took = started.elapsed();
    drop(e);

    // Every left record joined once: the even ones with their right record, the odd ones
    // with NULLs when their window closed (which also shows that they left the state).
    let out = crate::common::read_committed(&log, "j");
    let mut matched = 0;
    let mut seen = HashSet::new();
    for r in &out {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let lid = v["LID"].as_str().unwrap().to_string();
        let rid = v["RID"].as_str();
        let i: Option<u64> = lid.strip_prefix('l').and_then(|n| n.parse().ok());
        match (i, rid) {
            (Some(i), Some(rid)) => {
                assert_eq!(i % 2, 0, "{lid} matched {rid}");
                assert_eq!(rid, format!("r{i}"));
                matched += 1;
            }
            (Some(i), None) => assert_eq!(i % 2, 1, "{lid} left unmatched"),
            (None, rid) => assert_eq!((lid.as_str(), rid), ("lend", Some("rend"))),
        }
        assert!(seen.insert(lid.clone()), "{lid} emitted twice");
    }
    assert_eq!(out.len() as u64, keys() + 1, "results");
    assert_eq!(matched, keys() / 2);

    // The state at each epoch's end: the changelog folded up to a gap in its offsets (the
    // commit marker of the epoch's transaction takes one).
    let changelog = log
        .topic_names()
        .into_iter()
        .find(|t| t.ends_with("-join0-buffer-changelog"))
        .expect("the join's changelog topic");
    let mut live: HashSet<Bytes> = HashSet::new();
    let mut max_live = 0;
    let mut epochs = 0;
    let mut next = None;
    let mut changes = 0u64;
    log.read_all(&changelog, 0, |offset, rec| {
        if next.is_some_and(|n| n != offset) {
            max_live = max_live.max(live.len());
            epochs += 1;
        }
        next = Some(offset + 1);
        changes += 1;
        let key = rec.key.unwrap();
        match rec.value {
            Some(_) => live.insert(key),
            None => live.remove(&key),
        };
    })
    .unwrap();
    max_live = max_live.max(live.len());
    // A buffered record has two entries (its buffer entry and its expiry index entry). The
    // buffer holds the records of the last `2 * WITHIN_MS` of stream time (before + after +
    // grace): 1.5 records per millisecond of event time.
    let window = 2 * (2 * WITHIN_MS as usize * 3 / 2);
    eprintln!(
        "join state: {} input records in {took:?}, {changes} changelog records in {epochs} epochs, \
         at most {max_live} entries (one window: {window}), {} at the end",
        keys() * 3 / 2 + 2,
        live.len()
    );
    assert!(epochs >= 5, "only {epochs} epochs: too few to show a bound");
    assert!(
        max_live <= 2 * window,
        "the join state held {max_live} entries at an epoch's end; one window holds {window}"
    );
    // At the end only the last pair and the stream time remain.
    assert!(live.len() <= 5, "{} entries left: {live:?}", live.len());
    log.close().unwrap();
}

/// A join reading a topic whose records cover far more event time each than the other's
/// (Nexmark's auctions against its bids) reads that topic ahead; its reader then pauses it
/// rather than process it ahead of the other, so no record of the slower topic comes in
/// behind the query's stream time: with no grace period, none is late, and each joins once.
#[test]
fn a_topic_read_ahead_in_time_makes_no_record_of_the_other_late() {
    const BIDS_PER_AUCTION: i64 = 15;
    let bids = crate::common::env_or("SLUICE_JOIN_AHEAD_BIDS", 60_000) as i64;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let base = sluice_log::record::now_ms() / 1000 * 1000;
    // Buffers fill after a few polls: the pausing happens thousands of times.
    let mut e = engine(&log, 50, 100);
    e.execute(
        "CREATE STREAM auctions (id BIGINT KEY, ts BIGINT) \
         WITH (topic='auctions', partitions=1, timestamp='ts');
         CREATE STREAM bids (auction BIGINT, ts BIGINT) \
         WITH (topic='bids', partitions=1, timestamp='ts');",
    )
    .unwrap();
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    // Auction `a` opens at `a * 15` ms; its 15 bids come in the 15 ms after it (the first at
    // the same millisecond).
    for a in 0..bids / BIDS_PER_AUCTION {
        let ts = base + a * BIDS_PER_AUCTION;
        p.send(
            "auctions",
            record(&a.to_string(), format!(r#"{{"ts": {ts}}}"#), ts),
        )
        .unwrap();
    }
    for i in 0..bids {
        let ts = base + i;
        let v = format!(r#"{{"auction": {}, "ts": {ts}}}"#, i / BIDS_PER_AUCTION);
        p.send("bids", record(&format!("b{i}"), v, ts)).unwrap();
    }
    p.flush().unwrap();
    e.execute(
        "CREATE STREAM won WITH (topic='won') AS SELECT a.id AS id, b.ts AS ts FROM bids b \
         JOIN auctions a WITHIN (1 SECOND, 0 SECONDS) GRACE PERIOD 0 SECONDS \
         ON b.auction = a.id;",
    )
    .unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(300)).unwrap());
    drop(e);

    let late = crate::common::read_committed(&log, "won.dlq");
    assert!(
        late.is_empty(),
        "{} records went to the dead-letter topic, the first: {:?}",
        late.len(),
        late.first().map(|r| &r.headers)
    );
    let out = crate::common::read_committed(&log, "won");
    let mut seen = HashSet::new();
    for r in &out {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let ts = v["TS"].as_i64().unwrap();
        // The join key is the record's key.
        let id: i64 = std::str::from_utf8(r.key.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(id, (ts - base) / BIDS_PER_AUCTION);
        assert!(seen.insert(ts), "the bid at {ts} joined twice");
    }
    assert_eq!(out.len() as i64, bids, "every bid joined once");
    log.close().unwrap();
}
