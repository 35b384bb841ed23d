//! Defects found by probing the worker as an adversarial user would (issue 10), each
//! reproduced against a real worker and its REST API: sinks of different pipelines sharing
//! internal names, a rejected redeploy taking the running pipeline down, idle connections
//! and push queries starving the API, secrets in errors and status, and a sink erasing its
//! output after the log lost records.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_log::TopicPartition;
use sluice_runtime::api::{ApiState, Limits, serve};
use sluice_runtime::worker::sink_group;

use crate::common::{Served, wait_for};

fn sink_pipeline(name: &str, sink: &str, out: &Path) -> String {
    format!(
        r#"
name = "{name}"
commit-interval = "100ms"

[[topics]]
name = "{name}-in"

[[sources]]
name = "in"
topic = "{name}-in"
http = {{ }}

[[sinks]]
name = "{sink}"
topic = "{name}-in"
file = {{ path = "{out}" }}
"#,
        out = out.display()
    )
}

/// A worker running pipeline `p`: HTTP ingest into `p-in`, a file sink `out` into the
/// returned folder.
fn served_with_pipeline_p() -> (Served, std::path::PathBuf) {
    let w = Served::start(Limits::default(), true, None);
    let out = deploy_p(&w);
    (w, out)
}

/// Deploys pipeline `p` (see [`served_with_pipeline_p`]); returns its output folder.
fn deploy_p(w: &Served) -> std::path::PathBuf {
    let out = w.pipelines.join("out");
    let (s, v) = w.call("PUT", "/pipelines/p", &[], &sink_pipeline("p", "out", &out));
    assert_eq!(s, 200, "{v}");
    out
}

fn lines_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sinks_whose_old_group_names_collided_both_get_everything() {
    let w = Served::start(Limits::default(), true, None);
    let out = w.pipelines.join("out");
    // Pipeline "a-b" sink "c" and pipeline "a" sink "b-c" were both `sluice-sink-a-b-c`.
    for (name, sink) in [("a-b", "c"), ("a", "b-c")] {
        let dir = out.join(name);
        let (s, v) = w.call(
            "PUT",
            &format!("/pipelines/{name}"),
            &[],
            &sink_pipeline(name, sink, &dir),
        );
        assert_eq!(s, 200, "{v}");
    }
    assert_ne!(sink_group("a-b", "c"), sink_group("a", "b-c"));
    for i in 0..30 {
        for name in ["a-b", "a"] {
            let (s, v) = w.call(
                "POST",
                &format!("/ingest/{name}-in"),
                &[],
                &format!("{{\"i\": {i}}}"),
            );
            assert_eq!(s, 200, "{v}");
        }
    }
    wait_for("both sinks to write all 30", || {
        lines_under(&out.join("a-b")) == 30 && lines_under(&out.join("a")) == 30
    });
    let restarts: u64 = w
        .deployer
        .lock()
        .worker
        .pipelines()
        .iter()
        .flat_map(|p| p.tasks.iter())
        .map(|t| t.status.restarts.load(Ordering::Relaxed))
        .sum();
    assert_eq!(restarts, 0, "no task fenced another");
    // Two sinks writing the same topic's files into one folder are refused.
    let clash = sink_pipeline("a-b", "d", &out.join("a-b")).replace(
        "[[sinks]]",
        &format!(
            "[[sinks]]\nname = \"c2\"\ntopic = \"a-b-in\"\nfile = {{ path = \"{}\" }}\n\n[[sinks]]",
            out.join("a-b").display()
        ),
    );
    let (s, v) = w.call("PUT", "/pipelines/a-b", &[], &clash);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("would share"),
        "{v}"
    );
}

