//! The object-store sink's settings: where objects go, their format, when they rotate, and
//! the store client's options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Interval;

/// Option values hold credentials (`secret_access_key`): Debug shows only their names.
impl std::fmt::Debug for ObjectStoreSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        if let Some(options) = shown.get_mut("options").and_then(|o| o.as_object_mut()) {
            for v in options.values_mut() {
                *v = Value::from("(redacted)");
            }
        }
        write!(f, "ObjectStoreSinkConfig {shown}")
    }
}

/// The object-store sink's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ObjectStoreSinkConfig {
    /// Where the objects go: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    /// (also `abfs://`, `abfss://`, `adl://`, `azure://`), `webhdfs://namenode:9870/path` (HDFS
    /// through its WebHDFS REST API: each object is written as temporary blocks under
    /// `<path>/.sluice-tmp/`, concatenated and renamed over its name), `file:///absolute/folder`
    /// or `file://folder` (relative to the pipeline file), or `memory://` (in the process, for
    /// tests). `hdfs://` (HDFS's native RPC) is refused: use WebHDFS.
    /// Objects are named `<prefix>/<topic>/<partition>/[<partition-by path>/]<first offset, 20
    /// digits>.<jsonl|parquet>`.
    pub url: String,
    /// `json` (default): JSON lines, one record per line; `parquet`: Parquet (zstd), one row per
    /// record, with the columns of the topic's recorded schema (SQL records it for the streams
    /// and tables it declares or writes; a value that does not fit it is a dead letter), or,
    /// for a topic without one, columns inferred from each object's records (values must be
    /// non-empty JSON objects; a field whose values disagree in shape within an object is
    /// written as JSON text).
    #[serde(default)]
    pub format: ObjectFormat,
    /// Write each record as a JSON object with `topic`, `partition`, `offset`, `timestamp`, `key`
    /// and `value` (parsed when it is JSON; `null` for a tombstone) instead of its value alone
    /// (default false: values only, tombstones skipped).
    #[serde(default)]
    pub envelope: bool,
    /// A path template that splits each partition's objects into folders: text with `{date}`
    /// (`2024-05-01`), `{year}`, `{month}`, `{day}`, `{hour}`, `{minute}` of the record time in
    /// UTC, and `{field:NAME}` for a field of the record value (`{field:geo.zone}` for a nested
    /// one; strings as they are, numbers and booleans as written), e.g. `"dt={date}/hour={hour}"`
    /// or `"zone={field:zone}"`. Records without the field (or with `null` or `""`) are dead
    /// letters. Default: none.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Upload a partition's objects once it has buffered this many records (default
    /// 100,000). Records the sink rejects count too: boundaries depend on the records alone.
    #[serde(default = "default_flush_records")]
    pub flush_records: u64,
    /// Upload a partition's objects once its buffered records' keys and values reach this
    /// many bytes (default 64 MiB); this bounds the memory per partition.
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: u64,
    /// Upload a partition's objects before a record whose time is this much later than the first
    /// buffered record's (record time, not the clock; default `"5m"`).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Interval,
    /// Upload a partition's objects at the next flush when no record arrived for it for this long
    /// (wall clock; default `"10s"`; `"0s"` uploads at every flush), so a trickle of records still
    /// reaches the store.
    #[serde(default = "default_flush_idle")]
    pub flush_idle: Interval,
    /// Objects larger than this many bytes are uploaded in parts of `max(5 MiB,
    /// multipart-threshold)` (default 16 MiB).
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// How long a failing request is retried, with exponential backoff, before the sink reports the
    /// error (default `"3m"`).
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: Interval,
    /// Settings for the store's client, as the object_store crate names them (`-` or `_`):
    /// `endpoint`, `region`, `access-key-id`, `secret-access-key`, `allow-http`,
    /// `virtual-hosted-style-request`, `service-account-path`, `account-name`, `access-key`, ...
    /// The usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) are read too; these
    /// override them. For WebHDFS: `user-name` (Hadoop's `user.name`), `delegation` (a
    /// delegation token), `tls = "true"` (a namenode serving HTTPS).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The object format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectFormat {
    /// JSON lines.
    #[default]
    Json,
    /// Parquet, zstd-compressed.
    Parquet,
}

impl ObjectFormat {
    pub(super) fn extension(self) -> &'static str {
        match self {
            ObjectFormat::Json => "jsonl",
            ObjectFormat::Parquet => "parquet",
        }
    }
}

fn default_flush_records() -> u64 {
    100_000
}

fn default_flush_bytes() -> u64 {
    64 << 20
}

fn default_flush_interval() -> Interval {
    Interval(Duration::from_secs(5 * 60))
}

fn default_flush_idle() -> Interval {
    Interval(Duration::from_secs(10))
}

fn default_multipart_threshold() -> u64 {
    16 << 20
}

fn default_retry_timeout() -> Interval {
    Interval(Duration::from_secs(3 * 60))
}
