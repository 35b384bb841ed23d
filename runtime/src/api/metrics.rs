//! `GET /metrics`: the worker's metrics in the OpenMetrics text format (which Prometheus
//! scrapes), encoded by the `prometheus-client` crate from counters read when scraped (tasks
//! and queries keep plain atomics; nothing is updated per record for metrics' sake).
//!
//! - per task (`pipeline`, `task` labels) and per persistent query (`query`): records
//!   and bytes in and out, dead letters, restarts, commits, a commit-duration histogram,
//!   whether it is up; for sinks, a histogram of end-to-end record latency (record
//!   timestamp to durable output); for sources that can tell, their lag in bytes;
//! - push queries streaming, their rows and slow clients;
//! - per consumer group and partition: lag in records;
//! - the process (CPU, memory, file descriptors, threads, start time) and the build.
//!
//! Tasks and queries come from the worker's status board, so a scrape never waits for a
//! deploy.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use sluice_task::{LatencyHistogram, TaskStatus};

use super::{ApiError, ApiState, blocking};

/// The worker's metrics, gathered at each scrape.
#[derive(Debug)]
struct Worker(ApiState);

type Labels = Vec<(&'static str, String)>;

/// One family: its samples are added, then it is written.
struct Family<'a> {
    name: String,
    help: String,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Sample<'a>)>,
}

enum Sample<'a> {
    Counter(f64),
    Gauge(f64),
    Histogram(&'a LatencyHistogram),
}

impl<'a> Family<'a> {
    fn new(
        name: impl Into<String>,
        help: impl Into<String>,
        unit: Option<Unit>,
        kind: MetricType,
    ) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            unit,
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one unlabelled counter or gauge.
    fn single(name: &str, help: &str, unit: Option<Unit>, kind: MetricType, v: f64) -> Self {
        let sample = if kind == MetricType::Counter {
            Sample::Counter(v)
        } else {
            Sample::Gauge(v)
        };
        let mut family = Family::new(name, help, unit, kind);
        family.samples.push((Vec::new(), sample));
        family
    }

