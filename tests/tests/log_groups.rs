//! Consumer groups of the embedded log: assignment and hand-over between members, session
//! expiry, pause/resume, independent groups, offset reset policies, committed offsets, lag and
//! `reset_offsets`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice_log::group::GroupError;
use sluice_log::{
    Assignor, Consumer, ConsumerConfig, Log, LogError, LogOptions, OffsetReset, ProducerConfig,
    ResetTo, TopicPartition,
};

use crate::common::{open, rec};

fn tp(topic: &str, partition: u32) -> TopicPartition {
    TopicPartition {
        topic: topic.into(),
        partition,
    }
}

fn tps(topic: &str, partitions: &[u32]) -> BTreeSet<TopicPartition> {
    partitions.iter().map(|p| tp(topic, *p)).collect()
}

fn config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group: Some(group.into()),
        auto_offset_reset: OffsetReset::Earliest,
        heartbeat_interval: Duration::from_millis(1),
        session_timeout: Duration::from_secs(30),
        ..ConsumerConfig::default()
    }
}

/// Writes `n` records per partition with values `p<partition>-<i>`.
fn produce(log: &Log, topic: &str, partitions: u32, n: usize) {
    for p in 0..partitions {
        let recs: Vec<_> = (0..n).map(|i| rec("k", &format!("p{p}-{i}"), 1)).collect();
        log.append_records(topic, p, &recs).unwrap();
    }
}

fn value(r: &sluice_log::ConsumerRecord) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

fn assert_disjoint(consumers: &[&Consumer]) {
    for (i, a) in consumers.iter().enumerate() {
        for b in &consumers[i + 1..] {
            let both: Vec<_> = a.assignment().intersection(b.assignment()).collect();
            assert!(both.is_empty(), "partitions owned twice: {both:?}");
        }
    }
}

/// Polls every consumer in turn (checking that no partition is ever owned twice) until
/// `done` holds for their assignments; returns the records read on the way.
fn poll_until(
    consumers: &mut [&mut Consumer],
    mut done: impl FnMut(&[BTreeSet<TopicPartition>]) -> bool,
) -> Vec<sluice_log::ConsumerRecord> {
    let start = Instant::now();
    let mut out = Vec::new();
    loop {
        for i in 0..consumers.len() {
            out.extend(consumers[i].poll(Duration::from_millis(2)).unwrap());
            let all: Vec<&Consumer> = consumers.iter().map(|c| &**c).collect();
            assert_disjoint(&all);
        }
        let assignments: Vec<BTreeSet<TopicPartition>> =
            consumers.iter().map(|c| c.assignment().clone()).collect();
        if done(&assignments) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "assignments never converged: {assignments:?}"
        );
    }
}

#[test]
fn a_single_subscriber_gets_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 4, &[]).unwrap();
    produce(&log, "t", 4, 3);
    let mut c = log.consumer(config("g"));
    c.subscribe(&["t"]).unwrap();
    assert_eq!(*c.assignment(), tps("t", &[0, 1, 2, 3]));
    let got = poll_until(&mut [&mut c], |_| true);
    let mut all = got;
    while all.len() < 12 {
        let more = c.poll(Duration::from_millis(50)).unwrap();
        assert!(!more.is_empty(), "stalled after {} records", all.len());
        all.extend(more);
    }
    assert_eq!(all.len(), 12);
    let d = log.describe_group("g").unwrap();
    assert_eq!(d.description.unwrap().members.len(), 1);
}

