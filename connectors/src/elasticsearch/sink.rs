//! The sink itself: records become bulk actions, sent in rounds of `_bulk` requests; every
//! item's answer decides whether it is done, sent again, or a dead letter.
//!
//! A round keeps the order of each document's actions, so the index ends as writing the
//! records one by one would leave it (each document holds its last record the server took):
//!
//! ```text
//!  first wave: actions in record order, in lanes by document (hash of index + id);
//!              a lane's batches go one after another, lanes at once (max-in-flight):
//!              a document's actions never race, and inside one request the server
//!              applies them in order
//!  later waves: per document with an action still to send, only its last action the
//!              server has not refused (429/5xx earlier ones are superseded by it)
//!              after a backoff; at most one action per document, so requests may race
//! ```
//!
//! A round ends when every action is done or refused (a dead letter), so the offsets given
//! so far are durable when `flush` returns. A replay after a crash sends the same actions
//! again: `index` replaces a document with the same content and deleting a missing document
//! is done, so the result is the same (exactly once, not versioned: no version conflicts).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sluice_log::ConsumerRecord;

use super::bulk::{self, IndexPattern, Outcome};
use super::config::{DocumentId, ElasticsearchSinkConfig, Tombstones};
use crate::http_client::{self, Retry, describe, redact_url};
use crate::{ConnectorError, Durable, Rejected, Result, Sink, StopToken};

/// One record's action, ready to send.
#[derive(Debug)]
struct Action {
    topic: Arc<str>,
    partition: u32,
    offset: i64,
    /// `(index, id)`: the document it writes.
    doc: (String, String),
    /// The NDJSON lines: the action, then the document for an index.
    lines: Vec<u8>,
    /// The record value, for a dead letter.
    raw: Option<Bytes>,
}

/// Where an action stands in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not answered yet, or answered that the server could not take it for now (429, 5xx).
    Busy,
    Done,
    Refused,
}

/// What the server is, as its root answers: it decides the content types.
#[derive(Debug, Clone)]
struct Server {
    /// `Elasticsearch 8.15.3`, `OpenSearch 3.8.0`.
    name: String,
    json: HeaderValue,
    ndjson: HeaderValue,
}

/// A request's actions (indexes into the round's) and its answer.
type Answered = (Vec<usize>, std::result::Result<Vec<Outcome>, Failure>);

/// A request that failed as a whole.
#[derive(Debug)]
struct Failure {
    /// True when sending it again later may succeed (429, 5xx, the network).
    retry: bool,
    /// True when the server may have taken it anyway (a timeout, a dropped connection):
    /// its lane sends nothing more in this wave (see `round`).
    unknown: bool,
    /// True when the server refused it as too large (413): its actions go alone.
    too_large: bool,
    reason: String,
}

/// Writes records as documents into Elasticsearch or OpenSearch.
pub struct ElasticsearchSink {
    config: ElasticsearchSinkConfig,
    pattern: IndexPattern,
    /// The cluster's URL, ending in `/`.
    base: Url,
    /// The URL as shown in messages.
    shown: String,
    headers: HeaderMap,
    cas: Vec<reqwest::Certificate>,
    /// The index template to apply at start: its name and body.
    template: Option<(String, Value)>,
    /// Owned because the trait is synchronous; one thread drives the requests, which are IO.
    runtime: tokio::runtime::Runtime,
    client: Option<reqwest::Client>,
    server: Option<Server>,
    pending: Vec<Action>,
    pending_bytes: usize,
    /// When the oldest pending action was added (for `linger`).
    since: Option<Instant>,
    /// Per partition, the offset after the last record given.
    next: Durable,
    /// Records a round in `flush` found the server refuses.
    refused: Vec<Rejected>,
    /// The task's stop token: it ends waits between retries.
    stop: Option<StopToken>,
}

