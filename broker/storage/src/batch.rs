//! Kafka v2 record batches as the log sees them: header views, validation before append, the
//! in-place rewrites the log is allowed to make, and a small builder for tests and tools.
//!
//! The log stores batches byte for byte as the producer sent them, except for the fields the
//! broker owns: `baseOffset` and `partitionLeaderEpoch` (outside the CRC), and, for topics with
//! `message.timestamp.type=LogAppendTime`, the timestamp type bit and `maxTimestamp` (inside the
//! CRC, which is then recomputed).
//!
//! Header layout (61 bytes, big-endian), after the Kafka protocol guide:
//!
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 (=2)
//! 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! ```
//!
//! Not here: decompression. Records of compressed batches are checked by the broker (which owns
//! the codecs and bounds their output) before it calls [`crate::Log::append`].

use crate::error::{Result, StorageError};
use smallvec::SmallVec;

/// Size of the fixed v2 batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// `baseOffset` + `batchLength`: the bytes before the part `batchLength` counts.
pub const BATCH_LENGTH_PREFIX: usize = 12;
/// The only record batch format the log accepts.
pub const MAGIC_V2: i8 = 2;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_RECORD_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

const _: () = assert!(OFF_RECORD_COUNT + 4 == BATCH_HEADER_LEN);

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// The fields of a v2 batch header the log works with. Parsed from at least
/// [`BATCH_HEADER_LEN`] bytes; says nothing about whether the rest of the batch is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Counts the bytes after the `batchLength` field; the whole batch is `batch_length + 12`.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `b`, or `None` if fewer than 61 bytes are given.
    pub fn parse(b: &[u8]) -> Option<BatchHeader> {
        if b.len() < BATCH_HEADER_LEN {
            return None;
        }
        Some(BatchHeader {
            base_offset: be_i64(b, OFF_BASE_OFFSET),
            batch_length: be_i32(b, OFF_BATCH_LENGTH),
            partition_leader_epoch: be_i32(b, OFF_LEADER_EPOCH),
            magic: b[OFF_MAGIC] as i8,
            crc: u32::from_be_bytes([b[17], b[18], b[19], b[20]]),
            attributes: be_i16(b, OFF_ATTRIBUTES),
            last_offset_delta: be_i32(b, OFF_LAST_OFFSET_DELTA),
            base_timestamp: be_i64(b, OFF_BASE_TIMESTAMP),
            max_timestamp: be_i64(b, OFF_MAX_TIMESTAMP),
            producer_id: be_i64(b, OFF_PRODUCER_ID),
            record_count: be_i32(b, OFF_RECORD_COUNT),
        })
    }

    /// Whole size of the batch on the wire and on disk, or `None` if `batch_length` is too small
    /// to hold a v2 header (which makes the batch invalid).
    pub fn total_len(&self) -> Option<usize> {
        let len = usize::try_from(self.batch_length).ok()?;
        (len >= BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX).then_some(len + BATCH_LENGTH_PREFIX)
    }

    /// Offset of the last record the batch was written with (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_TYPE != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// CRC-32C over `attributes..end` of one whole batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c(&batch[OFF_ATTRIBUTES..])
}

/// CRC-32C (Castagnoli, "iSCSI") of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    // A CRC-32 fits in the low 32 bits of the crate's u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// What validation learned of one batch of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidBatch {
    /// Where the batch starts in the appended buffer.
    pub position: usize,
    pub len: usize,
    pub record_count: i32,
    pub max_timestamp: i64,
}

