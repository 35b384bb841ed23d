//! The task runtime and what runs on it, under attack: stops that must be prompt, a record
//! too large for its topic, a topic schema that changes under a running Parquet sink.

use std::time::Duration;

use sluice_runtime::api::Limits;

use crate::common::{Served, wait_for};

/// One HTTP request whose record is larger than the topic's `max.message.bytes` (but within
/// the source's `max-body-bytes`) must not take the ingest endpoint down for every client:
/// it should be refused (413/400) or dead-lettered, and the next small request accepted.
#[test]
fn one_oversized_ingest_record_does_not_kill_the_ingest_source() {
    let w = Served::start(Limits::default(), true, None);
    let pipeline = r#"
[[topics]]
name = "big"

[[sources]]
name = "in"
topic = "big"
http = { }
"#;
    let (s, v) = w.call("PUT", "/pipelines/p", &[], pipeline);
    assert_eq!(s, 200, "{v}");
    // 1.5 MiB in one JSON object: under max-body-bytes (16 MiB), over max.message.bytes (1 MiB).
    let huge = format!("{{\"blob\": \"{}\"}}", "x".repeat(1_500_000));
    let (s, v) = w.call(
        "POST",
        "/ingest/big",
        &[("content-type", "application/x-ndjson")],
        &huge,
    );
    assert_ne!(
        s, 200,
        "an oversized record cannot have been committed: {v}"
    );
    // The source must still take ordinary requests (retry a few times for a restart backoff).
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..20 {
        last = w.call(
            "POST",
            "/ingest/big",
            &[("content-type", "application/x-ndjson")],
            "{\"ok\": 1}",
        );
        if last.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (_, status) = w.call("GET", "/pipelines/p", &[], "");
    assert_eq!(
        last.0, 200,
        "after one oversized request the ingest endpoint answers {} ({}); pipeline status: {status}",
        last.0, last.1
    );
}

/// A stop "wakes every wait at once" (sluice-task): pausing a pipeline whose sink has an
/// open epoch must return promptly, whatever its commit interval. The sink's consumer poll
/// waits for the rest of the epoch; the stop's `wake_waiters` only bumps the log's append
/// generation, which the poll loop re-reads and then waits out again.
#[test]
fn pausing_a_pipeline_with_a_long_commit_interval_returns_promptly() {
    use sluice_log::ProducerConfig;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "p"
commit-interval = "30s"

[[topics]]
name = "t"

[[sinks]]
name = "out"
topic = "t"
file = {{ path = "{}" }}
"#,
            out.display()
        ),
    )
    .unwrap();
    let (log, mut worker) = crate::common::worker_with(dir.path(), &file);
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    p.send("t", crate::common::rec("k", "{\"a\":1}", 1))
        .unwrap();
    p.flush().unwrap();
    let status = std::sync::Arc::clone(&worker.pipelines()[0].tasks[0].status);
    wait_for("the sink to take the record", || {
        status.records_in.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    worker.pause("p").unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "pausing took {took:?}: the stop did not end the sink's wait"
    );
    let tp = sluice_log::TopicPartition {
        topic: "t".into(),
        partition: 0,
    };
    assert_eq!(
        log.committed(&sluice_runtime::worker::sink_group("p", "out"), &tp),
        Some(1),
        "the open epoch commits on stop"
    );
}

/// Rows of every Parquet object under `dir`, as JSON lines, by object name.
fn parquet_rows(dir: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
                let Ok(b) =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                else {
                    continue; // being written
                };
                let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
                for batch in b.build().unwrap() {
                    w.write_batches(&[&batch.unwrap()]).unwrap();
                }
                w.finish().unwrap();
                let text = String::from_utf8(w.into_inner()).unwrap();
                out.push((
                    p.display().to_string(),
                    text.lines().map(str::to_string).collect(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// "Sinks write with the recorded schema": a compatible new version (a nullable column
/// added, as a re-created CSAS registers) must not make a running Parquet sink drop the new
/// column's values silently (neither written nor dead-lettered).
#[test]
fn a_running_parquet_sink_does_not_silently_drop_a_column_added_by_a_new_schema_version() {
    use sluice_log::{FieldSchema, FieldType, ProducerConfig, RecordSchema};
    let dir = tempfile::tempdir().unwrap();
    let subject = sluice_log::value_subject("t");
    {
        let log = sluice_log::Log::open(dir.path().join("data"), Default::default()).unwrap();
        log.schemas()
            .register(
                &subject,
                &RecordSchema::new(vec![FieldSchema::nullable("a", FieldType::Int64)]),
            )
            .unwrap();
        log.close().unwrap();
    }
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"
name = "p"

[[topics]]
name = "t"

[[sinks]]
name = "lake"
topic = "t"
object-store = { url = "file://lake", format = "parquet", flush-records = 1 }
"#,
    )
    .unwrap();
    let (log, mut worker) = crate::common::worker_with(dir.path(), &file);
    let lake = dir.path().join("lake");
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    p.send("t", crate::common::rec("k", r#"{"a": 1}"#, 1))
        .unwrap();
    p.flush().unwrap();
    wait_for("the first object", || parquet_rows(&lake).len() == 1);
    // A compatible evolution: `b` added, nullable.
    log.schemas()
        .register(
            &subject,
            &RecordSchema::new(vec![
                FieldSchema::nullable("a", FieldType::Int64),
                FieldSchema::nullable("b", FieldType::String),
            ]),
        )
        .unwrap();
    p.send("t", crate::common::rec("k", r#"{"a": 2, "b": "kept?"}"#, 2))
        .unwrap();
    p.flush().unwrap();
    wait_for("the second object", || parquet_rows(&lake).len() == 2);
    std::thread::sleep(Duration::from_millis(500));
    worker.shutdown();
    let rows = parquet_rows(&lake);
    let dead = crate::common::read_committed(&log, &sluice_runtime::worker::dlq_topic("p"));
    let all: Vec<&String> = rows.iter().flat_map(|(_, r)| r).collect();
    assert!(
        all.iter().any(|r| r.contains("kept?")) || !dead.is_empty(),
        "the value of the new column b is neither in the objects nor a dead letter: {rows:?}"
    );
}

/// TERMINATE of a persistent query with an open epoch must return promptly and commit the
/// epoch, whatever the query's commit interval.
#[test]
fn terminate_of_a_query_with_a_long_commit_interval_returns_promptly() {
    use sluice_log::ProducerConfig;
    use sluice_sql::runner::RunnerConfig;
    let dir = tempfile::tempdir().unwrap();
    let log = sluice_log::Log::open(dir.path().join("data"), Default::default()).unwrap();
    let mut engine = sluice_sql::engine::Engine::open(&log).unwrap();
    let config = RunnerConfig {
        commit_interval: Duration::from_secs(30),
        ..RunnerConfig::default()
    };
    engine
        .execute_with(
            "CREATE STREAM s (a INT) WITH (topic = 's', partitions = 1);
             CREATE STREAM o AS SELECT a FROM s;",
            &config,
        )
        .unwrap();
    let id = engine
        .catalog()
        .queries()
        .next()
        .map(|q| q.id.clone())
        .unwrap();
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    p.send("s", crate::common::rec("k", r#"{"a": 1}"#, 1))
        .unwrap();
    p.flush().unwrap();
    let stats = engine.queries().stats(&id).unwrap();
    wait_for("the query to take the record", || {
        stats.records_in.load(std::sync::atomic::Ordering::SeqCst) >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    engine.execute(&format!("TERMINATE {id};")).unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "TERMINATE took {took:?}: the stop did not end the query's poll"
    );
}
