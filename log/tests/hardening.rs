//! Hardening of the log against damage and misuse (issue 10): offsets are never reused when
//! records are lost, damage is reported loudly and the same way on every start, topics with
//! long names can be deleted, internal topics are protected, and compaction drops what
//! transactions no longer need.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sluice_log::{
    ConsumerConfig, Isolation, Log, LogError, LogOptions, OffsetReset, OffsetSpec, ProducerConfig,
    Record, TopicPartition,
};

fn open(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default()).expect("open log")
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rec(key: &str, value: &str) -> Record {
    Record {
        key: Some(Bytes::from(key.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: Vec::new(),
        timestamp: sluice_log::record::now_ms(),
    }
}

fn part_dir(log_dir: &Path, topic: &str) -> PathBuf {
    log_dir.join("topics").join(topic).join("0")
}

/// Segment `.log` files of partition 0, by base offset.
fn segments(log_dir: &Path, topic: &str) -> Vec<(i64, PathBuf)> {
    let mut out: Vec<(i64, PathBuf)> = std::fs::read_dir(part_dir(log_dir, topic))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
        .collect();
    out.sort();
    out
}

/// A topic with small segments holding `n` records of one batch each.
fn topic_with_records(log: &Log, topic: &str, n: usize) {
    log.create_topic(topic, 1, &kv(&[("segment.bytes", "1024")]))
        .unwrap();
    for i in 0..n {
        log.append_records(topic, 0, &[rec(&format!("k{i}"), &format!("value-{i:04}"))])
            .unwrap();
    }
}

fn end_offset(log: &Log, topic: &str) -> i64 {
    log.describe_topic(topic).unwrap().partitions[0].log_end_offset
}

/// Every record offset of partition 0, read_uncommitted, following gaps.
fn offsets(log: &Log, topic: &str) -> Vec<i64> {
    let mut c = log.consumer(ConsumerConfig {
        isolation: Isolation::ReadUncommitted,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    let tp = TopicPartition {
        topic: topic.into(),
        partition: 0,
    };
    c.assign(std::slice::from_ref(&tp)).unwrap();
    c.seek_to(&tp, OffsetSpec::Earliest).unwrap();
    let end = end_offset(log, topic);
    let mut out = Vec::new();
    for _ in 0..200 {
        if c.position(&tp).is_some_and(|p| p >= end) {
            break;
        }
        out.extend(
            c.poll(Duration::from_millis(10))
                .unwrap()
                .iter()
                .map(|r| r.offset),
        );
    }
    out
}

/// A log in `dir` with topic `t` of `n` one-record batches, left as a `kill -9` leaves it.
fn crashed_with_records(dir: &Path, n: usize) {
    let log = open(dir);
    log.create_topic("t", 1, &[]).unwrap();
    for i in 0..n {
        log.append_records("t", 0, &[rec(&format!("k{i}"), "v")])
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    forget_clean_shutdown(dir);
}

/// Marks the last shutdown as a crash (as a `kill -9` leaves it).
fn forget_clean_shutdown(dir: &Path) {
    std::fs::remove_file(dir.join(".clean-shutdown")).unwrap();
}

// ----- item 5: offsets are never reused when records are lost -----

#[test]
fn a_deleted_middle_segment_keeps_offsets_and_is_reported_as_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    topic_with_records(&log, "t", 60);
    log.close().unwrap();
    drop(log);
    let segs = segments(dir.path(), "t");
    assert!(segs.len() > 3, "{segs:?}");
    let (lost_from, lost_to) = (segs[1].0, segs[2].0);
    std::fs::remove_file(&segs[1].1).unwrap();

    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 60);
    let losses = log.data_loss();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(
        (
            losses[0].topic.as_str(),
            losses[0].partition,
            losses[0].from,
            losses[0].to
        ),
        ("t", 0, lost_from, lost_to)
    );
    let got = offsets(&log, "t");
    let expected: Vec<i64> = (0..60)
        .filter(|o| *o < lost_from || *o >= lost_to)
        .collect();
    assert_eq!(got, expected);
    let a = log.append_records("t", 0, &[rec("k", "after")]).unwrap();
    assert_eq!(a.base_offset, 60, "offsets are not reused");
}

#[test]
fn a_deleted_active_segment_keeps_the_end_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    topic_with_records(&log, "t", 40);
    log.close().unwrap();
    drop(log);
    let segs = segments(dir.path(), "t");
    let (last_base, last_path) = segs.last().unwrap().clone();
    assert!(last_base < 40);
    std::fs::remove_file(&last_path).unwrap();

    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 40, "the end does not move back");
    let a = log.append_records("t", 0, &[rec("k", "after")]).unwrap();
    assert_eq!(a.base_offset, 40);
    let losses = log.data_loss();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!((losses[0].from, losses[0].to), (last_base, 40));

    // A consumer whose committed position was inside the lost range reads on from the next
    // offset that exists, without a reset to 0.
    let mut c = log.consumer(ConsumerConfig {
        isolation: Isolation::ReadUncommitted,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    let tp = TopicPartition {
        topic: "t".into(),
        partition: 0,
    };
    c.assign(std::slice::from_ref(&tp)).unwrap();
    c.seek(&tp, last_base + 1);
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(
            c.poll(Duration::from_millis(10))
                .unwrap()
                .iter()
                .map(|r| r.offset),
        );
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, [40]);

    // The loss stays recorded across restarts; the offsets stay as they are.
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 41);
    assert_eq!(log.data_loss().len(), 1);
}

/// Flips a byte inside the records of the batch holding `offset` (the CRC then fails).
fn corrupt_batch_of(path: &Path, offset: i64) {
    let mut data = std::fs::read(path).unwrap();
    let mut pos = 0usize;
    while pos + 61 <= data.len() {
        let h = sluice_log::batch::BatchHeader::parse(&data[pos..]).unwrap();
        if h.base_offset <= offset && offset <= h.last_offset() {
            let at = pos + h.total_size() - 3;
            data[at] ^= 0xff;
            std::fs::write(path, data).unwrap();
            return;
        }
        pos += h.total_size();
    }
    panic!("offset {offset} not in {}", path.display());
}

#[test]
fn mid_segment_corruption_after_a_crash_keeps_offsets_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    crashed_with_records(dir.path(), 30);
    let (_, path) = segments(dir.path(), "t").pop().unwrap();
    corrupt_batch_of(&path, 12);

    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 30, "the end does not move back");
    let losses = log.data_loss();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!((losses[0].from, losses[0].to), (12, 30));
    assert_eq!(offsets(&log, "t"), (0..12).collect::<Vec<_>>());
    assert_eq!(
        log.append_records("t", 0, &[rec("k", "v")])
            .unwrap()
            .base_offset,
        30
    );
}

