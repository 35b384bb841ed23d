//! The Elasticsearch / OpenSearch sink's settings: where documents go, how they are named,
//! how requests are batched and retried, and how the sink signs in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Interval;

/// The password and the API key are secrets: Debug shows only whether they are set.
impl std::fmt::Debug for ElasticsearchSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        for secret in ["password", "api-key"] {
            if let Some(v) = shown.get_mut(secret).filter(|v| !v.is_null()) {
                *v = "(redacted)".into();
            }
        }
        if let Some(url) = shown.get_mut("url") {
            *url = crate::http_client::redact_url(&self.url).into();
        }
        write!(f, "ElasticsearchSinkConfig {shown}")
    }
}

/// The Elasticsearch / OpenSearch sink's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ElasticsearchSinkConfig {
    /// The cluster: `http://host:9200` or `https://host:9200`, with a path prefix when a proxy
    /// serves it under one (`https://proxy/es`). Works with Elasticsearch 7.8+, 8, 9 and
    /// OpenSearch 1–3: the sink asks the server what it is at start and, for Elasticsearch 8
    /// and later, sends its compatibility headers (`compatible-with=<major>`).
    pub url: String,
    /// The index each record's document goes to: a name, or a pattern with the record time in
    /// braces in Java date letters (`"alerts-{yyyy.MM.dd}"` gives `alerts-2026.11.29`; `yyyy`,
    /// `MM`, `dd`, `HH`, `mm`, UTC) and/or a field of the value (`"orders-{field:region}"`,
    /// lower-cased; records without it are dead letters).
    pub index: String,
    /// Document ids: `key` (default) uses the record key, so each key has one document that
    /// later records replace (records without a key get `topic-partition-offset`); `offset`
    /// always uses `topic-partition-offset`, one document per record (an event log).
    #[serde(default)]
    pub document_id: DocumentId,
    /// What a tombstone (a record with a key and no value) does: `delete` (default) deletes
    /// the key's document in the index the tombstone's own time names (with a date in
    /// `index`, a key's documents of other days stay; an index from a field cannot take
    /// tombstones, which are then dead letters); `ignore` skips it. With `document-id =
    /// "offset"` tombstones are always skipped.
    #[serde(default)]
    pub tombstones: Tombstones,
    /// Most actions in one `_bulk` request (default 1000).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Most bytes in one `_bulk` request body (default 5 MiB). A single document larger than
    /// this is sent alone.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// How long records wait for a batch to fill before it is sent anyway (default `"1s"`);
    /// every commit of the sink (`commit-interval`) sends what is waiting too.
    #[serde(default = "crate::config::default_linger")]
    pub linger: Interval,
    /// `_bulk` requests in flight at once (default 4).
    #[serde(default = "crate::config::default_max_in_flight")]
    pub max_in_flight: usize,
    /// Each request's timeout (default `"30s"`).
    #[serde(default = "crate::config::default_request_timeout")]
    pub request_timeout: Interval,
    /// How long documents the server could not take for now (429, 5xx, connection failures)
    /// are retried while it takes none of them, with exponential backoff from `retry-backoff`
    /// up to 30 s (a retry it takes some of starts the backoff again), before the sink reports
    /// the error and its task restarts from its last commit (default `"5m"`).
    #[serde(default = "crate::config::default_retry_timeout")]
    pub retry_timeout: Interval,
    /// The first wait before a retry (default `"100ms"`).
    #[serde(default = "crate::config::default_retry_backoff")]
    pub retry_backoff: Interval,
    /// User name for HTTP basic authentication (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for basic authentication; write `"${ES_PASSWORD}"` to take it from the
    /// environment. Never logged or shown.
    #[serde(default)]
    pub password: Option<String>,
    /// An API key (the base64 `encoded` form Elasticsearch returns), sent as
    /// `Authorization: ApiKey <key>`; instead of `username`/`password`. Never logged or shown.
    #[serde(default)]
    pub api_key: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (a self-signed cluster).
    /// Relative paths are from the pipeline file.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// A JSON file applied at start as a composable index template (`PUT
    /// _index_template/<index-template-name>`), e.g. `{"template": {"mappings": {...}}}`;
    /// when it has no `index_patterns`, the template covers the indexes `index` names (its
    /// text before the first placeholder, then `*`). Relative paths are from the pipeline file.
    #[serde(default)]
    pub index_template: Option<PathBuf>,
    /// The template's name (default: `index`'s text before the first placeholder, without a
    /// trailing `-`, `_` or `.`, e.g. `alerts`).
    #[serde(default)]
    pub index_template_name: Option<String>,
}

/// Where document ids come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentId {
    /// The record key (else topic-partition-offset).
    #[default]
    Key,
    /// `topic-partition-offset`.
    Offset,
}

/// What tombstones do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tombstones {
    /// Delete the key's document.
    #[default]
    Delete,
    /// Skip them.
    Ignore,
}

fn default_batch_records() -> usize {
    1000
}

fn default_batch_bytes() -> usize {
    5 << 20
}
