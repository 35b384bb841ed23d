//! The HTTP sink against a receiver started here (axum on loopback): bodies, batches and
//! their idempotency keys, retries of 503s, refused records to the dead-letter topic,
//! credentials from headers, and every record received once (deduplicated by key) after
//! SIGKILLs of a worker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use sluice_connectors::Sink;
use sluice_connectors::http_sink::{HttpSink, HttpSinkConfig};
use sluice_log::{ConsumerRecord, Log, LogOptions, ProducerConfig, Record, TopicPartition};

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Delivery {
    /// The URL's query (the conformance test's environment).
    query: String,
    key: String,
    content_type: String,
    authorization: String,
    body: String,
}

/// What the receiver does: answers 503 to every `busy_every`th request, 400 to a body
/// holding `"bad"`, 401 without `token`; records the requests it takes.
#[derive(Default)]
struct ReceiverState {
    busy_every: u64,
    /// How long each answer takes.
    delay: Duration,
    token: Option<String>,
    requests: AtomicU64,
    busy: AtomicU64,
    taken: Mutex<Vec<Delivery>>,
}

struct Receiver {
    port: u16,
    state: Arc<ReceiverState>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(busy_every: u64, token: Option<&str>) -> Receiver {
        Receiver::start_slow(busy_every, token, Duration::ZERO)
    }

