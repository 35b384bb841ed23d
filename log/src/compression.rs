//! Batch compression codecs, byte-compatible with what Kafka's Java client writes and reads.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// Block size the xerial `SnappyOutputStream` (used by the Java client) writes: 32 KiB.
const SNAPPY_BLOCK_SIZE: usize = 32 * 1024;

/// The xerial snappy-java stream header: `\x82SNAPPY\x00`, then version 1 and
/// minimum-compatible version 1 as big-endian i32s.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// The magic part of [`XERIAL_HEADER`]; readers key on this alone, as snappy-java does.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

/// Zstd level; 3 is both the zstd default and Kafka's `compression.zstd.level` default.
const ZSTD_LEVEL: i32 = 3;

/// A record-batch compression codec; the discriminant is Kafka's attribute code (bits 0-2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Records stored as-is.
    #[default]
    None = 0,
    /// A gzip stream (RFC 1952).
    Gzip = 1,
    /// Snappy in xerial snappy-java framing (what the Java client writes).
    Snappy = 2,
    /// The LZ4 frame format with independent 64 KiB blocks.
    Lz4 = 3,
    /// A standard zstd frame.
    Zstd = 4,
}

/// Why a codec could not be named, or data could not be (de)compressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// A batch's attribute bits name a codec that does not exist.
    #[error(
        "unknown compression code {code}; valid codes are 0 (none), 1 (gzip), 2 (snappy), \
         3 (lz4), 4 (zstd)"
    )]
    UnknownCode {
        /// The offending code.
        code: i16,
    },
    /// A configuration string names no codec.
    #[error("unknown compression {name:?}; valid names are none, gzip, snappy, lz4, zstd")]
    UnknownName {
        /// The offending name.
        name: String,
    },
    /// The codec failed while compressing.
    #[error("{codec} compression of {input_len} bytes failed: {source}")]
    Compress {
        /// Codec in use.
        codec: Compression,
        /// Size of the input.
        input_len: usize,
        /// What the codec reported.
        #[source]
        source: io::Error,
    },
    /// The input is not valid data for the codec.
    #[error("{codec} decompression of {input_len} bytes failed: {source}")]
    Decompress {
        /// Codec in use.
        codec: Compression,
        /// Size of the compressed input.
        input_len: usize,
        /// What the codec reported.
        #[source]
        source: io::Error,
    },
}

impl Compression {
    /// Every codec, in code order.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Kafka's attribute code for this codec.
    pub fn code(self) -> i16 {
        self as i16
    }

    /// The codec for a Kafka attribute code (the low three attribute bits).
    pub fn from_code(code: i16) -> Result<Self, CompressionError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            _ => Err(CompressionError::UnknownCode { code }),
        }
    }

    /// The lowercase name used in configuration (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Compresses `input` into a new buffer.
    pub fn compress(self, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        self.compress_into(input, &mut out)?;
        Ok(out)
    }

    /// Compresses `input`, appending to `out`, so a batch header can precede the payload
    /// without a copy.
    pub fn compress_into(self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        let result = match self {
            Compression::None => {
                out.extend_from_slice(input);
                Ok(())
            }
            Compression::Gzip => gzip_compress(input, out),
            Compression::Snappy => snappy_compress(input, out),
            Compression::Lz4 => lz4_compress(input, out),
            Compression::Zstd => zstd::stream::copy_encode(input, out, ZSTD_LEVEL),
        };
        result.map_err(|source| CompressionError::Compress {
            codec: self,
            input_len: input.len(),
            source,
        })
    }

    /// Decompresses `input` into a new buffer.
    ///
    /// Snappy accepts both the xerial framing and plain raw snappy, as snappy-java does.
    pub fn decompress(self, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let mut out = Vec::with_capacity(input.len().saturating_mul(3));
        let result = match self {
            Compression::None => {
                out.extend_from_slice(input);
                Ok(())
            }
            // Multi-member, like Java's GZIPInputStream.
            Compression::Gzip => flate2::read::MultiGzDecoder::new(input)
                .read_to_end(&mut out)
                .map(drop),
            Compression::Snappy => snappy_decompress(input, &mut out),
            Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(input)
                .read_to_end(&mut out)
                .map(drop),
            Compression::Zstd => zstd::stream::copy_decode(input, &mut out),
        };
        result.map_err(|source| CompressionError::Decompress {
            codec: self,
            input_len: input.len(),
            source,
        })?;
        Ok(out)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = CompressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| CompressionError::UnknownName { name: s.to_owned() })
    }
}

fn gzip_compress(input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    encoder.write_all(input)?;
    encoder.finish().map(drop)
}

fn lz4_compress(input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    // Exactly the frame KafkaLZ4BlockOutputStream writes (FLG 0x60, BD 0x40): Java's reader
    // rejects dependent blocks and sizes its buffer from BD.
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .block_checksums(false)
        .content_checksum(false);
    let mut encoder = FrameEncoder::with_frame_info(info, out);
    encoder.write_all(input)?;
    encoder.finish().map(drop).map_err(io::Error::other)
}

