//! CREATE STREAM/TABLE: a source declared on a topic, or `... AS SELECT`, which derives the
//! result's columns, creates its topic and starts the persistent query that fills it.

use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr};

use super::{Engine, Output, capitalized};
use crate::ast::{ColumnDef, Properties, SourceKind, Statement};
use crate::catalog::{QueryDef, derived_statement, partitions_property, source_def};
use crate::error::{Result, SqlError};
use crate::format::Format;
use crate::query::{compile, output_columns};

impl Engine {
    /// CREATE STREAM/TABLE with declared columns on a topic.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_source(
        &mut self,
        kind: SourceKind,
        name: &str,
        columns: &[ColumnDef],
        properties: &Properties,
        if_not_exists: bool,
        or_replace: bool,
        text: &str,
    ) -> Result<Output> {
        // Reserved, as in ksqlDB, for the window a windowed source's keys carry.
        if let Some(c) = columns
            .iter()
            .find(|c| crate::operators::window::is_window_column(&c.name))
        {
            return Err(SqlError::Invalid(format!(
                "{} is a reserved column name (the window of a windowed source's key); choose another name",
                c.name
            )));
        }
        let def = source_def(kind, name, columns, properties, text)?;
        let topic = def.topic.clone();
        let schema = def.value_schema()?;
        let owner = self.owner().cloned();
        let created = self.catalog.create(
            def,
            partitions_property(properties)?,
            if_not_exists,
            or_replace,
            owner.as_ref(),
        )?;
        if created {
            if let Some(schema) = schema {
                self.declare_schema(name, &topic, &schema);
            }
        }
        Ok(Output::Message(if created {
            format!("{} {name} created on topic {topic}.", capitalized(kind))
        } else {
            format!("{} {name} already exists.", capitalized(kind))
        }))
    }

    /// CREATE STREAM/TABLE ... AS SELECT: the result's source and topic, then its
    /// persistent query.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_as(
        &mut self,
        kind: SourceKind,
        name: &str,
        properties: &Properties,
        select: &crate::ast::Select,
        if_not_exists: bool,
        or_replace: bool,
        text: &str,
    ) -> Result<Output> {
        if self.catalog.get(name).is_ok() && if_not_exists {
            // Re-running the same statement (a redeployed pipeline) keeps the query; a
            // different query under the same name is not silently ignored.
            if let Some(q) = self.catalog.queries().find(|q| q.sink == name) {
                if super::words(&q.statement) != super::words(text) {
                    return Err(SqlError::Invalid(format!(
                        "{name} exists and query {} writes it with a different statement; to change it, TERMINATE {} and DROP {} {name} first",
                        q.id,
                        q.id,
                        if kind == SourceKind::Stream {
                            "STREAM"
                        } else {
                            "TABLE"
                        }
                    )));
                }
            }
            return Ok(Output::Message(format!(
                "{} {name} already exists.",
                capitalized(kind)
            )));
        }
        if or_replace {
            return Err(SqlError::Invalid(
                "CREATE OR REPLACE ... AS SELECT is not supported; TERMINATE the query and DROP the result first".into(),
            ));
        }
        let compiled = compile(&self.catalog, select)?;
        if compiled.limit().is_some() {
            return Err(SqlError::Invalid(
                "LIMIT is for push queries, not persistent ones".into(),
            ));
        }
        match (kind, compiled.is_aggregate()) {
            (SourceKind::Stream, true) => {
                return Err(SqlError::Invalid(format!(
                    "an aggregate's result is a table: CREATE TABLE {name} AS SELECT ..."
                )));
            }
            (SourceKind::Table, false) if compiled.source.kind == SourceKind::Stream => {
                return Err(SqlError::Invalid(format!(
                    "a table needs GROUP BY over a stream (or CREATE STREAM {name} AS SELECT ...)"
                )));
            }
            // A table's updates and deletions are no stream of events (ksqlDB's refusal):
            // a stream would get a table-table join's tombstones as records.
            (SourceKind::Stream, false) if compiled.source.kind == SourceKind::Table => {
                return Err(SqlError::Invalid(format!(
                    "Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead (CREATE TABLE {name} AS SELECT ...)."
                )));
            }
            _ => {}
        }
        refuse_window_columns(select)?;
        let keys = output_keys(&compiled, name).map_err(|e| match &compiled.join {
            Some(j) => j.names.error(e),
            None => e,
        })?;
        if kind == SourceKind::Table && keys.is_empty() {
            return Err(SqlError::Invalid(format!(
                "table {name} needs a key: GROUP BY the key columns, or select from a table"
            )));
        }
        let window = compiled.key_window();
        let mut columns = output_columns(compiled.schema(), &keys)?;
        if window.is_some() {
            // WINDOWSTART and WINDOWEND of a windowed result are its key's window, read back
            // from the key as pseudo-columns (as in ksqlDB), not copies in the value.
            columns.retain(|c| !crate::operators::window::is_window_column(&c.0));
        }
        for k in properties.keys() {
            if ![
                "topic",
                "kafka_topic",
                "format",
                "value_format",
                "key_format",
                "partitions",
            ]
            .contains(&k.as_str())
            {
                return Err(SqlError::Invalid(format!(
                    "{name}: unknown property '{k}' (known: topic, format, key_format, partitions)"
                )));
            }
        }
        let prop = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| properties.get(*n))
                .map(|v| v.as_str().to_string())
        };
        crate::catalog::refuse_synonyms(name, properties)?;
        let topic = prop(&["topic", "kafka_topic"]).unwrap_or_else(|| name.to_string());
        // `<owner>.dlq` is where a query writing `<owner>` sends dead letters: a stream
        // of that name would mix them into its rows.
        if topic.ends_with(".dlq") {
            return Err(SqlError::Invalid(format!(
                "{name}: topic '{topic}' is reserved for dead letters (names ending in .dlq); choose another name or WITH (topic = ...)"
            )));
        }
        let format = match prop(&["format", "value_format"]) {
            Some(f) => f.parse()?,
            None => match compiled
                .join
                .as_ref()
                .map_or(compiled.source.format, |j| j.sources[0].def.format)
            {
                // Rows read from change envelopes are written as plain JSON.
                Format::Debezium => Format::Json,
                f => f,
            },
        };
        if format == Format::Debezium {
            return Err(SqlError::Invalid(format!(
                "{name}: format DEBEZIUM is read only (change envelopes come from a CDC source); write JSON"
            )));
        }
        let key_names: Vec<&str> = keys.iter().map(String::as_str).collect();
        // A join's result keeps its first source's key format (its joined rows are JSON
        // keyed inside the query only).
        let inherited = compiled
            .join
            .as_ref()
            .map_or(compiled.source.key_format, |j| j.sources[0].def.key_format);
        let key_format = crate::catalog::key_format(properties, inherited, &key_names)?;
        let statement = derived_statement(kind, name, &columns, &topic, format, window, key_format);
        let def = match crate::parse_one(&statement)? {
            Statement::CreateSource {
                columns,
                properties,
                ..
            } => source_def(kind, name, &columns, &properties, &statement)?,
            other => {
                return Err(SqlError::Plan(format!(
                    "internal error: derived statement parsed as {other:?}"
                )));
            }
        };
        let partitions = match partitions_property(properties)? {
            Some(p) => Some(p),
            None if self.log.topic(&topic).is_ok() => None,
            // As many partitions as the input (a join's: its first source's).
            None => Some(
                self.log
                    .topic(&compiled.input_topics()[0])?
                    .partition_count(),
            ),
        };
        // The query writes the topic: its schema is the topic's from now on, and one that
        // older records' readers could not follow (a column's type changed) is refused here,
        // before anything is created.
        let subject = sluice_log::value_subject(&topic);
        let schema = def.value_schema()?;
        if let Some(schema) = &schema {
            self.log.schemas().check_compatibility(&subject, schema)?;
        }
        let owner = self.owner().cloned();
        if let Some(owner) = &owner {
            owner.check_writes(&topic)?;
        }
        self.catalog
            .create(def, partitions, false, false, owner.as_ref())?;
        if let Some(schema) = &schema {
            self.log.schemas().register(&subject, schema)?;
        }
        let id = self.new_query_id(
            if kind == SourceKind::Stream {
                "CSAS"
            } else {
                "CTAS"
            },
            name,
            text,
        );
        let q = QueryDef {
            id: id.clone(),
            sink: name.to_string(),
            statement: text.trim().to_string(),
        };
        self.catalog.add_query(q.clone())?;
        self.start_query(&q)?;
        Ok(Output::Message(format!(
            "{} {name} created on topic {topic}; query {id} is running.",
            capitalized(kind)
        )))
    }
}

