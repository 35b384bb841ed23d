//! The command line as an operator meets it (issue 17): help that shows only what applies,
//! checked flag values, no `./data` left by a mistyped command, headers, Kafka-style group
//! resets and deletes, logging switches, and the same commands through a running worker
//! (`consume --follow --group`, SQL scripts, the shell and push queries).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cli::sluice_bin;
use crate::common::{spawn_worker, worker_api};

/// `sluice ARGS` in `cwd` with `env`, stdin from `input`.
fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Output {
    let mut cmd = Command::new(sluice_bin());
    cmd.current_dir(cwd)
        .args(args)
        .env_remove("SLUICE_LOG")
        .env_remove("SLUICE_DATA_DIR")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a command that must succeed; its stdout.
fn ok(cwd: &Path, args: &[&str]) -> String {
    ok_with(cwd, args, None)
}

fn ok_with(cwd: &Path, args: &[&str], input: Option<&str>) -> String {
    let o = run_in(cwd, args, &[], input);
    let (out, err) = text(&o);
    assert!(o.status.success(), "sluice {args:?} failed: {out}{err}");
    out
}

#[test]
fn help_lists_only_what_applies_and_bad_flag_values_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    // `-h`: the short help lists a flag's values inline.
    let help = |args: &[&str]| text(&run_in(d.path(), args, &[], None)).0;
    let validate = help(&["pipelines", "validate", "-h"]);
    assert!(!validate.contains("--data-dir"), "{validate}");
    assert!(!validate.contains("--fsync"), "{validate}");
    let list = help(&["topics", "list", "-h"]);
    assert!(list.contains("--data-dir"), "{list}");
    let produce = help(&["produce", "-h"]);
    assert!(produce.contains("--key-separator"), "{produce}");
    assert!(
        produce.contains("[possible values: none, gzip, snappy, lz4, zstd]"),
        "{produce}"
    );
    let consume = help(&["consume", "-h"]);
    assert!(
        consume.contains("[possible values: read_committed, read_uncommitted]"),
        "{consume}"
    );
    // Bad values are clap's usage errors: exit code 2, the values named, nothing created.
    for args in [
        &["topics", "list", "--fsync", "sometimes"][..],
        &["produce", "t", "--compression", "brotli"],
        &["consume", "t", "--isolation", "dirty"],
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "yesterday",
        ],
    ] {
        let o = run_in(d.path(), args, &[], None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}", text(&o));
    }
    let o = run_in(
        d.path(),
        &["produce", "t", "--compression", "brotli"],
        &[],
        None,
    );
    assert!(text(&o).1.contains("lz4"), "{}", text(&o).1);
    assert!(!d.path().join("data").exists());
}

#[test]
fn a_missing_file_or_folder_fails_before_a_data_dir_is_created() {
    let d = tempfile::tempdir().unwrap();
    let o = run_in(d.path(), &["sql", "-f", "nope.sql"], &[], None);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("nope.sql"), "{}", text(&o).1);
    let o = run_in(d.path(), &["run"], &[], None);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("pipelines"), "{}", text(&o).1);
    let o = run_in(
        d.path(),
        &["produce", "t", "--file", "missing.txt"],
        &[],
        None,
    );
    assert!(!o.status.success());
    assert!(
        !d.path().join("data").exists(),
        "a failed command left ./data"
    );
}

#[test]
fn auto_create_topics_and_headers_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // Before the command (as scripts write it) or after: both work.
    ok_with(
        p,
        &[
            "produce",
            "nums",
            "--auto-create-topics",
            "-H",
            "trace=abc",
            "-H",
            "empty=",
        ],
        Some("1\n2\n"),
    );
    ok_with(p, &["--auto-create-topics", "produce", "more"], Some("x\n"));
    let out = ok(
        p,
        &[
            "consume",
            "nums",
            "--from-beginning",
            "--print-headers",
            "--print-offset",
        ],
    );
    assert_eq!(
        out,
        "Offset:0\ttrace:abc,empty:\t1\nOffset:1\ttrace:abc,empty:\t2\n"
    );
    let out = ok(
        p,
        &["consume", "more", "--from-beginning", "--print-headers"],
    );
    assert_eq!(out, "NO_HEADERS\tx\n");
    // Without the flag an unknown topic is still an error.
    let o = run_in(p, &["produce", "nope"], &[], Some("1\n"));
    assert!(text(&o).1.contains("nope"), "{}", text(&o).1);
}

