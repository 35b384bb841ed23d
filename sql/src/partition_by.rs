//! `PARTITION BY`: a stream query's output records keyed by expressions of its input instead
//! of the source's key, as ksqlDB re-keys a stream.
//!
//! ```text
//!  rides: key ID │ ZONE, FARE            SELECT * FROM rides PARTITION BY zone
//!        ─────────────────────────►      key ZONE │ FARE, ID   (partition = murmur2(ZONE))
//! ```
//!
//! Nothing moves at run time: the expressions are selected, so they are columns of the
//! output rows, and the sink writes its key columns as the record key
//! ([`crate::catalog::SourceDef::encode`]), which the producer partitions by. What this module
//! decides is which columns those are: each PARTITION BY expression is a key column, named
//! as the SELECT list names it (a column its name, `UPPER(zone) AS z` `Z`, an unaliased
//! expression `KSQL_COL_<n>`), and the source's old key columns become value columns.
//! `PARTITION BY NULL` writes records without a key; a row whose expression is NULL gets
//! none either (a multi-column key holds the NULL as `null`).
//!
//! Sluice runs a query as one task over every partition of its input, so it needs no
//! repartition topic for GROUP BY or joins on other columns; PARTITION BY is still needed
//! because it changes the keys, and so the partitions, that readers and sinks of the output
//! see.

use std::collections::HashSet;

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, GroupByExpr, Ident, Query, SelectItem, SetExpr,
};

use crate::ast::{PartitionBy, SourceKind};
use crate::catalog::SourceDef;
use crate::error::{Result, SqlError};
use crate::planner::Planner;
use crate::query::{key_expr, null_comparisons_false, struct_field_name};

/// The PARTITION BY expressions of a query over `source`, in [`key_expr`] form; refused as
/// ksqlDB refuses them: with GROUP BY (`grouped`), and when they would re-key a table (keyed
/// by its PRIMARY KEY) or a windowed source (whose keys carry their windows). Partitioning
/// by the source's own single key column changes nothing and is allowed on both, as ksqlDB
/// allows it.
pub fn resolve(pb: &PartitionBy, source: &SourceDef, grouped: bool) -> Result<PartitionBy> {
    if grouped {
        return Err(SqlError::Invalid(
            "Queries only support one of PARTITION BY and GROUP BY".into(),
        ));
    }
    let pb = match pb {
        PartitionBy::Null => PartitionBy::Null,
        PartitionBy::Exprs(exprs) => PartitionBy::Exprs(
            exprs
                .iter()
                .map(|e| {
                    // As the SELECT list is rewritten, so the two still match.
                    let mut e = e.clone();
                    null_comparisons_false(&mut e)?;
                    Ok(key_expr(&e))
                })
                .collect::<Result<_>>()?,
        ),
    };
    if !rekeys(&pb, source) {
        return Ok(pb);
    }
    let keys: Vec<&str> = key_columns(source).collect();
    let keys = match keys.as_slice() {
        [one] => (*one).to_string(),
        many => format!("({})", many.join(", ")),
    };
    if source.kind == SourceKind::Table {
        return Err(SqlError::Invalid(format!(
            "Cannot repartition a TABLE source: {} is keyed by its PRIMARY KEY {keys}, and PARTITION BY re-keys streams only",
            source.name
        )));
    }
    if let Some(w) = source.window {
        return Err(SqlError::Invalid(format!(
            "Implicit repartitioning of windowed sources is not supported: the keys of {} carry their {} windows",
            source.name,
            w.type_name()
        )));
    }
    Ok(pb)
}

/// True unless `pb` names exactly the source's single key column (ksqlDB's test for a
/// repartition).
fn rekeys(pb: &PartitionBy, source: &SourceDef) -> bool {
    let keys: Vec<&str> = key_columns(source).collect();
    match (pb, keys.as_slice()) {
        (PartitionBy::Exprs(exprs), [key]) => {
            !matches!(exprs.as_slice(), [SqlExpr::Identifier(i)] if i.value == *key)
        }
        _ => true,
    }
}

