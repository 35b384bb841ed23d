//! One segment of a partition: a `.log` file of record batches named by its base offset, with
//! a sparse offset index and a time index.
//!
//! ```text
//! 00000000000000042000.log        batches, byte-compatible with Kafka RecordBatch v2
//! 00000000000000042000.index      (offset - base: u32, file position: u32) every index.interval.bytes
//! 00000000000000042000.timeindex  (max timestamp so far: i64, offset - base: u32), same cadence
//! ```
//!
//! Indexes live in memory and are written to their files when the segment is closed (rolled)
//! or the log shuts down cleanly. They are a cache of the `.log` file: whenever an index file is
//! missing, torn or inconsistent it is rebuilt by scanning batch headers, so a crash never
//! needs them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{BATCH_HEADER_LEN, BatchHeader, verify_crc};
use crate::error::{LogError, Result};

/// The file name stem of a segment: its base offset, zero-padded to 20 digits like Kafka's.
pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// A batch found while scanning a segment on open.
#[derive(Debug, Clone)]
pub(crate) struct BatchPosition {
    pub header: BatchHeader,
    /// For a control batch: its marker and coordinator epoch, read during the scan (a
    /// partition replays markers into its transaction state; reading each one again by
    /// offset cost several reads apiece).
    pub control: Option<Result<(crate::batch::ControlType, i32), String>>,
}

/// What opening a segment found.
#[derive(Debug)]
pub(crate) struct Opened {
    pub segment: Segment,
    pub batches: Vec<BatchPosition>,
    /// The first torn, corrupt or out-of-order batch, if any.
    pub damage: Option<Damage>,
}

/// Where and how a segment is damaged.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    pub path: PathBuf,
    /// Byte position of the first bad batch (where the file is cut when repaired).
    pub position: u64,
    /// The offset the first bad batch should have held.
    pub offset: i64,
    /// Bytes from `position` to the end of the file.
    pub dropped_bytes: u64,
    pub reason: String,
    /// With validation: the end of the last whole, valid batch found past the damage, i.e.
    /// the segment's end before it was damaged. `None` for a torn tail.
    pub former_end: Option<i64>,
}

/// Where a batch was found by the scan on open, relative to the segment's base offset.
#[derive(Debug, Clone, Copy)]
struct ScannedBatch {
    rel_base: u32,
    pos: u32,
    rel_last: u32,
    max_timestamp: i64,
}

/// An open segment. The active segment (the last of a partition) takes appends; the others
/// are immutable until retention deletes them or compaction replaces them whole.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: i64,
    dir: PathBuf,
    /// Shared with readers so a fetch can read outside the partition lock; a reader holding it
    /// across a deletion still reads the unlinked file, never a reused one.
    file: Arc<File>,
    size: u64,
    next_offset: i64,
    index: Vec<(u32, u32)>,
    time_index: Vec<(i64, u32)>,
    bytes_since_index: u64,
    max_timestamp: i64,
    /// Max timestamp of the first batch: `segment.ms` counts from it, as in Kafka.
    first_batch_timestamp: Option<i64>,
    index_interval: u64,
}

