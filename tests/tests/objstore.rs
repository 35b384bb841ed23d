//! The object-store sink against a real S3 server: moto, started by the harness itself on a
//! free loopback port (scripts/setup.sh installs it). JSON and Parquet objects, a multipart
//! upload, a crash and a replay, and an unreachable endpoint.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};
use sluice_connectors::Sink;
use sluice_connectors::objstore::{ObjectStoreSink, ObjectStoreSinkConfig};
use sluice_log::ConsumerRecord;

/// A moto S3 server, killed when dropped.
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub(crate) fn start() -> Moto {
        let venv = crate::common::venv();
        let bin = venv.join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh, which installs the S3 server (moto) these tests start",
            bin.display()
        );
        let port = crate::common::free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut moto = Moto { child, port };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if client.get(moto.endpoint()).send().is_ok() {
                break;
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto_server exited before answering: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes an unsigned request).
    pub(crate) fn bucket(&self, name: &str) {
        let status = reqwest::blocking::Client::new()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .unwrap()
            .status();
        assert!(status.is_success(), "create bucket {name}: {status}");
    }

    /// A sink config for `url` on this server, with `extra` keys.
    fn config(&self, url: &str, extra: Value) -> ObjectStoreSinkConfig {
        sink_config(url, &self.endpoint(), extra)
    }

    /// Every object under `bucket`: name and bytes.
    pub(crate) fn objects(&self, bucket: &str) -> Vec<(String, Bytes)> {
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap();
        runtime().block_on(async {
            let mut metas: Vec<_> = store.list(None).try_collect().await.unwrap();
            metas.sort_by(|a, b| a.location.cmp(&b.location));
            let mut out = Vec::new();
            for m in metas {
                let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                out.push((m.location.to_string(), bytes));
            }
            out
        })
    }

    /// The ETag of one object.
    fn etag(&self, bucket: &str, name: &str) -> String {
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let path = object_store::path::Path::parse(name).unwrap();
        runtime()
            .block_on(store.head(&path))
            .unwrap()
            .e_tag
            .unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sink_config(url: &str, endpoint: &str, extra: Value) -> ObjectStoreSinkConfig {
    let mut config = json!({
        "url": url,
        "options": {
            "endpoint": endpoint,
            "allow-http": "true",
            "region": "us-east-1",
            "access-key-id": "test",
            "secret-access-key": "test",
            "virtual-hosted-style-request": "false",
        },
    });
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
    serde_json::from_value(config).unwrap()
}

fn sink(config: ObjectStoreSinkConfig) -> ObjectStoreSink {
    ObjectStoreSink::new(config, std::path::Path::new(".")).unwrap()
}

fn rec(offset: i64, timestamp: i64, value: String) -> ConsumerRecord {
    ConsumerRecord {
        topic: "rides".into(),
        partition: 1,
        offset,
        timestamp,
        key: None,
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
    }
}

/// An object's records as JSON lines (Parquet rows rendered by arrow-json).
fn rows(name: &str, bytes: &Bytes) -> Vec<String> {
    let text = if name.ends_with(".parquet") {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
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

fn named_rows(objects: &[(String, Bytes)]) -> Vec<(String, Vec<String>)> {
    objects
        .iter()
        .map(|(name, bytes)| (name.clone(), rows(name, bytes)))
        .collect()
}

#[test]
fn json_and_parquet_objects_land_with_their_names_and_records() {
    let moto = Moto::start();
    moto.bucket("lake");
    let t = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    let records: Vec<ConsumerRecord> = (0..5)
        .map(|i| {
            let zone = if i % 2 == 0 { "north" } else { "south" };
            rec(
                10 + i,
                t + i * 1_000,
                format!(r#"{{"zone":"{zone}","fare":{i}}}"#),
            )
        })
        .collect();

    let mut json_sink = sink(moto.config(
        "s3://lake/json",
        json!({ "partition-by": "dt={date}/zone={field:zone}", "flush-records": 4 }),
    ));
    assert!(json_sink.write(&records).unwrap().is_empty());
    // Four records rotated into one object per zone, each named by the rotation's first
    // offset; the fifth waits for more.
    let mut durable = json_sink.flush().unwrap();
    assert_eq!(durable.pop_first(), Some((1, 14)));
    assert_eq!(
        named_rows(&moto.objects("lake")),
        [
            (
                "json/rides/1/dt=2023-11-14/zone=north/00000000000000000010.jsonl".to_string(),
                vec![
                    r#"{"zone":"north","fare":0}"#.to_string(),
                    r#"{"zone":"north","fare":2}"#.to_string()
                ]
            ),
            (
                "json/rides/1/dt=2023-11-14/zone=south/00000000000000000010.jsonl".to_string(),
                vec![
                    r#"{"zone":"south","fare":1}"#.to_string(),
                    r#"{"zone":"south","fare":3}"#.to_string()
                ]
            ),
        ]
    );

    let mut parquet_sink = sink(moto.config(
        "s3://lake/parquet/",
        json!({ "format": "parquet", "flush-records": 3, "flush-idle": "0s" }),
    ));
    assert!(parquet_sink.write(&records).unwrap().is_empty());
    // flush-idle 0s: the flush uploads the rest too. Columns come in name order.
    assert_eq!(parquet_sink.flush().unwrap().pop_first(), Some((1, 15)));
    let parquet: Vec<_> = moto
        .objects("lake")
        .into_iter()
        .filter(|(n, _)| n.starts_with("parquet/"))
        .collect();
    assert_eq!(
        named_rows(&parquet),
        [
            (
                "parquet/rides/1/00000000000000000010.parquet".to_string(),
                vec![
                    r#"{"fare":0,"zone":"north"}"#.to_string(),
                    r#"{"fare":1,"zone":"south"}"#.to_string(),
                    r#"{"fare":2,"zone":"north"}"#.to_string()
                ]
            ),
            (
                "parquet/rides/1/00000000000000000013.parquet".to_string(),
                vec![
                    r#"{"fare":3,"zone":"south"}"#.to_string(),
                    r#"{"fare":4,"zone":"north"}"#.to_string()
                ]
            ),
        ]
    );
    assert_eq!(&parquet[0].1[..4], b"PAR1");
}

#[test]
fn a_large_object_is_uploaded_in_parts() {
    let moto = Moto::start();
    moto.bucket("big");
    let mut s = sink(moto.config(
        "s3://big",
        json!({ "multipart-threshold": 5 << 20, "flush-idle": "0s" }),
    ));
    // 12 records of 1 MiB each (a distinct filler per record), about 12 MiB of JSON lines.
    let records: Vec<ConsumerRecord> = (0..12)
        .map(|i| {
            let filler = char::from(b'a' + i as u8).to_string().repeat(1 << 20);
            rec(i, 0, format!(r#"{{"i":{i},"s":"{filler}"}}"#))
        })
        .collect();
    let expected: Vec<u8> = records
        .iter()
        .flat_map(|r| {
            let mut line = r.value.as_ref().unwrap().to_vec();
            line.push(b'\n');
            line
        })
        .collect();
    s.write(&records).unwrap();
    assert_eq!(s.flush().unwrap().pop_first(), Some((1, 12)));
    let objects = moto.objects("big");
    assert_eq!(objects.len(), 1);
    let (name, bytes) = &objects[0];
    assert_eq!(name, "rides/1/00000000000000000000.jsonl");
    assert_eq!(bytes.len(), expected.len());
    assert!(bytes[..] == expected[..], "the object's bytes differ");
    // S3 names a multipart object's ETag by its part count: 5 + 5 + 2 MiB.
    let etag = moto.etag("big", name);
    assert!(etag.trim_matches('"').ends_with("-3"), "ETag {etag}");
}

#[test]
fn a_crash_and_a_replay_leave_every_record_once() {
    let moto = Moto::start();
    moto.bucket("replay");
    let config = moto.config(
        "s3://replay/out",
        json!({ "format": "parquet", "flush-records": 7, "partition-by": "k={field:k}" }),
    );
    // Offsets with gaps (transaction markers), two folders.
    let records: Vec<ConsumerRecord> = (0..50)
        .map(|i| {
            rec(
                i + i / 4,
                i * 1_000,
                format!(r#"{{"n":{i},"k":{}}}"#, i % 2),
            )
        })
        .collect();
    let from = |offset: i64| -> Vec<ConsumerRecord> {
        records
            .iter()
            .filter(|r| r.offset >= offset)
            .cloned()
            .collect()
    };

    let mut s = sink(config.clone());
    s.write(&records[..20]).unwrap();
    let committed = s.flush().unwrap()[&1];
    assert!(committed > 0 && committed < records[20].offset);
    s.write(&records[20..]).unwrap();
    drop(s); // A crash: no flush, nothing committed after `committed`.

    // The worker restarts from the committed offset; it crashes again half way.
    let mut s = sink(config.clone());
    s.write(&from(committed)[..15]).unwrap();
    drop(s);

    let mut s = sink(config.with_idle_zero());
    s.write(&from(committed)).unwrap();
    let end = records.last().unwrap().offset + 1;
    assert_eq!(s.flush().unwrap()[&1], end);

    let mut seen: Vec<i64> = moto
        .objects("replay")
        .iter()
        .flat_map(|(name, bytes)| rows(name, bytes))
        .map(|row| {
            serde_json::from_str::<Value>(&row).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "every record exactly once"
    );
}

trait IdleZero {
    fn with_idle_zero(self) -> Self;
}

impl IdleZero for ObjectStoreSinkConfig {
    fn with_idle_zero(mut self) -> Self {
        self.flush_idle = sluice_connectors::config::Interval(Duration::ZERO);
        self
    }
}

#[test]
fn an_unreachable_endpoint_is_a_retryable_error_naming_the_url() {
    // Nothing listens on this port: every request is refused, and retried until the timeout.
    let endpoint = format!("http://127.0.0.1:{}", crate::common::free_port());
    let mut s = sink(sink_config(
        "s3://nowhere/prefix",
        &endpoint,
        json!({ "retry-timeout": "2s", "flush-records": 1 }),
    ));
    let started = Instant::now();
    let err = s
        .write(&[rec(0, 0, "{}".to_string())])
        .expect_err("an upload to nowhere fails");
    let elapsed = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("s3://nowhere/prefix/rides/1/00000000000000000000.jsonl"),
        "{text}"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "gave up after {elapsed:?}, retry-timeout is 2s"
    );
    // The sink starts over after an error: the same record is written again, not twice.
    assert!(s.flush().unwrap().is_empty());
}

/// A whole pipeline on the worker: a file source, a SQL filter and the object-store sink
/// writing Parquet into moto, partitioned by a field; every passing record lands once.
#[test]
fn a_pipeline_writes_parquet_objects_to_s3() {
    let moto = Moto::start();
    moto.bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let mut lines: String = (0..300)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"zone\": \"z{}\", \"fare\": {}}}\n",
                i % 3,
                i % 50
            )
        })
        .collect();
    // No zone: the query passes it, the sink cannot place it (a dead letter).
    lines.push_str("{\"id\": 1000, \"fare\": 40}\n");
    std::fs::write(dir.path().join("rides.jsonl"), &lines).unwrap();
    let file = dir.path().join("lake.toml");
    std::fs::write(
        &file,
        format!(
            r#"
sql = """
CREATE STREAM IF NOT EXISTS rides (id BIGINT, zone VARCHAR, fare BIGINT) WITH (topic = 'rides');
CREATE STREAM IF NOT EXISTS dear_rides WITH (topic = 'dear_rides') AS SELECT id, zone, fare FROM rides WHERE fare >= 25;
"""

[[topics]]
name = "rides"

[[sources]]
name = "files"
topic = "rides"
file = {{ path = "rides.jsonl", format = "json" }}

[[sinks]]
name = "lake"
topic = "dear_rides"
object-store = {{ url = "s3://lake/rides", format = "parquet", partition-by = "zone={{field:ZONE}}", flush-idle = "0s", options = {{ endpoint = "{}", allow_http = "true", region = "us-east-1", access_key_id = "test", secret_access_key = "test", virtual_hosted_style_request = "false" }} }}
"#,
            moto.endpoint()
        ),
    )
    .unwrap();
    let (log, mut worker) = crate::common::worker_with(dir.path(), &file);
    let start = Instant::now();
    let expected = (0..300).filter(|i| i % 50 >= 25).count();
    let mut got: Vec<String> = Vec::new();
    while got.len() < expected {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {expected} rows after 60 s",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
        got = moto
            .objects("lake")
            .iter()
            .flat_map(|(name, bytes)| {
                assert!(name.starts_with("rides/dear_rides/0/zone=z"), "{name}");
                assert!(name.ends_with(".parquet"), "{name}");
                rows(name, bytes)
            })
            .collect();
    }
    let start = Instant::now();
    let dead = loop {
        let dead = crate::common::read_committed(&log, "lake.dlq");
        if !dead.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dead.len(), 1, "the ride without a zone is a dead letter");
    let why = dead[0]
        .headers
        .iter()
        .find(|h| h.key == "sluice.error")
        .unwrap();
    assert!(
        String::from_utf8_lossy(why.value.as_ref().unwrap()).contains("ZONE"),
        "{why:?}"
    );
    worker.shutdown();
    drop(worker);
    log.close().unwrap();
    assert_eq!(got.len(), expected, "no ride twice");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), expected, "every passing ride once");
}

/// A topic with a recorded schema: the sink writes Parquet with exactly its column types
/// (inference would make the small `BIGINT` ids and the whole `DOUBLE` fares Int64, the
/// `INT` seats Int64, and leave out the never-set `note`), and a record whose field has the
/// wrong type is a dead letter with the reason, its partition and offset.
#[test]
fn a_recorded_schema_is_the_parquet_schema_and_misfits_are_dead_letters() {
    use sluice_log::{FieldSchema, FieldType, RecordSchema};
    let moto = Moto::start();
    moto.bucket("typed");
    let dir = tempfile::tempdir().unwrap();
    let schema = RecordSchema::new(vec![
        FieldSchema::new("id", FieldType::Int64),
        FieldSchema::nullable("seats", FieldType::Int32),
        FieldSchema::nullable("fare", FieldType::Float64),
        FieldSchema::nullable("note", FieldType::String),
    ]);
    {
        let log = sluice_log::Log::open(dir.path().join("data"), Default::default()).unwrap();
        log.schemas()
            .register(&sluice_log::value_subject("rides"), &schema)
            .unwrap();
        log.close().unwrap();
    }
    let mut lines: String = (0..20)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"seats\": {}, \"fare\": {}}}\n",
                i % 4,
                i * 2
            )
        })
        .collect();
    lines.push_str("{\"id\": \"twenty\", \"seats\": 1, \"fare\": 1}\n");
    std::fs::write(dir.path().join("rides.jsonl"), &lines).unwrap();
    let file = dir.path().join("typed.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[topics]]
name = "rides"

[[sources]]
name = "files"
topic = "rides"
file = {{ path = "rides.jsonl", format = "json" }}

[[sinks]]
name = "lake"
topic = "rides"
object-store = {{ url = "s3://typed/t", format = "parquet", flush-idle = "0s", options = {{ endpoint = "{}", allow_http = "true", region = "us-east-1", access_key_id = "test", secret_access_key = "test", virtual_hosted_style_request = "false" }} }}
"#,
            moto.endpoint()
        ),
    )
    .unwrap();
    let (log, mut worker) = crate::common::worker_with(dir.path(), &file);
    let start = Instant::now();
    let (objects, got) = loop {
        let objects = moto.objects("typed");
        let got: Vec<String> = objects
            .iter()
            .flat_map(|(name, bytes)| rows(name, bytes))
            .collect();
        if got.len() >= 20 {
            break (objects, got);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of 20 rows after 60 s",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let start = Instant::now();
    let dead = loop {
        let dead = crate::common::read_committed(&log, "typed.dlq");
        if !dead.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    worker.shutdown();
    drop(worker);
    log.close().unwrap();

    let expected = sluice_format::schema::to_arrow(&schema).unwrap();
    for (name, bytes) in &objects {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .unwrap();
        assert_eq!(reader.schema().as_ref(), &expected, "{name}");
    }
    let mut got = got;
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20, "every fitting ride once");
    assert!(
        got.contains(&r#"{"id":3,"seats":3,"fare":6.0}"#.to_string()),
        "{got:?}"
    );
    assert_eq!(dead.len(), 1, "the ride with a text id is a dead letter");
    let header = |key: &str| {
        dead[0]
            .headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| String::from_utf8_lossy(h.value.as_ref().unwrap()).into_owned())
            .unwrap()
    };
    let why = header("sluice.error");
    assert!(
        why.contains("recorded schema") && why.contains("field 'id'"),
        "{why}"
    );
    let at = header("sluice.source");
    assert!(at.starts_with("rides/0@"), "{at}");
    let value = dead[0].value.as_ref().unwrap();
    assert_eq!(&value[..], br#"{"id": "twenty", "seats": 1, "fare": 1}"#);
}
