//! JSON values: validating them, decoding them into Arrow with a given schema, inferring a
//! schema from a sample, and encoding Arrow rows back as JSON values.
//!
//! Decoding goes straight from bytes to Arrow columns (arrow-json's tape decoder): one parse
//! per value, no `serde_json::Value` in between.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use serde_json::Value;

use crate::error::{FormatError, Result};

/// What [`validate`] learned about a valid JSON value from its first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An object; `empty` for `{}`.
    Object {
        /// Whether it has no fields.
        empty: bool,
    },
    /// An array, string, number, boolean or null.
    Other,
}

/// Checks that `value` is one JSON value without building it (no allocation per token), and
/// says whether it is an object.
pub fn validate(value: &[u8]) -> std::result::Result<Kind, serde_json::Error> {
    serde_json::from_slice::<serde::de::IgnoredAny>(value)?;
    // Valid JSON that starts with `{` is an object; `{` then `}` is `{}`.
    let mut tokens = value.iter().filter(|b| !b.is_ascii_whitespace());
    Ok(match tokens.next() {
        Some(b'{') => Kind::Object {
            empty: tokens.next() == Some(&b'}'),
        },
        _ => Kind::Other,
    })
}

/// Replaces line breaks by spaces: in valid JSON they only occur between tokens, where a
/// space does as well, so the value fits on one line.
pub fn one_line(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
        .collect()
}

/// Decodes JSON objects into Arrow batches of one schema.
///
/// Fields are matched by name; fields the schema does not have are ignored, missing ones are
/// null (an error for a non-nullable column). Numbers and booleans are accepted for string
/// columns and numeric strings for numeric columns (`coerce_primitive`), as ksqlDB does.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    schema: SchemaRef,
    /// A field the schema does not name is an error (else it is ignored).
    strict: bool,
    /// Field names match as ksqlDB matches them ([`JsonDecoder::case_insensitive`]).
    fold_keys: bool,
}

/// Values decoded one by one after a batch failed: the rows that fit and why the others did
/// not.
#[derive(Debug)]
pub struct Decoded {
    /// One row per value that fits, in input order.
    pub batch: RecordBatch,
    /// The input index of each row of `batch`.
    pub rows: Vec<usize>,
    /// `(input index, reason)` of each value that does not fit.
    pub rejected: Vec<(usize, String)>,
}

