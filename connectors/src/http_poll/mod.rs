//! The HTTP polling source: GETs a URL every `interval` and turns the JSON records a path
//! picks from each new response into records.
//!
//! ```text
//!  every interval           ┌─► 304 Not Modified ─────────────► nothing new
//!  GET url ─────────────────┼─► 200, same body as last time ──► nothing new
//!  If-None-Match: <etag>    └─► 200, new body ─► json-path ─┬─► objects ─► records
//!  If-Modified-Since: <lm>                                  └─► the rest ─► dead letters
//!                                     (returned poll by poll, up to `max` items each)
//! ```
//!
//! # What is new
//!
//! The source treats the URL as a snapshot that changes, not as a log: every response that
//! differs from the one before it is a new *version* and is emitted whole; an unchanged one
//! is emitted never again. "Unchanged" is decided by the server when it can (the `ETag` and
//! `Last-Modified` of the last `200` are sent back as `If-None-Match` and
//! `If-Modified-Since`; a `304`, like a `204`, is nothing new), and otherwise by the body itself: a `200`
//! whose body hashes like the previous version's is nothing new either. So a version seen
//! again after a different one (A, B, A) is emitted again, and a changed array is emitted
//! whole, old elements included: this source does not diff versions. A version the server
//! held only between two requests is never seen.
//!
//! # Position
//!
//! JSON, for example:
//!
//! ```text
//! {"url":"https://api.example/x","etag":"\"v7\"","last-modified":"Wed, 21 Oct 2015 07:28:00 GMT",
//!  "body-hash":"9f0c6a3e12d4b7a1","items":250,"emitted":100}
//! ```
//!
//! It holds the URL, the validators and FNV-1a hash of the version being emitted, how many
//! items (records and dead letters) its body yields and how many of them the batches so far
//! carried. Every batch that carries anything carries a position (the worker commits records
//! only together with one), so with the worker's transactional commit every item of a
//! version is emitted once, never twice, and never skipped except as said below:
//!
//! - `emitted == items`: the version is done. A restarted source sends its validators and
//!   skips a body with its hash.
//! - `emitted < items`: a response with more items than a poll's `max` was cut off by a
//!   restart. The restarted source fetches the body again without validators (a `304` would
//!   leave it without the rest) and, when the body hashes the same, continues at item
//!   `emitted`; when the body changed, the rest of the old version is superseded and the new
//!   version is emitted whole.
//!
//! A position stored for another URL is ignored (the source starts afresh).
//!
//! # Conformance
//!
//! [`crate::conformance::source_resumes_exactly_after_its_position`] models an append-only
//! input whose new lines continue the old ones; here appending to the served array makes a
//! new version, which is emitted whole (`a1`..`a4`, not `a3`, `a4`), and record values are
//! JSON objects, not bare lines. The tests check the same property directly: a source
//! opened at a poll's position continues exactly after that poll's items, with no gap and no
//! repeat, and an empty poll has no position.
//!
//! # Waiting
//!
//! `poll` returns at once with the items a response left over; otherwise it requests when
//! `interval` has passed since the last request, sleeping in steps of at most 50 ms until
//! then or until its `timeout` ends. The request itself is bounded by the `timeout` setting.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{
    ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sluice_log::Record;

use crate::config::Interval;
use crate::http_client::{describe, header_map, http_url, redact_url};
use crate::{ConnectorError, Rejected, Result, Source, SourceBatch, Wait};

/// The HTTP polling source's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpPollSourceConfig {
    /// The `http://` or `https://` URL to GET.
    pub url: String,
    /// Time from one request to the next (default `"10s"`).
    #[serde(default = "default_interval")]
    pub interval: Interval,
    /// Which parts of a JSON response are records: `$` (the whole body), then steps `.name`
    /// or `['name']` (a field), `[N]` (element N, from 0) and `[*]` (each element of an
    /// array), as in `"$.data.items[*]"`. Each record must be a JSON object; anything else,
    /// and a path that does not match, is a dead letter naming the path. Default: `$[*]` when
    /// the body is an array, else `$`.
    #[serde(default)]
    pub json_path: Option<JsonPath>,
    /// The field of each record whose value becomes the record key (a string as is, other
    /// values as JSON; missing or null: no key).
    #[serde(default)]
    pub key_field: Option<String>,
    /// Request headers, e.g. `Authorization = "Bearer ${TOKEN}"`. Their values are never
    /// logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Limit for one request, from connecting to the end of the body (default `"30s"`).
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
    /// A response body longer than this is an error (bytes; default 16 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_interval() -> Interval {
    Interval(Duration::from_secs(10))
}

fn default_timeout() -> Interval {
    Interval(Duration::from_secs(30))
}

fn default_max_body_bytes() -> usize {
    16 << 20
}

