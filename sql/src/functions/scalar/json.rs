//! Functions over JSON held in VARCHAR values. A string that is not JSON gives NULL (or
//! `false`), never an error, as in ksqlDB. `EXTRACTJSONFIELD` / `JSON_EXTRACT_STRING` take
//! an RFC 9535 JSONPath (`$.log.cloud`, `$.items[0].name`, `$['a b']`). Objects keep their
//! keys' order ([`super::ordered_json`]).

use base64::Engine as _;
use chrono::{DateTime, NaiveTime};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::ScalarUDF;
use serde_json_path::JsonPath;

use super::ordered_json::{Json as Value, Map as JsonMap};
use super::{Arg, RowFn, args, bad, elements, entries, list, map, map_type, returns, text, utf8};

use Arg::{Any, Str};

fn parse(v: &ScalarValue) -> Option<Value> {
    serde_json::from_str(text(v)?).ok()
}

/// A value as ksqlDB writes it in JSON: dates and times as ISO text, bytes in base64.
pub fn to_json(v: &ScalarValue) -> Result<Value> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match v {
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Float32(Some(f)) => number(f64::from(*f)),
        ScalarValue::Float64(Some(f)) => number(*f),
        ScalarValue::Decimal128(Some(x), _, s) => {
            let text = <datafusion::arrow::datatypes::Decimal128Type as datafusion::arrow::datatypes::DecimalType>::format_decimal(
                *x,
                38,
                *s,
            );
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Value::String(s.clone()),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        ScalarValue::Date32(Some(d)) => {
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
                + chrono::Duration::days(i64::from(*d));
            Value::String(date.to_string())
        }
        ScalarValue::Time32Millisecond(Some(ms)) => {
            let t = NaiveTime::from_num_seconds_from_midnight_opt(
                (*ms / 1000) as u32,
                (*ms % 1000) as u32 * 1_000_000,
            )
            .unwrap_or(NaiveTime::MIN);
            Value::String(java_local_time(&t))
        }
        ScalarValue::TimestampMillisecond(Some(ms), _) => {
            let t = DateTime::from_timestamp_millis(*ms)
                .unwrap_or_default()
                .naive_utc();
            Value::String(format!("{}T{}", t.date(), java_local_time(&t.time())))
        }
        ScalarValue::List(_) | ScalarValue::LargeList(_) | ScalarValue::FixedSizeList(_) => {
            Value::Array(
                elements(v)?
                    .unwrap_or_default()
                    .iter()
                    .map(to_json)
                    .collect::<Result<_>>()?,
            )
        }
        ScalarValue::Map(_) => {
            let mut o = JsonMap::new();
            for (k, val) in entries(v)?.unwrap_or_default() {
                let key = match to_json(&k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                o.insert(key, to_json(&val)?);
            }
            Value::Object(o)
        }
        ScalarValue::Struct(s) => {
            let mut o = JsonMap::new();
            for (f, col) in s.fields().iter().zip(s.columns()) {
                o.insert(
                    f.name().clone(),
                    to_json(&ScalarValue::try_from_array(col, 0)?)?,
                );
            }
            Value::Object(o)
        }
        other => match super::int(other) {
            Some(i) => Value::from(i),
            None => Value::String(other.to_string()),
        },
    })
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// `LocalTime.toString()`: `HH:mm`, then `:ss` and `.SSS` only when not zero.
fn java_local_time(t: &NaiveTime) -> String {
    use chrono::Timelike;
    let ms = t.nanosecond() / 1_000_000;
    match (t.second(), ms) {
        (0, 0) => t.format("%H:%M").to_string(),
        (_, 0) => t.format("%H:%M:%S").to_string(),
        _ => t.format("%H:%M:%S%.3f").to_string(),
    }
}

/// The text `EXTRACTJSONFIELD` returns for a value: a string's own text, other values as
/// JSON.
fn as_text(v: &Value) -> ScalarValue {
    match v {
        Value::Null => ScalarValue::Null,
        Value::String(s) => utf8(s.clone()),
        other => utf8(other.to_string()),
    }
}

fn extract(a: &[ScalarValue]) -> Result<ScalarValue> {
    let path_text = text(&a[1]).unwrap_or_default();
    thread_local! {
        static CACHE: std::cell::RefCell<Vec<(String, JsonPath)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let path = super::cached(&CACHE, path_text, |p| {
        JsonPath::parse(p).map_err(|e| bad(format!("bad JSONPath '{p}': {e}")))
    })?;
    let Some(doc) = parse(&a[0]) else {
        return Ok(ScalarValue::Null);
    };
    // The path runs on serde's form of the document; the value is taken from the
    // order-keeping one at the place found.
    let serde_doc = doc.to_serde();
    let found = path.query_located(&serde_doc).exactly_one();
    Ok(match found {
        Ok(at) => doc
            .pointer(&at.location().to_json_pointer())
            .map_or(ScalarValue::Null, as_text),
        Err(_) => ScalarValue::Null,
    })
}

/// PostgreSQL's `||` on JSON values, as `JSON_CONCAT` does.
fn concat(values: Vec<Value>) -> Value {
    if values.iter().all(Value::is_object) {
        let mut out = JsonMap::new();
        for v in values {
            if let Value::Object(o) = v {
                out.extend(o);
            }
        }
        return Value::Object(out);
    }
    let mut out = Vec::new();
    for v in values {
        match v {
            Value::Array(a) => out.extend(a),
            other => out.push(other),
        }
    }
    Value::Array(out)
}

/// Equality of a search value with a JSON value (numbers by value).
fn json_equals(doc: &Value, v: &ScalarValue) -> bool {
    let Ok(want) = to_json(v) else {
        return false;
    };
    match (doc, &want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// The functions of this family.
pub fn functions() -> Vec<ScalarUDF> {
    let str_list = DataType::new_list(DataType::Utf8, true);
    vec![
        RowFn::new(
            "extractjsonfield",
            args(2, &[Str, Str], false),
            returns(DataType::Utf8),
            |a, _| extract(a),
        )
        .alias(&["json_extract_string"]),
        RowFn::new(
            "is_json_string",
            args(1, &[Str], false),
            returns(DataType::Boolean),
            |a, _| Ok(ScalarValue::Boolean(Some(parse(&a[0]).is_some()))),
        )
        .lenient(),
        RowFn::new(
            "json_array_length",
            args(1, &[Str], false),
            returns(DataType::Int32),
            |a, _| {
                Ok(match parse(&a[0]) {
                    Some(Value::Array(v)) => ScalarValue::Int32(Some(v.len() as i32)),
                    _ => ScalarValue::Null,
                })
            },
        ),
        RowFn::new(
            "json_keys",
            args(1, &[Str], false),
            returns(str_list),
            |a, _| match parse(&a[0]) {
                Some(Value::Object(o)) => {
                    let keys: Vec<ScalarValue> = o.keys().map(|k| utf8(k.clone())).collect();
                    list(&keys, &DataType::Utf8)
                }
                _ => Ok(ScalarValue::Null),
            },
        ),
        RowFn::new(
            "json_records",
            args(1, &[Str], false),
            returns(map_type(DataType::Utf8)),
            |a, ret| match parse(&a[0]) {
                Some(Value::Object(o)) => map(
                    o.into_iter()
                        .map(|(k, v)| (k, utf8(v.to_string())))
                        .collect(),
                    ret,
                ),
                _ => Ok(ScalarValue::Null),
            },
        ),
        RowFn::new(
            "json_concat",
            args(1, &[Str], true),
            returns(DataType::Utf8),
            |a, _| {
                let values: Option<Vec<Value>> = a.iter().map(parse).collect();
                Ok(values.map_or(ScalarValue::Null, |v| utf8(concat(v).to_string())))
            },
        ),
        RowFn::new(
            "to_json_string",
            args(1, &[Any], false),
            returns(DataType::Utf8),
            |a, _| Ok(utf8(to_json(&a[0])?.to_string())),
        )
        .lenient(),
        RowFn::new(
            "json_array_contains",
            args(2, &[Str, Any], false),
            returns(DataType::Boolean),
            |a, _| {
                Ok(ScalarValue::Boolean(Some(match parse(&a[0]) {
                    Some(Value::Array(items)) => items.iter().any(|i| json_equals(i, &a[1])),
                    _ => false,
                })))
            },
        )
        .lenient(),
    ]
    .into_iter()
    .map(RowFn::udf)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_and_concat_follow_the_reference() {
        let doc = utf8(r#"{"log": {"cloud": "gcp836Csd", "instance": 4, "tags": ["a"]}}"#);
        let x = |p: &str| extract(&[doc.clone(), utf8(p)]).unwrap();
        assert_eq!(x("$.log.cloud"), utf8("gcp836Csd"));
        assert_eq!(x("$.log.instance"), utf8("4"));
        assert_eq!(x("$.log.tags"), utf8(r#"["a"]"#));
        assert_eq!(x("$.log.missing"), ScalarValue::Null);
        let c = |v: &[&str]| {
            concat(v.iter().map(|s| serde_json::from_str(s).unwrap()).collect()).to_string()
        };
        assert_eq!(
            c(&[r#"{"a": {"5": 6}}"#, r#"{"a": {"3": 4}}"#]),
            r#"{"a":{"3":4}}"#
        );
        assert_eq!(c(&["[1, 2]", "3"]), "[1,2,3]");
        assert_eq!(c(&["null", "null"]), "[null,null]");
        let t = NaiveTime::from_hms_opt(13, 25, 0).unwrap();
        assert_eq!(java_local_time(&t), "13:25");
    }
}
