//! `sluice bench`: throughput and latency of the log, printed in the shape of Kafka's perf
//! tools, each beside the machine's raw sequential disk speed measured in the same run.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use sluice_log::{
    Compression, ConsumerConfig, FsyncPolicy, Log, LogOptions, OffsetReset, ProducerConfig, Record,
    TopicPartition,
};

use super::CliError;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as possible (`--fsync always` for group-committed fsyncs).
    Produce(BenchArgs),
    /// Write records (untimed), then consume them as fast as possible.
    Consume(BenchArgs),
    /// Nexmark queries q0, q1, q2, q3, q4, q5, q7, q8 as persistent SQL queries, beside
    /// DataFusion's batch evaluation of the same query.
    Nexmark(super::nexmark::NexmarkArgs),
    /// A whole pipeline: file source → topic → SQL filter → object-store sink (Parquet), 200-byte
    /// JSON records; prints `pipeline records=N seconds=S records/s=X`.
    Pipeline(super::bench_pipeline::PipelineBenchArgs),
    /// Exactly-once against at-least-once throughput (ratio), and recovery time after a
    /// kill with about 1 GB of query state.
    Eos(super::bench_eos::EosBenchArgs),
    /// HTTP ingest with idempotency keys for a while, then SIGKILL and restart: bytes of
    /// source positions per MB of data, and the time from the restart to the first answer.
    Ingest(super::bench_ingest::IngestBenchArgs),
    /// Postgres CDC: row changes per second captured into topics from a pgbench load,
    /// beside pg_recvlogical decoding the same changes to /dev/null; prints both and the
    /// ratio.
    Cdc(super::bench_cdc::CdcBenchArgs),
    /// The external sinks: records/s and MB/s of 1 KiB JSON records from a topic into
    /// Elasticsearch (osmem-server), S3 (moto), HDFS (a WebHDFS server in the process) and
    /// an HTTP receiver, one line each.
    Sink(super::bench_sink::SinkBenchArgs),
    /// Tiered storage against an S3 server (moto): produce throughput with tiering on vs
    /// off in one run, and reading old segments back from the store, in MB/s.
    Tiered(super::bench_tiered::TieredBenchArgs),
    /// The Kafka listener on loopback with kcat (librdkafka): produce and consume records/s
    /// and MB/s for 100 B and 1 KiB records, acks=1 and acks=all, beside the embedded
    /// producer and consumer on the same records.
    Kafka(super::bench_kafka::KafkaBenchArgs),
    /// Three nodes on this machine, replication factor 3, acks=all: records/s and MB/s with
    /// kcat, one-record produce latency p50/p99, and the time from a leader's SIGKILL to the
    /// first acknowledged write; beside a single node in the same run.
    Cluster(super::bench_cluster::ClusterBenchArgs),
}

/// Common benchmark arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of records.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_size: usize,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = super::produce::CompressionArg::None)]
    pub compression: super::produce::CompressionArg,
    /// When appends are fsynced: always (group commit), interval[:MILLIS] or never
    /// (default interval:1000).
    #[arg(
        long,
        value_parser = super::parse_fsync,
        value_name = "always|interval[:MILLIS]|never"
    )]
    pub fsync: Option<FsyncPolicy>,
    /// Scratch folder for the benchmark's log (removed at the end). Default: a fresh folder
    /// under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A scratch folder removed when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `dir`.
    pub fn new(dir: PathBuf) -> Result<Scratch, CliError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::io(format!("create {}", dir.display()), e))?;
        Ok(Scratch(dir))
    }

    /// Creates `<dir>/<name>-<pid>`, with `dir` defaulting to $TMPDIR or /var/tmp.
    pub fn under(dir: Option<&Path>, name: &str) -> Result<Scratch, CliError> {
        let base = dir.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        });
        Scratch::new(base.join(format!("{name}-{}", std::process::id())))
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Every file below `dir`, at any depth, with its metadata (files removed while it lists
/// are left out).
pub fn files_under(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, CliError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| CliError::io(format!("list {}", d.display()), e))?;
        for e in entries.flatten() {
            let p = e.path();
            let m = match e.metadata() {
                Ok(m) => m,
                // Gone while listing (e.g. a RocksDB compaction removed it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CliError::io(format!("stat {}", p.display()), e)),
            };
            if m.is_dir() {
                stack.push(p);
            } else {
                files.push((p, m));
            }
        }
    }
    Ok(files)
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BenchArgs {
    fn scratch(&self) -> Result<Scratch, CliError> {
        Scratch::under(self.dir.as_deref(), "sluice-bench")
    }

    fn payload(&self) -> Bytes {
        // Printable, varied bytes (like Kafka's perf tool) so compression has real work.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        Bytes::from(
            (0..self.record_size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b'A' + (seed % 26) as u8
                })
                .collect::<Vec<u8>>(),
        )
    }

    fn open(&self, dir: &Path, options: &LogOptions) -> Result<Log, CliError> {
        let log = Log::open(dir.join("log"), options.clone())?;
        let max = (self.batch_size * 2 + self.record_size + 1024).to_string();
        log.create_topic("bench", 1, &[("max.message.bytes".into(), max)])?;
        Ok(log)
    }

    fn producer_config(&self) -> Result<ProducerConfig, CliError> {
        Ok(ProducerConfig {
            compression: Compression::from(self.compression),
            batch_size: self.batch_size,
            ..ProducerConfig::default()
        })
    }
}

