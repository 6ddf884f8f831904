//! Reading: Fetch and ListOffsets, and turning fetched record batches into records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_records::ConsumedRecord;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::client::{Client, TopicMetadata, TopicPartition};
use crate::connection::Connection;
use crate::error::{Error, Result};

/// The last Fetch version that names topics; later ones use topic ids.
const FETCH_VERSION_BY_NAME_MAX: i16 = 12;

#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// How long the broker may hold the request waiting for `min_bytes`.
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        // The Java consumer's defaults.
        Self {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
        }
    }
}

/// A partition to fetch, with the topic id its leader knows it by.
struct Wanted {
    tp: TopicPartition,
    offset: i64,
    topic_id: Uuid,
}

/// What one partition returned.
#[derive(Debug)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: i32,
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Where the next fetch should start: past every batch received, including
    /// control batches and compacted gaps.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The partition's own error; the others in the same fetch may have succeeded.
    pub error: Option<Error>,
}

/// Which offset ListOffsets should find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    /// The offset the next record will get (the high watermark).
    Latest,
    /// The first offset whose timestamp is at or after this many ms since the epoch.
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// [`herald_records::decode_records`] of one fetched partition, its errors naming
/// the partition: the records at or after `from_offset` and the offset after the last
/// complete batch (`from_offset` if there was none).
pub fn decode_records(
    tp: &TopicPartition,
    data: Bytes,
    from_offset: i64,
) -> Result<(Vec<ConsumedRecord>, i64)> {
    herald_records::decode_records(data, from_offset).map_err(|e| Error::Records {
        topic: tp.topic.clone(),
        partition: tp.partition,
        message: e.0,
    })
}

