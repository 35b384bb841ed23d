//! INSERT: `INSERT INTO ... VALUES` writes rows now; `INSERT INTO ... SELECT` starts a
//! persistent query that writes a stream.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};
use sluice_log::{ProducerConfig, Record};

use super::{Engine, Output};
use crate::ast::{SourceKind, Statement};
use crate::catalog::QueryDef;
use crate::error::{Result, SqlError};
use crate::planner::Planner;
use crate::query::compile;
use crate::types::sql_name;

impl Engine {
    /// INSERT INTO ... VALUES: the rows, evaluated and cast to the columns, written now.
    pub(super) fn insert_values(
        &mut self,
        target: &str,
        columns: &[String],
        rows: &[Vec<Expr>],
    ) -> Result<Output> {
        let def = self.catalog.get(target)?.clone();
        refuse_internal(&def)?;
        if let Some(w) = def.window {
            return Err(SqlError::Invalid(format!(
                "{target} is windowed ({}): its records come from a windowed query, INSERT ... VALUES cannot write them",
                w.type_name()
            )));
        }
        let names: Vec<String> = if columns.is_empty() {
            def.columns.iter().map(|c| c.0.clone()).collect()
        } else {
            columns.to_vec()
        };
        // `ROWTIME` among the columns sets the record's timestamp (ms), as in ksqlDB; it is
        // not a column of the value.
        let rowtime = names.iter().position(|n| n == crate::format::ROWTIME);
        for n in names.iter().filter(|n| *n != crate::format::ROWTIME) {
            if !def.columns.iter().any(|c| &c.0 == n) {
                return Err(SqlError::Unknown {
                    kind: "column",
                    name: format!("{n} (of {target})"),
                });
            }
        }
        let planner = Planner::new(&[])?;
        let mut producer = self.log.producer(ProducerConfig::default())?;
        for row in rows {
            if row.len() != names.len() {
                return Err(SqlError::Invalid(format!(
                    "{} values for {} columns",
                    row.len(),
                    names.len()
                )));
            }
            let (timestamp, names, row) = match rowtime {
                None => (sluice_log::record::now_ms(), names.clone(), row.clone()),
                Some(i) => {
                    let at = [(
                        crate::format::ROWTIME.to_string(),
                        datafusion::arrow::datatypes::DataType::Int64,
                        false,
                    )];
                    let t = evaluate_row(&planner, &at, &[at[0].0.clone()], &row[i..=i])?;
                    let t = t
                        .column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .filter(|a| datafusion::arrow::array::Array::is_valid(*a, 0))
                        .map(|a| a.value(0))
                        .filter(|t| *t >= 0)
                        .ok_or_else(|| {
                            SqlError::Invalid(
                                "ROWTIME must be a time in milliseconds since 1970, not NULL or negative"
                                    .into(),
                            )
                        })?;
                    let mut names = names.clone();
                    let mut row = row.clone();
                    names.remove(i);
                    row.remove(i);
                    (t, names, row)
                }
            };
            let batch = evaluate_row(&planner, &def.columns, &names, &row)?;
            for (key, value) in def.encode(&batch)? {
                producer.send(
                    &def.topic,
                    Record {
                        key,
                        value: Some(Bytes::from(value)),
                        headers: Vec::new(),
                        timestamp,
                    },
                )?;
            }
        }
        producer.flush()?;
        Ok(Output::Message(format!(
            "Inserted {} row(s) into {target}.",
            rows.len()
        )))
    }

