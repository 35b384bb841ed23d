//! The object-store sink itself: per-partition buffers split by `partition-by` folder,
//! rotated into objects by records, bytes and record time, and uploaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::{Path as ObjectPath, PathPart};
use serde_json::Value;
use sluice_format::json::{self, JsonDecoder};
use sluice_format::{lines, parquet};
use sluice_log::{ConsumerRecord, RecordSchema};

use super::config::{ObjectFormat, ObjectStoreSinkConfig};
use super::store::{MIN_PART_BYTES, build_store, upload};
use super::template::Template;
use crate::{ConnectorError, Durable, Rejected, Result, Sink};

/// Objects of one rotation uploaded at once (one per partition-by group).
const UPLOAD_CONCURRENCY: usize = 8;

/// A group's buffered records (what one object will hold), in the form its object is made
/// from.
#[derive(Debug)]
enum Rows {
    /// JSON lines: the object itself (`json`), or the input of schema inference (`parquet`
    /// without a recorded schema).
    Lines(Vec<u8>),
    /// Decoded into the recorded schema (`parquet` with one): batches of the records of
    /// earlier writes, and this write's values, decoded when the write ends or the buffer
    /// rotates (one batch per write, not one per record).
    Decoded {
        batches: Vec<RecordBatch>,
        /// `(offset, line, value)` of records not decoded yet.
        pending: Vec<(i64, Bytes, Option<Bytes>)>,
    },
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
    groups: BTreeMap<String, Rows>,
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
    /// Parquet with a recorded schema: the rows' decoder (values, or envelopes around them).
    decoder: Option<JsonDecoder>,
    /// Whether this attempt looked for fields the recorded schema does not name.
    unknown_checked: bool,
}

impl ObjectStoreSink {
    /// A sink for `config`, with a relative `file://` folder resolved against `base`.
    pub fn new(config: ObjectStoreSinkConfig, base: &Path) -> Result<ObjectStoreSink> {
        let (store, prefix) = build_store(&config, base)?;
        ObjectStoreSink::with_store(config, store, prefix)
    }

