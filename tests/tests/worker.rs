//! The worker end to end: a pipeline file with a file source, SQL and a file sink, across a
//! restart; and `sluice pipelines validate`.

use std::io::Write;
use std::path::Path;

use sluice_log::{Log, LogOptions};
use sluice_runtime::worker::Worker;
use sluice_sql::engine::Engine;

// Every table update is written (no record cache), so the sink's lines count them.
const PIPELINE: &str = r#"
cache-max-bytes = 0
sql = """
CREATE STREAM IF NOT EXISTS orders (id VARCHAR KEY, customer VARCHAR, amount DOUBLE)
  WITH (topic = 'orders');
CREATE TABLE IF NOT EXISTS spend WITH (topic = 'spend') AS
  SELECT customer, COUNT(*) AS n, SUM(amount) AS total FROM orders GROUP BY customer;
"""

[[topics]]
name = "orders"
partitions = 2

[[sources]]
name = "order-files"
topic = "orders"
file = { path = "in/*.jsonl", format = "json", key-field = "id" }

[[sinks]]
name = "spend-files"
topic = "spend"
file = { path = "out", format = "envelope", roll-records = 4 }
"#;

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

fn order(i: usize) -> String {
    format!(
        r#"{{"id": "o{i}", "customer": "c{}", "amount": {i}}}"#,
        i % 3
    )
}

/// Latest (n, total) per customer in the sink's files, and how many lines they hold.
fn sink_state(dir: &Path) -> (std::collections::BTreeMap<String, (u64, f64)>, usize) {
    let mut latest = std::collections::BTreeMap::new();
    let mut lines = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (latest, 0);
    };
    // Hidden files are the sink's flush points.
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        for l in std::fs::read_to_string(&f).unwrap().lines() {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            rows.push((
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
                v,
            ));
        }
    }
    rows.sort_by_key(|r| (r.0, r.1));
    for (_, _, v) in rows {
        latest.insert(
            v["key"].as_str().unwrap().to_string(),
            (
                v["value"]["N"].as_u64().unwrap(),
                v["value"]["TOTAL"].as_f64().unwrap(),
            ),
        );
    }
    (latest, lines)
}

fn expected(n: usize) -> std::collections::BTreeMap<String, (u64, f64)> {
    let mut m = std::collections::BTreeMap::new();
    for i in 0..n {
        let e = m.entry(format!("c{}", i % 3)).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += i as f64;
    }
    m
}

fn deploy(log: &Log, file: &Path) -> Worker {
    let mut w = Worker::new(log, Engine::open(log).unwrap());
    w.deploy(&sluice_runtime::pipeline::load(file).unwrap())
        .unwrap();
    w
}

#[test]
fn a_pipeline_moves_files_through_sql_to_files_across_a_restart() {
    across_a_restart(PIPELINE);
}

/// The same at least once, with a short commit interval: sources, the query and the sink
/// take their non-transactional paths; a clean restart repeats nothing either.
#[test]
fn an_at_least_once_pipeline_moves_files_across_a_restart() {
    across_a_restart(&format!(
        "guarantee = \"at-least-once\"\ncommit-interval = \"200ms\"\n{PIPELINE}"
    ));
}

