//! Crash recovery: the log survives real `kill -9`s during heavy writes with fsync=always —
//! every acknowledged record is readable afterwards, nothing is corrupt or repeated.
//!
//! The test re-executes this test binary as a child that runs [`crash_child`], kills it at a
//! seeded-random moment, reopens the log in the parent and checks it, many times over. Set
//! `SLUICE_CRASH_ROUNDS` for a longer soak.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::{
    ConsumerConfig, FsyncPolicy, Isolation, Log, LogError, LogOptions, OffsetReset, ProducerConfig,
    Record, TopicPartition,
};

const CHILD_DIR: &str = "SLUICE_CRASH_CHILD_DIR";
const WRITERS: usize = 3;
const TOPIC: &str = "crash";

fn options() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Always,
        ..LogOptions::default()
    }
}

/// Reads every record; returns per writer the sequence numbers in log order.
fn read_sequences(log: &Log) -> BTreeMap<usize, Vec<u64>> {
    let parts = log.topic(TOPIC).unwrap().partition_count();
    let mut consumer = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        isolation: Isolation::ReadUncommitted,
        max_poll_records: 100_000,
        ..ConsumerConfig::default()
    });
    let tps: Vec<TopicPartition> = (0..parts)
        .map(|p| TopicPartition {
            topic: TOPIC.into(),
            partition: p,
        })
        .collect();
    consumer.assign(&tps).unwrap();
    let mut out: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    loop {
        let records = consumer.poll(Duration::from_millis(50)).unwrap();
        if records.is_empty() {
            if consumer.lag().unwrap().iter().all(|(_, l)| *l == 0) {
                break;
            }
            continue;
        }
        for r in records {
            let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            let head = v.split(' ').next().unwrap_or_default();
            let (w, seq) = head.split_once('-').expect("value is wW-SEQ");
            let w: usize = w.trim_start_matches('w').parse().unwrap();
            out.entry(w).or_default().push(seq.parse().unwrap());
        }
    }
    out
}

/// The child: writes keyed batches from several threads forever, printing `ACK writer seq`
/// after each batch is durable. Does nothing unless started by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let log = Log::open(&dir, options()).unwrap();
    match log.create_topic(TOPIC, 2, &[("segment.bytes".into(), "65536".into())]) {
        Ok(()) | Err(LogError::TopicExists(_)) => {}
        Err(e) => panic!("{e}"),
    }
    let next: BTreeMap<usize, u64> = read_sequences(&log)
        .into_iter()
        .map(|(w, seqs)| (w, seqs.last().map_or(0, |s| s + 1)))
        .collect();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            let out = Arc::clone(&out);
            let mut seq = next.get(&w).copied().unwrap_or(0);
            std::thread::spawn(move || {
                let mut producer = log.producer(ProducerConfig::default()).unwrap();
                let mut rng = 0x9e37_79b9_u64 + w as u64;
                loop {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = 1 + (rng >> 33) % 64;
                    for _ in 0..n {
                        // Varied sizes so batches straddle segment rolls at random places.
                        let value =
                            format!("w{w}-{seq} {}", "x".repeat(((rng >> 20) % 200) as usize));
                        let r = Record {
                            key: Some(Bytes::from(format!("w{w}"))),
                            value: Some(Bytes::from(value)),
                            headers: Vec::new(),
                            timestamp: sluice_log::record::now_ms(),
                        };
                        producer.send(TOPIC, r).unwrap();
                        seq += 1;
                    }
                    producer.flush().unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {w} {}", seq - 1).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn check(dir: &Path, acked: &BTreeMap<usize, u64>) -> usize {
    let log = Log::open(dir, options()).unwrap();
    let seqs = read_sequences(&log);
    let mut total = 0;
    for (w, list) in &seqs {
        for (i, s) in list.iter().enumerate() {
            assert_eq!(
                *s, i as u64,
                "writer {w}: record {i} has sequence {s}: a gap or a repeat"
            );
        }
        total += list.len();
    }
    for (w, last) in acked {
        let have = seqs.get(w).map_or(0, |l| l.len() as u64);
        assert!(
            have > *last,
            "writer {w}: acknowledged up to {last} but only {have} records survived"
        );
    }
    log.close().unwrap();
    total
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = crate::common::env_or("SLUICE_CRASH_ROUNDS", 12) as usize;
    let exe = std::env::current_exe().unwrap();
    let mut rng = 42u64;
    let mut acked: BTreeMap<usize, u64> = BTreeMap::new();
    let mut records = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "log_crash::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new((0usize, acked.clone())));
        let reader = {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.split_whitespace();
                    if parts.next() != Some("ACK") {
                        continue;
                    }
                    let w: usize = parts.next().unwrap().parse().unwrap();
                    let s: u64 = parts.next().unwrap().parse().unwrap();
                    let mut g = seen.lock().unwrap();
                    g.0 += 1;
                    let e = g.1.entry(w).or_insert(0);
                    *e = (*e).max(s);
                }
            })
        };
        // Wait for the writers to be in full swing, then kill at a random moment.
        let start = Instant::now();
        while seen.lock().unwrap().0 < 20 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: child wrote nothing"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: child exited early with {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((rng >> 33) % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked = seen.lock().unwrap().1.clone();
        records = check(dir.path(), &acked);
    }
    println!(
        "survived {rounds} kill -9s; verified {records} records from {WRITERS} writers, acknowledged up to {acked:?}"
    );
    assert!(records > 0);
}

