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
//!
//! Records buffered during an epoch stay in memory ([`Young`]) until the epoch commits:
//! with an epoch spanning more stream time than the window, most records are born and
//! expire within it, and never need the store's ordered overlay (two entries written and
//! deleted per record) or its changelog. Those still buffered when the epoch commits are
//! written to the store then ([`JoinOp::flush`]), in the same transaction as before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

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
    /// This epoch's buffered records, not in the store yet.
    young: Young,
    /// A lookup key's bytes, reused.
    scratch: Vec<u8>,
}

/// Records buffered in the current epoch: the store's buffer and index for them, in memory.
#[derive(Debug, Default)]
struct Young {
    /// Side byte and length-prefixed join key (the buffer key's prefix) → its records in
    /// (time, sequence) order.
    by_key: foldhash::HashMap<Bytes, VecDeque<YoungRec>>,
    /// Expiry order, as the store's index.
    by_time: ExpiryQueue,
}

/// A young record's place in expiry order: (time, sequence, side) and its `by_key` key.
type Due = (i64, u64, u8, Bytes);

/// Young records in expiry order. The merger hands a join its records in time order, so
/// nearly every record is the latest yet: those queue at the end of a sorted deque in
/// constant time; a record earlier than the last (out of order, within the grace period)
/// goes to a heap. The first is the smaller of the two fronts.
#[derive(Debug, Default)]
struct ExpiryQueue {
    in_order: VecDeque<Due>,
    out_of_order: BinaryHeap<Reverse<Due>>,
}

impl ExpiryQueue {
    fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    fn push(&mut self, due: Due) {
        if self.in_order.back().is_none_or(|last| *last <= due) {
            self.in_order.push_back(due);
        } else {
            self.out_of_order.push(Reverse(due));
        }
    }

    /// Whether the first is the heap's.
    fn first_is_out_of_order(&self) -> bool {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) => b < a,
            (None, Some(_)) => true,
            _ => false,
        }
    }

    fn peek(&self) -> Option<&Due> {
        match self.first_is_out_of_order() {
            true => self.out_of_order.peek().map(|Reverse(d)| d),
            false => self.in_order.front(),
        }
    }

    fn pop(&mut self) -> Option<Due> {
        match self.first_is_out_of_order() {
            true => self.out_of_order.pop().map(|Reverse(d)| d),
            false => self.in_order.pop_front(),
        }
    }

    fn clear(&mut self) {
        self.in_order.clear();
        self.out_of_order.clear();
    }
}

#[derive(Debug)]
struct YoungRec {
    ts: i64,
    seq: u64,
    /// The stored form with an unmatched flag byte first (`Rec::encode_input`).
    value: Bytes,
    matched: bool,
}

impl YoungRec {
    /// The stored form, flag included.
    fn stored(&self) -> Bytes {
        if !self.matched {
            return self.value.clone();
        }
        let mut v = self.value.to_vec();
        v[0] = 1;
        Bytes::from(v)
    }
}

impl Young {
    fn len(&self) -> usize {
        self.by_time.len()
    }

    fn first(&self) -> Option<(i64, u64)> {
        self.by_time.peek().map(|(t, s, _, _)| (*t, *s))
    }

    fn insert(&mut self, prefix: &[u8], side: u8, rec: YoungRec) {
        let (t, seq) = (rec.ts, rec.seq);
        let key = match self.by_key.get_key_value(prefix) {
            Some((k, _)) => k.clone(),
            None => Bytes::copy_from_slice(prefix),
        };
        let list = self.by_key.entry(key.clone()).or_default();
        // Sequences only grow, and times mostly: the place is nearly always the end.
        let at = list.partition_point(|r| (r.ts, r.seq) < (t, seq));
        list.insert(at, rec);
        self.by_time.push((t, seq, side, key));
    }

