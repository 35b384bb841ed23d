//! Exactly-once end to end, proven by killing the worker while data flows.
//!
//! A pipeline reads payments from a JSON lines file that grows while the test runs, filters
//! the large ones with SQL (`large`), keeps per-account totals in ten-second tumbling windows
//! (`totals`, EMIT FINAL) and writes both topics to S3 (moto, started here). The worker runs
//! as a real `sluice run` process and is SIGKILLed at random moments, and once at each fault
//! point of the commit path (`SLUICE_FAULT`), restarting each time; twice while it is down
//! the query state's local files are deleted or corrupted. At the end every output
//! is compared with what the input says it must be, computed here without Sluice: each
//! payment once in its topic and (when it has a region to be filed under) in S3, each large
//! one once in `large` and in S3, each window's count and sum exact and once in `totals` and in
//! S3, and as dead letters each malformed line (from the source) and each payment without a
//! region (from the S3 sink) once.
//!
//! Longer soaks: `scripts/crash-soak` runs the same test with more kills and records
//! (`SLUICE_CRASH_KILLS`, `SLUICE_CRASH_RECORDS`, `SLUICE_CRASH_SEED`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::sluice_bin;
use crate::common::{env_or, read_committed};
use crate::objstore::Moto;

/// Every fault point of the commit path (see `sluice_log::fault`).
const FAULT_POINTS: &[&str] = &[
    "source-before-commit",
    "query-before-commit",
    "txn-after-prepare",
    "txn-after-markers",
    "query-after-commit",
    "state-snapshot",
    "sink-after-flush",
];

/// Accounts the payments are spread over.
const ACCOUNTS: u64 = 7;
/// Milliseconds of event time between two payments.
const STEP_MS: i64 = 3;
/// Every this many lines one is malformed (a dead letter, not lost, not repeated).
const BAD_EVERY: u64 = 997;

/// xorshift64*: reproducible kill times from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

/// A payment of the input.
struct Payment {
    id: u64,
    account: String,
    amount: u64,
    ts: i64,
}

fn payments(n: u64, base: i64, seed: u64) -> Vec<Payment> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|id| Payment {
            id,
            account: format!("acct-{}", rng.next() % ACCOUNTS),
            amount: rng.next() % 1000,
            ts: base + id as i64 * STEP_MS,
        })
        .collect()
}

fn line(p: &Payment) -> String {
    if p.id % BAD_EVERY == BAD_EVERY - 1 {
        return format!("{{\"id\": {}, \"account\": broken\n", p.id);
    }
    let region = if has_region(p) {
        format!(", \"region\": \"r{}\"", p.id % 3)
    } else {
        String::new()
    };
    format!(
        "{{\"id\": {}, \"account\": \"{}\", \"amount\": {}, \"ts\": {}{region}}}\n",
        p.id, p.account, p.amount, p.ts
    )
}

/// Payments without a region cannot be placed by the `payments-s3` sink: its dead letters.
fn has_region(p: &Payment) -> bool {
    p.id % 50 != 7 || p.account == "closing"
}

fn is_bad(p: &Payment) -> bool {
    p.id % BAD_EVERY == BAD_EVERY - 1
}

fn pipeline(endpoint: &str) -> String {
    format!(
        r#"
guarantee = "{guarantee}"
commit-interval = "300ms"
sql = """
CREATE STREAM IF NOT EXISTS payments (account VARCHAR KEY, id BIGINT, amount BIGINT, ts BIGINT)
  WITH (topic = 'payments', timestamp = 'ts');
CREATE STREAM IF NOT EXISTS large WITH (topic = 'large') AS
  SELECT account, id, amount, ts FROM payments WHERE amount >= 500;
CREATE TABLE IF NOT EXISTS totals WITH (topic = 'totals') AS
  SELECT account, WINDOWSTART AS ws, COUNT(*) AS n, SUM(amount) AS total FROM large
  WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 60 SECONDS) GROUP BY account EMIT FINAL;
"""

[[topics]]
name = "payments"
partitions = 3

[[sources]]
name = "files"
topic = "payments"
file = {{ path = "../in/*.jsonl", format = "json", key-field = "account" }}

[[sinks]]
name = "payments-s3"
topic = "payments"
object-store = {{ url = "s3://crash/out", partition-by = "region={{field:region}}", flush-records = 900, flush-idle = "0s", options = {{ {opts} }} }}

[[sinks]]
name = "large-s3"
topic = "large"
object-store = {{ url = "s3://crash/out", flush-records = 700, flush-idle = "0s", options = {{ {opts} }} }}

[[sinks]]
name = "totals-s3"
topic = "totals"
object-store = {{ url = "s3://crash/out", envelope = true, flush-records = 5, flush-idle = "0s", options = {{ {opts} }} }}
"#,
        guarantee = std::env::var("SLUICE_CRASH_GUARANTEE").unwrap_or("exactly-once".into()),
        opts = format!(
            "endpoint = \"{endpoint}\", allow_http = \"true\", region = \"us-east-1\", access_key_id = \"test\", secret_access_key = \"test\", virtual_hosted_style_request = \"false\""
        )
    )
}

