//! What this broker implements, and at which versions. ApiVersions advertises exactly
//! this table; a request outside it gets UNSUPPORTED_VERSION.

use kafka_protocol::messages::ApiKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> Supported {
    Supported { key, min, max }
}

/// Produce is advertised from version 0 although versions 0-2 (message format v0/v1)
/// are refused: librdkafka before 2.11.1 silently stops compressing when Produce's
/// minimum is above 0. Clients that use ApiVersions pick the highest common version.
pub const PRODUCE_VERSION_MIN_DECODED: i16 = 3;

pub const SUPPORTED: &[Supported] = &[
    api(ApiKey::Produce, 0, 13),
    api(ApiKey::Fetch, 4, 18),
    api(ApiKey::ListOffsets, 1, 10),
    api(ApiKey::Metadata, 0, 13),
    api(ApiKey::OffsetCommit, 2, 9),
    api(ApiKey::OffsetFetch, 1, 9),
    api(ApiKey::FindCoordinator, 0, 6),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::DescribeGroups, 0, 6),
    api(ApiKey::ListGroups, 0, 5),
    api(ApiKey::ApiVersions, 0, 4),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::InitProducerId, 0, 5),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::DescribeCluster, 0, 2),
    api(ApiKey::DeleteRecords, 0, 2),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    // Transactions: AddPartitionsToTxn v4+ is the brokers' batched/verify-only form;
    // v5 of EndTxn/TxnOffsetCommit is KIP-890 part 2 (an epoch bump per transaction).
    api(ApiKey::AddPartitionsToTxn, 0, 3),
    api(ApiKey::AddOffsetsToTxn, 0, 4),
    api(ApiKey::EndTxn, 0, 4),
    api(ApiKey::TxnOffsetCommit, 0, 4),
    api(ApiKey::DescribeTransactions, 0, 0),
    api(ApiKey::ListTransactions, 0, 1),
    api(ApiKey::DescribeProducers, 0, 0),
    api(ApiKey::WriteTxnMarkers, 1, 1),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::OffsetDelete, 0, 0),
    api(ApiKey::DescribeLogDirs, 1, 4),
    api(ApiKey::AlterReplicaLogDirs, 1, 2),
    api(ApiKey::ElectLeaders, 0, 2),
    api(ApiKey::DescribeTopicPartitions, 0, 0),
];

pub fn supported(key: ApiKey) -> Option<Supported> {
    SUPPORTED.iter().copied().find(|s| s.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_range_is_decodable_by_the_codec() {
        for s in SUPPORTED {
            let codec = s.key.valid_versions();
            let min = if s.key == ApiKey::Produce {
                PRODUCE_VERSION_MIN_DECODED
            } else {
                s.min
            };
            assert!(
                min >= codec.min && s.max <= codec.max,
                "{:?} {}..{} vs codec {:?}",
                s.key,
                s.min,
                s.max,
                codec
            );
        }
    }
}
