//! Zigzag variable-length integers, the Kafka/protobuf encoding used for record fields in a batch.

/// Longest encoding of a zigzag varint (32-bit value), in bytes.
pub const MAX_VARINT_LEN: usize = 5;
/// Longest encoding of a zigzag varlong (64-bit value), in bytes.
pub const MAX_VARLONG_LEN: usize = 10;

/// Why a varint or varlong could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The input ended in the middle of a value.
    #[error("truncated varint starting at byte {position}: input ends at byte {len}")]
    Truncated {
        /// Where the value started.
        position: usize,
        /// Length of the whole input.
        len: usize,
    },
    /// The value has more continuation bytes than its type allows.
    #[error("varint starting at byte {position} is longer than {max_len} bytes")]
    Overflow {
        /// Where the value started.
        position: usize,
        /// The longest legal encoding for the type.
        max_len: usize,
    },
}

/// Maps signed to unsigned so small magnitudes of either sign encode in few bytes.
#[inline]
fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

#[inline]
fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline]
fn unzigzag32(raw: u32) -> i32 {
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

#[inline]
fn unzigzag64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

#[inline]
fn put_unsigned(buf: &mut Vec<u8>, mut raw: u64) {
    // Assemble on the stack and append once: one capacity check instead of one per byte.
    let mut tmp = [0u8; MAX_VARLONG_LEN];
    let mut n = 0;
    while raw >= 0x80 {
        tmp[n] = (raw as u8) | 0x80;
        raw >>= 7;
        n += 1;
    }
    tmp[n] = raw as u8;
    buf.extend_from_slice(&tmp[..=n]);
}

#[inline]
fn unsigned_len(raw: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    let bits = 64 - (raw | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a zigzag varint.
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, value: i32) {
    put_unsigned(buf, u64::from(zigzag32(value)));
}

/// Appends `value` as a zigzag varlong.
#[inline]
pub fn put_varlong(buf: &mut Vec<u8>, value: i64) {
    put_unsigned(buf, zigzag64(value));
}

/// Number of bytes [`put_varint`] writes for `value`.
#[inline]
pub fn varint_len(value: i32) -> usize {
    unsigned_len(u64::from(zigzag32(value)))
}

/// Number of bytes [`put_varlong`] writes for `value`.
#[inline]
pub fn varlong_len(value: i64) -> usize {
    unsigned_len(zigzag64(value))
}

#[inline]
fn get_unsigned(buf: &[u8], pos: &mut usize, max_len: usize) -> Result<u64, VarintError> {
    let start = *pos;
    let mut raw = 0u64;
    for i in 0..max_len {
        let Some(&byte) = buf.get(start + i) else {
            return Err(VarintError::Truncated {
                position: start,
                len: buf.len(),
            });
        };
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos = start + i + 1;
            return Ok(raw);
        }
    }
    Err(VarintError::Overflow {
        position: start,
        max_len,
    })
}

/// Reads a zigzag varint at `*pos`, advancing `*pos` past it on success.
///
/// Like Kafka's `ByteUtils.readVarint`, high bits beyond 32 in the fifth byte are
/// dropped rather than rejected; more than five bytes is an error.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, VarintError> {
    get_unsigned(buf, pos, MAX_VARINT_LEN).map(|raw| unzigzag32(raw as u32))
}

/// Reads a zigzag varlong at `*pos`, advancing `*pos` past it on success.
#[inline]
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    get_unsigned(buf, pos, MAX_VARLONG_LEN).map(unzigzag64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let cases: [(i32, &[u8]); 7] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (value, expected) in cases {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf, expected, "encoding {value}");
            assert_eq!(varint_len(value), expected.len());
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos).unwrap(), value);
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn varlong_extremes() {
        for value in [0, -1, 1, i64::MAX, i64::MIN, i64::from(i32::MAX) + 1] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            assert_eq!(buf.len(), varlong_len(value));
            let mut pos = 0;
            assert_eq!(get_varlong(&buf, &mut pos).unwrap(), value);
            assert_eq!(pos, buf.len());
        }
        let mut buf = Vec::new();
        put_varlong(&mut buf, i64::MIN);
        assert_eq!(buf.len(), MAX_VARLONG_LEN);
    }

    #[test]
    fn truncation_is_reported_with_position() {
        let buf = [0x00, 0x80, 0x80];
        let mut pos = 1;
        assert_eq!(
            get_varint(&buf, &mut pos),
            Err(VarintError::Truncated {
                position: 1,
                len: 3
            })
        );
        assert_eq!(pos, 1, "position must not move on error");
        assert!(get_varlong(&[], &mut 0).is_err());
    }

    #[test]
    fn overlong_is_rejected() {
        let buf = [0xff; 6];
        assert_eq!(
            get_varint(&buf, &mut 0),
            Err(VarintError::Overflow {
                position: 0,
                max_len: 5
            })
        );
        let buf = [0xff; 11];
        assert_eq!(
            get_varlong(&buf, &mut 0),
            Err(VarintError::Overflow {
                position: 0,
                max_len: 10
            })
        );
    }

    #[test]
    fn varint_and_varlong_agree_on_small_values() {
        // Kafka writes timestamp deltas as varlong; some clients write varint. Both must read back.
        for value in [0i32, 5, -5, 1 << 20, i32::MIN, i32::MAX] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            put_varint(&mut a, value);
            put_varlong(&mut b, i64::from(value));
            assert_eq!(a, b);
        }
    }

    proptest! {
        #[test]
        fn varint_round_trip(value: i32) {
            let mut buf = vec![0xaa];
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len() - 1, varint_len(value));
            let mut pos = 1;
            prop_assert_eq!(get_varint(&buf, &mut pos).unwrap(), value);
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn varlong_round_trip(value: i64) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, value);
            prop_assert_eq!(buf.len(), varlong_len(value));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf, &mut pos).unwrap(), value);
            prop_assert_eq!(pos, buf.len());
        }
    }
}