impl BenchCommand {
    /// Runs it (`fsync_before`: a `--fsync` given before `bench`). The benchmark uses its
    /// own scratch log, never `--data-dir`.
    pub fn run(self, fsync_before: Option<FsyncPolicy>) -> Result<(), CliError> {
        let options = |fsync: Option<FsyncPolicy>| {
            let mut o = LogOptions::default();
            if let Some(f) = fsync.or(fsync_before) {
                o.fsync = f;
            }
            o
        };
        match self {
            BenchCommand::Produce(a) => bench_produce(&a, &options(a.fsync)),
            BenchCommand::Consume(a) => bench_consume(&a, &options(a.fsync)),
            BenchCommand::Nexmark(a) => {
                let o = options(a.fsync);
                a.run(o)
            }
            BenchCommand::Pipeline(a) => a.run(),
            BenchCommand::Eos(a) => a.run(),
            BenchCommand::Ingest(a) => a.run(),
            BenchCommand::Cdc(a) => a.run(),
            BenchCommand::Sink(a) => a.run(),
            BenchCommand::Tiered(a) => a.run(),
            BenchCommand::Kafka(a) => a.run(),
            BenchCommand::Cluster(a) => a.run(),
        }
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn bench_produce(a: &BenchArgs, options: &LogOptions) -> Result<(), CliError> {
    let scratch = a.scratch()?;
    let fsync_each = options.fsync == FsyncPolicy::Always;
    // The raw speed is measured first, on the same amount of data in the same folder, and
    // flushed before the log starts, so neither run inherits the other's dirty pages.
    let approx_bytes = a.records * (a.record_size as u64 + 8);
    let raw = raw_write_speed(&scratch.0, approx_bytes, a.batch_size, fsync_each)?;
    let log = a.open(&scratch.0, options)?;
    let mut producer = log.producer(a.producer_config()?)?;
    let payload = a.payload();
    let mut latencies_us: Vec<u32> = Vec::with_capacity(a.records as usize);
    let mut pending: Vec<Instant> = Vec::with_capacity(a.batch_size / a.record_size.max(1) + 1);
    eprintln!(
        "Producing {} records of {} bytes (fsync {})...",
        a.records, a.record_size, options.fsync
    );
    let start = Instant::now();
    for _ in 0..a.records {
        let sent = Instant::now();
        let record = Record {
            key: None,
            value: Some(payload.clone()),
            headers: Vec::new(),
            timestamp: sluice_log::record::now_ms(),
        };
        if producer.send_to("bench", 0, record)?.is_some() {
            // The send completed the previous batch; this record opened the next one.
            let acked = Instant::now();
            latencies_us.extend(pending.drain(..).map(|t| (acked - t).as_micros() as u32));
        }
        pending.push(sent);
    }
    producer.flush()?;
    let acked = Instant::now();
    latencies_us.extend(pending.drain(..).map(|t| (acked - t).as_micros() as u32));
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = a.records as f64 * a.record_size as f64;
    latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((latencies_us.len() as f64 * p) as usize).min(latencies_us.len() - 1);
        f64::from(latencies_us[i]) / 1000.0
    };
    let avg = latencies_us.iter().map(|&l| f64::from(l)).sum::<f64>()
        / latencies_us.len().max(1) as f64
        / 1000.0;
    let on_disk = log.describe_topic("bench")?.partitions[0].size_bytes;
    log.close()?;
    drop(log);
    let ours = mb(bytes) / elapsed;
    println!(
        "raw sequential write: {:.1} MB/sec ({} fsync per {} KiB write); sluice wrote {:.1} MB/sec on disk, ratio {:.2}",
        raw,
        if fsync_each { "one" } else { "no" },
        a.batch_size / 1024,
        mb(on_disk as f64) / elapsed,
        (mb(on_disk as f64) / elapsed) / raw
    );
    println!(
        "{} records sent, {:.1} records/sec ({:.2} MB/sec), {:.2} ms avg latency, {:.2} ms max latency, {:.2} ms 50th, {:.2} ms 95th, {:.2} ms 99th, {:.2} ms 99.9th.",
        a.records,
        a.records as f64 / elapsed,
        ours,
        avg,
        pct(1.0),
        pct(0.5),
        pct(0.95),
        pct(0.99),
        pct(0.999)
    );
    Ok(())
}

fn raw_write_speed(
    dir: &Path,
    total: u64,
    chunk: usize,
    fsync_each: bool,
) -> Result<f64, CliError> {
    let path = dir.join("raw-write");
    let mut f = File::create(&path).map_err(|e| CliError::io("create raw-write file", e))?;
    let buf = vec![b'x'; chunk.max(4096)];
    let start = Instant::now();
    let mut written = 0u64;
    while written < total {
        let n = (total - written).min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])
            .map_err(|e| CliError::io("write raw-write file", e))?;
        if fsync_each {
            f.sync_data()
                .map_err(|e| CliError::io("fsync raw-write file", e))?;
        }
        written += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    f.sync_all()
        .map_err(|e| CliError::io("fsync raw-write file", e))?;
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(mb(written as f64) / secs.max(1e-9))
}

