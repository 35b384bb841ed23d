//! The streaming aggregate: GROUP BY with or without a window, its state in `sluice-state`.
//!
//! A query `SELECT k, COUNT(*) FROM s [WINDOW ...] WHERE p GROUP BY k HAVING h` runs as
//!
//! ```text
//! decoded batch ─► [window expansion] ─► pre (WHERE, argument projection) ─► per row:
//!     group key ─► accumulators (cache ─► store) ─► EMIT CHANGES: the new result
//! stream time passes window end + grace ─► EMIT FINAL: each closed window once
//! results ─► post (HAVING, SELECT list) ─► output rows
//! ```
//!
//! Group keys are Arrow row-format bytes of the key columns (window columns excluded; they
//! are the window store's time dimension). The state of a group is its accumulators
//! ([`super::acc`]) plus the largest event time it has seen, which becomes the timestamp of
//! its output records. State is split over one store per partition of the query's input, by
//! the key's murmur2 hash, so it is "one store per operator and partition" whatever the
//! input's own keys are. Stores are reached through a write-back cache that is flushed into
//! the stores' epoch overlays after every batch; the task commits them with its log
//! transaction. The stream time (largest event time seen) is stored with the state, so a
//! restarted query closes windows exactly where it left off.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, new_empty_array,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use sluice_log::Log;
use sluice_state::{
    ChangelogTopic, KvStore, SessionOptions, SessionStore, StateEnv, StateStore, StoreId,
    WindowOptions, WindowStore,
};

use super::acc::{Acc, AggKind, AggSpec, decode_acc, encode_acc};
use super::stateless::Stateless;
use super::window::{WINDOWEND, WINDOWSTART, Windows};
use crate::ast::Emit;
use crate::error::{Result, SqlError};

/// Cached groups kept after a flush; beyond this the cache starts over (state stays in the
/// stores).
const CACHE_LIMIT: usize = 200_000;

/// The compiled, stateless description of an aggregate; [`Aggregate`] runs it.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    pre: Stateless,
    group: Vec<Arc<dyn PhysicalExpr>>,
    /// Positions in `group` of the window columns.
    window_pos: Option<(usize, usize)>,
    key_types: Vec<DataType>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    specs: Arc<Vec<AggSpec>>,
    agg_schema: SchemaRef,
    post: Stateless,
    windows: Option<Windows>,
    emit: Emit,
    /// Input columns anything reads (`None`: all); the others are not copied when rows are
    /// expanded into their windows.
    used_columns: Option<Vec<usize>>,
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

