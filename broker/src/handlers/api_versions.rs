//! ApiVersions (key 18): the supported version ranges, from the one table in
//! `millrace_protocol::SUPPORTED_APIS`. The response header is always v0.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use millrace_protocol::{encode_response, error_code, RequestHeaderInfo, SUPPORTED_APIS};

use super::{respond, Response};

fn body(error: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error;
    r.api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r.finalized_features_epoch = -1;
    r
}

pub(super) fn handle(h: &RequestHeaderInfo, _req: ApiVersionsRequest) -> Response {
    respond(h, &body(error_code::NONE))
}

/// A version we do not speak: UNSUPPORTED_VERSION and the supported list in a v0 body, so the
/// client can retry with a version we speak.
pub(super) fn unsupported(h: &RequestHeaderInfo) -> Response {
    encode_response(h.api_key, 0, h.correlation_id, &body(error_code::UNSUPPORTED_VERSION))
        .map(|b| Some(smallvec::smallvec![super::Chunk::Mem(b.freeze())]))
}