impl Segment {
    fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
        let stem = file_stem(base_offset);
        (
            dir.join(format!("{stem}.log")),
            dir.join(format!("{stem}.index")),
            dir.join(format!("{stem}.timeindex")),
        )
    }

    /// Path of the `.log` file.
    pub fn log_path(&self) -> PathBuf {
        Self::paths(&self.dir, self.base_offset).0
    }

    fn empty(dir: &Path, base_offset: i64, file: File, index_interval: u32) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
            max_timestamp: -1,
            first_batch_timestamp: None,
            index_interval: u64::from(index_interval),
        }
    }

    /// Creates an empty segment.
    pub fn create(dir: &Path, base_offset: i64, index_interval: u32) -> Result<Segment> {
        let (log, _, _) = Self::paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log)
            .map_err(|e| LogError::io("create segment", &log, e))?;
        Ok(Segment::empty(dir, base_offset, file, index_interval))
    }

    /// Opens an existing segment.
    ///
    /// With `validate`, every batch is read whole and its CRC checked, and the file is
    /// truncated at the first batch that is torn, corrupt or out of order (crash recovery of
    /// the active segment); the rest of the file is then searched for whole, valid batches so
    /// the caller can tell a torn tail (nothing after it) from lost records. Without it,
    /// indexes are loaded from their files when they are consistent and rebuilt from batch
    /// headers otherwise, and damage is returned without touching the file: the segment is
    /// then only good for reporting it.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval: u32,
        validate: bool,
    ) -> Result<Opened> {
        let (log, _, _) = Self::paths(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log)
            .map_err(|e| LogError::io("open segment", &log, e))?;
        let file_size = file
            .metadata()
            .map_err(|e| LogError::io("stat segment", &log, e))?
            .len();
        let mut seg = Segment::empty(dir, base_offset, file, index_interval);
        // Batch headers are always scanned: the partition rebuilds producer and transaction
        // state from them. Reading 61 bytes per batch is cheap next to the data itself.
        let mut batches = Vec::new();
        let mut pos = 0u64;
        let mut expected = base_offset;
        let mut truncate_reason = None;
        let mut header_buf = [0u8; BATCH_HEADER_LEN];
        let mut window = HeaderWindow::default();
        let mut whole = Vec::new();
        // (offset - base, position, last offset - base, max timestamp) of every batch: what
        // persisted index entries are checked against.
        let mut scanned: Vec<ScannedBatch> = Vec::new();
        while pos < file_size {
            if file_size - pos < BATCH_HEADER_LEN as u64 {
                truncate_reason = Some("torn batch header at the end".to_string());
                break;
            }
            header_buf.copy_from_slice(
                window
                    .header(&seg.file, pos, file_size)
                    .map_err(|e| LogError::io("read segment", &log, e))?,
            );
            let header = match BatchHeader::parse(&header_buf) {
                Ok(h) => h,
                Err(e) => {
                    truncate_reason = Some(e.to_string());
                    break;
                }
            };
            let total = header.total_size() as u64;
            if pos + total > file_size {
                truncate_reason = Some(format!("torn batch of {total} bytes at the end"));
                break;
            }
            if header.base_offset < expected {
                truncate_reason = Some(format!(
                    "batch at offset {} after offset {}",
                    header.base_offset,
                    expected - 1
                ));
                break;
            }
            if validate {
                whole.resize(total as usize, 0);
                seg.file
                    .read_exact_at(&mut whole, pos)
                    .map_err(|e| LogError::io("read segment", &log, e))?;
                if let Err(e) = verify_crc(&whole) {
                    truncate_reason = Some(e.to_string());
                    break;
                }
            }
            seg.track(&header, pos);
            scanned.push(ScannedBatch {
                rel_base: (header.base_offset - base_offset) as u32,
                pos: pos as u32,
                rel_last: (header.last_offset() - base_offset) as u32,
                max_timestamp: header.max_timestamp,
            });
            let control = header.is_control().then(|| {
                window
                    .bytes(&seg.file, pos, total as usize, file_size)
                    .map_err(|e| e.to_string())
                    .and_then(|b| crate::batch::decode_control(b).map_err(|e| e.to_string()))
            });
            batches.push(BatchPosition { header, control });
            expected = header.next_offset();
            pos += total;
        }
        let damage = match truncate_reason {
            None => None,
            Some(reason) if !validate => Some(Damage {
                path: log,
                position: pos,
                offset: expected,
                dropped_bytes: file_size - pos,
                reason,
                former_end: None,
            }),
            Some(reason) => {
                let former_end = seg.last_valid_batch_end(pos + 1, file_size, expected)?;
                tracing::info!(
                    path = %log.display(),
                    position = pos,
                    offset = expected,
                    dropped_bytes = file_size - pos,
                    %reason,
                    "Truncating the torn or corrupt tail of a segment."
                );
                seg.file
                    .set_len(pos)
                    .map_err(|e| LogError::io("truncate segment", &log, e))?;
                seg.file
                    .sync_all()
                    .map_err(|e| LogError::io("fsync segment", &log, e))?;
                Some(Damage {
                    path: log,
                    position: pos,
                    offset: expected,
                    dropped_bytes: file_size - pos,
                    reason,
                    former_end,
                })
            }
        };
        seg.size = pos;
        if !validate && damage.is_none() {
            seg.load_index_files(&scanned);
        }
        Ok(Opened {
            segment: seg,
            batches,
            damage,
        })
    }

    /// The offset after the last whole batch with a valid CRC found at or after byte `from`
    /// (searched byte by byte, since the damage may have broken the chain of lengths), if
    /// any: past a torn tail there is none, past a corrupt batch in the middle there are the
    /// records that follow it.
    fn last_valid_batch_end(
        &self,
        from: u64,
        file_size: u64,
        min_offset: i64,
    ) -> Result<Option<i64>> {
        const WINDOW: u64 = 4 << 20;
        let mut end = None;
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = from;
        let mut pos = from;
        let mut whole = Vec::new();
        while pos + BATCH_HEADER_LEN as u64 <= file_size {
            if pos + BATCH_HEADER_LEN as u64 > window_start + window.len() as u64 {
                window_start = pos;
                let len = WINDOW.min(file_size - pos) as usize;
                window.resize(len, 0);
                self.file
                    .read_exact_at(&mut window, pos)
                    .map_err(|e| LogError::io("read segment", self.log_path(), e))?;
            }
            let at = (pos - window_start) as usize;
            let candidate = BatchHeader::parse(&window[at..]).ok().filter(|h| {
                h.base_offset >= min_offset
                    && h.last_offset_delta >= 0
                    && pos + h.total_size() as u64 <= file_size
            });
            if let Some(h) = candidate {
                whole.resize(h.total_size(), 0);
                self.file
                    .read_exact_at(&mut whole, pos)
                    .map_err(|e| LogError::io("read segment", self.log_path(), e))?;
                if verify_crc(&whole).is_ok() {
                    end = Some(h.next_offset());
                    pos += h.total_size() as u64;
                    continue;
                }
            }
            pos += 1;
        }
        Ok(end)
    }

    /// Updates in-memory indexes and counters for a batch written at `pos`.
    fn track(&mut self, header: &BatchHeader, pos: u64) {
        let rel = (header.last_offset() - self.base_offset) as u32;
        if self.first_batch_timestamp.is_none() {
            self.first_batch_timestamp = Some(header.max_timestamp);
        }
        if self.index.is_empty() || self.bytes_since_index >= self.index_interval {
            self.index
                .push(((header.base_offset - self.base_offset) as u32, pos as u32));
            if header.max_timestamp > self.time_index.last().map_or(i64::MIN, |t| t.0) {
                self.time_index.push((header.max_timestamp, rel));
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_size() as u64;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.next_offset = header.next_offset();
    }

    /// Replaces the scanned indexes with the persisted ones when those are consistent with
    /// the file, which keeps index cadence stable across restarts. Every persisted entry must
    /// name a batch found by the scan (an offset entry its start, a time entry its last offset
    /// and max timestamp); otherwise the scanned indexes are kept.
    fn load_index_files(&mut self, scanned: &[ScannedBatch]) {
        let (log, idx, tidx) = Self::paths(&self.dir, self.base_offset);
        let Ok(raw) = std::fs::read(&idx) else { return };
        let Ok(traw) = std::fs::read(&tidx) else {
            return;
        };
        let (Some(index), Some(time_index)) = (decode_index(&raw), decode_time_index(&traw)) else {
            tracing::info!(path = %log.display(), "Rebuilt a torn segment index.");
            return;
        };
        let ok = index.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && index
                .last()
                .is_none_or(|e| u64::from(e.1) < self.size.max(1));
        let ok = ok
            && index.iter().all(|&(rel, pos)| {
                scanned
                    .binary_search_by_key(&rel, |b| b.rel_base)
                    .is_ok_and(|i| scanned[i].pos == pos)
            });
        let time_ok = time_index
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
            && time_index.iter().all(|&(ts, rel)| {
                scanned
                    .binary_search_by_key(&rel, |b| b.rel_last)
                    .is_ok_and(|i| scanned[i].max_timestamp == ts)
            });
        if ok && time_ok && !index.is_empty() {
            self.index = index;
            self.time_index = time_index;
        } else if !raw.is_empty() {
            tracing::info!(path = %log.display(), "Rebuilt an inconsistent segment index.");
        }
    }

    /// Writes the in-memory indexes to their files (on roll and clean shutdown).
    pub fn write_index_files(&self) -> Result<()> {
        let (_, idx, tidx) = Self::paths(&self.dir, self.base_offset);
        let (index, time_index) = self.index_bytes();
        write_file(&idx, &index)?;
        write_file(&tidx, &time_index)
    }

    /// The offset index and the time index as their files hold them.
    pub fn index_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let mut index = Vec::with_capacity(self.index.len() * 8);
        for (rel, pos) in &self.index {
            index.extend_from_slice(&rel.to_be_bytes());
            index.extend_from_slice(&pos.to_be_bytes());
        }
        let mut time_index = Vec::with_capacity(self.time_index.len() * 12);
        for (ts, rel) in &self.time_index {
            time_index.extend_from_slice(&ts.to_be_bytes());
            time_index.extend_from_slice(&rel.to_be_bytes());
        }
        (index, time_index)
    }

    /// Appends one batch whose base offset has been set; returns its file position.
    pub fn append(&mut self, batch: &[u8], header: &BatchHeader) -> Result<u64> {
        let pos = self.size;
        self.append_many(batch, std::slice::from_ref(header))?;
        Ok(pos)
    }

    /// Appends consecutive batches (their bytes concatenated in `buf`) with one write.
    pub fn append_many(&mut self, buf: &[u8], headers: &[BatchHeader]) -> Result<()> {
        let pos = self.size;
        if let Err(e) = self.file.write_all_at(buf, pos) {
            // A partial write (full disk) leaves garbage past `size`; cut it so the next
            // append and a restart both see a clean tail.
            let _ = self.file.set_len(pos);
            return Err(LogError::io("append to segment", self.log_path(), e));
        }
        let mut at = pos;
        for h in headers {
            self.track(h, at);
            at += h.total_size() as u64;
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Forces the segment's data to disk.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync segment", self.log_path(), e))
    }

    /// A handle readers can use without holding the partition lock.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Bytes in the `.log` file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The offset after the last batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The largest record timestamp in the segment (-1 when empty).
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Max timestamp of the first batch, if any.
    pub fn first_batch_timestamp(&self) -> Option<i64> {
        self.first_batch_timestamp
    }

    /// A file position at or before the batch holding `offset` (index floor lookup).
    pub fn lookup(&self, offset: i64) -> u64 {
        lookup(&self.index, self.base_offset, offset)
    }

    /// A file position at or before the first batch whose max timestamp is at least `ts`.
    pub fn lookup_time(&self, ts: i64) -> u64 {
        lookup_time(&self.index, &self.time_index, self.base_offset, ts)
    }

    /// Reads the batch header at `pos`, if a whole header is there.
    pub fn header_at(&self, pos: u64) -> Result<Option<BatchHeader>> {
        if pos + BATCH_HEADER_LEN as u64 > self.size {
            return Ok(None);
        }
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.file
            .read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read segment", self.log_path(), e))?;
        BatchHeader::parse(&buf)
            .map(Some)
            .map_err(|e| LogError::Corrupt {
                path: self.log_path(),
                position: pos,
                reason: e.to_string(),
            })
    }

    /// The position of the first batch whose last offset is at least `offset`, scanning
    /// forward from `pos`; `None` when no batch in this segment reaches it.
    pub fn seek_from(&self, mut pos: u64, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        while let Some(h) = self.header_at(pos)? {
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    /// Removes the segment's files.
    pub fn delete_files(&self) {
        let (log, idx, tidx) = Self::paths(&self.dir, self.base_offset);
        for p in [log, idx, tidx] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "Could not delete a segment file.");
                }
            }
        }
    }
}

