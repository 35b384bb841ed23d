//! The HTTP ingest source: the worker's `POST /ingest/{topic}` endpoint hands each request
//! body to this source through an [`IngestHandle`]; the source turns it into records, and the
//! request is answered only after the log transaction holding them committed.
//!
//! ```text
//!  client ─► POST /ingest/rides ─► IngestHandle::submit ─► (bounded queue) ─► IngestSource::poll
//!     ▲                                                                         │ txn{records, position}
//!     └──── 200 {accepted, rejected} ◄── reply ◄── Source::committed ◄──────────┘
//! ```
//!
//! Bodies are `application/json` (one object or an array of them) or
//! `application/x-ndjson` (one JSON value per line; bad lines become dead letters). A
//! request may carry an `Idempotency-Key`: the keys of the last `idempotency-keys` accepted
//! requests are kept as the source's keyed state, a ring of that many slots (each new key
//! overwrites the slot of the key it makes the source forget, committed with the records),
//! so a client retrying a request
//! whose answer it lost gets `duplicate: true` and nothing is written twice, across worker
//! restarts too. A retry that arrives while its original is still uncommitted waits for the
//! original's commit: `duplicate: true` always means "committed".
//!
//! Each body is parsed once: an `application/json` document when it is submitted (the
//! endpoint answers 400 for one that does not parse, and the source takes the parsed tree),
//! an NDJSON line by the source. Records hold each item re-serialized compactly (written, not
//! parsed again); the key field is read from the same tree.
//!
//! The answer travels back on a `tokio::sync::oneshot` channel: the endpoint awaits it
//! without holding a thread, so many requests can wait for one commit at no cost. The
//! source's own thread only ever `send`s on it, which never blocks.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tokio::sync::oneshot;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_log::Record;

use crate::{ConnectorError, Rejected, Result, Source, SourceBatch, StateEntries, Wait};

/// The HTTP ingest source's settings.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpIngestConfig {
    /// For JSON objects: the field whose value becomes the record key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// A token clients must send as `Authorization: Bearer <token>` (use `${VAR}`); default:
    /// none (the worker's API token, if set, still applies).
    #[serde(default)]
    pub token: Option<String>,
    /// The largest request body accepted, in bytes; larger ones get 413 (default 16 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How many of the latest accepted `Idempotency-Key`s are remembered (default 1000).
    #[serde(default = "default_idempotency_keys")]
    pub idempotency_keys: usize,
}

impl std::fmt::Debug for HttpIngestConfig {
    /// Without the token's value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpIngestConfig")
            .field("key_field", &self.key_field)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("idempotency_keys", &self.idempotency_keys)
            .finish()
    }
}

fn default_max_body_bytes() -> usize {
    16 << 20
}

fn default_idempotency_keys() -> usize {
    1000
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestAck {
    /// Records written (committed) to the topic.
    pub accepted: usize,
    /// Lines sent to the dead-letter topic.
    pub rejected: usize,
    /// The request's idempotency key was seen before: nothing was written again.
    pub duplicate: bool,
}

/// Why a request was refused before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not what its content type says (answered 400).
    #[error("{0}")]
    BadRequest(String),
    /// The source's queue is full (answered 503; retry later).
    #[error("the ingest queue of topic '{0}' is full; retry later")]
    Busy(String),
    /// The source stopped or its transaction failed before committing (answered 503; retry
    /// with the same idempotency key).
    #[error("the records of this request were not committed; retry the request")]
    NotCommitted,
}

/// Where a request's answer goes: sent once, at commit (or dropped, which the waiting
/// side reads as "not committed").
type Reply = oneshot::Sender<std::result::Result<IngestAck, IngestError>>;

/// The endpoint's side of a submitted request: resolves once its records committed (`Ok`),
/// or when the source refused or dropped it (an `Err` from the channel means "not
/// committed": the task restarted or stopped). Cancel safe: dropping it leaves the request
/// to commit unobserved.
pub type IngestAnswer = oneshot::Receiver<std::result::Result<IngestAck, IngestError>>;

