//! The web console in a real headless Chromium (Debian's `chromium`, driven by
//! `console/e2e/console.mjs` with playwright-core): a worker with a token serves the console
//! built into the binary; the pages render the worker's pipelines (with the persistent
//! queries' commit status), topics and groups; a pipeline deploys from the Deploy form, is
//! edited, validated, paused, has its offsets listed and reset, and a task restarted; the
//! record browser shows headers and follows a topic live; a push query streams rows (also
//! rows produced while it runs) and a pull query shows its table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{spawn_worker_with_token, worker_api};

/// The repository's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_console_renders_deploys_browses_and_streams_in_chromium() {
    let console = repo().join("console");
    assert!(
        console.join("node_modules/playwright-core").is_dir(),
        "console/node_modules is missing: scripts/setup.sh installs it (npm ci)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/setup.sh installs Debian's chromium"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The default pipeline, with its rides, as `scripts/run` runs it.
    std::fs::create_dir_all(w.join("pipelines")).unwrap();
    std::fs::create_dir_all(w.join("examples/quickstart")).unwrap();
    std::fs::copy(
        repo().join("pipelines/default.toml"),
        w.join("pipelines/default.toml"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("examples/quickstart/rides.jsonl"),
        w.join("examples/quickstart/rides.jsonl"),
    )
    .unwrap();
    let token = "console-test-token";
    let mut worker = spawn_worker_with_token(w, token);
    let api = worker_api(w, &mut worker);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // The page is the built console, open without the token; the API is not.
    let page = http.get(format!("{api}/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    assert!(
        html.contains("/assets/") || html.contains("./assets/"),
        "the binary serves no built console: {html}"
    );
    assert_eq!(
        http.get(format!("{api}/topics")).send().unwrap().status(),
        401
    );
    // A record with headers to browse (as a dead letter carries its reason).
    let produced = http
        .post(format!("{api}/topics/rides/records"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(
            r#"{"key":"harbor","value":{"ride":9001,"zone":"harbor","fare":12.5,"ts":"2026-11-23T09:00:00Z"},"headers":{"reason":"a test header","origin":"console.rs"}}"#,
        )
        .send()
        .unwrap();
    assert_eq!(produced.status(), 200, "{}", produced.text().unwrap());
    // The pipeline the Deploy form sends, and rides produced while the push query runs.
    std::fs::write(w.join("feed.jsonl"), "").unwrap();
    std::fs::write(
        w.join("deploy.toml"),
        format!(
            "[[topics]]\nname = \"rides_live\"\npartitions = 1\n\n[[sources]]\nname = \"live-files\"\ntopic = \"rides_live\"\nfile = {{ path = {:?}, format = \"json\", key-field = \"zone\" }}\n",
            w.join("feed.jsonl")
        ),
    )
    .unwrap();
    std::fs::write(
        w.join("produce.ndjson"),
        concat!(
            r#"{"key":"harbor","value":{"ride":3001,"zone":"harbor","fare":21.5,"ts":"2026-11-23T10:00:00Z"}}"#,
            "\n",
            r#"{"key":"airport","value":{"ride":3002,"zone":"airport","fare":33.25,"ts":"2026-11-23T10:01:00Z"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let shot = w.join("pipelines.png");
    let out = Command::new("node")
        .arg(console.join("e2e/console.mjs"))
        .current_dir(&console)
        .env("SLUICE_URL", format!("{api}/"))
        .env("SLUICE_TOKEN", token)
        .env("CHROMIUM", &chromium)
        .env("SLUICE_DEPLOY_TOML", w.join("deploy.toml"))
        .env("SLUICE_DEPLOY_NAME", "feed")
        .env("SLUICE_RESET_OFFSETS", "1")
        .env("SLUICE_BROWSE_TOPIC", "rides")
        .env("SLUICE_FOLLOW_TOPIC", "rides")
        .env("SLUICE_PUSH_SQL", "SELECT * FROM rides EMIT CHANGES;")
        .env("SLUICE_PUSH_ROWS", "3")
        .env("SLUICE_PUSH_PRODUCE_TOPIC", "rides")
        .env("SLUICE_PUSH_PRODUCE_NDJSON", w.join("produce.ndjson"))
        .env("SLUICE_PULL_SQL", "SELECT * FROM zone_fares;")
        // Values shown exactly as stored: a record's JSON text, and BIGINTs past 2^53.
        .env("SLUICE_EXACT_TOPIC", "exact")
        .env(
            "SLUICE_EXACT_SQL_SETUP",
            "CREATE TABLE IF NOT EXISTS big_ids (id VARCHAR PRIMARY KEY, n BIGINT) WITH (topic = 'big_ids', partitions = 1); INSERT INTO big_ids (id, n) VALUES ('max', 9223372036854775807), ('past-2^53', 9007199254740993);",
        )
        .env("SLUICE_EXACT_SQL", "SELECT id, n FROM big_ids;")
        .env("SLUICE_SCREENSHOT", &shot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    // Every check ran: none skipped for a missing variable.
    assert!(stdout.contains(" 0 failed, 0 skipped"), "{stdout}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "no screenshot"
    );
    // The README's picture comes from here: `SLUICE_KEEP_SCREENSHOT=docs/console.png`.
    if let Ok(keep) = std::env::var("SLUICE_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, repo().join(keep)).unwrap();
    }
}
