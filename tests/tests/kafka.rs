//! Kafka's own clients against `sluice run --kafka-listen`: kcat (librdkafka 2.0, Debian),
//! confluent-kafka (librdkafka 2.16) and kafka-python 3 produce, consume, create topics, use
//! consumer groups through a rebalance and commit offsets; records they write feed a SQL
//! pipeline whose output they read back; the worker's API sees their groups; and corrupt or
//! truncated frames close only their own connection.
//!
//! The Python side is `tests/kafka/clients.py` (one command per scenario, a JSON line out).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::{venv, wait_for, worker_api, worker_command_for_test};

/// A `sluice run --kafka-listen 127.0.0.1:0` process, killed on drop.
struct KafkaWorker {
    child: Child,
    api: String,
    bootstrap: String,
}

impl KafkaWorker {
    fn start(work: &Path) -> KafkaWorker {
        Self::start_with(work, &[], &[])
    }

    /// With more `sluice run` arguments and environment variables.
    fn start_with(work: &Path, args: &[&str], env: &[(&str, &str)]) -> KafkaWorker {
        std::fs::create_dir_all(work.join("pipelines")).unwrap();
        // A killed worker leaves its worker.json behind.
        let _ = std::fs::remove_file(work.join("data/worker.json"));
        let mut command = worker_command_for_test(work);
        command.args(["--kafka-listen", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let api = worker_api(work, &mut child);
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(work.join("data/worker.json")).unwrap())
                .unwrap();
        let bootstrap = info["kafka"]
            .as_str()
            .expect("worker.json names the Kafka listener")
            .to_string();
        KafkaWorker {
            child,
            api,
            bootstrap,
        }
    }
}

impl Drop for KafkaWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clients_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/clients.py")
}

/// Runs a `clients.py` command; its last line, parsed.
fn client(command: &str, bootstrap: &str, topic: &str, n: usize) -> Value {
    client_with(command, bootstrap, topic, n, &[])
}

fn client_with(
    command: &str,
    bootstrap: &str,
    topic: &str,
    n: usize,
    env: &[(&str, &str)],
) -> Value {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/setup.sh makes the venv with the Kafka clients",
        python.display()
    );
    let out = Command::new(python)
        .arg(clients_py())
        .args([command, bootstrap, topic, &n.to_string()])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients.py {command} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("clients.py {command}: {e}: {stdout}"))
}

fn kcat(bootstrap: &str, args: &[&str], input: &str) -> String {
    let mut child = Command::new("kcat")
        .args(["-b", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is missing: scripts/setup.sh installs Debian's kcat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(api: &str, path: &str) -> Value {
    let text = reqwest::blocking::get(format!("{api}{path}"))
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

/// Creates a topic through the worker's API.
fn create_topic(api: &str, name: &str, partitions: u32) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{api}/topics"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"name": name, "partitions": partitions}).to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
}

#[test]
fn confluent_kafka_and_kafka_python_produce_consume_and_commit_in_groups() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());

    let r = client("confluent-roundtrip", &w.bootstrap, "ck", 500);
    assert_eq!(r["delivered"], 500, "{r}");
    assert_eq!(r["unflushed"], 0, "{r}");
    assert_eq!(r["consumed"], 500, "{r}");
    assert_eq!(r["partitions"], 4, "CreatePartitions grew the topic: {r}");
    assert_eq!(r["committed"], 500, "the group committed every record: {r}");
    assert_eq!(r["headers"], serde_json::json!(["source=confluent"]));
    assert_eq!(r["create_errors"]["ck"], "TOPIC_ALREADY_EXISTS");
    assert_eq!(r["create_errors"]["bad name!"], "TOPIC_EXCEPTION");
    assert!(r["groups"].as_array().unwrap().contains(&"ck-group".into()));

    let r = client("kafka-python-roundtrip", &w.bootstrap, "kp", 300);
    assert_eq!(r["acked"], 300, "{r}");
    assert_eq!(r["distinct_offsets"], 300, "{r}");
    assert_eq!(r["consumed"], 300, "{r}");
    assert_eq!(r["committed"], 300, "{r}");
    assert_eq!(r["state"], "Empty", "the consumer left: {r}");
    assert!(r["listed"].as_array().unwrap().contains(&"kp-group".into()));

    // The worker sees the same topics, records and groups.
    let topic = get(&w.api, "/topics/ck");
    let records: i64 = topic["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(records, 500);
    let group = get(&w.api, "/groups/kp-group");
    let lag: i64 = group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lag, 0, "{group}");
}

