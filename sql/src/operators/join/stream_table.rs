//! Stream-table joins: each stream record looks up the table's row as of that record (the
//! table's updates processed before it, in timestamp order); a table update joins nothing by
//! itself and never re-emits earlier stream records.

use super::state::{Kv, Rec};
use super::{Cx, Emit, Event, JoinKind, JoinOp, JoinOutput, Lists, Side, times};
use crate::error::Result;

#[derive(Debug)]
pub(super) struct StreamTable {
    /// The table's rows by canonical key.
    pub(super) rows: Kv,
}

impl JoinOp for StreamTable {
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let (left, right) = (Side::of(events, true), Side::of(events, false));
        // A stream record without a value is no event to join.
        let (k, row_of) = left.keyed(cx, cx.left, &cx.plan.left_key, &mut out)?;
        let updates = right
            .updates(cx, cx.right, &cx.plan.key_type, &mut out)?
            .keys;
        let times = times(&k.batch);
        let mut lists = Lists::default();
        let (mut li, mut ri) = (0, 0);
        for e in events {
            if !e.left {
                // A table update: the row later stream records see.
                ri += 1;
                let Some(key) = &updates[ri - 1] else {
                    continue;
                };
                match e.input.value {
                    Some(_) => self.rows.put(key, Rec::encode_input(&e.input, &[])),
                    None => self.rows.delete(key),
                }
                continue;
            }
            li += 1;
            let Some(row) = row_of[li - 1] else { continue };
            let key = k.keys[row].clone().flatten();
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
                Some(stored) => Some(lists.rights.stored(stored)?),
                None => None,
            };
            let joined = Emit::row(key, times[row], e.origin, (Some(row as u32), r));
            lists.emits.push(joined);
        }
        // Left rows are the decoded batch's.
        cx.finish(Some(&k.batch), None, lists, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.rows]
    }
}
