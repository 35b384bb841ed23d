//! The record formats of Sluice, in one place: how record values are read and written as
//! JSON, delimited text (CSV), lines and Parquet, and how a topic's recorded schema
//! ([`sluice_log::RecordSchema`]) becomes an Arrow schema and back.
//!
//! Connectors and SQL both build on it, so a value means the same thing to the file source,
//! the HTTP ingest source, a query and the object-store sink, and each of them parses a
//! record's JSON at most once per hop (see DESIGN.md, "Tasks and formats").
//!
//! ```text
//!  bytes ──json::validate──► kept as written (sources, JSON-lines objects)
//!  bytes ──json::JsonDecoder (schema) ──► Arrow RecordBatch ──► SQL operators
//!                                                           └──► parquet::write ──► object bytes
//!  RecordBatch ──json::encode_rows / delimited::encode_batch──► record values
//!  RecordSchema ◄──schema::to_arrow / schema::from_arrow──► Arrow Schema
//! ```
//!
//! # Layout
//!
//! - [`json`]: validate a value, decode values into Arrow with a given schema, infer a schema
//!   from a sample, encode Arrow rows as JSON values.
//! - [`delimited`]: split and encode CSV rows (the `csv` crate; one implementation).
//! - [`lines`]: the line formats of line-oriented sinks (the value alone, or the record's
//!   envelope).
//! - [`parquet`]: Arrow batches as deterministic Parquet bytes; JSON lines as Parquet with a
//!   given or inferred schema.
//! - [`schema`]: [`sluice_log::RecordSchema`] ↔ Arrow [`arrow::datatypes::Schema`].
//! - [`error`]: the error type, [`FormatError`].

pub mod delimited;
pub mod error;
pub mod json;
pub mod lines;
pub mod parquet;
pub mod schema;

pub use crate::error::{FormatError, Result};
