//! Persistent queries across restarts and crashes: results are neither lost nor repeated.
//!
//! The crash test re-executes this test binary as a child ([`query_child`]) that opens the
//! engine (which resumes every persistent query) and is killed with `kill -9` at a random
//! moment, or aborts itself at the fault point between a committed epoch and the local state
//! commit; the parent then checks every output topic record by record.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::runner::RunnerConfig;

const CHILD_DIR: &str = "SLUICE_QUERY_CHILD_DIR";
const KEYS: u64 = 20;

fn engine(log: &Log, commit_ms: u64) -> Engine {
    Engine::open_with(
        log,
        EngineConfig {
            runner: RunnerConfig {
                commit_interval: Duration::from_millis(commit_ms),
                max_poll_records: 500,
                ..RunnerConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

const QUERIES: &str = "
    CREATE STREAM events (id VARCHAR KEY, k VARCHAR, v BIGINT) WITH (topic='events', partitions=1);
    CREATE STREAM copy AS SELECT id, k, v FROM events WHERE v >= 0;
    CREATE TABLE sums AS SELECT k, COUNT(*) AS n, SUM(v) AS total FROM events GROUP BY k;
    CREATE TABLE windows AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n FROM events
        WINDOW TUMBLING (SIZE 1 SECOND, GRACE PERIOD 0 SECONDS) GROUP BY k EMIT FINAL;
";

/// The event time of input 0: now, in whole seconds (windows stay aligned). Not 0: records
/// stamped in 1970 are older than the output topics' 7-day retention, and the log may
/// delete their segment (as Kafka would) while a test still counts them.
fn base_time() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| sluice_log::record::now_ms() / 1000 * 1000)
}

/// Input record `i`: key `k{i % KEYS}`, value `v = i`, event time `base_time() + i * 10` ms
/// (in order).
fn produce(log: &Log, from: u64, to: u64) {
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    for i in from..to {
        let k = format!("k{}", i % KEYS);
        p.send(
            "events",
            Record {
                key: Some(Bytes::from(format!("e{i}"))),
                value: Some(Bytes::from(format!(r#"{{"k": "{k}", "v": {i}}}"#))),
                headers: Vec::new(),
                timestamp: base_time() + (i * 10) as i64,
            },
        )
        .unwrap();
    }
    p.flush().unwrap();
}

fn json(r: &sluice_log::ConsumerRecord) -> serde_json::Value {
    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
}

/// Checks every output against the first `n` input records.
fn verify(log: &Log, n: u64) {
    // copy: every input record exactly once; per input partition in order.
    let copy = crate::common::read_committed(log, "COPY");
    let mut seen: Vec<u64> = copy
        .iter()
        .map(|r| json(r)["V"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seen.len() as u64,
        n,
        "copy holds {} records for {n} inputs",
        seen.len()
    );
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "copy lost or repeated records"
    );
    // sums: per key, counts that only grow, each with the total of exactly that many of
    // the key's inputs (an input lost or applied twice breaks it), ending at all of them.
    // The record cache writes a key's latest update per epoch, so counts may skip.
    let mut per_key: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for r in crate::common::read_committed(log, "SUMS") {
        let v = json(&r);
        per_key
            .entry(String::from_utf8(r.key.unwrap().to_vec()).unwrap())
            .or_default()
            .push((v["N"].as_u64().unwrap(), v["TOTAL"].as_u64().unwrap()));
    }
    assert_eq!(per_key.len() as u64, KEYS.min(n));
    for (k, updates) in &per_key {
        let key: u64 = k.trim_start_matches('k').parse().unwrap();
        let inputs: Vec<u64> = (0..n).filter(|i| i % KEYS == key).collect();
        let mut last = 0;
        for &(count, total) in updates {
            assert!(count > last, "key {k}: count {count} after {last}");
            assert!(count as usize <= inputs.len(), "key {k}: count {count}");
            assert_eq!(
                total,
                inputs[..count as usize].iter().sum::<u64>(),
                "key {k}: total at count {count}"
            );
            last = count;
        }
        assert_eq!(last as usize, inputs.len(), "key {k}: final count");
    }
    // windows: each closed 1 s window once per key, with its exact count. Event times are
    // i * 10 ms, so a window holds 100 consecutive inputs, 5 per key; with no grace a
    // window is closed once the stream time (the last input's) reaches its end.
    let stream_time = (n as i64 - 1) * 10;
    let closed = (0..).take_while(|w| w * 1000 + 1000 <= stream_time).count() as u64;
    let mut windows: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in crate::common::read_committed(log, "WINDOWS") {
        let v = json(&r);
        // The key carries the window: the key's text, then the window start.
        let raw = r.key.unwrap();
        let (k, start, _) = sluice_sql::format::KeyWindow::Tumbling { size: 1000 }
            .decode(&raw)
            .unwrap();
        assert_eq!(start, v["WS"].as_i64().unwrap(), "the key's window");
        let key = (String::from_utf8(k.to_vec()).unwrap(), start);
        assert!(
            windows
                .insert(key.clone(), v["N"].as_u64().unwrap())
                .is_none(),
            "window {key:?} emitted twice"
        );
    }
    assert_eq!(windows.len() as u64, closed * KEYS, "windows emitted");
    for ((k, ws), count) in &windows {
        assert_eq!(*count, 5, "window {k}@{ws}");
    }
}

#[test]
fn queries_resume_after_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut e = engine(&log, 20);
        e.execute(QUERIES).unwrap();
        produce(&log, 0, 1500);
        assert!(e.wait_caught_up(Duration::from_secs(60)).unwrap());
        drop(e);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let e = engine(&log, 20);
    produce(&log, 1500, 3000);
    assert!(e.wait_caught_up(Duration::from_secs(60)).unwrap());
    drop(e);
    verify(&log, 3000);
    log.close().unwrap();
}

/// The child: opens the engine (resuming the queries) and runs until killed.
#[test]
fn query_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    let e = engine(&log, 15);
    let caught_up = e.wait_caught_up(Duration::from_secs(120)).unwrap();
    println!("CAUGHT-UP {caught_up}");
    std::thread::sleep(Duration::from_secs(600));
}

/// Runs the test `child` of this binary (with `env`, and `SLUICE_FAULT` set to `fault`)
/// until `kill_after`, then kills it; returns whether it had printed `CAUGHT-UP` (caught up
/// with its input) by then: a kill after that interrupts nothing.
pub(crate) fn run_child(
    exe: &Path,
    child: &str,
    env: &[(&str, &std::ffi::OsStr)],
    fault: Option<&str>,
    kill_after: Duration,
) -> bool {
    let mut cmd = Command::new(exe);
    cmd.args([child, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(f) = fault {
        cmd.env("SLUICE_FAULT", f);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let caught_up = Arc::new(AtomicBool::new(false));
    let reader = {
        let caught_up = Arc::clone(&caught_up);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("CAUGHT-UP") {
                    caught_up.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let start = std::time::Instant::now();
    while start.elapsed() < kill_after && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let _ = reader.join();
    caught_up.load(Ordering::SeqCst)
}

/// `rounds` runs of the test `child` (see [`run_child`]), each killed after a seeded time in
/// `[from, from + span)` ms and at `fault(round)` if any, then asserts that at least three
/// were interrupted before catching up (a kill after that tests nothing); returns how many
/// were.
pub(crate) fn kill_rounds(
    child: &str,
    env: &[(&str, &std::ffi::OsStr)],
    rounds: usize,
    seed: u64,
    (from, span): (u64, u64),
    fault: impl Fn(usize) -> Option<&'static str>,
) -> usize {
    let exe = std::env::current_exe().unwrap();
    let mut rng = seed;
    let mut interrupted = 0;
    for round in 0..rounds {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = from + (rng >> 33) % span;
        if !run_child(&exe, child, env, fault(round), Duration::from_millis(ms)) {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} rounds ended before the queries caught up"
    );
    interrupted
}

#[test]
fn kill_9_while_queries_run_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    {
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut e = Engine::open_with(
            &log,
            EngineConfig {
                start_queries: false,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        e.execute(QUERIES).unwrap();
        e.shutdown();
        drop(e);
        produce(&log, 0, n);
        log.close().unwrap();
    }
    let rounds = crate::common::env_or("SLUICE_CRASH_ROUNDS", 6) as usize;
    // Every third round dies at the fault point instead: the epoch committed in the log, the
    // local state did not.
    kill_rounds(
        "sql_queries::query_child",
        &[(CHILD_DIR, dir.path().as_os_str())],
        rounds,
        7,
        (200, 600),
        |round| (round % 3 == 2).then_some("query-after-commit"),
    );
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let e = engine(&log, 20);
    assert!(e.wait_caught_up(Duration::from_secs(120)).unwrap());
    drop(e);
    verify(&log, n);
    log.close().unwrap();
}

/// A stream-stream outer join's buffered record whose window closes after a restart gets
/// its outer row then, as it would have without the restart.
#[test]
fn outer_join_rows_of_records_buffered_before_a_restart_are_emitted() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = base_time();
    let send = |log: &Log, topic: &str, key: &str, value: &str, ts: i64| {
        let mut p = log.producer(ProducerConfig::default()).unwrap();
        send_one(&mut p, topic, key, value, ts);
    };
    {
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut e = engine(&log, 20);
        e.execute(
            "CREATE STREAM a (id VARCHAR KEY, k VARCHAR) WITH (topic='a', partitions=1);
             CREATE STREAM b (id VARCHAR KEY, k VARCHAR) WITH (topic='b', partitions=1);
             CREATE STREAM j WITH (topic='j') AS SELECT a.k, a.id AS a_id, b.id AS b_id
               FROM a LEFT JOIN b WITHIN 1 SECOND GRACE PERIOD 0 SECONDS ON a.k = b.k;",
        )
        .unwrap();
        send(&log, "a", "a1", r#"{"k": "x"}"#, t0);
        assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
        drop(e);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let e = engine(&log, 20);
    // Stream time passes a1's window (t0 + 1 s + no grace): its outer row is due.
    send(&log, "b", "b1", r#"{"k": "y"}"#, t0 + 10_000);
    assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
    drop(e);
    let out: Vec<(i64, serde_json::Value)> = crate::common::read_committed(&log, "j")
        .iter()
        .map(|r| (r.timestamp, json(r)))
        .collect();
    assert_eq!(out.len(), 1, "outputs of j: {out:?}");
    assert_eq!(out[0].0, t0);
    assert_eq!(out[0].1["A_ID"], "a1");
    assert!(out[0].1["B_ID"].is_null(), "{out:?}");
    log.close().unwrap();
}

/// A query created again after TERMINATE and DROP (it gets the same id) reads its input
/// from the beginning, as a new query does: the old one's positions and state are gone.
#[test]
fn a_query_created_again_under_a_terminated_id_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut e = engine(&log, 20);
    let create =
        "CREATE STREAM e WITH (topic='e') AS SELECT o.customer_id, o.id AS order_id, c.name
        FROM orders o JOIN customers c ON o.customer_id = c.id;";
    e.execute(&format!(
        "CREATE TABLE customers (id VARCHAR PRIMARY KEY, name VARCHAR) WITH (topic='customers', partitions=1);
         CREATE STREAM orders (id VARCHAR KEY, customer_id VARCHAR) WITH (topic='orders', partitions=1);
         {create}"
    ))
    .unwrap();
    let t0 = base_time();
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    let mut send = |topic: &str, key: &str, value: &str, ts: i64| {
        send_one(&mut p, topic, key, value, ts);
    };
    send("customers", "c1", r#"{"name": "Ann"}"#, t0);
    send("orders", "o1", r#"{"customer_id": "c1"}"#, t0 + 1);
    assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
    assert_eq!(crate::common::read_committed(&log, "e").len(), 1);
    let ids: Vec<String> = e.catalog().queries().map(|q| q.id.clone()).collect();
    e.execute(&format!("TERMINATE {}; DROP STREAM e;", ids[0]))
        .unwrap();
    e.execute(create).unwrap();
    let again: Vec<String> = e.catalog().queries().map(|q| q.id.clone()).collect();
    assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
    // The new query joined the order again (from the beginning, with the table rebuilt).
    let out = crate::common::read_committed(&log, "e");
    assert_eq!(out.len(), 2, "ids {ids:?} then {again:?}: {out:?}");
    assert_eq!(json(&out[1])["NAME"], "Ann");
    drop(e);
    log.close().unwrap();
}

/// Writes one JSON record and waits until it is durable.
fn send_one(p: &mut sluice_log::Producer, topic: &str, key: &str, value: &str, ts: i64) {
    p.send(
        topic,
        Record {
            key: Some(Bytes::from(key.to_string())),
            value: Some(Bytes::from(value.to_string())),
            headers: Vec::new(),
            timestamp: ts,
        },
    )
    .unwrap();
    p.flush().unwrap();
}

/// A table result writes each key's latest update per epoch (ksqlDB's record cache): fewer
/// records, the same table; with the cache off, every update; with a cache too small for
/// the epoch's keys, it drains early and the table is still the same.
#[test]
fn a_table_result_writes_each_keys_latest_update_per_commit() {
    let n = 2000;
    let mut written = Vec::new();
    for cache_max_bytes in [sluice_sql::record_cache::DEFAULT_CACHE_MAX_BYTES, 0, 300] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut e = Engine::open_with(
            &log,
            EngineConfig {
                runner: RunnerConfig {
                    commit_interval: Duration::from_millis(50),
                    cache_max_bytes,
                    ..RunnerConfig::default()
                },
                ..EngineConfig::default()
            },
        )
        .unwrap();
        e.execute(
            "CREATE STREAM events (id VARCHAR KEY, k VARCHAR, v BIGINT) WITH (topic='events', partitions=1);",
        )
        .unwrap();
        produce(&log, 0, n);
        e.execute(
            "CREATE TABLE sums AS SELECT k, COUNT(*) AS n, SUM(v) AS total FROM events GROUP BY k;",
        )
        .unwrap();
        assert!(e.wait_caught_up(Duration::from_secs(60)).unwrap());
        let records = crate::common::read_committed(&log, "SUMS");
        let mut table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in &records {
            let v = json(r);
            table.insert(
                String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                (v["N"].as_u64().unwrap(), v["TOTAL"].as_u64().unwrap()),
            );
        }
        assert_eq!(table.len() as u64, KEYS, "cache {cache_max_bytes}");
        for (k, (count, total)) in &table {
            let key: u64 = k.trim_start_matches('k').parse().unwrap();
            let inputs: Vec<u64> = (0..n).filter(|i| i % KEYS == key).collect();
            assert_eq!(
                (*count, *total),
                (inputs.len() as u64, inputs.iter().sum::<u64>()),
                "key {k}, cache {cache_max_bytes}"
            );
        }
        written.push(records.len() as u64);
        drop(e);
        log.close().unwrap();
    }
    let [cached, every, small] = written[..] else {
        unreachable!()
    };
    assert_eq!(every, n, "without the cache, one record per input");
    // The input is there before the query starts: a few polls, a few epochs.
    assert!(cached <= 10 * KEYS, "{cached} records with the cache");
    // 300 bytes hold about two keys' records: drained every few updates (the keys take
    // turns, so hardly one is replaced before its drain).
    assert!(
        small > cached && small <= every,
        "{small} records with a small cache ({cached} with the default, {every} without)"
    );
}