#[test]
fn admin_clients_alter_configs_delete_records_look_up_offsets_by_time_and_delete() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    let r = client("admin-extras", &w.bootstrap, "adm", 10);
    assert_eq!(r["retention_before"], "604800000", "{r}");
    assert_eq!(r["retention_after"], "3600000", "{r}");
    assert_eq!(
        r["retention_reverted"], "604800000",
        "DELETE restores the default: {r}"
    );
    // Records are 1 s apart from a fixed start; 5.5 s in, the first at or after is offset 6.
    assert_eq!(r["offset_at_time"], 6, "{r}");
    assert_eq!(r["low_watermark"], 3, "{r}");
    assert_eq!(r["first_after_delete"], 3, "records before 3 are gone: {r}");
    assert_eq!(r["group_errors"]["adm-g"], Value::Null, "{r}");
    assert_eq!(r["group_errors"]["never-was"], "GROUP_ID_NOT_FOUND", "{r}");
    assert_eq!(r["topic_left"], false, "{r}");
}

#[test]
fn tls_and_sasl_users_authenticate_and_everyone_else_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    crate::postgres_cdc::server_cert(&certs);
    let cert = certs.join("server.crt");
    let key = certs.join("server.key");
    // Bob's password holds the list's separators: a users file keeps whole lines.
    let password = "pa:ss,word=1";
    std::fs::write(
        work.path().join("users"),
        format!("# users\nbob:{password}\n"),
    )
    .unwrap();
    let users = work.path().join("users");
    let w = KafkaWorker::start_with(
        work.path(),
        &[
            "--kafka-tls-cert",
            cert.to_str().unwrap(),
            "--kafka-tls-key",
            key.to_str().unwrap(),
            "--kafka-users-file",
            users.to_str().unwrap(),
        ],
        &[("SLUICE_KAFKA_USERS", "alice:first-secret")],
    );
    create_topic(&w.api, "sec", 2);
    let ca = certs.join("ca.crt");
    let r = client_with(
        "secure-roundtrip",
        &w.bootstrap,
        "sec",
        50,
        &[
            ("SECURE_CA", ca.to_str().unwrap()),
            ("SECURE_USER", "bob"),
            ("SECURE_PASSWORD", password),
        ],
    );
    assert_eq!(r["unflushed"], 0, "{r}");
    assert_eq!(r["consumed"], 50, "{r}");
    assert_eq!(r["kafka_python"], 50, "{r}");
    for refused in ["wrong_scram", "wrong_plain", "no_sasl"] {
        assert_ne!(r[refused], "accepted", "{refused}: {r}");
    }
    assert!(
        r["wrong_scram"].to_string().contains("AUTHENTICATION"),
        "a wrong password is an authentication failure: {r}"
    );
    // kcat over TLS with the other user, from the environment.
    let sasl = [
        "-X",
        "security.protocol=SASL_SSL",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-256",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=first-secret",
        "-X",
    ];
    let ca_arg = format!("ssl.ca.location={}", ca.display());
    let mut args: Vec<&str> = sasl.to_vec();
    args.push(&ca_arg);
    let produce: Vec<&str> = args.iter().copied().chain(["-P", "-t", "sec"]).collect();
    kcat(&w.bootstrap, &produce, "from-kcat\n");
    let consume: Vec<&str> = args
        .iter()
        .copied()
        .chain(["-C", "-t", "sec", "-o", "beginning", "-e", "-f", "%s\n"])
        .collect();
    let out = kcat(&w.bootstrap, &consume, "");
    assert_eq!(out.lines().count(), 51, "{out}");
    assert!(out.contains("from-kcat"));
    // No password in the worker's log, whatever failed.
    let log = std::fs::read_to_string(work.path().join("worker-0.log")).unwrap();
    for secret in [password, "first-secret", "not-the-password"] {
        assert!(!log.contains(secret), "the log shows a password");
    }
    assert!(
        log.contains("SASL authentication failed"),
        "refusals are logged"
    );
}

#[test]
fn a_group_rebalances_when_a_member_joins_and_when_one_leaves() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    for (command, topic) in [("rebalance", "rb"), ("rebalance-kafka-python", "rbkp")] {
        let r = client(command, &w.bootstrap, topic, 400);
        check_rebalance(&r);
    }
}

