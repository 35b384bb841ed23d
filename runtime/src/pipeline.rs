//! Pipeline files: a TOML file per pipeline declaring its topics, sources, SQL and sinks.
//!
//! ```toml
//! name = "rides"                      # default: the file name without .toml
//! guarantee = "exactly-once"          # or "at-least-once"
//! commit-interval = "100ms"           # how often sources, queries and sinks commit
//! sql = """                            # top-level keys come before the first [[table]]
//! CREATE STREAM IF NOT EXISTS rides (...) WITH (topic = 'rides');
//! CREATE TABLE IF NOT EXISTS zone_fares AS SELECT ...;
//! """
//!
//! [[topics]]
//! name = "rides"
//! partitions = 3
//! config = { "retention.ms" = "604800000" }
//!
//! [[sources]]
//! name = "rides-file"
//! topic = "rides"
//! file = { path = "data/*.jsonl", format = "json", key-field = "zone" }
//!
//! [[sinks]]
//! name = "fares-out"
//! topic = "zone_fares"
//! file = { path = "out/zone_fares" }
//! ```
//!
//! Every key is documented on its field below; unknown keys are errors, reported with the
//! file, line and key. `${VAR}` inside a string value is replaced by the environment
//! variable (an unset one is an error) after parsing, as data, so secrets stay out of the
//! files, and a value with quotes or newlines cannot change other settings. The values are
//! treated as secrets: no error, log line or status shows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sluice_connectors::config::Interval;
use sluice_connectors::elasticsearch::{ElasticsearchSink, ElasticsearchSinkConfig};
use sluice_connectors::file::{FileSink, FileSinkConfig, FileSource, FileSourceConfig};
use sluice_connectors::http_ingest::{HttpIngestConfig, IngestHandle, IngestSource};
use sluice_connectors::http_poll::{HttpPollSource, HttpPollSourceConfig};
use sluice_connectors::http_sink::{HttpSink, HttpSinkConfig};
use sluice_connectors::objstore::{ObjectStoreSink, ObjectStoreSinkConfig};
use sluice_connectors::postgres_cdc::{PostgresCdcConfig, PostgresCdcSource};
use sluice_connectors::{ConnectorError, Sink, Source};
pub use sluice_task::Guarantee;
use toml::Spanned;

/// Why a pipeline file was refused. Every variant is the user's to fix (the API answers 400),
/// and its text never holds the value of a `${VAR}` reference.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error (shared, so the error can be cloned into status).
        source: Arc<std::io::Error>,
    },
    /// The file does not parse or validate.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where: `file:line:column`, or the file alone when no line applies.
        at: String,
        /// What is wrong, naming the key (redacted of secret values).
        reason: String,
    },
}

impl PipelineError {
    /// An error at `at` (`file:line:column` or `file`).
    fn at(at: impl std::fmt::Display, reason: impl Into<String>) -> PipelineError {
        PipelineError::Invalid {
            at: at.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error without `secrets`' values.
    pub fn redact(self, secrets: &Secrets) -> PipelineError {
        match self {
            PipelineError::Invalid { at, reason } => PipelineError::Invalid {
                at: secrets.redact(&at),
                reason: secrets.redact(&reason),
            },
            read => read,
        }
    }
}

/// A pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineConfig {
    /// The pipeline's name (letters, digits, `-`, `_`); default: the file name without
    /// `.toml`.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// `"exactly-once"` (default): sources, the pipeline's SQL queries and sinks commit
    /// their outputs, state changes and input positions together, so after a crash nothing
    /// is lost or repeated. `"at-least-once"`: outputs are written first and positions
    /// committed after, without transactions; after a crash the last epoch's outputs may
    /// repeat.
    #[serde(default)]
    pub guarantee: Guarantee,
    /// How often sources, the pipeline's SQL queries and sinks commit an epoch (default
    /// `"100ms"`, as Kafka Streams under exactly-once): results become visible downstream at
    /// most this late (each stage of a pipeline adds up to one interval), and a crash redoes
    /// at most this much work. An HTTP ingest source commits as soon as a request waits for
    /// its answer (requests arriving together share a commit).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Interval,
    /// Bytes of results each of the pipeline's SQL queries whose result is a table holds
    /// within an epoch so as to write only each key's latest update (default `10000000`, as
    /// ksqlDB's `cache.max.bytes.buffering`); `0` writes every update. Streams are never
    /// held back.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: usize,
    /// Topics created when the pipeline deploys (existing ones are kept as they are).
    #[serde(default)]
    pub topics: Vec<TopicSpec>,
    /// Sources writing into topics.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// SQL statements run when the pipeline deploys, in order. Use `CREATE ... IF NOT
    /// EXISTS` so a redeploy keeps the streams, tables and queries it made.
    #[serde(default)]
    pub sql: Option<String>,
    /// Sinks reading topics.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
}

/// A topic to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopicSpec {
    /// Topic name.
    pub name: Spanned<String>,
    /// Partitions (default 1).
    #[serde(default = "one")]
    pub partitions: u32,
    /// Topic configuration (`retention.ms`, `cleanup.policy`, ... as `sluice topics create
    /// --config`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn default_cache_max_bytes() -> usize {
    sluice_sql::record_cache::DEFAULT_CACHE_MAX_BYTES
}

