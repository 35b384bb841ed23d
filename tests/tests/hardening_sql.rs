//! SQL hardening against a real worker and a real `sluice sql` process: statements that nest
//! too deeply (which used to overflow a thread's stack and abort the process) are answered
//! with an error while the worker keeps serving, and a stored persistent query outside the
//! window bounds is not started but can be terminated; a record nested too deeply is a dead
//! letter, not a stack overflow that aborts the process.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::blocking::Client;
use serde_json::Value;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};

use crate::cli::sluice_bin;

/// The deep statements of the issue, each with a name for failure messages.
fn deep_statements() -> Vec<(&'static str, String)> {
    let sum = |n: usize| vec!["1"; n].join("+");
    vec![
        (
            "2,000 +1 terms",
            format!("INSERT INTO s (id, a) VALUES ('q', {})", sum(2_000)),
        ),
        (
            "10,000 AND terms",
            format!(
                "SELECT * FROM s WHERE {} EMIT CHANGES",
                vec!["TRUE"; 10_000].join(" AND ")
            ),
        ),
        (
            "100,000 +1 terms",
            format!("INSERT INTO s (id, a) VALUES ('q', {})", sum(100_000)),
        ),
        (
            "100,000 parentheses",
            format!(
                "INSERT INTO s (id, a) VALUES ('q', {}1{})",
                "(".repeat(100_000),
                ")".repeat(100_000)
            ),
        ),
    ]
}

/// A `sluice run` process and its API.
struct Worker {
    child: Child,
    api: String,
}

impl Worker {
    fn start(dir: &Path) -> Worker {
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        let child = Command::new(sluice_bin())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(dir.join("pipelines"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let file = dir.join("data").join("worker.json");
        let start = Instant::now();
        let api = loop {
            let addr = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["api"].as_str().map(str::to_string));
            if let Some(a) = addr {
                break a;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no worker.json");
            std::thread::sleep(Duration::from_millis(50));
        };
        Worker { child, api }
    }

    fn sql(&mut self, sql: &str) -> (u16, Value) {
        let resp = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{}/sql", self.api))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": sql }).to_string())
            .send();
        let resp = match resp {
            Ok(r) => r,
            Err(e) => panic!(
                "no answer from the worker ({e}); its exit status: {:?}",
                self.child.try_wait()
            ),
        };
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn post_sql_answers_deep_statements_with_an_error_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Worker::start(dir.path());
    let (s, v) = w.sql("CREATE STREAM s (id VARCHAR KEY, a BIGINT) WITH (topic='s', partitions=1)");
    assert_eq!(s, 200, "{v}");
    for (name, sql) in deep_statements() {
        let (s, v) = w.sql(&sql);
        assert_eq!(s, 400, "{name}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("too deeply nested at line 1") && msg.contains("more than 256"),
            "{name}: {v}"
        );
        assert!(w.alive(), "{name}: the worker died");
        let (s, v) = w.sql("SHOW STREAMS");
        assert_eq!(s, 200, "{name}: the worker stopped serving: {v}");
    }
    // The largest body the API takes (2 MB): a statement of nothing but parentheses.
    let (s, v) = w.sql(&format!("SELECT {} FROM s", "(".repeat(1_000_000)));
    assert_eq!(s, 400, "{v}");
    // Just inside the limit, the statement runs.
    let sum = vec!["1"; 200].join("+");
    let (s, v) = w.sql(&format!("INSERT INTO s (id, a) VALUES ('q', {sum})"));
    assert_eq!(s, 200, "{v}");
    assert!(w.alive());
}