fn key_columns(source: &SourceDef) -> impl Iterator<Item = &str> {
    source.columns.iter().filter(|c| c.2).map(|c| c.0.as_str())
}

/// What `*` stands for when the rows are re-keyed, as ksqlDB lays out a re-keyed stream: the
/// new key columns first (an expression that is not a column named as ksqlDB names it: a
/// STRUCT field its field's name, anything else `KSQL_COL_<n>`), then the value columns,
/// then the old key columns, which are values now. `None` when `pb` does not re-key (the
/// source's own layout stands). `pb` is the clause as written: the items join the SELECT
/// list, which is rewritten as a whole afterwards.
pub fn star_items(pb: &PartitionBy, source: &SourceDef) -> Option<Vec<SelectItem>> {
    let pb = match pb {
        PartitionBy::Null => PartitionBy::Null,
        PartitionBy::Exprs(exprs) => PartitionBy::Exprs(exprs.iter().map(key_expr).collect()),
    };
    let pb = &pb;
    if !rekeys(pb, source) {
        return None;
    }
    let column = |name: &str| SqlExpr::Identifier(Ident::with_quote('"', name));
    let is_column = |e: &SqlExpr| match e {
        SqlExpr::Identifier(i) => source.columns.iter().any(|c| c.0 == i.value),
        _ => false,
    };
    let mut taken: HashSet<String> = source.columns.iter().map(|c| c.0.clone()).collect();
    let mut next = 0;
    let mut items = Vec::with_capacity(source.columns.len() + 1);
    let mut keys: Vec<&str> = Vec::new();
    if let PartitionBy::Exprs(exprs) = pb {
        for e in exprs {
            if let SqlExpr::Identifier(i) = e {
                if is_column(e) {
                    keys.push(&i.value);
                    items.push(SelectItem::UnnamedExpr(column(&i.value)));
                    continue;
                }
            }
            let name = match struct_field_name(e, source) {
                Some(field) if taken.insert(field.clone()) => field,
                _ => loop {
                    let n = format!("KSQL_COL_{next}");
                    next += 1;
                    if taken.insert(n.clone()) {
                        break n;
                    }
                },
            };
            items.push(SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias: Ident::with_quote('"', name),
            });
        }
    }
    let rest = |key: bool| {
        source
            .columns
            .iter()
            .filter(move |c| c.2 == key)
            .map(|c| c.0.as_str())
    };
    for name in rest(false).chain(rest(true)) {
        if !keys.contains(&name) {
            items.push(SelectItem::UnnamedExpr(column(name)));
        }
    }
    Some(items)
}

/// Checks that the expressions can be evaluated over the query's input (WHERE applies
/// first, as in ksqlDB): known columns and functions, no aggregate, no table function.
/// `query` is the SELECT as compiled; the expressions are planned in place of its SELECT
/// list.
pub fn validate(pb: &PartitionBy, planner: &Planner, query: &Query) -> Result<()> {
    let PartitionBy::Exprs(exprs) = pb else {
        return Ok(());
    };
    for e in exprs {
        let mut q = query.clone();
        let SetExpr::Select(body) = q.body.as_mut() else {
            return Ok(());
        };
        body.projection = vec![SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::new("partition_by"),
        }];
        body.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        body.having = None;
        let plan = planner
            .analyzed_plan(&q)
            .map_err(|err| SqlError::Invalid(format!("PARTITION BY {e}: {err}")))?;
        let has = |f: fn(&LogicalPlan) -> bool| plan.exists(|n| Ok(f(n))).unwrap_or(false);
        if has(|n| matches!(n, LogicalPlan::Aggregate(_))) {
            return Err(SqlError::Invalid(format!(
                "PARTITION BY does not support aggregate functions: {e}"
            )));
        }
        if has(|n| matches!(n, LogicalPlan::Unnest(_))) {
            return Err(SqlError::Invalid(format!(
                "PARTITION BY does not support table functions: {e}"
            )));
        }
    }
    Ok(())
}

