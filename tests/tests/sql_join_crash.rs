//! Persistent joins across crashes: a windowed stream-stream join (INNER and LEFT) and
//! table-table joins (on primary keys, INNER and LEFT, and on a foreign key) lose and repeat
//! nothing when the process is killed with `kill -9` while its input is still being written.
//!
//! The child ([`join_child`], this test binary re-executed) opens the engine, which resumes
//! the queries, and writes the rest of the input itself: input event `i` is a function of
//! `i` alone, so a child resumes each partition (two per topic) after the records already in
//! it. It is killed at
//! random moments, or aborts itself at the fault points of the commit path
//! (`sluice_log::fault`). The parent then checks every output against the join computed
//! here from the inputs: the stream joins' exact multiset of rows; for the table joins, each
//! key's final row and that each key's history is the one some order of its updates gives,
//! each update applied once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use sluice_log::{Isolation, Log, LogOptions, OffsetSpec, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::runner::RunnerConfig;

const CHILD_DIR: &str = "SLUICE_JOIN_CHILD_DIR";
const CHILD_BASE: &str = "SLUICE_JOIN_CHILD_BASE";
/// Join keys of the streams, user keys, organisations.
const STREAM_KEYS: u64 = 30;
const USERS: u64 = 40;
const ORGS: u64 = 5;
/// Event time between consecutive input events.
const STEP_MS: i64 = 10;
/// The stream joins' window (each side) and grace period. The grace period covers how far
/// one topic's records can trail another's when they reach the query: a child writes them
/// in chunks of [`CHUNK`] events and may die in the middle of one.
const WITHIN_MS: i64 = 1000;
const CHUNK: usize = 50;

const QUERIES: &str = "
    CREATE STREAM views (id VARCHAR KEY, k VARCHAR) WITH (topic='views', partitions=2);
    CREATE STREAM clicks (id VARCHAR KEY, k VARCHAR) WITH (topic='clicks', partitions=2);
    CREATE TABLE users (id VARCHAR PRIMARY KEY, ver BIGINT, org VARCHAR) WITH (topic='users', partitions=2);
    CREATE TABLE profiles (id VARCHAR PRIMARY KEY, ver BIGINT) WITH (topic='profiles', partitions=2);
    CREATE TABLE orgs (id VARCHAR PRIMARY KEY, ver BIGINT) WITH (topic='orgs', partitions=2);
    CREATE STREAM vc_inner WITH (topic='vc_inner') AS SELECT v.k, v.id AS vid, c.id AS cid
        FROM views v JOIN clicks c WITHIN 1 SECOND GRACE PERIOD 10 SECONDS ON v.k = c.k;
    CREATE STREAM vc_left WITH (topic='vc_left') AS SELECT v.k, v.id AS vid, c.id AS cid
        FROM views v LEFT JOIN clicks c WITHIN 1 SECOND GRACE PERIOD 10 SECONDS ON v.k = c.k;
    CREATE TABLE up_inner WITH (topic='up_inner') AS SELECT u.id, u.ver AS uver, p.ver AS pver
        FROM users u JOIN profiles p ON u.id = p.id;
    CREATE TABLE up_left WITH (topic='up_left') AS SELECT u.id, u.ver AS uver, p.ver AS pver
        FROM users u LEFT JOIN profiles p ON u.id = p.id;
    CREATE TABLE uo_fk WITH (topic='uo_fk') AS SELECT u.id, u.ver AS uver, o.ver AS ov
        FROM users u LEFT JOIN orgs o ON u.org = o.id;
";

/// Input events before the two that close every window.
fn events() -> u64 {
    crate::common::env_or("SLUICE_JOIN_CRASH_EVENTS", 6000)
}

