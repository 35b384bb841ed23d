//! Table-table joins: on both primary keys, or on a column of the left table against the
//! right table's key (a foreign key). Each update of either side emits the key's new joined
//! row, or its deletion when the join no longer holds a row for it.

use bytes::Bytes;

use super::state::{Kv, Rec, len_prefixed};
use super::{Cx, Emit, Event, JoinOp, JoinOutput, Lists, Side, sides};
use crate::error::Result;
use crate::format::Input;

/// Two tables on their primary keys.
#[derive(Debug)]
pub(super) struct TableTable {
    pub(super) left_rows: Kv,
    pub(super) right_rows: Kv,
}

impl TableTable {
    /// One update of the left (or right) table, of the row `key`: the record, and its row
    /// in its side's decoded batch (`None`: a deletion).
    fn update(
        &mut self,
        cx: &Cx<'_>,
        is_left: bool,
        key: Bytes,
        (r, row): (&Input<'_>, Option<u32>),
        origin: usize,
        lists: &mut Lists,
    ) -> Result<()> {
        let (keeps_self, keeps_other) = if is_left {
            (cx.plan.kind.keeps_left(), cx.plan.kind.keeps_right())
        } else {
            (cx.plan.kind.keeps_right(), cx.plan.kind.keeps_left())
        };
        let (own, other) = if is_left {
            (&mut self.left_rows, &self.right_rows)
        } else {
            (&mut self.right_rows, &self.left_rows)
        };
        let old = own.get(&key)?;
        // The update's time, if it is not a deletion.
        let new = r.value.map(|_| r.timestamp);
        match new {
            Some(_) => own.put(&key, Rec::encode_input(r, &[])),
            None => own.delete(&key),
        }
        let stored = other.get(&key)?;
        let other_ts = stored
            .as_ref()
            .map(|b| Rec::decode(b, 0))
            .transpose()?
            .map(|o| o.ts);
        // The other side's row, listed only when a result names it.
        let mut push = |mine: Option<u32>, with_theirs: bool, ts: i64| -> Result<()> {
            let theirs = match (&stored, with_theirs) {
                (Some(b), true) => Some(lists.side(!is_left).stored(b.clone())?),
                _ => None,
            };
            let joined = Emit::row(Some(key.clone()), ts, origin, sides(is_left, mine, theirs));
            lists.emits.push(joined);
            Ok(())
        };
        match (new, other_ts) {
            (Some(ts), Some(ots)) => push(row, true, ts.max(ots))?,
            (Some(ts), None) if keeps_self => push(row, false, ts)?,
            (Some(_), None) => {}
            // A deletion of a row that was not there changes nothing.
            (None, _) if old.is_none() => {}
            (None, Some(ots)) if keeps_other => push(None, true, r.timestamp.max(ots))?,
            (None, o) => {
                if o.is_some() || keeps_self {
                    lists
                        .emits
                        .push(Emit::deletion(key.clone(), r.timestamp, origin));
                }
            }
        }
        Ok(())
    }
}

impl JoinOp for TableTable {
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let (left, right) = (Side::of(events, true), Side::of(events, false));
        let lu = left.updates(cx, cx.left, &cx.plan.key_type, &mut out)?;
        let ru = right.updates(cx, cx.right, &cx.plan.key_type, &mut out)?;
        let mut lists = Lists::default();
        let (mut li, mut ri) = (0, 0);
        for e in events {
            let (u, i) = if e.left {
                li += 1;
                (&lu, li - 1)
            } else {
                ri += 1;
                (&ru, ri - 1)
            };
            if let Some(key) = u.keys[i].clone() {
                let record = (&e.input, u.row_of[i]);
                self.update(cx, e.left, key, record, e.origin, &mut lists)?;
            }
        }
        // Each update's own row is its side's decoded one.
        cx.finish(Some(&lu.batch), Some(&ru.batch), lists, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
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

    /// The index entry saying that the left row `pk` refers to `fk`.
    fn index_key(fk: &[u8], pk: &[u8]) -> Vec<u8> {
        let mut ik = len_prefixed(fk);
        ik.extend_from_slice(pk);
        ik
    }

    /// One update of the left table: the row `pk`, now referring to `fk`; the record and
    /// its row in the left side's decoded batch (`None`: a deletion).
    fn left_update(
        &mut self,
        cx: &Cx<'_>,
        pk: Bytes,
        fk: Option<Bytes>,
        (r, row): (&Input<'_>, Option<u32>),
        origin: usize,
        lists: &mut Lists,
    ) -> Result<()> {
        let old = self
            .left_rows
            .get(&pk)?
            .map(|b| Self::stored_left(&b))
            .transpose()?;
        let old_fk = old.as_ref().and_then(|o| o.0.clone());
        if r.value.is_none() {
            // Deleted: its joined row goes too.
            if let Some(of) = old_fk {
                self.index.delete(&Self::index_key(&of, &pk));
            }
            if old.is_some() {
                self.left_rows.delete(&pk);
                lists.emits.push(Emit::deletion(pk, r.timestamp, origin));
            }
            return Ok(());
        }
        if old_fk.as_deref() != fk.as_deref() {
            if let Some(of) = &old_fk {
                self.index.delete(&Self::index_key(of, &pk));
            }
            if let Some(f) = &fk {
                self.index.put(&Self::index_key(f, &pk), Bytes::new());
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
        self.left_rows.put(&pk, Rec::encode_input(r, &prefix));
        let right = match &fk {
            Some(f) => self.right_rows.get(f)?,
            None => None,
        };
        match right {
            Some(stored) => {
                let ts = r.timestamp.max(Rec::decode(&stored, 0)?.ts);
                let joined = (row, Some(lists.rights.stored(stored)?));
                lists.emits.push(Emit::row(Some(pk), ts, origin, joined));
            }
            None if cx.plan.kind.keeps_left() => {
                lists
                    .emits
                    .push(Emit::row(Some(pk), r.timestamp, origin, (row, None)));
            }
            // An inner join without a match: the key's earlier row (if any) goes.
            None if old.is_some() => lists.emits.push(Emit::deletion(pk, r.timestamp, origin)),
            None => {}
        }
        Ok(())
    }

    /// One update of the right table, of the row `key` (the record, and its row in the
    /// right side's decoded batch; `None`: a deletion): every left row referring to it
    /// changes.
    fn right_update(
        &mut self,
        cx: &Cx<'_>,
        key: Bytes,
        (r, row): (&Input<'_>, Option<u32>),
        origin: usize,
        lists: &mut Lists,
    ) -> Result<()> {
        let old = self.right_rows.get(&key)?;
        // The update's time, if it is not a deletion.
        let new_ts = r.value.map(|_| r.timestamp);
        match new_ts {
            Some(_) => self.right_rows.put(&key, Rec::encode_input(r, &[])),
            None => self.right_rows.delete(&key),
        }
        if new_ts.is_none() && old.is_none() {
            return Ok(());
        }
        let prefix = len_prefixed(&key);
        let referring = self.index.prefix(&prefix)?;
        let right_at = new_ts.and(row);
        for (ik, _) in referring {
            let pk = ik.slice(prefix.len()..);
            let Some(stored) = self.left_rows.get(&pk)? else {
                continue;
            };
            let (_, l) = Self::stored_left(&stored)?;
            match (right_at, new_ts) {
                (Some(ri), Some(rts)) => {
                    let ts = l.ts.max(rts);
                    let row = (Some(lists.add(l, true)), Some(ri));
                    lists.emits.push(Emit::row(Some(pk), ts, origin, row));
                }
                _ if cx.plan.kind.keeps_left() => {
                    let ts = l.ts.max(r.timestamp);
                    let row = (Some(lists.add(l, true)), None);
                    lists.emits.push(Emit::row(Some(pk), ts, origin, row));
                }
                _ => lists.emits.push(Emit::deletion(pk, r.timestamp, origin)),
            }
        }
        Ok(())
    }
}

impl JoinOp for ForeignKey {
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        let (left, right) = (Side::of(events, true), Side::of(events, false));
        let pks = cx.left.primary_keys(&left.inputs, &cx.plan.left_key_type);
        // The foreign key of each left record with a value that decoded and whose key
        // evaluated.
        let (fks, fk_row) = left.keyed(cx, cx.left, &cx.plan.left_key, &mut out)?;
        let ru = right.updates(cx, cx.right, &cx.plan.key_type, &mut out)?;
        let mut lists = Lists::default();
        let (mut li, mut ri) = (0, 0);
        for e in events {
            if !e.left {
                ri += 1;
                if let Some(key) = ru.keys[ri - 1].clone() {
                    let record = (&e.input, ru.row_of[ri - 1]);
                    self.right_update(cx, key, record, e.origin, &mut lists)?;
                }
                continue;
            }
            li += 1;
            let i = li - 1;
            if e.input.value.is_some() && fk_row[i].is_none() {
                continue; // rejected already
            }
            let Some(pk) = pks[i].clone() else {
                out.rejected.push((
                    e.origin,
                    "a table record needs a key (its primary key)".into(),
                ));
                continue;
            };
            let fk = fk_row[i].and_then(|row| fks.keys[row].clone().flatten());
            let record = (&e.input, fk_row[i].map(|row| row as u32));
            self.left_update(cx, pk, fk, record, e.origin, &mut lists)?;
        }
        // Each update's own row is its side's decoded one.
        cx.finish(Some(&fks.batch), Some(&ru.batch), lists, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.left_rows, &mut self.right_rows, &mut self.index]
    }
}