fn across_a_restart(pipeline: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::create_dir(base.join("in")).unwrap();
    let file = base.join("orders.toml");
    std::fs::write(&file, pipeline).unwrap();
    let input = base.join("in/a.jsonl");
    let mut lines: Vec<String> = (0..10).map(order).collect();
    lines.insert(3, "this is not json".into());
    append(&input, &lines);
    let log = Log::open(base.join("data"), LogOptions::default()).unwrap();
    {
        let w = deploy(&log, &file);
        crate::common::wait_for("the first 10 orders in the sink", || {
            sink_state(&base.join("out")).0 == expected(10)
        });
        let dead = crate::common::read_committed(&log, "orders.dlq");
        assert_eq!(dead.len(), 1);
        let reason = dead[0]
            .headers
            .iter()
            .find(|h| h.key == "sluice.error")
            .unwrap();
        assert!(String::from_utf8_lossy(reason.value.as_ref().unwrap()).contains("not JSON"));
        let origin = dead[0]
            .headers
            .iter()
            .find(|h| h.key == "sluice.source")
            .unwrap();
        assert!(String::from_utf8_lossy(origin.value.as_ref().unwrap()).ends_with("a.jsonl:4"));
        drop(w);
    }
    // More input while stopped; the restarted worker reads only what is new.
    append(&input, &(10..20).map(order).collect::<Vec<_>>());
    let w = deploy(&log, &file);
    crate::common::wait_for("all 20 orders in the sink", || {
        sink_state(&base.join("out")).0 == expected(20)
    });
    drop(w);
    assert_eq!(
        crate::common::read_committed(&log, "orders").len(),
        20,
        "no order read twice"
    );
    let (_, sink_lines) = sink_state(&base.join("out"));
    assert_eq!(
        sink_lines, 20,
        "one sink line per table update, none repeated"
    );
    log.close().unwrap();
}

/// A pipeline whose `sql` joins: orders (a stream) enriched with customers (a table), each
/// read from its own files, the joined rows read back from their topic.
#[test]
fn a_pipeline_sql_join_enriches_a_stream_with_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::create_dir(base.join("in")).unwrap();
    let file = base.join("join.toml");
    std::fs::write(
        &file,
        r#"
sql = """
CREATE TABLE IF NOT EXISTS customers (id VARCHAR PRIMARY KEY, name VARCHAR)
  WITH (topic = 'customers', partitions = 1);
CREATE STREAM IF NOT EXISTS orders (id VARCHAR KEY, customer VARCHAR, amount DOUBLE)
  WITH (topic = 'orders', partitions = 1);
CREATE STREAM IF NOT EXISTS enriched WITH (topic = 'enriched') AS
  SELECT o.customer, o.id AS order_id, c.name, o.amount
  FROM orders o LEFT JOIN customers c ON o.customer = c.id;
"""

[[sources]]
name = "customer-files"
topic = "customers"
file = { path = "in/customers.jsonl", format = "json", key-field = "id" }
"#,
    )
    .unwrap();
    append(
        &base.join("in/customers.jsonl"),
        &[r#"{"id": "c1", "name": "Ann"}"#.to_string()],
    );
    let log = Log::open(base.join("data"), LogOptions::default()).unwrap();
    let w = deploy(&log, &file);
    crate::common::wait_for("the customer in its topic", || {
        crate::common::read_committed(&log, "customers").len() == 1
    });
    // The orders come after the customer (in time too): each sees the table as it is then.
    let mut p = log.producer(sluice_log::ProducerConfig::default()).unwrap();
    let now = sluice_log::record::now_ms();
    for (i, (id, customer)) in [("o1", "c1"), ("o2", "c9")].iter().enumerate() {
        p.send(
            "orders",
            sluice_log::Record {
                key: Some(bytes::Bytes::from(id.to_string())),
                value: Some(bytes::Bytes::from(format!(
                    r#"{{"customer": "{customer}", "amount": {i}}}"#
                ))),
                headers: Vec::new(),
                timestamp: now + i as i64,
            },
        )
        .unwrap();
    }
    p.flush().unwrap();
    crate::common::wait_for("two joined orders", || {
        crate::common::read_committed(&log, "enriched").len() == 2
    });
    drop(w);
    let got: Vec<(String, serde_json::Value)> = crate::common::read_committed(&log, "enriched")
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned(),
                serde_json::from_slice(r.value.as_deref().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(got[0].0, "c1");
    assert_eq!(got[0].1["ORDER_ID"], "o1");
    assert_eq!(got[0].1["NAME"], "Ann");
    assert_eq!(got[1].0, "c9");
    assert_eq!(got[1].1["ORDER_ID"], "o2");
    assert!(got[1].1["NAME"].is_null());
    log.close().unwrap();
}
