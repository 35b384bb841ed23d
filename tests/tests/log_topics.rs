//! Log topics: topic admin, partitioning, segments, indexes, torn tails, retention,
//! compaction, message size limits, Kafka byte compatibility on disk, concurrent producers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_log::consumer::decode_fetch;
use sluice_log::partitioner::partition_for_key;
use sluice_log::record::now_ms;
use sluice_log::{
    Compression, ConsumerConfig, FsyncPolicy, Header, Isolation, Log, LogError, LogOptions,
    OffsetReset, OffsetSpec, Producer, ProducerConfig, Record, StoredRecord, TopicPartition,
};

use crate::common::rec;

// ----- helpers -----

/// Options for tests: no background housekeeping (tests run it explicitly), no fsync.
fn opts() -> LogOptions {
    LogOptions {
        fsync: FsyncPolicy::Never,
        housekeeping_interval: Duration::from_secs(3600),
        offsets_topic_partitions: 1,
        ..LogOptions::default()
    }
}

fn open(dir: &Path) -> Log {
    Log::open(dir, opts()).expect("open log")
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn part_dir(log: &Log, topic: &str, p: u32) -> PathBuf {
    log.dir().join("topics").join(topic).join(p.to_string())
}

/// Sorted file names in `dir` ending with `.ext`.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!(".{ext}")))
        .collect();
    v.sort();
    v
}

/// The `.log` file of the active (last) segment.
fn active_log(log: &Log, topic: &str, p: u32) -> PathBuf {
    let dir = part_dir(log, topic, p);
    dir.join(files_with_ext(&dir, "log").pop().unwrap())
}

/// Every record of a partition from `from`, fetched batch by batch (read_uncommitted).
fn fetch_all(log: &Log, topic: &str, p: u32, from: i64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = log
            .fetch(topic, p, offset, 64 * 1024, Isolation::ReadUncommitted)
            .unwrap();
        if r.data.is_empty() {
            return out;
        }
        let (recs, next) = decode_fetch(&r, Isolation::ReadUncommitted).unwrap();
        out.extend(recs.into_iter().filter(|r| r.offset >= offset));
        assert!(next > offset, "fetch made no progress at {offset}");
        offset = next;
    }
}

fn values(recs: &[StoredRecord]) -> Vec<String> {
    recs.iter()
        .map(|r| String::from_utf8(r.record.value.clone().unwrap_or_default().to_vec()).unwrap())
        .collect()
}

fn val(i: usize, len: usize) -> String {
    let head = format!("v{i}-");
    format!("{head}{}", "x".repeat(len.saturating_sub(head.len())))
}

/// Appends `n` records, one batch each, with values of about `len` bytes and timestamps
/// `ts(i)`; returns their offsets.
fn append_n(log: &Log, topic: &str, n: usize, len: usize, ts: impl Fn(usize) -> i64) -> Vec<i64> {
    (0..n)
        .map(|i| {
            let r = Record::from_value(val(i, len), ts(i));
            log.append_records(topic, 0, &[r]).unwrap().base_offset
        })
        .collect()
}

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition {
        topic: topic.into(),
        partition,
    }
}

fn producer(log: &Log, batch_size: usize) -> Producer {
    log.producer(ProducerConfig {
        batch_size,
        ..ProducerConfig::default()
    })
    .unwrap()
}

fn is_offset_out_of_range(e: &LogError) -> bool {
    matches!(e, LogError::OffsetOutOfRange { .. })
}

// ----- topics -----

#[test]
fn create_topic_with_overrides_is_listed_and_described_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic(
        "orders",
        3,
        &kv(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]),
    )
    .unwrap();
    let names = log.topic_names();
    assert!(names.contains(&"orders".to_string()), "{names:?}");

    let d = log.describe_topic("orders").unwrap();
    assert!(!d.internal);
    assert_eq!(d.partitions.len(), 3);
    for (i, p) in d.partitions.iter().enumerate() {
        assert_eq!(p.partition, i as u32);
        assert_eq!((p.log_start_offset, p.log_end_offset), (0, 0));
        assert_eq!(p.segments, 1);
    }
    let cfg: HashMap<&str, (String, bool)> = d
        .config
        .iter()
        .map(|(k, v, set)| (*k, (v.clone(), *set)))
        .collect();
    assert_eq!(cfg["retention.ms"], ("1000".to_string(), true));
    assert_eq!(cfg["cleanup.policy"], ("compact".to_string(), true));
    assert_eq!(cfg["segment.bytes"], ("1073741824".to_string(), false));
    assert_eq!(cfg["max.message.bytes"], ("1048576".to_string(), false));
    assert_eq!(cfg["retention.bytes"], ("-1".to_string(), false));
    assert_eq!(cfg["min.insync.replicas"], ("1".to_string(), false));
    assert_eq!(
        cfg["unclean.leader.election.enable"],
        ("false".to_string(), false)
    );
    assert_eq!(
        cfg.len(),
        sluice_log::config::TOPIC_CONFIG_KEYS.len(),
        "every key is described"
    );
    for p in 0..3 {
        assert!(part_dir(&log, "orders", p).is_dir());
    }
}

#[test]
fn create_topic_rejects_bad_names_zero_partitions_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let long = "a".repeat(250);
    for bad in ["", ".", "..", "a/b", "with space", "ünï", long.as_str()] {
        let err = log.create_topic(bad, 1, &[]).unwrap_err();
        assert!(
            matches!(err, LogError::InvalidTopicName { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.is_user_error());
    }
    assert!(log.create_topic(&"a".repeat(249), 1, &[]).is_ok());
    let err = log.create_topic("zero", 0, &[]).unwrap_err();
    assert!(matches!(err, LogError::InvalidPartitions { .. }), "{err}");
    assert!(log.topic("zero").is_err(), "nothing was created");

    log.create_topic("dup", 1, &[]).unwrap();
    let err = log.create_topic("dup", 2, &[]).unwrap_err();
    assert!(
        matches!(err, LogError::TopicExists(ref n) if n == "dup"),
        "{err}"
    );
    assert_eq!(log.topic("dup").unwrap().partition_count(), 1);
}

#[test]
fn create_topic_with_bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let cases = [
        ("retention.minutes", "1", "retention.minutes"),
        ("segment.bytes", "12", "segment.bytes"),
        ("retention.ms", "soon", "retention.ms"),
        ("cleanup.policy", "forever", "cleanup.policy"),
        ("max.message.bytes", "99999999999", "max.message.bytes"),
        ("delete.retention.ms", "-5", "delete.retention.ms"),
    ];
    for (k, v, named) in cases {
        let err = log.create_topic("t", 1, &kv(&[(k, v)])).unwrap_err();
        assert!(matches!(err, LogError::Config(_)), "{k}={v}: {err}");
        assert!(err.to_string().contains(named), "{k}={v}: {err}");
        assert!(log.topic("t").is_err(), "{k}={v} created the topic");
    }
    assert!(!log.dir().join("topics").join("t").exists());
}

