//! The object-store sink: writes each partition's records as JSON lines or Parquet objects to
//! S3, Google Cloud Storage, Azure, HDFS (WebHDFS, `hdfs.rs`), a local folder or memory, named
//! by their first offset so that a replay rewrites the same objects.
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
//! `flush-interval` (that record starts the next buffer). Every record counts, the rejected
//! ones too, by its own key and value bytes. An object is named by the offset of its buffer's
//! first record (so every group of one rotation shares the name, in its own folder): which
//! records of a buffer are written can change between a crash and its replay (a schema
//! recorded in between), where the buffer's boundaries cannot.
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
//! Lines and Parquet come from the format layer (`sluice_format::lines`,
//! `sluice_format::parquet`), the same code the file sink and SQL use.
//!
//! `json` objects hold one line per record: the value (it must be JSON; line breaks between
//! its tokens become spaces) or, with `envelope`, the record with its coordinates.
//!
//! `parquet` objects are written with the topic's **recorded schema** when it has one
//! ([`crate::Sink::open`] hands it over; SQL records the schema of the streams and tables
//! it declares or writes): each value is decoded straight into Arrow columns of that schema,
//! so a `BIGINT` column is `Int64` and a `DOUBLE` column `Float64` whatever values an object
//! happens to hold. Fields the schema does not name are left out; a value that does not fit
//! (not JSON, not an object, a field of the wrong type, a non-nullable field missing) is a
//! dead letter with the reason and its partition and offset, and the object holds every other
//! record. With `envelope`, rows are the envelope (`topic`, `partition`, `offset`,
//! `timestamp`, `key`) with the value as a struct of the recorded schema.
//!
//! Without a recorded schema, a `parquet` object's schema is inferred from its records
//! (columns in name order; an empty object `{}` has no columns and is a dead letter); a field
//! whose values disagree in shape within one object (an object here, a number there) is
//! written as its JSON text.
//!
//! Parquet output is byte-identical for identical records and schema (no timestamps in the
//! metadata; rows decoded per write are written as the same rows whatever the batch sizes),
//! which the replay argument above needs.
//!
//! # Parses per record
//!
//! | format | recorded schema | JSON parses of a value in this sink |
//! |---|---|---|
//! | `json` | — | 1 (validated without building it) |
//! | `json`, `envelope` | — | 1 (into the envelope) |
//! | `parquet` | yes | 1 (straight into Arrow; once more only for the values of a write that held a value that does not fit, to find it) |
//! | `parquet` | no | 2 to 3 (validated; then inferred from a sample of 1,000 and decoded strictly; more when shapes disagree) |
//!
//! A `{field:...}` placeholder in `partition-by` reads the value into a tree: one parse more
//! with a recorded schema, none more without (the tree is what is validated).
//!
//! # Layout
//!
//! - `config.rs`: [`ObjectStoreSinkConfig`], [`ObjectFormat`].
//! - `template.rs`: `partition-by` templates.
//! - `sink.rs`: [`ObjectStoreSink`]: buffers, rotation, encoding, uploads.
//! - `store.rs`: the object_store client from the url and options; single and multipart
//!   uploads.

mod config;
mod hdfs;
mod sink;
mod store;
pub(crate) mod template;

pub use self::config::{ObjectFormat, ObjectStoreSinkConfig};
pub use self::sink::ObjectStoreSink;

#[cfg(test)]
mod tests;
