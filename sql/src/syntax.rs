//! ksqlDB syntax that sqlparser's generic dialect reads otherwise, rewritten into what
//! DataFusion plans: on the tokens before parsing ([`tokens`]) and on the tree after
//! ([`query`], [`expr`]).
//!
//! - `STRUCT(a := 1, b := 'x')` becomes `STRUCT(1 AS "A", 'x' AS "B")` (names folded as
//!   any unquoted name);
//! - `MAP('k' := v, ...)` becomes `AS_MAP(ARRAY['k', ...], ARRAY[v, ...])`;
//! - `MAP<K, V>` in a type (`CAST(x AS MAP<VARCHAR, INT>)`) becomes `MAP(K, V)`;
//! - `SUBSTRING(s, pos, len)` is a call of ksqlDB's `SUBSTRING` (DataFusion would plan its
//!   own, with SQL's positions, without looking the name up);
//! - the time unit of `DATEADD(DAYS, 1, d)` and its friends, a bare word, becomes a string;
//! - lambdas `x => ...`, `(k, v) => ...` are DataFusion's lambdas, `TRANSFORM` and `FILTER`
//!   of an array its `ARRAY_TRANSFORM` and `ARRAY_FILTER`; `TRANSFORM`, `FILTER` and `REDUCE`
//!   of a map the same over the map's entries;
//! - `EXPLODE(a)` is DataFusion's `UNNEST(a)`, `CUBE_EXPLODE(a)` `UNNEST(KSQL_CUBE(a))`;
//! - `CAST(x AS T)` to a BOOLEAN, VARCHAR, MAP or STRUCT calls `KSQL_CAST(x, 'T')`, which casts by
//!   ksqlDB's rules ([`crate::functions::scalar::cast`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    ArrayElemTypeDef, DataType as SqlType, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, Ident, ObjectName, Query, Value,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

/// Functions whose first argument is a time unit written as a bare word.
const UNIT_FIRST: &[&str] = &[
    "dateadd",
    "datesub",
    "timeadd",
    "timesub",
    "timestampadd",
    "timestampsub",
];

fn is_word(t: &Token, w: &str) -> bool {
    matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
}