#[test]
fn mid_segment_corruption_is_found_without_a_checkpoint() {
    // The later valid batches tell the former end even when the checkpoint is older.
    let dir = tempfile::tempdir().unwrap();
    crashed_with_records(dir.path(), 30);
    let _ = std::fs::remove_file(part_dir(dir.path(), "t").join("offsets.checkpoint"));
    let (_, path) = segments(dir.path(), "t").pop().unwrap();
    corrupt_batch_of(&path, 20);
    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 30);
    let losses = log.data_loss();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!((losses[0].from, losses[0].to), (20, 30));
}

#[test]
fn a_torn_tail_after_a_crash_is_silent_and_not_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    crashed_with_records(dir.path(), 10);
    // Half of a batch that was being written when the process died.
    let (_, path) = segments(dir.path(), "t").pop().unwrap();
    let data = std::fs::read(&path).unwrap();
    let mut torn = data.clone();
    torn.extend_from_slice(&data[..data.len().min(80) / 2]);
    std::fs::write(&path, torn).unwrap();

    let log = open(dir.path());
    assert_eq!(end_offset(&log, "t"), 10);
    assert!(log.data_loss().is_empty(), "{:?}", log.data_loss());
    assert_eq!(std::fs::read(&path).unwrap(), data, "the torn tail is cut");
}

#[test]
fn a_consumer_beyond_the_end_is_not_reset_silently() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    log.append_records("t", 0, &[rec("k", "v")]).unwrap();
    let mut c = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::None,
        ..ConsumerConfig::default()
    });
    let tp = TopicPartition {
        topic: "t".into(),
        partition: 0,
    };
    c.assign(std::slice::from_ref(&tp)).unwrap();
    c.seek(&tp, 5);
    let err = c.poll(Duration::from_millis(10)).unwrap_err();
    assert!(matches!(err, LogError::OffsetOutOfRange { .. }), "{err}");
}

// ----- item 12: a damaged tail after a clean stop -----