/// Two members share 4 partitions of 25 records; with `auto_commit` the consumers never
/// commit themselves and rely on the commit of revoked partitions.
fn split_between_two(assignor: Assignor, first: &[u32], second: &[u32], auto_commit: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 4, &[]).unwrap();
    produce(&log, "t", 4, 25);
    let cfg = ConsumerConfig {
        assignor,
        max_poll_records: 7,
        enable_auto_commit: auto_commit,
        auto_commit_interval: Duration::from_secs(60),
        ..config("g")
    };
    let mut c1 = log.consumer(cfg.clone());
    c1.subscribe(&["t"]).unwrap();
    let mut seen: Vec<(u32, i64)> = Vec::new();
    // The first member reads (and commits) a little alone.
    for _ in 0..2 {
        for r in c1.poll(Duration::from_millis(50)).unwrap() {
            seen.push((r.partition, r.offset));
        }
        if !auto_commit {
            c1.commit().unwrap();
        }
    }
    assert!(!seen.is_empty());
    let mut c2 = log.consumer(cfg);
    c2.subscribe(&["t"]).unwrap();
    let (first, second) = (tps("t", first), tps("t", second));
    let start = Instant::now();
    loop {
        for c in [&mut c1, &mut c2] {
            for r in c.poll(Duration::from_millis(2)).unwrap() {
                assert!(
                    c.assignment().contains(&tp("t", r.partition)),
                    "record of an unowned partition"
                );
                seen.push((r.partition, r.offset));
            }
            if !auto_commit {
                c.commit().unwrap();
            }
        }
        assert_disjoint(&[&c1, &c2]);
        if seen.len() >= 100 && *c1.assignment() == first && *c2.assignment() == second {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{} records, assignments {:?} / {:?}",
            seen.len(),
            c1.assignment(),
            c2.assignment()
        );
    }
    let unique: BTreeSet<(u32, i64)> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a record was read twice");
    assert_eq!(unique.len(), 100);
    if auto_commit {
        // Closing commits the final positions.
        c1.close().unwrap();
        c2.close().unwrap();
    }
    for p in 0..4 {
        assert_eq!(log.committed("g", &tp("t", p)), Some(25));
    }
    let d = log.describe_group("g").unwrap();
    let expected = if auto_commit {
        sluice_log::group::GroupState::Empty
    } else {
        sluice_log::group::GroupState::Stable
    };
    assert_eq!(d.state, expected);
}

#[test]
fn a_second_member_splits_partitions_by_range_and_all_records_are_read_once() {
    // Member ids sort in join order: the first member gets the first range.
    split_between_two(Assignor::Range, &[0, 1], &[2, 3], false);
}

#[test]
fn a_second_member_splits_partitions_round_robin_and_all_records_are_read_once() {
    split_between_two(Assignor::RoundRobin, &[0, 2], &[1, 3], false);
}

#[test]
fn auto_commit_on_revocation_hands_partitions_over_without_rereading() {
    split_between_two(Assignor::Range, &[0, 1], &[2, 3], true);
}

#[test]
fn a_closing_member_frees_its_partitions_for_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 4, &[]).unwrap();
    let mut c1 = log.consumer(config("g"));
    let mut c2 = log.consumer(config("g"));
    c1.subscribe(&["t"]).unwrap();
    c2.subscribe(&["t"]).unwrap();
    poll_until(&mut [&mut c1, &mut c2], |a| a.iter().all(|s| s.len() == 2));
    // c2 read and committed its share before closing.
    produce(&log, "t", 4, 5);
    let mut got2 = poll_until(&mut [&mut c2], |_| true);
    while got2.len() < 10 {
        got2.extend(c2.poll(Duration::from_millis(50)).unwrap());
    }
    c2.commit().unwrap();
    let owned2 = c2.assignment().clone();
    c2.close().unwrap();
    assert_eq!(
        log.describe_group("g")
            .unwrap()
            .description
            .unwrap()
            .members
            .len(),
        1
    );
    let mut got1 = poll_until(&mut [&mut c1], |a| a[0].len() == 4);
    while got1.len() < 10 {
        got1.extend(c1.poll(Duration::from_millis(50)).unwrap());
    }
    let extra = c1.poll(Duration::from_millis(20)).unwrap();
    assert!(
        extra.is_empty(),
        "c1 re-read c2's committed records: {extra:?}"
    );
    assert!(got1.iter().all(|r| !owned2.contains(&tp("t", r.partition))));
}

