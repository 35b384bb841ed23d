//! The parser of Sluice's KSQL-like dialect.
//!
//! The text is tokenized once by `sqlparser`; KSQL's own clauses (`CREATE STREAM`, `WITH (...)`
//! properties, `WINDOW TUMBLING (...)`, `EMIT CHANGES`, `SHOW`, `TERMINATE`, ...) are parsed
//! here from the tokens, and what is standard SQL (SELECT bodies, expressions, types) is handed
//! to `sqlparser` as tokens, so every error keeps the line and column of the original text.
//!
//! Unquoted identifiers are folded to upper case, as ksqlDB (and standard SQL) does, once for
//! every token ([`fold_identifiers`]); quoted ones (`"Name"` or `` `Name` ``) keep their case.
//!
//! Expression depth is bounded ([`MAX_EXPR_DEPTH`]) three ways, because parsing, planning,
//! evaluating and even dropping a syntax tree recurse once per level and a deep enough
//! statement would overflow the stack of the thread running it (aborting the worker):
//! the token stream is checked before any tree is built (a left-associative chain such as
//! `1+1+1...` parses in a loop but yields a left-deep tree), sqlparser's recursion limit
//! bounds what recurses while parsing (parentheses, `CASE`, subqueries), and the parsed tree
//! is measured with a visitor that stops as soon as it passes the limit.

use std::ops::ControlFlow;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use crate::ast::{
    ColumnDef, Emit, JoinWithin, PartitionBy, Properties, PropertyValue, Select, ShowWhat,
    SourceKind, Statement, WindowKind, WindowSpec,
};
use crate::error::{Result, SqlError};

/// How many levels one expression may nest. An operator chained in an expression and a
/// parenthesis opened around it each count one level (`1+1+1` is two levels, `((1))` three).
/// Each level costs stack in the parser, DataFusion's planner, evaluation and the drop of
/// the tree, and worker threads have stacks of 2 MiB: a test runs statements just under the
/// limit on a 2 MiB thread in a debug build. Real queries stay far below it (a long `OR`
/// chain of equalities is an `IN` list, a long sum is `SUM` over rows).
pub const MAX_EXPR_DEPTH: usize = 256;

/// sqlparser's own recursion limit (its default is 50): above [`MAX_EXPR_DEPTH`] so that
/// the token check, which says where, fires first for parentheses; it still bounds what
/// nests without tokens the check counts (`CASE` in `CASE`).
const PARSER_RECURSION_LIMIT: usize = MAX_EXPR_DEPTH + 16;

/// True for tokens that combine expressions (operators and the keywords that act as
/// operators): each can add a level to the tree without a parenthesis.
fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) if w.quote_style.is_none() => [
            "AND", "OR", "XOR", "NOT", "IS", "IN", "LIKE", "ILIKE", "RLIKE", "REGEXP", "SIMILAR",
            "BETWEEN", "COLLATE", "AT", "OVERLAPS", "DIV",
        ]
        .iter()
        .any(|k| w.value.eq_ignore_ascii_case(k)),
        Token::Word(_)
        | Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::LParen
        | Token::RParen
        | Token::LBracket
        | Token::RBracket
        | Token::LBrace
        | Token::RBrace
        | Token::Period
        | Token::Colon
        | Token::SemiColon => false,
        _ => true,
    }
}

/// Keywords that end the expression before them and never continue an operator chain
/// (unlike `FROM`, which `IS DISTINCT FROM` continues, or `AND` in `BETWEEN`).
fn ends_expression(word: &str) -> bool {
    [
        "SELECT", "WHERE", "HAVING", "GROUP", "ORDER", "LIMIT", "AS", "WINDOW", "EMIT", "VALUES",
        "ON", "JOIN", "WITHIN",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// Refuses a statement whose tokens already nest deeper than [`MAX_EXPR_DEPTH`], before
/// any tree is built (building, and dropping, a 100,000-deep tree would overflow the stack).
///
/// The estimate is an upper bound of the depth of the tree sqlparser builds: a path from
/// the root of an expression to a leaf passes at most through every operator of that
/// expression, then into one parenthesized group (or `CASE`) inside it. So each open group
/// keeps the operators of its current expression (since its last comma, `WHEN`/`THEN`/`ELSE`
/// in a `CASE`, or a keyword that ends an expression) and the deepest group closed inside
/// that expression, and the estimate is their sum over the open groups.
fn check_token_nesting(tokens: &[TokenWithSpan]) -> Result<()> {
    /// An open parenthesis (or `CASE`) and its current expression.
    #[derive(Default)]
    struct Level {
        /// Operators of the current expression.
        ops: usize,
        /// Depth of the deepest group closed in the current expression.
        inner: usize,
        /// Opened by `CASE` (closed by `END`).
        case: bool,
    }
    impl Level {
        fn weight(&self) -> usize {
            self.ops + self.inner
        }
    }
    // The first level is the statement itself. depth = levels.len() - 1 + their weights.
    let mut levels = vec![Level::default()];
    let mut depth = 0usize;
    for t in tokens {
        let case_open = levels.last().is_some_and(|l| l.case);
        let word = match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.as_str()),
            _ => None,
        };
        let is = |k: &str| word.is_some_and(|w| w.eq_ignore_ascii_case(k));
        let mut close = false;
        let mut separator = false;
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                levels.push(Level::default());
                depth += 1;
            }
            _ if is("CASE") => {
                levels.push(Level {
                    case: true,
                    ..Level::default()
                });
                depth += 1;
            }
            Token::RParen | Token::RBracket | Token::RBrace => close = true,
            _ if case_open && is("END") => close = true,
            _ if case_open && (is("WHEN") || is("THEN") || is("ELSE")) => separator = true,
            Token::Comma => separator = true,
            _ if word.is_some_and(ends_expression) => separator = true,
            other if is_operator(other) => {
                if let Some(top) = levels.last_mut() {
                    top.ops += 1;
                    depth += 1;
                }
            }
            _ => {}
        }
        if separator {
            if let Some(top) = levels.last_mut() {
                depth -= top.weight();
                top.ops = 0;
                top.inner = 0;
            }
        }
        // A closing parenthesis also closes a `CASE` left open inside it (a syntax error
        // the parser reports); the group becomes an operand of the expression around it.
        while close && levels.len() > 1 {
            let Some(l) = levels.pop() else { break };
            depth -= l.weight() + 1;
            close = l.case && !matches!(t.token, Token::Word(_));
            if let Some(parent) = levels.last_mut() {
                let group = l.weight() + 1;
                if group > parent.inner {
                    depth += group - parent.inner;
                    parent.inner = group;
                }
            }
        }
        if depth > MAX_EXPR_DEPTH {
            return Err(SqlError::TooDeep {
                what: "nested operators and parentheses in one expression",
                limit: MAX_EXPR_DEPTH,
                line: t.span.start.line,
                column: t.span.start.column,
            });
        }
    }
    Ok(())
}

