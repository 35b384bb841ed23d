//! Shared helpers: temporary logs and records.

use std::path::Path;

use bytes::Bytes;
use sluice_log::{Log, LogOptions, Record};

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
