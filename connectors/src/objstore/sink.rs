//! The object-store sink: writes each partition's records as JSON lines or Parquet objects to
//! S3, Google Cloud Storage, Azure, a local folder or memory, named by their first offset so
//! that a replay rewrites the same objects.
//!
//! ```text
//!  write ─► per partition: buffer ─► group by partition-by path ─┐
//!                                                               │ rotation (records, bytes,
//!                                                               │ record time) or idle flush
//!                                                               ▼
//!  <prefix>/<topic>/<partition>/[<partition-by path>/]<first offset, 20 digits>.<jsonl|parquet>
//! ```
//!
//! # Objects
//!
//! Each partition has one buffer, split into groups by the rendered `partition-by` template
//! (one group when there is none). The buffer is **rotated** — every group uploaded as one
//! object, and the buffer started empty — when its records reach `flush-records`, its bytes
//! reach `flush-bytes`, or a record's time is at least the buffer's first record time plus
//! `flush-interval` (that record starts the next buffer). An object is named by the offset of
//! its own first record.
//!
//! # Exactly once
//!
//! Rotation depends only on the records (counts, sizes, record times) and on where the buffer
//! started, so a replay that starts where a buffer started rebuilds the same objects: same
//! names, same bytes, and overwriting them is harmless. `flush` therefore returns, per
//! partition, the first offset still buffered (or the offset after the last record when
//! nothing is), and the worker commits exactly that: every replay starts at a buffer start.
//!
//! `flush` does not upload partial buffers, with one exception: a buffer that got no record
//! for `flush-idle` (wall clock) is uploaded, so a trickle still reaches the store. That makes
//! the boundary depend on the clock, which is safe because the worker commits the offsets
//! `flush` returns right after it, before anything else is uploaded: either the commit lands
//! (replays start after the idle objects), or a replay starts at the older buffer start and
//! rebuilds objects with the same first offsets holding a superset of the records, which
//! overwrite the idle objects. `flush-idle = "0s"` makes every flush upload everything.
//!
//! After an error, or when records arrive again from an earlier offset (the worker rewound to
//! its committed offsets), the sink drops its buffers and rebuilds them from the replay.
//!
//! # Formats
//!
//! `json` objects hold one line per record: the value (it must be JSON; line breaks between
//! its tokens become spaces) or, with `envelope`, the record with its coordinates. `parquet`
//! objects hold the same JSON objects as rows, with the schema inferred from the object's
//! records (columns in name order; an empty object `{}` has no columns and is a dead
//! letter); a field whose values disagree in shape within one object (an object here, a
//! number there) is written as its JSON text. Parquet output is byte-identical for identical
//! records (no timestamps in the metadata), which the replay argument above needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_log::ConsumerRecord;

use crate::config::Interval;
use crate::file::{SinkFormat, line};
use crate::{ConnectorError, Durable, Rejected, Result, Sink};

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
    /// (also `abfs://`, `abfss://`, `adl://`, `azure://`), `file:///absolute/folder` or
    /// `file://folder` (relative to the pipeline file), or `memory://` (in the process, for tests).
    /// Objects are named `<prefix>/<topic>/<partition>/[<partition-by path>/]<first offset, 20
    /// digits>.<jsonl|parquet>`.
    pub url: String,
    /// `json` (default): JSON lines, one record per line; `parquet`: Parquet (zstd), one row per
    /// record, columns inferred from each object's records (values must be non-empty JSON objects;
    /// a field whose values disagree in shape within an object is written as JSON text).
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
    /// Upload a partition's objects once it has buffered this many records (default 100,000).
    #[serde(default = "default_flush_records")]
    pub flush_records: u64,
    /// Upload a partition's objects once its buffered records reach this many bytes as JSON
    /// (default 64 MiB); this bounds the memory per partition.
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
    /// override them.
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
    fn extension(self) -> &'static str {
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

/// The smallest part S3 accepts (all but the last).
const MIN_PART_BYTES: u64 = 5 << 20;

/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;

/// Objects of one rotation uploaded at once (one per partition-by group).
const UPLOAD_CONCURRENCY: usize = 8;

/// Rows per Arrow batch while encoding Parquet; row groups are sized by the writer, so this
/// does not change the output.
const PARQUET_BATCH_ROWS: usize = 8192;

/// Retries of one request: high, so that `retry-timeout` is the bound that applies.
const MAX_RETRIES: usize = 1000;

/// One piece of a `partition-by` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Date,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    /// A field of the value: its path of keys.
    Field(Vec<String>),
}

