//! The HTTP sink: records go to a URL as requests, one record per request or batches (a
//! JSON array or NDJSON) of one partition's records, in offset order per partition and
//! several partitions at once. Each request carries an `Idempotency-Key` naming its
//! partition and offsets, the same each time those records are sent, so a receiver can
//! drop replays. Answers decide each batch: 2xx done; 5xx, 429, 409 (a request with the key
//! still in progress), 408 (and timeouts and refused connections) sent again with backoff; another 4xx sends the batch again record
//! by record, and the records the receiver still refuses become dead letters with its answer.
//!
//! Batches are cut by `batch-records` and `batch-bytes` counted from the last commit, so a
//! replay after a crash cuts full batches where the first attempt did and sends them with
//! the same keys. A batch cut by `linger` (records trickling in) is sent when it is that
//! old; if the attempt that sent it ends before the commit after it (the worker dies in
//! those milliseconds, or another request of the round fails for good), the replay sends its
//! records again in a batch that may hold more records, under another key.
//! A receiver that must see each record once in that case too uses `envelope = true` and
//! drops records by partition and offset.
//!
//! A record's JSON is parsed once, to check it (and put it on one line).
//!
//! # Layout
//!
//! - [`config`]: the settings ([`HttpSinkConfig`]).
//! - this file: batching, requests, retries, dead letters.

pub mod config;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use sluice_format::lines;
use sluice_log::ConsumerRecord;

pub use self::config::HttpSinkConfig;
use self::config::{BodyFormat, Method};
use crate::http_client::{self, Retry, describe, redact_url};
use crate::{ConnectorError, Durable, Rejected, Result, Sink, StopToken};

/// One record as a body item.
#[derive(Debug, Clone)]
struct Item {
    offset: i64,
    /// Its JSON, on one line.
    json: Vec<u8>,
    /// The record value, for a dead letter.
    raw: Option<Bytes>,
}

/// Records of one partition sent in one request.
#[derive(Debug)]
struct Batch {
    topic: Arc<str>,
    partition: u32,
    items: Vec<Item>,
    bytes: usize,
    /// When its first record came (for `linger`).
    since: Instant,
}

impl Batch {
    fn first(&self) -> i64 {
        self.items.first().map_or(0, |i| i.offset)
    }

    /// `<topic>-<partition>-<first offset>-<last offset>-<hash of the body>`: the same for
    /// the same records sent the same way, another for other records at the same offsets (a
    /// topic deleted and created again, or another sink's format), so a receiver never
    /// drops new records as replays.
    fn key(&self, body: &[u8]) -> String {
        let last = self.items.last().map_or(0, |i| i.offset);
        format!(
            "{}-{}-{}-{last}-{:016x}",
            self.topic,
            self.partition,
            self.first(),
            crate::fnv1a(body)
        )
    }

    /// The body in `format`.
    fn body(&self, format: BodyFormat) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes + self.items.len() + 2);
        match format {
            BodyFormat::Single => {
                for i in &self.items {
                    body.extend_from_slice(&i.json);
                }
            }
            BodyFormat::Array => {
                body.push(b'[');
                for (n, i) in self.items.iter().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&i.json);
                }
                body.push(b']');
            }
            BodyFormat::Ndjson => {
                for i in &self.items {
                    body.extend_from_slice(&i.json);
                    body.push(b'\n');
                }
            }
        }
        body
    }
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The batch being filled.
    open: Option<Batch>,
    /// Full batches not sent yet, in offset order.
    ready: VecDeque<Batch>,
    /// The offset after the last record given.
    next: i64,
}

impl PartitionState {
    fn durable(&self) -> i64 {
        self.ready
            .front()
            .or(self.open.as_ref())
            .map_or(self.next, Batch::first)
    }
}

/// What became of one request.
enum Answer {
    Done,
    /// Worth sending again later: the reason.
    Busy(String),
    /// The receiver refuses what was sent: the reason.
    Refused(String),
    /// The sink cannot go on (credentials, a wrong URL): the reason.
    Fatal(String),
}

