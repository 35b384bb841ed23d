//! Plain-text output: aligned tables for list and describe commands, boxed tables for SQL
//! results.

use serde_json::Value;

/// Renders rows as columns separated by two spaces, the header first. Control characters in
/// a cell (a group named with a newline) are shown escaped, so a row stays one line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let escaped: Vec<Vec<String>>;
    let rows = if rows
        .iter()
        .flatten()
        .any(|c| c.chars().any(char::is_control))
    {
        escaped = rows
            .iter()
            .map(|r| r.iter().map(|c| c.escape_debug().to_string()).collect())
            .collect();
        &escaped[..]
    } else {
        rows
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.len() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Rows of record batches as JSON objects, every column present (NULL as `null`), as the
/// API answers them and the SQL shell prints them.
pub fn json_rows(batches: &[sluice_sql::RecordBatch]) -> Result<Vec<Value>, String> {
    let mut w: arrow_json::ArrayWriter<Vec<u8>> = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build(Vec::new());
    for b in batches {
        w.write(b).map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_slice(&bytes).map_err(|e| e.to_string())? {
        Value::Array(rows) => Ok(rows),
        _ => Ok(Vec::new()),
    }
}

/// A cell as the SQL shell prints it: strings bare, NULL empty, anything else as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows (JSON objects) as a boxed table of `columns`, the SQL shell's result tables:
///
/// ```text
/// +------+-------+
/// | zone | rides |
/// +------+-------+
/// | a    | 3     |
/// +------+-------+
/// ```
pub fn boxed_table(columns: &[String], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[c.as_str()])).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("| {c}{} ", " ".repeat(w - c.chars().count())))
            .collect::<String>()
            + "|\n"
    };
    let mut out = border.clone();
    out.push_str(&line(columns));
    out.push_str(&border);
    for row in &cells {
        out.push_str(&line(row));
    }
    if !cells.is_empty() {
        out.push_str(&border);
    }
    out
}

/// A push query's table, printed a line per row as rows come (widths fixed by the header;
/// a longer value widens its own line only), as ksqlDB's CLI prints them.
#[derive(Debug)]
pub struct StreamingTable {
    columns: Vec<String>,
    widths: Vec<usize>,
}

impl StreamingTable {
    /// The least width of a column.
    const MIN_WIDTH: usize = 12;

    /// A table of `columns`.
    pub fn new(columns: &[String]) -> StreamingTable {
        StreamingTable {
            widths: columns
                .iter()
                .map(|c| c.chars().count().max(Self::MIN_WIDTH))
                .collect(),
            columns: columns.to_vec(),
        }
    }

    fn border(&self) -> String {
        self.widths
            .iter()
            .map(|w| format!("+{}", "-".repeat(w + 2)))
            .collect::<String>()
            + "+\n"
    }

    fn line(&self, cells: &[String]) -> String {
        cells
            .iter()
            .zip(&self.widths)
            .map(|(c, w)| format!("| {c}{} ", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect::<String>()
            + "|\n"
    }

    /// The top border, the column names and the rule under them.
    pub fn header(&self) -> String {
        format!(
            "{}{}{}",
            self.border(),
            self.line(&self.columns),
            self.border()
        )
    }

    /// One row's line.
    pub fn row(&self, row: &Value) -> String {
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| cell(&row[c.as_str()]))
            .collect();
        self.line(&cells)
    }

    /// The bottom border.
    pub fn footer(&self) -> String {
        self.border()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn boxes_rows_in_column_order() {
        let t = super::boxed_table(
            &["zone".into(), "n".into()],
            &[
                json!({"n": 3, "zone": "a"}),
                json!({"n": null, "zone": "bcdef"}),
            ],
        );
        assert_eq!(
            t,
            "+-------+---+\n| zone  | n |\n+-------+---+\n| a     | 3 |\n| bcdef |   |\n+-------+---+\n"
        );
        let s = super::StreamingTable::new(&["k".into()]);
        assert_eq!(
            s.row(&json!({"k": "x"})),
            format!("| x{} |\n", " ".repeat(11))
        );
    }

    #[test]
    fn aligns_columns() {
        let t = super::table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn a_cell_with_a_newline_stays_on_its_row() {
        let t = super::table(&["GROUP"], &[vec!["a\nb".into()]]);
        assert_eq!(t, "GROUP\na\\nb\n");
    }
}
