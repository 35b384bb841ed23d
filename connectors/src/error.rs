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
        matches!(self, ConnectorError::Io { .. })
    }
}

/// Result alias for connectors.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
