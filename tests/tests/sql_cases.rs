//! The SQL case files (`tests/sql-cases/*.cases`): statements, input records, and the
//! expected output records, dead letters, push/pull query rows or error, run by one harness
//! against a real log and real RocksDB state.
//!
//! # Format
//!
//! A file holds cases; each starts with `=== name`. Sections start with `--- `:
//!
//! ```text
//! === tumbling count
//! --- sql
//! CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR) WITH (topic='rides', partitions=1);
//! CREATE TABLE counts AS SELECT zone, COUNT(*) AS n FROM rides
//!   WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY zone EMIT CHANGES;
//! --- input rides
//! 1000 r1 {"zone": "a"}
//! --- output counts
//! 1000 a {"n": 1}
//! ```
//!
//! - `--- sql`: statements, run in order before any input.
//! - `--- input TOPIC`: records `TIMESTAMP KEY VALUE` (`-` for no key; a value of `-` is a
//!   tombstone), produced after the statements, all in one transaction, while the persistent
//!   queries are stopped; they start again when it has committed, so they read every input
//!   topic from its start in timestamp order.
//! - `--- output TOPIC`: every record the topic holds at the end (read_committed), in order,
//!   same line format. JSON values compare as JSON. `--- output TOPIC any-order` compares
//!   them sorted by timestamp and key (for several queries writing one topic).
//! - `--- dlq TOPIC`: records of a query's dead-letter topic: `TIMESTAMP KEY REASON-SUBSTRING`.
//! - `--- push SQL` / `--- pull SQL`: rows of a push query (run until its LIMIT) or a pull
//!   query, after the input was processed; one JSON object per row.
//! - `--- error`: the statements must fail with a message containing this text.
//!
//! Keys of a windowed table's topic (a windowed aggregate's result, or a table declared with
//! `window_type`) hold the key's text and then its window in bytes, as Kafka Streams writes
//! them; the harness shows them as text with the window: `KEY@START` for TUMBLING and
//! HOPPING windows (the key holds the start; the end is start + size) and
//! `KEY@START..END` for SESSION windows (times in ms, e.g. `a@60000`, `u@1000..3000`). A
//! key that does not decode as its topic's windowed key shows as `KEY@?`. Input records of a
//! windowed topic write their keys the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig, Output};
use sluice_sql::format::KeyWindow;
use sluice_sql::runner::RunnerConfig;

#[derive(Debug, Default)]
struct Case {
    name: String,
    line: usize,
    sql: String,
    inputs: Vec<(String, Vec<String>)>,
    outputs: Vec<(String, Vec<String>)>,
    dlqs: Vec<(String, Vec<String>)>,
    push: Vec<(String, Vec<String>)>,
    pull: Vec<(String, Vec<String>)>,
    error: Option<String>,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut section: Option<(String, String)> = None;
    for (n, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix("=== ") {
            cases.push(Case {
                name: name.trim().to_string(),
                line: n + 1,
                ..Case::default()
            });
            section = None;
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue;
        };
        if let Some(head) = line.strip_prefix("--- ") {
            let (kind, arg) = head.split_once(' ').unwrap_or((head, ""));
            let arg = arg.trim().to_string();
            match kind {
                "input" => case.inputs.push((arg.clone(), Vec::new())),
                "output" => case.outputs.push((arg.clone(), Vec::new())),
                "dlq" => case.dlqs.push((arg.clone(), Vec::new())),
                "push" => case.push.push((arg.clone(), Vec::new())),
                "pull" => case.pull.push((arg.clone(), Vec::new())),
                "error" => case.error = Some(arg.clone()),
                "sql" => {}
                other => panic!("line {}: unknown section '{other}'", n + 1),
            }
            section = Some((kind.to_string(), arg));
            continue;
        }
        let Some((kind, _)) = &section else { continue };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let push = |v: &mut Vec<(String, Vec<String>)>| {
            if let Some(last) = v.last_mut() {
                last.1.push(line.to_string());
            }
        };
        match kind.as_str() {
            "sql" => {
                case.sql.push_str(line);
                case.sql.push('\n');
            }
            "input" => push(&mut case.inputs),
            "output" => push(&mut case.outputs),
            "dlq" => push(&mut case.dlqs),
            "push" => push(&mut case.push),
            "pull" => push(&mut case.pull),
            "error" => {
                let e = case.error.get_or_insert_with(String::new);
                if !e.is_empty() {
                    e.push(' ');
                }
                e.push_str(line.trim());
            }
            _ => {}
        }
    }
    cases
}

