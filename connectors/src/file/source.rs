//! The file connectors.
//!
//! The **source** tails every file matching a path or glob, oldest name first, following
//! appends. Its position is, per file, the inode and the byte offset after the last complete
//! line it returned (plus the CSV header), so a restart resumes exactly there. A file whose
//! inode changed (rotated) is read from its start; one that shrank below the position
//! (truncated) is read again from its start. A line without its newline yet waits for it.
//!
//! The **sink** writes each partition's records as lines to
//! `<folder>/<topic>-<partition>-<first offset, 20 digits>.jsonl`, rolling to a new file after
//! `roll-records` records or `roll-bytes` bytes. File boundaries depend only on offsets and
//! sizes, so a replay after a crash rewrites identical files: on its first write for a
//! partition the sink cuts the file holding the resume offset back to the lines before it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_log::{ConsumerRecord, Record};

use crate::config::Interval;
use crate::{ConnectorError, Durable, Rejected, Result, Sink, Source, SourceBatch, Wait};

/// How a file's lines become records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// Each line is a record value, as is.
    #[default]
    Lines,
    /// Each line is a JSON object; other lines are dead letters.
    Json,
    /// Comma-separated values; the first line of each file is the header, every other row
    /// becomes a JSON object of strings keyed by it.
    Csv,
}

/// The file source's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSourceConfig {
    /// A file or a glob (`logs/*.jsonl`); relative paths are relative to the pipeline file.
    pub path: String,
    /// `lines` (default), `json` or `csv`.
    #[serde(default)]
    pub format: FileFormat,
    /// For `json` and `csv`: the field whose value becomes the record key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Lines longer than this are dead letters (bytes; default 1 MiB).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

/// Where the source is in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    inode: u64,
    /// Fingerprint of the file's first `head_len` bytes: inodes are reused at once after a
    /// delete, so a rotated file can have its predecessor's inode.
    #[serde(default)]
    head_hash: u64,
    #[serde(default)]
    head_len: u64,
    offset: u64,
    /// Lines read so far (for dead-letter origins).
    line: u64,
    /// CSV: the header line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<Vec<String>>,
    /// Inside a line over `max-line-bytes` whose start went to the dead-letter topic: the
    /// rest, up to its newline, is skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    skipping: bool,
}

/// Tails files matching a path or glob.
#[derive(Debug)]
pub struct FileSource {
    config: FileSourceConfig,
    pattern: String,
    files: BTreeMap<String, FilePosition>,
    /// Per file, the length at which only an unfinished line was left: it is not read again
    /// until the file grows.
    unfinished: BTreeMap<String, u64>,
}

impl FileSource {
    /// A source for `config`, with relative paths resolved against `base`.
    pub fn new(config: FileSourceConfig, base: &Path) -> Result<FileSource> {
        let pattern = if Path::new(&config.path).is_absolute() {
            config.path.clone()
        } else {
            base.join(&config.path).to_string_lossy().into_owned()
        };
        glob::Pattern::new(&pattern)
            .map_err(|e| ConnectorError::Config(format!("path '{}': {e}", config.path)))?;
        Ok(FileSource {
            config,
            pattern,
            files: BTreeMap::new(),
            unfinished: BTreeMap::new(),
        })
    }

