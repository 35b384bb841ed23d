//! Hardening of the log as users reach it (issue 10): internal topics cannot be deleted or
//! written through the REST API or the CLI, and records the log lost make `/health` report
//! `degraded` with where and what.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;
use reqwest::blocking::Client;
use serde_json::Value;
use sluice_log::{Log, LogOptions, Record};
use sluice_runtime::api::{ApiServer, ApiState, Limits, serve};
use sluice_runtime::deployer::Deployer;
use sluice_runtime::worker::Worker;
use sluice_sql::engine::Engine;

fn start(dir: &Path, log: &Log) -> ApiServer {
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    let worker = Worker::new(log, Engine::open(log).unwrap());
    let ingest = worker.ingest_routes();
    let deployer = Arc::new(Mutex::new(Deployer::new(worker, &pipelines)));
    let limits = Limits::default();
    let state = ApiState::new(deployer, log.clone(), ingest, None, &limits);
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    serve("127.0.0.1:0".parse().unwrap(), state, limits).unwrap()
}

fn call(server: &ApiServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = Client::new()
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", server.addr),
        )
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn end(log: &Log, topic: &str, partition: usize) -> i64 {
    log.describe_topic(topic).unwrap().partitions[partition].log_end_offset
}

#[test]
fn internal_topics_cannot_be_deleted_or_written_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("data"), LogOptions::default()).unwrap();
    let compact = [("cleanup.policy".to_string(), "compact".to_string())];
    log.create_topic("__sluice_source_positions", 1, &compact)
        .unwrap();
    log.create_topic("ctas_totals_0-changelog", 1, &compact)
        .unwrap();
    let server = start(dir.path(), &log);

    for topic in ["__sluice_source_positions", "ctas_totals_0-changelog"] {
        let (s, v) = call(&server, "DELETE", &format!("/topics/{topic}"), "");
        assert_eq!(s, 403, "DELETE {topic}: {v}");
        assert!(v["message"].as_str().unwrap().contains("internal"), "{v}");
        assert!(log.topic(topic).is_ok(), "{topic} was deleted");
    }
    for topic in [
        "__consumer_offsets",
        "__transaction_state",
        "__sluice_source_positions",
        "ctas_totals_0-changelog",
    ] {
        let before: Vec<i64> = (0..log.topic(topic).unwrap().partition_count() as usize)
            .map(|p| end(&log, topic, p))
            .collect();
        let (s, v) = call(
            &server,
            "POST",
            &format!("/topics/{topic}/records"),
            "{\"key\": \"k\", \"value\": \"forged\"}\n",
        );
        assert_eq!(s, 403, "POST {topic}: {v}");
        assert!(v["message"].as_str().unwrap().contains("internal"), "{v}");
        let after: Vec<i64> = (0..before.len()).map(|p| end(&log, topic, p)).collect();
        assert_eq!(before, after, "{topic} was written");
    }
    let (s, v) = call(&server, "POST", "/topics", "{\"name\": \"__mine\"}");
    assert_eq!(s, 403, "{v}");

    // Ordinary topics still work.
    let (s, v) = call(&server, "POST", "/topics", "{\"name\": \"orders\"}");
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &server,
        "POST",
        "/topics/orders/records",
        "{\"value\": \"x\"}\n",
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&server, "DELETE", "/topics/orders", "");
    assert_eq!(s, 200, "{v}");
}

#[test]
fn health_reports_data_loss_as_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let log = Log::open(&data, LogOptions::default()).unwrap();
        log.create_topic("t", 1, &[("segment.bytes".to_string(), "1024".to_string())])
            .unwrap();
        for i in 0..40 {
            log.append_records("t", 0, &[Record::from_value(format!("value-{i:04}"), 1)])
                .unwrap();
        }
        log.close().unwrap();
    }
    let mut segs: Vec<_> = std::fs::read_dir(data.join("topics/t/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    assert!(segs.len() > 2);
    std::fs::remove_file(&segs[1]).unwrap();

    let log = Log::open(&data, LogOptions::default()).unwrap();
    let server = start(dir.path(), &log);
    let (s, v) = call(&server, "GET", "/health", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "degraded", "{v}");
    let losses = v["data_loss"].as_array().unwrap();
    assert_eq!(losses.len(), 1, "{v}");
    assert_eq!(losses[0]["topic"], "t");
    assert_eq!(losses[0]["partition"], 0);
    assert!(losses[0]["to"].as_i64() > losses[0]["from"].as_i64(), "{v}");
    assert!(
        losses[0]["reason"].as_str().unwrap().contains(".log"),
        "{v}"
    );
    assert!(losses[0]["detected_at"].as_i64().unwrap() > 0);
    assert_eq!(end(&log, "t", 0), 40, "offsets are not reused");
}

#[test]
fn the_cli_refuses_to_delete_or_write_internal_topics() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(crate::cli::sluice_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for args in [
        &["produce", "__transaction_state"][..],
        &["produce", "__consumer_offsets"],
        &["topics", "delete", "__sluice_source_positions"],
        &["topics", "delete", "__consumer_offsets"],
        &["topics", "delete", "ctas_totals_0-changelog"],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("internal topic"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
}

#[test]
fn the_source_positions_topic_rolls_small_segments_so_compaction_can_shrink_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[[topics]]\nname = \"lines\"\n\n[[sources]]\nname = \"in\"\ntopic = \"lines\"\nfile = { path = \"in/*.txt\", format = \"lines\" }\n",
    )
    .unwrap();
    let (log, _worker) = crate::common::worker_with(dir.path(), &file);
    let config = log
        .describe_topic("__sluice_source_positions")
        .unwrap()
        .config;
    let get = |key: &str| {
        config
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, _)| v.clone())
            .unwrap()
    };
    assert_eq!(get("cleanup.policy"), "compact");
    assert_eq!(get("segment.bytes"), "1048576");
    assert_eq!(get("segment.ms"), "3600000");
    assert_eq!(get("delete.retention.ms"), "60000");
}
