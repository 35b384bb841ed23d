//! The `sluice` command line, run as a real process: topics, produce, consume, groups, bench,
//! help and errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `sluice` binary built beside this test binary (target/<profile>/sluice).
pub(crate) fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build) first",
        bin.display()
    );
    bin
}

fn sluice(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = sluice(data, args, stdin);
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The contents of the files in `dir` whose names do not start with `.` (a sink's hidden
/// bookkeeping files are left out); none when `dir` does not exist.
fn visible_file_texts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|es| {
            es.map(|e| e.unwrap())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a command that must fail; returns its stderr, which must be one `error:` line.
fn fails(data: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = sluice(data, args, stdin);
    assert!(!out.status.success(), "sluice {args:?} should have failed");
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    err
}

#[test]
fn topics_lifecycle() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let out = ok(
        d,
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=60000",
        ],
        None,
    );
    assert!(
        out.contains("Created topic orders with 3 partition(s)"),
        "{out}"
    );
    let list = ok(d, &["topics", "list"], None);
    assert!(
        list.lines()
            .any(|l| l.starts_with("orders") && l.split_whitespace().nth(1) == Some("3")),
        "{list}"
    );
    assert!(
        !list.contains("__consumer_offsets"),
        "internal topics hidden by default: {list}"
    );
    assert!(ok(d, &["topics", "list", "--all"], None).contains("__consumer_offsets"));
    let desc = ok(d, &["topics", "describe", "orders"], None);
    assert!(
        desc.contains("Config overrides: retention.ms=60000"),
        "{desc}"
    );
    assert!(
        desc.contains("segment.bytes") && desc.contains("default"),
        "{desc}"
    );
    assert!(ok(d, &["topics", "alter", "orders", "--partitions", "5"], None).contains("now has 5"));
    let err = fails(d, &["topics", "alter", "orders", "--partitions", "2"], None);
    assert!(err.contains("partitions can only grow"), "{err}");
    let err = fails(d, &["topics", "create", "orders"], None);
    assert!(err.contains("already exists"), "{err}");
    ok(d, &["topics", "create", "orders", "--if-not-exists"], None);
    let err = fails(
        d,
        &["topics", "create", "bad", "--config", "retention.ms=soon"],
        None,
    );
    assert!(err.contains("retention.ms"), "{err}");
    let err = fails(d, &["topics", "create", "bad name"], None);
    assert!(err.contains("invalid topic name"), "{err}");
    ok(d, &["topics", "delete", "orders"], None);
    let err = fails(d, &["topics", "describe", "orders"], None);
    assert!(err.contains("unknown topic 'orders'"), "{err}");
}

#[test]
fn produce_and_consume_with_keys_partitions_and_offsets() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    ok(d, &["topics", "create", "t", "--partitions", "2"], None);
    let input = "k1:v1\nk2:v2\nk1:v3\nk3:v4\n";
    let out = sluice(
        d,
        &[
            "produce",
            "t",
            "--key-separator",
            ":",
            "--compression",
            "zstd",
        ],
        Some(input),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Produced 4 record(s)"));
    let all = ok(
        d,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--print-key",
            "--print-partition",
            "--print-offset",
        ],
        None,
    );
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 4, "{all}");
    // Same key, same partition, in order.
    let k1: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("\tk1\t"))
        .copied()
        .collect();
    assert_eq!(k1.len(), 2);
    assert_eq!(k1[0].split('\t').next(), k1[1].split('\t').next());
    assert!(k1[0].ends_with("\tv1") && k1[1].ends_with("\tv3"), "{k1:?}");
    // Without --from-beginning a fresh reader starts at the end.
    assert_eq!(ok(d, &["consume", "t"], None), "");
    // Explicit partition and offset.
    let p = k1[0]
        .split('\t')
        .next()
        .unwrap()
        .trim_start_matches("Partition:")
        .to_string();
    let one = ok(
        d,
        &[
            "consume",
            "t",
            "--partition",
            &p,
            "--offset",
            "1",
            "--print-offset",
        ],
        None,
    );
    assert!(one.starts_with("Offset:1\t"), "{one}");
    let two = ok(
        d,
        &["consume", "t", "--from-beginning", "--max-messages", "2"],
        None,
    );
    assert_eq!(two.lines().count(), 2);
    // From a file, to an explicit partition.
    let f = d.join("input.txt");
    std::fs::write(&f, "a\nb\nc\n").unwrap();
    ok(
        d,
        &[
            "produce",
            "t",
            "--partition",
            "1",
            "--file",
            f.to_str().unwrap(),
        ],
        None,
    );
    let p1 = ok(
        d,
        &["consume", "t", "--partition", "1", "--offset", "earliest"],
        None,
    );
    assert!(p1.ends_with("a\nb\nc\n"), "{p1}");
    let ts = ok(
        d,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--max-messages",
            "1",
            "--print-timestamp",
        ],
        None,
    );
    assert!(ts.starts_with("CreateTime:"), "{ts}");
}