    fn matches(&self) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = glob::glob(&self.pattern)
            .map_err(|e| ConnectorError::Config(format!("path '{}': {e}", self.config.path)))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Reads complete lines of one file from its position, up to `max` records in total.
    fn read_file(&mut self, path: &Path, max: usize, batch: &mut SourceBatch) -> Result<()> {
        let name = path.to_string_lossy().into_owned();
        let meta = std::fs::metadata(path).map_err(|e| ConnectorError::io("stat", path, e))?;
        let (head_len, head_hash) = fingerprint(path, HEAD_BYTES.min(meta.len()))?;
        let pos = self.files.entry(name.clone()).or_default();
        let same_head = pos.head_len == 0
            || (meta.len() >= pos.head_len && fingerprint(path, pos.head_len)?.1 == pos.head_hash);
        if pos.inode != meta.ino() || meta.len() < pos.offset || !same_head {
            // A new file under this name (rotated) or the file was truncated: from the start.
            if pos.inode != 0 {
                tracing::info!(file = %name, "The file was rotated or truncated; reading it from the start.");
            }
            *pos = FilePosition {
                inode: meta.ino(),
                ..FilePosition::default()
            };
            self.unfinished.remove(&name);
        }
        if head_len > pos.head_len {
            pos.head_len = head_len;
            pos.head_hash = head_hash;
        }
        if meta.len() == pos.offset || self.unfinished.get(&name) == Some(&meta.len()) {
            return Ok(());
        }
        self.unfinished.remove(&name);
        let mut file = File::open(path).map_err(|e| ConnectorError::io("open", path, e))?;
        file.seek(SeekFrom::Start(pos.offset))
            .map_err(|e| ConnectorError::io("seek", path, e))?;
        let mut reader = BufReader::with_capacity(1 << 16, file.take(meta.len() - pos.offset));
        let mut line = Vec::new();
        // A line is read up to the limit (and its line ending), never further: an endless
        // line costs no more memory than a long one.
        let cap = self.config.max_line_bytes as u64 + 2;
        while batch.records.len() + batch.rejected.len() < max {
            if pos.skipping {
                let (skipped, ended) =
                    skip_line(&mut reader).map_err(|e| ConnectorError::io("read", path, e))?;
                pos.offset += skipped;
                if !ended {
                    break;
                }
                pos.skipping = false;
                continue;
            }
            line.clear();
            let n = (&mut reader)
                .take(cap)
                .read_until(b'\n', &mut line)
                .map_err(|e| ConnectorError::io("read", path, e))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if (n as u64) < cap {
                    // A line still being written: look again when the file grows.
                    self.unfinished.insert(name.clone(), meta.len());
                    break;
                }
                // Over the limit before its end: its start is a dead letter (once), the
                // rest is skipped as it arrives.
                pos.offset += n as u64;
                pos.line += 1;
                pos.skipping = true;
                batch.rejected.push(Rejected {
                    origin: format!("{name}:{}", pos.line),
                    raw: line[..line.len().min(4096)].to_vec(),
                    reason: format!(
                        "line longer than max-line-bytes {}; its first {} bytes are kept here",
                        self.config.max_line_bytes,
                        line.len().min(4096)
                    ),
                    at: None,
                });
                continue;
            }
            pos.offset += n as u64;
            pos.line += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let origin = format!("{name}:{}", pos.line);
            if text.len() > self.config.max_line_bytes {
                batch.rejected.push(Rejected {
                    origin,
                    raw: text[..self.config.max_line_bytes.min(4096)].to_vec(),
                    reason: format!(
                        "line of {} bytes is over max-line-bytes {}",
                        text.len(),
                        self.config.max_line_bytes
                    ),
                    at: None,
                });
                continue;
            }
            if text.is_empty() {
                continue;
            }
            match to_record(&self.config, pos, text) {
                Ok(Some(r)) => batch.records.push(r),
                Ok(None) => {}
                Err(reason) => batch.rejected.push(Rejected {
                    origin,
                    raw: text.to_vec(),
                    reason,
                    at: None,
                }),
            }
        }
        Ok(())
    }
}

/// Reads past the rest of a line: (bytes consumed, whether its newline was reached).
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<(u64, bool)> {
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((skipped, false));
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok((skipped + i as u64 + 1, true));
            }
            None => {
                let n = buf.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

/// Bytes of a file's start that identify it.
const HEAD_BYTES: u64 = 64;

/// (length, FNV-1a hash) of the first `len` bytes of a file.
fn fingerprint(path: &Path, len: u64) -> Result<(u64, u64)> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| ConnectorError::io("read", path, e))?;
    let hash = buf.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    Ok((len, hash))
}