/// The worker process of one round; its log goes to a file kept for failures.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(work: &Path, round: usize, fault: Option<&str>) -> Worker {
        let log = work.join(format!("worker-{round:03}.log"));
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("--data-dir")
            .arg(work.join("data"))
            .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(work.join("pipelines"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        match fault {
            Some(f) => cmd.env("SLUICE_FAULT", f),
            None => cmd.env_remove("SLUICE_FAULT"),
        };
        Worker {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the end of its log.
    fn fail(&self, why: &str) -> ! {
        let text = self.text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{why}\n--- {} (end) ---\n{}",
            self.log.display(),
            tail.join("\n")
        );
    }
}

/// Deletes every store folder under `state` (`lose`) or makes RocksDB find each one corrupt.
fn damage_state(state: &Path, lose: bool) {
    let mut stores = Vec::new();
    let mut dirs = vec![state.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.join("CURRENT").exists() {
                stores.push(p);
            } else if p.is_dir() {
                dirs.push(p);
            }
        }
    }
    assert!(
        !stores.is_empty(),
        "no store folders under {}",
        state.display()
    );
    for s in stores {
        if lose {
            std::fs::remove_dir_all(&s).unwrap();
        } else {
            // No trailing newline: RocksDB reports corruption.
            std::fs::write(s.join("CURRENT"), b"garbage").unwrap();
        }
    }
}