impl Engine {
    /// Records a declared source's value schema for its topic when the topic has none yet:
    /// the first declaration describes the data (an input topic a pipeline fills). Later
    /// declarations are readers, possibly of a few columns, and never narrow what sinks
    /// write; one that cannot read the recorded schema is warned about, not refused (a
    /// reader's declaration does not change the data).
    fn declare_schema(&self, name: &str, topic: &str, schema: &sluice_log::RecordSchema) {
        let subject = sluice_log::value_subject(topic);
        let registry = self.log.schemas();
        let result = match registry.latest(&subject) {
            None => registry
                .register(&subject, schema)
                .map(drop)
                .map_err(|e| e.to_string()),
            Some(recorded) => sluice_log::schema::compat::can_read(schema, &recorded.schema)
                .map_err(|e| {
                    format!(
                        "{subject} version {}: {}: {}",
                        recorded.version, e.path, e.reason
                    )
                }),
        };
        if let Err(e) = result {
            tracing::warn!(source = %name, topic = %topic, error = %e, "The declared columns do not match the schema recorded for the topic; records that do not fit go to the dead-letter topic.");
        }
    }
}

/// `WINDOWSTART` or `WINDOWEND` selected under its own name into a persistent query's result
/// is refused with ksqlDB's message: they are reserved for the window its keys carry (select
/// `WINDOWSTART AS ws` for a copy in the value). Push queries may select them.
pub(super) fn refuse_window_columns(select: &crate::ast::Select) -> Result<()> {
    let SetExpr::Select(body) = select.query.body.as_ref() else {
        return Ok(());
    };
    for item in &body.projection {
        let name = match item {
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => crate::query::ident_name(i),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts
                .last()
                .map(crate::query::ident_name)
                .unwrap_or_default(),
            _ => continue,
        };
        if crate::operators::window::is_window_column(&name) {
            return Err(SqlError::Invalid(format!(
                "Reserved column name in select: `{name}`. Please remove or alias the column."
            )));
        }
    }
    Ok(())
}