impl std::fmt::Debug for ElasticsearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchSink")
            .field("config", &self.config)
            .field("server", &self.server.as_ref().map(|s| &s.name))
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl ElasticsearchSink {
    /// A sink for `config`; relative file paths are resolved against `base`. Checks the
    /// settings and reads the files; talks to no server (that is `open`'s).
    pub fn new(config: ElasticsearchSinkConfig, base: &Path) -> Result<ElasticsearchSink> {
        let bad = |why: String| {
            ConnectorError::Config(format!(
                "elasticsearch sink {}: {why}",
                redact_url(&config.url)
            ))
        };
        let mut url = http_client::http_url(&config.url)?;
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let pattern = IndexPattern::parse(&config.index).map_err(|e| bad(format!("index: {e}")))?;
        http_client::check_delivery(
            config.batch_records,
            config.batch_bytes,
            config.max_in_flight,
            config.request_timeout.0,
            config.retry_timeout.0,
            config.retry_backoff.0,
        )
        .map_err(bad)?;
        let mut headers = HeaderMap::new();
        let mut auth = match (&config.username, &config.password, &config.api_key) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(bad(
                    "set either api-key or username and password, not both".into(),
                ));
            }
            (None, None, None) => None,
            (None, None, Some(key)) => Some(format!("ApiKey {key}")),
            (Some(user), password, None) => {
                use base64::Engine;
                let pair = format!("{user}:{}", password.as_deref().unwrap_or_default());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, Some(_), None) => return Err(bad("password needs username".into())),
        }
        .map(|v| {
            HeaderValue::from_str(&v).map_err(|_| {
                bad("the credentials hold characters a header cannot (control characters or non-ASCII)".into())
            })
        })
        .transpose()?;
        if let Some(v) = auth.as_mut() {
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v.clone());
        }
        let cas = match &config.tls_ca_file {
            Some(file) => http_client::read_ca(&base.join(file))?,
            None => Vec::new(),
        };
        let template = match &config.index_template {
            None => None,
            Some(file) => {
                let path = base.join(file);
                let text = std::fs::read(&path)
                    .map_err(|e| ConnectorError::io("read the index template", &path, e))?;
                let mut body: Value = serde_json::from_slice(&text).map_err(|e| {
                    bad(format!("index-template {}: not JSON: {e}", path.display()))
                })?;
                let Some(object) = body.as_object_mut() else {
                    return Err(bad(format!(
                        "index-template {}: must be a JSON object",
                        path.display()
                    )));
                };
                let prefix = pattern.prefix();
                if !object.contains_key("index_patterns") {
                    if prefix.is_empty() {
                        return Err(bad(format!(
                            "index-template {}: has no index_patterns, and index '{}' starts with a placeholder, so none can be made from it",
                            path.display(),
                            config.index
                        )));
                    }
                    object.insert(
                        "index_patterns".into(),
                        serde_json::json!([format!("{prefix}*")]),
                    );
                }
                let name = match &config.index_template_name {
                    Some(n) => n.clone(),
                    None => prefix.trim_end_matches(['-', '_', '.']).to_string(),
                };
                if name.is_empty() || name.contains(['/', '?', '#', ' ']) {
                    return Err(bad(format!(
                        "index-template-name '{name}' is not a template name; set index-template-name"
                    )));
                }
                Some((name, body))
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("start a runtime for", redact_url(&config.url), e))?;
        Ok(ElasticsearchSink {
            shown: redact_url(url.as_str()),
            base: url,
            pattern,
            config,
            headers,
            cas,
            template,
            runtime,
            client: None,
            server: None,
            pending: Vec::new(),
            pending_bytes: 0,
            since: None,
            next: Durable::new(),
            refused: Vec::new(),
            stop: None,
        })
    }

    fn error(&self, method: &'static str, path: &str, reason: String) -> ConnectorError {
        ConnectorError::Http {
            method,
            url: format!("{}{path}", self.shown),
            reason,
        }
    }

    /// Asks the server what it is and applies the index template.
    fn connect(&mut self) -> Result<()> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = http_client::client(
                    self.config.request_timeout.0,
                    self.headers.clone(),
                    &self.cas,
                )?;
                self.client = Some(c.clone());
                c
            }
        };
        let root = self.base.clone();
        let answer = self.runtime.block_on(async {
            let response = client.get(root).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) =
            answer.map_err(|e| self.error("GET", "", describe(&e.without_url())))?;
        if !status.is_success() {
            return Err(self.error("GET", "", answer_reason(status, &body)));
        }
        let server = server(&body).map_err(|e| self.error("GET", "", e))?;
        tracing::info!(url = %self.shown, server = %server.name, "The Elasticsearch sink is connected.");
        if let Some((name, body)) = &self.template {
            let path = format!("_index_template/{name}");
            let url = self
                .base
                .join(&path)
                .map_err(|e| self.error("PUT", &path, e.to_string()))?;
            let request = client
                .put(url)
                .header(CONTENT_TYPE, server.json.clone())
                .header(ACCEPT, server.json.clone())
                .body(body.to_string());
            let answer = self.runtime.block_on(async {
                let response = request.send().await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.bytes().await?))
            });
            let (status, reply) =
                answer.map_err(|e| self.error("PUT", &path, describe(&e.without_url())))?;
            if !status.is_success() {
                return Err(self.error("PUT", &path, answer_reason(status, &reply)));
            }
        }
        self.server = Some(server);
        Ok(())
    }

    /// The record's action, `Ok(None)` when it writes nothing (a skipped tombstone), or why
    /// it cannot be a document.
    fn action(&self, r: &ConsumerRecord) -> std::result::Result<Option<Action>, String> {
        let by_key = self.config.document_id == DocumentId::Key;
        let key = if by_key { r.key.as_deref() } else { None };
        if r.value.is_none()
            && (!by_key || r.key.is_none() || self.config.tombstones == Tombstones::Ignore)
        {
            return Ok(None);
        }
        let id = bulk::doc_id(key, &r.topic, r.partition, r.offset)?;
        let value: Option<Value> = match &r.value {
            Some(v) if self.pattern.needs_value() => {
                Some(serde_json::from_slice(v).map_err(|e| format!("the value is not JSON: {e}"))?)
            }
            _ => None,
        };
        let index = if r.value.is_none() && self.pattern.needs_value() {
            return Err(format!(
                "index '{}' reads a field of the value, which a tombstone does not have; set tombstones = \"ignore\" or an index without fields",
                self.config.index
            ));
        } else {
            self.pattern.render(r.timestamp, value.as_ref())?
        };
        let mut lines = Vec::with_capacity(r.value.as_ref().map_or(0, Bytes::len) + 64);
        let action = match &r.value {
            Some(doc) => bulk::Action::Index {
                index: &index,
                id: &id,
                doc,
            },
            None => bulk::Action::Delete {
                index: &index,
                id: &id,
            },
        };
        bulk::append(&mut lines, &action)?;
        Ok(Some(Action {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            doc: (index, id),
            lines,
            raw: r.value.clone(),
        }))
    }

    /// True when the pending actions fill every lane's batch, or waited long enough.
    fn round_due(&self) -> bool {
        let lanes = self.config.max_in_flight;
        self.pending.len() >= self.config.batch_records.saturating_mul(lanes)
            || self.pending_bytes >= self.config.batch_bytes.saturating_mul(lanes)
            || self
                .since
                .is_some_and(|t| t.elapsed() >= self.config.linger.0)
    }

    /// Sends every pending action until each is done or refused; returns the refused ones.
    fn round(&mut self) -> Result<Vec<Rejected>> {
        let actions = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.since = None;
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        let (Some(client), Some(server)) = (self.client.clone(), self.server.clone()) else {
            return Err(ConnectorError::Config(
                "elasticsearch sink: written before it was opened (a bug)".into(),
            ));
        };
        let url = self
            .base
            .join("_bulk")
            .map_err(|e| self.error("POST", "_bulk", e.to_string()))?;
        let send = Sender {
            client,
            url,
            server,
        };
        let mut states = vec![State::Busy; actions.len()];
        // First wave: in lanes by document.
        let lanes = self.config.max_in_flight;
        let mut lane_of: Vec<Vec<usize>> = vec![Vec::new(); lanes];
        for (i, a) in actions.iter().enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.doc.hash(&mut h);
            lane_of[(h.finish() % lanes as u64) as usize].push(i);
        }
        let batches: Vec<Vec<Vec<usize>>> = lane_of
            .iter()
            .map(|lane| self.batches(&actions, lane, &HashSet::new()))
            .collect();
        let results = self
            .runtime
            .block_on(futures::future::join_all(batches.into_iter().map(|lane| {
                let send = &send;
                let actions = &actions;
                async move {
                    let mut out = Vec::new();
                    let mut unknown: Option<String> = None;
                    for batch in lane {
                        // After a request whose fate is unknown (the server may still apply
                        // it), the lane's later requests wait for the next wave: sent now,
                        // they could be overtaken by it.
                        if let Some(reason) = &unknown {
                            let held = Failure {
                                retry: true,
                                unknown: false,
                                too_large: false,
                                reason: format!("held back after: {reason}"),
                            };
                            out.push((batch, Err(held)));
                            continue;
                        }
                        let result = send.bulk(actions, &batch).await;
                        if let Err(f) = &result {
                            if f.unknown {
                                unknown = Some(f.reason.clone());
                            }
                        }
                        out.push((batch, result));
                    }
                    out
                }
            })));
        let mut refused = Vec::new();
        let mut by_doc: Option<HashMap<&(String, String), Vec<usize>>> = None;
        let mut retry: Option<Retry> = None;
        let mut last_busy = String::new();
        // Actions of a request refused as too large: each goes alone from now on.
        let mut alone: HashSet<usize> = HashSet::new();
        let mut results: Vec<Answered> = results.into_iter().flatten().collect();
        loop {
            let mut busy = false;
            let mut progress = false;
            for (batch, result) in results.drain(..) {
                match result {
                    Ok(outcomes) => {
                        for (&i, outcome) in batch.iter().zip(outcomes) {
                            states[i] = match outcome {
                                Outcome::Done => {
                                    progress = true;
                                    State::Done
                                }
                                Outcome::Retry { status, reason } => {
                                    busy = true;
                                    last_busy = format!("status {status}: {reason}");
                                    State::Busy
                                }
                                Outcome::Reject { status, reason } => {
                                    refused.push(dead_letter(
                                        &actions[i],
                                        format!("the server refused the document (status {status}): {reason}"),
                                    ));
                                    State::Refused
                                }
                                Outcome::Fail { status, reason } => {
                                    return Err(self.error(
                                        "POST",
                                        "_bulk",
                                        format!("the server did not write a document to index {} (status {status}): {reason}", actions[i].doc.0),
                                    ));
                                }
                            };
                        }
                    }
                    Err(f) if f.too_large && batch.len() == 1 => {
                        let i = batch[0];
                        refused.push(dead_letter(&actions[i], f.reason));
                        states[i] = State::Refused;
                    }
                    Err(f) if f.too_large => {
                        for &i in &batch {
                            states[i] = State::Busy;
                            alone.insert(i);
                        }
                        busy = true;
                        last_busy = f.reason;
                    }
                    Err(f) if f.retry => {
                        for &i in &batch {
                            states[i] = State::Busy;
                        }
                        busy = true;
                        last_busy = f.reason;
                    }
                    Err(f) => return Err(self.error("POST", "_bulk", f.reason)),
                }
            }
            // The common case: the first wave was taken whole.
            if !busy && by_doc.is_none() {
                break;
            }
            // Later waves: per document, its last action the server has not refused, when
            // that one is not done yet. The busy ones before it are superseded, but stay
            // candidates: if it is refused, the one before it is what the document must hold.
            let docs = by_doc.get_or_insert_with(|| {
                let mut m: HashMap<&(String, String), Vec<usize>> = HashMap::new();
                for (i, a) in actions.iter().enumerate() {
                    m.entry(&a.doc).or_default().push(i);
                }
                m
            });
            let mut wave = Vec::new();
            for list in docs.values() {
                let last = list.iter().rev().find(|&&i| states[i] != State::Refused);
                if let Some(&i) = last.filter(|&&i| states[i] != State::Done) {
                    wave.push(i);
                }
            }
            if wave.is_empty() {
                break;
            }
            wave.sort_unstable();
            // The schedule measures how long the server has taken nothing: a wave it took
            // part of starts it again.
            if progress {
                retry = None;
            }
            let schedule = retry.get_or_insert_with(|| {
                Retry::new(
                    self.config.retry_backoff.0,
                    self.config.retry_timeout.0,
                    self.stop.as_ref(),
                )
            });
            let Some(delay) = schedule.next_delay() else {
                let why = schedule.ended();
                return Err(self.error(
                    "POST",
                    "_bulk",
                    format!(
                        "{} documents were still not taken when {why}; last answer: {last_busy}",
                        wave.len()
                    ),
                ));
            };
            tracing::debug!(url = %self.shown, documents = wave.len(), ?delay, reason = %last_busy, "Documents the server could not take are sent again.");
            let batches = self.batches(&actions, &wave, &alone);
            let concurrency = self.config.max_in_flight;
            self.runtime
                .block_on(http_client::pause(delay, self.stop.as_ref()));
            results = self.runtime.block_on(async {
                futures::stream::iter(batches)
                    .map(|batch| {
                        let send = &send;
                        let actions = &actions;
                        async move {
                            let result = send.bulk(actions, &batch).await;
                            (batch, result)
                        }
                    })
                    .buffer_unordered(concurrency)
                    .collect()
                    .await
            });
        }
        Ok(refused)
    }

    /// `which` actions cut into requests by `batch-records` and `batch-bytes`.
    /// An action in `alone` gets a request of its own.
    fn batches(
        &self,
        actions: &[Action],
        which: &[usize],
        alone: &HashSet<usize>,
    ) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0;
        let mut last_alone = false;
        for &i in which {
            let size = actions[i].lines.len();
            let this_alone = alone.contains(&i);
            match out.last_mut() {
                Some(b)
                    if !this_alone
                        && !last_alone
                        && b.len() < self.config.batch_records
                        && bytes + size <= self.config.batch_bytes =>
                {
                    b.push(i);
                    bytes += size;
                }
                _ => {
                    out.push(vec![i]);
                    bytes = size;
                }
            }
            last_alone = this_alone;
        }
        out
    }
}