impl JsonDecoder {
    /// A decoder into `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        JsonDecoder {
            schema,
            strict: false,
            fold_keys: false,
        }
    }

    /// The same decoder, for which a field the schema does not name is an error rather than
    /// ignored: to find out whether values carry more than the schema says.
    pub fn strict(&self) -> Self {
        JsonDecoder {
            strict: true,
            ..self.clone()
        }
    }

    /// The same decoder, matching JSON field names as ksqlDB does: a field whose name the
    /// schema has exactly is that field; otherwise its name in upper case is looked up, so
    /// `"zone"` and `"Zone"` fill the column `ZONE` (a column declared without quotes),
    /// while a quoted mixed-case column (`"myField"`) only takes `"myField"`. Applies at
    /// every depth (STRUCT fields too). Values whose names all match exactly are decoded
    /// as they are; others are copied once with their keys rewritten.
    pub fn case_insensitive(&self) -> Self {
        JsonDecoder {
            fold_keys: true,
            ..self.clone()
        }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `values`, each one JSON object, into one batch; the first value that does not
    /// fit fails the whole batch (see [`JsonDecoder::decode_each`] to keep the others).
    pub fn decode<'a>(
        &self,
        values: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch> {
        if !self.fold_keys || !is_flat(&self.schema) {
            return self.decode_folded(values);
        }
        let values: Vec<&[u8]> = values.collect();
        if let Some(batch) = self.decode_as_spelled(&values) {
            return Ok(batch);
        }
        self.decode_folded(values.into_iter())
    }

    /// [`JsonDecoder::decode`] of a flat schema whose values all spell their keys as the
    /// first value does, without folding: the columns take the first value's spellings,
    /// the decoder runs in strict mode (a key spelled otherwise, or naming no column, fails
    /// it), and the columns get their own names back. `None` when that does not apply or
    /// fails: the caller folds, which also says what is wrong with a bad value.
    ///
    /// Folding rewrites a value whose keys are not the columns' own spelling (`"price"`
    /// for `PRICE`: most JSON), and finding its keys is a pass over every byte of it; this
    /// skips both for a batch from one producer.
    fn decode_as_spelled(&self, values: &[&[u8]]) -> Option<RecordBatch> {
        let fields = self.schema.fields();
        let mut spelled: Vec<Option<&[u8]>> = vec![None; fields.len()];
        let mut usable = true;
        each_top_level_field(values.first()?, |key, _| {
            let field = key
                .and_then(|k| resolve(fields, k, false))
                .and_then(|(f, _)| f)
                .and_then(|f| fields.iter().position(|g| std::ptr::eq(g.as_ref(), f)));
            match field {
                Some(i) if spelled[i].is_none() => spelled[i] = key,
                // Escaped, naming no column, or naming one twice: fold.
                _ => usable = false,
            }
        })?;
        if !usable {
            return None;
        }
        let names: Vec<&str> = fields
            .iter()
            .zip(&spelled)
            .map(|(f, s)| {
                s.and_then(|s| std::str::from_utf8(s).ok())
                    .unwrap_or(f.name())
            })
            .collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != names.len() {
            return None;
        }
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .zip(&names)
                .map(|(f, n)| f.as_ref().clone().with_name(*n))
                .collect::<Vec<Field>>(),
        ));
        let mut decoder = arrow_json::ReaderBuilder::new(schema)
            .with_batch_size(values.len() + 1)
            .with_coerce_primitive(true)
            .with_strict_mode(true)
            .build_decoder()
            .ok()?;
        for v in values {
            if v.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') || !separators_sound(v) {
                return None;
            }
            if decoder.decode(v).ok()? < v.len() {
                return None;
            }
            decoder.decode(b"\n").ok()?;
            if decoder.has_partial_record() {
                return None;
            }
        }
        let batch = decoder.flush().ok()??;
        if batch.num_rows() != values.len() {
            return None;
        }
        RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec()).ok()
    }

    /// [`JsonDecoder::decode`], folding keys when the decoder matches names as ksqlDB does.
    fn decode_folded<'a>(
        &self,
        values: impl ExactSizeIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch> {
        let n = values.len();
        let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(&self.schema))
            // One more than expected: a value holding two objects shows up as an extra row
            // instead of stopping the decoder early.
            .with_batch_size(n + 1)
            .with_coerce_primitive(true)
            .with_strict_mode(self.strict)
            .build_decoder()?;
        let too_deep = |at: usize| {
            FormatError::Invalid(format!(
                "the value nests more than {MAX_DEPTH} levels deep (at byte {at})"
            ))
        };
        let mut memo = Vec::new();
        for v in values {
            // Folding keys checks the depth in its own pass over the value.
            if !self.fold_keys {
                if let Some(at) = nested_deeper_than(v, MAX_DEPTH) {
                    return Err(too_deep(at));
                }
            }
            if v.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(FormatError::Invalid(
                    "the value is not a JSON object".into(),
                ));
            }
            let v: Cow<[u8]> = match self.fold_keys {
                true => match fold_keys_with(v, self.schema.fields(), &mut memo) {
                    Ok(folded) => folded.map_or(Cow::Borrowed(v), Cow::Owned),
                    Err(FoldError::TooDeep(at)) => return Err(too_deep(at)),
                    Err(FoldError::Invalid(at)) => {
                        return Err(FormatError::Invalid(format!(
                            "the value is not valid JSON (at byte {at})"
                        )));
                    }
                },
                false => Cow::Borrowed(v),
            };
            let v = v.as_ref();
            let used = decoder.decode(v)?;
            if used < v.len() {
                return Err(FormatError::Invalid(format!(
                    "the value is not one JSON object: more after byte {used}"
                )));
            }
            // A newline ends the value, so a truncated object cannot merge with the next.
            decoder.decode(b"\n")?;
            if decoder.has_partial_record() {
                return Err(FormatError::Invalid(
                    "the value is not JSON: it ends inside an object".into(),
                ));
            }
        }
        match decoder.flush()? {
            Some(b) if b.num_rows() == n => Ok(b),
            Some(b) => Err(FormatError::Invalid(format!(
                "expected {n} JSON objects, decoded {}",
                b.num_rows()
            ))),
            None if n == 0 => Ok(RecordBatch::new_empty(Arc::clone(&self.schema))),
            None => Err(FormatError::Invalid(format!(
                "expected {n} JSON objects, decoded none"
            ))),
        }
    }

    /// Decodes `values` as one batch and, only when that fails, one by one: the values that
    /// fit still make one batch, the others come back with the reason (naming the field).
    /// Each value is parsed once unless its batch had a bad value.
    pub fn decode_each(&self, values: &[&[u8]]) -> Result<Decoded> {
        if let Ok(batch) = self.decode(values.iter().copied()) {
            return Ok(Decoded {
                batch,
                rows: (0..values.len()).collect(),
                rejected: Vec::new(),
            });
        }
        let mut good = Vec::new();
        let mut rows = Vec::new();
        let mut rejected = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match self.decode(std::iter::once(*v)) {
                Ok(b) => {
                    good.push(b);
                    rows.push(i);
                }
                Err(e) => rejected.push((i, reason(&e))),
            }
        }
        Ok(Decoded {
            batch: concat_batches(&self.schema, &good)?,
            rows,
            rejected,
        })
    }
}

/// How deep a JSON value may nest (objects and arrays), as Jackson's default (which ksqlDB
/// reads with) bounds it: the Arrow decoder recurses once per level when it reports an
/// error, and a value nested 100,000 levels deep would overflow the stack of the thread
/// decoding it and abort the process. Deeper values are rejected (a dead letter).
pub const MAX_DEPTH: usize = 500;

/// Whether the schema's columns are all of types without fields of their own (no STRUCT,
/// ARRAY or MAP), whose names are only the top-level keys.
fn is_flat(schema: &Schema) -> bool {
    !schema.fields().iter().any(|f| f.data_type().is_nested())
}

/// Whether the separators of `value` stand where JSON puts them: a comma between the
/// members of an object or array (none before the first or after the last, none doubled
/// or missing), a colon after each key, one value in all. arrow-json's tape decoder reads
/// commas as whitespace (`{"a": 1,}` and `[1 2]` pass it) and checks the rest: strings,
/// literals, brackets. One pass; strings are jumped over ([`string_end`]). False also for
/// values nesting deeper than [`MAX_DEPTH`] levels, which the decoder must not see (the
/// caller's fallback says why).
fn separators_sound(value: &[u8]) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Next {
        Value,
        ValueOrClose,
        Key,
        KeyOrClose,
        Colon,
        CommaOrClose,
        End,
    }
    // Open containers, one bit each: set for an object (512 bits, MAX_DEPTH at most).
    let mut objects = [0u64; 8];
    let mut depth = 0usize;
    let in_object = |objects: &[u64; 8], depth: usize| {
        depth > 0 && objects[(depth - 1) / 64] & (1 << ((depth - 1) % 64)) != 0
    };
    let after_value = |depth: usize| {
        if depth == 0 {
            Next::End
        } else {
            Next::CommaOrClose
        }
    };
    let mut next = Next::Value;
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        i += 1;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                let Some((end, _)) = string_end(value, i) else {
                    return false;
                };
                i = end + 1;
                next = match next {
                    Next::Key | Next::KeyOrClose => Next::Colon,
                    Next::Value | Next::ValueOrClose => after_value(depth),
                    _ => return false,
                };
            }
            b'{' | b'[' => {
                if !matches!(next, Next::Value | Next::ValueOrClose) || depth == MAX_DEPTH {
                    return false;
                }
                let bit = 1u64 << (depth % 64);
                if b == b'{' {
                    objects[depth / 64] |= bit;
                    next = Next::KeyOrClose;
                } else {
                    objects[depth / 64] &= !bit;
                    next = Next::ValueOrClose;
                }
                depth += 1;
            }
            b'}' | b']' => {
                let open = match b {
                    b'}' => next == Next::KeyOrClose,
                    _ => next == Next::ValueOrClose,
                };
                if (!open && next != Next::CommaOrClose)
                    || depth == 0
                    || in_object(&objects, depth) != (b == b'}')
                {
                    return false;
                }
                depth -= 1;
                next = after_value(depth);
            }
            b',' => {
                if next != Next::CommaOrClose {
                    return false;
                }
                next = match in_object(&objects, depth) {
                    true => Next::Key,
                    false => Next::Value,
                };
            }
            b':' => {
                if next != Next::Colon {
                    return false;
                }
                next = Next::Value;
            }
            _ => {
                // A number or literal: the decoder checks its spelling.
                if !matches!(next, Next::Value | Next::ValueOrClose) {
                    return false;
                }
                while value.get(i).is_some_and(|b| {
                    !matches!(b, b',' | b':' | b'{' | b'}' | b'[' | b']' | b'"')
                        && !b.is_ascii_whitespace()
                }) {
                    i += 1;
                }
                next = after_value(depth);
            }
        }
    }
    next == Next::End
}

