//! The case-study apps of `examples/` end to end, each through a real worker (`sluice run`
//! with the example's own pipeline file) and the real servers it talks to, checked against
//! the exact results the example ships.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::elasticsearch::{EsServer, Kind};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The API address a worker on `work` left in its data directory.
fn api_of(work: &Path, worker: &mut std::process::Child) -> String {
    crate::common::worker_api(work, worker)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Rows of a pull query through `POST /sql`.
fn pull(api: &str, sql: &str) -> Vec<Value> {
    let v: Value = client()
        .post(format!("{api}/sql"))
        .body(sql.to_string())
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
        .unwrap();
    v["results"][0]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{sql}: {v}"))
        .clone()
}

/// A row with every field the expected row names (the API leaves out NULL columns).
fn normalized(row: &Value, like: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in like.as_object().unwrap().keys() {
        out.insert(k.clone(), row.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// The scripted hour of `examples/surge-pricing/` (late pings, a driver going offline, a
/// ping past the grace period) through the example's pipeline: the `surge` table read by
/// pull queries holds exactly the shipped multipliers per zone and window, Elasticsearch
/// has one document per zone and window, and the ping past grace is the one dead letter.
#[test]
fn surge_pricing_gives_the_exact_multipliers_of_the_scripted_hour() {
    let dir = example("surge-pricing");
    let es = EsServer::start(Kind::Osmem);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("pipelines")).unwrap();
    let pipeline = std::fs::read_to_string(dir.join("pipeline.toml"))
        .unwrap()
        .replace("${ES_URL}", &es.url());
    std::fs::write(work.path().join("pipelines/surge.toml"), pipeline).unwrap();
    std::fs::copy(
        dir.join("es-index-template.json"),
        work.path().join("pipelines/es-index-template.json"),
    )
    .unwrap();
    let mut worker = crate::common::spawn_worker(work.path(), 0, None);
    let api = api_of(work.path(), &mut worker);

    for (file, topic) in [
        ("zones.jsonl", "zones"),
        ("rules.jsonl", "surge_rules"),
        ("requests.jsonl", "ride_requests"),
        ("pings.jsonl", "driver_pings"),
    ] {
        let body = std::fs::read(dir.join(file)).unwrap();
        let start = Instant::now();
        loop {
            let resp = client()
                .post(format!("{api}/ingest/{topic}"))
                .header("content-type", "application/x-ndjson")
                .header("idempotency-key", format!("scripted-{file}"))
                .body(body.clone())
                .send()
                .unwrap();
            if resp.status().is_success() {
                break;
            }
            // The pipeline may still be deploying.
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ingest {topic}: {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let expected: BTreeMap<String, Value> =
        std::fs::read_to_string(dir.join("expected-surge.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["ZONE_WINDOW"].as_str().unwrap().to_string(), v)
            })
            .collect();
    assert_eq!(expected.len(), 251);
    let start = Instant::now();
    let got = loop {
        let got: BTreeMap<String, Value> = pull(&api, "SELECT * FROM surge;")
            .into_iter()
            .map(|r| {
                let k = r["ZONE_WINDOW"].as_str().unwrap().to_string();
                let like = expected.get(&k).cloned().unwrap_or_else(|| r.clone());
                (k, normalized(&r, &like))
            })
            .collect();
        if got == expected || start.elapsed() > Duration::from_secs(120) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (k, want) in &expected {
        assert_eq!(got.get(k), Some(want), "surge row {k}");
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "no rows beyond the expected ones"
    );

    // The app's lookup of one zone and window.
    let one = pull(
        &api,
        "SELECT multiplier FROM surge WHERE zone_window = 'stadium|1795422420000';",
    );
    assert_eq!(one, vec![serde_json::json!({"MULTIPLIER": 1.2})]);

    // The dashboard's index: one document per zone and window, the latest values.
    let start = Instant::now();
    loop {
        let docs = es.docs("surge");
        if docs.len() == expected.len()
            && docs.get("downtown|1795422000000").is_some_and(|d| {
                d["MULTIPLIER"] == expected["downtown|1795422000000"]["MULTIPLIER"]
            })
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} documents in surge",
            docs.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The ping that came past the grace period is the one dead letter, with its reason.
    let dlq: Value = client()
        .get(format!(
            "{api}/topics/surge_driver_window.dlq/records?partition=0&offset=0&limit=10"
        ))
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t)))
        .unwrap();
    let records = dlq["records"].as_array().unwrap_or_else(|| panic!("{dlq}"));
    assert_eq!(records.len(), 1, "{dlq}");
    assert!(records[0].to_string().contains("d08"), "{dlq}");

    let _ = worker.kill();
    let _ = worker.wait();
}

/// The pipeline runs the example's SQL file as written: the two must not drift apart.
#[test]
fn surge_pricing_pipeline_holds_the_sql_file() {
    let dir = example("surge-pricing");
    let sql = std::fs::read_to_string(dir.join("surge.sql")).unwrap();
    let pipeline: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("pipeline.toml")).unwrap()).unwrap();
    assert_eq!(pipeline["sql"].as_str().unwrap().trim(), sql.trim());
}

/// Runs an example's script with this build's `sluice` and a scratch folder; its output.
fn run_script(script: &Path, env: &[(&str, &str)]) -> String {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("SLUICE", crate::cli::sluice_bin())
        .env("WORK", work.path())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} failed:\n{text}", script.display());
    text
}

/// The bank scenario of `examples/bank-alerts/` (real PostgreSQL, CDC, osmem-server and a
/// webhook receiver, the worker SIGKILLed twice while transactions stream in): every alert
/// of `expected-alerts.jsonl` once in Elasticsearch and once at the webhook, nothing else.
#[test]
fn bank_alerts_arrive_exactly_once_across_kills() {
    let out = run_script(&example("bank-alerts").join("run-scenario.sh"), &[]);
    assert!(
        out.contains(
            "elasticsearch: 49 documents, expected 49; missing [], unexpected [], different []"
        ),
        "{out}"
    );
    // The webhook may see a request again after a kill (sent, not yet committed) with the
    // same Idempotency-Key, as the example's README says; never one under another key.
    let webhook = out
        .lines()
        .find(|l| l.starts_with("webhook: "))
        .unwrap_or_default();
    assert!(
        webhook.contains("for 49 alerts, expected 49; missing [], unexpected [], different []")
            && webhook.ends_with("under another key: []"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.trim() == "OK"), "{out}");
}

/// `examples/offload/run.sh`: the Parquet objects hold exactly the generated requests per
/// day, hour and zone, and the tiered topic reads from offset 0 out of S3.
#[test]
fn offload_writes_every_request_to_parquet_by_hour_and_tiers_the_pings() {
    let out = run_script(&example("offload").join("run.sh"), &[]);
    // What the generator writes, by the same arguments.
    let printed = std::process::Command::new(crate::cli::sluice_bin())
        .args([
            "gen",
            "rides",
            "--rate",
            "1",
            "--start",
            "2026-11-23T06:00:00Z",
            "--duration",
            "2h",
            "--speed",
            "0",
            "--seed",
            "7",
            "--no-seed-tables",
            "--print",
        ])
        .output()
        .unwrap();
    let mut want: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for line in String::from_utf8(printed.stdout).unwrap().lines() {
        let mut f = line.splitn(3, '\t');
        if f.next() != Some("ride_requests") {
            continue;
        }
        let v: Value = serde_json::from_str(f.nth(1).unwrap()).unwrap();
        let ts = v["ts"].as_str().unwrap();
        *want
            .entry((
                ts[..10].to_string(),
                ts[11..13].to_string(),
                v["zone"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1;
    }
    assert!(want.len() >= 8, "{want:?}");
    let got: BTreeMap<(String, String, String), u64> = out
        .lines()
        .filter(|l| l.starts_with("| 20"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                (f[1].to_string(), f[2].to_string(), f[3].to_string()),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{out}");
    assert!(out.contains("REMOTE-START"), "{out}");
    assert!(
        out.contains("\"driver_id\""),
        "pings read back from offset 0:\n{out}"
    );
}

/// `sluice gen transactions`: customers and transactions in a real PostgreSQL at a rate, and
/// its `--expected` file names exactly the rows above their customer's threshold.
#[test]
fn the_transaction_generator_knows_which_rows_must_alert() {
    let pg = crate::postgres_cdc::Postgres::start("logical");
    let expected = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new(crate::cli::sluice_bin())
        .args([
            "gen",
            "transactions",
            "--url",
            &pg.url("postgres"),
            "--init",
        ])
        .args(["--customers", "20", "--rate", "500", "--count", "300"])
        .args([
            "--large-every",
            "10",
            "--threshold-every",
            "0s",
            "--expected",
        ])
        .arg(expected.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Inserted 300 transactions"), "{stderr}");
    assert_eq!(pg.sql("SELECT count(*) FROM customers"), "20");
    assert_eq!(pg.sql("SELECT count(*) FROM transactions"), "300");
    let over: Vec<String> = pg
        .sql(
            "SELECT t.customer_id || ' ' || t.amount FROM transactions t JOIN customers c \
             ON c.id = t.customer_id WHERE t.amount > c.alert_threshold ORDER BY t.id",
        )
        .lines()
        .map(str::to_string)
        .collect();
    let predicted: Vec<String> = std::fs::read_to_string(expected.path())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!("{} {:.2}", v["customer_id"], v["amount"].as_f64().unwrap())
        })
        .collect();
    assert!(over.len() >= 30, "every 10th row at least: {over:?}");
    assert_eq!(predicted, over);
    // Without --init, an empty database is a clear error.
    let other = crate::postgres_cdc::Postgres::start("logical");
    let out = std::process::Command::new(crate::cli::sluice_bin())
        .args([
            "gen",
            "transactions",
            "--url",
            &other.url("postgres"),
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
