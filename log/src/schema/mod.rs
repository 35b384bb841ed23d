//! The schema registry: the value (and key) schema of each topic, versioned and checked for
//! compatibility the way Confluent's Schema Registry does, kept inside the log.
//!
//! A topic written by a SQL query or declared by `CREATE STREAM/TABLE` records its value
//! schema here; sinks write with it. It is the base for Avro records and a
//! Confluent-compatible REST API, so it follows Confluent's model:
//!
//! - **Subjects** name what evolves: `<topic>-value` and `<topic>-key` (Confluent's
//!   TopicNameStrategy; [`value_subject`], [`key_subject`]).
//! - Each subject has **versions** 1, 2, ...; each distinct schema text has a global **id**,
//!   shared when two subjects register the same schema.
//! - A new version must pass the subject's **compatibility level** ([`CompatibilityLevel`],
//!   per subject or global, default `BACKWARD`), judged by Avro schema resolution
//!   ([`compat`]).
//! - Deleting a subject is a **soft delete**: its versions disappear from lookups, ids keep
//!   resolving, and version numbers continue after them. [`Log::delete_topic`] deletes the
//!   topic's subjects, so a re-created topic can take any schema.
//!
//! ```text
//!  RecordSchema ──to_avro_json──► Avro JSON ──► SchemaStore (versions, ids, levels)
//!  (neutral: the log                              │ change: append to __sluice_schemas,
//!   knows no SQL or Arrow)                        │ then apply; open: replay the topic
//!                                                 ▼
//!                              log.schemas(): register / latest / version / by_id / ...
//! ```
//!
//! Schemas are stored as Avro schema JSON ([`avro`]) in the compacted internal topic
//! `__sluice_schemas` (one partition), in the record format of Confluent's `_schemas`
//! topic (`store`): created on the first change, replayed into memory when the log opens;
//! a record that cannot be read is skipped with a warning naming its offset. Schemas over
//! [`MAX_SCHEMA_BYTES`] of JSON or nested deeper than [`MAX_DEPTH`] are refused.
//!
//! # Layout
//!
//! - `types`: [`RecordSchema`], [`FieldSchema`], [`FieldType`] and their validation.
//! - [`avro`]: the Avro JSON form, both ways, and how names Avro refuses are carried.
//! - [`compat`]: the levels and the reader/writer check.
//! - `store` (private): the state machine and the stored record format.
//! - `registry`: the API, [`SchemaRegistry`] and [`Registered`].
//!
//! [`Log::delete_topic`]: crate::Log::delete_topic

pub mod avro;
pub mod compat;
mod registry;
pub(crate) mod store;
mod types;

use std::fmt;

pub use self::compat::{CompatibilityLevel, Incompatibility};
pub use self::registry::{Registered, SchemaRegistry};
pub use self::types::{FieldSchema, FieldType, RecordSchema};

/// Name of the internal topic holding the registry.
pub const SCHEMAS_TOPIC: &str = "__sluice_schemas";
/// Largest schema accepted, in bytes of Avro JSON.
pub const MAX_SCHEMA_BYTES: usize = 1 << 20;
/// Deepest nesting accepted: the record is level 1, each struct, array or map one more.
pub const MAX_DEPTH: usize = 64;

/// The subject of a topic's value schema: `<topic>-value`.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The subject of a topic's key schema: `<topic>-key`.
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// Why a schema is not acceptable: where in it (a field path such as `payload.items[]`,
/// empty for the schema as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The field path.
    pub path: String,
    /// The reason.
    pub reason: String,
}

impl SchemaError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        SchemaError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "field '{}': {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for SchemaError {}
