//! The one table of supported API versions. The ApiVersions response lists exactly these
//! ranges, and a request outside them is refused; handlers may rely on their key's range.

use kafka_protocol::messages::ApiKey;

/// `(api key, min version, max version)`. Minimums follow Kafka 4.0 (KIP-896); maximums are
/// the newest versions the `kafka-protocol` crate speaks, which the handlers implement.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
];

/// The supported `(min, max)` of an API key, `None` if we do not answer it.
pub fn supported_range(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k as i16 == api_key).map(|&(_, min, max)| (min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_within_what_the_crate_speaks() {
        for &(key, min, max) in SUPPORTED_APIS {
            let range = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(range.min <= min && max <= range.max, "{key:?}: {min}..{max} vs {range:?}");
        }
        assert_eq!(supported_range(18), Some((0, 4)));
        assert_eq!(supported_range(9999), None);
    }
}
