//! The object-store sink's tests: the sink contract, rotation, partition-by, formats and
//! recorded schemas, against an in-memory store and a local folder.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;
use sluice_log::ConsumerRecord;

use super::*;
use crate::config::Interval;
use crate::{Durable, Sink};

fn config(extra: Value) -> ObjectStoreSinkConfig {
    let mut v = serde_json::json!({ "url": "memory://" });
    if let (Some(m), Value::Object(extra)) = (v.as_object_mut(), extra) {
        m.extend(extra);
    }
    serde_json::from_value(v).unwrap()
}

fn sink(store: &Arc<InMemory>, config: ObjectStoreSinkConfig) -> ObjectStoreSink {
    let store: Arc<dyn ObjectStore> = store.clone();
    ObjectStoreSink::with_store(config, store, ObjectPath::default()).unwrap()
}

fn rec(offset: i64, timestamp: i64, value: Option<&str>) -> ConsumerRecord {
    ConsumerRecord {
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp,
        key: None,
        value: value.map(|v| Bytes::from(v.to_string())),
        headers: Vec::new(),
    }
}

/// Every object in a store: name and bytes.
fn objects(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
            out.insert(m.location.to_string(), bytes.to_vec());
        }
        out
    })
}

/// An object's records as JSON lines (Parquet rows rendered by arrow-json).
fn rows(name: &str, bytes: &[u8]) -> Vec<String> {
    let text = if name.ends_with(".parquet") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            Bytes::copy_from_slice(bytes),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        for batch in reader {
            w.write_batches(&[&batch.unwrap()]).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    } else {
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    text.lines().map(str::to_string).collect()
}

fn output(store: &dyn ObjectStore) -> Vec<(String, String)> {
    objects(store)
        .into_iter()
        .flat_map(|(name, bytes)| {
            rows(&name, &bytes)
                .into_iter()
                .map(|r| (name.clone(), r))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn names(store: &dyn ObjectStore) -> Vec<String> {
    objects(store).into_keys().collect()
}

#[test]
fn the_object_store_sink_meets_the_sink_contract() {
    for (format, envelope, idle) in [
        ("json", false, "10s"),
        ("json", true, "10s"),
        ("parquet", false, "10s"),
        ("parquet", true, "10s"),
        ("json", false, "0s"),
        ("parquet", false, "0s"),
    ] {
        let stores = [(); 3].map(|()| Arc::new(InMemory::new()));
        let c = config(serde_json::json!({
            "format": format, "envelope": envelope, "flush-records": 3, "flush-idle": idle,
        }));
        crate::conformance::sink_replays_are_idempotent(
            &|i| Box::new(sink(&stores[i], c.clone())),
            &|i| output(stores[i].as_ref()),
        );
    }
}

#[test]
fn the_sink_meets_the_contract_over_a_local_folder() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let c = config(serde_json::json!({
        "url": "file://out/sub", "format": "parquet", "flush-records": 3,
    }));
    crate::conformance::sink_replays_are_idempotent(
        &|i| Box::new(ObjectStoreSink::new(c.clone(), dirs[i].path()).unwrap()),
        &|i| {
            let store = LocalFileSystem::new_with_prefix(dirs[i].path().join("out/sub"));
            output(&store.unwrap())
        },
    );
    let objs = objects(&LocalFileSystem::new_with_prefix(dirs[0].path()).unwrap());
    assert!(
        objs.contains_key("out/sub/t/0/00000000000000000000.parquet"),
        "{:?}",
        objs.keys()
    );
}

#[test]
fn rotates_by_records_bytes_and_record_time() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(&store, config(serde_json::json!({ "flush-records": 2 })));
    let rs: Vec<_> = (0..5).map(|i| rec(i, 0, Some(&format!("{i}")))).collect();
    assert!(s.write(&rs).unwrap().is_empty());
    assert_eq!(
        names(store.as_ref()),
        [
            "t/0/00000000000000000000.jsonl",
            "t/0/00000000000000000002.jsonl"
        ]
    );
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 4)]));

    // Each value is 9 bytes with its newline: the third one reaches 25.
    let store = Arc::new(InMemory::new());
    let mut s = sink(&store, config(serde_json::json!({ "flush-bytes": 25 })));
    let rs: Vec<_> = (0..4).map(|i| rec(i, 0, Some("\"abcdef\""))).collect();
    s.write(&rs).unwrap();
    let objs = objects(store.as_ref());
    assert_eq!(
        objs.keys().collect::<Vec<_>>(),
        ["t/0/00000000000000000000.jsonl"]
    );
    assert_eq!(
        rows("a.jsonl", &objs["t/0/00000000000000000000.jsonl"]).len(),
        3
    );
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 3)]));

    // Record time, not arrival: the record 10 s after the first starts the next object.
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "flush-interval": "10s" })),
    );
    s.write(&[rec(0, 5_000, Some("1")), rec(1, 14_999, Some("2"))])
        .unwrap();
    assert!(names(store.as_ref()).is_empty());
    s.write(&[rec(2, 15_000, Some("3")), rec(3, 16_000, Some("4"))])
        .unwrap();
    let objs = objects(store.as_ref());
    assert_eq!(
        rows("x.jsonl", &objs["t/0/00000000000000000000.jsonl"]),
        ["1", "2"]
    );
    assert_eq!(objs.len(), 1);
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));
}

