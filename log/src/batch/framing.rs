//! Framing: walks a buffer of concatenated batches without checking CRCs.

use super::header::{BATCH_LENGTH_AT, be_i32};
use super::{BATCH_HEADER_LEN, BatchError, BatchHeader, LOG_OVERHEAD, MIN_BATCH_LENGTH};

/// Walks a buffer of concatenated batches, yielding each batch's bytes.
///
/// Only framing is checked (header sanity and length), not CRCs. After an error — including
/// [`BatchError::Incomplete`] for a partial batch at the end, which a fetch response or a
/// torn segment tail may legitimately hold — iteration stops; [`BatchIter::position`] then
/// says where the valid prefix ends.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// An iterator over the batches in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            done: false,
        }
    }

    /// Byte position of the next batch: after iteration, the length of the well-formed prefix.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<&'a [u8], BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        // The length field alone tells us whether the batch is all there, even when the
        // buffer holds fewer than a header's worth of bytes.
        let needed = if rest.len() >= LOG_OVERHEAD {
            (be_i32(rest, BATCH_LENGTH_AT).max(MIN_BATCH_LENGTH) as usize) + LOG_OVERHEAD
        } else {
            BATCH_HEADER_LEN
        };
        if rest.len() < needed {
            self.done = true;
            return Some(Err(BatchError::Incomplete {
                position: self.pos,
                needed,
                available: rest.len(),
            }));
        }
        match BatchHeader::parse(rest) {
            Ok(header) => {
                let total = header.total_size();
                self.pos += total;
                Some(Ok(&rest[..total]))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for BatchIter<'_> {}

/// Splits a buffer of concatenated batches; see [`BatchIter`] for how a partial tail is reported.
pub fn split_batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter::new(buf)
}
