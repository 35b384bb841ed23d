//! Round trips, corruption detection and interoperability with `kafka-protocol` for the whole codec.

use bytes::Bytes;

use super::header::{ATTRIBUTES_AT, CRC_AT, MAGIC_AT, TIMESTAMP_TYPE_BIT};
use super::*;
use crate::compression::Compression;
use crate::record::{Header, Record, StoredRecord};
use proptest::prelude::*;

fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: Vec::new(),
        timestamp: ts,
    }
}

fn sample_records() -> Vec<Record> {
    let mut with_headers = rec(Some("k2"), Some("v2"), 1_700_000_000_500);
    with_headers.headers = vec![
        Header {
            key: "trace".into(),
            value: Some(Bytes::from_static(b"abc")),
        },
        Header {
            key: "nullable".into(),
            value: None,
        },
        Header {
            key: "".into(),
            value: Some(Bytes::new()),
        },
    ];
    vec![
        rec(Some("k1"), Some("v1"), 1_700_000_001_000),
        with_headers,
        rec(None, Some("no key"), 1_700_000_000_000), // negative delta
        rec(Some("tombstone"), None, 1_700_000_002_000),
        rec(None, None, 1_700_000_000_999),
        rec(Some(""), Some(""), 1_700_000_001_000),
    ]
}

fn build(opts: BatchOptions, records: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new(opts);
    for r in records {
        b.push(r).unwrap();
    }
    b.build().unwrap()
}

#[test]
fn round_trip_every_compression() {
    let records = sample_records();
    for compression in Compression::ALL {
        let opts = BatchOptions {
            compression,
            ..Default::default()
        };
        let mut batch = build(opts, &records);
        set_base_offset(&mut batch, 1000);
        set_partition_leader_epoch(&mut batch, 7);
        verify_crc(&batch).unwrap();

        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.total_size(), batch.len());
        assert_eq!(h.compression(), compression);
        assert_eq!(h.base_offset, 1000);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.record_count(), records.len());
        assert_eq!(h.last_offset(), 1005);
        assert_eq!(h.next_offset(), 1006);
        assert_eq!(h.base_timestamp, records[0].timestamp);
        assert_eq!(h.max_timestamp, 1_700_000_002_000);
        assert!(!h.is_transactional() && !h.is_control());
        assert_eq!(h.last_sequence(), NO_SEQUENCE);

        let decoded = decode_records(&batch).unwrap();
        let expected: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| StoredRecord {
                offset: 1000 + i as i64,
                record: r.clone(),
            })
            .collect();
        assert_eq!(decoded, expected, "{compression}");
        assert_eq!(decode_records_bytes(Bytes::from(batch)).unwrap(), expected);
    }
}

#[test]
fn uncompressed_decode_is_zero_copy() {
    let batch = Bytes::from(build(BatchOptions::default(), &sample_records()));
    let decoded = decode_records_bytes(batch.clone()).unwrap();
    let value = decoded[0].record.value.as_ref().unwrap();
    let range = batch.as_ptr_range();
    assert!(
        range.contains(&value.as_ptr()),
        "value should point into the batch"
    );
}

#[test]
fn empty_batch_rejected_unless_last_offset_delta_set() {
    assert!(matches!(
        BatchBuilder::new(BatchOptions::default()).build(),
        Err(BatchError::Empty)
    ));

    let mut b = BatchBuilder::new(BatchOptions {
        base_sequence: 10,
        ..Default::default()
    });
    b.set_last_offset_delta(4);
    let batch = b.build().unwrap();
    let h = BatchHeader::parse(&batch).unwrap();
    assert_eq!(
        (h.records_count, h.last_offset_delta, h.last_sequence()),
        (0, 4, 14)
    );
    assert_eq!(h.base_timestamp, NO_TIMESTAMP);
    assert!(decode_records(&batch).unwrap().is_empty());
}

