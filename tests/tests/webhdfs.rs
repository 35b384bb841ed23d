//! The object-store sink on HDFS (`webhdfs://`). No HDFS can be installed on these machines,
//! so the tests run against a WebHDFS server written from the Hadoop WebHDFS REST
//! documentation (`runtime/src/cli/bench_sink/webhdfs.rs`, shared with `sluice bench sink`): a namenode and a datanode on two ports, the two-step `CREATE` (the
//! namenode names the datanode, with `noredirect=true` in a JSON body, else by a 307), `OPEN`,
//! `MKDIRS`, `RENAME` (false when the destination exists), `DELETE`, `CONCAT`, `LISTSTATUS`,
//! `LISTSTATUS_BATCH`, `GETFILESTATUS`, errors as Hadoop's `RemoteException` JSON, and
//! leases: a file whose write broke stays under construction, and creating it again fails
//! with `AlreadyBeingCreatedException` until its lease expires.
//!
//! With `SLUICE_TEST_WEBHDFS_URL=webhdfs://namenode:9870/some/dir` set, the contract test
//! also runs against that real cluster (user from `SLUICE_TEST_WEBHDFS_USER`, default
//! `hdfs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_connectors::Sink;
use sluice_connectors::objstore::{ObjectStoreSink, ObjectStoreSinkConfig};
use sluice_log::ConsumerRecord;
use sluice_runtime::cli::bench_sink::webhdfs::{WebHdfs, tree};

