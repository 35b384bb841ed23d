//! The Kafka wire protocol over Sluice's log: `sluice run --kafka-listen` serves it so that
//! Kafka's clients and tools (librdkafka and everything built on it, kafka-python, the Java
//! client) produce to and consume from Sluice topics, and pipelines, SQL and sinks see those
//! records like any others. Later it is also how nodes replicate.
//!
//! ```text
//!  TCP ─► server (accept, connection limit) ─► connection: reader ─frames─► handler ─► writer
//!                                                │ size limit,        │ ApiVersions, Metadata,
//!                                                │ buffer budget      │ Produce, Fetch, ...
//!                                                ▼                    ▼
//!                                         close + log line     sluice_log::Log (blocking calls
//!                                         on a bad frame        on tokio's blocking pool)
//! ```
//!
//! The message codecs are the `kafka-protocol` crate's. Record batches are not re-encoded:
//! the log stores Kafka's RecordBatch v2, so a Produce's batch is appended as sent and a
//! Fetch answers with the stored bytes.
//!
//! # Layout
//!
//! - [`config`]: the listener's settings and their defaults (Kafka's names in the docs).
//! - `server` (private): accepting, framing, the per-connection bounds, dispatch.
//! - `versions` (private): the APIs and versions advertised, and ApiVersions.
//! - `errors` (private): the log's errors as Kafka error codes.
//! - `sasl` (private): PLAIN and SCRAM-SHA-256 exchanges against the configured users.
//! - [`replica`]: partition replication in a cluster: leaders, followers' fetchers, the
//!   high watermark and the ISR.
//! - [`pipelines`]: where a cluster's pipelines run, and their topics' placement.
//! - [`client`]: the small Kafka client nodes use between them (a follower's fetches), and
//!   helpers for benchmarks and tools (create a topic, find a leader, produce a batch).
//! - `apis/` (private): one file per group of APIs: `metadata`, `produce`, `fetch` and
//!   `fetch_sessions` (KIP-227), `offsets` (ListOffsets), `admin` (topics), `configs`
//!   (configs, DeleteRecords, OffsetForLeaderEpoch), `groups` (coordinator lookup and
//!   committed offsets), `membership` (classic consumer groups), `transactions`,
//!   `producer_id`, `auth` (SaslHandshake, SaslAuthenticate, and the answers refused
//!   requests get: before authenticating, or in a version not served).

pub mod config;
mod coordinators;

mod apis;
pub mod client;
mod errors;
pub mod pipelines;
pub mod replica;
mod sasl;
mod server;
pub mod topics;
mod versions;

pub use config::{KafkaConfig, TlsFiles, Users};
pub use server::{KafkaServer, ServeError, serve};
pub use versions::SUPPORTED;