#[test]
fn compaction_keeps_offsets_and_last_offset() {
    let opts = BatchOptions {
        producer_id: 42,
        producer_epoch: 3,
        base_sequence: 100,
        ..Default::default()
    };
    let mut b = BatchBuilder::new(opts);
    b.push_with_delta(1, &rec(Some("a"), Some("1"), 10))
        .unwrap();
    b.push_with_delta(3, &rec(Some("b"), Some("2"), 11))
        .unwrap();
    assert!(matches!(
        b.push_with_delta(3, &rec(None, None, 0)),
        Err(BatchError::NonIncreasingOffsetDelta {
            previous: 3,
            requested: 3
        })
    ));
    b.push(&rec(Some("c"), Some("3"), 12)).unwrap(); // delta 4
    b.set_last_offset_delta(9);
    let mut batch = b.build().unwrap();
    set_base_offset(&mut batch, 50);
    let h = BatchHeader::parse(&batch).unwrap();
    assert_eq!((h.last_offset(), h.last_sequence()), (59, 109));
    let offsets: Vec<_> = decode_records(&batch)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, [51, 53, 54]);

    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push_with_delta(5, &rec(None, None, 0)).unwrap();
    b.set_last_offset_delta(2);
    assert!(matches!(
        b.build(),
        Err(BatchError::LastOffsetDeltaTooSmall { .. })
    ));
}

#[test]
fn last_sequence_wraps_like_kafka() {
    let mut b = BatchBuilder::new(BatchOptions {
        base_sequence: i32::MAX - 1,
        ..Default::default()
    });
    for _ in 0..4 {
        b.push(&rec(None, Some("x"), 0)).unwrap();
    }
    let h = BatchHeader::parse(&b.build().unwrap()).unwrap();
    assert_eq!(h.last_sequence(), 1);
}

#[test]
fn extreme_timestamps_round_trip() {
    let records = vec![
        rec(None, Some("a"), i64::MAX),
        rec(None, Some("b"), i64::MIN),
        rec(None, None, -5),
    ];
    let decoded = decode_records(&build(BatchOptions::default(), &records)).unwrap();
    let ts: Vec<_> = decoded.iter().map(|r| r.record.timestamp).collect();
    assert_eq!(ts, [i64::MAX, i64::MIN, -5]);
}