/// A parsed `partition-by` template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    fn parse(text: &str) -> std::result::Result<Template, String> {
        if text.is_empty() || text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err("a template is folder names separated by single '/'".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                pieces.push(Piece::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("'{{' without '}}' in \"{text}\""))?;
            let name = &rest[open + 1..close];
            pieces.push(match name {
                "date" => Piece::Date,
                "year" => Piece::Year,
                "month" => Piece::Month,
                "day" => Piece::Day,
                "hour" => Piece::Hour,
                "minute" => Piece::Minute,
                _ => match name.strip_prefix("field:") {
                    Some(path) if !path.is_empty() && path.split('.').all(|k| !k.is_empty()) => {
                        Piece::Field(path.split('.').map(str::to_string).collect())
                    }
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}}; use {{date}}, {{year}}, {{month}}, \
                             {{day}}, {{hour}}, {{minute}} or {{field:NAME}}"
                        ));
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        for p in &pieces {
            if let Piece::Text(t) = p {
                if t.contains('}') {
                    return Err(format!("'}}' without '{{' in \"{text}\""));
                }
                ObjectPath::parse(t.replace('/', "/x/"))
                    .map_err(|e| format!("\"{text}\" is not a valid object path: {e}"))?;
            }
        }
        Ok(Template { pieces })
    }

    fn needs_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Field(_)))
    }

    /// The folder path for a record; the reason when the record cannot have one.
    fn render(&self, timestamp: i64, value: Option<&Value>) -> std::result::Result<String, String> {
        let time = || {
            DateTime::<Utc>::from_timestamp_millis(timestamp)
                .ok_or_else(|| format!("record time {timestamp} is out of range"))
        };
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Date => out.push_str(&time()?.format("%Y-%m-%d").to_string()),
                Piece::Year => out.push_str(&format!("{:04}", time()?.year())),
                Piece::Month => out.push_str(&format!("{:02}", time()?.month())),
                Piece::Day => out.push_str(&format!("{:02}", time()?.day())),
                Piece::Hour => out.push_str(&format!("{:02}", time()?.hour())),
                Piece::Minute => out.push_str(&format!("{:02}", time()?.minute())),
                Piece::Field(path) => {
                    let name = path.join(".");
                    let v = path
                        .iter()
                        .try_fold(value.ok_or("the value is not JSON")?, |v, k| v.get(k));
                    let text = match v {
                        None | Some(Value::Null) => {
                            return Err(format!("partition-by field '{name}' is missing"));
                        }
                        Some(Value::String(s)) if s.is_empty() => {
                            return Err(format!("partition-by field '{name}' is empty"));
                        }
                        Some(Value::String(s)) => s.clone(),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                        Some(_) => {
                            return Err(format!(
                                "partition-by field '{name}' is an object or array, not a value"
                            ));
                        }
                    };
                    // The store's own escaping: '/' cannot split the folder, nor "." or ".."
                    // climb out of it.
                    out.push_str(PathPart::from(text.as_str()).as_ref());
                }
            }
        }
        Ok(out)
    }
}

/// One group's buffered records: JSON lines.
#[derive(Debug)]
struct Group {
    /// The offset of its first record: the object's name.
    first: i64,
    lines: Vec<u8>,
    records: u64,
}

/// A partition's records since its buffer started.
#[derive(Debug)]
struct Buffer {
    /// The offset of the first buffered record: where a replay must start.
    first: i64,
    /// The record time of the first buffered record.
    first_time: i64,
    records: u64,
    bytes: u64,
    /// When the last record was added (for `flush-idle`).
    last_added: Instant,
    /// By partition-by path (`""` without a template).
    groups: BTreeMap<String, Group>,
}

#[derive(Debug)]
struct PartitionState {
    topic: Arc<str>,
    /// The offset after the last record seen.
    next: i64,
    buffer: Option<Buffer>,
}

impl PartitionState {
    fn durable(&self) -> i64 {
        self.buffer.as_ref().map_or(self.next, |b| b.first)
    }
}

/// Writes records as objects, one series per partition.
#[derive(Debug)]
pub struct ObjectStoreSink {
    config: ObjectStoreSinkConfig,
    template: Option<Template>,
    store: Arc<dyn ObjectStore>,
    /// The path inside the store that the url names.
    prefix: ObjectPath,
    /// Owned because the trait is synchronous and the sink has its own thread; one thread
    /// is enough to drive the uploads, which are IO.
    runtime: tokio::runtime::Runtime,
    partitions: BTreeMap<u32, PartitionState>,
}

impl ObjectStoreSink {
    /// A sink for `config`, with a relative `file://` folder resolved against `base`.
    pub fn new(config: ObjectStoreSinkConfig, base: &Path) -> Result<ObjectStoreSink> {
        let (store, prefix) = build_store(&config, base)?;
        ObjectStoreSink::with_store(config, store, prefix)
    }

    /// A sink writing into `store` under `prefix` (the url only names them).
    fn with_store(
        config: ObjectStoreSinkConfig,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    ) -> Result<ObjectStoreSink> {
        let positive = [
            ("flush-records", config.flush_records > 0),
            ("flush-bytes", config.flush_bytes > 0),
            ("flush-interval", config.flush_interval.as_millis() > 0),
            ("multipart-threshold", config.multipart_threshold > 0),
            ("retry-timeout", !config.retry_timeout.0.is_zero()),
        ];
        for (key, ok) in positive {
            if !ok {
                return Err(ConnectorError::Config(format!(
                    "object store sink {}: {key} must be positive",
                    config.url
                )));
            }
        }
        let template = match &config.partition_by {
            None => None,
            Some(t) => Some(Template::parse(t).map_err(|e| {
                ConnectorError::Config(format!(
                    "object store sink {}: partition-by: {e}",
                    config.url
                ))
            })?),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("start a runtime for", &config.url, e))?;
        Ok(ObjectStoreSink {
            config,
            template,
            store,
            prefix,
            runtime,
            partitions: BTreeMap::new(),
        })
    }