#[test]
fn a_member_that_stops_polling_expires_and_the_other_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            housekeeping_interval: Duration::from_millis(20),
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.create_topic("t", 2, &[]).unwrap();
    let mut c1 = log.consumer(config("g"));
    let mut c2 = log.consumer(ConsumerConfig {
        session_timeout: Duration::from_millis(300),
        ..config("g")
    });
    c1.subscribe(&["t"]).unwrap();
    c2.subscribe(&["t"]).unwrap();
    poll_until(&mut [&mut c1, &mut c2], |a| a.iter().all(|s| s.len() == 1));
    let start = Instant::now();
    // Only c1 polls now.
    poll_until(&mut [&mut c1], |a| a[0].len() == 2);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "taken over after only {waited:?}"
    );
    let d = log.describe_group("g").unwrap().description.unwrap();
    assert_eq!(d.members.len(), 1);
    // c2 still believes it owns a partition until it polls: then it rejoins as a new member
    // and gets a share again without ever overlapping c1.
    poll_until(&mut [&mut c2, &mut c1], |a| a.iter().all(|s| s.len() == 1));
    assert_eq!(
        log.describe_group("g")
            .unwrap()
            .description
            .unwrap()
            .members
            .len(),
        2
    );
}

#[test]
fn pause_and_resume_stop_and_restart_a_partition_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    let mut c = log.consumer(config("g"));
    c.subscribe(&["t"]).unwrap();
    poll_until(&mut [&mut c], |a| a[0].len() == 2);
    let epoch = log.describe_group("g").unwrap().description.unwrap().epoch;
    c.pause(&[tp("t", 0)]);
    assert_eq!(*c.paused(), tps("t", &[0]));
    produce(&log, "t", 2, 4);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(c.poll(Duration::from_millis(20)).unwrap());
    }
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|r| r.partition == 1));
    assert_eq!(*c.assignment(), tps("t", &[0, 1]));
    c.resume(&[tp("t", 0)]);
    assert!(c.paused().is_empty());
    let mut got = Vec::new();
    while got.len() < 4 {
        let more = c.poll(Duration::from_millis(50)).unwrap();
        assert!(!more.is_empty());
        got.extend(more);
    }
    assert_eq!(
        got.iter().map(value).collect::<Vec<_>>(),
        ["p0-0", "p0-1", "p0-2", "p0-3"]
    );
    let d = log.describe_group("g").unwrap().description.unwrap();
    assert_eq!(d.epoch, epoch, "pause/resume must not rebalance");
}

#[test]
fn two_groups_read_the_same_topic_independently() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    produce(&log, "t", 2, 5);
    let mut a = log.consumer(config("ga"));
    let mut b = log.consumer(config("gb"));
    a.subscribe(&["t"]).unwrap();
    b.subscribe(&["t"]).unwrap();
    let mut got_a = Vec::new();
    while got_a.len() < 10 {
        got_a.extend(a.poll(Duration::from_millis(50)).unwrap());
    }
    a.commit().unwrap();
    // Group b is unaffected by what a consumed and committed.
    let mut got_b = Vec::new();
    while got_b.len() < 10 {
        got_b.extend(b.poll(Duration::from_millis(50)).unwrap());
    }
    assert_eq!(*a.assignment(), tps("t", &[0, 1]));
    assert_eq!(*b.assignment(), tps("t", &[0, 1]));
    let sorted = |v: &[sluice_log::ConsumerRecord]| {
        let mut s: Vec<String> = v.iter().map(value).collect();
        s.sort();
        s
    };
    assert_eq!(sorted(&got_a), sorted(&got_b));
    assert_eq!(log.committed("ga", &tp("t", 0)), Some(5));
    assert_eq!(log.committed("gb", &tp("t", 0)), None);
}

