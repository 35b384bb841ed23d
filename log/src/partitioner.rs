//! Kafka's default partitioner: murmur2 for keyed records, sticky round robin for the rest.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`.
///
/// Must stay bit-for-bit identical to the Java client, or keyed records would land on
/// different partitions than Java producers put them.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java's int length: truncation for >2 GiB keys matches its behaviour.
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // Java's switch falls through from case 3 to 1; the multiply happens for any tail.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(value: i32) -> i32 {
    value & 0x7fff_ffff
}

/// The partition Kafka's default partitioner assigns to `key` among `partitions`.
///
/// # Panics
/// If `partitions` is zero.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(
        partitions > 0,
        "partition_for_key needs at least one partition"
    );
    to_positive(murmur2(key)) as u32 % partitions
}

/// Chooses partitions for records without a key, as Kafka's sticky partitioner does:
/// every keyless record goes to the current partition until the producer closes a batch
/// and calls [`on_new_batch`](Self::on_new_batch), which moves to the next partition round
/// robin. Sticking fills batches faster than per-record round robin, so batches are larger
/// and latency lower at the same linger.
///
/// Safe to share between threads; two threads closing batches at once simply advance twice.
#[derive(Debug, Default)]
pub struct StickyPartitioner {
    current: AtomicU32,
}

impl StickyPartitioner {
    /// A partitioner starting at partition `start` (reduced modulo the partition count);
    /// producers usually start at a random one so they do not all pile on partition 0.
    pub fn new(start: u32) -> Self {
        StickyPartitioner {
            current: AtomicU32::new(start),
        }
    }

    /// The partition for a keyless record among `partitions`.
    ///
    /// # Panics
    /// If `partitions` is zero.
    pub fn partition(&self, partitions: u32) -> u32 {
        assert!(
            partitions > 0,
            "StickyPartitioner needs at least one partition"
        );
        self.current.load(Ordering::Relaxed) % partitions
    }

    /// The partition for a record: murmur2 of the key if present, else the sticky one.
    ///
    /// # Panics
    /// If `partitions` is zero.
    pub fn partition_for(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => self.partition(partitions),
        }
    }

    /// Moves keyless records to the next partition; call when the current batch is closed.
    pub fn on_new_batch(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `UtilsTest.testMurmur2`, plus the empty input.
    #[test]
    fn murmur2_matches_kafka_vectors() {
        let cases: [(&[u8], i32); 8] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (&[12, 42, 56, 24, 109, 111], 274_204_207),
            (b"", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn to_positive_clears_sign_bit() {
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partition_for_key_matches_java_formula() {
        assert_eq!(partition_for_key(b"foobar", 10), 6); // 1357151166 % 10
        assert_eq!(partition_for_key(b"21", 12), 1_173_551_340 % 12);
        for partitions in 1..=16 {
            let p = partition_for_key(b"customer-42", partitions);
            assert!(p < partitions);
            assert_eq!(p, partition_for_key(b"customer-42", partitions));
        }
    }

    #[test]
    fn sticky_partitioner_sticks_then_rotates() {
        let sticky = StickyPartitioner::new(2);
        assert!((0..10).all(|_| sticky.partition(3) == 2));
        sticky.on_new_batch();
        assert_eq!(sticky.partition(3), 0);
        sticky.on_new_batch();
        assert_eq!(sticky.partition(3), 1);
        assert_eq!(sticky.partition_for(Some(b"foobar"), 10), 6);
        assert_eq!(sticky.partition_for(None, 10), 4);
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_panics() {
        partition_for_key(b"k", 0);
    }
}