    /// The record's line and partition-by path, or why it cannot be written (`Ok(None)`:
    /// nothing to write, a tombstone).
    fn encode(&self, r: &ConsumerRecord) -> std::result::Result<Option<(Vec<u8>, String)>, String> {
        let needs_object = self.config.format == ObjectFormat::Parquet && !self.config.envelope;
        let needs_value = self.template.as_ref().is_some_and(Template::needs_value);
        // A full parse only where a template reads fields; otherwise validating without
        // building a tree is enough (and the hot path of a Parquet sink).
        let value: Option<Value> = match &r.value {
            Some(v) if needs_value => {
                Some(serde_json::from_slice(v).map_err(|e| format!("the value is not JSON: {e}"))?)
            }
            _ => None,
        };
        let line = if self.config.envelope {
            line(SinkFormat::Envelope, r).ok_or("the record cannot be written as JSON")?
        } else {
            let Some(v) = &r.value else {
                return Ok(None);
            };
            match &value {
                Some(parsed) if needs_object && !parsed.is_object() => {
                    return Err("a Parquet row needs a JSON object value".into());
                }
                Some(parsed)
                    if needs_object && parsed.as_object().is_some_and(|m| m.is_empty()) =>
                {
                    return Err("an empty JSON object has no columns for a Parquet row".into());
                }
                Some(_) => {}
                None => {
                    serde_json::from_slice::<serde::de::IgnoredAny>(v)
                        .map_err(|e| format!("the value is not JSON: {e}"))?;
                    if needs_object {
                        // Valid JSON that starts with `{` is an object; `{}` has no columns.
                        let mut tokens = v.iter().filter(|b| !b.is_ascii_whitespace());
                        if tokens.next() != Some(&b'{') {
                            return Err("a Parquet row needs a JSON object value".into());
                        }
                        if tokens.next() == Some(&b'}') {
                            return Err(
                                "an empty JSON object has no columns for a Parquet row".into()
                            );
                        }
                    }
                }
            }
            // Valid JSON has line breaks only between tokens, where a space does as well.
            v.iter()
                .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
                .collect()
        };
        let path = match &self.template {
            None => String::new(),
            Some(t) => t.render(r.timestamp, value.as_ref())?,
        };
        Ok(Some((line, path)))
    }

    fn write_records(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        for r in records {
            if let Some(state) = self.partitions.get(&r.partition) {
                if r.offset < state.next {
                    // The worker rewound to its committed offsets (after an error): rebuild
                    // the buffer from the replay.
                    tracing::info!(topic = %r.topic, partition = r.partition, offset = r.offset, "Records arrive again from an earlier offset; the sink rebuilds its buffer from them.");
                    self.partitions.remove(&r.partition);
                }
            }
            let state = self
                .partitions
                .entry(r.partition)
                .or_insert_with(|| PartitionState {
                    topic: Arc::clone(&r.topic),
                    next: r.offset,
                    buffer: None,
                });
            state.next = r.offset + 1;
            let (line, path) = match self.encode(r) {
                Ok(Some(encoded)) => encoded,
                Ok(None) => continue,
                Err(reason) => {
                    rejected.push(Rejected {
                        origin: format!("{}/{}@{}", r.topic, r.partition, r.offset),
                        raw: r.value.as_deref().unwrap_or_default().to_vec(),
                        reason,
                        at: Some((r.partition, r.offset)),
                    });
                    continue;
                }
            };
            let late = self.config.flush_interval.as_millis();
            let rotate_before = self.partitions.get(&r.partition).is_some_and(|s| {
                s.buffer
                    .as_ref()
                    .is_some_and(|b| r.timestamp >= b.first_time.saturating_add(late))
            });
            if rotate_before {
                self.rotate(r.partition)?;
            }
            let Some(state) = self.partitions.get_mut(&r.partition) else {
                continue;
            };
            let buffer = state.buffer.get_or_insert_with(|| Buffer {
                first: r.offset,
                first_time: r.timestamp,
                records: 0,
                bytes: 0,
                last_added: Instant::now(),
                groups: BTreeMap::new(),
            });
            let group = buffer.groups.entry(path).or_insert_with(|| Group {
                first: r.offset,
                lines: Vec::new(),
                records: 0,
            });
            group.lines.extend_from_slice(&line);
            group.lines.push(b'\n');
            group.records += 1;
            buffer.records += 1;
            buffer.bytes += line.len() as u64 + 1;
            buffer.last_added = Instant::now();
            if buffer.records >= self.config.flush_records
                || buffer.bytes >= self.config.flush_bytes
            {
                self.rotate(r.partition)?;
            }
        }
        Ok(rejected)
    }

