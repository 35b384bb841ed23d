//! The statements of Sluice's KSQL-like dialect. Expressions and SELECT bodies are
//! `sqlparser` ASTs; only what KSQL adds (streams, windows, EMIT, PARTITION BY, properties)
//! is ours.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{DataType, Expr, Query};

/// A stream (append-only events) or a table (a changelog: latest value per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// `STREAM`.
    Stream,
    /// `TABLE`.
    Table,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Stream => "stream",
            SourceKind::Table => "table",
        })
    }
}

/// A column declared in `CREATE STREAM|TABLE name (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Name as written (unquoted names are upper-cased, as in ksqlDB).
    pub name: String,
    /// SQL type.
    pub data_type: DataType,
    /// `KEY` (streams) or `PRIMARY KEY` (tables): the column is the record key.
    pub key: bool,
}

/// A `WITH (...)` property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// `'text'`.
    String(String),
    /// `12`.
    Number(String),
    /// A bare word such as `JSON`.
    Word(String),
}

impl PropertyValue {
    /// The value as text, whatever its form.
    pub fn as_str(&self) -> &str {
        match self {
            PropertyValue::String(s) | PropertyValue::Number(s) | PropertyValue::Word(s) => s,
        }
    }
}

/// `WITH (key = value, ...)`, keys lower-cased.
pub type Properties = BTreeMap<String, PropertyValue>;

/// A window of an aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLING (SIZE d)`: fixed, non-overlapping windows.
    Tumbling {
        /// Window size.
        size: Duration,
    },
    /// `HOPPING (SIZE d, ADVANCE BY a)`: fixed windows starting every `advance`.
    Hopping {
        /// Window size.
        size: Duration,
        /// Distance between window starts.
        advance: Duration,
    },
    /// `SESSION (gap)`: per key, records closer than `gap` share a window.
    Session {
        /// Inactivity gap.
        gap: Duration,
    },
}

/// `WINDOW kind (... [, GRACE PERIOD d] [, RETENTION d])`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// The kind and its sizes.
    pub kind: WindowKind,
    /// How long after a window ends late records are still accepted.
    pub grace: Option<Duration>,
    /// How long window state is kept.
    pub retention: Option<Duration>,
}

/// `EMIT CHANGES` (every update) or `EMIT FINAL` (each window once, after its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Every update.
    Changes,
    /// Once per window.
    Final,
}

/// `WITHIN n [GRACE PERIOD g]` or `WITHIN (before, after) [GRACE PERIOD g]` of a
/// stream-stream join: a left record at `t` joins right records in `[t - before, t + after]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWithin {
    /// How far before the left record a right record may be.
    pub before: Duration,
    /// How far after the left record a right record may be.
    pub after: Duration,
    /// How long after the window closes late records are still joined.
    pub grace: Option<Duration>,
}

/// `PARTITION BY ...`: what a stream query's output records are keyed (and so partitioned)
/// by, instead of the source's key.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionBy {
    /// `PARTITION BY NULL`: records without a key.
    Null,
    /// `PARTITION BY e1, e2, ...`: one key column per expression, in this order.
    Exprs(Vec<Expr>),
}

/// A SELECT with the KSQL clauses taken out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// The standard part (projection, FROM, joins, WHERE, GROUP BY, HAVING, LIMIT).
    pub query: Box<Query>,
    /// The `WINDOW` clause.
    pub window: Option<WindowSpec>,
    /// `EMIT CHANGES | FINAL`; a SELECT without it on a table is a pull query.
    pub emit: Option<Emit>,
    /// The `WITHIN` clause of each join of the FROM clause, in order (`None`: none given).
    pub within: Vec<Option<JoinWithin>>,
    /// The `PARTITION BY` clause.
    pub partition_by: Option<PartitionBy>,
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    /// `SHOW STREAMS`.
    Streams,
    /// `SHOW TABLES`.
    Tables,
    /// `SHOW QUERIES`.
    Queries,
    /// `SHOW TOPICS`.
    Topics,
}

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name (cols) WITH (...)`.
    CreateSource {
        /// Stream or table.
        kind: SourceKind,
        /// Name.
        name: String,
        /// Declared columns.
        columns: Vec<ColumnDef>,
        /// `WITH` properties.
        properties: Properties,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// `OR REPLACE`.
        or_replace: bool,
    },
    /// `CREATE [OR REPLACE] STREAM|TABLE name [WITH (...)] AS SELECT ...`: a persistent query.
    CreateAs {
        /// Stream or table.
        kind: SourceKind,
        /// Name of the result.
        name: String,
        /// `WITH` properties of the result.
        properties: Properties,
        /// The query.
        select: Select,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// `OR REPLACE`.
        or_replace: bool,
    },
    /// `INSERT INTO name SELECT ...`: a persistent query into an existing stream.
    InsertSelect {
        /// Target.
        target: String,
        /// The query.
        select: Select,
    },
    /// `INSERT INTO name [(cols)] VALUES (...), (...)`.
    InsertValues {
        /// Target.
        target: String,
        /// Columns named, or all in declared order.
        columns: Vec<String>,
        /// Rows of expressions.
        rows: Vec<Vec<Expr>>,
    },
    /// A push (`EMIT`) or pull query.
    Select(Select),
    /// `SHOW STREAMS | TABLES | QUERIES | TOPICS`.
    Show(ShowWhat),
    /// `DESCRIBE [EXTENDED] name`.
    Describe {
        /// Stream or table.
        name: String,
        /// `EXTENDED`.
        extended: bool,
    },
    /// `DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]`.
    Drop {
        /// Stream or table.
        kind: SourceKind,
        /// Name.
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `DELETE TOPIC`.
        delete_topic: bool,
    },
    /// `TERMINATE query_id` (or `TERMINATE ALL`).
    Terminate {
        /// The query id, `None` for all.
        query_id: Option<String>,
    },
    /// `EXPLAIN statement`.
    Explain(Box<Statement>),
}
