//! Reading: Fetch and ListOffsets, and turning fetched record batches into records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use uuid::Uuid;

use crate::client::{Client, TopicMetadata, TopicPartition};
use crate::connection::Connection;
use crate::error::{Error, Result};

/// The last Fetch version that names topics; later ones use topic ids.
const FETCH_VERSION_BY_NAME_MAX: i16 = 12;

/// RecordBatch v2 header layout (offsets from the start of the batch).
const BATCH_PREFIX_BYTES: usize = 12; // base offset + batch length
const BATCH_HEADER_BYTES: usize = 61;
const BATCH_MAGIC_AT: usize = 16;
const BATCH_ATTRIBUTES_AT: usize = 21;
const BATCH_LAST_OFFSET_DELTA_AT: usize = 23;
const BATCH_RECORD_COUNT_AT: usize = 57;
const BATCH_ATTRIBUTE_CONTROL: i16 = 1 << 5;
/// The smallest encoded record (length, attributes, deltas, null key and value,
/// no headers) is 7 bytes; a count beyond what the bytes can hold is a corrupt batch
/// and must not size an allocation.
const RECORD_BYTES_MIN: usize = 7;
/// Bound on records per batch for compressed batches, whose size says nothing.
const BATCH_RECORDS_MAX: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl From<kafka_protocol::records::Record> for ConsumedRecord {
    fn from(r: kafka_protocol::records::Record) -> ConsumedRecord {
        ConsumedRecord {
            offset: r.offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(name, value)| (name.as_str().to_owned(), value))
                .collect(),
        }
    }
}

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

