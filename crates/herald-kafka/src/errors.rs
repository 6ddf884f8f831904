//! The one place where broker errors become Kafka error codes.

use herald_broker::{BrokerError, GroupError};
use kafka_protocol::ResponseError as E;

pub const NONE: i16 = 0;

pub fn broker_code(error: &BrokerError) -> i16 {
    match error {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            E::UnknownTopicOrPartition.code()
        }
        BrokerError::UnknownTopicId(_) => E::UnknownTopicId.code(),
        BrokerError::TopicExists(_) => E::TopicAlreadyExists.code(),
        BrokerError::InvalidTopic { .. } => E::InvalidTopicException.code(),
        BrokerError::InvalidPartitions { .. } | BrokerError::PartitionsNotIncreased { .. } => {
            E::InvalidPartitions.code()
        }
        BrokerError::InvalidConfig { .. } => E::InvalidConfig.code(),
        BrokerError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
        BrokerError::CorruptBatch(_) | BrokerError::CorruptLog(_) => E::CorruptMessage.code(),
        BrokerError::MessageTooLarge { .. }
        | BrokerError::BatchDecompressedTooLarge { .. }
        | BrokerError::RecordTooLarge { .. } => E::MessageTooLarge.code(),
        BrokerError::InvalidRequiredAcks(_) => E::InvalidRequiredAcks.code(),
        BrokerError::InvalidRequest(_) => E::InvalidRequest.code(),
        BrokerError::InvalidRecord(_) | BrokerError::InvalidRecords(_) => E::InvalidRecord.code(),
        BrokerError::OutOfOrderSequence { .. } => E::OutOfOrderSequenceNumber.code(),
        BrokerError::InvalidProducerEpoch { .. } => E::InvalidProducerEpoch.code(),
        BrokerError::TransactionsUnsupported => E::UnsupportedForMessageFormat.code(),
        BrokerError::ProducerFenced { .. } => E::ProducerFenced.code(),
        BrokerError::InvalidTxnState(_) => E::InvalidTxnState.code(),
        BrokerError::InvalidProducerIdMapping(_) => E::InvalidProducerIdMapping.code(),
        BrokerError::InvalidTransactionTimeout { .. } => E::InvalidTransactionTimeout.code(),
        BrokerError::ConcurrentTransactions(_) => E::ConcurrentTransactions.code(),
        BrokerError::TransactionalIdNotFound(_) => E::TransactionalIdNotFound.code(),
        BrokerError::TooManyTransactionalIds { .. } => E::PolicyViolation.code(),
        BrokerError::Group(e) => group_code(e),
        BrokerError::Storage(_) | BrokerError::Meta(_) => E::KafkaStorageError.code(),
        BrokerError::ShuttingDown => E::NotLeaderOrFollower.code(),
        // Work-queue errors: no Kafka request reaches a subscription today.
        BrokerError::UnknownSubscription { .. }
        | BrokerError::SubscriptionExists { .. }
        | BrokerError::InvalidSubscription(_)
        | BrokerError::InvalidReceipt(_)
        | BrokerError::StaleReceipt { .. }
        | BrokerError::ReceiptNotLeased { .. } => E::InvalidRequest.code(),
    }
}

pub fn group_code(error: &GroupError) -> i16 {
    match error {
        GroupError::UnknownMemberId => E::UnknownMemberId.code(),
        GroupError::IllegalGeneration => E::IllegalGeneration.code(),
        GroupError::RebalanceInProgress => E::RebalanceInProgress.code(),
        GroupError::InconsistentGroupProtocol => E::InconsistentGroupProtocol.code(),
        GroupError::MemberIdRequired(_) => E::MemberIdRequired.code(),
        GroupError::InvalidSessionTimeout(_) => E::InvalidSessionTimeout.code(),
        GroupError::GroupMaxSizeReached => E::GroupMaxSizeReached.code(),
        GroupError::InvalidGroupId => E::InvalidGroupId.code(),
        GroupError::NonEmptyGroup => E::NonEmptyGroup.code(),
        GroupError::GroupIdNotFound => E::GroupIdNotFound.code(),
        GroupError::FencedInstanceId => E::FencedInstanceId.code(),
        GroupError::CoordinatorNotAvailable => E::CoordinatorNotAvailable.code(),
        GroupError::GroupSubscribedToTopic => E::GroupSubscribedToTopic.code(),
        GroupError::Storage(_) => E::CoordinatorNotAvailable.code(),
    }
}
