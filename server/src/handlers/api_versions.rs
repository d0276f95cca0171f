//! ApiVersions: the APIs and versions ringlog implements, exactly as `SUPPORTED_VERSIONS`
//! lists them.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::ResponseError;

use crate::protocol::SUPPORTED_VERSIONS;

/// The answer to ApiVersions at `version`.
pub fn handle(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(supported())
}

/// The answer to an ApiVersions request of a version ringlog does not speak: Kafka's
/// UNSUPPORTED_VERSION with the supported list, which clients read at version 0 and then
/// retry with a version from it.
pub fn unsupported() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(supported())
}

fn supported() -> Vec<ApiVersion> {
    SUPPORTED_VERSIONS
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}
