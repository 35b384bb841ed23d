//! The schema registry through a real log: persistence across reopen, concurrency, topic
//! deletion, damaged records and limits.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sluice_log::schema::{SCHEMAS_TOPIC, key_subject};
use sluice_log::{
    CompatibilityLevel, FieldSchema, FieldType, Log, LogError, LogOptions, Record, RecordSchema,
    value_subject,
};

fn open(dir: &Path) -> Log {
    Log::open(dir, LogOptions::default()).expect("open log")
}

fn fields(names: &[&str]) -> RecordSchema {
    RecordSchema::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == 0 {
                    FieldSchema::new(*n, FieldType::Int64)
                } else {
                    FieldSchema::nullable(*n, FieldType::String)
                }
            })
            .collect(),
    )
}

#[test]
fn versions_ids_and_levels_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = log.schemas();
    assert!(reg.subjects().is_empty());
    let v1 = reg.register("orders-value", &fields(&["id"])).unwrap();
    let v2 = reg
        .register("orders-value", &fields(&["id", "note"]))
        .unwrap();
    let other = reg.register("other-value", &fields(&["id"])).unwrap();
    assert_eq!((v1.version, v2.version, other.version), (1, 2, 1));
    assert_eq!(other.id, v1.id, "the same schema text shares its id");
    assert_ne!(v2.id, v1.id);
    reg.set_compatibility(Some("orders-value"), CompatibilityLevel::Full)
        .unwrap();
    reg.set_compatibility(None, CompatibilityLevel::ForwardTransitive)
        .unwrap();
    log.close().unwrap();
    drop(log);

    let log = open(dir.path());
    let reg = log.schemas();
    assert_eq!(reg.subjects(), ["orders-value", "other-value"]);
    assert_eq!(reg.versions("orders-value"), [1, 2]);
    assert_eq!(reg.latest("orders-value").unwrap(), v2);
    assert_eq!(reg.version("orders-value", 1).unwrap(), v1);
    assert_eq!(reg.by_id(v2.id).unwrap(), v2.schema);
    assert_eq!(
        reg.compatibility(Some("orders-value")),
        CompatibilityLevel::Full
    );
    assert_eq!(
        reg.compatibility(Some("other-value")),
        CompatibilityLevel::ForwardTransitive
    );
    assert_eq!(
        reg.compatibility(None),
        CompatibilityLevel::ForwardTransitive
    );
    // Ids keep counting from the stored ones.
    let v3 = reg
        .register("orders-value", &fields(&["id", "note", "extra"]))
        .unwrap();
    assert_eq!(v3.version, 3);
    assert!(v3.id > v2.id);
}

#[test]
fn re_registering_an_equal_schema_returns_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = log.schemas();
    let a = reg.register("t-value", &fields(&["id", "x"])).unwrap();
    let b = reg.register("t-value", &fields(&["id", "x", "y"])).unwrap();
    assert_eq!(reg.register("t-value", &fields(&["id", "x"])).unwrap(), a);
    assert_eq!(
        reg.register("t-value", &fields(&["id", "x", "y"])).unwrap(),
        b
    );
    assert_eq!(reg.versions("t-value"), [1, 2]);
    let end = log
        .list_offset(
            SCHEMAS_TOPIC,
            0,
            sluice_log::OffsetSpec::Latest,
            sluice_log::Isolation::ReadCommitted,
        )
        .unwrap();
    assert_eq!(end, Some(2), "re-registration writes nothing");
}

#[test]
fn an_incompatible_schema_is_a_user_error_naming_subject_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = log.schemas();
    let nested = |price: FieldType| {
        RecordSchema::new(vec![FieldSchema::new(
            "payload",
            FieldType::Struct(vec![FieldSchema::new(
                "items",
                FieldType::array(
                    FieldType::Struct(vec![FieldSchema::new("price", price)]),
                    false,
                ),
            )]),
        )])
    };
    reg.register("pay-value", &nested(FieldType::Float64))
        .unwrap();
    let e = reg
        .register("pay-value", &nested(FieldType::String))
        .unwrap_err();
    assert!(e.is_user_error());
    assert!(matches!(e, LogError::IncompatibleSchema { version: 1, .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("'pay-value'") && msg.contains("payload.items[].price"),
        "{msg}"
    );
    assert!(
        reg.check_compatibility("pay-value", &nested(FieldType::String))
            .is_err()
    );
    reg.check_compatibility("pay-value", &nested(FieldType::Float64))
        .unwrap();
    assert_eq!(reg.versions("pay-value"), [1]);
}

#[test]
fn concurrent_registrations_get_distinct_versions_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = Arc::new(log.schemas());
    reg.set_compatibility(None, CompatibilityLevel::None)
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let schema = fields(&["id", &format!("f_{t}_{i}")]);
                        let a = reg.register("shared-value", &schema).unwrap();
                        let b = reg.register(&format!("own{t}-value"), &schema).unwrap();
                        assert_eq!(a.id, b.id);
                        a
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<_> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_by_key(|r| r.version);
    let versions: Vec<u32> = all.iter().map(|r| r.version).collect();
    assert_eq!(versions, (1..=80).collect::<Vec<_>>());
    let mut ids: Vec<u32> = all.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 80);
    log.close().unwrap();
    drop((log, reg));
    let log = open(dir.path());
    assert_eq!(log.schemas().versions("shared-value").len(), 80);
    assert_eq!(log.schemas().subjects().len(), 9);
}