#[test]
fn partition_by_splits_objects_into_folders_and_rejects_records_without_the_field() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({
            "partition-by": "dt={date}/hour={hour}/zone={field:geo.zone}",
            "flush-records": 4,
            "flush-interval": "1d",
        })),
    );
    // 2023-11-14T22:13:20Z and one hour later.
    let t = 1_700_000_000_000;
    let rejected = s
        .write(&[
            rec(0, t, Some(r#"{"geo": {"zone": "a/b"}, "n": 0}"#)),
            rec(1, t, Some(r#"{"geo": {"zone": 7}, "n": 1}"#)),
            rec(2, t, Some(r#"{"n": 2}"#)),
            rec(3, t, None),
            rec(
                4,
                t + 3_600_000,
                Some(r#"{"geo": {"zone": "a/b"}, "n": 4}"#),
            ),
            rec(5, t, Some("not json")),
            rec(6, t, Some(r#"{"geo": {"zone": 7}, "n": 6}"#)),
        ])
        .unwrap();
    assert_eq!(
        rejected
            .iter()
            .map(|r| (r.origin.as_str(), r.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            ("t/0@2", "partition-by field 'geo.zone' is missing"),
            (
                "t/0@5",
                "the value is not JSON: expected ident at line 1 column 2"
            ),
        ]
    );
    assert_eq!(rejected[1].raw, b"not json");
    // Four records counted (the rejected one too, the tombstone not) across three folders:
    // one rotation, one object per folder, each named by the rotation's first record.
    let objs = objects(store.as_ref());
    assert_eq!(
        objs.keys().collect::<Vec<_>>(),
        [
            "t/0/dt=2023-11-14/hour=22/zone=7/00000000000000000000.jsonl",
            "t/0/dt=2023-11-14/hour=22/zone=a%2Fb/00000000000000000000.jsonl",
            "t/0/dt=2023-11-14/hour=23/zone=a%2Fb/00000000000000000000.jsonl",
        ]
    );
    assert_eq!(
        rows(
            "x.jsonl",
            &objs["t/0/dt=2023-11-14/hour=22/zone=7/00000000000000000000.jsonl"]
        ),
        [r#"{"geo": {"zone": 7}, "n": 1}"#]
    );
    // Records 5 (rejected) and 6 start the next objects: durable up to 5.
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 5)]));
}

#[test]
fn unwritable_records_are_rejected_and_tombstones_skipped() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "flush-records": 2 })),
    );
    let rejected = s
        .write(&[
            rec(10, 0, Some("[1, 2]")),
            rec(11, 0, None),
            rec(12, 0, Some("oops")),
            rec(13, 0, Some("{}")),
        ])
        .unwrap();
    assert_eq!(rejected.len(), 3);
    assert!(rejected[2].reason.contains("no columns"));
    assert_eq!(rejected[0].origin, "t/0@10");
    assert_eq!(
        rejected[0].reason,
        "a Parquet row needs a JSON object value"
    );
    assert!(rejected[1].reason.starts_with("the value is not JSON"));
    // Nothing written. Records 10 and 12 made a buffer of two (rejected records count
    // towards boundaries) that rotated with no object; 13 starts the next buffer, so the
    // offsets stop there: a replay must begin where a buffer begins to draw the same
    // boundaries.
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 13)]));
    assert!(names(store.as_ref()).is_empty());

    // JSON lines take any JSON value; a value spread over lines stays one line.
    let store = Arc::new(InMemory::new());
    let mut s = sink(&store, config(serde_json::json!({ "flush-records": 3 })));
    let rejected = s
        .write(&[
            rec(0, 0, Some("[1,\n 2]")),
            rec(1, 0, Some("{\"a\":\r\n\"x\\ny\"}")),
            rec(2, 0, Some("nope")),
            rec(3, 0, Some("3")),
        ])
        .unwrap();
    assert_eq!(rejected.len(), 1);
    // Three records counted (the rejected one too): the object holds the two written.
    let objs = objects(store.as_ref());
    assert_eq!(
        rows("x.jsonl", &objs["t/0/00000000000000000000.jsonl"]),
        ["[1,  2]", r#"{"a":  "x\ny"}"#]
    );
}