/// Header values hold credentials: Debug shows only their names.
impl fmt::Debug for HttpPollSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPollSourceConfig")
            .field("url", &redact_url(&self.url))
            .field("interval", &self.interval)
            .field("json_path", &self.json_path)
            .field("key_field", &self.key_field)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// A JSON path of the supported subset: `$` followed by `.name`, `['name']` (or `["name"]`),
/// `[N]` and `[*]` steps. Checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
    Each,
}

impl JsonPath {
    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn each() -> JsonPath {
        JsonPath {
            text: "$[*]".into(),
            steps: vec![Step::Each],
        }
    }

    fn root() -> JsonPath {
        JsonPath {
            text: "$".into(),
            steps: Vec::new(),
        }
    }
}

impl FromStr for JsonPath {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<JsonPath, String> {
        let text = text.trim();
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| "a json-path starts with '$'".to_string())?;
        let at = |i: usize| i + 2; // 1-based character position in `text`, after the '$'
        let chars: Vec<char> = rest.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end] != '.' && chars[end] != '[' {
                        end += 1;
                    }
                    let name: String = chars[start..end].iter().collect();
                    if name.is_empty() || name == "*" {
                        return Err(format!(
                            "expected a field name after '.' at character {}{}",
                            at(i),
                            if name == "*" { " (write [*])" } else { "" }
                        ));
                    }
                    steps.push(Step::Field(name));
                    i = end;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|c| *c == ']')
                        .map(|p| i + p)
                        .ok_or_else(|| format!("'[' at character {} is not closed", at(i)))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let quoted = ['\'', '"'].into_iter().find_map(|q| {
                        inner
                            .strip_prefix(q)
                            .and_then(|s| s.strip_suffix(q))
                            .filter(|s| !s.contains(q))
                    });
                    let step = if inner == "*" {
                        Step::Each
                    } else if let Some(name) = quoted {
                        Step::Field(name.to_string())
                    } else if let Ok(n) = inner.parse::<usize>() {
                        Step::Index(n)
                    } else {
                        return Err(format!(
                            "[{inner}] at character {} is none of [*], [N] and ['name']",
                            at(i)
                        ));
                    };
                    steps.push(step);
                    i = close + 1;
                }
                c => {
                    return Err(format!(
                        "expected '.' or '[' at character {}, found '{c}'",
                        at(i)
                    ));
                }
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "'{s}' is not a supported json-path ({e}); write e.g. \"$\", \"$[*]\", \
                 \"$.data.items[*]\", \"$['a b'][0]\""
            ))
        })
    }
}

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// What a path reached in a document.
enum Found<'a> {
    /// A value, and where (`$.data[3]`).
    Value { value: &'a Value, at: String },
    /// The path does not go on from `at`. `element` is the innermost `[*]` element it was
    /// in (that element is the dead letter; outside any `[*]` the whole body is).
    Miss {
        element: Option<&'a Value>,
        reason: String,
    },
}

impl JsonPath {
    /// Everything the path reaches from `root`, in document order.
    fn select<'a>(&self, root: &'a Value) -> Vec<Found<'a>> {
        let mut out = Vec::new();
        self.walk(0, root, &mut Vec::new(), None, &mut out);
        out
    }

    fn walk<'a>(
        &self,
        step: usize,
        node: &'a Value,
        indices: &mut Vec<usize>,
        element: Option<&'a Value>,
        out: &mut Vec<Found<'a>>,
    ) {
        let Some(s) = self.steps.get(step) else {
            out.push(Found::Value {
                value: node,
                at: self.location(step, indices),
            });
            return;
        };
        let miss = |why: String| Found::Miss {
            element,
            reason: format!("json-path {} does not match: {why}", self.text),
        };
        let at = || self.location(step, indices);
        match (s, node) {
            (Step::Field(name), Value::Object(fields)) => match fields.get(name) {
                Some(v) => self.walk(step + 1, v, indices, element, out),
                None => out.push(miss(format!("{} has no field '{name}'", at()))),
            },
            (Step::Index(n), Value::Array(items)) => match items.get(*n) {
                Some(v) => self.walk(step + 1, v, indices, element, out),
                None => out.push(miss(format!(
                    "{} has {} elements, no [{n}]",
                    at(),
                    items.len()
                ))),
            },
            (Step::Each, Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    indices.push(i);
                    self.walk(step + 1, v, indices, Some(v), out);
                    indices.pop();
                }
            }
            (Step::Field(_), other) => {
                out.push(miss(format!("{} is {}, not an object", at(), kind(other))))
            }
            (Step::Index(_) | Step::Each, other) => {
                out.push(miss(format!("{} is {}, not an array", at(), kind(other))))
            }
        }
    }

    /// The first `steps` steps with each `[*]` replaced by the index taken: `$.data[3]`.
    fn location(&self, steps: usize, indices: &[usize]) -> String {
        let mut out = String::from("$");
        let mut taken = indices.iter();
        for s in &self.steps[..steps] {
            match s {
                Step::Field(n) if n.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                    out.push('.');
                    out.push_str(n);
                }
                Step::Field(n) => out.push_str(&format!("['{n}']")),
                Step::Index(i) => out.push_str(&format!("[{i}]")),
                Step::Each => match taken.next() {
                    Some(i) => out.push_str(&format!("[{i}]")),
                    None => out.push_str("[*]"),
                },
            }
        }
        out
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Bytes of a rejected body or element kept in its dead letter.
const MAX_RAW_BYTES: usize = 64 << 10;