#[test]
fn a_rejected_redeploy_leaves_the_running_pipeline_and_no_leftovers() {
    let w = Served::start(Limits::default(), true, None);
    let out = w.pipelines.join("out");
    let good = sink_pipeline("p", "out", &out);
    assert_eq!(w.call("PUT", "/pipelines/p", &[], &good).0, 200);
    let file = std::fs::read_to_string(w.pipelines.join("p.toml")).unwrap();
    let topics_before = w.log.topic_names();
    let user_topics = |names: Vec<String>| {
        names
            .into_iter()
            .filter(|t| t != "__sluice_schemas")
            .collect::<Vec<_>>()
    };
    let bad_connector = good.replace("http = { }", "http = { max-body-bytes = 0 }");
    let bad_sql = format!(
        "sql = \"CREATE STREAM IF NOT EXISTS s (x INT) WITH (topic = 'fresh-topic', partitions = 1); CREATE STREAM ok AS SELECT x FROM s; CREATE STREAM t AS SELECT nope FROM s;\"\n{}",
        good.replace(
            "name = \"p-in\"\n",
            "name = \"p-in\"\n\n[[topics]]\nname = \"also-fresh\"\n"
        )
    );
    for (bad, expect) in [(bad_connector, "max-body-bytes"), (bad_sql, "NOPE")] {
        let (s, v) = w.call("PUT", "/pipelines/p", &[], &bad);
        assert_eq!(s, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains(expect), "{v}");
        // Still running, still ingesting, file unchanged, nothing created.
        let (s, v) = w.call("POST", "/ingest/p-in", &[], "{\"still\": true}");
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            std::fs::read_to_string(w.pipelines.join("p.toml")).unwrap(),
            file
        );
        let (_, list) = w.call("GET", "/pipelines", &[], "");
        assert_eq!(list["pipelines"][0]["state"], "running", "{list}");
        // Its topics are gone (the schema registry's own topic may have appeared: it is the
        // log's, like `__consumer_offsets`), and so are their recorded schemas.
        assert_eq!(
            user_topics(w.log.topic_names()),
            user_topics(topics_before.clone())
        );
        let subjects = w.log.schemas().subjects();
        assert!(
            !subjects
                .iter()
                .any(|s| s == "fresh-topic-value" || s == "ok-value"),
            "{subjects:?}"
        );
        let d = w.deployer.lock();
        let catalog = d.worker.engine().catalog();
        assert_eq!(catalog.sources().count(), 0, "no SQL objects left behind");
        assert_eq!(catalog.queries().count(), 0, "no queries left behind");
    }
    // A new pipeline whose SQL fails leaves neither its file nor its topics.
    let (s, _) = w.call(
        "PUT",
        "/pipelines/q",
        &[],
        "sql = \"CREATE STREAM IF NOT EXISTS s2 (x INT) WITH (topic = 'q-topic', partitions = 1); CREATE STREAM t2 AS SELECT nope FROM s2;\"\n[[topics]]\nname = \"q-declared\"\n",
    );
    assert_eq!(s, 400);
    assert!(!w.pipelines.join("q.toml").exists());
    assert_eq!(user_topics(w.log.topic_names()), user_topics(topics_before));
}

#[test]
fn idle_connections_and_push_queries_cannot_starve_health_and_ingest() {
    let limits = Limits {
        max_connections: 32,
        header_read_timeout: Duration::from_secs(1),
        max_push_queries: 2,
        body_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let w = Served::start(limits, true, None);
    deploy_p(&w);
    // 200 idle connections: never a request from any of them.
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(w.addr()).ok())
        .collect();
    assert!(idle.len() >= 100);
    let started = Instant::now();
    let (s, v) = w.call("GET", "/health", &[], "");
    assert_eq!(s, 200, "{v}");
    let (s, v) = w.call("POST", "/ingest/p-in", &[], "{\"x\": 1}");
    assert_eq!(s, 200, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    // Idle connections are closed after the header timeout.
    let mut one = TcpStream::connect(w.addr()).unwrap();
    one.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    let t = Instant::now();
    let n = one.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(idle);
    // A body that never finishes arriving: 408, for ingest and the rest.
    for path in ["/ingest/p-in", "/sql"] {
        let mut slow = TcpStream::connect(w.addr()).unwrap();
        write!(
            slow,
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{"
        )
        .unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 12];
        slow.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 408", "{path}");
    }
    // Push queries: two stream, the third gets 503 with Retry-After; health stays up.
    assert_eq!(
        w.call(
            "POST",
            "/sql",
            &[],
            "CREATE STREAM IF NOT EXISTS pin (x INT) WITH (topic = 'p-in');"
        )
        .0,
        200
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(w.addr()).unwrap();
        let body = "SELECT * FROM pin EMIT CHANGES;";
        write!(
            c,
            "POST /query HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        streams.push(c);
    }
    let resp = w
        .http
        .post(format!("{}/query", w.base))
        .body("SELECT * FROM pin EMIT CHANGES;")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(w.call("GET", "/health", &[], "").0, 200);
    drop(streams);
}

#[test]
fn ingest_before_the_worker_is_ready_is_503_and_bearer_is_case_insensitive() {
    let mut w = Served::start(Limits::default(), false, None);
    let (s, v) = w.call("POST", "/ingest/anything", &[], "{}");
    assert_eq!(s, 503, "{v}");
    assert!(v["message"].as_str().unwrap().contains("starting"), "{v}");
    w.state.ready.store(true, Ordering::SeqCst);
    assert_eq!(w.call("POST", "/ingest/anything", &[], "{}").0, 404);
    deploy_p(&w);
    let long = "k".repeat(257);
    let (s, v) = w.call("POST", "/ingest/p-in", &[("idempotency-key", &long)], "{}");
    assert_eq!(s, 400, "{v}");
    // A token: `bearer`, `BEARER` and `Bearer` all work.
    w.server.take();
    let state = ApiState {
        token: Some(Arc::from("tok")),
        ..w.state.clone()
    };
    let server = serve("127.0.0.1:0".parse().unwrap(), state, Limits::default()).unwrap();
    w.base = format!("http://{}", server.addr);
    w.server = Some(server);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} tok");
        let (s, v) = w.call("GET", "/pipelines", &[("authorization", &auth)], "");
        assert_eq!(s, 200, "{scheme}: {v}");
    }
    assert_eq!(
        w.call("GET", "/pipelines", &[("authorization", "Basic tok")], "")
            .0,
        401
    );
}

