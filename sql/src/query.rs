//! Queries compiled for running: which source they read, how its records become rows with
//! event times, and the operators in between.
//!
//! ```text
//!  records ─► SourceReader (decode, event time) ─► Dataflow: Stateless | Aggregate ─► rows
//!     └─ undecodable / no timestamp / too late ─► rejected (the task's dead-letter topic)
//! ```
//!
//! Push queries (`sluice sql`) run a [`Dataflow`] with memory-only state; persistent queries
//! ([`crate::runner`]) open it with stores and run it inside log transactions.
//!
//! Compiling also applies ksqlDB's naming and NULL rules to the SELECT: unaliased expressions
//! become `KSQL_COL_<n>`, comparisons with a NULL operand are false, and a stream record whose
//! value is null passes a projection (as a null value with its key) but not a WHERE clause.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, Ident, SelectItem, SetExpr, TableFactor,
};
use sluice_log::Log;
use sluice_state::StateEnv;

use crate::ast::{Emit, PartitionBy, Select, SourceKind};
use crate::catalog::{Catalog, SourceDef};
use crate::error::{Result, SqlError};
use crate::format::{Format, Input, KeyWindow, ROWTIME, RecordDecoder, unwrap_debezium};
use crate::operators::aggregate::{Aggregate, AggregatePlan};
use crate::operators::join::{Join, JoinPlan};
use crate::operators::stateless::Stateless;
use crate::operators::window::{WINDOWEND, WINDOWSTART, Windows, with_window_columns};
use crate::planner::{Planner, SourceTable};

/// Decodes a source's records into batches whose `rowtime` column is the event time: the
/// declared `timestamp` column, or the record timestamp.
#[derive(Debug, Clone)]
pub struct SourceReader {
    decoder: RecordDecoder,
    /// Index of the timestamp column and its text format, if declared.
    timestamp: Option<(usize, String, Option<String>)>,
}

/// Decoded rows with event times, and the records that could not become rows.
#[derive(Debug)]
pub struct Rows {
    /// Rows in the source's schema; `rowtime` holds the event time.
    pub batch: RecordBatch,
    /// Index of the input record of each row.
    pub records: Vec<usize>,
    /// Input records that were rejected, with the reason.
    pub rejected: Vec<(usize, String)>,
}

impl Rows {
    /// Event time of each row.
    pub fn times(&self) -> &[i64] {
        let rowtime = self.batch.num_columns() - 1;
        self.batch
            .column(rowtime)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
    }
}

impl SourceReader {
    /// A reader for `def`.
    pub fn new(def: &SourceDef) -> Result<SourceReader> {
        let decoder = def.decoder()?;
        let timestamp = match &def.timestamp {
            None => None,
            Some(col) => {
                let i = def
                    .columns
                    .iter()
                    .position(|c| &c.0 == col)
                    .ok_or_else(|| SqlError::Unknown {
                        kind: "column",
                        name: col.clone(),
                    })?;
                Some((i, col.clone(), def.timestamp_format.clone()))
            }
        };
        Ok(SourceReader { decoder, timestamp })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        self.decoder.schema()
    }

    /// The event-time column's name when it is a BIGINT in JSON values: the event time of a
    /// record is then [`sluice_format::json::top_level_i64`] of its value, when that finds one.
    pub fn json_time_column(&self) -> Option<&str> {
        let (i, _, _) = self.timestamp.as_ref()?;
        self.decoder.json_i64_value_column(*i)
    }

    /// How a windowed source's keys carry their window.
    pub fn key_window(&self) -> Option<KeyWindow> {
        self.decoder.key_window()
    }

    /// The key columns of `rows` of `records` (tombstones too), in declared order.
    pub fn decode_keys(&self, records: &[Input<'_>], rows: &[usize]) -> Result<Vec<ArrayRef>> {
        self.decoder.decode_keys(records, rows)
    }

    /// Decodes records; a record that does not decode, or has no usable event time, is
    /// rejected with the reason.
    pub fn read(&self, records: &[Input<'_>]) -> Result<Rows> {
        let decoded = self.decoder.decode(records)?;
        let mut rejected: Vec<(usize, String)> = decoded
            .rejected
            .iter()
            .map(|r| (r.index, r.reason.clone()))
            .collect();
        let Some((col, name, format)) = &self.timestamp else {
            return Ok(Rows {
                batch: decoded.batch,
                records: decoded.rows,
                rejected,
            });
        };
        let times = event_times(decoded.batch.column(*col), format.as_deref());
        let keep: Vec<bool> = times.iter().map(|t| t.is_ok()).collect();
        let mut records = Vec::with_capacity(decoded.rows.len());
        let mut values = Vec::with_capacity(decoded.rows.len());
        for (i, t) in times.into_iter().enumerate() {
            match t {
                Ok(t) => {
                    records.push(decoded.rows[i]);
                    values.push(t);
                }
                Err(e) => rejected.push((decoded.rows[i], format!("timestamp column {name}: {e}"))),
            }
        }
        let mask = datafusion::arrow::array::BooleanArray::from(keep);
        let batch = filter_record_batch(&decoded.batch, &mask)?;
        let mut columns = batch.columns().to_vec();
        let last = columns.len() - 1;
        columns[last] = Arc::new(Int64Array::from(values));
        rejected.sort_by_key(|r| r.0);
        Ok(Rows {
            batch: RecordBatch::try_new(Arc::clone(batch.schema_ref()), columns)?,
            records,
            rejected,
        })
    }
}

/// Event time in ms of each value of a timestamp column.
fn event_times(col: &ArrayRef, format: Option<&str>) -> Vec<Result<i64, String>> {
    let null = || Err("NULL".to_string());
    let millis = |a: &Int64Array| -> Vec<Result<i64, String>> {
        (0..a.len())
            .map(|i| {
                if a.is_valid(i) {
                    Ok(a.value(i))
                } else {
                    null()
                }
            })
            .collect()
    };
    match col.data_type() {
        DataType::Int64 | DataType::Timestamp(_, _) => {
            // Any timestamp unit becomes milliseconds, then plain integers.
            let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .and_then(|c| cast(&c, &DataType::Int64));
            match (col.data_type(), ms) {
                (DataType::Int64, _) => {
                    millis(col.as_primitive::<datafusion::arrow::datatypes::Int64Type>())
                }
                (_, Ok(c)) => millis(c.as_primitive::<datafusion::arrow::datatypes::Int64Type>()),
                (_, Err(e)) => vec![Err(e.to_string()); col.len()],
            }
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            (0..a.len())
                .map(|i| {
                    if !a.is_valid(i) {
                        return null();
                    }
                    parse_time(a.value(i), format)
                })
                .collect()
        }
        other => vec![Err(format!("type {other} cannot be a timestamp")); col.len()],
    }
}

/// Parses text as a time: with a chrono `format`, or ISO 8601 / RFC 3339 (UTC unless an
/// offset is given).
pub fn parse_time(text: &str, format: Option<&str>) -> Result<i64, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    match format {
        Some(f) => {
            if let Ok(t) = DateTime::parse_from_str(text, f) {
                return Ok(t.timestamp_millis());
            }
            if let Ok(t) = NaiveDateTime::parse_from_str(text, f) {
                return Ok(t.and_utc().timestamp_millis());
            }
            NaiveDate::parse_from_str(text, f)
                .map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .map_or(0, |t| t.and_utc().timestamp_millis())
                })
                .map_err(|e| format!("'{text}' does not match format '{f}': {e}"))
        }
        None => {
            if let Ok(t) = DateTime::parse_from_rfc3339(text) {
                return Ok(t.timestamp_millis());
            }
            for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(t) = NaiveDateTime::parse_from_str(text, f) {
                    return Ok(t.and_utc().timestamp_millis());
                }
            }
            Err(format!(
                "'{text}' is not an ISO 8601 time (give timestamp_format)"
            ))
        }
    }
}