#[test]
fn produce_errors_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    ok(
        d,
        &["topics", "create", "t", "--config", "max.message.bytes=200"],
        None,
    );
    let err = fails(
        d,
        &["produce", "t", "--key-separator", ":"],
        Some("a:1\nno separator here\n"),
    );
    assert!(
        err.contains("stdin line 2") && err.contains("no key separator"),
        "{err}"
    );
    let big = "x".repeat(500);
    let err = fails(d, &["produce", "t"], Some(&format!("ok\n{big}\n")));
    assert!(
        err.contains("line 2") && err.contains("max.message.bytes=200"),
        "{err}"
    );
    let err = fails(d, &["produce", "missing"], Some("x\n"));
    assert!(err.contains("unknown topic 'missing'"), "{err}");
    // A value clap checks: a usage error (exit code 2) that lists the values.
    let out = sluice(d, &["produce", "t", "--compression", "brotli"], Some("x\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("brotli") && err.contains("zstd"), "{err}");
}

#[test]
fn groups_commit_describe_lag_and_reset() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    ok(d, &["topics", "create", "t", "--partitions", "2"], None);
    ok(d, &["produce", "t"], Some("1\n2\n3\n4\n5\n6\n"));
    let first = ok(
        d,
        &[
            "consume",
            "t",
            "--group",
            "g",
            "--from-beginning",
            "--max-messages",
            "4",
        ],
        None,
    );
    assert_eq!(first.lines().count(), 4);
    let desc = ok(d, &["groups", "describe", "g"], None);
    let lag: i64 = desc
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(4).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(lag, 2, "{desc}");
    let rest = ok(d, &["consume", "t", "--group", "g"], None);
    assert_eq!(
        rest.lines().count(),
        2,
        "the group resumes where it committed: {rest}"
    );
    assert!(ok(d, &["groups", "list"], None).contains("g "));
    let reset = ok(
        d,
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
            "--execute",
        ],
        None,
    );
    assert!(reset.contains("NEW-OFFSET"), "{reset}");
    let again = ok(d, &["consume", "t", "--group", "g"], None);
    assert_eq!(again.lines().count(), 6);
    ok(
        d,
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-offset",
            "1",
            "--execute",
        ],
        None,
    );
    assert_eq!(
        ok(d, &["consume", "t", "--group", "g"], None)
            .lines()
            .count(),
        5,
        "offset 1 on partition 0 (all six records), clamped to 0 on the empty partition 1"
    );
    let err = fails(d, &["groups", "describe", "nope"], None);
    assert!(err.contains("unknown group"), "{err}");
}

#[test]
fn a_second_process_cannot_open_the_data_dir() {
    let d = tempfile::tempdir().unwrap();
    let log = sluice_log::Log::open(d.path(), sluice_log::LogOptions::default()).unwrap();
    let err = fails(d.path(), &["topics", "list"], None);
    assert!(err.contains("in use by another process"), "{err}");
    log.close().unwrap();
    ok(d.path(), &["topics", "list"], None);
}

#[test]
fn every_command_has_help() {
    let d = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["topics", "--help"],
        vec!["topics", "create", "--help"],
        vec!["topics", "alter", "--help"],
        vec!["produce", "--help"],
        vec!["consume", "--help"],
        vec!["groups", "reset-offsets", "--help"],
        vec!["bench", "produce", "--help"],
    ] {
        let out = ok(d.path(), &args, None);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
}

