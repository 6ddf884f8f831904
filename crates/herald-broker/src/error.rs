//! Broker errors: values with a clear message. Each front end maps them onto its own
//! protocol's codes (Kafka error codes, HTTP statuses) in one place.

use herald_log::{BatchError, LogError};

/// Most refused records one error lists; past it the batch is still refused as a whole
/// and the count says how many more there were (a client fails those records too,
/// with its "another record in the batch" error). Bounds the response, not the check.
pub const RECORD_ERRORS_MAX: usize = 1_000;

/// How many listed errors the summary message repeats (Kafka shows three).
const RECORD_ERRORS_SHOWN: usize = 3;

/// The refused records of one batch: (index in the batch, why), at most
/// `RECORD_ERRORS_MAX` of them, and how many there were in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordErrors {
    pub records: Vec<(i32, String)>,
    pub total: usize,
}

impl RecordErrors {
    pub fn push(&mut self, batch_index: i32, reason: String) {
        if self.records.len() < RECORD_ERRORS_MAX {
            self.records.push((batch_index, reason));
        }
        self.total += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The batch-level message: how many records, and the first few reasons.
    pub fn message(&self) -> String {
        let shown: Vec<String> = self
            .records
            .iter()
            .take(RECORD_ERRORS_SHOWN)
            .map(|(i, why)| format!("record {i}: {why}"))
            .collect();
        let more = if self.total > shown.len() {
            format!(" (and {} more)", self.total - shown.len())
        } else {
            String::new()
        };
        format!(
            "{} record(s) refused: {}{more}",
            self.total,
            shown.join("; ")
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("topic id {0} does not exist")]
    UnknownTopicId(uuid::Uuid),
    #[error("partition {partition} of topic {topic:?} does not exist")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic { name: String, reason: String },
    #[error(
        "invalid partition count {count}: a topic has 1 to {max} partitions, the limit set by partitions_per_topic_max"
    )]
    InvalidPartitions { count: i64, max: u32 },
    #[error(
        "topic {topic:?} has {current} partitions; a new count must be larger, not {requested}"
    )]
    PartitionsNotIncreased {
        topic: String,
        current: usize,
        requested: i64,
    },
    #[error("invalid config {name}={value:?}: {reason}")]
    InvalidConfig {
        name: String,
        value: String,
        reason: String,
    },
    #[error("offset {offset} is out of range: the log holds offsets {log_start} to {log_end}")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("corrupt record batch: {0}")]
    CorruptBatch(#[from] BatchError),
    #[error("record batch rejected: {0}")]
    InvalidRecord(String),
    /// Some records of a batch are refused (KIP-467): the whole batch is, and each
    /// refused record is named by its index in the batch, so a client fails only those
    /// records with the broker's reason (and the rest of the batch as collateral).
    #[error("record batch rejected: {}", .0.message())]
    InvalidRecords(RecordErrors),
    #[error("record batch of {bytes} bytes is larger than max.message.bytes {max}")]
    MessageTooLarge { bytes: usize, max: usize },
    /// A compressed batch that expands past the bound: refused at produce, stepped
    /// over by readers of stored batches.
    #[error(
        "compressed record batch decompresses to more than batch_decompressed_bytes_max ({max} bytes)"
    )]
    BatchDecompressedTooLarge { max: usize },
    #[error("record of {bytes} bytes is larger than record_bytes_max ({max} bytes)")]
    RecordTooLarge { bytes: u64, max: usize },
    #[error("acks must be -1, 0 or 1, not {0}")]
    InvalidRequiredAcks(i16),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "out of order sequence number for producer {producer_id}: expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "a transactional batch must come from a transactional producer through Kafka's Produce"
    )]
    TransactionsUnsupported,
    #[error(
        "producer {producer_id} of transactional id {transactional_id:?} at epoch {epoch} is fenced: epoch {current} is current"
    )]
    ProducerFenced {
        transactional_id: String,
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    #[error("{0}")]
    InvalidProducerIdMapping(String),
    #[error(
        "transaction timeout {timeout_ms} ms is not within 1..={max_ms} (transaction_max_timeout_ms)"
    )]
    InvalidTransactionTimeout { timeout_ms: i32, max_ms: i32 },
    #[error("{0}: retry")]
    ConcurrentTransactions(String),
    #[error("transactional id {0:?} is not known")]
    TransactionalIdNotFound(String),
    #[error("{count} transactional ids are kept, the most transactional_ids_max allows")]
    TooManyTransactionalIds { count: usize },
    #[error("{0}")]
    Group(#[from] crate::group::GroupError),
    #[error("storage error: {0}")]
    Storage(String),
    /// Stored data failed its checks on read (a CRC mismatch in a sealed segment): the
    /// bytes are not served.
    #[error("corrupt data in the log: {0}")]
    CorruptLog(String),
    #[error("meta store error: {0}")]
    Meta(#[from] herald_meta::MetaError),
    #[error("subscription {name:?} on topic {topic:?} does not exist")]
    UnknownSubscription { topic: String, name: String },
    #[error("subscription {name:?} on topic {topic:?} already exists")]
    SubscriptionExists { topic: String, name: String },
    #[error("invalid subscription: {0}")]
    InvalidSubscription(String),
    #[error("receipt {0:?} is not a valid receipt handle")]
    InvalidReceipt(String),
    /// The record was handed out again since this receipt: only the newest receipt counts.
    #[error(
        "receipt {receipt:?} is stale: the record was redelivered (now delivery {current_attempt})"
    )]
    StaleReceipt {
        receipt: String,
        current_attempt: u32,
    },
    #[error("receipt {receipt:?} does not hold a lease: {reason}")]
    ReceiptNotLeased { receipt: String, reason: String },
    #[error("the broker is shutting down")]
    ShuttingDown,
}

impl From<LogError> for BrokerError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            } => BrokerError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            },
            LogError::Batch(b) => BrokerError::CorruptBatch(b),
            corrupt @ LogError::Corrupt { .. } => BrokerError::CorruptLog(corrupt.to_string()),
            other => BrokerError::Storage(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, BrokerError>;
