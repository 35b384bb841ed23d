//! Table-table joins: on both primary keys, or on a column of the left table against the
//! right table's key (a foreign key). Each update of either side emits the key's new joined
//! row, or its deletion when the join no longer holds a row for it.

use bytes::Bytes;

use super::state::{Kv, Rec, len_prefixed};
use super::{Cx, Emit, JoinOp, JoinOutput, keyed, table_updates};
use crate::error::Result;
use crate::format::Input;

/// Two tables on their primary keys.
#[derive(Debug)]
pub(super) struct TableTable {
    pub(super) left_rows: Kv,
    pub(super) right_rows: Kv,
}

impl TableTable {
    fn side(&mut self, cx: &Cx<'_>, records: &[Input<'_>], is_left: bool) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let reader = if is_left { cx.left } else { cx.right };
        let updates = table_updates(cx, reader, records, &cx.plan.key_type, &mut out)?;
        let (keeps_self, keeps_other) = if is_left {
            (cx.plan.kind.keeps_left(), cx.plan.kind.keeps_right())
        } else {
            (cx.plan.kind.keeps_right(), cx.plan.kind.keeps_left())
        };
        let mut lefts = Vec::new();
        let mut rights = Vec::new();
        let mut emits = Vec::new();
        for (i, key) in updates {
            let r = &records[i];
            let (own, other) = if is_left {
                (&mut self.left_rows, &self.right_rows)
            } else {
                (&mut self.right_rows, &self.left_rows)
            };
            let old = own.get(&key)?;
            let new = Rec::of(r);
            match &new {
                Some(rec) => own.put(&key, rec.encode(&[])),
                None => own.delete(&key),
            }
            let o = other.get(&key)?.map(|b| Rec::decode(&b, 0)).transpose()?;
            let mut push = |mine: Option<Rec>, theirs: Option<Rec>, ts: i64| {
                let add = |rec: Option<Rec>, list: &mut Vec<Rec>| {
                    rec.map(|rec| {
                        list.push(rec);
                        list.len() as u32 - 1
                    })
                };
                let (l, rr) = if is_left {
                    (add(mine, &mut lefts), add(theirs, &mut rights))
                } else {
                    (add(theirs, &mut lefts), add(mine, &mut rights))
                };
                emits.push(Emit {
                    key: Some(key.clone()),
                    ts,
                    origin: i,
                    row: Some((l, rr)),
                });
            };
            match (new, o) {
                (Some(n), Some(o)) => {
                    let ts = n.ts.max(o.ts);
                    push(Some(n), Some(o), ts);
                }
                (Some(n), None) if keeps_self => {
                    let ts = n.ts;
                    push(Some(n), None, ts);
                }
                (Some(_), None) => {}
                // A deletion of a row that was not there changes nothing.
                (None, _) if old.is_none() => {}
                (None, Some(o)) if keeps_other => {
                    let ts = r.timestamp.max(o.ts);
                    push(None, Some(o), ts);
                }
                (None, o) => {
                    if o.is_some() || keeps_self {
                        emits.push(Emit::deletion(key.clone(), r.timestamp, i));
                    }
                }
            }
        }
        cx.finish(None, &lefts, &rights, emits, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }
}

impl JoinOp for TableTable {
    fn left(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        self.side(cx, records, true)
    }

    fn right(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        self.side(cx, records, false)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.left_rows, &mut self.right_rows]
    }
}

/// A column of the left table against the right table's primary key: the result has one
/// row per left row, keyed by the left key.
#[derive(Debug)]
pub(super) struct ForeignKey {
    /// Left rows by left key: the foreign key (1, then its length-prefixed bytes; 0: NULL),
    /// then the record.
    pub(super) left_rows: Kv,
    /// Right rows by their key.
    pub(super) right_rows: Kv,
    /// Length-prefixed foreign key, then left key: which left rows refer to a right row.
    pub(super) index: Kv,
}