#[test]
fn bench_prints_kafka_shaped_lines() {
    let d = tempfile::tempdir().unwrap();
    let scratch = d.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let s = scratch.to_str().unwrap();
    let out = ok(
        d.path(),
        &["bench", "produce", "--records", "20000", "--dir", s],
        None,
    );
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("20000 records sent, "), "{out}");
    assert!(
        last.contains("records/sec") && last.contains("ms 99.9th."),
        "{out}"
    );
    assert!(out.contains("raw sequential write:"), "{out}");
    let out = ok(
        d.path(),
        &["bench", "consume", "--records", "20000", "--dir", s],
        None,
    );
    assert!(
        out.contains("20000 records consumed") && out.contains("raw sequential read:"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "bench removes its scratch log"
    );
}

#[test]
fn a_group_reading_in_small_steps_sees_every_record_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    ok(d, &["topics", "create", "t", "--partitions", "3"], None);
    let input: String = (0..30).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(d, &["produce", "t", "--key-separator", ":"], Some(&input));
    let mut seen = Vec::new();
    for _ in 0..10 {
        let out = ok(
            d,
            &[
                "consume",
                "t",
                "--group",
                "g",
                "--from-beginning",
                "--max-messages",
                "4",
            ],
            None,
        );
        seen.extend(out.lines().map(str::to_string));
    }
    seen.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    want.sort();
    assert_eq!(
        seen, want,
        "each record once across runs of --max-messages 4"
    );
}

#[test]
fn sql_scripts_create_insert_query_and_persist() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let out = ok(
        d,
        &[
            "sql",
            "-e",
            "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, fare DOUBLE) WITH (topic='rides', partitions=1);
             INSERT INTO rides (id, zone, fare) VALUES ('r1', 'airport', 30.5), ('r2', 'harbor', 8.0);
             CREATE TABLE zones AS SELECT zone, COUNT(*) AS n FROM rides GROUP BY zone;
             SELECT id, fare * 2 AS twice FROM rides WHERE fare > 10 EMIT CHANGES LIMIT 1;",
        ],
        None,
    );
    assert!(out.contains("Stream RIDES created"), "{out}");
    assert!(out.contains("query CTAS_ZONES_0 is running"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split('|').map(str::trim).eq(["", "r1", "61.0", ""])),
        "{out}"
    );
    // The catalog and the query survive; a script file runs the same way, and the table
    // answers a pull query once the query has caught up.
    let script = d.join("q.sql");
    std::fs::write(&script, "SHOW QUERIES;\nSHOW TABLES;\n").unwrap();
    let out = ok(d, &["sql", "-f", script.to_str().unwrap()], None);
    assert!(
        out.contains("CTAS_ZONES_0") && out.contains("ZONES"),
        "{out}"
    );
    let mut pulled = String::new();
    for _ in 0..50 {
        pulled = ok(
            d,
            &[
                "sql",
                "-e",
                "SELECT zone, n FROM zones WHERE zone = 'airport';",
            ],
            None,
        );
        if pulled.contains("| airport | 1 |") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(pulled.contains("| airport | 1 |"), "{pulled}");
    let err = fails(d, &["sql", "-e", "SELECT * FROM\n rides WHERE"], None);
    assert!(err.contains("line 2"), "{err}");
    let err = fails(
        d,
        &["sql", "-e", "SELECT nope FROM rides EMIT CHANGES;"],
        None,
    );
    assert!(err.contains("NOPE"), "{err}");
}

#[test]
fn sql_shell_reads_multi_line_statements_from_stdin() {
    let d = tempfile::tempdir().unwrap();
    let out = ok(
        d.path(),
        &["sql"],
        Some(
            "CREATE STREAM s (id VARCHAR KEY, v INT)\n  WITH (topic='s', partitions=1);\nINSERT INTO s VALUES ('a', 1);\nSHOW\nSTREAMS;\nSELECT nope FROM s EMIT CHANGES;\nDESCRIBE s;\n",
        ),
    );
    assert!(out.contains("Stream S created"), "{out}");
    assert!(out.contains("| S    | s     | JSON   |"), "{out}");
    assert!(out.contains("| V       | INT     |"), "{out}");
}

