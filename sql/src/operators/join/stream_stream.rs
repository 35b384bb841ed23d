//! Stream-stream joins within a time window: a left record at `t` joins the right records
//! of its key in `[t - before, t + after]`, in whichever order they arrive. Both sides are
//! buffered until no record that is not late could still join them (`before + after +
//! grace` after their time in stream time); an outer join emits a record that never
//! matched once, when it leaves the buffer. Records whose window closed more than the grace
//! period ago are late: dead letters.
//!
//! State: one store holding both sides' buffers (side byte, length-prefixed key, time,
//! sequence → matched flag and record), their expiry index (0xFF, time, sequence, side →
//! buffer key) and the stream time and sequence (the empty key), so the buffers, the index
//! and the stream time commit together.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use sluice_log::Log;
use sluice_state::StateEnv;

use super::state::{Kv, Rec, len_prefixed, time_bytes, time_of};
use super::{Cx, Emit, Event, JoinKind, JoinOp, JoinOutput, Lists, Side, sides, times};
use crate::error::Result;
use crate::format::Input;

const LEFT: u8 = 0;
const RIGHT: u8 = 1;
const INDEX: u8 = 0xFF;

/// Expiry index entries read ahead of time, at most.
pub(super) const PREFETCH: usize = 1024;

/// Matches one record may have at most: a record of a key with more records than this in
/// its window on the other side is a dead letter (and is not buffered), rather than one
/// record making a batch of unbounded size.
const MAX_MATCHES: usize = 100_000;

#[derive(Debug)]
pub(super) struct StreamStream {
    kv: Kv,
    before: i64,
    after: i64,
    grace: i64,
    stream_time: i64,
    /// The stream time of the committed state: no committed buffered record is later.
    committed_time: i64,
    seq: u64,
    /// The first expiry index entries, prefetched so that expiring does not scan the store
    /// for each record: every entry whose index key is below `horizon` is here (index key
    /// to buffer key), at most [`PREFETCH`] of them.
    due: BTreeMap<Bytes, Bytes>,
    /// Index keys from here on may be in the store only; `None`: every entry is in `due`.
    /// Empty: nothing is known yet (the first expiry scans from the start).
    horizon: Option<Bytes>,
}