const TXN_CHILD_DIR: &str = "SLUICE_TXN_CHILD_DIR";

/// The child of the fault-point test: writes one transaction with records and group offsets
/// and ends it (commit, or abort with `SLUICE_TXN_ABORT=1`); `SLUICE_FAULT` makes it crash
/// midway. Does nothing unless started by the parent test.
#[test]
fn txn_fault_child() {
    let Ok(dir) = std::env::var(TXN_CHILD_DIR) else {
        return;
    };
    let log = Log::open(&dir, options()).unwrap();
    log.create_topic("tx-out", 2, &[]).unwrap();
    log.create_topic("tx-in", 1, &[]).unwrap();
    let mut p = log
        .transactional_producer("fault-app", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    for i in 0..10 {
        p.send(
            "tx-out",
            Record::with_key(format!("k{i}"), format!("v{i}"), 1_000 + i),
        )
        .unwrap();
    }
    let tp = TopicPartition {
        topic: "tx-in".into(),
        partition: 0,
    };
    p.send_offsets_to_transaction("g", &[(tp, 42)]).unwrap();
    if std::env::var("SLUICE_TXN_ABORT").is_ok() {
        p.abort_transaction().unwrap();
    } else {
        p.commit_transaction().unwrap();
    }
    panic!("the fault point should have stopped the process");
}

fn committed_records(log: &Log) -> usize {
    let mut consumer = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    let tps: Vec<TopicPartition> = (0..2)
        .map(|p| TopicPartition {
            topic: "tx-out".into(),
            partition: p,
        })
        .collect();
    consumer.assign(&tps).unwrap();
    let mut n = 0;
    loop {
        let got = consumer.poll(Duration::from_millis(50)).unwrap();
        if got.is_empty() {
            return n;
        }
        n += got.len();
    }
}

#[test]
fn a_decided_transaction_completes_after_a_crash_at_each_fault_point() {
    let exe = std::env::current_exe().unwrap();
    for point in ["txn-after-prepare", "txn-after-markers"] {
        for abort in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = Command::new(&exe);
            cmd.args([
                "log_crash::txn_fault_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(TXN_CHILD_DIR, dir.path())
            .env("SLUICE_FAULT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if abort {
                cmd.env("SLUICE_TXN_ABORT", "1");
            }
            let status = cmd.status().unwrap();
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(6),
                "{point}: the child must abort at the fault point, got {status}"
            );
            let log = Log::open(dir.path(), options()).unwrap();
            let expected = if abort { 0 } else { 10 };
            assert_eq!(
                committed_records(&log),
                expected,
                "{point} abort={abort}: records"
            );
            let tp = TopicPartition {
                topic: "tx-in".into(),
                partition: 0,
            };
            let offset = log.committed("g", &tp);
            assert_eq!(
                offset,
                if abort { None } else { Some(42) },
                "{point} abort={abort}: offsets"
            );
            for p in 0..2 {
                let info = log.partition("tx-out", p).unwrap().info();
                assert_eq!(
                    info.last_stable_offset, info.log_end_offset,
                    "{point}: nothing left open"
                );
            }
            let status = log
                .transactions()
                .into_iter()
                .find(|t| t.transactional_id == "fault-app");
            let want = if abort {
                sluice_log::txn::TxnStatus::CompleteAbort
            } else {
                sluice_log::txn::TxnStatus::CompleteCommit
            };
            assert_eq!(
                status.map(|s| s.status),
                Some(want),
                "{point} abort={abort}"
            );
            // The application restarts: a new instance works.
            let mut p = log
                .transactional_producer("fault-app", ProducerConfig::default())
                .unwrap();
            p.begin_transaction().unwrap();
            p.send("tx-out", Record::with_key("after", "restart", 5_000))
                .unwrap();
            p.commit_transaction().unwrap();
            assert_eq!(committed_records(&log), expected + 1);
            log.close().unwrap();
        }
    }
}