/// One line as a record; `None` for a CSV header.
fn to_record(
    config: &FileSourceConfig,
    pos: &mut FilePosition,
    text: &[u8],
) -> std::result::Result<Option<Record>, String> {
    let now = sluice_log::record::now_ms();
    let value: serde_json::Value = match config.format {
        FileFormat::Lines => {
            return Ok(Some(Record {
                key: None,
                value: Some(Bytes::copy_from_slice(text)),
                headers: Vec::new(),
                timestamp: now,
            }));
        }
        FileFormat::Json if config.key_field.is_none() => {
            // Nothing to read from the object: validate without building a tree and keep
            // the line as written.
            serde_json::from_slice::<serde::de::IgnoredAny>(text)
                .map_err(|e| format!("not JSON: {e}"))?;
            if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err("not a JSON object".into());
            }
            return Ok(Some(Record {
                key: None,
                value: Some(Bytes::copy_from_slice(text.trim_ascii())),
                headers: Vec::new(),
                timestamp: now,
            }));
        }
        FileFormat::Json => {
            let v: serde_json::Value =
                serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
            if !v.is_object() {
                return Err("not a JSON object".into());
            }
            v
        }
        FileFormat::Csv => {
            let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8: {e}"))?;
            let fields = split_csv(text);
            let Some(header) = &pos.header else {
                pos.header = Some(fields);
                return Ok(None);
            };
            if fields.len() != header.len() {
                return Err(format!(
                    "{} fields, the header has {}",
                    fields.len(),
                    header.len()
                ));
            }
            serde_json::Value::Object(
                header
                    .iter()
                    .cloned()
                    .zip(fields.into_iter().map(serde_json::Value::String))
                    .collect(),
            )
        }
    };
    let key = match &config.key_field {
        None => None,
        Some(f) => match value.get(f) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(Bytes::from(s.clone())),
            Some(other) => Some(Bytes::from(other.to_string())),
        },
    };
    // A JSON line is kept as written (it parsed); only CSV rows are encoded here.
    let bytes = match config.format {
        FileFormat::Json => Bytes::copy_from_slice(text.trim_ascii()),
        _ => Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?),
    };
    Ok(Some(Record {
        key,
        value: Some(bytes),
        headers: Vec::new(),
        timestamp: now,
    }))
}

/// Splits a CSV line at commas outside double quotes (`""` is a quote inside quotes).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl Source for FileSource {
    fn open(&mut self, position: Option<&[u8]>) -> Result<()> {
        self.unfinished.clear();
        self.files = match position {
            None => BTreeMap::new(),
            Some(p) => {
                serde_json::from_slice(p).map_err(|e| ConnectorError::Position(e.to_string()))?
            }
        };
        Ok(())
    }

    fn poll(&mut self, max: usize, wait: &Wait) -> Result<SourceBatch> {
        let mut batch = SourceBatch::default();
        loop {
            for path in self.matches()? {
                if batch.records.len() + batch.rejected.len() >= max {
                    break;
                }
                self.read_file(&path, max, &mut batch)?;
            }
            // Files have no change notification here: look again every 50 ms until the
            // wait is over (its deadline, or the task stopping, ends the sleep at once).
            if !batch.records.is_empty() || !batch.rejected.is_empty() || !wait.sleep(POLL_STEP) {
                break;
            }
        }
        if !batch.records.is_empty() || !batch.rejected.is_empty() {
            batch.position = Some(
                serde_json::to_vec(&self.files)
                    .map_err(|e| ConnectorError::Position(e.to_string()))?,
            );
        }
        Ok(batch)
    }
}

/// How often a waiting poll looks at the files again.
const POLL_STEP: Duration = Duration::from_millis(50);

/// The file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSinkConfig {
    /// The folder to write into (created if missing); relative to the pipeline file.
    pub path: String,
    /// Records per file before rolling to the next (default 100,000).
    #[serde(default = "default_roll_records")]
    pub roll_records: u64,
    /// Bytes per file before rolling to the next (default 64 MiB).
    #[serde(default = "default_roll_bytes")]
    pub roll_bytes: u64,
    /// Roll by record time: a file holds records of one interval of this length (aligned to
    /// the epoch, e.g. `"1h"` makes hourly files); a record of a later interval starts the
    /// next file. Default: no time rolling.
    #[serde(default)]
    pub roll_interval: Option<Interval>,
    /// `value` (default): each record's value as a line (tombstones skipped); `envelope`:
    /// a JSON object per record with `topic`, `partition`, `offset`, `timestamp`, `key` and
    /// `value` (parsed when it is JSON; `null` for a tombstone).
    #[serde(default)]
    pub format: SinkFormat,
}

/// What the file sink writes per record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFormat {
    /// The value.
    #[default]
    Value,
    /// The record with its coordinates, as JSON.
    Envelope,
}

