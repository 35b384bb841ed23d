//! The log's errors as Kafka error codes (the protocol's numbers, from `kafka-protocol`).

use kafka_protocol::ResponseError as E;
use sluice_log::LogError;
use sluice_log::batch::BatchError;
use sluice_log::group::GroupError;
use sluice_log::group::classic::ClassicError;

/// The Kafka error code that tells a client what happened.
pub(crate) fn code(e: &LogError) -> i16 {
    match e {
        LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => E::UnknownTopicOrPartition,
        LogError::TopicExists(_) => E::TopicAlreadyExists,
        LogError::InvalidTopicName { .. } | LogError::InternalTopic { .. } => {
            E::InvalidTopicException
        }
        LogError::InvalidPartitions { .. } => E::InvalidPartitions,
        LogError::Config(_) => E::InvalidConfig,
        LogError::MessageTooLarge { .. } | LogError::RecordTooLarge { .. } => E::MessageTooLarge,
        LogError::InvalidRecord { .. } => E::InvalidRecord,
        LogError::Batch { source, .. } => match source {
            BatchError::CrcMismatch { .. } => E::CorruptMessage,
            BatchError::UnknownCompression { .. } => E::UnsupportedCompressionType,
            _ => E::InvalidRecord,
        },
        LogError::OffsetOutOfRange { .. } => E::OffsetOutOfRange,
        LogError::OutOfOrderSequence { .. } => E::OutOfOrderSequenceNumber,
        LogError::ProducerFenced { .. } => E::InvalidProducerEpoch,
        LogError::CoordinatorFenced { .. } => E::TransactionCoordinatorFenced,
        // The previous transaction is still ending (its markers on another node may be
        // queued): the client retries, as Kafka's answer tells it to.
        LogError::InvalidTxnState { reason, .. }
            if reason.contains("still completing") || reason.contains("already completing") =>
        {
            E::ConcurrentTransactions
        }
        LogError::InvalidTxnState { .. } => E::InvalidTxnState,
        LogError::TxnTimedOut(_) => E::InvalidTxnState,
        LogError::InvalidRequest(_) => E::InvalidRequest,
        LogError::Group(g) => match g {
            GroupError::UnknownGroup { .. } => E::GroupIdNotFound,
            GroupError::UnknownMember { .. } | GroupError::GroupNotEmpty { .. } => {
                E::UnknownMemberId
            }
            GroupError::FencedMemberEpoch { .. } | GroupError::StaleMemberEpoch { .. } => {
                E::IllegalGeneration
            }
            GroupError::InconsistentAssignor { .. } => E::InconsistentGroupProtocol,
            GroupError::NotAssigned { .. } => E::IllegalGeneration,
            GroupError::InvalidRequest { .. } => E::InvalidRequest,
            GroupError::Classic(c) => return classic(c),
        },
        LogError::Io { .. }
        | LogError::Corrupt { .. }
        | LogError::DamagedSegment { .. }
        | LogError::RemoteStorage(_) => E::KafkaStorageError,
        LogError::ClusterUnavailable(_) => E::CoordinatorNotAvailable,
        LogError::NotLeader { .. } => E::NotLeaderOrFollower,
        LogError::NotEnoughReplicas { .. } => E::NotEnoughReplicas,
        LogError::ReplicationTimeout { .. } => E::RequestTimedOut,
        _ => E::UnknownServerError,
    }
    .code()
}

/// A short message for the response's `error_message` field (no paths: they are the
/// operator's business, in the worker's log).
pub(crate) fn message(e: &LogError) -> String {
    match e {
        LogError::Io { op, .. } => format!("storage error while trying to {op}"),
        LogError::Corrupt { .. } | LogError::DamagedSegment { .. } => {
            "damaged data on the broker; see the worker's log".into()
        }
        other => other.to_string(),
    }
}

/// A classic-protocol refusal as its Kafka error code.
pub(crate) fn classic(e: &ClassicError) -> i16 {
    match e {
        ClassicError::InvalidGroupId => E::InvalidGroupId,
        ClassicError::InvalidSessionTimeout(_) => E::InvalidSessionTimeout,
        ClassicError::InconsistentGroupProtocol(_) => E::InconsistentGroupProtocol,
        ClassicError::UnknownMemberId => E::UnknownMemberId,
        ClassicError::MemberIdRequired(_) => E::MemberIdRequired,
        ClassicError::IllegalGeneration => E::IllegalGeneration,
        ClassicError::RebalanceInProgress => E::RebalanceInProgress,
        ClassicError::GroupMaxSizeReached => E::GroupMaxSizeReached,
    }
    .code()
}
