//! The stateless operator: an optional filter and a projection, both DataFusion physical
//! expressions, applied to each Arrow batch as it arrives.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Result, SqlError};

/// Filter + projection over one source.
#[derive(Debug, Clone)]
pub struct Stateless {
    /// Source columns the plan reads, if it reads a subset (projection pushed into the scan).
    scan_projection: Option<Vec<usize>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// `None` when the output is the (filtered) scan itself.
    projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
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
    /// Builds the operator from an optimized logical plan of the shape
    /// `[Limit] [Projection] [Filter] TableScan`.
    pub fn from_plan(state: &SessionState, plan: &LogicalPlan) -> Result<Stateless> {
        let mut node = plan;
        let mut limit = None;
        if let LogicalPlan::Limit(l) = node {
            limit = match l.get_fetch_type()? {
                datafusion::logical_expr::logical_plan::FetchType::Literal(n) => n,
                _ => return Err(SqlError::Invalid("LIMIT must be a number".into())),
            };
            node = &l.input;
        }
        let schema: SchemaRef = Arc::clone(plan.schema().inner());
        let mut projection = None;
        if let LogicalPlan::Projection(p) = node {
            let input_schema = p.input.schema();
            projection = Some(
                p.expr
                    .iter()
                    .map(|e| state.create_physical_expr(e.clone(), input_schema))
                    .collect::<datafusion::error::Result<Vec<_>>>()?,
            );
            node = &p.input;
        }
        // The optimizer may push the limit below the projection.
        if let LogicalPlan::Limit(l) = node {
            if limit.is_some() {
                return Err(SqlError::Invalid("only one LIMIT is supported".into()));
            }
            limit = match l.get_fetch_type()? {
                datafusion::logical_expr::logical_plan::FetchType::Literal(n) => n,
                _ => return Err(SqlError::Invalid("LIMIT must be a number".into())),
            };
            node = &l.input;
        }
        let mut filter = None;
        if let LogicalPlan::Filter(f) = node {
            filter = Some(state.create_physical_expr(f.predicate.clone(), f.input.schema())?);
            node = &f.input;
        }
        while let LogicalPlan::SubqueryAlias(a) = node {
            node = &a.input;
        }
        let LogicalPlan::TableScan(scan) = node else {
            return Err(match node {
                LogicalPlan::Aggregate(_) => not_stateless("GROUP BY / an aggregate"),
                LogicalPlan::Join(_) => not_stateless("a join"),
                LogicalPlan::Window(_) => not_stateless("a window function"),
                LogicalPlan::Sort(_) => {
                    SqlError::Invalid("ORDER BY is not supported on streams".into())
                }
                other => SqlError::Invalid(format!("unsupported query shape: {}", other.display())),
            });
        };
        if !scan.filters.is_empty() {
            return Err(SqlError::Plan(
                "internal error: a filter was pushed into the scan".into(),
            ));
        }
        Ok(Stateless {
            scan_projection: scan.projection.clone(),
            filter,
            projection,
            schema,
            source: scan.table_name.table().to_string(),
            limit,
        })
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The source it reads.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `LIMIT n`, if any.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Applies the filter and the projection to one batch of the source.
    pub fn process(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let batch = match &self.scan_projection {
            Some(cols) => batch.project(cols)?,
            None => batch.clone(),
        };
        let batch = match &self.filter {
            Some(f) => {
                let mask = f.evaluate(&batch)?.into_array(batch.num_rows())?;
                if mask.data_type() != &DataType::Boolean {
                    return Err(SqlError::Plan(format!(
                        "WHERE must be a boolean, got {}",
                        mask.data_type()
                    )));
                }
                // SQL NULL in a predicate does not pass (arrow's filter treats null as false).
                filter_record_batch(&batch, mask.as_boolean())?
            }
            None => batch,
        };
        match &self.projection {
            None => Ok(RecordBatch::try_new(
                Arc::clone(&self.schema),
                batch.columns().to_vec(),
            )?),
            Some(exprs) => {
                let columns = exprs
                    .iter()
                    .map(|e| {
                        e.evaluate(&batch)
                            .and_then(|v| v.into_array(batch.num_rows()))
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let columns = columns
                    .into_iter()
                    .zip(self.schema.fields())
                    .map(|(c, f)| {
                        if c.data_type() == f.data_type() {
                            Ok(c)
                        } else {
                            datafusion::arrow::compute::cast(&c, f.data_type())
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
            }
        }
    }
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
            Field::new("id", DataType::Utf8, true),
            Field::new("zone", DataType::Utf8, true),
            Field::new("fare", DataType::Float64, true),
            Field::new("seats", DataType::Int32, true),
            Field::new("rowtime", DataType::Int64, false),
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
                name: "rides".into(),
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
        assert_eq!(out.schema().field(1).name(), "z");
        assert_eq!(out.column(1).as_string::<i32>().value(0), "AIRPORT");
        assert_eq!(
            out.column(2)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .value(0),
            60.0
        );
        assert_eq!(out.column(3).as_string::<i32>().value(0), "small");
        assert_eq!(op.source(), "rides");
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
        assert!(e.contains("nope"), "{e}");
        let e = plan("SELECT frobnicate(zone) FROM rides")
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains("frobnicate"), "{e}");
        let e = plan("SELECT * FROM missing").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
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