#[test]
fn secrets_never_appear_in_answers_status_or_errors() {
    let w = Served::start(Limits::default(), true, None);
    // Read by `${VAR}` from this test process's environment, which the API's parse sees.
    let (var, secret) = ("PATH", std::env::var("PATH").unwrap());
    assert!(secret.len() >= 4);
    for text in [
        format!("guarantee = \"${{{var}}}\"\n"),
        format!("commit-interval = \"${{{var}}}\"\n"),
        format!(
            "[[sources]]\nname = \"in\"\ntopic = \"t\"\nhttp-poll = {{ url = \"ftp://h/${{{var}}}\" }}\n"
        ),
    ] {
        let (s, v) = w.call("PUT", "/pipelines/leaky", &[], &text);
        assert_eq!(s, 400, "{v}");
        let e = v["message"].as_str().unwrap();
        assert!(!e.contains(&secret), "{e}");
        assert!(e.contains(&format!("${{{var}}}")), "{e}");
    }
    // A broken file in the folder: its error in /pipelines hides the value too.
    std::fs::write(
        w.pipelines.join("broken.toml"),
        format!("commit-interval = \"${{{var}}}\"\n"),
    )
    .unwrap();
    w.deployer.lock().sync().unwrap();
    let (_, list) = w.call("GET", "/pipelines", &[], "");
    let shown = list.to_string();
    assert!(shown.contains("broken.toml"), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
    // A key in an http-poll URL's query is not in status or errors.
    let poll = "[[topics]]\nname = \"polled\"\n\n[[sources]]\nname = \"poll\"\ntopic = \"polled\"\nhttp-poll = { url = \"http://127.0.0.1:9/feed?api_key=abcdef123456\", interval = \"50ms\", timeout = \"1s\" }\n";
    assert_eq!(w.call("PUT", "/pipelines/poller", &[], poll).0, 200);
    wait_for("the poll source to fail", || {
        let (_, v) = w.call("GET", "/pipelines/poller", &[], "");
        !v["tasks"][0]["last_error"].is_null()
    });
    let (_, v) = w.call("GET", "/pipelines/poller", &[], "");
    let e = v["tasks"][0]["last_error"].as_str().unwrap();
    assert!(
        !e.contains("abcdef123456") && e.contains("api_key=redacted"),
        "{e}"
    );
}

#[test]
fn a_sink_stops_rather_than_erase_its_output_when_the_log_lost_records() {
    let (w, out) = served_with_pipeline_p();
    for i in 0..10 {
        assert_eq!(
            w.call("POST", "/ingest/p-in", &[], &format!("{{\"i\": {i}}}"))
                .0,
            200
        );
    }
    wait_for("10 lines out", || lines_under(&out) == 10);
    let group = sink_group("p", "out");
    let tp = TopicPartition {
        topic: "p-in".into(),
        partition: 0,
    };
    wait_for("the sink's commit", || {
        w.log.committed(&group, &tp).is_some()
    });
    assert_eq!(w.call("POST", "/pipelines/p/pause", &[], "").0, 200);
    // As after a lost segment: the group's offset is past the log's end.
    w.log
        .commit_offsets(&group, None, &[(tp.clone(), 1_000)])
        .unwrap();
    let before = lines_under(&out);
    assert_eq!(w.call("POST", "/pipelines/p/resume", &[], "").0, 200);
    wait_for("the sink to refuse", || {
        let (_, v) = w.call("GET", "/pipelines/p", &[], "");
        v["tasks"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("past the log's end"))
    });
    let (_, health) = w.call("GET", "/health", &[], "");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["data_loss"][0]["to"], 1_000, "{health}");
    assert_eq!(lines_under(&out), before, "nothing erased");
    // The finding stands when the log grows past that offset again.
    for i in 0..1_010 {
        w.log
            .append_records(
                "p-in",
                0,
                &[sluice_log::Record::from_value(format!("{{\"j\": {i}}}"), 1)],
            )
            .unwrap();
    }
    assert_eq!(w.call("POST", "/pipelines/p/restart", &[], "").0, 200);
    wait_for("the sink to refuse again", || {
        let (_, v) = w.call("GET", "/pipelines/p", &[], "");
        v["tasks"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("lost records"))
    });
    assert_eq!(lines_under(&out), before, "still nothing erased");
    // Moving the group on deliberately lets it continue.
    assert_eq!(w.call("POST", "/pipelines/p/pause", &[], "").0, 200);
    w.log.commit_offsets(&group, None, &[(tp, 10)]).unwrap();
    assert_eq!(w.call("POST", "/pipelines/p/resume", &[], "").0, 200);
    wait_for("the sink to export the rest", || lines_under(&out) > before);
}