/// Floor lookup in an offset index: a file position at or before the batch holding `offset`.
pub(crate) fn lookup(index: &[(u32, u32)], base_offset: i64, offset: i64) -> u64 {
    let rel = (offset - base_offset).max(0) as u32;
    match index.partition_point(|e| e.0 <= rel) {
        0 => 0,
        i => u64::from(index[i - 1].1),
    }
}

/// A file position at or before the first batch whose max timestamp is at least `ts`.
pub(crate) fn lookup_time(
    index: &[(u32, u32)],
    time_index: &[(i64, u32)],
    base_offset: i64,
    ts: i64,
) -> u64 {
    match time_index.partition_point(|e| e.0 < ts) {
        0 => 0,
        i => lookup(
            index,
            base_offset,
            base_offset + i64::from(time_index[i - 1].1) + 1,
        ),
    }
}

/// Decodes an `.index` file: `None` when torn.
pub(crate) fn decode_index(raw: &[u8]) -> Option<Vec<(u32, u32)>> {
    if !raw.len().is_multiple_of(8) {
        return None;
    }
    Some(
        raw.chunks_exact(8)
            .map(|c| {
                (
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect(),
    )
}

/// Decodes a `.timeindex` file: `None` when torn.
pub(crate) fn decode_time_index(raw: &[u8]) -> Option<Vec<(i64, u32)>> {
    if !raw.len().is_multiple_of(12) {
        return None;
    }
    Some(
        raw.chunks_exact(12)
            .map(|c| {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&c[..8]);
                (
                    i64::from_be_bytes(ts),
                    u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                )
            })
            .collect(),
    )
}

/// Writes `value` as JSON to `path`, as [`write_file`] does.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_vec(value).map_err(|e| LogError::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        reason: e.to_string(),
    })?;
    write_file(path, &json)
}

