//! Connectors: sources that write records into Sluice topics and sinks that read topics and
//! write out to external systems.
//!
//! A connector is a documented serde config that builds a task; the task body is one plain
//! `async fn` loop that selects between its work and the shutdown signal. Sources write
//! through the log's transactional producer together with their own position (file offset,
//! Postgres LSN); sinks read committed records and write idempotently, committing their group
//! offset only after the external write is durable.
//!
//! # Layout
//!
//! Nothing is implemented yet; the worker work brings the `Source` and `Sink` contracts and one
//! folder per connector: `file`, `http`, `s3`, later `postgres_cdc`, `hdfs`, `elasticsearch`.
