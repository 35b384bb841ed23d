//! Sluice's KSQL-like streaming SQL.
//!
//! Statements such as `CREATE STREAM ... WITH (topic = ...)`, `CREATE TABLE ... AS SELECT`
//! and `SELECT ... EMIT CHANGES` are parsed here, planned (with DataFusion where a batch plan
//! fits) and cut at stateful nodes into a dataflow of streaming operators. Stateless work runs
//! as DataFusion physical expressions over Arrow batches; windows, aggregates and joins are
//! operators that keep their state in `sluice-state`.
//!
//! ```text
//!  text ─► parser ─► ast::Statement ─► planner ─► dataflow of operators
//!  topic ─► decode ─► Arrow batch ─► filter / project ─► stateful operator ─► encode ─► topic
//!                                    (DataFusion exprs)    (sluice-state)
//! ```
//!
//! # Layout
//!
//! - [`engine`]: runs statements (what `sluice sql` calls), one file per statement family:
//!   CREATE, INSERT, SELECT (push and pull queries), SHOW/DESCRIBE/EXPLAIN, DROP/TERMINATE;
//!   persistent queries run through [`runner`].
//! - [`catalog`]: declared streams and tables and the persistent queries, kept in the log.
//! - [`query`]: compiles a SELECT against the catalog (joins first, into one joined row the
//!   rest reads; DataFusion plans the rest, operators are cut from the plan) and runs it batch
//!   by batch as a [`query::Dataflow`].
//! - [`partition_by`]: `PARTITION BY`, which columns re-key a stream query's output.
//! - [`runner`]: persistent queries as exactly-once tasks (one log transaction per epoch).
//! - [`record_cache`]: a table result's latest update per key within an epoch, written at
//!   its commit (ksqlDB's `cache.max.bytes.buffering`).
//! - [`merge`]: input records of several partitions and topics in timestamp order.
//! - [`operators`]: the streaming operators, one file each (stateless, window), or one folder
//!   when an operator has several concerns (aggregate: plan, cache, sessions, expiry, output;
//!   join: plan, state, one file per kind of join).
//! - [`checked`]: arithmetic that fails on overflow and division by zero instead of wrapping.
//! - [`functions`]: ksqlDB's aggregate functions registered with DataFusion for planning, and
//!   its scalar function library (string, math, date/time, JSON, collections).
//! - [`ast`]: the statements of the dialect (standard SQL parts are `sqlparser` ASTs).
//! - [`parser`]: text to statements, with line and column in every error.
//! - [`syntax`]: ksqlDB forms sqlparser reads otherwise (`STRUCT(a := 1)`, `MAP(k := v)`,
//!   `MAP<K, V>` in a CAST, `DATEADD(DAYS, ...)`), rewritten for DataFusion.
//! - [`format`]: JSON / DELIMITED / RAW records to Arrow batches and back.
//! - [`planner`]: DataFusion planning against the sources' schemas.
//! - [`types`]: SQL column types and their Arrow types.
//! - [`error`]: the error type, [`SqlError`].

pub mod ast;
pub mod catalog;
pub mod checked;
pub mod engine;
pub mod error;
pub mod format;
pub mod functions;
pub mod merge;
pub mod operators;
pub mod parser;
pub mod partition_by;
pub mod planner;
pub mod query;
pub mod record_cache;
pub mod runner;
pub mod syntax;
pub mod types;

pub use crate::error::{Result, SqlError};
pub use crate::parser::{parse, parse_one};
pub use datafusion::arrow::array::RecordBatch;

/// Renders batches as a text table.
pub fn pretty(batches: &[RecordBatch]) -> Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