/// Measures a parsed tree's expression (and subquery) nesting, stopping as soon as it
/// passes [`MAX_EXPR_DEPTH`], so its own recursion stays bounded.
#[derive(Default)]
struct DepthCheck {
    depth: usize,
    /// Queries entered: the statement's own does not count as a level, subqueries do.
    queries: usize,
}

impl DepthCheck {
    fn enter(&mut self, at: Option<Location>) -> ControlFlow<Option<Location>> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            ControlFlow::Break(at)
        } else {
            ControlFlow::Continue(())
        }
    }

    fn leave(&mut self) -> ControlFlow<Option<Location>> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

impl Visitor for DepthCheck {
    type Break = Option<Location>;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Self::Break> {
        self.enter(leftmost_location(expr))
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<Self::Break> {
        self.leave()
    }

    fn pre_visit_query(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<Self::Break> {
        self.queries += 1;
        if self.queries > 1 {
            self.enter(None)
        } else {
            ControlFlow::Continue(())
        }
    }

    fn post_visit_query(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Query,
    ) -> ControlFlow<Self::Break> {
        self.queries = self.queries.saturating_sub(1);
        if self.queries > 0 {
            self.leave()
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Where an expression starts, found by walking down its left side in a loop (sqlparser's
/// `Spanned` recurses through the whole subtree, which is what must not happen here).
fn leftmost_location(mut e: &Expr) -> Option<Location> {
    for _ in 0..=PARSER_RECURSION_LIMIT + MAX_EXPR_DEPTH {
        e = match e {
            Expr::Identifier(i) => return known(i.span.start),
            Expr::CompoundIdentifier(ids) => return ids.first().and_then(|i| known(i.span.start)),
            Expr::Value(v) => return known(v.span.start),
            Expr::BinaryOp { left, .. } => left.as_ref(),
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr)
            | Expr::Cast { expr, .. }
            | Expr::Like { expr, .. }
            | Expr::ILike { expr, .. }
            | Expr::Between { expr, .. }
            | Expr::InList { expr, .. } => expr.as_ref(),
            _ => return None,
        };
    }
    None
}

fn known(l: Location) -> Option<Location> {
    (l.line > 0).then_some(l)
}

/// Refuses a parsed tree deeper than [`MAX_EXPR_DEPTH`]; `at` is where it starts.
fn check_depth<T: Visit>(tree: &T, at: Location) -> Result<()> {
    match tree.visit(&mut DepthCheck::default()) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(where_) => {
            let l = where_.unwrap_or(at);
            Err(SqlError::TooDeep {
                what: "nested levels",
                limit: MAX_EXPR_DEPTH,
                line: l.line,
                column: l.column,
            })
        }
    }
}

/// Parses one or more `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::syntax(e.message.clone(), e.location.line, e.location.column))?;
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0i32;
    for t in fold_identifiers(tokens) {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                if !current.is_empty() {
                    statements.push(parse_tokens(std::mem::take(&mut current))?);
                }
                continue;
            }
            _ => {}
        }
        current.push(t);
    }
    if !current.is_empty() {
        statements.push(parse_tokens(current)?);
    }
    Ok(statements)
}

/// Folds every unquoted word to upper case, as ksqlDB does: names of streams, tables,
/// columns, aliases and struct fields written without quotes are case-insensitive, and the
/// folded spelling is the name (`zone` and `Zone` are both the column `ZONE`, and the output
/// field is `"ZONE"`). Keywords and function names are case-insensitive anyway; quoted words
/// keep their case. Done once on the token stream, so every later stage (this parser,
/// sqlparser, DataFusion with its own normalization off) sees one spelling.
fn fold_identifiers(tokens: Vec<TokenWithSpan>) -> impl Iterator<Item = TokenWithSpan> {
    tokens.into_iter().map(|mut t| {
        if let Token::Word(w) = &mut t.token {
            if w.quote_style.is_none() {
                w.value = w.value.to_uppercase();
            }
        }
        t
    })
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str) -> Result<Statement> {
    let mut all = parse(sql)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(SqlError::syntax(
            "expected a statement, found nothing",
            1,
            1,
        )),
        n => Err(SqlError::Invalid(format!(
            "expected one statement, found {n}"
        ))),
    }
}