/// Sends records to an HTTP endpoint.
pub struct HttpSink {
    config: HttpSinkConfig,
    url: Url,
    shown: String,
    client: reqwest::Client,
    content_type: HeaderValue,
    /// Owned because the trait is synchronous; one thread drives the requests, which are IO.
    runtime: tokio::runtime::Runtime,
    partitions: BTreeMap<u32, PartitionState>,
    /// Records a round in `flush` found the receiver refuses.
    refused: Vec<Rejected>,
    /// The task's stop token: it ends waits between retries.
    stop: Option<StopToken>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("config", &self.config)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// A sink for `config`; a relative `tls-ca-file` is resolved against `base`.
    pub fn new(config: HttpSinkConfig, base: &Path) -> Result<HttpSink> {
        let url = http_client::http_url(&config.url)?;
        let shown = redact_url(&config.url);
        let bad = |why: String| ConnectorError::Config(format!("http sink {shown}: {why}"));
        http_client::check_delivery(
            config.batch_records,
            config.batch_bytes,
            config.max_in_flight,
            config.request_timeout.0,
            config.retry_timeout.0,
            config.retry_backoff.0,
        )
        .map_err(bad)?;
        let headers = http_client::header_map(&config.headers)?;
        let cas = match &config.tls_ca_file {
            Some(file) => http_client::read_ca(&base.join(file))?,
            None => Vec::new(),
        };
        let client = http_client::client(config.request_timeout.0, headers, &cas)?;
        let content_type = HeaderValue::from_static(match config.format {
            BodyFormat::Ndjson => "application/x-ndjson",
            BodyFormat::Single | BodyFormat::Array => "application/json",
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::io("start a runtime for", shown.clone(), e))?;
        Ok(HttpSink {
            config,
            url,
            shown,
            client,
            content_type,
            runtime,
            partitions: BTreeMap::new(),
            refused: Vec::new(),
            stop: None,
        })
    }

    fn limit(&self) -> usize {
        match self.config.format {
            BodyFormat::Single => 1,
            BodyFormat::Array | BodyFormat::Ndjson => self.config.batch_records,
        }
    }

    /// The record as a body item, `Ok(None)` for a skipped tombstone, or why it cannot be
    /// sent.
    fn item(&self, r: &ConsumerRecord) -> std::result::Result<Option<Item>, String> {
        let json = if self.config.envelope {
            Some(lines::envelope(r))
        } else {
            lines::json_value(r)?
        };
        Ok(json.map(|json| Item {
            offset: r.offset,
            json,
            raw: r.value.clone(),
        }))
    }

    /// Sends the full batches, and those older than `linger`; returns the refused records.
    fn round(&mut self) -> Result<Vec<Rejected>> {
        let linger = self.config.linger.0;
        let mut lanes: Vec<Vec<Batch>> = Vec::new();
        for state in self.partitions.values_mut() {
            let mut lane: Vec<Batch> = state.ready.drain(..).collect();
            if state
                .open
                .as_ref()
                .is_some_and(|b| b.since.elapsed() >= linger)
            {
                lane.extend(state.open.take());
            }
            if !lane.is_empty() {
                lanes.push(lane);
            }
        }
        if lanes.is_empty() {
            return Ok(Vec::new());
        }
        let this = &*self;
        let results: Vec<Result<Vec<Rejected>>> = self.runtime.block_on(
            futures::stream::iter(lanes)
                .map(|lane| async move {
                    let mut refused = Vec::new();
                    for batch in lane {
                        refused.extend(this.send(&batch).await?);
                    }
                    Ok(refused)
                })
                .buffer_unordered(self.config.max_in_flight)
                .collect(),
        );
        let mut refused = Vec::new();
        for r in results {
            refused.extend(r?);
        }
        Ok(refused)
    }

    /// Sends one batch until the receiver takes it; a batch it refuses goes again record
    /// by record. Returns the records refused alone.
    async fn send(&self, batch: &Batch) -> Result<Vec<Rejected>> {
        match self.deliver(batch).await? {
            None => Ok(Vec::new()),
            Some(reason) if batch.items.len() == 1 => Ok(vec![self.dead_letter(batch, reason)]),
            Some(_) => {
                let mut refused = Vec::new();
                for item in &batch.items {
                    let alone = Batch {
                        topic: batch.topic.clone(),
                        partition: batch.partition,
                        bytes: item.json.len(),
                        items: vec![item.clone()],
                        since: batch.since,
                    };
                    if let Some(reason) = self.deliver(&alone).await? {
                        refused.push(self.dead_letter(&alone, reason));
                    }
                }
                Ok(refused)
            }
        }
    }

    /// Sends one request, retrying what may pass; `Some(reason)` when the receiver refuses it.
    async fn deliver(&self, batch: &Batch) -> Result<Option<String>> {
        let body = batch.body(self.config.format);
        let key = batch.key(&body);
        let mut retry: Option<Retry> = None;
        loop {
            let reason = match self.request(body.clone(), &key).await {
                Answer::Done => return Ok(None),
                Answer::Refused(reason) => return Ok(Some(reason)),
                Answer::Fatal(reason) => return Err(self.error(reason)),
                Answer::Busy(reason) => reason,
            };
            let schedule = retry.get_or_insert_with(|| {
                Retry::new(
                    self.config.retry_backoff.0,
                    self.config.retry_timeout.0,
                    self.stop.as_ref(),
                )
            });
            let Some(delay) = schedule.next_delay() else {
                let why = schedule.ended();
                return Err(self.error(format!(
                    "request {key} was not taken when {why}; last answer: {reason}"
                )));
            };
            tracing::debug!(url = %self.shown, key = %key, ?delay, reason = %reason, "A request is sent again.");
            http_client::pause(delay, self.stop.as_ref()).await;
        }
    }

    async fn request(&self, body: Vec<u8>, key: &str) -> Answer {
        let method = match self.config.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let sent = self
            .client
            .request(method, self.url.clone())
            .header(CONTENT_TYPE, self.content_type.clone())
            .header("Idempotency-Key", key)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Answer::Busy(describe(&e.without_url())),
        };
        let status = response.status();
        if status.is_success() {
            // Read to the end so the connection can be used again.
            let _ = response.bytes().await;
            return Answer::Done;
        }
        let reply = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&reply[..reply.len().min(512)]);
        let reason = if text.trim().is_empty() {
            format!("the receiver answered {status}")
        } else {
            format!("the receiver answered {status}: {}", text.trim())
        };
        match status {
            // 409: under idempotency keys, a request with this key is still in progress.
            StatusCode::REQUEST_TIMEOUT
            | StatusCode::CONFLICT
            | StatusCode::TOO_EARLY
            | StatusCode::TOO_MANY_REQUESTS => Answer::Busy(reason),
            s if s.is_server_error() => Answer::Busy(reason),
            // What the records cannot change: the sink's settings or the receiver's.
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                Answer::Fatal(format!("{reason} (check the url, method and headers)"))
            }
            s if s.is_client_error() => Answer::Refused(reason),
            _ => Answer::Fatal(reason),
        }
    }

    fn error(&self, reason: String) -> ConnectorError {
        ConnectorError::Http {
            method: match self.config.method {
                Method::Post => "POST",
                Method::Put => "PUT",
            },
            url: self.shown.clone(),
            reason,
        }
    }

    fn dead_letter(&self, batch: &Batch, reason: String) -> Rejected {
        let item = &batch.items[0];
        Rejected::record(
            &batch.topic,
            batch.partition,
            item.offset,
            item.raw.as_deref(),
            reason,
        )
    }
}