#[test]
fn delete_topic_deletes_its_subjects_and_a_new_history_starts() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = log.schemas();
    log.create_topic("clicks", 1, &[]).unwrap();
    let old = reg
        .register(&value_subject("clicks"), &fields(&["id", "url"]))
        .unwrap();
    reg.register(&key_subject("clicks"), &fields(&["user"]))
        .unwrap();
    let incompatible = RecordSchema::new(vec![FieldSchema::new("id", FieldType::Boolean)]);
    assert!(
        reg.register(&value_subject("clicks"), &incompatible)
            .is_err()
    );

    log.delete_topic("clicks").unwrap();
    assert!(reg.subjects().is_empty());
    assert!(reg.latest("clicks-value").is_none());
    assert_eq!(reg.by_id(old.id).unwrap(), old.schema, "ids keep resolving");
    assert!(matches!(
        reg.delete_subject("clicks-value"),
        Err(LogError::UnknownSubject(_))
    ));

    log.create_topic("clicks", 1, &[]).unwrap();
    let new = reg
        .register(&value_subject("clicks"), &incompatible)
        .unwrap();
    assert_eq!(
        new.version, 2,
        "version numbers continue after a soft delete"
    );
    assert_eq!(reg.versions("clicks-value"), [2]);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.schemas().versions("clicks-value"), [2]);
    assert!(log.schemas().latest("clicks-key").is_none());
}

#[test]
fn a_malformed_stored_record_is_skipped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let good = log.schemas().register("a-value", &fields(&["id"])).unwrap();
    let rec = |key: &[u8], value: &[u8]| Record {
        key: Some(Bytes::copy_from_slice(key)),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
        timestamp: 0,
    };
    log.append_records(
        SCHEMAS_TOPIC,
        0,
        &[
            rec(b"garbage", b"garbage"),
            rec(
                br#"{"keytype":"SCHEMA","subject":"b-value","version":1,"magic":1}"#,
                br#"{"subject":"b-value","version":1,"id":5,"schema":"{not avro"}"#,
            ),
            rec(
                br#"{"keytype":"SCHEMA","subject":"c-value","version":1,"magic":1}"#,
                br#"{"subject":"c-value","version":1,"id":1,"schema":"{\"type\":\"record\",\"name\":\"X\",\"fields\":[{\"name\":\"z\",\"type\":\"int\"}]}"}"#,
            ),
        ],
    )
    .unwrap();
    log.close().unwrap();
    drop(log);

    let log = open(dir.path());
    let reg = log.schemas();
    assert_eq!(reg.subjects(), ["a-value"]);
    assert_eq!(reg.latest("a-value").unwrap(), good);
    let next = reg.register("d-value", &fields(&["other"])).unwrap();
    assert_eq!(next.id, good.id + 1);
}

#[test]
fn a_two_mib_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let many: Vec<FieldSchema> = (0..60_000)
        .map(|i| FieldSchema::nullable(format!("field_number_{i:08}"), FieldType::String))
        .collect();
    let schema = RecordSchema::new(many);
    let e = log.schemas().register("big-value", &schema).unwrap_err();
    assert!(matches!(e, LogError::InvalidSchema { .. }), "{e}");
    assert!(e.is_user_error());
    assert!(e.to_string().contains("more than the limit"), "{e}");
    assert!(log.schemas().subjects().is_empty());
    assert!(log.topic(SCHEMAS_TOPIC).is_err(), "nothing was written");
}

#[test]
fn field_names_with_separators_and_spaces_survive() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let schema = RecordSchema::new(vec![
        FieldSchema::new("order.id", FieldType::Int64),
        FieldSchema::nullable("a/b c", FieldType::String),
        FieldSchema::new(
            "nested struct",
            FieldType::Struct(vec![FieldSchema::new("x.y", FieldType::Date)]),
        ),
    ]);
    let r = log.schemas().register("odd-value", &schema).unwrap();
    log.close().unwrap();
    drop(log);
    let log = open(dir.path());
    let back = log.schemas().latest("odd-value").unwrap();
    assert_eq!(back, r);
    assert_eq!(back.schema, schema);
    let json = back.schema.to_avro_json().unwrap();
    assert!(
        json.contains(r#""name":"order_id","sluice.name":"order.id""#),
        "{json}"
    );
}

#[test]
fn bad_subjects_and_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let reg = log.schemas();
    for subject in ["", "a\nb"] {
        let e = reg.register(subject, &fields(&["id"])).unwrap_err();
        assert!(matches!(e, LogError::InvalidSchema { .. }), "{e}");
    }
    let e = reg
        .register("x-value", &RecordSchema::default())
        .unwrap_err();
    assert!(e.to_string().contains("at least one field"), "{e}");
}