/// A record's line in `format` (`None`: nothing to write).
pub fn line(format: SinkFormat, r: &ConsumerRecord) -> Option<Vec<u8>> {
    match format {
        SinkFormat::Value => r.value.as_ref().map(|v| v.to_vec()),
        SinkFormat::Envelope => {
            let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            let value = match &r.value {
                None => serde_json::Value::Null,
                Some(v) => {
                    serde_json::from_slice(v).unwrap_or_else(|_| serde_json::Value::String(text(v)))
                }
            };
            let v = serde_json::json!({
                "topic": &*r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": r.key.as_ref().map(text),
                "value": value,
            });
            serde_json::to_vec(&v).ok()
        }
    }
}

fn default_roll_records() -> u64 {
    100_000
}

fn default_roll_bytes() -> u64 {
    64 << 20
}

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    file: File,
    records: u64,
    bytes: u64,
    /// The record-time interval the file holds (with `roll-interval`).
    bucket: i64,
    /// The offset after the last record written into it.
    next: i64,
}

/// Writes records as lines, one file series per partition.
///
/// Next to each file `<name>` a hidden `.<name>.offsets` lists the flush points
/// (`next-offset bytes bucket` per line): a restart resumes at a committed offset, which is
/// always a flush point, and cuts the file back to that point's length. (Offsets cannot be
/// counted from lines: transaction markers and compaction leave gaps.)
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    dir: PathBuf,
    /// The folder exists: it is created at the first write, so building a sink (to check a
    /// pipeline) leaves nothing behind.
    dir_ready: bool,
    open: BTreeMap<u32, OpenFile>,
    durable: Durable,
    written: Durable,
}

impl FileSink {
    /// A sink for `config`, with a relative folder resolved against `base`.
    pub fn new(config: FileSinkConfig, base: &Path) -> Result<FileSink> {
        if config.roll_records == 0
            || config.roll_bytes == 0
            || config.roll_interval.is_some_and(|i| i.as_millis() == 0)
        {
            return Err(ConnectorError::Config(
                "roll-records, roll-bytes and roll-interval must be positive".into(),
            ));
        }
        let dir = base.join(&config.path);
        Ok(FileSink {
            config,
            dir,
            dir_ready: false,
            open: BTreeMap::new(),
            durable: Durable::new(),
            written: Durable::new(),
        })
    }

    fn file_name(topic: &str, partition: u32, first: i64) -> String {
        format!("{topic}-{partition}-{first:020}.jsonl")
    }

    fn index_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.offsets"))
    }

    fn bucket(&self, timestamp: i64) -> i64 {
        match self.config.roll_interval {
            Some(i) => timestamp.div_euclid(i.as_millis()),
            None => 0,
        }
    }

    fn create(&self, topic: &str, r: &ConsumerRecord) -> Result<OpenFile> {
        let path = self.dir.join(Self::file_name(topic, r.partition, r.offset));
        let file = File::create(&path).map_err(|e| ConnectorError::io("create", &path, e))?;
        let index = Self::index_path(&path);
        let _ = std::fs::remove_file(&index);
        Ok(OpenFile {
            path,
            file,
            records: 0,
            bytes: 0,
            bucket: self.bucket(r.timestamp),
            next: r.offset,
        })
    }

    /// The file to write record `r` (the first after a restart) into: the file holding the
    /// flush point at its offset is cut back to it; files after it hold only records that
    /// were never committed and are removed (the replay writes them again).
    fn resume(&self, topic: &str, r: &ConsumerRecord) -> Result<OpenFile> {
        let prefix = format!("{topic}-{}-", r.partition);
        let mut holding: Option<(i64, PathBuf)> = None;
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| ConnectorError::io("list", &self.dir, e))?;
        for e in entries {
            let e = e.map_err(|e| ConnectorError::io("list", &self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(first) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if first >= r.offset {
                let path = e.path();
                std::fs::remove_file(&path).map_err(|e| ConnectorError::io("remove", &path, e))?;
                let _ = std::fs::remove_file(Self::index_path(&path));
            } else if holding.as_ref().is_none_or(|(f, _)| first > *f) {
                holding = Some((first, e.path()));
            }
        }
        if let Some((_, path)) = holding {
            let index = Self::index_path(&path);
            let points = std::fs::read_to_string(&index).unwrap_or_default();
            // The committed offset is a flush point; the first record after it may come
            // later (gaps), so the point is the last one at or before that record.
            let point = points
                .lines()
                .filter_map(|l| {
                    let mut it = l.split(' ').map(|n| n.parse::<i64>().ok());
                    Some((it.next()??, it.next()??, it.next()??))
                })
                .filter(|(next, _, _)| *next <= r.offset)
                .max_by_key(|(next, _, _)| *next)
                .map(|(_, bytes, bucket)| (bytes, bucket));
            if let Some((bytes, bucket)) = point {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| ConnectorError::io("open", &path, e))?;
                let bytes = bytes as u64;
                file.set_len(bytes)
                    .map_err(|e| ConnectorError::io("truncate", &path, e))?;
                let mut file = file;
                file.seek(SeekFrom::End(0))
                    .map_err(|e| ConnectorError::io("seek", &path, e))?;
                let records = std::fs::read(&path)
                    .map(|b| b.iter().filter(|c| **c == b'\n').count() as u64)
                    .map_err(|e| ConnectorError::io("read", &path, e))?;
                return Ok(OpenFile {
                    path,
                    file,
                    records,
                    bytes,
                    bucket,
                    next: r.offset,
                });
            }
        }
        self.create(topic, r)
    }
}