    /// Uploads every group of the partition's buffer as one object and empties it.
    fn rotate(&mut self, partition: u32) -> Result<()> {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let Some(buffer) = state.buffer.take() else {
            return Ok(());
        };
        let topic = Arc::clone(&state.topic);
        let mut objects = Vec::with_capacity(buffer.groups.len());
        for (folder, group) in buffer.groups {
            let mut name = format!("{}/{partition}/", PathPart::from(&*topic).as_ref());
            if !folder.is_empty() {
                name.push_str(&folder);
                name.push('/');
            }
            name.push_str(&format!(
                "{:020}.{}",
                group.first,
                self.config.format.extension()
            ));
            let bytes = match self.config.format {
                ObjectFormat::Json => group.lines,
                ObjectFormat::Parquet => {
                    encode_parquet(&group.lines).map_err(|reason| ConnectorError::Encode {
                        object: self.object_url(&name),
                        reason,
                    })?
                }
            };
            objects.push((name, bytes, group.records));
        }
        let store = &self.store;
        let prefix = &self.prefix;
        let part_bytes = self.config.multipart_threshold.max(MIN_PART_BYTES) as usize;
        let threshold = self.config.multipart_threshold;
        let topic = &topic;
        let uploads = futures::stream::iter(objects)
            .map(|(name, bytes, records)| async move {
                let path = ObjectPath::parse(format!("{prefix}/{name}"))
                    .map_err(|e| (name.clone(), object_store::Error::from(e)))?;
                let size = bytes.len();
                upload(store.as_ref(), &path, bytes, threshold, part_bytes)
                    .await
                    .map_err(|e| (name.clone(), e))?;
                tracing::debug!(topic = %topic, partition, object = %name, records, bytes = size, "Uploaded an object.");
                Ok::<_, (String, object_store::Error)>(())
            })
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .try_collect::<Vec<()>>();
        self.runtime
            .block_on(uploads)
            .map_err(|(name, source)| ConnectorError::ObjectStore {
                url: self.object_url(&name),
                source,
            })?;
        Ok(())
    }

    /// The URL of an object, for messages.
    fn object_url(&self, name: &str) -> String {
        format!("{}/{name}", self.config.url.trim_end_matches('/'))
    }

    fn flush_buffers(&mut self) -> Result<Durable> {
        let idle = self.config.flush_idle.0;
        let due: Vec<u32> = self
            .partitions
            .iter()
            .filter(|(_, s)| {
                s.buffer
                    .as_ref()
                    .is_some_and(|b| b.last_added.elapsed() >= idle)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.rotate(p)?;
        }
        Ok(self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.durable()))
            .collect())
    }
}

impl Sink for ObjectStoreSink {
    fn write(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        let result = self.write_records(records);
        if result.is_err() {
            // Part of a rotation may be uploaded: start over from the replay that follows.
            self.partitions.clear();
        }
        result
    }

    fn flush(&mut self) -> Result<Durable> {
        let result = self.flush_buffers();
        if result.is_err() {
            self.partitions.clear();
        }
        result
    }
}

/// Puts one object: in one request up to `threshold` bytes, in parts above it.
async fn upload(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    bytes: Vec<u8>,
    threshold: u64,
    part_bytes: usize,
) -> object_store::Result<()> {
    if bytes.len() as u64 <= threshold {
        store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(path).await?, part_bytes);
    let mut rest = Bytes::from(bytes);
    let mut sent: object_store::Result<()> = Ok(());
    while !rest.is_empty() {
        // Bounded parts in flight: the whole object is in memory already, the network is not
        // infinitely wide.
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            sent = Err(e);
            break;
        }
        let part = rest.split_to(part_bytes.min(rest.len()));
        writer.put(part);
    }
    match sent {
        Ok(()) => writer.finish().await.map(drop),
        Err(e) => {
            // Best effort: an abandoned upload's parts cost storage until a lifecycle rule.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// JSON lines (each a JSON object) as a Parquet file. Deterministic: the same lines give the
/// same bytes. Fields whose values cannot share a column are written as JSON text.
fn encode_parquet(lines: &[u8]) -> std::result::Result<Vec<u8>, String> {
    // Most objects have one shape: a schema inferred from a sample, decoded strictly (a field
    // or type the sample did not show is an error, never dropped), saves parsing every record
    // twice. Any surprise falls back to inferring from all records. The choice depends only
    // on the records, so replays still write identical bytes.
    if let Ok(bytes) = parquet_of(lines, Some(SCHEMA_SAMPLE_ROWS)) {
        return Ok(bytes);
    }
    let first_try = match parquet_of(lines, None) {
        Ok(bytes) => return Ok(bytes),
        Err(e) => e,
    };
    let rows: Vec<Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("a buffered line is not JSON: {e}"))?;
    let keys: BTreeSet<&str> = rows
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let conflicting: BTreeSet<&str> = keys
        .into_iter()
        .filter(|k| {
            let column = rows
                .iter()
                .filter_map(|r| r.get(*k))
                .map(|v| Ok(serde_json::json!({ *k: v })));
            arrow_json::reader::infer_json_schema_from_iterator(column).is_err()
        })
        .collect();
    let stringified = |all: bool| -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(lines.len());
        for row in &rows {
            let mut row = row.clone();
            if let Some(m) = row.as_object_mut() {
                for (k, v) in m.iter_mut() {
                    if (all || conflicting.contains(k.as_str())) && !v.is_string() && !v.is_null() {
                        *v = Value::String(v.to_string());
                    }
                }
            }
            serde_json::to_writer(&mut out, &row).map_err(|e| e.to_string())?;
            out.push(b'\n');
        }
        Ok(out)
    };
    tracing::debug!(error = %first_try, fields = ?conflicting, "Fields of an object disagree in shape; writing them as JSON text.");
    match parquet_of(&stringified(false)?, None) {
        Ok(bytes) => Ok(bytes),
        Err(_) => {
            parquet_of(&stringified(true)?, None).map_err(|e| format!("{first_try}; then {e}"))
        }
    }
}