fn config(url: &str, extra: Value) -> ObjectStoreSinkConfig {
    let mut c = json!({"url": url, "flush-records": 3, "flush-idle": "0s", "retry-timeout": "5s"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn rec(offset: i64, value: &str) -> ConsumerRecord {
    ConsumerRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp: 1_700_000_000_000 + offset,
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
    }
}

/// `(object name, line)` of every object under `dir` but the upload blocks.
fn lines(files: &BTreeMap<String, Vec<u8>>) -> Vec<(String, String)> {
    files
        .iter()
        .filter(|(name, _)| !name.starts_with(".sluice-tmp/"))
        .flat_map(|(name, data)| {
            String::from_utf8(data.clone())
                .unwrap()
                .lines()
                .map(|l| (name.clone(), l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_sink_writes_hdfs_through_webhdfs_and_replays_idempotently() {
    let hdfs = WebHdfs::start().unwrap();
    sluice_connectors::conformance::sink_replays_are_idempotent(
        &|i| {
            let c = config(&hdfs.url(&format!("/lake/env{i}")), json!({}));
            Box::new(ObjectStoreSink::new(c, Path::new(".")).unwrap())
        },
        &|i| lines(&tree(&hdfs.http(), &format!("/lake/env{i}"), "sluice").unwrap()),
    );
    let files = tree(&hdfs.http(), "/lake/env0", "sluice").unwrap();
    assert!(
        files.contains_key("t/0/00000000000000000000.jsonl"),
        "{:?}",
        files.keys()
    );
    // Objects reach their names only by RENAME: no CREATE ever wrote one in place.
    let log = hdfs.operations();
    let created: BTreeSet<&String> = log
        .iter()
        .filter(|(op, _)| op == "CREATE-DATA")
        .map(|(_, p)| p)
        .collect();
    assert!(
        created.iter().all(|p| p.contains("/.sluice-tmp/")),
        "{created:?}"
    );
    assert!(
        log.iter()
            .any(|(op, p)| op == "RENAME" && p.contains("/.sluice-tmp/"))
    );
    assert!(log.iter().any(|(op, _)| op == "CONCAT"));
    // Objects over `multipart-threshold` take the same way, with their length checked.
    let c = config(&hdfs.url("/lake/parts"), json!({"multipart-threshold": 10}));
    let mut sink = ObjectStoreSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    let records: Vec<ConsumerRecord> = (0..3).map(|o| rec(o, &format!("{{\"n\":{o}}}"))).collect();
    sink.write(&records).unwrap();
    sink.flush().unwrap();
    let files = tree(&hdfs.http(), "/lake/parts", "sluice").unwrap();
    assert_eq!(
        files["t/0/00000000000000000000.jsonl"],
        b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
    );
    assert!(
        hdfs.operations()
            .iter()
            .filter(|(op, _)| op == "CREATE-DATA")
            .all(|(_, p)| p.contains("/.sluice-tmp/"))
    );
}

#[test]
fn a_write_that_breaks_leaves_no_lease_on_the_object() {
    let hdfs = WebHdfs::start().unwrap();
    // A delegation token travels in every request's URL: never in an error.
    let c = config(
        &hdfs.url("/lake/broken"),
        json!({"options": {"delegation": "s3cret-token"}}),
    );
    let records: Vec<ConsumerRecord> = (0..3).map(|o| rec(o, &format!("{{\"n\":{o}}}"))).collect();
    // The first block's write breaks half way: its file stays under construction, with a
    // lease, and the upload fails.
    hdfs.break_writes(1);
    let mut sink = ObjectStoreSink::new(c.clone(), Path::new(".")).unwrap();
    sink.open(None).unwrap();
    let e = sink.write(&records).and_then(|_| sink.flush());
    assert!(e.is_err(), "the broken write is an error");
    let e = e.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // The error says what the namenode said (Hadoop's RemoteException), without the token.
    let text = e.to_string();
    assert!(
        text.contains("AlreadyBeingCreatedException") || text.contains("Connection reset"),
        "{text}"
    );
    assert!(!text.contains("s3cret-token"), "{text}");
    // The replay (a new attempt) writes fresh blocks and the object lands whole.
    // Dropped now: a failed attempt's sink is done with (it may hold the upload's other
    // block in flight).
    drop(sink);
    let mut sink = ObjectStoreSink::new(c, Path::new(".")).unwrap();
    sink.open(None).unwrap();
    sink.write(&records).unwrap();
    let durable = sink.flush().unwrap();
    assert_eq!(durable.get(&0), Some(&3));
    let files = tree(&hdfs.http(), "/lake/broken", "sluice").unwrap();
    assert_eq!(
        String::from_utf8(files["t/0/00000000000000000000.jsonl"].clone()).unwrap(),
        "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
    );
    // The broken block is left in the temporary folder, under its lease (and the other
    // block of its upload, if the abort could not delete it).
    let left = files
        .keys()
        .filter(|k| k.starts_with(".sluice-tmp/"))
        .count();
    assert!((1..=2).contains(&left), "{left} blocks left");
}

#[test]
fn hdfs_urls_and_options_are_checked() {
    let new = |url: &str, extra: Value| {
        ObjectStoreSink::new(config(url, extra), Path::new("."))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert!(
        new("hdfs://nn:8020/x", json!({}))
            .unwrap_err()
            .contains("use the namenode's WebHDFS")
    );
    assert!(
        new("webhdfs:///x", json!({}))
            .unwrap_err()
            .contains("names no namenode")
    );
    assert!(
        new("webhdfs://nn:9870/x", json!({"options": {"region": "x"}}))
            .unwrap_err()
            .contains("options.region is not a WebHDFS setting")
    );
    new(
        "webhdfs://nn:9870/x",
        json!({"options": {"user-name": "etl"}}),
    )
    .unwrap();
}

#[test]
fn a_real_cluster_when_one_is_named() {
    let Ok(url) = std::env::var("SLUICE_TEST_WEBHDFS_URL") else {
        eprintln!(
            "SLUICE_TEST_WEBHDFS_URL is not set: no real HDFS to test against (see the README)"
        );
        return;
    };
    let user = std::env::var("SLUICE_TEST_WEBHDFS_USER").unwrap_or_else(|_| "hdfs".into());
    let run = format!(
        "{}/sluice-test-{}",
        url.trim_end_matches('/'),
        std::process::id()
    );
    let rest = run.strip_prefix("webhdfs://").expect("a webhdfs:// url");
    let (host, dir) = rest.split_once('/').expect("webhdfs://namenode:port/dir");
    let http = format!("http://{host}");
    sluice_connectors::conformance::sink_replays_are_idempotent(
        &|i| {
            let c = config(
                &format!("{run}/env{i}"),
                json!({"options": {"user-name": user}}),
            );
            Box::new(ObjectStoreSink::new(c, Path::new(".")).unwrap())
        },
        &|i| lines(&tree(&http, &format!("/{dir}/env{i}"), &user).unwrap()),
    );
}
