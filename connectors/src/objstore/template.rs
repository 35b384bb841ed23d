//! `partition-by` templates: a record's folder inside its partition, from its time and
//! fields of its value.

use chrono::{DateTime, Datelike, Timelike, Utc};
use object_store::path::{Path as ObjectPath, PathPart};
use serde_json::Value;

/// One piece of a `partition-by` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    Date,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    /// A field of the value: its path of keys.
    Field(Vec<String>),
}

/// A parsed `partition-by` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub(super) fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() || text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err("a template is folder names separated by single '/'".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                pieces.push(Piece::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("'{{' without '}}' in \"{text}\""))?;
            let name = &rest[open + 1..close];
            pieces.push(match name {
                "date" => Piece::Date,
                "year" => Piece::Year,
                "month" => Piece::Month,
                "day" => Piece::Day,
                "hour" => Piece::Hour,
                "minute" => Piece::Minute,
                _ => match name.strip_prefix("field:") {
                    Some(path) if !path.is_empty() && path.split('.').all(|k| !k.is_empty()) => {
                        Piece::Field(path.split('.').map(str::to_string).collect())
                    }
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}}; use {{date}}, {{year}}, {{month}}, \
                             {{day}}, {{hour}}, {{minute}} or {{field:NAME}}"
                        ));
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        for p in &pieces {
            if let Piece::Text(t) = p {
                if t.contains('}') {
                    return Err(format!("'}}' without '{{' in \"{text}\""));
                }
                ObjectPath::parse(t.replace('/', "/x/"))
                    .map_err(|e| format!("\"{text}\" is not a valid object path: {e}"))?;
            }
        }
        Ok(Template { pieces })
    }

    pub(super) fn needs_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Field(_)))
    }

    /// The folder path for a record; the reason when the record cannot have one.
    pub(super) fn render(&self, timestamp: i64, value: Option<&Value>) -> Result<String, String> {
        let time = || {
            DateTime::<Utc>::from_timestamp_millis(timestamp)
                .ok_or_else(|| format!("record time {timestamp} is out of range"))
        };
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Date => out.push_str(&time()?.format("%Y-%m-%d").to_string()),
                Piece::Year => out.push_str(&format!("{:04}", time()?.year())),
                Piece::Month => out.push_str(&format!("{:02}", time()?.month())),
                Piece::Day => out.push_str(&format!("{:02}", time()?.day())),
                Piece::Hour => out.push_str(&format!("{:02}", time()?.hour())),
                Piece::Minute => out.push_str(&format!("{:02}", time()?.minute())),
                Piece::Field(path) => {
                    let text = field_text(value, path, "partition-by")?;
                    // The store's own escaping: '/' cannot split the folder, nor "." or ".."
                    // climb out of it.
                    out.push_str(PathPart::from(text.as_str()).as_ref());
                }
            }
        }
        Ok(out)
    }
}

/// The text of a value's field at `path` (keys of nested objects): a string as it is, a
/// number or boolean as written. `what` names the setting in the reason when the field is
/// missing, `null`, empty, or not a value.
pub(crate) fn field_text(
    value: Option<&Value>,
    path: &[String],
    what: &str,
) -> Result<String, String> {
    let name = path.join(".");
    let v = path
        .iter()
        .try_fold(value.ok_or("the value is not JSON")?, |v, k| v.get(k));
    match v {
        None | Some(Value::Null) => Err(format!("{what} field '{name}' is missing")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{what} field '{name}' is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!(
            "{what} field '{name}' is an object or array, not a value"
        )),
    }
}
