//! The object store client: built from the sink's url and options, and the upload of one
//! object (one request, or a multipart upload above the threshold).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::config::ObjectStoreSinkConfig;
use crate::{ConnectorError, Result};

/// The smallest part S3 accepts (all but the last).
pub(super) const MIN_PART_BYTES: u64 = 5 << 20;

/// Parts of one multipart upload in flight at once.
const PART_CONCURRENCY: usize = 4;

/// How long one WebHDFS request may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Retries of one request: high, so that `retry-timeout` is the bound that applies.
const MAX_RETRIES: usize = 1000;

/// Puts one object: in one request up to `threshold` bytes, in parts above it.
pub(super) async fn upload(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    bytes: Vec<u8>,
    threshold: u64,
    part_bytes: usize,
) -> object_store::Result<()> {
    if bytes.len() as u64 <= threshold {
        store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(path).await?, part_bytes);
    let mut rest = Bytes::from(bytes);
    let mut sent: object_store::Result<()> = Ok(());
    while !rest.is_empty() {
        // Bounded parts in flight: the whole object is in memory already, the network is not
        // infinitely wide.
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            sent = Err(e);
            break;
        }
        let part = rest.split_to(part_bytes.min(rest.len()));
        writer.put(part);
    }
    match sent {
        Ok(()) => writer.finish().await.map(drop),
        Err(e) => {
            // Best effort: an abandoned upload's parts cost storage until a lifecycle rule.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// The store the url names and the path inside it.
pub(super) fn build_store(
    config: &ObjectStoreSinkConfig,
    base: &Path,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let url = config.url.as_str();
    let bad =
        |reason: String| ConnectorError::Config(format!("object store url '{url}': {reason}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://, e.g. s3://bucket/prefix".into()))?;
    let (_, path) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = || ObjectPath::parse(path).map_err(|e| bad(e.to_string()));
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: MAX_RETRIES,
        retry_timeout: config.retry_timeout.0,
    };
    // object_store names its options with '_'; pipeline files may use '-' like their keys.
    let options = config
        .options
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase().replace('-', "_"), v.clone()));
    let unknown = |k: &str, store: &str| {
        ConnectorError::Config(format!(
            "object store sink {url}: options.{k} is not a {store} setting (see the object_store crate's config keys)"
        ))
    };
    let built = |e: object_store::Error| bad(e.to_string());
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
            for (k, v) in options {
                let key: AmazonS3ConfigKey = k.parse().map_err(|_| unknown(&k, "S3"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (k, v) in options {
                let key: GoogleConfigKey = k.parse().map_err(|_| unknown(&k, "GCS"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(retry);
            for (k, v) in options {
                let key: AzureConfigKey = k.parse().map_err(|_| unknown(&k, "Azure"))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(built)?)
        }
        "file" => {
            if let Some((k, _)) = options.into_iter().next() {
                return Err(unknown(&k, "local folder"));
            }
            let dir = base.join(rest);
            std::fs::create_dir_all(&dir).map_err(|e| ConnectorError::io("create", &dir, e))?;
            let store = LocalFileSystem::new_with_prefix(&dir).map_err(built)?;
            return Ok((Arc::new(store), ObjectPath::default()));
        }
        "memory" => {
            if let Some((k, _)) = options.into_iter().next() {
                return Err(unknown(&k, "memory store"));
            }
            Arc::new(InMemory::new())
        }
        "webhdfs" => {
            // The url's path is the store's root, so object names start at it.
            let store =
                super::hdfs::webhdfs(url, options, config.retry_timeout.0, REQUEST_TIMEOUT)?;
            return Ok((store, ObjectPath::default()));
        }
        "hdfs" => {
            return Err(bad(
                "hdfs:// (HDFS's native RPC) is not supported; use the namenode's WebHDFS: webhdfs://namenode:9870/path".into(),
            ));
        }
        other => {
            return Err(bad(format!(
                "unknown scheme '{other}'; use s3, gs, az (abfs, abfss, adl, azure), webhdfs, file or memory"
            )));
        }
    };
    Ok((store, prefix()?))
}
