//! The Elasticsearch / OpenSearch sink: records become documents through the `_bulk` API
//! (NDJSON over HTTP), batched by count, bytes and linger time, with bounded requests in
//! flight. Every item's answer is read: 429/5xx items are sent again alone with backoff,
//! items the server refuses (mapping errors, malformed documents) become dead letters with
//! its reason, the rest are done. Document ids come from the record key (later records
//! replace the document, tombstones delete it) or from topic-partition-offset, so a replay
//! rewrites the same documents: exactly once without document versions.
//!
//! A record's JSON is parsed once to check it is one object (twice when it spans several
//! lines, to put it on one), and once more only when the index names a field of the value.
//!
//! # Layout
//!
//! - [`config`]: the settings ([`ElasticsearchSinkConfig`]).
//! - [`bulk`]: bulk request bodies, document ids, index names from a pattern, and each
//!   item's [`bulk::Outcome`]; a pure core with no IO.
//! - [`sink`]: the sink: rounds of requests in lanes by document, retries, dead letters,
//!   the server's version and compatibility headers, the index template.

pub mod bulk;
pub mod config;
pub mod sink;

pub use config::ElasticsearchSinkConfig;
pub use sink::ElasticsearchSink;
