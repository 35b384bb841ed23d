//! Idempotent and transactional producers of the embedded log: duplicates, sequence and epoch
//! checks, commit/abort visibility, the last stable offset, fencing, timeouts, transactional
//! offset commits and recovery.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_log::batch::{BatchBuilder, BatchOptions};
use sluice_log::consumer::decode_fetch;
use sluice_log::txn::TxnStatus;
use sluice_log::{
    ConsumerConfig, Isolation, Log, LogError, LogOptions, OffsetReset, OffsetSpec, ProducerConfig,
    TopicPartition,
};

use crate::common::{open, rec};

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition {
        topic: topic.into(),
        partition,
    }
}

/// Options whose background housekeeping never runs during a test (it is run by hand).
fn manual_housekeeping() -> LogOptions {
    LogOptions {
        housekeeping_interval: Duration::from_secs(3600),
        ..LogOptions::default()
    }
}

/// Every visible record of a partition as (offset, value), read with `Log::fetch`.
fn read(log: &Log, topic: &str, partition: u32, isolation: Isolation) -> Vec<(i64, String)> {
    let mut offset = log
        .list_offset(topic, partition, OffsetSpec::Earliest, isolation)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    loop {
        let r = log
            .fetch(topic, partition, offset, 1 << 20, isolation)
            .unwrap();
        if r.data.is_empty() {
            return out;
        }
        let (records, next) = decode_fetch(&r, isolation).unwrap();
        for s in records {
            let v = s
                .record
                .value
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            out.push((s.offset, v.unwrap_or_default()));
        }
        assert!(next > offset, "fetch must make progress");
        offset = next;
    }
}

/// Values only, sorted.
fn values(log: &Log, topic: &str, partition: u32, isolation: Isolation) -> Vec<String> {
    let mut v: Vec<String> = read(log, topic, partition, isolation)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    v.sort();
    v
}

/// Reads everything a consumer assigned to `tps` can see, until its positions reach the end.
fn consume_all(log: &Log, isolation: Isolation, tps: &[TopicPartition]) -> Vec<String> {
    let mut c = log.consumer(ConsumerConfig {
        isolation,
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    c.assign(tps).unwrap();
    let mut out = Vec::new();
    for _ in 0..500 {
        let recs = c.poll(Duration::from_millis(5)).unwrap();
        let empty = recs.is_empty();
        out.extend(
            recs.into_iter()
                .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into()),
        );
        let done = tps.iter().all(|t| {
            let end = log
                .list_offset(&t.topic, t.partition, OffsetSpec::Latest, isolation)
                .unwrap();
            c.position(t) == end
        });
        if empty && done {
            out.sort();
            return out;
        }
    }
    panic!("consumer did not reach the end of {tps:?}");
}

fn idempotent_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        producer_id: pid,
        producer_epoch: epoch,
        base_sequence: seq,
        ..BatchOptions::default()
    });
    for v in values {
        b.push(&rec("k", v, 1_000)).unwrap();
    }
    b.build().unwrap()
}

fn txn_config(timeout: Duration) -> ProducerConfig {
    ProducerConfig {
        transaction_timeout: timeout,
        ..ProducerConfig::default()
    }
}

fn lso(log: &Log, topic: &str, partition: u32) -> i64 {
    log.partition(topic, partition)
        .unwrap()
        .info()
        .last_stable_offset
}

fn hw(log: &Log, topic: &str, partition: u32) -> i64 {
    log.partition(topic, partition)
        .unwrap()
        .info()
        .high_watermark
}