impl AggregatePlan {
    /// Builds the plan from an analyzed logical plan whose stateful node is an aggregate.
    /// `input_is_table`: rows of the input can be updated and deleted (aggregates retract).
    pub fn from_plan(
        state: &SessionState,
        plan: &LogicalPlan,
        windows: Option<Windows>,
        emit: Emit,
        input_is_table: bool,
    ) -> Result<AggregatePlan> {
        let (post, bottom) =
            Stateless::from_plan_until(state, plan, |p| matches!(p, LogicalPlan::Aggregate(_)))?;
        let LogicalPlan::Aggregate(agg) = bottom else {
            return Err(SqlError::Plan("internal error: not an aggregate".into()));
        };
        if matches!(agg.input.as_ref(), LogicalPlan::Aggregate(_))
            || Stateless::from_plan(state, &agg.input).is_err()
        {
            // An aggregate over an aggregate, a join or a subquery.
            return Err(SqlError::Invalid(
                "an aggregate may only read one stream or table directly (no nested aggregates or subqueries)".into(),
            ));
        }
        let pre = Stateless::from_plan(state, &agg.input)?;
        let input_schema = agg.input.schema();
        let mut group = Vec::with_capacity(agg.group_expr.len());
        let mut key_types = Vec::new();
        let mut ws = None;
        let mut we = None;
        for (i, e) in agg.group_expr.iter().enumerate() {
            if let Expr::GroupingSet(_) = e {
                return Err(SqlError::Invalid(
                    "GROUPING SETS, CUBE and ROLLUP are not supported".into(),
                ));
            }
            if let Expr::Column(c) = unalias(e) {
                if windows.is_some() && c.name == WINDOWSTART {
                    ws = Some(i);
                } else if windows.is_some() && c.name == WINDOWEND {
                    we = Some(i);
                }
            }
            let t = e.to_field(input_schema)?.1.data_type().clone();
            if ws != Some(i) && we != Some(i) {
                key_types.push(t);
            }
            group.push(crate::checked::physical_expr(state, e, input_schema)?);
        }
        let window_pos = match (windows, ws, we) {
            (None, _, _) => None,
            (Some(_), Some(s), Some(e)) => Some((s, e)),
            _ => {
                return Err(SqlError::Plan(
                    "internal error: the window columns are not grouped on".into(),
                ));
            }
        };
        if windows.is_some_and(|w| w.session) && key_types.is_empty() {
            return Err(SqlError::Invalid(
                "a SESSION window needs GROUP BY at least one column".into(),
            ));
        }
        let mut args = Vec::new();
        let mut specs = Vec::new();
        for (i, e) in agg.aggr_expr.iter().enumerate() {
            let Expr::AggregateFunction(f) = unalias(e) else {
                return Err(SqlError::Plan(format!(
                    "internal error: unexpected aggregate expression {e}"
                )));
            };
            if f.params.filter.is_some() || !f.params.order_by.is_empty() {
                return Err(SqlError::Invalid(format!(
                    "FILTER and ORDER BY inside aggregates are not supported: {e}"
                )));
            }
            let name = f.func.name().to_lowercase();
            let star = f.params.args.is_empty();
            let arg = f
                .params
                .args
                .first()
                .cloned()
                .unwrap_or_else(|| Expr::Literal(ScalarValue::Int64(Some(1)), None));
            let k = match f.params.args.get(1).map(unalias) {
                None => None,
                Some(Expr::Literal(v, _)) => {
                    v.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                        ScalarValue::Int64(Some(k)) if k > 0 => usize::try_from(k).ok(),
                        _ => None,
                    })
                }
                Some(other) => {
                    return Err(SqlError::Invalid(format!(
                        "the second argument of {} must be a constant, got {other}",
                        name.to_uppercase()
                    )));
                }
            };
            let kind = AggKind::from_name(&name, f.params.distinct, star, k)?;
            if name != "topk" && f.params.args.len() > 1 {
                return Err(SqlError::Invalid(format!(
                    "{} takes one argument",
                    name.to_uppercase()
                )));
            }
            let input = arg.to_field(input_schema)?.1.data_type().clone();
            let output = agg
                .schema
                .field(agg.group_expr.len() + i)
                .data_type()
                .clone();
            args.push(crate::checked::physical_expr(state, &arg, input_schema)?);
            specs.push(AggSpec {
                kind,
                input,
                output,
                retractable: input_is_table,
            });
        }
        let used_columns = match pre.input_columns() {
            Some(cols) => Some(cols),
            None => {
                // The pre stage only filters: the group keys and arguments read the input.
                let mut cols = std::collections::BTreeSet::new();
                for e in group.iter().chain(&args) {
                    cols.extend(
                        datafusion::physical_expr::utils::collect_columns(e)
                            .iter()
                            .map(|c| c.index()),
                    );
                }
                pre.filter_columns(&mut cols);
                Some(cols)
            }
        }
        .map(|c| c.into_iter().collect());
        Ok(AggregatePlan {
            used_columns,
            pre,
            group,
            window_pos,
            key_types,
            args,
            specs: Arc::new(specs),
            agg_schema: Arc::clone(agg.schema.inner()),
            post,
            windows,
            emit,
        })
    }

    /// The source the aggregate reads.
    pub fn source(&self) -> &str {
        self.pre.source()
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        self.post.schema()
    }

    /// `LIMIT n` above the aggregate.
    pub fn limit(&self) -> Option<usize> {
        self.post.limit()
    }

    /// The window clause.
    pub fn windows(&self) -> Option<&Windows> {
        self.windows.as_ref()
    }

    /// How many GROUP BY columns there are (window columns not counted).
    pub fn group_column_count(&self) -> usize {
        self.key_types.len()
    }
}

/// Where an aggregate keeps its state.
#[derive(Debug)]
enum Stores {
    /// Only the cache (push queries: nothing survives them).
    Memory,
    /// Unwindowed, one per partition.
    Kv(Vec<KvStore>),
    /// Tumbling and hopping windows.
    Window(Vec<WindowStore>),
    /// Session windows.
    Session(Vec<SessionStore>),
}

#[derive(Debug, Clone)]
struct Entry {
    accs: Vec<Acc>,
    max_ts: i64,
    /// Input rows in the group (rows of a table input leave it when replaced or deleted).
    rows: i64,
    dirty: bool,
}

/// Results of one batch: rows in the output schema, each with its record timestamp.
#[derive(Debug)]
pub struct Emitted {
    /// Output rows (after HAVING and the SELECT list).
    pub batch: RecordBatch,
    /// Event time of each row.
    pub timestamps: Vec<i64>,
    /// Rows of the input batch that were too late for every window they belong to.
    pub late: Vec<usize>,
    /// Rows of the input batch whose aggregate update failed (an overflow), with why: they
    /// changed no group.
    pub failed: Vec<(usize, String)>,
    /// Per output row: the group was deleted (emptied, or no longer passing HAVING) and its
    /// key gets a tombstone. Only unwindowed aggregates delete.
    pub deleted: Vec<bool>,
}