    /// INSERT INTO ... SELECT: a persistent query appending to an existing stream.
    pub(super) fn insert_select(
        &mut self,
        target: &str,
        select: &crate::ast::Select,
        text: &str,
    ) -> Result<Output> {
        let def = self.catalog.get(target)?.clone();
        refuse_internal(&def)?;
        if def.kind != SourceKind::Stream {
            return Err(SqlError::Invalid(format!(
                "INSERT INTO ... SELECT writes streams; {target} is a table"
            )));
        }
        let compiled = compile(&self.catalog, select)?;
        super::create::refuse_window_columns(select)?;
        if compiled.is_aggregate() {
            return Err(SqlError::Invalid(
                "INSERT INTO ... SELECT cannot aggregate; use CREATE TABLE ... AS SELECT".into(),
            ));
        }
        // A join reads several sources (its own source is the joined rows): each counts, or
        // the query would read back what it writes, forever.
        let reads = match &compiled.join {
            Some(j) => j.sources.iter().any(|s| s.def.name == def.name),
            None => compiled.source.name == def.name,
        };
        if reads {
            return Err(SqlError::Invalid(format!(
                "a query cannot read and write {target}"
            )));
        }
        if compiled.source.kind == SourceKind::Table {
            return Err(SqlError::Invalid(format!(
                "INSERT INTO ... SELECT writes streams; the query's rows are a table's (updates and deletions), not events for {target}"
            )));
        }
        // The rows' keys carry their windows exactly when the target's do.
        if compiled.key_window() != def.window {
            let name = |w: Option<crate::format::KeyWindow>| {
                w.map_or("unwindowed".to_string(), |w| {
                    format!("windowed ({})", w.type_name())
                })
            };
            return Err(SqlError::Invalid(format!(
                "{target} is {} and the query's rows are {}: their keys would not match",
                name(def.window),
                name(compiled.key_window())
            )));
        }
        // Re-keyed rows must be keyed as the target is (ksqlDB compares the key columns
        // with the sink's); without PARTITION BY the target's key columns are filled by name.
        if compiled.partition_by.is_some() {
            let keys = super::create::output_keys(&compiled, target)?;
            let target_keys: Vec<&String> =
                def.columns.iter().filter(|c| c.2).map(|c| &c.0).collect();
            if keys.iter().collect::<Vec<_>>() != target_keys {
                let list = |k: &[&String]| match k {
                    [] => "no key".to_string(),
                    k => k.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                };
                return Err(SqlError::Invalid(format!(
                    "Incompatible schema between results and sink: the query's rows are keyed by {} (PARTITION BY), {target} by {}",
                    list(&keys.iter().collect::<Vec<_>>()),
                    list(&target_keys)
                )));
            }
        }
        for f in compiled.schema().fields() {
            if f.name() == crate::format::ROWTIME
                || (def.window.is_some() && crate::operators::window::is_window_column(f.name()))
            {
                continue;
            }
            match def.columns.iter().find(|c| &c.0 == f.name()) {
                None => {
                    return Err(SqlError::Invalid(format!(
                        "column {} of the query is not a column of {target} (columns: {})",
                        f.name(),
                        def.columns
                            .iter()
                            .map(|c| c.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                Some((_, t, _))
                    if !datafusion::arrow::compute::can_cast_types(f.data_type(), t) =>
                {
                    return Err(SqlError::Invalid(format!(
                        "column {}: the query gives {}, {target} declares {}",
                        f.name(),
                        sql_name(f.data_type()),
                        sql_name(t)
                    )));
                }
                _ => {}
            }
        }
        let id = self.new_query_id("INSERTQUERY", target, text);
        let q = QueryDef {
            id: id.clone(),
            sink: target.to_string(),
            statement: text.trim().to_string(),
        };
        self.catalog.add_query(q.clone())?;
        self.start_query(&q)?;
        Ok(Output::Message(format!(
            "Query {id} is running, inserting into {target}."
        )))
    }
}

/// Evaluates one VALUES row into a one-row batch with the source's columns (those not named
/// are NULL), cast to their declared types.
fn evaluate_row(
    planner: &Planner,
    columns: &[(String, datafusion::arrow::datatypes::DataType, bool)],
    names: &[String],
    row: &[Expr],
) -> Result<RecordBatch> {
    let Statement::Select(template) = crate::parse_one("SELECT 1")? else {
        return Err(SqlError::Plan(
            "internal error: SELECT 1 did not parse as a query".into(),
        ));
    };
    let mut query: Query = *template.query;
    if let SetExpr::Select(select) = query.body.as_mut() {
        // Aliased: DataFusion refuses two unnamed items with the same text (`VALUES (0, 0)`).
        select.projection = row
            .iter()
            .enumerate()
            .map(|(i, e)| SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: datafusion::sql::sqlparser::ast::Ident::new(format!("value_{i}")),
            })
            .collect();
    }
    let plan = planner.logical_plan(&query)?;
    let LogicalPlan::Projection(p) = &plan else {
        return Err(SqlError::Plan(format!(
            "unexpected plan for VALUES: {}",
            plan.display()
        )));
    };
    let state = datafusion::prelude::SessionContext::new().state();
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let mut out: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, t, _)| new_null_array(t, 1))
        .collect();
    for (expr, name) in p.expr.iter().zip(names) {
        let physical = crate::checked::physical_expr(&state, expr, p.input.schema())?;
        let value = physical
            .evaluate(&one_row)
            .and_then(|v| v.into_array(1))
            .map_err(|e| SqlError::Invalid(format!("column {name}: {}", SqlError::from(e))))?;
        let i = columns.iter().position(|c| &c.0 == name).unwrap_or(0);
        out[i] = datafusion::arrow::compute::cast_with_options(
            &value,
            &columns[i].1,
            &datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| SqlError::Invalid(format!("column {name}: {e}")))?;
    }
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t, _)| datafusion::arrow::datatypes::Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, out)?)
}

/// Statements never write internal topics (a catalog made by an older version may still
/// name one).
fn refuse_internal(def: &crate::catalog::SourceDef) -> Result<()> {
    if sluice_log::is_internal_topic(&def.topic) {
        return Err(SqlError::Invalid(format!(
            "{} reads the internal topic {}, which statements do not write",
            def.name, def.topic
        )));
    }
    Ok(())
}
