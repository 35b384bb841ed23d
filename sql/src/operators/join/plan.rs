//! Compiling a FROM clause with joins: the sources and their aliases, the joined row's schema,
//! each join's kind, shape and key expressions, and the SELECT rewritten to read joined rows.
//!
//! The joined row (`J`) has one column per column of every source, named
//! `<ALIAS>_<COLUMN>` as ksqlDB names them in `SELECT *`, and each source's record time
//! (`<ALIAS>_ROWTIME`, what `a.ROWTIME` reads), after `ROWKEY` (the join result's key) and
//! before `ROWTIME` (the joined row's time). Column references in the SELECT (`o.id`, or `id` when only one
//! source has it) become references to J's columns, and the query's rest (WHERE, GROUP BY,
//! windows, projections) is compiled over J as over any source.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Ident, JoinConstraint, JoinOperator, ObjectName, SelectItem,
    SetExpr, TableFactor, TableWithJoins,
};

use crate::ast::{Select, SourceKind};
use crate::catalog::{Catalog, SourceDef};
use crate::error::{Result, SqlError};
use crate::format::{Format, KeyFormat, ROWTIME};
use crate::operators::stateless::Stateless;
use crate::planner::{Planner, SourceTable};
use crate::query::{SourceReader, ident_name, object_name};

/// The synthetic key column of a join result (ksqlDB's name for it).
pub const ROWKEY: &str = "ROWKEY";

/// Joins one query may chain (each has its own state stores).
pub const MAX_JOINS: usize = 16;

/// Which rows of a join without a match are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only matches.
    Inner,
    /// Every left row.
    Left,
    /// Every right row.
    Right,
    /// Every row of both.
    Full,
}

impl JoinKind {
    /// Unmatched left rows are kept.
    pub fn keeps_left(self) -> bool {
        matches!(self, JoinKind::Left | JoinKind::Full)
    }

    /// Unmatched right rows are kept.
    pub fn keeps_right(self) -> bool {
        matches!(self, JoinKind::Right | JoinKind::Full)
    }

    /// Unmatched rows of the left (or right) side are kept.
    pub fn keeps(self, left: bool) -> bool {
        match left {
            true => self.keeps_left(),
            false => self.keeps_right(),
        }
    }

    fn sql(self) -> &'static str {
        match self {
            JoinKind::Inner => "INNER",
            JoinKind::Left => "LEFT",
            JoinKind::Right => "RIGHT",
            JoinKind::Full => "FULL OUTER",
        }
    }
}

/// What a join joins, which decides its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Each stream record looks up the table's row as of its time.
    StreamTable,
    /// Records of two streams within a time window of each other (ms).
    StreamStream {
        /// A right record may be this much earlier than the left one.
        before: i64,
        /// A right record may be this much later than the left one.
        after: i64,
        /// Late records are joined this long after the window closed.
        grace: i64,
    },
    /// Two tables on their primary keys.
    TableTable,
    /// A column of the left table against the right table's primary key; the result is
    /// keyed by the left table's key.
    ForeignKey,
}

/// One source of a join.
#[derive(Debug, Clone)]
pub struct JoinSource {
    /// Its definition.
    pub def: SourceDef,
    /// The name queries qualify its columns with (upper case unless quoted).
    pub alias: String,
    /// Index in J of its first column.
    pub first: usize,
    /// Its columns and then its ROWTIME (`<ALIAS>_ROWTIME`), in J from `first` on.
    pub columns: usize,
}

/// One join of the chain: the rows so far (left) with the next source (right).
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// INNER, LEFT, ...
    pub kind: JoinKind,
    /// Its operator.
    pub shape: Shape,
    /// The left side's join key, evaluated over J rows (one column).
    pub left_key: Stateless,
    /// The right side's join key, evaluated over J rows holding right rows (one column).
    pub right_key: Stateless,
    /// The type both keys are compared in.
    pub key_type: DataType,
    /// The left side's primary key type, for a table-valued left side keyed by its own key
    /// (a foreign-key join's result key).
    pub left_key_type: DataType,
    /// The left side is a table.
    pub left_table: bool,
    /// The condition as written, for EXPLAIN and errors.
    pub text: String,
}

