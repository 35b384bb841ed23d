//! Tiered storage (as Kafka's KIP-405): closed segments of topics with
//! `remote.storage.enable=true` are copied to an object store, deleted locally after
//! `local.retention.ms` / `local.retention.bytes`, and read back from the store when a reader
//! asks for an offset no longer on disk.
//!
//! ```text
//!  partition dir                         object store (<url>/<topic>-<topic id>/<partition>/)
//!  ┌──────────────────────────┐  upload   ┌──────────────────────────────────────────┐
//!  │ 000…0000.log  (closed)   │ ────────► │ 000…0000.log  .index  .timeindex         │
//!  │ 000…4096.log  (closed)   │ ────────► │ 000…4096.log  .index  .timeindex         │
//!  │ 000…8192.log  (active)   │           └──────────────────────────────────────────┘
//!  │ remote.json  (manifest)  │ ◄── the uploads that completed: the only list readers use
//!  └──────────────────────────┘
//! ```
//!
//! The order of every step is what makes it safe:
//!
//! - **Upload**: the segment's objects are written under names fixed by its base offset, then
//!   the manifest lists it. A crash before the manifest write uploads it again under the same
//!   names with the same bytes: no hole, no duplicate.
//! - **Local deletion**: only of segments the manifest lists, after the manifest and the
//!   offsets checkpoint say so; with the store down nothing is uploaded, so nothing is deleted.
//! - **Remote deletion** (`retention.ms` / `retention.bytes` over the whole log): the log start
//!   moves and is checkpointed first; then the upload thread deletes the objects of segments
//!   below the checkpointed start, then drops them from the manifest. A crash between leaves
//!   entries below the log start, which are never read and are deleted again.
//!
//! The log's code is synchronous; the object store's is async. [`RemoteTier`] owns a small
//! tokio runtime that runs the store's futures, and its methods block the calling thread
//! (as reading a local file does).
//!
//! # Layout
//!
//! - [`manifest`] (private): the per-partition list of uploaded segments, `remote.json`.
//! - this file: the store's configuration ([`RemoteStorage`]) and the tier ([`RemoteTier`]):
//!   uploads, ranged reads with a small index cache, deletes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{LogError, Result};
use crate::segment::{decode_index, decode_time_index};

pub(crate) mod manifest;

/// The file in the data directory that remembers the remote storage between runs (its url
/// and the options that are not secrets).
pub const REMOTE_STORAGE_FILE: &str = "remote-storage.json";

/// Bytes of a segment read per request when uploading it in parts (S3 wants at least 5 MiB).
const PART_BYTES: usize = 16 << 20;

/// Parts of one upload in flight at once.
const PART_CONCURRENCY: usize = 4;

/// Bytes read from the store per request when serving reads: consumers read sequentially, so
/// one request serves many fetches through the partition's read-ahead chunk.
pub(crate) const READ_CHUNK: u64 = 8 << 20;

/// Bytes of segment indexes kept in memory for remote reads.
const INDEX_CACHE_BYTES: usize = 64 << 20;

/// Where tiered topics keep their old segments: an object store url and its options.
///
/// Secrets (access keys, tokens, passwords) may be given as options for one run, but are
/// never written to the data directory nor shown: give them by environment (`AWS_*`,
/// `GOOGLE_*`, `AZURE_*`, read by the store's builder) to have every run find them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStorage {
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `file:///absolute/path` or `memory://`.
    pub url: String,
    /// The store's settings, object_store's keys (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, …); `-` and `_` are the same.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("url", &self.url)
            .field("options", &self.shown_options())
            .finish()
    }
}

/// Whether an option key names a secret (never saved, never shown): keys, tokens,
/// passwords and the SSE-C key, but not paths to files holding them or a KMS key's id.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let secretish = [
        "secret",
        "token",
        "password",
        "access_key",
        "sas",
        "customer_key",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
        || k.ends_with("_key");
    let reference = k.ends_with("_file")
        || k.ends_with("_path")
        || k.contains("kms_key_id")
        || k == "google_application_credentials";
    secretish && !reference
}