#[test]
fn appending_the_same_idempotent_batch_twice_returns_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let pid = log
        .producer(ProducerConfig::default())
        .unwrap()
        .producer_id();
    assert!(pid >= 0);

    let first = idempotent_batch(pid, 0, 0, &["a", "b", "c"]);
    let a = log.append("t", 0, first.clone()).unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.duplicate), (0, 2, false));
    let second = idempotent_batch(pid, 0, 3, &["d"]);
    let b = log.append("t", 0, second.clone()).unwrap();
    assert_eq!((b.base_offset, b.last_offset, b.duplicate), (3, 3, false));

    // Retries of the latest and of an earlier (still remembered) batch.
    let again = log.append("t", 0, second).unwrap();
    assert_eq!(
        (again.base_offset, again.last_offset, again.duplicate),
        (3, 3, true)
    );
    let again = log.append("t", 0, first).unwrap();
    assert_eq!(
        (again.base_offset, again.last_offset, again.duplicate),
        (0, 2, true)
    );

    assert_eq!(log.partition("t", 0).unwrap().info().log_end_offset, 4);
    assert_eq!(
        values(&log, "t", 0, Isolation::ReadUncommitted),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn a_sequence_gap_is_out_of_order_and_names_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("seq", 2, &[]).unwrap();
    let pid = log
        .producer(ProducerConfig::default())
        .unwrap()
        .producer_id();
    log.append("seq", 1, idempotent_batch(pid, 0, 0, &["a", "b"]))
        .unwrap();
    let err = log
        .append("seq", 1, idempotent_batch(pid, 0, 5, &["x"]))
        .unwrap_err();
    match &err {
        LogError::OutOfOrderSequence {
            topic,
            partition,
            producer_id,
            expected,
            got,
        } => {
            assert_eq!(
                (topic.as_str(), *partition, *producer_id, *expected, *got),
                ("seq", 1, pid, 2, 5)
            );
        }
        other => panic!("expected OutOfOrderSequence, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("seq-1") && msg.contains("expected 2") && msg.contains("got 5"));
    // A new producer must start at sequence 0.
    let err = log
        .append("seq", 0, idempotent_batch(pid + 1, 0, 3, &["x"]))
        .unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrderSequence {
            expected: 0,
            got: 3,
            ..
        }
    ));
    // Nothing refused was written.
    assert_eq!(log.partition("seq", 1).unwrap().info().log_end_offset, 2);
    assert_eq!(log.partition("seq", 0).unwrap().info().log_end_offset, 0);
}

#[test]
fn an_older_producer_epoch_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let pid = log
        .producer(ProducerConfig::default())
        .unwrap()
        .producer_id();
    log.append("t", 0, idempotent_batch(pid, 0, 0, &["a"]))
        .unwrap();
    // A newer epoch restarts its sequences at 0.
    log.append("t", 0, idempotent_batch(pid, 1, 0, &["b"]))
        .unwrap();
    let err = log
        .append("t", 0, idempotent_batch(pid, 0, 1, &["zombie"]))
        .unwrap_err();
    match err {
        LogError::ProducerFenced {
            producer_id,
            epoch,
            current_epoch,
        } => assert_eq!((producer_id, epoch, current_epoch), (pid, 0, 1)),
        other => panic!("expected ProducerFenced, got {other:?}"),
    }
    assert_eq!(values(&log, "t", 0, Isolation::ReadUncommitted), ["a", "b"]);
}

#[test]
fn a_committed_transaction_over_two_topics_becomes_visible_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("a", 2, &[]).unwrap();
    log.create_topic("b", 2, &[]).unwrap();
    let all = [tp("a", 0), tp("a", 1), tp("b", 0), tp("b", 1)];
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    for t in &all {
        for i in 0..3 {
            p.send_to(
                &t.topic,
                t.partition,
                rec("k", &format!("{}{}-{i}", t.topic, t.partition), 1),
            )
            .unwrap();
        }
    }
    p.flush().unwrap();
    // Written but not committed: invisible to read_committed, visible to read_uncommitted.
    assert!(consume_all(&log, Isolation::ReadCommitted, &all).is_empty());
    assert_eq!(
        consume_all(&log, Isolation::ReadUncommitted, &all).len(),
        12
    );
    for t in &all {
        assert_eq!(lso(&log, &t.topic, t.partition), 0);
        assert_eq!(hw(&log, &t.topic, t.partition), 3);
    }
    p.commit_transaction().unwrap();
    let seen = consume_all(&log, Isolation::ReadCommitted, &all);
    assert_eq!(seen.len(), 12);
    assert!(seen.contains(&"a0-0".to_string()) && seen.contains(&"b1-2".to_string()));
    for t in &all {
        // Three records and a commit marker.
        assert_eq!(lso(&log, &t.topic, t.partition), 4);
        assert_eq!(hw(&log, &t.topic, t.partition), 4);
    }
    let rec = log
        .transactions()
        .into_iter()
        .find(|r| r.transactional_id == "tx")
        .unwrap();
    assert_eq!(rec.status, TxnStatus::CompleteCommit);
    assert!(rec.partitions.is_empty());
}

