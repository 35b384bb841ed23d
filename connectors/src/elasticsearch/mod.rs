//! The Elasticsearch / OpenSearch sink (issue 15), being built: so far the `_bulk` API's
//! wire format and the reading of its per-item results ([`bulk`]), a pure core with no IO.
//! The sink itself (config, batching, HTTP, retries, dead letters) is not there yet, so no
//! pipeline can name it.
//!
//! # Layout
//!
//! - [`bulk`]: bulk request bodies (NDJSON), document ids, index names from a pattern with
//!   the record time, and each item's [`bulk::Outcome`].

pub mod bulk;
