//! Byte layouts of store keys: key-space tags, order-preserving timestamps, window and session
//! keys. These bytes are persistent (in RocksDB and in changelog topics): change them only
//! with a new store kind version.
//!
//! ```text
//! RocksDB key = tag ++ body
//!   0x00 meta     "applied-offset" -> i64 BE, "kind" -> "kv" | "window" | "session"
//!   0x01 data     kv:      user key
//!                 window:  time(start) ++ user key                    (time order, then key)
//!                 session: u32 BE len ++ user key ++ time(end) ++ time(start)   (key first)
//!   0x02 index    session: time(end) ++ u32 BE len ++ user key ++ time(start)   (end first)
//! changelog record key = the data body (tag stripped); the index is derived on replay.
//! ```

use std::ops::Bound;

/// Tag of the data keys, the only ones that go to the changelog.
pub(crate) const TAG_DATA: u8 = 0x01;
/// Tag of derived index keys (session stores: end-time-first).
pub(crate) const TAG_INDEX: u8 = 0x02;

// Metadata keys carry tag 0x00, below every data and index key.

/// The meta key holding the changelog offset applied (i64 big-endian).
pub(crate) const META_APPLIED: &[u8] = b"\x00applied-offset";
/// The meta key holding the store kind.
pub(crate) const META_KIND: &[u8] = b"\x00kind";

/// Length of an encoded timestamp.
pub(crate) const TIME_LEN: usize = 8;

/// A timestamp as 8 bytes whose byte order is time order: big-endian with the sign bit
/// flipped, so negative times sort before positive ones.
pub(crate) fn encode_time(t: i64) -> [u8; TIME_LEN] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_time`]; `None` when fewer than 8 bytes are given.
pub(crate) fn decode_time(b: &[u8]) -> Option<i64> {
    let bytes: [u8; TIME_LEN] = b.get(..TIME_LEN)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// `tag ++ body` as one key.
pub(crate) fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(body.len() + 1);
    k.push(tag);
    k.extend_from_slice(body);
    k
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none
/// (the prefix is all `0xFF`).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// Turns bounds on bodies into a half-open `[lower, upper)` range of tagged keys.
pub(crate) fn tagged_bounds(tag: u8, from: Bound<&[u8]>, to: Bound<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    // `k ++ 0x00` is the smallest key after `k`, which turns inclusive/exclusive ends into
    // RocksDB's inclusive-lower, exclusive-upper bounds.
    let lower = match from {
        Bound::Unbounded => vec![tag],
        Bound::Included(k) => tagged(tag, k),
        Bound::Excluded(k) => {
            let mut v = tagged(tag, k);
            v.push(0);
            v
        }
    };
    let upper = match to {
        Bound::Unbounded => vec![tag + 1],
        Bound::Excluded(k) => tagged(tag, k),
        Bound::Included(k) => {
            let mut v = tagged(tag, k);
            v.push(0);
            v
        }
    };
    (lower, upper)
}

/// The tagged range of every body starting with `prefix`.
pub(crate) fn prefix_bounds(tag: u8, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lower = tagged(tag, prefix);
    let upper = prefix_successor(&lower).unwrap_or_else(|| vec![tag + 1]);
    (lower, upper)
}

/// Window data body: `time(start) ++ key`.
pub(crate) fn window_body(key: &[u8], start: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(TIME_LEN + key.len());
    b.extend_from_slice(&encode_time(start));
    b.extend_from_slice(key);
    b
}

/// Splits a window data body into (start, key).
pub(crate) fn decode_window_body(body: &[u8]) -> Option<(i64, &[u8])> {
    Some((decode_time(body)?, body.get(TIME_LEN..)?))
}

/// A session's identity: key, start, end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionKey<'a> {
    pub key: &'a [u8],
    pub start: i64,
    pub end: i64,
}

/// `u32 BE len ++ key`: the per-key prefix of session primary bodies. The length prefix keeps
/// one key's sessions contiguous even when another key has this key as a prefix.
pub(crate) fn session_key_prefix(key: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(key.len()).ok()?;
    let mut b = Vec::with_capacity(4 + key.len() + 2 * TIME_LEN);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(key);
    Some(b)
}

/// Session primary body: `len ++ key ++ time(end) ++ time(start)`; `None` for a key longer
/// than 4 GiB.
pub(crate) fn session_body(s: SessionKey<'_>) -> Option<Vec<u8>> {
    let mut b = session_key_prefix(s.key)?;
    b.extend_from_slice(&encode_time(s.end));
    b.extend_from_slice(&encode_time(s.start));
    Some(b)
}

/// Parses a session primary body.
pub(crate) fn decode_session_body(body: &[u8]) -> Option<SessionKey<'_>> {
    let len = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let key = body.get(4..4usize.checked_add(len)?)?;
    let rest = &body[4 + len..];
    if rest.len() != 2 * TIME_LEN {
        return None;
    }
    Some(SessionKey {
        key,
        end: decode_time(rest)?,
        start: decode_time(&rest[TIME_LEN..])?,
    })
}

/// Session index key (tag included): `0x02 ++ time(end) ++ len ++ key ++ time(start)`.
pub(crate) fn session_index_key(s: SessionKey<'_>) -> Option<Vec<u8>> {
    let len = u32::try_from(s.key.len()).ok()?;
    let mut b = Vec::with_capacity(1 + 4 + s.key.len() + 2 * TIME_LEN);
    b.push(TAG_INDEX);
    b.extend_from_slice(&encode_time(s.end));
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(s.key);
    b.extend_from_slice(&encode_time(s.start));
    Some(b)
}

/// Parses a session index key (tag included).
pub(crate) fn decode_session_index_key(k: &[u8]) -> Option<SessionKey<'_>> {
    if k.first() != Some(&TAG_INDEX) {
        return None;
    }
    let end = decode_time(k.get(1..)?)?;
    let rest = k.get(1 + TIME_LEN..)?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4usize.checked_add(len)?)?;
    let tail = &rest[4 + len..];
    if tail.len() != TIME_LEN {
        return None;
    }
    Some(SessionKey {
        key,
        start: decode_time(tail)?,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn time_encoding_preserves_order(a in any::<i64>(), b in any::<i64>()) {
            prop_assert_eq!(a.cmp(&b), encode_time(a).cmp(&encode_time(b)));
            prop_assert_eq!(decode_time(&encode_time(a)), Some(a));
        }

        #[test]
        fn session_keys_round_trip(
            key in proptest::collection::vec(any::<u8>(), 0..20),
            start in any::<i64>(),
            end in any::<i64>(),
        ) {
            let s = SessionKey { key: &key, start, end };
            let body = session_body(s).unwrap();
            prop_assert_eq!(decode_session_body(&body), Some(s));
            let idx = session_index_key(s).unwrap();
            prop_assert_eq!(decode_session_index_key(&idx), Some(s));
        }
    }

    #[test]
    fn successor_skips_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_bounds(TAG_DATA, &[0xFF]).1, vec![TAG_DATA + 1]);
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert_eq!(decode_session_body(b"\x00\x00\x00\x05ab"), None);
        assert_eq!(decode_session_body(b""), None);
        assert_eq!(decode_window_body(b"short"), None);
        assert_eq!(decode_session_index_key(b"\x01whatever"), None);
    }
}