fn default_commit_interval() -> Interval {
    Interval(sluice_sql::runner::DEFAULT_COMMIT_INTERVAL)
}

/// A source: a name, the topic it writes, and exactly one connector table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSpec {
    /// Unique in the pipeline; its stored position is keyed by it.
    pub name: Spanned<String>,
    /// The topic its records go to.
    pub topic: String,
    /// Tail files: `{ path, format = "lines"|"json"|"csv", key-field, max-line-bytes }`.
    #[serde(default)]
    pub file: Option<FileSourceConfig>,
    /// Accept records over HTTP at the worker's `POST /ingest/<topic>`:
    /// `{ key-field, token, max-body-bytes, idempotency-keys }`.
    #[serde(default)]
    pub http: Option<HttpIngestConfig>,
    /// Poll a URL: `{ url, interval, json-path, key-field, headers, timeout,
    /// max-body-bytes }`.
    #[serde(default)]
    pub http_poll: Option<HttpPollSourceConfig>,
    /// Capture a PostgreSQL database's row changes: `{ url, password-env, tables,
    /// publication, slot, snapshot, tombstones-on-delete, status-interval,
    /// max-transaction-records }`. `topic` is then a pattern: `{schema}` and `{table}`
    /// name each table's topic (`"pg.{schema}.{table}"`).
    #[serde(default)]
    pub postgres_cdc: Option<PostgresCdcConfig>,
}

impl SourceSpec {
    fn connectors(&self) -> usize {
        usize::from(self.file.is_some())
            + usize::from(self.http.is_some())
            + usize::from(self.http_poll.is_some())
            + usize::from(self.postgres_cdc.is_some())
    }

    /// The topic `topic` names for validation: a CDC source's pattern with sample names.
    fn topic_sample(&self) -> String {
        match self.postgres_cdc {
            Some(_) => self
                .topic
                .replace("{schema}", "public")
                .replace("{table}", "t"),
            None => self.topic.clone(),
        }
    }
}

/// A sink: a name, the topic it reads, and exactly one connector table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SinkSpec {
    /// Unique in the pipeline; its consumer group is `sluice-sink-<pipeline>.<name>`.
    pub name: Spanned<String>,
    /// The topic it reads (committed records only).
    pub topic: String,
    /// Write JSON lines files: `{ path, format = "value"|"envelope", roll-records, roll-bytes }`.
    #[serde(default)]
    pub file: Option<FileSinkConfig>,
    /// Write objects to S3, GCS, Azure, a folder or memory: `{ url, format =
    /// "json"|"parquet", partition-by, flush-records, flush-bytes, flush-interval,
    /// flush-idle, multipart-threshold, retry-timeout, options }`.
    #[serde(default)]
    pub object_store: Option<ObjectStoreSinkConfig>,
    /// Write documents to Elasticsearch or OpenSearch: `{ url, index, document-id,
    /// tombstones, batch-records, batch-bytes, linger, max-in-flight, username, password,
    /// api-key, tls-ca-file, index-template, ... }`.
    #[serde(default)]
    pub elasticsearch: Option<ElasticsearchSinkConfig>,
    /// Send records to an HTTP endpoint: `{ url, method, format = "single"|"array"|"ndjson",
    /// envelope, headers, batch-records, batch-bytes, linger, max-in-flight, ... }`.
    #[serde(default)]
    pub http: Option<HttpSinkConfig>,
}

