//! The aggregate's plan: group keys, aggregate calls and output schema, compiled once from
//! DataFusion's logical plan and shared by every run of the query.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;

use crate::ast::Emit;
use crate::error::{Result, SqlError};
use crate::operators::acc::{AggKind, AggSpec};
use crate::operators::stateless::Stateless;
use crate::operators::window::{WINDOWEND, WINDOWSTART, Windows};

/// The compiled, stateless description of an aggregate; [`Aggregate`](super::Aggregate) runs it.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    pub(super) pre: Stateless,
    pub(super) group: Vec<Arc<dyn PhysicalExpr>>,
    /// Positions in `group` of the window columns.
    pub(super) window_pos: Option<(usize, usize)>,
    pub(super) key_types: Vec<DataType>,
    /// The GROUP BY expressions as written (window columns excluded), for messages.
    pub(super) key_names: Vec<String>,
    pub(super) args: Vec<Arc<dyn PhysicalExpr>>,
    pub(super) specs: Arc<Vec<AggSpec>>,
    pub(super) agg_schema: SchemaRef,
    pub(super) post: Stateless,
    pub(super) windows: Option<Windows>,
    pub(super) emit: Emit,
    /// Input columns anything reads (`None`: all); the others are not copied when rows are
    /// expanded into their windows.
    pub(super) used_columns: Option<Vec<usize>>,
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
        let mut key_names = Vec::new();
        let mut ws = None;
        let mut we = None;
        for (i, e) in agg.group_expr.iter().enumerate() {
            // One expression named twice (`GROUP BY k, s.k`, or WINDOWSTART, which the
            // WINDOW clause groups on already) would make two key columns of one value;
            // refused with the name, rather than left to fail inside the planner.
            if agg.group_expr[..i].iter().any(|o| unalias(o) == unalias(e)) {
                let name = unalias(e).schema_name().to_string();
                let hint = if windows.is_some()
                    && [WINDOWSTART, WINDOWEND].iter().any(|w| name.ends_with(w))
                {
                    "; the WINDOW clause groups on the window already: leave it out of GROUP BY"
                } else {
                    ""
                };
                return Err(SqlError::Invalid(format!(
                    "GROUP BY names {name} twice{hint}"
                )));
            }
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
                key_names.push(unalias(e).human_display().to_string());
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
        if agg.aggr_expr.is_empty() {
            // `SELECT k FROM s GROUP BY k` would be a DISTINCT, which ksqlDB refuses.
            return Err(SqlError::Invalid(
                "GROUP BY requires aggregate functions in either the SELECT or HAVING clause."
                    .into(),
            ));
        }
        let mut args = Vec::new();
        let mut specs = Vec::new();
        let mut stream_only: Vec<String> = Vec::new();
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
            if f.params.args.iter().any(|a| {
                #[allow(deprecated)]
                let star = matches!(unalias(a), Expr::Wildcard { .. });
                star
            }) {
                return Err(SqlError::Invalid(format!(
                    "{}(*) is not supported: name a column (only COUNT takes *)",
                    name.to_uppercase()
                )));
            }
            let star = f.params.args.is_empty();
            let arg = f
                .params
                .args
                .first()
                .cloned()
                .unwrap_or_else(|| Expr::Literal(ScalarValue::Int64(Some(1)), None));
            // The arguments after the first are constants (TOPK's k, LATEST_BY_OFFSET's n
            // and ignoreNulls).
            let mut extra = Vec::new();
            for a in f.params.args.iter().skip(1).map(unalias) {
                let cast = match a {
                    Expr::Cast(c) => Some((unalias(&c.expr), c.field.data_type())),
                    _ => None,
                };
                match (a, cast) {
                    (Expr::Literal(v, _), _) => extra.push(Some(v.clone())),
                    (_, Some((Expr::Literal(v, _), to))) => extra.push(Some(v.cast_to(to)?)),
                    (other, _) => {
                        return Err(SqlError::Invalid(format!(
                            "the arguments of {} after the first must be constants, got {other}",
                            name.to_uppercase()
                        )));
                    }
                }
            }
            if windows.is_some() {
                let bound = f.params.args.iter().find_map(|a| {
                    a.column_refs()
                        .into_iter()
                        .find(|c| c.name == WINDOWSTART || c.name == WINDOWEND)
                        .map(|c| c.name.clone())
                });
                if let Some(bound) = bound {
                    return Err(SqlError::Invalid(format!(
                        "Window bounds column {bound} can only be used in the SELECT clause of windowed aggregations and can not be passed to aggregate functions."
                    )));
                }
            }
            let kind = AggKind::from_name(&name, f.params.distinct, star, &extra)?;
            if input_is_table && !kind.applies_to_tables() {
                let n = match kind {
                    AggKind::CountDistinct => "COUNT_DISTINCT".to_string(),
                    _ => name.to_uppercase(),
                };
                if !stream_only.contains(&n) {
                    stream_only.push(n);
                }
            }
            let input = arg.to_field(input_schema)?.1.data_type().clone();
            let keeps_values = !matches!(kind, AggKind::Count { .. } | AggKind::Sum | AggKind::Avg);
            if keeps_values && !crate::operators::acc::storable(&input) {
                return Err(SqlError::Invalid(format!(
                    "{} over {} values is not supported (aggregates keep primitive, text and nested values of them, not BYTES inside nested values)",
                    name.to_uppercase(),
                    crate::types::sql_name(&input)
                )));
            }
            let nested = matches!(
                input,
                DataType::Struct(_) | DataType::List(_) | DataType::Map(..)
            );
            let takes_nested = matches!(
                kind,
                AggKind::Latest(_)
                    | AggKind::Earliest(_)
                    | AggKind::CollectList
                    | AggKind::CollectSet
            );
            if nested && !takes_nested {
                return Err(SqlError::Invalid(format!(
                    "{} takes primitive and text values, not {} (as in ksqlDB)",
                    name.to_uppercase(),
                    crate::types::sql_name(&input)
                )));
            }
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
        // The reference marks these "Applies to: stream": a table's rows are replaced and
        // deleted, and ksqlDB refuses them over a table rather than keep every value.
        if !stream_only.is_empty() {
            let listed = match stream_only.as_slice() {
                [one] => one.clone(),
                [init @ .., last] => format!("{} and {last}", init.join(", ")),
                [] => String::new(),
            };
            return Err(SqlError::Invalid(format!(
                "The aggregation function{} {listed} cannot be applied to a table source, only to a stream source.",
                if stream_only.len() == 1 { "" } else { "s" }
            )));
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
                // Both read the scan's output: its columns by their place in the input.
                Some(pre.scanned_columns(cols))
            }
        }
        .map(|c| c.into_iter().collect());
        Ok(AggregatePlan {
            used_columns,
            pre,
            group,
            window_pos,
            key_types,
            key_names,
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

    /// Why a row whose `i`-th grouping expression is NULL is left out.
    pub(super) fn null_key_reason(&self, i: usize) -> String {
        format!(
            "GROUP BY expression {} is NULL: the row is left out of the aggregate (as ksqlDB excludes it)",
            self.key_names.get(i).map_or("?", String::as_str)
        )
    }

    /// How many GROUP BY columns there are (window columns not counted).
    pub fn group_column_count(&self) -> usize {
        self.key_types.len()
    }
}
