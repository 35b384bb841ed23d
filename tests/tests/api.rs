//! The worker's REST API in one session: auth, deploy by PUT, HTTP ingest (idempotency, 401,
//! 404, 413, dead letters), status, metrics, topics, records, groups, SQL, a push query as
//! server-sent events, pause/resume/restart and delete.

use std::io::Read;

use reqwest::blocking::Client;
use serde_json::Value;
use sluice_runtime::api::Limits;

const PIPELINE: &str = r#"
sql = """
CREATE STREAM IF NOT EXISTS orders (id VARCHAR KEY, amount DOUBLE) WITH (topic = 'orders');
CREATE STREAM IF NOT EXISTS big_orders WITH (topic = 'big_orders') AS SELECT id, amount FROM orders WHERE amount >= 100;
"""

[[topics]]
name = "orders"

[[sources]]
name = "in"
topic = "orders"
http = { key-field = "id", token = "ingest-token", max-body-bytes = 1000 }

[[sinks]]
name = "out"
topic = "big_orders"
file = { path = "out" }
"#;

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.body(body.to_string()).send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, Some("s3cret"), "");
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn ingest(&self, body: &str, key: Option<&str>, token: Option<&str>) -> (u16, Value) {
        let mut r = self
            .http
            .post(format!("{}/ingest/orders", self.base))
            .header("content-type", "application/x-ndjson");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        let resp = r.body(body.to_string()).send().unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null),
        )
    }
}