/// The closing quote of the JSON string whose contents start at byte `from` of `v`, and
/// whether the string holds escapes; `None` when it never closes. Most strings are short
/// (names, words): a plain look at their first bytes beats a call; long ones
/// (descriptions, URLs) are most of a value's bytes and are jumped with memchr.
fn string_end(v: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut i = from;
    let mut escaped = false;
    loop {
        let rest = v.get(i..)?;
        i += match rest.iter().take(16).position(|&b| b == b'"' || b == b'\\') {
            Some(at) => at,
            None => memchr::memchr2(b'"', b'\\', rest)?,
        };
        if v[i] == b'"' {
            return Some((i, escaped));
        }
        // An escape: skip the escaped byte.
        escaped = true;
        i += 2;
    }
}

/// The byte at which `value` opens its `max + 1`th nested level, if it does; strings are
/// skipped whole.
fn nested_deeper_than(value: &[u8], max: usize) -> Option<usize> {
    // Each level opens with a byte of its own: a shorter value cannot pass the bound, and
    // most values are far shorter, so they cost nothing here.
    if value.len() <= max {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return Some(i);
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// [`fold_keys_with`] without a memo.
#[cfg(test)]
fn fold_keys(value: &[u8], fields: &Fields) -> std::result::Result<Option<Vec<u8>>, FoldError> {
    fold_keys_with(value, fields, &mut Vec::new())
}

/// `value` (a JSON object decoded into `fields`) with each object key that names no field
/// exactly but does in upper case, upper-cased; `Ok(None)` when no key changes (the common
/// case: no copy). Keys are compared unescaped. The scan follows the schema: only keys of
/// objects that are STRUCTs (or the value itself, or STRUCTs inside ARRAYs and MAP values)
/// are names; a MAP's keys are data and are never touched. It recurses only as deep as the
/// schema nests and skips everything else without recursion. Malformed JSON (a trailing
/// comma, say, which the Arrow decoder lets through) is `Err(byte offset)`.
///
/// `memo` remembers how each top-level key position was resolved:
/// values from one producer spell and order their keys alike, so a key equal to the one
/// at its position in the previous value takes its resolution without a lookup.
fn fold_keys_with<'f>(
    value: &[u8],
    fields: &'f Fields,
    memo: &mut Memo<'f>,
) -> std::result::Result<Option<Vec<u8>>, FoldError> {
    let mut edits = Vec::new();
    // The value itself is the first level.
    let mut scan = KeyScan {
        v: value,
        i: 0,
        depth: 1,
        too_deep: false,
        memo: Some(memo),
    };
    if scan.object(fields, &mut edits).is_none() {
        return Err(match scan.too_deep {
            true => FoldError::TooDeep(scan.i),
            false => FoldError::Invalid(scan.i),
        });
    }
    if edits.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut copied = 0;
    for (start, end, name) in edits {
        out.extend_from_slice(&value[copied..start]);
        if name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            // The name as JSON string contents: a quoted column may hold `"` or `\`.
            let quoted = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
            out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
        } else {
            out.extend_from_slice(name.as_bytes());
        }
        copied = end;
    }
    out.extend_from_slice(&value[copied..]);
    Ok(Some(out))
}

/// The field an object key names in `fields` and whether it spells it exactly: the key's
/// raw bytes inside its quotes, unescaped when `escaped` (compared as the decoder will read
/// it); `None` when the key is not valid text.
fn resolve<'f>(fields: &'f Fields, raw: &[u8], escaped: bool) -> Option<(Option<&'f Field>, bool)> {
    let unescaped: String;
    let key = if escaped {
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        unescaped = serde_json::from_slice(&quoted).ok()?;
        unescaped.as_str()
    } else {
        std::str::from_utf8(raw).ok()?
    };
    if let Some(f) = fields.iter().find(|f| f.name() == key) {
        return Some((Some(f.as_ref()), true));
    }
    let f = fields.iter().find(|f| folds_to(key, f.name()));
    Some((f.map(|f| f.as_ref()), false))
}

/// Whether `key` names the column `name` by ksqlDB's rule for a key not spelled exactly:
/// its upper-case spelling is `name`.
fn folds_to(key: &str, name: &str) -> bool {
    if key.is_ascii() {
        // Without allocating: an ASCII key upper-cases to `name` exactly when they match
        // ignoring ASCII case and `name` has no lower-case letter.
        folds_to_ascii(key.as_bytes(), name)
    } else {
        key.to_uppercase() == name
    }
}