impl StreamStream {
    pub(super) fn open(
        state: Option<(&StateEnv, &Log, &str)>,
        name: &str,
        before: i64,
        after: i64,
        grace: i64,
    ) -> Result<StreamStream> {
        let kv = Kv::open(state, name)?;
        let (stream_time, seq) = match kv.get(b"")? {
            Some(m) if m.len() == 16 => (
                i64::from_le_bytes(m[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(m[8..].try_into().unwrap_or_default()),
            ),
            _ => (i64::MIN, 0),
        };
        Ok(StreamStream {
            kv,
            before,
            after,
            grace,
            stream_time,
            committed_time: stream_time,
            seq,
            due: BTreeMap::new(),
            horizon: Some(Bytes::from_static(&[INDEX])),
        })
    }

    /// Time a buffered record stays: after that no record that is not late can join it.
    fn span(&self) -> i64 {
        self.before
            .saturating_add(self.after)
            .saturating_add(self.grace)
    }

    fn buffer_key(side: u8, key: &[u8], ts: i64, seq: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(key.len() + 21);
        b.push(side);
        b.extend_from_slice(&len_prefixed(key));
        b.extend_from_slice(&time_bytes(ts));
        b.put_u64(seq);
        b
    }

    fn join(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        let mut out = JoinOutput::default();
        if self.kv.epoch_is_empty() {
            // An epoch committed since the last batch (each batch writes the stream time).
            self.committed_time = self.stream_time;
        }
        let (left, right) = (Side::of(events, true), Side::of(events, false));
        let (kl, left_rows) = left.keyed(cx, cx.left, &cx.plan.left_key, &mut out)?;
        let (kr, right_rows) = right.keyed(cx, cx.right, &cx.plan.right_key, &mut out)?;
        let (left_times, right_times) = (times(&kl.batch), times(&kr.batch));
        let mut lists = Lists::default();
        let (mut li, mut ri) = (0, 0);
        for e in events {
            let (k, row, t) = if e.left {
                li += 1;
                let Some(row) = left_rows[li - 1] else {
                    continue;
                };
                (&kl, row, left_times[row])
            } else {
                ri += 1;
                let Some(row) = right_rows[ri - 1] else {
                    continue;
                };
                (&kr, row, right_times[row])
            };
            let key = k.keys[row].clone().flatten();
            let record = (&k.inputs[row], row as u32);
            self.one(cx, e.left, key, t, record, e.origin, &mut lists, &mut out)?;
        }
        let mut meta = Vec::with_capacity(16);
        meta.put_i64_le(self.stream_time);
        meta.put_u64_le(self.seq);
        self.kv.put(b"", Bytes::from(meta));
        cx.finish(Some(&kl.batch), Some(&kr.batch), lists, &mut out)?;
        out.rejected.sort_by_key(|r| r.0);
        Ok(out)
    }

    /// One record at `t` of the left (or right) side (the record and its row in its side's
    /// batch): late, or joined with the other side's buffered records in its window and
    /// buffered itself; then what expired goes.
    #[allow(clippy::too_many_arguments)]
    fn one(
        &mut self,
        cx: &Cx<'_>,
        is_left: bool,
        key: Option<Bytes>,
        t: i64,
        (input, row): (&Input<'_>, u32),
        origin: usize,
        lists: &mut Lists,
        out: &mut JoinOutput,
    ) -> Result<()> {
        let (side, other) = if is_left {
            (LEFT, RIGHT)
        } else {
            (RIGHT, LEFT)
        };
        let keeps_self = if is_left {
            cx.plan.kind.keeps_left()
        } else {
            cx.plan.kind.keeps_right()
        };
        // The other side's records within the window of a record at t.
        let (lo, hi) = if is_left {
            (self.before, self.after)
        } else {
            (self.after, self.before)
        };
        if t.saturating_add(hi).saturating_add(self.grace) < self.stream_time {
            out.rejected.push((
                origin,
                format!(
                    "late: event time {t} is past its join window's end plus the grace period (stream time {})",
                    self.stream_time
                ),
            ));
            return Ok(());
        }
        let Some(key) = key else {
            // A NULL key matches nothing: kept at once by an outer join, else dropped.
            if keeps_self {
                let row = sides(is_left, Some(row), None);
                lists.emits.push(Emit::row(None, t, origin, row));
            } else {
                out.dropped += 1;
            }
            return Ok(());
        };
        let mut from = vec![other];
        from.extend_from_slice(&len_prefixed(&key));
        let mut to = from.clone();
        from.extend_from_slice(&time_bytes(t.saturating_sub(lo)));
        to.extend_from_slice(&time_bytes(t.saturating_add(hi).saturating_add(1)));
        // A window after the committed state's stream time holds this epoch's records only.
        let epoch_only = t.saturating_sub(lo) > self.committed_time;
        let matches = self.kv.range(&from, &to, MAX_MATCHES + 1, epoch_only)?;
        if matches.len() > MAX_MATCHES {
            out.rejected.push((
                origin,
                format!(
                    "join key {} has more than {MAX_MATCHES} records of the other side within this record's join window",
                    String::from_utf8_lossy(&key)
                ),
            ));
            return Ok(());
        }
        for (bk, v) in &matches {
            let ts = t.max(Rec::decode(v, 1)?.ts);
            let at = lists.side(!is_left).stored(v.slice(1..))?;
            let row = sides(is_left, Some(row), Some(at));
            lists
                .emits
                .push(Emit::row(Some(key.clone()), ts, origin, row));
            if v.first() == Some(&0) {
                let mut flagged = v.to_vec();
                flagged[0] = 1;
                self.kv.put(bk, Bytes::from(flagged));
            }
        }
        let bk = Self::buffer_key(side, &key, t, self.seq);
        let mut ik = vec![INDEX];
        ik.extend_from_slice(&time_bytes(t));
        ik.put_u64(self.seq);
        ik.push(side);
        self.seq += 1;
        let matched = u8::from(!matches.is_empty());
        // Keys with a sequence number never used before: new to the store.
        self.kv
            .insert_new(&bk, Rec::encode_input(input, &[matched]));
        let bk = Bytes::from(bk);
        self.kv.insert_new(&ik, bk.clone());
        let ik = Bytes::from(ik);
        if self.horizon.as_ref().is_none_or(|h| ik < *h) {
            self.due.insert(ik, bk);
            if self.due.len() > PREFETCH {
                // Keep the first ones: the last goes back to being in the store only.
                if let Some((last, _)) = self.due.pop_last() {
                    self.horizon = Some(last);
                }
            }
        }
        self.stream_time = self.stream_time.max(t);
        self.expire(cx.plan.kind, origin, lists)
    }

    /// Removes the records no record that is not late can join any more, emitting those that
    /// never matched when their side is kept (an outer join).
    fn expire(&mut self, kind: JoinKind, origin: usize, lists: &mut Lists) -> Result<()> {
        let cutoff = self.stream_time.saturating_sub(self.span());
        loop {
            let first = self.due.first_key_value().map(|(ik, _)| time_of(&ik[1..9]));
            match first {
                Some(t) if t < cutoff => {}
                Some(_) => return Ok(()),
                None => match self.horizon.take() {
                    None => return Ok(()),
                    Some(h) => {
                        // Everything below the horizon has expired: prefetch what follows.
                        let next = self.kv.range(&h, &[INDEX; 18], PREFETCH, false)?;
                        self.horizon = match next.last() {
                            Some((last, _)) if next.len() == PREFETCH => {
                                let mut after = last.to_vec();
                                after.push(0);
                                Some(Bytes::from(after))
                            }
                            _ => None,
                        };
                        let empty = next.is_empty();
                        self.due.extend(next);
                        if empty {
                            return Ok(());
                        }
                        continue;
                    }
                },
            }
            let Some((ik, bk)) = self.due.pop_first() else {
                return Ok(());
            };
            self.kv.delete(&ik);
            let side = ik.last().copied().unwrap_or(LEFT);
            let kept = if side == LEFT {
                kind.keeps_left()
            } else {
                kind.keeps_right()
            };
            if !kept {
                // Nothing to emit for it: no need to read it.
                self.kv.delete(&bk);
                continue;
            }
            let Some(v) = self.kv.get(&bk)? else {
                continue;
            };
            self.kv.delete(&bk);
            if v.first() == Some(&0) {
                let rec = Rec::decode(&v, 1)?;
                // The buffer key: side, length-prefixed join key, time, sequence.
                let len = bk
                    .get(1..5)
                    .and_then(|l| <[u8; 4]>::try_from(l).ok())
                    .map_or(0, u32::from_be_bytes) as usize;
                let key = bk.slice(5..(5 + len).min(bk.len()));
                let ts = rec.ts;
                let at = lists.add(rec, side == LEFT);
                let row = sides(side == LEFT, Some(at), None);
                lists.emits.push(Emit::row(Some(key), ts, origin, row));
            }
        }
    }
}

impl JoinOp for StreamStream {
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        self.join(cx, events)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.kv]
    }
}