#[test]
fn an_idle_buffer_is_uploaded_at_the_next_flush() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(&store, config(serde_json::json!({ "flush-idle": "300ms" })));
    s.write(&[rec(0, 0, Some("1")), rec(1, 0, Some("2"))])
        .unwrap();
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 0)]));
    assert!(names(store.as_ref()).is_empty());
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));
    assert_eq!(names(store.as_ref()), ["t/0/00000000000000000000.jsonl"]);
    // The next buffer starts at the next record.
    s.write(&[rec(2, 0, Some("3"))]).unwrap();
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 2)]));

    // A replay from before the idle upload (its commit was lost) rebuilds a superset
    // with the same name: every record once.
    let mut again = sink(&store, config(serde_json::json!({ "flush-idle": "0s" })));
    again
        .write(&[
            rec(0, 0, Some("1")),
            rec(1, 0, Some("2")),
            rec(2, 0, Some("3")),
        ])
        .unwrap();
    assert_eq!(again.flush().unwrap(), Durable::from([(0, 3)]));
    assert_eq!(
        output(store.as_ref()),
        [
            (
                "t/0/00000000000000000000.jsonl".to_string(),
                "1".to_string()
            ),
            (
                "t/0/00000000000000000000.jsonl".to_string(),
                "2".to_string()
            ),
            (
                "t/0/00000000000000000000.jsonl".to_string(),
                "3".to_string()
            ),
        ]
    );
}

#[test]
fn records_again_from_an_earlier_offset_rebuild_the_buffer() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(&store, config(serde_json::json!({ "flush-records": 3 })));
    let rs: Vec<_> = (0..8).map(|i| rec(i, 0, Some(&format!("{i}")))).collect();
    s.write(&rs[..5]).unwrap();
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 3)]));
    // The worker rewinds to the committed offset 3 and polls again.
    s.write(&rs[3..]).unwrap();
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 6)]));
    let mut lines: Vec<String> = output(store.as_ref()).into_iter().map(|(_, l)| l).collect();
    lines.sort();
    assert_eq!(lines, ["0", "1", "2", "3", "4", "5"]);
}

#[test]
fn large_objects_go_up_in_parts() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "multipart-threshold": 1024, "flush-records": 3 })),
    );
    let big = format!("\"{}\"", "x".repeat(6 << 20));
    s.write(&[
        rec(0, 0, Some(&big)),
        rec(1, 0, Some("1")),
        rec(2, 0, Some("2")),
    ])
    .unwrap();
    let objs = objects(store.as_ref());
    let object = &objs["t/0/00000000000000000000.jsonl"];
    assert_eq!(object.len(), big.len() + 4 + 1);
    assert_eq!(rows("x.jsonl", object), [big.as_str(), "1", "2"]);
}