/// [`folds_to`] of a key's raw bytes (not valid text: no name).
fn folds_bytes_to(key: &[u8], name: &str) -> bool {
    if key.is_ascii() {
        key.len() == name.len() && folds_to_ascii(key, name)
    } else {
        std::str::from_utf8(key).is_ok_and(|k| folds_to(k, name))
    }
}

/// [`folds_to`] of an ASCII key.
fn folds_to_ascii(key: &[u8], name: &str) -> bool {
    name.as_bytes().eq_ignore_ascii_case(key) && !name.bytes().any(|b| b.is_ascii_lowercase())
}

/// What a key that loses to the exact spelling of its field is renamed to: a NUL, which no
/// column name holds (names are refused with control characters), so the decoder ignores it
/// as an unknown field.
const IGNORED_KEY: &str = "\0";

/// Why [`fold_keys`] gave up, at which byte.
#[derive(Debug, PartialEq)]
enum FoldError {
    /// Not JSON.
    Invalid(usize),
    /// Nested more than [`MAX_DEPTH`] levels.
    TooDeep(usize),
}

/// A cursor over a JSON value for [`fold_keys`]; each method returns `None` on bad JSON
/// (or, with `too_deep` set, on nesting past [`MAX_DEPTH`]: the one pass checks both).
struct KeyScan<'a, 'm, 'f> {
    v: &'a [u8],
    i: usize,
    /// Levels open around the cursor.
    depth: usize,
    too_deep: bool,
    /// The top-level keys' resolutions of the values before (taken by the first object).
    memo: Option<&'m mut Memo<'f>>,
}

/// Per key position of a top-level object: the key's raw bytes, its field, and whether
/// the key spells the field exactly.
type Memo<'f> = Vec<(Vec<u8>, Option<&'f Field>, bool)>;

/// A key to rewrite: its bytes `start..end` (inside the quotes) become the name.
type Edit<'f> = (usize, usize, &'f str);

