//! The HTTP sink's settings: where requests go, what their bodies hold, how records are
//! batched and how failures are retried.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Interval;

/// Header values usually hold credentials: Debug shows only their names.
impl std::fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = serde_json::to_value(self).unwrap_or_default();
        if let Some(headers) = shown.get_mut("headers").and_then(|o| o.as_object_mut()) {
            for v in headers.values_mut() {
                *v = "(redacted)".into();
            }
        }
        if let Some(url) = shown.get_mut("url") {
            *url = crate::http_client::redact_url(&self.url).into();
        }
        write!(f, "HttpSinkConfig {shown}")
    }
}

/// The HTTP sink's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSinkConfig {
    /// Where requests go: `http://...` or `https://...`.
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: Method,
    /// The body: `single` (default): one request per record, the body its value (JSON);
    /// `array`: a JSON array of up to `batch-records` values; `ndjson`: values one per line.
    #[serde(default)]
    pub format: BodyFormat,
    /// Send each record as a JSON object with `topic`, `partition`, `offset`, `timestamp`,
    /// `key` and `value` instead of its value alone (default false: values only, which must
    /// be JSON, and tombstones skipped). With it a receiver can tell records apart by
    /// partition and offset.
    #[serde(default)]
    pub envelope: bool,
    /// Request headers, e.g. `Authorization = "Bearer ${TOKEN}"`. Their values are never
    /// logged or shown. Every request also carries `Idempotency-Key: <topic>-<partition>-<first
    /// offset>-<last offset>` (see the README).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most records in one request with `array` or `ndjson` (default 500).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Most body bytes in one request with `array` or `ndjson` (default 1 MiB; a record
    /// larger than this goes alone).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// How long records wait for a batch to fill before it is sent anyway (default `"1s"`).
    #[serde(default = "crate::config::default_linger")]
    pub linger: Interval,
    /// Requests in flight at once (default 4), each for another partition: a partition's
    /// requests go one after another, in offset order.
    #[serde(default = "crate::config::default_max_in_flight")]
    pub max_in_flight: usize,
    /// Each request's timeout (default `"30s"`).
    #[serde(default = "crate::config::default_request_timeout")]
    pub request_timeout: Interval,
    /// How long a request answered 5xx, 429, 409 or 408, or failing to connect or time out, is
    /// retried with exponential backoff from `retry-backoff` up to 30 s before the sink
    /// reports the error and its task restarts from its last commit (default `"5m"`).
    #[serde(default = "crate::config::default_retry_timeout")]
    pub retry_timeout: Interval,
    /// The first wait before a retry (default `"100ms"`).
    #[serde(default = "crate::config::default_retry_backoff")]
    pub retry_backoff: Interval,
    /// A PEM file of CA certificates to trust besides the system's. Relative paths are from
    /// the pipeline file.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
}

/// What a request body holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyFormat {
    /// One record.
    #[default]
    Single,
    /// A JSON array of records.
    Array,
    /// Records one per line.
    Ndjson,
}

fn default_batch_records() -> usize {
    500
}

fn default_batch_bytes() -> usize {
    1 << 20
}
