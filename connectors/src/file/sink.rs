//! The file sink: each partition's records as lines in rolling files, cut back to the
//! committed offset on restart.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_format::lines;
use sluice_log::ConsumerRecord;

use crate::config::Interval;
use crate::{ConnectorError, Durable, Rejected, Result, Sink};

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

/// A record's line in `format` (`None`: nothing to write, a tombstone's value).
fn line(format: SinkFormat, r: &ConsumerRecord) -> Option<Vec<u8>> {
    match format {
        SinkFormat::Value => lines::value(r),
        SinkFormat::Envelope => Some(lines::envelope(r)),
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
    /// Forgets the files of the previous attempt: the attempt replays from the committed
    /// offsets, and a file written past them is cut back to its flush point when its
    /// partition's first record arrives again (never appended to twice).
    fn open(&mut self, _schema: Option<&sluice_log::RecordSchema>) -> Result<()> {
        self.open.clear();
        self.durable.clear();
        self.written.clear();
        Ok(())
    }

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
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

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
    fn a_new_attempt_on_the_same_sink_never_appends_a_replay_twice() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: "out".into(),
            roll_records: 100,
            roll_bytes: 1 << 20,
            roll_interval: None,
            format: SinkFormat::Value,
        };
        let mut s = FileSink::new(config, dir.path()).unwrap();
        s.open(None).unwrap();
        s.write(&[rec(0, "a"), rec(1, "b")]).unwrap();
        assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));
        // Written past the flush point, then the attempt ends before its offsets commit
        // (a retryable error, a new schema version): the task opens the same sink again and
        // replays from the committed offset 0.
        s.write(&[rec(2, "c")]).unwrap();
        s.open(None).unwrap();
        s.write(&[rec(0, "a"), rec(1, "b"), rec(2, "c")]).unwrap();
        s.flush().unwrap();
        let all: Vec<String> = files(&dir.path().join("out"))
            .into_values()
            .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert_eq!(all, ["a", "b", "c"], "each record once");
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