#[test]
fn internal_topics_exist_and_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = crate::common::open(dir.path());
    for name in ["__consumer_offsets", "__transaction_state"] {
        let d = log.describe_topic(name).unwrap();
        assert!(d.internal);
        assert!(
            d.config
                .iter()
                .any(|(k, v, _)| *k == "cleanup.policy" && v == "compact")
        );
        let err = log.delete_topic(name).unwrap_err();
        assert!(err.to_string().contains("internal"), "{err}");
        assert!(log.topic(name).is_ok());
    }
}

#[test]
fn alter_partitions_grows_keeping_data_and_refuses_to_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    log.append_records("t", 0, &[rec("a", "p0", 1)]).unwrap();
    log.append_records("t", 1, &[rec("b", "p1", 2)]).unwrap();
    log.alter_partitions("t", 4).unwrap();
    assert_eq!(log.topic("t").unwrap().partition_count(), 4);
    assert_eq!(values(&fetch_all(&log, "t", 0, 0)), ["p0"]);
    assert_eq!(values(&fetch_all(&log, "t", 1, 0)), ["p1"]);
    assert!(fetch_all(&log, "t", 3, 0).is_empty());
    log.append_records("t", 3, &[rec("c", "p3", 3)]).unwrap();

    let err = log.alter_partitions("t", 3).unwrap_err();
    assert!(matches!(err, LogError::InvalidPartitions { .. }), "{err}");
    assert!(err.to_string().contains("grow"), "{err}");
    assert_eq!(log.topic("t").unwrap().partition_count(), 4);

    log.close().unwrap();
    let log = open(dir.path());
    assert_eq!(log.topic("t").unwrap().partition_count(), 4);
    assert_eq!(values(&fetch_all(&log, "t", 3, 0)), ["p3"]);
    assert_eq!(values(&fetch_all(&log, "t", 0, 0)), ["p0"]);
}

#[test]
fn alter_config_retention_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &kv(&[("segment.bytes", "1024")]))
        .unwrap();
    let now = now_ms();
    append_n(&log, "t", 20, 200, |_| now);
    let before = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(before.segments > 3, "{before:?}");
    log.run_housekeeping().unwrap();
    assert_eq!(log.describe_topic("t").unwrap().partitions[0], before);

    let err = log
        .alter_config("t", &kv(&[("retention.bytes", "lots")]))
        .unwrap_err();
    assert!(err.to_string().contains("retention.bytes"), "{err}");
    log.alter_config("t", &kv(&[("retention.bytes", "1500")]))
        .unwrap();
    log.run_housekeeping().unwrap();
    let after = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(after.segments < before.segments, "{after:?}");
    assert!(after.log_start_offset > 0);
    assert_eq!(after.log_end_offset, 20);
    assert!(log.describe_topic("t").unwrap().config.contains(&(
        "retention.bytes",
        "1500".into(),
        true
    )));
}

#[test]
fn delete_topic_removes_data_and_the_name_is_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &kv(&[("retention.ms", "5000")]))
        .unwrap();
    log.append_records("t", 0, &[rec("k", "old", 1)]).unwrap();
    log.delete_topic("t").unwrap();
    assert!(matches!(log.topic("t"), Err(LogError::UnknownTopic(_))));
    assert!(!log.topic_names().contains(&"t".to_string()));
    let topics_dir = log.dir().join("topics");
    let leftovers: Vec<_> = std::fs::read_dir(&topics_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("t") && !n.starts_with("__"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(matches!(
        log.delete_topic("t"),
        Err(LogError::UnknownTopic(_))
    ));

    log.create_topic("t", 1, &[]).unwrap();
    let d = log.describe_topic("t").unwrap();
    assert_eq!(d.partitions.len(), 1);
    assert_eq!(d.partitions[0].log_end_offset, 0, "no old data");
    assert!(
        d.config
            .contains(&("retention.ms", "604800000".into(), false))
    );
    log.append_records("t", 0, &[rec("k", "new", 2)]).unwrap();
    assert_eq!(values(&fetch_all(&log, "t", 0, 0)), ["new"]);
    log.close().unwrap();
    let log = open(dir.path());
    assert_eq!(values(&fetch_all(&log, "t", 0, 0)), ["new"]);
}

#[test]
fn writing_to_an_unknown_topic_fails_unless_auto_create() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let err = log
            .append_records("nope", 0, &[rec("k", "v", 1)])
            .unwrap_err();
        assert!(
            matches!(err, LogError::UnknownTopic(ref n) if n == "nope"),
            "{err}"
        );
        let mut p = producer(&log, 1024);
        let err = p.send("nope", rec("k", "v", 1)).unwrap_err();
        assert!(matches!(err, LogError::UnknownTopic(_)), "{err}");
        assert!(log.topic("nope").is_err());
        log.close().unwrap();
    }
    let log = Log::open(
        dir.path(),
        LogOptions {
            auto_create_topics: true,
            default_partitions: 3,
            ..opts()
        },
    )
    .unwrap();
    let mut p = producer(&log, 1024);
    p.send("auto", rec("k", "v", 1)).unwrap();
    p.flush().unwrap();
    assert_eq!(log.topic("auto").unwrap().partition_count(), 3);
    let part = partition_for_key(b"k", 3);
    assert_eq!(values(&fetch_all(&log, "auto", part, 0)), ["v"]);
    // The plain append API auto-creates too.
    log.append_records("auto2", 0, &[rec("k", "w", 1)]).unwrap();
    assert_eq!(values(&fetch_all(&log, "auto2", 0, 0)), ["w"]);
    // A bad name is still refused.
    let err = log.append_records("bad name", 0, &[rec("k", "v", 1)]);
    assert!(
        matches!(err, Err(LogError::InvalidTopicName { .. })),
        "{err:?}"
    );
}