/// Sends bulk requests.
struct Sender {
    client: reqwest::Client,
    url: Url,
    server: Server,
}

impl Sender {
    async fn bulk(
        &self,
        actions: &[Action],
        batch: &[usize],
    ) -> std::result::Result<Vec<Outcome>, Failure> {
        let size = batch.iter().map(|&i| actions[i].lines.len()).sum();
        let mut body = Vec::with_capacity(size);
        for &i in batch {
            body.extend_from_slice(&actions[i].lines);
        }
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, self.server.ndjson.clone())
            .header(ACCEPT, self.server.json.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| Failure {
                retry: true,
                // Refused connections never reached the server; anything later may have.
                unknown: !e.is_connect(),
                too_large: false,
                reason: describe(&e.without_url()),
            })?;
        let status = response.status();
        let reply = response.bytes().await.map_err(|e| Failure {
            retry: true,
            unknown: true,
            too_large: false,
            reason: format!("reading the answer: {}", describe(&e.without_url())),
        })?;
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Err(Failure {
                retry: true,
                unknown: false,
                too_large: true,
                reason: format!(
                    "the server refused a request of {size} bytes as too large (413; its http.max_content_length)"
                ),
            });
        }
        if !status.is_success() {
            return Err(Failure {
                retry: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
                unknown: false,
                too_large: false,
                reason: answer_reason(status, &reply),
            });
        }
        bulk::outcomes(&reply, batch.len()).map_err(|reason| Failure {
            retry: true,
            unknown: false,
            too_large: false,
            reason,
        })
    }
}