impl Sink for FileSink {
    fn write(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        if !self.dir_ready && !records.is_empty() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| ConnectorError::io("create", &self.dir, e))?;
            self.dir_ready = true;
        }
        for r in records {
            if !self.open.contains_key(&r.partition) {
                let f = self.resume(&r.topic, r)?;
                self.open.insert(r.partition, f);
            }
            self.written.insert(r.partition, r.offset + 1);
            let Some(value) = line(self.config.format, r) else {
                // A tombstone has no value line.
                continue;
            };
            let bucket = self.bucket(r.timestamp);
            let roll = self.open.get(&r.partition).is_some_and(|f| {
                f.records > 0
                    && (f.records >= self.config.roll_records
                        || f.bytes >= self.config.roll_bytes
                        || f.bucket != bucket)
            });
            if roll {
                if let Some(f) = self.open.remove(&r.partition) {
                    f.file
                        .sync_data()
                        .map_err(|e| ConnectorError::io("fsync", &f.path, e))?;
                }
                let f = self.create(&r.topic, r)?;
                self.open.insert(r.partition, f);
            }
            if let Some(f) = self.open.get_mut(&r.partition) {
                f.file
                    .write_all(&value)
                    .and_then(|()| f.file.write_all(b"\n"))
                    .map_err(|e| ConnectorError::io("write", &f.path, e))?;
                f.records += 1;
                f.bytes += value.len() as u64 + 1;
                f.bucket = bucket;
            }
        }
        Ok(Vec::new())
    }

    fn flush(&mut self) -> Result<Durable> {
        for (partition, f) in &mut self.open {
            let Some(&next) = self.written.get(partition) else {
                continue;
            };
            if next == f.next && self.durable.get(partition) == Some(&next) {
                continue;
            }
            f.file
                .sync_data()
                .map_err(|e| ConnectorError::io("fsync", &f.path, e))?;
            // Record the flush point so a restart from `next` can cut the file back to it.
            let index = Self::index_path(&f.path);
            let mut points = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&index)
                .map_err(|e| ConnectorError::io("open", &index, e))?;
            writeln!(points, "{next} {} {}", f.bytes, f.bucket)
                .and_then(|()| points.sync_data())
                .map_err(|e| ConnectorError::io("write", &index, e))?;
            f.next = next;
        }
        if self.dir_ready {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| ConnectorError::io("fsync", &self.dir, e))?;
        }
        self.durable = self.written.clone();
        Ok(self.durable.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, format: FileFormat, key: Option<&str>) -> FileSource {
        FileSource::new(
            FileSourceConfig {
                path: "in/*.txt".into(),
                format,
                key_field: key.map(str::to_string),
                max_line_bytes: 64,
            },
            dir,
        )
        .unwrap()
    }

    fn values(b: &SourceBatch) -> Vec<String> {
        b.records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn tails_appends_waits_for_whole_lines_and_resumes_from_its_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let f = dir.path().join("in/a.txt");
        std::fs::write(&f, "one\ntwo\nthr").unwrap();
        let mut s = source(dir.path(), FileFormat::Lines, None);
        s.open(None).unwrap();
        let b = s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(values(&b), ["one", "two"]);
        let pos = b.position.unwrap();
        let mut file = OpenOptions::new().append(true).open(&f).unwrap();
        file.write_all(b"ee\nfour\n").unwrap();
        // A new source opened at the stored position sees only what follows.
        let mut again = source(dir.path(), FileFormat::Lines, None);
        again.open(Some(&pos)).unwrap();
        assert_eq!(
            values(&again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap()),
            ["three", "four"]
        );
        assert!(
            again
                .poll(100, &Wait::timeout(Duration::ZERO))
                .unwrap()
                .position
                .is_none()
        );
    }

    #[test]
    fn an_endless_line_is_a_dead_letter_once_and_skipped_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let f = dir.path().join("in/a.txt");
        std::fs::write(&f, "one\n").unwrap();
        let mut s = source(dir.path(), FileFormat::Lines, None);
        s.open(None).unwrap();
        assert_eq!(
            values(&s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap()),
            ["one"]
        );
        // A line without its newline, over the 64-byte limit, growing.
        let mut file = OpenOptions::new().append(true).open(&f).unwrap();
        file.write_all(&[b'x'; 100]).unwrap();
        let b = s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(b.rejected.len(), 1, "{:?}", b.rejected);
        assert!(b.rejected[0].origin.ends_with("a.txt:2"));
        assert!(b.rejected[0].raw.len() <= 66);
        let pos = b.position.unwrap();
        file.write_all(&[b'x'; 1000]).unwrap();
        let b = s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert!(b.records.is_empty() && b.rejected.is_empty(), "once only");
        // A restart in the middle of the line keeps skipping it.
        let mut again = source(dir.path(), FileFormat::Lines, None);
        again.open(Some(&pos)).unwrap();
        file.write_all(b"xxx\ntwo\nthr").unwrap();
        let b = again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(values(&b), ["two"]);
        assert!(b.rejected.is_empty());
        // A short unfinished line waits, and is not read again until the file grows.
        assert!(
            again
                .poll(100, &Wait::timeout(Duration::ZERO))
                .unwrap()
                .position
                .is_none()
        );
        file.write_all(b"ee\n").unwrap();
        assert_eq!(
            values(&again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap()),
            ["three"]
        );
    }

    #[test]
    fn truncated_and_rotated_files_are_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let f = dir.path().join("in/a.txt");
        std::fs::write(&f, "one\ntwo\n").unwrap();
        let mut s = source(dir.path(), FileFormat::Lines, None);
        s.open(None).unwrap();
        assert_eq!(
            s.poll(100, &Wait::timeout(Duration::ZERO))
                .unwrap()
                .records
                .len(),
            2
        );
        std::fs::write(&f, "x\n").unwrap();
        assert_eq!(
            values(&s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap()),
            ["x"]
        );
        std::fs::remove_file(&f).unwrap();
        std::fs::write(dir.path().join("in/tmp"), "new-one\nnew-two\n").unwrap();
        std::fs::rename(dir.path().join("in/tmp"), &f).unwrap();
        assert_eq!(
            values(&s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap()),
            ["new-one", "new-two"]
        );
    }

    #[test]
    fn json_and_csv_with_keys_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        std::fs::write(
            dir.path().join("in/a.txt"),
            "{\"zone\": \"a\", \"n\": 1}\nnot json\n[1]\n{\"n\": 2}\n",
        )
        .unwrap();
        let mut s = source(dir.path(), FileFormat::Json, Some("zone"));
        s.open(None).unwrap();
        let b = s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.records[0].key.as_deref(), Some(&b"a"[..]));
        assert_eq!(b.records[1].key, None);
        assert_eq!(b.rejected.len(), 2);
        assert!(
            b.rejected[0].origin.ends_with("a.txt:2") && b.rejected[0].reason.contains("not JSON")
        );
        std::fs::write(
            dir.path().join("in/b.txt"),
            "zone,fare\nharbor,\"1,5\"\nbad\n",
        )
        .unwrap();
        let mut s = source(dir.path(), FileFormat::Csv, Some("zone"));
        s.open(None).unwrap();
        let b = s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        // a.txt has no valid CSV shape beyond its header line; b.txt gives one row.
        let rows: Vec<serde_json::Value> = b
            .records
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_ref().unwrap()).unwrap())
            .collect();
        assert!(
            rows.contains(&serde_json::json!({"zone": "harbor", "fare": "1,5"})),
            "{rows:?}"
        );
        assert!(b.rejected.iter().any(|r| r.origin.ends_with("b.txt:3")));
    }

    fn rec(offset: i64, v: &str) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(v.to_string())),
            headers: Vec::new(),
        }
    }

    fn files(dir: &Path) -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_file_source_meets_the_source_contract() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let path = dir.path().join("in/a.txt");
        crate::conformance::source_resumes_exactly_after_its_position(
            &|| Box::new(source(dir.path(), FileFormat::Lines, None)),
            &|lines| {
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                for l in lines {
                    writeln!(f, "{l}").unwrap();
                }
            },
        );
    }

    #[test]
    fn the_file_sink_meets_the_sink_contract() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let config = FileSinkConfig {
            path: "out".into(),
            roll_records: 3,
            roll_bytes: 1 << 20,
            roll_interval: None,
            format: SinkFormat::Envelope,
        };
        crate::conformance::sink_replays_are_idempotent(
            &|i| Box::new(FileSink::new(config.clone(), dirs[i].path()).unwrap()),
            &|i| {
                files(&dirs[i].path().join("out"))
                    .into_iter()
                    .flat_map(|(name, text)| {
                        text.lines()
                            .map(|l| (name.clone(), l.to_string()))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            },
        );
    }

    #[test]
    fn a_replay_after_a_crash_rewrites_identical_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: "out".into(),
            roll_records: 3,
            roll_bytes: 1 << 20,
            roll_interval: None,
            format: SinkFormat::Envelope,
        };
        // Offsets with gaps, as transaction markers leave them.
        let all: Vec<ConsumerRecord> = (0..8).map(|i| rec(i * 2, &format!("v{i}"))).collect();
        let clean = tempfile::tempdir().unwrap();
        let mut s = FileSink::new(config.clone(), clean.path()).unwrap();
        s.write(&all).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 15)]));
        // Crash after writing everything but committing only the flush point at offset 8:
        // replay from 8.
        let mut s = FileSink::new(config.clone(), dir.path()).unwrap();
        s.write(&all[..4]).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 7)]));
        s.write(&all[4..]).unwrap();
        drop(s);
        let mut s = FileSink::new(config, dir.path()).unwrap();
        s.write(&all[4..]).unwrap();
        s.flush().unwrap();
        assert_eq!(
            files(&dir.path().join("out")),
            files(&clean.path().join("out"))
        );
        assert_eq!(files(&clean.path().join("out")).len(), 3);
    }

    #[test]
    fn files_roll_by_record_time_and_resume_in_the_right_interval() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: "out".into(),
            roll_records: 100,
            roll_bytes: 1 << 20,
            roll_interval: Some(Interval(Duration::from_secs(3600))),
            format: SinkFormat::Value,
        };
        let hour = 3_600_000;
        let at = |offset: i64, ts: i64| ConsumerRecord {
            timestamp: ts,
            ..rec(offset, &format!("v{offset}"))
        };
        let mut s = FileSink::new(config.clone(), dir.path()).unwrap();
        s.write(&[at(0, 10), at(1, hour - 1)]).unwrap();
        s.flush().unwrap();
        drop(s);
        // After a restart the open file's interval is known from its flush point: a record
        // of the same hour appends, one of the next hour rolls.
        let mut s = FileSink::new(config, dir.path()).unwrap();
        s.write(&[at(2, 20), at(3, hour), at(4, hour + 5)]).unwrap();
        s.flush().unwrap();
        let f = files(&dir.path().join("out"));
        assert_eq!(
            f.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "t-0-00000000000000000000.jsonl".to_string(),
                    "v0\nv1\nv2\n".to_string()
                ),
                (
                    "t-0-00000000000000000003.jsonl".to_string(),
                    "v3\nv4\n".to_string()
                ),
            ]
        );
    }
}