/// One emitted group before HAVING and projection.
struct Out {
    key: Vec<u8>,
    start: i64,
    end: i64,
    values: Vec<ScalarValue>,
    ts: i64,
    deleted: bool,
}

/// A running aggregate.
#[derive(Debug)]
pub struct Aggregate {
    plan: AggregatePlan,
    converter: RowConverter,
    stores: Stores,
    /// Groups by [`cache_key`]: window start and end, then the group key. (DataFusion's
    /// hashbrown map with a fast hasher: this is the per-row lookup.)
    cache: datafusion::common::HashMap<Vec<u8>, Entry>,
    /// Window stores: no window starting after this is stored yet, so looking one up can be
    /// skipped (most new windows are newer than everything flushed).
    stored_max_start: i64,
    /// Cache keys written since the last flush.
    dirty: Vec<Vec<u8>>,
    /// Reused to build cache keys without allocating.
    scratch: Vec<u8>,
    /// Stream time minus retention at the last expiry.
    expired_to: i64,
    stream_time: i64,
    /// Window stores: windows starting before this were emitted (FINAL) or expired.
    closed_before: i64,
    scan_schema: SchemaRef,
}

/// The cache key of a group: window start and end (big-endian), then the group key.
fn cache_key(buf: &mut Vec<u8>, start: i64, end: i64, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&start.to_be_bytes());
    buf.extend_from_slice(&end.to_be_bytes());
    buf.extend_from_slice(key);
}

/// The parts of a [`cache_key`].
fn split_cache_key(ck: &[u8]) -> (i64, i64, &[u8]) {
    let mut a = [0u8; 8];
    a.copy_from_slice(&ck[..8]);
    let start = i64::from_be_bytes(a);
    a.copy_from_slice(&ck[8..16]);
    (start, i64::from_be_bytes(a), &ck[16..])
}

fn owned_cache_key(start: i64, end: i64, key: &[u8]) -> Vec<u8> {
    let mut ck = Vec::with_capacity(16 + key.len());
    cache_key(&mut ck, start, end, key);
    ck
}

/// Meta key of a key-value store (group keys are stored with prefix 1).
const KV_META: &[u8] = &[0];