/// A FROM clause with joins, compiled.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// The sources, left to right.
    pub sources: Vec<JoinSource>,
    /// The joins: step `k` joins the result of the steps before (or source 0) with source
    /// `k + 1`.
    pub steps: Vec<StepPlan>,
    /// The joined rows as a source the rest of the query reads: key column ROWKEY.
    pub def: SourceDef,
    /// The same rows between two joins of a chain: ROWKEY is not read from the record key
    /// there (each join's key has its own type), so it is a value column left NULL.
    pub inner_def: SourceDef,
    /// J columns whose value is the result key (the join columns that are never NULL in the
    /// result); selecting one of them selects the key.
    pub key_aliases: Vec<String>,
    /// How errors name J: its columns (`O_ID`) as the user writes them (`O.ID`).
    pub names: UserNames,
}

/// The joined row's internal names and what the user wrote for them, to put messages
/// (DataFusion's planning errors, missing keys) in the user's terms.
#[derive(Debug, Clone, Default)]
pub struct UserNames {
    /// The synthetic source's name (`O JOIN C`).
    source: String,
    /// J column names and their `ALIAS.COLUMN` forms, longest J name first.
    columns: Vec<(String, String)>,
}

impl UserNames {
    fn new(source: &str, named: &[Named]) -> UserNames {
        let mut columns: Vec<(String, String)> = named
            .iter()
            .flat_map(|n| {
                n.fields
                    .iter()
                    .map(|f| f.0.as_str())
                    .chain(std::iter::once(ROWTIME))
                    .map(|c| (Scope::j_name(&n.alias, c), format!("{}.{c}", n.alias)))
            })
            .chain([ROWKEY, ROWTIME].map(|c| (c.to_string(), c.to_string())))
            .collect();
        columns.sort_by_key(|c| std::cmp::Reverse(c.0.len()));
        UserNames {
            source: source.to_string(),
            columns,
        }
    }

    /// `message` with `"O JOIN C"."O_ID"`, `"O_ID"` and a bare `O_ID` written `O.ID`.
    pub fn text(&self, message: &str) -> String {
        let qualifier = format!("\"{}\".", self.source.replace('"', "\"\""));
        let plain = format!("{}.", self.source);
        let m = message.replace(&qualifier, "").replace(&plain, "");
        let word = |c: char| c.is_alphanumeric() || c == '_';
        let mut out = String::with_capacity(m.len());
        let mut rest = m.as_str();
        let mut prev: Option<char> = None;
        'scan: while let Some(c) = rest.chars().next() {
            if !prev.is_some_and(word) {
                for (j, user) in &self.columns {
                    let quoted = format!("\"{j}\"");
                    let bare = rest
                        .strip_prefix(j.as_str())
                        .filter(|after| !after.chars().next().is_some_and(word));
                    let len = if rest.starts_with(&quoted) {
                        quoted.len()
                    } else if bare.is_some() {
                        j.len()
                    } else {
                        continue;
                    };
                    out.push_str(user);
                    rest = &rest[len..];
                    prev = user.chars().last();
                    continue 'scan;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            prev = Some(c);
        }
        out
    }

    /// `e` with its message in the user's terms.
    pub fn error(&self, e: SqlError) -> SqlError {
        match e {
            SqlError::Invalid(m) => SqlError::Invalid(self.text(&m)),
            SqlError::Plan(m) => SqlError::Plan(self.text(&m)),
            other => other,
        }
    }
}

impl JoinPlan {
    /// The topics read, one per source (a topic read twice appears twice).
    pub fn topics(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.def.topic.clone()).collect()
    }

    /// What runs, for EXPLAIN.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sources.iter().enumerate() {
            out.push_str(&format!(
                "Source {i}: {} {} AS {} (topic {}, {})\n",
                s.def.kind, s.def.name, s.alias, s.def.topic, s.def.format
            ));
        }
        for (k, step) in self.steps.iter().enumerate() {
            let what = match step.shape {
                Shape::StreamTable => "stream-table lookup".to_string(),
                Shape::StreamStream {
                    before,
                    after,
                    grace,
                } => format!(
                    "stream-stream within {before} ms before and {after} ms after, grace {grace} ms"
                ),
                Shape::TableTable => "table-table on primary keys".to_string(),
                Shape::ForeignKey => "table-table on a foreign key".to_string(),
            };
            out.push_str(&format!(
                "Join {k}: {} JOIN {} ON {} ({what}, key type {})\n",
                step.kind.sql(),
                self.sources[k + 1].alias,
                step.text,
                crate::types::sql_name(&step.key_type)
            ));
        }
        out
    }
}

