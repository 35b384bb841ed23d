//! The `_bulk` API: a request body is NDJSON, an action line then (for `index`) the document
//! on one line; the response's `items` answer each action in order, each with its own status,
//! even when the request as a whole answers 200. What the sink does with each record follows
//! from [`outcomes`]: done, retried alone (429, 5xx: the server was busy, not the document
//! wrong), or a dead letter with the server's reason.

use serde_json::Value;

/// One bulk action: upsert a document under an id (`index` replaces a document of the same
/// id, so a replay overwrites what it wrote before), or delete one (a tombstone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// `index`: the document, one JSON object.
    Index {
        /// The target index.
        index: &'a str,
        /// The document id.
        id: &'a str,
        /// The document.
        doc: &'a [u8],
    },
    /// `delete`.
    Delete {
        /// The target index.
        index: &'a str,
        /// The document id.
        id: &'a str,
    },
}

/// What became of one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written (or, for a delete, the document was already gone).
    Done,
    /// Not written for a reason that may pass (429, 5xx): send this action again, alone.
    Retry {
        /// The item's status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
    /// Not written because of the cluster, not the document (401/403: the credentials lack
    /// a privilege, 404: the index is missing and may not be created): every document would
    /// fare the same, so the sink stops its attempt with the reason rather than make dead
    /// letters of them all.
    Fail {
        /// The item's status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
    /// Refused for what it is (a mapping error, a malformed document): a dead letter.
    Reject {
        /// The item's status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
}

/// Appends `action` to a bulk body. A document must be a JSON object; one written over
/// several lines is put on one (NDJSON has no other framing). `Err` says why the record
/// cannot be a document; nothing is appended then.
pub fn append(body: &mut Vec<u8>, action: &Action<'_>) -> Result<(), String> {
    let (op, index, id, doc) = match action {
        Action::Index { index, id, doc } => ("index", index, id, Some(*doc)),
        Action::Delete { index, id } => ("delete", index, id, None),
    };
    let doc = match doc {
        Some(doc) => Some(document(doc)?),
        None => None,
    };
    let meta = serde_json::json!({ op: { "_index": index, "_id": id } });
    body.extend_from_slice(meta.to_string().as_bytes());
    body.push(b'\n');
    if let Some(doc) = doc {
        body.extend_from_slice(&doc);
        body.push(b'\n');
    }
    Ok(())
}

/// `doc` as one line of JSON, checked to be an object.
fn document(doc: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let trimmed = doc.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return Err("the value is not a JSON object, which a document must be".into());
    }
    // One line already, and valid: sent as it is (the common case costs one scan).
    if !trimmed.contains(&b'\n') && !trimmed.contains(&b'\r') {
        serde_json::from_slice::<serde::de::IgnoredAny>(trimmed)
            .map_err(|e| format!("the value is not valid JSON: {e}"))?;
        return Ok(std::borrow::Cow::Borrowed(trimmed));
    }
    let v: Value =
        serde_json::from_slice(trimmed).map_err(|e| format!("the value is not valid JSON: {e}"))?;
    Ok(std::borrow::Cow::Owned(v.to_string().into_bytes()))
}

/// Longest document id Elasticsearch takes, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// A document id: the record key (its UTF-8 text) when there is one, so that later records
/// of the key replace the document; else `topic-partition-offset`, which a replay of the
/// same record repeats. `Err` says why a key cannot be an id.
pub fn doc_id(
    key: Option<&[u8]>,
    topic: &str,
    partition: u32,
    offset: i64,
) -> Result<String, String> {
    let Some(key) = key else {
        return Ok(format!("{topic}-{partition}-{offset}"));
    };
    let id = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8 text".to_string())?;
    if id.is_empty() {
        return Err("the key is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "the key is {} bytes; a document id holds at most {MAX_ID_BYTES}",
            id.len()
        ));
    }
    Ok(id.to_string())
}

/// An `index` setting: text with placeholders in braces, parsed once. A placeholder is
/// either a date of the record time (UTC) in the letters of Java's `DateTimeFormatter` as
/// Elastic's tools write them (`yyyy`, `MM`, `dd`, `HH`, `mm`; other characters as they are),
/// so `alerts-{yyyy.MM.dd}` gives `alerts-2026.11.29`; or `{field:NAME}`, a field of the
/// record value (`{field:geo.zone}` for a nested one), lower-cased since index names are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPattern {
    pattern: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Date letters and separators, checked.
    Date(String),
    /// A field's path of keys.
    Field(Vec<String>),
}