/// A failed answer: its status and the start of its body (the server's reason).
fn answer_reason(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (check username and password, or api-key)",
        StatusCode::FORBIDDEN => " (the credentials lack a privilege the sink needs)",
        _ => "",
    };
    if text.trim().is_empty() {
        format!("the server answered {status}{hint}")
    } else {
        format!("the server answered {status}{hint}: {}", text.trim())
    }
}

/// What the root answer says the server is, and the content types to use with it.
fn server(root: &[u8]) -> std::result::Result<Server, String> {
    let v: Value = serde_json::from_slice(root)
        .map_err(|e| format!("the answer is not an Elasticsearch root document: {e}"))?;
    let number = v["version"]["number"]
        .as_str()
        .ok_or("the answer has no version.number; is this Elasticsearch or OpenSearch?")?;
    let opensearch = v["version"]["distribution"].as_str() == Some("opensearch");
    let major: u32 = number
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("version '{number}' has no major number"))?;
    let plain = |t: &'static str| HeaderValue::from_static(t);
    // Elasticsearch 8+ answers in its own major's format when asked; 7 and OpenSearch know
    // only the plain types (OpenSearch refuses the vendor type with 406).
    let (json, ndjson) = if !opensearch && major >= 8 {
        let vendor = |kind: &str| {
            HeaderValue::from_str(&format!(
                "application/vnd.elasticsearch+{kind}; compatible-with={major}"
            ))
            .map_err(|e| e.to_string())
        };
        (vendor("json")?, vendor("x-ndjson")?)
    } else {
        (plain("application/json"), plain("application/x-ndjson"))
    };
    Ok(Server {
        name: format!(
            "{} {number}",
            if opensearch {
                "OpenSearch"
            } else {
                "Elasticsearch"
            }
        ),
        json,
        ndjson,
    })
}

