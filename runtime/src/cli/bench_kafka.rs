//! `sluice bench kafka`: produce and consume over the Kafka listener on loopback with kcat
//! (librdkafka), 100 B and 1 KiB records, acks=1 and acks=all, beside the embedded
//! producer's and consumer's figures for the same records in the same run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use sluice_log::{Log, LogOptions, ProducerConfig};

use super::CliError;
use super::bench::{Scratch, consume_all, send_records};

/// Arguments of `sluice bench kafka`.
#[derive(Debug, Args)]
pub struct KafkaBenchArgs {
    /// Records per run.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Record sizes in bytes (the value; no key), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub sizes: Vec<usize>,
    /// Producer acks to run, comma-separated: 1, all.
    #[arg(long, value_delimiter = ',', default_value = "1,all")]
    pub acks: Vec<String>,
    /// The kcat binary (Debian's `kcat` package).
    #[arg(long, default_value = "kcat")]
    pub kcat: PathBuf,
    /// Scratch folder (removed at the end). Default: under $TMPDIR or /var/tmp.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn mb(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// kcat's producer settings for throughput: large batches, a short linger, a deep queue.
const PRODUCER: &[&str] = &[
    "-X",
    "linger.ms=5",
    "-X",
    "batch.size=1000000",
    "-X",
    "batch.num.messages=100000",
    "-X",
    "queue.buffering.max.messages=2000000",
    "-X",
    "queue.buffering.max.kbytes=2097151",
];

impl KafkaBenchArgs {
    /// Runs the benchmark.
    pub fn run(self) -> Result<(), CliError> {
        let acks: Vec<&str> = self
            .acks
            .iter()
            .map(|a| match a.as_str() {
                "1" => Ok("1"),
                "all" | "-1" => Ok("all"),
                o => Err(CliError::Usage(format!("--acks {o}: expected 1 or all"))),
            })
            .collect::<Result<_, _>>()?;
        let version = Command::new(&self.kcat).arg("-V").output().map_err(|e| {
            CliError::io(
                format!(
                    "run {} (install Debian's kcat, or pass --kcat)",
                    self.kcat.display()
                ),
                e,
            )
        })?;
        let version = String::from_utf8_lossy(&version.stdout);
        let scratch = Scratch::under(self.dir.as_deref(), "sluice-bench-kafka")?;
        let log = Log::open(scratch.path().join("log"), LogOptions::default())?;
        let server = sluice_kafka::serve(
            &log,
            sluice_kafka::KafkaConfig::new(
                "127.0.0.1:0"
                    .parse()
                    .map_err(|_| CliError::Usage("loopback address".into()))?,
            ),
        )?;
        let bootstrap = server.addr.to_string();
        eprintln!(
            "Kafka listener on {bootstrap}; client: {}",
            version
                .lines()
                .find(|l| l.contains("librdkafka"))
                .unwrap_or("kcat")
                .trim()
        );
        for &size in &self.sizes {
            let input = self.input(scratch.path(), size)?;
            let bytes = self.records as f64 * size as f64;
            let (embedded_produce, embedded_consume) = self.embedded(&log, size)?;
            for acks in &acks {
                let topic = format!("kafka-{size}-{acks}");
                log.create_topic(&topic, 1, &[])?;
                let produce = self.kcat_produce(&bootstrap, &topic, acks, &input)?;
                let end = log.describe_topic(&topic)?.partitions[0].log_end_offset;
                if end != self.records as i64 {
                    return Err(CliError::Usage(format!(
                        "kcat produced {end} of {} records to {topic}",
                        self.records
                    )));
                }
                let consume = self.kcat_consume(&bootstrap, &topic)?;
                println!(
                    "kafka produce size={size} acks={acks}: {} records in {:.2} s, {:.0} records/s ({:.1} MB/s); embedded producer {:.0} records/s, Kafka/embedded {:.2}",
                    self.records,
                    produce,
                    self.records as f64 / produce,
                    mb(bytes) / produce,
                    self.records as f64 / embedded_produce,
                    embedded_produce / produce,
                );
                println!(
                    "kafka consume size={size} (from acks={acks}): {} records in {:.2} s, {:.0} records/s ({:.1} MB/s); embedded consumer {:.1} MB/s, Kafka/embedded {:.2}",
                    self.records,
                    consume,
                    self.records as f64 / consume,
                    mb(bytes) / consume,
                    mb(bytes) / embedded_consume,
                    embedded_consume / consume,
                );
                log.delete_topic(&topic)?;
            }
        }
        drop(server);
        log.close()?;
        Ok(())
    }