fn sluice_sql(data: &Path, args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .arg("--data-dir")
        .arg(data)
        .arg("sql")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn sluice_sql_refuses_deep_statements_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = sluice_sql(
        &data,
        &[
            "-e",
            "CREATE STREAM s (id VARCHAR KEY, a BIGINT) WITH (topic='s', partitions=1)",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    for (name, sql) in deep_statements() {
        // One argument may hold at most 128 KiB on Linux: larger scripts go through -f.
        let out = if sql.len() < 100_000 {
            sluice_sql(&data, &["-e", &sql])
        } else {
            let file = dir.path().join("deep.sql");
            std::fs::write(&file, &sql).unwrap();
            sluice_sql(&data, &["-f", file.to_str().unwrap()])
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A crash (stack overflow: SIGABRT, exit code 134 from a shell) has no exit code.
        assert!(
            out.status.code().is_some_and(|c| c != 0 && c != 134),
            "{name}: {:?} {stderr}",
            out.status
        );
        assert!(
            stderr.contains("too deeply nested at line 1") && stderr.contains("more than 256"),
            "{name}: {stderr}"
        );
    }
}

/// What an older version, without the window bounds, stored: the catalog entry of a query
/// rewritten in place (the catalog is a compacted topic: the last value of a key wins).
fn store_old_query(data: &Path, id: &str, statement: &str) {
    let log = Log::open(data, LogOptions::default()).unwrap();
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    p.send_to(
        sluice_sql::catalog::CATALOG_TOPIC,
        0,
        Record {
            key: Some(Bytes::from(format!("query:{id}"))),
            value: Some(Bytes::from(statement.to_string())),
            headers: Vec::new(),
            timestamp: sluice_log::record::now_ms(),
        },
    )
    .unwrap();
    p.flush().unwrap();
    drop(p);
    // Releases the data directory's lock for the next process.
    log.close().unwrap();
}

#[test]
fn a_stored_query_outside_the_window_bounds_is_not_resumed_and_can_be_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ok = |args: &[&str]| {
        let out = sluice_sql(&data, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&[
        "-e",
        "CREATE STREAM s (id VARCHAR KEY, k VARCHAR) WITH (topic='s', partitions=1);
         INSERT INTO s (id, k) VALUES ('1', 'a'), ('2', 'b');
         CREATE TABLE c AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 10 MINUTES, ADVANCE BY 1 MINUTE) GROUP BY k;",
    ]);
    let shown = ok(&["-e", "SHOW QUERIES"]);
    assert!(shown.contains("CTAS_C_0"), "{shown}");
    // 600,000 windows per record: before the bound, every start resumed it into that.
    store_old_query(
        &data,
        "CTAS_C_0",
        "CREATE TABLE c AS SELECT k, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 10 MINUTES, ADVANCE BY 1 MILLISECONDS) GROUP BY k",
    );
    let out = sluice_sql(&data, &["-e", "SHOW QUERIES"]);
    assert!(out.status.success(), "{out:?}");
    let (shown, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        shown.contains("FAILED: HOPPING window") && shown.contains("the limit is 100"),
        "{shown}"
    );
    assert!(
        stderr.contains("query CTAS_C_0 could not start") && stderr.contains("TERMINATE CTAS_C_0"),
        "{stderr}"
    );
    // The worker does not start it either, and says why.
    let mut w = Worker::start(dir.path());
    let (s, v) = w.sql("SHOW QUERIES");
    assert_eq!(s, 200, "{v}");
    assert!(v.to_string().contains("FAILED: HOPPING window"), "{v}");
    drop(w);
    let out = ok(&[
        "-e",
        "TERMINATE CTAS_C_0; DROP TABLE c DELETE TOPIC; SHOW QUERIES",
    ]);
    assert!(out.contains("Terminated CTAS_C_0"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

/// A record whose known field holds a value nested 100,000 levels deep goes to the
/// dead-letter topic: before the decoder bounded nesting, Arrow's JSON decoder recursed once
/// per level on it and overflowed the query thread's stack, aborting the whole process.
/// Run in a child process, so an abort fails this test only.
#[test]
fn a_deeply_nested_record_is_a_dead_letter_not_an_abort() {
    if std::env::var("SLUICE_DEEP_CHILD").is_ok() {
        deep_record_child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "hardening_sql::a_deeply_nested_record_is_a_dead_letter_not_an_abort",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLUICE_DEEP_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the engine died on one record: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn deep_record_child() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut e = sluice_sql::engine::Engine::open(&log).unwrap();
    e.execute(
        "CREATE STREAM s (k VARCHAR KEY, zone VARCHAR, z2 VARCHAR) WITH (topic='s', partitions=1);
         CREATE STREAM o AS SELECT k, zone FROM s;",
    )
    .unwrap();
    let deep = format!(
        r#"{{"zone": "x", "z2": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    for v in [deep.as_str(), r#"{"zone": "y"}"#] {
        p.send(
            "s",
            Record {
                key: Some(Bytes::from("a")),
                value: Some(Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp: sluice_log::record::now_ms(),
            },
        )
        .unwrap();
    }
    p.flush().unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
    e.shutdown();
    assert_eq!(crate::common::read_committed(&log, "O").len(), 1);
    let dead = crate::common::read_committed(&log, "O.dlq");
    assert_eq!(dead.len(), 1);
}