impl ForeignKey {
    fn stored_left(b: &Bytes) -> Result<(Option<Vec<u8>>, Rec)> {
        let bad =
            || crate::error::SqlError::Invalid("join state: a stored row is truncated".into());
        match b.first() {
            Some(1) => {
                let len = b
                    .get(1..5)
                    .and_then(|l| <[u8; 4]>::try_from(l).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(bad)? as usize;
                let fk = b.get(5..5 + len).ok_or_else(bad)?.to_vec();
                Ok((Some(fk), Rec::decode(b, 5 + len)?))
            }
            Some(_) => Ok((None, Rec::decode(b, 1)?)),
            None => Err(bad()),
        }
    }
}

impl JoinOp for ForeignKey {
    fn left(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let pks = cx.left.primary_keys(records, &cx.plan.left_key_type);
        // The foreign key of each record with a value that decoded and whose key evaluated.
        let k = keyed(cx, cx.left, &cx.plan.left_key, records, &mut out)?;
        let fk_of: std::collections::HashMap<usize, Option<Bytes>> = k
            .keys
            .into_iter()
            .zip(k.origin)
            .filter_map(|(fk, i)| fk.map(|fk| (i, fk)))
            .collect();
        let mut lefts = Vec::new();
        let mut rights = Vec::new();
        let mut emits = Vec::new();
        for (i, (r, pk)) in records.iter().zip(pks).enumerate() {
            if r.value.is_some() && !fk_of.contains_key(&i) {
                continue; // rejected above
            }
            let Some(pk) = pk else {
                out.rejected
                    .push((i, "a table record needs a key (its primary key)".into()));
                continue;
            };
            let old = self
                .left_rows
                .get(&pk)?
                .map(|b| Self::stored_left(&b))
                .transpose()?;
            let old_fk = old.as_ref().and_then(|o| o.0.clone());
            let Some(rec) = Rec::of(r) else {
                // Deleted: its joined row goes too.
                if let Some(of) = old_fk {
                    let mut ik = len_prefixed(&of);
                    ik.extend_from_slice(&pk);
                    self.index.delete(&ik);
                }
                if old.is_some() {
                    self.left_rows.delete(&pk);
                    emits.push(Emit::deletion(pk, r.timestamp, i));
                }
                continue;
            };
            let fk = fk_of.get(&i).cloned().flatten();
            if old_fk.as_deref() != fk.as_deref() {
                if let Some(of) = &old_fk {
                    let mut ik = len_prefixed(of);
                    ik.extend_from_slice(&pk);
                    self.index.delete(&ik);
                }
                if let Some(f) = &fk {
                    let mut ik = len_prefixed(f);
                    ik.extend_from_slice(&pk);
                    self.index.put(&ik, Bytes::new());
                }
            }
            let prefix = match &fk {
                Some(f) => {
                    let mut p = vec![1u8];
                    p.extend_from_slice(&len_prefixed(f));
                    p
                }
                None => vec![0u8],
            };
            self.left_rows.put(&pk, rec.encode(&prefix));
            let right = match &fk {
                Some(f) => self
                    .right_rows
                    .get(f)?
                    .map(|b| Rec::decode(&b, 0))
                    .transpose()?,
                None => None,
            };
            match right {
                Some(o) => {
                    let ts = rec.ts.max(o.ts);
                    lefts.push(rec);
                    rights.push(o);
                    emits.push(Emit {
                        key: Some(pk),
                        ts,
                        origin: i,
                        row: Some((Some(lefts.len() as u32 - 1), Some(rights.len() as u32 - 1))),
                    });
                }
                None if cx.plan.kind.keeps_left() => {
                    let ts = rec.ts;
                    lefts.push(rec);
                    emits.push(Emit {
                        key: Some(pk),
                        ts,
                        origin: i,
                        row: Some((Some(lefts.len() as u32 - 1), None)),
                    });
                }
                // An inner join without a match: the key's earlier row (if any) goes.
                None if old.is_some() => emits.push(Emit::deletion(pk, r.timestamp, i)),
                None => {}
            }
        }
        cx.finish(None, &lefts, &rights, emits, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn right(&mut self, cx: &Cx<'_>, records: &[Input<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let updates = table_updates(cx, cx.right, records, &cx.plan.key_type, &mut out)?;
        let mut lefts = Vec::new();
        let mut rights = Vec::new();
        let mut emits = Vec::new();
        for (i, key) in updates {
            let r = &records[i];
            let old = self.right_rows.get(&key)?;
            let new = Rec::of(r);
            match &new {
                Some(rec) => self.right_rows.put(&key, rec.encode(&[])),
                None => self.right_rows.delete(&key),
            }
            if new.is_none() && old.is_none() {
                continue;
            }
            let prefix = len_prefixed(&key);
            let referring = self.index.prefix(&prefix)?;
            let right_at = new.map(|n| {
                rights.push(n);
                rights.len() as u32 - 1
            });
            for (ik, _) in referring {
                let pk = ik.slice(prefix.len()..);
                let Some(stored) = self.left_rows.get(&pk)? else {
                    continue;
                };
                let (_, l) = Self::stored_left(&stored)?;
                match right_at {
                    Some(ri) => {
                        let ts = l.ts.max(rights[ri as usize].ts);
                        lefts.push(l);
                        emits.push(Emit {
                            key: Some(pk),
                            ts,
                            origin: i,
                            row: Some((Some(lefts.len() as u32 - 1), Some(ri))),
                        });
                    }
                    None if cx.plan.kind.keeps_left() => {
                        let ts = l.ts.max(r.timestamp);
                        lefts.push(l);
                        emits.push(Emit {
                            key: Some(pk),
                            ts,
                            origin: i,
                            row: Some((Some(lefts.len() as u32 - 1), None)),
                        });
                    }
                    None => emits.push(Emit::deletion(pk, r.timestamp, i)),
                }
            }
        }
        cx.finish(None, &lefts, &rights, emits, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.left_rows, &mut self.right_rows, &mut self.index]
    }
}