#[test]
fn an_aborted_transaction_is_invisible_to_read_committed_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("a", 2, &[]).unwrap();
    log.create_topic("b", 1, &[]).unwrap();
    let all = [tp("a", 0), tp("a", 1), tp("b", 0)];
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    for t in &all {
        p.send_to(&t.topic, t.partition, rec("k", "doomed", 1))
            .unwrap();
    }
    p.flush().unwrap();
    p.abort_transaction().unwrap();
    assert!(consume_all(&log, Isolation::ReadCommitted, &all).is_empty());
    assert_eq!(
        consume_all(&log, Isolation::ReadUncommitted, &all),
        ["doomed", "doomed", "doomed"]
    );
    for t in &all {
        assert_eq!(
            lso(&log, &t.topic, t.partition),
            hw(&log, &t.topic, t.partition)
        );
    }
    // The producer goes on: the next transaction commits normally after the aborted one.
    p.begin_transaction().unwrap();
    p.send_to("a", 0, rec("k", "kept", 1)).unwrap();
    p.commit_transaction().unwrap();
    assert_eq!(values(&log, "a", 0, Isolation::ReadCommitted), ["kept"]);
    assert_eq!(
        values(&log, "a", 0, Isolation::ReadUncommitted),
        ["doomed", "kept"]
    );
}

#[test]
fn read_committed_stops_at_the_last_stable_offset_of_an_open_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    log.append_records("t", 0, &[rec("k", "before", 1)])
        .unwrap();
    let mut txp = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    txp.begin_transaction().unwrap();
    txp.send_to("t", 0, rec("k", "in-txn", 1)).unwrap();
    txp.flush().unwrap();
    // A non-transactional (idempotent) producer writes after the open transaction.
    let mut plain = log.producer(ProducerConfig::default()).unwrap();
    plain.send_to("t", 0, rec("k", "after", 1)).unwrap();
    plain.flush().unwrap();
    log.append_records("t", 0, &[rec("k", "after-raw", 1)])
        .unwrap();

    let info = log.partition("t", 0).unwrap().info();
    assert_eq!(info.high_watermark, 4);
    assert_eq!(info.last_stable_offset, 1);
    assert_eq!(
        log.list_offset("t", 0, OffsetSpec::Latest, Isolation::ReadCommitted)
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        log.list_offset("t", 0, OffsetSpec::Latest, Isolation::ReadUncommitted)
            .unwrap(),
        Some(4)
    );
    assert_eq!(
        read(&log, "t", 0, Isolation::ReadCommitted),
        [(0, "before".to_string())]
    );
    assert_eq!(
        log.fetch("t", 0, 1, 1 << 20, Isolation::ReadCommitted)
            .unwrap()
            .data
            .len(),
        0,
        "nothing at or above the LSO is served to read_committed"
    );
    assert_eq!(
        consume_all(&log, Isolation::ReadCommitted, &[tp("t", 0)]),
        ["before"]
    );

    txp.commit_transaction().unwrap();
    let info = log.partition("t", 0).unwrap().info();
    assert_eq!(info.last_stable_offset, info.high_watermark);
    assert_eq!(
        read(&log, "t", 0, Isolation::ReadCommitted),
        [
            (0, "before".to_string()),
            (1, "in-txn".to_string()),
            (2, "after".to_string()),
            (3, "after-raw".to_string()),
        ]
    );
}