#[test]
fn log_append_time_overrides_record_timestamps() {
    let mut batch = build(BatchOptions::default(), &sample_records());
    // Setting the attribute bit changes the CRC region, so recompute it.
    batch[22] |= TIMESTAMP_TYPE_BIT as u8;
    batch[35..43].copy_from_slice(&99i64.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(
        decode_records(&batch)
            .unwrap()
            .iter()
            .all(|r| r.record.timestamp == 99)
    );
}

#[test]
fn crc_corruption_detected_anywhere_after_crc() {
    for compression in [Compression::None, Compression::Zstd] {
        let batch = build(
            BatchOptions {
                compression,
                ..Default::default()
            },
            &sample_records(),
        );
        for i in CRC_AT..batch.len() {
            let mut bad = batch.clone();
            bad[i] ^= 0x10;
            let err = verify_crc(&bad).unwrap_err();
            assert!(
                matches!(err, BatchError::CrcMismatch { .. }),
                "byte {i}: {err}"
            );
            assert!(decode_records(&bad).is_err(), "byte {i}");
        }
    }
}

#[test]
fn header_corruption_and_truncation_detected() {
    let batch = build(BatchOptions::default(), &sample_records());
    let mut bad = batch.clone();
    bad[MAGIC_AT] = 1;
    assert!(matches!(
        BatchHeader::parse(&bad),
        Err(BatchError::BadMagic { magic: 1, .. })
    ));
    let mut bad = batch.clone();
    bad[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert!(matches!(
        BatchHeader::parse(&bad),
        Err(BatchError::BadBatchLength { .. })
    ));
    assert!(matches!(
        BatchHeader::parse(&batch[..60]),
        Err(BatchError::Truncated { needed: 61, .. })
    ));
    assert!(matches!(
        decode_records(&batch[..batch.len() - 1]),
        Err(BatchError::Truncated { .. })
    ));
    let msg = verify_crc(&{
        let mut b = batch.clone();
        b[17] ^= 1;
        b
    })
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("header has") && msg.contains("computes to"),
        "{msg}"
    );
}

#[test]
fn record_count_mismatch_detected() {
    let mut batch = build(BatchOptions::default(), &sample_records());
    for (count, want_trailing) in [(7i32, false), (5, true)] {
        batch[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let err = decode_records(&batch).unwrap_err();
        if want_trailing {
            assert!(
                matches!(err, BatchError::TrailingRecordBytes { declared: 5, .. }),
                "{err}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    BatchError::RecordCountMismatch {
                        declared: 7,
                        found: 6,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

#[test]
fn split_batches_walks_and_reports_partial_tail() {
    let a = build(BatchOptions::default(), &sample_records());
    let b = build(
        BatchOptions {
            compression: Compression::Lz4,
            ..Default::default()
        },
        &sample_records(),
    );
    let mut buf = [a.clone(), b.clone()].concat();
    let whole = buf.len();
    buf.extend_from_slice(&a[..30]);

    let mut it = split_batches(&buf);
    assert_eq!(it.next().unwrap().unwrap(), &a[..]);
    assert_eq!(it.next().unwrap().unwrap(), &b[..]);
    match it.next() {
        Some(Err(BatchError::Incomplete {
            position,
            needed,
            available: 30,
        })) => {
            assert_eq!((position, needed), (whole, a.len()));
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    assert!(it.next().is_none());
    assert_eq!(it.position(), whole);

    // Fewer bytes than the length field.
    let mut it = split_batches(&a[..5]);
    assert!(matches!(
        it.next(),
        Some(Err(BatchError::Incomplete { needed: 61, .. }))
    ));
    assert_eq!(split_batches(&[]).count(), 0);
}

#[test]
fn control_batch_round_trip() {
    for kind in [ControlType::Abort, ControlType::Commit] {
        let mut batch = encode_control_batch(kind, 77, 2, 13, 1_700_000_000_000);
        set_base_offset(&mut batch, 500);
        verify_crc(&batch).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        assert!(h.is_control() && h.is_transactional());
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 2, NO_SEQUENCE)
        );
        assert_eq!(decode_control(&batch).unwrap(), (kind, 13));
    }
    let data = build(BatchOptions::default(), &sample_records());
    assert!(matches!(
        decode_control(&data),
        Err(BatchError::NotControl { .. })
    ));
}

#[test]
fn estimated_size_tracks_uncompressed_bytes() {
    let mut b = BatchBuilder::new(BatchOptions::default());
    assert!(b.is_empty());
    assert_eq!(b.estimated_size(), BATCH_HEADER_LEN);
    for r in sample_records() {
        b.push(&r).unwrap();
    }
    assert_eq!(b.record_count(), 6);
    let size = b.estimated_size();
    assert_eq!(b.build().unwrap().len(), size);
}

/// Rough encode throughput; run with `--release --ignored --nocapture`.
#[test]
#[ignore = "timing, not correctness"]
fn encode_throughput() {
    let record = rec(
        Some("user-000042"),
        Some(&"x".repeat(100)),
        1_700_000_000_000,
    );
    let n = 2_000_000;
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..n / 1000 {
        let mut b = BatchBuilder::with_capacity(BatchOptions::default(), 128 * 1024);
        for _ in 0..1000 {
            b.push(&record).unwrap();
        }
        bytes += b.build().unwrap().len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:.2} M records/s, {:.0} MB/s",
        n as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}

fn arb_bytes() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from))
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        arb_bytes(),
        arb_bytes(),
        proptest::collection::vec(("[a-z\u{e9}]{0,8}", arb_bytes()), 0..4),
        any::<i64>(),
    )
        .prop_map(|(key, value, headers, timestamp)| Record {
            key,
            value,
            headers: headers
                .into_iter()
                .map(|(key, value)| Header { key, value })
                .collect(),
            timestamp,
        })
}

proptest! {
    #[test]
    fn arbitrary_records_round_trip(
        records in proptest::collection::vec(arb_record(), 1..20),
        code in 0i16..5,
        base in any::<i32>(),
    ) {
        let compression = Compression::from_code(code).unwrap();
        let mut batch = build(BatchOptions { compression, ..Default::default() }, &records);
        set_base_offset(&mut batch, i64::from(base));
        let decoded = decode_records(&batch).unwrap();
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(d.offset, i64::from(base) + i as i64);
            prop_assert_eq!(&d.record, r);
        }
    }
}

/// Interoperability with kafka-protocol's independent codec.
mod kafka_protocol_compat {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as KCompression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };

    fn k_compression(c: Compression) -> KCompression {
        match c {
            Compression::None => KCompression::None,
            Compression::Gzip => KCompression::Gzip,
            Compression::Snappy => KCompression::Snappy,
            Compression::Lz4 => KCompression::Lz4,
            Compression::Zstd => KCompression::Zstd,
        }
    }

    fn assert_same_contents(ours: &Record, theirs: &KRecord) {
        assert_eq!(ours.key, theirs.key);
        assert_eq!(ours.value, theirs.value);
        assert_eq!(ours.timestamp, theirs.timestamp);
        let headers: Vec<(String, Option<Bytes>)> = theirs
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
            .collect();
        let ours: Vec<_> = ours
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert_eq!(ours, headers);
    }

    #[test]
    fn ours_decoded_by_kafka_protocol() {
        let records = sample_records();
        for compression in Compression::ALL {
            let opts = BatchOptions {
                compression,
                producer_id: 9001,
                producer_epoch: 4,
                base_sequence: 17,
                transactional: true,
                partition_leader_epoch: 3,
            };
            let mut batch = build(opts, &records);
            set_base_offset(&mut batch, 4242);
            let mut buf = Bytes::from(batch);
            let set = RecordBatchDecoder::decode(&mut buf)
                .unwrap_or_else(|e| panic!("{compression}: {e:#}"));
            assert_eq!(set.compression, k_compression(compression));
            assert_eq!(set.records.len(), records.len());
            for (i, (theirs, ours)) in set.records.iter().zip(&records).enumerate() {
                assert_eq!(theirs.offset, 4242 + i as i64);
                assert_eq!(theirs.sequence, 17 + i as i32);
                assert_eq!((theirs.producer_id, theirs.producer_epoch), (9001, 4));
                assert_eq!(theirs.partition_leader_epoch, 3);
                assert!(theirs.transactional && !theirs.control);
                assert_eq!(theirs.timestamp_type, TimestampType::Creation);
                assert_same_contents(ours, theirs);
            }
        }
    }

    fn k_record(offset: i64, r: &Record) -> KRecord {
        KRecord {
            transactional: true,
            control: false,
            partition_leader_epoch: 5,
            producer_id: 31337,
            producer_epoch: 6,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: 1000 + offset as i32,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| (StrBytes::from_string(h.key.clone()), h.value.clone()))
                .collect(),
        }
    }

    #[test]
    fn kafka_protocol_decoded_by_ours() {
        let records = sample_records();
        for compression in Compression::ALL {
            let theirs: Vec<KRecord> = records
                .iter()
                .enumerate()
                .map(|(i, r)| k_record(i as i64, r))
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &theirs,
                &RecordEncodeOptions {
                    version: 2,
                    compression: k_compression(compression),
                },
            )
            .unwrap();
            let buf = buf.freeze();
            let batches: Vec<_> = split_batches(&buf).collect::<Result<_, _>>().unwrap();
            assert_eq!(batches.len(), 1, "{compression}");
            let batch = batches[0];
            verify_crc(batch).unwrap();
            let h = BatchHeader::parse(batch).unwrap();
            assert_eq!(h.compression(), compression);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (31337, 6, 1000)
            );
            assert_eq!(h.partition_leader_epoch, 5);
            assert!(h.is_transactional() && !h.is_control());
            assert_eq!(h.last_offset_delta, 5);
            assert_eq!(h.last_sequence(), 1005);
            let decoded = decode_records_bytes(buf.slice(..h.total_size())).unwrap();
            assert_eq!(decoded.len(), theirs.len());
            for (i, (d, t)) in decoded.iter().zip(&theirs).enumerate() {
                assert_eq!(d.offset, i as i64);
                assert_same_contents(&d.record, t);
            }
        }
    }

    #[test]
    fn control_batches_interoperate() {
        // Ours -> kafka-protocol.
        let batch = encode_control_batch(ControlType::Commit, 55, 1, 8, 123);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(batch)).unwrap();
        let [marker] = set.records.as_slice() else {
            panic!("one record expected")
        };
        assert!(marker.control && marker.transactional);
        assert_eq!(
            (marker.producer_id, marker.producer_epoch, marker.timestamp),
            (55, 1, 123)
        );
        assert_eq!(marker.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(marker.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 8][..]));

        // kafka-protocol -> ours.
        let abort = KRecord {
            transactional: true,
            control: true,
            partition_leader_epoch: 0,
            producer_id: 66,
            producer_epoch: 2,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 456,
            key: Some(Bytes::from_static(&[0, 0, 0, 0])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 21])),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&abort],
            &RecordEncodeOptions {
                version: 2,
                compression: KCompression::None,
            },
        )
        .unwrap();
        assert_eq!(decode_control(&buf).unwrap(), (ControlType::Abort, 21));
        let h = BatchHeader::parse(&buf).unwrap();
        assert!(h.is_control() && h.is_transactional());
        assert_eq!((h.producer_id, h.producer_epoch), (66, 2));
    }
}