/// What a query runs.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Filters and projections.
    Stateless(Stateless),
    /// GROUP BY, windowed or not.
    Aggregate(Box<AggregatePlan>),
}

/// A query ready to run.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    /// The source it reads.
    pub source: SourceDef,
    /// Its operators.
    pub stage: Stage,
    /// `EMIT CHANGES | FINAL` as written.
    pub emit: Option<Emit>,
    /// The schema the operators read (the source's, plus window columns if windowed).
    pub scan_schema: SchemaRef,
    /// The logical plan the operators were cut from, for EXPLAIN.
    pub plan_text: String,
    /// The SELECT list: each item's expression ([`key_expr`] form) and output column name.
    pub columns: Vec<(SqlExpr, String)>,
    /// The GROUP BY expressions as written ([`key_expr`] form; no window columns).
    pub group_by: Vec<SqlExpr>,
    /// The joins of the FROM clause; `source` is then the joined rows.
    pub join: Option<Box<JoinPlan>>,
    /// `PARTITION BY` ([`key_expr`] form): the output rows' key columns are the SELECT
    /// items of these expressions, not the source's key ([`crate::partition_by`]).
    pub partition_by: Option<PartitionBy>,
}

impl CompiledQuery {
    /// Output schema.
    pub fn schema(&self) -> &SchemaRef {
        match &self.stage {
            Stage::Stateless(s) => s.schema(),
            Stage::Aggregate(a) => a.schema(),
        }
    }

    /// `LIMIT n`.
    pub fn limit(&self) -> Option<usize> {
        match &self.stage {
            Stage::Stateless(s) => s.limit(),
            Stage::Aggregate(a) => a.limit(),
        }
    }

    /// True for GROUP BY queries (their output is a table).
    pub fn is_aggregate(&self) -> bool {
        matches!(self.stage, Stage::Aggregate(_))
    }

    /// The topics the query reads: its source's, or each joined source's.
    pub fn input_topics(&self) -> Vec<String> {
        match &self.join {
            Some(j) => j.topics(),
            None => vec![self.source.topic.clone()],
        }
    }