#[test]
fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    let mut old = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    old.begin_transaction().unwrap();
    old.send_to("t", 0, rec("k", "zombie", 1)).unwrap();
    old.flush().unwrap();
    assert_eq!(lso(&log, "t", 0), 0);

    let mut new = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    assert_eq!(new.producer_id(), old.producer_id());
    assert_eq!(new.epoch(), old.epoch() + 1);
    // The old transaction was aborted: nothing blocks readers, nothing is visible.
    assert_eq!(lso(&log, "t", 0), hw(&log, "t", 0));
    assert!(values(&log, "t", 0, Isolation::ReadCommitted).is_empty());
    assert_eq!(values(&log, "t", 0, Isolation::ReadUncommitted), ["zombie"]);

    // The old instance can neither write to a partition of its transaction, nor add one,
    // nor commit.
    old.send_to("t", 0, rec("k", "zombie-2", 1)).unwrap();
    assert!(matches!(old.flush(), Err(LogError::ProducerFenced { .. })));
    assert!(matches!(
        old.send_to("t", 1, rec("k", "zombie-3", 1)),
        Err(LogError::ProducerFenced { .. })
    ));
    match old.commit_transaction() {
        Err(LogError::ProducerFenced {
            epoch,
            current_epoch,
            ..
        }) => assert_eq!((epoch, current_epoch), (old.epoch(), new.epoch())),
        other => panic!("expected ProducerFenced, got {other:?}"),
    }
    assert_eq!(values(&log, "t", 1, Isolation::ReadUncommitted).len(), 0);

    new.begin_transaction().unwrap();
    new.send_to("t", 0, rec("k", "fresh", 1)).unwrap();
    new.send_to("t", 1, rec("k", "fresh", 1)).unwrap();
    new.commit_transaction().unwrap();
    assert_eq!(values(&log, "t", 0, Isolation::ReadCommitted), ["fresh"]);
    assert_eq!(values(&log, "t", 1, Isolation::ReadCommitted), ["fresh"]);
}

#[test]
fn housekeeping_aborts_a_transaction_past_its_timeout_and_fences_its_producer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), manual_housekeeping()).unwrap();
    log.create_topic("t", 1, &[]).unwrap();
    let mut p = log
        .transactional_producer("slow", txn_config(Duration::from_millis(100)))
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "late", 1)).unwrap();
    p.flush().unwrap();
    // Not yet expired.
    log.run_housekeeping().unwrap();
    assert_eq!(lso(&log, "t", 0), 0);
    std::thread::sleep(Duration::from_millis(150));
    log.run_housekeeping().unwrap();
    assert_eq!(lso(&log, "t", 0), hw(&log, "t", 0));
    assert!(values(&log, "t", 0, Isolation::ReadCommitted).is_empty());
    let rec_ = log
        .transactions()
        .into_iter()
        .find(|r| r.transactional_id == "slow")
        .unwrap();
    assert_eq!(rec_.status, TxnStatus::CompleteAbort);
    assert_eq!(rec_.epoch, p.epoch() + 1);
    assert!(matches!(
        p.commit_transaction(),
        Err(LogError::ProducerFenced { .. })
    ));
    // A fresh instance works.
    let mut q = log
        .transactional_producer("slow", txn_config(Duration::from_secs(10)))
        .unwrap();
    q.begin_transaction().unwrap();
    q.send_to("t", 0, rec("k", "ok", 1)).unwrap();
    q.commit_transaction().unwrap();
    assert_eq!(values(&log, "t", 0, Isolation::ReadCommitted), ["ok"]);
}

#[test]
fn the_housekeeping_thread_expires_transactions_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            housekeeping_interval: Duration::from_millis(20),
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.create_topic("t", 1, &[]).unwrap();
    let mut p = log
        .transactional_producer("slow", txn_config(Duration::from_millis(100)))
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "late", 1)).unwrap();
    p.flush().unwrap();
    let start = Instant::now();
    while lso(&log, "t", 0) != hw(&log, "t", 0) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "transaction never timed out"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert!(matches!(
        p.commit_transaction(),
        Err(LogError::ProducerFenced { .. })
    ));
}

#[test]
fn offsets_sent_to_a_transaction_are_committed_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("in", 1, &[]).unwrap();
    log.create_topic("out", 1, &[]).unwrap();
    let input = tp("in", 0);
    let mut p = log
        .transactional_producer("etl", ProducerConfig::default())
        .unwrap();

    p.begin_transaction().unwrap();
    p.send_to("out", 0, rec("k", "one", 1)).unwrap();
    p.send_offsets_to_transaction("g", &[(input.clone(), 5)])
        .unwrap();
    assert_eq!(log.committed("g", &input), None, "pending until commit");
    p.commit_transaction().unwrap();
    assert_eq!(log.committed("g", &input), Some(5));

    p.begin_transaction().unwrap();
    p.send_to("out", 0, rec("k", "two", 1)).unwrap();
    p.send_offsets_to_transaction("g", &[(input.clone(), 9)])
        .unwrap();
    p.abort_transaction().unwrap();
    assert_eq!(log.committed("g", &input), Some(5));
    assert_eq!(values(&log, "out", 0, Isolation::ReadCommitted), ["one"]);

    // Offsets of a transaction aborted by fencing are dropped too.
    p.begin_transaction().unwrap();
    p.send_offsets_to_transaction("g", &[(input.clone(), 11)])
        .unwrap();
    let _fencer = log
        .transactional_producer("etl", ProducerConfig::default())
        .unwrap();
    assert_eq!(log.committed("g", &input), Some(5));

    log.close().unwrap();
    let log = open(dir.path());
    assert_eq!(log.committed("g", &input), Some(5), "after reopen");
}

