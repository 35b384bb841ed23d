//! Checked arithmetic: DataFusion's arithmetic wraps integers on overflow (`BIGINT` max + 1
//! is silently its min) and gives ±infinity or NaN for a `DOUBLE` divided by zero (which
//! JSON then writes as NULL). Sluice's SQL makes both an error instead, which a persistent
//! query turns into a dead letter naming the reason and `INSERT ... VALUES` returns to the
//! client:
//!
//! - every physical `+ - *` is rebuilt with DataFusion's `fail_on_overflow` (integers and
//!   decimals then use arrow's checked kernels; integer `/` and `%` by zero already fail),
//!   and an integer's unary minus becomes a checked `0 - x`;
//! - floating-point `+ - * / %` are wrapped in [`CheckedFloat`], which fails on a result
//!   that is not finite (inputs decoded from records are finite: JSON has no infinity);
//! - constant arithmetic is evaluated, checked, when a query is planned
//!   ([`check_constants`]), because DataFusion's simplifier folds it with wrapping
//!   arithmetic before any physical expression exists.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Float64Type, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{ColumnarValue, Expr, LogicalPlan, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Literal, NegativeExpr};
use datafusion::physical_expr_common::physical_expr::fmt_sql;

use crate::error::{Result, SqlError};

fn arithmetic(op: Operator) -> bool {
    matches!(
        op,
        Operator::Plus | Operator::Minus | Operator::Multiply | Operator::Divide | Operator::Modulo
    )
}

/// A physical expression of `expr` over `schema` with checked arithmetic.
pub fn physical_expr(
    state: &SessionState,
    expr: &Expr,
    schema: &DFSchema,
) -> Result<Arc<dyn PhysicalExpr>> {
    checked(
        state.create_physical_expr(expr.clone(), schema)?,
        schema.as_arrow(),
    )
}

/// Rebuilds the arithmetic of a physical expression over `schema` as checked arithmetic.
pub fn checked(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Arc<dyn PhysicalExpr>> {
    let rebuilt = expr.transform_up(|e| {
        if let Some(n) = e.downcast_ref::<NegativeExpr>() {
            // `-x` wraps (`neg_wrapping`): for signed integers it becomes a checked `0 - x`.
            let t = n.arg().data_type(schema)?;
            if !t.is_signed_integer() {
                return Ok(Transformed::no(e));
            }
            let zero: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::new_zero(&t)?));
            return Ok(Transformed::yes(Arc::new(
                BinaryExpr::new(zero, Operator::Minus, Arc::clone(n.arg()))
                    .with_fail_on_overflow(true),
            )));
        }
        let Some(b) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(e));
        };
        let op = *b.op();
        if !arithmetic(op) {
            return Ok(Transformed::no(e));
        }
        let strict: Arc<dyn PhysicalExpr> = Arc::new(
            BinaryExpr::new(Arc::clone(b.left()), op, Arc::clone(b.right()))
                .with_fail_on_overflow(true),
        );
        let float = matches!(
            strict.data_type(schema)?,
            DataType::Float16 | DataType::Float32 | DataType::Float64
        );
        Ok(Transformed::yes(if float {
            Arc::new(CheckedFloat { inner: strict })
        } else {
            strict
        }))
    })?;
    Ok(rebuilt.data)
}

/// Floating-point arithmetic that fails instead of giving ±infinity or NaN: "Divide by zero
/// error" when the divisor is zero, "Arithmetic overflow" otherwise.
#[derive(Debug, Eq)]
pub struct CheckedFloat {
    /// The arithmetic `BinaryExpr`.
    inner: Arc<dyn PhysicalExpr>,
}

// By hand, as DataFusion's own expressions do (derives on `Arc<dyn PhysicalExpr>` fields
// do not compile: rust-lang/rust#78808).
impl PartialEq for CheckedFloat {
    fn eq(&self, other: &Self) -> bool {
        self.inner.eq(&other.inner)
    }
}

