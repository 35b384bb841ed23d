//! Shared helpers: temporary logs and records.

use std::path::Path;

use std::time::Duration;

use bytes::Bytes;
use sluice_log::{ConsumerRecord, Isolation, Log, LogOptions, OffsetSpec, Record};

/// Opens a log in `dir` with default options.
pub fn open(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default()).expect("open log")
}

/// A keyed record with a fixed timestamp.
pub fn rec(key: &str, value: &str, ts: i64) -> Record {
    Record {
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        timestamp: ts,
    }
}

/// Every committed record of a topic, partition by partition, each in offset order; empty
/// when the topic does not exist.
pub fn read_committed(log: &Log, topic: &str) -> Vec<ConsumerRecord> {
    let Ok(t) = log.topic(topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in 0..t.partition_count() {
        let end = log
            .list_offset(topic, p, OffsetSpec::Latest, Isolation::ReadCommitted)
            .unwrap()
            .unwrap_or(0);
        let mut c = log.consumer(sluice_log::ConsumerConfig {
            auto_offset_reset: sluice_log::OffsetReset::Earliest,
            max_poll_records: 100_000,
            ..Default::default()
        });
        c.assign(&[sluice_log::TopicPartition {
            topic: topic.to_string(),
            partition: p,
        }])
        .unwrap();
        let mut pos = 0;
        while pos < end {
            let rs = c.poll(Duration::from_millis(100)).unwrap();
            if rs.is_empty() {
                break;
            }
            for r in rs {
                pos = r.offset + 1;
                if r.offset < end {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// Waits up to 60 s for `done`, failing the test with `what` after that.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A number from the environment (longer soaks set them), or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