    fn encode(self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(&self.name, &self.help, self.unit.as_ref(), self.kind)?;
        for (labels, sample) in &self.samples {
            let metric = family.encode_family(labels)?;
            match sample {
                // Whole numbers are written as integers (`4`, not `4.0`).
                Sample::Counter(v) if v.fract() == 0.0 && *v >= 0.0 && *v < 9e15 => {
                    ConstCounter::new(*v as u64).encode(metric)?
                }
                Sample::Counter(v) => ConstCounter::new(*v).encode(metric)?,
                Sample::Gauge(v) if v.fract() == 0.0 && v.abs() < 9e15 => {
                    ConstGauge::new(*v as i64).encode(metric)?
                }
                Sample::Gauge(v) => ConstGauge::new(*v).encode(metric)?,
                Sample::Histogram(h) => {
                    let mut metric = metric;
                    let (sum, count, buckets) = h.snapshot();
                    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The families every task and query has, filled from their status.
struct TaskFamilies<'a> {
    families: Vec<Family<'a>>,
}

impl<'a> TaskFamilies<'a> {
    fn new(prefix: &str, what: &str) -> TaskFamilies<'a> {
        let name = |n: &str| format!("{prefix}_{n}");
        use MetricType::{Counter, Gauge, Histogram};
        TaskFamilies {
            families: vec![
                Family::new(
                    name("records_in"),
                    format!("Records a {what} read."),
                    None,
                    Counter,
                ),
                Family::new(
                    name("records_out"),
                    format!("Records a {what} wrote."),
                    None,
                    Counter,
                ),
                Family::new(
                    name("read"),
                    format!("Key and value bytes a {what} read."),
                    Some(Unit::Bytes),
                    Counter,
                ),
                Family::new(
                    name("written"),
                    format!("Key and value bytes a {what} wrote."),
                    Some(Unit::Bytes),
                    Counter,
                ),
                Family::new(
                    name("dead_letters"),
                    format!("Records a {what} sent to the dead-letter topic."),
                    None,
                    Counter,
                ),
                Family::new(
                    name("records_dropped"),
                    format!(
                        "Records a {what} left out by design: stream records whose inner-join key is NULL."
                    ),
                    None,
                    Counter,
                ),
                Family::new(
                    name("restarts"),
                    format!("Restarts of a {what} after a failure (with backoff)."),
                    None,
                    Counter,
                ),
                Family::new(
                    name("commits"),
                    format!(
                        "Epochs a {what} committed (outputs, state and positions in one transaction)."
                    ),
                    None,
                    Counter,
                ),
                Family::new(
                    name("commit_duration"),
                    format!("How long a {what}'s commits took."),
                    Some(Unit::Seconds),
                    Histogram,
                ),
                Family::new(
                    name("up"),
                    format!("1 while the {what} runs without error."),
                    None,
                    Gauge,
                ),
            ],
        }
    }

    fn add(&mut self, labels: &Labels, s: &'a TaskStatus) {
        let c =
            |a: &std::sync::atomic::AtomicU64| Sample::Counter(a.load(Ordering::Relaxed) as f64);
        let samples = [
            c(&s.records_in),
            c(&s.records_out),
            c(&s.bytes_in),
            c(&s.bytes_out),
            c(&s.rejected),
            c(&s.dropped),
            c(&s.restarts),
            c(&s.commits),
            Sample::Histogram(&s.commit_latency),
            Sample::Gauge(f64::from(u8::from(s.state() == "running"))),
        ];
        for (f, v) in self.families.iter_mut().zip(samples) {
            f.samples.push((labels.clone(), v));
        }
    }
}

/// The process's own figures from `/proc/self` (Linux; elsewhere none), as Prometheus'
/// client libraries name them.
fn process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Ok(());
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux; pages are 4 KiB on the machines Sluice runs on.
    let ticks = 100.0;
    let page = 4096.0;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .unwrap_or(0.0);
    use MetricType::{Counter, Gauge};
    let families = [
        (
            "process_cpu",
            "Total user and system CPU time spent.",
            Some(Unit::Seconds),
            Counter,
            (field(11) + field(12)) / ticks,
        ),
        (
            "process_resident_memory",
            "Resident memory size.",
            Some(Unit::Bytes),
            Gauge,
            field(21) * page,
        ),
        (
            "process_virtual_memory",
            "Virtual memory size.",
            Some(Unit::Bytes),
            Gauge,
            field(20),
        ),
        (
            "process_open_fds",
            "Open file descriptors.",
            None,
            Gauge,
            fds,
        ),
        (
            "process_max_fds",
            "The most file descriptors the process may open.",
            None,
            Gauge,
            max_fds,
        ),
        ("process_threads", "OS threads.", None, Gauge, field(17)),
        (
            "process_start_time",
            "Start time since the Unix epoch.",
            Some(Unit::Seconds),
            Gauge,
            boot + field(19) / ticks,
        ),
    ];
    for (name, help, unit, kind, v) in families {
        Family::single(name, help, unit, kind, v).encode(encoder)?;
    }
    Ok(())
}

impl Collector for Worker {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        // From the status board, not the worker: a deploy holds the worker while it joins
        // task threads, and a scrape must not wait for that.
        let board = state.status.snapshot();
        let mut tasks = TaskFamilies::new("sluice_task", "task");
        let mut record_latency = Family::new(
            "sluice_task_record_latency",
            "From a record's timestamp to its output being durable (sinks; the oldest record of each commit).",
            Some(Unit::Seconds),
            MetricType::Histogram,
        );
        let mut source_lag = Family::new(
            "sluice_source_lag",
            "How far behind its input a source is (a Postgres CDC source: the WAL its replication slot holds back).",
            Some(Unit::Bytes),
            MetricType::Gauge,
        );
        for t in &board.tasks {
            let labels: Labels = vec![("pipeline", t.pipeline.clone()), ("task", t.task.clone())];
            tasks.add(&labels, &t.status);
            if t.task.starts_with("sink ") {
                record_latency
                    .samples
                    .push((labels.clone(), Sample::Histogram(&t.status.record_latency)));
            }
            if let Some(lag) = *t.status.source_lag_bytes.lock() {
                source_lag.samples.push((labels, Sample::Gauge(lag as f64)));
            }
        }
        let mut queries = TaskFamilies::new("sluice_query", "persistent query");
        for (id, s) in &board.queries {
            queries.add(&vec![("query", id.clone())], s);
        }
        for f in tasks.families.into_iter().chain(queries.families) {
            f.encode(&mut encoder)?;
        }
        record_latency.encode(&mut encoder)?;
        source_lag.encode(&mut encoder)?;
        let push = &state.push_stats;
        for (name, help, kind, v) in [
            (
                "sluice_push_queries",
                "Push queries and API consumers streaming now.",
                MetricType::Gauge,
                push.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_push_queries_max",
                "Push queries that may stream at once (--max-push-queries).",
                MetricType::Gauge,
                push.max as f64,
            ),
            (
                "sluice_push_query_rows",
                "Rows push queries handed to their clients' buffers.",
                MetricType::Counter,
                push.rows.load(Ordering::Relaxed) as f64,
            ),
            (
                "sluice_push_query_slow_clients",
                "Push queries stopped because their client did not read.",
                MetricType::Counter,
                push.slow_clients.load(Ordering::Relaxed) as f64,
            ),
        ] {
            Family::single(name, help, None, kind, v).encode(&mut encoder)?;
        }
        let mut lag = Family::new(
            "sluice_consumer_lag",
            "Records a consumer group has yet to read on a partition (transaction markers not counted).",
            None,
            MetricType::Gauge,
        );
        for (g, _, _) in state.log.list_groups() {
            if let Some(info) = state.log.describe_group(&g) {
                for p in info.partitions {
                    lag.samples.push((
                        vec![
                            ("group", g.clone()),
                            ("topic", p.tp.topic.clone()),
                            ("partition", p.tp.partition.to_string()),
                        ],
                        Sample::Gauge(p.lag as f64),
                    ));
                }
            }
        }
        lag.encode(&mut encoder)?;
        if let Some(cluster) = state.cluster.get() {
            let status = cluster.status();
            let partitions = status
                .metadata
                .topics
                .values()
                .flat_map(|t| t.partitions.iter());
            let (mut under, mut offline, mut led) = (0, 0, 0);
            for p in partitions {
                under += usize::from(p.isr.len() < p.replicas.len());
                offline += usize::from(p.leader.is_none());
                led += usize::from(p.leader == Some(status.node_id));
            }
            let alive = status.nodes.iter().filter(|n| n.state == "alive").count();
            for (name, help, v) in [
                (
                    "sluice_cluster_under_replicated_partitions",
                    "Partitions whose in-sync replicas are fewer than their replicas (Kafka's UnderReplicatedPartitions).",
                    under,
                ),
                (
                    "sluice_cluster_offline_partitions",
                    "Partitions without a leader (Kafka's OfflinePartitionsCount).",
                    offline,
                ),
                (
                    "sluice_cluster_leader_partitions",
                    "Partitions this node leads.",
                    led,
                ),
                (
                    "sluice_cluster_alive_nodes",
                    "Nodes registered and not fenced, as this node sees the metadata.",
                    alive,
                ),
                (
                    "sluice_cluster_controller",
                    "1 on the node that is the controller (the metadata log's Raft leader).",
                    usize::from(status.controller == Some(status.node_id)),
                ),
            ] {
                Family::single(name, help, None, MetricType::Gauge, v as f64)
                    .encode(&mut encoder)?;
            }
        }
        process(&mut encoder)?;
        let info = encoder.encode_descriptor(
            "sluice_build",
            "The build of this worker.",
            None,
            MetricType::Info,
        )?;
        prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))])
            .encode(info)?;
        Ok(())
    }
}

/// The metrics document (OpenMetrics text).
pub fn text(state: &ApiState) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Worker(state.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "Could not encode the metrics.");
    }
    out
}

/// The worker's metrics, in the OpenMetrics text format Prometheus scrapes.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "worker",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let body = blocking(move || Ok(text(&state))).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
