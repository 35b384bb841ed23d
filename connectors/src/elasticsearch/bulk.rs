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

/// The index for a record at `time_ms` (UTC) from `pattern`: text in braces is a date in
/// Java's `DateTimeFormatter` letters as Elastic's tools write them (`yyyy`, `MM`, `dd`,
/// `HH`, `mm`; other characters as they are), so `alerts-{yyyy.MM.dd}` gives
/// `alerts-2026.11.29`. `Err` names what an index name cannot hold.
pub fn index_name(pattern: &str, time_ms: i64) -> Result<String, String> {
    use chrono::{Datelike, TimeZone, Timelike};
    let time = chrono::Utc
        .timestamp_millis_opt(time_ms)
        .single()
        .ok_or_else(|| format!("record time {time_ms} is out of range"))?;
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("index pattern '{pattern}': a '{{' is not closed"))?;
        let mut spec = &rest[open + 1..open + close];
        while !spec.is_empty() {
            let (text, len) = match spec {
                s if s.starts_with("yyyy") => (format!("{:04}", time.year()), 4),
                s if s.starts_with("MM") => (format!("{:02}", time.month()), 2),
                s if s.starts_with("dd") => (format!("{:02}", time.day()), 2),
                s if s.starts_with("HH") => (format!("{:02}", time.hour()), 2),
                s if s.starts_with("mm") => (format!("{:02}", time.minute()), 2),
                s => {
                    let c = s.chars().next().unwrap_or_default();
                    if c.is_ascii_alphabetic() {
                        return Err(format!(
                            "index pattern '{pattern}': '{c}' is not a date field (yyyy, MM, dd, HH, mm)"
                        ));
                    }
                    (c.to_string(), c.len_utf8())
                }
            };
            out.push_str(&text);
            spec = &spec[len..];
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    check_index(&out)?;
    Ok(out)
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
    fn index_names_follow_the_record_time() {
        // 2026-11-29T23:59:30Z
        let t = 1_795_996_770_000;
        assert_eq!(
            index_name("alerts-{yyyy.MM.dd}", t).unwrap(),
            "alerts-2026.11.29"
        );
        assert_eq!(
            index_name("logs-{yyyy-MM}-x-{HH:mm}", t),
            Err("index name 'logs-2026-11-x-23:59' holds ':'".into())
        );
        assert_eq!(index_name("fixed", t).unwrap(), "fixed");
        assert!(index_name("a-{yyyy", t).unwrap_err().contains("not closed"));
        assert!(
            index_name("a-{yyyy.Q}", t)
                .unwrap_err()
                .contains("'Q' is not a date field")
        );
        assert!(index_name("Alerts", t).unwrap_err().contains("upper-case"));
        assert!(index_name("_x", t).unwrap_err().contains("starts with"));
        assert!(index_name("a b", t).unwrap_err().contains("' '"));
    }

    #[test]
    fn each_item_is_done_retried_or_a_dead_letter_with_the_reason() {
        let response = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"a","_id":"1","status":201,"result":"created"}},
            {"index":{"_index":"a","_id":"2","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_index":"a","_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]","caused_by":{"type":"number_format_exception","reason":"For input string: \"x\""}}}},
            {"delete":{"_index":"a","_id":"4","status":404,"result":"not_found"}},
            {"index":{"_index":"a","_id":"5","status":503,"error":"unavailable"}},
            {"index":{"_index":"a","_id":"6","status":409,"error":{"type":"version_conflict_engine_exception","reason":"conflict"}}}
        ]}"#;
        let got = outcomes(response, 6).unwrap();
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