/// Two members split the four partitions, disjoint; after one leaves, the other has all;
/// every record was consumed.
fn check_rebalance(r: &Value) {
    let split: Vec<Vec<i64>> = serde_json::from_value(r["split"].clone()).unwrap();
    assert_eq!(split.len(), 2, "{r}");
    assert!(split.iter().all(|s| !s.is_empty()), "{r}");
    let mut all: Vec<i64> = split.concat();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3], "{r}");
    assert_eq!(r["after"], serde_json::json!([0, 1, 2, 3]), "{r}");
    assert_eq!(
        r["consumed"], r["sent"],
        "nothing lost across the rebalances: {r}"
    );
}

#[test]
fn kcat_lists_produces_consumes_and_joins_a_group() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    let b = w.bootstrap.as_str();
    create_topic(&w.api, "kc", 2);
    let lines: String = (0..50).map(|i| format!("key{i}:value {i}\n")).collect();
    kcat(b, &["-P", "-t", "kc", "-K:"], &lines);
    let meta = kcat(b, &["-L", "-t", "kc"], "");
    assert!(meta.contains("topic \"kc\" with 2 partitions"), "{meta}");
    let out = kcat(
        b,
        &["-C", "-t", "kc", "-o", "beginning", "-e", "-f", "%k=%s\n"],
        "",
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..50).map(|i| format!("key{i}=value {i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    // The balanced consumer (JoinGroup/SyncGroup with librdkafka's assignor) reads it all and
    // commits; the worker then shows the group with no lag.
    let out = kcat(
        b,
        &[
            "-G",
            "kcat-group",
            "kc",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%s\n",
        ],
        "",
    );
    assert_eq!(out.lines().count(), 50, "{out}");
    wait_for("kcat's group commit", || {
        let g = get(&w.api, "/groups/kcat-group");
        g["partitions"].as_array().is_some_and(|ps| {
            ps.len() == 2 && ps.iter().all(|p| p["lag"] == 0 && p["committed"].is_i64())
        })
    });
}

#[test]
fn two_kcat_members_share_a_group_and_one_takes_over_when_the_other_leaves() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    let b = w.bootstrap.clone();
    create_topic(&w.api, "kg", 4);
    let numbers = |from: u32, to: u32| (from..to).map(|i| format!("{i}\n")).collect::<String>();
    kcat(&b, &["-P", "-t", "kg"], &numbers(0, 40));
    let member = |name: &str| {
        Command::new("kcat")
            .args([
                "-b",
                &b,
                "-G",
                "kgg",
                "kg",
                "-q",
                "-o",
                "beginning",
                "-f",
                "%s\n",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(work.path().join(name)).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let owners = || -> Vec<String> {
        let g = get(&w.api, "/groups/kgg");
        g["partitions"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["member"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let members = |owners: &[String]| {
        let mut m: Vec<&String> = owners.iter().filter(|o| !o.is_empty()).collect();
        m.sort();
        m.dedup();
        m.len()
    };
    let mut a = member("a.out");
    wait_for("the first member owns every partition", || {
        let o = owners();
        o.len() == 4 && members(&o) == 1
    });
    let mut second = member("b.out");
    wait_for("two members split the partitions", || {
        members(&owners()) == 2
    });
    // SIGTERM: kcat leaves the group (LeaveGroup); the other member takes over.
    let term = |child: &Child| {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
    };
    term(&second);
    second.wait().unwrap();
    wait_for("the remaining member owns every partition", || {
        let o = owners();
        o.len() == 4 && members(&o) == 1
    });
    kcat(&b, &["-P", "-t", "kg"], &numbers(40, 80));
    std::thread::sleep(Duration::from_secs(2));
    term(&a);
    a.wait().unwrap();
    let mut seen: Vec<u32> = ["a.out", "b.out"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(work.path().join(f))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..80).collect::<Vec<u32>>(),
        "every record reached the group"
    );
}

#[test]
fn a_sql_pipeline_reads_and_writes_topics_that_kafka_clients_use() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("pipelines")).unwrap();
    std::fs::write(
        work.path().join("pipelines/payments.toml"),
        r#"
sql = """
CREATE STREAM IF NOT EXISTS payments (account VARCHAR KEY, amount BIGINT)
  WITH (topic = 'payments');
CREATE STREAM IF NOT EXISTS big_payments WITH (topic = 'big_payments') AS
  SELECT account, amount FROM payments WHERE amount >= 500;
"""

[[topics]]
name = "payments"
partitions = 2
"#,
    )
    .unwrap();
    let w = KafkaWorker::start(work.path());
    let r = client("produce-json", &w.bootstrap, "payments", 100);
    assert_eq!(r["unflushed"], 0, "{r}");
    // amounts 0, 10, ..., 990: 50 of them are >= 500.
    let r = client("consume", &w.bootstrap, "big_payments", 50);
    let records = r["records"].as_array().unwrap();
    assert_eq!(records.len(), 50, "{r}");
    for rec in records {
        let key = rec[0].as_str().unwrap();
        let value: Value = serde_json::from_str(rec[1].as_str().unwrap()).unwrap();
        assert!(key.starts_with("acct-"), "{rec}");
        assert!(value["AMOUNT"].as_i64().unwrap() >= 500, "{rec}");
    }
}

#[test]
fn a_transactional_consume_transform_produce_loop_killed_and_restarted_is_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    let n = 400;
    let r = client("produce-numbers", &w.bootstrap, "ctp", n);
    assert_eq!(r["unflushed"], 0, "{r}");
    let seed: u64 = std::env::var("SLUICE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill schedule seed {seed} (SLUICE_KILL_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let python = venv().join("bin/python");
    let spawn = |round: usize| {
        Command::new(&python)
            .arg(clients_py())
            .args(["txn-loop", &w.bootstrap, "ctp", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join(format!("loop-{round}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    // SIGKILL the loop three times at random moments (inside a transaction, between two, or
    // while its group rebalances); each new instance fences the last one's open transaction.
    for round in 0..3 {
        let mut child = spawn(round);
        std::thread::sleep(Duration::from_millis(rng.random_range(800..4000)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut last = spawn(3);
    let status = {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = last.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "the loop never finished"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(work.path().join("loop-3.log")).unwrap_or_default()
    );
    // Every input record doubled exactly once in the committed output, and the group's
    // committed offsets cover the whole input.
    let r = client("consume", &w.bootstrap, "ctp-out", n);
    let mut values: Vec<i64> = r["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv[1].as_str().unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    let want: Vec<i64> = (0..n as i64).map(|i| i * 2).collect();
    assert_eq!(values, want, "lost or repeated output (seed {seed})");
    let group = get(&w.api, "/groups/ctp-ctp");
    let committed: i64 = group["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["committed"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(committed, n as i64, "{group}");
}

/// Writes a request frame: length, header v1 (key, version, correlation id, client id), body.
fn frame(key: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let client = b"fuzz";
    let len = 2 + 2 + 4 + 2 + client.len() + body.len();
    f.extend_from_slice(&(len as i32).to_be_bytes());
    f.extend_from_slice(&key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation.to_be_bytes());
    f.extend_from_slice(&(client.len() as i16).to_be_bytes());
    f.extend_from_slice(client);
    f.extend_from_slice(body);
    f
}

/// Sends bytes on a fresh connection; what came back before the server closed it (or the
/// read timed out).
fn exchange(addr: &str, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let closed = match s.read_to_end(&mut got) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (got, closed)
}

/// An ApiVersions v0 request answers with error 0 and the correlation id.
fn api_versions_ok(addr: &str) -> bool {
    let (got, _) = exchange(addr, &frame(18, 0, 42, &[]));
    got.len() > 10 && got[4..8] == 42i32.to_be_bytes() && got[8..10] == [0, 0]
}

/// Sends one request (header v1, client id "probe") and reads its answer's body.
fn request<R: kafka_protocol::protocol::Encodable>(
    addr: &str,
    key: i16,
    version: i16,
    body: &R,
) -> Vec<u8> {
    let mut encoded = bytes::BytesMut::new();
    body.encode(&mut encoded, version).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&frame(key, version, 9, &encoded)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    answer
}

#[test]
fn oversized_fetches_are_capped_and_bookkeeping_topics_stay_private() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    create_topic(&w.api, "big", 1);
    let value = "v".repeat(1000);
    let lines: String = (0..3000).map(|_| format!("{value}\n")).collect();
    kcat(&w.bootstrap, &["-P", "-t", "big"], &lines);
    // One partition named 2,000 times, each "up to 2 GB", and no total limit: the answer
    // carries the partition's 3 MB once, not 6 GB.
    let fetch = |topic: &str, copies: usize| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_bytes(0)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.into())))
                    .with_partitions(
                        (0..copies)
                            .map(|_| {
                                FetchPartition::default()
                                    .with_partition(0)
                                    .with_partition_max_bytes(i32::MAX)
                            })
                            .collect(),
                    ),
            ])
    };
    let answer = request(&w.bootstrap, 1, 4, &fetch("big", 2000));
    assert!(
        answer.len() < 8 << 20,
        "an answer of {} bytes",
        answer.len()
    );
    let mut body = bytes::Bytes::from(answer);
    let _correlation = bytes::Buf::get_i32(&mut body);
    let r = FetchResponse::decode(&mut body, 4).unwrap();
    let sizes: Vec<usize> = r.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
        .collect();
    assert_eq!(sizes.len(), 2000);
    assert!(
        sizes[0] > 3_000_000 && sizes[1..].iter().all(|s| *s == 0),
        "{:?}",
        &sizes[..3]
    );
    // The catalog holds pipelines' SQL with their secrets: not for Kafka clients.
    let answer = request(&w.bootstrap, 1, 4, &fetch("__sluice_catalog", 1));
    let mut body = bytes::Bytes::from(answer);
    let _ = bytes::Buf::get_i32(&mut body);
    let r = FetchResponse::decode(&mut body, 4).unwrap();
    assert_eq!(
        r.responses[0].partitions[0].error_code, 29,
        "TOPIC_AUTHORIZATION_FAILED"
    );
    let meta = kcat(&w.bootstrap, &["-L"], "");
    assert!(!meta.contains("__sluice"), "{meta}");
}

#[test]
fn corrupt_and_truncated_frames_close_only_their_connection() {
    let work = tempfile::tempdir().unwrap();
    let w = KafkaWorker::start(work.path());
    let b = w.bootstrap.as_str();
    create_topic(&w.api, "fz", 1);
    kcat(b, &["-P", "-t", "fz"], "one\ntwo\n");
    assert!(api_versions_ok(b));

    // ApiVersions above ours gets KIP-511's answer: UNSUPPORTED_VERSION and our range.
    let (got, _) = exchange(b, &frame(18, 99, 7, &[]));
    assert_eq!(&got[4..8], &7i32.to_be_bytes());
    assert_eq!(&got[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");

    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fuzz seed {seed} (SLUICE_FUZZ_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("negative length".into(), (-5i32).to_be_bytes().to_vec()),
        ("huge length".into(), i32::MAX.to_be_bytes().to_vec()),
        (
            "too short for a header".into(),
            [0, 0, 0, 3, 0, 18, 0].to_vec(),
        ),
        ("unknown api key".into(), frame(999, 0, 1, &[])),
        (
            "unsupported produce version".into(),
            frame(0, 1, 1, &[0; 16]),
        ),
        ("truncated body".into(), frame(3, 12, 1, &[0, 0, 0, 5, 1])),
        ("length past the end".into(), {
            let mut f = frame(3, 1, 1, &[0, 0, 0, 0]);
            f[3] += 50;
            f
        }),
        (
            "metadata with a 2 GB topic count".into(),
            frame(3, 4, 1, &[0x7f, 0xff, 0xff, 0xff, 0]),
        ),
        ("produce with garbage records".into(), {
            // v3: transactional id null, acks 1, timeout, one topic "fz", partition 0, 40 bytes.
            let mut body = vec![
                0xff, 0xff, 0, 1, 0, 0, 3, 0xe8, 0, 0, 0, 1, 0, 2, b'f', b'z',
            ];
            body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 40]);
            body.extend((0..40).map(|_| rng.random::<u8>()));
            frame(0, 3, 1, &body)
        }),
    ];
    for i in 0..40 {
        // Random bodies for random served APIs, and valid prefixes cut short.
        // Not JoinGroup and SyncGroup: a request that happens to decode would wait for a rebalance.
        let key = [0i16, 1, 2, 3, 8, 9, 10, 12, 13, 15, 19, 22][rng.random_range(0..12)];
        let version = rng.random_range(0..8);
        let len = rng.random_range(0..200);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        cases.push((
            format!("random {i}: api {key} v{version}"),
            frame(key, version, i, &body),
        ));
    }
    for (what, bytes) in &cases {
        let (_, closed) = exchange(b, bytes);
        assert!(closed, "{what}: the connection stayed open");
        assert!(api_versions_ok(b), "{what}: the listener stopped answering");
    }
    // Nothing was written by the garbage, and the records are intact.
    let out = kcat(
        b,
        &["-C", "-t", "fz", "-o", "beginning", "-e", "-f", "%s\n"],
        "",
    );
    assert_eq!(out, "one\ntwo\n");
    let log = std::fs::read_to_string(work.path().join("worker-0.log")).unwrap();
    assert!(
        log.contains("Closed a Kafka connection"),
        "each close is logged"
    );
    assert!(!log.contains("panicked"), "{log}");
}
