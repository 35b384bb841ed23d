//! `sluice objects`: look at what sinks and tiered storage wrote to an object store: list the
//! objects under a url, and query Parquet objects with SQL (DataFusion), e.g. the output of
//! an offload pipeline (`examples/offload/`).
//!
//! A query reads the objects into memory (at most `--max-mb`) as the table `objects`, with a
//! text column for each `key=value` folder of their paths (`dt`, `hour`, ...), so partitions
//! written with `partition-by = "dt={date}/hour={hour}"` can be filtered and grouped on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Subcommand;
use datafusion::arrow::array::{ArrayRef, StringArray, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_log::remote::RemoteStorage;

use super::CliError;

/// `sluice objects ...`.
#[derive(Debug, Subcommand)]
pub enum ObjectsCommand {
    /// List the objects under a url, with their sizes.
    List {
        /// s3://bucket/prefix, gs://, az://, file:///path (or file://relative/path).
        url: String,
        /// A store setting, KEY=VALUE with object_store's keys (aws_endpoint, aws_region,
        /// aws_allow_http, ...; repeatable). Credentials come from the environment.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Run SQL over the Parquet objects under a url, as the table `objects`.
    Query {
        /// s3://bucket/prefix, gs://, az://, file:///path (or file://relative/path).
        url: String,
        /// The query, e.g. "SELECT dt, hour, COUNT(*) FROM objects GROUP BY dt, hour".
        sql: String,
        /// A store setting, KEY=VALUE (repeatable), as for `list`.
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// The most data (in MB of Parquet objects) a query reads into memory.
        #[arg(long, default_value_t = 1024)]
        max_mb: u64,
    },
}

impl ObjectsCommand {
    /// Runs it.
    pub fn run(self) -> Result<(), CliError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| CliError::io("start a runtime", e))?;
        match self {
            ObjectsCommand::List { url, options } => {
                let (store, prefix) = store(&url, &options)?;
                let objects = rt.block_on(list(store.as_ref(), &prefix))?;
                for (path, size) in &objects {
                    println!("{size:>12}  {path}");
                }
                eprintln!("{} object(s).", objects.len());
                Ok(())
            }
            ObjectsCommand::Query {
                url,
                sql,
                options,
                max_mb,
            } => {
                let (store, prefix) = store(&url, &options)?;
                rt.block_on(query(store, &prefix, &sql, max_mb << 20))
            }
        }
    }
}

fn store(url: &str, options: &[String]) -> Result<(Arc<dyn ObjectStore>, ObjectPath), CliError> {
    let options = options
        .iter()
        .map(|p| sluice_log::config::parse_pair(p))
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(|e| CliError::Usage(format!("--option: {e}")))?;
    // A relative file url is relative to the current folder (as in a pipeline file, to it).
    let url = match url.strip_prefix("file://") {
        Some(rest) if !rest.starts_with('/') => {
            let here = std::env::current_dir().map_err(|e| CliError::io("current folder", e))?;
            format!("file://{}", here.join(rest).display())
        }
        _ => url.to_string(),
    };
    RemoteStorage::new(url, options)
        .build(Duration::from_secs(30))
        .map_err(CliError::from)
}

async fn list(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
) -> Result<Vec<(String, u64)>, CliError> {
    let failed = |e: object_store::Error| CliError::Usage(format!("list {prefix}: {e}"));
    let mut metas: Vec<_> = store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(failed)?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas
        .into_iter()
        .map(|m| (m.location.to_string(), m.size))
        .collect())
}

/// The `key=value` folders of an object's path below the prefix.
fn partitions(path: &str, prefix: &str) -> Vec<(String, String)> {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut folders: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    folders.pop();
    folders
        .into_iter()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn query(
    store: Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    sql: &str,
    max_bytes: u64,
) -> Result<(), CliError> {
    let objects: Vec<(String, u64)> = list(store.as_ref(), prefix)
        .await?
        .into_iter()
        .filter(|(p, _)| p.ends_with(".parquet") && !p.contains("/.sluice-tmp/"))
        .collect();
    let total: u64 = objects.iter().map(|o| o.1).sum();
    if total > max_bytes {
        return Err(CliError::Usage(format!(
            "the {} Parquet objects hold {} MB, more than --max-mb {}; query a narrower prefix (e.g. one dt= folder)",
            objects.len(),
            total >> 20,
            max_bytes >> 20
        )));
    }
    let mut batches: Vec<(RecordBatch, Vec<(String, String)>)> = Vec::new();
    for (path, _) in &objects {
        let bytes: Bytes = store
            .get(&ObjectPath::from(path.as_str()))
            .await
            .and_then(|r| futures::executor::block_on(r.bytes()))
            .map_err(|e| CliError::Usage(format!("read {path}: {e}")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| CliError::Usage(format!("{path} is not Parquet: {e}")))?;
        let parts = partitions(path, prefix.as_ref());
        for b in reader {
            let b = b.map_err(|e| CliError::Usage(format!("read {path}: {e}")))?;
            batches.push((b, parts.clone()));
        }
    }
    // One schema over every object: columns of all, then the partition folders as text.
    let mut fields: Vec<Field> = Vec::new();
    for (b, _) in &batches {
        for f in b.schema().fields() {
            if !fields.iter().any(|g| g.name() == f.name()) {
                fields.push(f.as_ref().clone().with_nullable(true));
            }
        }
    }
    let mut keys: Vec<String> = Vec::new();
    for (_, parts) in &batches {
        for (k, _) in parts {
            if !keys.contains(k) && !fields.iter().any(|f| f.name() == k) {
                keys.push(k.clone());
            }
        }
    }
    fields.extend(keys.iter().map(|k| Field::new(k, DataType::Utf8, true)));
    let schema = Arc::new(Schema::new(fields));
    let mut aligned = Vec::with_capacity(batches.len());
    for (b, parts) in batches {
        let n = b.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let column = match (
                b.column_by_name(f.name()),
                parts.iter().find(|p| &p.0 == f.name()),
            ) {
                (Some(c), _) if c.data_type() == f.data_type() => Arc::clone(c),
                (Some(c), _) => cast(c, f.data_type()).map_err(|e| {
                    CliError::Usage(format!("column {} differs between objects: {e}", f.name()))
                })?,
                (None, Some((_, v))) => Arc::new(StringArray::from(vec![v.as_str(); n])),
                (None, None) => new_null_array(f.data_type(), n),
            };
            columns.push(column);
        }
        aligned.push(
            RecordBatch::try_new(Arc::clone(&schema), columns)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        );
    }
    let table = MemTable::try_new(Arc::clone(&schema), vec![aligned])
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let ctx = SessionContext::new();
    ctx.register_table("objects", Arc::new(table))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let out = ctx
        .sql(sql)
        .await
        .and_then(|df| futures::executor::block_on(df.collect()))
        .map_err(|e| CliError::Usage(format!("query: {e}")))?;
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&out)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{text}");
    eprintln!(
        "({} object(s), {:.1} MB read)",
        objects.len(),
        total as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::partitions;

    #[test]
    fn partition_folders_become_columns() {
        assert_eq!(
            partitions(
                "out/rides/0/dt=2026-11-23/hour=08/00000000000000000000.parquet",
                "out"
            ),
            vec![
                ("dt".to_string(), "2026-11-23".to_string()),
                ("hour".to_string(), "08".to_string())
            ]
        );
        assert!(partitions("out/rides/0/0.parquet", "out").is_empty());
    }
}