#[test]
fn a_damaged_active_segment_after_a_clean_stop_is_repaired_loudly_and_the_same_each_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    for i in 0..10 {
        log.append_records("t", 0, &[rec(&format!("k{i}"), "v")])
            .unwrap();
    }
    log.close().unwrap();
    drop(log);
    assert!(dir.path().join(".clean-shutdown").exists());
    // Cut the active segment in the middle of its last batch.
    let (_, path) = segments(dir.path(), "t").pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let mut answers = Vec::new();
    for _ in 0..3 {
        let log = open(dir.path());
        answers.push((end_offset(&log, "t"), log.data_loss()));
        log.close().unwrap();
    }
    let (end, losses) = &answers[0];
    assert_eq!(*end, 10, "the end stays where it was");
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!((losses[0].from, losses[0].to), (9, 10));
    assert!(losses[0].reason.contains(".log"), "{}", losses[0].reason);
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
}

#[test]
fn a_damaged_closed_segment_is_refused_with_where_and_what_to_do_on_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    topic_with_records(&log, "t", 30);
    log.close().unwrap();
    drop(log);
    let segs = segments(dir.path(), "t");
    // A broken length field in the second batch of the first segment.
    let mut data = std::fs::read(&segs[0].1).unwrap();
    let h = sluice_log::batch::BatchHeader::parse(&data).unwrap();
    let at = h.total_size() + 16;
    data[at] = 77; // magic
    std::fs::write(&segs[0].1, data).unwrap();

    let mut errors = Vec::new();
    for _ in 0..2 {
        let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
        errors.push(err.to_string());
    }
    let e = &errors[0];
    assert_eq!(errors[0], errors[1], "the same answer on every start");
    for part in [
        "'t'",
        "partition 0",
        "00000000000000000000.log",
        "byte",
        "offset",
    ] {
        assert!(e.contains(part), "{part} missing: {e}");
    }
    assert!(
        e.contains("restore") || e.contains("move"),
        "what to do: {e}"
    );
    assert!(dir.path().join(".clean-shutdown").exists());
}

// ----- item 13: long topic names -----

#[test]
fn a_topic_with_a_249_character_name_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let name = "n".repeat(249);
    log.create_topic(&name, 2, &[]).unwrap();
    log.append_records(&name, 0, &[rec("k", "v")]).unwrap();
    log.delete_topic(&name).unwrap();
    assert!(log.topic(&name).is_err());
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert!(log.topic(&name).is_err(), "the deleted topic came back");
    let err = log.create_topic(&"n".repeat(250), 1, &[]).unwrap_err();
    assert!(matches!(err, LogError::InvalidTopicName { .. }), "{err}");
}

// ----- item 14: internal topics -----

#[test]
fn internal_topics_are_recognized_and_cannot_be_deleted() {
    for name in [
        "__consumer_offsets",
        "__transaction_state",
        "__sluice_source_positions",
        "__sluice_catalog",
        "ctas_totals_0-changelog",
        "csas_big_1-source-changelog",
    ] {
        assert!(sluice_log::is_internal_topic(name), "{name}");
    }
    for name in ["orders", "orders.dlq", "_private", "changelog"] {
        assert!(!sluice_log::is_internal_topic(name), "{name}");
    }
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic(
        "__sluice_source_positions",
        1,
        &kv(&[("cleanup.policy", "compact")]),
    )
    .unwrap();
    let err = log.delete_topic("__sluice_source_positions").unwrap_err();
    assert!(err.to_string().contains("internal"), "{err}");
    assert!(log.topic("__sluice_source_positions").is_ok());
}

// ----- item 7: compaction of transactional, compacted topics -----

#[test]
fn compaction_drops_aborted_data_markers_and_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic(
        "pos",
        1,
        &kv(&[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "4096"),
            ("delete.retention.ms", "0"),
        ]),
    )
    .unwrap();
    let mut p = log
        .transactional_producer("source-1", ProducerConfig::default())
        .unwrap();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..2000 {
        let key = format!("file-{}", i % 4);
        let value = format!("position-{i:06}");
        p.begin_transaction().unwrap();
        p.send("pos", rec(&key, &value)).unwrap();
        if i % 7 == 3 {
            p.abort_transaction().unwrap();
        } else {
            p.commit_transaction().unwrap();
            expected.insert(key, value);
        }
    }
    let part = log.partition("pos", 0).unwrap();
    part.force_roll().unwrap();
    let before = part.info().size_bytes;
    std::thread::sleep(Duration::from_millis(5));
    // Two passes: the first drops the data, the second the markers left without data.
    log.run_housekeeping().unwrap();
    log.run_housekeeping().unwrap();
    let after = part.info().size_bytes;
    println!("compacted positions: {before} bytes -> {after} bytes");
    assert!(after < before / 20, "{before} -> {after}");
    // About the latest value per key: 4 keys, one producer.
    assert!(after < 2_000, "{after} bytes left");

    let read = |log: &Log| {
        let mut got = BTreeMap::new();
        log.read_all("pos", 0, |_, r| {
            got.insert(
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            );
        })
        .unwrap();
        got
    };
    assert_eq!(read(&log), expected);
    // The producer continues, and a restart sees the same committed values.
    p.begin_transaction().unwrap();
    p.send("pos", rec("file-0", "later")).unwrap();
    p.commit_transaction().unwrap();
    expected.insert("file-0".into(), "later".into());
    drop(p);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(read(&log), expected);
    assert!(log.data_loss().is_empty());
}

