//! Table functions: `EXPLODE(array)` turns one row into one row per element, the other
//! columns (and the record's key and timestamp) repeated. Several `EXPLODE`s in one SELECT
//! run side by side: row `i` holds element `i` of each array, NULL where an array is
//! shorter, as ksqlDB documents. A NULL or empty array gives no row.
//!
//! DataFusion plans `EXPLODE` (written `UNNEST` for it by [`crate::syntax`]) as an `Unnest`
//! node between two projections; this is that node as a stateless step, a flat map over a
//! batch that also returns the input row of each output row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::logical_plan::Unnest;

use crate::error::{Result, SqlError};

/// Where an output column comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// An input column, repeated for each produced row.
    Repeat(usize),
    /// The elements of an input ARRAY column.
    Elements(usize),
}

/// The flat map of one `Unnest` node.
#[derive(Debug, Clone)]
pub struct Explode {
    columns: Vec<Source>,
    /// Input columns exploded.
    lists: Vec<usize>,
    schema: SchemaRef,
}

/// At most this many rows come out of one input row: ksqlDB has no such bound, but an
/// array this long in one record is a mistake to stop, not to write out.
pub const MAX_ROWS_PER_RECORD: usize = 100_000;

impl Explode {
    /// The step for a planned `Unnest` (arrays one level deep; not structs).
    pub fn from_plan(u: &Unnest) -> Result<Explode> {
        if !u.struct_type_columns.is_empty() {
            return Err(SqlError::Invalid(
                "EXPLODE takes an ARRAY (not a STRUCT)".into(),
            ));
        }
        if u.list_type_columns.iter().any(|(_, l)| l.depth != 1) {
            return Err(SqlError::Invalid(
                "EXPLODE of EXPLODE is not supported: explode one level".into(),
            ));
        }
        let lists: Vec<usize> = u.list_type_columns.iter().map(|(i, _)| *i).collect();
        let columns = u
            .dependency_indices
            .iter()
            .map(|&i| {
                if lists.contains(&i) {
                    Source::Elements(i)
                } else {
                    Source::Repeat(i)
                }
            })
            .collect();
        // Every column may be NULL here (a shorter array pads with NULL).
        let fields: Vec<Field> = u
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Ok(Explode {
            columns,
            lists,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The output rows of a batch, and the input row each came from.
    pub fn process(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<u32>)> {
        let mut lists = Vec::with_capacity(self.lists.len());
        for &i in &self.lists {
            let c = batch.column(i);
            let Some(l) = c.as_list_opt::<i32>() else {
                return Err(SqlError::Plan(format!(
                    "EXPLODE of a {} (an ARRAY is needed)",
                    crate::types::sql_name(c.data_type())
                )));
            };
            lists.push((i, l));
        }
        let mut parents: Vec<u32> = Vec::new();
        // For each exploded column: the index of each output row's element, if any.
        let mut picks: Vec<Vec<Option<u32>>> = vec![Vec::new(); lists.len()];
        for row in 0..batch.num_rows() {
            let len = |l: &datafusion::arrow::array::ListArray| {
                if l.is_null(row) {
                    0
                } else {
                    l.value_length(row) as usize
                }
            };
            let n = lists.iter().map(|(_, l)| len(l)).max().unwrap_or(0);
            if n > MAX_ROWS_PER_RECORD {
                return Err(SqlError::Invalid(format!(
                    "EXPLODE of an array of {n} elements (at most {MAX_ROWS_PER_RECORD} rows per record)"
                )));
            }
            for j in 0..n {
                parents.push(row as u32);
                for (k, (_, l)) in lists.iter().enumerate() {
                    let start = l.value_offsets()[row] as usize;
                    picks[k].push((j < len(l)).then(|| (start + j) as u32));
                }
            }
        }
        let parent_index = UInt32Array::from(parents.clone());
        let columns = self
            .columns
            .iter()
            .map(|s| -> Result<ArrayRef> {
                Ok(match *s {
                    Source::Repeat(i) => take(batch.column(i).as_ref(), &parent_index, None)?,
                    Source::Elements(i) => {
                        let k = lists.iter().position(|(c, _)| *c == i).unwrap_or(0);
                        let index = UInt32Array::from(picks[k].clone());
                        take(lists[k].1.values().as_ref(), &index, None)?
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out = RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(parents.len())),
        )?;
        Ok((out, parents))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, ListArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use crate::ast::Statement;
    use crate::planner::{Planner, SourceTable};

    use super::*;

    #[test]
    fn explodes_side_by_side_padding_with_null_and_maps_rows_back() {
        let list = DataType::new_list(DataType::Int64, true);
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Utf8, true),
            Field::new("A", list.clone(), true),
            Field::new("B", list, true),
            Field::new("ROWTIME", DataType::Int64, false),
        ]));
        let lists = |rows: Vec<Option<Vec<Option<i64>>>>| {
            Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows))
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["r1", "r2", "r3"])),
                lists(vec![
                    Some(vec![Some(1), Some(2)]),
                    None,
                    Some(vec![Some(5)]),
                ]),
                lists(vec![
                    Some(vec![Some(10)]),
                    Some(vec![]),
                    Some(vec![Some(50), Some(60)]),
                ]),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let Statement::Select(select) =
            crate::parse_one("SELECT ID, EXPLODE(A) AS X, EXPLODE(B) AS Y FROM S").unwrap()
        else {
            panic!("not a select")
        };
        let op = Planner::new(&[SourceTable {
            name: "S".into(),
            schema,
        }])
        .unwrap()
        .stateless(&select.query)
        .unwrap();
        let (out, rows) = op.process_indexed(&batch).unwrap();
        // r1 gives two rows (B padded), r2 none (NULL and empty), r3 two (A padded).
        assert_eq!(rows, Some(vec![0, 0, 2, 2]));
        let x = out.column(1).as_primitive::<Int64Type>();
        let y = out.column(2).as_primitive::<Int64Type>();
        assert_eq!(
            x.iter().collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(5), None]
        );
        assert_eq!(
            y.iter().collect::<Vec<_>>(),
            vec![Some(10), None, Some(50), Some(60)]
        );
        assert_eq!(out.column(0).as_string::<i32>().value(3), "r3");
    }
}