    /// Removes the first record in expiry order: its side, key prefix and record.
    fn pop(&mut self) -> Option<(u8, Bytes, YoungRec)> {
        let (_, _, side, key) = self.by_time.pop()?;
        let list = self.by_key.get_mut(&key)?;
        // The first record of all is the first of its key.
        let rec = list.pop_front()?;
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        Some((side, key, rec))
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.by_time.clear();
    }
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
        let (stream_time, seq) = kv.get(b"")?.map_or((i64::MIN, 0), |m| meta(&m));
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
            young: Young::default(),
            scratch: Vec::new(),
        })
    }

    /// Time a buffered record stays: after that no record that is not late can join it.
    fn span(&self) -> i64 {
        self.before
            .saturating_add(self.after)
            .saturating_add(self.grace)
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
        let keeps_self = cx.plan.kind.keeps(is_left);
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
        let (from_t, to_t) = (t.saturating_sub(lo), t.saturating_add(hi).saturating_add(1));
        self.scratch.clear();
        self.scratch.push(other);
        self.scratch.extend_from_slice(&len_prefixed(&key));
        // The other side's records in the window: the store's (all earlier in sequence),
        // then this epoch's.
        let mut stored = Vec::new();
        // A window after the committed state's stream time holds this epoch's records only.
        if from_t <= self.committed_time {
            let mut from = self.scratch.clone();
            let mut to = from.clone();
            from.extend_from_slice(&time_bytes(from_t));
            to.extend_from_slice(&time_bytes(to_t));
            stored = self.kv.range(&from, &to, MAX_MATCHES + 1)?;
        }
        let young = self.young.by_key.get_mut(self.scratch.as_slice());
        let young = match young {
            Some(list) => {
                let at = list.partition_point(|r| r.ts < from_t);
                // Counting stops past the bound: a hot key's records are not all walked.
                let n = list
                    .range(at..)
                    .take_while(|r| r.ts < to_t)
                    .take(MAX_MATCHES + 1)
                    .count();
                list.range_mut(at..at + n)
            }
            None => Default::default(),
        };
        if stored.len() + young.len() > MAX_MATCHES {
            out.rejected.push((
                origin,
                format!(
                    "join key {} has more than {MAX_MATCHES} records of the other side within this record's join window",
                    String::from_utf8_lossy(&key)
                ),
            ));
            return Ok(());
        }
        // (time, sequence, stored form), in that order.
        let mut matches: Vec<(i64, u64, Bytes)> = Vec::with_capacity(stored.len() + young.len());
        for (bk, v) in stored {
            let n = bk.len();
            let ts = time_of(&bk[n - 16..n - 8]);
            let seq = u64::from_be_bytes(bk[n - 8..].try_into().unwrap_or_default());
            if v.first() == Some(&0) {
                let mut flagged = v.to_vec();
                flagged[0] = 1;
                self.kv.put(&bk, Bytes::from(flagged));
            }
            matches.push((ts, seq, v));
        }
        let from_store = matches.len();
        for r in young {
            r.matched = true;
            matches.push((r.ts, r.seq, r.value.clone()));
        }
        if from_store > 0 && matches.len() > from_store {
            matches.sort_by_key(|m| (m.0, m.1));
        }
        for (m_ts, m_seq, v) in &matches {
            // The later of the two records' own timestamps, as for an outer row.
            let ts = t.max(Rec::decode(v, 1)?.ts);
            let at = lists
                .side(!is_left)
                .buffered((*m_ts, *m_seq), v.slice(1..))?;
            let row = sides(is_left, Some(row), Some(at));
            lists
                .emits
                .push(Emit::row(Some(key.clone()), ts, origin, row));
        }
        self.scratch.clear();
        self.scratch.push(side);
        self.scratch.extend_from_slice(&len_prefixed(&key));
        let rec = YoungRec {
            ts: t,
            seq: self.seq,
            value: Rec::encode_input(input, &[0]),
            matched: !matches.is_empty(),
        };
        self.young.insert(&self.scratch, side, rec);
        self.seq += 1;
        self.stream_time = self.stream_time.max(t);
        self.expire(cx.plan.kind, origin, lists)
    }

    /// Removes the records no record that is not late can join any more, emitting those that
    /// never matched when their side is kept (an outer join).
    fn expire(&mut self, kind: JoinKind, origin: usize, lists: &mut Lists) -> Result<()> {
        let cutoff = self.stream_time.saturating_sub(self.span());
        loop {
            // The first record in expiry order, of the store's or this epoch's.
            let stored = self.first_due()?;
            let young = self.young.first();
            let from_young = match (stored, young) {
                (Some(s), Some(y)) => y < s,
                (s, y) => s.is_none() && y.is_some(),
            };
            match if from_young { young } else { stored } {
                Some((t, _)) if t < cutoff => {}
                _ => return Ok(()),
            }
            let (side, key, rec) = if from_young {
                let Some((side, prefix, r)) = self.young.pop() else {
                    return Ok(());
                };
                if r.matched || !kind.keeps(side == LEFT) {
                    continue;
                }
                (side, prefix.slice(5..), Rec::decode(&r.value, 1)?)
            } else {
                let Some((ik, bk)) = self.due.pop_first() else {
                    return Ok(());
                };
                self.kv.delete(&ik);
                let side = ik.last().copied().unwrap_or(LEFT);
                if !kind.keeps(side == LEFT) {
                    // Nothing to emit for it: no need to read it.
                    self.kv.delete(&bk);
                    continue;
                }
                let Some(v) = self.kv.get(&bk)? else {
                    continue;
                };
                self.kv.delete(&bk);
                if v.first() != Some(&0) {
                    continue;
                }
                // The buffer key: side, length-prefixed join key, time, sequence.
                let len = bk
                    .get(1..5)
                    .and_then(|l| <[u8; 4]>::try_from(l).ok())
                    .map_or(0, u32::from_be_bytes) as usize;
                let key = bk.slice(5..(5 + len).min(bk.len()));
                (side, key, Rec::decode(&v, 1)?)
            };
            let ts = rec.ts;
            let at = lists.add(rec, side == LEFT);
            let row = sides(side == LEFT, Some(at), None);
            lists.emits.push(Emit::row(Some(key), ts, origin, row));
        }
    }

    /// The (time, sequence) of the store's first record in expiry order, prefetching the
    /// index when [`StreamStream::due`] ran out.
    fn first_due(&mut self) -> Result<Option<(i64, u64)>> {
        loop {
            if let Some((ik, _)) = self.due.first_key_value() {
                let seq = u64::from_be_bytes(ik[9..17].try_into().unwrap_or_default());
                return Ok(Some((time_of(&ik[1..9]), seq)));
            }
            let Some(h) = self.horizon.take() else {
                return Ok(None);
            };
            // Everything below the horizon has expired: prefetch what follows.
            let next = self.kv.range(&h, &[INDEX; 18], PREFETCH)?;
            self.horizon = match next.last() {
                Some((last, _)) if next.len() == PREFETCH => {
                    let mut after = last.to_vec();
                    after.push(0);
                    Some(Bytes::from(after))
                }
                _ => None,
            };
            if next.is_empty() {
                return Ok(None);
            }
            self.due.extend(next);
        }
    }

    /// Adds a record's index entry to [`StreamStream::due`] when it falls below the horizon.
    fn note_due(&mut self, ik: Bytes, bk: Bytes) {
        if self.horizon.as_ref().is_none_or(|h| ik < *h) {
            self.due.insert(ik, bk);
            if self.due.len() > PREFETCH {
                // Keep the first ones: the last goes back to being in the store only.
                if let Some((last, _)) = self.due.pop_last() {
                    self.horizon = Some(last);
                }
            }
        }
    }
}

