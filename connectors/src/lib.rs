//! Connectors: sources that write records into Sluice topics and sinks that read topics and
//! write out to external systems.
//!
//! ```text
//!  files ─► Source::poll ─► records + position ─┐ one log transaction     ┌─► topic
//!                                               └────────────────────────┴─► __sluice_source_positions
//!  topic ─► (worker, read_committed) ─► Sink::open(schema) ─► Sink::write ─► Sink::flush (durable) ─► commit group offsets
//! ```
//!
//! A connector is a documented serde config that builds a task. The worker (in
//! `sluice-runtime`) drives it: for a source it writes the records a poll returns together with
//! the position after them in one log transaction, so a restart resumes exactly after the last
//! committed records; for a sink it commits the group offsets only after `flush` made the
//! written records durable, and sinks write idempotently (deterministic names), so a replay
//! after a crash rewrites identical output.
//!
//! # Layout
//!
//! - [`file`]: the file source (tail files matching a glob: lines, JSON lines, CSV with a
//!   header) and the file sink (JSON lines, rolled by size or record count): `file/source.rs`,
//!   `file/sink.rs`.
//! - [`config`]: config value types shared by connectors (durations).
//! - [`elasticsearch`]: the Elasticsearch / OpenSearch sink (`_bulk` requests in rounds,
//!   each item's answer read: done, sent again, or a dead letter): `elasticsearch/config.rs`,
//!   `bulk.rs`, `sink.rs`.
//! - [`conformance`]: the contract tests every connector runs.
//! - [`error`]: the error type, [`ConnectorError`].
//! - `http_client`: what the HTTP connectors share (redacted URLs, headers, CA files, the
//!   retry schedule).
//! - [`http_ingest`]: the HTTP ingest source: requests handed over by the worker's
//!   `POST /ingest/{topic}` endpoint, answered once their records are committed.
//! - [`http_sink`]: the HTTP sink (single records or batches, an `Idempotency-Key` per
//!   request, retries, refused records to the dead-letter topic): `http_sink/mod.rs`,
//!   `config.rs`.
//! - [`http_poll`]: the HTTP polling source (GET a URL every interval, records picked by a
//!   JSON path, ETag / If-Modified-Since). The HTTP ingest endpoint is served by the worker.
//! - [`postgres_cdc`]: the Postgres change-data-capture source (logical replication with
//!   `pgoutput`, Debezium-compatible records on a topic per table): `postgres_cdc/mod.rs`,
//!   `pgoutput.rs`, `envelope.rs`, `snapshot.rs`, `stream.rs`, `tls.rs`.
//! - [`objstore`]: the object-store sink (s3://, gs://, az://, file://, memory://; JSON lines
//!   or Parquet written with the topic's recorded schema; partitioned paths; deterministic
//!   names): `objstore/config.rs`, `template.rs`, `sink.rs`, `store.rs`.
//!
//! Formats (JSON, CSV, lines, Parquet, record schemas as Arrow) are `sluice-format`'s; a
//! connector only picks which to use. Each connector is a folder; its `mod.rs` says what it
//! does and how many times it parses a record's JSON.

pub mod config;
pub mod conformance;
pub mod elasticsearch;
pub mod error;
pub mod file;
mod http_client;
pub mod http_ingest;
pub mod http_poll;
pub mod http_sink;
pub mod objstore;
pub mod postgres_cdc;

use sluice_log::{ConsumerRecord, Record, RecordSchema};
pub use sluice_task::{StopToken, Wait};

pub use crate::error::{ConnectorError, Result};

