//! Stream-table joins: each stream record looks up the table's row as of that record (the
//! table's updates processed before it, in timestamp order); a table update joins nothing by
//! itself and never re-emits earlier stream records.

use super::state::{Kv, Rec};
use super::{Cx, Emit, JoinKind, JoinOp, JoinOutput, canonical, eval_keys, times, with_values};
use crate::error::Result;
use crate::format::Input;

#[derive(Debug)]
pub(super) struct StreamTable {
    /// The table's rows by canonical key.
    pub(super) rows: Kv,
}

impl JoinOp for StreamTable {
    fn left(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        // A stream record without a value is no event to join.
        let (inputs, index) = with_values(records);
        let crate::query::Rows {
            batch,
            records: rows,
            rejected,
        } = cx.left.decode(cx.j, &inputs)?;
        out.rejected
            .extend(rejected.into_iter().map(|(i, r)| (index[i], r)));
        let (keys, failed) = eval_keys(&cx.plan.left_key, &batch)?;
        let keys = canonical(&keys, &cx.plan.key_type)?;
        let times = times(&batch);
        let mut rights = Vec::new();
        let mut emits = Vec::new();
        let mut failed = failed.into_iter().peekable();
        for (row, key) in keys.into_iter().enumerate() {
            let origin = index[rows[row]];
            if failed.peek().is_some_and(|f| f.0 == row) {
                if let Some((_, why)) = failed.next() {
                    out.rejected.push((origin, why));
                }
                continue;
            }
            let right = match &key {
                Some(k) => self.rows.get(k)?,
                None => None,
            };
            if right.is_none() && cx.plan.kind != JoinKind::Left {
                if key.is_none() {
                    out.dropped += 1;
                }
                continue;
            }
            let r = match right {
                Some(stored) => {
                    rights.push(Rec::decode(&stored, 0)?);
                    Some(rights.len() as u32 - 1)
                }
                None => None,
            };
            emits.push(Emit {
                key,
                ts: times[row],
                origin,
                row: Some((Some(row as u32), r)),
            });
        }
        // Left rows are the decoded batch's.
        cx.finish(Some(&batch), &[], &rights, emits, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn right(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let keys = cx.right.primary_keys(records, &cx.plan.key_type);
        // A row that does not decode leaves the table as it was.
        let (inputs, index) = with_values(records);
        let rejected = cx.right.decode(cx.j, &inputs)?.rejected;
        let bad: std::collections::HashSet<usize> =
            rejected.iter().map(|(i, _)| index[*i]).collect();
        out.rejected
            .extend(rejected.into_iter().map(|(i, r)| (index[i], r)));
        for (i, (r, key)) in records.iter().zip(keys).enumerate() {
            if bad.contains(&i) {
                continue;
            }
            let Some(key) = key else {
                out.rejected
                    .push((i, "a table record needs a key (the join key)".into()));
                continue;
            };
            match Rec::of(r) {
                Some(rec) => self.rows.put(&key, rec.encode(&[])),
                None => self.rows.delete(&key),
            }
        }
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.rows]
    }
}