#[test]
fn the_api_token_can_come_from_a_file_instead_of_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("pipelines")).unwrap();
    std::fs::write(d.join("token"), "from-a-file\n").unwrap();
    let mut child = std::process::Command::new(crate::cli::sluice_bin())
        .arg("--data-dir")
        .arg(d.join("data"))
        .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
        .arg(d.join("pipelines"))
        .arg("--token-file")
        .arg(d.join("token"))
        .env_remove("SLUICE_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut base = String::new();
    wait_for("the worker's address", || {
        let text = std::fs::read_to_string(d.join("data/worker.json")).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        base = v["api"].as_str().unwrap_or("").to_string();
        !base.is_empty()
    });
    let http = reqwest::blocking::Client::new();
    let status = |auth: Option<&str>| {
        let mut r = http.get(format!("{base}/pipelines"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().unwrap().status().as_u16()
    };
    let unauthenticated = status(None);
    let with_token = status(Some("bearer from-a-file"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((unauthenticated, with_token), (401, 200));
}

#[test]
fn an_error_retrying_cannot_fix_stops_the_task_with_its_reason() {
    let (w, _) = served_with_pipeline_p();
    // The sink's topic goes away under it: no retry can bring it back.
    w.log.delete_topic("p-in").unwrap();
    wait_for("the sink to fail", || {
        let (_, v) = w.call("GET", "/pipelines/p", &[], "");
        v["tasks"][1]["state"] == "failed"
    });
    let (_, v) = w.call("GET", "/pipelines/p", &[], "");
    assert!(
        v["tasks"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("p-in")),
        "{v}"
    );
    assert_eq!(v["state"], "degraded", "{v}");
    let restarts = v["tasks"][1]["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (_, again) = w.call("GET", "/pipelines/p", &[], "");
    assert_eq!(
        again["tasks"][1]["restarts"].as_u64(),
        Some(restarts),
        "no retry loop"
    );
    let (_, health) = w.call("GET", "/health", &[], "");
    assert_eq!(health["status"], "degraded", "{health}");
}

#[test]
fn health_answers_at_once_while_a_deploy_holds_the_worker() {
    let w = Served::start(Limits::default(), true, None);
    let (_, before) = w.call("GET", "/health", &[], "");
    assert_eq!(before["deploying"], false, "{before}");
    // As a deploy does while it joins task threads and runs SQL.
    let held = w.deployer.lock();
    let started = Instant::now();
    let (s, v) = w.call("GET", "/health", &[], "");
    let took = started.elapsed();
    drop(held);
    assert_eq!(s, 200);
    assert_eq!(v["deploying"], true, "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
