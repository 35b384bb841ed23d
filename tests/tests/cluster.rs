//! A cluster of `sluice run` processes on loopback: the metadata log elects a controller,
//! partitions are replicated with Kafka Fetch requests, leaders fail over, and real Kafka
//! clients (confluent-kafka, `tests/cluster/clients.py`) write through it all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_log::batch::decode_records;
use sluice_log::{Log, LogOptions};

use crate::common::{free_port, venv};

/// One node: its folder, Kafka port, how it reaches the others, and its process.
struct Node {
    id: u64,
    work: PathBuf,
    port: u16,
    /// Its `--cluster` list.
    spec: String,
    child: Option<Child>,
    round: usize,
    api: Option<String>,
    /// `SLUICE_FAULT` for its process: it aborts at that point of a commit.
    fault: Option<&'static str>,
    /// More arguments of `sluice run`.
    args: Vec<String>,
}

/// A TCP proxy to a port that can cut every connection through it (and refuse new ones):
/// a network partition between two nodes.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

fn proxy(runtime: &tokio::runtime::Runtime, target: u16) -> Proxy {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, watch) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            if *watch.borrow() {
                continue;
            }
            let mut cut = watch.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut ri, &mut wo) => {}
                    _ = tokio::io::copy(&mut ro, &mut wi) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    });
    Proxy { port, cut }
}