fn write_mixed_history(log: &Log) -> (i64, i16) {
    log.create_topic("t", 2, &[]).unwrap();
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "c0", 1)).unwrap();
    p.send_to("t", 1, rec("k", "c1", 1)).unwrap();
    p.send_offsets_to_transaction("g", &[(tp("t", 0), 1)])
        .unwrap();
    p.commit_transaction().unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "a0", 1)).unwrap();
    p.send_to("t", 1, rec("k", "a1", 1)).unwrap();
    p.send_offsets_to_transaction("g", &[(tp("t", 0), 7)])
        .unwrap();
    p.flush().unwrap();
    p.abort_transaction().unwrap();
    log.append_records("t", 0, &[rec("k", "plain", 1)]).unwrap();
    (p.producer_id(), p.epoch())
}

fn check_mixed_history(log: &Log, pid: i64, epoch: i16) {
    assert_eq!(
        values(log, "t", 0, Isolation::ReadCommitted),
        ["c0", "plain"]
    );
    assert_eq!(values(log, "t", 1, Isolation::ReadCommitted), ["c1"]);
    assert_eq!(
        values(log, "t", 0, Isolation::ReadUncommitted),
        ["a0", "c0", "plain"]
    );
    for p in 0..2 {
        assert_eq!(lso(log, "t", p), hw(log, "t", p));
    }
    assert_eq!(log.committed("g", &tp("t", 0)), Some(1));
    let r = log
        .transactions()
        .into_iter()
        .find(|r| r.transactional_id == "tx")
        .unwrap();
    assert_eq!((r.producer_id, r.epoch), (pid, epoch));
    assert_eq!(r.status, TxnStatus::CompleteAbort);
}

#[test]
fn transactions_offsets_and_ids_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let (pid, epoch) = write_mixed_history(&log);
    check_mixed_history(&log, pid, epoch);
    log.close().unwrap();

    let log = open(dir.path());
    check_mixed_history(&log, pid, epoch);
    // The transactional id keeps its producer id; a new instance bumps the epoch.
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    assert_eq!((p.producer_id(), p.epoch()), (pid, epoch + 1));
    p.begin_transaction().unwrap();
    p.send_to("t", 1, rec("k", "c2", 1)).unwrap();
    p.commit_transaction().unwrap();
    assert_eq!(values(&log, "t", 1, Isolation::ReadCommitted), ["c1", "c2"]);
    // A plain producer gets an id that was never handed out before.
    assert!(
        log.producer(ProducerConfig::default())
            .unwrap()
            .producer_id()
            != pid
    );
}