impl Aggregate {
    /// Opens the aggregate's stores (`<name>-<partition>` in `env`, changelog topic
    /// `<name>-changelog`) and restores them from the log; `env` `None` keeps state in
    /// memory only.
    pub fn open(
        plan: AggregatePlan,
        scan_schema: SchemaRef,
        env: Option<(&StateEnv, &Log, &str, u32)>,
    ) -> Result<Aggregate> {
        let converter = RowConverter::new(
            plan.key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let stores = match env {
            None => Stores::Memory,
            Some((env, log, name, partitions)) => {
                let changelog = format!("{name}-changelog");
                let ids = (0..partitions.max(1)).map(|p| {
                    (
                        StoreId::new(name, p),
                        ChangelogTopic::new(&changelog, p, partitions.max(1)),
                    )
                });
                let state_err = |e: sluice_state::StateError| {
                    SqlError::Invalid(format!("state of {name}: {e}"))
                };
                match plan.windows {
                    None => Stores::Kv(
                        ids.map(|(id, cl)| {
                            let mut s = env.open_kv(id, cl).map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                    Some(w) if w.session => Stores::Session(
                        ids.map(|(id, cl)| {
                            let mut s = env
                                .open_session(
                                    id,
                                    cl,
                                    SessionOptions {
                                        retention_ms: w.retention,
                                    },
                                )
                                .map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                    Some(w) => Stores::Window(
                        ids.map(|(id, cl)| {
                            let mut s = env
                                .open_window(
                                    id,
                                    cl,
                                    WindowOptions {
                                        retention_ms: w.retention,
                                    },
                                )
                                .map_err(state_err)?;
                            s.restore(log).map_err(state_err)?;
                            Ok(s)
                        })
                        .collect::<Result<_>>()?,
                    ),
                }
            }
        };
        let mut agg = Aggregate {
            plan,
            converter,
            stores,
            cache: datafusion::common::HashMap::default(),
            stored_max_start: i64::MAX,
            dirty: Vec::new(),
            scratch: Vec::new(),
            expired_to: i64::MIN,
            stream_time: i64::MIN,
            closed_before: i64::MIN,
            scan_schema,
        };
        agg.load_meta()?;
        // Every stored window started at or before the stream time they were stored at.
        agg.stored_max_start = agg.stream_time;
        Ok(agg)
    }

    /// The plan.
    pub fn plan(&self) -> &AggregatePlan {
        &self.plan
    }

    /// The largest event time seen (`i64::MIN` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    fn state_err(&self, e: sluice_state::StateError) -> SqlError {
        SqlError::Invalid(format!("aggregate state: {e}"))
    }

    fn load_meta(&mut self) -> Result<()> {
        let meta = match &self.stores {
            Stores::Memory => None,
            Stores::Kv(s) => s[0].get(KV_META).map_err(|e| self.state_err(e))?,
            Stores::Window(s) => s[0].get(b"", i64::MAX).map_err(|e| self.state_err(e))?,
            Stores::Session(s) => s[0]
                .get(b"", i64::MAX, i64::MAX)
                .map_err(|e| self.state_err(e))?,
        };
        if let Some(m) = meta {
            if m.len() >= 16 {
                let mut a = [0u8; 8];
                a.copy_from_slice(&m[..8]);
                self.stream_time = i64::from_le_bytes(a);
                a.copy_from_slice(&m[8..16]);
                self.closed_before = i64::from_le_bytes(a);
            }
        }
        Ok(())
    }

    fn store_index(&self, key: &[u8]) -> usize {
        let n = match &self.stores {
            Stores::Memory => 1,
            Stores::Kv(s) => s.len(),
            Stores::Window(s) => s.len(),
            Stores::Session(s) => s.len(),
        };
        sluice_log::partitioner::partition_for_key(key, n as u32) as usize
    }

    fn decode_entry(&self, bytes: &[u8]) -> Result<Entry> {
        if bytes.len() < 8 {
            return Err(SqlError::Plan(
                "corrupt aggregate state: short value".into(),
            ));
        }
        if bytes.len() < 16 {
            return Err(SqlError::Plan(
                "corrupt aggregate state: short value".into(),
            ));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[8..16]);
        let rows = i64::from_le_bytes(a);
        a.copy_from_slice(&bytes[..8]);
        let mut pos = 16;
        let accs = self
            .plan
            .specs
            .iter()
            .map(|s| decode_acc(bytes, &mut pos, &s.input, &s.output))
            .collect::<Result<_>>()?;
        Ok(Entry {
            accs,
            max_ts: i64::from_le_bytes(a),
            rows,
            dirty: false,
        })
    }

    fn encode_entry(e: &Entry) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&e.max_ts.to_le_bytes());
        out.extend_from_slice(&e.rows.to_le_bytes());
        for a in &e.accs {
            encode_acc(a, &mut out)?;
        }
        Ok(out)
    }

    fn new_entry(&self) -> Result<Entry> {
        Ok(Entry {
            accs: self
                .plan
                .specs
                .iter()
                .map(AggSpec::init)
                .collect::<Result<_>>()?,
            max_ts: i64::MIN,
            rows: 0,
            dirty: false,
        })
    }

    /// The cached entry of (window, key), loading it from the store or creating it, marked
    /// dirty (every caller updates it).
    fn entry(&mut self, start: i64, end: i64, key: &[u8]) -> Result<&mut Entry> {
        let mut ck = std::mem::take(&mut self.scratch);
        cache_key(&mut ck, start, end, key);
        if !self.cache.contains_key(ck.as_slice()) {
            let i = self.store_index(key);
            let stored = match &self.stores {
                Stores::Memory | Stores::Session(_) => None,
                Stores::Kv(s) => {
                    let mut k = Vec::with_capacity(key.len() + 1);
                    k.push(1);
                    k.extend_from_slice(key);
                    s[i].get(&k).map_err(|e| self.state_err(e))?
                }
                Stores::Window(_) if start > self.stored_max_start => None,
                Stores::Window(s) => s[i].get(key, start).map_err(|e| self.state_err(e))?,
            };
            let e = match stored {
                Some(b) => self.decode_entry(&b)?,
                None => self.new_entry()?,
            };
            self.cache.insert(ck.clone(), e);
        }
        let track = !matches!(self.stores, Stores::Memory);
        let e = self
            .cache
            .get_mut(ck.as_slice())
            .ok_or_else(|| SqlError::Plan("internal error: cache entry vanished".into()))?;
        if !e.dirty {
            e.dirty = true;
            if track {
                self.dirty.push(ck.clone());
            }
        }
        self.scratch = ck;
        Ok(e)
    }

    /// Processes one decoded batch of the input (`times`: event time per row) and returns
    /// what it emits. `sign` is 1 for new rows, -1 to retract rows (table updates).
    ///
    /// When an expression fails on some row (a division by zero), the error comes before
    /// any group changed and the stream time is put back, so the caller can retry row by row.
    pub fn process(&mut self, batch: &RecordBatch, times: &[i64], sign: i64) -> Result<Emitted> {
        let saved = (self.stream_time, self.closed_before);
        let result = self.process_inner(batch, times, sign);
        if let Err(SqlError::Plan(_)) = &result {
            (self.stream_time, self.closed_before) = saved;
        }
        result
    }

    fn process_inner(&mut self, batch: &RecordBatch, times: &[i64], sign: i64) -> Result<Emitted> {
        // Columns nothing reads become null arrays: expansion copies every column once per
        // window, and wide unread text (URLs, payloads) would dominate.
        let slim;
        let batch = match (&self.plan.used_columns, self.plan.windows) {
            (Some(used), Some(_)) if used.len() < batch.num_columns() => {
                let columns: Vec<ArrayRef> = batch
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if used.binary_search(&i).is_ok() {
                            Arc::clone(c)
                        } else {
                            datafusion::arrow::array::new_null_array(c.data_type(), c.len())
                        }
                    })
                    .collect();
                slim = RecordBatch::try_new_with_options(
                    batch.schema(),
                    columns,
                    &datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(batch.num_rows())),
                );
                match &slim {
                    Ok(b) => b,
                    // A column declared NOT NULL cannot be nulled; keep the batch as it is.
                    Err(_) => batch,
                }
            }
            _ => batch,
        };
        let (expanded, src_rows, late) = match self.plan.windows {
            Some(w) => {
                let mut st = self.stream_time;
                let r = super::window::expand(&w, batch, times, &self.scan_schema, &mut st)?;
                self.stream_time = st;
                r
            }
            None => {
                let batch =
                    RecordBatch::try_new(Arc::clone(&self.scan_schema), batch.columns().to_vec())?;
                (batch, (0..times.len() as u32).collect(), Vec::new())
            }
        };
        let (pre, selected) = self.plan.pre.process_indexed(&expanded)?;
        let n = pre.num_rows();
        let group: Vec<ArrayRef> = self
            .plan
            .group
            .iter()
            .map(|g| g.evaluate(&pre).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let key_arrays: Vec<ArrayRef> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| self.plan.window_pos.is_none_or(|(s, e)| *i != s && *i != e))
            .map(|(_, a)| Arc::clone(a))
            .collect();
        let rows = if key_arrays.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_arrays)?)
        };
        let args: Vec<ArrayRef> = self
            .plan
            .args
            .iter()
            .map(|a| a.evaluate(&pre).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let (starts, ends) = match self.plan.window_pos {
            Some((s, e)) => (
                Some(group[s].as_primitive::<Int64Type>().clone()),
                Some(group[e].as_primitive::<Int64Type>().clone()),
            ),
            None => (None, None),
        };
        let mut out = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let emit_changes = self.plan.emit == Emit::Changes;
        let windowed = self.plan.windows.is_some();
        let specs = Arc::clone(&self.plan.specs);
        for r in 0..n {
            let src = selected.as_ref().map_or(r, |s| s[r] as usize);
            let ts = times[src_rows[src] as usize];
            let key: &[u8] = rows.as_ref().map_or(&[], |rs| rs.row(r).data());
            let values: Vec<ScalarValue> = args
                .iter()
                .map(|a| ScalarValue::try_from_array(a.as_ref(), r))
                .collect::<datafusion::error::Result<_>>()?;
            if self.plan.windows.is_some_and(|w| w.session) {
                if let Some(o) = self.session_update(key, ts, &values, sign)? {
                    if emit_changes {
                        out.push(o);
                    }
                }
                continue;
            }
            let (start, end) = match (&starts, &ends) {
                (Some(s), Some(e)) => (s.value(r), e.value(r)),
                _ => (0, 0),
            };
            let e = self.entry(start, end, key)?;
            // A row whose update fails (a SUM past BIGINT) is taken back out of the specs it
            // already updated and becomes a dead letter; the group and the query go on.
            let mut failure = None;
            for (i, ((spec, acc), v)) in
                specs.iter().zip(e.accs.iter_mut()).zip(&values).enumerate()
            {
                if let Err(err) = spec.update(acc, v, sign) {
                    failure = Some((i, err));
                    break;
                }
                spec.compact(acc);
            }
            if let Some((failed_at, err)) = failure {
                for ((spec, acc), v) in specs
                    .iter()
                    .zip(e.accs.iter_mut())
                    .zip(&values)
                    .take(failed_at)
                {
                    spec.update(acc, v, -sign).map_err(|e| {
                        SqlError::Invalid(format!(
                            "aggregate update failed and could not be taken back (the query stops): {e}"
                        ))
                    })?;
                    spec.compact(acc);
                }
                let row = src_rows[src] as usize;
                if !failed.iter().any(|(r, _)| *r == row) {
                    failed.push((row, format!("aggregate update failed: {err}")));
                }
                continue;
            }
            e.max_ts = e.max_ts.max(ts);
            e.rows += sign;
            if e.rows <= 0 && !windowed {
                // The group lost its last row (a table input deleted or moved it).
                let e = e.clone();
                let mut o = self.result(key.to_vec(), start, end, &e)?;
                o.deleted = true;
                self.delete_group(key)?;
                out.push(o);
                continue;
            }
            if emit_changes {
                let e = e.clone();
                out.push(self.result(key.to_vec(), start, end, &e)?);
            }
        }
        self.flush_cache()?;
        if !emit_changes {
            out.extend(self.close_windows()?);
        }
        self.expire()?;
        let (batch, timestamps, deleted) = self.finish(out)?;
        Ok(Emitted {
            batch,
            timestamps,
            late,
            failed,
            deleted,
        })
    }

    /// Forgets an unwindowed group.
    fn delete_group(&mut self, key: &[u8]) -> Result<()> {
        self.cache.remove(owned_cache_key(0, 0, key).as_slice());
        let i = self.store_index(key);
        if let Stores::Kv(s) = &mut self.stores {
            let mut k = Vec::with_capacity(key.len() + 1);
            k.push(1);
            k.extend_from_slice(key);
            s[i].delete(&k);
        }
        Ok(())
    }

    fn result(&self, key: Vec<u8>, start: i64, end: i64, e: &Entry) -> Result<Out> {
        Ok(Out {
            key,
            start,
            end,
            values: self
                .plan
                .specs
                .iter()
                .zip(&e.accs)
                .map(|(s, a)| s.evaluate(a))
                .collect::<Result<_>>()?,
            ts: e.max_ts,
            deleted: false,
        })
    }

    /// Adds a row to its key's session, merging the sessions it bridges.
    fn session_update(
        &mut self,
        key: &[u8],
        ts: i64,
        values: &[ScalarValue],
        sign: i64,
    ) -> Result<Option<Out>> {
        let gap = self.plan.windows.map_or(0, |w| w.size);
        let specs = self.plan.specs.clone();
        let i = self.store_index(key);
        // Sessions that end at or after ts - gap and start at or before ts + gap.
        let found: Vec<(i64, i64, Entry)> = match &self.stores {
            Stores::Session(s) => s[i]
                .find_sessions(key, ts.saturating_sub(gap), ts.saturating_add(gap))
                .map_err(|e| self.state_err(e))?
                .into_iter()
                .map(|s| Ok((s.start, s.end, self.decode_entry(&s.value)?)))
                .collect::<Result<_>>()?,
            _ => self
                .cache
                .iter()
                .filter_map(|(ck, v)| {
                    let (s, e, k) = split_cache_key(ck);
                    (k == key && e >= ts.saturating_sub(gap) && s <= ts.saturating_add(gap))
                        .then(|| (s, e, v.clone()))
                })
                .collect(),
        };
        let mut start = ts;
        let mut end = ts;
        let mut merged = self.new_entry()?;
        for (s, e, entry) in &found {
            start = start.min(*s);
            end = end.max(*e);
            for ((spec, acc), other) in specs.iter().zip(merged.accs.iter_mut()).zip(&entry.accs) {
                spec.merge(acc, other)?;
            }
            merged.max_ts = merged.max_ts.max(entry.max_ts);
            merged.rows += entry.rows;
            match &mut self.stores {
                Stores::Session(st) => st[i]
                    .remove(key, *s, *e)
                    .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?,
                _ => {
                    self.cache.remove(owned_cache_key(*s, *e, key).as_slice());
                }
            }
        }
        for ((spec, acc), v) in specs.iter().zip(merged.accs.iter_mut()).zip(values) {
            spec.update(acc, v, sign)?;
        }
        merged.max_ts = merged.max_ts.max(ts);
        merged.rows += sign;
        match &mut self.stores {
            Stores::Session(st) => {
                let bytes = Self::encode_entry(&merged)?;
                st[i]
                    .put(key, start, end, &bytes)
                    .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
            }
            _ => {
                self.cache
                    .insert(owned_cache_key(start, end, key), merged.clone());
            }
        }
        Ok(Some(self.result(key.to_vec(), start, end, &merged)?))
    }

    /// Writes dirty cached groups and the stream time into the stores' overlays.
    fn flush_cache(&mut self) -> Result<()> {
        if matches!(self.stores, Stores::Memory) {
            return Ok(());
        }
        let mut writes = Vec::new();
        for ck in std::mem::take(&mut self.dirty) {
            let Some(e) = self.cache.get_mut(ck.as_slice()) else {
                continue;
            };
            if e.dirty {
                e.dirty = false;
                let bytes = Self::encode_entry(e)?;
                let (start, _, key) = split_cache_key(&ck);
                writes.push((start, key.to_vec(), bytes));
            }
        }
        for (start, key, bytes) in writes {
            let i = self.store_index(&key);
            match &mut self.stores {
                Stores::Kv(s) => {
                    let mut k = Vec::with_capacity(key.len() + 1);
                    k.push(1);
                    k.extend_from_slice(&key);
                    s[i].put(&k, &bytes);
                }
                Stores::Window(s) => {
                    s[i].put(&key, start, &bytes)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                    self.stored_max_start = self.stored_max_start.max(start);
                }
                _ => {}
            }
        }
        let mut meta = self.stream_time.to_le_bytes().to_vec();
        meta.extend_from_slice(&self.closed_before.to_le_bytes());
        let r = match &mut self.stores {
            Stores::Memory => Ok(()),
            Stores::Kv(s) => {
                s[0].put(KV_META, &meta);
                Ok(())
            }
            Stores::Window(s) => s[0].put(b"", i64::MAX, &meta),
            Stores::Session(s) => s[0].put(b"", i64::MAX, i64::MAX, &meta),
        };
        r.map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
        if self.cache.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        Ok(())
    }

    /// EMIT FINAL: every window that closed, once, then forgotten.
    fn close_windows(&mut self) -> Result<Vec<Out>> {
        let Some(w) = self.plan.windows else {
            return Ok(Vec::new());
        };
        if self.stream_time == i64::MIN {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if w.session {
            // Closed: end + grace < stream time.
            let bound = self.stream_time.saturating_sub(w.grace).saturating_sub(1);
            let mut closed: Vec<(usize, Bytes, i64, i64, Entry)> = Vec::new();
            match &self.stores {
                Stores::Session(st) => {
                    for (i, s) in st.iter().enumerate() {
                        for sess in s
                            .fetch_by_end(i64::MIN, bound)
                            .map_err(|e| self.state_err(e))?
                        {
                            let sess = sess.map_err(|e| self.state_err(e))?;
                            if sess.key.is_empty() {
                                continue;
                            }
                            let e = self.decode_entry(&sess.value)?;
                            closed.push((i, sess.key, sess.start, sess.end, e));
                        }
                    }
                }
                _ => {
                    for (ck, v) in &self.cache {
                        let (s, e, k) = split_cache_key(ck);
                        if e <= bound {
                            closed.push((0, Bytes::copy_from_slice(k), s, e, v.clone()));
                        }
                    }
                }
            }
            closed.sort_by(|a, b| (a.3, &a.1, a.2).cmp(&(b.3, &b.1, b.2)));
            for (i, key, s, e, entry) in closed {
                out.push(self.result(key.to_vec(), s, e, &entry)?);
                match &mut self.stores {
                    Stores::Session(st) => st[i]
                        .remove(&key, s, e)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?,
                    _ => {
                        self.cache.remove(owned_cache_key(s, e, &key).as_slice());
                    }
                }
            }
            return Ok(out);
        }
        // Tumbling/hopping: closed when start + size + grace <= stream time.
        let bound = self
            .stream_time
            .saturating_sub(w.grace)
            .saturating_sub(w.size);
        if bound < self.closed_before {
            return Ok(out);
        }
        let mut closed: Vec<(usize, i64, Bytes, Entry)> = Vec::new();
        match &self.stores {
            Stores::Window(st) => {
                for (i, s) in st.iter().enumerate() {
                    for entry in s
                        .fetch_range(self.closed_before, bound)
                        .map_err(|e| self.state_err(e))?
                    {
                        let entry = entry.map_err(|e| self.state_err(e))?;
                        let e = self.decode_entry(&entry.value)?;
                        closed.push((i, entry.window_start, entry.key, e));
                    }
                }
            }
            _ => {
                for (ck, v) in &self.cache {
                    let (s, _, k) = split_cache_key(ck);
                    if s >= self.closed_before && s <= bound {
                        closed.push((0, s, Bytes::copy_from_slice(k), v.clone()));
                    }
                }
            }
        }
        closed.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
        for (i, start, key, entry) in closed {
            out.push(self.result(key.to_vec(), start, start + w.size, &entry)?);
            self.cache
                .remove(owned_cache_key(start, start + w.size, &key).as_slice());
            if let Stores::Window(st) = &mut self.stores {
                st[i].delete(&key, start);
            }
        }
        self.closed_before = bound.saturating_add(1);
        Ok(out)
    }

    /// Drops windows older than the retention.
    fn expire(&mut self) -> Result<()> {
        let Some(w) = self.plan.windows else {
            return Ok(());
        };
        if self.stream_time == i64::MIN {
            return Ok(());
        }
        let before = self.stream_time.saturating_sub(w.retention);
        // Expiry scans the cache and the stores: do it when the bound moved by a sixteenth of
        // the retention (or a second), which bounds the extra state kept to that much.
        let step = (w.retention / 16).max(1000);
        if self.expired_to != i64::MIN && before < self.expired_to.saturating_add(step) {
            return Ok(());
        }
        self.expired_to = before;
        self.cache.retain(|ck, _| {
            let (s, e, _) = split_cache_key(ck);
            if w.session { e >= before } else { s >= before }
        });
        match &mut self.stores {
            Stores::Window(st) => {
                for s in st {
                    s.expire(before)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                }
            }
            Stores::Session(st) => {
                for s in st {
                    s.expire(before)
                        .map_err(|e| SqlError::Invalid(format!("aggregate state: {e}")))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Builds the aggregate's output rows and applies HAVING and the SELECT list; returns
    /// the rows, their timestamps and which of them are deletions.
    fn finish(&self, out: Vec<Out>) -> Result<(RecordBatch, Vec<i64>, Vec<bool>)> {
        if out.is_empty() {
            return Ok((
                RecordBatch::new_empty(Arc::clone(self.plan.schema())),
                Vec::new(),
                Vec::new(),
            ));
        }
        let keys: Vec<ArrayRef> = if self.plan.key_types.is_empty() {
            Vec::new()
        } else {
            let parser = self.converter.parser();
            self.converter
                .convert_rows(out.iter().map(|o| parser.parse(&o.key)))?
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.plan.agg_schema.fields().len());
        let mut next_key = keys.into_iter();
        for i in 0..self.plan.group.len() {
            match self.plan.window_pos {
                Some((s, _)) if s == i => columns.push(Arc::new(Int64Array::from_iter_values(
                    out.iter().map(|o| o.start),
                ))),
                Some((_, e)) if e == i => columns.push(Arc::new(Int64Array::from_iter_values(
                    out.iter().map(|o| o.end),
                ))),
                _ => {
                    columns.push(next_key.next().ok_or_else(|| {
                        SqlError::Plan("internal error: group key columns".into())
                    })?)
                }
            }
        }
        for (j, spec) in self.plan.specs.iter().enumerate() {
            let values: Vec<ScalarValue> = out.iter().map(|o| o.values[j].clone()).collect();
            let array = if values.is_empty() {
                new_empty_array(&spec.output)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(array);
        }
        let columns = columns
            .into_iter()
            .zip(self.plan.agg_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    datafusion::arrow::compute::cast(&c, f.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.plan.agg_schema), columns)?;
        let (projected, selected) = self.plan.post.process_all(&batch)?;
        let passes = |i: usize| {
            selected
                .as_ref()
                .is_none_or(|s| s.binary_search(&(i as u32)).is_ok())
        };
        let mut rows = Vec::new();
        let mut deleted = Vec::new();
        for (i, o) in out.iter().enumerate() {
            if !o.deleted && passes(i) {
                rows.push(i as u32);
                deleted.push(false);
            } else if o.deleted || self.plan.windows.is_none() {
                // An unwindowed table row that fails HAVING is deleted downstream, as
                // ksqlDB does; a windowed one is just not emitted.
                rows.push(i as u32);
                deleted.push(true);
            }
        }
        let batch = datafusion::arrow::compute::take_record_batch(
            &projected,
            &datafusion::arrow::array::UInt32Array::from(rows.clone()),
        )?;
        Ok((
            batch,
            rows.iter().map(|&i| out[i as usize].ts).collect(),
            deleted,
        ))
    }

    /// Writes the cache into the stores (call before taking their changes).
    pub fn flush(&mut self) -> Result<()> {
        self.flush_cache()
    }

    /// The stores, for the task's epoch commit.
    pub fn stores_mut(&mut self) -> Vec<&mut dyn StateStore> {
        match &mut self.stores {
            Stores::Memory => Vec::new(),
            Stores::Kv(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
            Stores::Window(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
            Stores::Session(s) => s.iter_mut().map(|s| s as &mut dyn StateStore).collect(),
        }
    }

    /// Drops the epoch's uncommitted state (its log transaction aborted).
    pub fn abort(&mut self) -> Result<()> {
        for s in self.stores_mut() {
            s.abort();
        }
        self.cache.clear();
        self.dirty.clear();
        self.expired_to = i64::MIN;
        self.stored_max_start = i64::MAX;
        self.stream_time = i64::MIN;
        self.closed_before = i64::MIN;
        self.load_meta()?;
        self.stored_max_start = self.stream_time;
        Ok(())
    }
}
