//! The documents the API answers and takes: one Rust type per JSON shape, from which the
//! OpenAPI document ([`super::openapi`]) is generated, so the description cannot drift from
//! what the handlers send. The CLI renders the same documents (locally or fetched from a
//! worker).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An error: the HTTP status again as `error_code`, and what went wrong (it names the
/// file, line and key, the SQL position or the topic/partition/offset where one applies).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status.
    pub error_code: u16,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

/// A one-line answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// What was done.
    pub message: String,
}

/// `ok`, or `degraded` when a task or query fails or the log lost records.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Everything runs.
    Ok,
    /// Still serving, but an operator should look.
    Degraded,
}

/// Records the log found missing when it opened (kept until `data-loss.json` is deleted).
#[derive(Debug, Serialize, ToSchema)]
pub struct DataLossDoc {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset lost.
    pub from: i64,
    /// Offset after the last one lost.
    pub to: i64,
    /// What the log saw.
    pub reason: String,
    /// When (ms since the epoch).
    pub detected_at: i64,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Overall state.
    pub status: HealthStatus,
    /// Deployed pipelines.
    pub pipelines: usize,
    /// Their tasks.
    pub tasks: usize,
    /// Tasks retrying or failed.
    pub failing_tasks: usize,
    /// Persistent queries in error or that failed to start.
    pub failing_queries: usize,
    /// Pipeline files that do not load.
    pub broken_files: usize,
    /// Records the log lost.
    pub data_loss: Vec<DataLossDoc>,
    /// A deploy held the worker: the counts are the last ones taken.
    pub deploying: bool,
}

/// A task's state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStateDoc {
    /// Working.
    Running,
    /// An attempt failed; it restarts with backoff (`last_error` says why).
    Retrying,
    /// Stopped by an error retrying cannot fix; an operator acts.
    Failed,
    /// Stopped on request (paused).
    Stopped,
}

/// A source, sink or persistent query: its counters and its exactly-once commits.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDoc {
    /// `source <name>`, `sink <name>` or `query <id>`.
    #[schema(example = "source rides-file")]
    pub name: String,
    /// State.
    pub state: TaskStateDoc,
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Records left out by design (a stream record whose inner-join key is NULL).
    pub dropped: u64,
    /// Restarts after failures.
    pub restarts: u64,
    /// The error being retried, or the one the task stopped with.
    pub last_error: Option<String>,
    /// How far behind its input a source is, in bytes, when it can tell (Postgres CDC: the
    /// WAL its slot holds back).
    pub lag_bytes: Option<u64>,
    /// Epochs committed (each one log transaction: outputs, state and input positions).
    pub commits: u64,
    /// When the last epoch committed (ms since the epoch).
    pub last_commit_ms: Option<u64>,
    /// Average commit time, ms.
    pub commit_ms_avg: Option<f64>,
}

/// A pipeline's state.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Every task runs.
    Running,
    /// A task retries or failed.
    Degraded,
    /// Paused by the API.
    Paused,
}

/// A deployed pipeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineDoc {
    /// Name.
    pub name: String,
    /// The file it was deployed from.
    pub file: String,
    /// State.
    pub state: PipelineState,
    /// Its sources and sinks.
    pub tasks: Vec<TaskDoc>,
}

/// A pipeline file that does not load.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokenFile {
    /// The file.
    pub file: String,
    /// Why (file:line:key).
    pub error: String,
}

/// `GET /pipelines`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    /// Deployed pipelines.
    pub pipelines: Vec<PipelineDoc>,
    /// Files that failed to load.
    pub broken_files: Vec<BrokenFile>,
    /// In a cluster: the folder's pipelines that run on other nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub elsewhere: Vec<ElsewhereDoc>,
}

/// A pipeline that runs on another node of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ElsewhereDoc {
    /// The pipeline.
    pub name: String,
    /// The node running it (`null`: none can now, its partition of `__cluster_transactions`
    /// has no leader).
    pub node: Option<u64>,
}