/// Checks the batches of one append, in order, without changing them: magic 2, lengths that fit
/// the buffer exactly, CRC-32C, `recordCount == lastOffsetDelta + 1`, size against
/// `max_message_bytes`, and for uncompressed batches that every record parses and the count
/// matches. The first failure is returned and nothing is accepted.
pub fn validate(buf: &[u8], max_message_bytes: usize) -> Result<SmallVec<[ValidBatch; 4]>> {
    let mut out = SmallVec::new();
    let mut pos = 0usize;
    if buf.is_empty() {
        return Err(StorageError::InvalidRecord("empty record set".into()));
    }
    while pos < buf.len() {
        let rest = &buf[pos..];
        let header = BatchHeader::parse(rest).ok_or_else(|| {
            StorageError::CorruptMessage(format!(
                "{} trailing bytes at position {pos} are not a whole batch header",
                rest.len()
            ))
        })?;
        if header.magic != MAGIC_V2 {
            return Err(StorageError::CorruptMessage(format!(
                "batch at position {pos} has magic {}; only v2 batches are accepted",
                header.magic
            )));
        }
        let len = header.total_len().ok_or_else(|| {
            StorageError::CorruptMessage(format!(
                "batch at position {pos} has invalid batchLength {}",
                header.batch_length
            ))
        })?;
        if len > max_message_bytes {
            return Err(StorageError::MessageTooLarge { size: len, max: max_message_bytes });
        }
        if len > rest.len() {
            return Err(StorageError::CorruptMessage(format!(
                "batch at position {pos} claims {len} bytes but only {} remain",
                rest.len()
            )));
        }
        let batch = &rest[..len];
        let crc = compute_crc(batch);
        if crc != header.crc {
            return Err(StorageError::CorruptMessage(format!(
                "batch at position {pos}: CRC-32C is {crc:#010x}, header says {:#010x}",
                header.crc
            )));
        }
        if header.record_count <= 0
            || i64::from(header.last_offset_delta) + 1 != i64::from(header.record_count)
        {
            return Err(StorageError::InvalidRecord(format!(
                "batch at position {pos}: recordCount {} does not match lastOffsetDelta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        if header.compression() > 4 {
            return Err(StorageError::InvalidRecord(format!(
                "batch at position {pos}: unknown compression codec {}",
                header.compression()
            )));
        }
        if header.compression() == 0 {
            check_records(&batch[BATCH_HEADER_LEN..], header.record_count).map_err(|why| {
                StorageError::CorruptMessage(format!("batch at position {pos}: {why}"))
            })?;
        }
        out.push(ValidBatch {
            position: pos,
            len,
            record_count: header.record_count,
            max_timestamp: header.max_timestamp,
        });
        pos += len;
    }
    Ok(out)
}

/// Reads a zig-zag varint (Kafka's `varint`/`varlong`) at `*at`, at most 10 bytes.
#[inline]
pub(crate) fn read_varlong(b: &[u8], at: &mut usize) -> Option<i64> {
    let zigzag = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
    // Most varints in a record (attributes aside: lengths, deltas, header count) take one or
    // two bytes: decode those without the loop.
    let b0 = *b.get(*at)?;
    if b0 < 0x80 {
        *at += 1;
        return Some(zigzag(u64::from(b0)));
    }
    if let Some(&b1) = b.get(*at + 1) {
        if b1 < 0x80 {
            *at += 2;
            return Some(zigzag(u64::from(b0 & 0x7f) | u64::from(b1) << 7));
        }
    }
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// One record of an uncompressed batch, as far as the log needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    pub offset_delta: i64,
    pub timestamp_delta: i64,
}

/// Walks the records of an uncompressed batch body (or a compressed batch's decompressed
/// contents) and checks that exactly `count` records fill
/// it. Every length is checked against the bytes present before it is used.
pub fn check_records(body: &[u8], count: i32) -> std::result::Result<(), String> {
    let mut at = 0usize;
    for i in 0..count {
        record_at(body, &mut at).ok_or_else(|| format!("record {i} does not parse"))?;
    }
    if at != body.len() {
        return Err(format!("{} bytes after the last of {count} records", body.len() - at));
    }
    Ok(())
}

/// Parses one record at `*at` and moves past it.
#[inline]
fn record_at(body: &[u8], at: &mut usize) -> Option<RecordInfo> {
    let len = usize::try_from(read_varlong(body, at)?).ok()?;
    let end = at.checked_add(len).filter(|&e| e <= body.len())?;
    let r = &body[*at..end];
    let mut p = 0usize;
    r.get(p)?; // attributes
    p += 1;
    let timestamp_delta = read_varlong(r, &mut p)?;
    let offset_delta = read_varlong(r, &mut p)?;
    for _ in 0..2 {
        // key, value: varint length, -1 for null
        let n = read_varlong(r, &mut p)?;
        if n >= 0 {
            p = p.checked_add(usize::try_from(n).ok()?).filter(|&e| e <= r.len())?;
        } else if n != -1 {
            return None;
        }
    }
    let headers = read_varlong(r, &mut p)?;
    if headers < 0 {
        return None;
    }
    for _ in 0..headers {
        let k = read_varlong(r, &mut p)?;
        p = p.checked_add(usize::try_from(k).ok()?).filter(|&e| e <= r.len())?;
        let v = read_varlong(r, &mut p)?;
        if v >= 0 {
            p = p.checked_add(usize::try_from(v).ok()?).filter(|&e| e <= r.len())?;
        } else if v != -1 {
            return None;
        }
    }
    if p != r.len() {
        return None;
    }
    *at = end;
    Some(RecordInfo { offset_delta, timestamp_delta })
}

/// For an uncompressed batch, `(offset, timestamp)` of the first record at or after
/// `min_offset` whose timestamp is `>= target` (`Some(None)` when no record qualifies); `None`
/// when the batch is compressed and the caller must decompress it to know. With LogAppendTime
/// every record carries the batch's `maxTimestamp`.
pub fn first_record_at_or_after(
    batch: &[u8],
    target: i64,
    min_offset: i64,
) -> Option<Option<(i64, i64)>> {
    let h = BatchHeader::parse(batch)?;
    if h.is_log_append_time() {
        let offset = h.base_offset.max(min_offset);
        let hit = h.max_timestamp >= target && offset <= h.last_offset();
        return Some(hit.then_some((offset, h.max_timestamp)));
    }
    if h.compression() != 0 {
        return None;
    }
    let body = batch.get(BATCH_HEADER_LEN..h.total_len()?)?;
    let mut at = 0;
    for _ in 0..h.record_count {
        let r = record_at(body, &mut at)?;
        let ts = h.base_timestamp + r.timestamp_delta;
        if ts >= target && h.base_offset + r.offset_delta >= min_offset {
            return Some(Some((h.base_offset + r.offset_delta, ts)));
        }
    }
    Some(None)
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// The records of one whole uncompressed batch, or `None` if the batch is compressed or does
/// not parse. With LogAppendTime every record gets the batch's max timestamp.
pub fn records(batch: &[u8]) -> Option<Vec<RecordView<'_>>> {
    let h = BatchHeader::parse(batch)?;
    if h.compression() != 0 {
        return None;
    }
    records_in(&h, batch.get(BATCH_HEADER_LEN..h.total_len()?)?)
}

/// The records in `body`: the uncompressed record bytes of the batch whose header is `h` (the
/// batch body itself, or its decompressed contents).
pub fn records_in<'a>(h: &BatchHeader, body: &'a [u8]) -> Option<Vec<RecordView<'a>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..h.record_count.max(0) {
        let len = usize::try_from(read_varlong(body, &mut at)?).ok()?;
        let end = at.checked_add(len).filter(|&e| e <= body.len())?;
        let r = &body[at..end];
        let mut p = 1usize; // attributes
        let ts_delta = read_varlong(r, &mut p)?;
        let off_delta = read_varlong(r, &mut p)?;
        let key = read_bytes(r, &mut p)?;
        let value = read_bytes(r, &mut p)?;
        let n = read_varlong(r, &mut p)?;
        let mut headers = Vec::new();
        for _ in 0..n.max(0) {
            let k = read_bytes(r, &mut p)??;
            let v = read_bytes(r, &mut p)?;
            headers.push((k, v));
        }
        out.push(RecordView {
            offset: h.base_offset + off_delta,
            timestamp: if h.is_log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp + ts_delta
            },
            key,
            value,
            headers,
        });
        at = end;
    }
    Some(out)
}

