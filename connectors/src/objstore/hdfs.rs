//! HDFS as one more store of the object-store sink: `webhdfs://namenode:9870/path` through
//! OpenDAL's WebHDFS service and its `object_store` bridge (`object_store_opendal`).
//!
//! Objects are never written in place. Each upload is written as two blocks under
//! `<path>/.sluice-tmp/` (each a file of its own, with a fresh name), which OpenDAL then
//! concatenates (`CONCAT`) and moves over the object's name (`DELETE`, then `RENAME`). A
//! worker killed mid-upload leaves only blocks nobody writes again, so no lease on an
//! object's name is left to recover, and no reader ever sees half an object; a replay writes
//! the object again and replaces it. (OpenDAL writes a one-part upload in place, so uploads
//! go in two parts, split in the middle; HDFS 2.7 and later concatenate partial blocks.)
//!
//! Blocks of a killed upload stay in `.sluice-tmp` (HDFS recovers their leases after its
//! hard limit, an hour); they are safe to delete when no upload runs.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use object_store_opendal::OpendalStore;
use opendal::Operator;

use crate::{ConnectorError, Result};

/// Where the blocks of uploads in progress go, inside the sink's path.
pub(super) const TMP_DIR: &str = ".sluice-tmp/";

/// Builds the store for `webhdfs://host:port/path` (the path is the root of every object
/// name). `options`: `user-name` (Hadoop's pseudo authentication, `user.name`),
/// `delegation` (a delegation token), `tls` = `true` for a namenode serving HTTPS.
pub(super) fn webhdfs(
    url: &str,
    options: impl Iterator<Item = (String, String)>,
    retry_timeout: std::time::Duration,
    request_timeout: std::time::Duration,
) -> Result<Arc<dyn ObjectStore>> {
    let bad = |why: String| ConnectorError::Config(format!("object store url '{url}': {why}"));
    let rest = url
        .strip_prefix("webhdfs://")
        .ok_or_else(|| bad("expected webhdfs://namenode:port/path".into()))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(
            "names no namenode (webhdfs://namenode:9870/path)".into()
        ));
    }
    let mut scheme = "http";
    let mut builder = opendal::services::Webhdfs::default()
        .root(&format!("/{path}"))
        .atomic_write_dir(TMP_DIR);
    for (key, value) in options {
        builder = match key.as_str() {
            "user_name" => builder.user_name(&value),
            "delegation" => builder.delegation(&value),
            "tls" if value == "true" => {
                scheme = "https";
                builder
            }
            "tls" if value == "false" => builder,
            other => {
                return Err(ConnectorError::Config(format!(
                    "object store sink {url}: options.{other} is not a WebHDFS setting (user-name, delegation, tls)"
                )));
            }
        };
    }
    builder = builder.endpoint(&format!("{scheme}://{host}"));
    // OpenDAL's process-wide HTTP transport (reqwest); installing it again does nothing.
    opendal::install_default();
    // Backoff from 100 ms doubling up to a tenth of `retry-timeout` (at most 10 s): enough
    // attempts to cover `retry-timeout`.
    let max_delay = (retry_timeout / 10).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    let times = usize::try_from(retry_timeout.as_millis() / max_delay.as_millis().max(1) + 5)
        .unwrap_or(usize::MAX);
    let op = Operator::new(builder)
        .map_err(|e| bad(e.to_string()))?
        .layer(opendal::layers::TimeoutLayer::new().with_timeout(request_timeout))
        .layer(
            opendal::layers::RetryLayer::new()
                .with_jitter()
                .with_max_delay(max_delay)
                .with_max_times(times),
        );
    Ok(Arc::new(TwoPartPuts {
        store: OpendalStore::new(op.clone()),
        op,
        folders: Mutex::new(HashSet::new()),
    }))
}

/// An OpenDAL store whose puts go in two parts, so OpenDAL writes them to temporary
/// blocks and renames (see the module's documentation); everything else as OpenDAL does it.
#[derive(Debug)]
struct TwoPartPuts {
    store: OpendalStore,
    op: Operator,
    /// Folders known to exist (made with `MKDIRS`). std's Mutex: no await while held.
    folders: Mutex<HashSet<String>>,
}

impl std::fmt::Display for TwoPartPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebHDFS({})", self.store)
    }
}

/// An OpenDAL error as object_store's, naming the object.
fn generic(
    location: &ObjectPath,
    e: impl std::error::Error + Send + Sync + 'static,
) -> object_store::Error {
    object_store::Error::Generic {
        store: "WebHDFS",
        source: format!("{location}: {e}").into(),
    }
}

impl TwoPartPuts {
    /// HDFS's `RENAME` answers `false` (not an error) when the destination's folder is
    /// missing, and OpenDAL does not look: the folder is made first.
    async fn folder_for(&self, location: &ObjectPath) -> object_store::Result<()> {
        let Some((folder, _)) = location.as_ref().rsplit_once('/') else {
            return Ok(());
        };
        if self
            .folders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(folder)
        {
            return Ok(());
        }
        self.op
            .create_dir(&format!("{folder}/"))
            .await
            .map_err(|e| generic(location, e))?;
        self.folders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(folder.to_string());
        Ok(())
    }

    /// For the same reason, an upload is done only when the object is there, whole.
    async fn check(&self, location: &ObjectPath, size: usize) -> object_store::Result<()> {
        let meta = self
            .op
            .stat(location.as_ref())
            .await
            .map_err(|e| generic(location, e))?;
        if meta.content_length() != size as u64 {
            return Err(generic(
                location,
                std::io::Error::other(format!(
                    "the upload of {size} bytes left {} bytes (the rename over it failed?)",
                    meta.content_length()
                )),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for TwoPartPuts {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let bytes: Bytes = payload.into();
        if bytes.len() < 2 {
            // Nothing to split: written in place (an empty or one-byte object).
            return self.store.put_opts(location, bytes.into(), opts).await;
        }
        self.folder_for(location).await?;
        let mut upload = self
            .store
            .put_multipart_opts(location, PutMultipartOptions::default())
            .await?;
        let half = bytes.len() / 2;
        let first = upload.put_part(bytes.slice(..half).into()).await;
        let second = match first {
            Ok(()) => upload.put_part(bytes.slice(half..).into()).await,
            Err(e) => Err(e),
        };
        match second {
            Ok(()) => {
                let done = upload.complete().await?;
                self.check(location, bytes.len()).await?;
                Ok(done)
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // A multipart upload (objects over `multipart-threshold`) renames too.
        self.folder_for(location).await?;
        self.store.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.store.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.store.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.store.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.store.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.store.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.store.copy_opts(from, to, options).await
    }
}