    /// A file of `records` lines of `size` bytes (kcat's input).
    fn input(&self, dir: &std::path::Path, size: usize) -> Result<PathBuf, CliError> {
        write_input(dir, self.records, size)
    }

    /// Seconds for kcat to produce the file (from start to its exit, every record acked).
    fn kcat_produce(
        &self,
        bootstrap: &str,
        topic: &str,
        acks: &str,
        input: &std::path::Path,
    ) -> Result<f64, CliError> {
        kcat_produce(&self.kcat, bootstrap, topic, acks, input)
    }

    /// Seconds for kcat to consume the topic from the start to its end (printing nothing).
    fn kcat_consume(&self, bootstrap: &str, topic: &str) -> Result<f64, CliError> {
        let start = Instant::now();
        let out = Command::new(&self.kcat)
            .args([
                "-C",
                "-b",
                bootstrap,
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            // librdkafka's default fetch sizes (1 MB per partition): larger ones measured
            // slower here (8 MB: 380 MB/s against 530 at 1 MB), buffers leaving the caches.
            .args(["-f", ""])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| CliError::io("run kcat", e))?;
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(CliError::Usage(format!(
                "kcat -C failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(secs)
    }

    /// Seconds for the embedded producer, then the embedded consumer, on the same records.
    fn embedded(&self, log: &Log, size: usize) -> Result<(f64, f64), CliError> {
        let topic = format!("embedded-{size}");
        log.create_topic(&topic, 1, &[])?;
        let payload = Bytes::from(vec![b'x'; size]);
        let mut producer = log.producer(ProducerConfig {
            batch_size: 1 << 20,
            ..ProducerConfig::default()
        })?;
        let start = Instant::now();
        send_records(&mut producer, &topic, &payload, self.records)?;
        producer.flush()?;
        let produce = start.elapsed().as_secs_f64();
        drop(producer);
        let (_, consume) = consume_all(log, &topic, self.records)?;
        log.delete_topic(&topic)?;
        Ok((produce, consume))
    }
}

/// Seconds for `kcat` to produce the lines of `input` to `topic` with `acks` (from its start
/// to its exit, every record acknowledged), with the throughput settings above.
pub fn kcat_produce(
    kcat: &std::path::Path,
    bootstrap: &str,
    topic: &str,
    acks: &str,
    input: &std::path::Path,
) -> Result<f64, CliError> {
    let start = Instant::now();
    let out = Command::new(kcat)
        .args(["-P", "-b", bootstrap, "-t", topic, "-X"])
        .arg(format!("acks={acks}"))
        .args(PRODUCER)
        .arg("-l")
        .arg(input)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            CliError::io(
                format!(
                    "run {} (install Debian's kcat, or pass --kcat)",
                    kcat.display()
                ),
                e,
            )
        })?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(CliError::Usage(format!(
            "kcat -P failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(secs)
}

/// A file of `records` lines of `size` bytes in `dir` (kcat's input).
pub fn write_input(dir: &std::path::Path, records: u64, size: usize) -> Result<PathBuf, CliError> {
    let path = dir.join(format!("records-{size}"));
    let line: Vec<u8> = (0..size)
        .map(|i| b'a' + (i % 26) as u8)
        .chain([b'\n'])
        .collect();
    let file = std::fs::File::create(&path)
        .map_err(|e| CliError::io(format!("create {}", path.display()), e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    for _ in 0..records {
        w.write_all(&line)
            .map_err(|e| CliError::io(format!("write {}", path.display()), e))?;
    }
    w.flush()
        .map_err(|e| CliError::io(format!("write {}", path.display()), e))?;
    Ok(path)
}
