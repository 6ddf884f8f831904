//! Producing: records are encoded as one Kafka RecordBatch v2 per partition (by
//! `herald-records`) and sent to the partition leader, one partition or several per
//! request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use herald_records::{Compression, ProduceRecord, encode_record_batch};

use crate::client::Client;
use crate::error::{Error, Result};

/// The last Produce version that names topics; later ones use topic ids.
const PRODUCE_VERSION_BY_NAME_MAX: i16 = 12;

/// How many replicas must have a record before the broker answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// The broker sends no answer at all.
    None,
    Leader,
    All,
}

impl Acks {
    pub fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProduceOptions {
    pub acks: Acks,
    pub compression: Compression,
    /// How long the broker may wait for replicas (sent in the request).
    pub timeout: Duration,
}

impl Default for ProduceOptions {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            compression: Compression::None,
            timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Client {
    /// Appends `records` to one partition. Returns the offset of the first record, or
    /// `None` with `Acks::None` (the broker does not answer).
    ///
    /// One attempt only: a caller that retries on [`Error::is_retriable`] gets the
    /// leader looked up again, since stale metadata is forgotten here.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[ProduceRecord],
        options: &ProduceOptions,
    ) -> Result<Option<i64>> {
        let offsets = self
            .produce_partitions(topic, &[(partition, records)], options)
            .await?;
        Ok(offsets.into_iter().next().flatten())
    }

    /// Appends one batch to each of several partitions of `topic` in one request, as a
    /// Kafka producer drains one ready batch per partition into each request to a
    /// broker. The partitions must share a leader. Returns each batch's first offset in
    /// the order given (`None` with `Acks::None`); the first partition error fails the
    /// whole call (the other batches may have been written).
    pub async fn produce_partitions(
        &self,
        topic: &str,
        batches: &[(i32, &[ProduceRecord])],
        options: &ProduceOptions,
    ) -> Result<Vec<Option<i64>>> {
        let result = self.produce_once(topic, batches, options).await;
        if let Err(error) = &result {
            self.forget_on_stale_metadata(topic, error);
        }
        result
    }

    async fn produce_once(
        &self,
        topic: &str,
        batches: &[(i32, &[ProduceRecord])],
        options: &ProduceOptions,
    ) -> Result<Vec<Option<i64>>> {
        let Some(&(first, _)) = batches.first() else {
            return Ok(Vec::new());
        };
        let (connection, metadata) = self.leader_connection(topic, first).await?;
        let leader = |p: i32| metadata.partition(p).map(|m| m.leader);
        let mut partition_data = Vec::with_capacity(batches.len());
        for &(partition, records) in batches {
            if leader(partition) != leader(first) {
                return Err(Error::UnexpectedResponse(format!(
                    "{topic}-{partition} and {topic}-{first} have different leaders (or \
                     {topic}-{partition} does not exist); produce to them in separate requests"
                )));
            }
            let batch = encode_record_batch(records, options.compression, now_ms())?;
            partition_data.push(
                PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch)),
            );
        }
        let version = if metadata.topic_id.is_nil() {
            connection.version_at_most::<ProduceRequest>(PRODUCE_VERSION_BY_NAME_MAX)?
        } else {
            connection.version_of::<ProduceRequest>()?
        };
        let request = ProduceRequest::default()
            .with_acks(options.acks.code())
            .with_timeout_ms(i32::try_from(options.timeout.as_millis()).unwrap_or(i32::MAX))
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_topic_id(metadata.topic_id)
                    .with_partition_data(partition_data),
            ]);
        if options.acks == Acks::None {
            connection.send_without_response(&request, version).await?;
            return Ok(vec![None; batches.len()]);
        }
        let response = connection.send_version(&request, version).await?;
        let answers: Vec<_> = response
            .responses
            .iter()
            .filter(|t| {
                if version > PRODUCE_VERSION_BY_NAME_MAX {
                    t.topic_id == metadata.topic_id
                } else {
                    t.name.0.as_str() == topic
                }
            })
            .flat_map(|t| t.partition_responses.iter())
            .collect();
        let mut offsets = Vec::with_capacity(batches.len());
        for &(partition, _) in batches {
            let answer = answers
                .iter()
                .find(|p| p.index == partition)
                .ok_or_else(|| {
                    Error::UnexpectedResponse(format!(
                        "Produce response does not mention {topic}-{partition}"
                    ))
                })?;
            let record_error = answer
                .record_errors
                .first()
                .and_then(|e| e.batch_index_error_message.as_ref())
                .map(|m| m.as_str());
            let message = answer.error_message.as_deref().or(record_error);
            crate::error::check(
                answer.error_code,
                || format!("produce to {topic}-{partition}"),
                message,
            )?;
            offsets.push(Some(answer.base_offset));
        }
        Ok(offsets)
    }
}