/// What one poll of a source produced.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// Records for the topic, in order.
    pub records: Vec<Record>,
    /// Records for topics the source names itself (a CDC source's topic per table), in
    /// order per topic; a topic that does not exist yet is created.
    pub routed: Vec<(String, Record)>,
    /// Input that could not become a record: where it was and why (dead letters).
    pub rejected: Vec<Rejected>,
    /// The position after everything above, to store with it; `None` when nothing was read.
    pub position: Option<Vec<u8>>,
    /// Changes to the source's keyed state, committed with the position (see
    /// [`Source::restore`]): `(key, Some(value))` sets an entry, `(key, None)` removes it.
    /// Keeps a position small when a source remembers many things (HTTP ingest's
    /// idempotency keys): each entry is written once, not with every position.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The value schema of a routed topic, registered (subject `<topic>-value`) before the
    /// batch's records are written: a CDC source's table shape, first seen or changed. A
    /// topic created for it has its subject's compatibility level set to `NONE`, since the
    /// table, not the registry, decides how it evolves.
    pub schemas: Vec<(String, RecordSchema)>,
}

/// FNV-1a 64 of `bytes`: a stable fingerprint (the same in every build and release, unlike
/// std's hasher), for names and positions that must survive restarts and upgrades.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A source's committed keyed state: `(key, value)` entries (see [`Source::restore`]).
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// Input a source could not turn into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where it came from (`file:line`).
    pub origin: String,
    /// The raw input.
    pub raw: Vec<u8>,
    /// Why.
    pub reason: String,
    /// For a sink: the partition and offset of the record. Its dead letter is written in the
    /// transaction that commits the offsets past it, so it is there exactly once.
    pub at: Option<(u32, i64)>,
}

impl Rejected {
    /// A record of a sink's topic the sink cannot write: from `topic/partition@offset`, with
    /// its value.
    pub fn record(
        topic: &str,
        partition: u32,
        offset: i64,
        value: Option<&[u8]>,
        reason: String,
    ) -> Rejected {
        Rejected {
            origin: format!("{topic}/{partition}@{offset}"),
            raw: value.unwrap_or_default().to_vec(),
            reason,
            at: Some((partition, offset)),
        }
    }
}

/// A source of records.
///
/// Contract: `open` is called once with the position committed last (`None` on the first
/// start); after it, the records of each `poll` must continue exactly after that position.
/// The position a poll returns must describe the input consumed by that poll and every one
/// before it, so that opening with it resumes without gaps or repeats. `poll` may return an
/// empty batch (nothing new) after waiting at most as `wait` allows: a wait ends at its
/// deadline or at once when the task stops (sleep with [`Wait::sleep`], or wait on something
/// the stop closes), so a stopping task never sits out a timeout.
pub trait Source: Send {
    /// Restores the committed keyed state: every entry a batch's `state` set and no later
    /// batch removed, as of the committed position. Called right before [`Source::open`];
    /// sources without keyed state ignore it.
    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        let _ = entries;
        Ok(())
    }

    /// Restores the committed position.
    fn open(&mut self, position: Option<&[u8]>) -> Result<()>;

    /// Reads up to `max` records.
    fn poll(&mut self, max: usize, wait: &Wait) -> Result<SourceBatch>;

    /// The batches polled so far are committed (records and position, in one log
    /// transaction). A source that acknowledges its input upstream (HTTP ingest answers its
    /// clients) does it here, never earlier.
    fn committed(&mut self) {}

    /// How far behind its input the source is, in bytes, when it can tell (a CDC source:
    /// the WAL its replication slot holds back). Read once per poll for status and metrics.
    fn lag_bytes(&self) -> Option<u64> {
        None
    }

    /// The name of a local keyed store the source keeps (RocksDB, changelogged in the
    /// source's epochs; unique per worker, a folder name), or none. A Postgres CDC source
    /// keeps the TOASTed values it has seen, to fill in the ones an update leaves out.
    fn store_name(&self) -> Option<String> {
        None
    }

    /// Hands the source its store (see [`Source::store_name`]), restored to what the log
    /// has committed, before [`Source::open`]. A source that is never given one (no state
    /// folder) does without.
    fn attach_store(&mut self, store: sluice_state::KvStore) {
        let _ = store;
    }

    /// The source's store, for the task: at the end of an epoch its changes go to the
    /// store's changelog in the epoch's transaction and are committed to it after; a failed
    /// attempt aborts them and the next restores the store from the log.
    fn store(&mut self) -> Option<&mut sluice_state::KvStore> {
        None
    }

    /// True when someone waits for the batches polled so far to commit (an HTTP client for
    /// its answer): the task then commits without waiting for the end of its commit
    /// interval. Sources that read at their own pace leave it false and share an epoch.
    fn waiting(&self) -> bool {
        false
    }
}

