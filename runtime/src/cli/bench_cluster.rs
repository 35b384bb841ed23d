//! `sluice bench cluster`: three `sluice run` nodes on this machine, a topic with
//! replication factor 3, and kcat (librdkafka) producing with acks=all — records/s and MB/s
//! for 100 B and 1 KiB records, one-record produce latency (p50, p99), and the time from a
//! leader's SIGKILL to the first acknowledged write on its partition; beside a single node
//! (no cluster) measured the same way in the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use sluice_log::batch::{BatchBuilder, BatchOptions};
use sluice_log::record::Record;

use super::CliError;
use super::bench::Scratch;

/// Arguments of `sluice bench cluster`.
#[derive(Debug, Args)]
pub struct ClusterBenchArgs {
    /// Records per throughput run.
    #[arg(long, default_value_t = 300_000)]
    pub records: u64,
    /// Record sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub sizes: Vec<usize>,
    /// One-record produce requests timed for the latency figures.
    #[arg(long, default_value_t = 2000)]
    pub latency_samples: usize,
    /// Rounds of the failover figure: each kills a partition leader that is not the
    /// controller, then the controller.
    #[arg(long, default_value_t = 3)]
    pub failovers: usize,
    /// The kcat binary (Debian's `kcat` package).
    #[arg(long, default_value = "kcat")]
    pub kcat: PathBuf,
    /// Scratch folder (removed at the end). Default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A `sluice run` process of the benchmark.
struct Node {
    id: u64,
    work: PathBuf,
    kafka: String,
    args: Vec<String>,
    child: Option<Child>,
    api: String,
}

impl Node {
    fn start(&mut self) -> Result<(), CliError> {
        std::fs::create_dir_all(self.work.join("pipelines"))
            .map_err(|e| CliError::io("create the node's folder", e))?;
        let _ = std::fs::remove_file(self.work.join("data/worker.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("node.log"))
            .map_err(|e| CliError::io("create the node's log", e))?;
        let exe = std::env::current_exe().map_err(|e| CliError::io("find this binary", e))?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(self.work.join("data"))
            .args(["run", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(self.work.join("pipelines"))
            .args(&self.args)
            .env("SLUICE_LOG", "warn,openraft=error")
            .env_remove("SLUICE_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| CliError::io("start a node", e))?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let info = std::fs::read_to_string(self.work.join("data/worker.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            if let Some(v) = info {
                self.api = v["api"].as_str().unwrap_or_default().to_string();
                self.kafka = v["kafka"].as_str().unwrap_or_default().to_string();
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(CliError::Usage(format!(
                    "node {} did not start; see {}",
                    self.id,
                    self.work.join("node.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

impl ClusterBenchArgs {
    /// Runs the benchmark.
    pub fn run(self) -> Result<(), CliError> {
        let scratch = Scratch::under(self.dir.as_deref(), "sluice-bench-cluster")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::io("start a runtime", e))?;
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let spec = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                id: i as u64 + 1,
                work: scratch.path().join(format!("node-{}", i + 1)),
                kafka: String::new(),
                args: vec![
                    "--node-id".into(),
                    (i + 1).to_string(),
                    "--cluster".into(),
                    spec.clone(),
                ],
                child: None,
                api: String::new(),
            })
            .collect();
        let mut single = Node {
            id: 0,
            work: scratch.path().join("single"),
            kafka: String::new(),
            args: vec!["--kafka-listen".into(), "127.0.0.1:0".into()],
            child: None,
            api: String::new(),
        };
        for n in nodes.iter_mut() {
            n.start()?;
        }
        single.start()?;
        wait_for(&nodes, Duration::from_secs(60), |s| {
            s["controller"].is_u64()
                && s["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.len() == 3 && ns.iter().all(|n| n["state"] == "alive"))
        })?;
        let bootstrap = nodes
            .iter()
            .map(|n| n.kafka.clone())
            .collect::<Vec<_>>()
            .join(",");
        eprintln!(
            "3 nodes ({bootstrap}) and a single node ({}); kcat for throughput",
            single.kafka
        );
        for &size in &self.sizes {
            let input = super::bench_kafka::write_input(scratch.path(), self.records, size)?;
            let bytes = self.records as f64 * size as f64;
            let topic = format!("bench-{size}");
            for (addr, factor) in [(&nodes[0].kafka, 3), (&single.kafka, 1)] {
                runtime
                    .block_on(sluice_kafka::client::create_topic(addr, &topic, 1, factor))
                    .map_err(|e| CliError::Usage(format!("create {topic}: {e}")))?;
            }
            let cluster = self.kcat_produce(&bootstrap, &topic, &input)?;
            let alone = self.kcat_produce(&single.kafka, &topic, &input)?;
            println!(
                "cluster produce size={size} acks=all rf=3: {} records in {cluster:.2} s, {:.0} records/s ({:.1} MB/s); single node {:.0} records/s ({:.1} MB/s), cluster/single {:.2}",
                self.records,
                self.records as f64 / cluster,
                mb(bytes) / cluster,
                self.records as f64 / alone,
                mb(bytes) / alone,
                alone / cluster,
            );
        }
        // Latency: one 100 B record at a time, acks=all, to the partition's leader.
        let topic = "bench-latency";
        for (addr, factor) in [(&nodes[0].kafka, 3), (&single.kafka, 1)] {
            runtime
                .block_on(sluice_kafka::client::create_topic(addr, topic, 1, factor))
                .map_err(|e| CliError::Usage(format!("create {topic}: {e}")))?;
        }
        let leader = runtime
            .block_on(leader_of(&bootstrap, topic, Duration::from_secs(30)))?
            .1;
        let cluster = runtime.block_on(latencies(&leader, topic, self.latency_samples))?;
        let alone = runtime.block_on(latencies(&single.kafka, topic, self.latency_samples))?;
        println!(
            "cluster produce latency acks=all rf=3 (one 100 B record per request, {} requests): p50 {:.2} ms, p99 {:.2} ms; single node p50 {:.2} ms, p99 {:.2} ms, cluster/single p50 {:.2}",
            self.latency_samples,
            percentile(&cluster, 0.5),
            percentile(&cluster, 0.99),
            percentile(&alone, 0.5),
            percentile(&alone, 0.99),
            percentile(&cluster, 0.5) / percentile(&alone, 0.5),
        );
        // Failover: SIGKILL a node leading a partition, time the first acknowledged acks=all
        // write on that partition. Rounds alternate between a node that is not the
        // controller and the controller itself (then a new controller is elected first).
        let topic = "bench-failover";
        runtime
            .block_on(sluice_kafka::client::create_topic(
                &nodes[0].kafka,
                topic,
                3,
                3,
            ))
            .map_err(|e| CliError::Usage(format!("create {topic}: {e}")))?;
        let (mut plain, mut controller) = (Vec::new(), Vec::new());
        for round in 0..self.failovers * 2 {
            let kill_controller = round % 2 == 1;
            // Settled, and (leadership back on preferred replicas) every node leads a
            // partition of the topic.
            let status = wait_for(&nodes, Duration::from_secs(90), |s| {
                let leaders: std::collections::BTreeSet<u64> = s["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["topic"] == topic)
                    .filter_map(|p| p["leader"].as_u64())
                    .collect();
                s["under_replicated_partitions"] == 0
                    && s["offline_partitions"] == 0
                    && s["controller"].is_u64()
                    && leaders.len() == 3
            })?;
            let boss = status["controller"].as_u64().unwrap_or_default();
            let (partition, id) = status["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["topic"] == topic)
                .filter_map(|p| Some((p["partition"].as_u64()?, p["leader"].as_u64()?)))
                .find(|(_, l)| (*l == boss) == kill_controller)
                .ok_or_else(|| CliError::Usage(format!("no victim in {status}")))?;
            let partition = partition as u32;
            // The victim must take a write just before it is killed (the status may lag).
            let addr = nodes
                .iter()
                .find(|n| n.id == id)
                .map(|n| n.kafka.clone())
                .ok_or_else(|| CliError::Usage(format!("no node {id}")))?;
            runtime.block_on(async {
                let mut p = sluice_kafka::client::BatchProducer::new(&addr);
                let deadline = Instant::now() + Duration::from_secs(30);
                while p
                    .send(topic, partition as i32, one_record_batch(), -1)
                    .await
                    .is_err()
                {
                    if Instant::now() > deadline {
                        return Err(CliError::Usage(format!("node {id} takes no write")));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(())
            })?;
            let victim = nodes
                .iter()
                .position(|n| n.id == id)
                .ok_or_else(|| CliError::Usage(format!("no node {id}")))?;
            let killed = Instant::now();
            nodes[victim].kill();
            let live: Vec<String> = nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| n.kafka.clone())
                .collect();
            let took = runtime.block_on(first_write(
                &live.join(","),
                topic,
                partition,
                id as i32,
                killed,
            ))?;
            if kill_controller {
                controller.push(took);
            } else {
                plain.push(took);
            }
            nodes[victim].start()?;
        }
        let show = |times: &mut Vec<f64>| {
            times.sort_by(f64::total_cmp);
            let each: Vec<String> = times.iter().map(|t| format!("{t:.2} s")).collect();
            let median = times.get(times.len() / 2).copied().unwrap_or_default();
            format!("{} (median {median:.2} s)", each.join(", "))
        };
        if self.failovers > 0 {
            println!(
                "cluster failover (a partition leader's SIGKILL to the first acks=all write on that partition, session timeout 3 s): not the controller {}; the controller {}",
                show(&mut plain),
                show(&mut controller),
            );
        }
        for n in nodes.iter_mut() {
            n.kill();
        }
        single.kill();
        drop(nodes);
        let _ = std::fs::remove_dir_all(scratch.path());
        Ok(())
    }

    /// Seconds for kcat to produce the file with acks=all (every record acknowledged).
    fn kcat_produce(&self, bootstrap: &str, topic: &str, input: &Path) -> Result<f64, CliError> {
        super::bench_kafka::kcat_produce(&self.kcat, bootstrap, topic, "all", input)
    }
}

fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::io("find a free port", e))
}

/// `GET /cluster` from the running nodes until `ok` holds.
fn wait_for(
    nodes: &[Node],
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value, CliError> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let start = Instant::now();
    loop {
        let status = nodes.iter().filter(|n| n.child.is_some()).find_map(|n| {
            let text = http
                .get(format!("{}/cluster", n.api))
                .send()
                .ok()?
                .text()
                .ok()?;
            serde_json::from_str::<Value>(&text).ok()
        });
        if let Some(status) = status.as_ref().filter(|s| ok(s)) {
            return Ok(status.clone());
        }
        if start.elapsed() > timeout {
            return Err(CliError::Usage(format!(
                "the cluster did not settle in {timeout:?}: {status:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leader of `topic`-0 as some node of `bootstrap` knows it.
async fn leader_of(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<(i32, String), CliError> {
    let start = Instant::now();
    loop {
        for addr in bootstrap.split(',') {
            if let Ok(Some(l)) = sluice_kafka::client::partition_leader(addr, topic, 0).await {
                return Ok(l);
            }
        }
        if start.elapsed() > timeout {
            return Err(CliError::Usage(format!("{topic}-0 has no leader")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one_record_batch() -> bytes::Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    let value: String = (0..100)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let _ = b.push(&Record::from_value(value, sluice_log::record::now_ms()));
    bytes::Bytes::from(b.build().unwrap_or_default())
}

/// Times `samples` one-record acks=all produce requests to `addr`, one after the other.
async fn latencies(addr: &str, topic: &str, samples: usize) -> Result<Vec<Duration>, CliError> {
    let mut producer = sluice_kafka::client::BatchProducer::new(addr);
    let batch = one_record_batch();
    let mut out = Vec::with_capacity(samples);
    // The first requests open the connection and warm the path.
    for i in 0..samples + 20 {
        let start = Instant::now();
        producer
            .send(topic, 0, batch.clone(), -1)
            .await
            .map_err(|(code, e)| {
                CliError::Usage(format!("produce to {addr}: error {code}: {e}"))
            })?;
        if i >= 20 {
            out.push(start.elapsed());
        }
    }
    out.sort();
    Ok(out)
}

/// Seconds from `killed` to the first acks=all write of `topic`-0 acknowledged by a leader
/// other than `dead`.
async fn first_write(
    bootstrap: &str,
    topic: &str,
    partition: u32,
    dead: i32,
    killed: Instant,
) -> Result<f64, CliError> {
    let batch = one_record_batch();
    loop {
        if killed.elapsed() > Duration::from_secs(60) {
            return Err(CliError::Usage(
                "no new leader took a write within 60 s".into(),
            ));
        }
        for addr in bootstrap.split(',') {
            if let Ok(Some((id, leader))) =
                sluice_kafka::client::partition_leader(addr, topic, partition as i32).await
                && id != dead
            {
                let mut p = sluice_kafka::client::BatchProducer::new(&leader);
                if p.send(topic, partition as i32, batch.clone(), -1)
                    .await
                    .is_ok()
                {
                    return Ok(killed.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
