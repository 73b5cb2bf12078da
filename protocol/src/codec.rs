//! Request headers in, response frames out.
//!
//! A request frame is `[length i32][api_key i16][api_version i16][correlation_id i32]...`: the
//! first 8 bytes after the length are the same in every header version, so they are read by
//! hand (after checking they are there: the crate's own header decoder panics on short input),
//! the version is checked against [`crate::SUPPORTED_APIS`], and only then is the rest decoded.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::versions::supported_range;

/// Size of the frame length prefix.
pub const FRAME_LEN_PREFIX: usize = 4;

/// Why a request could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown API key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error(
        "API key {api_key} version {version} is not supported (correlation id {correlation_id})"
    )]
    UnsupportedVersion { api_key: i16, version: i16, correlation_id: i32 },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

/// A parsed request header.
#[derive(Debug, Clone)]
pub struct RequestHeaderInfo {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    /// A view into the request's own bytes (no copy).
    pub client_id: Option<StrBytes>,
    /// An ApiVersions request at a version we do not speak: answered with the v0 body and
    /// UNSUPPORTED_VERSION, its body left unparsed (as Kafka does).
    pub unsupported_api_versions: bool,
}

/// Parses the request header at the start of `frame` (the bytes after the length prefix) and
/// advances `frame` to the body.
pub fn parse_header(frame: &mut Bytes) -> Result<RequestHeaderInfo, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let (Ok(key), Some((min, max))) = (ApiKey::try_from(api_key), supported_range(api_key)) else {
        return Err(DecodeError::UnknownApiKey { api_key, correlation_id });
    };
    let in_range = (min..=max).contains(&api_version);
    if !in_range {
        if key == ApiKey::ApiVersions {
            return Ok(RequestHeaderInfo {
                api_key: key,
                api_version,
                correlation_id,
                client_id: None,
                unsupported_api_versions: true,
            });
        }
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version: api_version,
            correlation_id,
        });
    }
    let header_version = key.request_header_version(api_version);
    let header: RequestHeader =
        guarded("request header", || RequestHeader::decode(frame, header_version))?;
    Ok(RequestHeaderInfo {
        api_key: key,
        api_version,
        correlation_id,
        client_id: header.client_id,
        unsupported_api_versions: false,
    })
}

/// Decodes a request body of type `T` at `version`. Never panics; see [`crate::alloc`] for why
/// hostile element counts cannot abort the process either.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, DecodeError> {
    guarded(std::any::type_name::<T>().rsplit("::").next().unwrap_or("body"), || {
        T::decode(body, version)
    })
}

fn guarded<T, E: std::fmt::Display>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, DecodeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            Err(DecodeError::Malformed { what, why: e.to_string().trim_end().to_string() })
        }
        Err(_) => Err(DecodeError::Malformed { what, why: "decoder panicked".into() }),
    }
}

/// Response header version for an API and request version. ApiVersions responses always use
/// header v0 (no tagged fields), whatever the request version: clients parse them before they
/// know our versions.
pub fn response_header_version(api_key: ApiKey, version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    }
}

/// Encodes a whole response frame (length prefix, header, body) for `api_key` at `version`.
pub fn encode_response<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, String> {
    let (header, header_version, size) = response_frame(api_key, version, correlation_id, body)?;
    let mut out = BytesMut::with_capacity(FRAME_LEN_PREFIX + size);
    write_frame(&mut out, &header, header_version, size, body, version)?;
    Ok(out)
}

/// Like [`encode_response`], but `Bytes` passed in `shared` that the body holds (fetched record
/// batches) are referenced by the returned chunks instead of copied.
pub fn encode_response_chunks<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
    shared: &[Bytes],
) -> Result<Vec<Bytes>, String> {
    let (header, header_version, size) = response_frame(api_key, version, correlation_id, body)?;
    let mut out = crate::ChunkedBuf::new();
    for b in shared {
        out.share(b);
    }
    write_frame(&mut out, &header, header_version, size, body, version)?;
    Ok(out.into_chunks())
}

/// A response's header, its header version, and the frame size after the length prefix.
fn response_frame<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<(ResponseHeader, i16, usize), String> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = response_header_version(api_key, version);
    let size = header.compute_size(header_version).map_err(|e| e.to_string())?
        + body.compute_size(version).map_err(|e| e.to_string())?;
    Ok((header, header_version, size))
}

/// Writes the length prefix, the header and the body, and checks that the size computed
/// beforehand is what was written.
fn write_frame<B: ByteBufMut, T: Encodable>(
    out: &mut B,
    header: &ResponseHeader,
    header_version: i16,
    size: usize,
    body: &T,
    version: i16,
) -> Result<(), String> {
    let before = ByteBufMut::offset(out);
    out.put_i32(size as i32);
    header.encode(out, header_version).map_err(|e| e.to_string())?;
    body.encode(out, version).map_err(|e| e.to_string())?;
    let written = ByteBufMut::offset(out) - before;
    if written != FRAME_LEN_PREFIX + size {
        return Err(format!("encoded {written} bytes, computed {}", FRAME_LEN_PREFIX + size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn request<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut b = BytesMut::new();
        header.encode(&mut b, key.request_header_version(version)).unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    #[test]
    fn headers_of_every_supported_version_parse() {
        for v in 0..=4 {
            let mut f = request(ApiKey::ApiVersions, v, &ApiVersionsRequest::default());
            let h = parse_header(&mut f).unwrap();
            assert_eq!((h.api_version, h.correlation_id), (v, 77));
            assert_eq!(h.client_id.as_deref(), Some("test"));
            let _: ApiVersionsRequest = decode_body(&mut f, v).unwrap();
        }
        for v in 0..=13 {
            let mut f = request(ApiKey::Metadata, v, &MetadataRequest::default());
            parse_header(&mut f).unwrap();
            let _: MetadataRequest = decode_body(&mut f, v).unwrap();
        }
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        assert!(matches!(
            parse_header(&mut Bytes::from_static(&[0, 1, 2])),
            Err(DecodeError::TooShort(3))
        ));
        let mut f = Bytes::from_static(&[0x27, 0x0f, 0, 0, 0, 0, 0, 5]);
        assert!(matches!(
            parse_header(&mut f),
            Err(DecodeError::UnknownApiKey { api_key: 9999, correlation_id: 5 })
        ));
        let mut f = Bytes::from_static(&[0, 3, 0, 99, 0, 0, 0, 5, 0, 0]);
        assert!(matches!(parse_header(&mut f), Err(DecodeError::UnsupportedVersion { .. })));
        let mut f = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 5]);
        assert!(parse_header(&mut f).unwrap().unsupported_api_versions);
        // A client id length pointing past the end.
        let mut f = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 5, 0x7f, 0x7f]);
        assert!(matches!(parse_header(&mut f), Err(DecodeError::Malformed { .. })));
    }
}