#[test]
fn topics_and_their_config_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.create_topic("a", 2, &kv(&[("segment.bytes", "2048")]))
            .unwrap();
        log.create_topic("b", 1, &[]).unwrap();
        log.alter_config("b", &kv(&[("retention.ms", "12345")]))
            .unwrap();
        log.append_records("a", 1, &[rec("k", "v1", 1), rec("k", "v2", 2)])
            .unwrap();
        log.close().unwrap();
    }
    let log = open(dir.path());
    let a = log.describe_topic("a").unwrap();
    assert_eq!(a.partitions.len(), 2);
    assert!(a.config.contains(&("segment.bytes", "2048".into(), true)));
    assert_eq!(log.topic("a").unwrap().config().segment_bytes, 2048);
    assert_eq!(a.partitions[1].log_end_offset, 2);
    let b = log.describe_topic("b").unwrap();
    assert!(b.config.contains(&("retention.ms", "12345".into(), true)));
    assert_eq!(log.topic("b").unwrap().config().retention_ms, 12345);
    assert_eq!(values(&fetch_all(&log, "a", 1, 0)), ["v1", "v2"]);
}

// ----- partitioner -----

#[test]
fn keyed_records_land_on_their_murmur2_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 5, &[]).unwrap();
    let mut p = producer(&log, 256);
    let mut expected: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("key-{}", i % 37);
        expected
            .entry(partition_for_key(key.as_bytes(), 5))
            .or_default()
            .push(format!("{key}:{i}"));
        p.send("t", rec(&key, &format!("{key}:{i}"), 1)).unwrap();
    }
    p.flush().unwrap();
    assert!(expected.len() > 2, "keys spread over partitions");
    for part in 0..5 {
        let got = values(&fetch_all(&log, "t", part, 0));
        assert_eq!(
            got,
            expected.remove(&part).unwrap_or_default(),
            "partition {part}"
        );
    }
}

#[test]
fn keyless_records_stick_to_one_partition_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 3, &[]).unwrap();
    // Each record is ~116 bytes; batch_size 400 closes a batch every 3 records.
    let mut p = producer(&log, 400);
    for i in 0..30 {
        p.send("t", Record::from_value(val(i, 100), 1)).unwrap();
    }
    p.flush().unwrap();
    let mut batches: Vec<(u32, Vec<usize>)> = Vec::new();
    let mut total = 0;
    for part in 0..3 {
        let mut offset = 0;
        loop {
            let r = log
                .fetch("t", part, offset, 1, Isolation::ReadUncommitted)
                .unwrap();
            if r.data.is_empty() {
                break;
            }
            let (recs, next) = decode_fetch(&r, Isolation::ReadUncommitted).unwrap();
            let idx: Vec<usize> = values(&recs)
                .iter()
                .map(|v| v[1..v.find('-').unwrap()].parse().unwrap())
                .collect();
            total += idx.len();
            batches.push((part, idx));
            offset = next;
        }
    }
    assert_eq!(total, 30);
    // Every batch holds consecutive records, and consecutive batches use different partitions.
    batches.sort_by_key(|b| b.1[0]);
    for w in batches.windows(2) {
        assert_eq!(w[0].1.last().unwrap() + 1, w[1].1[0], "batches {batches:?}");
        assert_ne!(w[0].0, w[1].0, "sticky partition moved on: {batches:?}");
    }
    assert!(batches.len() >= 6, "{batches:?}");
    let used: HashSet<u32> = batches.iter().map(|b| b.0).collect();
    assert_eq!(used.len(), 3, "round robin over all partitions");
}

// ----- segments, fetch, offsets -----

#[test]
fn small_segment_bytes_rolls_segments_with_index_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &kv(&[("segment.bytes", "1024")]))
        .unwrap();
    let now = now_ms();
    append_n(&log, "t", 30, 200, |_| now);
    let info = log.describe_topic("t").unwrap().partitions[0].clone();
    let pdir = part_dir(&log, "t", 0);
    let logs = files_with_ext(&pdir, "log");
    assert_eq!(info.segments, logs.len());
    assert!(info.segments >= 7, "{info:?}");
    assert_eq!(info.log_end_offset, 30);
    let mut bases = Vec::new();
    for name in &logs {
        let stem = name.strip_suffix(".log").unwrap();
        assert_eq!(stem.len(), 20, "{name}");
        bases.push(stem.parse::<i64>().unwrap());
        let size = std::fs::metadata(pdir.join(name)).unwrap().len();
        assert!(size <= 1024, "{name} is {size} bytes");
    }
    assert_eq!(bases[0], 0);
    assert!(bases.windows(2).all(|w| w[0] < w[1]));
    let sum: u64 = logs
        .iter()
        .map(|n| std::fs::metadata(pdir.join(n)).unwrap().len())
        .sum();
    assert_eq!(sum, info.size_bytes);
    for name in &logs[..logs.len() - 1] {
        let stem = name.strip_suffix(".log").unwrap();
        for ext in ["index", "timeindex"] {
            let p = pdir.join(format!("{stem}.{ext}"));
            assert!(p.exists(), "{} missing", p.display());
        }
        assert!(
            std::fs::metadata(pdir.join(format!("{stem}.index")))
                .unwrap()
                .len()
                >= 8
        );
    }
    // Each segment starts exactly where the previous one ended.
    let all = fetch_all(&log, "t", 0, 0);
    assert_eq!(all.len(), 30);
    assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as i64));
}

#[test]
fn segment_ms_rolls_by_record_age() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &kv(&[("segment.ms", "60000")]))
        .unwrap();
    let now = now_ms();
    // Records spread over 10 minutes, 1 minute apart, written in quick succession.
    append_n(&log, "t", 10, 10, |i| now - 600_000 + 60_000 * i as i64);
    let info = log.describe_topic("t").unwrap().partitions[0].clone();
    assert_eq!(info.segments, 10, "one segment per minute of record time");

    // Old records written in a burst span no time: they are not rolled one per batch.
    log.create_topic("old", 1, &kv(&[("segment.ms", "60000")]))
        .unwrap();
    let old = now - 30 * 24 * 3600 * 1000;
    append_n(&log, "old", 10, 10, |i| old + i as i64);
    let info = log.describe_topic("old").unwrap().partitions[0].clone();
    assert_eq!(info.segments, 1, "{info:?}");

    // Live records roll once the first one is older than segment.ms.
    log.create_topic("live", 1, &kv(&[("segment.ms", "50")]))
        .unwrap();
    append_n(&log, "live", 3, 10, |_| now_ms());
    assert_eq!(
        log.describe_topic("live").unwrap().partitions[0].segments,
        1
    );
    std::thread::sleep(Duration::from_millis(80));
    append_n(&log, "live", 1, 10, |_| now_ms());
    assert_eq!(
        log.describe_topic("live").unwrap().partitions[0].segments,
        2
    );
}