/// A cluster of nodes in one temporary folder; dropping it kills every node.
struct TestCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// With proxies: `proxies[(i, j)]` carries node i's connections to node j.
    proxies: std::collections::HashMap<(usize, usize), Proxy>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl TestCluster {
    fn start(n: u64) -> TestCluster {
        Self::start_with(n, false)
    }

    /// `n` nodes, node `i` started with `SLUICE_FAULT=point`.
    fn start_faulty(n: u64, i: usize, point: &'static str) -> TestCluster {
        Self::start_inner(n, false, Some((i, point)), &[])
    }

    /// `n` nodes; with `proxied`, each node reaches each other one through a [`Proxy`].
    fn start_with(n: u64, proxied: bool) -> TestCluster {
        Self::start_inner(n, proxied, None, &[])
    }

    /// `n` nodes; with `proxied`, each node reaches each other one through a [`Proxy`];
    /// `fault` arms a fault point in one node; every node runs with `args` too.
    fn start_inner(
        n: u64,
        proxied: bool,
        fault: Option<(usize, &'static str)>,
        args: &[String],
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                work: dir.path().join(format!("node-{id}")),
                port: free_port(),
                spec: String::new(),
                child: None,
                round: 0,
                api: None,
                fault: None,
                args: args.to_vec(),
            })
            .collect();
        if let Some((i, point)) = fault {
            nodes[i].fault = Some(point);
        }
        let runtime = proxied.then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        });
        let mut proxies = std::collections::HashMap::new();
        if let Some(rt) = &runtime {
            for i in 0..nodes.len() {
                for (j, target) in nodes.iter().enumerate() {
                    if i != j {
                        proxies.insert((i, j), proxy(rt, target.port));
                    }
                }
            }
        }
        for i in 0..nodes.len() {
            nodes[i].spec = (0..nodes.len())
                .map(|j| {
                    let port = proxies.get(&(i, j)).map_or(nodes[j].port, |p| p.port);
                    format!("{}@127.0.0.1:{port}", nodes[j].id)
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        let mut c = TestCluster {
            _dir: dir,
            nodes,
            proxies,
            _runtime: runtime,
        };
        for i in 0..c.nodes.len() {
            c.spawn(i);
        }
        c.wait_for(
            "a controller and every node alive",
            Duration::from_secs(60),
            |s| {
                s["controller"].is_u64()
                    && s["nodes"]
                        .as_array()
                        .is_some_and(|ns| ns.iter().all(|n| n["state"] == "alive"))
            },
        );
        c
    }

    /// Starts node `i` (again), and waits for its API.
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let spec = node.spec.clone();
        std::fs::create_dir_all(node.work.join("pipelines")).unwrap();
        let _ = std::fs::remove_file(node.work.join("data/worker.json"));
        let log =
            std::fs::File::create(node.work.join(format!("node-{}.log", node.round))).unwrap();
        node.round += 1;
        let mut child = Command::new(crate::cli::sluice_bin())
            .arg("--data-dir")
            .arg(node.work.join("data"))
            .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(node.work.join("pipelines"))
            .args(["--node-id", &node.id.to_string(), "--cluster", &spec])
            .args(&node.args)
            .args([
                "--cluster-session-timeout-ms",
                "2000",
                "--replica-lag-max-ms",
                "2000",
            ])
            .env("SLUICE_LOG", "info,openraft=warn")
            .env("SLUICE_FAULT", node.fault.unwrap_or_default())
            .env_remove("SLUICE_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.api = Some(crate::common::worker_api(&node.work, &mut child));
        node.child = Some(child);
    }

    /// Cuts (or restores) every connection between node `i` and the others.
    fn isolate(&self, i: usize, cut: bool) {
        for ((a, b), p) in &self.proxies {
            if *a == i || *b == i {
                p.cut.send_replace(cut);
            }
        }
    }

    fn signal(&mut self, i: usize, signal: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Waits (30 s at most) until node `i`, armed with fault `point`, has died there.
    fn wait_died(&mut self, i: usize, point: &str) {
        let start = Instant::now();
        let id = self.nodes[i].id;
        while self.nodes[i]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node {id} did not reach {point}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].api = None;
    }

    /// SIGKILLs the coordinator of `key` (the leader of its partition of `topic`,
    /// `__cluster_offsets` for a group, `__cluster_transactions` for a transactional id) and
    /// waits for another: the node's index, the partition, and the other nodes' addresses
    /// to bootstrap from.
    fn kill_coordinator(&mut self, topic: &str, key: &str) -> (usize, u64, String) {
        let partition = u64::from(sluice_log::partitioner::partition_for_key(
            key.as_bytes(),
            12,
        ));
        let coordinator = self.leader_of(topic, partition);
        let dead = self.nodes[coordinator].id;
        eprintln!("killing node {dead}, the coordinator of '{key}' ({topic}-{partition})");
        self.kill(coordinator);
        self.wait_for("a new coordinator", Duration::from_secs(30), |s| {
            partition_of(s, topic, partition)
                .is_some_and(|p| p["leader"].is_u64() && p["leader"] != dead)
        });
        let live = (0..self.nodes.len())
            .filter(|&i| i != coordinator)
            .map(|i| format!("127.0.0.1:{}", self.nodes[i].port))
            .collect::<Vec<_>>()
            .join(",");
        (coordinator, partition, live)
    }

    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `GET /cluster` from the first running node `which` accepts that answers.
    fn status_from(&self, which: impl Fn(usize) -> bool) -> Option<Value> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| which(*i))
            .filter_map(|(_, n)| n.api.as_ref())
            .find_map(|api| {
                http.get(format!("{api}/cluster"))
                    .send()
                    .ok()?
                    .text()
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            })
    }

    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_on(|_| true, what, timeout, ok)
    }

    /// [`Self::wait_for`] as the nodes `which` accepts see the cluster.
    fn wait_for_on(
        &self,
        which: impl Fn(usize) -> bool + Copy,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status_from(which);
            if let Some(s) = s.as_ref().filter(|s| ok(s)) {
                return s.clone();
            }
            assert!(
                start.elapsed() < timeout,
                "waited {timeout:?} for {what}; the cluster: {s:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The nodes' logs, for a failure's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for r in 0..n.round {
                let text = std::fs::read_to_string(n.work.join(format!("node-{r}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- node {} run {r}:\n", n.id));
                for l in tail.iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The index of the node that leads `topic`-`partition`.
    fn leader_of(&self, topic: &str, partition: u64) -> usize {
        let s = self.wait_for("a leader", Duration::from_secs(30), |s| {
            partition_of(s, topic, partition).is_some_and(|p| p["leader"].is_u64())
        });
        let leader = partition_of(&s, topic, partition).unwrap()["leader"]
            .as_u64()
            .unwrap();
        self.nodes.iter().position(|n| n.id == leader).unwrap()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(mut c) = self.nodes[i].child.take() {
                // A paused node must be woken to die.
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn partition_of<'a>(status: &'a Value, topic: &str, partition: u64) -> Option<&'a Value> {
    status["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)
}

fn clients(args: &[&str]) -> Value {
    let python = venv().join("bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/clients.py");
    let out = Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients.py {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("clients.py {args:?}: {e}: {stdout}"))
}

/// Every record of `topic`-`partition` in the data directory `data` (the node stopped).
fn records(data: &Path, topic: &str, partition: u32) -> Vec<(i64, String)> {
    let log = Log::open(data, LogOptions::default()).unwrap();
    let p = log.partition(topic, partition).unwrap();
    let mut out = Vec::new();
    let mut at = p.log_start_offset();
    let end = p.log_end_offset();
    while at < end {
        let data = p.fetch_replica(at, 1 << 20).unwrap().data;
        if data.is_empty() {
            break;
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let h = sluice_log::batch::BatchHeader::parse(rest).unwrap();
            let (batch, tail) = rest.split_at(h.total_size().min(rest.len()));
            rest = tail;
            at = h.next_offset();
            if h.is_control() {
                continue;
            }
            for r in decode_records(batch).unwrap() {
                let v = String::from_utf8_lossy(r.record.value.as_deref().unwrap_or_default());
                out.push((r.offset, v.into_owned()));
            }
        }
    }
    log.close().unwrap();
    out
}

/// acks=all writes go on while the leader of a partition is SIGKILLed again and again (and
/// restarted: it truncates whatever it wrote past the new leader's log); afterwards every
/// acknowledged record is on every replica, at its offset, once, in order.
#[test]
fn acks_all_writes_survive_leader_kills_and_every_replica_holds_them_once_in_order() {
    leader_kills(3);
}

/// The same with five nodes: replicas of three partitions spread over them.
#[test]
fn five_nodes_survive_leader_kills_with_every_acknowledged_record_on_every_replica() {
    leader_kills(5);
}

fn leader_kills(n: u64) {
    let seed: u64 = std::env::var("SLUICE_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("SLUICE_CLUSTER_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut cluster = TestCluster::start(n);
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "orders", "3", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let acked_file = cluster._dir.path().join("acked.jsonl");
    let python = venv().join("bin/python");
    let producer = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/clients.py"))
        .args(["produce_load", &bootstrap, "orders", "16"])
        .arg(&acked_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1500 + next() % 1500));
        let partition = next() % 3;
        let victim = cluster.leader_of("orders", partition);
        eprintln!(
            "killing node {} (leader of orders-{partition})",
            cluster.nodes[victim].id
        );
        cluster.kill(victim);
        std::thread::sleep(Duration::from_millis(1000 + next() % 2000));
        cluster.spawn(victim);
    }
    let out = producer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert_eq!(summary["unflushed"], 0, "{summary}");
    assert!(summary["acked"].as_u64().unwrap() > 1000, "{summary}");
    let settled = cluster.wait_for("every replica back in sync", Duration::from_secs(60), |s| {
        s["under_replicated_partitions"] == 0 && s["offline_partitions"] == 0
    });
    let replicas: Vec<Vec<u64>> = (0..3)
        .map(|p| {
            partition_of(&settled, "orders", p).unwrap()["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect()
        })
        .collect();
    // Followers copy what the leaders have within a fetch or two.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..cluster.nodes.len() {
        cluster.kill(i);
    }
    let acked: Vec<(u32, i64, String)> = std::fs::read_to_string(&acked_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for partition in 0..3u32 {
        // The nodes holding a copy of this partition.
        let copies: Vec<Vec<(i64, String)>> = cluster
            .nodes
            .iter()
            .filter(|n| replicas[partition as usize].contains(&n.id))
            .map(|n| records(&n.work.join("data"), "orders", partition))
            .collect();
        assert_eq!(copies.len(), 3);
        for (i, c) in copies.iter().enumerate().skip(1) {
            assert!(
                c == &copies[0],
                "orders-{partition}: replica {} has {} records, the first {} (seed {seed})",
                i + 1,
                c.len(),
                copies[0].len()
            );
        }
        let log = &copies[0];
        let at: std::collections::HashMap<i64, &str> =
            log.iter().map(|(o, v)| (*o, v.as_str())).collect();
        for (p, offset, value) in acked.iter().filter(|(p, _, _)| *p == partition) {
            assert_eq!(
                at.get(offset).copied(),
                Some(value.as_str()),
                "acknowledged {value} at orders-{p}@{offset} is not there (seed {seed})"
            );
        }
        // Once, in order: one idempotent producer's values only grow in a partition.
        let numbers: Vec<u64> = log.iter().map(|(_, v)| v[1..].parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "orders-{partition} repeats or reorders a record (seed {seed})"
        );
    }
}

/// A follower that stops (SIGSTOP) leaves the ISR, writes go on without it, and it returns
/// to the ISR when it runs again — even when retention on the leader deleted meanwhile what
/// it still lacked (it starts again at the leader's log start).
#[test]
fn a_paused_follower_leaves_the_isr_and_rejoins_when_resumed() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let created = clients(&[
        "create",
        &bootstrap,
        "pings",
        "1",
        "3",
        "segment.bytes=1024",
        "retention.bytes=4096",
    ]);
    assert_eq!(created["error"], Value::Null, "{created}");
    for value in ["a", "b", "c"] {
        let one = clients(&["produce_one", &bootstrap, "pings", "all", value]);
        assert_eq!(one["error"], Value::Null, "{one}");
    }
    let leader = cluster.leader_of("pings", 0);
    let follower = (leader + 1) % 3;
    let id = cluster.nodes[follower].id;
    cluster.signal(follower, "STOP");
    cluster.wait_for(
        "the paused follower out of the ISR",
        Duration::from_secs(30),
        |s| {
            partition_of(s, "pings", 0).is_some_and(|p| {
                p["isr"]
                    .as_array()
                    .is_some_and(|isr| isr.len() == 2 && !isr.contains(&id.into()))
            })
        },
    );
    let many = clients(&["produce_many", &bootstrap, "pings", "300"]);
    assert_eq!(many["error"], Value::Null, "{many}");
    let api = cluster.nodes[leader].api.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t: Value = serde_json::from_str(
            &reqwest::blocking::get(format!("{api}/topics/pings"))
                .unwrap()
                .text()
                .unwrap(),
        )
        .unwrap();
        if t["partitions"][0]["log_start_offset"].as_i64() > Some(10) {
            break;
        }
        assert!(Instant::now() < deadline, "retention never ran: {t}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = reqwest::blocking::get(format!("{api}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("sluice_cluster_under_replicated_partitions 1")
            && metrics.contains("sluice_cluster_leader_partitions 1"),
        "{metrics}"
    );
    cluster.signal(follower, "CONT");
    cluster.wait_for(
        "the follower back in the ISR",
        Duration::from_secs(30),
        |s| {
            partition_of(s, "pings", 0)
                .is_some_and(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
        },
    );
    let one = clients(&["produce_one", &bootstrap, "pings", "all", "last"]);
    assert_eq!(one["error"], Value::Null, "{one}");
    // A group's coordinator is the same node whichever node a client asks: offsets
    // committed through one are read through another.
    let first = format!("127.0.0.1:{}", cluster.nodes[0].port);
    let last = format!("127.0.0.1:{}", cluster.nodes[2].port);
    let read = clients(&["group_commit", &first, "pings", "watchers", "3"]);
    assert_eq!(read["read"], 3, "{read}");
    let offset = clients(&["committed", &last, "pings", "watchers"]);
    assert!(
        offset["offset"].as_i64() > Some(3),
        "past the deleted ones: {offset}"
    );
    for i in 0..3 {
        cluster.kill(i);
    }
    let copy = |i: usize| records(&cluster.nodes[i].work.join("data"), "pings", 0);
    let (theirs, ours) = (copy(leader), copy(follower));
    assert!(
        ours.first().is_some_and(|(o, _)| *o > 3),
        "the follower started again past what it had: {ours:?}"
    );
    assert_eq!(ours.last().map(|(_, v)| v.as_str()), Some("last"));
    let common: Vec<_> = theirs.iter().filter(|(o, _)| *o >= ours[0].0).collect();
    assert_eq!(
        common,
        ours.iter().collect::<Vec<_>>(),
        "the same records at the same offsets"
    );
}

/// A consumer group's coordinator is the leader of the group's partition of
/// `__cluster_offsets`: when that node is SIGKILLed, the partition's new leader coordinates
/// the group with the offsets committed before, and the group reads on from there — nothing
/// read twice, nothing skipped. A deletion is replicated too: the old coordinator, back and
/// leading again, does not bring the deleted group's offsets back.
#[test]
fn a_group_moves_with_its_offsets_when_its_coordinator_dies() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "events", "1", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let many = clients(&["produce_many", &bootstrap, "events", "10"]);
    assert_eq!(many["error"], Value::Null, "{many}");
    let read = clients(&["group_commit", &bootstrap, "events", "readers", "4"]);
    assert_eq!(
        (read["read"].as_u64(), read["first"].as_u64()),
        (Some(4), Some(0)),
        "{read}"
    );
    let (coordinator, partition, live) = cluster.kill_coordinator("__cluster_offsets", "readers");
    let offset = clients(&["committed", &live, "events", "readers"]);
    assert_eq!(offset["offset"], 4, "{offset}");
    let rest = clients(&["group_commit", &live, "events", "readers", "6"]);
    assert_eq!(
        (rest["read"].as_u64(), rest["first"].as_u64()),
        (Some(6), Some(4)),
        "{rest}"
    );
    // Deleted at the new coordinator; back, the old one catches up and (the preferred
    // replica) leads the partition again: it must not bring back the offsets its own log
    // last had.
    let deleted = clients(&["delete_group", &live, "readers"]);
    assert_eq!(deleted["error"], Value::Null, "{deleted}");
    let dead = cluster.nodes[coordinator].id;
    cluster.spawn(coordinator);
    cluster.wait_for("the old coordinator back", Duration::from_secs(60), |s| {
        partition_of(s, "__cluster_offsets", partition).is_some_and(|p| p["leader"] == dead)
    });
    let offset = clients(&["committed", &bootstrap, "events", "readers"]);
    assert!(offset["offset"].as_i64() < Some(0), "no offset: {offset}");
    let again = clients(&["group_commit", &bootstrap, "events", "readers", "10"]);
    assert_eq!(again["first"], 0, "from the start again: {again}");
}

/// A group keeps reading and committing while its coordinator is SIGKILLed twice (and
/// restarted each time, so leadership moves away and back): every record is read, and the
/// last commit is the end of every partition.
#[test]
fn a_group_reads_everything_while_its_coordinator_is_killed() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "stream", "3", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let many = clients(&["produce_many", &bootstrap, "stream", "1500"]);
    assert_eq!(many["error"], Value::Null, "{many}");
    let python = venv().join("bin/python");
    let consumer = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/clients.py"))
        .args([
            "consume_through",
            &bootstrap,
            "stream",
            "survivors",
            "1500",
            "120",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partition = u64::from(sluice_log::partitioner::partition_for_key(b"survivors", 12));
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        let victim = cluster.leader_of("__cluster_offsets", partition);
        eprintln!(
            "killing node {} (the group's coordinator)",
            cluster.nodes[victim].id
        );
        cluster.kill(victim);
        std::thread::sleep(Duration::from_secs(2));
        cluster.spawn(victim);
    }
    let out = consumer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    eprintln!("{result}");
    assert_eq!(result["distinct"], 1500, "every record read: {result}");
    let committed: i64 = result["final"]
        .as_object()
        .unwrap_or_else(|| panic!("no final commit: {result}"))
        .values()
        .filter_map(Value::as_i64)
        .sum();
    assert_eq!(
        committed, 1500,
        "the last commit is every partition's end: {result}"
    );
}

/// A Kafka transaction over partitions led by three different nodes: its coordinator writes
/// the markers of the partitions other nodes lead through those leaders (WriteTxnMarkers),
/// so a read_committed consumer sees the committed records of every partition and none of
/// the aborted ones; a consume-transform-produce loop's offsets reach its group's
/// coordinator with the transaction.
#[test]
fn a_transaction_commits_and_aborts_across_partitions_led_by_other_nodes() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "ledger", "3", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let status = cluster.wait_for("three leaders", Duration::from_secs(30), |s| {
        let leaders: std::collections::BTreeSet<u64> = (0..3)
            .filter_map(|p| partition_of(s, "ledger", p)?["leader"].as_u64())
            .collect();
        leaders.len() == 3
    });
    eprintln!("{status}");
    let done = clients(&["transact", &bootstrap, "ledger", "3", "payments-1"]);
    assert_eq!(done["error"], Value::Null, "{done}");
    let read = clients(&["read_committed", &bootstrap, "ledger", "3", "3"]);
    assert_eq!(
        read["values"],
        serde_json::json!(["committed-0", "committed-1", "committed-2"]),
        "{read}"
    );
    // Consume-transform-produce: the consumed offsets ride in the transactions and reach
    // the group's coordinator (another node, as likely as not), which settles and
    // replicates them when the transaction commits.
    let created = clients(&["create", &bootstrap, "requests", "1", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let many = clients(&["produce_many", &bootstrap, "requests", "50"]);
    assert_eq!(many["error"], Value::Null, "{many}");
    let moved = clients(&[
        "transform",
        &bootstrap,
        "requests",
        "ledger",
        "movers",
        "mover-1",
        "50",
    ]);
    assert_eq!(moved["error"], Value::Null, "{moved}");
    assert_eq!(moved["moved"], 50, "{moved}");
    let offset = clients(&["committed", &bootstrap, "requests", "movers"]);
    assert_eq!(offset["offset"], 50, "{offset}");
    let read = clients(&["read_committed", &bootstrap, "ledger", "3", "53"]);
    // The offsets were replicated when the transactions committed: the group's next
    // coordinator has them.
    let (coordinator, _, live) = cluster.kill_coordinator("__cluster_offsets", "movers");
    let offset = clients(&["committed", &live, "requests", "movers"]);
    assert_eq!(
        offset["offset"], 50,
        "after the coordinator's death: {offset}"
    );
    // Once more with the transaction's coordinator on the group's coordinator's node (an id
    // whose partition of `__cluster_transactions` that node leads), where the offsets are
    // settled without a WriteTxnMarkers.
    cluster.spawn(coordinator);
    let partition = u64::from(sluice_log::partitioner::partition_for_key(b"movers-2", 12));
    let group_node = cluster.nodes[cluster.leader_of("__cluster_offsets", partition)].id;
    let status = cluster.wait_for("every node back", Duration::from_secs(60), |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["state"] == "alive"))
    });
    let txn_node = |id: &str| {
        let p = sluice_log::partitioner::partition_for_key(id.as_bytes(), 12);
        partition_of(&status, "__cluster_transactions", u64::from(p))
            .and_then(|p| p["leader"].as_u64())
    };
    let same = (0..200)
        .map(|i| format!("mover-{i}"))
        .find(|id| txn_node(id) == Some(group_node))
        .unwrap();
    eprintln!("transactions of {same} and the group movers-2 both on node {group_node}");
    let moved = clients(&[
        "transform",
        &bootstrap,
        "requests",
        "ledger",
        "movers-2",
        &same,
        "50",
    ]);
    assert_eq!(moved["error"], Value::Null, "{moved}");
    let offset = clients(&["committed", &bootstrap, "requests", "movers-2"]);
    assert_eq!(offset["offset"], 50, "{offset}");
    let values = read["values"].as_array().unwrap();
    assert_eq!(values.len(), 53, "{read}");
    let moved_values = values
        .iter()
        .filter(|v| v.as_str().is_some_and(|v| v.starts_with("moved-")))
        .count();
    assert_eq!(moved_values, 50, "each moved once: {read}");
}

/// A Kafka client's transaction left open in `clients.py hold_transaction` (one record in
/// each partition of `topic`), its process and the JSON line it printed last.
struct HeldTransaction(Child);

impl HeldTransaction {
    fn open(bootstrap: &str, topic: &str, id: &str, prefix: &str, timeout_ms: &str) -> Self {
        Self::start(&[
            "hold_transaction",
            bootstrap,
            topic,
            "3",
            id,
            prefix,
            timeout_ms,
        ])
    }

    /// `clients.py` with `args`, once it printed that it is ready.
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(venv().join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/clients.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("\"ready\": true"), "{args:?}: {line}");
        HeldTransaction(child)
    }

    /// Ends it ("commit" or "abort"): what the client says.
    fn end(mut self, how: &str) -> Value {
        use std::io::Write;
        writeln!(self.0.stdin.take().unwrap(), "{how}").unwrap();
        let out = self.0.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    }

    /// SIGKILLs the client: the transaction is abandoned.
    fn abandon(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A transactional id's coordinator is the leader of the id's partition of
/// `__cluster_transactions`, whose records every in-sync replica has before an answer.
/// SIGKILLed between a transaction's records and its commit, the partition's next leader
/// coordinates the id from those records and the commit goes through there; a transaction
/// whose producer and coordinator both die is aborted by the next coordinator once its
/// timeout passes (read_committed consumers get past it); and the first id starts again
/// wherever its coordinator is then.
#[test]
fn a_transaction_survives_the_death_of_its_coordinator() {
    // The third node aborts once a transaction's decision is durable, before any marker.
    let mut cluster = TestCluster::start_faulty(3, 2, "txn-after-prepare");
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "orders", "3", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let warm = clients(&["init_only", &bootstrap, "warm-up"]);
    assert_eq!(warm["error"], Value::Null, "{warm}");
    let faulty = cluster.nodes[2].id;
    let status = cluster.wait_for("transaction coordinators", Duration::from_secs(30), |s| {
        (0..12).all(|p| {
            partition_of(s, "__cluster_transactions", p).is_some_and(|p| p["leader"].is_u64())
        })
    });
    let decided = (0..500)
        .map(|i| format!("till-{i}"))
        .find(|id| {
            let p = sluice_log::partitioner::partition_for_key(id.as_bytes(), 12);
            partition_of(&status, "__cluster_transactions", u64::from(p))
                .is_some_and(|p| p["leader"] == faulty)
        })
        .expect("an id the third node coordinates");
    // Its commit is decided there, and the node dies: the next coordinator reads the
    // decision and writes the markers; the client's retried EndTxn then succeeds.
    let held = HeldTransaction::open(&bootstrap, "orders", &decided, "decided", "60000");
    let ended = held.end("commit");
    assert_eq!(
        ended["error"],
        Value::Null,
        "decided, then ended elsewhere: {ended}"
    );
    cluster.kill(2);
    cluster.nodes[2].fault = None;
    cluster.spawn(2);
    let held = HeldTransaction::open(&bootstrap, "orders", "clerk-1", "first", "60000");
    let (dead, _, _) = cluster.kill_coordinator("__cluster_transactions", "clerk-1");
    let ended = held.end("commit");
    assert_eq!(
        ended["error"],
        Value::Null,
        "committed at the next coordinator: {ended}"
    );
    cluster.spawn(dead);
    // Abandoned: its records stay open until the next coordinator aborts them at the
    // timeout; the record after them in partition 0 is readable (read_committed) only then.
    let held = HeldTransaction::open(&bootstrap, "orders", "clerk-2", "abandoned", "6000");
    held.abandon();
    let (dead, _, live) = cluster.kill_coordinator("__cluster_transactions", "clerk-2");
    let after = clients(&["produce_to", &live, "orders", "0", "after"]);
    assert_eq!(after["error"], Value::Null, "{after}");
    // "after" and one record per partition of each committed transaction, as read.
    let expected = |committed: &[&str]| {
        let mut v = vec!["after".to_string()];
        for c in committed {
            v.extend((0..3).map(|i| format!("{c}-{i}")));
        }
        v.sort();
        serde_json::json!(v)
    };
    let read = clients(&["read_committed", &live, "orders", "3", "7"]);
    assert_eq!(
        read["values"],
        expected(&["decided", "first"]),
        "{read}\n{}",
        cluster.logs()
    );
    cluster.spawn(dead);
    let again = clients(&["transact", &bootstrap, "orders", "3", "clerk-1"]);
    assert_eq!(again["error"], Value::Null, "{again}");
    let read = clients(&["read_committed", &bootstrap, "orders", "3", "10"]);
    assert_eq!(
        read["values"],
        expected(&["committed", "decided", "first"]),
        "{read}"
    );
}

/// A consume-transform-produce transaction's offsets are replicated before the
/// TxnOffsetCommit is answered (in a transactional batch the commit marker ends there too):
/// the group's coordinator SIGKILLed between `send_offsets_to_transaction` and the commit,
/// the commit still moves the group's offset at the next coordinator, so nothing is read
/// twice (before, a move at that moment lost the offsets and the records were read again).
#[test]
fn a_transactions_offsets_survive_the_death_of_the_groups_coordinator() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    for topic in ["inbox", "outbox"] {
        let created = clients(&["create", &bootstrap, topic, "1", "3"]);
        assert_eq!(created["error"], Value::Null, "{created}");
    }
    let many = clients(&["produce_many", &bootstrap, "inbox", "10"]);
    assert_eq!(many["error"], Value::Null, "{many}");
    let held = HeldTransaction::start(&[
        "hold_transform",
        &bootstrap,
        "inbox",
        "outbox",
        "carriers",
        "carrier-1",
        "10",
    ]);
    let (dead, partition, live) = cluster.kill_coordinator("__cluster_offsets", "carriers");
    let ended = held.end("commit");
    assert_eq!(
        (&ended["error"], &ended["moved"]),
        (&Value::Null, &serde_json::json!(10)),
        "{ended}"
    );
    let offset = clients(&["committed", &live, "inbox", "carriers"]);
    assert_eq!(offset["offset"], 10, "at the next coordinator: {offset}");
    let read = clients(&["read_committed", &live, "outbox", "1", "10"]);
    assert_eq!(read["values"].as_array().map(Vec::len), Some(10), "{read}");
    // Back and leading the group's partition again (the preferred replica), the old
    // coordinator reads the commit from the partition, not its own stale state.
    let old = cluster.nodes[dead].id;
    cluster.spawn(dead);
    cluster.wait_for("the old coordinator back", Duration::from_secs(60), |s| {
        partition_of(s, "__cluster_offsets", partition).is_some_and(|p| p["leader"] == old)
    });
    let offset = clients(&["committed", &bootstrap, "inbox", "carriers"]);
    assert_eq!(
        offset["offset"], 10,
        "at the old coordinator again: {offset}"
    );
}

/// With `min.insync.replicas=3`, an acks=all write is refused once a replica is gone, and
/// acks=1 still works; with two of three nodes gone no metadata change is possible.
#[test]
fn min_insync_replicas_refuses_acks_all_and_metadata_needs_a_majority() {
    let mut cluster = TestCluster::start(3);
    let bootstrap = cluster.bootstrap();
    let created = clients(&[
        "create",
        &bootstrap,
        "strict",
        "1",
        "3",
        "min.insync.replicas=3",
    ]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let too_many = clients(&["create", &bootstrap, "wide", "1", "4"]);
    assert_eq!(
        too_many["error"], "INVALID_REPLICATION_FACTOR",
        "{too_many}"
    );
    // The REST API creates replicated topics through the controller too.
    let api = cluster.nodes[1].api.clone().unwrap();
    let http = reqwest::blocking::Client::new();
    let post = |body: Value| {
        let r = http
            .post(format!("{api}/topics"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, body) = post(serde_json::json!({"name": "rest", "partitions": 2}));
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"partition\":1"), "this node's copy: {body}");
    let status = cluster.wait_for(
        "the REST topic in the metadata",
        Duration::from_secs(10),
        |s| partition_of(s, "rest", 1).is_some(),
    );
    for p in 0..2 {
        let replicas = &partition_of(&status, "rest", p).unwrap()["replicas"];
        assert_eq!(replicas.as_array().map(Vec::len), Some(3), "{status}");
    }
    let (code, body) = post(serde_json::json!({"name": "rest"}));
    assert_eq!(code, 409, "{body}");
    let (code, body) = post(serde_json::json!({"name": "wider", "replication_factor": 4}));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("replication factor 4"), "{body}");
    let deleted = http.delete(format!("{api}/topics/rest")).send().unwrap();
    assert_eq!(deleted.status().as_u16(), 400);
    assert!(
        deleted
            .text()
            .unwrap()
            .contains("replicated in the cluster")
    );
    let ok = clients(&["produce_one", &bootstrap, "strict", "all"]);
    assert_eq!(ok["error"], Value::Null, "{ok}");
    let leader = cluster.leader_of("strict", 0);
    let follower = (leader + 1) % 3;
    // The REST API's producer (the embedded one) answers acks=all once every in-sync
    // replica has the records: the followers' copies end past them as soon as it answers.
    let leader_api = cluster.nodes[leader].api.clone().unwrap();
    let produce = |acks: &str| {
        let r = http
            .post(format!("{leader_api}/topics/strict/records{acks}"))
            .body("{\"value\": \"one\"}\n{\"value\": \"two\"}\n")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, body) = produce("");
    assert_eq!(code, 200, "{body}");
    for i in [follower, (leader + 2) % 3] {
        let api = cluster.nodes[i].api.clone().unwrap();
        let t: Value = serde_json::from_str(
            &http
                .get(format!("{api}/topics/strict"))
                .send()
                .unwrap()
                .text()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(t["partitions"][0]["log_end_offset"], 3, "node {i}: {t}");
    }
    let wrong = http
        .post(format!("{api}/topics/strict/records"))
        .body("{\"value\": \"x\"}\n")
        .send()
        .unwrap();
    if leader != 1 {
        assert_eq!(wrong.status().as_u16(), 503, "a follower takes no write");
        let text = wrong.text().unwrap();
        let leader_id = cluster.nodes[leader].id;
        assert!(
            text.contains(&format!("(node {leader_id} at 127.0.0.1:"))
                && text.contains("write to its leader"),
            "names the leader: {text}"
        );
    }
    cluster.kill(follower);
    cluster.wait_for("the ISR down to two", Duration::from_secs(30), |s| {
        partition_of(s, "strict", 0)
            .is_some_and(|p| p["isr"].as_array().is_some_and(|i| i.len() == 2))
    });
    let refused = clients(&["produce_one", &bootstrap, "strict", "all"]);
    assert_eq!(refused["error"], "NOT_ENOUGH_REPLICAS", "{refused}");
    let (code, body) = produce("");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("min.insync.replicas 3"), "{body}");
    let (code, body) = produce("?acks=1");
    assert_eq!(code, 200, "{body}");
    let (code, body) = produce("?acks=2");
    assert_eq!(code, 400, "{body}");
    let one = clients(&["produce_one", &bootstrap, "strict", "1"]);
    assert_eq!(one["error"], Value::Null, "{one}");
    let other = (leader + 2) % 3;
    cluster.kill(other);
    cluster.wait_for("no controller", Duration::from_secs(30), |s| {
        s["controller"].is_null()
    });
    let created = clients(&["create", &bootstrap, "later", "1", "1"]);
    assert_ne!(created["error"], Value::Null, "{created}");
}

/// A network partition cuts a partition's leader off from the other nodes (a TCP proxy
/// between every two nodes; clients still reach it). The majority elects a new leader in a
/// new epoch and takes acks=all writes; the cut-off leader acknowledges no acks=all write,
/// and the acks=1 write it took alone is gone from every replica after the partition heals.
#[test]
fn a_partitioned_leader_acknowledges_no_acks_all_write_and_its_tail_is_truncated() {
    let mut cluster = TestCluster::start_with(3, true);
    let bootstrap = cluster.bootstrap();
    let created = clients(&["create", &bootstrap, "split", "1", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let before = clients(&["produce_one", &bootstrap, "split", "all", "before"]);
    assert_eq!(before["error"], Value::Null, "{before}");
    let old = cluster.leader_of("split", 0);
    let old_id = cluster.nodes[old].id;
    let old_addr = format!("127.0.0.1:{}", cluster.nodes[old].port);
    cluster.isolate(old, true);
    // The cut-off leader still thinks it leads: acks=1 is taken, acks=all never is.
    let stale = clients(&["produce_one", &old_addr, "split", "1", "stale"]);
    assert_eq!(stale["error"], Value::Null, "{stale}");
    let refused = clients(&["produce_one", &old_addr, "split", "all", "refused"]);
    assert_ne!(refused["error"], Value::Null, "{refused}");
    let majority = move |i: usize| i != old;
    let s = cluster.wait_for_on(
        majority,
        "a new leader on the majority side",
        Duration::from_secs(30),
        |s| {
            partition_of(s, "split", 0)
                .is_some_and(|p| p["leader"].is_u64() && p["leader"] != old_id)
        },
    );
    assert!(
        partition_of(&s, "split", 0).unwrap()["leader_epoch"]
            .as_i64()
            .unwrap()
            >= 1
    );
    let others: String = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != old)
        .map(|(_, n)| format!("127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let after = clients(&["produce_one", &others, "split", "all", "majority"]);
    assert_eq!(after["error"], Value::Null, "{after}");
    let refused_again = clients(&["produce_one", &old_addr, "split", "all", "refused"]);
    assert_ne!(refused_again["error"], Value::Null, "{refused_again}");
    cluster.isolate(old, false);
    cluster.wait_for(
        "the old leader back in the ISR",
        Duration::from_secs(60),
        |s| {
            partition_of(s, "split", 0)
                .is_some_and(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..cluster.nodes.len() {
        cluster.kill(i);
    }
    let copies: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|n| {
            records(&n.work.join("data"), "split", 0)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        })
        .collect();
    for c in &copies {
        assert_eq!(
            c,
            &vec!["before".to_string(), "majority".to_string()],
            "{copies:?}"
        );
    }
}

/// With `--cluster-secret-file`, the nodes prove the secret to each other (SASL
/// SCRAM-SHA-256) on every connection, here over TLS (`--kafka-tls-cert`, peers verified
/// with `--cluster-tls-ca`): the cluster forms and replicates with Kafka users in place; a
/// client authenticated as a user, not as a node, gets CLUSTER_AUTHORIZATION_FAILED for a
/// replica fetch and for transaction markers; a node started with another secret takes no
/// part (it stays fenced) until it has the right one.
#[test]
fn nodes_with_a_secret_admit_only_each_other_to_the_clusters_requests() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
        WriteTxnMarkersRequest, WriteTxnMarkersResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_cluster::auth::Secret;
    let secrets = tempfile::tempdir().unwrap();
    let right = secrets.path().join("secret");
    std::fs::write(&right, "the-cluster-secret-of-this-test\n").unwrap();
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "another-secret-entirely-here\n").unwrap();
    let alice = "alice-password-123";
    crate::postgres_cdc::server_cert(secrets.path());
    let ca = secrets.path().join("ca.crt");
    let path = |name: &str| secrets.path().join(name).display().to_string();
    let args = |secret: &Path| {
        vec![
            "--cluster-secret-file".to_string(),
            secret.display().to_string(),
            "--kafka-users".to_string(),
            format!("alice:{alice}"),
            "--kafka-tls-cert".to_string(),
            path("server.crt"),
            "--kafka-tls-key".to_string(),
            path("server.key"),
            "--cluster-tls-ca".to_string(),
            path("ca.crt"),
        ]
    };
    let mut cluster = TestCluster::start_inner(3, false, None, &args(&right));
    let bootstrap = cluster.bootstrap();
    let as_alice = |a: &[&str]| {
        let python = venv().join("bin/python");
        let out = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/clients.py"))
            .args(a)
            .env("SLUICE_TEST_SASL", format!("alice:{alice}"))
            .env("SLUICE_TEST_SSL_CA", &ca)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{a:?}: {stdout}");
        serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default()).unwrap()
    };
    let created = as_alice(&["create", &bootstrap, "guarded", "1", "3"]);
    assert_eq!(created["error"], Value::Null, "{created}");
    let written = as_alice(&["produce_to", &bootstrap, "guarded", "0", "kept"]);
    assert_eq!(written["error"], Value::Null, "{written}");
    // Replicated: the followers authenticated to fetch.
    cluster.wait_for("three in sync", Duration::from_secs(30), |s| {
        partition_of(s, "guarded", 0)
            .is_some_and(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
    });
    let read = as_alice(&["read_committed", &bootstrap, "guarded", "1", "1"]);
    assert_eq!(read["values"], serde_json::json!(["kept"]), "{read}");

    // A user is not a node.
    let leader = cluster.leader_of("guarded", 0);
    let addr = format!("127.0.0.1:{}", cluster.nodes[leader].port);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = sluice_cluster::transport::PeerTls::from_ca_file(&ca).unwrap();
    let mut conn = sluice_kafka::client::PeerConnection::new(addr, "intruder".into())
        .with_tls(Some(tls))
        .with_user("alice", Secret::new(alice).unwrap());
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(2))
        .with_max_wait_ms(0)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("guarded")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let fetched: FetchResponse = runtime
        .block_on(conn.call(ApiKey::Fetch, 11, &fetch, Duration::from_secs(10)))
        .unwrap();
    let code = fetched.responses[0].partitions[0].error_code;
    assert_eq!(code, 31, "CLUSTER_AUTHORIZATION_FAILED for a replica fetch");
    let markers = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(1))
            .with_producer_epoch(0)
            .with_transaction_result(true)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("guarded")))
                    .with_partition_indexes(vec![0]),
            ]),
    ]);
    let marked: WriteTxnMarkersResponse = runtime
        .block_on(conn.call(
            ApiKey::WriteTxnMarkers,
            1,
            &markers,
            Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(marked.markers[0].topics[0].partitions[0].error_code, 31);

    // A node with another secret: the others do not take its heartbeats.
    let third = cluster.nodes[2].id;
    cluster.kill(2);
    cluster.wait_for_on(
        |i| i != 2,
        "the third node fenced",
        Duration::from_secs(30),
        |s| node_state(s, third) == Some("fenced"),
    );
    cluster.nodes[2].args = args(&wrong);
    cluster.spawn(2);
    std::thread::sleep(Duration::from_secs(6));
    let s = cluster.status_from(|i| i == 0).unwrap();
    assert_eq!(node_state(&s, third), Some("fenced"), "{s:#}");
    cluster.kill(2);
    cluster.nodes[2].args = args(&right);
    cluster.spawn(2);
    cluster.wait_for("the third node back", Duration::from_secs(60), |s| {
        node_state(s, third) == Some("alive")
    });
}

/// A node's state in `GET /cluster` ("alive", "fenced").
fn node_state(status: &Value, id: u64) -> Option<&str> {
    status["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["state"].as_str()
}

/// `GET /pipelines` of node `i`, if it answers.
fn pipelines_of(c: &TestCluster, i: usize) -> Option<Value> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let api = c.nodes[i].api.as_ref()?;
    let text = http
        .get(format!("{api}/pipelines"))
        .send()
        .ok()?
        .text()
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The nodes (by index) that run pipeline `name` now, as their APIs say.
fn running(c: &TestCluster, name: &str) -> Vec<usize> {
    (0..c.nodes.len())
        .filter(|&i| {
            pipelines_of(c, i).is_some_and(|v| {
                v["pipelines"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name))
            })
        })
        .collect()
}

/// Waits (90 s at most) until the file sink's output in `out` holds `at_least` ids (at
/// JSON pointer `id`): them.
fn wait_ids(c: &TestCluster, out: &Path, id: &str, at_least: u64, what: &str) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let ids = output_ids(out, id);
        if ids.len() as u64 >= at_least {
            return ids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what}: {} out of {at_least}\n{}",
            ids.len(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `ids` holds each of `expected` once, and nothing else.
fn assert_once(ids: &[u64], expected: std::ops::Range<u64>) {
    let mut seen = std::collections::BTreeMap::new();
    for id in ids {
        *seen.entry(*id).or_insert(0u32) += 1;
    }
    let repeated: Vec<&u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| i)
        .collect();
    let lost: Vec<u64> = expected.clone().filter(|i| !seen.contains_key(i)).collect();
    let stray: Vec<&u64> = seen.keys().filter(|i| !expected.contains(*i)).collect();
    assert!(
        repeated.is_empty() && lost.is_empty() && stray.is_empty(),
        "{} ids out of {}; repeated {:?}…, lost {:?}…, unexpected {:?}…",
        ids.len(),
        expected.end - expected.start,
        &repeated[..repeated.len().min(10)],
        &lost[..lost.len().min(10)],
        &stray[..stray.len().min(10)]
    );
}

/// The ids (at JSON pointer `id` in each line) in the file sink's output folder, in the
/// order of the files and their lines.
fn output_ids(out: &Path, id: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for f in output_files(out) {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {line:?}: {e}", f.display()));
            ids.push(
                v.pointer(id)
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("{}: no {id} in {line}", f.display())),
            );
        }
    }
    ids
}

