//! The stateless operator: filters and projections, DataFusion physical expressions,
//! applied to each Arrow batch as it arrives.
//!
//! It is built from the stateless top of a plan: any chain of projections and filters (the
//! optimizer may stack projections, e.g. for common subexpressions) and table functions
//! ([`Explode`], one input row to many) with at most one LIMIT, down to a scan or a stateful
//! node.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{and_kleene, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Result, SqlError};
use crate::operators::explode::Explode;

/// One step of the chain.
#[derive(Debug, Clone)]
enum Stage {
    /// Keep rows for which the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute these columns, giving a batch of this schema.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    /// One row per array element (`EXPLODE`).
    Explode(Explode),
}

/// Filters and projections over one input.
#[derive(Debug, Clone)]
pub struct Stateless {
    /// Source columns the plan reads, if it reads a subset (projection pushed into the scan).
    scan_projection: Option<Vec<usize>>,
    /// Applied first to last.
    stages: Vec<Stage>,
    schema: SchemaRef,
    /// The source the query reads.
    source: String,
    /// `LIMIT n`.
    limit: Option<usize>,
}

fn not_stateless(what: &str) -> SqlError {
    SqlError::Invalid(format!("{what} needs a stateful operator"))
}

impl Stateless {
    /// Builds the operator from an optimized logical plan made of projections, filters and a
    /// LIMIT over a `TableScan`.
    pub fn from_plan(state: &SessionState, plan: &LogicalPlan) -> Result<Stateless> {
        let (mut op, node) =
            Self::from_plan_until(state, plan, |n| matches!(n, LogicalPlan::TableScan(_)))?;
        let LogicalPlan::TableScan(scan) = node else {
            return Err(SqlError::Plan("internal error: not a scan".into()));
        };
        if !scan.filters.is_empty() {
            return Err(SqlError::Plan(
                "internal error: a filter was pushed into the scan".into(),
            ));
        }
        op.scan_projection = scan.projection.clone();
        op.source = scan.table_name.table().to_string();
        Ok(op)
    }

