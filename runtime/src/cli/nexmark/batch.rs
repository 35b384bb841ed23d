//! The batch side: a query's events decoded with the streams' own decoders, the equivalent
//! DataFusion query on one thread, its rows encoded as JSON, all timed together.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_sql::catalog::Catalog;
use sluice_sql::format::Input;

use super::events::Events;
use super::queries::{Query, fold_outside_quotes};
use super::sql_err;
use crate::cli::CliError;

/// A batch run.
#[derive(Debug)]
pub struct BatchResult {
    /// Decode, query and encode, seconds.
    pub seconds: f64,
    /// The result rows.
    pub batches: Vec<RecordBatch>,
}

/// Runs `query`'s batch SQL over the events of the topics it reads.
pub fn run(catalog: &Catalog, events: &Events, query: &Query) -> Result<BatchResult, CliError> {
    let df_err = |e: datafusion::error::DataFusionError| {
        CliError::Usage(format!("{} batch query: {e}", query.name))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| CliError::io("start a runtime", e))?;
    let t0 = Instant::now();
    // The decoded columns are upper case (ksqlDB's rule); DataFusion's own folding (to
    // lower case) is off and the batch SQL is read in upper case, as Sluice reads it.
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = SessionContext::new_with_config(config);
    for kind in query.reads {
        let def = catalog.get(kind.stream()).map_err(sql_err)?;
        let decoder = def.decoder().map_err(sql_err)?;
        let mut input: Vec<RecordBatch> = Vec::new();
        for chunk in events.of(*kind).chunks(8192) {
            let inputs: Vec<Input<'_>> = chunk
                .iter()
                .map(|e| Input {
                    key: e.key.as_deref(),
                    value: Some(&e.value),
                    timestamp: e.timestamp,
                })
                .collect();
            input.push(decoder.decode(&inputs).map_err(sql_err)?.batch);
        }
        let table = MemTable::try_new(Arc::clone(decoder.schema()), vec![input]).map_err(df_err)?;
        ctx.register_table(
            datafusion::common::TableReference::bare(kind.stream()),
            Arc::new(table),
        )
        .map_err(df_err)?;
    }
    let sql = fold_outside_quotes(query.batch);
    let batches = rt
        .block_on(async { ctx.sql(&sql).await?.collect().await })
        .map_err(df_err)?;
    let mut encoded = 0usize;
    for b in &batches {
        encoded += sluice_sql::format::encode_values(sluice_sql::format::Format::Json, b)
            .map_err(sql_err)?
            .len();
    }
    let seconds = t0.elapsed().as_secs_f64();
    tracing::debug!(query = query.name, rows = encoded, seconds, "batch run");
    Ok(BatchResult { seconds, batches })
}