impl Client {
    /// Fetches one partition from `offset`. The partition's error, if any, is returned
    /// as the error.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        options: &FetchOptions,
    ) -> Result<FetchedPartition> {
        let mut fetched = self
            .fetch_many(&[(TopicPartition::new(topic, partition), offset)], options)
            .await?;
        let mut one = fetched.pop().ok_or_else(|| {
            Error::UnexpectedResponse(format!(
                "Fetch response does not mention {topic}-{partition}"
            ))
        })?;
        match one.error.take() {
            Some(error) => Err(error),
            None => Ok(one),
        }
    }

    /// Fetches several partitions, one request per leader, all leaders at once.
    /// Per-partition errors are in each result's `error`; the call fails only when a
    /// whole request does.
    pub async fn fetch_many(
        &self,
        positions: &[(TopicPartition, i64)],
        options: &FetchOptions,
    ) -> Result<Vec<FetchedPartition>> {
        let mut by_leader: HashMap<String, (Arc<Connection>, Vec<Wanted>)> = HashMap::new();
        for (tp, offset) in positions {
            let (connection, metadata) = self.leader_connection(&tp.topic, tp.partition).await?;
            by_leader
                .entry(connection.addr().to_owned())
                .or_insert_with(|| (connection, Vec::new()))
                .1
                .push(Wanted {
                    tp: tp.clone(),
                    offset: *offset,
                    topic_id: metadata.topic_id,
                });
        }
        let mut requests = tokio::task::JoinSet::new();
        for (_, (connection, wanted)) in by_leader {
            let options = options.clone();
            requests.spawn(async move {
                let result = fetch_from(&connection, &wanted, &options).await;
                (wanted, result)
            });
        }
        let mut fetched = Vec::with_capacity(positions.len());
        let mut first_error = None;
        while let Some(joined) = requests.join_next().await {
            let (wanted, result) =
                joined.map_err(|e| Error::UnexpectedResponse(format!("fetch task failed: {e}")))?;
            match result {
                Ok(partitions) => fetched.extend(partitions),
                Err(error) => {
                    for w in &wanted {
                        self.forget_on_stale_metadata(&w.tp.topic, &error);
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        for partition in &fetched {
            if let Some(error) = &partition.error {
                self.forget_on_stale_metadata(&partition.topic, error);
            }
        }
        Ok(fetched)
    }

    /// Finds offsets of partitions of one topic (see [`OffsetSpec`]). Returns
    /// partition -> offset for every partition asked about.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<i32, i64>> {
        let mut by_leader: HashMap<String, (Arc<Connection>, Vec<i32>)> = HashMap::new();
        for &partition in partitions {
            let (connection, _) = self.leader_connection(topic, partition).await?;
            by_leader
                .entry(connection.addr().to_owned())
                .or_insert_with(|| (connection, Vec::new()))
                .1
                .push(partition);
        }
        let mut offsets = BTreeMap::new();
        for (_, (connection, partitions)) in by_leader {
            let result = list_offsets_from(
                &connection,
                topic,
                &partitions,
                spec,
                self.options().request_timeout,
            )
            .await;
            match result {
                Ok(found) => offsets.extend(found),
                Err(error) => {
                    self.forget_on_stale_metadata(topic, &error);
                    return Err(error);
                }
            }
        }
        Ok(offsets)
    }

    /// Earliest and latest offsets of every partition of a topic.
    pub async fn offset_range(&self, topic: &TopicMetadata) -> Result<BTreeMap<i32, (i64, i64)>> {
        let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
        let earliest = self
            .list_offsets(&topic.name, &partitions, OffsetSpec::Earliest)
            .await?;
        let latest = self
            .list_offsets(&topic.name, &partitions, OffsetSpec::Latest)
            .await?;
        Ok(earliest
            .into_iter()
            .filter_map(|(p, start)| latest.get(&p).map(|&end| (p, (start, end))))
            .collect())
    }
}

async fn fetch_from(
    connection: &Connection,
    wanted: &[Wanted],
    options: &FetchOptions,
) -> Result<Vec<FetchedPartition>> {
    let by_id = wanted.iter().all(|w| !w.topic_id.is_nil());
    let version = if by_id {
        connection.version_of::<FetchRequest>()?
    } else {
        connection.version_at_most::<FetchRequest>(FETCH_VERSION_BY_NAME_MAX)?
    };
    let mut topics: Vec<FetchTopic> = Vec::new();
    for Wanted {
        tp,
        offset,
        topic_id,
    } in wanted
    {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_fetch_offset(*offset)
            .with_partition_max_bytes(options.partition_max_bytes);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_topic_id(*topic_id)
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let max_wait_ms = i32::try_from(options.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut request = FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(options.min_bytes)
        .with_max_bytes(options.max_bytes)
        .with_topics(topics);
    if version <= 14 {
        request = request.with_replica_id(BrokerId(-1));
    }
    // The broker may hold the request for max_wait before answering.
    let timeout = options.max_wait + Duration::from_secs(30);
    let response = connection
        .send_with_timeout(&request, version, timeout)
        .await?;
    crate::error::check(
        response.error_code,
        || format!("Fetch from {}", connection.addr()),
        None,
    )?;

    let mut fetched = Vec::with_capacity(wanted.len());
    for topic in response.responses {
        let name = if version > FETCH_VERSION_BY_NAME_MAX {
            wanted
                .iter()
                .find(|w| w.topic_id == topic.topic_id)
                .map(|w| w.tp.topic.clone())
        } else {
            Some(topic.topic.0.as_str().to_owned())
        };
        let Some(name) = name else {
            continue;
        };
        for partition in topic.partitions {
            let tp = TopicPartition::new(name.clone(), partition.partition_index);
            let Some(from_offset) = wanted.iter().find(|w| w.tp == tp).map(|w| &w.offset) else {
                continue;
            };
            let mut result = FetchedPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                records: Vec::new(),
                next_offset: *from_offset,
                high_watermark: partition.high_watermark,
                log_start_offset: partition.log_start_offset,
                error: Error::from_code(
                    partition.error_code,
                    format!("fetch {tp} at offset {from_offset}"),
                    None,
                ),
            };
            if result.error.is_none()
                && let Some(data) = partition.records
            {
                match decode_records(&tp, data, *from_offset) {
                    Ok((records, next_offset)) => {
                        result.records = records;
                        result.next_offset = next_offset;
                    }
                    Err(error) => result.error = Some(error),
                }
            }
            fetched.push(result);
        }
    }
    Ok(fetched)
}

async fn list_offsets_from(
    connection: &Connection,
    topic: &str,
    partitions: &[i32],
    spec: OffsetSpec,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let version = connection.version_of::<ListOffsetsRequest>()?;
    let mut request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(spec.timestamp())
                        })
                        .collect(),
                ),
        ]);
    if version >= 10 {
        request = request.with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX));
    }
    let response = connection.send_version(&request, version).await?;
    let mut offsets = BTreeMap::new();
    for answer in response
        .topics
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
    {
        for partition in &answer.partitions {
            crate::error::check(
                partition.error_code,
                || format!("list offsets of {topic}-{}", partition.partition_index),
                None,
            )?;
            offsets.insert(partition.partition_index, partition.offset);
        }
    }
    if let Some(missing) = partitions.iter().find(|p| !offsets.contains_key(p)) {
        return Err(Error::UnexpectedResponse(format!(
            "ListOffsets response does not mention {topic}-{missing}"
        )));
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_records::{Compression, ProduceRecord, encode_record_batch};

    #[test]
    fn decode_errors_name_the_partition() {
        let tp = TopicPartition::new("orders", 3);
        let batch = encode_record_batch(&[ProduceRecord::new(None, None)], Compression::None, 1)
            .expect("encode");
        let result = decode_records(&tp, batch.slice(..batch.len() - 1), 0);
        let Err(Error::Records {
            topic, partition, ..
        }) = result
        else {
            panic!("{result:?}");
        };
        assert_eq!((topic.as_str(), partition), ("orders", 3));
        assert_eq!(decode_records(&tp, batch, 0).expect("decode").1, 1);
    }
}