/// One input record: its topic, key, value (`None`: a tombstone) and time.
#[derive(Debug, Clone)]
struct Event {
    topic: &'static str,
    key: String,
    value: Option<String>,
    ts: i64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: event i's randomness depends on i alone.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Input event `i` of `n`: views and clicks (30 % each) with a join key; user, profile and
/// organisation updates (a sixth of them deletions) whose version is `i`. The last two are
/// a view and a click far later, which close every window. Event time `base + i * 10` ms.
fn event(i: u64, n: u64, base: i64) -> Event {
    let ts = base + i as i64 * STEP_MS;
    if i >= n {
        let (topic, key) = if i == n {
            ("views", "vend")
        } else {
            ("clicks", "cend")
        };
        return Event {
            topic,
            key: key.into(),
            value: Some(r#"{"k": "end"}"#.into()),
            ts: base + n as i64 * STEP_MS + 60_000,
        };
    }
    let r = mix(i);
    let a = (r >> 8) % 1_000_000;
    let deleted = (r >> 40).is_multiple_of(6);
    let (topic, key, value) = match r % 10 {
        0..=2 => (
            "views",
            format!("v{i}"),
            Some(format!(r#"{{"k": "k{}"}}"#, a % STREAM_KEYS)),
        ),
        3..=5 => (
            "clicks",
            format!("c{i}"),
            Some(format!(r#"{{"k": "k{}"}}"#, a % STREAM_KEYS)),
        ),
        6 | 7 => (
            "users",
            format!("u{}", a % USERS),
            (!deleted).then(|| format!(r#"{{"ver": {i}, "org": "o{}"}}"#, (a / USERS) % ORGS)),
        ),
        8 => (
            "profiles",
            format!("u{}", a % USERS),
            (!deleted).then(|| format!(r#"{{"ver": {i}}}"#)),
        ),
        _ => (
            "orgs",
            format!("o{}", a % ORGS),
            (!deleted).then(|| format!(r#"{{"ver": {i}}}"#)),
        ),
    };
    Event {
        topic,
        key,
        value,
        ts,
    }
}

fn all_events(base: i64) -> Vec<Event> {
    let n = events();
    (0..n + 2).map(|i| event(i, n, base)).collect()
}

const TOPICS: [&str; 5] = ["views", "clicks", "users", "profiles", "orgs"];

/// Partitions of each input topic.
const PARTITIONS: u32 = 2;

/// Writes the input events not yet in their topics, in order, in chunks (pausing between
/// them when `paced`, so that a child is killed while it writes). Each partition holds a
/// prefix of its events (a child may die between the partitions of one chunk).
///
/// Only the parent writes the two events that close every window (`closing`), after all
/// the others: a child that died between the partitions of the last chunk would otherwise
/// leave the closing view in the log without the clicks before it, and the next child's
/// queries, started before it writes, would rightly find those clicks a minute late.
fn produce_rest(log: &Log, base: i64, paced: bool, closing: bool) {
    let mut present: HashMap<(&str, u32), i64> = HashMap::new();
    for t in TOPICS {
        for p in 0..PARTITIONS {
            let end = log
                .list_offset(t, p, OffsetSpec::Latest, Isolation::ReadUncommitted)
                .unwrap()
                .unwrap_or(0);
            present.insert((t, p), end);
        }
    }
    let mut p = log.producer(ProducerConfig::default()).unwrap();
    let mut sent = 0;
    let events = all_events(base);
    let upto = events.len() - if closing { 0 } else { 2 };
    for e in events.into_iter().take(upto) {
        let partition = sluice_log::partitioner::partition_for_key(e.key.as_bytes(), PARTITIONS);
        let left = present.get_mut(&(e.topic, partition)).unwrap();
        if *left > 0 {
            *left -= 1;
            continue;
        }
        p.send_to(
            e.topic,
            partition,
            Record {
                key: Some(Bytes::from(e.key)),
                value: e.value.map(Bytes::from),
                headers: Vec::new(),
                timestamp: e.ts,
            },
        )
        .unwrap();
        sent += 1;
        if sent % CHUNK == 0 {
            p.flush().unwrap();
            if paced {
                std::thread::sleep(Duration::from_millis(15));
            }
        }
    }
    p.flush().unwrap();
}

fn engine(log: &Log, commit_ms: u64, start_queries: bool) -> Engine {
    Engine::open_with(
        log,
        EngineConfig {
            runner: RunnerConfig {
                commit_interval: Duration::from_millis(commit_ms),
                max_poll_records: 200,
                // Every update of the table joins: their check follows each key's history.
                cache_max_bytes: 0,
                ..RunnerConfig::default()
            },
            start_queries,
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

/// The child: resumes the queries, writes the rest of the input and runs until killed.
#[test]
fn join_child() {
    let (Ok(dir), Ok(base)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_BASE)) else {
        return;
    };
    let base: i64 = base.parse().unwrap();
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    let e = engine(&log, 15, true);
    produce_rest(&log, base, true, false);
    let caught_up = e.wait_caught_up(Duration::from_secs(120)).unwrap();
    println!("CAUGHT-UP {caught_up}");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn kill_9_while_joins_run_loses_and_repeats_nothing() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Now, not 1970: the output topics' 7-day retention would delete older records.
    let base = sluice_log::record::now_ms() / 1000 * 1000;
    {
        let log = Log::open(dir.path(), LogOptions::default()).unwrap();
        let mut e = engine(&log, 15, false);
        e.execute(QUERIES).unwrap();
        e.shutdown();
        drop(e);
        log.close().unwrap();
    }
    let base_text = base.to_string();
    let env = [
        (CHILD_DIR, dir.path().as_os_str()),
        (CHILD_BASE, std::ffi::OsStr::new(&base_text)),
    ];
    let rounds = crate::common::env_or("SLUICE_CRASH_ROUNDS", 15) as usize;
    // Random kills, and aborts at each fault point of an epoch's commit: before the
    // transaction commits, after it (the stores not yet updated), and between the stores'
    // local commits.
    let faults = [
        None,
        Some("query-before-commit"),
        None,
        Some("query-after-commit"),
        None,
        Some("state-snapshot"),
    ];
    let interrupted = crate::sql_queries::kill_rounds(
        "sql_join_crash::join_child",
        &env,
        rounds,
        11,
        (400, 1200),
        |round| faults[round % faults.len()],
    );
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    produce_rest(&log, base, false, true);
    let e = engine(&log, 20, true);
    assert!(e.wait_caught_up(Duration::from_secs(120)).unwrap());
    drop(e);
    verify(&log, &all_events(base));
    log.close().unwrap();
    eprintln!(
        "join crash test: {rounds} rounds, {interrupted} interrupted, {:?}",
        started.elapsed()
    );
}

/// A record's value as JSON (`None`: a tombstone) and its key as text.
fn read(log: &Log, topic: &str) -> Vec<(String, Option<serde_json::Value>)> {
    crate::common::read_committed(log, topic)
        .into_iter()
        .map(|r| {
            let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
            let value = r
                .value
                .map(|v| serde_json::from_slice::<serde_json::Value>(&v).unwrap());
            (key.trim_matches('"').to_string(), value)
        })
        .collect()
}

fn verify(log: &Log, events: &[Event]) {
    // Every record is within the grace period: a dead letter (a late record) means the
    // input was written out of the order the test promises, or the join misjudged time.
    for topic in ["vc_inner", "vc_left", "up_inner", "up_left", "uo_fk"] {
        let letters = crate::common::read_committed(log, &sluice_sql::runner::dlq_topic(topic));
        assert!(
            letters.is_empty(),
            "{topic}: {} dead letters, the first {:?}",
            letters.len(),
            letters[0]
        );
    }
    verify_stream_joins(log, events);
    verify_table_joins(log, events);
}

fn json_of(e: &Event) -> serde_json::Value {
    serde_json::from_str(e.value.as_deref().unwrap()).unwrap()
}

/// The stream joins: exactly the pairs of a view and a click with the same key at most 1 s
/// apart, and (LEFT) each view without one once, with NULLs.
fn verify_stream_joins(log: &Log, events: &[Event]) {
    let side = |topic: &str| -> Vec<(String, String, i64)> {
        events
            .iter()
            .filter(|e| e.topic == topic)
            .map(|e| {
                (
                    e.key.clone(),
                    json_of(e)["k"].as_str().unwrap().to_string(),
                    e.ts,
                )
            })
            .collect()
    };
    let (views, clicks) = (side("views"), side("clicks"));
    let mut by_key: HashMap<&str, Vec<&(String, String, i64)>> = HashMap::new();
    for c in &clicks {
        by_key.entry(&c.1).or_default().push(c);
    }
    let mut inner = Vec::new();
    let mut left = Vec::new();
    for (vid, k, ts) in &views {
        let matches: Vec<String> = by_key
            .get(k.as_str())
            .into_iter()
            .flatten()
            .filter(|c| (c.2 - ts).abs() <= WITHIN_MS)
            .map(|c| c.0.clone())
            .collect();
        if matches.is_empty() {
            left.push((k.clone(), vid.clone(), None));
        }
        for cid in matches {
            inner.push((k.clone(), vid.clone(), Some(cid)));
        }
    }
    left.extend(inner.iter().cloned());
    for (topic, mut expected) in [("vc_inner", inner), ("vc_left", left)] {
        let mut got: Vec<(String, String, Option<String>)> = read(log, topic)
            .into_iter()
            .map(|(k, v)| {
                let v = v.unwrap();
                (
                    k,
                    v["VID"].as_str().unwrap().to_string(),
                    v["CID"].as_str().map(str::to_string),
                )
            })
            .collect();
        got.sort();
        expected.sort();
        assert!(
            expected.len() > 100,
            "{topic}: only {} rows",
            expected.len()
        );
        if got != expected {
            // The multiset difference, both ways.
            let mut count: BTreeMap<&(String, String, Option<String>), i64> = BTreeMap::new();
            for r in &got {
                *count.entry(r).or_default() += 1;
            }
            for r in &expected {
                *count.entry(r).or_default() -= 1;
            }
            let extra: Vec<_> = count.iter().filter(|c| *c.1 > 0).take(5).collect();
            let missing: Vec<_> = count.iter().filter(|c| *c.1 < 0).take(5).collect();
            panic!(
                "{topic}: {} rows, {} expected; repeated or unexpected (row, times): {extra:?}; \
                 missing: {missing:?}",
                got.len(),
                expected.len()
            );
        }
    }
}

/// A table's updates per key, in order (`None`: deleted), from its events.
fn updates(events: &[Event], topic: &str) -> BTreeMap<String, Vec<Option<serde_json::Value>>> {
    let mut out: BTreeMap<String, Vec<Option<serde_json::Value>>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.topic == topic) {
        out.entry(e.key.clone())
            .or_default()
            .push(e.value.as_ref().map(|_| json_of(e)));
    }
    out
}

/// The joined row (UVER, PVER) of a user and a profile version, if the join has one.
type Row = Option<(i64, Option<i64>)>;

fn joined(inner: bool, user: Option<i64>, profile: Option<i64>) -> Row {
    match (user, profile) {
        (Some(u), Some(p)) => Some((u, Some(p))),
        (Some(u), None) if !inner => Some((u, None)),
        _ => None,
    }
}

/// Whether `history` (the key's output records, in order) is what applying the user updates
/// `users` and the profile updates `profiles` in some interleaving gives, each once: an
/// update that changes a side emits the new joined row, or a tombstone when the key had a
/// row and has none now.
fn explains(inner: bool, users: &[Option<i64>], profiles: &[Option<i64>], history: &[Row]) -> bool {
    // (users applied, profiles applied, outputs matched), searched breadth first.
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(0usize, 0usize, 0usize)];
    let current = |list: &[Option<i64>], n: usize| if n == 0 { None } else { list[n - 1] };
    while let Some((i, j, o)) = todo.pop() {
        if !seen.insert((i, j, o)) {
            continue;
        }
        if i == users.len() && j == profiles.len() && o == history.len() {
            return true;
        }
        let (u, p) = (current(users, i), current(profiles, j));
        let old = joined(inner, u, p);
        let mut step =
            |next: (usize, usize), new_u: Option<i64>, new_p: Option<i64>, changed: bool| {
                let new = joined(inner, new_u, new_p);
                let emit: Option<Row> = if !changed {
                    None
                } else if new.is_some() {
                    Some(new)
                } else if old.is_some() {
                    Some(None)
                } else {
                    None
                };
                match emit {
                    None => todo.push((next.0, next.1, o)),
                    Some(row) if history.get(o) == Some(&row) => todo.push((next.0, next.1, o + 1)),
                    Some(_) => {}
                }
            };
        if i < users.len() {
            let n = users[i];
            step((i + 1, j), n, p, n.is_some() || u.is_some());
        }
        if j < profiles.len() {
            let n = profiles[j];
            step((i, j + 1), u, n, n.is_some() || p.is_some());
        }
    }
    false
}

/// The table joins: each key's final row is the join of the final tables; each key's
/// history on the primary-key joins is explained by its updates ([`explains`]); on the
/// foreign-key join a key's user versions never go back and no update comes out twice.
fn verify_table_joins(log: &Log, events: &[Event]) {
    let users = updates(events, "users");
    let profiles = updates(events, "profiles");
    let orgs = updates(events, "orgs");
    let ver = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v["ver"].as_i64().unwrap());
    let last = |m: &BTreeMap<String, Vec<Option<serde_json::Value>>>, k: &str| {
        m.get(k).and_then(|u| u.last().cloned()).flatten()
    };
    let row_of = |v: &Option<serde_json::Value>, other: &str| -> Row {
        v.as_ref()
            .map(|v| (v["UVER"].as_i64().unwrap(), v[other].as_i64()))
    };
    for (topic, inner) in [("up_inner", true), ("up_left", false)] {
        let mut history: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for (k, v) in read(log, topic) {
            history.entry(k).or_default().push(row_of(&v, "PVER"));
        }
        let mut rows = 0;
        let keys: std::collections::BTreeSet<&String> =
            users.keys().chain(profiles.keys()).collect();
        for k in keys {
            let u: Vec<Option<i64>> = users.get(k).into_iter().flatten().map(ver).collect();
            let p: Vec<Option<i64>> = profiles.get(k).into_iter().flatten().map(ver).collect();
            let h = history.get(k).cloned().unwrap_or_default();
            let expected = joined(inner, ver(&last(&users, k)), ver(&last(&profiles, k)));
            assert_eq!(
                h.last().cloned().flatten(),
                expected,
                "{topic}: key {k}'s final row"
            );
            rows += usize::from(expected.is_some());
            assert!(
                explains(inner, &u, &p, &h),
                "{topic}: key {k}'s history {h:?} is no order of its updates: users {u:?}, profiles {p:?}"
            );
        }
        assert!(rows > 5, "{topic}: only {rows} rows at the end");
        for k in history.keys() {
            assert!(
                users.contains_key(k),
                "{topic}: a row for {k}, never a user"
            );
        }
    }
    // The foreign-key join.
    let mut history: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (k, v) in read(log, "uo_fk") {
        history.entry(k).or_default().push(row_of(&v, "OV"));
    }
    for (k, updates) in &users {
        let h = history.get(k).cloned().unwrap_or_default();
        let expected = last(&users, k).map(|u| {
            let org = u["org"].as_str().unwrap();
            (u["ver"].as_i64().unwrap(), ver(&last(&orgs, org)))
        });
        assert_eq!(
            h.last().cloned().flatten(),
            expected,
            "uo_fk: key {k}'s final row"
        );
        let versions: Vec<i64> = h.iter().flatten().map(|r| r.0).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "uo_fk: key {k}'s user versions go back: {h:?}"
        );
        assert!(
            h.windows(2).all(|w| w[0] != w[1]),
            "uo_fk: key {k}'s history repeats an update: {h:?}"
        );
        let mut user_versions: Vec<i64> = updates.iter().filter_map(ver).collect();
        user_versions.dedup();
        let mut emitted = versions.clone();
        emitted.dedup();
        assert_eq!(
            emitted, user_versions,
            "uo_fk: key {k}: each user version comes out (a left join keeps every user row)"
        );
    }
}
