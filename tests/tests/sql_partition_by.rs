//! `PARTITION BY` moves records between partitions: over a 4-partition topic, every record a
//! re-keying query writes is in the partition its new key hashes to (murmur2, as the log's
//! producer and Kafka's default partitioner place keyed records), whatever partition its
//! input was in. The case files (`tests/sql-cases/partition-by.cases`) check keys and values
//! on one partition; this checks the placement.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use sluice_log::partitioner::partition_for_key;
use sluice_log::{Log, LogOptions, ProducerConfig, Record};
use sluice_sql::engine::{Engine, EngineConfig};
use sluice_sql::runner::RunnerConfig;

const PARTITIONS: u32 = 4;
const RIDES: usize = 200;
const ZONES: usize = 12;

fn engine(log: &Log) -> Engine {
    Engine::open_with(
        log,
        EngineConfig {
            runner: RunnerConfig {
                commit_interval: Duration::from_millis(20),
                ..RunnerConfig::default()
            },
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

fn json(b: &Option<Bytes>) -> serde_json::Value {
    serde_json::from_slice(b.as_deref().unwrap()).unwrap()
}

#[test]
fn re_keyed_records_land_in_the_partition_of_their_new_key() {
    let dir = tempfile::tempdir().unwrap();
    // Records stamped now: the topics' 7-day retention must not delete them mid-test.
    let base = sluice_log::record::now_ms();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut e = engine(&log);
    e.execute(&format!(
        "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, region VARCHAR, fare INT)
             WITH (topic='rides', partitions={PARTITIONS});
         CREATE STREAM by_zone AS SELECT * FROM rides PARTITION BY zone;
         CREATE STREAM by_region_zone AS SELECT region, zone, id, fare FROM rides
             PARTITION BY region, zone;
         CREATE STREAM unkeyed AS SELECT * FROM rides PARTITION BY NULL;"
    ))
    .unwrap();
    // Ride i (keyed r<i>, so spread over the input partitions by its id) is in zone
    // z<i % ZONES>; every 10th has no zone.
    let zone_of = |i: usize| (!i.is_multiple_of(10)).then(|| format!("z{}", i % ZONES));
    let mut producer = log.producer(ProducerConfig::default()).unwrap();
    for i in 0..RIDES {
        let value = match zone_of(i) {
            Some(z) => format!(r#"{{"zone": "{z}", "region": "eu", "fare": {i}}}"#),
            None => format!(r#"{{"region": "eu", "fare": {i}}}"#),
        };
        producer
            .send(
                "rides",
                Record {
                    key: Some(Bytes::from(format!("r{i}"))),
                    value: Some(Bytes::from(value)),
                    headers: Vec::new(),
                    timestamp: base + i as i64,
                },
            )
            .unwrap();
    }
    producer.flush().unwrap();
    assert!(e.wait_caught_up(Duration::from_secs(30)).unwrap());
    e.shutdown();

    let by_zone = crate::common::read_committed(&log, "BY_ZONE");
    assert_eq!(by_zone.len(), RIDES);
    let mut used = BTreeSet::new();
    let mut moved = 0;
    let mut unkeyed = 0;
    for r in &by_zone {
        let v = json(&r.value);
        let id = v["ID"].as_str().unwrap();
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(v["FARE"], i);
        assert!(
            v.get("ZONE").is_none(),
            "the key column left the value: {v}"
        );
        match zone_of(i) {
            Some(z) => {
                assert_eq!(r.key.as_deref(), Some(z.as_bytes()), "key of {id}");
                assert_eq!(
                    r.partition,
                    partition_for_key(z.as_bytes(), PARTITIONS),
                    "partition of {id} (zone {z})"
                );
                used.insert(r.partition);
                if r.partition != partition_for_key(id.as_bytes(), PARTITIONS) {
                    moved += 1;
                }
            }
            None => {
                assert_eq!(r.key, None, "{id} has no zone, so no key");
                unkeyed += 1;
            }
        }
    }
    assert_eq!(unkeyed, RIDES / 10);
    assert!(used.len() > 1, "zones spread over partitions: {used:?}");
    assert!(moved > 0, "some rides changed partition with their key");
    // The order ksqlDB's documentation promises: two rides of one input partition that land
    // in one output partition keep their order (rides of different input partitions may
    // interleave).
    let mut last: HashMap<(Vec<u8>, u32), i64> = HashMap::new();
    for r in by_zone.iter().filter(|r| r.key.is_some()) {
        let id = json(&r.value)["ID"].as_str().unwrap().to_string();
        let from = partition_for_key(id.as_bytes(), PARTITIONS);
        let k = (r.key.as_deref().unwrap().to_vec(), from);
        if let Some(prev) = last.insert(k, r.timestamp) {
            assert!(
                prev < r.timestamp,
                "{id} came after a later ride of its zone and input partition"
            );
        }
    }

    // A two-column key is a JSON object, partitioned by its bytes.
    let by_region_zone = crate::common::read_committed(&log, "BY_REGION_ZONE");
    assert_eq!(by_region_zone.len(), RIDES);
    for r in &by_region_zone {
        let key = r.key.as_deref().unwrap();
        let k: serde_json::Value = serde_json::from_slice(key).unwrap();
        let i: usize = json(&r.value)["ID"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(k["REGION"], "eu");
        assert_eq!(k["ZONE"].as_str(), zone_of(i).as_deref());
        assert_eq!(r.partition, partition_for_key(key, PARTITIONS));
    }

    // PARTITION BY NULL: every record, none keyed.
    let none = crate::common::read_committed(&log, "UNKEYED");
    assert_eq!(none.len(), RIDES);
    assert!(none.iter().all(|r| r.key.is_none()));
    log.close().unwrap();
}
