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
    let mut secret = None;
    let mut builder = opendal::services::Webhdfs::default()
        .root(&format!("/{path}"))
        .atomic_write_dir(TMP_DIR);
    for (key, value) in options {
        builder = match key.as_str() {
            "user_name" => builder.user_name(&value),
            "delegation" => {
                secret = Some(value.clone());
                builder.delegation(&value)
            }
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
        // Both: `with_timeout` bounds the calls, `with_io_timeout` each read and write of a
        // block (OpenDAL's default, 10 s, is short for a large block on a slow link).
        .layer(
            opendal::layers::TimeoutLayer::new()
                .with_timeout(request_timeout)
                .with_io_timeout(request_timeout),
        )
        .layer(
            opendal::layers::RetryLayer::new()
                .with_jitter()
                .with_max_delay(max_delay)
                .with_max_times(times),
        );
    Ok(Arc::new(TwoPartPuts(Arc::new(Inner {
        store: OpendalStore::new(op.clone()),
        op,
        folders: Mutex::new(HashSet::new()),
        secret,
    }))))
}

/// An OpenDAL store whose uploads go in two parts, so OpenDAL writes them to temporary
/// blocks and renames (see the module's documentation); everything else as OpenDAL does it.
#[derive(Debug)]
struct TwoPartPuts(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: OpendalStore,
    op: Operator,
    /// Folders known to exist (made with `MKDIRS`). std's Mutex: no await while held.
    folders: Mutex<HashSet<String>>,
    /// The delegation token, kept out of errors (OpenDAL's name the request's URL, which
    /// holds it).
    secret: Option<String>,
}

impl std::fmt::Display for TwoPartPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebHDFS({})", self.0.store)
    }
}

impl Inner {
    /// `e` with the delegation token taken out of its text.
    fn scrub(&self, e: object_store::Error) -> object_store::Error {
        match &self.secret {
            Some(secret) if !secret.is_empty() && e.to_string().contains(secret.as_str()) => {
                object_store::Error::Generic {
                    store: "WebHDFS",
                    source: e.to_string().replace(secret.as_str(), "(redacted)").into(),
                }
            }
            _ => e,
        }
    }

    fn error(&self, location: &ObjectPath, e: impl std::fmt::Display) -> object_store::Error {
        self.scrub(object_store::Error::Generic {
            store: "WebHDFS",
            source: format!("{location}: {e}").into(),
        })
    }

    /// HDFS's `RENAME` answers `false` (not an error) when the destination's folder is
    /// missing, and OpenDAL does not look: the folder is made first.
    async fn folder_for(&self, location: &ObjectPath) -> object_store::Result<()> {
        let Some((folder, _)) = location.as_ref().rsplit_once('/') else {
            return Ok(());
        };
        let known = |f: &str| {
            self.folders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(f)
        };
        if known(folder) {
            return Ok(());
        }
        self.op
            .create_dir(&format!("{folder}/"))
            .await
            .map_err(|e| self.error(location, e))?;
        self.folders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(folder.to_string());
        Ok(())
    }

    /// One upload: two parts, then a look at the result (the rename's `false` again).
    async fn put(&self, location: &ObjectPath, bytes: Bytes) -> object_store::Result<PutResult> {
        if bytes.len() < 2 {
            // Nothing to split: written in place (an empty or one-byte object).
            return self
                .store
                .put_opts(location, bytes.into(), PutOptions::default())
                .await
                .map_err(|e| self.scrub(e));
        }
        self.folder_for(location).await?;
        let mut upload = self
            .store
            .put_multipart_opts(location, PutMultipartOptions::default())
            .await
            .map_err(|e| self.scrub(e))?;
        let half = bytes.len() / 2;
        let mut sent = upload.put_part(bytes.slice(..half).into()).await;
        if sent.is_ok() {
            sent = upload.put_part(bytes.slice(half..).into()).await;
        }
        if let Err(e) = sent {
            let _ = upload.abort().await;
            return Err(self.scrub(e));
        }
        let done = upload.complete().await.map_err(|e| self.scrub(e))?;
        let meta = self
            .op
            .stat(location.as_ref())
            .await
            .map_err(|e| self.error(location, e))?;
        if meta.content_length() != bytes.len() as u64 {
            return Err(self.error(
                location,
                format!(
                    "the upload of {} bytes left {} bytes (the rename over it failed?)",
                    bytes.len(),
                    meta.content_length()
                ),
            ));
        }
        Ok(done)
    }
}

/// A multipart upload kept in memory until it completes, then put as one object (in two
/// parts, see [`Inner::put`]): OpenDAL would write an upload of one part in place. The
/// object-store sink holds the whole object in memory anyway; the parts are slices of it.
#[derive(Debug)]
struct Buffered {
    inner: Arc<Inner>,
    location: ObjectPath,
    parts: Vec<PutPayload>,
}

#[async_trait::async_trait]
impl MultipartUpload for Buffered {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        self.parts.push(data);
        Box::pin(async { Ok(()) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let size = self.parts.iter().map(PutPayload::content_length).sum();
        let mut whole = Vec::with_capacity(size);
        for part in self.parts.drain(..) {
            for chunk in part.iter() {
                whole.extend_from_slice(chunk);
            }
        }
        self.inner.put(&self.location, Bytes::from(whole)).await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts.clear();
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for TwoPartPuts {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put(location, payload.into()).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Buffered {
            inner: self.0.clone(),
            location: location.clone(),
            parts: Vec::new(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0
            .store
            .get_opts(location, options)
            .await
            .map_err(|e| self.0.scrub(e))
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0
            .store
            .get_ranges(location, ranges)
            .await
            .map_err(|e| self.0.scrub(e))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.store.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.store.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.0
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| self.0.scrub(e))
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0
            .store
            .copy_opts(from, to, options)
            .await
            .map_err(|e| self.0.scrub(e))
    }
}