/// A topic with several segments of multi-record batches: 60 records, 4 per batch.
fn multi_segment_topic(log: &Log, topic: &str, extra: &[(&str, &str)]) -> i64 {
    let mut cfg = vec![("segment.bytes", "1024")];
    cfg.extend_from_slice(extra);
    log.create_topic(topic, 1, &kv(&cfg)).unwrap();
    let t0 = 1_700_000_000_000;
    for b in 0..15 {
        let recs: Vec<Record> = (0..4)
            .map(|j| {
                let i = b * 4 + j;
                Record::with_key(format!("k{i}"), val(i, 60), t0 + 100 * i as i64)
            })
            .collect();
        log.append_records(topic, 0, &recs).unwrap();
    }
    t0
}

#[test]
fn consumer_fetch_from_any_offset_returns_that_record_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    multi_segment_topic(&log, "t", &[]);
    let info = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(info.segments >= 4, "{info:?}");
    let mut c = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::None,
        max_poll_records: 3,
        ..ConsumerConfig::default()
    });
    let t = tp("t", 0);
    c.assign(std::slice::from_ref(&t)).unwrap();
    for offset in 0..60 {
        c.seek(&t, offset);
        let got = c.poll(Duration::from_millis(200)).unwrap();
        assert!(!got.is_empty(), "nothing at {offset}");
        assert_eq!(got[0].offset, offset);
        assert_eq!(got[0].key.as_deref(), Some(format!("k{offset}").as_bytes()));
        assert_eq!(
            got[0].value.as_deref(),
            Some(val(offset as usize, 60).as_bytes())
        );
        assert!(
            got.windows(2).all(|w| w[1].offset == w[0].offset + 1),
            "{got:?}"
        );
    }
    // After a clean reopen (indexes loaded from files) the same holds.
    drop(c);
    log.close().unwrap();
    let log = open(dir.path());
    for offset in [0, 1, 17, 33, 59] {
        let r = fetch_all(&log, "t", 0, offset);
        assert_eq!(r[0].offset, offset);
        assert_eq!(r.len(), 60 - offset as usize);
    }
}

#[test]
fn fetch_with_a_small_byte_limit_returns_one_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    multi_segment_topic(&log, "t", &[]);
    for offset in [0, 2, 4, 31] {
        let r = log
            .fetch("t", 0, offset, 1, Isolation::ReadUncommitted)
            .unwrap();
        let (recs, next) = decode_fetch(&r, Isolation::ReadUncommitted).unwrap();
        assert_eq!(recs.len(), 4, "one whole batch of 4 at {offset}");
        let base = offset - offset % 4;
        assert_eq!(recs[0].offset, base);
        assert_eq!(next, base + 4);
        assert_eq!(r.high_watermark, 60);
    }
    // A larger limit returns several whole batches, never a torn one.
    let r = log
        .fetch("t", 0, 0, 700, Isolation::ReadUncommitted)
        .unwrap();
    let (recs, _) = decode_fetch(&r, Isolation::ReadUncommitted).unwrap();
    assert!(r.data.len() <= 700);
    assert_eq!(recs.len() % 4, 0);
    assert!(recs.len() >= 4);
}

#[test]
fn fetch_outside_the_log_is_offset_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    multi_segment_topic(&log, "t", &[]);
    for bad in [-1, 61, 1000] {
        let err = log
            .fetch("t", 0, bad, 1024, Isolation::ReadCommitted)
            .unwrap_err();
        match err {
            LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
                ..
            } => assert_eq!((offset, log_start, log_end), (bad, 0, 60)),
            e => panic!("{bad}: {e}"),
        }
    }
    let r = log
        .fetch("t", 0, 60, 1024, Isolation::ReadCommitted)
        .unwrap();
    assert!(r.data.is_empty(), "fetch at the end waits for data");
    let err = log
        .fetch("t", 7, 0, 1024, Isolation::ReadCommitted)
        .unwrap_err();
    assert!(matches!(err, LogError::UnknownPartition { .. }), "{err}");
}

#[test]
fn list_offset_earliest_latest_and_by_timestamp_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let t0 = multi_segment_topic(&log, "t", &[("index.interval.bytes", "0")]);
    log.create_topic("empty", 1, &[]).unwrap();
    let check = |log: &Log| {
        let lo = |spec| {
            log.list_offset("t", 0, spec, Isolation::ReadCommitted)
                .unwrap()
        };
        assert_eq!(lo(OffsetSpec::Earliest), Some(0));
        assert_eq!(lo(OffsetSpec::Latest), Some(60));
        assert_eq!(lo(OffsetSpec::Timestamp(0)), Some(0));
        for i in 0..60i64 {
            assert_eq!(lo(OffsetSpec::Timestamp(t0 + 100 * i)), Some(i), "at {i}");
            assert_eq!(
                lo(OffsetSpec::Timestamp(t0 + 100 * i - 50)),
                Some(i),
                "between {} and {i}",
                i - 1
            );
        }
        assert_eq!(lo(OffsetSpec::Timestamp(t0 + 100 * 59 + 1)), None);
        assert_eq!(lo(OffsetSpec::Timestamp(i64::MAX)), None);
        assert_eq!(
            log.list_offset(
                "empty",
                0,
                OffsetSpec::Timestamp(0),
                Isolation::ReadCommitted
            )
            .unwrap(),
            None
        );
    };
    assert!(log.describe_topic("t").unwrap().partitions[0].segments >= 4);
    check(&log);
    log.close().unwrap();
    let log = open(dir.path());
    check(&log);
}

// ----- indexes and torn tails -----