/// One thing a response yields, in order: a record or a dead letter. Both count as items
/// against `max` and in the position.
#[derive(Debug)]
enum Item {
    Record(Record),
    Rejected(Rejected),
}

fn rejected(origin: &str, raw: &[u8], reason: String) -> Item {
    let (raw, reason) = if raw.len() > MAX_RAW_BYTES {
        (
            &raw[..MAX_RAW_BYTES],
            format!(
                "{reason} (the first {MAX_RAW_BYTES} of {} bytes are kept)",
                raw.len()
            ),
        )
    } else {
        (raw, reason)
    };
    Item::Rejected(Rejected {
        origin: origin.to_string(),
        raw: raw.to_vec(),
        reason,
        at: None,
    })
}

/// The items of one response body: the objects `path` picks (each element of a top-level
/// array, else the whole body, when `path` is `None`) as records keyed by `key_field`, and
/// dead letters for the rest. Pure: the tests drive it without a server.
fn pick(
    body: &[u8],
    path: Option<&JsonPath>,
    key_field: Option<&str>,
    origin: &str,
    timestamp: i64,
) -> Vec<Item> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return vec![rejected(
                origin,
                body,
                format!("the response is not JSON: {e}"),
            )];
        }
    };
    let default;
    let path = match path {
        Some(p) => p,
        None => {
            default = if doc.is_array() {
                JsonPath::each()
            } else {
                JsonPath::root()
            };
            &default
        }
    };
    path.select(&doc)
        .into_iter()
        .map(|found| match found {
            Found::Miss {
                element: Some(e),
                reason,
            } => rejected(origin, e.to_string().as_bytes(), reason),
            Found::Miss {
                element: None,
                reason,
            } => rejected(origin, body, reason),
            Found::Value { value, at } if !value.is_object() => rejected(
                origin,
                value.to_string().as_bytes(),
                format!(
                    "json-path {path} picked {} at {at}, not a JSON object",
                    kind(value)
                ),
            ),
            Found::Value { value, .. } => {
                let key = key_field.and_then(|f| match value.get(f) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(Bytes::from(s.clone())),
                    Some(other) => Some(Bytes::from(other.to_string())),
                });
                Item::Record(Record {
                    key,
                    value: Some(Bytes::from(value.to_string())),
                    headers: Vec::new(),
                    timestamp,
                })
            }
        })
        .collect()
}

/// The response version being (or last) emitted; stored as the position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Version {
    /// The URL it came from (password and query values replaced): a position for another
    /// URL is ignored.
    url: String,
    /// FNV-1a 64 of the whole URL: tells apart URLs that differ only in redacted parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    /// FNV-1a 64 of the body, 16 hex digits.
    body_hash: String,
    /// Records and dead letters the body yields.
    items: u64,
    /// How many of them batches have carried.
    emitted: u64,
}

impl Version {
    fn done(&self) -> bool {
        self.emitted >= self.items
    }
}

/// FNV-1a 64 of `bytes`, as 16 hex digits.
fn body_hash(bytes: &[u8]) -> String {
    format!("{:016x}", crate::fnv1a(bytes))
}