/// A deploy's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeployDoc {
    /// What was done.
    pub message: String,
    /// The pipeline now.
    pub pipeline: Option<PipelineDoc>,
}

/// A pause, resume or restart's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionDoc {
    /// The pipeline now.
    pub pipeline: Option<PipelineDoc>,
}

/// `POST /pipelines/validate`: what the file would deploy.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationDoc {
    /// Always true (an invalid file is a 400 naming file:line:key).
    pub valid: bool,
    /// The pipeline's name.
    pub name: String,
    /// Topics it declares.
    pub topics: usize,
    /// Sources.
    pub sources: usize,
    /// Sinks.
    pub sinks: usize,
    /// SQL statements.
    pub statements: usize,
}

/// A source's committed position or a sink's committed offset, as Kafka Connect's
/// offsets API lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetDoc {
    /// `source <name>` or `sink <name>`.
    pub task: String,
    /// For a sink: the partition of its topic.
    pub partition: Option<u32>,
    /// A source's position as it stores it (file, byte offset; LSN; sequence), or a sink's
    /// next offset.
    pub offset: Value,
}

/// `GET /pipelines/{name}/offsets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OffsetsDoc {
    /// The pipeline.
    pub pipeline: String,
    /// Every committed position of its sources and sinks.
    pub offsets: Vec<OffsetDoc>,
}

/// A persistent query.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryDoc {
    /// Its id (what `TERMINATE` takes).
    pub id: String,
    /// The stream or table it writes.
    pub sink: String,
    /// The statement as written.
    pub statement: String,
    /// Why it could not start, if it did not.
    pub failed_to_start: Option<String>,
    /// Its task status (absent when it is not running).
    pub status: Option<TaskDoc>,
}

/// `GET /queries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueryList {
    /// Every persistent query of the catalog.
    pub queries: Vec<QueryDoc>,
}

/// A topic in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicSummary {
    /// Name.
    pub name: String,
    /// Internal topics (`__*`, `*-changelog`) are the log's and the worker's own.
    pub internal: bool,
    /// Partitions.
    pub partitions: usize,
    /// Log end minus log start over all partitions (transaction markers take offsets too).
    pub offsets: i64,
    /// Bytes on local disk.
    pub bytes: u64,
}

/// `GET /topics`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    /// Topics, by name.
    pub topics: Vec<TopicSummary>,
}

/// One partition of a topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionDoc {
    /// Partition.
    pub partition: u32,
    /// First offset held (locally or in tiered storage).
    pub log_start_offset: i64,
    /// Offset the next record gets.
    pub log_end_offset: i64,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset: read_committed readers stop here.
    pub last_stable_offset: i64,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Local segments.
    pub segments: usize,
    /// Local bytes.
    pub size_bytes: u64,
    /// First offset on local disk.
    pub local_log_start_offset: i64,
    /// First offset in tiered storage.
    pub remote_log_start_offset: Option<i64>,
    /// Offset after the last one in tiered storage.
    pub remote_log_end_offset: Option<i64>,
    /// Segments in tiered storage.
    pub remote_segments: usize,
    /// Bytes in tiered storage.
    pub remote_size_bytes: u64,
}

/// A config key's value and whether the topic sets it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigValue {
    /// The value.
    pub value: String,
    /// Set on the topic (else the default).
    pub overridden: bool,
}

/// `GET /topics/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicDoc {
    /// Name.
    pub name: String,
    /// An internal topic.
    pub internal: bool,
    /// Partitions.
    pub partitions: Vec<PartitionDoc>,
    /// Every config key.
    pub config: BTreeMap<String, ConfigValue>,
}

/// `POST /topics`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Name.
    pub name: String,
    /// Partitions (default 1).
    #[serde(default = "one")]
    #[schema(default = 1, minimum = 1)]
    pub partitions: u32,
    /// Config keys (`retention.ms`, `cleanup.policy`...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Copies of each partition. In a cluster: default 3, or the number of live nodes when
    /// fewer; the controller places them. A worker alone holds one copy only.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub replication_factor: Option<u16>,
}