impl RemoteStorage {
    /// A remote storage of `url` with `options`.
    pub fn new(url: impl Into<String>, options: BTreeMap<String, String>) -> RemoteStorage {
        RemoteStorage {
            url: url.into(),
            options: options
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase().replace('-', "_"), v))
                .collect(),
        }
    }

    /// The options with secrets masked, for display.
    pub fn shown_options(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    "****".into()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// What is saved in the data directory: the url and the options that are not secrets.
    fn saved(&self) -> RemoteStorage {
        RemoteStorage {
            url: self.url.clone(),
            options: self
                .options
                .iter()
                .filter(|(k, _)| !is_secret(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The remote storage a data directory was last opened with, if any.
    pub fn load(dir: &Path) -> Result<Option<RemoteStorage>> {
        crate::segment::read_json(&dir.join(REMOTE_STORAGE_FILE))
    }

    /// Saves the url and the options that are not secrets into the data directory.
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.saved()).unwrap_or_default();
        crate::segment::write_file(&dir.join(REMOTE_STORAGE_FILE), &json)
    }

    fn bad(&self, reason: impl std::fmt::Display) -> LogError {
        LogError::RemoteStorage(format!("remote storage '{}': {reason}", self.url))
    }

    /// Builds the store and the path of the url inside it (requests are retried for up to
    /// `retry_timeout`).
    pub fn build(&self, retry_timeout: Duration) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let url = self.url.as_str();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| self.bad("expected scheme://, e.g. s3://bucket/prefix"))?;
        let (_, path) = rest.split_once('/').unwrap_or((rest, ""));
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 10,
            retry_timeout,
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120));
        let unknown = |k: &str, store: &str| {
            self.bad(format!(
                "option '{k}' is not a {store} setting (see the object_store crate's config keys)"
            ))
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .with_client_options(client);
                for (k, v) in &self.options {
                    let key: AmazonS3ConfigKey = k.parse().map_err(|_| unknown(k, "S3"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| self.bad(e))?)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .with_client_options(client);
                for (k, v) in &self.options {
                    let key: GoogleConfigKey = k.parse().map_err(|_| unknown(k, "GCS"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| self.bad(e))?)
            }
            "az" | "adl" | "azure" | "abfs" | "abfss" => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry)
                    .with_client_options(client);
                for (k, v) in &self.options {
                    let key: AzureConfigKey = k.parse().map_err(|_| unknown(k, "Azure"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| self.bad(e))?)
            }
            "file" => {
                if let Some(k) = self.options.keys().next() {
                    return Err(unknown(k, "local folder"));
                }
                if !rest.starts_with('/') {
                    return Err(self.bad("a file url needs an absolute path: file:///path"));
                }
                std::fs::create_dir_all(rest).map_err(|e| {
                    LogError::io("create remote storage folder", Path::new(rest), e)
                })?;
                let store = LocalFileSystem::new_with_prefix(rest).map_err(|e| self.bad(e))?;
                return Ok((Arc::new(store), ObjectPath::default()));
            }
            "memory" => Arc::new(InMemory::new()),
            other => {
                return Err(self.bad(format!(
                    "unknown scheme '{other}'; use s3, gs, az (abfs, abfss, adl, azure), file or memory"
                )));
            }
        };
        let prefix = ObjectPath::parse(path).map_err(|e| self.bad(e))?;
        Ok((store, prefix))
    }
}

/// A segment's two indexes, as read back from the store.
#[derive(Debug)]
pub(crate) struct RemoteIndexes {
    pub index: Vec<(u32, u32)>,
    pub time_index: Vec<(i64, u32)>,
}

/// Recently read segment indexes by object stem, and the stems oldest first.
type IndexCache = (HashMap<String, Arc<RemoteIndexes>>, VecDeque<String>);

