//! The line formats of line-oriented sinks (the file sink, JSON-lines objects): a record's
//! value alone, or its envelope, a JSON object with the record's coordinates.

use arrow::datatypes::{DataType, Field, Fields, Schema};
use serde_json::Value;
use sluice_log::ConsumerRecord;

use crate::json;

/// The record's value as it is (`None` for a tombstone: nothing to write).
pub fn value(r: &ConsumerRecord) -> Option<Vec<u8>> {
    r.value.as_ref().map(|v| v.to_vec())
}

/// The record's value as one JSON line: it must be JSON (the reason when it is not); line
/// breaks between its tokens become spaces. `Ok(None)` for a tombstone. Parses the value once,
/// without building it.
pub fn json_value(r: &ConsumerRecord) -> Result<Option<Vec<u8>>, String> {
    let Some(v) = &r.value else {
        return Ok(None);
    };
    json::validate(v).map_err(|e| format!("the value is not JSON: {e}"))?;
    Ok(Some(json::one_line(v)))
}

/// The record as one JSON object: `topic`, `partition`, `offset`, `timestamp`, `key` (text)
/// and `value` (parsed when it is JSON, else its text; `null` for a tombstone). Parses the
/// value once.
pub fn envelope(r: &ConsumerRecord) -> Vec<u8> {
    let value = match &r.value {
        None => Value::Null,
        Some(v) => serde_json::from_slice(v)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned())),
    };
    envelope_of(r, value)
}

/// The envelope of a record whose value the caller parsed already (see [`envelope`]).
pub fn envelope_of(r: &ConsumerRecord, value: Value) -> Vec<u8> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let v = serde_json::json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": r.key.as_deref().map(text),
        "value": value,
    });
    // A `Value` built from strings and numbers always serializes.
    v.to_string().into_bytes()
}

/// The envelope with the value's bytes inserted as they are (checked, not built): for a
/// reader that parses the line anyway (a decoder into [`envelope_schema`]). Fields in the
/// order of [`envelope_schema`]; `value` is `null` for a tombstone. A value that is not
/// exactly one JSON object is refused with the reason: pasted in, text such as
/// `{"v":1},"offset":9` would forge the envelope's own fields.
pub fn envelope_raw(r: &ConsumerRecord) -> Result<Vec<u8>, String> {
    if let Some(v) = r.value.as_deref() {
        match json::validate(v) {
            Ok(json::Kind::Object { .. }) => {}
            Ok(json::Kind::Other) => return Err("the value is not a JSON object".into()),
            Err(e) => return Err(format!("the value is not JSON: {e}")),
        }
    }
    let value = r.value.as_deref().unwrap_or(b"null");
    let mut out = Vec::with_capacity(value.len() + 128);
    out.extend_from_slice(b"{\"topic\":");
    out.extend_from_slice(Value::from(&*r.topic).to_string().as_bytes());
    out.extend_from_slice(
        format!(
            ",\"partition\":{},\"offset\":{},\"timestamp\":{},\"key\":",
            r.partition, r.offset, r.timestamp
        )
        .as_bytes(),
    );
    let key = r
        .key
        .as_deref()
        .map_or(Value::Null, |k| Value::from(String::from_utf8_lossy(k)));
    out.extend_from_slice(key.to_string().as_bytes());
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(value);
    out.push(b'}');
    Ok(out)
}

/// The Arrow schema of envelopes whose values have the fields `value`: `topic`, `partition`,
/// `offset`, `timestamp` (numbers as `Int64`, as inference would have them), `key` (text) and
/// `value` (a struct; null for a tombstone).
pub fn envelope_schema(value: Fields) -> Schema {
    Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int64, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Struct(value), true),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn rec(value: Option<&str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            timestamp: 9,
            key: Some(Bytes::from_static(b"k")),
            value: value.map(|v| Bytes::from(v.to_string())),
            headers: Vec::new(),
        }
    }

    #[test]
    fn values_and_envelopes() {
        assert_eq!(value(&rec(Some("not json"))).unwrap(), b"not json");
        assert_eq!(value(&rec(None)), None);
        assert_eq!(
            json_value(&rec(Some("[1,\n2]"))).unwrap().unwrap(),
            b"[1, 2]"
        );
        assert!(
            json_value(&rec(Some("nope")))
                .unwrap_err()
                .starts_with("the value is not JSON")
        );
        assert_eq!(json_value(&rec(None)).unwrap(), None);
        assert_eq!(
            String::from_utf8(envelope(&rec(Some("{\"a\": 1}")))).unwrap(),
            r#"{"key":"k","offset":7,"partition":1,"timestamp":9,"topic":"t","value":{"a":1}}"#
        );
        assert!(
            String::from_utf8(envelope(&rec(Some("x"))))
                .unwrap()
                .contains(r#""value":"x""#)
        );
        assert!(
            String::from_utf8(envelope(&rec(None)))
                .unwrap()
                .contains(r#""value":null"#)
        );
        let raw = envelope_raw(&rec(Some("{\"a\": 1}"))).unwrap();
        assert_eq!(
            String::from_utf8(raw.clone()).unwrap(),
            r#"{"topic":"t","partition":1,"offset":7,"timestamp":9,"key":"k","value":{"a": 1}}"#
        );
        let schema = Arc::new(envelope_schema(Fields::from(vec![Field::new(
            "a",
            DataType::Int64,
            true,
        )])));
        let decoded = json::JsonDecoder::new(schema)
            .decode(std::iter::once(&raw[..]))
            .unwrap();
        assert_eq!(decoded.num_rows(), 1);
    }
}
