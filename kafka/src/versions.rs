//! The APIs and versions this listener speaks, and the ApiVersions answer.
//!
//! Not the `kafka-protocol` crate's full ranges: Fetch 13+ and Produce 13 name topics by id,
//! InitProducerId 5+, EndTxn 5 and Produce 12 belong to KIP-890's second transaction
//! protocol, FindCoordinator 4+ and OffsetFetch 8+ batch several keys; the clients we serve
//! all fall back to the versions below.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

/// Every API served, with the lowest and highest version.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 10),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    // v0 means raw SASL tokens after the handshake, which is refused (librdkafka needs v0
    // in the range to enable SASL at all; it then uses v1).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// The advertised range of `api`, if it is served.
pub(crate) fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

/// The ApiVersions answer: every served API, or (KIP-511) only ApiVersions' own range with
/// `UNSUPPORTED_VERSION` when the client asked with a version above ours, so that it retries
/// with one we speak.
pub(crate) fn api_versions(unsupported: bool) -> ApiVersionsResponse {
    let entry = |&(k, min, max): &(ApiKey, i16, i16)| {
        ApiVersion::default()
            .with_api_key(k as i16)
            .with_min_version(min)
            .with_max_version(max)
    };
    if unsupported {
        return ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(
                SUPPORTED
                    .iter()
                    .filter(|(k, _, _)| *k == ApiKey::ApiVersions)
                    .map(entry)
                    .collect(),
            );
    }
    ApiVersionsResponse::default().with_api_keys(SUPPORTED.iter().map(entry).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every advertised range lies inside what the codec can decode and encode, so an
    /// upgrade of `kafka-protocol` that drops versions is caught here.
    #[test]
    fn advertised_versions_are_within_the_codecs() {
        for &(api, min, max) in SUPPORTED {
            let codec = api.valid_versions();
            assert!(
                codec.min <= min && max <= codec.max && min <= max,
                "{api:?} {min}..={max} outside the codec's {codec}"
            );
        }
    }
}