/// Converts a `sqlparser` error, whose message ends with "at Line: L, Column: C".
fn parser_error(e: ParserError, fallback: Location) -> SqlError {
    if e == ParserError::RecursionLimitExceeded {
        return SqlError::TooDeep {
            what: "nested levels",
            limit: PARSER_RECURSION_LIMIT,
            line: fallback.line,
            column: fallback.column,
        };
    }
    let msg = e.to_string();
    let number_after = |label: &str| -> Option<u64> {
        let i = msg.rfind(label)? + label.len();
        msg[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let (line, column) = match (number_after("Line: "), number_after("Column: ")) {
        (Some(l), Some(c)) if l > 0 => (l, c),
        _ => (fallback.line, fallback.column),
    };
    let message = match msg.rfind(" at Line: ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let message = message.trim_start_matches("sql parser error: ").to_string();
    SqlError::syntax(message, line, column)
}

/// A cursor over the tokens of one statement.
struct Cursor {
    tokens: Vec<TokenWithSpan>,
    pos: usize,
}

fn is_word(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn describe(t: &Token) -> String {
    match t {
        Token::EOF => "the end of the statement".into(),
        other => format!("'{other}'"),
    }
}

impl Cursor {
    fn new(tokens: Vec<TokenWithSpan>) -> Self {
        Cursor { tokens, pos: 0 }
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).map_or(&Token::EOF, |t| &t.token)
    }

    fn peek_at(&self, n: usize) -> &Token {
        self.tokens
            .get(self.pos + n)
            .map_or(&Token::EOF, |t| &t.token)
    }

    /// Where the next token starts (or where the statement ends).
    fn location(&self) -> Location {
        match self.tokens.get(self.pos) {
            Some(t) => t.span.start,
            None => self
                .tokens
                .last()
                .map_or(Location::new(1, 1), |t| t.span.end),
        }
    }

    fn error(&self, expected: &str) -> SqlError {
        let loc = self.location();
        SqlError::syntax(
            format!("expected {expected}, found {}", describe(self.peek())),
            loc.line,
            loc.column,
        )
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn at_word(&self, word: &str) -> bool {
        is_word(self.peek(), word)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.at_word(word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_words(&mut self, words: &[&str]) -> bool {
        if words
            .iter()
            .enumerate()
            .all(|(i, w)| is_word(self.peek_at(i), w))
        {
            self.pos += words.len();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<()> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.error(word))
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == token {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &Token) -> Result<()> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("'{token}'")))
        }
    }

    /// An identifier (already folded by [`fold_identifiers`]).
    fn ident(&mut self, what: &str) -> Result<String> {
        match self.peek().clone() {
            Token::Word(w) => {
                self.pos += 1;
                Ok(w.value)
            }
            _ => Err(self.error(what)),
        }
    }

    fn expect_end(&self) -> Result<()> {
        if self.pos >= self.tokens.len() {
            Ok(())
        } else {
            Err(self.error("the end of the statement"))
        }
    }

    /// The remaining tokens.
    fn rest(&mut self) -> Vec<TokenWithSpan> {
        let rest = self.tokens.split_off(self.pos.min(self.tokens.len()));
        self.pos = self.tokens.len();
        rest
    }

    /// Tokens inside the parenthesis that starts here, split at top-level commas; the cursor
    /// moves past the closing parenthesis.
    fn parenthesized_list(&mut self) -> Result<Vec<Vec<TokenWithSpan>>> {
        self.list(false)
    }

    /// Like [`Cursor::parenthesized_list`], for column definitions: commas inside `<...>`
    /// (as in `MAP<VARCHAR, INT>`) do not split.
    fn type_list(&mut self) -> Result<Vec<Vec<TokenWithSpan>>> {
        self.list(true)
    }

    fn list(&mut self, angles: bool) -> Result<Vec<Vec<TokenWithSpan>>> {
        self.expect(&Token::LParen)?;
        let mut items = vec![Vec::new()];
        let mut depth = 0;
        let mut angle = 0i32;
        loop {
            let Some(t) = self.tokens.get(self.pos).cloned() else {
                return Err(self.error("')'"));
            };
            self.pos += 1;
            match t.token {
                // `ARRAY[1, 2]` is one item.
                Token::LParen | Token::LBracket => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen | Token::RBracket => depth -= 1,
                Token::Lt if angles => angle += 1,
                Token::Gt if angles => angle -= 1,
                Token::ShiftRight if angles => angle -= 2,
                Token::Comma if depth == 0 && angle <= 0 => {
                    items.push(Vec::new());
                    continue;
                }
                _ => {}
            }
            if let Some(last) = items.last_mut() {
                last.push(t);
            }
        }
        if items.len() == 1 && items[0].is_empty() {
            items.clear();
        }
        Ok(items)
    }
}

fn sql_parser(tokens: Vec<TokenWithSpan>) -> Parser<'static> {
    static DIALECT: GenericDialect = GenericDialect {};
    Parser::new(&DIALECT)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
}

/// Where `tokens` end: errors at the end of input have no position of their own.
fn end_of(tokens: &[TokenWithSpan], at: Location) -> Location {
    tokens.last().map_or(at, |t| t.span.end)
}

/// Parses all of `tokens` as a standard SQL query (SELECT ...).
fn parse_query(
    tokens: Vec<TokenWithSpan>,
    at: Location,
) -> Result<Box<datafusion::sql::sqlparser::ast::Query>> {
    let at = end_of(&tokens, at);
    let mut p = sql_parser(tokens);
    let start = p.peek_token().span.start;
    let q = p.parse_query().map_err(|e| parser_error(e, at))?;
    check_depth(&q, start)?;
    let next = p.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::syntax(
            format!(
                "expected the end of the query, found {}",
                describe(&next.token)
            ),
            next.span.start.line,
            next.span.start.column,
        ));
    }
    Ok(q)
}

/// Parses all of `tokens` as one expression.
fn parse_expr(tokens: Vec<TokenWithSpan>, at: Location) -> Result<Expr> {
    let at = end_of(&tokens, at);
    let mut p = sql_parser(tokens);
    let start = p.peek_token().span.start;
    let e = p.parse_expr().map_err(|e| parser_error(e, at))?;
    check_depth(&e, start)?;
    let next = p.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::syntax(
            format!(
                "expected the end of the expression, found {}",
                describe(&next.token)
            ),
            next.span.start.line,
            next.span.start.column,
        ));
    }
    Ok(e)
}

fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    check_token_nesting(&tokens)?;
    let mut c = Cursor::new(tokens);
    let stmt = if c.at_word("CREATE") {
        parse_create(&mut c)?
    } else if c.at_word("SELECT") || c.at_word("WITH") || c.peek() == &Token::LParen {
        let at = c.location();
        Statement::Select(parse_select(c.rest(), at)?)
    } else if c.eat_word("INSERT") {
        parse_insert(&mut c)?
    } else if c.eat_word("SHOW") || c.eat_word("LIST") {
        let what = if c.eat_word("STREAMS") {
            ShowWhat::Streams
        } else if c.eat_word("TABLES") {
            ShowWhat::Tables
        } else if c.eat_word("QUERIES") {
            ShowWhat::Queries
        } else if c.eat_word("TOPICS") {
            ShowWhat::Topics
        } else {
            return Err(c.error("STREAMS, TABLES, QUERIES or TOPICS"));
        };
        Statement::Show(what)
    } else if c.eat_word("DESCRIBE") {
        let extended = c.eat_word("EXTENDED");
        Statement::Describe {
            name: c.ident("a stream or table name")?,
            extended,
        }
    } else if c.eat_word("DROP") {
        let kind = parse_kind(&mut c)?;
        let if_exists = c.eat_words(&["IF", "EXISTS"]);
        let name = c.ident("a name")?;
        let delete_topic = c.eat_words(&["DELETE", "TOPIC"]);
        Statement::Drop {
            kind,
            name,
            if_exists,
            delete_topic,
        }
    } else if c.eat_word("TERMINATE") {
        if c.eat_word("ALL") {
            Statement::Terminate { query_id: None }
        } else {
            Statement::Terminate {
                query_id: Some(c.ident("a query id or ALL")?),
            }
        }
    } else if c.eat_word("EXPLAIN") {
        Statement::Explain(Box::new(parse_tokens(c.rest())?))
    } else {
        return Err(c.error(
            "a statement (CREATE, INSERT, SELECT, SHOW, DESCRIBE, DROP, TERMINATE or EXPLAIN)",
        ));
    };
    c.expect_end()?;
    Ok(stmt)
}

fn parse_kind(c: &mut Cursor) -> Result<SourceKind> {
    if c.eat_word("STREAM") {
        Ok(SourceKind::Stream)
    } else if c.eat_word("TABLE") {
        Ok(SourceKind::Table)
    } else {
        Err(c.error("STREAM or TABLE"))
    }
}