#[test]
fn missing_torn_or_garbage_indexes_are_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let t0;
    let closed: Vec<String>;
    {
        let log = open(dir.path());
        t0 = multi_segment_topic(&log, "t", &[("index.interval.bytes", "0")]);
        let pdir = part_dir(&log, "t", 0);
        let logs = files_with_ext(&pdir, "log");
        assert!(logs.len() >= 5, "{logs:?}");
        closed = logs[..logs.len() - 1]
            .iter()
            .map(|n| n.strip_suffix(".log").unwrap().to_string())
            .collect();
        log.close().unwrap();
    }
    let pdir = dir.path().join("topics/t/0");
    let idx = |i: usize, ext: &str| pdir.join(format!("{}.{ext}", closed[i]));
    // Segment 0: no indexes at all.
    std::fs::remove_file(idx(0, "index")).unwrap();
    std::fs::remove_file(idx(0, "timeindex")).unwrap();
    // Segment 1: torn indexes.
    let raw = std::fs::read(idx(1, "index")).unwrap();
    std::fs::write(idx(1, "index"), &raw[..raw.len() - 3]).unwrap();
    let raw = std::fs::read(idx(1, "timeindex")).unwrap();
    std::fs::write(idx(1, "timeindex"), &raw[..5]).unwrap();
    // Segment 2: plausible garbage (sorted, in range) that points at no batch.
    let mut g = Vec::new();
    for (rel, pos) in [(0u32, 0u32), (1, 7), (2, 30), (3, 99)] {
        g.extend_from_slice(&rel.to_be_bytes());
        g.extend_from_slice(&pos.to_be_bytes());
    }
    std::fs::write(idx(2, "index"), &g).unwrap();
    let mut g = Vec::new();
    for (ts, rel) in [(1i64, 0u32), (2, 1), (i64::MAX - 1, 2)] {
        g.extend_from_slice(&ts.to_be_bytes());
        g.extend_from_slice(&rel.to_be_bytes());
    }
    std::fs::write(idx(2, "timeindex"), &g).unwrap();
    // Segment 3: random garbage.
    let noise: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(idx(3, "index"), &noise).unwrap();
    std::fs::write(idx(3, "timeindex"), &noise[..60]).unwrap();

    let log = open(dir.path());
    for offset in 0..60 {
        let r = fetch_all(&log, "t", 0, offset);
        assert_eq!(r.len(), 60 - offset as usize, "from {offset}");
        assert_eq!(r[0].offset, offset);
        assert_eq!(
            r[0].record.key.as_deref(),
            Some(format!("k{offset}").as_bytes())
        );
    }
    for i in 0..60i64 {
        assert_eq!(
            log.list_offset(
                "t",
                0,
                OffsetSpec::Timestamp(t0 + 100 * i - 50),
                Isolation::ReadCommitted
            )
            .unwrap(),
            Some(i),
            "timestamp lookup of {i}"
        );
    }
}

/// Writes 10 batches of 3 records to a 1-partition topic (small segments) and closes the log;
/// returns the active segment's path. The caller then damages it and deletes the marker.
fn closed_log_with_batches(dir: &Path) -> PathBuf {
    let log = open(dir);
    log.create_topic("t", 1, &kv(&[("segment.bytes", "2048")]))
        .unwrap();
    for b in 0..10 {
        let recs: Vec<Record> = (0..3)
            .map(|j| rec(&format!("k{}", b * 3 + j), &val(b * 3 + j, 40), 1000))
            .collect();
        log.append_records("t", 0, &recs).unwrap();
    }
    assert!(log.describe_topic("t").unwrap().partitions[0].segments > 1);
    let active = active_log(&log, "t", 0);
    log.close().unwrap();
    assert!(dir.join(".clean-shutdown").exists());
    active
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn assert_recovered(dir: &Path, active: &Path, clean_len: u64, end: i64) {
    let log = open(dir);
    assert_eq!(
        std::fs::metadata(active).unwrap().len(),
        clean_len,
        "tail cut"
    );
    let info = log.describe_topic("t").unwrap().partitions[0].clone();
    assert_eq!(info.log_end_offset, end);
    let all = fetch_all(&log, "t", 0, 0);
    assert_eq!(all.len() as i64, end);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.record.value.as_deref(), Some(val(i, 40).as_bytes()));
    }
    let a = log.append_records("t", 0, &[rec("n", "new", 5)]).unwrap();
    assert_eq!(a.base_offset, end);
    log.close().unwrap();
    let log = open(dir);
    let all = fetch_all(&log, "t", 0, 0);
    assert_eq!(all.len() as i64, end + 1);
    assert_eq!(
        all.last().unwrap().record.value.as_deref(),
        Some(&b"new"[..])
    );
}

#[test]
fn garbage_after_the_last_batch_is_truncated_after_an_unclean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let active = closed_log_with_batches(dir.path());
    let clean_len = std::fs::metadata(&active).unwrap().len();
    let noise: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    append_bytes(&active, &noise);
    std::fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();
    assert_recovered(dir.path(), &active, clean_len, 30);
}

#[test]
fn half_a_batch_at_the_end_is_truncated_after_an_unclean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let active = closed_log_with_batches(dir.path());
    let clean_len = std::fs::metadata(&active).unwrap().len();
    // Half of a real batch, as a crash mid-write would leave.
    let raw = std::fs::read(&active).unwrap();
    let first = sluice_log::batch::BatchHeader::parse(&raw).unwrap();
    let mut half = raw[..first.total_size()].to_vec();
    sluice_log::batch::set_base_offset(&mut half, 30);
    half.truncate(first.total_size() / 2);
    append_bytes(&active, &half);
    std::fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();
    assert_recovered(dir.path(), &active, clean_len, 30);
}

#[test]
fn a_flipped_byte_in_the_last_batch_drops_that_batch_only() {
    let dir = tempfile::tempdir().unwrap();
    let active = closed_log_with_batches(dir.path());
    let mut raw = std::fs::read(&active).unwrap();
    // Find the last batch of the active segment.
    let mut pos = 0;
    let mut last = 0;
    while pos < raw.len() {
        last = pos;
        pos += sluice_log::batch::BatchHeader::parse(&raw[pos..])
            .unwrap()
            .total_size();
    }
    let n = raw.len();
    raw[n - 5] ^= 0x40;
    std::fs::write(&active, &raw).unwrap();
    std::fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();
    // The batch was whole and acknowledged, so this is not a torn tail but lost records:
    // the batch is cut, its offsets are reported lost and not handed out again.
    let log = open(dir.path());
    assert_eq!(std::fs::metadata(&active).unwrap().len(), last as u64);
    let offsets: Vec<i64> = fetch_all(&log, "t", 0, 0)
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, (0..27).collect::<Vec<i64>>());
    let lost = log.data_loss();
    assert_eq!(
        (lost.len(), lost[0].from, lost[0].to),
        (1, 27, 30),
        "{lost:?}"
    );
    let a = log.append_records("t", 0, &[rec("n", "new", 5)]).unwrap();
    assert_eq!(a.base_offset, 30);
}