impl<'a, 'f> KeyScan<'a, '_, 'f> {
    fn peek(&mut self) -> Option<u8> {
        while self.v.get(self.i)?.is_ascii_whitespace() {
            self.i += 1;
        }
        self.v.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A string: the range of its contents and whether it holds escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = string_end(self.v, start)?;
        self.i = end + 1;
        Some((start, end, escaped))
    }

    /// An object whose keys name `fields`.
    fn object(&mut self, fields: &'f Fields, edits: &mut Vec<Edit<'f>>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        // This object's folded keys (indices into `edits`) and its exact names: a field
        // spelled exactly wins over another spelling of it, wherever each stands.
        let mut folded = Vec::new();
        let mut exact = Vec::new();
        // Only the top-level object consults and updates the memo.
        let mut memo = self.memo.take();
        let mut position = 0;
        loop {
            let (start, end, escaped) = self.string()?;
            let raw = &self.v[start..end];
            let known = match memo.as_deref() {
                Some(m) if !escaped => m
                    .get(position)
                    .filter(|(k, _, _)| k.as_slice() == raw)
                    .map(|&(_, f, e)| (f, e)),
                _ => None,
            };
            let (field, is_exact) = match known {
                Some(k) => k,
                None => {
                    let resolved = resolve(fields, raw, escaped)?;
                    if let Some(m) = memo
                        .as_deref_mut()
                        .filter(|m| !escaped && m.len() >= position)
                    {
                        m.truncate(position);
                        m.push((raw.to_vec(), resolved.0, resolved.1));
                    }
                    resolved
                }
            };
            position += 1;
            match field {
                Some(f) if is_exact => exact.push(f.name().as_str()),
                Some(f) => {
                    folded.push(edits.len());
                    edits.push((start, end, f.name().as_str()));
                }
                None => {}
            }
            self.eat(b':')?;
            self.value(field.map(|f| f.data_type()), edits)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        for i in folded {
            if exact.contains(&edits[i].2) {
                // Renamed to a name no field has: ignored, as an unknown field is.
                edits[i].2 = IGNORED_KEY;
            }
        }
        Some(())
    }

    /// A value of type `t` (`None`: a field the schema does not have).
    fn value(&mut self, t: Option<&'f DataType>, edits: &mut Vec<Edit<'f>>) -> Option<()> {
        let structured = matches!(
            (self.peek()?, t),
            (b'{', Some(DataType::Struct(_) | DataType::Map(..)))
                | (b'[', Some(DataType::List(_) | DataType::LargeList(_)))
        );
        if !structured {
            return self.skip();
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.too_deep = true;
            return None;
        }
        let r = self.structured(t, edits);
        self.depth -= 1;
        r
    }

    /// A STRUCT, MAP or ARRAY value of type `t`, at its opening bracket.
    fn structured(&mut self, t: Option<&'f DataType>, edits: &mut Vec<Edit<'f>>) -> Option<()> {
        match (self.peek()?, t) {
            (b'{', Some(DataType::Struct(fields))) => self.object(fields, edits),
            (b'{', Some(DataType::Map(entries, _))) => {
                // Keys are data; values may hold STRUCTs whose fields are names.
                let value_type = match entries.data_type() {
                    DataType::Struct(kv) => kv.get(1).map(|f| f.data_type()),
                    _ => None,
                };
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.value(value_type, edits)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            (b'[', Some(DataType::List(f) | DataType::LargeList(f))) => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.value(Some(f.data_type()), edits)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => self.skip(),
        }
    }

    /// Skips one value of no interest, nested or not, without recursion.
    fn skip(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if self.depth + depth > MAX_DEPTH {
                        self.too_deep = true;
                        return None;
                    }
                    self.i += 1;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b',' | b':' if depth > 0 => self.i += 1,
                b',' | b':' => return None,
                _ => {
                    while self.v.get(self.i).is_some_and(|b| {
                        !matches!(b, b',' | b'}' | b']' | b':') && !b.is_ascii_whitespace()
                    }) {
                        self.i += 1;
                    }
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

/// The raw bytes of the top-level fields `names` of the JSON object `value` (each `None`
/// when absent; a name spelled with escapes is not matched), in one pass that builds
/// nothing; `None` when `value` is not one JSON object. For a caller that takes a part of
/// a value as it is (a change envelope's `after` row).
pub fn top_level_fields<'v>(value: &'v [u8], names: &[&str]) -> Option<Vec<Option<&'v [u8]>>> {
    let mut found = vec![None; names.len()];
    each_top_level_field(value, |key, field| {
        if let Some(at) = key.and_then(|k| names.iter().position(|n| n.as_bytes() == k)) {
            found[at] = Some(field);
        }
    })?;
    Some(found)
}

/// The raw bytes of the only field of the JSON object `value`; `None` when it is not one
/// JSON object or has no field or several.
pub fn only_field(value: &[u8]) -> Option<&[u8]> {
    let mut fields = Vec::with_capacity(1);
    each_top_level_field(value, |_, field| fields.push(field))?;
    match fields[..] {
        [field] => Some(field),
        _ => None,
    }
}

/// Calls `f` with each top-level field of the JSON object `value`: its name's raw bytes
/// (`None` when spelled with escapes) and its value's; `None` when `value` is not one JSON
/// object.
fn each_top_level_field<'v>(
    value: &'v [u8],
    mut f: impl FnMut(Option<&'v [u8]>, &'v [u8]),
) -> Option<()> {
    let mut scan = KeyScan {
        v: value,
        i: 0,
        depth: 1,
        too_deep: false,
        memo: None,
    };
    scan.eat(b'{')?;
    if scan.peek()? == b'}' {
        scan.i += 1;
    } else {
        loop {
            let (start, end, escaped) = scan.string()?;
            scan.eat(b':')?;
            scan.peek()?;
            let from = scan.i;
            scan.skip()?;
            f((!escaped).then(|| &value[start..end]), &value[from..scan.i]);
            match scan.peek()? {
                b',' => scan.i += 1,
                b'}' => {
                    scan.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    // Nothing but whitespace may follow.
    match scan.peek() {
        None => Some(()),
        Some(_) => None,
    }
}

/// The integer in the top-level field of a JSON object that a decoder matching names as
/// ksqlDB does ([`JsonDecoder::case_insensitive`]) reads into the column `name`: the field
/// spelled `name` exactly, else the one whose name in upper case is `name`. `None` when
/// the value is not a JSON object, lacks the field, holds anything but an integer there,
/// spells it twice or spells any name with escapes: a caller then decodes the value in
/// full, which says why. One pass that skips every other field without building or
/// validating it (strings are jumped over with `memchr`): for a caller that needs one
/// column (the event time to order records by) of values it decodes in full later.
pub fn top_level_i64(value: &[u8], name: &str) -> Option<i64> {
    let (mut exact, mut folded) = (None, None);
    let mut twice = false;
    let mut escaped_key = false;
    each_top_level_field(value, |key, field| {
        let Some(key) = key else {
            // A name spelled with escapes might name the column: let the decoder say.
            escaped_key = true;
            return;
        };
        let slot = if key == name.as_bytes() {
            &mut exact
        } else if folds_bytes_to(key, name) {
            &mut folded
        } else {
            return;
        };
        twice |= slot.is_some();
        *slot = Some(json_i64(field));
    })?;
    if twice || escaped_key {
        return None;
    }
    // The exact spelling wins over another one, as the decoder has it.
    exact.or(folded).flatten()
}

/// A JSON integer's raw bytes as an i64: `-?(0|[1-9][0-9]*)` within range, else `None`
/// (a fraction, an exponent, a string, anything else).
fn json_i64(raw: &[u8]) -> Option<i64> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let well_formed = match digits {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !well_formed {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// An error as a dead letter's reason: without Arrow's "Json error: " prefix.
pub fn reason(e: &FormatError) -> String {
    match e {
        FormatError::Arrow(ArrowError::JsonError(m)) => m.clone(),
        other => other.to_string(),
    }
}

/// Infers an Arrow schema from a sample of JSON values (each parsed once here). Fields are in
/// the order of first appearance; numbers that were whole in the sample become `Int64`.
pub fn infer_schema<'a>(sample: impl Iterator<Item = &'a [u8]>) -> Result<Schema> {
    let values = sample.map(|l| {
        serde_json::from_slice::<Value>(l).map_err(|e| ArrowError::JsonError(e.to_string()))
    });
    Ok(arrow_json::reader::infer_json_schema_from_iterator(values)?)
}

/// Encodes each row of `batch` as a JSON object (null columns left out).
pub fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    {
        // NULL columns are written as `"f": null`, as ksqlDB writes them: a reader sees the
        // column is there and empty, not missing.
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let rows: Vec<Vec<u8>> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if rows.len() != batch.num_rows() {
        return Err(FormatError::Invalid(format!(
            "encoded {} rows of {}",
            rows.len(),
            batch.num_rows()
        )));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type};

    use super::*;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ])))
    }

    #[test]
    fn top_level_fields_are_taken_as_written() {
        let v = br#" {"op": "u", "after": {"a": [1, {"b": "}"}]}, "x": null} "#;
        let got = top_level_fields(v, &["after", "op", "missing"]).unwrap();
        assert_eq!(got[0], Some(&br#"{"a": [1, {"b": "}"}]}"#[..]));
        assert_eq!(got[1], Some(&br#""u""#[..]));
        assert_eq!(got[2], None);
        assert_eq!(top_level_fields(b"{}", &["a"]).unwrap(), vec![None]);
        assert_eq!(only_field(br#"{"id": "a b"}"#), Some(&br#""a b""#[..]));
        assert_eq!(only_field(br#"{"a": 1, "b": 2}"#), None);
        assert_eq!(only_field(b"{}"), None);
        for bad in [
            &b"[1]"[..],
            b"{\"a\": 1",
            b"{\"a\" 1}",
            b"{\"a\": 1} x",
            b"",
        ] {
            assert!(
                top_level_fields(bad, &["a"]).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn validate_tells_objects_from_other_values() {
        assert_eq!(
            validate(b" {\"a\": 1}").unwrap(),
            Kind::Object { empty: false }
        );
        assert_eq!(validate(b"{ }").unwrap(), Kind::Object { empty: true });
        assert_eq!(validate(b"[1]").unwrap(), Kind::Other);
        assert!(validate(b"{\"a\": ").is_err());
        assert!(validate(b"nope").is_err());
        assert_eq!(one_line(b"{\"a\":\r\n1}"), b"{\"a\":  1}");
    }

    #[test]
    fn decode_with_a_schema_rejects_a_wrong_typed_value_naming_the_field() {
        let d = decoder();
        let values: [&[u8]; 5] = [
            br#"{"id": 1, "name": "a", "extra": [1]}"#,
            br#"{"id": "x", "name": "b"}"#,
            b"not json",
            br#"{"name": "no id"}"#,
            br#"{"id": 5}"#,
        ];
        let out = d.decode_each(&values).unwrap();
        assert_eq!(out.rows, [0, 4]);
        let ids = out.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids, &Int64Array::from(vec![1, 5]));
        assert_eq!(out.batch.column(1).as_string::<i32>().value(0), "a");
        let reasons: Vec<(usize, &str)> =
            out.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(reasons[0].0, 1);
        assert!(reasons[0].1.contains("field 'id'"), "{reasons:?}");
        assert!(reasons[0].1.contains("Int64"), "{reasons:?}");
        assert_eq!(reasons[1], (2, "the value is not a JSON object"));
        assert_eq!(reasons[2].0, 3);
        assert!(reasons[2].1.contains("id"), "{reasons:?}");
        // A batch that fits decodes in one go.
        let ok: [&[u8]; 2] = [br#"{"id": 1}"#, br#"{"id": 2, "name": 3}"#];
        let b = d.decode(ok.iter().copied()).unwrap();
        assert_eq!(b.column(1).as_string::<i32>().value(1), "3");
        assert!(d.decode(std::iter::once(&b"{\"id\": 1"[..])).is_err());
        assert!(
            d.decode(std::iter::once(&b"{\"id\": 1} {\"id\": 2}"[..]))
                .is_err()
        );
    }

    #[test]
    fn inference_and_encoding() {
        let values: [&[u8]; 2] = [br#"{"a": 1, "b": "x"}"#, br#"{"a": 2}"#];
        let schema = infer_schema(values.iter().copied()).unwrap();
        assert_eq!(
            schema.field_with_name("a").unwrap().data_type(),
            &DataType::Int64
        );
        let d = JsonDecoder::new(Arc::new(schema));
        let b = d.decode(values.iter().copied()).unwrap();
        let rows = encode_rows(&b).unwrap();
        assert_eq!(
            rows,
            [
                br#"{"a":1,"b":"x"}"#.to_vec(),
                br#"{"a":2,"b":null}"#.to_vec()
            ],
            "a NULL column is written as null, as ksqlDB writes it"
        );
    }

    /// `MAP<VARCHAR, value>`.
    fn text_map(value: DataType) -> DataType {
        DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", value, true),
                ])),
                false,
            )),
            false,
        )
    }

    #[test]
    fn keys_remembered_by_position_still_resolve_each_value_on_its_own() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ZONE", DataType::Utf8, true),
            Field::new("N", DataType::Int64, true),
        ]));
        let d = JsonDecoder::new(schema).case_insensitive();
        let values: Vec<&[u8]> = vec![
            br#"{"zone": "a", "n": 1}"#,
            br#"{"zone": "b", "n": 2}"#,
            // Other orders and spellings among values of one batch.
            br#"{"n": 3, "zone": "c"}"#,
            br#"{"zone": "x", "ZONE": "d", "n": 4}"#,
            br#"{"z\u006fne": "e", "n": 5}"#,
            br#"{"zone": "f", "n": 6, "zone2": 0}"#,
            br#"{"zone": "g", "n": 7}"#,
        ];
        let b = d.decode(values.into_iter()).unwrap();
        let zones: Vec<&str> = b.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(zones, ["a", "b", "c", "d", "e", "f", "g"]);
        let ns: Vec<i64> = b.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ns, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_batch_spelled_alike_decodes_as_folding_would() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ZONE", DataType::Utf8, true),
            Field::new("N", DataType::Int64, true),
            Field::new("myField", DataType::Int64, true),
        ]));
        let d = JsonDecoder::new(schema).case_insensitive();
        let show = |b: &RecordBatch| -> Vec<String> {
            let zone = b.column(0).as_string::<i32>();
            let n = b.column(1).as_primitive::<Int64Type>();
            let my = b.column(2).as_primitive::<Int64Type>();
            let opt = |valid: bool, s: String| if valid { s } else { "-".into() };
            (0..b.num_rows())
                .map(|i| {
                    format!(
                        "{} {} {}",
                        opt(zone.is_valid(i), zone.value(i).to_string()),
                        opt(n.is_valid(i), n.value(i).to_string()),
                        opt(my.is_valid(i), my.value(i).to_string())
                    )
                })
                .collect()
        };
        let cases: &[(&[&str], &[&str])] = &[
            (
                &[r#"{"zone": "a", "n": 1}"#, r#"{"n": 2, "zone": "b"}"#],
                &["a 1 -", "b 2 -"],
            ),
            // A later value spells a key otherwise.
            (
                &[r#"{"zone": "a", "n": 1}"#, r#"{"Zone": "b", "N": 2}"#],
                &["a 1 -", "b 2 -"],
            ),
            // ... or holds the exact spelling beside another one.
            (
                &[r#"{"zone": "a"}"#, r#"{"zone": "x", "ZONE": "b"}"#],
                &["a - -", "b - -"],
            ),
            // Keys naming no column, in the first value or a later one.
            (
                &[r#"{"zone": "a", "x": [1]}"#, r#"{"zone": "b"}"#],
                &["a - -", "b - -"],
            ),
            (
                &[r#"{"zone": "a"}"#, r#"{"zone": "b", "x": {"n": 1}}"#],
                &["a - -", "b - -"],
            ),
            // A quoted mixed-case column takes its exact spelling only.
            (
                &[r#"{"myField": 1}"#, r#"{"MYFIELD": 2}"#],
                &["- - 1", "- - -"],
            ),
            // Escapes, and a key twice in the first value.
            (
                &[r#"{"zon\u0065": "a"}"#, r#"{"z\u006fne": "b"}"#],
                &["a - -", "b - -"],
            ),
            (&[r#"{"zone": "a", "zone": "c"}"#], &["c - -"]),
            (
                &[r#"{"zone": "a"}"#, r#"{"zone": "b", "zone": "c"}"#],
                &["a - -", "c - -"],
            ),
        ];
        for (values, expected) in cases {
            let bytes = || values.iter().map(|v| v.as_bytes());
            let batch = d.decode(bytes()).unwrap();
            assert_eq!(show(&batch), *expected, "{values:?}");
            assert_eq!(show(&d.decode_folded(bytes()).unwrap()), *expected);
        }
        // A bad value fails the batch with the reason folding gives.
        for bad in [
            r#"{"zone": [1]}"#,
            r#"{"zone": "a",}"#,
            r#"{"zone": "a", "n": 1,}"#,
            r#"{"zone": "a" "n": 1}"#,
            r#"[1]"#,
            r#"{"zone": "a"} 1"#,
            r#"{"zone": "a""#,
        ] {
            let values = [r#"{"zone": "a"}"#, bad];
            let bytes = || values.iter().map(|v| v.as_bytes());
            let folded = d.decode_folded(bytes()).map_err(|e| e.to_string());
            assert!(folded.is_err(), "{bad}");
            assert_eq!(
                d.decode(bytes()).map_err(|e| e.to_string()).map(|_| ()),
                folded.map(|_| ()),
                "{bad}"
            );
        }
        // Deep nesting in a key naming no column is refused before the decoder sees it.
        let deep = format!(
            r#"{{"zone": "a", "x": {}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = d.decode(std::iter::once(deep.as_bytes())).unwrap_err();
        assert!(err.to_string().contains("nests more than"), "{err}");
    }

    #[test]
    fn separators_are_checked_where_the_arrow_decoder_reads_commas_as_whitespace() {
        for good in [
            "{}",
            " { \"a\" : 1 } ",
            r#"{"a":[1,2,{"b":null}],"c":"x\",y}","d":[],"e":{}}"#,
            r#"{"a\\":"\\"}"#,
        ] {
            assert!(separators_sound(good.as_bytes()), "{good}");
        }
        for bad in [
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":1,,"b":2}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a" 1}"#,
            r#"{"a"::1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":]}"#,
            r#"{"a":"x}"#,
            r#"{"a":1"#,
            "",
        ] {
            assert!(!separators_sound(bad.as_bytes()), "{bad}");
        }
        // Nesting up to the depth bound passes; one level more is left to the fallback.
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(separators_sound(nested(MAX_DEPTH).as_bytes()));
        assert!(!separators_sound(nested(MAX_DEPTH + 1).as_bytes()));
        // Valid values with one or two bytes inserted, deleted or replaced, seeded: a
        // value the decoder takes without folding is one it takes with folding, and the
        // other way round.
        let d = JsonDecoder::new(Arc::new(Schema::new(vec![
            Field::new("A", DataType::Int64, true),
            Field::new("B", DataType::Utf8, true),
            Field::new("C", DataType::Int64, true),
            Field::new("D", DataType::Boolean, true),
        ])))
        .case_insensitive();
        let templates = [
            &br#"{"a": 1, "b": "x,y", "c": null, "d": true}"#[..],
            br#"{"B":"\"]","a":12,"D":false}"#,
        ];
        let alphabet = br#"{}[],:" 1"#;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut taken, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut v = templates[(next() % 2) as usize].to_vec();
            for _ in 0..1 + next() % 2 {
                let at = (next() % v.len() as u64) as usize;
                let b = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => v.insert(at, b),
                    1 => {
                        v.remove(at);
                    }
                    _ => v[at] = b,
                }
            }
            let folded = d.decode_folded(std::iter::once(v.as_slice()));
            let text = String::from_utf8_lossy(&v);
            match d.decode_as_spelled(&[v.as_slice()]) {
                Some(b) => {
                    assert_eq!(Some(b), folded.ok(), "{text}");
                    taken += 1;
                }
                None => refused += 1,
            }
        }
        assert!(
            taken > 1000 && refused > 1000,
            "{taken} taken, {refused} refused"
        );
    }

    #[test]
    fn case_insensitive_names_match_as_ksqldb_does() {
        let inner = Fields::from(vec![Field::new("CITY", DataType::Utf8, true)]);
        let map = text_map(DataType::Int64);
        let schema = Arc::new(Schema::new(vec![
            Field::new("ZONE", DataType::Utf8, true),
            Field::new("myField", DataType::Int64, true),
            Field::new("ADDR", DataType::Struct(inner.clone()), true),
            Field::new(
                "ADDRS",
                DataType::new_list(DataType::Struct(inner), true),
                true,
            ),
            Field::new("M", map, true),
        ]));
        let d = JsonDecoder::new(schema).case_insensitive();
        let v = br#"{"zone": "a", "MYFIELD": 1, "Addr": {"city": "x"},
            "addrs": [{"City": "y"}], "m": {"zone": 2}, "other": {"zone": [1, {"a": "b"}]}}"#;
        let b = d.decode(std::iter::once(&v[..])).unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "a");
        // A quoted mixed-case column takes only its exact spelling.
        assert!(b.column(1).is_null(0));
        let addr = b.column(2).as_struct();
        assert_eq!(addr.column(0).as_string::<i32>().value(0), "x");
        let addrs = b.column(3).as_list::<i32>().value(0);
        assert_eq!(addrs.as_struct().column(0).as_string::<i32>().value(0), "y");
        // Map keys are data: "zone" stays "zone".
        let m = b.column(4).as_map();
        assert_eq!(m.keys().as_string::<i32>().value(0), "zone");
        // An exact spelling wins over another spelling of the same field, in either order.
        for v in [
            &br#"{"zone": "lower", "ZONE": "exact"}"#[..],
            &br#"{"ZONE": "exact", "Zone": "other"}"#[..],
        ] {
            let b = d.decode(std::iter::once(v)).unwrap();
            assert_eq!(b.column(0).as_string::<i32>().value(0), "exact");
        }
        // Exact names win and need no copy.
        let fields = d.schema().fields().clone();
        assert_eq!(
            fold_keys(br#"{"ZONE": "a", "x": {"zone": 1}}"#, &fields),
            Ok(None)
        );
        // Bad JSON is an error saying where; deep nesting in an unknown field is skipped
        // without recursion, up to the depth bound the same pass checks.
        assert_eq!(
            fold_keys(br#"{"zone": "#, &fields),
            Err(FoldError::Invalid(9))
        );
        let nested = |n: usize| {
            format!(
                r#"{{"zone": "a", "x": {}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert_eq!(
            fold_keys(nested(MAX_DEPTH - 1).as_bytes(), &fields)
                .unwrap()
                .unwrap()[..9],
            br#"{"ZONE": "#[..]
        );
        assert!(matches!(
            fold_keys(nested(100_000).as_bytes(), &fields),
            Err(FoldError::TooDeep(_))
        ));
    }

    /// What the adversary found: escaped keys, trailing commas, STRUCTs inside MAP values,
    /// and values nested deep enough to overflow a stack are all handled.
    #[test]
    fn one_top_level_integer_is_found_as_the_decoder_would_read_it() {
        let f = |v: &str| top_level_i64(v.as_bytes(), "TS");
        assert_eq!(f(r#"{"a": {"ts": 1}, "ts": 42, "b": [1, "x"]}"#), Some(42));
        assert_eq!(f(r#"{"TS": -7}"#), Some(-7));
        // The exact spelling wins wherever it stands.
        assert_eq!(f(r#"{"TS": 1, "ts": 2}"#), Some(1));
        assert_eq!(f(r#"{"ts": 2, "TS": 1}"#), Some(1));
        // Anything the caller must decode in full to judge: None.
        for v in [
            r#"{"ts": "12"}"#,
            r#"{"ts": 1.5}"#,
            r#"{"ts": null}"#,
            r#"{"other": 1}"#,
            r#"{"ts": 1, "Ts": 2}"#,
            r#"{"ts": 1,}"#,
            r#"{"ts": 1} {"ts": 2}"#,
            r#"[1]"#,
            r#"{"ts": 1"#,
            r#"{"t\u0053": 5}"#,
            r#"{"ts": 01}"#,
            r#"{"ts": +1}"#,
            r#"{"ts": 1e3}"#,
            r#"{"ts": 99999999999999999999}"#,
            "",
        ] {
            assert_eq!(f(v), None, "{v}");
        }
        // A quoted mixed-case column takes its exact spelling only.
        assert_eq!(top_level_i64(br#"{"myTs": 3}"#, "myTs"), Some(3));
        assert_eq!(top_level_i64(br#"{"MYTS": 3}"#, "myTs"), None);
    }

    #[test]
    fn folding_reads_escapes_refuses_malformed_values_and_bounds_depth() {
        let inner = Fields::from(vec![Field::new("A", DataType::Int64, true)]);
        let map = text_map(DataType::Struct(inner));
        let schema = Arc::new(Schema::new(vec![
            Field::new("ZONE", DataType::Utf8, true),
            Field::new("M", map, true),
            Field::new("WE\"IRD", DataType::Utf8, true),
        ]));
        let d = JsonDecoder::new(schema).case_insensitive();
        let one = |v: &[u8]| d.decode(std::iter::once(v));
        // An escaped exact spelling wins; an escaped other spelling folds.
        let b = one(br#"{"\u005aONE": "exact", "zone": "folded"}"#).unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "exact");
        let b = one(br#"{"zo\u006ee": "x"}"#).unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "x");
        // A trailing comma is not JSON.
        let e = one(br#"{"zone": "x",}"#).unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        // STRUCT fields inside MAP values fold; the map's keys do not.
        let b = one(br#"{"m": {"zone": {"a": 1}}}"#).unwrap();
        let m = b.column(1).as_map();
        assert_eq!(m.keys().as_string::<i32>().value(0), "zone");
        assert_eq!(
            m.values()
                .as_struct()
                .column(0)
                .as_primitive::<Int64Type>()
                .value(0),
            1
        );
        // A quoted column name with a quote folds into valid JSON.
        let b = one(br#"{"we\"ird": "q"}"#).unwrap();
        assert_eq!(b.column(2).as_string::<i32>().value(0), "q");
        // Too deep, in a known or unknown field: refused with the limit, no recursion.
        for v in [
            format!(
                r#"{{"zone": {}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            format!(
                r#"{{"x": {}1{}}}"#,
                "[".repeat(MAX_DEPTH),
                "]".repeat(MAX_DEPTH)
            ),
        ] {
            let e = one(v.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("levels deep"), "{e}");
        }
        // A plain decoder is bounded too.
        let plain = JsonDecoder::new(Arc::new(Schema::new(vec![Field::new(
            "x",
            DataType::Utf8,
            true,
        )])));
        let deep = format!(
            r#"{{"x": {}{}}}"#,
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        assert!(plain.decode(std::iter::once(deep.as_bytes())).is_err());
    }
}