/// A request waiting for its records to commit.
#[derive(Debug)]
struct Request {
    body: Body,
    key: Option<String>,
    reply: Reply,
}

/// A request body as the source takes it.
#[derive(Debug)]
enum Body {
    /// `application/x-ndjson`: lines, each parsed (once) by the source; a bad line is a dead
    /// letter, the others are records.
    Lines(Bytes),
    /// `application/json`: the document, checked when it was submitted; an array's items
    /// are records.
    Document(Bytes),
}

/// One item of a body: its number, and its bytes as sent (each record's value: fields keep
/// the order the client wrote them in) or why it is not JSON with its raw bytes (for a
/// dead letter).
type Item<'a> = (
    usize,
    std::result::Result<Cow<'a, [u8]>, (String, &'a [u8])>,
);

/// The key of a record from its top-level field `field` (a string as its text, other JSON
/// as written, null or absent as no key).
fn key_of(value: &[u8], field: &str) -> Option<Bytes> {
    let raw = sluice_format::json::top_level_fields(value, &[field])?
        .pop()
        .flatten()?;
    match serde_json::from_slice::<serde_json::Value>(raw).ok()? {
        serde_json::Value::String(s) => Some(Bytes::from(s)),
        serde_json::Value::Null => None,
        other => Some(Bytes::from(other.to_string())),
    }
}

/// The endpoint's side: submits request bodies to the source.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    topic: String,
    config: HttpIngestConfig,
    queue: SyncSender<Request>,
}

impl IngestHandle {
    /// The source's settings (token, body limit).
    pub fn config(&self) -> &HttpIngestConfig {
        &self.config
    }

    /// Hands a body over without blocking; the returned [`IngestAnswer`] resolves once its
    /// records committed (or why not). `ndjson`: one JSON value per line; otherwise one JSON
    /// document.
    pub fn submit(
        &self,
        body: Bytes,
        ndjson: bool,
        key: Option<String>,
    ) -> std::result::Result<IngestAnswer, IngestError> {
        let body = if ndjson {
            Body::Lines(body)
        } else {
            // A document that does not parse is the client's to fix: refuse it whole (checked
            // without building it; the source splits an array into its items' bytes).
            sluice_format::json::validate(&body)
                .map_err(|e| IngestError::BadRequest(format!("body is not JSON: {e}")))?;
            Body::Document(body)
        };
        let (reply, answer) = oneshot::channel();
        let request = Request { body, key, reply };
        match self.queue.try_send(request) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(IngestError::Busy(self.topic.clone())),
            Err(TrySendError::Disconnected(_)) => Err(IngestError::NotCommitted),
        }
    }
}

/// The source the worker's ingest task polls.
#[derive(Debug)]
pub struct IngestSource {
    topic: String,
    config: HttpIngestConfig,
    queue: Receiver<Request>,
    /// Accepted idempotency keys with their sequence numbers, oldest first (the committed
    /// state plus what is polled); at most `idempotency-keys` of them.
    keys: VecDeque<(String, u64)>,
    /// The keys of `keys`, for lookups.
    known: HashSet<String>,
    /// Keys of requests whose records are polled but not committed: a retry of one of them
    /// is answered only once the original committed.
    pending: HashSet<String>,
    /// The sequence number the next accepted key gets (the position).
    next_seq: u64,
    /// Entries handed to `restore`, read by `open`.
    restored: StateEntries,
    /// State changes not yet handed out in a batch (keys dropped while restoring).
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Requests whose records are in polled, not yet committed batches, and retries waiting
    /// for them.
    waiting: Vec<(Reply, IngestAck)>,
    /// A request taken from the queue that did not fit the last batch.
    held: Option<Request>,
}

/// Requests waiting in the queue before new ones get 503.
const QUEUE: usize = 64;

/// The most `idempotency-keys` a source may remember (they are held in memory).
pub const MAX_IDEMPOTENCY_KEYS: usize = 1_000_000;

