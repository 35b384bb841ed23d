//! The file source: tails files matching a glob and turns their lines into records.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_format::{delimited, json};
use sluice_log::Record;

use crate::{ConnectorError, Rejected, Result, Source, SourceBatch, Wait};

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
        // The records of one read share its time (one clock read, not one per line).
        let now = sluice_log::record::now_ms();
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
            // Formatted only for a dead letter: most lines never need it.
            let origin = |line: u64| format!("{name}:{line}");
            if text.len() > self.config.max_line_bytes {
                batch.rejected.push(Rejected {
                    origin: origin(pos.line),
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
            match to_record(&self.config, pos, text, now) {
                Ok(Some(r)) => batch.records.push(r),
                Ok(None) => {}
                Err(reason) => batch.rejected.push(Rejected {
                    origin: origin(pos.line),
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
    Ok((len, crate::fnv1a(&buf)))
}

/// One line as a record; `None` for a CSV header.
///
/// A JSON line is parsed once: validated without building a tree when nothing is read from
/// it, or parsed into a tree when `key-field` names a field; either way the line is kept as
/// written. A CSV row is split and encoded as a JSON object of strings (no JSON parse).
fn to_record(
    config: &FileSourceConfig,
    pos: &mut FilePosition,
    text: &[u8],
    now: i64,
) -> std::result::Result<Option<Record>, String> {
    let record = |key: Option<Bytes>, value: Bytes| Record {
        key,
        value: Some(value),
        headers: Vec::new(),
        timestamp: now,
    };
    match config.format {
        FileFormat::Lines => Ok(Some(record(None, Bytes::copy_from_slice(text)))),
        FileFormat::Json => {
            let key = match &config.key_field {
                None => {
                    match json::validate(text).map_err(|e| format!("not JSON: {e}"))? {
                        json::Kind::Object { .. } => {}
                        json::Kind::Other => return Err("not a JSON object".into()),
                    }
                    None
                }
                Some(f) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
                    if !v.is_object() {
                        return Err("not a JSON object".into());
                    }
                    key_of(v.get(f))
                }
            };
            Ok(Some(record(key, Bytes::copy_from_slice(text.trim_ascii()))))
        }
        FileFormat::Csv => {
            let fields = delimited::split(text).map_err(|e| e.to_string())?;
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
            let value: serde_json::Map<String, serde_json::Value> = header
                .iter()
                .cloned()
                .zip(fields.into_iter().map(serde_json::Value::String))
                .collect();
            let key = config.key_field.as_ref().and_then(|f| key_of(value.get(f)));
            let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
            Ok(Some(record(key, Bytes::from(bytes))))
        }
    }
}

/// A key field's value as the record key: a string's text, other values as JSON, none for
/// a missing field or null.
fn key_of(v: Option<&serde_json::Value>) -> Option<Bytes> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Bytes::from(s.clone())),
        Some(other) => Some(Bytes::from(other.to_string())),
    }
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

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

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
}