// ----- retention -----

#[test]
fn retention_bytes_deletes_oldest_closed_segments_and_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic(
        "t",
        1,
        &kv(&[("segment.bytes", "1024"), ("retention.bytes", "2500")]),
    )
    .unwrap();
    let now = now_ms();
    append_n(&log, "t", 40, 200, |_| now);
    let before = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(before.segments >= 10);
    let mut old = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::None,
        ..ConsumerConfig::default()
    });
    old.assign(&[tp("t", 0)]).unwrap();
    old.seek(&tp("t", 0), 0);

    log.run_housekeeping().unwrap();
    let after = log.describe_topic("t").unwrap().partitions[0].clone();
    // As in Kafka: the oldest segment goes while the rest still hold retention.bytes.
    let pdir = part_dir(&log, "t", 0);
    let logs = files_with_ext(&pdir, "log");
    let oldest = std::fs::metadata(pdir.join(&logs[0])).unwrap().len();
    assert!(after.size_bytes >= 2500, "{after:?}");
    assert!(
        after.size_bytes - oldest < 2500,
        "no more left than needed: {after:?}"
    );
    assert!(after.segments < before.segments);
    assert_eq!(after.log_end_offset, 40);
    assert_eq!(logs.len(), after.segments);
    let first_base: i64 = logs[0].strip_suffix(".log").unwrap().parse().unwrap();
    assert_eq!(after.log_start_offset, first_base);
    assert!(first_base > 0);
    assert_eq!(
        log.list_offset("t", 0, OffsetSpec::Earliest, Isolation::ReadCommitted)
            .unwrap(),
        Some(first_base)
    );
    let all = fetch_all(&log, "t", 0, first_base);
    assert_eq!(all.len() as i64, 40 - first_base);

    let err = log
        .fetch("t", 0, 0, 1024, Isolation::ReadCommitted)
        .unwrap_err();
    assert!(is_offset_out_of_range(&err), "{err}");
    let err = old.poll(Duration::from_millis(50)).unwrap_err();
    assert!(is_offset_out_of_range(&err), "{err}");
    let mut resetting = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    resetting.assign(&[tp("t", 0)]).unwrap();
    resetting.seek(&tp("t", 0), 0);
    let got = resetting.poll(Duration::from_secs(2)).unwrap();
    assert_eq!(got[0].offset, first_base);

    // A tiny limit still keeps the active segment.
    log.alter_config("t", &kv(&[("retention.bytes", "0")]))
        .unwrap();
    log.run_housekeeping().unwrap();
    let info = log.describe_topic("t").unwrap().partitions[0].clone();
    assert_eq!(info.segments, 1);
    assert_eq!(info.log_end_offset, 40);
    assert_eq!(
        info.log_start_offset,
        files_with_ext(&part_dir(&log, "t", 0), "log")[0]
            .strip_suffix(".log")
            .unwrap()
            .parse::<i64>()
            .unwrap()
    );
    // The log start survives a reopen.
    log.close().unwrap();
    let log = open(dir.path());
    assert_eq!(
        log.describe_topic("t").unwrap().partitions[0].log_start_offset,
        info.log_start_offset
    );
}

#[test]
fn retention_ms_deletes_segments_of_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic(
        "t",
        1,
        &kv(&[("segment.bytes", "1024"), ("retention.ms", "3600000")]),
    )
    .unwrap();
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    // 15 old records (two days ago), then 15 fresh ones.
    append_n(
        &log,
        "t",
        30,
        200,
        |i| if i < 15 { now - 2 * day } else { now },
    );
    let before = log.describe_topic("t").unwrap().partitions[0].clone();
    log.run_housekeeping().unwrap();
    let after = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(after.segments < before.segments);
    assert!(
        after.log_start_offset > 0 && after.log_start_offset <= 15,
        "{after:?}"
    );
    let all = fetch_all(&log, "t", 0, after.log_start_offset);
    assert!(all.iter().filter(|r| r.record.timestamp == now).count() == 15);
    // What is left of the old records shares a segment with fresh ones.
    let old_left = all.iter().filter(|r| r.record.timestamp < now).count();
    assert_eq!(old_left as i64, 15 - after.log_start_offset);
    assert!(old_left <= 4, "{old_left}");
    // retention.ms=-1 keeps forever.
    log.create_topic(
        "keep",
        1,
        &kv(&[("segment.bytes", "1024"), ("retention.ms", "-1")]),
    )
    .unwrap();
    append_n(&log, "keep", 10, 200, |_| 1);
    log.run_housekeeping().unwrap();
    assert_eq!(
        log.describe_topic("keep").unwrap().partitions[0].log_start_offset,
        0
    );
}

// ----- compaction -----

fn compact_topic(log: &Log, topic: &str, extra: &[(&str, &str)]) {
    let mut cfg = vec![("segment.bytes", "1024"), ("cleanup.policy", "compact")];
    cfg.extend_from_slice(extra);
    log.create_topic(topic, 1, &kv(&cfg)).unwrap();
}

/// The records compaction must keep: the latest per key below `closed_end`, all above.
fn expected_after_compaction(
    written: &[(i64, String, Option<String>)],
    closed_end: i64,
) -> Vec<(i64, String, Option<String>)> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for (o, k, _) in written.iter().filter(|w| w.0 < closed_end) {
        latest.insert(k, *o);
    }
    written
        .iter()
        .filter(|(o, k, _)| *o >= closed_end || latest[k.as_str()] == *o)
        .cloned()
        .collect()
}

fn as_triples(recs: &[StoredRecord]) -> Vec<(i64, String, Option<String>)> {
    recs.iter()
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.record.key.clone().unwrap().to_vec()).unwrap(),
                r.record
                    .value
                    .as_ref()
                    .map(|v| String::from_utf8(v.to_vec()).unwrap()),
            )
        })
        .collect()
}