fn bench_consume(a: &BenchArgs, options: &LogOptions) -> Result<(), CliError> {
    let scratch = a.scratch()?;
    let log = a.open(&scratch.0, options)?;
    let mut producer = log.producer(a.producer_config()?)?;
    let payload = a.payload();
    eprintln!(
        "Writing {} records of {} bytes (untimed)...",
        a.records, a.record_size
    );
    send_records(&mut producer, "bench", &payload, a.records)?;
    producer.flush()?;
    drop(producer);
    eprintln!("Consuming...");
    let (bytes, elapsed) = consume_all(&log, "bench", a.records)?;
    let count = a.records;
    let raw = raw_read_speed(&log.dir().join("topics/bench/0"))?;
    log.close()?;
    let ours = mb(bytes as f64) / elapsed;
    println!(
        "raw sequential read: {raw:.1} MB/sec (segment files, page cache); ratio {:.2}",
        ours / raw
    );
    println!(
        "{count} records consumed, {:.1} records/sec ({ours:.2} MB/sec) in {elapsed:.2} s.",
        count as f64 / elapsed
    );
    Ok(())
}

fn raw_read_speed(dir: &Path) -> Result<f64, CliError> {
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    let start = Instant::now();
    for entry in std::fs::read_dir(dir).map_err(|e| CliError::io("list segments", e))? {
        let path = entry.map_err(|e| CliError::io("list segments", e))?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let mut f = File::open(&path).map_err(|e| CliError::io("open segment", e))?;
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| CliError::io("read segment", e))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    Ok(mb(total as f64)
        / start
            .elapsed()
            .as_secs_f64()
            .max(Duration::from_nanos(1).as_secs_f64()))
}

/// Sends `n` records of `payload` (no key) to partition 0 of `topic` (the caller flushes).
pub(super) fn send_records(
    producer: &mut sluice_log::Producer,
    topic: &str,
    payload: &Bytes,
    n: u64,
) -> Result<(), CliError> {
    for _ in 0..n {
        producer.send_to(
            topic,
            0,
            Record {
                key: None,
                value: Some(payload.clone()),
                headers: Vec::new(),
                timestamp: sluice_log::record::now_ms(),
            },
        )?;
    }
    Ok(())
}

/// Consumes `n` records of partition 0 of `topic` from its start with the embedded
/// consumer: the value bytes read and the seconds it took.
pub(super) fn consume_all(log: &Log, topic: &str, n: u64) -> Result<(u64, f64), CliError> {
    let mut consumer = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        max_poll_records: 1 << 20,
        fetch_max_bytes: 8 << 20,
        ..ConsumerConfig::default()
    });
    consumer.assign(&[TopicPartition::new(topic, 0)])?;
    let start = Instant::now();
    let mut count = 0u64;
    let mut bytes = 0u64;
    while count < n {
        let records = consumer.poll(Duration::from_secs(5))?;
        if records.is_empty() {
            return Err(CliError::Usage(format!(
                "consumer stalled after {count} of {n} records"
            )));
        }
        count += records.len() as u64;
        bytes += records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
            .sum::<u64>();
    }
    Ok((bytes, start.elapsed().as_secs_f64()))
}
