//! Stream-table joins: each stream record looks up the table's row as of that record (the
//! table's updates processed before it, in timestamp order); a table update joins nothing by
//! itself and never re-emits earlier stream records.

use super::state::{Kv, Rec};
use super::{Cx, Emit, JoinKind, JoinOp, JoinOutput, keyed, table_updates, times};
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
        let k = keyed(cx, cx.left, &cx.plan.left_key, records, &mut out)?;
        let times = times(&k.batch);
        let mut rights = Vec::new();
        let mut emits = Vec::new();
        for (row, key) in k.keys.into_iter().enumerate() {
            let Some(key) = key else { continue };
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
                origin: k.origin[row],
                row: Some((Some(row as u32), r)),
            });
        }
        // Left rows are the decoded batch's.
        cx.finish(Some(&k.batch), &[], &rights, emits, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn right(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        for (i, key) in table_updates(cx, cx.right, records, &cx.plan.key_type, &mut out)? {
            match Rec::of(&records[i]) {
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