/// `TIMESTAMP KEY REST`.
fn split_record(line: &str) -> (i64, Option<String>, String) {
    let mut parts = line.trim().splitn(3, ' ');
    let ts = parts
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("bad record line (timestamp): {line}"));
    let key = parts.next().unwrap_or("-");
    let rest = parts.next().unwrap_or("").to_string();
    (ts, (key != "-").then(|| key.to_string()), rest)
}

fn same_value(expected: &str, got: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(expected),
        serde_json::from_str::<serde_json::Value>(got),
    ) {
        (Ok(a), Ok(b)) => json_eq(&a, &b),
        _ => expected == got,
    }
}

/// JSON equality with numbers compared as numbers (1 == 1.0) and floats to 1e-9.
fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            // A key missing on one side equals an explicit null on the other.
            x.keys().chain(y.keys()).all(|k| {
                json_eq(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        _ => a == b,
    }
}

/// A record key as the case files write it: its text, with its window for a windowed
/// topic (see the format above), `-` for none.
fn shown_key(key: &Option<Bytes>, window: Option<KeyWindow>) -> String {
    let Some(k) = key else {
        return "-".into();
    };
    let Some(w) = window else {
        return std::str::from_utf8(k).unwrap_or("?").to_string();
    };
    match w.decode(k) {
        Ok((k, start, end)) => {
            let k = String::from_utf8_lossy(k);
            match w {
                KeyWindow::Session => format!("{k}@{start}..{end}"),
                _ => format!("{k}@{start}"),
            }
        }
        Err(_) => format!("{}@?", String::from_utf8_lossy(k)),
    }
}

/// The record key a case file's `KEY@START` (`KEY@START..END` for sessions) stands for.
fn windowed_key(shown: &str, w: KeyWindow) -> Result<Vec<u8>, String> {
    let bad = || {
        format!(
            "input key '{shown}' of a windowed topic: write KEY@START (sessions: KEY@START..END)"
        )
    };
    let (key, window) = shown.rsplit_once('@').ok_or_else(bad)?;
    let (start, end) = match (w, window.split_once("..")) {
        (KeyWindow::Session, Some((s, e))) => (s, e.parse().map_err(|_| bad())?),
        (KeyWindow::Session, None) => return Err(bad()),
        (_, _) => (window, 0),
    };
    Ok(w.encode(key.as_bytes(), start.parse().map_err(|_| bad())?, end))
}

fn text(b: &Option<Bytes>) -> String {
    b.as_ref()
        .map_or("-".to_string(), |b| String::from_utf8_lossy(b).into_owned())
}

fn rows_json(batches: &[sluice_sql::RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let mut buf = Vec::new();
        {
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            w.write(b).unwrap();
            w.finish().unwrap();
        }
        out.extend(String::from_utf8(buf).unwrap().lines().map(str::to_string));
    }
    out
}

/// Runs one case; returns what differed.
fn run_case(case: &Case) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    // Case records are stamped in 1970, older than a topic's 7-day retention: housekeeping
    // (every second by default) could delete a segment while the case still reads it, as
    // Kafka would. A case never lasts an hour.
    let options = LogOptions {
        housekeeping_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), options).unwrap();
    let result = run_in(&log, case);
    log.close().unwrap();
    result
}