fn dead_letter(a: &Action, reason: String) -> Rejected {
    Rejected::record(&a.topic, a.partition, a.offset, a.raw.as_deref(), reason)
}

impl Sink for ElasticsearchSink {
    /// Connects: asks the server what it is (for its content types) and applies the index
    /// template (idempotent). Buffers start over.
    fn open(&mut self, _schema: Option<&sluice_log::RecordSchema>) -> Result<()> {
        self.pending.clear();
        self.pending_bytes = 0;
        self.since = None;
        self.next.clear();
        self.refused.clear();
        self.connect()
    }

    fn watch_stop(&mut self, stop: &StopToken) {
        self.stop = Some(stop.clone());
    }

    fn write(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        for r in records {
            match self.action(r) {
                Ok(Some(a)) => {
                    self.pending_bytes += a.lines.len();
                    self.pending.push(a);
                    self.since.get_or_insert_with(Instant::now);
                }
                Ok(None) => {}
                Err(reason) => rejected.push(Rejected::record(
                    &r.topic,
                    r.partition,
                    r.offset,
                    r.value.as_deref(),
                    reason,
                )),
            }
            self.next.insert(r.partition, r.offset + 1);
        }
        if self.round_due() {
            rejected.extend(self.round()?);
        }
        Ok(rejected)
    }