impl SinkSpec {
    fn connectors(&self) -> usize {
        usize::from(self.file.is_some())
            + usize::from(self.object_store.is_some())
            + usize::from(self.elasticsearch.is_some())
            + usize::from(self.http.is_some())
    }
}

/// Builds a source's connector. An HTTP ingest source also returns the handle the worker's
/// endpoint submits to.
pub fn build_source(
    s: &SourceSpec,
    base: &Path,
    pipeline: &str,
) -> Result<(Box<dyn Source>, Option<IngestHandle>), ConnectorError> {
    if let Some(c) = &s.postgres_cdc {
        let name = format!("{pipeline}/{}", s.name.get_ref());
        let source = PostgresCdcSource::new(c.clone(), &name, &s.topic)?;
        return Ok((Box::new(source), None));
    }
    if let Some(c) = &s.file {
        return Ok((Box::new(FileSource::new(c.clone(), base)?), None));
    }
    if let Some(c) = &s.http_poll {
        return Ok((Box::new(HttpPollSource::new(c.clone())?), None));
    }
    if let Some(c) = &s.http {
        let (source, handle) = IngestSource::new(&s.topic, c.clone())?;
        return Ok((Box::new(source), Some(handle)));
    }
    Err(ConnectorError::Config("no connector table".into()))
}

/// Builds a sink's connector.
pub fn build_sink(s: &SinkSpec, base: &Path) -> Result<Box<dyn Sink>, ConnectorError> {
    if let Some(c) = &s.file {
        return Ok(Box::new(FileSink::new(c.clone(), base)?));
    }
    if let Some(c) = &s.object_store {
        return Ok(Box::new(ObjectStoreSink::new(c.clone(), base)?));
    }
    if let Some(c) = &s.elasticsearch {
        return Ok(Box::new(ElasticsearchSink::new(c.clone(), base)?));
    }
    if let Some(c) = &s.http {
        return Ok(Box::new(HttpSink::new(c.clone(), base)?));
    }
    Err(ConnectorError::Config("no connector table".into()))
}

/// Checks what only building shows, without deploying: topic names and configs are valid
/// and every connector builds (globs, URLs, sizes). `pipelines validate` and every deploy
/// run it first, so a pipeline that passes does not fail later for these reasons. Errors
/// name the file, line and what is wrong.
pub fn build_check(p: &Pipeline) -> Result<(), PipelineError> {
    let at = |name: &Spanned<String>| {
        let (line, col) = line_col(&p.text, name.span().start);
        format!("{}:{line}:{col}", p.path.display())
    };
    let topic_error = |at: String, place: &str, topic: &str, e: &dyn std::fmt::Display| {
        PipelineError::at(at, format!("{place}topic '{topic}': {e}"))
    };
    let internal = |at: String, place: &str, topic: &str| -> Result<(), PipelineError> {
        if sluice_log::is_internal_topic(topic) {
            return Err(topic_error(
                at,
                place,
                topic,
                &"it is an internal topic (names starting with `__` or ending in `-changelog` belong to Sluice)",
            ));
        }
        Ok(())
    };
    for t in &p.config.topics {
        let name = t.name.get_ref();
        internal(at(&t.name), "", name)?;
        sluice_log::log::validate_topic_name(name)
            .map_err(|e| topic_error(at(&t.name), "", name, &e))?;
        sluice_log::TopicConfig::from_overrides(
            t.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| topic_error(at(&t.name), "", name, &e))?;
    }
    for s in &p.config.sources {
        let place = format!("source {}: ", s.name.get_ref());
        let topic = s.topic_sample();
        internal(at(&s.name), &place, &topic)?;
        sluice_log::log::validate_topic_name(&topic)
            .map_err(|e| topic_error(at(&s.name), &place, &s.topic, &e))?;
        build_source(s, p.base(), &p.name)
            .map_err(|e| PipelineError::at(at(&s.name), format!("{place}{e}")))?;
    }
    for s in &p.config.sinks {
        let place = format!("sink {}: ", s.name.get_ref());
        sluice_log::log::validate_topic_name(&s.topic)
            .map_err(|e| topic_error(at(&s.name), &place, &s.topic, &e))?;
        build_sink(s, p.base())
            .map_err(|e| PipelineError::at(at(&s.name), format!("{place}{e}")))?;
    }
    Ok(())
}