/// Decodes the record batches of one fetched partition, keeping records at or after
/// `from_offset`. A fetch may start with a batch that begins before the requested
/// offset (batches are returned whole) and may end with a batch cut short by the
/// size limit (it is dropped; the next fetch gets it whole). Returns the records and
/// the offset after the last complete batch (`from_offset` if there was none).
pub fn decode_records(
    tp: &TopicPartition,
    mut data: Bytes,
    from_offset: i64,
) -> Result<(Vec<ConsumedRecord>, i64)> {
    let error = |message: String| Error::Records {
        topic: tp.topic.clone(),
        partition: tp.partition,
        message,
    };
    let mut records = Vec::new();
    let mut next_offset = from_offset;
    while data.len() >= BATCH_PREFIX_BYTES {
        let base_offset = (&data[0..8]).get_i64();
        let batch_length = (&data[8..12]).get_i32();
        let batch_bytes = usize::try_from(batch_length)
            .map_err(|_| {
                error(format!(
                    "batch at offset {base_offset} has negative length {batch_length}"
                ))
            })?
            .saturating_add(BATCH_PREFIX_BYTES);
        if data.len() < batch_bytes {
            break;
        }
        let mut batch = data.split_to(batch_bytes);
        if batch_bytes < BATCH_HEADER_BYTES {
            return Err(error(format!(
                "batch at offset {base_offset} is only {batch_bytes} bytes"
            )));
        }
        let magic = batch[BATCH_MAGIC_AT];
        if magic != 2 {
            return Err(error(format!(
                "batch at offset {base_offset} uses message format v{magic}; only v2 is supported"
            )));
        }
        let attributes = (&batch[BATCH_ATTRIBUTES_AT..]).get_i16();
        let last_offset_delta = (&batch[BATCH_LAST_OFFSET_DELTA_AT..]).get_i32();
        let record_count = (&batch[BATCH_RECORD_COUNT_AT..]).get_i32();
        let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));
        let record_count = usize::try_from(record_count).map_err(|_| {
            error(format!(
                "batch at offset {base_offset} has {record_count} records"
            ))
        })?;
        let compressed = attributes & 0x7 != 0;
        let records_max = if compressed {
            BATCH_RECORDS_MAX
        } else {
            (batch_bytes - BATCH_HEADER_BYTES) / RECORD_BYTES_MIN
        };
        if record_count > records_max {
            return Err(error(format!(
                "batch at offset {base_offset} claims {record_count} records, more than fit"
            )));
        }
        next_offset = next_offset.max(last_offset.saturating_add(1));
        if attributes & BATCH_ATTRIBUTE_CONTROL != 0 || last_offset < from_offset {
            continue;
        }
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| error(format!("batch at offset {base_offset}: {e:#}")))?;
        records.extend(
            set.records
                .into_iter()
                .filter(|r| r.offset >= from_offset && !r.control)
                .map(ConsumedRecord::from),
        );
    }
    if next_offset == from_offset && !data.is_empty() && records.is_empty() {
        // Nothing complete came back: the next batch is larger than the fetch allows.
        return Err(error(format!(
            "the record batch at offset {from_offset} is larger than the fetch size limit"
        )));
    }
    Ok((records, next_offset))
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
    use crate::produce::{Compression, ProduceRecord, encode_record_batch};
    use bytes::BytesMut;

    fn batch_at(base_offset: i64, values: &[&str]) -> Bytes {
        let records: Vec<ProduceRecord> = values
            .iter()
            .map(|v| ProduceRecord::new(None, Some(Bytes::from(v.to_string()))))
            .collect();
        let mut bytes = BytesMut::from(
            &encode_record_batch(&records, Compression::None, 1).expect("encode")[..],
        );
        // The broker writes the assigned base offset into the batch; the CRC does not
        // cover it.
        bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        bytes.freeze()
    }

    fn values(records: &[ConsumedRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    #[test]
    fn records_before_the_requested_offset_are_skipped() {
        let tp = TopicPartition::new("orders", 0);
        let mut data = BytesMut::new();
        data.extend_from_slice(&batch_at(10, &["a", "b", "c"]));
        data.extend_from_slice(&batch_at(13, &["d", "e"]));
        let (records, next) = decode_records(&tp, data.freeze(), 11).expect("decode");
        assert_eq!(values(&records), ["b", "c", "d", "e"]);
        assert_eq!(records[0].offset, 11);
        assert_eq!(next, 15);
    }

    #[test]
    fn a_truncated_last_batch_is_left_for_the_next_fetch() {
        let tp = TopicPartition::new("orders", 0);
        let whole = batch_at(0, &["a", "b"]);
        let next_batch = batch_at(2, &["c"]);
        let mut data = BytesMut::new();
        data.extend_from_slice(&whole);
        data.extend_from_slice(&next_batch[..next_batch.len() - 3]);
        let (records, next) = decode_records(&tp, data.freeze(), 0).expect("decode");
        assert_eq!(values(&records), ["a", "b"]);
        assert_eq!(next, 2);
    }

    #[test]
    fn only_a_truncated_batch_is_an_error() {
        let tp = TopicPartition::new("orders", 0);
        let batch = batch_at(0, &["a"]);
        let result = decode_records(&tp, batch.slice(..batch.len() - 1), 0);
        assert!(matches!(result, Err(Error::Records { .. })));
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let tp = TopicPartition::new("orders", 0);
        let mut batch = BytesMut::from(&batch_at(0, &["a"])[..]);
        batch[BATCH_MAGIC_AT] = 1;
        assert!(decode_records(&tp, batch.clone().freeze(), 0).is_err());
        batch[BATCH_MAGIC_AT] = 2;
        let count_at = BATCH_RECORD_COUNT_AT..BATCH_RECORD_COUNT_AT + 4;
        let count: Vec<u8> = batch[count_at.clone()].to_vec();
        batch[count_at.clone()].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_records(&tp, batch.clone().freeze(), 0).is_err());
        batch[count_at].copy_from_slice(&count);
        assert!(decode_records(&tp, batch.clone().freeze(), 0).is_ok());
        let last = batch.len() - 1;
        batch[last] ^= 0xff; // CRC mismatch
        assert!(decode_records(&tp, batch.freeze(), 0).is_err());
        assert_eq!(decode_records(&tp, Bytes::new(), 5).expect("empty").1, 5);
    }
}