    /// Builds the operator from the stateless top of a plan (projections, filters, one
    /// LIMIT) down to the first node for which `bottom` holds (a scan, an aggregate), which
    /// it returns; the operator's input is that node's output.
    pub fn from_plan_until<'p>(
        state: &SessionState,
        plan: &'p LogicalPlan,
        bottom: impl Fn(&LogicalPlan) -> bool,
    ) -> Result<(Stateless, &'p LogicalPlan)> {
        let mut node = plan;
        let mut limit = None;
        let mut stages = Vec::new();
        loop {
            match node {
                LogicalPlan::Limit(l) => {
                    if limit.is_some() {
                        return Err(SqlError::Invalid("only one LIMIT is supported".into()));
                    }
                    limit = match l.get_fetch_type()? {
                        datafusion::logical_expr::logical_plan::FetchType::Literal(n) => n,
                        _ => return Err(SqlError::Invalid("LIMIT must be a number".into())),
                    };
                    if !stages.is_empty() && stages.iter().any(|s| matches!(s, Stage::Filter(_))) {
                        return Err(SqlError::Invalid("LIMIT must come last".into()));
                    }
                    node = &l.input;
                }
                LogicalPlan::Projection(p) => {
                    let input_schema = p.input.schema();
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| crate::checked::physical_expr(state, e, input_schema))
                        .collect::<Result<Vec<_>>>()?;
                    stages.push(Stage::Project(exprs, Arc::clone(p.schema.inner())));
                    node = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    stages.push(Stage::Filter(crate::checked::physical_expr(
                        state,
                        &f.predicate,
                        f.input.schema(),
                    )?));
                    node = &f.input;
                }
                LogicalPlan::SubqueryAlias(a) => node = &a.input,
                LogicalPlan::Unnest(u) => {
                    stages.push(Stage::Explode(Explode::from_plan(u)?));
                    node = &u.input;
                }
                _ => break,
            }
        }
        if !bottom(node) {
            return Err(match node {
                LogicalPlan::Aggregate(_) => not_stateless("GROUP BY / an aggregate"),
                LogicalPlan::Join(_) => SqlError::Invalid(
                    "joins are written FROM a JOIN b ON a.x = b.y (subqueries are not supported)"
                        .into(),
                ),
                LogicalPlan::Window(_) => SqlError::Invalid(
                    "window functions (OVER) are not supported; use WINDOW TUMBLING/HOPPING/SESSION with GROUP BY".into(),
                ),
                LogicalPlan::Sort(_) => {
                    SqlError::Invalid("ORDER BY is not supported on streams".into())
                }
                other => SqlError::Invalid(format!("unsupported query shape: {}", other.display())),
            });
        }
        stages.reverse();
        Ok((
            Stateless {
                scan_projection: None,
                stages,
                schema: Arc::clone(plan.schema().inner()),
                source: String::new(),
                limit,
            },
            node,
        ))
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The source it reads.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True if it filters rows (a WHERE clause), not only projects them.
    pub fn filters(&self) -> bool {
        self.stages.iter().any(|s| matches!(s, Stage::Filter(_)))
    }

    /// `LIMIT n`, if any.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The input columns the operator reads, when known: the columns of its filters up to
    /// and including its first projection. `None` when it passes its input through (no
    /// projection), so whoever reads its output decides.
    pub fn input_columns(&self) -> Option<std::collections::BTreeSet<usize>> {
        let mut cols = std::collections::BTreeSet::new();
        let mut add = |e: &Arc<dyn PhysicalExpr>| {
            cols.extend(
                datafusion::physical_expr::utils::collect_columns(e)
                    .iter()
                    .map(|c| c.index()),
            )
        };
        for stage in &self.stages {
            match stage {
                Stage::Filter(f) => add(f),
                Stage::Explode(_) => {}
                Stage::Project(exprs, _) => {
                    exprs.iter().for_each(&mut add);
                    return Some(self.scanned_columns(cols));
                }
            }
        }
        None
    }

    /// Whether a stage explodes arrays into rows.
    pub fn explodes(&self) -> bool {
        self.stages.iter().any(|s| matches!(s, Stage::Explode(_)))
    }

    /// The input columns the stages may read, when that is a subset known from a
    /// projection ([`Stateless::input_columns`]); `None`: any of them.
    pub fn read_columns(&self) -> Option<std::collections::BTreeSet<usize>> {
        match self.explodes() {
            true => None,
            false => self.input_columns(),
        }
    }

    /// Columns of its scan's output as columns of its input (the same without a projection
    /// pushed into the scan).
    pub fn scanned_columns(
        &self,
        cols: std::collections::BTreeSet<usize>,
    ) -> std::collections::BTreeSet<usize> {
        match &self.scan_projection {
            Some(p) => cols.iter().filter_map(|&c| p.get(c).copied()).collect(),
            None => cols,
        }
    }

    /// Adds the input columns its filters read (for an operator without projection).
    pub fn filter_columns(&self, cols: &mut std::collections::BTreeSet<usize>) {
        for stage in &self.stages {
            if let Stage::Filter(f) = stage {
                cols.extend(
                    datafusion::physical_expr::utils::collect_columns(f)
                        .iter()
                        .map(|c| c.index()),
                );
            }
        }
    }

    /// Applies the filters and projections to one batch of the input.
    pub fn process(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        Ok(self.process_indexed(batch)?.0)
    }

    /// Like [`process`](Stateless::process), also returning which input row each output
    /// row came from when a filter dropped some (`None`: all, in order).
    pub fn process_indexed(&self, batch: &RecordBatch) -> Result<(RecordBatch, Option<Vec<u32>>)> {
        let mut batch = self.scan(batch)?;
        let mut selected: Option<Vec<u32>> = None;
        for stage in &self.stages {
            match stage {
                Stage::Filter(f) => {
                    let mask = mask(f, &batch)?;
                    let keep: Vec<u32> = (0..mask.len() as u32)
                        .filter(|&i| mask.is_valid(i as usize) && mask.value(i as usize))
                        .collect();
                    if keep.len() != batch.num_rows() {
                        batch = take_record_batch(&batch, &UInt32Array::from(keep.clone()))?;
                    }
                    selected = Some(match selected {
                        None => keep,
                        Some(prev) => keep.iter().map(|&i| prev[i as usize]).collect(),
                    });
                }
                Stage::Project(exprs, schema) => batch = project(exprs, schema, &batch)?,
                Stage::Explode(x) => {
                    let (out, parents) = x.process(&batch)?;
                    batch = out;
                    selected = Some(match selected {
                        None => parents,
                        Some(prev) => parents.iter().map(|&i| prev[i as usize]).collect(),
                    });
                }
            }
        }
        Ok((self.finish(batch)?, selected))
    }

    /// Every row projected, and which rows pass the filters (`None`: no filter): what a
    /// table's aggregate needs to delete groups that stop passing HAVING. Fails where a
    /// projection fails on a row the filters would have dropped.
    pub fn process_all(&self, batch: &RecordBatch) -> Result<(RecordBatch, Option<Vec<u32>>)> {
        let mut batch = self.scan(batch)?;
        let mut passing: Option<BooleanArray> = None;
        for stage in &self.stages {
            match stage {
                Stage::Filter(f) => {
                    let m = mask(f, &batch)?;
                    passing = Some(match passing {
                        None => m,
                        Some(p) => and_kleene(&p, &m)?,
                    });
                }
                Stage::Project(exprs, schema) => batch = project(exprs, schema, &batch)?,
                Stage::Explode(_) => {
                    return Err(SqlError::Invalid(
                        "EXPLODE cannot be combined with an aggregate".into(),
                    ));
                }
            }
        }
        let selected = passing.map(|m| {
            (0..m.len() as u32)
                .filter(|&i| m.is_valid(i as usize) && m.value(i as usize))
                .collect()
        });
        Ok((self.finish(batch)?, selected))
    }

    fn scan(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        Ok(match &self.scan_projection {
            Some(cols) => batch.project(cols)?,
            None => batch.clone(),
        })
    }

    /// The batch under the output schema (names and qualifiers as planned).
    fn finish(&self, batch: RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?)
    }
}

