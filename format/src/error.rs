//! The format layer's error type: input that does not fit its format or schema, and failures
//! of the Arrow and Parquet libraries underneath.

use arrow::error::ArrowError;
use parquet::errors::ParquetError;

/// Why a value could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The input does not fit the format or the schema (a user's data error: the record is
    /// a dead letter, retrying does not help). The text is the reason, naming the field
    /// where there is one.
    #[error("{0}")]
    Invalid(String),
    /// A type one side of a schema conversion cannot express (a user's schema error).
    #[error("field {field}: {reason}")]
    Unsupported {
        /// The field's path (`a.b`).
        field: String,
        /// Why, and what to use instead.
        reason: String,
    },
    /// Arrow failed, e.g. a value of the wrong type for its column.
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    /// Writing Parquet failed.
    #[error("{0}")]
    Parquet(#[from] ParquetError),
}

/// A result with a [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