/// The answer to a retry of an accepted request.
const DUPLICATE: IngestAck = IngestAck {
    accepted: 0,
    rejected: 0,
    duplicate: true,
};

impl IngestSource {
    /// A source for `topic` and the handle the endpoint submits to.
    pub fn new(topic: &str, config: HttpIngestConfig) -> Result<(IngestSource, IngestHandle)> {
        if config.max_body_bytes == 0 {
            return Err(ConnectorError::Config(
                "max-body-bytes must be positive".into(),
            ));
        }
        if config.idempotency_keys > MAX_IDEMPOTENCY_KEYS {
            return Err(ConnectorError::Config(format!(
                "idempotency-keys must be at most {MAX_IDEMPOTENCY_KEYS} (they are kept in memory)"
            )));
        }
        let (tx, rx) = sync_channel(QUEUE);
        Ok((
            IngestSource {
                topic: topic.to_string(),
                config: config.clone(),
                queue: rx,
                keys: VecDeque::new(),
                known: HashSet::new(),
                pending: HashSet::new(),
                next_seq: 0,
                restored: Vec::new(),
                changes: Vec::new(),
                waiting: Vec::new(),
                held: None,
            },
            IngestHandle {
                topic: topic.to_string(),
                config,
                queue: tx,
            },
        ))
    }

    /// Turns one request into records and dead letters.
    fn records(&self, r: &Request, id: usize, batch: &mut SourceBatch) -> IngestAck {
        let mut ack = IngestAck {
            accepted: 0,
            rejected: 0,
            duplicate: false,
        };
        // Each record's value is its bytes as the client sent them (on one line), so the
        // fields keep their order; nothing is parsed into a tree.
        let values: Vec<Item<'_>> = match &r.body {
            Body::Lines(body) => body
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, l)| !l.iter().all(|b| b.is_ascii_whitespace()))
                .map(|(i, l)| {
                    let l = l.trim_ascii();
                    let v = match sluice_format::json::validate(l) {
                        Ok(_) => Ok(Cow::Borrowed(l)),
                        Err(e) => Err((format!("not JSON: {e}"), l)),
                    };
                    (i + 1, v)
                })
                .collect(),
            Body::Document(body) if body.trim_ascii_start().first() == Some(&b'[') => {
                match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
                    Ok(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let v = v.get().as_bytes();
                            let one_line = if v.iter().any(|b| matches!(b, b'\n' | b'\r')) {
                                Cow::Owned(sluice_format::json::one_line(v))
                            } else {
                                Cow::Borrowed(v)
                            };
                            (i + 1, Ok(one_line))
                        })
                        .collect(),
                    Err(e) => vec![(1, Err((format!("not JSON: {e}"), &body[..])))],
                }
            }
            Body::Document(body) => vec![(
                1,
                Ok(Cow::Owned(sluice_format::json::one_line(body.trim_ascii()))),
            )],
        };
        let now = sluice_log::record::now_ms();
        for (n, v) in values {
            let origin = format!("POST /ingest/{} request {id} item {n}", self.topic);
            match v {
                Ok(v) => {
                    let key = self.config.key_field.as_deref().and_then(|f| key_of(&v, f));
                    batch.records.push(Record {
                        key,
                        value: Some(Bytes::from(v.into_owned())),
                        headers: Vec::new(),
                        timestamp: now,
                    });
                    ack.accepted += 1;
                }
                Err((reason, raw)) => {
                    batch.rejected.push(Rejected {
                        origin,
                        raw: raw.to_vec(),
                        reason,
                        at: None,
                    });
                    ack.rejected += 1;
                }
            }
        }
        ack
    }

    fn position(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "seq": self.next_seq })).unwrap_or_default()
    }

    /// Remembers an accepted key in slot `seq % idempotency-keys`, over the key it makes the
    /// source forget (the oldest): the slots are a ring of fixed size in the compacted
    /// positions topic, so no key leaves a tombstone and compaction keeps exactly one record
    /// per slot. The slot's record commits with the request's records.
    fn remember(&mut self, key: String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.changes.push((
            slot_key(seq, self.config.idempotency_keys),
            Some(slot_value(seq, &key)),
        ));
        self.known.insert(key.clone());
        self.pending.insert(key.clone());
        self.keys.push_back((key, seq));
        while self.keys.len() > self.config.idempotency_keys {
            if let Some((old, _)) = self.keys.pop_front() {
                self.known.remove(&old);
            }
        }
    }
}

