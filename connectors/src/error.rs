//! The connectors' error type: what failed, where (path, topic), and whether retrying can help.

use std::path::PathBuf;

/// Everything a connector can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A file operation failed (retryable: the disk may come back, space may be freed).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connector's configuration is wrong (not retryable).
    #[error("{0}")]
    Config(String),
    /// A stored position does not parse (a bug or a foreign write).
    #[error("bad stored position: {0}")]
    Position(String),
    /// A request to an object store failed after its retries (retryable: the store or the
    /// network may recover; check the url, the credentials and the endpoint).
    #[error("object store {url}: {source}")]
    ObjectStore {
        /// The object (or the store) the request was for.
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// Buffered records could not be encoded into an object (a bug: the sink checks each
    /// record when it is written).
    #[error("encoding {object}: {reason}")]
    Encode {
        /// The object being encoded.
        object: String,
        /// Why.
        reason: String,
    },
    /// An HTTP request failed, was answered with an error status, or its answer was unusable
    /// (retryable: the server or the network may recover).
    #[error("{method} {url}: {reason}")]
    Http {
        /// The request's method.
        method: &'static str,
        /// The URL requested (any password in it replaced).
        url: String,
        /// What went wrong: the status, the connection error, the size limit.
        reason: String,
    },
    /// Talking to PostgreSQL failed: the connection, a query or the replication stream
    /// (retryable: the server may come back). Never holds the password.
    #[error("postgres-cdc: {0}")]
    Postgres(String),
}

impl ConnectorError {
    /// An I/O error on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConnectorError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::Io { .. }
                | ConnectorError::Http { .. }
                | ConnectorError::ObjectStore { .. }
                | ConnectorError::Postgres(_)
        )
    }
}

/// Result alias for connectors.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
