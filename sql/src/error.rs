//! The SQL layer's error type: what was wrong and where (line and column of the statement).

/// Everything parsing, planning and running SQL can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text is not valid SQL of our dialect.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// What was expected or found.
        message: String,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// A statement that nests expressions deeper than Sluice evaluates: each level costs
    /// stack in parsing, planning and evaluation, so the depth is bounded
    /// ([`crate::parser::MAX_EXPR_DEPTH`]) rather than left to overflow a thread's stack.
    #[error(
        "expression too deeply nested at line {line}, column {column}: more than {limit} {what}; split it into smaller expressions (a long OR chain of equalities is an IN list)"
    )]
    TooDeep {
        /// What was counted: "nested levels" or "nested operators and parentheses".
        what: &'static str,
        /// The limit passed.
        limit: usize,
        /// 1-based line where the limit was passed.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// A stream, table or query that does not exist.
    #[error("unknown {kind} '{name}'")]
    Unknown {
        /// "stream", "table", "stream or table", "query", "column", "function".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A name already taken.
    #[error("{kind} '{name}' already exists")]
    Exists {
        /// "stream" or "table".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A statement that is valid SQL but not something Sluice can do, or a bad property.
    #[error("{0}")]
    Invalid(String),
    /// Planning or evaluation failed in DataFusion (type mismatch, unknown function, ...).
    #[error("{0}")]
    Plan(String),
    /// From the embedded log.
    #[error(transparent)]
    Log(#[from] sluice_log::LogError),
}

impl SqlError {
    /// A syntax error at a 1-based position.
    pub fn syntax(message: impl Into<String>, line: u64, column: u64) -> Self {
        SqlError::Syntax {
            message: message.into(),
            line,
            column,
        }
    }
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        // DataFusion wraps errors in contexts ("type_coercion caused by ...") and prefixes
        // the kind ("Error during planning: "); the root message names the column, function
        // or type.
        let root = e.find_root().to_string();
        let mut msg = root.as_str();
        for prefix in [
            "Error during planning: ",
            "Schema error: ",
            "Arrow error: ",
            "Execution error: ",
            "This feature is not implemented: ",
        ] {
            msg = msg.strip_prefix(prefix).unwrap_or(msg);
        }
        // One line: DataFusion puts hints ("Valid fields are ...") on lines of their own.
        let one_line: Vec<&str> = msg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut text = one_line.join(" ");
        // DataFusion's advice for a mis-cased name speaks of its own setting, which users
        // cannot change; the rule here is ksqlDB's (unquoted names are upper case).
        if let (Some(start), Some(end)) = (
            text.find(" Column names are case sensitive."),
            text.find("enable_ident_normalization configuration."),
        ) {
            let end = end + "enable_ident_normalization configuration.".len();
            text.replace_range(
                start..end,
                " Unquoted names are upper case; a quoted name must match exactly.",
            );
        }
        SqlError::Plan(text)
    }
}

impl From<datafusion::arrow::error::ArrowError> for SqlError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        SqlError::Plan(e.to_string())
    }
}

/// Result alias for the SQL layer.
pub type Result<T, E = SqlError> = std::result::Result<T, E>;