    /// A sink writing into `store` under `prefix` (the url only names them).
    pub(super) fn with_store(
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
            decoder: None,
            unknown_checked: false,
        })
    }

    /// The record's line and partition-by path, or why it cannot be written (`Ok(None)`:
    /// nothing to write, a tombstone).
    ///
    /// Parses the value at most once: with a recorded schema not at all here (the decoder
    /// parses it into Arrow), else to validate it (without building it), or into a tree when
    /// the template reads a field (then an envelope is built from that tree).
    fn encode(&self, r: &ConsumerRecord) -> std::result::Result<Option<(Bytes, String)>, String> {
        let needs_value = self.template.as_ref().is_some_and(Template::needs_value);
        let value: Option<Value> = match &r.value {
            Some(v) if needs_value => {
                Some(serde_json::from_slice(v).map_err(|e| format!("the value is not JSON: {e}"))?)
            }
            _ => None,
        };
        let line = if self.decoder.is_some() {
            if self.config.envelope {
                Bytes::from(lines::envelope_raw(r)?)
            } else {
                match &r.value {
                    None => return Ok(None),
                    Some(v) => v.clone(),
                }
            }
        } else if self.config.envelope {
            Bytes::from(match value.clone() {
                Some(v) => lines::envelope_of(r, v),
                None => lines::envelope(r),
            })
        } else {
            let Some(v) = &r.value else {
                return Ok(None);
            };
            let kind = match &value {
                Some(Value::Object(m)) => json::Kind::Object {
                    empty: m.is_empty(),
                },
                Some(_) => json::Kind::Other,
                None => json::validate(v).map_err(|e| format!("the value is not JSON: {e}"))?,
            };
            if self.config.format == ObjectFormat::Parquet {
                match kind {
                    json::Kind::Other => {
                        return Err("a Parquet row needs a JSON object value".into());
                    }
                    json::Kind::Object { empty: true } => {
                        return Err("an empty JSON object has no columns for a Parquet row".into());
                    }
                    json::Kind::Object { empty: false } => {}
                }
            }
            Bytes::from(json::one_line(v))
        };
        let path = match &self.template {
            None => String::new(),
            Some(t) => t.render(r.timestamp, value.as_ref())?,
        };
        Ok(Some((line, path)))
    }

    fn write_records(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        // One clock read per call: `last_added` is for the idle flush, not per record.
        let now = Instant::now();
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
            // A record's place in an object depends on the record alone: whether it encodes
            // (with or without a recorded schema, which may differ between a crash and its
            // replay) changes what is written, never where objects begin and end.
            let encoded = match self.encode(r) {
                Ok(None) => continue,
                Ok(Some(encoded)) => Some(encoded),
                Err(reason) => {
                    rejected.push(reject(
                        r.partition,
                        &r.topic,
                        r.offset,
                        r.value.as_deref(),
                        reason,
                    ));
                    None
                }
            };
            let late = self.config.flush_interval.as_millis();
            let rotate_before = self.partitions.get(&r.partition).is_some_and(|s| {
                s.buffer
                    .as_ref()
                    .is_some_and(|b| r.timestamp >= b.first_time.saturating_add(late))
            });
            if rotate_before {
                self.rotate(r.partition, &mut rejected)?;
            }
            let decoded = self.decoder.is_some();
            let Some(state) = self.partitions.get_mut(&r.partition) else {
                continue;
            };
            let buffer = state.buffer.get_or_insert_with(|| Buffer {
                first: r.offset,
                first_time: r.timestamp,
                records: 0,
                bytes: 0,
                last_added: now,
                groups: BTreeMap::new(),
            });
            if let Some((line, path)) = encoded {
                let group = buffer.groups.entry(path).or_insert_with(|| {
                    if decoded {
                        Rows::Decoded {
                            batches: Vec::new(),
                            pending: Vec::new(),
                        }
                    } else {
                        Rows::Lines(Vec::new())
                    }
                });
                match group {
                    Rows::Lines(lines) => {
                        lines.extend_from_slice(&line);
                        lines.push(b'\n');
                    }
                    Rows::Decoded { pending, .. } => {
                        pending.push((r.offset, line, r.value.clone()))
                    }
                }
            }
            // Counted whether or not the record is written (rejected here, or by the decoder
            // later), by its own key and value bytes: boundaries depend on the records alone.
            buffer.records += 1;
            buffer.bytes += record_size(r);
            buffer.last_added = now;
            if buffer.records >= self.config.flush_records
                || buffer.bytes >= self.config.flush_bytes
            {
                self.rotate(r.partition, &mut rejected)?;
            }
        }
        let partitions: Vec<u32> = self.partitions.keys().copied().collect();
        for p in partitions {
            self.decode_pending(p, &mut rejected)?;
        }
        Ok(rejected)
    }

    /// Decodes the values of the partition's groups not decoded yet into the recorded schema:
    /// one batch per group, and record by record only when a batch has a value that does not
    /// fit; those are rejected with the reason.
    fn decode_pending(&mut self, partition: u32, rejected: &mut Vec<Rejected>) -> Result<()> {
        let Some(decoder) = &self.decoder else {
            return Ok(());
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let topic = Arc::clone(&state.topic);
        let Some(buffer) = &mut state.buffer else {
            return Ok(());
        };
        for group in buffer.groups.values_mut() {
            let Rows::Decoded { batches, pending } = group else {
                continue;
            };
            if pending.is_empty() {
                continue;
            }
            let values: Vec<&[u8]> = pending.iter().map(|(_, line, _)| &line[..]).collect();
            if !self.unknown_checked {
                // Once per attempt (one extra parse of one batch): values that carry fields
                // the recorded schema does not name lose them in Parquet, so say so.
                self.unknown_checked = true;
                if let Err(e) = decoder.strict().decode(values.iter().copied()) {
                    let e = e.to_string();
                    if e.contains("missing from schema") {
                        tracing::warn!(topic = %topic, error = %e, "Values carry fields the topic's recorded schema does not name; Parquet objects leave them out. Declare them (CREATE STREAM ... with every column) or register a schema with them.");
                    }
                }
            }
            let decoded = decoder
                .decode_each(&values)
                .map_err(|e| ConnectorError::Encode {
                    object: format!("{topic}/{partition}"),
                    reason: e.to_string(),
                })?;
            for (i, reason) in decoded.rejected {
                let (offset, _, value) = &pending[i];
                rejected.push(reject(
                    partition,
                    &topic,
                    *offset,
                    value.as_deref(),
                    format!("the value does not fit the topic's recorded schema: {reason}"),
                ));
            }
            if decoded.batch.num_rows() > 0 {
                batches.push(decoded.batch);
            }
            pending.clear();
        }
        Ok(())
    }

    /// Uploads every group of the partition's buffer as one object and empties it.
    fn rotate(&mut self, partition: u32, rejected: &mut Vec<Rejected>) -> Result<()> {
        self.decode_pending(partition, rejected)?;
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
            // Named by the buffer's first record, not the group's first written one: which
            // records are written can change between a crash and its replay (a schema
            // recorded in between), where the buffer's boundaries cannot.
            name.push_str(&format!(
                "{:020}.{}",
                buffer.first,
                self.config.format.extension()
            ));
            let encoded = match (group, &self.decoder) {
                (Rows::Lines(lines), _) if self.config.format == ObjectFormat::Json => Ok(lines),
                (Rows::Lines(lines), _) => parquet::from_json_lines(&lines, None),
                // Written even when every record of the group was a dead letter (a file of
                // no rows): an earlier attempt may have written this name with rows, before
                // a schema that rejects them was recorded, and a replay must replace it.
                (Rows::Decoded { batches, .. }, Some(decoder)) => {
                    parquet::write(Arc::clone(decoder.schema()), &batches)
                }
                (Rows::Decoded { .. }, None) => continue,
            };
            let bytes = encoded.map_err(|e| ConnectorError::Encode {
                object: self.object_url(&name),
                reason: e.to_string(),
            })?;
            objects.push((name, bytes));
        }
        let store = &self.store;
        let prefix = &self.prefix;
        let part_bytes = self.config.multipart_threshold.max(MIN_PART_BYTES) as usize;
        let threshold = self.config.multipart_threshold;
        let topic = &topic;
        let uploads = futures::stream::iter(objects)
            .map(|(name, bytes)| async move {
                let path = ObjectPath::parse(format!("{prefix}/{name}"))
                    .map_err(|e| (name.clone(), object_store::Error::from(e)))?;
                let size = bytes.len();
                upload(store.as_ref(), &path, bytes, threshold, part_bytes)
                    .await
                    .map_err(|e| (name.clone(), e))?;
                tracing::debug!(topic = %topic, partition, object = %name, bytes = size, "Uploaded an object.");
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
        // Every write decodes what it buffered before it returns: nothing is left to reject.
        let mut rejected = Vec::new();
        for p in due {
            self.rotate(p, &mut rejected)?;
        }
        debug_assert!(rejected.is_empty());
        Ok(self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.durable()))
            .collect())
    }
}

