//! The batch queries against Nexmark's definitions computed directly from the generator's
//! events, and a small run of every comparable query with `--check`.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::arrow::array::RecordBatch;
use nexmark::event::{Auction, Bid, Event, Person};
use sluice_log::{Log, LogOptions};
use sluice_sql::engine::{Engine, EngineConfig};

use super::events::{Kind, generate};
use super::queries::{QUERIES, SOURCES};
use super::*;

const BIDS: usize = 10_000;

/// 2023-01-01T00:00:00Z.
const BASE_TIME: u64 = 1_672_531_200_000;

/// The generator's events up to the `BIDS`th bid, as its structs.
fn nexmark_events() -> (Vec<Person>, Vec<Auction>, Vec<Bid>) {
    let config = nexmark::config::NexmarkConfig {
        base_time: BASE_TIME,
        ..Default::default()
    };
    let (mut persons, mut auctions, mut bids) = (Vec::new(), Vec::new(), Vec::new());
    for e in nexmark::EventGenerator::new(config) {
        match e {
            Event::Person(p) => persons.push(p),
            Event::Auction(a) => auctions.push(a),
            Event::Bid(b) => {
                bids.push(b);
                if bids.len() == BIDS {
                    break;
                }
            }
        }
    }
    (persons, auctions, bids)
}

/// `query`'s batch result as JSON rows (objects of the result's columns).
fn batch_rows(query: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path().join("log"), LogOptions::default()).unwrap();
    let mut engine = Engine::open_with(
        &log,
        EngineConfig {
            state: Some(sluice_state::StateConfig::new(dir.path().join("state"))),
            runner: Default::default(),
            start_queries: false,
        },
    )
    .unwrap();
    for s in SOURCES {
        engine.execute(&s.replace("{p}", "1")).unwrap();
    }
    let events = generate(BIDS, &[Kind::Person, Kind::Auction, Kind::Bid], BASE_TIME).unwrap();
    let q = QUERIES.iter().find(|q| q.name == query).unwrap();
    let result = batch::run(engine.catalog(), &events, q).unwrap();
    let mut rows = Vec::new();
    for b in &result.batches {
        rows.extend(json(b));
    }
    engine.shutdown();
    rows
}

fn json(b: &RecordBatch) -> Vec<serde_json::Value> {
    sluice_sql::format::encode_values(sluice_sql::format::Format::Json, b)
        .unwrap()
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect()
}

fn int(row: &serde_json::Value, column: &str) -> u64 {
    row[column].as_u64().unwrap()
}

fn text(row: &serde_json::Value, column: &str) -> String {
    row[column].as_str().unwrap().to_string()
}

#[test]
fn q3_batch_is_local_item_suggestion_as_of_the_auction() {
    let (persons, auctions, _) = nexmark_events();
    let mut expected = BTreeSet::new();
    for a in &auctions {
        let Some(p) = persons.iter().find(|p| p.id == a.seller) else {
            continue;
        };
        if a.category == 10
            && ["or", "id", "ca"].contains(&p.state.as_str())
            && p.date_time <= a.date_time
        {
            expected.insert((
                p.id as u64,
                p.name.clone(),
                p.city.clone(),
                p.state.clone(),
                a.id as u64,
            ));
        }
    }
    let actual: BTreeSet<_> = batch_rows("q3")
        .iter()
        .map(|r| {
            (
                int(r, "SELLER"),
                text(r, "NAME"),
                text(r, "CITY"),
                text(r, "STATE"),
                int(r, "AUCTION"),
            )
        })
        .collect();
    assert!(
        expected.len() >= 5,
        "too few rows to mean anything: {expected:?}"
    );
    assert_eq!(actual, expected);
}

#[test]
fn q4_batch_is_average_closing_price_per_category() {
    let (_, auctions, bids) = nexmark_events();
    let mut per_category: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for a in &auctions {
        let best = bids
            .iter()
            .filter(|b| b.auction == a.id && (a.date_time..=a.expires).contains(&b.date_time))
            .map(|b| b.price as u64)
            .max();
        if let Some(best) = best {
            per_category
                .entry(a.category as u64)
                .or_default()
                .push(best);
        }
    }
    let expected: BTreeMap<u64, f64> = per_category
        .iter()
        .map(|(c, v)| (*c, v.iter().sum::<u64>() as f64 / v.len() as f64))
        .collect();
    let actual: BTreeMap<u64, f64> = batch_rows("q4")
        .iter()
        .map(|r| (int(r, "CATEGORY"), r["AVG_PRICE"].as_f64().unwrap()))
        .collect();
    assert_eq!(actual.len(), expected.len());
    assert!(expected.len() >= 3, "{expected:?}");
    for (c, avg) in &expected {
        assert!(
            (actual[c] - avg).abs() < 1e-6 * avg.abs(),
            "category {c}: {actual:?} against {expected:?}"
        );
    }
}

#[test]
fn q8_batch_is_new_users_per_tumbling_window() {
    let (persons, auctions, _) = nexmark_events();
    let window = |t: u64| t - t % 10_000;
    let mut expected = BTreeSet::new();
    for p in &persons {
        let n = auctions
            .iter()
            .filter(|a| a.seller == p.id && window(a.date_time) == window(p.date_time))
            .count() as u64;
        if n > 0 {
            expected.insert((p.id as u64, p.name.clone(), window(p.date_time), n));
        }
    }
    let actual: BTreeSet<_> = batch_rows("q8")
        .iter()
        .map(|r| {
            (
                int(r, "ID"),
                text(r, "NAME"),
                int(r, "STARTTIME"),
                int(r, "AUCTIONS"),
            )
        })
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(actual, expected);
}

/// Every query the check can compare, streamed and batched over a few thousand events: the
/// results agree (`--check` fails the run otherwise).
#[test]
fn streaming_results_agree_with_batch() {
    let dir = tempfile::tempdir().unwrap();
    let args = NexmarkArgs {
        events: BIDS as u64,
        query: Some("q0,q1,q2,q3,q4,q8".into()),
        partitions: 1,
        commit_interval_ms: 50,
        cache_max_bytes: sluice_sql::record_cache::DEFAULT_CACHE_MAX_BYTES,
        check: true,
        dir: Some(dir.path().to_path_buf()),
        fsync: Some(FsyncPolicy::Never),
    };
    args.run(LogOptions::default()).unwrap();
}