fn parse_create(c: &mut Cursor) -> Result<Statement> {
    c.expect_word("CREATE")?;
    let or_replace = c.eat_words(&["OR", "REPLACE"]);
    let kind = parse_kind(c)?;
    let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
    let name = c.ident("a name")?;
    let columns = if c.peek() == &Token::LParen {
        parse_columns(c, kind)?
    } else {
        Vec::new()
    };
    let properties = if c.eat_word("WITH") {
        parse_properties(c)?
    } else {
        Properties::new()
    };
    if c.eat_word("AS") {
        if !columns.is_empty() {
            return Err(SqlError::Invalid(format!(
                "{kind} {name}: declare columns or AS SELECT, not both (the query decides the columns)"
            )));
        }
        let at = c.location();
        let select = parse_select(c.rest(), at)?;
        return Ok(Statement::CreateAs {
            kind,
            name,
            properties,
            select,
            if_not_exists,
            or_replace,
        });
    }
    if columns.is_empty() {
        return Err(c.error("a column list '(...)' or AS SELECT"));
    }
    Ok(Statement::CreateSource {
        kind,
        name,
        columns,
        properties,
        if_not_exists,
        or_replace,
    })
}

fn parse_columns(c: &mut Cursor, kind: SourceKind) -> Result<Vec<ColumnDef>> {
    let at = c.location();
    let items = c.type_list()?;
    if items.is_empty() {
        return Err(SqlError::syntax(
            "a column list needs at least one column",
            at.line,
            at.column,
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let start = item.first().map_or(at, |t| t.span.start);
        let mut col = Cursor::new(item);
        let name = col.ident("a column name")?;
        // An empty name or one with control characters cannot be a JSON field a reader
        // matches (and "" would fail only later, when a query's schema is recorded).
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(SqlError::syntax(
                format!("column name {name:?}: a name is not empty and has no control characters"),
                start.line,
                start.column,
            ));
        }
        let mut tokens = col.rest();
        // Trailing KEY / PRIMARY KEY are ours; the rest is a SQL type.
        let mut key = false;
        let n = tokens.len();
        if n >= 2
            && is_word(&tokens[n - 2].token, "PRIMARY")
            && is_word(&tokens[n - 1].token, "KEY")
        {
            tokens.truncate(n - 2);
            key = true;
            if kind == SourceKind::Stream {
                return Err(SqlError::syntax(
                    format!("column {name}: streams declare their key with KEY, not PRIMARY KEY"),
                    start.line,
                    start.column,
                ));
            }
        } else if n >= 1 && is_word(&tokens[n - 1].token, "KEY") {
            tokens.truncate(n - 1);
            key = true;
            if kind == SourceKind::Table {
                return Err(SqlError::syntax(
                    format!("column {name}: tables declare their key with PRIMARY KEY"),
                    start.line,
                    start.column,
                ));
            }
        }
        if tokens.is_empty() {
            return Err(SqlError::syntax(
                format!("column {name} needs a type"),
                start.line,
                start.column,
            ));
        }
        let mut p = sql_parser(angle_bracket_maps(tokens));
        let data_type = p.parse_data_type().map_err(|e| parser_error(e, start))?;
        let next = p.peek_token();
        if next.token != Token::EOF {
            return Err(SqlError::syntax(
                format!(
                    "column {name}: unexpected {} after the type",
                    describe(&next.token)
                ),
                next.span.start.line,
                next.span.start.column,
            ));
        }
        out.push(ColumnDef {
            name,
            data_type,
            key,
        });
    }
    Ok(out)
}

/// Rewrites ksqlDB's `MAP<K, V>` to the `MAP(K, V)` that sqlparser's generic dialect reads
/// (it reads `ARRAY<T>` and `STRUCT<...>` as they are). In a type, `>>` is two closings.
fn angle_bracket_maps(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if t.token == Token::ShiftRight {
            out.push(TokenWithSpan::new(Token::Gt, t.span));
            out.push(TokenWithSpan::new(Token::Gt, t.span));
        } else {
            out.push(t);
        }
    }
    let mut open = Vec::new();
    for i in 0..out.len() {
        match out[i].token {
            Token::Lt => open.push(i),
            Token::Gt => {
                if let Some(o) = open.pop() {
                    if o > 0 && is_word(&out[o - 1].token, "MAP") {
                        out[o].token = Token::LParen;
                        out[i].token = Token::RParen;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn parse_properties(c: &mut Cursor) -> Result<Properties> {
    let at = c.location();
    let mut props = Properties::new();
    for item in c.parenthesized_list()? {
        let start = item.first().map_or(at, |t| t.span.start);
        let mut p = Cursor::new(item);
        // Property names are keywords of the WITH clause, compared in lower case.
        let key = p.ident("a property name")?.to_lowercase();
        p.expect(&Token::Eq)?;
        let value = match p.next() {
            Token::SingleQuotedString(s) => PropertyValue::String(s),
            Token::Number(n, _) => PropertyValue::Number(n),
            Token::Word(w) => PropertyValue::Word(w.value),
            _ => {
                p.pos -= 1;
                return Err(p.error("a property value ('text', a number or a word)"));
            }
        };
        p.expect_end()?;
        if props.insert(key.clone(), value).is_some() {
            return Err(SqlError::syntax(
                format!("property {key} given twice"),
                start.line,
                start.column,
            ));
        }
    }
    Ok(props)
}

fn parse_insert(c: &mut Cursor) -> Result<Statement> {
    c.expect_word("INTO")?;
    let target = c.ident("a stream name")?;
    let mut columns = Vec::new();
    // `(a, b) VALUES` names columns; `(SELECT ...)` is a query.
    if c.peek() == &Token::LParen && !is_word(c.peek_at(1), "SELECT") {
        for item in c.parenthesized_list()? {
            let mut col = Cursor::new(item);
            columns.push(col.ident("a column name")?);
            col.expect_end()?;
        }
    }
    if c.eat_word("VALUES") {
        let mut rows = Vec::new();
        loop {
            let at = c.location();
            let row = c
                .parenthesized_list()?
                .into_iter()
                .map(|tokens| {
                    let start = tokens.first().map_or(at, |t| t.span.start);
                    let mut e = parse_expr(crate::syntax::tokens(tokens), start)?;
                    crate::syntax::expr(&mut e);
                    Ok(e)
                })
                .collect::<Result<Vec<Expr>>>()?;
            rows.push(row);
            if !c.eat(&Token::Comma) {
                break;
            }
        }
        return Ok(Statement::InsertValues {
            target,
            columns,
            rows,
        });
    }
    if !columns.is_empty() {
        return Err(c.error("VALUES after a column list"));
    }
    let at = c.location();
    Ok(Statement::InsertSelect {
        target,
        select: parse_select(c.rest(), at)?,
    })
}

/// Takes `WINDOW ...`, `PARTITION BY ...` and `EMIT ...` out of a SELECT's tokens and parses
/// the rest as SQL.
fn parse_select(mut tokens: Vec<TokenWithSpan>, at: Location) -> Result<Select> {
    let mut window = None;
    let mut emit = None;
    let mut within: Vec<Option<JoinWithin>> = Vec::new();
    let mut partition_by = None;
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 0 && is_word(t, "JOIN") => within.push(None),
            t if depth == 0 && is_word(t, "WITHIN") => {
                let s = tokens[i].span.start;
                let Some(slot) = within.last_mut().filter(|w| w.is_none()) else {
                    return Err(SqlError::syntax(
                        "WITHIN belongs to a join: FROM a JOIN b WITHIN 1 HOUR ON a.id = b.id (one per join)",
                        s.line,
                        s.column,
                    ));
                };
                let mut end = if tokens.get(i + 1).map(|t| &t.token) == Some(&Token::LParen) {
                    matching_paren_end(&tokens, i + 1)?
                } else {
                    (i + 3).min(tokens.len())
                };
                if tokens.get(end).is_some_and(|t| is_word(&t.token, "GRACE")) {
                    end = (end + 4).min(tokens.len());
                }
                let clause: Vec<TokenWithSpan> = tokens.drain(i..end).collect();
                *slot = Some(parse_within(clause)?);
                continue;
            }
            // `OVER (PARTITION BY ...)` of a window function is inside parentheses.
            t if depth == 0
                && is_word(t, "PARTITION")
                && tokens.get(i + 1).is_some_and(|t| is_word(&t.token, "BY")) =>
            {
                if partition_by.is_some() {
                    let s = tokens[i].span.start;
                    return Err(SqlError::syntax(
                        "only one PARTITION BY clause is allowed",
                        s.line,
                        s.column,
                    ));
                }
                let end = clause_end(&tokens, i + 2);
                let clause: Vec<TokenWithSpan> = tokens.drain(i..end).collect();
                partition_by = Some(parse_partition_by(clause)?);
                continue;
            }
            t if depth == 0 && is_word(t, "WINDOW") => {
                let next = tokens.get(i + 1).map(|t| &t.token);
                if next.is_some_and(|t| {
                    ["TUMBLING", "HOPPING", "SESSION"]
                        .iter()
                        .any(|w| is_word(t, w))
                }) {
                    if window.is_some() {
                        let s = tokens[i].span.start;
                        return Err(SqlError::syntax(
                            "only one WINDOW clause is allowed",
                            s.line,
                            s.column,
                        ));
                    }
                    let end = matching_paren_end(&tokens, i + 2)?;
                    let clause: Vec<TokenWithSpan> = tokens.drain(i..end).collect();
                    window = Some(parse_window(clause)?);
                    continue;
                }
            }
            t if depth == 0 && is_word(t, "EMIT") => {
                let next = tokens.get(i + 1).map(|t| &t.token);
                let kind = match next {
                    Some(t) if is_word(t, "CHANGES") => Emit::Changes,
                    Some(t) if is_word(t, "FINAL") => Emit::Final,
                    _ => {
                        let s = tokens[i].span.end;
                        return Err(SqlError::syntax(
                            "expected CHANGES or FINAL after EMIT",
                            s.line,
                            s.column,
                        ));
                    }
                };
                emit = Some(kind);
                tokens.drain(i..i + 2);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut query = parse_query(crate::syntax::tokens(rewrite_field_arrows(tokens)), at)?;
    crate::syntax::query(&mut query);
    Ok(Select {
        query,
        window,
        emit,
        within,
        partition_by,
    })
}

/// `WITHIN n [GRACE PERIOD g]` or `WITHIN (before, after) [GRACE PERIOD g]`.
fn parse_within(clause: Vec<TokenWithSpan>) -> Result<JoinWithin> {
    let mut c = Cursor::new(clause);
    c.expect_word("WITHIN")?;
    let (before, after) = if c.eat(&Token::LParen) {
        let before = parse_duration(&mut c)?;
        c.expect(&Token::Comma)?;
        let after = parse_duration(&mut c)?;
        c.expect(&Token::RParen)?;
        (before, after)
    } else {
        let d = parse_duration(&mut c)?;
        (d, d)
    };
    let grace = if c.eat_words(&["GRACE", "PERIOD"]) {
        Some(parse_duration(&mut c)?)
    } else {
        None
    };
    c.expect_end()?;
    Ok(JoinWithin {
        before,
        after,
        grace,
    })
}

/// Words that start a clause, ending a `PARTITION BY` list before them.
const AFTER_PARTITION_BY: &[&str] = &[
    "EMIT",
    "LIMIT",
    "HAVING",
    "WINDOW",
    "WHERE",
    "GROUP",
    "ORDER",
    "PARTITION",
];

/// Index of the first token from `from` on that starts the clause after a `PARTITION BY`
/// list (`HAVING`, `EMIT`, `LIMIT`, ... outside parentheses), or the end.
fn clause_end(tokens: &[TokenWithSpan], from: usize) -> usize {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(from) {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            t if depth == 0 && AFTER_PARTITION_BY.iter().any(|w| is_word(t, w)) => {
                return i;
            }
            _ => {}
        }
    }
    tokens.len()
}

/// `PARTITION BY e1, e2, ...` (the clause's tokens, keywords included): the expressions, or
/// `NULL` alone. ksqlDB's refusals: no expression, one named twice, NULL among others.
fn parse_partition_by(clause: Vec<TokenWithSpan>) -> Result<PartitionBy> {
    let start = clause[0].span.start;
    let end = end_of(&clause, start);
    let mut items: Vec<Vec<TokenWithSpan>> = vec![Vec::new()];
    let mut depth = 0i32;
    for t in clause.into_iter().skip(2) {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => {
                items.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = items.last_mut() {
            last.push(t);
        }
    }
    let mut exprs: Vec<Expr> = Vec::with_capacity(items.len());
    for item in items {
        let Some(first) = item.first() else {
            return Err(SqlError::syntax(
                "PARTITION BY requires an expression here",
                end.line,
                end.column,
            ));
        };
        let at = first.span.start;
        let mut e = parse_expr(crate::syntax::tokens(rewrite_field_arrows(item)), at)?;
        crate::syntax::expr(&mut e);
        if exprs.contains(&e) {
            return Err(SqlError::syntax(
                format!("Duplicate PARTITION BY expression: {e}"),
                at.line,
                at.column,
            ));
        }
        exprs.push(e);
    }
    use datafusion::sql::sqlparser::ast::Value;
    let is_null = |e: &Expr| matches!(e, Expr::Value(v) if v.value == Value::Null);
    match exprs.as_slice() {
        [one] if is_null(one) => Ok(PartitionBy::Null),
        many if many.iter().any(is_null) => Err(SqlError::syntax(
            "Cannot PARTITION BY multiple columns including NULL",
            start.line,
            start.column,
        )),
        _ => Ok(PartitionBy::Exprs(exprs)),
    }
}

/// Rewrites ksqlDB's struct field access `address->city` to `address['city']`, which
/// DataFusion reads as a field access.
fn rewrite_field_arrows(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut iter = tokens.into_iter().peekable();
    while let Some(t) = iter.next() {
        if t.token != Token::Arrow {
            out.push(t);
            continue;
        }
        while iter
            .peek()
            .is_some_and(|n| matches!(n.token, Token::Whitespace(_)))
        {
            iter.next();
        }
        match iter.peek().map(|n| &n.token) {
            Some(Token::Word(w)) => {
                let field = w.value.clone();
                let span = t.span;
                iter.next();
                out.push(TokenWithSpan::new(Token::LBracket, span));
                out.push(TokenWithSpan::new(Token::SingleQuotedString(field), span));
                out.push(TokenWithSpan::new(Token::RBracket, span));
            }
            _ => out.push(t),
        }
    }
    out
}

/// Index just past the parenthesis group starting at `open`.
fn matching_paren_end(tokens: &[TokenWithSpan], open: usize) -> Result<usize> {
    let Some(first) = tokens.get(open) else {
        let s = tokens.last().map_or(Span::empty().end, |t| t.span.end);
        return Err(SqlError::syntax(
            "expected '(' after the window kind",
            s.line,
            s.column,
        ));
    };
    if first.token != Token::LParen {
        let s = first.span.start;
        return Err(SqlError::syntax(
            format!(
                "expected '(' after the window kind, found {}",
                describe(&first.token)
            ),
            s.line,
            s.column,
        ));
    }
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
    }
    let s = first.span.start;
    Err(SqlError::syntax(
        "unclosed '(' in the WINDOW clause",
        s.line,
        s.column,
    ))
}

fn parse_window(clause: Vec<TokenWithSpan>) -> Result<WindowSpec> {
    let mut c = Cursor::new(clause);
    c.expect_word("WINDOW")?;
    let kind_word = if c.eat_word("TUMBLING") {
        "TUMBLING"
    } else if c.eat_word("HOPPING") {
        "HOPPING"
    } else {
        c.expect_word("SESSION")?;
        "SESSION"
    };
    let mut size = None;
    let mut advance = None;
    let mut gap = None;
    let mut grace = None;
    let mut retention = None;
    for item in c.parenthesized_list()? {
        let mut p = Cursor::new(item);
        if p.eat_word("SIZE") {
            size = Some(parse_duration(&mut p)?);
        } else if p.eat_words(&["ADVANCE", "BY"]) {
            advance = Some(parse_duration(&mut p)?);
        } else if p.eat_words(&["GRACE", "PERIOD"]) {
            grace = Some(parse_duration(&mut p)?);
        } else if p.eat_word("RETENTION") {
            retention = Some(parse_duration(&mut p)?);
        } else if kind_word == "SESSION" && matches!(p.peek(), Token::Number(..)) {
            gap = Some(parse_duration(&mut p)?);
        } else {
            return Err(p.error(match kind_word {
                "SESSION" => "a gap (e.g. 5 MINUTES), GRACE PERIOD or RETENTION",
                "HOPPING" => "SIZE, ADVANCE BY, GRACE PERIOD or RETENTION",
                _ => "SIZE, GRACE PERIOD or RETENTION",
            }));
        }
        p.expect_end()?;
    }
    let missing = |what: &str| SqlError::Invalid(format!("{kind_word} window needs {what}"));
    let kind = match kind_word {
        "TUMBLING" => WindowKind::Tumbling {
            size: size.ok_or_else(|| missing("SIZE"))?,
        },
        "HOPPING" => WindowKind::Hopping {
            size: size.ok_or_else(|| missing("SIZE"))?,
            advance: advance.ok_or_else(|| missing("ADVANCE BY"))?,
        },
        _ => WindowKind::Session {
            gap: gap.ok_or_else(|| missing("a gap, e.g. SESSION (5 MINUTES)"))?,
        },
    };
    // The bounds (`operators::window::validate`) are checked when the query is compiled.
    Ok(WindowSpec {
        kind,
        grace,
        retention,
    })
}

/// `N UNIT` with UNIT one of MILLISECOND(S), SECOND(S), MINUTE(S), HOUR(S), DAY(S).
fn parse_duration(c: &mut Cursor) -> Result<Duration> {
    let at = c.location();
    let Token::Number(n, _) = c.next() else {
        c.pos -= 1;
        return Err(c.error("a duration such as 5 MINUTES"));
    };
    let n: u64 = n.parse().map_err(|_| {
        SqlError::syntax(format!("'{n}' is not a whole number"), at.line, at.column)
    })?;
    let unit = match c.next() {
        Token::Word(w) => w.value.to_ascii_uppercase(),
        _ => {
            c.pos -= 1;
            return Err(c.error("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"));
        }
    };
    let ms = match unit.trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => {
            c.pos -= 1;
            return Err(c.error("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"));
        }
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(sql: &str) -> (String, u64, u64) {
        match parse(sql) {
            Err(SqlError::Syntax {
                message,
                line,
                column,
            }) => (message, line, column),
            other => panic!("expected a syntax error for {sql:?}, got {other:?}"),
        }
    }

    #[test]
    fn create_stream_with_columns_key_and_properties() {
        let s = parse_one(
            "CREATE STREAM Rides (ride_id BIGINT KEY, zone VARCHAR, fare DOUBLE, ts TIMESTAMP)\n\
             WITH (topic='rides', format=JSON, partitions=3, timestamp='ts');",
        )
        .unwrap();
        let Statement::CreateSource {
            kind,
            name,
            columns,
            properties,
            ..
        } = s
        else {
            panic!("{s:?}")
        };
        assert_eq!(kind, SourceKind::Stream);
        assert_eq!(name, "RIDES");
        assert_eq!(columns.len(), 4);
        assert!(columns[0].key && !columns[1].key);
        assert_eq!(columns[2].data_type.to_string(), "DOUBLE");
        assert_eq!(properties["topic"], PropertyValue::String("rides".into()));
        assert_eq!(properties["format"].as_str(), "JSON");
        assert_eq!(properties["partitions"].as_str(), "3");
    }

    #[test]
    fn create_table_needs_primary_key_spelling() {
        let s = parse_one("CREATE TABLE users (id VARCHAR PRIMARY KEY, name VARCHAR) WITH (topic='u', format='JSON')").unwrap();
        assert!(
            matches!(s, Statement::CreateSource { kind: SourceKind::Table, ref columns, .. } if columns[0].key)
        );
        let (msg, line, col) = err("CREATE TABLE users (id VARCHAR KEY) WITH (topic='u')");
        assert!(msg.contains("PRIMARY KEY"), "{msg}");
        assert_eq!((line, col), (1, 21));
    }

    #[test]
    fn windowed_aggregate_with_grace_retention_and_emit() {
        let s = parse_one(
            "CREATE TABLE surge AS SELECT zone, COUNT(*) AS rides FROM rides \
             WINDOW HOPPING (SIZE 5 MINUTES, ADVANCE BY 1 MINUTE, GRACE PERIOD 30 SECONDS, RETENTION 2 HOURS) \
             WHERE fare > 0 GROUP BY zone HAVING COUNT(*) > 2 EMIT FINAL",
        )
        .unwrap();
        let Statement::CreateAs { select, .. } = s else {
            panic!()
        };
        assert_eq!(
            select.window,
            Some(WindowSpec {
                kind: WindowKind::Hopping {
                    size: Duration::from_secs(300),
                    advance: Duration::from_secs(60)
                },
                grace: Some(Duration::from_secs(30)),
                retention: Some(Duration::from_secs(7200)),
            })
        );
        assert_eq!(select.emit, Some(Emit::Final));
        let q = select.query.to_string();
        assert!(
            q.contains("WHERE FARE > 0") && q.contains("GROUP BY ZONE") && !q.contains("WINDOW"),
            "{q}"
        );
    }

    #[test]
    fn partition_by_is_taken_out_up_to_the_next_clause() {
        let s = parse_one(
            "SELECT * FROM rides WHERE fare > 1 PARTITION BY zone, SPLIT(a, ',')[1], f(b, (c)) \
             EMIT CHANGES LIMIT 3",
        )
        .unwrap();
        let Statement::Select(select) = s else {
            panic!()
        };
        let Some(PartitionBy::Exprs(exprs)) = &select.partition_by else {
            panic!("{:?}", select.partition_by)
        };
        assert_eq!(exprs.len(), 3);
        assert_eq!(exprs[0].to_string(), "ZONE");
        assert_eq!(select.emit, Some(Emit::Changes));
        let q = select.query.to_string();
        assert!(
            q.ends_with("WHERE FARE > 1 LIMIT 3") && !q.contains("PARTITION"),
            "{q}"
        );
        let s = parse_one("CREATE STREAM s2 AS SELECT * FROM s PARTITION BY NULL").unwrap();
        let Statement::CreateAs { select, .. } = s else {
            panic!()
        };
        assert_eq!(select.partition_by, Some(PartitionBy::Null));
        // A window function's own PARTITION BY stays where it is.
        let s = parse_one("SELECT ROW_NUMBER() OVER (PARTITION BY a) FROM s EMIT CHANGES").unwrap();
        assert!(matches!(
            s,
            Statement::Select(Select {
                partition_by: None,
                ..
            })
        ));
    }

    #[test]
    fn partition_by_errors() {
        let (msg, line, col) = err("SELECT * FROM s PARTITION BY EMIT CHANGES");
        assert!(msg.contains("PARTITION BY requires an expression"), "{msg}");
        assert_eq!((line, col), (1, 29));
        let (msg, ..) = err("SELECT * FROM s PARTITION BY a, EMIT CHANGES");
        assert!(msg.contains("PARTITION BY requires an expression"), "{msg}");
        let (msg, ..) = err("SELECT * FROM s PARTITION BY a PARTITION BY b EMIT CHANGES");
        assert!(msg.contains("only one PARTITION BY"), "{msg}");
        let (msg, ..) = err("SELECT * FROM s PARTITION BY a, A EMIT CHANGES");
        assert!(
            msg.contains("Duplicate PARTITION BY expression: A"),
            "{msg}"
        );
        let (msg, ..) = err("SELECT * FROM s PARTITION BY NULL, a EMIT CHANGES");
        assert!(msg.contains("multiple columns including NULL"), "{msg}");
    }

    #[test]
    fn push_query_with_limit_and_session_window() {
        let s = parse_one("SELECT user_id, COUNT(*) FROM clicks WINDOW SESSION (5 MINUTES) GROUP BY user_id EMIT CHANGES LIMIT 10").unwrap();
        let Statement::Select(select) = s else {
            panic!()
        };
        assert_eq!(select.emit, Some(Emit::Changes));
        assert!(
            matches!(select.window.unwrap().kind, WindowKind::Session { gap } if gap == Duration::from_secs(300))
        );
        assert!(select.query.to_string().ends_with("LIMIT 10"));
    }

    #[test]
    fn pull_query_and_management_statements() {
        assert!(matches!(
            parse_one("SELECT * FROM users WHERE id = 'a'").unwrap(),
            Statement::Select(Select { emit: None, .. })
        ));
        assert_eq!(
            parse_one("show streams").unwrap(),
            Statement::Show(ShowWhat::Streams)
        );
        assert_eq!(
            parse_one("LIST TOPICS").unwrap(),
            Statement::Show(ShowWhat::Topics)
        );
        assert_eq!(
            parse_one("DESCRIBE EXTENDED Rides").unwrap(),
            Statement::Describe {
                name: "RIDES".into(),
                extended: true
            }
        );
        assert_eq!(
            parse_one("DROP TABLE IF EXISTS surge DELETE TOPIC").unwrap(),
            Statement::Drop {
                kind: SourceKind::Table,
                name: "SURGE".into(),
                if_exists: true,
                delete_topic: true
            }
        );
        assert_eq!(
            parse_one("TERMINATE ctas_surge_1").unwrap(),
            Statement::Terminate {
                query_id: Some("CTAS_SURGE_1".into())
            }
        );
        assert_eq!(
            parse_one("TERMINATE ALL").unwrap(),
            Statement::Terminate { query_id: None }
        );
        assert!(matches!(
            parse_one("EXPLAIN SELECT * FROM x EMIT CHANGES").unwrap(),
            Statement::Explain(_)
        ));
    }

    #[test]
    fn insert_values_and_insert_select() {
        let s = parse_one("INSERT INTO rides (ride_id, zone) VALUES (1, 'a'), (2, UPPER('b'))")
            .unwrap();
        let Statement::InsertValues {
            target,
            columns,
            rows,
        } = s
        else {
            panic!()
        };
        assert_eq!(
            (target.as_str(), columns.len(), rows.len(), rows[1].len()),
            ("RIDES", 2, 2, 2)
        );
        let s =
            parse_one("INSERT INTO big SELECT * FROM rides WHERE fare > 50 EMIT CHANGES").unwrap();
        assert!(matches!(s, Statement::InsertSelect { .. }));
    }

    #[test]
    fn several_statements_and_semicolons_inside_strings() {
        let all = parse("SHOW TABLES; SELECT 'a;b' FROM t EMIT CHANGES;\n\n;SHOW QUERIES").unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let (msg, line, col) = err("SELECT * FROM t\nWHERE a >");
        assert_eq!(line, 2, "{msg}");
        assert!(col >= 9, "{msg} at {col}");
        let (msg, line, col) = err("CREATE STREAM s (a INT) WITH (topic 'x')");
        assert!(msg.contains("'='"), "{msg}");
        assert_eq!((line, col), (1, 37));
        let (msg, ..) =
            err("SELECT a FROM t WINDOW TUMBLING (SIZE 5 FORTNIGHTS) GROUP BY a EMIT CHANGES");
        assert!(msg.contains("time unit"), "{msg}");
        let (msg, ..) = err("SELECT a FROM t EMIT SOMETIMES");
        assert!(msg.contains("CHANGES or FINAL"), "{msg}");
        let (msg, ..) = err("FROBNICATE everything");
        assert!(msg.contains("expected a statement"), "{msg}");
        let (msg, ..) = err("SELECT 'unterminated FROM t");
        assert!(msg.to_lowercase().contains("unterminated"), "{msg}");
    }

    /// Runs `f` on a thread with a worker's 2 MiB stack: a statement that recursed too
    /// deep would abort the test process, not fail it quietly.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn too_deep(sql: String) -> (String, u64, u64) {
        on_small_stack(move || match parse(&sql) {
            Err(e @ SqlError::TooDeep { line, column, .. }) => (e.to_string(), line, column),
            other => panic!("expected TooDeep, got {other:?}"),
        })
    }

    fn chain(op: &str, n: usize) -> String {
        vec!["1"; n].join(op)
    }

    #[test]
    fn deep_expressions_are_refused_with_the_limit_and_where() {
        let insert = |e: &str| format!("INSERT INTO s (id, a) VALUES ('q', {e})");
        // A left-deep chain: 2,000 and 100,000 terms.
        for n in [2_000, 100_000] {
            let (msg, line, column) = too_deep(insert(&chain("+", n)));
            assert!(
                msg.contains("too deeply nested") && msg.contains("more than 256"),
                "{msg}"
            );
            // The `+` that passes the limit: after 257 terms of "1+" past `VALUES ('q', `.
            assert_eq!((line, column), (1, 37 + 2 * 255), "{msg}");
        }
        let (msg, ..) = too_deep(format!(
            "SELECT * FROM s WHERE {} EMIT CHANGES",
            vec!["a = 1"; 10_000].join(" AND ")
        ));
        assert!(msg.contains("256"), "{msg}");
        // Parentheses, on a later line.
        let n = 100_000;
        let (msg, line, column) = too_deep(format!(
            "SHOW STREAMS;\nSELECT {}1{} FROM s EMIT CHANGES",
            "(".repeat(n),
            ")".repeat(n)
        ));
        assert_eq!((line, column), (2, 8 + 256), "{msg}");
        // Chains inside parentheses inside chains: each group is shallow, the whole is not.
        let mut nested = "1".to_string();
        for _ in 0..20 {
            nested = format!("({nested}{})", "+1".repeat(30));
        }
        too_deep(insert(&nested));
        // CASE inside CASE, unary minus, NOT.

        let case = format!(
            "{}1{}",
            "CASE WHEN TRUE THEN ".repeat(300),
            " END".repeat(300)
        );
        too_deep(insert(&case));
        too_deep(insert(&format!("{}1", "- ".repeat(300))));
        too_deep(insert(&format!("{}TRUE", "NOT ".repeat(300))));
        // A whole API body of parentheses (2 MB).
        too_deep(format!("SELECT {} FROM s", "(".repeat(1 << 20)));
        // Just inside the limit parses, also on a small stack; a long list is not nesting.
        on_small_stack(move || {
            parse(&insert(&chain("+", 256))).unwrap();
            parse(&format!(
                "SELECT {}1{} FROM s",
                "(".repeat(200),
                ")".repeat(200)
            ))
            .unwrap();
            // A CASE of many branches is wide, not deep.
            let branches: String = (0..1_000)
                .map(|i| format!(" WHEN a = {i} THEN 'x{i}'"))
                .collect();
            parse(&format!("SELECT CASE{branches} ELSE 'y' END AS v FROM s")).unwrap();
            // Each clause's expression counts on its own.
            let half = chain("+", 200);
            parse(&format!(
                "SELECT {half} AS x FROM s WHERE {half} > 0 GROUP BY {half} HAVING {half} > 1"
            ))
            .unwrap();
            // ... but `IS DISTINCT FROM` continues a chain.
            too_deep(format!(
                "SELECT * FROM s WHERE {}",
                vec!["a"; 300].join(" IS DISTINCT FROM ")
            ));
            let list = vec!["1"; 50_000].join(", ");
            parse(&format!("SELECT * FROM s WHERE a IN ({list})")).unwrap();
            parse(&format!(
                "INSERT INTO s (a) VALUES {}",
                vec!["(-1)"; 10_000].join(", ")
            ))
            .unwrap();
        });
    }

    #[test]
    fn the_tree_depth_check_stops_at_the_limit() {
        use datafusion::sql::sqlparser::ast::{BinaryOperator, Value};
        // Built directly (the token check would refuse its text first).
        let leaf = || Expr::value(Value::Number("1".into(), false));
        let mut e = leaf();
        for _ in 0..MAX_EXPR_DEPTH {
            e = Expr::BinaryOp {
                left: Box::new(e),
                op: BinaryOperator::Plus,
                right: Box::new(leaf()),
            };
        }
        let at = Location::new(3, 4);
        match check_depth(&e, at) {
            Err(SqlError::TooDeep { line, column, .. }) => assert_eq!((line, column), (3, 4)),
            other => panic!("{other:?}"),
        }
        let Expr::BinaryOp { left, .. } = e else {
            panic!()
        };
        check_depth(&*left, at).unwrap();
    }

    #[test]
    fn window_validation() {
        assert!(
            matches!(parse("SELECT a FROM t WINDOW HOPPING (SIZE 1 MINUTE) GROUP BY a EMIT CHANGES"), Err(SqlError::Invalid(m)) if m.contains("ADVANCE BY"))
        );
    }
}