#[test]
fn auto_offset_reset_earliest_latest_and_none() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    produce(&log, "t", 1, 3);

    let mut earliest = log.consumer(config("e"));
    earliest.subscribe(&["t"]).unwrap();
    let got = earliest.poll(Duration::from_millis(100)).unwrap();
    assert_eq!(
        got.iter().map(value).collect::<Vec<_>>(),
        ["p0-0", "p0-1", "p0-2"]
    );

    let mut latest = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Latest,
        ..config("l")
    });
    latest.subscribe(&["t"]).unwrap();
    assert!(latest.poll(Duration::from_millis(20)).unwrap().is_empty());
    assert_eq!(latest.position(&tp("t", 0)), Some(3));
    log.append_records("t", 0, &[rec("k", "new", 1)]).unwrap();
    let got = latest.poll(Duration::from_millis(100)).unwrap();
    assert_eq!(got.iter().map(value).collect::<Vec<_>>(), ["new"]);

    let none_cfg = ConsumerConfig {
        auto_offset_reset: OffsetReset::None,
        ..config("n")
    };
    let mut none = log.consumer(none_cfg.clone());
    none.subscribe(&["t"]).unwrap();
    match none.poll(Duration::from_millis(20)) {
        Err(LogError::NoOffset {
            group,
            topic,
            partition,
        }) => assert_eq!((group.as_str(), topic.as_str(), partition), ("n", "t", 0)),
        other => panic!("expected NoOffset, got {other:?}"),
    }
    drop(none);
    // With a committed offset, `none` starts there.
    log.commit_offsets("n", None, &[(tp("t", 0), 2)]).unwrap();
    let mut none = log.consumer(none_cfg);
    none.subscribe(&["t"]).unwrap();
    // (A fetch reads one segment at a time: keep polling.)
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = none.poll(Duration::from_millis(50)).unwrap();
        assert!(!more.is_empty());
        got.extend(more);
    }
    assert_eq!(got.iter().map(value).collect::<Vec<_>>(), ["p0-2", "new"]);
}

#[test]
fn committed_offsets_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    produce(&log, "t", 2, 6);
    {
        let mut c = log.consumer(ConsumerConfig {
            max_poll_records: 4,
            ..config("g")
        });
        c.subscribe(&["t"]).unwrap();
        let got = c.poll(Duration::from_millis(100)).unwrap();
        assert_eq!(got.len(), 4);
        c.commit().unwrap();
        c.close().unwrap();
    }
    let before: BTreeMap<u32, Option<i64>> = (0..2)
        .map(|p| (p, log.committed("g", &tp("t", p))))
        .collect();
    assert_eq!(before.values().flatten().sum::<i64>(), 4);
    log.close().unwrap();

    let log = open(dir.path());
    for (p, o) in &before {
        assert_eq!(log.committed("g", &tp("t", *p)), *o);
    }
    let mut c = log.consumer(config("g"));
    c.subscribe(&["t"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        let more = c.poll(Duration::from_millis(50)).unwrap();
        assert!(!more.is_empty());
        got.extend(more);
    }
    assert!(c.poll(Duration::from_millis(20)).unwrap().is_empty());
    assert_eq!(got.len(), 8, "resumed from the committed offsets");
}

#[test]
fn describe_group_reports_lag_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 3, &[]).unwrap();
    assert!(log.describe_group("g").is_none());
    for (p, n) in [(0, 10), (1, 4), (2, 0)] {
        produce_one(&log, p, n);
    }
    log.commit_offsets("g", None, &[(tp("t", 0), 6), (tp("t", 1), 4)])
        .unwrap();
    let info = log.describe_group("g").unwrap();
    assert_eq!(info.state, sluice_log::group::GroupState::Empty);
    let lags: Vec<(u32, Option<i64>, i64, i64)> = info
        .partitions
        .iter()
        .map(|l| (l.tp.partition, l.committed, l.log_end, l.lag))
        .collect();
    // Every partition of the topic is listed, also the one without a commit.
    assert_eq!(
        lags,
        [(0, Some(6), 10, 4), (1, Some(4), 4, 0), (2, None, 0, 0)]
    );

    // A member owning partition 2 without a commit: lag counts the whole partition.
    let mut c = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Latest,
        ..config("g")
    });
    c.subscribe(&["t"]).unwrap();
    produce_one(&log, 2, 3);
    let info = log.describe_group("g").unwrap();
    let p2 = info
        .partitions
        .iter()
        .find(|l| l.tp.partition == 2)
        .unwrap();
    assert_eq!((p2.committed, p2.log_end, p2.lag), (None, 3, 3));
    assert!(info.partitions.iter().all(|l| l.member.is_some()));
    let p0 = info
        .partitions
        .iter()
        .find(|l| l.tp.partition == 0)
        .unwrap();
    assert_eq!(p0.lag, 4);

    // An open transaction: lag is measured to the last stable offset.
    let mut txp = log
        .transactional_producer("tx", ProducerConfig::default())
        .unwrap();
    txp.begin_transaction().unwrap();
    txp.send_to("t", 1, rec("k", "open", 1)).unwrap();
    txp.flush().unwrap();
    let info = log.describe_group("g").unwrap();
    let p1 = info
        .partitions
        .iter()
        .find(|l| l.tp.partition == 1)
        .unwrap();
    assert_eq!((p1.log_end, p1.lag), (4, 0));
    txp.commit_transaction().unwrap();
    let info = log.describe_group("g").unwrap();
    let p1 = info
        .partitions
        .iter()
        .find(|l| l.tp.partition == 1)
        .unwrap();
    // The record and its commit marker.
    assert_eq!((p1.log_end, p1.lag), (6, 2));
}