impl IndexPattern {
    /// Parses `pattern`; `Err` says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<IndexPattern, String> {
        let mut pieces = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("index pattern '{pattern}': a '{{' is not closed"))?;
            let spec = &rest[open + 1..open + close];
            pieces.push(match spec.strip_prefix("field:") {
                Some(path) if !path.is_empty() && path.split('.').all(|k| !k.is_empty()) => {
                    Piece::Field(path.split('.').map(str::to_string).collect())
                }
                Some(_) => {
                    return Err(format!(
                        "index pattern '{pattern}': {{field:NAME}} needs a field name"
                    ));
                }
                None => {
                    date_letters(pattern, spec)?;
                    Piece::Date(spec.to_string())
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        let pattern = IndexPattern {
            pattern: pattern.to_string(),
            pieces,
        };
        // What the pattern itself fixes must be allowed: render with a sample time and
        // field values, so `Alerts-{yyyy}` is refused at load, not record by record.
        let sample = pattern
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Date(spec) => render_date(spec, 0),
                Piece::Field(_) => "x".into(),
            })
            .collect::<String>();
        check_index(&sample).map_err(|e| format!("index pattern '{}': {e}", pattern.pattern))?;
        Ok(pattern)
    }

    /// True when the pattern reads fields of the value (which must then be parsed).
    pub fn needs_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Field(_)))
    }

    /// The text before the first placeholder: what every index it names starts with.
    pub fn prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Text(t)) => t,
            _ => "",
        }
    }

    /// The index for a record at `time_ms` with `value`; `Err` says why the record has none.
    pub fn render(&self, time_ms: i64, value: Option<&Value>) -> Result<String, String> {
        if chrono::DateTime::from_timestamp_millis(time_ms).is_none() {
            return Err(format!("record time {time_ms} is out of range"));
        }
        let mut out = String::with_capacity(self.pattern.len() + 8);
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Date(spec) => out.push_str(&render_date(spec, time_ms)),
                Piece::Field(path) => out.push_str(
                    &crate::objstore::template::field_text(value, path, "index")?.to_lowercase(),
                ),
            }
        }
        check_index(&out)?;
        Ok(out)
    }
}

/// Checks that `spec` holds only the date letters the pattern knows.
fn date_letters(pattern: &str, spec: &str) -> Result<(), String> {
    let mut s = spec;
    while !s.is_empty() {
        if let Some(f) = DATE_FIELDS.iter().find(|f| s.starts_with(**f)) {
            s = &s[f.len()..];
            continue;
        }
        let c = s.chars().next().unwrap_or_default();
        if c.is_ascii_alphabetic() {
            return Err(format!(
                "index pattern '{pattern}': '{c}' is not a date field (yyyy, MM, dd, HH, mm) or field:NAME"
            ));
        }
        s = &s[c.len_utf8()..];
    }
    Ok(())
}

const DATE_FIELDS: [&str; 5] = ["yyyy", "MM", "dd", "HH", "mm"];

/// `spec` (checked by [`date_letters`]) for `time_ms` (in range).
fn render_date(spec: &str, time_ms: i64) -> String {
    use chrono::{Datelike, Timelike};
    let time = chrono::DateTime::from_timestamp_millis(time_ms).unwrap_or_default();
    let mut out = String::new();
    let mut s = spec;
    while let Some(c) = s.chars().next() {
        let (text, len) = match DATE_FIELDS.iter().position(|f| s.starts_with(*f)) {
            Some(0) => (format!("{:04}", time.year()), 4),
            Some(1) => (format!("{:02}", time.month()), 2),
            Some(2) => (format!("{:02}", time.day()), 2),
            Some(3) => (format!("{:02}", time.hour()), 2),
            Some(4) => (format!("{:02}", time.minute()), 2),
            _ => (c.to_string(), c.len_utf8()),
        };
        out.push_str(&text);
        s = &s[len..];
    }
    out
}

/// Elasticsearch's rules for an index name.
fn check_index(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("index name '{name}' {why}"));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("is not allowed");
    }
    if name.starts_with(['-', '_', '+']) {
        return bad("starts with '-', '_' or '+'");
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("has upper-case letters");
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        return bad(&format!("holds '{c}'"));
    }
    Ok(())
}

