//! The embedded log: partitioned, append-only, transactional topics with consumer groups —
//! the single source of truth of a Sluice worker, usable on its own as a single-node Kafka.
//!
//! Sources append records to topics, queries and sinks read them back; exactly-once work
//! commits its outputs, state changes and input positions in one log transaction. On disk
//! each partition is a folder of segments whose batches are byte-compatible with Kafka's
//! RecordBatch v2, so the same bytes can later be served to Kafka clients.
//!
//! ```text
//!  Producer ──batch──► Log ──► Topic ──► Partition ──► Segment (.log + .index + .timeindex)
//!   (idempotent,        │                   │  producer state, open/aborted transactions,
//!    transactional)     │                   │  HW / LSO / leader epoch, group-commit fsync
//!                       ├─ TxnCoordinator ──┴─► markers; state in __transaction_state
//!                       ├─ GroupCoordinator ──► assignments; offsets in __consumer_offsets
//!                       ├─ schema registry ───► subjects, versions, ids in __sluice_schemas
//!                       └─ housekeeping: retention, compaction, timeouts, interval fsync
//!  Consumer ◄─fetch(read_committed | read_uncommitted)── Partition
//! ```
//!
//! # Layout
//!
//! - [`record`]: the record type.
//! - [`varint`], [`compression`], [`batch`]: the RecordBatch v2 codec; `batch/` holds one
//!   file per concern: the error, the header and its CRC, the builder, the record codec,
//!   control (marker) batches and framing.
//! - [`partitioner`]: Kafka's murmur2 key partitioner and the sticky partitioner.
//! - [`config`]: topic and log configuration.
//! - `segment` (private): segment files and their indexes.
//! - `checkpoint` (private): the per-partition offsets checkpoint that keeps offsets from
//!   being reused when records are lost, and [`DataLoss`], the record of such a loss.
//! - [`partition`]: append, fetch, offsets, retention, compaction of one partition.
//! - `producer_state` (private): idempotence and transaction bookkeeping per partition.
//! - [`txn`]: the transaction coordinator's state machine.
//! - [`group`]: the consumer-group coordinator's state machine and assignors.
//! - [`offsets`]: committed group offsets.
//! - [`log`]: the data directory as a whole ([`Log`]), a thin shell over the
//!   state machines above, split by concern in `log/`: `topics`, `data` (append and
//!   fetch), `transactions` (producer ids and the one executor of every transaction end),
//!   `groups`, `housekeeping`, `data_loss`, `schemas` (the registry's topic).
//! - [`schema`]: the schema registry — topics' value and key schemas ([`RecordSchema`],
//!   stored as Avro JSON), versions, global ids and Confluent's compatibility levels, kept
//!   in the compacted topic `__sluice_schemas` and reached through [`Log::schemas`].
//! - [`remote`]: tiered storage — closed segments of tiered topics in an object store,
//!   local deletion after upload, reads of old offsets served from the store.
//! - [`owner`]: [`Owner`], what a task of a pipeline placed by a cluster asks of it.
//! - [`producer`], [`consumer`]: the client APIs.
//! - [`error`]: the error type, [`LogError`].
//! - [`fault`]: fault-injection points for crash tests.

pub mod batch;
mod checkpoint;
pub mod compression;
pub mod config;
pub mod consumer;
mod epochs;
pub mod error;
pub mod fault;
pub mod group;
pub mod log;
pub mod offsets;
pub mod owner;
pub mod partition;
pub mod partitioner;
pub mod producer;
mod producer_state;
pub mod record;
pub mod remote;
pub mod schema;
mod segment;
pub mod txn;
pub mod varint;

pub use crate::checkpoint::DataLoss;
pub use crate::compression::Compression;
pub use crate::config::{FsyncPolicy, LogOptions, TopicConfig};
pub use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset};
pub use crate::error::{LogError, Result};
pub use crate::group::{Assignor, TopicPartition};
pub use crate::log::{
    GroupInfo, Log, PartitionReset, ResetTo, TopicDescription, is_internal_topic,
};
pub use crate::owner::{Owner, OwnerRef};
pub use crate::partition::{AppendInfo, Isolation, OffsetSpec, PartitionInfo};
pub use crate::producer::{Acks, Producer, ProducerConfig};
pub use crate::producer_state::AbortedTxn;
pub use crate::record::{Header, Record, StoredRecord};
pub use crate::schema::{
    CompatibilityLevel, FieldSchema, FieldType, RecordSchema, Registered, SchemaRegistry,
    value_subject,
};
