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
//! # JSON parses per hop
//!
//! On the path HTTP ingest → topic → SQL filter → object-store Parquet, a record's JSON is
//! parsed this many times per hop (each hop's module says why):
//!
//! | hop | parses |
//! |---|---|
//! | HTTP ingest, `application/json` | 1 (when submitted; the source takes the tree) |
//! | HTTP ingest, NDJSON line | 1 |
//! | file source, `json` | 1 (validated, or parsed into a tree when `key-field` reads it) |
//! | SQL query (JSON stream) | 1 per batch (straight into Arrow); a batch with a bad record is decoded again record by record |
//! | object-store sink, Parquet, recorded schema | 1 (straight into Arrow); again only for a write holding a misfit |
//! | object-store sink, Parquet, no schema | 2 (validated, then decoded into the inferred schema; a sample of 1,000 once more to infer it) |
//! | object-store sink / file sink, JSON lines | 1 (validated) / 0 (values as they are) |
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