/// A pipeline file that parsed and validated.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What it declares.
    pub config: PipelineConfig,
    /// The values its `${VAR}` references were replaced with.
    pub secrets: Secrets,
    /// The file's text as written (`${VAR}` not replaced), for positions in errors.
    text: String,
}

impl Pipeline {
    /// `message` without the pipeline's secret values (see [`Secrets`]).
    pub fn redact(&self, message: &str) -> String {
        self.secrets.redact(message)
    }

    /// The folder relative paths in the file are resolved against.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// The values `${VAR}` references were replaced with: they are secrets (tokens, keys), so
/// every message that could hold one passes through [`Secrets::redact`]. Its `Debug` shows
/// the variable names only.
#[derive(Clone, Default)]
pub struct Secrets {
    /// Each substituted value with its variable's name.
    values: Vec<(String, String)>,
    /// The string values substitutions were made in (for errors about them).
    substituted: Vec<Substituted>,
}

/// A string value that had `${VAR}` replaced: its key, where it is, and the variables.
#[derive(Clone, Debug)]
struct Substituted {
    key: String,
    span: std::ops::Range<usize>,
    vars: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|(_, var)| var))
            .finish()
    }
}

impl Secrets {
    /// True when the `sql` key's value had `${VAR}` replaced in it.
    pub fn in_sql(&self) -> bool {
        self.substituted.iter().any(|s| s.key == "sql")
    }

    /// Values shorter than this are not searched for in messages: a `${PARTITIONS}` of `3`
    /// is no secret, and replacing every `3` would garble line numbers.
    const MIN_LEN: usize = 4;

    /// `message` with every substituted value replaced by `${VAR}`.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_string();
        // Longest first, so a value containing another is replaced whole.
        let mut values: Vec<&(String, String)> = self.values.iter().collect();
        values.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        for (value, var) in values {
            if value.len() < Self::MIN_LEN {
                continue;
            }
            // Messages quote values as written and also escaped (serde's `{:?}`).
            for form in [
                value.clone(),
                value.escape_debug().to_string(),
                percent_encoded(value),
            ] {
                if out.contains(form.as_str()) {
                    out = out.replace(form.as_str(), &format!("${{{var}}}"));
                }
            }
        }
        out
    }
}

/// Where `${VAR}` values come from, and the file they are replaced in (for errors).
struct Env<'a> {
    var: &'a dyn Fn(&str) -> Option<String>,
    text: &'a str,
    file: &'a Path,
}