/// Records whose shapes a sampled schema is inferred from.
const SCHEMA_SAMPLE_ROWS: usize = 1000;

/// JSON lines as Parquet, with the schema inferred from all of them, or from the first
/// `sample` and then decoded strictly (unknown fields and types are errors).
fn parquet_of(lines: &[u8], sample: Option<usize>) -> std::result::Result<Vec<u8>, String> {
    let values = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(sample.unwrap_or(usize::MAX))
        .map(|l| {
            serde_json::from_slice::<Value>(l)
                .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))
        });
    let schema: SchemaRef = Arc::new(
        arrow_json::reader::infer_json_schema_from_iterator(values).map_err(|e| e.to_string())?,
    );
    let reader = arrow_json::ReaderBuilder::new(Arc::clone(&schema))
        .with_batch_size(PARQUET_BATCH_ROWS)
        .with_coerce_primitive(true)
        .with_strict_mode(sample.is_some())
        .build(lines)
        .map_err(|e| e.to_string())?;
    // No clock and no host in the file: `created_by` names the library version only.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(|e| e.to_string())?;
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        writer.write(&batch).map_err(|e| e.to_string())?;
    }
    writer.flush().map_err(|e| e.to_string())?;
    // A row without columns is no row at all in Parquet: refuse to lose records.
    let rows: i64 = writer
        .flushed_row_groups()
        .iter()
        .map(|g| g.num_rows())
        .sum();
    let lines = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    if usize::try_from(rows).ok() != Some(lines) {
        return Err(format!("{lines} records became {rows} rows"));
    }
    writer.into_inner().map_err(|e| e.to_string())
}