/// `PARTITION BY ...` as EXPLAIN shows it.
pub fn describe(pb: &PartitionBy) -> String {
    match pb {
        PartitionBy::Null => "re-key: PARTITION BY NULL, no key".into(),
        PartitionBy::Exprs(exprs) => format!(
            "re-key: PARTITION BY {}",
            exprs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::ast::Statement;
    use crate::engine::{Engine, Output};
    use crate::parse_one;

    fn engine() -> (tempfile::TempDir, sluice_log::Log, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let log = sluice_log::Log::open(dir.path(), sluice_log::LogOptions::default()).unwrap();
        let mut e = Engine::open(&log).unwrap();
        e.execute(
            "CREATE STREAM rides (id VARCHAR KEY, zone VARCHAR, fare DOUBLE) \
             WITH (topic='rides', partitions=1)",
        )
        .unwrap();
        (dir, log, e)
    }

    /// The output columns of a SELECT, in order.
    fn columns(e: &Engine, sql: &str) -> Vec<String> {
        let Statement::Select(select) = parse_one(sql).unwrap() else {
            panic!("{sql}")
        };
        let q = crate::query::compile(e.catalog(), &select).unwrap();
        q.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn star_puts_the_new_key_first_and_the_old_key_last() {
        let (_d, _log, e) = engine();
        let cols = |sql: &str| columns(&e, sql);
        assert_eq!(
            cols("SELECT * FROM rides PARTITION BY zone EMIT CHANGES"),
            ["ZONE", "FARE", "ID"]
        );
        assert_eq!(
            cols("SELECT * FROM rides PARTITION BY UPPER(zone), fare EMIT CHANGES"),
            ["KSQL_COL_0", "FARE", "ZONE", "ID"]
        );
        assert_eq!(
            cols("SELECT *, LOWER(zone) FROM rides PARTITION BY UPPER(zone) EMIT CHANGES"),
            ["KSQL_COL_0", "ZONE", "FARE", "ID", "KSQL_COL_1"]
        );
        assert_eq!(
            cols("SELECT * FROM rides PARTITION BY NULL EMIT CHANGES"),
            ["ZONE", "FARE", "ID"]
        );
        // The source's own key: nothing moves.
        assert_eq!(
            cols("SELECT * FROM rides PARTITION BY id EMIT CHANGES"),
            ["ID", "ZONE", "FARE"]
        );
    }

    #[test]
    fn the_derived_stream_declares_the_new_key_and_the_query_restarts() {
        let (_d, log, mut e) = engine();
        e.execute("CREATE STREAM by_zone AS SELECT * FROM rides PARTITION BY zone")
            .unwrap();
        e.shutdown();
        drop(e);
        // The stored statement parses and compiles again when the engine reopens.
        let mut e = Engine::open(&log).unwrap();
        let def = e.catalog().get("BY_ZONE").unwrap();
        let declared: Vec<(&str, bool)> = def.columns.iter().map(|c| (c.0.as_str(), c.2)).collect();
        assert_eq!(declared, [("ZONE", true), ("FARE", false), ("ID", false)]);
        let queries = match e.execute("SHOW QUERIES").unwrap().pop() {
            Some(Output::Rows(b)) => crate::pretty(&b).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(
            queries.contains("CSAS_BY_ZONE") && queries.contains("RUNNING"),
            "{queries}"
        );
        e.shutdown();
    }

    #[test]
    fn explain_shows_the_re_keying() {
        let (_d, _log, mut e) = engine();
        let explained = |e: &mut Engine, sql: &str| match e.execute(sql).unwrap().pop() {
            Some(Output::Message(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = explained(
            &mut e,
            "EXPLAIN SELECT * FROM rides PARTITION BY zone, UPPER(id) EMIT CHANGES",
        );
        assert!(
            m.contains(
                "Operators: decode -> filters and projections -> re-key: PARTITION BY ZONE, UPPER(ID) -> encode"
            ),
            "{m}"
        );
        let m = explained(
            &mut e,
            "EXPLAIN CREATE STREAM s2 AS SELECT * FROM rides PARTITION BY NULL",
        );
        assert!(m.contains("re-key: PARTITION BY NULL, no key"), "{m}");
    }
}