impl Hash for CheckedFloat {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl fmt::Display for CheckedFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// The first row whose value is not finite.
fn first_non_finite(v: &ColumnarValue) -> Option<usize> {
    match v {
        ColumnarValue::Scalar(s) => {
            let x = match s {
                ScalarValue::Float64(Some(x)) => *x,
                ScalarValue::Float32(Some(x)) => f64::from(*x),
                ScalarValue::Float16(Some(x)) => f64::from(*x),
                _ => return None,
            };
            (!x.is_finite()).then_some(0)
        }
        ColumnarValue::Array(a) => {
            let a = match a.data_type() {
                DataType::Float64 => Arc::clone(a),
                _ => datafusion::arrow::compute::cast(a, &DataType::Float64).ok()?,
            };
            let a = a.as_primitive::<Float64Type>();
            (0..a.len()).find(|&i| a.is_valid(i) && !a.value(i).is_finite())
        }
    }
}

/// True when the value at `row` is a zero.
fn is_zero(v: &ColumnarValue, row: usize) -> bool {
    let s = match v {
        ColumnarValue::Scalar(s) => Some(s.clone()),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok(),
    };
    s.and_then(|s| s.cast_to(&DataType::Float64).ok())
        .is_some_and(|s| matches!(s, ScalarValue::Float64(Some(x)) if x == 0.0))
}

impl CheckedFloat {
    fn error(&self, batch: &RecordBatch, row: usize) -> DataFusionError {
        let sql = fmt_sql(self.inner.as_ref()).to_string();
        let op = self.inner.downcast_ref::<BinaryExpr>().map(|b| *b.op());
        // Only on the error path: evaluate the divisor again to tell the two apart.
        let by_zero = matches!(op, Some(Operator::Divide | Operator::Modulo))
            && self
                .inner
                .children()
                .get(1)
                .and_then(|r| r.evaluate(batch).ok())
                .is_some_and(|r| is_zero(&r, row));
        if by_zero {
            DataFusionError::Execution(format!("Divide by zero error in {sql}"))
        } else {
            DataFusionError::Execution(format!(
                "Arithmetic overflow: {sql} is out of the DOUBLE range"
            ))
        }
    }
}

impl PhysicalExpr for CheckedFloat {
    fn data_type(&self, input_schema: &Schema) -> datafusion::error::Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> datafusion::error::Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(
        &self,
        input_schema: &Schema,
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> datafusion::error::Result<ColumnarValue> {
        let out = self.inner.evaluate(batch)?;
        match first_non_finite(&out) {
            None => Ok(out),
            Some(row) => Err(self.error(batch, row)),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.inner.children()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(CheckedFloat {
            inner: Arc::clone(&self.inner).with_new_children(children)?,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// Evaluates the constant arithmetic of an analyzed plan with checked arithmetic, so that
/// `9223372036854775807 + 1` or `1.0 / 0` is refused when the statement is planned rather
/// than folded by DataFusion's simplifier into a wrapped value or an infinity.
pub fn check_constants(state: &SessionState, plan: &LogicalPlan) -> Result<()> {
    let empty = DFSchema::empty();
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let mut failure: Option<SqlError> = None;
    plan.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|sub| {
                let Expr::BinaryExpr(b) = sub else {
                    return Ok(TreeNodeRecursion::Continue);
                };
                if !arithmetic(b.op) || !is_constant(sub) {
                    return Ok(TreeNodeRecursion::Continue);
                }
                let evaluated =
                    physical_expr(state, sub, &empty).and_then(|p| Ok(p.evaluate(&one_row)?));
                if let Err(e) = evaluated {
                    failure = Some(e);
                    return Ok(TreeNodeRecursion::Stop);
                }
                // The whole constant subtree was evaluated.
                Ok(TreeNodeRecursion::Jump)
            })
        })?;
        Ok(if failure.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// True when an expression depends on no row, no aggregate and nothing volatile: what
/// DataFusion's simplifier folds.
fn is_constant(e: &Expr) -> bool {
    !e.is_volatile()
        && !e
            .exists(|x| {
                Ok(matches!(
                    x,
                    Expr::Column(_)
                        | Expr::OuterReferenceColumn(..)
                        | Expr::ScalarVariable(..)
                        | Expr::Placeholder(_)
                        // A lambda's parameter (`x => x * 2`) is a value per element.
                        | Expr::LambdaVariable(_)
                        | Expr::AggregateFunction(_)
                        | Expr::WindowFunction(_)
                        | Expr::ScalarSubquery(_)
                        | Expr::Exists(_)
                        | Expr::InSubquery(_)
                ))
            })
            .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Planner;

    /// Plans `SELECT <expr>` and evaluates it with checked arithmetic, as INSERT does.
    fn eval(expr: &str) -> Result<ScalarValue> {
        let planner = Planner::new(&[])?;
        let crate::ast::Statement::Select(s) = crate::parse_one(&format!("SELECT {expr}"))? else {
            panic!()
        };
        let plan = planner.logical_plan(&s.query)?;
        let LogicalPlan::Projection(p) = &plan else {
            panic!("{plan}")
        };
        let phys = physical_expr(&planner.state(), &p.expr[0], p.input.schema())?;
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let v = phys.evaluate(&one_row)?.into_array(1)?;
        Ok(ScalarValue::try_from_array(&v, 0)?)
    }

    fn err(expr: &str) -> String {
        match eval(expr) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{expr} gave {v:?}, expected an error"),
        }
    }

    #[test]
    fn constant_overflow_and_division_by_zero_are_errors() {
        assert!(err("9223372036854775807 + 1").contains("Arithmetic overflow"));
        assert!(err("-9223372036854775807 - 2").contains("Arithmetic overflow"));
        assert!(err("4611686018427387904 * 2").contains("Arithmetic overflow"));
        assert!(err("1 / 0").contains("Divide by zero"));
        assert!(err("1 % 0").contains("Divide by zero"));
        assert!(
            err("1.0 / 0").contains("Divide by zero"),
            "{}",
            err("1.0 / 0")
        );
        assert!(err("0.0 / 0.0").contains("Divide by zero"));
        assert!(err("1e308 * 10").contains("Arithmetic overflow"));
        // Nested in a function or a CAST: still refused.
        assert!(err("ABS(9223372036854775807 + 1)").contains("Arithmetic overflow"));
        assert_eq!(
            eval("9223372036854775806 + 1").unwrap(),
            ScalarValue::Int64(Some(i64::MAX))
        );
        assert_eq!(eval("7.0 / 2").unwrap(), ScalarValue::Float64(Some(3.5)));
    }

    #[test]
    fn column_arithmetic_is_checked_per_row() {
        use datafusion::arrow::array::{Float64Array, Int32Array, Int64Array};
        use datafusion::arrow::datatypes::Field;
        let schema = Arc::new(Schema::new(vec![
            Field::new("A", DataType::Int64, true),
            Field::new("B", DataType::Int32, true),
            Field::new("X", DataType::Float64, true),
        ]));
        let table = crate::planner::SourceTable {
            name: "T".into(),
            schema: Arc::clone(&schema),
        };
        let planner = Planner::new(&[table]).unwrap();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(i64::MAX), None])),
                Arc::new(Int32Array::from(vec![Some(1), Some(i32::MAX), Some(0)])),
                Arc::new(Float64Array::from(vec![Some(2.0), Some(0.0), None])),
            ],
        )
        .unwrap();
        let run = |expr: &str| -> Result<ColumnarValue> {
            let crate::ast::Statement::Select(s) =
                crate::parse_one(&format!("SELECT {expr} FROM t"))?
            else {
                panic!()
            };
            // Analyzed, not optimized: the scan keeps every column of `batch`.
            let plan = planner.analyzed_plan(&s.query)?;
            let LogicalPlan::Projection(p) = &plan else {
                panic!("{plan}")
            };
            let phys = physical_expr(&planner.state(), &p.expr[0], p.input.schema())?;
            Ok(phys.evaluate(&batch)?)
        };
        let e = run("a + 1").unwrap_err().to_string();
        assert!(e.contains("Arithmetic overflow"), "{e}");
        let e = run("b * b").unwrap_err().to_string();
        assert!(e.contains("Arithmetic overflow"), "{e}");
        let e = run("1.0 / x").unwrap_err().to_string();
        assert!(e.contains("Divide by zero error in 1 / X"), "{e}");
        let e = run("-(a - 9223372036854775807 - 2)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Arithmetic overflow"), "{e}");
        let e = run("a / (b - b)").unwrap_err().to_string();
        assert!(e.contains("Divide by zero"), "{e}");
        // NULLs stay NULL; in-range rows pass.
        assert!(run("a - 1").is_ok());
        assert!(run("x * 2").is_ok());
    }
}
