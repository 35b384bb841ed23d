//! The file connectors: a source that tails files and a sink that writes rolling files of
//! lines.
//!
//! The **source** ([`FileSource`], `source.rs`) tails every file matching a path or glob,
//! oldest name first, following appends. Its position is, per file, the inode and the byte
//! offset after the last complete line it returned (plus the CSV header), so a restart resumes
//! exactly there. A file whose inode changed (rotated) is read from its start; one that shrank
//! below the position (truncated) is read again from its start. A line without its newline yet
//! waits for it. JSON lines are parsed once (validated without building a tree, or parsed
//! into a tree only when `key-field` reads a field) and kept as written; CSV rows are split by
//! `sluice_format::delimited` and encoded as JSON objects (no JSON parse).
//!
//! The **sink** ([`FileSink`], `sink.rs`) writes each partition's records as lines
//! (`sluice_format::lines`) to `<folder>/<topic>-<partition>-<first offset, 20 digits>.jsonl`,
//! rolling to a new file after `roll-records` records or `roll-bytes` bytes. File boundaries
//! depend only on offsets and sizes, so a replay after a crash rewrites identical files: on its
//! first write for a partition the sink cuts the file holding the resume offset back to the
//! lines before it.

mod sink;
mod source;

pub use self::sink::{FileSink, FileSinkConfig, SinkFormat};
pub use self::source::{FileFormat, FileSource, FileSourceConfig};