/// Reads a bulk response into one [`Outcome`] per action sent (`sent` of them, in order).
/// `Err`: the answer is not a bulk response for this request (a proxy's page, a count that
/// does not match); the whole request is then to be sent again.
pub fn outcomes(response: &[u8], sent: usize) -> Result<Vec<Outcome>, String> {
    let v: Value = serde_json::from_slice(response)
        .map_err(|e| format!("the bulk response is not JSON: {e}"))?;
    let items = v["items"]
        .as_array()
        .ok_or("the bulk response has no 'items'")?;
    if items.len() != sent {
        return Err(format!(
            "the bulk response answers {} actions, {sent} were sent",
            items.len()
        ));
    }
    items.iter().map(outcome).collect()
}

fn outcome(item: &Value) -> Result<Outcome, String> {
    // Each item is `{"<op>": {"status": ..., "error": ...}}`.
    let (op, result) = item
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or("a bulk item is not an object")?;
    let status = result["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("a bulk item has no status")?;
    let reason = || reason(&result["error"]);
    Ok(match status {
        200..=299 => Outcome::Done,
        // Deleting what is not there leaves what a delete wants.
        404 if op == "delete" => Outcome::Done,
        429 | 500..=599 => Outcome::Retry {
            status,
            reason: reason(),
        },
        401 | 403 | 404 => Outcome::Fail {
            status,
            reason: reason(),
        },
        _ => Outcome::Reject {
            status,
            reason: reason(),
        },
    })
}

/// `type: reason` of an item's error, with its cause (`caused_by`) when it has one.
fn reason(error: &Value) -> String {
    let one = |e: &Value| match (e["type"].as_str(), e["reason"].as_str()) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (Some(t), None) => t.to_string(),
        (None, Some(r)) => r.to_string(),
        (None, None) => e.as_str().map_or_else(|| e.to_string(), str::to_string),
    };
    match &error["caused_by"] {
        Value::Null => one(error),
        cause => format!("{} (caused by {})", one(error), one(cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_an_action_line_then_the_document_on_one_line() {
        let mut body = Vec::new();
        let doc = b"{\n  \"a\": 1,\n  \"b\": \"x\\ny\"\n}";
        append(
            &mut body,
            &Action::Index {
                index: "alerts",
                id: "k\"1",
                doc,
            },
        )
        .unwrap();
        append(
            &mut body,
            &Action::Delete {
                index: "alerts",
                id: "k2",
            },
        )
        .unwrap();
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], r#"{"index":{"_id":"k\"1","_index":"alerts"}}"#);
        assert_eq!(lines[1], r#"{"a":1,"b":"x\ny"}"#);
        assert_eq!(lines[2], r#"{"delete":{"_id":"k2","_index":"alerts"}}"#);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn what_cannot_be_a_document_is_said_and_appends_nothing() {
        let mut body = Vec::new();
        for (doc, why) in [
            (&b"[1,2]"[..], "not a JSON object"),
            (b"{\"a\":", "not valid JSON"),
            (b"{\"a\":1}{\"b\":2}", "not valid JSON"),
            (b"plain text", "not a JSON object"),
        ] {
            let e = append(
                &mut body,
                &Action::Index {
                    index: "i",
                    id: "1",
                    doc,
                },
            )
            .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(body.is_empty());
    }

    #[test]
    fn ids_come_from_the_key_or_the_place() {
        assert_eq!(doc_id(Some(b"acct-7"), "t", 0, 5).unwrap(), "acct-7");
        assert_eq!(doc_id(None, "alerts", 2, 41).unwrap(), "alerts-2-41");
        assert!(
            doc_id(Some(&[0xff, 0xfe]), "t", 0, 0)
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(doc_id(Some(b""), "t", 0, 0).unwrap_err().contains("empty"));
        let long = vec![b'k'; MAX_ID_BYTES + 1];
        assert!(
            doc_id(Some(&long), "t", 0, 0)
                .unwrap_err()
                .contains("513 bytes")
        );
    }

    #[test]
    fn index_names_follow_the_record_time_and_fields() {
        // 2026-11-29T23:59:30Z
        let t = 1_795_996_770_000;
        let render =
            |p: &str, v: Option<&Value>| IndexPattern::parse(p).and_then(|p| p.render(t, v));
        assert_eq!(
            render("alerts-{yyyy.MM.dd}", None).unwrap(),
            "alerts-2026.11.29"
        );
        assert_eq!(
            render("logs-{yyyy-MM}-x-{HH:mm}", None),
            Err("index pattern 'logs-{yyyy-MM}-x-{HH:mm}': index name 'logs-1970-01-x-00:00' holds ':'".into())
        );
        assert_eq!(render("fixed", None).unwrap(), "fixed");
        assert_eq!(
            IndexPattern::parse("fixed-{yyyy}").unwrap().prefix(),
            "fixed-"
        );
        assert!(render("a-{yyyy", None).unwrap_err().contains("not closed"));
        assert!(
            render("a-{yyyy.Q}", None)
                .unwrap_err()
                .contains("'Q' is not a date field")
        );
        assert!(render("Alerts", None).unwrap_err().contains("upper-case"));
        assert!(render("_x", None).unwrap_err().contains("starts with"));
        assert!(render("a b", None).unwrap_err().contains("' '"));
        assert!(
            render("a-{field:}", None)
                .unwrap_err()
                .contains("needs a field name")
        );
        let v = serde_json::json!({"geo": {"zone": "EU-West"}, "n": 7, "bad": "a/b"});
        assert_eq!(render("z-{field:geo.zone}", Some(&v)).unwrap(), "z-eu-west");
        assert_eq!(render("n-{field:n}-{yyyy}", Some(&v)).unwrap(), "n-7-2026");
        assert!(
            render("z-{field:nope}", Some(&v))
                .unwrap_err()
                .contains("'nope' is missing")
        );
        assert!(
            render("z-{field:bad}", Some(&v))
                .unwrap_err()
                .contains("holds '/'")
        );
        assert!(
            IndexPattern::parse("z-{field:geo.zone}")
                .unwrap()
                .needs_value()
        );
    }

    #[test]
    fn each_item_is_done_retried_or_a_dead_letter_with_the_reason() {
        let response = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"a","_id":"1","status":201,"result":"created"}},
            {"index":{"_index":"a","_id":"2","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_index":"a","_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]","caused_by":{"type":"number_format_exception","reason":"For input string: \"x\""}}}},
            {"delete":{"_index":"a","_id":"4","status":404,"result":"not_found"}},
            {"index":{"_index":"a","_id":"5","status":503,"error":"unavailable"}},
            {"index":{"_index":"a","_id":"6","status":409,"error":{"type":"version_conflict_engine_exception","reason":"conflict"}}},
            {"index":{"_index":"b","_id":"7","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [b]"}}},
            {"index":{"_index":"a","_id":"8","status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized"}}}
        ]}"#;
        let got = outcomes(response, 8).unwrap();
        assert_eq!(got[0], Outcome::Done);
        assert_eq!(
            got[1],
            Outcome::Retry {
                status: 429,
                reason: "es_rejected_execution_exception: queue full".into()
            }
        );
        assert_eq!(
            got[2],
            Outcome::Reject {
                status: 400,
                reason: "mapper_parsing_exception: failed to parse field [n] (caused by number_format_exception: For input string: \"x\")".into()
            }
        );
        assert_eq!(got[3], Outcome::Done);
        assert_eq!(
            got[4],
            Outcome::Retry {
                status: 503,
                reason: "unavailable".into()
            }
        );
        assert!(matches!(got[5], Outcome::Reject { status: 409, .. }));
        assert!(matches!(got[6], Outcome::Fail { status: 404, .. }));
        assert!(matches!(got[7], Outcome::Fail { status: 403, .. }));
    }

    #[test]
    fn an_answer_that_is_not_this_requests_is_an_error() {
        assert!(
            outcomes(b"<html>502 Bad Gateway</html>", 1)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            outcomes(br#"{"error":"x"}"#, 1)
                .unwrap_err()
                .contains("no 'items'")
        );
        assert!(
            outcomes(br#"{"items":[]}"#, 2)
                .unwrap_err()
                .contains("answers 0 actions, 2 were sent")
        );
        assert!(
            outcomes(br#"{"items":[{"index":{}}]}"#, 1)
                .unwrap_err()
                .contains("no status")
        );
    }
}