/// `value` as a URL shows it: every byte but letters, digits and `-._~/` as `%XX`.
fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replaces `${VAR}` inside every string value of `value` (keys and other types are left
/// alone) with the environment's value, as data: a value holding quotes, tabs or newlines
/// stays one string and cannot add settings. Names the line of an unset variable.
fn expand_env(
    key: &str,
    value: &mut toml::de::DeValue<'_>,
    span: std::ops::Range<usize>,
    env: &Env<'_>,
    secrets: &mut Secrets,
) -> Result<(), PipelineError> {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut vars = Vec::new();
            let mut rest: &str = s;
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let after = &rest[i + 2..];
                let Some(end) = after.find('}') else {
                    out.push_str(&rest[i..]);
                    rest = "";
                    break;
                };
                let var = &after[..end];
                match (env.var)(var) {
                    Some(v) => {
                        out.push_str(&v);
                        secrets.values.push((v, var.to_string()));
                        vars.push(format!("${{{var}}}"));
                    }
                    None => {
                        let (line, col) = line_col(env.text, span.start);
                        return Err(PipelineError::at(
                            format_args!("{}:{line}:{col}", env.file.display()),
                            format!("environment variable {var} is not set"),
                        ));
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = std::borrow::Cow::Owned(out);
            secrets.substituted.push(Substituted {
                key: key.to_string(),
                span,
                vars,
            });
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                let span = item.span();
                expand_env(key, item.get_mut(), span, env, secrets)?;
            }
        }
        DeValue::Table(table) => {
            for (k, item) in table.iter_mut() {
                let span = item.span();
                expand_env(k.get_ref(), item.get_mut(), span, env, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// True for a valid pipeline, source or sink name: letters, digits, `-` and `_`.
pub fn valid_name(n: &str) -> bool {
    // Names become file names (`<name>.toml`), group ids and topic names (`<name>.dlq`).
    !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The most topics, sources and sinks one pipeline file declares.
pub const MAX_ENTRIES: usize = 1000;

/// The longest pipeline, source or sink name.
pub const MAX_NAME_LEN: usize = 200;

/// Reads and validates a pipeline file; the error names the file, line and key.
pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
    let raw = std::fs::read_to_string(path).map_err(|e| PipelineError::Read {
        path: path.to_path_buf(),
        source: Arc::new(e),
    })?;
    parse(&raw, path)
}

/// Validates a pipeline file's text, as if read from `path`. Errors never show the values
/// of `${VAR}` references.
pub fn parse(raw: &str, path: &Path) -> Result<Pipeline, PipelineError> {
    parse_with_env(raw, path, &|v| std::env::var(v).ok())
}

/// As [`parse`], with `${VAR}` values from `var`.
fn parse_with_env(
    raw: &str,
    path: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, PipelineError> {
    let mut secrets = Secrets::default();
    let env = Env {
        var,
        text: raw,
        file: path,
    };
    parse_with(raw, path, &env, &mut secrets).map_err(|e| e.redact(&secrets))
}

fn parse_with(
    raw: &str,
    path: &Path,
    env: &Env<'_>,
    secrets: &mut Secrets,
) -> Result<Pipeline, PipelineError> {
    let text = raw;
    let toml_error = |e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let (l, c) = line_col(text, s.start);
                format!(":{l}:{c}")
            })
            .unwrap_or_default();
        // Files from before `${VAR}` became string-only may hold `key = ${VAR}`.
        let line = e.span().map_or("", |s| {
            let start = text[..s.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            text[start..].lines().next().unwrap_or("")
        });
        let hint = if line.contains("= ${") {
            " (`${VAR}` is replaced inside strings only: write \"${VAR}\")"
        } else {
            ""
        };
        PipelineError::at(
            format_args!("{}{at}", path.display()),
            format!("{}{hint}", e.message().trim()),
        )
    };
    let mut root = toml::de::DeTable::parse(text).map_err(toml_error)?;
    for (key, value) in root.get_mut().iter_mut() {
        let span = value.span();
        if key.get_ref() == "name"
            && matches!(value.get_ref(), toml::de::DeValue::String(n) if n.contains("${"))
        {
            // A secret there would show in status, logs and topic names.
            let (line, col) = line_col(text, span.start);
            return Err(PipelineError::at(
                format_args!("{}:{line}:{col}", path.display()),
                "the pipeline's name cannot come from ${VAR}",
            ));
        }
        expand_env(key.get_ref(), value.get_mut(), span, env, secrets)?;
    }
    let config = PipelineConfig::deserialize(toml::de::Deserializer::from(root)).map_err(|e| {
        // The message may quote part of a substituted value (`unknown time unit "hunter"`):
        // where the error is in one, say where and which variables, not what.
        let hidden = e.span().and_then(|at| {
            secrets.substituted.iter().find(|s| {
                s.span.start < at.end.max(at.start + 1) && at.start < s.span.end
            })
        });
        match hidden {
            Some(s) => {
                let (l, c) = line_col(text, s.span.start);
                PipelineError::at(
                    format_args!("{}:{l}:{c}", path.display()),
                    format!(
                        "{}: the value from {} is not valid here (the value is a secret: what is wrong with it is not shown)",
                        s.key,
                        s.vars.join(", ")
                    ),
                )
            }
            None => toml_error(e),
        }
    })?;
    let at = |s: std::ops::Range<usize>| {
        let (l, c) = line_col(text, s.start);
        format!("{}:{l}:{c}", path.display())
    };
    // Bounded, so checking a file (under the deployer's lock) stays quick.
    let entries = config.topics.len() + config.sources.len() + config.sinks.len();
    if entries > MAX_ENTRIES {
        return Err(PipelineError::at(
            path.display(),
            format!(
                "{entries} topics, sources and sinks: a pipeline file declares at most {MAX_ENTRIES} (split it into several pipelines)"
            ),
        ));
    }
    let name = match &config.name {
        Some(n) => n.get_ref().clone(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if !valid_name(&name) {
        let place = config
            .name
            .as_ref()
            .map_or_else(|| path.display().to_string(), |n| at(n.span()));
        return Err(PipelineError::at(
            place,
            format!(
                "pipeline name '{name}' must be at most {MAX_NAME_LEN} letters, digits, '-' or '_'"
            ),
        ));
    }
    if config.commit_interval.0.is_zero() {
        return Err(PipelineError::at(
            path.display(),
            "commit-interval must be more than 0 (e.g. \"100ms\", \"1s\")",
        ));
    }
    for t in &config.topics {
        if t.partitions == 0 {
            return Err(PipelineError::at(
                at(t.name.span()),
                "topics.partitions must be at least 1",
            ));
        }
    }
    // Sources and sinks: a unique simple name and exactly one connector table.
    let mut seen = std::collections::BTreeSet::new();
    let tasks = config
        .sources
        .iter()
        .map(|s| ("sources", "source", &s.name, s.connectors()))
        .chain(
            config
                .sinks
                .iter()
                .map(|s| ("sinks", "sink", &s.name, s.connectors())),
        );
    for (section, kind, name, connectors) in tasks {
        if !valid_name(name.get_ref()) || !seen.insert(format!("{kind} {}", name.get_ref())) {
            return Err(PipelineError::at(
                at(name.span()),
                format!(
                    "{section}.name '{}' must be unique and made of at most {MAX_NAME_LEN} letters, digits, '-' or '_'",
                    name.get_ref()
                ),
            ));
        }
        if connectors != 1 {
            return Err(PipelineError::at(
                at(name.span()),
                format!(
                    "{kind} {} needs exactly one connector table (e.g. file = {{ path = ... }}), it has {connectors}",
                    name.get_ref()
                ),
            ));
        }
    }
    if let Some(sql) = &config.sql {
        sluice_sql::parse(sql).map_err(|e| {
            let secret = secrets.in_sql();
            match e {
                // The message may quote a fragment of a substituted value.
                sluice_sql::SqlError::Syntax { line, column, .. } if secret => PipelineError::at(
                    path.display(),
                    format!("sql: syntax error at line {line}, column {column} (the statements hold ${{VAR}} values, so the message is not shown)"),
                ),
                e => PipelineError::at(path.display(), format!("sql: {e}")),
            }
        })?;
    }
    Ok(Pipeline {
        name,
        path: path.to_path_buf(),
        config,
        secrets: secrets.clone(),
        text: raw.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_full_pipeline_parses_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "rides.toml",
            r#"
sql = "CREATE STREAM IF NOT EXISTS rides (zone VARCHAR KEY) WITH (topic = 'rides');"

[[topics]]
name = "rides"
partitions = 3

[[sources]]
name = "in"
topic = "rides"
file = { path = "in/*.jsonl", format = "json", key-field = "zone" }

[[sinks]]
name = "out"
topic = "rides"
file = { path = "out" }
"#,
        );
        let p = load(&p).unwrap();
        assert_eq!(p.name, "rides");
        assert_eq!(p.config.topics[0].partitions, 3);
        assert_eq!(
            p.config.sinks[0].file.as_ref().unwrap().roll_records,
            100_000
        );
        assert_eq!(p.config.guarantee, Guarantee::ExactlyOnce);
        assert_eq!(
            p.config.commit_interval.0,
            std::time::Duration::from_millis(100)
        );
    }

    #[test]
    fn guarantee_and_commit_interval_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "alo.toml",
            "guarantee = \"at-least-once\"\ncommit-interval = \"250ms\"\n",
        );
        let p = load(&p).unwrap();
        assert_eq!(p.config.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(
            p.config.commit_interval.0,
            std::time::Duration::from_millis(250)
        );
        let p = write(dir.path(), "bad.toml", "guarantee = \"exactly-twice\"\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml:1:") && e.contains("exactly-twice") && e.contains("at-least-once"),
            "{e}"
        );
        let p = write(dir.path(), "zero.toml", "commit-interval = \"0s\"\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("zero.toml: commit-interval must be more than 0"),
            "{e}"
        );
        let p = write(dir.path(), "soon.toml", "commit-interval = \"soon\"\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("soon.toml:1:") && e.contains("not a duration"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "bad.toml",
            "[[sources]]\nname = \"in\"\ntopic = \"t\"\nfile = { path = \"x\", colour = \"red\" }\n",
        );
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml:4:") && e.contains("colour"), "{e}");
        let p = write(
            dir.path(),
            "bad2.toml",
            "[[sinks]]\nname = \"out\"\ntopic = \"t\"\n",
        );
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad2.toml:2:") && e.contains("connector table"),
            "{e}"
        );
        let p = write(dir.path(), "bad3.toml", "sql = \"SELEC 1\"\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("bad3.toml: sql: syntax error"), "{e}");
        let p = write(
            dir.path(),
            "bad4.toml",
            "[[topics]]\nname = \"${SLUICE_TEST_UNSET_VAR}\"\n",
        );
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad4.toml:2:") && e.contains("SLUICE_TEST_UNSET_VAR"),
            "{e}"
        );
    }

    #[test]
    fn env_values_are_data_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let env = |v: &str| {
            Some(match v {
                "SLUICE_TEST_INJECT" => "abc\", max-body-bytes = 1, key-field = \"x".to_string(),
                "SLUICE_TEST_TAB" => "a\tb".to_string(),
                "SLUICE_TEST_SECRET" => "hunter2-very-secret".to_string(),
                _ => return None,
            })
        };
        let load = |p: &Path| parse_with_env(&std::fs::read_to_string(p).unwrap(), p, &env);
        let p = write(
            dir.path(),
            "env.toml",
            r#"
[[sources]]
name = "in"
topic = "t"
http = { token = "${SLUICE_TEST_INJECT}" }

[[sources]]
name = "in2"
topic = "t2"
http = { token = '${SLUICE_TEST_TAB}' }
"#,
        );
        let p = load(&p).unwrap();
        let http = p.config.sources[0].http.as_ref().unwrap();
        assert_eq!(
            http.token.as_deref(),
            Some("abc\", max-body-bytes = 1, key-field = \"x"),
            "the value is one string"
        );
        assert_eq!(http.max_body_bytes, 16 << 20, "nothing injected");
        assert_eq!(http.key_field, None);
        let http = p.config.sources[1].http.as_ref().unwrap();
        assert_eq!(http.token.as_deref(), Some("a\tb"));
        for text in [
            "guarantee = \"${SLUICE_TEST_SECRET}\"\n",
            "commit-interval = \"${SLUICE_TEST_SECRET}\"\n",
            "commit-interval = \"1${SLUICE_TEST_SECRET}\"\n",
            "[[topics]]\nname = \"x\"\npartitions = \"${SLUICE_TEST_SECRET}\"\n",
            "sql = \"SELECT ${SLUICE_TEST_SECRET} FROM\"\n",
            "name = \"${SLUICE_TEST_SECRET}\"\n",
        ] {
            let f = write(dir.path(), "leak.toml", text);
            let e = load(&f).unwrap_err().to_string();
            for fragment in ["hunter", "very"] {
                assert!(!e.contains(fragment), "{text}: {e}");
            }
            assert!(e.contains("leak.toml:"), "{e}");
        }
        assert_eq!(
            Secrets::of(vec![("sécret✓".into(), "S".into())])
                .redact("GET http://h/s%C3%A9cret%E2%9C%93/x"),
            "GET http://h/${S}/x"
        );
        let e = load(&write(
            dir.path(),
            "leak.toml",
            "guarantee = \"${SLUICE_TEST_SECRET}\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("${SLUICE_TEST_SECRET}"), "{e}");
        assert!(
            !format!("{p:?}").contains("max-body-bytes = 1"),
            "Debug hides the token"
        );
    }

    #[test]
    fn validate_builds_connectors_and_topics() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expect) in [
            ("[[topics]]\nname = \"a b\"\n", "topic 'a b'"),
            (
                "[[topics]]\nname = \"t\"\nconfig = { \"retention.ms\" = \"soon\" }\n",
                "retention.ms",
            ),
            (
                "[[sources]]\nname = \"in\"\ntopic = \"t\"\nhttp = { max-body-bytes = 0 }\n",
                "max-body-bytes",
            ),
            (
                "[[sinks]]\nname = \"out\"\ntopic = \"t\"\nfile = { path = \"o\", roll-records = 0 }\n",
                "roll-records",
            ),
            (
                "[[sources]]\nname = \"in\"\ntopic = \"t\"\nfile = { path = \"[\" }\n",
                "path '['",
            ),
            (
                "[[sources]]\nname = \"in\"\ntopic = \"t\"\nhttp-poll = { url = \"ftp://x/y\" }\n",
                "scheme",
            ),
            (
                "[[sinks]]\nname = \"out\"\ntopic = \"t t\"\nfile = { path = \"o\" }\n",
                "topic 't t'",
            ),
            (
                "[[sources]]\nname = \"in\"\ntopic = \"__consumer_offsets\"\nhttp = { }\n",
                "internal topic",
            ),
            ("[[topics]]\nname = \"q-changelog\"\n", "internal topic"),
            (
                "[[sinks]]\nname = \"out\"\ntopic = \"t\"\nobject-store = { url = \"memory://\", partition-by = \"{nope}\" }\n",
                "partition-by",
            ),
        ] {
            let f = write(dir.path(), "v.toml", text);
            let p = load(&f).unwrap();
            let e = build_check(&p).unwrap_err().to_string();
            assert!(e.contains(expect) && e.contains("v.toml:"), "{text}: {e}");
        }
        // A check that passes leaves nothing behind (no output folder).
        let f = write(
            dir.path(),
            "ok.toml",
            "[[sinks]]\nname = \"out\"\ntopic = \"t\"\nfile = { path = \"made-by-check\" }\n",
        );
        build_check(&load(&f).unwrap()).unwrap();
        assert!(!dir.path().join("made-by-check").exists());
    }

    impl Secrets {
        fn of(values: Vec<(String, String)>) -> Secrets {
            Secrets {
                values,
                substituted: Vec::new(),
            }
        }
    }

    #[test]
    fn secrets_are_redacted_longest_first_and_short_values_left() {
        let s = Secrets::of(vec![
            ("abcd".into(), "A".into()),
            ("abcdefgh".into(), "B".into()),
            ("3".into(), "N".into()),
        ]);
        assert_eq!(s.redact("x abcdefgh abcd 3"), "x ${B} ${A} 3");
        let quoted = Secrets::of(vec![("pa\"ss\\word".into(), "P".into())]);
        assert_eq!(
            quoted.redact(r#"invalid type: string "pa\"ss\\word""#),
            r#"invalid type: string "${P}""#
        );
        assert_eq!(format!("{s:?}"), r#"["A", "B", "N"]"#);
    }
}