/// The store the url names and the path inside it.
fn build_store(
    config: &ObjectStoreSinkConfig,
    base: &Path,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let url = config.url.as_str();
    let bad =
        |reason: String| ConnectorError::Config(format!("object store url '{url}': {reason}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://, e.g. s3://bucket/prefix".into()))?;
    let (_, path) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = || ObjectPath::parse(path).map_err(|e| bad(e.to_string()));
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: MAX_RETRIES,
        retry_timeout: config.retry_timeout.0,
    };
    // object_store names its options with '_'; pipeline files may use '-' like their keys.
    let options = config
        .options
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase().replace('-', "_"), v.clone()));
    let unknown = |k: &str, store: &str| {
        ConnectorError::Config(format!(
            "object store sink {url}: options.{k} is not a {store} setting (see the object_store crate's config keys)"
        ))
    };
    let built = |e: object_store::Error| bad(e.to_string());
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
            for (k, v) in options {
                let key: AmazonS3ConfigKey = k.parse().map_err(|_| unknown(&k, "S3"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (k, v) in options {
                let key: GoogleConfigKey = k.parse().map_err(|_| unknown(&k, "GCS"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (k, v) in options {
                let key: AzureConfigKey = k.parse().map_err(|_| unknown(&k, "Azure"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "file" => {
            if let Some((k, _)) = options.into_iter().next() {
                return Err(unknown(&k, "local folder"));
            }
            let dir = base.join(rest);
            std::fs::create_dir_all(&dir).map_err(|e| ConnectorError::io("create", &dir, e))?;
            let store = LocalFileSystem::new_with_prefix(&dir).map_err(built)?;
            return Ok((Arc::new(store), ObjectPath::default()));
        }
        "memory" => {
            if let Some((k, _)) = options.into_iter().next() {
                return Err(unknown(&k, "memory store"));
            }
            Arc::new(InMemory::new())
        }
        other => {
            return Err(bad(format!(
                "unknown scheme '{other}'; use s3, gs, az (abfs, abfss, adl, azure), file or memory"
            )));
        }
    };
    Ok((store, prefix()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(extra: Value) -> ObjectStoreSinkConfig {
        let mut v = serde_json::json!({ "url": "memory://" });
        if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), extra) {
            m.extend(extra);
        }
        serde_json::from_value(v).unwrap()
    }

    fn sink(store: &Arc<InMemory>, config: ObjectStoreSinkConfig) -> ObjectStoreSink {
        let store: Arc<dyn ObjectStore> = store.clone();
        ObjectStoreSink::with_store(config, store, ObjectPath::default()).unwrap()
    }

    fn rec(offset: i64, timestamp: i64, value: Option<&str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp,
            key: None,
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
        }
    }

    /// Every object in a store: name and bytes.
    fn objects(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
            let mut out = BTreeMap::new();
            for m in metas {
                let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                out.insert(m.location.to_string(), bytes.to_vec());
            }
            out
        })
    }

    /// An object's records as JSON lines (Parquet rows rendered by arrow-json).
    fn rows(name: &str, bytes: &[u8]) -> Vec<String> {
        let text = if name.ends_with(".parquet") {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                Bytes::copy_from_slice(bytes),
            )
            .unwrap()
            .build()
            .unwrap();
            let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
            for batch in reader {
                w.write_batches(&[&batch.unwrap()]).unwrap();
            }
            w.finish().unwrap();
            String::from_utf8(w.into_inner()).unwrap()
        } else {
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        text.lines().map(str::to_string).collect()
    }

    fn output(store: &dyn ObjectStore) -> Vec<(String, String)> {
        objects(store)
            .into_iter()
            .flat_map(|(name, bytes)| {
                rows(&name, &bytes)
                    .into_iter()
                    .map(|r| (name.clone(), r))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn names(store: &dyn ObjectStore) -> Vec<String> {
        objects(store).into_keys().collect()
    }

    #[test]
    fn the_object_store_sink_meets_the_sink_contract() {
        for (format, envelope, idle) in [
            ("json", false, "10s"),
            ("json", true, "10s"),
            ("parquet", false, "10s"),
            ("parquet", true, "10s"),
            ("json", false, "0s"),
            ("parquet", false, "0s"),
        ] {
            let stores = [(); 3].map(|()| Arc::new(InMemory::new()));
            let c = config(serde_json::json!({
                "format": format, "envelope": envelope, "flush-records": 3, "flush-idle": idle,
            }));
            crate::conformance::sink_replays_are_idempotent(
                &|i| Box::new(sink(&stores[i], c.clone())),
                &|i| output(stores[i].as_ref()),
            );
        }
    }

    #[test]
    fn the_sink_meets_the_contract_over_a_local_folder() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let c = config(serde_json::json!({
            "url": "file://out/sub", "format": "parquet", "flush-records": 3,
        }));
        crate::conformance::sink_replays_are_idempotent(
            &|i| Box::new(ObjectStoreSink::new(c.clone(), dirs[i].path()).unwrap()),
            &|i| {
                let store = LocalFileSystem::new_with_prefix(dirs[i].path().join("out/sub"));
                output(&store.unwrap())
            },
        );
        let objs = objects(&LocalFileSystem::new_with_prefix(dirs[0].path()).unwrap());
        assert!(
            objs.contains_key("out/sub/t/0/00000000000000000000.parquet"),
            "{:?}",
            objs.keys()
        );
    }

    #[test]
    fn rotates_by_records_bytes_and_record_time() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(&store, config(serde_json::json!({ "flush-records": 2 })));
        let rs: Vec<_> = (0..5).map(|i| rec(i, 0, Some(&format!("{i}")))).collect();
        assert!(s.write(&rs).unwrap().is_empty());
        assert_eq!(
            names(store.as_ref()),
            [
                "t/0/00000000000000000000.jsonl",
                "t/0/00000000000000000002.jsonl"
            ]
        );
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 4)]));

        // Each value is 9 bytes with its newline: the third one reaches 25.
        let store = Arc::new(InMemory::new());
        let mut s = sink(&store, config(serde_json::json!({ "flush-bytes": 25 })));
        let rs: Vec<_> = (0..4).map(|i| rec(i, 0, Some("\"abcdef\""))).collect();
        s.write(&rs).unwrap();
        let objs = objects(store.as_ref());
        assert_eq!(
            objs.keys().collect::<Vec<_>>(),
            ["t/0/00000000000000000000.jsonl"]
        );
        assert_eq!(
            rows("a.jsonl", &objs["t/0/00000000000000000000.jsonl"]).len(),
            3
        );
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 3)]));

        // Record time, not arrival: the record 10 s after the first starts the next object.
        let store = Arc::new(InMemory::new());
        let mut s = sink(
            &store,
            config(serde_json::json!({ "flush-interval": "10s" })),
        );
        s.write(&[rec(0, 5_000, Some("1")), rec(1, 14_999, Some("2"))])
            .unwrap();
        assert!(names(store.as_ref()).is_empty());
        s.write(&[rec(2, 15_000, Some("3")), rec(3, 16_000, Some("4"))])
            .unwrap();
        let objs = objects(store.as_ref());
        assert_eq!(
            rows("x.jsonl", &objs["t/0/00000000000000000000.jsonl"]),
            ["1", "2"]
        );
        assert_eq!(objs.len(), 1);
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));
    }

    #[test]
    fn partition_by_splits_objects_into_folders_and_rejects_records_without_the_field() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(
            &store,
            config(serde_json::json!({
                "partition-by": "dt={date}/hour={hour}/zone={field:geo.zone}",
                "flush-records": 4,
                "flush-interval": "1d",
            })),
        );
        // 2023-11-14T22:13:20Z and one hour later.
        let t = 1_700_000_000_000;
        let rejected = s
            .write(&[
                rec(0, t, Some(r#"{"geo": {"zone": "a/b"}, "n": 0}"#)),
                rec(1, t, Some(r#"{"geo": {"zone": 7}, "n": 1}"#)),
                rec(2, t, Some(r#"{"n": 2}"#)),
                rec(3, t, None),
                rec(
                    4,
                    t + 3_600_000,
                    Some(r#"{"geo": {"zone": "a/b"}, "n": 4}"#),
                ),
                rec(5, t, Some("not json")),
                rec(6, t, Some(r#"{"geo": {"zone": 7}, "n": 6}"#)),
            ])
            .unwrap();
        assert_eq!(
            rejected
                .iter()
                .map(|r| (r.origin.as_str(), r.reason.as_str()))
                .collect::<Vec<_>>(),
            [
                ("t/0@2", "partition-by field 'geo.zone' is missing"),
                (
                    "t/0@5",
                    "the value is not JSON: expected ident at line 1 column 2"
                ),
            ]
        );
        assert_eq!(rejected[1].raw, b"not json");
        // Four records buffered across three folders: one rotation, one object per folder,
        // each named by its own first record.
        let objs = objects(store.as_ref());
        assert_eq!(
            objs.keys().collect::<Vec<_>>(),
            [
                "t/0/dt=2023-11-14/hour=22/zone=7/00000000000000000001.jsonl",
                "t/0/dt=2023-11-14/hour=22/zone=a%2Fb/00000000000000000000.jsonl",
                "t/0/dt=2023-11-14/hour=23/zone=a%2Fb/00000000000000000004.jsonl",
            ]
        );
        assert_eq!(
            rows(
                "x.jsonl",
                &objs["t/0/dt=2023-11-14/hour=22/zone=7/00000000000000000001.jsonl"]
            ),
            [
                r#"{"geo": {"zone": 7}, "n": 1}"#,
                r#"{"geo": {"zone": 7}, "n": 6}"#
            ]
        );
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 7)]));
    }

    #[test]
    fn unwritable_records_are_rejected_and_tombstones_skipped() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(
            &store,
            config(serde_json::json!({ "format": "parquet", "flush-records": 2 })),
        );
        let rejected = s
            .write(&[
                rec(10, 0, Some("[1, 2]")),
                rec(11, 0, None),
                rec(12, 0, Some("oops")),
                rec(13, 0, Some("{}")),
            ])
            .unwrap();
        assert_eq!(rejected.len(), 3);
        assert!(rejected[2].reason.contains("no columns"));
        assert_eq!(rejected[0].origin, "t/0@10");
        assert_eq!(
            rejected[0].reason,
            "a Parquet row needs a JSON object value"
        );
        assert!(rejected[1].reason.starts_with("the value is not JSON"));
        // Nothing buffered: durable past the rejected records and the tombstone.
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 14)]));
        assert!(names(store.as_ref()).is_empty());

        // JSON lines take any JSON value; a value spread over lines stays one line.
        let store = Arc::new(InMemory::new());
        let mut s = sink(&store, config(serde_json::json!({ "flush-records": 3 })));
        let rejected = s
            .write(&[
                rec(0, 0, Some("[1,\n 2]")),
                rec(1, 0, Some("{\"a\":\r\n\"x\\ny\"}")),
                rec(2, 0, Some("nope")),
                rec(3, 0, Some("3")),
            ])
            .unwrap();
        assert_eq!(rejected.len(), 1);
        let objs = objects(store.as_ref());
        assert_eq!(
            rows("x.jsonl", &objs["t/0/00000000000000000000.jsonl"]),
            ["[1,  2]", r#"{"a":  "x\ny"}"#, "3"]
        );
    }

    #[test]
    fn an_idle_buffer_is_uploaded_at_the_next_flush() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(&store, config(serde_json::json!({ "flush-idle": "300ms" })));
        s.write(&[rec(0, 0, Some("1")), rec(1, 0, Some("2"))])
            .unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 0)]));
        assert!(names(store.as_ref()).is_empty());
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));
        assert_eq!(names(store.as_ref()), ["t/0/00000000000000000000.jsonl"]);
        // The next buffer starts at the next record.
        s.write(&[rec(2, 0, Some("3"))]).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));

        // A replay from before the idle upload (its commit was lost) rebuilds a superset
        // with the same name: every record once.
        let mut again = sink(&store, config(serde_json::json!({ "flush-idle": "0s" })));
        again
            .write(&[
                rec(0, 0, Some("1")),
                rec(1, 0, Some("2")),
                rec(2, 0, Some("3")),
            ])
            .unwrap();
        assert_eq!(again.flush().unwrap(), Durable::from([(0, 3)]));
        assert_eq!(
            output(store.as_ref()),
            [
                (
                    "t/0/00000000000000000000.jsonl".to_string(),
                    "1".to_string()
                ),
                (
                    "t/0/00000000000000000000.jsonl".to_string(),
                    "2".to_string()
                ),
                (
                    "t/0/00000000000000000000.jsonl".to_string(),
                    "3".to_string()
                ),
            ]
        );
    }

    #[test]
    fn records_again_from_an_earlier_offset_rebuild_the_buffer() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(&store, config(serde_json::json!({ "flush-records": 3 })));
        let rs: Vec<_> = (0..8).map(|i| rec(i, 0, Some(&format!("{i}")))).collect();
        s.write(&rs[..5]).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 3)]));
        // The worker rewinds to the committed offset 3 and polls again.
        s.write(&rs[3..]).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 6)]));
        let mut lines: Vec<String> = output(store.as_ref()).into_iter().map(|(_, l)| l).collect();
        lines.sort();
        assert_eq!(lines, ["0", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn parquet_is_byte_identical_for_identical_records_and_keeps_disagreeing_fields() {
        let lines = b"{\"a\": 1, \"b\": \"x\", \"c\": [1, 2], \"d\": null}\n{\"a\": 2.5, \"c\": [], \"e\": {\"f\": true}}\n";
        let one = encode_parquet(lines).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(one, encode_parquet(lines).unwrap(), "no clock in the file");
        assert_eq!(
            rows("x.parquet", &one),
            [
                r#"{"a":1.0,"b":"x","c":[1,2]}"#,
                r#"{"a":2.5,"c":[],"e":{"f":true}}"#
            ]
        );
        // "a" is an object once and a number once: it becomes JSON text, the rest stays.
        let lines =
            b"{\"a\": 1, \"n\": 1}\n{\"a\": {\"b\": 2}, \"n\": 2}\n{\"a\": \"s\", \"n\": 3}\n";
        assert_eq!(
            rows("x.parquet", &encode_parquet(lines).unwrap()),
            [
                r#"{"a":"1","n":1}"#,
                r#"{"a":"{\"b\":2}","n":2}"#,
                r#"{"a":"s","n":3}"#
            ]
        );
        // Rows without columns would vanish: the sink rejects `{}`, and the encoder refuses
        // to lose rows.
        assert!(encode_parquet(b"{}\n{}\n").is_err());
    }

    #[test]
    fn large_objects_go_up_in_parts() {
        let store = Arc::new(InMemory::new());
        let mut s = sink(
            &store,
            config(serde_json::json!({ "multipart-threshold": 1024, "flush-records": 3 })),
        );
        let big = format!("\"{}\"", "x".repeat(6 << 20));
        s.write(&[
            rec(0, 0, Some(&big)),
            rec(1, 0, Some("1")),
            rec(2, 0, Some("2")),
        ])
        .unwrap();
        let objs = objects(store.as_ref());
        let object = &objs["t/0/00000000000000000000.jsonl"];
        assert_eq!(object.len(), big.len() + 4 + 1);
        assert_eq!(rows("x.jsonl", object), [big.as_str(), "1", "2"]);
    }

    #[test]
    fn config_is_checked_when_the_sink_is_built() {
        let c: ObjectStoreSinkConfig =
            serde_json::from_value(serde_json::json!({ "url": "s3://b/p" })).unwrap();
        assert_eq!(c.format, ObjectFormat::Json);
        assert_eq!((c.flush_records, c.flush_bytes), (100_000, 64 << 20));
        assert_eq!(c.flush_interval, Interval(Duration::from_secs(300)));
        assert_eq!(c.flush_idle, Interval(Duration::from_secs(10)));
        assert_eq!(c.multipart_threshold, 16 << 20);
        assert_eq!(c.retry_timeout, Interval(Duration::from_secs(180)));
        let unknown = serde_json::from_value::<ObjectStoreSinkConfig>(
            serde_json::json!({ "url": "s3://b", "flush-every": 3 }),
        );
        assert!(unknown.unwrap_err().to_string().contains("flush-every"));

        let dir = tempfile::tempdir().unwrap();
        let err = |extra: Value| {
            ObjectStoreSink::new(config(extra), dir.path())
                .unwrap_err()
                .to_string()
        };
        assert!(err(serde_json::json!({ "url": "ftp://x/y" })).contains("unknown scheme 'ftp'"));
        assert!(err(serde_json::json!({ "url": "bucket/x" })).contains("expected scheme://"));
        assert!(
            err(serde_json::json!({ "url": "s3://b/p", "options": { "colour": "blue" } }))
                .contains("options.colour is not a S3 setting")
        );
        assert!(err(serde_json::json!({ "flush-records": 0 })).contains("flush-records must be"));
        assert!(
            err(serde_json::json!({ "partition-by": "x={week}" }))
                .contains("unknown placeholder {week}")
        );
        assert!(err(serde_json::json!({ "partition-by": "a//b" })).contains("single '/'"));
        assert!(err(serde_json::json!({ "partition-by": "a={field:}" })).contains("{field:NAME}"));
        // Options take '-' or '_'; the region and endpoint reach the builder.
        ObjectStoreSink::new(
            config(serde_json::json!({
                "url": "s3://b/p",
                "options": { "Region": "eu-west-1", "endpoint": "http://127.0.0.1:1", "allow-http": "true" },
            })),
            dir.path(),
        )
        .unwrap();
    }

    #[test]
    fn a_shape_the_schema_sample_did_not_show_is_kept_whole() {
        let mut lines = Vec::new();
        for i in 0..1500 {
            let line = if i < 1200 {
                format!("{{\"id\": {i}}}")
            } else {
                format!("{{\"id\": {i}, \"late\": \"x{i}\"}}")
            };
            lines.extend_from_slice(line.as_bytes());
            lines.push(b'\n');
        }
        let bytes = encode_parquet(&lines).unwrap();
        let got = rows("o.parquet", &bytes);
        assert_eq!(got.len(), 1500);
        assert!(got[1499].contains("x1499"), "{}", got[1499]);
        // One shape throughout takes the sampled path and gives the same rows.
        let uniform: Vec<u8> = lines
            .split(|b| *b == b'\n')
            .take(1200)
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        assert_eq!(
            encode_parquet(&uniform).unwrap(),
            parquet_of(&uniform, None).unwrap()
        );
    }
}