impl Sink for HttpSink {
    /// Buffers start over: the attempt replays from committed offsets.
    fn open(&mut self, _schema: Option<&sluice_log::RecordSchema>) -> Result<()> {
        self.partitions.clear();
        self.refused.clear();
        Ok(())
    }

    fn watch_stop(&mut self, stop: &StopToken) {
        self.stop = Some(stop.clone());
    }

    fn write(&mut self, records: &[ConsumerRecord]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        let (limit, max_bytes) = (self.limit(), self.config.batch_bytes);
        for r in records {
            let item = self.item(r);
            let state = self.partitions.entry(r.partition).or_default();
            state.next = r.offset + 1;
            let item = match item {
                Ok(Some(item)) => item,
                Ok(None) => continue,
                Err(reason) => {
                    rejected.push(Rejected::record(
                        &r.topic,
                        r.partition,
                        r.offset,
                        r.value.as_deref(),
                        reason,
                    ));
                    continue;
                }
            };
            // Cut before a record that would pass the byte limit, and when the count is
            // reached: boundaries depend on the records alone.
            if state
                .open
                .as_ref()
                .is_some_and(|b| b.bytes + item.json.len() > max_bytes)
            {
                state.ready.extend(state.open.take());
            }
            let batch = state.open.get_or_insert_with(|| Batch {
                topic: r.topic.clone(),
                partition: r.partition,
                items: Vec::new(),
                bytes: 0,
                since: Instant::now(),
            });
            batch.bytes += item.json.len();
            batch.items.push(item);
            if batch.items.len() >= limit {
                state.ready.extend(state.open.take());
            }
        }
        let lingered = self.partitions.values().any(|s| {
            s.open
                .as_ref()
                .is_some_and(|b| b.since.elapsed() >= self.config.linger.0)
        });
        let waiting: usize = self.partitions.values().map(|s| s.ready.len()).sum();
        if lingered || waiting >= self.config.max_in_flight {
            rejected.extend(self.round()?);
        }
        Ok(rejected)
    }

    fn flush(&mut self) -> Result<Durable> {
        let refused = self.round()?;
        self.refused.extend(refused);
        Ok(self
            .partitions
            .iter()
            .map(|(p, s)| (*p, s.durable()))
            .collect())
    }

    fn take_refused(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.refused)
    }
}
