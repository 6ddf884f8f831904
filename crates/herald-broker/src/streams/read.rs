//! Reading streams (through the index: a read costs its own events) and `$all` (the
//! log in offset order, filtered).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::records::Record;

use super::index::{header_bytes, header_str};
use super::{
    CONTENT_TYPE_HEADER, DELETED_TRUNCATE_BEFORE, EVENTSTORE_TOPIC, ID_HEADER, LINK_TYPE,
    REVISION_HEADER, RecordedEvent, StreamError, StreamResult, TYPE_HEADER, check_stream_name,
};
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::records::{DecodedBatch, RecordView, StoredBatch};
use crate::{Broker, Principal, now_ms};

/// Bytes read from the log per step of a `$all` read.
const ALL_READ_BYTES: usize = 256 << 10;
/// Longest regular expression a filter may carry, in bytes.
pub const FILTER_REGEX_BYTES_MAX: usize = 1_024;
/// Most prefixes a filter may carry.
pub const FILTER_PREFIXES_MAX: usize = 1_000;

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Start,
    End,
    Revision(u64),
}

/// One event of a stream read: for a system stream, `event` is the link (type `$>`,
/// data `<revision>@<stream>`) and `link` the event it points at (or, resolved, the
/// other way round, as KurrentDB's `resolve_links` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEvent {
    pub event: RecordedEvent,
    pub link: Option<RecordedEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRead {
    /// No such stream (never written, or soft-deleted since its last events).
    NotFound,
    Events(Vec<ReadEvent>),
}

/// What a `$all` filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FilterOn {
    StreamName,
    EventType,
}

/// A server-side `$all` filter: an event passes if its stream name (or type) starts
/// with one of the prefixes, or matches the regular expression.
#[derive(Debug, Clone)]
pub struct AllFilter {
    pub on: FilterOn,
    pub prefixes: Vec<String>,
    pub regex: Option<fancy_regex::Regex>,
}

impl AllFilter {
    /// Build a filter; a bad or oversized expression is a bad request.
    pub fn new(on: FilterOn, prefixes: Vec<String>, regex: &str) -> StreamResult<AllFilter> {
        if prefixes.len() > FILTER_PREFIXES_MAX {
            return Err(StreamError::BadRequest(format!(
                "{} filter prefixes; at most {FILTER_PREFIXES_MAX}",
                prefixes.len()
            )));
        }
        if regex.len() > FILTER_REGEX_BYTES_MAX {
            return Err(StreamError::BadRequest(format!(
                "filter expression of {} bytes; at most {FILTER_REGEX_BYTES_MAX}",
                regex.len()
            )));
        }
        let regex = if regex.is_empty() {
            None
        } else {
            Some(
                fancy_regex::RegexBuilder::new(regex)
                    .backtrack_limit(100_000)
                    .build()
                    .map_err(|e| {
                        StreamError::BadRequest(format!("bad filter expression {regex:?}: {e}"))
                    })?,
            )
        };
        Ok(AllFilter {
            on,
            prefixes,
            regex,
        })
    }