fn one() -> u32 {
    1
}

/// A record header (a null value is distinct from an empty one).
#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderDoc {
    /// Key.
    pub key: String,
    /// Value as text (lossy UTF-8).
    pub value: Option<String>,
}

/// A record.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordDoc {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, ms since the epoch.
    pub timestamp: i64,
    /// Key as text (lossy UTF-8).
    pub key: Option<String>,
    /// Value as text (lossy UTF-8).
    pub value: Option<String>,
    /// Headers in order (a dead letter's reason is here).
    pub headers: Vec<HeaderDoc>,
}

/// `GET /topics/{name}/records`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordsDoc {
    /// Committed records from the offset asked for.
    pub records: Vec<RecordDoc>,
    /// Where to read next (past transaction markers and aborted records).
    pub next_offset: i64,
}

/// `POST /topics/{name}/records`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProducedDoc {
    /// Records written.
    pub produced: usize,
}

/// A group in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    /// Group id.
    pub group: String,
    /// `Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable` or `Dead`.
    pub state: String,
    /// Members now.
    pub members: usize,
}

/// `GET /groups`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Groups known by membership or committed offsets.
    pub groups: Vec<GroupSummary>,
}

/// One partition of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupPartitionDoc {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset (none yet: null).
    pub committed: Option<i64>,
    /// Last stable offset.
    pub log_end: i64,
    /// Records left to read (transaction markers and aborted records not counted).
    pub lag: i64,
    /// The member reading it now.
    pub member: Option<String>,
}

/// `GET /groups/{group}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDoc {
    /// Group id.
    pub group: String,
    /// State.
    pub state: String,
    /// Members now.
    pub members: usize,
    /// Every partition of the topics it reads.
    pub partitions: Vec<GroupPartitionDoc>,
}

/// `POST /groups/{group}/reset-offsets`: exactly one target.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The topic whose partitions move.
    pub topic: String,
    /// To the first offset held.
    #[serde(default)]
    pub to_earliest: bool,
    /// To the end.
    #[serde(default)]
    pub to_latest: bool,
    /// To this offset (clamped).
    pub to_offset: Option<i64>,
    /// To the first record at or after this time (ms since the epoch).
    pub to_datetime: Option<i64>,
    /// By this many from the committed offset (clamped).
    pub shift_by: Option<i64>,
    /// Make the change (else only the plan is answered).
    #[serde(default)]
    pub execute: bool,
}

/// One partition of a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetPartitionDoc {
    /// Partition.
    pub partition: u32,
    /// Committed before.
    pub old: Option<i64>,
    /// After.
    pub new: i64,
}

/// A reset's plan, and whether it was made.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetDoc {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Whether the offsets moved (else a dry run).
    pub executed: bool,
    /// Per partition.
    pub partitions: Vec<ResetPartitionDoc>,
}

/// `POST /sql` and `POST /query` as JSON (a plain-text body is the SQL itself).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// The statements.
    pub sql: Option<String>,
    /// ksqlDB's name for `sql`.
    pub ksql: Option<String>,
    /// ksqlDB's per-request properties: accepted, ignored.
    #[serde(rename = "streamsProperties")]
    pub streams_properties: Option<Value>,
}

/// One statement's result.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SqlResult {
    /// What a statement did.
    Message {
        /// The message.
        message: String,
    },
    /// A pull query's or SHOW/DESCRIBE's rows.
    Rows {
        /// Column names in order (a row object's keys may come in any order).
        columns: Vec<String>,
        /// One object per row, every column present (NULL as null).
        rows: Vec<serde_json::Map<String, Value>>,
    },
}

/// `POST /sql`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SqlResults {
    /// One per statement, in order.
    pub results: Vec<SqlResult>,
}

/// `POST /ingest/{topic}`: how the request ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestAckDoc {
    /// Records written (committed).
    pub accepted: usize,
    /// Items sent to the dead-letter topic.
    pub rejected: usize,
    /// The Idempotency-Key was seen before: nothing was written again.
    pub duplicate: bool,
}