/// The stream time and next sequence stored under the empty key.
fn meta(m: &[u8]) -> (i64, u64) {
    match m.len() {
        16 => (
            i64::from_le_bytes(m[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(m[8..].try_into().unwrap_or_default()),
        ),
        _ => (i64::MIN, 0),
    }
}

impl JoinOp for StreamStream {
    fn process(&mut self, cx: &Cx<'_>, events: &[Event<'_>]) -> Result<JoinOutput> {
        self.join(cx, events)
    }

    fn kvs(&mut self) -> Vec<&mut Kv> {
        vec![&mut self.kv]
    }

    fn flush(&mut self) {
        let young = std::mem::take(&mut self.young.by_key);
        self.young.clear();
        for (prefix, list) in young {
            let side = prefix[0];
            for r in list {
                let mut bk = Vec::with_capacity(prefix.len() + 16);
                bk.extend_from_slice(&prefix);
                bk.extend_from_slice(&time_bytes(r.ts));
                bk.put_u64(r.seq);
                let mut ik = Vec::with_capacity(18);
                ik.push(INDEX);
                ik.extend_from_slice(&time_bytes(r.ts));
                ik.put_u64(r.seq);
                ik.push(side);
                // Keys with a sequence number never used before: new to the store.
                self.kv.insert_new(&bk, r.stored());
                let bk = Bytes::from(bk);
                self.kv.insert_new(&ik, bk.clone());
                self.note_due(Bytes::from(ik), bk);
            }
        }
        // Every buffered record is in the store now: a window reaching at or below this
        // time reads it there.
        self.committed_time = self.stream_time;
    }

    fn abort(&mut self) {
        self.young.clear();
        self.kv.abort();
        // What the aborted epoch moved on is taken back to the committed state: the index
        // entries known ahead, the stream time and the sequence.
        self.due.clear();
        self.horizon = Some(Bytes::from_static(&[INDEX]));
        let (stream_time, seq) = self
            .kv
            .get(b"")
            .ok()
            .flatten()
            .map_or((i64::MIN, 0), |m| meta(&m));
        self.stream_time = stream_time;
        self.committed_time = stream_time;
        self.seq = seq;
    }

    fn unflushed_entries(&self) -> usize {
        // A buffer entry and an index entry each, once in the store.
        2 * self.young.len()
    }
}