/// The state key of the slot holding key number `seq`.
fn slot_key(seq: u64, slots: usize) -> Vec<u8> {
    format!("slot-{}", seq % slots.max(1) as u64).into_bytes()
}

/// A slot's value: the key's number and the key.
fn slot_value(seq: u64, key: &str) -> Vec<u8> {
    format!("{seq} {key}").into_bytes()
}

/// (slot, number, key) of a slot entry; `None` for anything else.
fn parse_slot(k: &[u8], v: &[u8]) -> Option<(u64, u64, String)> {
    let slot = std::str::from_utf8(k)
        .ok()?
        .strip_prefix("slot-")?
        .parse()
        .ok()?;
    let (seq, key) = std::str::from_utf8(v).ok()?.split_once(' ')?;
    Some((slot, seq.parse().ok()?, key.to_string()))
}

impl Source for IngestSource {
    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.restored = entries;
        Ok(())
    }

    fn open(&mut self, position: Option<&[u8]>) -> Result<()> {
        // Requests of batches that never committed are answered "not committed" (their
        // senders drop); clients retry them.
        self.waiting.clear();
        self.pending.clear();
        self.keys.clear();
        self.known.clear();
        self.changes.clear();
        self.next_seq = 0;
        let slots = self.config.idempotency_keys;
        let mut entries: Vec<(u64, String)> = Vec::new();
        for (k, v) in std::mem::take(&mut self.restored) {
            match parse_slot(&k, &v) {
                // `idempotency-keys` shrank: slots past the ring are removed for good.
                Some((slot, _, _)) if slot >= slots as u64 => self.changes.push((k, None)),
                Some((_, seq, key)) => entries.push((seq, key)),
                None => {}
            }
        }
        if let Some(p) = position {
            let v: serde_json::Value =
                serde_json::from_slice(p).map_err(|e| ConnectorError::Position(e.to_string()))?;
            self.next_seq = v["seq"].as_u64().unwrap_or(0);
            // Positions written before keys became state entries held the keys themselves;
            // they go into slots with the next commit, which drops them from the position.
            for k in v["keys"].as_array().into_iter().flatten() {
                if let Some(k) = k.as_str() {
                    if slots > 0 {
                        self.changes.push((
                            slot_key(self.next_seq, slots),
                            Some(slot_value(self.next_seq, k)),
                        ));
                    }
                    entries.push((self.next_seq, k.to_string()));
                    self.next_seq += 1;
                }
            }
        }
        entries.sort();
        let keep = entries.len().saturating_sub(slots);
        for (seq, key) in entries.into_iter().skip(keep) {
            self.next_seq = self.next_seq.max(seq + 1);
            self.known.insert(key.clone());
            self.keys.push_back((key, seq));
        }
        Ok(())
    }

    /// Waits on the request queue, which the worker closes (drops its sender) when it
    /// stops the source, so a stop ends the wait at once.
    fn poll(&mut self, max: usize, wait: &Wait) -> Result<SourceBatch> {
        let mut batch = SourceBatch::default();
        let mut id = 0;
        let mut wait = wait.remaining();
        loop {
            let request = match self.held.take() {
                Some(r) => r,
                None => match self.queue.recv_timeout(wait) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            // After the first request, take only what is already queued.
            wait = Duration::ZERO;
            if let Some(k) = &request.key {
                if self.pending.contains(k) {
                    // The original is not committed yet: answering now would claim records
                    // a crash can still lose. The retry is answered with the original's commit
                    // (or refused with it, and then retried again).
                    self.waiting.push((request.reply, DUPLICATE));
                    continue;
                }
                if self.known.contains(k) {
                    let _ = request.reply.send(Ok(DUPLICATE));
                    continue;
                }
            }
            if !batch.records.is_empty() && batch.records.len() >= max {
                self.held = Some(request);
                break;
            }
            id += 1;
            let ack = self.records(&request, id, &mut batch);
            if let Some(k) = request.key {
                if self.config.idempotency_keys > 0 {
                    self.remember(k);
                }
            }
            self.waiting.push((request.reply, ack));
        }
        if !self.waiting.is_empty() || !self.changes.is_empty() {
            batch.position = Some(self.position());
            batch.state = std::mem::take(&mut self.changes);
        }
        Ok(batch)
    }

    fn committed(&mut self) {
        self.pending.clear();
        for (reply, ack) in self.waiting.drain(..) {
            let _ = reply.send(Ok(ack));
        }
    }

    fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> HttpIngestConfig {
        HttpIngestConfig {
            key_field: Some("id".into()),
            token: None,
            max_body_bytes: 1 << 20,
            idempotency_keys: 2,
        }
    }

    #[test]
    fn requests_are_answered_only_after_commit() {
        let (mut s, h) = IngestSource::new("t", config()).unwrap();
        s.open(None).unwrap();
        let mut answer = h
            .submit(
                Bytes::from("{\"id\": 1}\nnope\n{\"id\": \"b\"}\n"),
                true,
                None,
            )
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.records[1].key.as_deref(), Some(&b"b"[..]));
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].origin.ends_with("item 2"), "{:?}", b.rejected);
        assert!(answer.try_recv().is_err(), "no answer before the commit");
        s.committed();
        assert_eq!(
            answer.blocking_recv().unwrap().unwrap(),
            IngestAck {
                accepted: 2,
                rejected: 1,
                duplicate: false
            }
        );
    }

    /// What the worker keeps of a source: the committed position and keyed state.
    #[derive(Default)]
    struct Committed {
        position: Option<Vec<u8>>,
        state: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        tombstones: usize,
    }

    impl Committed {
        fn commit(&mut self, s: &mut IngestSource, b: SourceBatch) {
            if let Some(p) = b.position {
                self.position = Some(p);
            }
            for (k, v) in b.state {
                match v {
                    Some(v) => self.state.insert(k, v),
                    None => {
                        self.tombstones += 1;
                        self.state.remove(&k)
                    }
                };
            }
            s.committed();
        }

        fn reopen(&self, s: &mut IngestSource) {
            s.restore(self.state.clone().into_iter().collect()).unwrap();
            s.open(self.position.as_deref()).unwrap();
        }
    }

    #[test]
    fn a_retry_racing_its_original_is_answered_only_after_the_commit() {
        let (mut s, h) = IngestSource::new("t", config()).unwrap();
        let mut c = Committed::default();
        c.reopen(&mut s);
        let original = h
            .submit(Bytes::from("{\"id\": 1}"), false, Some("k".into()))
            .unwrap();
        let mut retry = h
            .submit(Bytes::from("{\"id\": 1}"), false, Some("k".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(b.records.len(), 1);
        assert!(
            retry.try_recv().is_err(),
            "no duplicate answer before the original committed"
        );
        // The worker dies before the commit: both are refused, the client retries.
        c.reopen(&mut s);
        assert!(original.blocking_recv().is_err());
        assert!(retry.blocking_recv().is_err());
        let again = h
            .submit(Bytes::from("{\"id\": 1}"), false, Some("k".into()))
            .unwrap();
        let mut dup = h
            .submit(Bytes::from("{\"id\": 1}"), false, Some("k".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(b.records.len(), 1, "written once");
        assert!(dup.try_recv().is_err());
        c.commit(&mut s, b);
        assert_eq!(again.blocking_recv().unwrap().unwrap().accepted, 1);
        assert!(dup.blocking_recv().unwrap().unwrap().duplicate);
    }

    #[test]
    fn keys_are_a_ring_of_slots_that_leaves_no_tombstones() {
        let (mut s, h) = IngestSource::new("t", config()).unwrap();
        let mut c = Committed::default();
        c.reopen(&mut s);
        for k in ["a", "b", "c"] {
            let r = h.submit(Bytes::from("{}"), false, Some(k.into())).unwrap();
            let b = s
                .poll(100, &Wait::timeout(Duration::from_millis(100)))
                .unwrap();
            assert!(b.position.as_ref().unwrap().len() < 32, "a small position");
            c.commit(&mut s, b);
            r.blocking_recv().unwrap().unwrap();
        }
        let slots: Vec<(&[u8], &[u8])> = c.state.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            slots,
            [(&b"slot-0"[..], &b"2 c"[..]), (b"slot-1", b"1 b")],
            "two keys remembered; c took a's slot"
        );
        assert_eq!(c.tombstones, 0, "forgetting a key writes nothing");
        // A restart with a smaller limit forgets the oldest for good.
        let (mut s, h) = IngestSource::new(
            "t",
            HttpIngestConfig {
                idempotency_keys: 1,
                ..config()
            },
        )
        .unwrap();
        c.reopen(&mut s);
        let r = h
            .submit(Bytes::from("{}"), false, Some("c".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert!(b.records.is_empty());
        c.commit(&mut s, b);
        assert!(r.blocking_recv().unwrap().unwrap().duplicate);
        assert_eq!(c.state.len(), 1);
        // An old position that still lists its keys is understood, and its keys become
        // state entries with the next commit.
        let (mut s, h) = IngestSource::new("t", config()).unwrap();
        let mut c = Committed {
            position: Some(br#"{"keys": ["x"]}"#.to_vec()),
            ..Committed::default()
        };
        c.reopen(&mut s);
        let r = h
            .submit(Bytes::from("{}"), false, Some("x".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        c.commit(&mut s, b);
        assert!(r.blocking_recv().unwrap().unwrap().duplicate);
        c.reopen(&mut s);
        let r = h
            .submit(Bytes::from("{}"), false, Some("x".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert!(b.records.is_empty());
        assert!(
            r.blocking_recv().unwrap().unwrap().duplicate,
            "still known after the next restart"
        );
    }

    #[test]
    fn idempotency_keys_survive_a_restart_and_uncommitted_requests_are_refused() {
        let (mut s, h) = IngestSource::new("t", config()).unwrap();
        let mut c = Committed::default();
        c.reopen(&mut s);
        let a = h
            .submit(
                Bytes::from("[{\"id\": 1}, {\"id\": 2}]"),
                false,
                Some("k1".into()),
            )
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(b.records.len(), 2);
        c.commit(&mut s, b);
        assert!(!a.blocking_recv().unwrap().unwrap().duplicate);
        // An uncommitted request: the task restarts before its commit.
        let lost = h
            .submit(Bytes::from("{\"id\": 3}"), false, Some("k2".into()))
            .unwrap();
        s.poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        c.reopen(&mut s);
        assert!(
            lost.blocking_recv().is_err(),
            "the client learns it must retry"
        );
        let again = h
            .submit(Bytes::from("{\"id\": 1}"), false, Some("k1".into()))
            .unwrap();
        let retry = h
            .submit(Bytes::from("{\"id\": 3}"), false, Some("k2".into()))
            .unwrap();
        let b = s
            .poll(100, &Wait::timeout(Duration::from_millis(100)))
            .unwrap();
        assert_eq!(b.records.len(), 1, "k1 was committed, k2 was not");
        assert!(again.blocking_recv().unwrap().unwrap().duplicate);
        c.commit(&mut s, b);
        assert_eq!(retry.blocking_recv().unwrap().unwrap().accepted, 1);
        assert!(matches!(
            h.submit(Bytes::from("{oops"), false, None),
            Err(IngestError::BadRequest(m)) if m.contains("not JSON")
        ));
    }
}