fn blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// Index of the next token at or after `i` that is not whitespace.
fn next_solid(tokens: &[TokenWithSpan], mut i: usize) -> Option<usize> {
    while i < tokens.len() {
        if !blank(&tokens[i].token) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Index of the parenthesis closing the one at `open`.
fn closing(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits at top-level commas.
fn split_args(tokens: &[TokenWithSpan]) -> Vec<Vec<TokenWithSpan>> {
    let mut out = vec![Vec::new()];
    let mut depth = 0i32;
    for t in tokens {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => {
                out.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(t.clone());
        }
    }
    out
}

/// `name := value` at the top level of one argument.
fn assignment(arg: &[TokenWithSpan]) -> Option<(Vec<TokenWithSpan>, Vec<TokenWithSpan>)> {
    let mut depth = 0i32;
    for (i, t) in arg.iter().enumerate() {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Assignment if depth == 0 => {
                return Some((arg[..i].to_vec(), arg[i + 1..].to_vec()));
            }
            _ => {}
        }
    }
    None
}

/// Rewrites the token-level forms (constructors, `MAP<K, V>` types, lambdas).
pub fn tokens(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    lambdas(constructors(angle_maps(tokens)))
}

/// The placeholder call a lambda `x => body` becomes on the tokens
/// (`KSQL_LAMBDA('x', body)`), made a lambda again on the tree: sqlparser's generic dialect
/// reads no lambdas.
const LAMBDA: &str = "ksql_lambda";

/// Rewrites each lambda `x => body` or `(x, y) => body` into `KSQL_LAMBDA('x', 'y', body)`.
fn lambdas(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    while let Some(arrow) = tokens.iter().position(|t| t.token == Token::RArrow) {
        let span = tokens[arrow].span;
        let tok = |token: Token| TokenWithSpan::new(token, span);
        // The parameters: one name, or names in parentheses, before the arrow.
        let Some(last) = tokens[..arrow].iter().rposition(|t| !blank(&t.token)) else {
            break;
        };
        let (start, params): (usize, Vec<String>) = match &tokens[last].token {
            Token::Word(w) => (last, vec![w.value.clone()]),
            Token::RParen => {
                let mut depth = 0;
                let mut open = None;
                for i in (0..=last).rev() {
                    match tokens[i].token {
                        Token::RParen => depth += 1,
                        Token::LParen => {
                            depth -= 1;
                            if depth == 0 {
                                open = Some(i);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(open) = open else { break };
                let names = tokens[open + 1..last]
                    .iter()
                    .filter_map(|t| match &t.token {
                        Token::Word(w) => Some(w.value.clone()),
                        _ => None,
                    })
                    .collect();
                (open, names)
            }
            // Not a lambda: leave `=>` for the parser to point at.
            _ => break,
        };
        // The body: up to the comma or parenthesis that ends the argument.
        let mut depth = 0i32;
        let mut end = tokens.len();
        for (i, t) in tokens.iter().enumerate().skip(arrow + 1) {
            match t.token {
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen | Token::RBracket if depth == 0 => {
                    end = i;
                    break;
                }
                Token::RParen | Token::RBracket => depth -= 1,
                Token::Comma if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let mut call = vec![tok(Token::make_word(LAMBDA, None)), tok(Token::LParen)];
        for p in params {
            call.push(tok(Token::SingleQuotedString(p)));
            call.push(tok(Token::Comma));
        }
        call.extend(tokens[arrow + 1..end].iter().cloned());
        call.push(tok(Token::RParen));
        tokens.splice(start..end, call);
    }
    tokens
}

fn constructors(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let kind = if is_word(&t.token, "STRUCT") {
            Some(true)
        } else if is_word(&t.token, "MAP") {
            Some(false)
        } else {
            None
        };
        let open = next_solid(&tokens, i + 1).filter(|&o| tokens[o].token == Token::LParen);
        if let (Some(is_struct), Some(open)) = (kind, open) {
            if let Some(close) = closing(&tokens, open) {
                let args = split_args(&tokens[open + 1..close]);
                let pairs: Option<Vec<_>> = args.iter().map(|a| assignment(a)).collect();
                if let Some(pairs) = pairs.filter(|p| !p.is_empty()) {
                    let span = t.span;
                    let tok = |token: Token| TokenWithSpan::new(token, span);
                    if is_struct {
                        out.push(t.clone());
                        out.push(tok(Token::LParen));
                        for (n, (name, value)) in pairs.into_iter().enumerate() {
                            if n > 0 {
                                out.push(tok(Token::Comma));
                            }
                            out.extend(constructors(value));
                            out.push(tok(Token::make_keyword("AS")));
                            let name: Vec<&TokenWithSpan> =
                                name.iter().filter(|t| !blank(&t.token)).collect();
                            match name.as_slice() {
                                [
                                    TokenWithSpan {
                                        token: Token::Word(w),
                                        ..
                                    },
                                ] => {
                                    let folded = crate::query::ident_name(&Ident {
                                        value: w.value.clone(),
                                        quote_style: w.quote_style,
                                        span,
                                    });
                                    out.push(tok(Token::make_word(&folded, Some('"'))));
                                }
                                // Not a name: leave it for the parser to point at.
                                other => out.extend(other.iter().map(|t| (*t).clone())),
                            }
                        }
                        out.push(tok(Token::RParen));
                    } else {
                        out.push(tok(Token::make_word("AS_MAP", None)));
                        out.push(tok(Token::LParen));
                        for (side, pick) in [true, false].into_iter().enumerate() {
                            if side > 0 {
                                out.push(tok(Token::Comma));
                            }
                            out.push(tok(Token::make_keyword("ARRAY")));
                            out.push(tok(Token::LBracket));
                            for (n, (k, v)) in pairs.iter().enumerate() {
                                if n > 0 {
                                    out.push(tok(Token::Comma));
                                }
                                out.extend(constructors(if pick { k.clone() } else { v.clone() }));
                            }
                            out.push(tok(Token::RBracket));
                        }
                        out.push(tok(Token::RParen));
                    }
                    i = close + 1;
                    continue;
                }
            }
        }
        out.push(t.clone());
        i += 1;
    }
    out
}

/// `MAP<K, V>` after `MAP`, `ARRAY` or `STRUCT` `<` becomes `MAP(K, V)`; `>>` inside such
/// a type is two closings.
fn angle_maps(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    // For each open `<` of a type: whether it belongs to a MAP.
    let mut open: Vec<bool> = Vec::new();
    let type_word = |out: &[TokenWithSpan]| -> Option<bool> {
        let last = out.iter().rev().find(|t| !blank(&t.token))?;
        if is_word(&last.token, "MAP") {
            Some(true)
        } else if is_word(&last.token, "ARRAY") || is_word(&last.token, "STRUCT") {
            Some(false)
        } else {
            None
        }
    };
    for t in tokens {
        match &t.token {
            Token::Lt => match type_word(&out) {
                Some(is_map) => {
                    open.push(is_map);
                    let token = if is_map { Token::LParen } else { Token::Lt };
                    out.push(TokenWithSpan::new(token, t.span));
                }
                None => out.push(t),
            },
            Token::Gt if !open.is_empty() => {
                let is_map = open.pop().unwrap_or(false);
                let token = if is_map { Token::RParen } else { Token::Gt };
                out.push(TokenWithSpan::new(token, t.span));
            }
            Token::ShiftRight if !open.is_empty() => {
                for _ in 0..2 {
                    let is_map = open.pop().unwrap_or(false);
                    let token = if is_map { Token::RParen } else { Token::Gt };
                    out.push(TokenWithSpan::new(token, t.span));
                }
            }
            _ => out.push(t),
        }
    }
    out
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// Whether a CAST to `t` follows rules of ksqlDB's that arrow's cast lacks (see
/// [`crate::functions::scalar::cast`]).
fn ksql_cast(t: &SqlType) -> bool {
    match t {
        SqlType::Boolean | SqlType::Bool | SqlType::Map(..) | SqlType::Struct(..) => true,
        // How a DOUBLE and a TIMESTAMP read as text.
        SqlType::Varchar(_) | SqlType::String(_) | SqlType::Text | SqlType::CharVarying(_) => true,
        SqlType::Array(
            ArrayElemTypeDef::AngleBracket(inner)
            | ArrayElemTypeDef::SquareBracket(inner, _)
            | ArrayElemTypeDef::Parenthesis(inner),
        ) => ksql_cast(inner),
        _ => false,
    }
}

fn rewrite(e: &mut Expr) {
    match e {
        Expr::Cast {
            expr, data_type, ..
        } if ksql_cast(data_type) => {
            let target = Expr::value(Value::SingleQuotedString(data_type.to_string()));
            *e = call(
                crate::functions::scalar::cast::NAME,
                vec![(**expr).clone(), target],
            );
        }
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let mut args = vec![(**expr).clone()];
            args.push(
                substring_from
                    .as_deref()
                    .cloned()
                    .unwrap_or(Expr::value(Value::Number("1".into(), false))),
            );
            args.extend(substring_for.as_deref().cloned());
            *e = call("substring", args);
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            if name == LAMBDA {
                if let Some(lambda) = lambda(f) {
                    *e = lambda;
                }
                return;
            }
            if name == "transform" || name == "filter" || name == "reduce" {
                if let Some(over_map) = map_lambda(&name, f) {
                    *e = over_map;
                    return;
                }
            }
            // ksqlDB's lambda functions over arrays are DataFusion's higher-order functions.
            let higher_order = match name.as_str() {
                "transform" => Some("array_transform"),
                "filter" => Some("array_filter"),
                _ => None,
            };
            if let Some(df) = higher_order {
                f.name = ObjectName::from(vec![Ident::new(df)]);
                return;
            }
            if name == "explode" {
                // DataFusion's UNNEST is ksqlDB's EXPLODE (see `operators::explode`).
                f.name = ObjectName::from(vec![Ident::new("unnest")]);
                return;
            }
            if name == "cube_explode" {
                let args = plain_args(f);
                *e = call("unnest", vec![call("ksql_cube", args)]);
                return;
            }
            if !UNIT_FIRST.contains(&name.as_str()) {
                return;
            }
            if let FunctionArguments::List(list) = &mut f.args {
                if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(first))) =
                    list.args.first_mut()
                {
                    if let Expr::Identifier(unit) = first {
                        *first = Expr::value(Value::SingleQuotedString(unit.value.clone()));
                    }
                }
            }
        }
        _ => {}
    }
}

/// The unnamed arguments of a call.
fn plain_args(f: &Function) -> Vec<Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `TRANSFORM(map, (k, v) => key, (k, v) => value)` and `FILTER(map, (k, v) => keep)` over
/// the map's entries (`ENTRIES(map, false)`, structs `K`, `V`) with DataFusion's array
/// functions: `AS_MAP(ARRAY_TRANSFORM(entries, e => key), ARRAY_TRANSFORM(entries, e =>
/// value))`, `k` and `v` in the bodies read as `e['K']` and `e['V']`.
fn map_lambda(name: &str, f: &Function) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::{
        LambdaFunction, LambdaFunctionParameter, LambdaSyntax, OneOrManyWithParens,
    };
    let args = plain_args(f);
    let two_params = |e: &Expr| -> Option<(String, String, Expr)> {
        let Expr::Lambda(l) = e else { return None };
        let OneOrManyWithParens::Many(p) = &l.params else {
            return None;
        };
        match p.as_slice() {
            [k, v] => Some((
                k.name.value.clone(),
                v.name.value.clone(),
                (*l.body).clone(),
            )),
            _ => None,
        }
    };
    let entry = Ident::with_quote('"', "__ENTRY");
    // A body over `k`, `v` as a lambda over one entry.
    let over_entry = |(k, v, mut body): (String, String, Expr)| -> Expr {
        let _ = visit_expressions_mut(&mut body, |x| {
            if let Expr::Identifier(i) = x {
                let n = crate::query::ident_name(i);
                let field = if n == k {
                    Some("K")
                } else if n == v {
                    Some("V")
                } else {
                    None
                };
                if let Some(field) = field {
                    *x = call(
                        "get_field",
                        vec![
                            Expr::Identifier(entry.clone()),
                            Expr::value(Value::SingleQuotedString(field.into())),
                        ],
                    );
                }
            }
            ControlFlow::<()>::Continue(())
        });
        Expr::Lambda(LambdaFunction {
            params: OneOrManyWithParens::One(LambdaFunctionParameter {
                name: entry.clone(),
                data_type: None,
            }),
            body: Box::new(body),
            syntax: LambdaSyntax::Arrow,
        })
    };
    let field_of = |field: &str| {
        (
            "__K".to_string(),
            "__V".to_string(),
            Expr::Identifier(Ident::new(if field == "K" { "__K" } else { "__V" })),
        )
    };
    let entries = |m: &Expr| {
        call(
            "entries",
            vec![m.clone(), Expr::value(Value::Boolean(false))],
        )
    };
    match (name, args.as_slice()) {
        ("transform", [m, key, value]) => {
            let (key, value) = (two_params(key)?, two_params(value)?);
            Some(call(
                "as_map",
                vec![
                    call("array_transform", vec![entries(m), over_entry(key)]),
                    call("array_transform", vec![entries(m), over_entry(value)]),
                ],
            ))
        }
        ("filter", [m, keep]) => {
            let kept = call(
                "array_filter",
                vec![entries(m), over_entry(two_params(keep)?)],
            );
            Some(call(
                "as_map",
                vec![
                    call(
                        "array_transform",
                        vec![kept.clone(), over_entry(field_of("K"))],
                    ),
                    call("array_transform", vec![kept, over_entry(field_of("V"))]),
                ],
            ))
        }
        ("reduce", [m, state, fold]) => {
            // (s, k, v) => body over entries: (s, e) => body with k, v read from e.
            let Expr::Lambda(l) = fold else { return None };
            let OneOrManyWithParens::Many(p) = &l.params else {
                return None;
            };
            let [s, k, v] = p.as_slice() else { return None };
            let Expr::Lambda(mut over) = over_entry((
                k.name.value.clone(),
                v.name.value.clone(),
                (*l.body).clone(),
            )) else {
                return None;
            };
            let OneOrManyWithParens::One(e) = over.params else {
                return None;
            };
            over.params = OneOrManyWithParens::Many(vec![s.clone(), e]);
            Some(call(
                "reduce",
                vec![entries(m), state.clone(), Expr::Lambda(over)],
            ))
        }
        _ => None,
    }
}

/// The lambda a `KSQL_LAMBDA('x', ..., body)` placeholder stands for.
fn lambda(f: &Function) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::{
        LambdaFunction, LambdaFunctionParameter, LambdaSyntax, OneOrManyWithParens,
    };
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let mut args: Vec<Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let body = args.pop()?;
    let params = args
        .iter()
        .map(|a| match a {
            Expr::Value(v) => match &v.value {
                // Folded as the body's identifiers are.
                Value::SingleQuotedString(name) => Some(LambdaFunctionParameter {
                    name: Ident::with_quote('"', crate::query::ident_name(&Ident::new(name))),
                    data_type: None,
                }),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Expr::Lambda(LambdaFunction {
        params: if params.len() == 1 {
            OneOrManyWithParens::One(params.into_iter().next()?)
        } else {
            OneOrManyWithParens::Many(params)
        },
        body: Box::new(body),
        syntax: LambdaSyntax::Arrow,
    }))
}

/// Rewrites the tree-level forms in a query.
pub fn query(q: &mut Query) {
    let _ = visit_expressions_mut(q, |e| {
        rewrite(e);
        ControlFlow::<()>::Continue(())
    });
}

/// Rewrites the tree-level forms in an expression.
pub fn expr(e: &mut Expr) {
    let _ = visit_expressions_mut(e, |e| {
        rewrite(e);
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;

    fn rewritten(sql: &str) -> String {
        let input = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .unwrap();
        tokens(input).iter().map(|t| t.token.to_string()).collect()
    }

    #[test]
    fn constructors_and_map_types() {
        let squeezed = |s: &str| s.replace(' ', "");
        assert_eq!(
            squeezed(&rewritten("STRUCT(a := 1, \"B\" := MAP('k' := 2))")),
            squeezed("STRUCT(1 AS \"A\", AS_MAP(ARRAY['k'], ARRAY[2]) AS \"B\")")
        );
        assert_eq!(
            rewritten("CAST(x AS ARRAY<MAP<VARCHAR, INT>>) > 1"),
            "CAST(x AS ARRAY<MAP(VARCHAR, INT)>) > 1"
        );
        assert_eq!(rewritten("a < b AND c > d"), "a < b AND c > d");
        assert_eq!(
            squeezed(&rewritten("TRANSFORM(a, x => x + 1, (k, v) => f(k, v))")),
            squeezed("TRANSFORM(a, ksql_lambda('x', x + 1), ksql_lambda('k', 'v', f(k, v)))")
        );
    }
}
