//! Encoding a response without copying record data: [`ChunkedBuf`] is the buffer the
//! `kafka-protocol` encoder writes into; slices of registered `Bytes` (the segment slices a
//! fetch read returned) are kept as references to those `Bytes` instead of being copied, so the
//! frame goes out as `[encoded prefix, segment slice, encoded middle, segment slice, ...]` with
//! one vectored write.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Slices shorter than this are copied anyway (a separate chunk costs more than the copy).
pub const ZERO_COPY_MIN: usize = 1024;

/// See the module comment.
#[derive(Debug, Default)]
pub struct ChunkedBuf {
    done: Vec<Bytes>,
    done_len: usize,
    current: BytesMut,
    shared: Vec<Bytes>,
}

impl ChunkedBuf {
    pub fn new() -> ChunkedBuf {
        ChunkedBuf::default()
    }

    /// Makes `b` eligible to be referenced rather than copied when the encoder writes it.
    pub fn share(&mut self, b: &Bytes) {
        if b.len() >= ZERO_COPY_MIN {
            self.shared.push(b.clone());
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.done_len + self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's chunks, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.split().freeze());
        }
        self.done
    }

    fn find_shared(&self, src: &[u8]) -> Option<Bytes> {
        self.shared.iter().find(|b| b.as_ptr() == src.as_ptr() && b.len() == src.len()).cloned()
    }
}

// SAFETY: all methods delegate to the inner `BytesMut`, which upholds BufMut's contract; the
// overridden `put_slice` only moves finished bytes out of it.
unsafe impl BufMut for ChunkedBuf {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded with the caller's guarantee that `cnt` bytes were initialised.
        unsafe { self.current.advance_mut(cnt) }
    }
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }
    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= ZERO_COPY_MIN {
            if let Some(b) = self.find_shared(src) {
                if !self.current.is_empty() {
                    let head = self.current.split().freeze();
                    self.done_len += head.len();
                    self.done.push(head);
                }
                self.done_len += b.len();
                self.done.push(b);
                return;
            }
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for ChunkedBuf {
    fn offset(&self) -> usize {
        self.len()
    }
    fn seek(&mut self, offset: usize) {
        // Gaps (written later) are only used by record encoding, never by the response messages
        // encoded through this buffer; keep them working within the current chunk.
        let rel = offset.saturating_sub(self.done_len);
        if rel > self.current.len() {
            self.current.resize(rel, 0);
        } else {
            self.current.truncate(rel);
        }
    }
    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.done_len);
        let end = r.end.saturating_sub(self.done_len).min(self.current.len());
        &mut self.current[start.min(end)..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_slices_are_referenced_not_copied() {
        let big = Bytes::from(vec![7u8; 5000]);
        let mut b = ChunkedBuf::new();
        b.share(&big);
        b.put_i32(5000);
        b.put_slice(&big);
        b.put_slice(&big[..4000]); // not registered as such: copied
        b.put_u8(1);
        assert_eq!(b.len(), 4 + 5000 + 4000 + 1);
        let chunks = b.into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
        let flat: Vec<u8> = chunks.concat();
        assert_eq!(flat.len(), 9005);
        assert_eq!(&flat[4..5004], &big[..]);
    }
}