    pub fn passes(&self, e: &RecordedEvent) -> bool {
        let text = match self.on {
            FilterOn::StreamName => e.stream.as_str(),
            FilterOn::EventType => e.event_type.as_str(),
        };
        if self.prefixes.iter().any(|p| text.starts_with(p.as_str())) {
            return true;
        }
        match &self.regex {
            // An expression too costly to decide does not match.
            Some(r) => r.is_match(text).unwrap_or(false),
            None => self.prefixes.is_empty(),
        }
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllRead {
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts (forwards: the first position not examined;
    /// backwards: the last position examined, exclusive).
    pub next: u64,
    /// Nothing more to read now (forwards: the indexed end of the log; backwards: the
    /// start).
    pub end: bool,
}

impl Broker {
    /// Read up to `max` events of `stream` from `from`, forwards or backwards, as its
    /// metadata allows (`$tb`, `$maxCount`, `$maxAge`). A tombstoned stream is an
    /// error; a missing or soft-deleted one is `NotFound`. Sees every append answered
    /// before it was called.
    pub async fn stream_read(
        &self,
        _who: &Principal,
        stream: &str,
        from: ReadFrom,
        forwards: bool,
        max: u64,
        resolve_links: bool,
    ) -> StreamResult<StreamRead> {
        check_stream_name(stream)?;
        self.stream_index_settled().await?;
        self.stream_read_indexed(stream, from, forwards, max, resolve_links)
    }

    /// [`Broker::stream_read`] of what the index holds now.
    fn stream_read_indexed(
        &self,
        stream: &str,
        from: ReadFrom,
        forwards: bool,
        max: u64,
        resolve_links: bool,
    ) -> StreamResult<StreamRead> {
        let head = self.stream_head(stream)?;
        // A tombstoned stream's metadata stream is gone with it.
        let described_tombstoned = match super::described_stream(stream) {
            Some(described) => self.stream_head(described)?.tombstoned,
            None => false,
        };
        if head.tombstoned || described_tombstoned {
            return Err(StreamError::Deleted(stream.to_string()));
        }
        let Some(last) = head.last else {
            return Ok(StreamRead::NotFound);
        };
        if head.meta.soft_deleted() {
            return Ok(StreamRead::NotFound);
        }
        // The revisions the metadata lets a reader see.
        let mut lowest = head.meta.truncate_before.unwrap_or(0);
        if let Some(count) = head.meta.max_count {
            lowest = lowest.max((last + 1).saturating_sub(count));
        }
        if lowest > last {
            return Ok(StreamRead::Events(Vec::new()));
        }
        let oldest_ms = head
            .meta
            .max_age_s
            .map(|s| now_ms().saturating_sub(s.saturating_mul(1_000) as i64));
        let start = match (from, forwards) {
            (ReadFrom::Start, _) => 0,
            (ReadFrom::End, _) => last,
            (ReadFrom::Revision(r), _) => r,
        };
        let (start, max) = if forwards {
            (start.max(lowest), max)
        } else if start < lowest {
            return Ok(StreamRead::Events(Vec::new()));
        } else {
            (start.min(last), max.min(start - lowest + 1))
        };
        let system = is_system_stream(stream);
        let mut out = Vec::new();
        for (revision, event) in self.stream_events(stream, start, forwards, max)? {
            if oldest_ms.is_some_and(|oldest| event.created_ms < oldest) {
                continue;
            }
            if system {
                let link = link_event(stream, revision, &event);
                out.push(if resolve_links {
                    ReadEvent {
                        event,
                        link: Some(link),
                    }
                } else {
                    ReadEvent {
                        event: link,
                        link: None,
                    }
                });
            } else if resolve_links && event.event_type == LINK_TYPE {
                // A link event written to a stream (a parked stream's): resolved to
                // the event it points at, when that is still there.
                match self.link_target(&event)? {
                    Some(target) => out.push(ReadEvent {
                        event: target,
                        link: Some(event),
                    }),
                    None => out.push(ReadEvent { event, link: None }),
                }
            } else {
                out.push(ReadEvent { event, link: None });
            }
        }
        Ok(StreamRead::Events(out))
    }

    /// The event a `$>` link (data `<revision>@<stream>`) points at.
    fn link_target(&self, link: &RecordedEvent) -> StreamResult<Option<RecordedEvent>> {
        let Some((revision, stream)) = std::str::from_utf8(&link.data)
            .ok()
            .and_then(|t| t.split_once('@'))
            .and_then(|(r, s)| Some((r.parse::<u64>().ok()?, s.to_string())))
        else {
            return Ok(None);
        };
        Ok(self
            .stream_events(&stream, revision, true, 1)?
            .into_iter()
            .find(|(r, _)| *r == revision)
            .map(|(_, e)| e))
    }

    /// The stream's last revision (None: no events) and whether it is deleted
    /// (soft or tombstone), for answers that name it; as of every append answered
    /// before the call.
    pub async fn stream_revision(&self, stream: &str) -> StreamResult<(Option<u64>, bool)> {
        self.stream_index_settled().await?;
        let head = self.stream_head(stream)?;
        Ok((head.last, head.tombstoned || head.meta.soft_deleted()))
    }

    /// Raw events of a stream (no metadata rules; a system stream's are the events it
    /// links to), for the event store's own checks.
    pub(crate) fn read_stream_events(
        &self,
        stream: &str,
        from: ReadFrom,
        forwards: bool,
        max: u64,
    ) -> StreamResult<Vec<RecordedEvent>> {
        let head = self.stream_head(stream)?;
        let Some(last) = head.last else {
            return Ok(Vec::new());
        };
        let start = match from {
            ReadFrom::Start => 0,
            ReadFrom::End => last,
            ReadFrom::Revision(r) => r,
        };
        Ok(self
            .stream_events(stream, start, forwards, max)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// (revision in `stream`, event) from the index and the log.
    fn stream_events(
        &self,
        stream: &str,
        start: u64,
        forwards: bool,
        max: u64,
    ) -> StreamResult<Vec<(u64, RecordedEvent)>> {
        let Some(topic) = self.topic(EVENTSTORE_TOPIC) else {
            return Ok(Vec::new());
        };
        let partition = topic.partition(0)?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let rows = self
            .meta
            .stream_offsets(stream, start, forwards, max)
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        let offsets: Vec<i64> = rows.iter().map(|(_, o)| *o).collect();
        let records = fetch(partition, &offsets)?;
        let mut out = Vec::with_capacity(rows.len());
        for (revision, offset) in rows {
            let Some(record) = records.get(&offset) else {
                // Indexed but gone from the log (DeleteRecords on the topic).
                continue;
            };
            if let Some(event) = recorded(record) {
                out.push((revision, event));
            }
        }
        Ok(out)
    }

    /// A page of `$all` from `position`: forwards, the events at and after it;
    /// backwards, those before it (0 or `u64::MAX` reads from the end). At most `max`
    /// events pass `filter`, and at most `examine_max` events are looked at (so a
    /// filter that passes nothing still answers, with where it got to). Sees every
    /// append answered before it was called.
    pub async fn read_all(
        &self,
        _who: &Principal,
        position: u64,
        forwards: bool,
        max: usize,
        examine_max: usize,
        filter: Option<&AllFilter>,
    ) -> StreamResult<AllRead> {
        let indexed = self.stream_index_settled().await?;
        let Some(topic) = self.topic(EVENTSTORE_TOPIC) else {
            return Ok(AllRead {
                events: Vec::new(),
                next: position,
                end: true,
            });
        };
        let partition = topic.partition(0)?;
        let start = partition.log_start_offset();
        let end = partition.high_watermark().min(indexed);
        let mut events = Vec::new();
        let mut examined = 0usize;
        if forwards {
            let mut next = (position.saturating_sub(1) as i64).max(start);
            while next < end && events.len() < max && examined < examine_max {
                let read = partition.records_from_as(
                    next,
                    end,
                    (examine_max - examined).min(1_000),
                    ALL_READ_BYTES,
                    "event store $all",
                    recorded_in,
                )?;
                if read.next <= next {
                    break;
                }
                for (offset, event) in read.records {
                    if events.len() >= max || examined >= examine_max {
                        break;
                    }
                    next = offset + 1;
                    if let Some(e) = event {
                        examined += 1;
                        if filter.is_none_or(|f| f.passes(&e)) {
                            events.push(e);
                        }
                    }
                }
                if events.len() < max && examined < examine_max {
                    next = next.max(read.next);
                }
            }
            Ok(AllRead {
                events,
                next: next as u64 + 1,
                end: next >= end,
            })
        } else {
            // Exclusive of `position`: the events before it.
            let mut before = if position == 0 || position > end as u64 {
                end
            } else {
                (position as i64 - 1).min(end)
            };
            while before > start && events.len() < max && examined < examine_max {
                let from = (before - 256).max(start);
                let read = partition.records_from(
                    from,
                    before,
                    256,
                    ALL_READ_BYTES,
                    "event store $all",
                )?;
                if read.records.is_empty() && read.next <= from {
                    break;
                }
                let mut reached = before;
                for record in read.records.iter().rev() {
                    if events.len() >= max || examined >= examine_max {
                        break;
                    }
                    reached = record.offset;
                    if let Some(e) = recorded(record) {
                        examined += 1;
                        if filter.is_none_or(|f| f.passes(&e)) {
                            events.push(e);
                        }
                    }
                }
                before = if events.len() < max && examined < examine_max {
                    from
                } else {
                    reached
                };
            }
            Ok(AllRead {
                events,
                next: before as u64 + 1,
                end: before <= start,
            })
        }
    }
}

/// System streams hold links to other streams' events.
pub fn is_system_stream(stream: &str) -> bool {
    ["$ce-", "$et-", "$bc-"]
        .iter()
        .any(|p| stream.starts_with(p))
        || stream == "$streams"
}

pub(crate) fn link_event(stream: &str, revision: u64, target: &RecordedEvent) -> RecordedEvent {
    RecordedEvent {
        stream: stream.to_string(),
        revision,
        position: target.position,
        id: target.id,
        event_type: LINK_TYPE.to_string(),
        content_type: "application/octet-stream".to_string(),
        custom_metadata: Bytes::new(),
        data: Bytes::from(format!("{}@{}", target.revision, target.stream)),
        created_ms: target.created_ms,
    }
}

/// The event a record holds, if it is one.
pub(crate) fn recorded(record: &Record) -> Option<RecordedEvent> {
    let stream = std::str::from_utf8(record.key.as_deref()?).ok()?;
    let revision = header_str(record, REVISION_HEADER)?.parse::<u64>().ok()?;
    let revision = if revision == DELETED_TRUNCATE_BEFORE {
        i64::MAX as u64
    } else {
        revision
    };
    Some(RecordedEvent {
        stream: stream.to_string(),
        revision,
        position: record.offset as u64 + 1,
        id: header_str(record, ID_HEADER)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .unwrap_or_default(),
        event_type: header_str(record, TYPE_HEADER)
            .unwrap_or_default()
            .to_string(),
        content_type: header_str(record, CONTENT_TYPE_HEADER)
            .unwrap_or("application/octet-stream")
            .to_string(),
        custom_metadata: header_bytes(record, super::METADATA_HEADER)
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        data: record.value.clone().unwrap_or_default(),
        created_ms: record.timestamp,
    })
}

/// The event a stored record holds (with its offset), read from the batch without
/// building the record: the `$all` read's path, where decoding was most of the cost.
/// The same event as [`recorded`] gives for that record.
pub(crate) fn recorded_in(
    batch: &DecodedBatch,
    view: &RecordView,
) -> crate::error::Result<(i64, Option<RecordedEvent>)> {
    let plain = &batch.plain;
    let Some(stream) = batch.key(view).and_then(|k| std::str::from_utf8(k).ok()) else {
        return Ok((view.offset, None));
    };
    let (mut id, mut event_type, mut content_type, mut metadata, mut revision) =
        (None, None, None, None, None);
    batch.for_each_header(view, |name, value| {
        // The last of a repeated name wins, as in the header map `recorded` reads.
        let slot = if name == ID_HEADER.as_bytes() {
            &mut id
        } else if name == TYPE_HEADER.as_bytes() {
            &mut event_type
        } else if name == CONTENT_TYPE_HEADER.as_bytes() {
            &mut content_type
        } else if name == super::METADATA_HEADER.as_bytes() {
            &mut metadata
        } else if name == REVISION_HEADER.as_bytes() {
            &mut revision
        } else {
            return;
        };
        *slot = Some(value);
    })?;
    let text = |r: Option<Option<std::ops::Range<usize>>>| {
        r.flatten()
            .and_then(|r| std::str::from_utf8(&plain[r]).ok())
    };
    let Some(revision) = text(revision).and_then(|r| r.parse::<u64>().ok()) else {
        return Ok((view.offset, None));
    };
    let revision = if revision == DELETED_TRUNCATE_BEFORE {
        i64::MAX as u64
    } else {
        revision
    };
    Ok((
        view.offset,
        Some(RecordedEvent {
            stream: stream.to_string(),
            revision,
            position: view.offset as u64 + 1,
            id: text(id)
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .unwrap_or_default(),
            event_type: text(event_type).unwrap_or_default().to_string(),
            content_type: text(content_type)
                .unwrap_or("application/octet-stream")
                .to_string(),
            custom_metadata: metadata
                .flatten()
                .map(|r| plain.slice(r))
                .unwrap_or_default(),
            data: view
                .value
                .clone()
                .map(|r| plain.slice(r))
                .unwrap_or_default(),
            created_ms: view.timestamp,
        }),
    ))
}

/// The records at `offsets` (any order), reading each batch once.
fn fetch(partition: &Partition, offsets: &[i64]) -> StreamResult<BTreeMap<i64, Record>> {
    let mut wanted: Vec<i64> = offsets.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < wanted.len() {
        let offset = wanted[i];
        if out.contains_key(&offset) {
            i += 1;
            continue;
        }
        // The batch holding `offset` (an offset no longer in the log is left out), and
        // every other wanted record in it.
        let read = partition.read(offset, 1)?;
        for batch in partition.stored_batches(read.records, "event store read") {
            let decoded = match batch? {
                StoredBatch::Oversized { .. } => continue,
                StoredBatch::Decoded(d) => d,
            };
            for view in decoded.records() {
                let view = view?;
                if wanted[i..].binary_search(&view.offset).is_ok() {
                    out.insert(view.offset, decoded.record(&view)?);
                }
            }
        }
        i += 1;
    }
    Ok(out)
}