fn snappy_compress(input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut encoder = snap::raw::Encoder::new();
    out.extend_from_slice(XERIAL_HEADER);
    for block in input.chunks(SNAPPY_BLOCK_SIZE) {
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        out.resize(start + snap::raw::max_compress_len(block.len()), 0);
        let written = encoder
            .compress(block, &mut out[start..])
            .map_err(io::Error::other)?;
        out.truncate(start + written);
        let written = u32::try_from(written).map_err(io::Error::other)?;
        out[len_at..start].copy_from_slice(&written.to_be_bytes());
    }
    Ok(())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn snappy_decompress(input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let mut decoder = snap::raw::Decoder::new();
    if !input.starts_with(XERIAL_MAGIC) {
        // snappy-java falls back to a single raw block when the magic is absent.
        return snappy_block(&mut decoder, input, out);
    }
    let mut pos = 0;
    while pos < input.len() {
        // snappy-java also accepts concatenated streams, each with its own header.
        if input[pos..].starts_with(XERIAL_MAGIC) {
            if input.len() - pos < XERIAL_HEADER.len() {
                return Err(invalid(format!(
                    "truncated xerial snappy header at byte {pos}"
                )));
            }
            pos += XERIAL_HEADER.len();
            continue;
        }
        let Some(len_bytes) = input.get(pos..pos + 4) else {
            return Err(invalid(format!(
                "truncated xerial snappy block length at byte {pos}"
            )));
        };
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let start = pos + 4;
        let Some(block) = usize::try_from(len)
            .ok()
            .and_then(|l| input.get(start..start + l))
        else {
            return Err(invalid(format!(
                "xerial snappy block at byte {pos} declares {len} bytes but only {} remain",
                input.len() - start
            )));
        };
        snappy_block(&mut decoder, block, out)?;
        pos = start + block.len();
    }
    Ok(())
}

fn snappy_block(
    decoder: &mut snap::raw::Decoder,
    block: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let len = snap::raw::decompress_len(block).map_err(io::Error::other)?;
    // No snappy op expands more than 64 output bytes from 3 input bytes, so a larger claim is
    // corrupt; checking first stops a 5-byte input from making us allocate gigabytes.
    if len > block.len().saturating_mul(22).saturating_add(16) {
        return Err(invalid(format!(
            "snappy block of {} bytes claims an impossible {len} decompressed bytes",
            block.len()
        )));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let written = decoder
        .decompress(block, &mut out[start..])
        .map_err(io::Error::other)?;
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        // Over two snappy blocks and one lz4 block, and compressible.
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn names_and_codes_round_trip() {
        for c in Compression::ALL {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
            assert_eq!(Compression::from_code(c.code()).unwrap(), c);
        }
        assert_eq!("ZSTD".parse::<Compression>().unwrap(), Compression::Zstd);
        let err = "brotli".parse::<Compression>().unwrap_err().to_string();
        assert!(
            err.contains("brotli") && err.contains("none, gzip, snappy, lz4, zstd"),
            "{err}"
        );
        assert!(Compression::from_code(5).is_err());
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for c in Compression::ALL {
            for input in [&data[..], b"", b"x"] {
                let packed = c.compress(input).unwrap();
                assert_eq!(c.decompress(&packed).unwrap(), input, "{c}");
            }
        }
    }

    #[test]
    fn snappy_writes_xerial_framing() {
        let data = sample();
        let packed = Compression::Snappy.compress(&data).unwrap();
        assert_eq!(&packed[..16], XERIAL_HEADER);
        // First block is a full 32 KiB chunk.
        let len = u32::from_be_bytes(packed[16..20].try_into().unwrap()) as usize;
        let block = &packed[20..20 + len];
        assert_eq!(snap::raw::decompress_len(block).unwrap(), SNAPPY_BLOCK_SIZE);
    }

    #[test]
    fn snappy_matches_bytes_from_the_java_client() {
        // A snappy-compressed single record captured from Kafka (via kafka-protocol's tests).
        let java = b"\x82\x53\x4e\x41\x50\x50\x59\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x0f\x0d\x30\x18\x00\x00\x00\x01\x0csdfdsf\x00";
        let plain = Compression::Snappy.decompress(java).unwrap();
        assert_eq!(Compression::Snappy.compress(&plain).unwrap(), java);
    }

    #[test]
    fn snappy_reads_raw_and_concatenated_streams() {
        let data = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw).unwrap(), data);

        let mut two = Compression::Snappy.compress(b"hello ").unwrap();
        two.extend(Compression::Snappy.compress(b"world").unwrap());
        assert_eq!(
            Compression::Snappy.decompress(&two).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn snappy_rejects_truncated_and_bomb_input() {
        let packed = Compression::Snappy.compress(&sample()).unwrap();
        let err = Compression::Snappy
            .decompress(&packed[..packed.len() - 3])
            .unwrap_err();
        assert!(err.to_string().contains("declares"), "{err}");
        // Raw snappy claiming 4 GiB from five bytes.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Compression::Snappy.decompress(&bomb).is_err());
    }

    #[test]
    fn lz4_writes_the_java_frame_descriptor() {
        let packed = Compression::Lz4.compress(b"hello lz4").unwrap();
        // Magic, FLG = version 1 + independent blocks, BD = 64 KiB.
        assert_eq!(&packed[..6], &[0x04, 0x22, 0x4d, 0x18, 0x60, 0x40]);
    }

    #[test]
    fn corrupt_input_is_an_error_naming_the_codec() {
        for c in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let err = c.decompress(b"definitely not compressed").unwrap_err();
            assert!(err.to_string().starts_with(c.name()), "{err}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), code in 0i16..5) {
            let c = Compression::from_code(code).unwrap();
            prop_assert_eq!(c.decompress(&c.compress(&data).unwrap()).unwrap(), data);
        }
    }
}