fn active_base(log: &Log, topic: &str) -> i64 {
    let p = active_log(log, topic, 0);
    p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn compaction_keeps_the_latest_value_per_key_in_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    compact_topic(&log, "t", &[]);
    // An idempotent producer, one record per batch, 5 keys.
    let mut p = producer(&log, 1);
    let mut written = Vec::new();
    let now = now_ms();
    for i in 0..60 {
        let k = format!("k{}", i % 5);
        let v = val(i, 80);
        p.send("t", rec(&k, &v, now)).unwrap();
        let info = p.flush().unwrap();
        written.push((info[0].2.base_offset, k, Some(v)));
    }
    let before = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(before.segments > 3);
    let closed_end = active_base(&log, "t");
    log.run_housekeeping().unwrap();
    let after = log.describe_topic("t").unwrap().partitions[0].clone();
    assert!(
        after.size_bytes < before.size_bytes,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.log_end_offset, 60);
    let got = as_triples(&fetch_all(&log, "t", 0, 0));
    assert_eq!(got, expected_after_compaction(&written, closed_end));
    // The active segment is untouched: every record from closed_end on is there.
    assert_eq!(
        got.iter().filter(|g| g.0 >= closed_end).count() as i64,
        60 - closed_end
    );

    // Fetch from a removed offset starts at the next survivor; the producer continues.
    let removed = (0..closed_end)
        .find(|o| !got.iter().any(|g| g.0 == *o))
        .unwrap();
    let r = fetch_all(&log, "t", 0, removed);
    assert!(r[0].offset > removed);
    p.send("t", rec("k0", "after", now)).unwrap();
    assert_eq!(p.flush().unwrap()[0].2.base_offset, 60);

    // Survives reopen, and compacting again changes nothing.
    log.close().unwrap();
    drop(p);
    let log = open(dir.path());
    let again = as_triples(&fetch_all(&log, "t", 0, 0));
    assert_eq!(&again[..again.len() - 1], &got[..]);
    log.run_housekeeping().unwrap();
    assert_eq!(as_triples(&fetch_all(&log, "t", 0, 0)), again);
}

#[test]
fn compaction_keeps_tombstones_until_delete_retention_then_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    compact_topic(&log, "t", &[]);
    let now = now_ms();
    let mut written = Vec::new();
    for i in 0..20 {
        let k = format!("k{}", i % 4);
        let v = val(i, 80);
        let a = log.append_records("t", 0, &[rec(&k, &v, now)]).unwrap();
        written.push((a.base_offset, k, Some(v)));
    }
    let tomb = Record {
        key: Some(Bytes::from_static(b"k1")),
        value: None,
        headers: Vec::new(),
        timestamp: now,
    };
    let a = log.append_records("t", 0, &[tomb]).unwrap();
    written.push((a.base_offset, "k1".into(), None));
    log.partition("t", 0).unwrap().force_roll().unwrap();
    let closed_end = active_base(&log, "t");
    assert_eq!(closed_end, 21);

    log.run_housekeeping().unwrap();
    let got = as_triples(&fetch_all(&log, "t", 0, 0));
    let expected = expected_after_compaction(&written, closed_end);
    assert_eq!(got, expected);
    assert!(
        got.contains(&(20, "k1".into(), None)),
        "tombstone kept: {got:?}"
    );
    assert!(!got.iter().any(|g| g.1 == "k1" && g.2.is_some()));

    std::thread::sleep(Duration::from_millis(5));
    log.alter_config("t", &kv(&[("delete.retention.ms", "0")]))
        .unwrap();
    log.run_housekeeping().unwrap();
    let got = as_triples(&fetch_all(&log, "t", 0, 0));
    assert!(
        !got.iter().any(|g| g.1 == "k1"),
        "tombstone removed: {got:?}"
    );
    let keys: HashSet<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(keys, HashSet::from(["k0", "k2", "k3"]));
    assert_eq!(
        log.describe_topic("t").unwrap().partitions[0].log_end_offset,
        21
    );
}

#[test]
fn compacted_topic_rejects_keyless_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    compact_topic(&log, "t", &[]);
    let err = log
        .append_records("t", 0, &[rec("k", "v", 1), Record::from_value("x", 1)])
        .unwrap_err();
    assert!(matches!(err, LogError::InvalidRecord { .. }), "{err}");
    assert!(err.to_string().contains("key"), "{err}");
    let mut p = producer(&log, 1024);
    p.send("t", Record::from_value("x", 1)).unwrap();
    assert!(matches!(p.flush(), Err(LogError::InvalidRecord { .. })));
    assert_eq!(
        log.describe_topic("t").unwrap().partitions[0].log_end_offset,
        0
    );
}

#[test]
fn compaction_runs_while_a_producer_keeps_appending() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    compact_topic(&log, "t", &[]);
    const N: usize = 3000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut p = producer(&log, 200);
            for i in 0..N {
                p.send("t", rec(&format!("k{}", i % 10), &format!("{i}"), now_ms()))
                    .unwrap();
            }
            p.flush().unwrap();
        })
    };
    // A second cleaner at once (as the housekeeping thread would be) must not interfere.
    let other = {
        let log = log.clone();
        let writer_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&writer_done);
        let h = std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                log.run_housekeeping().unwrap();
            }
        });
        (h, writer_done)
    };
    let part = log.partition("t", 0).unwrap();
    let mut passes = 0;
    let mut removed = 0;
    let start = Instant::now();
    while !writer.is_finished() {
        let s = part.compact(now_ms()).unwrap();
        removed += s.records_removed;
        passes += 1;
    }
    writer.join().unwrap();
    other.1.store(true, std::sync::atomic::Ordering::Release);
    other.0.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    part.force_roll().unwrap();
    removed += part.compact(now_ms()).unwrap().records_removed;
    assert!(passes > 0);
    let _ = removed;
    assert_eq!(part.info().log_end_offset, N as i64);
    let got = fetch_all(&log, "t", 0, 0);
    let mut latest: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let k = String::from_utf8(r.record.key.clone().unwrap().to_vec()).unwrap();
        let v: usize = std::str::from_utf8(r.record.value.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.offset, v as i64, "offsets unchanged by compaction");
        latest.insert(k, v);
    }
    assert_eq!(got.len(), 10, "one record per key after a full compaction");
    for k in 0..10 {
        assert_eq!(latest[&format!("k{k}")], N - 10 + k);
    }
}

// ----- size limits -----