/// Writes pipeline `moving` on every node and waits until one runs it: its index. It takes
/// the lines appended to `input/*.jsonl` into topic `events` (2 partitions, keyed by `k`),
/// commits every 200 ms, runs `sql` if given, and has a file sink per `(name, topic,
/// folder, roll-records)`.
fn deploy_moving(
    c: &TestCluster,
    sql: Option<&str>,
    input: &Path,
    sinks: &[(&str, &str, &Path, u32)],
) -> usize {
    let mut pipeline = "name = \"moving\"\ncommit-interval = \"200ms\"\n".to_string();
    if let Some(sql) = sql {
        pipeline.push_str(&format!("sql = \"\"\"{sql}\"\"\"\n"));
    }
    pipeline.push_str(&format!(
        r#"
[[topics]]
name = "events"
partitions = 2

[[sources]]
name = "lines"
topic = "events"
file = {{ path = "{}/*.jsonl", format = "json", key-field = "k" }}
"#,
        input.display()
    ));
    for (name, topic, folder, roll) in sinks {
        pipeline.push_str(&format!(
            "\n[[sinks]]\nname = \"{name}\"\ntopic = \"{topic}\"\nfile = {{ path = \"{}\", roll-records = {roll} }}\n",
            folder.display()
        ));
    }
    for n in &c.nodes {
        std::fs::write(n.work.join("pipelines/moving.toml"), &pipeline).unwrap();
    }
    wait_running(c, "moving", None, Duration::from_secs(60))
}