/// A roll is checkpointed at once, not at the next housekeeping round: segments deleted
/// after a kill that follows the roll are found missing, and their offsets are not reused.
#[test]
fn a_rolled_segment_is_in_the_checkpoint_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            housekeeping_interval: Duration::from_secs(3600),
            ..LogOptions::default()
        },
    )
    .unwrap();
    topic_with_records(&log, "t", 60);
    let newest = segments(dir.path(), "t").last().unwrap().0;
    assert!(newest > 0, "the topic rolled");
    let cp: serde_json::Value = serde_json::from_slice(
        &std::fs::read(part_dir(dir.path(), "t").join("offsets.checkpoint")).unwrap(),
    )
    .unwrap();
    let listed: Vec<i64> = cp["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(listed.contains(&newest), "{cp}");
    assert!(cp["log_end_offset"].as_i64().unwrap() >= newest, "{cp}");
}

/// A partition that was a replica of a cluster's topic reopens as a follower (it takes no
/// writes until the cluster says it leads). A transaction left open in it is its leader's to
/// end: the log still opens (it used to fail for good writing an abort marker there), and
/// the replica keeps the transaction's records without a marker of its own.
#[test]
fn a_replica_with_an_open_transaction_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        log.create_topic("t", 1, &[]).unwrap();
        let p = log.partition("t", 0).unwrap();
        p.become_leader(1).unwrap();
        // acks=1: no replication layer here to move the high watermark.
        let config = ProducerConfig {
            acks: sluice_log::Acks::Leader,
            ..ProducerConfig::default()
        };
        let mut producer = log.transactional_producer("tx", config).unwrap();
        producer.begin_transaction().unwrap();
        producer.send("t", Record::from_value("open", 1)).unwrap();
        producer.flush().unwrap();
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let p = log.partition("t", 0).unwrap();
    assert!(p.is_replica());
    assert_eq!(p.log_end_offset(), 1, "no marker written by this copy");
    assert_eq!(p.open_transactions().len(), 1);
    assert_eq!(log.detach_replicas().unwrap(), 1);
    assert!(!p.is_replica());
}

/// Where a mock cluster keeps replicated transaction records.
#[derive(Default)]
struct Replicated {
    records: parking_lot::Mutex<Vec<sluice_log::txn::TxnRecord>>,
    fail: std::sync::atomic::AtomicBool,
    lock: std::sync::Arc<parking_lot::Mutex<()>>,
}

impl sluice_log::log::TxnReplication for Replicated {
    fn replicate(&self, rec: &sluice_log::txn::TxnRecord) -> sluice_log::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LogError::ClusterUnavailable("no quorum".into()));
        }
        self.records.lock().push(rec.clone());
        Ok(())
    }

    fn coordinates(&self, _: &str) -> bool {
        true
    }

    fn lock(&self, _: &str) -> std::sync::Arc<parking_lot::Mutex<()>> {
        std::sync::Arc::clone(&self.lock)
    }

    fn coordinator_epoch(&self, _: &str) -> sluice_log::Result<i32> {
        Ok(0)
    }

    fn acquire(&self, _: &str) -> sluice_log::Result<()> {
        Ok(())
    }
}