/// A filter's result as a boolean mask (SQL NULL is not true).
fn mask(f: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let mask = f.evaluate(batch)?.into_array(batch.num_rows())?;
    if mask.data_type() != &DataType::Boolean {
        return Err(SqlError::Plan(format!(
            "WHERE must be a boolean, got {}",
            mask.data_type()
        )));
    }
    Ok(mask.as_boolean().clone())
}

fn project(
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let columns = exprs
        .iter()
        .map(|e| {
            e.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                datafusion::arrow::compute::cast(&c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::ast::Statement;
    use crate::planner::{Planner, SourceTable};

    fn rides() -> (SourceTable, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Utf8, true),
            Field::new("ZONE", DataType::Utf8, true),
            Field::new("FARE", DataType::Float64, true),
            Field::new("SEATS", DataType::Int32, true),
            Field::new(crate::format::ROWTIME, DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("r1"),
                    Some("r2"),
                    Some("r3"),
                    Some("r4"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("airport"),
                    Some("harbor"),
                    None,
                    Some("airfield"),
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(30.0),
                    Some(8.0),
                    Some(50.0),
                    None,
                ])),
                Arc::new(Int32Array::from(vec![Some(2), Some(1), Some(4), Some(3)])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        (
            SourceTable {
                name: "RIDES".into(),
                schema,
            },
            batch,
        )
    }

    fn plan(sql: &str) -> Result<Stateless> {
        let (source, _) = rides();
        let Statement::Select(select) = crate::parse_one(sql)? else {
            panic!("not a select")
        };
        Planner::new(&[source])?.stateless(&select.query)
    }

    #[test]
    fn filter_and_project_with_functions_and_null_rules() {
        let (_, batch) = rides();
        let op = plan(
            "SELECT id, UPPER(zone) AS z, fare * 2 AS double_fare, CASE WHEN seats > 2 THEN 'big' ELSE 'small' END AS size \
             FROM rides WHERE fare > 10 AND zone LIKE 'air%' EMIT CHANGES",
        )
        .unwrap();
        let out = op.process(&batch).unwrap();
        // r2 fails fare > 10, r3 has a NULL zone (NULL LIKE is not true), r4 a NULL fare.
        assert_eq!(out.num_rows(), 1);
        assert_eq!(out.schema().field(1).name(), "Z");
        assert_eq!(out.column(1).as_string::<i32>().value(0), "AIRPORT");
        assert_eq!(
            out.column(2)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0),
            60.0
        );
        assert_eq!(out.column(3).as_string::<i32>().value(0), "small");
        assert_eq!(op.source(), "RIDES");
    }

    #[test]
    fn select_star_is_in_null_and_cast() {
        let (_, batch) = rides();
        let out = plan("SELECT * FROM rides WHERE zone IN ('harbor', 'airfield') OR fare IS NULL")
            .unwrap()
            .process(&batch)
            .unwrap();
        assert_eq!(out.num_rows(), 2);
        let out =
            plan("SELECT CAST(seats AS VARCHAR) AS s, COALESCE(fare, 0) AS f FROM rides LIMIT 3")
                .unwrap();
        assert_eq!(out.limit(), Some(3));
        let b = out.process(&batch).unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(3), "3");
    }

    #[test]
    fn errors_name_columns_functions_and_types() {
        let e = plan("SELECT nope FROM rides").unwrap_err().to_string();
        assert!(e.contains("NOPE"), "{e}");
        let e = plan("SELECT frobnicate(zone) FROM rides")
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains("frobnicate"), "{e}");
        let e = plan("SELECT * FROM missing").unwrap_err().to_string();
        assert!(e.contains("MISSING"), "{e}");
        let e = plan("SELECT zone, COUNT(*) FROM rides GROUP BY zone")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stateful"), "{e}");
        let e = plan("SELECT * FROM rides WHERE zone + 1 > 2")
            .unwrap_err()
            .to_string();
        assert!(!e.is_empty());
    }
}