#[test]
fn a_transaction_left_open_at_close_is_aborted_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    log.append_records("t", 0, &[rec("k", "old", 1)]).unwrap();
    let pid;
    {
        let mut p = log
            .transactional_producer("tx", ProducerConfig::default())
            .unwrap();
        pid = p.producer_id();
        p.begin_transaction().unwrap();
        p.send_to("t", 0, rec("k", "open", 1)).unwrap();
        p.send_to("t", 1, rec("k", "open", 1)).unwrap();
        p.flush().unwrap();
        // Dropped without commit or abort.
    }
    log.append_records("t", 0, &[rec("k", "behind", 1)])
        .unwrap();
    assert_eq!(lso(&log, "t", 0), 1);
    log.close().unwrap();

    let log = open(dir.path());
    for p in 0..2 {
        assert_eq!(lso(&log, "t", p), hw(&log, "t", p), "partition {p}");
    }
    assert_eq!(
        values(&log, "t", 0, Isolation::ReadCommitted),
        ["behind", "old"]
    );
    assert!(values(&log, "t", 1, Isolation::ReadCommitted).is_empty());
    assert_eq!(
        consume_all(&log, Isolation::ReadCommitted, &[tp("t", 0), tp("t", 1)]),
        ["behind", "old"]
    );
    let r = log
        .transactions()
        .into_iter()
        .find(|r| r.transactional_id == "tx")
        .unwrap();
    assert_eq!(r.producer_id, pid);
    assert_eq!(r.status, TxnStatus::CompleteAbort);
    // The id is usable again.
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 1, rec("k", "new", 1)).unwrap();
    p.commit_transaction().unwrap();
    assert_eq!(values(&log, "t", 1, Isolation::ReadCommitted), ["new"]);
    log.close().unwrap();

    // And the abort itself survives another reopen.
    let log = open(dir.path());
    assert_eq!(values(&log, "t", 1, Isolation::ReadCommitted), ["new"]);
    assert_eq!(
        values(&log, "t", 0, Isolation::ReadCommitted),
        ["behind", "old"]
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_crash_with_a_transaction_open_leaves_no_transaction_blocking_readers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let mut p = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "committed", 1)).unwrap();
    p.commit_transaction().unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "open", 1)).unwrap();
    p.flush().unwrap();
    log.append_records("t", 0, &[rec("k", "behind", 1)])
        .unwrap();
    log.sync_all().unwrap();
    // A snapshot of the directory while the log is open is what a crash leaves behind.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    assert!(!crashed.path().join(".clean-shutdown").exists());

    let log2 = open(crashed.path());
    assert_eq!(lso(&log2, "t", 0), hw(&log2, "t", 0));
    assert_eq!(
        values(&log2, "t", 0, Isolation::ReadCommitted),
        ["behind", "committed"]
    );
    let mut p2 = log2
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    p2.begin_transaction().unwrap();
    p2.send_to("t", 0, rec("k", "again", 1)).unwrap();
    p2.commit_transaction().unwrap();
    assert_eq!(
        values(&log2, "t", 0, Isolation::ReadCommitted),
        ["again", "behind", "committed"]
    );
}

#[test]
fn a_fenced_instance_cannot_flush_buffered_records_into_a_partition_it_never_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let mut old = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    old.begin_transaction().unwrap();
    // Added to the transaction, but only buffered: no data in the partition yet.
    old.send_to("t", 0, rec("k", "zombie", 1)).unwrap();
    let _new = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    assert!(matches!(
        old.commit_transaction(),
        Err(LogError::ProducerFenced { .. })
    ));
    // The zombie's batch must not have opened a transaction nobody will ever end.
    assert_eq!(lso(&log, "t", 0), hw(&log, "t", 0));
    assert!(values(&log, "t", 0, Isolation::ReadUncommitted).is_empty());
}

#[test]
fn a_timed_out_producer_cannot_flush_buffered_records_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), manual_housekeeping()).unwrap();
    log.create_topic("t", 1, &[]).unwrap();
    let mut p = log
        .transactional_producer("slow", txn_config(Duration::from_millis(50)))
        .unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "late", 1)).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    log.run_housekeeping().unwrap();
    assert!(matches!(
        p.commit_transaction(),
        Err(LogError::ProducerFenced { .. })
    ));
    assert_eq!(lso(&log, "t", 0), hw(&log, "t", 0));
    assert!(values(&log, "t", 0, Isolation::ReadUncommitted).is_empty());
}

#[test]
fn idempotent_duplicates_and_sequences_are_remembered_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let pid = log
        .producer(ProducerConfig::default())
        .unwrap()
        .producer_id();
    let batch = idempotent_batch(pid, 0, 0, &["a", "b"]);
    log.append("t", 0, batch.clone()).unwrap();
    log.close().unwrap();

    let log = open(dir.path());
    let again = log.append("t", 0, batch).unwrap();
    assert_eq!(
        (again.base_offset, again.last_offset, again.duplicate),
        (0, 1, true)
    );
    assert!(matches!(
        log.append("t", 0, idempotent_batch(pid, 0, 3, &["gap"])),
        Err(LogError::OutOfOrderSequence { expected: 2, .. })
    ));
    let next = log
        .append("t", 0, idempotent_batch(pid, 0, 2, &["c"]))
        .unwrap();
    assert_eq!((next.base_offset, next.duplicate), (2, false));
}