/// The JSON-lines files of the file sink's output folder `out`, in order.
fn output_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    files
}

/// Appends lines `{"id": from..to}` to `file`, 50 every 100 ms.
fn append_lines(file: PathBuf, ids: std::ops::Range<u64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        for chunk in ids.collect::<Vec<_>>().chunks(50) {
            let mut text = String::new();
            for id in chunk {
                text.push_str(&format!("{{\"id\": {id}, \"k\": \"k{}\"}}\n", id % 7));
            }
            f.write_all(text.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Waits until exactly one node runs pipeline `name` and it is not `not`: its index.
///
/// Two nodes may both list it for a moment while it moves (the new leader of its partition
/// starts it before the former one has seen the change and stopped it; fencing keeps the
/// output whole), but not for long.
fn wait_running(c: &TestCluster, name: &str, not: Option<usize>, timeout: Duration) -> usize {
    let start = Instant::now();
    let mut overlap: Option<Instant> = None;
    loop {
        let on = running(c, name);
        if on.len() > 1 {
            let since = *overlap.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(3),
                "the pipeline runs on nodes {on:?} at once for 3 s\n{}",
                c.logs()
            );
        } else {
            overlap = None;
        }
        if let [n] = on[..]
            && Some(n) != not
        {
            return n;
        }
        assert!(
            start.elapsed() < timeout,
            "no node (but {not:?}) runs the pipeline after {timeout:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipeline (file source → its topic → file sink, exactly once) runs on one node of
/// three while lines are appended to its input: SIGKILLed there mid-stream, it moves to
/// another node and resumes from its committed positions; restarted, the node takes its
/// partitions' leadership back (the preferred replica) and the pipeline moves home again.
/// The output holds every line once.
#[test]
fn a_pipeline_moved_after_its_node_dies_with_no_lost_or_repeated_output() {
    pipeline_moves(None);
}

/// As above, the node dying at the first commit whose decision is durable and whose
/// markers are not written: the pipeline's next node completes that commit.
#[test]
fn a_pipeline_moved_after_its_node_dies_between_a_commits_decision_and_markers() {
    pipeline_moves(Some("txn-after-prepare"));
}

/// As above, the node dying once a sink's files are written and synced, its offsets not
/// committed: the next node writes the same files again.
#[test]
fn a_pipeline_moved_after_its_node_dies_between_a_sinks_flush_and_commit() {
    pipeline_moves(Some("sink-after-flush"));
}

/// A pipeline with an HTTP source runs on one node; the others answer 503 naming it, and
/// it takes the records.
fn http_ingest_goes_to_the_pipelines_node(c: &TestCluster) {
    let pipeline = "name = \"posting\"\n[[topics]]\nname = \"posted\"\npartitions = 1\n[[sources]]\nname = \"http\"\ntopic = \"posted\"\nhttp = { }\n";
    for n in &c.nodes {
        std::fs::write(n.work.join("pipelines/posting.toml"), pipeline).unwrap();
    }
    let home = wait_running(c, "posting", None, Duration::from_secs(60));
    let http = reqwest::blocking::Client::new();
    let post = |i: usize| {
        let api = c.nodes[i].api.as_ref().unwrap();
        let r = http
            .post(format!("{api}/ingest/posted"))
            .header("content-type", "application/json")
            .body(r#"{"n": 1}"#)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    for i in (0..3).filter(|&i| i != home) {
        let (status, body) = post(i);
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains(&format!("runs on node {}", c.nodes[home].id)),
            "{body}"
        );
    }
    let (status, body) = post(home);
    assert_eq!(status, 200, "{body}");
}

/// The node running the test's pipeline `moving` at first: the leader of its partition of
/// `__cluster_transactions` (the murmur2 of its name, 12 partitions), which is that
/// partition's preferred replica, placed from the topic's name over nodes 1, 2, 3.
const MOVING_HOME: usize = 2;

fn pipeline_moves(fault: Option<&'static str>) {
    const LINES: u64 = 8_000;
    const MORE: u64 = 1_000;
    let mut c = match fault {
        Some(point) => TestCluster::start_faulty(3, MOVING_HOME, point),
        None => TestCluster::start(3),
    };
    let shared = c._dir.path().join("shared");
    let (input, out) = (shared.join("in"), shared.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let home = deploy_moving(&c, None, &input, &[("files", "events", &out, 400)]);
    eprintln!("the pipeline runs on node {}", c.nodes[home].id);
    assert_eq!(
        home, MOVING_HOME,
        "the placement of __cluster_transactions changed"
    );
    let status = c.status_from(|_| true).unwrap();
    assert_eq!(
        status["pipelines"],
        serde_json::json!([{"name": "moving", "node": c.nodes[home].id}])
    );
    assert!(
        status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pipeline"] == "moving")
            .all(|p| p["leader"] == c.nodes[home].id),
        "{status:#}"
    );
    for i in (0..3).filter(|&i| i != home) {
        let elsewhere = pipelines_of(&c, i).unwrap()["elsewhere"].clone();
        assert_eq!(
            elsewhere,
            serde_json::json!([{"name": "moving", "node": c.nodes[home].id}]),
            "node {}",
            c.nodes[i].id
        );
        let api = c.nodes[i].api.as_ref().unwrap();
        let r = reqwest::blocking::get(format!("{api}/pipelines/moving/offsets")).unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let body = r.text().unwrap();
        assert!(
            body.contains(&format!("runs on node {}", c.nodes[home].id)),
            "{body}"
        );
    }
    // What cannot move between nodes yet is refused, saying why.
    let dir = c.nodes[0].work.join("pipelines");
    std::fs::write(
        dir.join("undeclared.toml"),
        format!(
            "name = \"undeclared\"\n[[sources]]\nname = \"lines\"\ntopic = \"elsewhere\"\nfile = {{ path = \"{}/*.txt\" }}\n",
            input.display()
        ),
    )
    .unwrap();
    if fault.is_none() {
        http_ingest_goes_to_the_pipelines_node(&c);
        // No Kafka client may take a task's transactional id (and fence the task).
        let taken = clients(&["init_only", &c.bootstrap(), "sluice-source-moving/lines"]);
        assert_eq!(
            taken["error"], "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            "{taken}"
        );
    }
    let start = Instant::now();
    loop {
        let broken = pipelines_of(&c, 0).unwrap()["broken_files"].to_string();
        if broken.contains("writes topic 'elsewhere', which the pipeline does not declare") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{broken}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let wait_output =
        |c: &TestCluster, at_least: u64, what: &str| wait_ids(c, &out, "/id", at_least, what);
    let check = |ids: Vec<u64>, total: u64| assert_once(&ids, 0..total);
    // 16 s of input: the node dies a second or two in.
    let writer = append_lines(input.join("a.jsonl"), 0..LINES);
    let dead = c.nodes[home].id;
    let (before, killed) = match fault {
        None => {
            let before = wait_output(&c, 800, "output before the kill").len() as u64;
            eprintln!("killing node {dead}, which runs the pipeline, at {before} lines out");
            let killed = Instant::now();
            c.kill(home);
            (before, killed)
        }
        Some(point) => {
            c.wait_died(home, point);
            let before = output_ids(&out, "/id").len() as u64;
            eprintln!("node {dead} died at {point}, {before} lines out");
            let killed = Instant::now();
            c.kill(home);
            c.nodes[home].fault = None;
            (before, killed)
        }
    };
    let next = wait_running(&c, "moving", Some(home), Duration::from_secs(60));
    eprintln!(
        "the pipeline runs on node {} {:?} after the kill",
        c.nodes[next].id,
        killed.elapsed()
    );
    c.spawn(home);
    check(wait_output(&c, LINES, "every line after the move"), LINES);
    writer.join().unwrap();
    assert!(
        before < LINES / 2,
        "the node died after {before} lines: too late to show anything"
    );
    // The node is back: the controller gives leadership back to preferred replicas (every
    // 10 s), and the pipeline follows its partition home; lines written then come out
    // once too.
    let back = wait_running(&c, "moving", Some(next), Duration::from_secs(40));
    eprintln!("the pipeline runs on node {} again", c.nodes[back].id);
    append_lines(input.join("a.jsonl"), LINES..LINES + MORE)
        .join()
        .unwrap();
    check(
        wait_output(&c, LINES + MORE, "every line after the return"),
        LINES + MORE,
    );
    assert_eq!(running(&c, "moving"), [back]);
}

/// A Postgres CDC pipeline (its table's topic declared, a file sink) runs on one node of
/// three while rows are inserted: its node is SIGKILLed mid-stream, the pipeline moves on
/// with its slot, its positions and its store, and every row is in the output once.
#[test]
fn a_cdc_pipeline_moved_after_its_node_dies_with_no_lost_or_repeated_row() {
    const FIRST: u64 = 20_000;
    const ROWS: u64 = 24_000;
    let pg = crate::postgres_cdc::Postgres::start("logical");
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.sql(&format!(
        "INSERT INTO t SELECT i, 'x' FROM generate_series(1, {FIRST}) i"
    ));
    let mut c = TestCluster::start(3);
    let out = c._dir.path().join("shared/out");
    // Named as the file pipeline's, so that node 3 runs it (see MOVING_HOME).
    let pipeline = format!(
        r#"name = "moving"
commit-interval = "200ms"

[[topics]]
name = "pg.t"
partitions = 1

[[sources]]
name = "pg"
topic = "pg.{{table}}"
postgres-cdc = {{ url = "{}", tables = ["t"], status-interval = "200ms", snapshot-fetch-size = 200 }}

[[sinks]]
name = "files"
topic = "pg.t"
file = {{ path = "{}", roll-records = 400 }}
"#,
        pg.url("postgres"),
        out.display()
    );
    for n in &c.nodes {
        std::fs::write(n.work.join("pipelines/moving.toml"), &pipeline).unwrap();
    }
    let home = wait_running(&c, "moving", None, Duration::from_secs(60));
    assert_eq!(
        home, MOVING_HOME,
        "the placement of __cluster_transactions changed"
    );
    let count = || output_ids(&out, "/after/id").len() as u64;
    // The node dies in the middle of the snapshot (200 rows a fetch); inserts go on
    // meanwhile, 50 rows every 100 ms.
    let start = Instant::now();
    while count() < 2_000 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no snapshot\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut killed = None;
    for from in (FIRST + 1..=ROWS).step_by(50) {
        pg.sql(&format!(
            "INSERT INTO t SELECT i, 'y' FROM generate_series({from}, {}) i",
            (from + 49).min(ROWS)
        ));
        std::thread::sleep(Duration::from_millis(100));
        if killed.is_none() {
            let before = count();
            if before >= 2_000 {
                eprintln!(
                    "killing node {}, which runs the pipeline, at {before} rows out",
                    c.nodes[home].id
                );
                c.kill(home);
                killed = Some(before);
            }
        }
    }
    let before = killed.expect("the node was killed while rows were inserted");
    let next = wait_running(&c, "moving", Some(home), Duration::from_secs(60));
    eprintln!("the pipeline runs on node {}", c.nodes[next].id);
    let ids = wait_ids(&c, &out, "/after/id", ROWS, "every row after the move");
    assert_once(&ids, 1..ROWS + 1);
    assert!(
        before < ROWS - 1_000,
        "the node died after {before} rows: too late to show anything"
    );
}

/// A pipeline with SQL (a filter, and a count per key kept in a state store) runs on one
/// node of three while lines are appended to its input; SIGKILLed there mid-stream, it moves
/// to another node with its queries, which restore their state from the replicated
/// changelog and resume from the positions kept in the pipeline's topic. The filtered
/// stream holds every even line once, and each key's last count is its number of lines:
/// no input is lost or counted twice. A persistent query outside a pipeline is refused.
#[test]
fn a_sql_pipeline_moved_after_its_node_dies_with_its_state_and_no_lost_or_repeated_output() {
    sql_pipeline_moves(None);
}

/// As above, the node dying in a query's commit: its transaction holds results, state
/// changes and positions, and the node the pipeline moves to aborts it.
#[test]
fn a_sql_pipeline_moved_after_its_node_dies_before_a_querys_commit() {
    // At the 12th commit of its queries: some results, state and positions are committed.
    sql_pipeline_moves(Some("query-before-commit:12"));
}

fn sql_pipeline_moves(fault: Option<&'static str>) {
    const LINES: u64 = 8_000;
    let mut c = match fault {
        Some(point) => TestCluster::start_faulty(3, MOVING_HOME, point),
        None => TestCluster::start(3),
    };
    let shared = c._dir.path().join("shared");
    let (input, evens, counts) = (
        shared.join("in"),
        shared.join("evens"),
        shared.join("counts"),
    );
    std::fs::create_dir_all(&input).unwrap();
    // Named as the file pipeline's, so that node 3 runs it (see MOVING_HOME).
    let sql = "
CREATE STREAM IF NOT EXISTS events (id BIGINT, k VARCHAR) WITH (topic = 'events', format = 'JSON');
CREATE STREAM IF NOT EXISTS evens WITH (topic = 'evens') AS SELECT id, k FROM events WHERE id % 2 = 0;
CREATE TABLE IF NOT EXISTS counts WITH (topic = 'counts') AS
  SELECT k, AS_VALUE(k) AS kk, COUNT(*) AS n FROM events GROUP BY k;
";
    let home = deploy_moving(
        &c,
        Some(sql),
        &input,
        &[
            ("evens", "evens", &evens, 400),
            ("counts", "counts", &counts, 100),
        ],
    );
    assert_eq!(
        home, MOVING_HOME,
        "the placement of __cluster_transactions changed"
    );
    // Persistent queries belong to pipelines, which the cluster places.
    let api = c.nodes[0].api.clone().unwrap();
    for (sql, why) in [
        (
            "CREATE STREAM odds AS SELECT id FROM events WHERE id % 2 = 1;",
            "run as part of a pipeline",
        ),
        ("TERMINATE ALL;", "remove it from the pipeline file"),
    ] {
        let r = reqwest::blocking::Client::new()
            .post(format!("{api}/sql"))
            .body(sql)
            .send()
            .unwrap();
        let (status, body) = (r.status().as_u16(), r.text().unwrap());
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(why), "{body}");
    }
    let writer = append_lines(input.join("a.jsonl"), 0..LINES);
    let dead = c.nodes[home].id;
    match fault {
        None => {
            let before = wait_ids(&c, &evens, "/ID", 400, "output before the kill").len();
            eprintln!("killing node {dead}, which runs the pipeline, at {before} even lines out");
        }
        Some(point) => {
            c.wait_died(home, point);
            let before = output_ids(&evens, "/ID").len();
            eprintln!("node {dead} died at {point}, {before} even lines out");
            c.nodes[home].fault = None;
        }
    }
    let killed = Instant::now();
    c.kill(home);
    let next = wait_running(&c, "moving", Some(home), Duration::from_secs(60));
    eprintln!(
        "the pipeline runs on node {} {:?} after the kill",
        c.nodes[next].id,
        killed.elapsed()
    );
    writer.join().unwrap();
    sql_output_is_whole(&c, &evens, &counts, LINES);
    // The node is back: the pipeline follows its partition home, where its queries'
    // stores are as the kill left them; they catch up from the changelog (and the
    // queries stop on the node they leave). Lines written then are counted once too.
    c.spawn(home);
    let back = wait_running(&c, "moving", Some(next), Duration::from_secs(40));
    eprintln!("the pipeline runs on node {} again", c.nodes[back].id);
    append_lines(input.join("a.jsonl"), LINES..LINES + 1_000)
        .join()
        .unwrap();
    sql_output_is_whole(&c, &evens, &counts, LINES + 1_000);
    assert_eq!(running(&c, "moving"), [back]);
    if fault.is_some() {
        return;
    }
    // Paused, it stays paused where it moves; resumed there, it goes on.
    let http = reqwest::blocking::Client::new();
    let action = |api: String, what: &str| {
        let r = http
            .post(format!("{api}/pipelines/moving/{what}"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{what}: {}", r.text().unwrap());
    };
    action(c.nodes[back].api.clone().unwrap(), "pause");
    c.kill(back);
    let last = wait_running(&c, "moving", Some(back), Duration::from_secs(60));
    let state = pipelines_of(&c, last).unwrap()["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "moving")
        .map(|p| p["state"].clone());
    assert_eq!(state, Some(Value::from("paused")));
    append_lines(input.join("a.jsonl"), LINES + 1_000..LINES + 1_100)
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(output_ids(&evens, "/ID").len() as u64, (LINES + 1_000) / 2);
    action(c.nodes[last].api.clone().unwrap(), "resume");
    sql_output_is_whole(&c, &evens, &counts, LINES + 1_100);
}

/// Waits until the SQL pipeline's output holds every even line of `0..lines` once (in
/// `evens`) and each key's last count (in `counts`) is its number of lines.
fn sql_output_is_whole(c: &TestCluster, evens: &Path, counts: &Path, lines: u64) {
    let ids = wait_ids(c, evens, "/ID", lines / 2, "every even line");
    assert_once(&ids.iter().map(|i| i / 2).collect::<Vec<_>>(), 0..lines / 2);
    assert!(ids.iter().all(|i| i % 2 == 0));
    // Each key's count as of its last update (the file sink writes the table's updates in
    // offset order, per partition: a key's updates are in one partition).
    let expected: std::collections::BTreeMap<String, u64> = (0..7)
        .map(|k| {
            (
                format!("k{k}"),
                (0..lines).filter(|i| i % 7 == k).count() as u64,
            )
        })
        .collect();
    let start = Instant::now();
    loop {
        let mut last = std::collections::BTreeMap::new();
        for f in output_files(counts) {
            for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                last.insert(
                    v["KK"].as_str().unwrap().to_string(),
                    v["N"].as_u64().unwrap(),
                );
            }
        }
        if last == expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the counts are {last:?}, not {expected:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