#[test]
fn pipelines_validate_names_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let default = repo.join("pipelines/default.toml");
    let out = ok(
        d,
        &["pipelines", "validate", default.to_str().unwrap()],
        None,
    );
    assert!(
        out.contains("ok:")
            && out.contains(
                "pipeline default: 1 topic(s), 1 source(s), 1 sink(s), 2 SQL statement(s)"
            ),
        "{out}"
    );
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[[topics]]\nname = \"t\"\npartitons = 3\n").unwrap();
    let err = fails(d, &["pipelines", "validate", bad.to_str().unwrap()], None);
    assert!(
        err.contains("bad.toml:3:1") && err.contains("partitons"),
        "{err}"
    );
}

#[test]
fn run_deploys_the_default_pipeline_follows_the_folder_and_stops_on_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    // The default pipeline, with its paths pointing into the repository and the output here.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join("pipelines/default.toml"))
        .unwrap()
        .replace("../examples", &repo.join("examples").to_string_lossy())
        .replace("../out/zone_fares", &d.join("out").to_string_lossy());
    std::fs::create_dir(d.join("pipelines")).unwrap();
    std::fs::write(d.join("pipelines/default.toml"), text).unwrap();
    let mut child = Command::new(sluice_bin())
        .arg("--data-dir")
        .arg(d.join("data"))
        .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
        .arg(d.join("pipelines"))
        .args(["--progress-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr is collected as it comes, so the test can wait for a message.
    let err_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let err_text = std::sync::Arc::clone(&err_text);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut t = err_text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        })
    };
    let start = std::time::Instant::now();
    // The rides counted by each zone's latest row (updates come compacted per commit).
    let rides = |d: &Path| -> u64 {
        let mut latest = std::collections::BTreeMap::new();
        for text in visible_file_texts(&d.join("out")) {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                latest.insert(
                    v["key"].to_string(),
                    v["value"]["RIDES"].as_u64().unwrap_or(0),
                );
            }
        }
        latest.values().sum()
    };
    // 24 rides in the bundled file.
    while rides(d) < 24 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no output after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // While the worker owns the data directory, log commands go through its API.
    let out = Command::new(sluice_bin())
        .arg("--data-dir")
        .arg(d.join("data"))
        .args(["topics", "list"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("via the running worker's API"), "{stderr}");
    assert!(
        stdout.contains("rides") && stdout.contains("zone_fares"),
        "{stdout}"
    );
    let out = Command::new(sluice_bin())
        .arg("--data-dir")
        .arg(d.join("data"))
        .args([
            "consume",
            "rides",
            "--from-beginning",
            "--max-messages",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // A new file in the folder deploys; removing it stops that pipeline.
    std::fs::write(d.join("notes.txt"), "hello\nworld\n").unwrap();
    std::fs::write(
        d.join("pipelines/echo.toml"),
        format!(
            "[[topics]]\nname = \"notes\"\n\n[[sources]]\nname = \"notes-in\"\ntopic = \"notes\"\nfile = {{ path = \"{}\" }}\n\n[[sinks]]\nname = \"notes-out\"\ntopic = \"notes\"\nfile = {{ path = \"{}\" }}\n",
            d.join("notes.txt").display(),
            d.join("echo").display()
        ),
    )
    .unwrap();
    let echoed = |d: &Path| -> String { visible_file_texts(&d.join("echo")).concat() };
    while echoed(d) != "hello\nworld\n" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "echo: {:?}",
            echoed(d)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_file(d.join("pipelines/echo.toml")).unwrap();
    while !err_text.lock().unwrap().contains("Stopped pipeline echo") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "echo never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    reader.join().unwrap();
    let err = err_text.lock().unwrap().clone();
    assert!(exit.success(), "{err}");
    assert!(
        err.contains("Deployed pipeline default") && err.contains("Stopping"),
        "{err}"
    );
    assert!(
        err.contains("Deployed pipeline echo") && err.contains("Stopped pipeline echo"),
        "{err}"
    );
    assert!(err.contains("source ride-files in 24 out 24"), "{err}");
    assert_eq!(rides(d), 24);
}