    /// The input topics of tables (their records go first at equal timestamps).
    pub fn table_topics(&self) -> Vec<String> {
        match &self.join {
            Some(j) => j
                .sources
                .iter()
                .filter(|s| s.def.kind == SourceKind::Table)
                .map(|s| s.def.topic.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Orders the sources reading one topic (indices in FROM order) so that tables come
    /// first: a topic read as a table and as a stream updates the table before the stream
    /// record looks it up, as a table's record goes first at equal timestamps.
    pub fn tables_first(&self, sources: &mut [usize]) {
        let Some(j) = &self.join else { return };
        sources.sort_by_key(|&i| {
            j.sources
                .get(i)
                .is_none_or(|s| s.def.kind != SourceKind::Table)
        });
    }

    /// The output columns (J names) that hold the key of a join's result besides ROWKEY.
    pub fn key_aliases(&self) -> &[String] {
        self.join.as_ref().map_or(&[], |j| j.key_aliases.as_slice())
    }

    /// What runs, for EXPLAIN: the source, the operators, the logical plan.
    pub fn explain(&self) -> String {
        let s = &self.source;
        let mut out = match &self.join {
            Some(j) => j.explain(),
            None => format!(
                "Source: {} {} (topic {}, {}, event time {})\n",
                s.kind,
                s.name,
                s.topic,
                s.format,
                s.timestamp.as_deref().unwrap_or("= record timestamp")
            ),
        };
        match &self.stage {
            Stage::Stateless(_) => match &self.partition_by {
                None => out.push_str("Operators: decode -> filters and projections -> encode\n"),
                Some(pb) => out.push_str(&format!(
                    "Operators: decode -> filters and projections -> {} -> encode\n",
                    crate::partition_by::describe(pb)
                )),
            },
            Stage::Aggregate(a) => {
                let window = match a.windows() {
                    None => "no window".to_string(),
                    Some(w) if w.session => format!(
                        "SESSION gap {} ms, grace {} ms, retention {} ms",
                        w.size, w.grace, w.retention
                    ),
                    Some(w) if w.size == w.advance => format!(
                        "TUMBLING {} ms, grace {} ms, retention {} ms",
                        w.size, w.grace, w.retention
                    ),
                    Some(w) => format!(
                        "HOPPING {} ms every {} ms, grace {} ms, retention {} ms",
                        w.size, w.advance, w.grace, w.retention
                    ),
                };
                out.push_str(&format!(
                    "Operators: decode -> filters and projections -> aggregate ({} group column(s), {window}, EMIT {}{}) -> HAVING and projection -> encode\n",
                    a.group_column_count(),
                    if self.emit == Some(Emit::Final) { "FINAL" } else { "CHANGES" },
                    if s.kind == SourceKind::Table { ", retracting replaced rows" } else { "" },
                ));
            }
        }
        out.push_str("Logical plan:\n");
        out.push_str(&self.plan_text);
        out
    }

    /// How its output records' keys carry their window: a windowed aggregate's windows, or
    /// the windowed source's that a stateless query passes through. `None`: unwindowed.
    pub fn key_window(&self) -> Option<KeyWindow> {
        match &self.stage {
            Stage::Aggregate(a) => a.windows().map(|w| match (w.session, w.advance == w.size) {
                (true, _) => KeyWindow::Session,
                (false, true) => KeyWindow::Tumbling { size: w.size },
                (false, false) => KeyWindow::Hopping { size: w.size },
            }),
            Stage::Stateless(_) => self.source.window,
        }
    }

    /// The window clause, if any.
    pub fn windows(&self) -> Option<&Windows> {
        match &self.stage {
            Stage::Aggregate(a) => a.windows(),
            Stage::Stateless(_) => None,
        }
    }
}

/// The columns `*` stands for, as in ksqlDB: the declared columns without ROWTIME, and for
/// a windowed source the key columns, then WINDOWSTART and WINDOWEND, then the values.
fn star_columns(source: &SourceDef) -> Vec<String> {
    let declared = |name: &str| source.columns.iter().any(|c| c.0 == name);
    let mut names: Vec<String> = Vec::with_capacity(source.columns.len() + 2);
    names.extend(source.columns.iter().filter(|c| c.2).map(|c| c.0.clone()));
    if source.window.is_some() {
        for w in [WINDOWSTART, WINDOWEND] {
            if !declared(w) {
                names.push(w.to_string());
            }
        }
    }
    names.extend(source.columns.iter().filter(|c| !c.2).map(|c| c.0.clone()));
    names
}

/// The one stream or table a query without joins reads, from its FROM clause.
fn source_name(select: &Select) -> Result<String> {
    let SetExpr::Select(body) = select.query.body.as_ref() else {
        return Err(SqlError::Invalid(
            "UNION, INTERSECT and EXCEPT are not supported in streaming queries".into(),
        ));
    };
    if body.from.len() != 1 || !body.from[0].joins.is_empty() {
        return Err(SqlError::Invalid(if body.from.is_empty() {
            "a query needs FROM a stream or table".into()
        } else {
            "join sources with FROM a JOIN b ON a.x = b.y".to_string()
        }));
    }
    match &body.from[0].relation {
        TableFactor::Table { name, .. } => Ok(object_name(name)),
        _ => Err(SqlError::Invalid(
            "FROM must name a stream or table (subqueries are not supported)".into(),
        )),
    }
}

/// The name an identifier stands for: unquoted ones are case-insensitive (folded to upper
/// case, as declared names are), quoted ones exact — as in ksqlDB. The parser folds every
/// token already; this covers syntax trees built by hand.
pub fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_uppercase()
    }
}

/// The name a (possibly qualified) stream or table name stands for: its last part, as
/// [`ident_name`] reads it.
pub fn object_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

/// `e` with its unquoted identifiers folded to upper case: two spellings of one expression
/// (`Zone` and `zone`) compare equal.
pub fn folded(e: &SqlExpr) -> SqlExpr {
    use datafusion::sql::sqlparser::ast::visit_expressions_mut;
    let mut e = e.clone();
    let _ = visit_expressions_mut(&mut e, |e| {
        match e {
            // Once folded, the value is exact: the quotes no longer tell spellings apart.
            SqlExpr::Identifier(i) => {
                i.value = ident_name(i);
                i.quote_style = None;
            }
            SqlExpr::CompoundIdentifier(parts) => {
                for i in parts.iter_mut() {
                    i.value = ident_name(i);
                    i.quote_style = None;
                }
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    e
}

/// Compiles a SELECT against the catalog.
pub fn compile(catalog: &Catalog, select: &Select) -> Result<CompiledQuery> {
    if let Some((plan, over_join)) = crate::operators::join::plan::plan(catalog, select)? {
        // The rest of the query reads the joined rows as a source of their own.
        let table = plan.def.table()?;
        let mut q = compile_over(plan.def.clone(), vec![table], &over_join)
            .map_err(|e| plan.names.error(e))?;
        q.join = Some(Box::new(plan));
        return Ok(q);
    }
    let name = source_name(select)?;
    let source = catalog.get(&name)?.clone();
    compile_over(source, catalog.tables()?, select)
}

/// Compiles a SELECT over `source` (a declared source, or the joined rows), planning
/// against `tables`.
fn compile_over(
    source: SourceDef,
    mut tables: Vec<SourceTable>,
    select: &Select,
) -> Result<CompiledQuery> {
    let mut query = select.query.clone();
    let partition_by = match &select.partition_by {
        None => None,
        Some(pb) => {
            let grouped = select.window.is_some()
                || matches!(query.body.as_ref(), SetExpr::Select(b)
                    if matches!(&b.group_by, GroupByExpr::Expressions(e, _) if !e.is_empty()));
            Some(crate::partition_by::resolve(pb, &source, grouped)?)
        }
    };
    // `*` means the declared columns, as in ksqlDB: not ROWTIME (select it by name).
    if let SetExpr::Select(body) = query.body.as_mut() {
        let mut items = Vec::with_capacity(body.projection.len());
        for item in body.projection.drain(..) {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    match select
                        .partition_by
                        .as_ref()
                        .and_then(|pb| crate::partition_by::star_items(pb, &source))
                    {
                        Some(rekeyed) => items.extend(rekeyed),
                        None => items.extend(star_columns(&source).into_iter().map(|name| {
                            SelectItem::UnnamedExpr(SqlExpr::Identifier(Ident::with_quote(
                                '"', name,
                            )))
                        })),
                    }
                }
                other => items.push(other),
            }
        }
        body.projection = items;
        for item in &body.projection {
            if let SelectItem::ExprWithAlias { alias, .. } = item {
                let name = ident_name(alias);
                if [ROWTIME, WINDOWSTART, WINDOWEND].contains(&name.as_str()) {
                    return Err(SqlError::Invalid(format!(
                        "`{name}` is a reserved column name. You cannot use it as an alias for a column."
                    )));
                }
            }
        }
        name_columns(&mut body.projection, &source);
        for item in body.projection.iter_mut() {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                null_comparisons_false(e)?;
            }
        }
        if let Some(e) = body.selection.as_mut() {
            null_comparisons_false(e)?;
        }
        if let Some(e) = body.having.as_mut() {
            null_comparisons_false(e)?;
        }
        if let GroupByExpr::Expressions(exprs, _) = &mut body.group_by {
            for e in exprs.iter_mut() {
                null_comparisons_false(e)?;
            }
        }
    }
    let (columns, group_by) = match query.body.as_ref() {
        SetExpr::Select(body) => (
            body.projection
                .iter()
                .filter_map(|item| match item {
                    SelectItem::UnnamedExpr(e) => Some((key_expr(e), output_name(e)?)),
                    SelectItem::ExprWithAlias { expr, alias } => {
                        Some((key_expr(expr), ident_name(alias)))
                    }
                    _ => None,
                })
                .collect(),
            match &body.group_by {
                GroupByExpr::Expressions(exprs, _) => exprs.iter().map(key_expr).collect(),
                GroupByExpr::All(_) => Vec::new(),
            },
        ),
        _ => (Vec::new(), Vec::new()),
    };
    // Checked here rather than in the parser so that a stored query outside the bounds
    // (created before they existed) still loads from the catalog, refuses to start with the
    // reason, and can be terminated.
    if let Some(spec) = &select.window {
        crate::operators::window::validate(spec)?;
    }
    let windows = select.window.as_ref().map(Windows::new);
    if windows.is_some() && source.window.is_some() {
        return Err(SqlError::Invalid(format!(
            "{} is windowed already: a WINDOW clause aggregates an unwindowed stream",
            source.name
        )));
    }
    if windows.is_some() {
        let SetExpr::Select(body) = query.body.as_mut() else {
            return Err(SqlError::Plan("internal error: not a SELECT".into()));
        };
        match &mut body.group_by {
            GroupByExpr::Expressions(exprs, _) if !exprs.is_empty() => {
                exprs.push(SqlExpr::Identifier(Ident::new(WINDOWSTART)));
                exprs.push(SqlExpr::Identifier(Ident::new(WINDOWEND)));
            }
            _ => {
                return Err(SqlError::Invalid(
                    "a WINDOW needs GROUP BY (e.g. GROUP BY zone)".into(),
                ));
            }
        }
    }
    let reader = SourceReader::new(&source)?;
    let scan_schema = match windows {
        Some(_) => with_window_columns(reader.schema()),
        None => Arc::clone(reader.schema()),
    };
    for t in &mut tables {
        if t.name == source.name {
            *t = SourceTable {
                name: t.name.clone(),
                schema: Arc::clone(&scan_schema),
            };
        }
    }
    let planner = Planner::new(&tables)?;
    refuse_aggregates_in_group_by(&planner.state(), &query)?;
    if let Some(pb) = &partition_by {
        crate::partition_by::validate(pb, &planner, &query)?;
    }
    let analyzed = planner.analyzed_plan(&query).map_err(in_ksql_words)?;
    let explodes = analyzed
        .exists(|n| Ok(matches!(n, LogicalPlan::Unnest(_))))
        .unwrap_or(false);
    if explodes && source.kind == SourceKind::Table {
        return Err(SqlError::Invalid(format!(
            "{} is a table: table functions (EXPLODE) apply to streams",
            source.name
        )));
    }
    let has_aggregate = analyzed
        .exists(|n| Ok(matches!(n, LogicalPlan::Aggregate(_))))
        .unwrap_or(false);
    let stage = if has_aggregate {
        if partition_by.is_some() {
            return Err(SqlError::Invalid(
                "Queries only support one of PARTITION BY and GROUP BY".into(),
            ));
        }
        if select.emit == Some(Emit::Final) && windows.is_none() {
            return Err(SqlError::Invalid(
                "EMIT FINAL needs a WINDOW: without one, a group's result is never final".into(),
            ));
        }
        Stage::Aggregate(Box::new(AggregatePlan::from_plan(
            &planner.state(),
            &analyzed,
            windows,
            select.emit.unwrap_or(Emit::Changes),
            source.kind == SourceKind::Table,
        )?))
    } else {
        if windows.is_some() {
            return Err(SqlError::Invalid(
                "a WINDOW needs an aggregate (GROUP BY with COUNT, SUM, ...)".into(),
            ));
        }
        if select.emit == Some(Emit::Final) {
            return Err(SqlError::Invalid(
                "EMIT FINAL needs a windowed aggregate".into(),
            ));
        }
        Stage::Stateless(planner.stateless(&query)?)
    };
    if let (Stage::Aggregate(_), SourceKind::Table, true) = (&stage, source.kind, windows.is_some())
    {
        return Err(SqlError::Invalid(format!(
            "{} is a table: windows aggregate streams",
            source.name
        )));
    }
    let schema = match &stage {
        Stage::Stateless(s) => s.schema(),
        Stage::Aggregate(a) => a.schema(),
    };
    if let Some(f) = schema
        .fields()
        .iter()
        .find(|f| f.data_type() == &DataType::Null)
    {
        // A bare NULL has no type a sink could declare; ksqlDB refuses it the same way.
        return Err(SqlError::Invalid(format!(
            "Can't infer a type of null (column {}). Please explicitly cast it to a required type, e.g. CAST(null AS VARCHAR).",
            f.name()
        )));
    }
    Ok(CompiledQuery {
        source,
        stage,
        emit: select.emit,
        scan_schema,
        plan_text: analyzed.display_indent().to_string(),
        columns,
        group_by,
        join: None,
        partition_by,
    })
}

/// `GROUP BY COUNT(*)` is refused with ksqlDB's words (DataFusion only fails later, when
/// the expression is evaluated).
fn refuse_aggregates_in_group_by(
    state: &datafusion::execution::SessionState,
    query: &datafusion::sql::sqlparser::ast::Query,
) -> Result<()> {
    use datafusion::execution::FunctionRegistry;
    use datafusion::sql::sqlparser::ast::visit_expressions;
    let SetExpr::Select(body) = query.body.as_ref() else {
        return Ok(());
    };
    let GroupByExpr::Expressions(exprs, _) = &body.group_by else {
        return Ok(());
    };
    let flow = visit_expressions(exprs, |e| match e {
        SqlExpr::Function(f) => {
            let name = f.name.to_string();
            if state.udaf(&name.to_lowercase()).is_ok() {
                std::ops::ControlFlow::Break(name.to_uppercase())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    match flow {
        std::ops::ControlFlow::Break(name) => Err(SqlError::Invalid(format!(
            "GROUP BY does not support aggregate functions: {name} is an aggregate function."
        ))),
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

/// DataFusion's refusals of a column that is neither grouped on nor aggregated, in ksqlDB's
/// words (which say what to do); other errors as they are.
fn in_ksql_words(e: SqlError) -> SqlError {
    let SqlError::Plan(msg) = &e else {
        return e;
    };
    let column = || {
        msg.split("column \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|c| c.rsplit('.').next().unwrap_or(c).to_string())
            .unwrap_or_default()
    };
    if msg.starts_with("Column in SELECT must be in GROUP BY") {
        SqlError::Invalid(format!(
            "Non-aggregate SELECT expression(s) not part of GROUP BY: {}. Either add the column(s) to the GROUP BY or remove them from the SELECT.",
            column()
        ))
    } else if msg.starts_with("Column in HAVING must be in GROUP BY") {
        SqlError::Invalid(format!(
            "Non-aggregate HAVING expression not part of GROUP BY: {}. Consider switching the HAVING clause to a WHERE clause before the GROUP BY.",
            column()
        ))
    } else {
        e
    }
}

/// ksqlDB's comparisons: `a = b`, `a <> b`, `a < b`, ..., `BETWEEN` and `IN` are false, not
/// NULL, when a side is NULL (so `NOT (a = b)` and `a NOT IN (1, NULL)` hold then, and a NULL
/// never leaks out of a comparison);
/// a comparison with the literal `NULL` is refused, as ksqlDB refuses it. Written as
/// `(a = b) IS TRUE`, which DataFusion evaluates with exactly that meaning. Applied to
/// Whether `op` compares (`=`, `<>`, `<`, `<=`, `>`, `>=`).
pub(crate) fn is_comparison(op: &datafusion::sql::sqlparser::ast::BinaryOperator) -> bool {
    use datafusion::sql::sqlparser::ast::BinaryOperator;
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

/// GROUP BY as to the SELECT list, so the two still match.
pub(crate) fn null_comparisons_false(e: &mut SqlExpr) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{Value, visit_expressions_mut};
    let is_null = |e: &SqlExpr| matches!(e, SqlExpr::Value(v) if v.value == Value::Null);
    let flow = visit_expressions_mut(e, |e| {
        if let SqlExpr::BinaryOp { left, op, right } = e {
            if is_comparison(op) {
                if is_null(left) || is_null(right) {
                    return std::ops::ControlFlow::Break(SqlError::Invalid(format!(
                        "Comparison with NULL not supported: {e}. Use 'IS NULL' or 'IS NOT NULL' instead."
                    )));
                }
                *e = SqlExpr::IsTrue(Box::new(SqlExpr::Nested(Box::new(e.clone()))));
            }
        }
        // BETWEEN is two comparisons and IN never matches a NULL, so both are false then;
        // their NOT forms are the negation of that (true), as in ksqlDB.
        let negated = match e {
            SqlExpr::Between { negated, .. } | SqlExpr::InList { negated, .. } => {
                Some(std::mem::replace(negated, false))
            }
            _ => None,
        };
        if let Some(negated) = negated {
            let test = SqlExpr::IsTrue(Box::new(SqlExpr::Nested(Box::new(e.clone()))));
            *e = if negated {
                SqlExpr::UnaryOp {
                    op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                    expr: Box::new(SqlExpr::Nested(Box::new(test))),
                }
            } else {
                test
            };
        }
        std::ops::ControlFlow::Continue(())
    });
    match flow {
        std::ops::ControlFlow::Break(err) => Err(err),
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

/// `e` in the form two spellings of one column or expression share: unquoted identifiers
/// folded ([`folded`]) and a column's source qualifier dropped (`s.zone` is `zone`).
pub fn key_expr(e: &SqlExpr) -> SqlExpr {
    match folded(e) {
        SqlExpr::CompoundIdentifier(mut parts) if parts.len() == 2 => {
            SqlExpr::Identifier(parts.remove(1))
        }
        SqlExpr::Nested(inner) => key_expr(&inner),
        other => other,
    }
}

/// The name a SELECT item without an alias gets: a column its name, a STRUCT field its
/// field name (`address->town` is `town`), anything else `None` ([`name_columns`] gives it
/// a `KSQL_COL_<n>` alias).
fn output_name(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Identifier(i) => Some(ident_name(i)),
        SqlExpr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        SqlExpr::Nested(inner) => output_name(inner),
        _ => None,
    }
}

/// The STRUCT field `e` reads, if it is `column->field` (parsed as `column['field']`) over a
/// STRUCT column of `source`: the field's declared name.
pub(crate) fn struct_field_name(e: &SqlExpr, source: &SourceDef) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{AccessExpr, Subscript, Value};
    let SqlExpr::CompoundFieldAccess { root, access_chain } = e else {
        return None;
    };
    let mut t = match root.as_ref() {
        SqlExpr::Identifier(i) => {
            let name = ident_name(i);
            source.columns.iter().find(|c| c.0 == name)?.1.clone()
        }
        _ => return None,
    };
    let mut name = None;
    for access in access_chain {
        let AccessExpr::Subscript(Subscript::Index { index }) = access else {
            return None;
        };
        let SqlExpr::Value(v) = index else {
            return None;
        };
        let Value::SingleQuotedString(field) = &v.value else {
            return None;
        };
        let DataType::Struct(fields) = &t else {
            return None;
        };
        let f = fields
            .iter()
            .find(|f| f.name() == field)
            .or_else(|| fields.iter().find(|f| f.name().eq_ignore_ascii_case(field)))?;
        name = Some(f.name().clone());
        t = f.data_type().clone();
    }
    name
}

/// Names the SELECT items ksqlDB names: a STRUCT field read gets the field's name, and every
/// other expression without an alias `KSQL_COL_0`, `KSQL_COL_1`, ... in SELECT-list order
/// (the number counts only the names generated, skipping any a column or alias already
/// uses), instead of DataFusion's rendering of the expression.
fn name_columns(projection: &mut [SelectItem], source: &SourceDef) {
    let mut taken: std::collections::HashSet<String> =
        source.columns.iter().map(|c| c.0.to_uppercase()).collect();
    for item in projection.iter() {
        match item {
            SelectItem::ExprWithAlias { alias, .. } => {
                taken.insert(ident_name(alias).to_uppercase());
            }
            SelectItem::UnnamedExpr(e) => {
                if let Some(n) = output_name(e) {
                    taken.insert(n.to_uppercase());
                }
            }
            _ => {}
        }
    }
    let mut next = 0;
    for item in projection.iter_mut() {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if output_name(e).is_some() {
            continue;
        }
        let name = match struct_field_name(e, source) {
            Some(field) => field,
            None => loop {
                let n = format!("KSQL_COL_{next}");
                next += 1;
                if taken.insert(n.clone()) {
                    break n;
                }
            },
        };
        *item = SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::with_quote('"', name),
        };
    }
}

/// What a running query emits for one batch of records.
#[derive(Debug)]
pub struct Step {
    /// Output rows.
    pub batch: RecordBatch,
    /// Record timestamp of each output row.
    pub timestamps: Vec<i64>,
    /// Input records rejected (undecodable, no event time, too late), with the reason.
    pub rejected: Vec<(usize, String)>,
    /// Per output row: it deletes its key (a table's query: the row left its group,
    /// stopped passing the filter, or was deleted upstream); only its key column matters.
    pub deleted: Vec<bool>,
    /// Per output row of a windowed query: its window (start, end), which the record key
    /// carries ([`KeyWindow`]); empty for unwindowed queries.
    pub windows: Vec<(i64, i64)>,
}

impl Step {
    fn empty(schema: &SchemaRef) -> Step {
        Step {
            batch: RecordBatch::new_empty(Arc::clone(schema)),
            timestamps: Vec::new(),
            rejected: Vec::new(),
            deleted: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// A step rejecting one record.
    pub fn rejecting(schema: &SchemaRef, index: usize, reason: String) -> Step {
        let mut s = Step::empty(schema);
        s.rejected.push((index, reason));
        s
    }

    /// Appends another step's results (its record indices shifted by `offset`).
    fn extend(&mut self, other: Step, offset: usize) -> Result<()> {
        let schema = self.batch.schema();
        self.batch =
            datafusion::arrow::compute::concat_batches(&schema, [&self.batch, &other.batch])?;
        self.timestamps.extend(other.timestamps);
        self.rejected
            .extend(other.rejected.into_iter().map(|(i, r)| (i + offset, r)));
        self.deleted.extend(other.deleted);
        self.windows.extend(other.windows);
        Ok(())
    }
}

/// The latest row per key of a table input, so an aggregate can retract it when the key is
/// updated or deleted: a store (persistent queries) or a map (push queries).
#[derive(Debug)]
enum TableRows {
    Memory(std::collections::HashMap<Vec<u8>, (bytes::Bytes, i64)>),
    Stores(Vec<sluice_state::KvStore>),
}

impl TableRows {
    fn index(stores: &[sluice_state::KvStore], key: &[u8]) -> usize {
        sluice_log::partitioner::partition_for_key(key, stores.len() as u32) as usize
    }

    fn get(&self, key: &[u8]) -> Result<Option<(bytes::Bytes, i64)>> {
        match self {
            TableRows::Memory(m) => Ok(m.get(key).cloned()),
            TableRows::Stores(s) => {
                let v = s[Self::index(s, key)]
                    .get(key)
                    .map_err(|e| SqlError::Invalid(format!("table state: {e}")))?;
                Ok(v.and_then(|v| {
                    (v.len() >= 8).then(|| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&v[..8]);
                        (v.slice(8..), i64::from_le_bytes(a))
                    })
                }))
            }
        }
    }

    fn put(&mut self, key: &[u8], value: Option<(&[u8], i64)>) {
        match self {
            TableRows::Memory(m) => match value {
                Some((v, ts)) => {
                    m.insert(key.to_vec(), (bytes::Bytes::copy_from_slice(v), ts));
                }
                None => {
                    m.remove(key);
                }
            },
            TableRows::Stores(s) => {
                let i = Self::index(s, key);
                match value {
                    Some((v, ts)) => {
                        let mut b = ts.to_le_bytes().to_vec();
                        b.extend_from_slice(v);
                        s[i].put(key, &b);
                    }
                    None => s[i].delete(key),
                }
            }
        }
    }
}

#[derive(Debug)]
enum Running {
    Stateless(Stateless),
    Aggregate(Box<Aggregate>, Option<TableRows>),
}

/// A compiled query with its state, fed records batch by batch.
#[derive(Debug)]
pub struct Dataflow {
    query: CompiledQuery,
    reader: SourceReader,
    op: Running,
    remaining: Option<usize>,
    /// The joins in front of the operators, whose output is the operators' input.
    join: Option<Join>,
    /// Records an inner join dropped for a NULL join key.
    dropped: u64,
}

impl Dataflow {
    /// Opens a query's operators: with `state` (env, log, store name prefix) its stores are
    /// opened and restored; without, state lives in memory.
    pub fn open(query: CompiledQuery, state: Option<(&StateEnv, &Log, &str)>) -> Result<Dataflow> {
        let reader = SourceReader::new(&query.source)?;
        let mut join = match &query.join {
            Some(plan) => Some(Join::open(plan, state)?),
            None => None,
        };
        let op = match &query.stage {
            Stage::Stateless(s) => Running::Stateless(s.clone()),
            Stage::Aggregate(a) => {
                let partitions = match state {
                    // Joined rows have no topic: one store each.
                    Some(_) if join.is_some() => 1,
                    Some((_, log, _)) => log.topic(&query.source.topic)?.partition_count(),
                    None => 1,
                };
                let rows = match (query.source.kind, state) {
                    (SourceKind::Stream, _) => None,
                    (SourceKind::Table, None) => Some(TableRows::Memory(Default::default())),
                    (SourceKind::Table, Some((env, log, name))) => {
                        let store = format!("{name}-source");
                        let changelog = format!("{store}-changelog");
                        let stores = (0..partitions)
                            .map(|p| {
                                let mut s = env
                                    .open_kv(
                                        sluice_state::StoreId::new(&store, p),
                                        sluice_state::ChangelogTopic::new(
                                            &changelog, p, partitions,
                                        ),
                                    )
                                    .map_err(|e| {
                                        SqlError::Invalid(format!("table state of {name}: {e}"))
                                    })?;
                                sluice_state::StateStore::restore(&mut s, log).map_err(|e| {
                                    SqlError::Invalid(format!("table state of {name}: {e}"))
                                })?;
                                Ok(s)
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Some(TableRows::Stores(stores))
                    }
                };
                Running::Aggregate(
                    Box::new(Aggregate::open(
                        (**a).clone(),
                        Arc::clone(&query.scan_schema),
                        state.map(|(env, log, name)| (env, log, name, partitions)),
                    )?),
                    rows,
                )
            }
        };
        if let Some(j) = join.as_mut() {
            // Columns of the joined rows nothing after the join reads need not be built.
            let read: Option<Vec<usize>> = match &op {
                Running::Stateless(s) => s.read_columns().map(|c| c.into_iter().collect()),
                Running::Aggregate(a, None) => a.read_columns().map(<[usize]>::to_vec),
                Running::Aggregate(_, Some(_)) => None,
            };
            j.set_read_columns(read.as_deref());
        }
        Ok(Dataflow {
            remaining: query.limit(),
            query,
            reader,
            op,
            join,
            dropped: 0,
        })
    }

    /// Records an inner join dropped because their join key was NULL (ksqlDB drops them
    /// too; they are not errors).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Entries held in join state (0 without joins), for tests of its bounds.
    pub fn join_state_entries(&mut self) -> usize {
        self.join.as_mut().map_or(0, Join::state_entries)
    }

    /// Runs records of the query's `source`-th source (0 without joins; in FROM order with
    /// joins) through the query. Records the joins rejected, and rows the operators after
    /// them could not evaluate, come back as rejected with their input record's index.
    pub fn process_from(&mut self, source: usize, records: &[Input<'_>]) -> Result<Step> {
        if self.join.is_none() {
            return self.process(records);
        }
        let items: Vec<(usize, Input<'_>)> = records.iter().map(|r| (source, *r)).collect();
        self.process_mixed(&items)
    }

    /// Runs records of any of the query's sources (`(source, record)` in processing order)
    /// through it: a join takes its sides' records in this order, decoding each side's
    /// together. Rejected records are named by their index in `items`.
    pub fn process_mixed(&mut self, items: &[(usize, Input<'_>)]) -> Result<Step> {
        let Some(join) = self.join.as_mut() else {
            let records: Vec<Input<'_>> = items.iter().map(|i| i.1).collect();
            return self.process(&records);
        };
        let unwrapped: Vec<(usize, Input<'_>)>;
        let items = match join.has_envelopes() {
            true => {
                unwrapped = items
                    .iter()
                    .map(|(s, r)| match join.source_format(*s) == Format::Debezium {
                        true => (*s, unwrap_debezium(*r)),
                        false => (*s, *r),
                    })
                    .collect();
                &unwrapped[..]
            }
            false => items,
        };
        let mut out = join.process_mixed(items)?;
        self.dropped += out.dropped;
        if let Some(rows) = out.rows.take() {
            return self.process_joined_rows(rows, out.rejected);
        }
        let joined: Vec<Input<'_>> = out
            .records
            .iter()
            .map(crate::operators::join::Joined::input)
            .collect();
        // The joins' state has moved on: a row the operators cannot evaluate is rejected
        // alone, never the batch retried through the joins.
        let mut step = match self.process(&joined) {
            Ok(step) => step,
            Err(SqlError::Plan(_)) => {
                let mut step = Step::empty(self.query.schema());
                for (i, input) in joined.iter().enumerate() {
                    match self.process(std::slice::from_ref(input)) {
                        Ok(s) => step.extend(s, i)?,
                        Err(SqlError::Plan(e)) => step.rejected.push((i, e)),
                        Err(e) => return Err(e),
                    }
                }
                step
            }
            Err(e) => return Err(e),
        };
        let mut rejected: Vec<(usize, String)> = step
            .rejected
            .into_iter()
            .map(|(i, r)| (out.records[i].origin, r))
            .collect();
        rejected.extend(out.rejected);
        rejected.sort_by_key(|r| r.0);
        step.rejected = rejected;
        Ok(step)
    }

    /// The compiled query.
    pub fn query(&self) -> &CompiledQuery {
        &self.query
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        self.query.schema()
    }

    /// True once LIMIT rows were emitted.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Runs records through the query.
    pub fn process(&mut self, records: &[Input<'_>]) -> Result<Step> {
        if self.query.source.format == Format::Debezium {
            let rows: Vec<Input<'_>> = records.iter().map(|r| unwrap_debezium(*r)).collect();
            return self.process_rows_of(&rows);
        }
        self.process_rows_of(records)
    }

    fn process_rows_of(&mut self, records: &[Input<'_>]) -> Result<Step> {
        let table = self.query.source.kind == SourceKind::Table;
        let step = match &mut self.op {
            Running::Aggregate(a, Some(rows)) => {
                // A table: each record replaces its key's row; retract the old one first.
                let mut step = Step::empty(self.query.schema());
                for (i, r) in records.iter().enumerate() {
                    let s = table_update(&self.reader, a, rows, r)?;
                    step.extend(s, i)?;
                }
                step
            }
            Running::Aggregate(_, None) => {
                let mut rows = self.reader.read(records)?;
                // A stream record with a null value is no row to aggregate: ksqlDB drops it.
                rows.rejected.retain(|(i, _)| records[*i].value.is_some());
                self.process_rows(rows, records)?
            }
            Running::Stateless(s) if table || records.iter().any(|r| r.value.is_none()) => {
                stateless_with_nulls(&self.reader, s, &self.query, records)?
            }
            Running::Stateless(_) => {
                let rows = self.reader.read(records)?;
                self.process_rows(rows, records)?
            }
        };
        Ok(self.limited(step))
    }

    /// Stream rows (decoded from `records`, or made by a join: `records` empty) through a
    /// stateless query or a stream's aggregate.
    fn process_rows(&mut self, rows: Rows, records: &[Input<'_>]) -> Result<Step> {
        Ok(match &mut self.op {
            Running::Aggregate(a, _) => {
                let e = a.process(&rows.batch, rows.times(), 1)?;
                let times = rows.times();
                let mut rejected = rows.rejected.clone();
                for (i, why) in e.failed {
                    rejected.push((rows.records[i], why));
                }
                for i in e.late {
                    rejected.push((
                        rows.records[i],
                        format!(
                            "late: event time {} is past its window's end plus the grace period (stream time {})",
                            times[i],
                            a.stream_time()
                        ),
                    ));
                }
                Step {
                    batch: e.batch,
                    timestamps: e.timestamps,
                    rejected,
                    deleted: e.deleted,
                    windows: e.windows,
                }
            }
            Running::Stateless(s) => {
                let (out, selected) = s.process_indexed(&rows.batch)?;
                let times = rows.times();
                let picked: Vec<usize> = match selected {
                    None => (0..times.len()).collect(),
                    Some(sel) => sel.iter().map(|&i| i as usize).collect(),
                };
                Step {
                    deleted: vec![false; out.num_rows()],
                    batch: out,
                    timestamps: picked.iter().map(|&i| times[i]).collect(),
                    windows: record_windows(
                        &self.reader,
                        records,
                        picked.iter().map(|&i| rows.records[i]),
                    ),
                    rejected: rows.rejected,
                }
            }
        })
    }

    /// A stream join's rows through the operators after it, without a detour through
    /// records: their ROWKEY is decoded from the keys, the rest is J as it is.
    fn process_joined_rows(
        &mut self,
        rows: crate::operators::join::JoinedRows,
        join_rejected: Vec<(usize, String)>,
    ) -> Result<Step> {
        let n = rows.batch.num_rows();
        let key_inputs: Vec<Input<'_>> = rows
            .keys
            .iter()
            .map(|k| Input {
                key: k.as_deref(),
                value: None,
                timestamp: 0,
            })
            .collect();
        let all: Vec<usize> = (0..n).collect();
        let mut columns = rows.batch.columns().to_vec();
        if let Some(key) = self
            .reader
            .decode_keys(&key_inputs, &all)?
            .into_iter()
            .next()
        {
            columns[0] = key;
        }
        let batch = RecordBatch::try_new(Arc::clone(self.reader.schema()), columns)?;
        let of = |batch: RecordBatch| Rows {
            records: (0..batch.num_rows()).collect(),
            batch,
            rejected: Vec::new(),
        };
        // The joins' state has moved on: a row the operators cannot evaluate is rejected
        // alone, never the batch retried through the joins.
        let step = match self.process_rows(of(batch.clone()), &[]) {
            Ok(step) => step,
            Err(SqlError::Plan(_)) => {
                let mut step = Step::empty(self.query.schema());
                for i in 0..n {
                    match self.process_rows(of(batch.slice(i, 1)), &[]) {
                        Ok(s) => step.extend(s, i)?,
                        Err(SqlError::Plan(e)) => step.rejected.push((i, e)),
                        Err(e) => return Err(e),
                    }
                }
                step
            }
            Err(e) => return Err(e),
        };
        let mut step = self.limited(step);
        let mut rejected: Vec<(usize, String)> = step
            .rejected
            .into_iter()
            .map(|(i, r)| (rows.origins[i], r))
            .collect();
        rejected.extend(join_rejected);
        rejected.sort_by_key(|r| r.0);
        step.rejected = rejected;
        Ok(step)
    }

    /// `step` cut at the rows LIMIT still allows.
    fn limited(&mut self, mut step: Step) -> Step {
        if let Some(rem) = self.remaining.as_mut() {
            // LIMIT counts rows, not deletions.
            let mut n = 0;
            let mut rows = 0;
            while n < step.deleted.len() && rows < *rem {
                if !step.deleted[n] {
                    rows += 1;
                }
                n += 1;
            }
            step.batch = step.batch.slice(0, n);
            step.timestamps.truncate(n);
            step.deleted.truncate(n);
            step.windows.truncate(n);
            *rem -= rows;
        }
        step.rejected.sort_by_key(|r| r.0);
        step
    }

    /// Moves cached state into the stores before an epoch commit.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(j) = self.join.as_mut() {
            j.flush();
        }
        match &mut self.op {
            Running::Aggregate(a, _) => a.flush(),
            Running::Stateless(_) => Ok(()),
        }
    }

    /// The state stores (empty for stateless queries without joins).
    pub fn stores_mut(&mut self) -> Vec<&mut dyn sluice_state::StateStore> {
        let mut stores = match self.join.as_mut() {
            Some(j) => j.stores_mut(),
            None => Vec::new(),
        };
        stores.extend(operator_stores(&mut self.op));
        stores
    }
}

/// The stores of a query's operators.
fn operator_stores(op: &mut Running) -> Vec<&mut dyn sluice_state::StateStore> {
    match op {
        Running::Aggregate(a, rows) => {
            let mut v = a.stores_mut();
            if let Some(TableRows::Stores(s)) = rows {
                v.extend(s.iter_mut().map(|s| s as &mut dyn sluice_state::StateStore));
            }
            v
        }
        Running::Stateless(_) => Vec::new(),
    }
}

impl Dataflow {
    /// Drops uncommitted state after an aborted epoch.
    pub fn abort(&mut self) -> Result<()> {
        if let Some(j) = self.join.as_mut() {
            j.abort();
        }
        match &mut self.op {
            Running::Aggregate(a, rows) => {
                if let Some(TableRows::Stores(s)) = rows {
                    for s in s.iter_mut() {
                        sluice_state::StateStore::abort(s);
                    }
                }
                a.abort()
            }
            Running::Stateless(_) => Ok(()),
        }
    }
}

/// A stateless query in record order, for records that may be tombstones (no value).
///
/// Over a table, rows passing the filter are updates, rows failing it and tombstones delete
/// their key. Over a stream, as ksqlDB defines it, a record whose value is null passes a
/// projection as a record with a null value (its key kept) and is dropped by a WHERE
/// clause; rows failing the filter are just dropped.
fn stateless_with_nulls(
    reader: &SourceReader,
    op: &Stateless,
    query: &CompiledQuery,
    records: &[Input<'_>],
) -> Result<Step> {
    let table = query.source.kind == SourceKind::Table;
    let schema = Arc::clone(op.schema());
    let mut values = Vec::with_capacity(records.len());
    let mut index = Vec::with_capacity(records.len());
    // (record, timestamp) of each deletion: a tombstone, or a table row failing the filter.
    let mut tombstones: Vec<(usize, i64)> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match (r.value, r.key, table) {
            (None, Some(_), true) => tombstones.push((i, r.timestamp)),
            (None, _, false) if !op.filters() => tombstones.push((i, r.timestamp)),
            (None, _, false) => {}
            _ => {
                values.push(*r);
                index.push(i);
            }
        }
    }
    let rows = reader.read(&values)?;
    let times = rows.times();
    let (all, selected) = op.process_indexed(&rows.batch)?;
    // (input record, batch 0 row | batch 1 row, deleted, timestamp)
    let mut order: Vec<(usize, (usize, usize), bool, i64)> = Vec::new();
    match &selected {
        None => {
            for row in 0..all.num_rows() {
                order.push((index[rows.records[row]], (0, row), false, times[row]));
            }
        }
        Some(sel) => {
            for (out_row, &row) in sel.iter().enumerate() {
                let row = row as usize;
                order.push((index[rows.records[row]], (0, out_row), false, times[row]));
            }
            // Rows failing the filter delete their key downstream (tables only).
            for row in 0..rows.batch.num_rows() {
                let i = index[rows.records[row]];
                if table && records[i].key.is_some() && sel.binary_search(&(row as u32)).is_err() {
                    tombstones.push((i, times[row]));
                }
            }
        }
    }
    // Deletions hold NULLs wherever no key goes, in columns that may be declared NOT NULL
    // (`COALESCE(a, 0)`): the step's schema lets every column be NULL.
    let schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let all = RecordBatch::try_new(Arc::clone(&schema), all.columns().to_vec())?;
    let tombs = key_only_rows(reader, query, &schema, records, &tombstones)?;
    for (j, (i, ts)) in tombstones.iter().enumerate() {
        order.push((*i, (1, j), true, *ts));
    }
    order.sort_by_key(|o| o.0);
    let indices: Vec<(usize, usize)> = order.iter().map(|o| o.1).collect();
    let batch = datafusion::arrow::compute::interleave_record_batch(&[&all, &tombs], &indices)?;
    Ok(Step {
        batch,
        timestamps: order.iter().map(|o| o.3).collect(),
        deleted: order.iter().map(|o| o.2).collect(),
        windows: record_windows(reader, records, order.iter().map(|o| o.0)),
        rejected: rows
            .rejected
            .iter()
            .map(|(i, r)| (index[*i], r.clone()))
            .collect(),
    })
}

/// Rows in the output `schema` holding only the keys of `deleted` records (the rest NULL):
/// each key column of the source in the output column that selects it (under its name or
/// an alias), so the deletion reaches the right key downstream.
fn key_only_rows(
    reader: &SourceReader,
    query: &CompiledQuery,
    schema: &SchemaRef,
    records: &[Input<'_>],
    deleted: &[(usize, i64)],
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), deleted.len()))
        .collect();
    let rows: Vec<usize> = deleted.iter().map(|d| d.0).collect();
    let keys = reader.decoder.decode_keys(records, &rows)?;
    for (name, key) in reader.decoder.key_columns().into_iter().zip(keys) {
        // A join's key is also in the join columns that equal it (`o.id` for `ROWKEY`).
        let names: Vec<SqlExpr> = std::iter::once(name)
            .chain(query.key_aliases().iter().map(String::as_str))
            .map(|n| SqlExpr::Identifier(Ident::new(n)))
            .collect();
        for (expr, out) in &query.columns {
            if names.contains(expr) {
                if let Ok(k) = schema.index_of(out) {
                    columns[k] = cast(&key, schema.field(k).data_type())?;
                }
            }
        }
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(deleted.len())),
    )?)
}

/// One record of a table input through an aggregate: retract the key's previous row, add
/// the new one (none for a tombstone), remember it.
fn table_update(
    reader: &SourceReader,
    agg: &mut Aggregate,
    rows: &mut TableRows,
    r: &Input<'_>,
) -> Result<Step> {
    let schema = Arc::clone(agg.plan().schema());
    let Some(key) = r.key else {
        return Ok(Step::rejecting(
            &schema,
            0,
            "a table record needs a key".into(),
        ));
    };
    // Decode the new row first: a bad record must not retract the old one.
    let new = match r.value {
        None => None,
        Some(_) => {
            let decoded = reader.read(std::slice::from_ref(r))?;
            if let Some((_, reason)) = decoded.rejected.into_iter().next() {
                return Ok(Step::rejecting(&schema, 0, reason));
            }
            Some(decoded.batch)
        }
    };
    let mut step = Step::empty(&schema);
    let mut retracted = None;
    if let Some((old, old_ts)) = rows.get(key)? {
        let old_input = Input {
            key: Some(key),
            value: Some(&old),
            timestamp: old_ts,
        };
        let decoded = reader.read(std::slice::from_ref(&old_input))?;
        // Retractions are stamped with the record that caused them.
        let times = vec![r.timestamp; decoded.batch.num_rows()];
        retracted = Some(agg.process(&decoded.batch, &times, -1)?);
    }
    match new {
        Some(batch) => {
            let times = vec![r.timestamp; batch.num_rows()];
            match agg.process(&batch, &times, 1) {
                Ok(e) => {
                    // A row updated within its group: only the group's new value is
                    // emitted, not a tombstone (or the value without the row) first.
                    if let Some(old) = retracted.take() {
                        step.extend(emitted(old.superseded_by(&e)?), 0)?;
                    }
                    // A new row whose update failed changed nothing: as when it cannot be
                    // evaluated, the key counts as deleted and the record is a dead letter.
                    let failed = !e.failed.is_empty();
                    step.extend(emitted(e), 0)?;
                    rows.put(
                        key,
                        if failed {
                            None
                        } else {
                            r.value.map(|v| (v, r.timestamp))
                        },
                    );
                }
                // The new row cannot be evaluated (its old one is already retracted): the
                // key counts as deleted and the record is a dead letter.
                Err(SqlError::Plan(e)) => {
                    if let Some(old) = retracted.take() {
                        step.extend(emitted(old), 0)?;
                    }
                    rows.put(key, None);
                    step.rejected.push((0, e));
                }
                Err(e) => return Err(e),
            }
        }
        None => {
            if let Some(old) = retracted.take() {
                step.extend(emitted(old), 0)?;
            }
            rows.put(key, None)
        }
    }
    Ok(step)
}

/// The step of one table record (row 0) through an aggregate.
fn emitted(e: crate::operators::aggregate::Emitted) -> Step {
    Step {
        batch: e.batch,
        timestamps: e.timestamps,
        rejected: e.failed.into_iter().map(|(_, why)| (0, why)).collect(),
        deleted: e.deleted,
        windows: e.windows,
    }
}

/// The windows of the input records `indices` of a windowed source, read from their keys
/// (a stateless query passes each row's window on); empty for an unwindowed source.
fn record_windows(
    reader: &SourceReader,
    records: &[Input<'_>],
    indices: impl Iterator<Item = usize>,
) -> Vec<(i64, i64)> {
    let Some(w) = reader.key_window() else {
        return Vec::new();
    };
    indices
        .map(|i| {
            // Rows come from records whose keys decoded; a tombstone's key may not have.
            records[i]
                .key
                .and_then(|k| w.decode(k).ok())
                .map_or((0, 0), |(_, s, e)| (s, e))
        })
        .collect()
}

/// The columns a derived stream or table declares for a query's output: the `keys` (the
/// columns that become the record key) first, in their order, then the other fields in
/// SELECT order, as ksqlDB lays out a derived source.
pub fn output_columns(schema: &Schema, keys: &[String]) -> Result<Vec<(String, DataType, bool)>> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for k in keys {
        let f = schema.field_with_name(k)?;
        columns.push((k.clone(), f.data_type().clone(), true));
    }
    columns.extend(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != ROWTIME && !keys.contains(f.name()))
            .map(|f| (f.name().clone(), f.data_type().clone(), false)),
    );
    Ok(columns)
}