#[test]
fn group_resets_are_dry_runs_unless_executed_and_groups_can_be_deleted() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(p, &["topics", "create", "t", "--partitions", "2"]);
    ok_with(
        p,
        &["produce", "t", "--partition", "0"],
        Some("a\nb\nc\nd\n"),
    );
    ok(
        p,
        &[
            "consume",
            "t",
            "--group",
            "g",
            "--from-beginning",
            "--max-messages",
            "3",
        ],
    );
    // Partition 1 has no commit and is listed all the same.
    let out = ok(p, &["groups", "describe", "g"]);
    let p1 = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&"t") && c.get(1) == Some(&"1"));
    assert_eq!(p1.as_deref().and_then(|c| c.get(2)), Some(&"-"), "{out}");
    let dry = ok(
        p,
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ],
    );
    assert!(dry.contains("dry run"), "{dry}");
    let out = ok(p, &["groups", "describe", "g"]);
    assert!(out.contains(" 3 "), "the dry run moved the offsets: {out}");
    let done = ok(
        p,
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "-2",
            "--execute",
        ],
    );
    assert!(!done.contains("dry run"), "{done}");
    let row = done
        .lines()
        .find(|l| l.contains(" 0 ") && l.starts_with("g "))
        .unwrap();
    assert!(
        row.split_whitespace().eq(["g", "t", "0", "3", "1"]),
        "{done}"
    );
    let out = ok(
        p,
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2999-01-01T00:00:00",
            "--execute",
        ],
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["g", "t", "0", "1", "4"])),
        "{out}"
    );
    let out = ok(p, &["groups", "delete", "g"]);
    assert!(out.contains("Deleted group g"), "{out}");
    assert!(
        !ok(p, &["groups", "list"]).contains("g "),
        "the group is still listed"
    );
    let o = run_in(p, &["groups", "delete", "g"], &[], None);
    assert!(text(&o).1.contains("unknown group"), "{}", text(&o).1);
}

#[test]
fn logging_switches_color_json_and_bad_filters() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let o = run_in(p, &["topics", "list"], &[("SLUICE_LOG", "info,[")], None);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("SLUICE_LOG"), "{}", text(&o).1);
    assert!(!p.join("data").exists());
    // Info lines as text: no colour codes when stderr is not a terminal.
    let o = run_in(
        p,
        &["topics", "create", "a"],
        &[("SLUICE_LOG", "info")],
        None,
    );
    let err = text(&o).1;
    assert!(!err.is_empty() && !err.contains('\u{1b}'), "{err:?}");
    // As JSON: every line one object with a level.
    let o = run_in(
        p,
        &["--log-format", "json", "topics", "create", "b"],
        &[("SLUICE_LOG", "info")],
        None,
    );
    let err = text(&o).1;
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{err}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["level"].is_string(), "{l}");
    }
}

/// A worker on `work` with one pipeline that only declares topic `events` (3 partitions).
fn worker(work: &Path) -> (Child, String) {
    std::fs::create_dir_all(work.join("pipelines")).unwrap();
    std::fs::write(
        work.join("pipelines/topics.toml"),
        "[[topics]]\nname = \"events\"\npartitions = 3\n",
    )
    .unwrap();
    let mut w = spawn_worker(work, 0, None);
    let api = worker_api(work, &mut w);
    (w, api)
}

/// Reads lines of `child`'s stdout on a thread; `wait_lines` waits for `n` of them.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    fn wait_lines(&mut self, n: usize, what: &str) -> &[String] {
        let start = Instant::now();
        while self.seen.len() < n {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.seen.push(l),
                Err(_) => assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{what}: {} of {n} lines: {:?}",
                    self.seen.len(),
                    self.seen
                ),
            }
        }
        &self.seen
    }
}