fn produce_one(log: &Log, partition: u32, n: usize) {
    let recs: Vec<_> = (0..n).map(|i| rec("k", &format!("v{i}"), 1)).collect();
    if !recs.is_empty() {
        log.append_records("t", partition, &recs).unwrap();
    }
}

/// Resets group `g` on topic `t` (executed) as (partition, old, new) per partition.
fn reset(log: &Log, to: ResetTo) -> Vec<(u32, Option<i64>, i64)> {
    log.reset_offsets("g", "t", to, true)
        .unwrap()
        .into_iter()
        .map(|r| (r.partition, r.old, r.new))
        .collect()
}

#[test]
fn reset_offsets_moves_an_empty_group_and_is_refused_while_it_has_members() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    produce(&log, "t", 2, 5);
    log.commit_offsets("g", None, &[(tp("t", 0), 2)]).unwrap();

    let r = reset(&log, ResetTo::Latest);
    assert_eq!(r, [(0, Some(2), 5), (1, None, 5)]);
    let r = reset(&log, ResetTo::Earliest);
    assert_eq!(r, [(0, Some(5), 0), (1, Some(5), 0)]);
    let r = reset(&log, ResetTo::Offset(3));
    assert_eq!(r, [(0, Some(0), 3), (1, Some(0), 3)]);
    // Clamped into [log start, log end].
    let r = reset(&log, ResetTo::Offset(1_000));
    assert_eq!(r, [(0, Some(3), 5), (1, Some(3), 5)]);
    let r = reset(&log, ResetTo::Offset(-7));
    assert_eq!(r, [(0, Some(5), 0), (1, Some(5), 0)]);
    assert_eq!(log.committed("g", &tp("t", 1)), Some(0));
    assert!(matches!(
        log.reset_offsets("g", "nope", ResetTo::Earliest, true),
        Err(LogError::UnknownTopic(_))
    ));

    // A live member: refused, and nothing moves.
    let mut c = log.consumer(config("g"));
    c.subscribe(&["t"]).unwrap();
    let err = log
        .reset_offsets("g", "t", ResetTo::Latest, false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Group(GroupError::GroupNotEmpty { ref group, members: 1 }) if group == "g"
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("member"), "{err}");
    assert_eq!(log.committed("g", &tp("t", 0)), Some(0));
    // Once the member has left, the reset goes through and the next member starts there.
    c.close().unwrap();
    reset(&log, ResetTo::Offset(4));
    let mut c = log.consumer(config("g"));
    c.subscribe(&["t"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = c.poll(Duration::from_millis(50)).unwrap();
        assert!(!more.is_empty());
        got.extend(more);
    }
    let mut vals: Vec<String> = got.iter().map(value).collect();
    vals.sort();
    assert_eq!(vals, ["p0-4", "p1-4"]);
}

#[test]
fn a_dry_run_reset_changes_nothing_and_resets_by_time_and_shift() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 1, &[]).unwrap();
    let recs: Vec<_> = (0..10)
        .map(|i| rec("k", &format!("v{i}"), 1_000 + i * 100))
        .collect();
    log.append_records("t", 0, &recs).unwrap();
    log.commit_offsets("g", None, &[(tp("t", 0), 2)]).unwrap();

    // Kafka's tool plans unless told to execute.
    let plan = log.reset_offsets("g", "t", ResetTo::Latest, false).unwrap();
    assert_eq!((plan[0].old, plan[0].new), (Some(2), 10));
    assert_eq!(log.committed("g", &tp("t", 0)), Some(2));
    // The first record at or after the time; past the last record: the end.
    assert_eq!(reset(&log, ResetTo::Datetime(1_450)), [(0, Some(2), 5)]);
    assert_eq!(reset(&log, ResetTo::Datetime(99_999)), [(0, Some(5), 10)]);
    // Shifted from the committed offset, clamped into the partition.
    assert_eq!(reset(&log, ResetTo::ShiftBy(-3)), [(0, Some(10), 7)]);
    assert_eq!(reset(&log, ResetTo::ShiftBy(-30)), [(0, Some(7), 0)]);
    assert_eq!(reset(&log, ResetTo::ShiftBy(4)), [(0, Some(0), 4)]);
}

