//! The record: the unit users write and read.

use bytes::Bytes;

/// One record header: a string key and optional bytes, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key (UTF-8).
    pub key: String,
    /// Header value; `None` is a null value, distinct from empty.
    pub value: Option<Bytes>,
}

/// A record as a producer writes it: key, value, headers and a timestamp in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Optional key; decides the partition (murmur2) and is what compaction keeps per.
    pub key: Option<Bytes>,
    /// Optional value; a record with a key and no value is a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl Record {
    /// A record with a value only, stamped `timestamp`.
    pub fn from_value(value: impl Into<Bytes>, timestamp: i64) -> Self {
        Record {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp,
        }
    }

    /// A record with a key and a value, stamped `timestamp`.
    pub fn with_key(key: impl Into<Bytes>, value: impl Into<Bytes>, timestamp: i64) -> Self {
        Record {
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp,
        }
    }
}

/// A record read back from the log, with where it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The partition's offset of this record.
    pub offset: i64,
    /// The record itself.
    pub record: Record,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