/// Reads the JSON file `path`: `None` when there is none, an error naming the file when it
/// does not parse.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| LogError::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("read", path, e)),
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so readers see the old or
/// the new content, never half of it.
pub(crate) fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = File::create(&tmp).map_err(|e| LogError::io("create", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| LogError::io("write", &tmp, e))?;
    f.sync_data().map_err(|e| LogError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LogError::io("rename", path, e))
}

/// Reads batch headers in file order through a window of the file: a segment of small
/// batches costs one read per window instead of one `pread` per batch (millions of them for
/// a large log, which made every start slow), and a batch larger than the window costs one
/// window read for its header.
#[derive(Default)]
struct HeaderWindow {
    buf: Vec<u8>,
    start: u64,
}

/// Bytes read at a time when scanning headers.
const HEADER_WINDOW: u64 = 64 << 10;

impl HeaderWindow {
    /// The `BATCH_HEADER_LEN` bytes at `pos`; `file_size - pos` must be at least that.
    fn header(&mut self, file: &File, pos: u64, file_size: u64) -> std::io::Result<&[u8]> {
        self.bytes(file, pos, BATCH_HEADER_LEN, file_size)
    }

    /// The `len` bytes at `pos` (`pos + len` within `file_size`), read through the window
    /// when they fit it.
    fn bytes(
        &mut self,
        file: &File,
        pos: u64,
        len: usize,
        file_size: u64,
    ) -> std::io::Result<&[u8]> {
        let end = self.start + self.buf.len() as u64;
        if pos < self.start || pos + len as u64 > end {
            let n = HEADER_WINDOW.max(len as u64).min(file_size - pos) as usize;
            self.buf.resize(n, 0);
            file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }
}
