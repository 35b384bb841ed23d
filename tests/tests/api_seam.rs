//! The API's async seam: requests waiting for an ingest commit hold no thread, a push
//! query's client cannot make the worker buffer without bound and stops its query when it
//! goes, and `/metrics` and `/health` answer while a deploy holds the worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_connectors::Source;
use sluice_connectors::http_ingest::{HttpIngestConfig, IngestSource};
use sluice_runtime::api::{Limits, router, server};

use crate::common::{Served, wait_for};

/// A sample of `/metrics` without labels (0 when absent).
fn metric(w: &Served, name: &str) -> f64 {
    let (s, v) = w.call("GET", "/metrics", &[], "");
    assert_eq!(s, 200, "{v}");
    v.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn three_hundred_ingest_requests_wait_for_one_commit_on_two_blocking_threads() {
    const REQUESTS: usize = 300;
    let w = Served::start(Limits::default(), true, None);
    // The topic's source is driven by this test, so the commit comes when the test says.
    let (mut source, handle) = IngestSource::new(
        "waiting",
        HttpIngestConfig {
            key_field: None,
            token: None,
            max_body_bytes: 1 << 10,
            idempotency_keys: 1000,
        },
    )
    .unwrap();
    w.state
        .ingest
        .lock()
        .insert("waiting".into(), ("test".into(), handle));
    // The API on a runtime with two worker and two blocking threads: a thread per waiting
    // request would leave none for `/health` and `/pipelines`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limits = Limits {
        max_connections: 1000,
        ..Limits::default()
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(server::serve(listener, router(w.state.clone()), limits));

    let polled = Arc::new(AtomicUsize::new(0));
    let commit = Arc::new(AtomicBool::new(false));
    let driver = {
        let (polled, commit) = (Arc::clone(&polled), Arc::clone(&commit));
        std::thread::spawn(move || {
            source.open(None).unwrap();
            let mut committed = false;
            while !committed || polled.load(Ordering::SeqCst) < REQUESTS {
                let b = source
                    .poll(
                        10_000,
                        &sluice_connectors::Wait::timeout(Duration::from_millis(20)),
                    )
                    .unwrap();
                polled.fetch_add(b.records.len(), Ordering::SeqCst);
                if commit.load(Ordering::SeqCst) {
                    source.committed();
                    committed = true;
                }
            }
            source.committed();
        })
    };

    let clients = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (http, url) = (http.clone(), format!("{base}/ingest/waiting"));
            clients.spawn(async move {
                loop {
                    let resp = http
                        .post(&url)
                        .header("idempotency-key", format!("k{i}"))
                        .body(format!("{{\"i\": {i}}}"))
                        .send()
                        .await
                        .unwrap();
                    // 503: the source's queue was full for a moment; nothing was taken.
                    if resp.status() != 503 {
                        let status = resp.status().as_u16();
                        return (status, resp.text().await.unwrap());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    wait_for("every request to wait for the commit", || {
        polled.load(Ordering::SeqCst) == REQUESTS
    });
    // All 300 wait; the blocking pool still serves.
    let sync = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for path in ["/health", "/pipelines", "/metrics"] {
        let started = Instant::now();
        let status = sync.get(format!("{base}{path}")).send().unwrap().status();
        assert_eq!(status, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?} while requests waited",
            started.elapsed()
        );
    }
    commit.store(true, Ordering::SeqCst);
    for r in requests {
        let (status, body) = clients.block_on(r).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"accepted\":1"), "{body}");
    }
    driver.join().unwrap();
}

/// Sends a push query on a raw connection and reads nothing.
fn silent_push_query(w: &Served, sql: &str) -> TcpStream {
    let mut c = TcpStream::connect(w.addr()).unwrap();
    write!(
        c,
        "POST /query HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .unwrap();
    c
}

#[test]
fn a_push_query_client_that_stops_reading_is_bounded_and_its_query_stops() {
    const RECORDS: usize = 20_000;
    let w = Served::start(
        Limits {
            slow_client_timeout: Duration::from_secs(5),
            ..Limits::default()
        },
        true,
        None,
    );
    let (s, v) = w.call(
        "POST",
        "/sql",
        &[],
        "CREATE STREAM IF NOT EXISTS big (id INT, pad VARCHAR) WITH (topic = 'big', partitions = 1);
         CREATE STREAM IF NOT EXISTS quiet (id INT) WITH (topic = 'quiet', partitions = 1);",
    );
    assert_eq!(s, 200, "{v}");
    let pad = "x".repeat(1000);
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
        let records: Vec<_> = chunk
            .iter()
            .map(|i| {
                sluice_log::Record::from_value(
                    Bytes::from(format!("{{\"id\": {i}, \"pad\": \"{pad}\"}}")),
                    1,
                )
            })
            .collect();
        w.log.append_records("big", 0, &records).unwrap();
    }

    // A client that reads nothing: the rows stop at what the buffer and the connection hold.
    let mut slow = silent_push_query(&w, "SELECT * FROM big EMIT CHANGES;");
    let mut last = -1.0;
    wait_for("the rows handed out to stop growing", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = metric(&w, "sluice_push_query_rows_total");
        let settled = now > 0.0 && now == last;
        last = now;
        settled
    });
    assert!(
        last < RECORDS as f64,
        "{last} rows handed out of {RECORDS}: the rest wait in the log"
    );
    assert_eq!(metric(&w, "sluice_push_queries"), 1.0);
    // It stops after the slow-client timeout, and the client finds out after its rows.
    wait_for("the slow client's query to stop", || {
        metric(&w, "sluice_push_queries") == 0.0
    });
    assert_eq!(metric(&w, "sluice_push_query_slow_clients_total"), 1.0);
    assert_eq!(metric(&w, "sluice_push_query_rows_total"), last);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let tail = loop {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed before the final event");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen[seen.len().saturating_sub(4096)..]).to_string();
        if text.contains("event: error") && text.contains("did not read") {
            break text;
        }
    };
    assert!(tail.contains("the query stopped after"), "{tail}");

    // A client that goes away: its query stops at once, full buffer or idle.
    for sql in [
        "SELECT * FROM big EMIT CHANGES;",
        "SELECT * FROM quiet EMIT CHANGES;",
    ] {
        let before = metric(&w, "sluice_push_query_rows_total");
        let gone = silent_push_query(&w, sql);
        wait_for("the query to start", || {
            metric(&w, "sluice_push_queries") == 1.0
        });
        if sql.contains("big") {
            wait_for("rows to flow", || {
                metric(&w, "sluice_push_query_rows_total") > before
            });
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(gone);
        let started = Instant::now();
        wait_for("the query to stop", || {
            metric(&w, "sluice_push_queries") == 0.0
        });
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{sql}: stopped after {:?}",
            started.elapsed()
        );
        assert_eq!(
            metric(&w, "sluice_push_query_slow_clients_total"),
            1.0,
            "stopped by the disconnect, not the timeout"
        );
    }
}

#[test]
fn metrics_and_health_answer_while_a_deploy_holds_the_worker() {
    let w = Served::start(Limits::default(), true, None);
    let text = "name = \"p\"\n[[topics]]\nname = \"p-in\"\n\n[[sources]]\nname = \"in\"\ntopic = \"p-in\"\nhttp = { }\n";
    assert_eq!(w.call("PUT", "/pipelines/p", &[], text).0, 200);
    for i in 0..3 {
        let (s, v) = w.call("POST", "/ingest/p-in", &[], &format!("{{\"i\": {i}}}"));
        assert_eq!(s, 200, "{v}");
    }
    // As a deploy does while it joins task threads and runs SQL.
    let held = w.deployer.lock();
    for path in ["/metrics", "/health"] {
        // Every answer comes at once; the source task's counter may trail the ingest
        // answers by its epoch (it counts when the task hands over, after the commit), so
        // /metrics is asked again until it shows all three, each answer still quick.
        let mut tries = 0;
        let v = loop {
            let started = Instant::now();
            let (s, v) = w.call("GET", path, &[], "");
            let took = started.elapsed();
            assert_eq!(s, 200, "{path}: {v}");
            assert!(took < Duration::from_millis(500), "{path} took {took:?}");
            tries += 1;
            let done = path != "/metrics"
                || v.as_str()
                    .unwrap()
                    .contains(r#"sluice_task_records_out_total{pipeline="p",task="source in"} 3"#)
                || tries == 50;
            if done {
                break v;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if path == "/metrics" {
            let m = v.as_str().unwrap();
            assert!(
                m.contains(r#"sluice_task_records_out_total{pipeline="p",task="source in"} 3"#),
                "live counters while the worker is held: {m}"
            );
        } else {
            assert_eq!(v["deploying"], true, "{v}");
        }
    }
    // Ingest does not need the worker either.
    let (s, v) = w.call("POST", "/ingest/p-in", &[], "{\"i\": 3}");
    assert_eq!(s, 200, "{v}");
    drop(held);
    assert_eq!(w.call("DELETE", "/pipelines/p", &[], "").0, 200);
    let (_, v) = w.call("GET", "/metrics", &[], "");
    assert!(
        !v.as_str().unwrap().contains("pipeline=\"p\""),
        "an undeployed pipeline leaves the board"
    );
}