/// A record the sink cannot write, for the dead-letter topic.
fn reject(
    partition: u32,
    topic: &str,
    offset: i64,
    raw: Option<&[u8]>,
    reason: String,
) -> Rejected {
    Rejected::record(topic, partition, offset, raw, reason)
}

impl Sink for ObjectStoreSink {
    /// With `parquet`, a recorded schema is what the objects are written with: values are
    /// decoded straight into it (unknown fields ignored, missing nullable fields null) and a
    /// value that does not fit is a dead letter with the reason. Without one, the schema is
    /// inferred per object. Buffers start over: the attempt replays from committed offsets.
    fn uses_schema(&self) -> bool {
        self.config.format == ObjectFormat::Parquet
    }

    fn open(&mut self, schema: Option<&RecordSchema>) -> Result<()> {
        self.partitions.clear();
        self.decoder = None;
        self.unknown_checked = false;
        let Some(schema) = schema.filter(|_| self.config.format == ObjectFormat::Parquet) else {
            return Ok(());
        };
        match sluice_format::schema::to_arrow(schema) {
            Ok(arrow) => {
                let arrow: SchemaRef = if self.config.envelope {
                    Arc::new(lines::envelope_schema(arrow.fields().clone()))
                } else {
                    Arc::new(arrow)
                };
                // Field names match as SQL matches them (ksqlDB's rules): a schema SQL
                // recorded names `ZONE` for the `zone` of a JSON value.
                self.decoder = Some(JsonDecoder::new(arrow).case_insensitive());
            }
            Err(e) => {
                tracing::warn!(url = %self.config.url, error = %e, "The topic's recorded schema has no Arrow form; the sink infers each object's schema instead.");
            }
        }
        Ok(())
    }

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

/// What a record counts towards `flush-bytes`: its key and value bytes and a line break, the
/// same however it is encoded.
fn record_size(r: &ConsumerRecord) -> u64 {
    (r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + 1) as u64
}