#[test]
fn deleting_a_group_removes_its_offsets_for_good_and_is_refused_while_it_has_members() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.create_topic("t", 2, &[]).unwrap();
        produce(&log, "t", 2, 3);
        log.commit_offsets("g", None, &[(tp("t", 0), 2), (tp("t", 1), 1)])
            .unwrap();
        log.commit_offsets("other", None, &[(tp("t", 0), 1)])
            .unwrap();
        let mut c = log.consumer(config("g"));
        c.subscribe(&["t"]).unwrap();
        let err = log.delete_group("g").unwrap_err();
        assert!(
            matches!(err, LogError::Group(GroupError::GroupNotEmpty { .. })),
            "{err:?}"
        );
        c.close().unwrap();
        assert_eq!(log.delete_group("g").unwrap(), 2);
        assert!(log.describe_group("g").is_none());
        log.close().unwrap();
    }
    // The tombstones survive a restart; other groups keep theirs.
    let log = open(dir.path());
    assert!(log.describe_group("g").is_none());
    assert!(!log.list_groups().iter().any(|(g, _, _)| g == "g"));
    assert_eq!(log.committed("other", &tp("t", 0)), Some(1));
}

#[test]
fn lag_counts_records_not_transaction_markers_and_lists_uncommitted_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", 2, &[]).unwrap();
    let mut p = log
        .transactional_producer("lagging", ProducerConfig::default())
        .unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        p.send_to("t", 0, rec("k", &format!("v{i}"), 1)).unwrap();
    }
    p.commit_transaction().unwrap();
    // Offsets 0..3 are records, 3 is the commit marker: a group that read the three
    // records committed offset 3 and has nothing left to read.
    log.commit_offsets("g", None, &[(tp("t", 0), 3)]).unwrap();
    let info = log.describe_group("g").unwrap();
    let lags: Vec<(u32, Option<i64>, i64, i64)> = info
        .partitions
        .iter()
        .map(|p| (p.tp.partition, p.committed, p.log_end, p.lag))
        .collect();
    // Partition 1 has no commit and is listed too.
    assert_eq!(lags, [(0, Some(3), 4, 0), (1, None, 0, 0)]);
    // An aborted transaction's records are not lag either; committed ones are.
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "gone", 1)).unwrap();
    p.flush().unwrap();
    p.abort_transaction().unwrap();
    p.begin_transaction().unwrap();
    p.send_to("t", 0, rec("k", "kept", 1)).unwrap();
    p.commit_transaction().unwrap();
    let info = log.describe_group("g").unwrap();
    assert_eq!((info.partitions[0].log_end, info.partitions[0].lag), (8, 1));
}

/// The library example of README.md, kept compiling and passing.
#[test]
fn readme_library_example() -> Result<(), LogError> {
    use sluice_log::{ConsumerConfig, Log, LogOptions, OffsetReset, ProducerConfig, Record};
    let dir = tempfile::tempdir().unwrap();

    let log = Log::open(dir.path(), LogOptions::default())?;
    log.create_topic("events", 3, &[])?;
    let mut producer = log.producer(ProducerConfig::default())?;
    producer.send(
        "events",
        Record::with_key("user-1", "clicked", 1_700_000_000_000),
    )?;
    producer.flush()?;

    let mut consumer = log.consumer(ConsumerConfig {
        group: Some("analytics".into()),
        auto_offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    });
    consumer.subscribe(&["events"])?;
    let records = consumer.poll(Duration::from_secs(1))?;
    for r in &records {
        println!("{}-{}@{}: {:?}", r.topic, r.partition, r.offset, r.value);
    }
    consumer.commit()?;
    assert_eq!(records.len(), 1);
    Ok(())
}