#[test]
fn batches_over_max_message_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    assert_eq!(log.topic("t").unwrap().config().max_message_bytes, 1 << 20);
    let big = Record::from_value(vec![7u8; (1 << 20) + 1], 1);
    let err = log
        .append_records("t", 1, std::slice::from_ref(&big))
        .unwrap_err();
    match &err {
        LogError::MessageTooLarge {
            topic,
            partition,
            size,
            max,
        } => {
            assert_eq!((topic.as_str(), *partition, *max), ("t", 1, 1 << 20));
            assert!(*size > 1 << 20);
        }
        e => panic!("{e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("t-1") && msg.contains("max.message.bytes"),
        "{msg}"
    );
    assert!(err.is_user_error());
    // Just under the limit fits.
    log.append_records("t", 1, &[Record::from_value(vec![7u8; (1 << 20) - 200], 1)])
        .unwrap();
    // Through a producer, and with a lowered limit.
    log.alter_config("t", &kv(&[("max.message.bytes", "1000")]))
        .unwrap();
    let mut p = producer(&log, 1 << 20);
    // A record that cannot fit even alone is refused when sent, alone: it never joins a
    // batch whose other records would fail with it.
    p.send_to("t", 0, Record::from_value(vec![2u8; 10], 1))
        .unwrap();
    let err = p
        .send_to("t", 0, Record::from_value(vec![1u8; 2000], 1))
        .unwrap_err();
    p.flush().unwrap();
    assert!(
        matches!(
            err,
            LogError::RecordTooLarge {
                partition: 0,
                max: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        log.describe_topic("t").unwrap().partitions[0].log_end_offset,
        1,
        "the small record was written"
    );
}

#[test]
fn batches_stay_under_a_small_max_message_bytes() {
    // A limit below the producer's batch size: batches are cut to fit it, so every record
    // is written (a batch over the limit would fail whole at its append).
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &kv(&[("max.message.bytes", "16384")]))
        .unwrap();
    let mut p = producer(&log, 1 << 20);
    for i in 0..2_000u32 {
        p.send(
            "t",
            Record::from_value(vec![b'x'; 200 + (i % 7) as usize], 1),
        )
        .unwrap();
    }
    p.flush().unwrap();
    assert_eq!(
        log.describe_topic("t").unwrap().partitions[0].log_end_offset,
        2_000
    );
}

// ----- Kafka byte compatibility -----

#[test]
fn segment_files_decode_with_kafka_protocol_for_every_compression() {
    use kafka_protocol::records::RecordBatchDecoder;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let mut expected = Vec::new();
    let mut batch_compressions = Vec::new();
    for codec in Compression::ALL {
        let mut p = log
            .producer(ProducerConfig {
                compression: codec,
                batch_size: 1 << 20,
                ..ProducerConfig::default()
            })
            .unwrap();
        for j in 0..25 {
            let i = expected.len();
            let r = Record {
                key: (j % 5 != 4).then(|| Bytes::from(format!("key-{i}"))),
                value: (j % 7 != 6).then(|| Bytes::from(val(i, 50 + j * 13))),
                headers: vec![
                    Header {
                        key: "h1".into(),
                        value: Some(Bytes::from(format!("hv{i}"))),
                    },
                    Header {
                        key: "nul".into(),
                        value: None,
                    },
                ],
                timestamp: 1_700_000_000_000 + i as i64 * 3,
            };
            p.send_to("t", 0, r.clone()).unwrap();
            expected.push(r);
        }
        p.flush().unwrap();
        batch_compressions.push((codec, p.producer_id()));
    }
    log.close().unwrap();

    let pdir = part_dir(&log, "t", 0);
    let mut raw = Vec::new();
    for name in files_with_ext(&pdir, "log") {
        raw.extend(std::fs::read(pdir.join(name)).unwrap());
    }
    let mut buf = Bytes::from(raw);
    let sets = RecordBatchDecoder::decode_all(&mut buf).unwrap();
    assert_eq!(sets.len(), Compression::ALL.len());
    let mut records = Vec::new();
    for (set, (codec, pid)) in sets.iter().zip(&batch_compressions) {
        assert_eq!(set.version, 2);
        assert_eq!(format!("{:?}", set.compression), format!("{codec:?}"));
        for r in &set.records {
            assert_eq!(r.producer_id, *pid);
            assert!(!r.control && !r.transactional);
        }
        records.extend(set.records.iter().cloned());
    }
    assert_eq!(records.len(), expected.len());
    for (i, (got, want)) in records.iter().zip(&expected).enumerate() {
        assert_eq!(got.offset, i as i64, "offset as assigned by the log");
        assert_eq!(got.sequence, (i % 25) as i32);
        assert_eq!(got.key, want.key, "key of {i}");
        assert_eq!(got.value, want.value, "value of {i}");
        assert_eq!(got.timestamp, want.timestamp);
        let headers: Vec<(String, Option<Bytes>)> = got
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let want_h: Vec<(String, Option<Bytes>)> = want
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert_eq!(headers, want_h, "headers of {i}");
    }
}

// ----- concurrency -----

#[test]
fn concurrent_producers_keep_per_producer_order_and_lose_nothing() {
    const THREADS: usize = 4;
    const PER: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &kv(&[("segment.bytes", "65536")]))
        .unwrap();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut p = producer(&log, 2048);
                for i in 0..PER {
                    let key = format!("p{t}-{}", i % 11);
                    p.send("t", rec(&key, &format!("{t}:{i}"), now_ms()))
                        .unwrap();
                }
                p.flush().unwrap();
            })
        })
        .collect();
    let mut c = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    c.assign(&[tp("t", 0), tp("t", 1)]).unwrap();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut last: HashMap<(u32, usize), usize> = HashMap::new();
    let mut last_offset: HashMap<u32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < THREADS * PER {
        assert!(Instant::now() < deadline, "only {} records", seen.len());
        for r in c.poll(Duration::from_millis(100)).unwrap() {
            let v = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
            let (t, i) = v.split_once(':').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert!(seen.insert((t, i)), "duplicate {v}");
            if let Some(prev) = last.insert((r.partition, t), i) {
                assert!(
                    prev < i,
                    "producer {t} out of order in {}: {prev} then {i}",
                    r.partition
                );
            }
            if let Some(prev) = last_offset.insert(r.partition, r.offset) {
                assert_eq!(r.offset, prev + 1);
            }
            let key = std::str::from_utf8(r.key.as_deref().unwrap()).unwrap();
            assert_eq!(partition_for_key(key.as_bytes(), 2), r.partition);
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(c.poll(Duration::from_millis(20)).unwrap().is_empty());
    let d = log.describe_topic("t").unwrap();
    let total: i64 = d.partitions.iter().map(|p| p.log_end_offset).sum();
    assert_eq!(total as usize, THREADS * PER);
}