fn sigint(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn through_a_running_worker_follow_groups_sql_and_push_queries_work() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (mut worker, _api) = worker(w);
    let data = w.join("data");
    let data = data.to_str().unwrap();
    // A follower in a group, started before the records exist.
    let mut follower = Command::new(sluice_bin())
        .args([
            "consume",
            "events",
            "--data-dir",
            data,
            "--group",
            "g",
            "--follow",
        ])
        .args(["--print-key", "--print-headers", "--from-beginning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut follower);
    std::thread::sleep(Duration::from_millis(500));
    let input: String = (0..6).map(|i| format!("k{i}:v{i}\n")).collect();
    ok_with(
        w,
        &[
            "produce",
            "events",
            "--data-dir",
            data,
            "--key-separator",
            ":",
            "-H",
            "src=cli",
        ],
        Some(&input),
    );
    let mut got = lines.wait_lines(6, "the follower").to_vec();
    got.sort();
    let want: Vec<String> = (0..6).map(|i| format!("src:cli\tk{i}\tv{i}")).collect();
    assert_eq!(got, want);
    // Ctrl-C: the follower ends cleanly and its group has committed what it printed.
    sigint(&follower);
    let status = follower.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The worker's reader notices the closed stream, commits and leaves.
    let start = Instant::now();
    loop {
        let out = ok(w, &["groups", "describe", "g", "--data-dir", data]);
        let lags: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("events "))
            .map(|l| l.split_whitespace().nth(4).unwrap_or("?"))
            .collect();
        if lags == ["0", "0", "0"] && out.contains("Members: 0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // SQL scripts through the worker: the same tables as locally, columns in query order.
    let out = ok(
        w,
        &[
            "sql",
            "--data-dir",
            data,
            "-e",
            "CREATE STREAM ev (k VARCHAR KEY, v VARCHAR) WITH (topic = 'events', format = 'RAW');",
        ],
    );
    assert!(out.contains("Stream"), "{out}");
    let out = ok(
        w,
        &[
            "sql",
            "--data-dir",
            data,
            "-e",
            "SELECT v, k FROM ev EMIT CHANGES LIMIT 2;",
        ],
    );
    let header = out.lines().nth(1).unwrap_or_default();
    assert!(
        header.starts_with("| V ") && header.contains("| K "),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("| v")).count(),
        2,
        "{out}"
    );
    // The shell through the worker, statements from stdin.
    let out = ok_with(
        w,
        &["sql", "--data-dir", data],
        Some("help\nSHOW STREAMS;\nexit\n"),
    );
    assert!(out.contains("Ctrl-C"), "{out}");
    assert!(out.contains("EV"), "{out}");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// The shell in a real terminal (a pty from Python): Ctrl-C stops a push query and the
/// shell goes on; each statement is in the history file at once.
#[test]
fn ctrl_c_in_the_shell_stops_a_push_query_and_history_is_kept_per_statement() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok(
        p,
        &[
            "sql",
            "-e",
            "CREATE STREAM s (k VARCHAR KEY, n INT) WITH (topic = 's', partitions = 1);",
        ],
    );
    let script = r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(sys.argv[1], [sys.argv[1], "sql"], dict(os.environ, HOME=sys.argv[2]))
out = b""
def until(word, secs=20):
    global out
    end = time.time() + secs
    while word not in out:
        if time.time() > end:
            sys.exit("timeout waiting for %r, got %r" % (word, out))
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
until(b"sluice> ")
os.write(fd, b"SELECT * FROM s EMIT CHANGES;\r")
until(b"+--")
time.sleep(1)
os.write(fd, b"\x03")
until(b"Query ended")
until(b"sluice> ")
os.write(fd, b"SHOW STREAMS;\r")
until(b"| S ")
os.kill(pid, 9)
print("ok")
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(sluice_bin())
        .arg(p)
        .current_dir(p)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success() && out.contains("ok"), "{out}{err}");
    // Killed, yet both statements are in the history.
    let history = std::fs::read_to_string(p.join(".sluice_history")).unwrap();
    assert!(
        history.contains("EMIT CHANGES") && history.contains("SHOW STREAMS"),
        "{history}"
    );
}

/// What an adversarial pass found, fixed: a pipeline's secret never shows (queries, SHOW
/// QUERIES, the catalog's records), a running sink's group cannot be moved under it, a group
/// consumer through the worker commits what it printed (not what the worker sent), a paused
/// pipeline's ingest answers 503, and validate names a name mismatch.
#[test]
fn a_worker_hides_secrets_guards_its_groups_and_commits_what_was_printed() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::create_dir_all(w.join("pipelines")).unwrap();
    let secret = "hunter2-in-the-sql";
    std::fs::write(
        w.join("pipelines/sec.toml"),
        r#"sql = """
CREATE STREAM IF NOT EXISTS sin (id VARCHAR KEY, v VARCHAR) WITH (topic = 'sin', partitions = 2);
CREATE STREAM IF NOT EXISTS sout WITH (topic = 'sout') AS SELECT * FROM sin WHERE v <> '${SLUICE_TEST_SQL_SECRET}';
"""

[[sources]]
name = "in-http"
topic = "sin"
http = { key-field = "id" }

[[sinks]]
name = "out-files"
topic = "sout"
file = { path = "out", format = "envelope" }
"#,
    )
    .unwrap();
    let mut worker = crate::common::worker_command_for_test(w)
        .env("SLUICE_TEST_SQL_SECRET", secret)
        .spawn()
        .unwrap();
    let api = worker_api(w, &mut worker);
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| http.get(format!("{api}{path}")).send().unwrap();
    let post = |path: &str, ctype: &str, body: String| {
        http.post(format!("{api}{path}"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .unwrap()
    };
    let body: String = (0..20)
        .map(|i| format!("{{\"id\": \"k{i}\", \"v\": \"v{i}\"}}\n"))
        .collect();
    // 503 (retry) while the worker deploys its pipelines at start.
    crate::common::wait_for("the ingest source", || {
        post("/ingest/sin", "application/x-ndjson", body.clone()).status() == 200
    });
    // The secret's value is in the catalog, never in an answer.
    for text in [
        get("/queries").text().unwrap(),
        post("/sql", "text/plain", "SHOW QUERIES;".into())
            .text()
            .unwrap(),
        get("/topics/__sluice_catalog/records?limit=1000")
            .text()
            .unwrap(),
    ] {
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("SLUICE_TEST_SQL_SECRET"), "{text}");
    }
    // The running sink's group: moving or deleting its offsets would be undone: 409.
    let group = "sluice-sink-sec.out-files";
    crate::common::wait_for("the sink's first commit", || {
        get(&format!("/groups/{group}")).status() == 200
    });
    let r = post(
        &format!("/groups/{group}/reset-offsets"),
        "application/json",
        r#"{"topic": "sout", "to_earliest": true, "execute": true}"#.into(),
    );
    assert_eq!(r.status(), 409, "{}", r.text().unwrap());
    let r = http.delete(format!("{api}/groups/{group}")).send().unwrap();
    assert_eq!(r.status(), 409, "{}", r.text().unwrap());
    // Validate names a file whose name differs from the one asked for.
    let r = post(
        "/pipelines/validate?name=mine",
        "application/toml",
        "name = \"other\"\n".into(),
    );
    assert_eq!(r.status(), 400);
    // A group consumer through the worker commits what it printed: 5 of 20.
    let data = w.join("data");
    let data = data.to_str().unwrap();
    let out = ok(
        w,
        &[
            "consume",
            "sin",
            "--data-dir",
            data,
            "--group",
            "five",
            "--from-beginning",
            "--max-messages",
            "5",
        ],
    );
    assert_eq!(out.lines().count(), 5, "{out}");
    let g: serde_json::Value = serde_json::from_str(&get("/groups/five").text().unwrap()).unwrap();
    let committed: i64 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(committed, 5, "{g}");
    // A paused pipeline's ingest is a retry, not a wrong address.
    assert_eq!(
        post("/pipelines/sec/pause", "text/plain", String::new()).status(),
        200
    );
    let r = post("/ingest/sin", "application/json", "{\"id\": \"x\"}".into());
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let _ = worker.kill();
    let _ = worker.wait();
}