/// The columns of a persistent query's output that become the record key, as ksqlDB
/// derives them: each GROUP BY expression (an aggregate), each PARTITION BY expression
/// (none for `PARTITION BY NULL`), or each key column of the source (filters and
/// projections), selected as written or under an alias. Each must be selected exactly once
/// (a record has one key, and a copy of it in the value would be a second truth), and
/// something must be left for the value; otherwise the statement is refused, as ksqlDB
/// refuses it. (Push queries may leave keys out.)
pub(super) fn output_keys(q: &crate::query::CompiledQuery, sink: &str) -> Result<Vec<String>> {
    let (keys, what): (Vec<Expr>, &str) = if q.is_aggregate() {
        (q.group_by.clone(), "grouping expression")
    } else if let Some(pb) = &q.partition_by {
        // Applied after a join, as in ksqlDB: the join's key no longer matters.
        let keys = match pb {
            crate::ast::PartitionBy::Null => Vec::new(),
            crate::ast::PartitionBy::Exprs(exprs) => exprs.clone(),
        };
        (keys, "partitioning expression")
    } else if q.join.is_some() {
        return join_output_key(q, sink);
    } else {
        let keys = q
            .source
            .columns
            .iter()
            .filter(|c| c.2)
            .map(|c| Expr::Identifier(datafusion::sql::sqlparser::ast::Ident::new(&c.0)))
            .collect();
        (keys, "key column")
    };
    let mut names = Vec::with_capacity(keys.len());
    let mut missing = Vec::new();
    for key in &keys {
        let selected: Vec<&String> = q
            .columns
            .iter()
            .filter(|(e, _)| e == key)
            .map(|(_, n)| n)
            .collect();
        match selected.as_slice() {
            [] => missing.push(key.to_string()),
            [one] => names.push((*one).clone()),
            many => {
                return Err(SqlError::Invalid(format!(
                    "the key {key} is selected {} times (as {}); a key column may be selected once",
                    many.len(),
                    many.iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    if !missing.is_empty() {
        if !q.is_aggregate() {
            // ksqlDB names every key column of the source (or partitioning expression)
            // then, not only the missing ones.
            missing = keys.iter().map(|k| k.to_string()).collect();
        }
        let plural = if missing.len() > 1 { "s" } else { "" };
        let listed = match missing.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => String::new(),
        };
        return Err(SqlError::Invalid(format!(
            "Key{plural} missing from projection (ie, SELECT). The query used to build {sink} must include the {what}{plural} {listed} in its projection (eg, SELECT {}...).",
            missing.join(", ")
        )));
    }
    if q.schema().fields().iter().all(|f| names.contains(f.name())) {
        return Err(SqlError::Invalid(format!(
            "The projection contains no value columns: {sink} needs a column besides its key{}",
            if names.len() > 1 { "s" } else { "" }
        )));
    }
    Ok(names)
}

/// The output key column of a persistent query over a join (no GROUP BY): the first
/// selected column holding the join's key (ROWKEY, or a join column equal to it, such as
/// `o.id` in `... JOIN c ON o.id = c.id`); ksqlDB requires one in the projection.
fn join_output_key(q: &crate::query::CompiledQuery, sink: &str) -> Result<Vec<String>> {
    use datafusion::sql::sqlparser::ast::Ident;
    let candidates: Vec<Expr> = std::iter::once(crate::operators::join::ROWKEY)
        .chain(q.key_aliases().iter().map(String::as_str))
        .map(|n| Expr::Identifier(Ident::new(n)))
        .collect();
    let Some((_, name)) = q.columns.iter().find(|(e, _)| candidates.contains(e)) else {
        let join = q.join.as_ref().map(|j| j.steps.len()).unwrap_or(0);
        let shown: Vec<String> = q
            .key_aliases()
            .iter()
            .map(|a| {
                q.join
                    .as_ref()
                    .and_then(|j| {
                        j.sources.iter().find_map(|s| {
                            a.strip_prefix(&format!("{}_", s.alias))
                                .map(|c| format!("{}.{c}", s.alias))
                        })
                    })
                    .unwrap_or_else(|| a.clone())
            })
            .chain(std::iter::once(crate::operators::join::ROWKEY.to_string()))
            .collect();
        return Err(SqlError::Invalid(format!(
            "Key missing from projection (ie, SELECT). The query used to build {sink} must include the join expression {} in its projection (the key of the join{}'s result)",
            shown.join(" or "),
            if join > 1 { "s" } else { "" }
        )));
    };
    if q.schema().fields().iter().all(|f| f.name() == name) {
        return Err(SqlError::Invalid(format!(
            "The projection contains no value columns: {sink} needs a column besides its key"
        )));
    }
    Ok(vec![name.clone()])
}
