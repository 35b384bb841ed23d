//! Tiered storage (issue 16): closed segments of topics with `remote.storage.enable=true` go
//! to an object store (here a local folder through object_store's `LocalFileSystem`; the
//! end-to-end tests use an S3 server), local copies go after `local.retention.*`, and reads
//! of old offsets come back from the store: through fetch, consumers, lookups by time,
//! read_committed with aborted transactions, and across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sluice_log::remote::RemoteStorage;
use sluice_log::{
    ConsumerConfig, Isolation, Log, LogError, LogOptions, OffsetReset, OffsetSpec, ProducerConfig,
    Record, TopicPartition,
};

fn storage(url: &str) -> RemoteStorage {
    RemoteStorage::new(url, BTreeMap::new())
}

fn open(dir: &Path, remote: Option<RemoteStorage>) -> Log {
    Log::open(
        dir,
        LogOptions {
            remote_storage: remote,
            // Uploads are driven by the tests, not the background thread.
            remote_upload_interval: Duration::from_secs(3600),
            housekeeping_interval: Duration::from_secs(3600),
            ..LogOptions::default()
        },
    )
    .expect("open log")
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Record times: recent, so that `retention.ms` (7 days) leaves them alone.
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| sluice_log::record::now_ms() - 3_600_000)
}

fn rec(i: usize, ts: i64) -> Record {
    Record {
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(format!("value-{i:05}-{}", "x".repeat(100)))),
        headers: Vec::new(),
        timestamp: ts,
    }
}

fn value_index(r: &Record) -> usize {
    let v = String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned();
    v[6..11].parse().unwrap()
}