fn run_in(log: &Log, case: &Case) -> Result<(), String> {
    let mut engine = Engine::open_with(
        log,
        EngineConfig {
            runner: RunnerConfig {
                commit_interval: Duration::from_millis(20),
                // Every update of a table result, as ksqlDB's own query tests run (with
                // `cache.max.bytes.buffering` 0): the cases list each one.
                cache_max_bytes: 0,
                ..RunnerConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    match (engine.execute(&case.sql), &case.error) {
        (Err(e), Some(want)) => {
            let e = e.to_string();
            return if e.contains(want.as_str()) {
                Ok(())
            } else {
                Err(format!("expected an error containing '{want}', got: {e}"))
            };
        }
        (Err(e), None) => return Err(format!("statements failed: {e}")),
        (Ok(_), Some(want)) => {
            return Err(format!(
                "expected an error containing '{want}', the statements ran"
            ));
        }
        (Ok(_), None) => {}
    }
    // Windowed topics, whose keys are written and shown with their windows.
    let windowed: std::collections::HashMap<String, KeyWindow> = engine
        .catalog()
        .sources()
        .filter_map(|s| s.window.map(|w| (s.topic.clone(), w)))
        .collect();
    // The queries wait while the input is written, then start with all of it committed, so
    // a join's sides (and partitions) meet in timestamp order whatever order the topics are
    // listed in. (Running, a query could see one topic's part of the input committed before
    // another's: a transaction's markers reach its partitions one by one, in Kafka too.)
    engine.shutdown();
    let mut producer = log
        .transactional_producer("sql-cases-input", ProducerConfig::default())
        .unwrap();
    producer.begin_transaction().unwrap();
    for (topic, lines) in &case.inputs {
        for line in lines {
            let (ts, key, value) = split_record(line);
            let key = match (key, windowed.get(topic)) {
                (Some(k), Some(w)) => Some(windowed_key(&k, *w)?),
                (k, _) => k.map(String::into_bytes),
            };
            producer
                .send(
                    topic,
                    Record {
                        key: key.map(Bytes::from),
                        value: (value != "-").then(|| Bytes::from(value)),
                        headers: Vec::new(),
                        timestamp: ts,
                    },
                )
                .map_err(|e| format!("produce to {topic}: {e}"))?;
        }
    }
    producer.commit_transaction().unwrap();
    engine.start_queries();
    // Wait until every running query has read all its input and committed. The bound only
    // ends a case that hangs: the largest cases take seconds in a debug build, several
    // times that on a loaded 2-core machine.
    if !engine
        .wait_caught_up(Duration::from_secs(90))
        .map_err(|e| e.to_string())?
    {
        return Err("queries did not catch up with their input in 90 s".into());
    }
    let mut errors = Vec::new();
    for (sql, expected) in &case.push {
        match engine.execute(sql).map_err(|e| e.to_string())?.pop() {
            Some(Output::Push(mut q)) => {
                let mut got = Vec::new();
                let until = Instant::now() + Duration::from_secs(5);
                while !q.done() && Instant::now() < until {
                    if let Some(b) = q
                        .poll(Duration::from_millis(50))
                        .map_err(|e| e.to_string())?
                    {
                        got.extend(rows_json(&[b]));
                    }
                }
                compare_rows(&format!("push {sql}"), expected, &got, &mut errors);
            }
            other => errors.push(format!("push {sql}: not a push query: {other:?}")),
        }
    }
    for (sql, expected) in &case.pull {
        match engine.execute(sql) {
            Ok(mut o) => match o.pop() {
                Some(Output::Rows(b)) => compare_rows(
                    &format!("pull {sql}"),
                    expected,
                    &rows_json(&b),
                    &mut errors,
                ),
                other => errors.push(format!("pull {sql}: no rows: {other:?}")),
            },
            Err(e) => errors.push(format!("pull {sql}: {e}")),
        }
    }
    engine.shutdown();
    for (arg, expected) in &case.outputs {
        // `--- output TOPIC any-order`: records of independent queries interleave freely.
        let (topic, any_order) = match arg.strip_suffix(" any-order") {
            Some(t) => (t, true),
            None => (arg.as_str(), false),
        };
        let mut got = crate::common::read_committed(log, topic);
        let mut expected = expected.clone();
        if any_order {
            got.sort_by_key(|r| (r.timestamp, text(&r.key)));
            expected.sort_by_key(|e| {
                let (ts, key, _) = split_record(e);
                (ts, key.unwrap_or_else(|| "-".into()))
            });
        }
        let window = windowed.get(topic).copied();
        let got_lines: Vec<String> = got
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.timestamp,
                    shown_key(&r.key, window),
                    text(&r.value)
                )
            })
            .collect();
        let ok = got.len() == expected.len()
            && expected.iter().zip(&got).all(|(e, r)| {
                let (ts, key, value) = split_record(e);
                ts == r.timestamp
                    && key.unwrap_or_else(|| "-".into()) == shown_key(&r.key, window)
                    && same_value(&value, &text(&r.value))
            });
        if !ok {
            errors.push(format!(
                "output {topic}:\n  expected:\n    {}\n  got:\n    {}",
                expected.join("\n    "),
                got_lines.join("\n    ")
            ));
        }
    }
    for (topic, expected) in &case.dlqs {
        let got = crate::common::read_committed(log, topic);
        let reasons: Vec<String> = got
            .iter()
            .map(|r| {
                let reason = r
                    .headers
                    .iter()
                    .find(|h| h.key == "sluice.error")
                    .map(|h| text(&h.value))
                    .unwrap_or_default();
                format!("{} {} {reason}", r.timestamp, text(&r.key))
            })
            .collect();
        let ok = got.len() == expected.len()
            && expected.iter().zip(&reasons).all(|(e, g)| {
                let (ts, key, want) = split_record(e);
                let (gts, gkey, greason) = split_record(g);
                ts == gts && key == gkey && greason.contains(&want)
            });
        if !ok {
            errors.push(format!(
                "dead letters {topic}:\n  expected:\n    {}\n  got:\n    {}",
                expected.join("\n    "),
                reasons.join("\n    ")
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn compare_rows(what: &str, expected: &[String], got: &[String], errors: &mut Vec<String>) {
    let ok = expected.len() == got.len() && expected.iter().zip(got).all(|(e, g)| same_value(e, g));
    if !ok {
        errors.push(format!(
            "{what}:\n  expected:\n    {}\n  got:\n    {}",
            expected.join("\n    "),
            got.join("\n    ")
        ));
    }
}

/// The failures of one case file, each with its file, line and name.
fn check_file(name: &str) -> Vec<String> {
    let path = case_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let cases = parse_cases(&text);
    if cases.is_empty() {
        return vec![format!("{name} has no cases")];
    }
    cases
        .iter()
        .filter_map(|c| {
            run_case(c)
                .err()
                .map(|e| format!("{name}:{} '{}':\n{e}", c.line, c.name))
        })
        .collect()
}

fn case_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql-cases")
}

/// The `*.cases` files, found in the folder: a new file runs with no Rust change.
fn case_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(case_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cases"))
        // `SQL_CASES=joins` runs only the files whose names contain `joins` (while writing
        // cases; CI runs every file).
        .filter(|n| std::env::var("SQL_CASES").map_or(true, |f| n.contains(f.as_str())))
        .collect();
    files.sort();
    files
}

/// Every case of every `*.cases` file, the files side by side.
#[test]
fn every_case_file_passes() {
    let files = case_files();
    assert!(
        files.len() >= 5 || std::env::var("SQL_CASES").is_ok(),
        "case files: {files:?}"
    );
    let failures: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = files
            .iter()
            .map(|f| {
                std::thread::Builder::new()
                    .name(f.clone())
                    .spawn_scoped(scope, move || check_file(f))
                    .unwrap()
            })
            .collect();
        running
            .into_iter()
            .flat_map(|t| {
                t.join()
                    .unwrap_or_else(|_| vec!["a case file panicked".into()])
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Counts the cases of every file, so the suite cannot shrink unnoticed.
#[test]
fn there_are_at_least_60_cases() {
    let mut n = 0;
    for f in case_files() {
        let text = std::fs::read_to_string(case_dir().join(f)).unwrap();
        n += parse_cases(&text).len();
    }
    assert!(n >= 60, "only {n} SQL cases");
}

/// Every prefix of every case's statements (cut at random characters) is either run or
/// refused with an error: nothing panics.
#[test]
fn truncated_statements_never_panic() {
    let dir = case_dir();
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(tmp.path(), LogOptions::default()).unwrap();
    let mut engine = Engine::open(&log).unwrap();
    let mut seed = 0x51ce_u64;
    let mut tried = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for case in parse_cases(&text) {
            let chars: Vec<char> = case.sql.chars().collect();
            for _ in 0..6 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let cut = (seed as usize) % (chars.len() + 1);
                let prefix: String = chars[..cut].iter().collect();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _ = engine.execute(&prefix);
                }));
                assert!(result.is_ok(), "panicked on: {prefix}");
                tried += 1;
            }
        }
    }
    assert!(tried > 300);
    drop(engine);
    log.close().unwrap();
}