/// The object store of tiered topics, with the runtime that drives it.
pub struct RemoteTier {
    storage: RemoteStorage,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Indexes of remote segments recently read, by object path, oldest first.
    indexes: Mutex<IndexCache>,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        // Not a plain drop: dropping a runtime blocks, which panics inside another runtime
        // (the worker's), where the last handle of the log may well be dropped.
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

impl RemoteTier {
    /// Connects the tier (no request is made yet).
    pub fn new(storage: RemoteStorage, retry_timeout: Duration) -> Result<RemoteTier> {
        let (store, prefix) = storage.build(retry_timeout)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-remote")
            .enable_all()
            .build()
            .map_err(|e| LogError::io("start the remote storage runtime", Path::new("."), e))?;
        let handle = runtime.handle().clone();
        Ok(RemoteTier {
            storage,
            store,
            prefix,
            runtime: Mutex::new(Some(runtime)),
            handle,
            indexes: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    /// The storage it was built from.
    pub fn storage(&self) -> &RemoteStorage {
        &self.storage
    }

    /// Runs a store future on the tier's runtime and waits for it on this thread.
    fn run<T: Send + 'static>(
        &self,
        what: impl Fn() -> String,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Result<T> {
        match futures::executor::block_on(self.handle.spawn(fut)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LogError::RemoteStorage(format!(
                "{} ({}): {e}",
                what(),
                self.storage.url
            ))),
            Err(e) => Err(LogError::RemoteStorage(format!(
                "{}: the remote storage runtime stopped ({e})",
                what()
            ))),
        }
    }

    /// The folder of one partition in the store: `<prefix>/<topic>-<topic id>/<partition>`.
    pub(crate) fn partition_path(&self, topic: &str, topic_id: &str, partition: u32) -> String {
        let mut p = self.prefix.as_ref().to_string();
        if !p.is_empty() {
            p.push('/');
        }
        p.push_str(&format!("{topic}-{topic_id}/{partition}"));
        p
    }

    /// Uploads one file whole: in one request when small, in parts read from the file
    /// otherwise (a segment can be a gigabyte; it is never held in memory whole).
    pub(crate) fn upload_file(&self, file: Arc<File>, len: u64, to: &str) -> Result<()> {
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(to);
        let what = || format!("upload {to}");
        if len <= PART_BYTES as u64 {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, 0)
                .map_err(|e| LogError::io("read segment for upload", Path::new(to), e))?;
            return self.run(what, async move {
                store.put(&path, PutPayload::from(buf)).await.map(drop)
            });
        }
        self.run(what, async move {
            let mut writer =
                WriteMultipart::new_with_chunk_size(store.put_multipart(&path).await?, PART_BYTES);
            let mut pos = 0u64;
            let mut sent = Ok(());
            while pos < len {
                if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                    sent = Err(e);
                    break;
                }
                let n = (len - pos).min(PART_BYTES as u64) as usize;
                let f = Arc::clone(&file);
                let at = pos;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await;
                match read {
                    Ok(Ok(buf)) => writer.put(Bytes::from(buf)),
                    Ok(Err(e)) => {
                        sent = Err(object_store::Error::Generic {
                            store: "segment file",
                            source: Box::new(e),
                        });
                        break;
                    }
                    Err(e) => {
                        sent = Err(object_store::Error::Generic {
                            store: "segment file",
                            source: Box::new(e),
                        });
                        break;
                    }
                }
                pos += n as u64;
            }
            match sent {
                Ok(()) => writer.finish().await.map(drop),
                Err(e) => {
                    // Best effort: parts of an abandoned upload cost storage until a
                    // lifecycle rule removes them; the next round uploads the segment anew.
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Puts a small object.
    pub(crate) fn put(&self, to: &str, bytes: Vec<u8>) -> Result<()> {
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(to);
        self.run(|| format!("upload {to}"), async move {
            store.put(&path, PutPayload::from(bytes)).await.map(drop)
        })
    }

    /// Reads bytes `range` of an object.
    pub(crate) fn get_range(&self, from: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(from);
        let what = || format!("read {from} bytes {}..{}", range.start, range.end);
        let r = range.clone();
        self.run(what, async move { store.get_range(&path, r).await })
    }

    /// The indexes of the remote segment whose objects start with `stem` (cached).
    pub(crate) fn indexes(&self, stem: &str) -> Result<Arc<RemoteIndexes>> {
        if let Some(i) = self.indexes.lock().0.get(stem) {
            return Ok(Arc::clone(i));
        }
        let store = Arc::clone(&self.store);
        let (idx, tidx) = (
            ObjectPath::from(format!("{stem}.index")),
            ObjectPath::from(format!("{stem}.timeindex")),
        );
        let (raw, traw) = self.run(|| format!("read the indexes of {stem}"), async move {
            let a = store.get(&idx).await?.bytes().await?;
            let b = store.get(&tidx).await?.bytes().await?;
            Ok((a, b))
        })?;
        let corrupt = |what: &str| LogError::RemoteStorage(format!("{stem}.{what} is torn"));
        let loaded = Arc::new(RemoteIndexes {
            index: decode_index(&raw).ok_or_else(|| corrupt("index"))?,
            time_index: decode_time_index(&traw).ok_or_else(|| corrupt("timeindex"))?,
        });
        let mut cache = self.indexes.lock();
        let (map, order) = &mut *cache;
        if map.insert(stem.to_string(), Arc::clone(&loaded)).is_none() {
            order.push_back(stem.to_string());
        }
        // Oldest first out while over budget, the one just read excepted.
        let bytes = |i: &RemoteIndexes| {
            i.index.len() * size_of::<(u32, u32)>() + i.time_index.len() * size_of::<(i64, u32)>()
        };
        let mut total: usize = map.values().map(|i| bytes(i)).sum();
        while total > INDEX_CACHE_BYTES && order.len() > 1 {
            if let Some(old) = order.pop_front() {
                total -= map.remove(&old).map_or(0, |i| bytes(&i));
            }
        }
        Ok(loaded)
    }

    /// Deletes objects; a missing one is not an error.
    pub(crate) fn delete(&self, paths: Vec<String>) -> Result<()> {
        {
            let mut cache = self.indexes.lock();
            for p in &paths {
                if let Some(stem) = p.strip_suffix(".log") {
                    cache.0.remove(stem);
                }
            }
        }
        let store = Arc::clone(&self.store);
        let n = paths.len();
        self.run(|| format!("delete {n} objects"), async move {
            for p in paths {
                match store.delete(&ObjectPath::from(p)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// Lists the object paths under a partition's folder (for deleting a whole topic).
    pub(crate) fn list(&self, folder: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(folder);
        self.run(|| format!("list {folder}"), async move {
            let metas: Vec<_> = store.list(Some(&path)).try_collect().await?;
            Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_neither_saved_nor_shown() {
        let s = RemoteStorage::new(
            "s3://b/p",
            [
                ("aws-endpoint", "http://127.0.0.1:9000"),
                ("aws_secret_access_key", "hunter2"),
                ("aws_access_key_id", "AKIAEXAMPLE7"),
                ("aws_session_token", "sess-9f8e7d"),
                ("aws_sse_customer_key_base64", "c3NlLWM="),
                ("aws_sse_kms_key_id", "arn:kms:key/1"),
                ("aws_web_identity_token_file", "/run/token"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let saved = serde_json::to_string(&s.saved()).unwrap();
        assert!(saved.contains("aws_endpoint"), "{saved}");
        assert!(
            saved.contains("arn:kms:key/1") && saved.contains("/run/token"),
            "{saved}"
        );
        for secret in ["hunter2", "AKIAEXAMPLE7", "sess-9f8e7d", "c3NlLWM="] {
            assert!(!saved.contains(secret), "{saved}");
            assert!(!format!("{s:?}").contains(secret), "{s:?}");
        }
    }

    #[test]
    fn bad_urls_and_options_are_named() {
        let e = RemoteStorage::new("nowhere", BTreeMap::new())
            .build(Duration::from_secs(1))
            .unwrap_err();
        assert!(e.to_string().contains("scheme://"), "{e}");
        let e = RemoteStorage::new("ftp://x/y", BTreeMap::new())
            .build(Duration::from_secs(1))
            .unwrap_err();
        assert!(e.to_string().contains("unknown scheme 'ftp'"), "{e}");
        let e = RemoteStorage::new(
            "s3://b/p",
            [("aws_colour".to_string(), "blue".to_string())].into(),
        )
        .build(Duration::from_secs(1))
        .unwrap_err();
        assert!(e.to_string().contains("aws_colour"), "{e}");
        let e = RemoteStorage::new("file://relative/path", BTreeMap::new())
            .build(Duration::from_secs(1))
            .unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }
}
