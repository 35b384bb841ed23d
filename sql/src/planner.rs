//! Planning: a SELECT over declared sources becomes a DataFusion logical plan (name
//! resolution, type checking and coercion, optimization), which is then cut into streaming
//! operators.
//!
//! DataFusion plans against empty tables that have the sources' schemas; it never runs the
//! plan. What it gives us is a checked, optimized tree whose stateless parts (filters,
//! projections) become physical expressions evaluated batch by batch.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::empty::EmptyTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Query, Statement as SqlStatement};

use crate::error::{Result, SqlError};
use crate::operators::stateless::Stateless;

/// A stream or table a query can read: its name and Arrow schema (declared columns plus
/// `rowtime`).
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Name, as queries write it (upper case unless quoted).
    pub name: String,
    /// Arrow schema of its decoded batches.
    pub schema: SchemaRef,
}

/// A planning context: the sources a query may name.
pub struct Planner {
    ctx: SessionContext,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("session", &self.ctx.session_id())
            .finish()
    }
}

impl Planner {
    /// A planner that knows `sources`.
    pub fn new(sources: &[SourceTable]) -> Result<Planner> {
        // Plain Utf8 for VARCHAR: decoded batches and the formats use it, and a query's
        // output types must match what its sink encodes.
        // Identifiers arrive folded by our parser (upper case unless quoted, as in ksqlDB);
        // DataFusion's own folding (to lower case) is off so it takes them as they are.
        let config = datafusion::prelude::SessionConfig::new()
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(config);
        for f in crate::functions::streaming_aggregates() {
            ctx.register_udaf(f);
        }
        // DataFusion's functions under ksqlDB's names, then ksqlDB's own (replacing
        // DataFusion's of the same name where the semantics differ).
        for f in crate::functions::scalar::aliases() {
            ctx.register_udf(f);
        }
        for f in crate::functions::scalar::scalar_functions() {
            ctx.register_udf(f);
        }
        for f in crate::functions::scalar::higher_order_functions() {
            ctx.register_higher_order_function(Arc::new(f));
        }
        for s in sources {
            // A bare reference: parsing the name as text would fold it to lower case.
            ctx.register_table(
                datafusion::common::TableReference::bare(s.name.as_str()),
                Arc::new(EmptyTable::new(Arc::clone(&s.schema))),
            )?;
        }
        Ok(Planner { ctx })
    }

    /// The analyzed and optimized logical plan of a query.
    pub fn logical_plan(&self, query: &Query) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(
            SqlStatement::Query(Box::new(query.clone())),
        ));
        // Planning only resolves tables registered in memory: nothing here awaits IO, so a
        // local executor is enough and the planner stays usable outside a tokio runtime.
        let plan = futures::executor::block_on(state.statement_to_plan(statement))?;
        // Before the optimizer folds constants with wrapping arithmetic.
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
        crate::checked::check_constants(&state, &analyzed)?;
        Ok(state.optimize(&plan)?)
    }

    /// The analyzed (type-checked, coerced) but not optimized logical plan: its shape is
    /// the query's, which the stateful operators are cut from.
    pub fn analyzed_plan(&self, query: &Query) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(
            SqlStatement::Query(Box::new(query.clone())),
        ));
        let plan = futures::executor::block_on(state.statement_to_plan(statement))?;
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan, state.config_options(), |_, _| {})?;
        crate::checked::check_constants(&state, &analyzed)?;
        Ok(analyzed)
    }

    /// The session state (for building physical expressions).
    pub fn state(&self) -> datafusion::execution::SessionState {
        self.ctx.state()
    }

    /// Plans a query without state (filters and projections over one source).
    pub fn stateless(&self, query: &Query) -> Result<Stateless> {
        let plan = self.logical_plan(query)?;
        Stateless::from_plan(&self.ctx.state(), &plan).map_err(|e| match e {
            SqlError::Invalid(m) => SqlError::Invalid(format!("{m} (in: {query})")),
            other => other,
        })
    }
}