/// A source named in FROM, before the joined row exists.
struct Named {
    def: SourceDef,
    alias: String,
    /// Columns (without ROWTIME) and their types, as its reader decodes them.
    fields: Vec<(String, DataType)>,
}

/// The column names of the sources in scope, for resolving references.
struct Scope<'a> {
    named: &'a [Named],
    /// How many sources (from the left) a reference may name.
    upto: usize,
}

impl Scope<'_> {
    fn j_name(alias: &str, column: &str) -> String {
        format!("{alias}_{column}")
    }

    /// The J column a reference names, if it names a source column.
    fn resolve(&self, e: &SqlExpr) -> Result<Option<(String, String)>> {
        match e {
            SqlExpr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let alias = ident_name(&parts[0]);
                let column = ident_name(&parts[1]);
                let Some(s) = self.named[..self.upto].iter().find(|s| s.alias == alias) else {
                    if self.named.iter().any(|s| s.alias == alias) {
                        return Err(SqlError::Invalid(format!(
                            "{alias}.{column}: {alias} is joined later in the FROM clause; a join condition may name only the sources joined so far"
                        )));
                    }
                    return Err(SqlError::Invalid(format!(
                        "{alias}.{column}: no source named {alias} in the FROM clause (sources: {})",
                        self.named
                            .iter()
                            .map(|s| s.alias.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                if column == ROWTIME {
                    // The source's own record time (the joined row's is ROWTIME).
                    return Ok(Some((Self::j_name(&s.alias, ROWTIME), column)));
                }
                if !s.fields.iter().any(|f| f.0 == column) {
                    return Err(SqlError::Invalid(format!(
                        "{alias}.{column}: {} has no column {column}",
                        s.def.name
                    )));
                }
                Ok(Some((Self::j_name(&s.alias, &column), column)))
            }
            SqlExpr::Identifier(i) => {
                let column = ident_name(i);
                if [ROWTIME, ROWKEY, "WINDOWSTART", "WINDOWEND"].contains(&column.as_str()) {
                    return Ok(None);
                }
                let having: Vec<&Named> = self.named[..self.upto]
                    .iter()
                    .filter(|s| s.fields.iter().any(|f| f.0 == column))
                    .collect();
                match having.as_slice() {
                    [] => Ok(None),
                    [s] => Ok(Some((Self::j_name(&s.alias, &column), column))),
                    many => Err(SqlError::Invalid(format!(
                        "column {column} is ambiguous: {} all have it; qualify it, e.g. {}.{column}",
                        many.iter()
                            .map(|s| s.alias.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        many[0].alias
                    ))),
                }
            }
            _ => Ok(None),
        }
    }

    /// `e` with its source column references replaced by J column references (a lambda's
    /// parameters are not columns, even where a source has a column of that name).
    fn rewrite(&self, e: &mut SqlExpr) -> Result<()> {
        use datafusion::sql::sqlparser::ast::{visit_expressions, visit_expressions_mut};
        self.field_roots(e);
        let mut params = std::collections::HashSet::new();
        let _ = visit_expressions(e, |e| {
            if let SqlExpr::Lambda(l) = e {
                params.extend(l.params.iter().map(|p| ident_name(&p.name)));
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        let flow = visit_expressions_mut(e, |e| {
            if let SqlExpr::Identifier(i) = e {
                if params.contains(&ident_name(i)) {
                    return std::ops::ControlFlow::Continue(());
                }
            }
            match self.resolve(e) {
                Ok(Some((j, _))) => *e = SqlExpr::Identifier(Ident::with_quote('"', j)),
                Ok(None) => {}
                Err(err) => return std::ops::ControlFlow::Break(err),
            }
            std::ops::ControlFlow::Continue(())
        });
        match flow {
            std::ops::ControlFlow::Break(e) => Err(e),
            std::ops::ControlFlow::Continue(()) => Ok(()),
        }
    }
}

impl Scope<'_> {
    /// `a.col['f']` (ksqlDB's `a.col->f`, or `a.col[1]`) parses as the field access chain
    /// `.col['f']` on `a`: made `a.col` then `['f']`, so that `a.col` resolves as a column.
    fn field_roots(&self, e: &mut SqlExpr) {
        use datafusion::sql::sqlparser::ast::{AccessExpr, visit_expressions_mut};
        let _ = visit_expressions_mut(e, |e| {
            if let SqlExpr::CompoundFieldAccess { root, access_chain } = e {
                let source = match root.as_ref() {
                    SqlExpr::Identifier(a) => self.named[..self.upto]
                        .iter()
                        .any(|n| n.alias == ident_name(a))
                        .then(|| a.clone()),
                    _ => None,
                };
                if let (Some(a), Some(AccessExpr::Dot(SqlExpr::Identifier(c)))) =
                    (source, access_chain.first())
                {
                    let column = SqlExpr::CompoundIdentifier(vec![a, c.clone()]);
                    access_chain.remove(0);
                    if access_chain.is_empty() {
                        *e = column;
                    } else {
                        **root = column;
                    }
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
}

/// The sources a rewritten expression reads (indices into `named`), from its J column names.
fn sources_of(e: &SqlExpr, named: &[Named]) -> Vec<usize> {
    use datafusion::sql::sqlparser::ast::visit_expressions;
    let mut found = Vec::new();
    let _ = visit_expressions(e, |e| {
        if let SqlExpr::Identifier(i) = e {
            for (k, s) in named.iter().enumerate() {
                if s.fields
                    .iter()
                    .any(|f| Scope::j_name(&s.alias, &f.0) == i.value)
                    && !found.contains(&k)
                {
                    found.push(k);
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

fn relation_name(t: &TableFactor) -> Result<(String, Option<String>)> {
    match t {
        TableFactor::Table { name, alias, .. } => Ok((
            object_name(name),
            alias.as_ref().map(|a| ident_name(&a.name)),
        )),
        _ => Err(SqlError::Invalid(
            "FROM and JOIN must name a stream or table (subqueries are not supported)".into(),
        )),
    }
}

/// The equality `a = b` of an ON clause (parentheses allowed around it).
fn equality(e: &SqlExpr) -> Option<(&SqlExpr, &SqlExpr)> {
    match e {
        SqlExpr::Nested(inner) => equality(inner),
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => Some((left, right)),
        _ => None,
    }
}

/// Compiles the joins of `select`'s FROM clause; `None` when it reads one source. Returns
/// the plan and the SELECT rewritten to read J (FROM the plan's `def`).
pub fn plan(catalog: &Catalog, select: &Select) -> Result<Option<(JoinPlan, Select)>> {
    let SetExpr::Select(body) = select.query.body.as_ref() else {
        return Ok(None);
    };
    if body.from.len() > 1 {
        return Err(SqlError::Invalid(
            "FROM a, b is not supported: join with FROM a JOIN b ON a.x = b.y".into(),
        ));
    }
    let Some(from) = body.from.first() else {
        return Ok(None);
    };
    if from.joins.is_empty() {
        return Ok(None);
    }
    if from.joins.len() > MAX_JOINS {
        return Err(SqlError::Invalid(format!(
            "a query joins at most {} sources ({} here)",
            MAX_JOINS + 1,
            from.joins.len() + 1
        )));
    }
    let mut named: Vec<Named> = Vec::new();
    let mut relations = vec![&from.relation];
    relations.extend(from.joins.iter().map(|j| &j.relation));
    for r in relations {
        let (name, alias) = relation_name(r)?;
        let def = catalog.get(&name)?.clone();
        let alias = alias.unwrap_or_else(|| def.name.clone());
        if named.iter().any(|n| n.alias == alias) {
            return Err(SqlError::Invalid(format!(
                "{alias} names two sources of the join: give each its own alias (FROM s JOIN s AS s2 ...)"
            )));
        }
        if def.window.is_some() {
            return Err(SqlError::Invalid(format!(
                "{} is windowed: joins of windowed sources are not supported",
                def.name
            )));
        }
        let reader = SourceReader::new(&def)?;
        let fields = reader
            .schema()
            .fields()
            .iter()
            .filter(|f| f.name() != ROWTIME)
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        named.push(Named { def, alias, fields });
    }
    // The joined row's columns: ROWKEY, each source's, ROWTIME (added by the reader).
    let mut j_columns: Vec<(String, DataType, bool)> = vec![(ROWKEY.into(), DataType::Utf8, true)];
    let mut sources = Vec::with_capacity(named.len());
    for n in &named {
        let first = j_columns.len();
        for (c, t) in &n.fields {
            let name = Scope::j_name(&n.alias, c);
            if j_columns.iter().any(|j| j.0 == name) {
                return Err(SqlError::Invalid(format!(
                    "the joined column {name} would stand for two columns; give {} another alias",
                    n.alias
                )));
            }
            j_columns.push((name, t.clone(), false));
        }
        // Then its record time, which `a.ROWTIME` reads (`*` leaves it out).
        let rowtime = Scope::j_name(&n.alias, ROWTIME);
        if j_columns.iter().any(|j| j.0 == rowtime) {
            return Err(SqlError::Invalid(format!(
                "the joined column {rowtime} would stand for two columns; give {} another alias",
                n.alias
            )));
        }
        j_columns.push((rowtime, DataType::Int64, false));
        sources.push(JoinSource {
            def: n.def.clone(),
            alias: n.alias.clone(),
            first,
            columns: n.fields.len() + 1,
        });
    }
    let j_name = named
        .iter()
        .map(|n| n.alias.as_str())
        .collect::<Vec<_>>()
        .join(" JOIN ");
    let def_of = |kind: SourceKind, rowkey: DataType, key: bool| -> SourceDef {
        let mut columns = j_columns.clone();
        columns[0] = (ROWKEY.into(), rowkey, key);
        SourceDef {
            name: j_name.clone(),
            kind,
            columns,
            topic: String::new(),
            format: Format::Json,
            key_format: KeyFormat::Json,
            timestamp: None,
            timestamp_format: None,
            window: None,
            statement: String::new(),
        }
    };
    let planning_def = def_of(SourceKind::Stream, DataType::Utf8, false);
    let planner = Planner::new(&[SourceTable {
        name: j_name.clone(),
        schema: Arc::clone(SourceReader::new(&planning_def)?.schema()),
    }])?;
    // `SELECT <key> AS K FROM J`, built as a tree (the key was parsed and rewritten once).
    let crate::ast::Statement::Select(template) =
        crate::parse_one("SELECT 1 AS \"K\" FROM j EMIT CHANGES")?
    else {
        return Err(SqlError::Plan("internal error: join key template".into()));
    };
    let names = UserNames::new(&j_name, &named);
    let key_plan = |e: &SqlExpr| -> Result<Stateless> {
        let mut q = template.query.clone();
        if let SetExpr::Select(b) = q.body.as_mut() {
            b.projection = vec![SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', "K"),
            }];
            b.from = vec![j_table(&j_name)];
        }
        planner.stateless(&q).map_err(|e| names.error(e))
    };
    let mut steps = Vec::with_capacity(from.joins.len());
    // The left side so far: a stream or a table, and its primary key's J columns and type.
    let mut left_kind = named[0].def.kind;
    let key_column = |n: &Named| -> Result<Option<(String, DataType)>> {
        let keys: Vec<&(String, DataType, bool)> = n.def.columns.iter().filter(|c| c.2).collect();
        match keys.as_slice() {
            [] => Ok(None),
            [k] => Ok(Some((Scope::j_name(&n.alias, &k.0), k.1.clone()))),
            _ => Err(SqlError::Invalid(format!(
                "{} has several key columns: joins read sources with one key column",
                n.def.name
            ))),
        }
    };
    let mut left_pk: Vec<String> = Vec::new();
    let mut left_pk_type = DataType::Utf8;
    if let Some((k, t)) = key_column(&named[0])? {
        left_pk.push(k);
        left_pk_type = t;
    }
    let mut key_aliases = Vec::new();
    for (k, join) in from.joins.iter().enumerate() {
        let right = &named[k + 1];
        let (kind, constraint) = match &join.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
            JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (JoinKind::Right, c),
            JoinOperator::FullOuter(c) => (JoinKind::Full, c),
            other => {
                return Err(SqlError::Invalid(format!(
                    "{} JOIN is not supported: use [INNER] JOIN, LEFT JOIN, RIGHT JOIN or FULL OUTER JOIN with ON",
                    operator_name(other)
                )));
            }
        };
        let JoinConstraint::On(on) = constraint else {
            return Err(SqlError::Invalid(format!(
                "the join with {} needs ON a.x = b.y",
                right.alias
            )));
        };
        let scope = Scope {
            named: &named,
            upto: k + 2,
        };
        let mut on = on.clone();
        scope.rewrite(&mut on)?;
        // The sides as the user wrote them, for messages (`o.id`, not the J column `"O_ID"`).
        let written = match constraint {
            JoinConstraint::On(w) => equality(w),
            _ => None,
        };
        let Some((a, b)) = equality(&on) else {
            return Err(SqlError::Invalid(format!(
                "the join with {} must be on one equality (ON a.x = b.y), not: {}",
                right.alias,
                constraint_text(constraint)
            )));
        };
        let (sa, sb) = (sources_of(a, &named), sources_of(b, &named));
        let is_right = |s: &[usize]| s == [k + 1];
        let is_left = |s: &[usize]| !s.is_empty() && s.iter().all(|&i| i <= k);
        let (wa, wb) = written.map_or((a.to_string(), b.to_string()), |(wa, wb)| {
            (wa.to_string(), wb.to_string())
        });
        let (left_expr, right_expr, left_written, right_written) = if is_left(&sa) && is_right(&sb)
        {
            (a.clone(), b.clone(), wa, wb)
        } else if is_right(&sa) && is_left(&sb) {
            (b.clone(), a.clone(), wb, wa)
        } else {
            return Err(SqlError::Invalid(format!(
                "the join condition {} must compare the sources joined so far with {} (one side each)",
                constraint_text(constraint),
                right.alias
            )));
        };
        let within = select.within.get(k).copied().flatten();
        let right_pk = key_column(right)?;
        let column_of = |e: &SqlExpr| match e {
            SqlExpr::Identifier(i) => Some(i.value.clone()),
            _ => None,
        };
        let shape = match (left_kind, right.def.kind) {
            (SourceKind::Stream, SourceKind::Table) => {
                if within.is_some() {
                    return Err(SqlError::Invalid(format!(
                        "WITHIN is for stream-stream joins; {} is a table (a stream-table join looks up the table's current row)",
                        right.def.name
                    )));
                }
                if !matches!(kind, JoinKind::Inner | JoinKind::Left) {
                    return Err(SqlError::Invalid(format!(
                        "{} JOIN of a stream with a table is not supported: stream-table joins are INNER or LEFT",
                        kind.sql()
                    )));
                }
                Shape::StreamTable
            }
            (SourceKind::Stream, SourceKind::Stream) => {
                let Some(w) = within else {
                    return Err(SqlError::Invalid(format!(
                        "Stream-stream joins must have a WITHIN clause specified: ... JOIN {} WITHIN 1 HOUR ON ...",
                        right.alias
                    )));
                };
                let ms =
                    |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
                let limit = 366 * 86_400_000i64;
                let (before, after) = (ms(w.before), ms(w.after));
                // ksqlDB's default grace for joins without one: 24 hours.
                let grace = w.grace.map_or(86_400_000, ms);
                if before > limit || after > limit || grace > limit {
                    return Err(SqlError::Invalid(
                        "WITHIN and GRACE PERIOD of a join are at most 366 days".into(),
                    ));
                }
                Shape::StreamStream {
                    before,
                    after,
                    grace,
                }
            }
            (SourceKind::Table, SourceKind::Table) => {
                if within.is_some() {
                    return Err(SqlError::Invalid(
                        "WITHIN is for stream-stream joins; table-table joins match current rows"
                            .into(),
                    ));
                }
                // One update would reach both sides one after the other, and the join would
                // emit a row mixing the old and the new version in between (ksqlDB refuses
                // self-joins altogether; streams may join themselves here).
                if let Some(t) = named[..=k]
                    .iter()
                    .find(|n| n.def.kind == SourceKind::Table && n.def.topic == right.def.topic)
                {
                    return Err(SqlError::Invalid(format!(
                        "{} and {} are one table (topic {}): a table cannot be joined with itself",
                        t.alias, right.alias, right.def.topic
                    )));
                }
                let on_pk = column_of(&left_expr).is_some_and(|c| left_pk.contains(&c));
                if on_pk {
                    Shape::TableTable
                } else {
                    if !matches!(kind, JoinKind::Inner | JoinKind::Left) {
                        return Err(SqlError::Invalid(format!(
                            "{} JOIN on a foreign key is not supported: foreign-key joins are INNER or LEFT",
                            kind.sql()
                        )));
                    }
                    Shape::ForeignKey
                }
            }
            (SourceKind::Table, SourceKind::Stream) => {
                return Err(SqlError::Invalid(format!(
                    "Invalid join order: table-stream joins are not supported; put the stream first (FROM {} JOIN {} ...)",
                    right.alias, named[0].alias
                )));
            }
        };
        if matches!(
            shape,
            Shape::StreamTable | Shape::TableTable | Shape::ForeignKey
        ) {
            let pk = right_pk.as_ref().map(|p| p.0.clone());
            if column_of(&right_expr) != pk {
                return Err(SqlError::Invalid(format!(
                    "a table is joined on its PRIMARY KEY: {} is joined on {}, not its key {}",
                    right.def.name,
                    right_written,
                    right
                        .def
                        .columns
                        .iter()
                        .find(|c| c.2)
                        .map_or("(none)", |c| c.0.as_str())
                )));
            }
        }
        let left_key = key_plan(&left_expr)?;
        let right_key = key_plan(&right_expr)?;
        let lt = left_key.schema().field(0).data_type().clone();
        let rt = right_key.schema().field(0).data_type().clone();
        // As in ksqlDB the two sides must have one SQL type: a cast between others (VARCHAR
        // to INT, DOUBLE to INT) would make unequal values equal or drop them as NULL.
        // Integers of any width are compared as BIGINT, which changes no value.
        let key_type = if is_integer(&lt) && is_integer(&rt) && lt != rt {
            DataType::Int64
        } else if crate::types::sql_name(&lt) == crate::types::sql_name(&rt) {
            match shape {
                Shape::StreamStream { .. } => lt.clone(),
                _ => rt.clone(),
            }
        } else {
            return Err(SqlError::Invalid(format!(
                "cannot join {left_written} ({}) with {right_written} ({}): their types differ; CAST one side to the other's type",
                crate::types::sql_name(&lt),
                crate::types::sql_name(&rt)
            )));
        };
        let left_col = column_of(&left_expr);
        let right_col = column_of(&right_expr);
        key_aliases = match (shape, kind) {
            (Shape::ForeignKey, _) => left_pk.clone(),
            (_, JoinKind::Inner) => left_col.into_iter().chain(right_col).collect(),
            (_, JoinKind::Left) => left_col.into_iter().collect(),
            (_, JoinKind::Right) => right_col.into_iter().collect(),
            (_, JoinKind::Full) => Vec::new(),
        };
        steps.push(StepPlan {
            kind,
            shape,
            left_key,
            right_key,
            key_type: key_type.clone(),
            left_key_type: left_pk_type.clone(),
            left_table: left_kind == SourceKind::Table,
            text: constraint_text(constraint),
        });
        // The result so far: keyed by the join key (a foreign-key join: by the left key).
        if shape != Shape::ForeignKey {
            left_pk = key_aliases.clone();
            left_pk_type = key_type;
        }
        if matches!(shape, Shape::StreamTable | Shape::StreamStream { .. }) {
            left_kind = SourceKind::Stream;
        }
    }
    let result_kind = left_kind;
    let def = def_of(result_kind, left_pk_type.clone(), true);
    let inner_def = def_of(result_kind, left_pk_type, false);
    let full = steps.last().is_some_and(|s| s.kind == JoinKind::Full);
    let rewritten = rewrite_select(select, &named, &j_name, full)?;
    Ok(Some((
        JoinPlan {
            sources,
            steps,
            def,
            inner_def,
            key_aliases,
            names,
        },
        rewritten,
    )))
}

fn is_integer(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
    )
}

/// A join operator as SQL writes it (`CROSS`, `LEFT SEMI`), from its variant's name
/// (`CrossJoin`, `LeftSemi`): the parser's debug form is no user's word.
fn operator_name(op: &JoinOperator) -> String {
    let debug = format!("{op:?}");
    let variant = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default();
    let variant = variant.strip_suffix("Join").unwrap_or(variant);
    let mut words = String::new();
    for c in variant.chars() {
        if c.is_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_uppercase());
    }
    words
}

fn constraint_text(c: &JoinConstraint) -> String {
    match c {
        JoinConstraint::On(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

/// The SELECT over J: FROM J, column references resolved, `*` and `a.*` expanded to J
/// columns (named `<ALIAS>_<COLUMN>`, as ksqlDB names them), and a selected column keeping
/// its own name (`o.id` is `ID`).
fn rewrite_select(select: &Select, named: &[Named], j_name: &str, full: bool) -> Result<Select> {
    let mut select = select.clone();
    let SetExpr::Select(body) = select.query.body.as_mut() else {
        return Ok(select);
    };
    let scope = Scope {
        named,
        upto: named.len(),
    };
    let quoted = |n: String| SqlExpr::Identifier(Ident::with_quote('"', n));
    let mut items = Vec::with_capacity(body.projection.len());
    for item in body.projection.drain(..) {
        match item {
            SelectItem::Wildcard(_) => {
                if full {
                    items.push(SelectItem::UnnamedExpr(quoted(ROWKEY.into())));
                }
                for n in named {
                    for (c, _) in &n.fields {
                        items.push(SelectItem::UnnamedExpr(quoted(Scope::j_name(&n.alias, c))));
                    }
                }
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                let alias = match &kind {
                    datafusion::sql::sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(
                        o,
                    ) => object_name(o),
                    _ => {
                        return Err(SqlError::Invalid(
                            "expr.* is not supported; name a source: a.*".into(),
                        ));
                    }
                };
                let Some(n) = named.iter().find(|n| n.alias == alias) else {
                    return Err(SqlError::Invalid(format!(
                        "{alias}.*: no source named {alias} in the FROM clause"
                    )));
                };
                for (c, _) in &n.fields {
                    items.push(SelectItem::UnnamedExpr(quoted(Scope::j_name(&n.alias, c))));
                }
            }
            SelectItem::UnnamedExpr(mut e) => match scope.resolve(&e)? {
                Some((j, column)) if j != ROWTIME => items.push(SelectItem::ExprWithAlias {
                    expr: quoted(j),
                    alias: Ident::with_quote('"', column),
                }),
                _ => {
                    scope.rewrite(&mut e)?;
                    items.push(SelectItem::UnnamedExpr(e));
                }
            },
            SelectItem::ExprWithAlias { mut expr, alias } => {
                scope.rewrite(&mut expr)?;
                items.push(SelectItem::ExprWithAlias { expr, alias });
            }
            other => {
                return Err(SqlError::Invalid(format!(
                    "unsupported SELECT item in a join: {other}"
                )));
            }
        }
    }
    // Two columns of one name (`a.id, b.id`) would be one field of the output.
    let mut seen = std::collections::HashSet::new();
    for item in &items {
        let name = match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(ident_name(alias)),
            SelectItem::UnnamedExpr(SqlExpr::Identifier(i)) => Some(ident_name(i)),
            _ => None,
        };
        if let Some(name) = name {
            if !seen.insert(name.clone()) {
                return Err(SqlError::Invalid(format!(
                    "the SELECT list has two columns named {name}: alias one of them (e.g. b.{} AS B_{name})",
                    name.to_lowercase()
                )));
            }
        }
    }
    body.projection = items;
    if let Some(e) = body.selection.as_mut() {
        scope.rewrite(e)?;
    }
    if let Some(e) = body.having.as_mut() {
        scope.rewrite(e)?;
    }
    if let datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(exprs, _) = &mut body.group_by
    {
        for e in exprs.iter_mut() {
            scope.rewrite(e)?;
        }
    }
    if let Some(crate::ast::PartitionBy::Exprs(exprs)) = select.partition_by.as_mut() {
        for e in exprs.iter_mut() {
            scope.rewrite(e)?;
        }
    }
    body.from = vec![j_table(j_name)];
    select.within = Vec::new();
    Ok(select)
}

/// `FROM <the joined rows>`.
fn j_table(j_name: &str) -> TableWithJoins {
    TableWithJoins {
        relation: TableFactor::Table {
            name: ObjectName::from(vec![Ident::with_quote('"', j_name)]),
            alias: None,
            args: None,
            with_hints: Vec::new(),
            version: None,
            with_ordinality: false,
            partitions: Vec::new(),
            json_path: None,
            sample: None,
            index_hints: Vec::new(),
        },
        joins: Vec::new(),
    }
}