/// A varint-length-prefixed byte string (`-1` for null) at `*at`.
fn read_bytes<'a>(r: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let n = read_varlong(r, at)?;
    if n < 0 {
        return (n == -1).then_some(None);
    }
    let end = at.checked_add(usize::try_from(n).ok()?).filter(|&e| e <= r.len())?;
    let s = &r[*at..end];
    *at = end;
    Some(Some(s))
}

/// Writes the broker-owned fields of one validated batch in place (only its first 16 bytes are
/// touched, so a batch's head alone may be passed).
pub(crate) fn assign(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks a batch LogAppendTime with `now_ms` as its max timestamp and recomputes the CRC.
pub(crate) fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = be_i16(batch, OFF_ATTRIBUTES) | ATTR_TIMESTAMP_TYPE;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = compute_crc(batch);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One record for [`BatchBuilder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Encodes uncompressed v2 batches (base offset 0, producer id -1), the way a producer would.
/// Used by tests, benchmarks and demos; the broker itself never re-encodes client batches.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<Record>,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, record: Record) -> &mut Self {
        self.records.push(record);
        self
    }
    /// Adds a record with just a value and a timestamp.
    pub fn value(&mut self, timestamp: i64, value: &[u8]) -> &mut Self {
        self.push(Record { timestamp, value: Some(value.to_vec()), ..Record::default() })
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The encoded batch; panics if empty (a batch has at least one record).
    pub fn build(&self) -> Vec<u8> {
        assert!(!self.records.is_empty(), "a record batch needs at least one record");
        let base_ts = self.records.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let max_ts = self.records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let mut out = vec![0u8; BATCH_HEADER_LEN];
        let mut rec = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            rec.clear();
            rec.push(0); // attributes
            put_varlong(&mut rec, r.timestamp - base_ts);
            put_varlong(&mut rec, i as i64);
            for field in [&r.key, &r.value] {
                match field {
                    Some(b) => {
                        put_varlong(&mut rec, b.len() as i64);
                        rec.extend_from_slice(b);
                    }
                    None => put_varlong(&mut rec, -1),
                }
            }
            put_varlong(&mut rec, r.headers.len() as i64);
            for (k, v) in &r.headers {
                put_varlong(&mut rec, k.len() as i64);
                rec.extend_from_slice(k);
                match v {
                    Some(v) => {
                        put_varlong(&mut rec, v.len() as i64);
                        rec.extend_from_slice(v);
                    }
                    None => put_varlong(&mut rec, -1),
                }
            }
            put_varlong(&mut out, rec.len() as i64);
            out.extend_from_slice(&rec);
        }
        let n = self.records.len() as i32;
        let batch_length = (out.len() - BATCH_LENGTH_PREFIX) as i32;
        out[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        out[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[OFF_MAGIC] = MAGIC_V2 as u8;
        out[OFF_LAST_OFFSET_DELTA..OFF_LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&(n - 1).to_be_bytes());
        out[OFF_BASE_TIMESTAMP..OFF_BASE_TIMESTAMP + 8].copy_from_slice(&base_ts.to_be_bytes());
        out[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&max_ts.to_be_bytes());
        out[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&(-1i64).to_be_bytes());
        out[51..53].copy_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        out[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        out[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&n.to_be_bytes());
        let crc = compute_crc(&out);
        out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check value of CRC-32C (Castagnoli): "123456789" gives 0xE3069283; the empty
    /// input 0; and a large input agrees with a bitwise reference.
    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> =
            (0..100_003u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut crc = !0u32;
        for &b in &data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        assert_eq!(crc32c(&data), !crc);
    }

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(Record {
            timestamp: 1000,
            key: Some(b"k".to_vec()),
            value: None,
            headers: vec![(b"h".to_vec(), Some(b"v".to_vec())), (b"n".to_vec(), None)],
        });
        b.value(1005, b"hello");
        b.value(1002, &[7u8; 300]);
        b.build()
    }

    #[test]
    fn builder_output_validates_and_parses() {
        let b = sample();
        let v = validate(&b, 1 << 20).unwrap();
        assert_eq!(
            v.as_slice(),
            [ValidBatch { position: 0, len: b.len(), record_count: 3, max_timestamp: 1005 }]
        );
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_len(), Some(b.len()));
        assert_eq!(first_record_at_or_after(&b, 1001, 0), Some(Some((1, 1005))));
        assert_eq!(first_record_at_or_after(&b, 1006, 0), Some(None));
        assert_eq!(first_record_at_or_after(&b, 0, 0), Some(Some((0, 1000))));
        assert_eq!(first_record_at_or_after(&b, 0, 2), Some(Some((2, 1002))));
    }

    #[test]
    fn two_batches_in_one_append() {
        let mut two = sample();
        two.extend(sample());
        let v = validate(&two, 1 << 20).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].position, v[0].len);
    }

    #[test]
    fn every_single_byte_flip_is_rejected_or_harmless() {
        let b = sample();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            let r = validate(&c, 1 << 20);
            // Only the fields outside the CRC may change and still validate.
            if i < OFF_MAGIC {
                if (OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4).contains(&i) {
                    assert!(r.is_err(), "flip in batchLength at {i} accepted");
                } else {
                    assert!(r.is_ok(), "flip at {i} outside the CRC rejected: {r:?}");
                }
            } else {
                assert!(r.is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn truncations_are_rejected() {
        let b = sample();
        for n in 0..b.len() {
            assert!(validate(&b[..n], 1 << 20).is_err(), "prefix of {n} bytes accepted");
        }
    }

    #[test]
    fn typed_errors() {
        let b = sample();
        assert!(matches!(validate(&b, 10), Err(StorageError::MessageTooLarge { .. })));
        let mut c = b.clone();
        c[OFF_MAGIC] = 1;
        assert!(matches!(validate(&c, 1 << 20), Err(StorageError::CorruptMessage(_))));
        let mut c = b.clone();
        c[OFF_RECORD_COUNT + 3] = 9;
        let crc = compute_crc(&c);
        c[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(validate(&c, 1 << 20), Err(StorageError::InvalidRecord(_))));
    }

    #[test]
    fn log_append_time_rewrite_keeps_crc_valid() {
        let mut b = sample();
        assign(&mut b, 42, 3);
        set_log_append_time(&mut b, 99_999);
        validate(&b, 1 << 20).unwrap();
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 3));
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
        assert_eq!(first_record_at_or_after(&b, 99_999, 0), Some(Some((42, 99_999))));
    }

    #[test]
    fn records_round_trip_through_the_view() {
        let b = sample();
        let rs = records(&b).unwrap();
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[0].key, Some(&b"k"[..]));
        assert_eq!(rs[0].value, None);
        assert_eq!(rs[0].headers, vec![(&b"h"[..], Some(&b"v"[..])), (&b"n"[..], None)]);
        assert_eq!((rs[1].offset, rs[1].timestamp, rs[1].value), (1, 1005, Some(&b"hello"[..])));
        assert_eq!(rs[2].value.map(|v| v.len()), Some(300));
    }

    #[test]
    fn varlong_round_trip() {
        // One-byte, two-byte (the fast paths) and longer encodings, and their boundaries.
        for v in
            [0i64, 1, -1, 63, -64, 64, -65, 300, -300, 8191, -8192, 8192, -8193, i64::MAX, i64::MIN]
        {
            let mut out = vec![0x55]; // a byte before, so decoding starts mid-buffer
            put_varlong(&mut out, v);
            let end = out.len();
            out.push(0x7f); // and one after, which must not be taken
            let mut at = 1;
            assert_eq!(read_varlong(&out, &mut at), Some(v), "{v}");
            assert_eq!(at, end, "{v}");
        }
        assert_eq!(read_varlong(&[0xff; 11], &mut 0), None);
        // Cut short: a continuation byte with nothing after it.
        assert_eq!(read_varlong(&[0x80], &mut 0), None);
        assert_eq!(read_varlong(&[0x80, 0x80], &mut 0), None);
        assert_eq!(read_varlong(&[], &mut 0), None);
    }
}