#[test]
fn config_is_checked_when_the_sink_is_built() {
    let c: ObjectStoreSinkConfig =
        serde_json::from_value(serde_json::json!({ "url": "s3://b/p" })).unwrap();
    assert_eq!(c.format, ObjectFormat::Json);
    assert_eq!((c.flush_records, c.flush_bytes), (100_000, 64 << 20));
    assert_eq!(c.flush_interval, Interval(Duration::from_secs(300)));
    assert_eq!(c.flush_idle, Interval(Duration::from_secs(10)));
    assert_eq!(c.multipart_threshold, 16 << 20);
    assert_eq!(c.retry_timeout, Interval(Duration::from_secs(180)));
    let unknown = serde_json::from_value::<ObjectStoreSinkConfig>(
        serde_json::json!({ "url": "s3://b", "flush-every": 3 }),
    );
    assert!(unknown.unwrap_err().to_string().contains("flush-every"));

    let dir = tempfile::tempdir().unwrap();
    let err = |extra: Value| {
        ObjectStoreSink::new(config(extra), dir.path())
            .unwrap_err()
            .to_string()
    };
    assert!(err(serde_json::json!({ "url": "ftp://x/y" })).contains("unknown scheme 'ftp'"));
    assert!(err(serde_json::json!({ "url": "bucket/x" })).contains("expected scheme://"));
    assert!(
        err(serde_json::json!({ "url": "s3://b/p", "options": { "colour": "blue" } }))
            .contains("options.colour is not a S3 setting")
    );
    assert!(err(serde_json::json!({ "flush-records": 0 })).contains("flush-records must be"));
    assert!(
        err(serde_json::json!({ "partition-by": "x={week}" }))
            .contains("unknown placeholder {week}")
    );
    assert!(err(serde_json::json!({ "partition-by": "a//b" })).contains("single '/'"));
    assert!(err(serde_json::json!({ "partition-by": "a={field:}" })).contains("{field:NAME}"));
    // Options take '-' or '_'; the region and endpoint reach the builder.
    ObjectStoreSink::new(
        config(serde_json::json!({
            "url": "s3://b/p",
            "options": { "Region": "eu-west-1", "endpoint": "http://127.0.0.1:1", "allow-http": "true" },
        })),
        dir.path(),
    )
    .unwrap();
}

/// The recorded schema of the schema tests: what SQL's `(id BIGINT, seats INT, fare DOUBLE,
/// zone VARCHAR, note VARCHAR)` records.
fn recorded() -> sluice_log::RecordSchema {
    use sluice_log::{FieldSchema, FieldType, RecordSchema};
    RecordSchema::new(vec![
        FieldSchema::new("id", FieldType::Int64),
        FieldSchema::nullable("seats", FieldType::Int32),
        FieldSchema::nullable("fare", FieldType::Float64),
        FieldSchema::nullable("zone", FieldType::String),
        FieldSchema::nullable("note", FieldType::String),
    ])
}

/// An object's Arrow schema as its Parquet file records it.
fn parquet_schema(bytes: &[u8]) -> arrow::datatypes::SchemaRef {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        Bytes::copy_from_slice(bytes),
    )
    .unwrap();
    Arc::clone(builder.schema())
}