/// What a sink has made durable: per partition of its topic, the offset of the first record
/// whose output is not durable yet (every record before it is written for good, or was
/// rejected). The worker commits exactly these offsets.
pub type Durable = std::collections::BTreeMap<u32, i64>;

/// A sink of records.
///
/// Contract: `write` receives committed records of one topic in offset order per partition
/// (offsets may have gaps: transaction markers and compaction take offsets), possibly again
/// after a restart, starting at offsets a `flush` returned. Writing the same records again
/// from such an offset must leave the same records in the output, none twice (idempotence:
/// boundaries and names are decided by offsets and record contents, never by the clock,
/// except where a `flush` returned the boundary). Records the sink cannot write in its format
/// are returned from `write` (the worker sends them to the dead-letter topic), never dropped.
/// `flush` returns the offsets up to which the output is durable; a sink that buffers whole
/// objects may return less than it was given.
///
/// Each attempt (a start or a restart of the task) calls [`Sink::open`] once, then `write` and
/// `flush` as records come.
pub trait Sink: Send {
    /// Starts an attempt. Called once per attempt, before its first `write`, with the
    /// topic's latest recorded value schema (`None` when the topic has none), looked up when
    /// the attempt starts: a schema registered later applies from the next attempt.
    ///
    /// An implementor must:
    /// - treat the schema as the shape of the values it is given (a sink writing typed
    ///   output, such as Parquet, writes with it rather than guess one), and return a value
    ///   that does not fit it from `write` as rejected, with the reason, never drop it;
    /// - forget what it buffered before: the attempt's `write`s start again at offsets a
    ///   `flush` returned, and must rebuild the same output (same records and schema, same
    ///   bytes);
    /// - do no external IO that a replay could not repeat (it may check a connection).
    ///
    /// An error ends the attempt; the task retries or fails as the error's kind says. The
    /// default does nothing: sinks that write values as they are ignore the schema.
    fn open(&mut self, schema: Option<&RecordSchema>) -> Result<()> {
        let _ = schema;
        Ok(())
    }

    /// Whether the sink writes with its topic's schema: when another version is recorded,
    /// the task then ends the attempt and opens the sink again with it (records not
    /// committed are written again). Sinks that write values as they are say false.
    fn uses_schema(&self) -> bool {
        false
    }

    /// Hands the sink its task's stop token, once per attempt before [`Sink::open`]. A sink
    /// whose `write` or `flush` retries a remote system keeps retrying only briefly once the
    /// task stops (long enough for a slow round to finish and the epoch to commit), then
    /// gives up with an error (the attempt ends; the next replays from the last commit), so
    /// stopping a worker never sits out a `retry-timeout`. Sinks that do not retry ignore it.
    fn watch_stop(&mut self, stop: &StopToken) {
        let _ = stop;
    }

    /// Writes records (may buffer); returns those it cannot write, with the reason.
    fn write(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>>;

    /// Makes output durable where the sink's boundaries allow, and says how far it is.
    fn flush(&mut self) -> Result<Durable>;

    /// Records the last `flush` learnt it cannot write (a server refused them when they were
    /// sent), each with its `at`: the worker sends them to the dead-letter topic in the
    /// transaction that commits the offsets past them. Sinks that decide on each record in
    /// `write` have none.
    fn take_refused(&mut self) -> Vec<Rejected> {
        Vec::new()
    }
}
