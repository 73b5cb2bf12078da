//! Compressed record batches: bounded decompression (gzip, snappy with or without Java's xerial
//! framing, lz4 frames, zstd), and the record checks the broker makes before it stores a
//! compressed batch. Decompressed output is capped at [`DECOMPRESSED_BATCH_MAX`] so that a small
//! hostile batch cannot expand into gigabytes.

use std::io::Read;

use millrace_storage::batch::{self, BatchHeader, RecordView, BATCH_HEADER_LEN};

/// Largest decompressed size of one batch the broker accepts (64 MiB).
pub const DECOMPRESSED_BATCH_MAX: usize = 64 << 20;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

fn read_bounded(mut r: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    (&mut r).take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!("decompresses to more than {limit} bytes"));
    }
    Ok(out)
}

fn snappy_raw(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len() + n > limit {
        return Err(format!("decompresses to more than {limit} bytes"));
    }
    let start = out.len();
    out.resize(start + n, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|e| e.to_string())?;
    Ok(())
}

/// Decompresses `data` (a batch's record bytes) compressed with codec `codec`.
pub fn decompress(codec: i16, data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    match codec {
        0 => Ok(data.to_vec()),
        1 => read_bounded(flate2::read::MultiGzDecoder::new(data), limit),
        2 => {
            let mut out = Vec::new();
            if data.len() >= 16 && &data[..8] == XERIAL_MAGIC {
                let mut rest = &data[16..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err("truncated xerial snappy block length".into());
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    let block = rest.get(4..4 + n).ok_or("truncated xerial snappy block")?;
                    snappy_raw(block, limit, &mut out)?;
                    rest = &rest[4 + n..];
                }
            } else {
                snappy_raw(data, limit, &mut out)?;
            }
            Ok(out)
        }
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit),
        4 => {
            let mut src = data;
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| e.to_string())?;
            read_bounded(decoder, limit)
        }
        other => Err(format!("unknown compression codec {other}")),
    }
}

/// The records of any whole batch, decompressing when needed; `None` with the reason when the
/// batch does not decompress or parse.
pub fn decode_records(batch_bytes: &[u8]) -> Result<(BatchHeader, Vec<OwnedRecord>), String> {
    let h = BatchHeader::parse(batch_bytes).ok_or("short batch header")?;
    let end = h.total_len().filter(|&n| n <= batch_bytes.len()).ok_or("truncated batch")?;
    let body = &batch_bytes[BATCH_HEADER_LEN..end];
    let plain;
    let body = if h.compression() == 0 {
        body
    } else {
        plain = decompress(h.compression(), body, DECOMPRESSED_BATCH_MAX)?;
        &plain[..]
    };
    let views = batch::records_in(&h, body).ok_or("records do not parse")?;
    Ok((h, views.iter().map(OwnedRecord::from).collect()))
}

/// A record copied out of a (possibly decompressed) batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl From<&RecordView<'_>> for OwnedRecord {
    fn from(r: &RecordView<'_>) -> OwnedRecord {
        OwnedRecord {
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r.headers.iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect(),
        }
    }
}

/// Checks the records inside every compressed batch of a produced record set: they must
/// decompress within the cap, parse, and be as many as the header says. Uncompressed batches
/// are checked by the log itself. The error text names the batch.
pub fn check_compressed(records: &[u8]) -> Result<(), String> {
    let mut pos = 0usize;
    while pos < records.len() {
        let Some(h) = BatchHeader::parse(&records[pos..]) else { return Ok(()) };
        let Some(len) = h.total_len().filter(|&n| pos + n <= records.len()) else { return Ok(()) };
        if h.compression() != 0 && h.compression() <= 4 {
            let body = &records[pos + BATCH_HEADER_LEN..pos + len];
            let plain = decompress(h.compression(), body, DECOMPRESSED_BATCH_MAX)
                .map_err(|e| format!("batch at position {pos}: {e}"))?;
            batch::check_records(&plain, h.record_count)
                .map_err(|e| format!("batch at position {pos}: {e}"))?;
        }
        pos += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn codecs_round_trip_and_are_bounded() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_be_bytes()).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decompress(1, &gz, 1 << 20).unwrap(), data);
        assert!(decompress(1, &gz, 1000).is_err());
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(decompress(2, &raw, 1 << 20).unwrap(), data);
        let mut xerial = XERIAL_MAGIC.to_vec();
        xerial.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        xerial.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&raw);
        assert_eq!(decompress(2, &xerial, 1 << 20).unwrap(), data);
        assert!(decompress(2, &xerial, 1000).is_err());
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(&data).unwrap();
        let lz = lz.finish().unwrap();
        assert_eq!(decompress(3, &lz, 1 << 20).unwrap(), data);
        assert!(decompress(3, &lz, 1000).is_err());
        for codec in 1..=4 {
            for bad in [&b"garbage"[..], &[0xff; 40]] {
                assert!(decompress(codec, bad, 1 << 20).is_err(), "codec {codec}");
            }
            let _ = decompress(codec, &[], 1 << 20); // empty: no panic, whatever the answer
        }
    }
}