    fn flush(&mut self) -> Result<Durable> {
        let refused = self.round()?;
        self.refused.extend(refused);
        Ok(self.next.clone())
    }

    fn take_refused(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_decides_the_content_types() {
        let es8 = server(br#"{"version":{"number":"8.15.3"}}"#).unwrap();
        assert_eq!(es8.name, "Elasticsearch 8.15.3");
        assert_eq!(
            es8.ndjson,
            "application/vnd.elasticsearch+x-ndjson; compatible-with=8"
        );
        let es7 = server(br#"{"version":{"number":"7.17.1"}}"#).unwrap();
        assert_eq!(es7.json, "application/json");
        let os = server(br#"{"version":{"number":"3.8.0","distribution":"opensearch"}}"#).unwrap();
        assert_eq!(os.name, "OpenSearch 3.8.0");
        assert_eq!(os.ndjson, "application/x-ndjson");
        assert!(
            server(b"<html>")
                .unwrap_err()
                .contains("not an Elasticsearch")
        );
        assert!(server(b"{}").unwrap_err().contains("version.number"));
    }

    fn config(extra: &[(&str, Value)]) -> ElasticsearchSinkConfig {
        let mut c = serde_json::json!({"url": "http://127.0.0.1:1", "index": "i"});
        for (k, v) in extra {
            c[*k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn settings_are_checked_and_secrets_never_shown() {
        let base = Path::new(".");
        let e = ElasticsearchSink::new(
            config(&[("api-key", "s3cret".into()), ("username", "u".into())]),
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both") && !e.contains("s3cret"), "{e}");
        let e = ElasticsearchSink::new(config(&[("batch-records", 0.into())]), base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch-records must be positive"), "{e}");
        let c = config(&[("username", "u".into()), ("password", "s3cret".into())]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("(redacted)"),
            "{shown}"
        );
        let sink = ElasticsearchSink::new(c, base).unwrap();
        assert!(!format!("{sink:?}").contains("s3cret"));
        let mut c = config(&[]);
        c.url = "http://u:s3cret@127.0.0.1:1".into();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn batches_respect_records_and_bytes() {
        let mut c = config(&[("batch-records", 3.into()), ("batch-bytes", 100.into())]);
        c.max_in_flight = 1;
        let sink = ElasticsearchSink::new(c, Path::new(".")).unwrap();
        let action = |n: usize| Action {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            doc: ("i".into(), n.to_string()),
            lines: vec![b'x'; n],
            raw: None,
        };
        let actions: Vec<Action> = [10, 10, 10, 10, 90, 20, 200, 5].map(action).into();
        let all: Vec<usize> = (0..actions.len()).collect();
        assert_eq!(
            sink.batches(&actions, &all, &HashSet::new()),
            vec![vec![0, 1, 2], vec![3, 4], vec![5], vec![6], vec![7]]
        );
        assert_eq!(
            sink.batches(&actions[..4], &[0, 1, 2, 3], &HashSet::from([1])),
            vec![vec![0], vec![1], vec![2, 3]]
        );
    }
}