/// Every line of every object under `out/`, by topic (`out/<topic>/...`), read in one
/// listing.
fn s3_lines(moto: &Moto) -> BTreeMap<String, Vec<Value>> {
    let mut by_topic: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (name, bytes) in moto.objects("crash") {
        let topic = name
            .strip_prefix("out/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("{name}: not under out/<topic>/"))
            .to_string();
        let lines = by_topic.entry(topic).or_default();
        for l in String::from_utf8(bytes.to_vec())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .lines()
        {
            lines.push(
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{name}: {l}: {e}")),
            );
        }
    }
    by_topic
}

fn field(v: &Value, name: &str) -> i64 {
    v[name]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

/// Counts each item, returning those seen more than once.
fn repeated<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen = BTreeMap::new();
    for i in items {
        *seen.entry(i).or_insert(0u32) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn the_worker_killed_at_random_and_at_each_fault_point_loses_and_repeats_nothing() {
    let kills = env_or("SLUICE_CRASH_KILLS", 20) as usize;
    let n = env_or("SLUICE_CRASH_RECORDS", 30_000);
    let seed = env_or(
        "SLUICE_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!("crash test: {kills} random kills, {n} records, SLUICE_CRASH_SEED={seed}");
    let moto = Moto::start();
    moto.bucket("crash");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    if std::env::var_os("SLUICE_CRASH_KEEP").is_some() {
        eprintln!("crash test: keeping {}", dir.keep().display());
    }
    for d in ["in", "pipelines"] {
        std::fs::create_dir(work.join(d)).unwrap();
    }
    std::fs::write(
        work.join("pipelines/crash.toml"),
        pipeline(&moto.endpoint()),
    )
    .unwrap();
    // Event times start at a whole window near now (the topics keep 7 days).
    let now = sluice_log::record::now_ms();
    let base = now - now % 10_000;
    let input = payments(n, base, seed);

    // The feeder appends the input in chunks while the worker is killed and restarted.
    let rounds = kills + FAULT_POINTS.len();
    let chunks = (rounds as u64 * 3).max(10);
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let lines: Vec<String> = input.iter().map(line).collect();
        let path = work.join("in/payments.jsonl");
        let feeding = Arc::clone(&feeding);
        std::thread::spawn(move || {
            let mut f = File::create(&path).unwrap();
            let per = lines.len().div_ceil(chunks as usize);
            for chunk in lines.chunks(per) {
                f.write_all(chunk.concat().as_bytes()).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(400));
            }
            feeding.store(false, Ordering::SeqCst);
        })
    };

    // Rounds: random SIGKILLs, with a fault point every few rounds.
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
    let mut faults = FAULT_POINTS.iter();
    let mut killed = 0;
    let mut aborted = 0;
    let mut round = 0;
    let mut state_damaged = 0;
    while killed < kills || aborted < FAULT_POINTS.len() || feeding.load(Ordering::SeqCst) {
        let fault = if round % 3 == 1 {
            faults.next().copied()
        } else {
            None
        };
        // Twice the query state's local files are lost or damaged while the worker is down:
        // it rebuilds the stores from their changelogs.
        if round == 5 || round == 11 {
            damage_state(&work.join("data/state"), round == 5);
            state_damaged += 1;
        }
        let mut w = Worker::start(&work, round, fault);
        match fault {
            Some(point) => {
                // Data flows, so the point is reached: the process aborts there by itself.
                let start = Instant::now();
                let status = loop {
                    if let Some(s) = w.child.try_wait().unwrap() {
                        break s;
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        let _ = w.child.kill();
                        w.fail(&format!("fault point {point} was not reached in 60 s"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                if status.signal() != Some(6) || !w.text().contains("Injected fault") {
                    w.fail(&format!(
                        "fault point {point}: expected an abort, got {status}"
                    ));
                }
                aborted += 1;
            }
            None => {
                std::thread::sleep(rng.millis(300, 2500));
                if let Some(s) = w.child.try_wait().unwrap() {
                    w.fail(&format!("the worker exited by itself: {s}"));
                }
                w.child.kill().unwrap();
                w.child.wait().unwrap();
                killed += 1;
            }
        }
        round += 1;
    }
    feeder.join().unwrap();

    // The last round: a payment far in event time closes every window, then the worker runs
    // until S3 holds every expected output, and stops gracefully.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(work.join("in/payments.jsonl"))
        .unwrap();
    let closing = Payment {
        id: n + 1_000_000,
        account: "closing".into(),
        amount: 999,
        ts: base + n as i64 * STEP_MS + 3_600_000,
    };
    f.write_all(line(&closing).as_bytes()).unwrap();
    drop(f);

    // Expected, from the input alone.
    let good: Vec<&Payment> = input.iter().filter(|p| !is_bad(p)).collect();
    let bad = input.len() - good.len();
    let large: Vec<u64> = good
        .iter()
        .filter(|p| p.amount >= 500)
        .map(|p| p.id)
        .collect();
    let mut windows: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for p in good.iter().filter(|p| p.amount >= 500) {
        let w = windows
            .entry((p.account.clone(), p.ts - p.ts % 10_000))
            .or_default();
        w.0 += 1;
        w.1 += p.amount as i64;
    }

    let placed = good.iter().filter(|p| has_region(p)).count();
    let w = Worker::start(&work, round, None);
    let start = Instant::now();
    loop {
        let s3 = s3_lines(&moto);
        let count = |topic: &str| s3.get(topic).map_or(0, Vec::len);
        let (l, t, p) = (count("large"), count("totals"), count("payments"));
        // (+ 1: the closing payment)
        if l > large.len() + 1 || t > windows.len() || p > placed + 1 {
            break; // repeated: the comparison below says what
        }
        if l == large.len() + 1 && t == windows.len() && p == placed + 1 {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            w.fail(&format!(
                "after 120 s S3 holds {l} of {} large payments, {t} of {} windows and {p} of {} payments",
                large.len() + 1,
                windows.len(),
                placed + 1
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(w.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut w = w;
    let exit = w.child.wait().unwrap();
    if !exit.success() {
        w.fail(&format!("the last worker did not stop cleanly: {exit}"));
    }

    // The topics, read committed.
    let log = sluice_log::Log::open(work.join("data"), sluice_log::LogOptions::default()).unwrap();
    // `payments` holds the input as written (`id`); a query writes its columns' names (`ID`).
    let ids = |topic: &str, id: &str| -> Vec<u64> {
        read_committed(&log, topic)
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                field(&v, id) as u64
            })
            .collect()
    };
    let mut got_payments = ids("payments", "id");
    let mut got_large = ids("large", "ID");
    let dead = read_committed(&log, "crash.dlq");
    // A window's key is the account then the window start (8 bytes, as Kafka Streams writes
    // windowed keys); the S3 envelope shows keys as text, so S3 is compared by that text.
    let totals_records = read_committed(&log, "totals");
    let totals: Vec<((String, i64), (i64, i64))> = totals_records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let key = r.key.as_deref().unwrap();
            let account = String::from_utf8(key[..key.len() - 8].to_vec()).unwrap();
            (
                (account, field(&v, "WS")),
                (field(&v, "N"), field(&v, "TOTAL")),
            )
        })
        .collect();
    let totals_as_text: BTreeMap<(String, i64), (i64, i64)> = totals_records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned();
            ((key, field(&v, "WS")), (field(&v, "N"), field(&v, "TOTAL")))
        })
        .collect();
    let late = read_committed(&log, "totals.dlq").len() + read_committed(&log, "large.dlq").len();
    log.close().unwrap();

    // Payments: each once.
    assert_eq!(
        repeated(got_payments.iter().copied()),
        Vec::<u64>::new(),
        "payments repeated"
    );
    got_payments.retain(|id| *id != closing.id);
    got_payments.sort_unstable();
    let want: Vec<u64> = good.iter().map(|p| p.id).collect();
    assert_eq!(got_payments.len(), want.len(), "payments in the topic");
    assert_eq!(got_payments, want, "payments in the topic");
    // Dead letters: the malformed lines (from the source) and the payments without a region
    // (from the sink), each once.
    let mut placeless: Vec<u64> = Vec::new();
    let mut malformed = 0;
    for r in &dead {
        match serde_json::from_slice::<Value>(r.value.as_deref().unwrap_or_default()) {
            Ok(v) => placeless.push(field(&v, "id") as u64),
            Err(_) => malformed += 1,
        }
    }
    assert_eq!(malformed, bad, "malformed lines in crash.dlq, each once");
    assert_eq!(
        repeated(placeless.iter().copied()),
        Vec::<u64>::new(),
        "sink dead letters repeated"
    );
    placeless.sort_unstable();
    let want_placeless: Vec<u64> = good
        .iter()
        .filter(|p| !has_region(p))
        .map(|p| p.id)
        .collect();
    assert_eq!(
        placeless, want_placeless,
        "payments without a region in crash.dlq"
    );
    let s3 = s3_lines(&moto);
    let in_s3 = |topic: &str| s3.get(topic).map_or(&[][..], Vec::as_slice);
    let mut s3_payments: Vec<u64> = in_s3("payments")
        .iter()
        .map(|v| field(v, "id") as u64)
        .collect();
    assert_eq!(
        repeated(s3_payments.iter().copied()),
        Vec::<u64>::new(),
        "payments repeated in S3"
    );
    s3_payments.retain(|id| *id != closing.id);
    s3_payments.sort_unstable();
    let want_s3: Vec<u64> = good
        .iter()
        .filter(|p| has_region(p))
        .map(|p| p.id)
        .collect();
    assert_eq!(s3_payments, want_s3, "payments with a region in S3");
    assert_eq!(late, 0, "no record was late or rejected by a query");
    // Large payments: each once, in the topic and in S3.
    assert_eq!(
        repeated(got_large.iter().copied()),
        Vec::<u64>::new(),
        "large repeated"
    );
    got_large.retain(|id| *id != closing.id);
    got_large.sort_unstable();
    assert_eq!(got_large, large, "large payments in the topic");
    let mut s3_large: Vec<u64> = in_s3("large")
        .iter()
        .map(|v| field(v, "ID") as u64)
        .collect();
    assert_eq!(
        repeated(s3_large.iter().copied()),
        Vec::<u64>::new(),
        "large repeated in S3"
    );
    s3_large.retain(|id| *id != closing.id);
    s3_large.sort_unstable();
    assert_eq!(s3_large, large, "large payments in S3");
    // Windows: each once, with exact values, in the topic and in S3.
    assert_eq!(
        repeated(totals.iter().map(|(k, _)| k.clone())),
        Vec::new(),
        "windows emitted twice in totals"
    );
    let got: BTreeMap<(String, i64), (i64, i64)> = totals.into_iter().collect();
    assert_eq!(got, windows, "window counts and sums in the topic");
    let s3_totals: Vec<((String, i64), (i64, i64))> = in_s3("totals")
        .iter()
        .map(|e| {
            let v = &e["value"];
            let key = e["key"].as_str().unwrap().to_string();
            ((key, field(v, "WS")), (field(v, "N"), field(v, "TOTAL")))
        })
        .collect();
    assert_eq!(
        repeated(s3_totals.iter().map(|(k, _)| k.clone())),
        Vec::new(),
        "windows twice in S3"
    );
    let s3_totals: BTreeMap<_, _> = s3_totals.into_iter().collect();
    assert_eq!(
        s3_totals, totals_as_text,
        "window counts and sums in S3, as in the topic"
    );
    eprintln!(
        "crash test: survived {} kills ({killed} SIGKILLs at random, {aborted} aborts at fault points: {}), the query state's files deleted once and corrupted once ({state_damaged} rebuilds from changelogs); compared {} payments (topic; {} in S3), {} dead letters ({} malformed lines from the source, {} without a region from the S3 sink), {} large payments (topic and S3), {} windows (topic and S3): none missing, none repeated, every count and sum exact",
        killed + aborted,
        FAULT_POINTS.join(", "),
        want.len(),
        want_s3.len(),
        dead.len(),
        bad,
        want_placeless.len(),
        large.len(),
        windows.len()
    );
}
