//! `sluice produce`: one record per input line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use sluice_log::{Compression, Log, ProducerConfig, Record};

use super::CliError;

/// Arguments of `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Split each line at the first SEP into key and value (lines without it are an error).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Write every record to this partition instead of choosing by key.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A header added to every record, KEY=VALUE (repeatable), as kcat's `-H`.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Where the log lives (last: its help heading applies to what follows).
    #[command(flatten)]
    pub log: super::LogArgs,
}

/// `--compression`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// Records stored as they are.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing, as the Java client writes).
    Snappy,
    /// LZ4 frames.
    Lz4,
    /// zstd.
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// A `KEY=VALUE` header (the key not empty; the value may be).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// The headers of `--header` as the log's.
pub fn record_headers(headers: &[(String, String)]) -> Vec<sluice_log::Header> {
    headers
        .iter()
        .map(|(k, v)| sluice_log::Header {
            key: k.clone(),
            value: Some(Bytes::from(v.clone())),
        })
        .collect()
}

impl ProduceArgs {
    /// Runs it.
    pub fn run(self, log: &Log) -> Result<(), CliError> {
        let compression = Compression::from(self.compression);
        let headers = record_headers(&self.headers);
        super::topics::refuse_internal(&self.topic, "written")?;
        let topic = log.topic_or_create(&self.topic)?;
        let max = topic.config().max_message_bytes as usize;
        let input: Box<dyn BufRead> = match &self.file {
            Some(f) => Box::new(BufReader::new(
                std::fs::File::open(f)
                    .map_err(|e| CliError::io(format!("open {}", f.display()), e))?,
            )),
            None => Box::new(BufReader::new(std::io::stdin())),
        };
        let source = self
            .file
            .as_ref()
            .map_or("stdin".to_string(), |f| f.display().to_string());
        let mut producer = log.producer(ProducerConfig {
            compression,
            ..ProducerConfig::default()
        })?;
        let mut count = 0u64;
        for (i, line) in input.lines().enumerate() {
            let line =
                line.map_err(|e| CliError::io(format!("read {source} line {}", i + 1), e))?;
            let (key, value) = match &self.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                    None => {
                        return Err(CliError::Usage(format!(
                            "{source} line {}: no key separator '{sep}' in the line",
                            i + 1
                        )));
                    }
                },
                None => (None, line),
            };
            let size = value.len() + key.as_ref().map_or(0, |k| k.len());
            if size + 100 > max {
                return Err(CliError::Usage(format!(
                    "{source} line {}: record of {size} bytes exceeds max.message.bytes={max} of topic {}",
                    i + 1,
                    self.topic
                )));
            }
            let record = Record {
                key,
                value: Some(Bytes::from(value)),
                headers: headers.clone(),
                timestamp: sluice_log::record::now_ms(),
            };
            match self.partition {
                Some(p) => producer.send_to(&self.topic, p, record)?,
                None => producer.send(&self.topic, record)?,
            };
            count += 1;
        }
        producer.flush()?;
        eprintln!("Produced {count} record(s) to {}.", self.topic);
        Ok(())
    }
}