/// With a [`TxnReplication`](sluice_log::log::TxnReplication), a Kafka client's
/// transactional id keeps its records there, not in the log's `__transaction_state`; another
/// log that imports them coordinates the id from there (its open transaction fenced by the
/// next instance, a decided one ended by housekeeping), and the first one forgets them.
#[test]
fn a_replicated_transactional_id_moves_to_another_log_with_its_records() {
    use sluice_log::txn::TxnStatus;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(a_dir.path()), open(b_dir.path()));
    let mirror = std::sync::Arc::new(Replicated::default());
    a.set_txn_replication(mirror.clone());
    for log in [&a, &b] {
        log.create_topic("t", 1, &[]).unwrap();
    }
    let (pid, epoch) = a
        .init_producer_id(Some("kc"), Duration::from_secs(60))
        .unwrap();
    a.add_partitions_to_txn("kc", pid, epoch, &[("t".into(), 0)])
        .unwrap();
    let kept: Vec<TxnStatus> = mirror.records.lock().iter().map(|r| r.status).collect();
    assert_eq!(kept, [TxnStatus::Empty, TxnStatus::Ongoing]);
    assert!(mirror.records.lock().iter().all(|r| r.replicated));
    let local = a.partition(sluice_log::log::TXN_TOPIC, 0).unwrap();
    assert_eq!(local.log_end_offset(), 0, "nothing in __transaction_state");

    // Another log takes the id: the open transaction is there, and a new instance fences
    // it (same producer, next epoch).
    let last = mirror.records.lock().last().cloned().unwrap();
    assert_eq!(b.import_transactions(&|_| true, vec![last.clone()]), 1);
    let there = b.transactions();
    assert_eq!(there.len(), 1);
    assert_eq!(there[0].status, TxnStatus::Ongoing);
    assert!(there[0].partitions.contains(&("t".to_string(), 0)));
    a.forget_transactions(&|id| id == "kc");
    assert!(a.transactions().is_empty(), "forgotten where it was");
    let b_mirror = std::sync::Arc::new(Replicated::default());
    b.set_txn_replication(b_mirror.clone());
    let (pid2, epoch2) = b
        .init_producer_id(Some("kc"), Duration::from_secs(60))
        .unwrap();
    assert_eq!((pid2, epoch2), (pid, epoch + 1));
    let kept: Vec<TxnStatus> = b_mirror.records.lock().iter().map(|r| r.status).collect();
    assert_eq!(
        kept,
        [
            TxnStatus::PrepareAbort,
            TxnStatus::CompleteAbort,
            TxnStatus::Empty
        ]
    );

    // A decided end imported is carried out by housekeeping.
    let mut decided = last;
    decided.transactional_id = "kc2".into();
    decided.producer_id = pid + 1;
    decided.status = TxnStatus::PrepareCommit;
    b.import_transactions(&|id| id == "kc2", vec![decided]);
    let start = std::time::Instant::now();
    while b
        .transactions()
        .iter()
        .any(|r| r.transactional_id == "kc2" && r.status != TxnStatus::CompleteCommit)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "not completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        b_mirror
            .records
            .lock()
            .iter()
            .any(|r| r.transactional_id == "kc2" && r.status == TxnStatus::CompleteCommit)
    );

    // A record that cannot be replicated fails the request.
    b_mirror
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = b.init_producer_id(Some("kc3"), Duration::from_secs(60));
    assert!(
        matches!(refused, Err(LogError::ClusterUnavailable(_))),
        "{refused:?}"
    );
}

/// Markers carry their coordinator's epoch: once a coordinator of a newer epoch wrote one
/// for a producer, a marker from an older one (a former coordinator's delayed request) is
/// refused, and cannot end the producer's next transaction.
#[test]
fn a_marker_from_an_older_coordinator_is_fenced() {
    use sluice_log::batch::{BatchBuilder, BatchOptions};
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let write = |sequence: i32| {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: 7,
            producer_epoch: 0,
            base_sequence: sequence,
            transactional: true,
            ..BatchOptions::default()
        });
        b.push(&rec("k", "v")).unwrap();
        log.append("t", 0, b.build().unwrap()).unwrap();
    };
    write(0);
    assert!(log.write_marker("t", 0, 7, 0, true, 6).unwrap().is_some());
    write(1);
    let stale = log.write_marker("t", 0, 7, 0, true, 5);
    assert!(
        matches!(
            stale,
            Err(LogError::CoordinatorFenced {
                coordinator_epoch: 5,
                current: 6,
                ..
            })
        ),
        "{stale:?}"
    );
    let p = log.partition("t", 0).unwrap();
    assert_eq!(
        p.open_transactions(),
        vec![7],
        "the next transaction is still open"
    );
    assert!(log.write_marker("t", 0, 7, 0, false, 6).unwrap().is_some());
    // Where nothing is open, a newer coordinator's (no-op) marker raises the bar too.
    assert_eq!(log.write_marker("t", 0, 7, 0, false, 8).unwrap(), None);
    write(2);
    assert!(log.write_marker("t", 0, 7, 0, true, 7).is_err());
}