#[test]
fn parquet_is_written_with_the_recorded_schema_and_values_that_do_not_fit_are_dead_letters() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "flush-records": 6 })),
    );
    s.open(Some(&recorded())).unwrap();
    // Small ids, whole fares, no `note` anywhere: inference would say Int64, Int64 and no
    // column; the recorded schema says Int64, Int32, Float64 and a `note` column.
    let rejected = s
        .write(&[
            rec(
                0,
                0,
                Some(r#"{"id": 1, "seats": 2, "fare": 3, "zone": "a", "extra": true}"#),
            ),
            rec(1, 0, Some(r#"{"id": "one", "seats": 2, "fare": 3}"#)),
            rec(2, 0, Some(r#"{"id": 2, "fare": 4}"#)),
            rec(3, 0, None),
            rec(4, 0, Some("not json")),
            rec(5, 0, Some(r#"{"seats": 1}"#)),
            rec(6, 0, Some(r#"{"id": 3, "seats": 1, "fare": 5.5}"#)),
        ])
        .unwrap();
    let reasons: Vec<(Option<(u32, i64)>, &str)> =
        rejected.iter().map(|r| (r.at, r.reason.as_str())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, Some((0, 1)));
    assert!(
        reasons[0]
            .1
            .starts_with("the value does not fit the topic's recorded schema")
            && reasons[0].1.contains("field 'id'")
            && reasons[0].1.contains("Int64"),
        "{reasons:?}"
    );
    assert_eq!(rejected[0].raw, br#"{"id": "one", "seats": 2, "fare": 3}"#);
    assert_eq!(rejected[0].origin, "t/0@1");
    assert_eq!(reasons[1].0, Some((0, 4)));
    assert!(reasons[1].1.contains("not a JSON object"), "{reasons:?}");
    assert_eq!(reasons[2].0, Some((0, 5)), "a missing non-nullable field");
    assert!(reasons[2].1.contains("id"), "{reasons:?}");

    let objs = objects(store.as_ref());
    let object = &objs["t/0/00000000000000000000.parquet"];
    let expected = sluice_format::schema::to_arrow(&recorded()).unwrap();
    assert_eq!(parquet_schema(object).as_ref(), &expected);
    assert_eq!(
        rows("x.parquet", object),
        [
            r#"{"id":1,"seats":2,"fare":3.0,"zone":"a"}"#,
            r#"{"id":2,"fare":4.0}"#,
            r#"{"id":3,"seats":1,"fare":5.5}"#,
        ]
    );
    assert_eq!(s.flush().unwrap(), Durable::from([(0, 7)]));

    // The same records in other writes give the same bytes (a replay after a crash).
    let again = Arc::new(InMemory::new());
    let mut s = sink(
        &again,
        config(serde_json::json!({ "format": "parquet", "flush-records": 6 })),
    );
    s.open(Some(&recorded())).unwrap();
    let all = [
        rec(
            0,
            0,
            Some(r#"{"id": 1, "seats": 2, "fare": 3, "zone": "a", "extra": true}"#),
        ),
        rec(1, 0, Some(r#"{"id": "one", "seats": 2, "fare": 3}"#)),
        rec(2, 0, Some(r#"{"id": 2, "fare": 4}"#)),
        rec(3, 0, None),
        rec(4, 0, Some("not json")),
        rec(5, 0, Some(r#"{"seats": 1}"#)),
        rec(6, 0, Some(r#"{"id": 3, "seats": 1, "fare": 5.5}"#)),
    ];
    for r in &all {
        s.write(std::slice::from_ref(r)).unwrap();
    }
    assert_eq!(objects(again.as_ref()), objs);
}

/// SQL records upper-case column names (`ZONE`) for the lower-case fields producers write
/// (`zone`): the sink matches them as SQL does, instead of writing NULLs.
#[test]
fn parquet_columns_match_json_fields_as_sql_does() {
    use sluice_log::{FieldSchema, FieldType, RecordSchema};
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "flush-records": 2 })),
    );
    s.open(Some(&RecordSchema::new(vec![
        FieldSchema::nullable("ZONE", FieldType::String),
        FieldSchema::nullable("TS", FieldType::String),
    ])))
    .unwrap();
    let rejected = s
        .write(&[
            rec(0, 0, Some(r#"{"zone": "airport", "ts": "08:00"}"#)),
            rec(1, 0, Some(r#"{"ZONE": "harbor", "Ts": "08:01"}"#)),
        ])
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    let objs = objects(store.as_ref());
    assert_eq!(
        rows("x.parquet", &objs["t/0/00000000000000000000.parquet"]),
        [
            r#"{"ZONE":"airport","TS":"08:00"}"#,
            r#"{"ZONE":"harbor","TS":"08:01"}"#
        ]
    );
}

#[test]
fn without_a_recorded_schema_parquet_columns_are_inferred() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "flush-records": 1 })),
    );
    s.open(None).unwrap();
    s.write(&[rec(0, 0, Some(r#"{"id": 1, "fare": 3}"#))])
        .unwrap();
    let objs = objects(store.as_ref());
    let schema = parquet_schema(&objs["t/0/00000000000000000000.parquet"]);
    assert_eq!(
        schema.field_with_name("fare").unwrap().data_type(),
        &arrow::datatypes::DataType::Int64,
        "inference reads a whole number as an integer"
    );
}

#[test]
fn the_sink_meets_the_contract_with_a_recorded_schema() {
    for envelope in [false, true] {
        let stores = [(); 3].map(|()| Arc::new(InMemory::new()));
        let c = config(serde_json::json!({
            "format": "parquet", "envelope": envelope, "flush-records": 3,
        }));
        crate::conformance::sink_replays_are_idempotent_with(
            Some(&crate::conformance::sample_schema()),
            &|i| Box::new(sink(&stores[i], c.clone())),
            &|i| output(stores[i].as_ref()),
        );
    }
    // Envelope rows hold the value as a struct of the recorded schema.
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "envelope": true, "flush-records": 3 })),
    );
    s.open(Some(&crate::conformance::sample_schema())).unwrap();
    let rejected = s
        .write(&[
            rec(0, 5, Some(r#"{"v": 1}"#)),
            rec(1, 6, Some("nope")),
            rec(2, 7, None),
        ])
        .unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].raw, b"nope");
    let objs = objects(store.as_ref());
    assert_eq!(
        rows("x.parquet", &objs["t/0/00000000000000000000.parquet"]),
        [
            r#"{"topic":"t","partition":0,"offset":0,"timestamp":5,"value":{"v":1}}"#,
            r#"{"topic":"t","partition":0,"offset":2,"timestamp":7}"#,
        ]
    );
}

/// With `envelope = true` and a recorded schema, the record's value bytes are spliced
/// into the envelope line unparsed (`lines::envelope_raw`). A value that is not one JSON
/// value must be a dead letter; it must never be written, let alone overwrite the envelope's
/// own `offset`/`topic` fields.
#[test]
fn an_envelope_value_cannot_forge_the_envelope_fields() {
    let store = Arc::new(InMemory::new());
    let mut s = sink(
        &store,
        config(serde_json::json!({ "format": "parquet", "envelope": true, "flush-records": 1 })),
    );
    s.open(Some(&crate::conformance::sample_schema())).unwrap();
    // Not JSON on its own: an object followed by more members.
    let forged = r#"{"v": 1},"offset":999,"topic":"forged""#;
    assert!(serde_json::from_str::<Value>(forged).is_err());
    let rejected = s.write(&[rec(0, 5, Some(forged))]).unwrap();
    let written = output(store.as_ref());
    assert_eq!(
        rejected.len(),
        1,
        "a value that is not JSON must be a dead letter; written instead: {written:?}"
    );
    assert!(written.is_empty(), "{written:?}");
}

/// A crash after a rotation uploaded objects but before the sink's offsets
/// committed replays from the committed offset. If the topic's schema was recorded in
/// between (a `CREATE STREAM` on the topic), the replay is opened with it; object
/// boundaries must not depend on that, or the replay's objects overlap the stale objects
/// of the first attempt and records appear twice in the store.
#[test]
fn a_replay_opened_with_a_newly_recorded_schema_does_not_duplicate_records() {
    let store = Arc::new(InMemory::new());
    let c = config(serde_json::json!({ "format": "parquet", "flush-records": 2 }));
    let records = [
        rec(0, 0, Some(r#"{"v": 0}"#)),
        rec(1, 0, Some("not json")),
        rec(2, 0, Some(r#"{"v": 2}"#)),
        rec(3, 0, Some(r#"{"v": 3}"#)),
        rec(4, 0, Some(r#"{"v": 4}"#)),
        rec(5, 0, Some(r#"{"v": 5}"#)),
    ];
    // Attempt 1: no schema recorded yet; it uploads what its rotations cut, then "crashes"
    // before committing any offset.
    let mut first = sink(&store, c.clone());
    first.open(None).unwrap();
    first.write(&records).unwrap();
    drop(first);
    // Attempt 2: the schema is recorded now; the replay starts at the committed offset 0.
    let mut second = sink(&store, c);
    second
        .open(Some(&crate::conformance::sample_schema()))
        .unwrap();
    second.write(&records).unwrap();
    second.flush().unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, row) in output(store.as_ref()) {
        seen.entry(row).or_default().push(name);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, objs)| objs.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "rows in more than one object after the replay: {twice:?}"
    );
}

/// A replay whose new schema rejects every record of an object that an earlier attempt
/// (without the schema) wrote must not leave that object behind: its records are dead letters
/// now, and would otherwise be in the store too.
#[test]
fn a_replay_that_rejects_a_whole_object_replaces_it_with_an_empty_one() {
    let store = Arc::new(InMemory::new());
    let c = config(serde_json::json!({ "format": "parquet", "flush-records": 2 }));
    // `v` is a string here; the schema recorded later says BIGINT.
    let records = [
        rec(0, 0, Some(r#"{"v": "zero"}"#)),
        rec(1, 0, Some(r#"{"v": "one"}"#)),
    ];
    let mut first = sink(&store, c.clone());
    first.open(None).unwrap();
    first.write(&records).unwrap();
    drop(first);
    assert_eq!(
        output(store.as_ref()).len(),
        2,
        "the first attempt wrote both"
    );
    let mut second = sink(&store, c);
    second
        .open(Some(&crate::conformance::sample_schema()))
        .unwrap();
    let rejected = second.write(&records).unwrap();
    assert_eq!(rejected.len(), 2, "both are dead letters now");
    assert!(
        output(store.as_ref()).is_empty(),
        "no row is both in the store and a dead letter"
    );
    assert_eq!(names(store.as_ref()).len(), 1, "the object is there, empty");
}