/// Local `.log` files of partition 0.
fn local_segments(dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("topics").join(topic).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Every object under a folder, relative paths.
fn objects(root: &Path) -> Vec<String> {
    fn walk(at: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(at).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn read_everything(log: &Log, topic: &str) -> Vec<usize> {
    let mut out = Vec::new();
    log.read_all(topic, 0, |_, r| out.push(value_index(&r)))
        .unwrap();
    out
}

/// A log whose remote storage is a local folder: its folder, the store's, and the log.
fn tiered_log() -> (tempfile::TempDir, tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let log = open(dir.path(), Some(storage(&url)));
    (dir, store, log)
}

/// A tiered topic of `n` records in small segments, uploaded and trimmed locally to about
/// one segment.
fn tiered_topic(log: &Log, topic: &str, n: usize) {
    log.create_topic(
        topic,
        1,
        &kv(&[
            ("segment.bytes", "4096"),
            ("remote.storage.enable", "true"),
            ("local.retention.bytes", "4096"),
        ]),
    )
    .unwrap();
    for i in 0..n {
        log.append_records(topic, 0, &[rec(i, t0() + i as i64)])
            .unwrap();
    }
}

#[test]
fn old_segments_move_to_remote_storage_and_read_back_the_same() {
    let (dir, store, log) = tiered_log();
    tiered_topic(&log, "rides", 400);
    let before = local_segments(dir.path(), "rides").len();
    assert!(before > 5, "{before} segments");

    // Retention waits for uploads: nothing is deleted locally before it is in the store.
    log.run_housekeeping().unwrap();
    assert_eq!(local_segments(dir.path(), "rides").len(), before);

    let uploaded = log.upload_segments().unwrap();
    assert_eq!(
        uploaded,
        before - 1,
        "every closed segment, not the active one"
    );
    assert_eq!(log.upload_segments().unwrap(), 0, "uploads happen once");
    log.run_housekeeping().unwrap();
    let after = local_segments(dir.path(), "rides").len();
    assert!(after <= 2, "{after} local segments left");

    let info = &log.describe_topic("rides").unwrap().partitions[0];
    assert_eq!(info.log_start_offset, 0);
    assert!(info.local_log_start_offset > 0);
    let (rs, re) = info.remote.unwrap();
    assert_eq!(rs, 0);
    assert!(re >= info.local_log_start_offset);
    assert_eq!(info.remote_segments, before - 1);
    assert!(
        objects(store.path())
            .iter()
            .any(|o| o.starts_with("rides-") && o.ends_with("/0/00000000000000000000.log")),
        "{:?}",
        objects(store.path())
    );

    // Every record once, in order: from the store, then from disk.
    assert_eq!(read_everything(&log, "rides"), (0..400).collect::<Vec<_>>());

    // A consumer from the beginning, and a lookup by time that lands in the store.
    let mut c = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    c.assign(&[TopicPartition::new("rides", 0)]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen.extend(c.poll(Duration::from_millis(5)).unwrap().iter().map(|r| {
            value_index(&Record {
                key: None,
                value: r.value.clone(),
                headers: Vec::new(),
                timestamp: 0,
            })
        }));
        if seen.len() == 400 {
            break;
        }
    }
    assert_eq!(seen, (0..400).collect::<Vec<_>>());
    assert_eq!(
        log.list_offset(
            "rides",
            0,
            OffsetSpec::Timestamp(t0() + 17),
            Isolation::ReadCommitted
        )
        .unwrap(),
        Some(17)
    );
    assert_eq!(
        log.list_offset(
            "rides",
            0,
            OffsetSpec::Timestamp(t0() + 399),
            Isolation::ReadCommitted
        )
        .unwrap(),
        Some(399)
    );

    // A restart finds the remote storage in the data directory, reports no loss, and reads
    // the same.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), None);
    assert!(log.data_loss().is_empty(), "{:?}", log.data_loss());
    assert_eq!(read_everything(&log, "rides"), (0..400).collect::<Vec<_>>());
    assert_eq!(
        log.describe_topic("rides").unwrap().partitions[0].log_start_offset,
        0
    );
}

#[test]
fn retention_deletes_remote_copies_and_moves_the_log_start() {
    let (_dir, store, log) = tiered_log();
    tiered_topic(&log, "t", 300);
    log.upload_segments().unwrap();
    log.run_housekeeping().unwrap();
    let remote_before = objects(store.path()).len();
    // The whole log may keep about 8 KiB: remote copies go first, oldest first.
    log.alter_config("t", &kv(&[("retention.bytes", "8192")]))
        .unwrap();
    log.run_housekeeping().unwrap();
    // The upload thread's round deletes the remote copies below the new log start.
    log.upload_segments().unwrap();
    let info = &log.describe_topic("t").unwrap().partitions[0];
    assert!(info.log_start_offset > 200, "{info:?}");
    assert!(objects(store.path()).len() < remote_before);
    let got = read_everything(&log, "t");
    assert_eq!(got.first().copied(), Some(info.log_start_offset as usize));
    assert_eq!(got.last().copied(), Some(299));
    match log.fetch("t", 0, 0, 1 << 20, Isolation::ReadCommitted) {
        Err(LogError::OffsetOutOfRange { .. }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
}

#[test]
fn aborted_transactions_stay_invisible_when_read_from_the_store() {
    let (dir, _store, log) = tiered_log();
    tiered_topic(&log, "t", 0);
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    for round in 0..40 {
        p.begin_transaction().unwrap();
        for j in 0..5 {
            p.send_to("t", 0, rec(round * 5 + j, t0())).unwrap();
        }
        p.flush().unwrap();
        if round % 2 == 0 {
            p.commit_transaction().unwrap();
        } else {
            p.abort_transaction().unwrap();
        }
    }
    log.upload_segments().unwrap();
    log.run_housekeeping().unwrap();
    // Restarted: the markers of the oldest transactions are only in the store now.
    log.close().unwrap();
    drop(p);
    drop(log);
    let log = open(dir.path(), None);
    let info = &log.describe_topic("t").unwrap().partitions[0];
    assert!(info.local_log_start_offset > 100, "{info:?}");
    let want: Vec<usize> = (0..40)
        .filter(|r| r % 2 == 0)
        .flat_map(|r| r * 5..r * 5 + 5)
        .collect();
    assert_eq!(read_everything(&log, "t"), want);
}

#[test]
fn nothing_is_deleted_locally_while_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: every upload fails.
    let down = RemoteStorage::new(
        "s3://bucket/prefix",
        [
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "hunter2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let log = open(dir.path(), Some(down));
    tiered_topic(&log, "t", 100);
    let before = local_segments(dir.path(), "t").len();
    let err = log.upload_segments().unwrap_err();
    let text = err.to_string();
    assert!(err.is_retryable(), "{text}");
    assert!(text.contains("s3://bucket/prefix"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    log.run_housekeeping().unwrap();
    assert_eq!(local_segments(dir.path(), "t").len(), before);
    assert_eq!(read_everything(&log, "t"), (0..100).collect::<Vec<_>>());
    // The secret was not saved with the storage.
    let saved = std::fs::read_to_string(dir.path().join("remote-storage.json")).unwrap();
    assert!(
        !saved.contains("hunter2") && saved.contains("aws_endpoint"),
        "{saved}"
    );
}

#[test]
fn an_upload_cut_short_before_the_manifest_is_redone_under_the_same_names() {
    let (dir, store, log) = tiered_log();
    tiered_topic(&log, "t", 200);
    log.upload_segments().unwrap();
    let uploaded = objects(store.path());
    log.close().unwrap();
    drop(log);
    // As if the process died after the objects were written, before the manifest was: the
    // manifest is gone, the objects are there.
    std::fs::remove_file(dir.path().join("topics/t/0/remote.json")).unwrap();
    let log = open(dir.path(), None);
    assert!(log.data_loss().is_empty(), "{:?}", log.data_loss());
    assert_eq!(log.upload_segments().unwrap(), uploaded.len() / 3);
    assert_eq!(
        objects(store.path()),
        uploaded,
        "the same objects, no others"
    );
    log.run_housekeeping().unwrap();
    assert_eq!(read_everything(&log, "t"), (0..200).collect::<Vec<_>>());
}

#[test]
fn a_lost_manifest_of_deleted_local_segments_is_data_loss_not_silence() {
    let (dir, _store, log) = tiered_log();
    tiered_topic(&log, "t", 200);
    log.upload_segments().unwrap();
    log.run_housekeeping().unwrap();
    log.close().unwrap();
    drop(log);
    std::fs::remove_file(dir.path().join("topics/t/0/remote.json")).unwrap();
    let log = open(dir.path(), None);
    let losses = log.data_loss();
    // Every segment that was only in the store is reported, from offset 0 on.
    assert!(!losses.is_empty());
    assert_eq!(losses[0].from, 0);
    assert!(
        losses.windows(2).all(|w| w[0].to == w[1].from),
        "{losses:?}"
    );
}

#[test]
fn tiering_is_refused_where_it_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), None);
    let e = log
        .create_topic("t", 1, &kv(&[("remote.storage.enable", "true")]))
        .unwrap_err();
    assert!(e.to_string().contains("--remote-storage"), "{e}");
    log.close().unwrap();
    drop(log);
    let store = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        Some(storage(&format!("file://{}", store.path().display()))),
    );
    let e = log
        .create_topic(
            "t",
            1,
            &kv(&[
                ("remote.storage.enable", "true"),
                ("cleanup.policy", "compact"),
            ]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("compact"), "{e}");
    let e = log
        .create_topic(
            "t",
            1,
            &kv(&[
                ("remote.storage.enable", "true"),
                ("retention.ms", "1000"),
                ("local.retention.ms", "5000"),
            ]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("local.retention.ms"), "{e}");
    log.create_topic("ok", 1, &[]).unwrap();
    let e = log
        .alter_config(
            "ok",
            &kv(&[
                ("cleanup.policy", "compact"),
                ("remote.storage.enable", "true"),
            ]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("compact"), "{e}");
}

#[test]
fn deleting_a_topic_deletes_its_remote_copies_and_a_new_one_starts_clean() {
    let (_dir, store, log) = tiered_log();
    tiered_topic(&log, "t", 100);
    log.upload_segments().unwrap();
    assert!(!objects(store.path()).is_empty());
    log.delete_topic("t").unwrap();
    assert!(
        objects(store.path()).is_empty(),
        "{:?}",
        objects(store.path())
    );
    tiered_topic(&log, "t", 10);
    assert_eq!(read_everything(&log, "t"), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_tiered_topic_cannot_turn_compacted_and_a_torn_object_is_an_error_not_a_panic() {
    let (_dir, store, log) = tiered_log();
    tiered_topic(&log, "t", 200);
    log.upload_segments().unwrap();
    log.run_housekeeping().unwrap();
    let e = log
        .alter_config(
            "t",
            &kv(&[
                ("remote.storage.enable", "false"),
                ("cleanup.policy", "compact"),
            ]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("cannot be compacted"), "{e}");

    // The first segment's object loses its tail (a foreign or damaged object).
    let first = objects(store.path())
        .into_iter()
        .find(|o| o.ends_with("00000000000000000000.log"))
        .unwrap();
    let path = store.path().join(&first);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = log
        .fetch("t", 0, 0, 1 << 20, Isolation::ReadCommitted)
        .unwrap_err();
    assert!(err.to_string().contains("tiered storage"), "{err}");
}

#[test]
fn an_upload_of_a_deleted_topic_writes_nothing_into_a_new_one_of_the_same_name() {
    let (dir, store, log) = tiered_log();
    tiered_topic(&log, "t", 100);
    let old = log.partition("t", 0).unwrap();
    log.delete_topic("t").unwrap();
    tiered_topic(&log, "t", 3);
    assert!(!old.upload_next().unwrap());
    assert_eq!(old.delete_expired_remote().unwrap(), 0);
    assert!(!dir.path().join("topics/t/0/remote.json").exists());
    assert!(
        objects(store.path()).is_empty(),
        "{:?}",
        objects(store.path())
    );
}