    fn start_slow(busy_every: u64, token: Option<&str>, delay: Duration) -> Receiver {
        let state = Arc::new(ReceiverState {
            busy_every,
            delay,
            token: token.map(str::to_string),
            ..ReceiverState::default()
        });
        let (port, runtime) = crate::common::serve_local(
            axum::Router::new()
                .fallback(receive)
                .with_state(state.clone()),
        );
        Receiver {
            port,
            state,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The requests taken, one per idempotency key (a receiver dropping replays), with how
    /// many were replays.
    fn by_key(&self) -> (BTreeMap<String, Delivery>, usize) {
        self.by_key_in("")
    }

    /// [`Receiver::by_key`] of the requests whose URL had `query`.
    fn by_key_in(&self, query: &str) -> (BTreeMap<String, Delivery>, usize) {
        let taken = self.state.taken.lock();
        let mut out = BTreeMap::new();
        let mut replays = 0;
        for d in taken.iter().filter(|d| d.query == query) {
            if let Some(first) = out.get(&d.key) {
                let first: &Delivery = first;
                assert_eq!(first.body, d.body, "a replay under key {} differs", d.key);
                replays += 1;
            } else {
                out.insert(d.key.clone(), d.clone());
            }
        }
        (out, replays)
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(state.delay).await;
    if state
        .token
        .as_ref()
        .is_some_and(|t| header("authorization") != *t)
    {
        return (StatusCode::UNAUTHORIZED, "who are you");
    }
    if state.busy_every > 0 && n.is_multiple_of(state.busy_every) {
        state.busy.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    let body = String::from_utf8(body.to_vec()).unwrap();
    if body.contains("\"bad\"") {
        return (StatusCode::BAD_REQUEST, "field bad is not allowed");
    }
    state.taken.lock().push(Delivery {
        query: uri.query().unwrap_or_default().to_string(),
        key: header("idempotency-key"),
        content_type: header("content-type"),
        authorization: header("authorization"),
        body,
    });
    (StatusCode::OK, "ok")
}

/// The request whose key starts with `prefix` (`<topic>-<partition>-<first>-<last>-`).
fn delivery<'a>(by_key: &'a BTreeMap<String, Delivery>, prefix: &str) -> Option<&'a Delivery> {
    by_key
        .iter()
        .find(|(k, _)| k.starts_with(prefix))
        .map(|(_, d)| d)
}

fn config(url: &str, extra: Value) -> HttpSinkConfig {
    let mut c = json!({"url": url, "retry-backoff": "5ms"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn record(offset: i64, value: Option<&str>) -> ConsumerRecord {
    ConsumerRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp: offset,
        key: Some(Bytes::from(format!("k{offset}"))),
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: Vec::new(),
    }
}

#[test]
fn the_sink_replays_idempotently() {
    let receiver = Receiver::start(0, None);
    let url = receiver.url();
    // Three environments: the same receiver, told apart by the URL's query.
    sluice_connectors::conformance::sink_replays_are_idempotent(
        &|i| {
            let c = config(
                &format!("{url}?env={i}"),
                json!({"format": "array", "batch-records": 4}),
            );
            Box::new(HttpSink::new(c, Path::new(".")).unwrap())
        },
        &|i| {
            let (by_key, _) = receiver.by_key_in(&format!("env={i}"));
            by_key
                .into_iter()
                .flat_map(|(key, d)| {
                    let values: Vec<Value> = serde_json::from_str(&d.body).unwrap();
                    values
                        .into_iter()
                        .map(move |v| (key.clone(), v.to_string()))
                })
                .collect()
        },
    );
}

#[test]
fn batches_carry_keys_busy_answers_are_retried_and_refused_records_are_dead_letters() {
    let receiver = Receiver::start(3, None);
    let c = config(
        &receiver.url(),
        json!({"format": "array", "batch-records": 3, "max-in-flight": 2, "linger": "0s"}),
    );
    let mut sink = HttpSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    let mut records: Vec<ConsumerRecord> = (0..30)
        .map(|o| record(o, Some(&format!(r#"{{"n": {o}}}"#))))
        .collect();
    records[4].value = Some(Bytes::from(r#"{"bad": 1}"#));
    records[11].value = Some(Bytes::from("not json"));
    records[20].value = None;
    let mut rejected = sink.write(&records).unwrap();
    let durable = sink.flush().unwrap();
    rejected.extend(sink.take_refused());
    rejected.sort_by_key(|r| r.at);
    assert_eq!(durable, BTreeMap::from([(0, 30)]));
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].at, Some((0, 4)));
    assert!(
        rejected[0].reason.contains("400") && rejected[0].reason.contains("field bad"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(rejected[0].raw, br#"{"bad": 1}"#);
    assert_eq!(rejected[1].at, Some((0, 11)));
    assert!(rejected[1].reason.contains("not JSON"));
    let (by_key, _) = receiver.by_key();
    let mut got = BTreeSet::new();
    for (key, d) in &by_key {
        assert_eq!(d.content_type, "application/json");
        let values: Vec<Value> = serde_json::from_str(&d.body).unwrap();
        let offsets: Vec<i64> = values.iter().map(|v| v["n"].as_i64().unwrap()).collect();
        // The key names the partition, the first and last offsets of its records, and a
        // hash of the body.
        let named = format!("t-0-{}-{}-", offsets[0], offsets[offsets.len() - 1]);
        assert!(
            key.starts_with(&named) && key.len() == named.len() + 16,
            "{key}"
        );
        for o in offsets {
            assert!(got.insert(o), "record {o} taken twice");
        }
    }
    let want: BTreeSet<i64> = (0..30).filter(|o| ![4, 11, 20].contains(o)).collect();
    assert_eq!(got, want);
    assert!(receiver.state.busy.load(Ordering::SeqCst) >= 3);
    // The batch holding record 4 was refused, then sent record by record.
    assert!(delivery(&by_key, "t-0-3-3-").is_some() && delivery(&by_key, "t-0-5-5-").is_some());
}

#[test]
fn bodies_headers_and_credentials() {
    let receiver = Receiver::start(0, Some("Bearer s3cret"));
    let c = config(
        &receiver.url(),
        json!({"format": "ndjson", "envelope": true, "linger": "0s", "headers": {"Authorization": "Bearer s3cret"}}),
    );
    assert!(!format!("{c:?}").contains("s3cret"));
    let mut sink = HttpSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    sink.write(&[record(0, Some("{\"a\": 1}")), record(1, None)])
        .unwrap();
    sink.flush().unwrap();
    let (by_key, _) = receiver.by_key();
    let d = delivery(&by_key, "t-0-0-1-").unwrap();
    assert_eq!(d.content_type, "application/x-ndjson");
    assert_eq!(d.authorization, "Bearer s3cret");
    let lines: Vec<Value> = d
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["value"], json!({"a": 1}));
    assert_eq!(lines[1]["offset"], 1);
    assert_eq!(lines[1]["value"], Value::Null);
    // A wrong token: an error naming the answer, never the token; no dead letters.
    let c = config(
        &receiver.url(),
        json!({"headers": {"Authorization": "Bearer wrong-s3cret"}}),
    );
    let mut sink = HttpSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    let e = sink
        .write(&[record(0, Some("{}"))])
        .and_then(|_| sink.flush())
        .unwrap_err();
    let text = e.to_string();
    assert!(e.is_retryable());
    assert!(text.contains("401") && !text.contains("s3cret"), "{text}");
    // Single records: the body is the value, one request each.
    let receiver = Receiver::start(0, None);
    let mut sink = HttpSink::new(
        config(&receiver.url(), json!({"method": "PUT"})),
        Path::new("."),
    )
    .unwrap();
    sink.open(None).unwrap();
    sink.write(&[record(7, Some("{\n \"x\": 1\n}")), record(8, Some("[2]"))])
        .unwrap();
    sink.flush().unwrap();
    let (by_key, _) = receiver.by_key();
    // Put on one line: line breaks between tokens become spaces.
    assert_eq!(delivery(&by_key, "t-0-7-7-").unwrap().body, "{  \"x\": 1 }");
    assert_eq!(delivery(&by_key, "t-0-8-8-").unwrap().body, "[2]");
}

#[test]
fn a_pipeline_delivers_every_record_once_per_key_across_kills() {
    // 40 ms an answer: 80 requests in two lanes take longer than any kill below waits.
    let receiver = Receiver::start_slow(7, None, Duration::from_millis(40));
    let work = tempfile::tempdir().unwrap();
    {
        let log = Log::open(work.path().join("data"), LogOptions::default()).unwrap();
        log.create_topic("events", 2, &[]).unwrap();
        let mut p = log.producer(ProducerConfig::default()).unwrap();
        // 2000 records per partition (the last a marker): whole batches of 50, so no
        // batch waits for `linger`.
        for i in 0..4000u32 {
            let value = if i >= 3998 {
                format!(r#"{{"done": {}}}"#, i % 2)
            } else {
                format!(r#"{{"i": {i}}}"#)
            };
            p.send_to(
                "events",
                i % 2,
                Record {
                    key: None,
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    timestamp: i64::from(i),
                },
            )
            .unwrap();
        }
        p.flush().unwrap();
        drop(p);
        log.close().unwrap();
    }
    let pipelines = work.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::write(
        pipelines.join("hook.toml"),
        format!(
            "commit-interval = \"100ms\"\n[[sinks]]\nname = \"out\"\ntopic = \"events\"\n\
             http = {{ url = \"{}\", format = \"array\", batch-records = 50, linger = \"1h\", max-in-flight = 2, retry-backoff = \"5ms\" }}\n",
            receiver.url()
        ),
    )
    .unwrap();
    let done = || {
        let taken = receiver.state.taken.lock();
        (0..2).all(|p| {
            taken
                .iter()
                .any(|d| d.body.contains(&format!("\"done\": {p}")))
        })
    };
    let mut rng = 0x2545_F491_4F6C_DD1D_u64;
    let rounds = 5;
    let mut interrupted = 0;
    for round in 0..rounds {
        // The last worker dies right after its first flush: every request it made is
        // made again by the next.
        let fault = (round == rounds - 1).then_some("sink-after-flush");
        let mut child = crate::common::spawn_worker(work.path(), round, fault);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = if fault.is_some() {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(150 + rng % 500)
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().unwrap();
        if !done() {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of {rounds} workers were killed before they were done"
    );
    let faulted = std::fs::read_to_string(work.path().join(format!("worker-{}.log", rounds - 1)));
    assert!(faulted.unwrap().contains("Injected fault"));
    // The faulted worker sent every record before it died, so `done()` holds already and
    // says nothing about this worker: wait for its commit of every offset instead (it sends
    // again what the faulted worker left uncommitted first). A fixed wait lost that race on
    // a loaded machine: SIGTERM came while the worker was still opening the log, and as no
    // worker before it had committed, the group had no offsets at all.
    // A killed worker leaves its worker.json behind.
    let _ = std::fs::remove_file(work.path().join("data/worker.json"));
    let mut child = crate::common::spawn_worker(work.path(), rounds, None);
    let api = crate::common::worker_api(work.path(), &mut child);
    let http = reqwest::blocking::Client::new();
    let caught_up = || {
        // Until the group has offsets, the answer is a 404 without partitions.
        let group: Value = http
            .get(format!("{api}/groups/sluice-sink-hook.out"))
            .send()
            .and_then(|r| r.text())
            .map(|t| serde_json::from_str(&t).unwrap_or_default())
            .unwrap_or_default();
        let partitions: Vec<&Value> = group["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["topic"] == "events")
            .collect();
        partitions.len() == 2
            && partitions
                .iter()
                .all(|p| p["committed"].as_i64() == p["log_end"].as_i64())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !caught_up() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(work.path().join(format!("worker-{rounds}.log")));
            panic!("the worker did not commit every offset in 90 s; its log:\n{log:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let (by_key, replays) = receiver.by_key();
    let mut seen = BTreeSet::new();
    for d in by_key.values() {
        let values: Vec<Value> = serde_json::from_str(&d.body).unwrap();
        assert_eq!(values.len(), 50, "whole batches only");
        for v in values {
            let id = v["i"]
                .as_i64()
                .unwrap_or_else(|| 100_000 + v["done"].as_i64().unwrap());
            assert!(seen.insert(id), "record {v} under two keys");
        }
    }
    assert_eq!(seen.len(), 4000, "every record arrived");
    assert!(replays > 0, "the faulted worker's requests were sent again");
    let log = Log::open(work.path().join("data"), LogOptions::default()).unwrap();
    for p in 0..2 {
        let tp = TopicPartition {
            topic: "events".into(),
            partition: p,
        };
        let end = log.partition("events", p).unwrap().info().high_watermark;
        assert_eq!(log.committed("sluice-sink-hook.out", &tp), Some(end));
    }
}

#[test]
fn stopping_the_task_ends_its_retries_soon() {
    // Every request is answered 503, and retries could go on for five minutes.
    let receiver = Receiver::start(1, None);
    let c = config(
        &receiver.url(),
        json!({"retry-timeout": "5m", "retry-backoff": "200ms"}),
    );
    let mut sink = HttpSink::new(c, Path::new(".")).unwrap();
    let stop = sluice_connectors::StopToken::new();
    sink.watch_stop(&stop);
    sink.open(None).unwrap();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.stop();
    });
    let started = Instant::now();
    let e = sink
        .write(&[record(0, Some("{}"))])
        .and_then(|_| sink.flush())
        .unwrap_err();
    // Retries go on for 5 s after the stop (to let a slow round finish), not 5 minutes.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("the task stopped"), "{e}");
    assert!(receiver.state.busy.load(Ordering::SeqCst) >= 1);
}