/// How positions written before query values were redacted named the URL.
fn legacy_shown(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Polls one URL.
pub struct HttpPollSource {
    config: HttpPollSourceConfig,
    url: Url,
    /// The URL as shown in messages and dead letters.
    shown: String,
    headers: HeaderMap,
    /// Built on first use, on the thread that polls: reqwest's blocking client panics when
    /// built inside an async runtime, and the source may be constructed on one.
    client: Option<reqwest::blocking::Client>,
    /// The version last seen, with how far it is emitted.
    version: Option<Version>,
    /// Items of the current version not returned yet.
    pending: VecDeque<Item>,
    next_request: Instant,
}

impl fmt::Debug for HttpPollSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPollSource")
            .field("config", &self.config)
            .field("version", &self.version)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl HttpPollSource {
    /// A source for `config`; checks the URL, the headers and the limits.
    pub fn new(config: HttpPollSourceConfig) -> Result<HttpPollSource> {
        let bad = |why: String| ConnectorError::Config(why);
        let url = http_url(&config.url)?;
        let headers = header_map(&config.headers)?;
        for (what, i) in [("interval", config.interval), ("timeout", config.timeout)] {
            if i.0.is_zero() {
                return Err(bad(format!("{what} must be longer than 0")));
            }
        }
        if config.max_body_bytes == 0 {
            return Err(bad("max-body-bytes must be more than 0".into()));
        }
        Ok(HttpPollSource {
            shown: redact_url(&config.url),
            config,
            url,
            headers,
            client: None,
            version: None,
            pending: VecDeque::new(),
            next_request: Instant::now(),
        })
    }

    fn http_error(&self, reason: String) -> ConnectorError {
        ConnectorError::Http {
            method: "GET",
            url: self.shown.clone(),
            reason,
        }
    }

    fn client(&mut self) -> Result<reqwest::blocking::Client> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(self.config.timeout.0)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .default_headers(self.headers.clone())
            .build()
            .map_err(|e| {
                self.http_error(format!("cannot build the HTTP client: {}", describe(&e)))
            })?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// One request; a new version's items go to `pending`.
    fn fetch(&mut self) -> Result<()> {
        let client = self.client()?;
        let mut request = client.get(self.url.clone());
        // Validators only once the version is fully emitted: a restart in the middle of one
        // needs its body again, which a 304 would not give.
        if let Some(v) = self.version.as_ref().filter(|v| v.done()) {
            for (name, value) in [
                (IF_NONE_MATCH, &v.etag),
                (IF_MODIFIED_SINCE, &v.last_modified),
            ] {
                if let Some(value) = value {
                    request = request.header(name, value);
                }
            }
        }
        let response = request
            .send()
            .map_err(|e| self.http_error(describe(&e.without_url())))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED || status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        if !status.is_success() {
            let mut start = Vec::new();
            let _ = response.take(256).read_to_end(&mut start);
            let start = String::from_utf8_lossy(&start);
            return Err(self.http_error(format!(
                "the server answered {status}{}",
                if start.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", start.trim())
                }
            )));
        }
        let header = |name: HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let limit = self.config.max_body_bytes;
        let too_big = |size: Option<u64>| {
            self.http_error(format!(
                "the response body is {}over max-body-bytes {limit}; raise max-body-bytes or \
                 ask the endpoint for less",
                size.map(|n| format!("{n} bytes, ")).unwrap_or_default()
            ))
        };
        if let Some(n) = response.content_length().filter(|n| *n > limit as u64) {
            return Err(too_big(Some(n)));
        }
        let mut body = Vec::new();
        response
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.http_error(format!("reading the body: {}", describe(&e))))?;
        if body.len() > limit {
            return Err(too_big(None));
        }
        let hash = body_hash(&body);
        let mut skip = 0;
        if let Some(v) = self.version.as_mut().filter(|v| v.body_hash == hash) {
            // The body of the version last seen: keep the newer validators.
            v.etag.clone_from(&etag);
            v.last_modified.clone_from(&last_modified);
            if v.done() {
                return Ok(());
            }
            tracing::info!(url = %self.shown, emitted = v.emitted, items = v.items, "Resuming a response cut off by a restart.");
            skip = v.emitted;
        } else if self.version.as_ref().is_some_and(|v| !v.done()) {
            tracing::info!(url = %self.shown, "The response changed before a restart finished emitting it; emitting the new one whole.");
        }
        let items = pick(
            &body,
            self.config.json_path.as_ref(),
            self.config.key_field.as_deref(),
            &self.shown,
            sluice_log::record::now_ms(),
        );
        let total = items.len() as u64;
        let skip = skip.min(total);
        self.pending = items.into_iter().skip(skip as usize).collect();
        self.version = Some(Version {
            url: self.shown.clone(),
            url_hash: Some(body_hash(self.config.url.as_bytes())),
            etag,
            last_modified,
            body_hash: hash,
            items: total,
            emitted: skip,
        });
        Ok(())
    }

    /// Up to `max` pending items, with the position after them.
    fn drain(&mut self, max: usize) -> Result<SourceBatch> {
        let mut batch = SourceBatch::default();
        let n = max.min(self.pending.len());
        for item in self.pending.drain(..n) {
            match item {
                Item::Record(r) => batch.records.push(r),
                Item::Rejected(r) => batch.rejected.push(r),
            }
        }
        if let Some(v) = self.version.as_mut().filter(|_| n > 0) {
            v.emitted += n as u64;
            batch.position =
                Some(serde_json::to_vec(v).map_err(|e| ConnectorError::Position(e.to_string()))?);
        }
        Ok(batch)
    }
}

impl Source for HttpPollSource {
    fn open(&mut self, position: Option<&[u8]>) -> Result<()> {
        self.pending.clear();
        self.next_request = Instant::now();
        self.version = match position {
            None => None,
            Some(p) => {
                let mut v: Version = serde_json::from_slice(p)
                    .map_err(|e| ConnectorError::Position(e.to_string()))?;
                let same = match &v.url_hash {
                    Some(h) => *h == body_hash(self.config.url.as_bytes()),
                    // Written before the hash: compare the shown forms.
                    None => v.url == self.shown || v.url == legacy_shown(&self.config.url),
                };
                if same {
                    v.url = self.shown.clone();
                    v.url_hash = Some(body_hash(self.config.url.as_bytes()));
                    Some(v)
                } else {
                    tracing::info!(url = %self.shown, stored = %redact_url(&v.url), "The stored position is for another URL; starting afresh.");
                    None
                }
            }
        };
        Ok(())
    }