#[test]
fn the_rest_api_deploys_ingests_reports_and_streams() {
    let w = crate::common::Served::start(Limits::default(), true, Some("s3cret"));
    let (log, pipelines) = (w.log.clone(), w.pipelines.clone());
    let api = Api {
        base: w.base.clone(),
        http: Client::new(),
    };

    // Auth: health is open, everything else needs the token.
    assert_eq!(api.call("GET", "/health", None, "").0, 200);
    let (s, v) = api.call("GET", "/pipelines", None, "");
    assert_eq!(s, 401, "{v}");
    assert_eq!(api.call("GET", "/pipelines", Some("wrong"), "").0, 401);
    assert!(
        api.get("/openapi.yaml")
            .as_str()
            .unwrap()
            .contains("/ingest/{topic}")
    );

    // Deploy: a broken file is refused with its line; a good one is written and runs.
    let (s, v) = api.call(
        "PUT",
        "/pipelines/orders",
        Some("s3cret"),
        "[[sources]]\nname = \"in\"\ntopic = \"orders\"\nhttp = { colour = 1 }\n",
    );
    assert_eq!(s, 400);
    assert!(
        v["message"].as_str().unwrap().contains("orders.toml:4"),
        "{v}"
    );
    assert!(!pipelines.join("orders.toml").exists());
    let (s, v) = api.call("PUT", "/pipelines/orders", Some("s3cret"), PIPELINE);
    assert_eq!(s, 200, "{v}");
    assert!(pipelines.join("orders.toml").exists());
    assert_eq!(v["pipeline"]["tasks"].as_array().unwrap().len(), 2);

    // Ingest: the source's token, idempotency, dead letters, limits.
    let body = "{\"id\": \"a\", \"amount\": 150}\n{\"id\": \"b\", \"amount\": 5}\nnot json\n{\"id\": \"c\", \"amount\": 300}\n";
    assert_eq!(api.ingest(body, Some("req-1"), None).0, 401);
    let (s, v) = api.ingest(body, Some("req-1"), Some("ingest-token"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["rejected"].as_u64(),
            v["duplicate"].as_bool()
        ),
        (Some(3), Some(1), Some(false))
    );
    // The records are committed when the answer comes, each value as the client wrote it
    // (fields in their order, not re-serialized).
    let committed = crate::common::read_committed(&log, "orders");
    assert_eq!(committed.len(), 3);
    let values: Vec<&[u8]> = committed
        .iter()
        .map(|r| r.value.as_deref().unwrap_or_default())
        .collect();
    assert!(
        values.contains(&&b"{\"id\": \"a\", \"amount\": 150}"[..]),
        "{values:?}"
    );
    let (s, v) = api.ingest(body, Some("req-1"), Some("s3cret"));
    assert_eq!(
        (s, v["duplicate"].as_bool()),
        (200, Some(true)),
        "a retry writes nothing"
    );
    assert_eq!(
        api.ingest(&"x".repeat(2000), None, Some("ingest-token")).0,
        413
    );
    let (s, v) = api.call("POST", "/ingest/nowhere", Some("s3cret"), "{}");
    assert_eq!(s, 404, "{v}");
    let dead = crate::common::read_committed(&log, "orders.dlq");
    assert_eq!(dead.len(), 1);

    // The filter query and the sink follow; records and status show it.
    crate::common::wait_for("2 big orders in the sink", || {
        api.get("/pipelines/orders")["tasks"][1]["records_out"].as_u64() == Some(2)
    });
    let records = api.get("/topics/big_orders/records?partition=0&offset=0");
    assert_eq!(records["records"].as_array().unwrap().len(), 2, "{records}");
    let status = api.get("/pipelines/orders");
    assert_eq!(status["state"], "running");
    assert_eq!(status["tasks"][0]["name"], "source in");
    assert_eq!(status["tasks"][0]["dead_letters"], 1);
    let topics = api.get("/topics");
    assert!(topics.to_string().contains("big_orders"), "{topics}");
    assert_eq!(api.get("/topics/orders")["partitions"][0]["partition"], 0);
    // The group is unknown (404) until the sink's first commit, which may come later.
    crate::common::wait_for("the sink's lag to reach 0", || {
        let (s, g) = api.call("GET", "/groups/sluice-sink-orders.out", Some("s3cret"), "");
        assert!(
            s == 200 || s == 404,
            "GET /groups/sluice-sink-orders.out: {s} {g}"
        );
        g["partitions"][0]["lag"].as_i64() == Some(0)
    });
    assert!(
        api.get("/groups")
            .to_string()
            .contains("sluice-sink-orders.out")
    );
    let metrics = api.get("/metrics");
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"sluice_task_records_in_total{pipeline="orders",task="source in"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sluice_task_dead_letters_total{pipeline="orders",task="source in"} 1"#)
    );
    assert!(metrics.contains("sluice_consumer_lag{group=\"sluice-sink-orders.out\""));
    assert!(metrics.contains("sluice_task_commit_duration_seconds_bucket{"));
    assert!(metrics.contains("sluice_task_record_latency_seconds_count{pipeline=\"orders\""));
    assert!(metrics.contains("sluice_build_info{version="));
    assert!(metrics.contains("process_resident_memory_bytes "));
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    check_histograms(metrics);

    // SQL: statements as JSON, a bad one with its error, a push query as events.
    let (s, v) = api.call("POST", "/sql", Some("s3cret"), "SHOW QUERIES;");
    assert_eq!(s, 200, "{v}");
    assert!(
        v.to_string().contains("BIG_ORDERS") || v.to_string().contains("big_orders"),
        "{v}"
    );
    let (s, v) = api.call("POST", "/sql", Some("s3cret"), "SELEC 1;");
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("syntax"), "{v}");
    let mut events = String::new();
    api.http
        .post(format!("{}/query", api.base))
        .bearer_auth("s3cret")
        .body("SELECT id, amount FROM big_orders EMIT CHANGES LIMIT 2;")
        .send()
        .unwrap()
        .read_to_string(&mut events)
        .unwrap();
    assert_eq!(events.matches("event: row").count(), 2, "{events}");
    assert!(
        events.contains("\"AMOUNT\":300") && events.contains("event: end"),
        "{events}"
    );
    // A join through POST /sql: a push query over big orders joined with a table, and a
    // join whose sides' types differ refused with the columns as written.
    let (s, v) = api.call(
        "POST",
        "/sql",
        Some("s3cret"),
        "CREATE TABLE tiers (id VARCHAR PRIMARY KEY, tier VARCHAR) WITH (topic = 'tiers', partitions = 1);
         INSERT INTO tiers (id, tier) VALUES ('c', 'gold'), ('n', NULL);",
    );
    assert_eq!(s, 200, "{v}");
    // A pull query's rows have every column, NULL ones as null.
    let (s, v) = api.call(
        "POST",
        "/sql",
        Some("s3cret"),
        "SELECT * FROM tiers WHERE id = 'n';",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["results"][0]["rows"],
        serde_json::json!([{"ID": "n", "TIER": null}]),
        "{v}"
    );
    let mut events = String::new();
    api.http
        .post(format!("{}/query", api.base))
        .bearer_auth("s3cret")
        .body("SELECT b.id, b.amount, t.tier FROM big_orders b LEFT JOIN tiers t ON b.id = t.id EMIT CHANGES LIMIT 2;")
        .send()
        .unwrap()
        .read_to_string(&mut events)
        .unwrap();
    assert_eq!(events.matches("event: row").count(), 2, "{events}");
    let (s, v) = api.call(
        "POST",
        "/sql",
        Some("s3cret"),
        "SELECT * FROM big_orders b JOIN tiers t ON b.amount = t.id EMIT CHANGES;",
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot join B.AMOUNT (DOUBLE) with T.ID (VARCHAR)"),
        "{v}"
    );

    // Pause stops the tasks (ingest answers 503: retry after the resume); resume and
    // restart bring them back.
    let (s, v) = api.call("POST", "/pipelines/orders/pause", Some("s3cret"), "");
    assert_eq!(
        (s, v["pipeline"]["state"].as_str()),
        (200, Some("paused")),
        "{v}"
    );
    assert_eq!(api.ingest(body, None, Some("ingest-token")).0, 503);
    let (s, v) = api.call("POST", "/pipelines/orders/resume", Some("s3cret"), "");
    assert_eq!(
        (s, v["pipeline"]["state"].as_str()),
        (200, Some("running")),
        "{v}"
    );
    let (s, v) = api.ingest(
        "{\"id\": \"d\", \"amount\": 100}",
        Some("req-1"),
        Some("ingest-token"),
    );
    assert_eq!(
        (s, v["duplicate"].as_bool()),
        (200, Some(true)),
        "keys survive a restart: {v}"
    );
    let (s, v) = api.ingest(
        "{\"id\": \"d\", \"amount\": 100}",
        Some("req-2"),
        Some("ingest-token"),
    );
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(
        api.call("POST", "/pipelines/orders/restart", Some("s3cret"), "")
            .0,
        200
    );
    assert_eq!(
        api.call("POST", "/pipelines/orders/explode", Some("s3cret"), "")
            .0,
        404
    );

    // Delete stops it and removes its file.
    let (s, v) = api.call("DELETE", "/pipelines/orders", Some("s3cret"), "");
    assert_eq!(s, 200, "{v}");
    assert!(!pipelines.join("orders.toml").exists());
    assert_eq!(
        api.call("GET", "/pipelines/orders", Some("s3cret"), "").0,
        404
    );
    assert_eq!(crate::common::read_committed(&log, "orders").len(), 4);

    let mut w = w;
    w.server.take();
    w.deployer.lock().worker.shutdown();
    log.close().unwrap();
}

/// Every histogram's buckets are cumulative (never decreasing) and its `+Inf` bucket equals
/// its `_count`, as OpenMetrics parsers require.
fn check_histograms(metrics: &str) {
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let mut checked = 0;
    for count in metrics.lines().filter(|l| l.contains("_count{")) {
        let (name, labels) = count.split_once("_count{").unwrap();
        let labels = labels.rsplit_once('}').unwrap().0;
        let buckets: Vec<f64> = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(labels))
            .map(value)
            .collect();
        assert!(!buckets.is_empty(), "no buckets for {count}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            Some(value(count)),
            "{name}{{{labels}}}"
        );
        checked += 1;
    }
    assert!(checked > 0, "no histogram in {metrics}");
}
