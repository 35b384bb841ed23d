//! Delimited text (CSV): splitting one row into fields and encoding rows, with the `csv`
//! crate's RFC 4180 rules: fields with a comma, a double quote or a line break are quoted,
//! and `""` inside quotes is one quote.

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{FormatError, Result};

/// Splits one row (without its line ending) into its fields. An empty row is one empty field.
pub fn split(row: &[u8]) -> Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(row.len().max(64))
        .from_reader(row);
    let mut record = csv::StringRecord::new();
    let found = reader
        .read_record(&mut record)
        .map_err(|e| FormatError::Invalid(csv_reason(&e)))?;
    if !found {
        return Ok(vec![String::new()]);
    }
    let fields = record.iter().map(str::to_string).collect();
    if reader
        .read_record(&mut record)
        .map_err(|e| FormatError::Invalid(csv_reason(&e)))?
    {
        return Err(FormatError::Invalid(
            "a line break outside quotes splits the row".into(),
        ));
    }
    Ok(fields)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8: {err}"),
        _ => e.to_string(),
    }
}

/// Encodes one row: `None` is an empty field; fields are quoted only where needed.
pub fn encode_row<'a>(fields: impl IntoIterator<Item = Option<&'a str>>) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .quote_style(csv::QuoteStyle::Necessary)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(fields.into_iter().map(|f| f.unwrap_or_default()))
        .map_err(|e| FormatError::Invalid(e.to_string()))?;
    let mut out = w
        .into_inner()
        .map_err(|e| FormatError::Invalid(e.to_string()))?;
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    Ok(out)
}

/// Encodes each row of `batch` as a delimited row, columns in order, values as Arrow
/// displays them; a null is an empty field.
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let texts: Vec<Option<String>> = formatters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                batch
                    .column(i)
                    .is_valid(row)
                    .then(|| f.value(row).to_string())
            })
            .collect();
        out.push(encode_row(texts.iter().map(Option::as_deref))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn quoting_follows_rfc_4180() {
        assert_eq!(split(b"harbor,\"1,5\"").unwrap(), ["harbor", "1,5"]);
        assert_eq!(split(b"\"a, b\",3.5,4").unwrap(), ["a, b", "3.5", "4"]);
        assert_eq!(split(b"\"a,\"\"q\"\"\",1").unwrap(), ["a,\"q\"", "1"]);
        assert_eq!(split(b"\"two\nlines\",x").unwrap(), ["two\nlines", "x"]);
        assert_eq!(split(b"a,,c").unwrap(), ["a", "", "c"]);
        assert_eq!(split(b" a , b").unwrap(), [" a ", " b"]);
        assert_eq!(split(b"").unwrap(), [""]);
        assert_eq!(split(b"bad").unwrap(), ["bad"]);
        assert!(split(b"a\nb").is_err());
        assert!(split(b"\xff,x").unwrap_err().to_string().contains("UTF-8"));

        let row = encode_row([Some("a,\"q\""), Some("1.5"), None, Some("two\nlines")]).unwrap();
        assert_eq!(row, b"\"a,\"\"q\"\"\",1.5,,\"two\nlines\"");
        assert_eq!(split(&row).unwrap(), ["a,\"q\"", "1.5", "", "two\nlines"]);
        assert_eq!(
            encode_row([Some("plain"), Some("x y")]).unwrap(),
            b"plain,x y"
        );
    }
}