    fn poll(&mut self, max: usize, wait: &Wait) -> Result<SourceBatch> {
        if !self.pending.is_empty() {
            return self.drain(max);
        }
        // Until the next request is due, or the wait is over (a stop ends it at once).
        let until_due = self.next_request.saturating_duration_since(Instant::now());
        if !until_due.is_zero() && (!wait.sleep(until_due) || Instant::now() < self.next_request) {
            return Ok(SourceBatch::default());
        }
        // A failed request counts too: the worker's backoff paces the retries.
        self.next_request = Instant::now() + self.config.interval.0;
        self.fetch()?;
        self.drain(max)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the test server answers, and what it was asked.
    #[derive(Default)]
    struct Served {
        status: u16,
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// Send no Content-Length (the body ends when the connection closes).
        no_length: bool,
        /// Each request's head, header names lowercased.
        requests: Vec<String>,
    }

    /// A one-connection-at-a-time HTTP/1.1 server on 127.0.0.1 that answers from `Served`,
    /// with 304 for a matching If-None-Match or If-Modified-Since.
    struct Server {
        url: String,
        served: Arc<Mutex<Served>>,
        stop: Arc<AtomicBool>,
        addr: std::net::SocketAddr,
    }

    impl Server {
        fn start() -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let served = Arc::new(Mutex::new(Served {
                status: 200,
                ..Served::default()
            }));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, st) = (Arc::clone(&served), Arc::clone(&stop));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = answer(conn, &s);
                    }
                }
            });
            Server {
                url: format!("http://{addr}/feed"),
                served,
                stop,
                addr,
            }
        }

        fn serve(&self, body: &str, etag: Option<&str>, last_modified: Option<&str>) {
            let mut s = self.served.lock().unwrap();
            s.status = 200;
            s.body = body.as_bytes().to_vec();
            s.etag = etag.map(str::to_string);
            s.last_modified = last_modified.map(str::to_string);
        }

        fn requests(&self) -> Vec<String> {
            self.served.lock().unwrap().requests.clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
        }
    }

    fn answer(conn: TcpStream, served: &Mutex<Served>) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            let line = match line.split_once(':') {
                Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
                None => line,
            };
            head.push_str(&line);
        }
        if head.is_empty() {
            return Ok(());
        }
        let mut s = served.lock().unwrap();
        s.requests.push(head.clone());
        let has = |name: &str, value: &Option<String>| {
            value
                .as_ref()
                .is_some_and(|v| head.contains(&format!("{name}: {v}\r\n")))
        };
        let mut out = Vec::new();
        if s.status != 200 {
            write!(
                out,
                "HTTP/1.1 {} Oops\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                s.status,
                s.body.len()
            )?;
            out.extend_from_slice(&s.body);
        } else if has("if-none-match", &s.etag) || has("if-modified-since", &s.last_modified) {
            write!(
                out,
                "HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n"
            )?;
        } else {
            write!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n")?;
            if let Some(e) = &s.etag {
                write!(out, "etag: {e}\r\n")?;
            }
            if let Some(l) = &s.last_modified {
                write!(out, "last-modified: {l}\r\n")?;
            }
            if !s.no_length {
                write!(out, "content-length: {}\r\n", s.body.len())?;
            }
            write!(out, "\r\n")?;
            out.extend_from_slice(&s.body);
        }
        drop(s);
        let mut conn = conn;
        conn.write_all(&out)?;
        conn.shutdown(std::net::Shutdown::Both)
    }

    fn config(url: &str) -> HttpPollSourceConfig {
        serde_json::from_value(serde_json::json!({ "url": url, "interval": "1ms" })).unwrap()
    }

    fn source(config: HttpPollSourceConfig, position: Option<&[u8]>) -> HttpPollSource {
        let mut s = HttpPollSource::new(config).unwrap();
        s.open(position).unwrap();
        s
    }

    fn values(b: &SourceBatch) -> Vec<String> {
        b.records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    fn keys(b: &SourceBatch) -> Vec<Option<String>> {
        b.records
            .iter()
            .map(|r| {
                r.key
                    .as_ref()
                    .map(|k| String::from_utf8(k.to_vec()).unwrap())
            })
            .collect()
    }

    const WAIT: Duration = Duration::from_secs(2);

    /// `pick` over `body` with `path`, split into record values and dead-letter reasons.
    fn picked(body: &str, path: Option<&str>) -> (Vec<String>, Vec<String>) {
        let path = path.map(|p| p.parse::<JsonPath>().unwrap());
        let (mut values, mut reasons) = (Vec::new(), Vec::new());
        for item in pick(body.as_bytes(), path.as_ref(), None, "u", 0) {
            match item {
                Item::Record(r) => {
                    values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap())
                }
                Item::Rejected(r) => reasons.push(r.reason),
            }
        }
        (values, reasons)
    }

    #[test]
    fn json_paths_pick_records_and_name_themselves_when_they_do_not_match() {
        let body = r#"{"data": [{"a": 1}, {"a": 2}], "result": {"ok": true}}"#;
        assert_eq!(
            picked(body, Some("$.data[*]")).0,
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
        assert_eq!(picked(body, Some("$['data'][1]")).0, [r#"{"a":2}"#]);
        assert_eq!(picked(body, Some("$.result")).0, [r#"{"ok":true}"#]);
        assert_eq!(picked(body, Some("$")).0.len(), 1);
        // The default: each element of a top-level array, else the whole body.
        assert_eq!(picked(r#"[{"a":1},{"b":2}]"#, None).0.len(), 2);
        assert_eq!(picked(body, None).0.len(), 1);
        // An empty array is no records and no dead letter.
        assert_eq!(picked("[]", None), (vec![], vec![]));

        let (v, why) = picked(body, Some("$.items[*]"));
        assert!(v.is_empty());
        assert_eq!(
            why,
            ["json-path $.items[*] does not match: $ has no field 'items'"]
        );
        let (_, why) = picked(body, Some("$.data[5]"));
        assert_eq!(
            why,
            ["json-path $.data[5] does not match: $.data has 2 elements, no [5]"]
        );
        // Under [*], each element that does not fit is its own dead letter.
        let (v, why) = picked(
            r#"{"d": [{"x": {"y": 1}}, {"x": 3}, {"x": [1]}]}"#,
            Some("$.d[*].x"),
        );
        assert_eq!(v, [r#"{"y":1}"#]);
        assert_eq!(
            why,
            [
                "json-path $.d[*].x picked a number at $.d[1].x, not a JSON object",
                "json-path $.d[*].x picked an array at $.d[2].x, not a JSON object"
            ]
        );
        let (_, why) = picked(r#"{"d": [{"x": 1}, 7]}"#, Some("$.d[*].x"));
        assert_eq!(
            why[1],
            "json-path $.d[*].x does not match: $.d[1] is a number, not an object"
        );

        for bad in ["data", "$.", "$.*", "$[", "$[-1]", "$[x]", "$x", "$['a]"] {
            assert!(bad.parse::<JsonPath>().is_err(), "{bad} parsed");
        }
        let p: JsonPath = "$['a b'][0].c".parse().unwrap();
        assert_eq!(
            p.steps,
            [
                Step::Field("a b".into()),
                Step::Index(0),
                Step::Field("c".into())
            ]
        );
    }

    #[test]
    fn records_are_picked_from_the_response_with_their_keys() {
        let server = Server::start();
        server.serve(
            r#"{"data": [{"id": "a", "n": 1}, {"id": 7}, {"n": 3}, "x"]}"#,
            None,
            None,
        );
        let mut c = config(&server.url);
        c.json_path = Some("$.data[*]".parse().unwrap());
        c.key_field = Some("id".into());
        c.headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        let mut s = source(c, None);
        let b = s.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert_eq!(
            values(&b),
            [r#"{"id":"a","n":1}"#, r#"{"id":7}"#, r#"{"n":3}"#]
        );
        assert_eq!(keys(&b), [Some("a".into()), Some("7".into()), None]);
        assert_eq!(b.rejected.len(), 1);
        assert_eq!(b.rejected[0].origin, server.url);
        assert_eq!(b.rejected[0].raw, b"\"x\"");
        assert!(b.position.is_some());
        let request = &server.requests()[0];
        assert!(request.starts_with("GET /feed HTTP/1.1"), "{request}");
        assert!(request.contains("authorization: Bearer s3cret\r\n"));
        // Header values stay out of Debug output.
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn an_etag_makes_unchanged_responses_304_also_after_a_restart() {
        let server = Server::start();
        server.serve(r#"[{"v": 1}]"#, Some("\"v1\""), None);
        let mut s = source(config(&server.url), None);
        let b = s.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert_eq!(values(&b), [r#"{"v":1}"#]);
        let pos = b.position.unwrap();
        let pos_json: Value = serde_json::from_slice(&pos).unwrap();
        assert_eq!(pos_json["etag"], "\"v1\"");
        assert_eq!(pos_json["emitted"], 1);

        let b = s.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert!(b.records.is_empty() && b.position.is_none());
        assert!(server.requests()[1].contains("if-none-match: \"v1\"\r\n"));

        // A restarted source sends the stored validators and emits nothing again.
        let mut again = source(config(&server.url), Some(&pos));
        let b = again.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert!(b.records.is_empty() && b.rejected.is_empty() && b.position.is_none());
        assert_eq!(server.requests().len(), 3);
        assert!(server.requests()[2].contains("if-none-match: \"v1\"\r\n"));

        // A new version is emitted whole.
        server.serve(r#"[{"v": 1}, {"v": 2}]"#, Some("\"v2\""), None);
        let b = again.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert_eq!(values(&b), [r#"{"v":1}"#, r#"{"v":2}"#]);
    }

    #[test]
    fn last_modified_is_sent_back_as_if_modified_since() {
        let server = Server::start();
        let when = "Wed, 21 Oct 2015 07:28:00 GMT";
        server.serve(r#"{"v": 1}"#, None, Some(when));
        let mut s = source(config(&server.url), None);
        let pos = s.poll(100, &Wait::timeout(WAIT)).unwrap().position.unwrap();
        assert!(
            s.poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .records
                .is_empty()
        );
        assert!(server.requests()[1].contains(&format!("if-modified-since: {when}\r\n")));
        assert!(!server.requests()[1].contains("if-none-match"));
        let mut again = source(config(&server.url), Some(&pos));
        assert!(
            again
                .poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .position
                .is_none()
        );
        assert!(server.requests()[2].contains(&format!("if-modified-since: {when}\r\n")));
    }

    #[test]
    fn an_identical_body_without_validators_is_not_emitted_again() {
        let server = Server::start();
        server.serve(r#"[{"v": 1}]"#, None, None);
        let mut s = source(config(&server.url), None);
        let pos = s.poll(100, &Wait::timeout(WAIT)).unwrap().position.unwrap();
        assert!(
            s.poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .position
                .is_none()
        );
        let mut again = source(config(&server.url), Some(&pos));
        assert!(
            again
                .poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .position
                .is_none()
        );
        assert_eq!(server.requests().len(), 3);
        // A, B, A: the second A is a new version after B.
        server.serve(r#"[{"v": 2}]"#, None, None);
        assert_eq!(
            values(&again.poll(100, &Wait::timeout(WAIT)).unwrap()),
            [r#"{"v":2}"#]
        );
        server.serve(r#"[{"v": 1}]"#, None, None);
        assert_eq!(
            values(&again.poll(100, &Wait::timeout(WAIT)).unwrap()),
            [r#"{"v":1}"#]
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_a_dead_letter() {
        let server = Server::start();
        server.serve("<html>maintenance</html>", None, None);
        let mut s = source(config(&server.url), None);
        let b = s.poll(100, &Wait::timeout(WAIT)).unwrap();
        assert!(b.records.is_empty());
        assert_eq!(b.rejected.len(), 1);
        let r = &b.rejected[0];
        assert_eq!(r.origin, server.url);
        assert_eq!(r.raw, b"<html>maintenance</html>");
        assert!(
            r.reason.starts_with("the response is not JSON"),
            "{}",
            r.reason
        );
        assert!(
            b.position.is_some(),
            "the dead letter is committed with its position"
        );
    }

    #[test]
    fn error_statuses_and_unreachable_servers_are_retryable_errors_naming_the_url() {
        let server = Server::start();
        {
            let mut s = server.served.lock().unwrap();
            s.status = 500;
            s.body = b"database down".to_vec();
        }
        let mut s = source(config(&server.url), None);
        let e = s.poll(100, &Wait::timeout(WAIT)).unwrap_err();
        assert!(e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains(&server.url) && text.contains("500") && text.contains("database down"),
            "{text}"
        );

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let e = source(config(&url), None)
            .poll(100, &Wait::timeout(WAIT))
            .unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains(&url), "{e}");
    }

    #[test]
    fn a_response_over_max_body_bytes_is_an_error() {
        let server = Server::start();
        server.serve(&format!("[{}]", "1,".repeat(20) + "1"), None, None);
        let mut c = config(&server.url);
        c.max_body_bytes = 16;
        let e = source(c.clone(), None)
            .poll(100, &Wait::timeout(WAIT))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&server.url) && text.contains("43 bytes, over max-body-bytes 16"),
            "{text}"
        );
        // Without a Content-Length the reading stops at the limit.
        server.served.lock().unwrap().no_length = true;
        let e = source(c, None).poll(100, &Wait::timeout(WAIT)).unwrap_err();
        assert!(e.to_string().contains("over max-body-bytes 16"), "{e}");
        assert!(e.is_retryable());
    }

    fn five() -> String {
        (1..=5)
            .map(|i| format!("{{\"v\":{i}}}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn a_response_larger_than_max_is_spread_over_polls_each_with_its_position() {
        let server = Server::start();
        server.serve(&format!("[{}]", five()), Some("\"e\""), None);
        let mut s = source(config(&server.url), None);
        let mut positions = Vec::new();
        let mut all = Vec::new();
        for expect in [2, 2, 1] {
            let b = s.poll(2, &Wait::timeout(WAIT)).unwrap();
            assert_eq!(b.records.len(), expect);
            all.extend(values(&b));
            let p: Value = serde_json::from_slice(&b.position.unwrap()).unwrap();
            positions.push((p["emitted"].as_u64().unwrap(), p["items"].as_u64().unwrap()));
        }
        assert_eq!(all.len(), 5);
        assert_eq!(positions, [(2, 5), (4, 5), (5, 5)]);
        assert_eq!(
            server.requests().len(),
            1,
            "the rest came without a request"
        );
        assert!(s.poll(2, &Wait::timeout(WAIT)).unwrap().position.is_none());
        assert!(server.requests()[1].contains("if-none-match: \"e\""));
    }

    /// The property `conformance::source_resumes_exactly_after_its_position` checks, in this
    /// source's terms (see the module docs for why that suite does not apply as is).
    #[test]
    fn a_source_opened_at_a_position_resumes_exactly_after_it() {
        let server = Server::start();
        server.serve(r#"[{"a":1},{"a":2},{"a":3}]"#, Some("\"e1\""), None);
        let mut s = source(config(&server.url), None);
        let first = s.poll(2, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(values(&first), [r#"{"a":1}"#, r#"{"a":2}"#]);
        let pos = first.position.unwrap();
        drop(s);

        // Same body: continue with the third item; the request had no validators.
        let mut again = source(config(&server.url), Some(&pos));
        let rest = again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert_eq!(values(&rest), [r#"{"a":3}"#]);
        assert!(!server.requests()[1].contains("if-none-match"));
        let done = rest.position.unwrap();
        let empty = again.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        assert!(empty.records.is_empty() && empty.position.is_none());
        let mut after_done = source(config(&server.url), Some(&done));
        assert!(
            after_done
                .poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .position
                .is_none()
        );

        // Changed before the restart: the new version whole.
        server.serve(r#"[{"a":1},{"a":2},{"a":3},{"a":4}]"#, Some("\"e2\""), None);
        let mut changed = source(config(&server.url), Some(&pos));
        assert_eq!(
            changed
                .poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .records
                .len(),
            4
        );

        // A position for another URL is ignored.
        let mut other = source(config(&format!("{}?page=2", server.url)), Some(&done));
        assert_eq!(
            other.poll(100, &Wait::timeout(WAIT)).unwrap().records.len(),
            4
        );
    }

    #[test]
    fn poll_waits_for_the_interval_but_never_past_its_timeout() {
        let server = Server::start();
        server.serve("[]", None, None);
        let mut c = config(&server.url);
        c.interval = Interval(Duration::from_secs(10));
        let mut s = source(c.clone(), None);
        assert!(
            s.poll(100, &Wait::timeout(WAIT))
                .unwrap()
                .position
                .is_none()
        );
        let start = Instant::now();
        assert!(
            s.poll(100, &Wait::timeout(Duration::from_millis(120)))
                .unwrap()
                .position
                .is_none()
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(server.requests().len(), 1, "no request before the interval");

        c.interval = Interval(Duration::from_millis(150));
        let mut s = source(c, None);
        s.poll(100, &Wait::timeout(Duration::ZERO)).unwrap();
        s.poll(100, &Wait::timeout(Duration::from_secs(5))).unwrap();
        assert_eq!(
            server.requests().len(),
            3,
            "a second request once the interval passed"
        );
    }

    #[test]
    fn the_config_has_defaults_and_is_checked() {
        let c: HttpPollSourceConfig =
            serde_json::from_value(serde_json::json!({ "url": "https://example.invalid/x" }))
                .unwrap();
        assert_eq!(c.interval, Interval(Duration::from_secs(10)));
        assert_eq!(c.timeout, Interval(Duration::from_secs(30)));
        assert_eq!(c.max_body_bytes, 16 << 20);
        assert_eq!(c.json_path, None);
        assert!(HttpPollSource::new(c).is_ok());

        let err = |v: Value| {
            serde_json::from_value::<HttpPollSourceConfig>(v)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(serde_json::json!({ "url": "http://h/", "json-path": "data[*]" }))
                .contains("not a supported json-path")
        );
        assert!(
            err(serde_json::json!({ "url": "http://h/", "intervall": "1s" }))
                .contains("unknown field")
        );

        let new = |url: &str, headers: &[(&str, &str)]| {
            let mut c = config(url);
            c.headers = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HttpPollSource::new(c).unwrap_err().to_string()
        };
        assert!(new("ftp://h/x", &[]).contains("http or https"));
        assert!(new("not a url", &[]).contains("url 'not a url'"));
        let e = new("http://h/", &[("X-Token", "line\nbreak s3cret")]);
        assert!(
            e.contains("headers.X-Token") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(new("http://u:s3cret@h/", &[("bad name", "v")]).contains("bad name"));
        assert_eq!(redact_url("http://u:s3cret@h/x"), "http://u:redacted@h/x");
    }
}
