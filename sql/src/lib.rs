//! Sluice's KSQL-like streaming SQL.
//!
//! Statements such as `CREATE STREAM ... WITH (topic = ...)`, `CREATE TABLE ... AS SELECT`
//! and `SELECT ... EMIT CHANGES` are parsed with `sqlparser`, planned (with DataFusion where a
//! batch plan fits) and cut at stateful nodes into a dataflow of streaming operators. Stateless
//! work runs as DataFusion physical expressions over Arrow batches; windows, aggregates and
//! joins are operators that keep their state in `sluice-state`.
//!
//! ```text
//!  topic ─► decode ─► Arrow batch ─► filter / project ─► stateful operator ─► encode ─► topic
//!                                    (DataFusion exprs)    (sluice-state)
//! ```
//!
//! # Layout
//!
//! Nothing is implemented yet; the streaming-SQL work brings the parser, the catalog, the
//! planner and one file per operator under `operators/`.
