//! Just enough of the record format to look inside a batch: walk its records to find
//! offsets, timestamps, keys and headers. Read-only: it bounds every length by the bytes
//! present and never trusts a count from the batch. The cleaner (the one place that
//! re-encodes) uses the byte ranges it returns to copy records it keeps.
//!
//! Decompression is bounded. A few KB of zstd can expand to gigabytes, so nothing here
//! decompresses a batch whole without a limit:
//! - readers (HTTP reads, work queues, the cleaner, ListOffsets by timestamp) get at most
//!   `batch_decompressed_bytes_max` bytes of one batch at a time ([`decompress`] fails at
//!   the bound holding at most 8 MiB; its buffer never grows past it), and records are walked
//!   lazily, so nothing grows with the record count a batch claims or holds;
//! - produce ([`check_produced`]) streams the records through a fixed 16 KiB buffer and
//!   keeps nothing: it costs CPU, bounded by the same limit, but no memory.
//!
//! The bound applies to compressed batches only: an uncompressed batch's records are its
//! stored bytes, already bounded by `max.message.bytes` and the segment size.
//!
//! Each codec reads exactly what `kafka_protocol`'s own codecs read (gzip: one member;
//! snappy: xerial framing, or raw snappy without its magic; lz4: the frame format;
//! zstd: one or more frames), through the same crates, but as streams.

use std::io::{self, BufRead, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use herald_log::{BATCH_HEADER_BYTES, BatchHeader};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};

use crate::error::{BrokerError, Result};

/// Default of `batch_decompressed_bytes_max`.
pub const BATCH_DECOMPRESSED_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default of `record_bytes_max`.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// The fixed buffer a produce check streams decompressed bytes through.
const SCRATCH_BYTES: usize = 16 << 10;
/// How much of a batch [`decompress`] decodes before it counts the rest first.
const EAGER_BYTES: usize = 8 << 20;

/// How far a batch may expand, and how many stored batches readers stepped over because
/// it expanded further. One per broker, shared by its partitions.
#[derive(Debug)]
pub struct RecordBounds {
    /// Most bytes a compressed batch may decompress to.
    pub batch_decompressed_bytes_max: usize,
    /// Most bytes one record (its length varint) may claim.
    pub record_bytes_max: usize,
    oversized_batches_skipped: AtomicU64,
}

impl RecordBounds {
    pub fn new(batch_decompressed_bytes_max: usize, record_bytes_max: usize) -> RecordBounds {
        RecordBounds {
            batch_decompressed_bytes_max,
            record_bytes_max,
            oversized_batches_skipped: AtomicU64::new(0),
        }
    }

    /// Times a reader stepped over a stored batch that decompresses past the bound (the
    /// same batch read twice counts twice).
    pub fn oversized_batches_skipped(&self) -> u64 {
        self.oversized_batches_skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn note_skipped(&self) {
        self.oversized_batches_skipped
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for RecordBounds {
    fn default() -> RecordBounds {
        RecordBounds::new(
            BATCH_DECOMPRESSED_BYTES_MAX_DEFAULT,
            RECORD_BYTES_MAX_DEFAULT,
        )
    }
}

/// One record of a batch, as ranges into [`DecodedBatch::plain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub offset: i64,
    pub timestamp: i64,
    /// The stored delta from the batch's base timestamp.
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    /// The key's bytes; None for a null key.
    pub key: Option<Range<usize>>,
    /// The value's bytes; None for a null value (a tombstone in a compacted topic).
    pub value: Option<Range<usize>>,
    pub attributes: u8,
    /// From the header count to the end of the record.
    pub headers: Range<usize>,
    /// From the offset delta to the end of the record: what re-encoding copies as is.
    pub tail: Range<usize>,
}

/// One batch, decompressed; its records are walked on demand by [`DecodedBatch::records`].
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub plain: Bytes,
}

impl DecodedBatch {
    /// The records in stored order. Stops after the first error.
    pub fn records(&self) -> Records<'_> {
        Records {
            batch: self,
            position: 0,
            failed: false,
        }
    }

    pub fn key(&self, record: &RecordView) -> Option<&[u8]> {
        record.key.clone().map(|r| &self.plain[r])
    }

    /// The record as `kafka_protocol` has it, headers included; key, value and header
    /// values share `plain` (no copy).
    pub fn record(&self, view: &RecordView) -> Result<Record> {
        let h = &self.header;
        Ok(Record {
            transactional: h.is_transactional(),
            control: h.is_control(),
            delete_horizon: h.delete_horizon_ms().is_some(),
            partition_leader_epoch: h.partition_leader_epoch,
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            sequence: h.base_sequence.wrapping_add(view.offset_delta),
            timestamp_type: if h.is_log_append_time() {
                TimestampType::LogAppend
            } else {
                TimestampType::Creation
            },
            offset: view.offset,
            timestamp: view.timestamp,
            key: view.key.clone().map(|r| self.plain.slice(r)),
            value: view.value.clone().map(|r| self.plain.slice(r)),
            headers: self.headers(view)?,
        })
    }

    /// Call `f` with each header's name and value range (into `plain`), in stored
    /// order, without building the header map.
    pub fn for_each_header(
        &self,
        view: &RecordView,
        mut f: impl FnMut(&[u8], Option<Range<usize>>),
    ) -> Result<()> {
        let end = view.headers.end;
        let mut cursor = Cursor {
            bytes: &self.plain[..end],
            position: view.headers.start,
        };
        let count = cursor.varint()?;
        let count = usize::try_from(count).map_err(|_| bad("negative header count"))?;
        for _ in 0..count {
            let name = cursor
                .bytes_field(end)?
                .ok_or_else(|| bad("null header name"))?;
            let value = cursor.bytes_field(end)?;
            f(&self.plain[name], value);
        }
        Ok(())
    }

    fn headers(&self, view: &RecordView) -> Result<IndexMap<StrBytes, Option<Bytes>>> {
        let mut headers = IndexMap::new();
        self.for_each_header(view, |name, value| {
            let name = String::from_utf8_lossy(name).into_owned();
            headers.insert(
                StrBytes::from_string(name),
                value.map(|r| self.plain.slice(r)),
            );
        })?;
        Ok(headers)
    }
}

/// The records of a [`DecodedBatch`], parsed one at a time.
pub struct Records<'a> {
    batch: &'a DecodedBatch,
    position: usize,
    failed: bool,
}

impl Iterator for Records<'_> {
    type Item = Result<RecordView>;

    fn next(&mut self) -> Option<Result<RecordView>> {
        if self.failed || self.position >= self.batch.plain.len() {
            return None;
        }
        match parse_record(&self.batch.header, &self.batch.plain, self.position) {
            Ok((view, end)) => {
                self.position = end;
                Some(Ok(view))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_record(
    header: &BatchHeader,
    plain: &[u8],
    position: usize,
) -> Result<(RecordView, usize)> {
    let mut cursor = Cursor {
        bytes: plain,
        position,
    };
    let length = cursor.varint()?;
    let length = usize::try_from(length).map_err(|_| bad("negative record length"))?;
    let record_end = cursor
        .position
        .checked_add(length)
        .filter(|e| *e <= plain.len())
        .ok_or_else(|| bad("record length past the end of the batch"))?;
    let attributes = cursor.byte()?;
    let timestamp_delta = cursor.varlong()?;
    let tail_start = cursor.position;
    let offset_delta = cursor.varint()?;
    let key = cursor.bytes_field(record_end)?;
    let value = cursor.bytes_field(record_end)?;
    if cursor.position > record_end {
        return Err(bad("record fields run past the record length"));
    }
    let timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.saturating_add(timestamp_delta)
    };
    let view = RecordView {
        offset: header.base_offset.saturating_add(i64::from(offset_delta)),
        timestamp,
        timestamp_delta,
        offset_delta,
        key,
        value,
        attributes,
        headers: cursor.position..record_end,
        tail: tail_start..record_end,
    };
    Ok((view, record_end))
}

/// Decompress `batch` (one whole batch) with at most `limit` bytes of records.
pub fn decode_records(batch: &[u8], limit: usize) -> Result<DecodedBatch> {
    let header = BatchHeader::parse(batch)?;
    let end = header.total_bytes().min(batch.len());
    let body = &batch[BATCH_HEADER_BYTES.min(end)..end];
    let plain = match header.compression() {
        0 => Bytes::copy_from_slice(body),
        codec => Bytes::from(decompress(codec, body, limit)?),
    };
    Ok(DecodedBatch { header, plain })
}

/// [`decode_records`] of a batch already in a `Bytes`: an uncompressed one is not copied.
fn decode_shared(batch: Bytes, limit: usize) -> Result<DecodedBatch> {
    let header = BatchHeader::parse(&batch)?;
    let end = header.total_bytes().min(batch.len());
    let body = batch.slice(BATCH_HEADER_BYTES.min(end)..end);
    let plain = match header.compression() {
        0 => body,
        codec => Bytes::from(decompress(codec, &body, limit)?),
    };
    Ok(DecodedBatch { header, plain })
}

/// Offset and timestamp of each record of one batch, in order.
pub fn record_offsets_and_timestamps(batch: &[u8], limit: usize) -> Result<Vec<(i64, i64)>> {
    decode_records(batch, limit)?
        .records()
        .map(|r| r.map(|r| (r.offset, r.timestamp)))
        .collect()
}

/// The first record in `batch` with timestamp >= `timestamp_ms`.
pub fn first_record_at_or_after(
    batch: &[u8],
    timestamp_ms: i64,
    limit: usize,
) -> Result<Option<(i64, i64)>> {
    let decoded = decode_records(batch, limit)?;
    for record in decoded.records() {
        let record = record?;
        if record.timestamp >= timestamp_ms {
            return Ok(Some((record.offset, record.timestamp)));
        }
    }
    Ok(None)
}

/// One stored batch as a reader gets it.
pub enum StoredBatch {
    Decoded(DecodedBatch),
    /// Decompresses past `batch_decompressed_bytes_max`: not decoded; the reader steps
    /// over its offsets.
    Oversized {
        header: BatchHeader,
        reason: String,
    },
}

/// The batches of `bytes` (whole stored batches, as a partition read returns them),
/// decoded one at a time, so at most one batch's records are in memory.
pub fn stored_batches(bytes: Bytes, limit: usize) -> StoredBatches {
    StoredBatches {
        rest: bytes,
        limit,
        failed: false,
    }
}

pub struct StoredBatches {
    rest: Bytes,
    limit: usize,
    failed: bool,
}

impl Iterator for StoredBatches {
    type Item = Result<StoredBatch>;

    fn next(&mut self) -> Option<Result<StoredBatch>> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let item = self.next_batch();
        self.failed = item.is_err();
        Some(item)
    }
}

impl StoredBatches {
    fn next_batch(&mut self) -> Result<StoredBatch> {
        let corrupt = |e: BrokerError| BrokerError::CorruptLog(format!("stored batch: {e}"));
        let header = BatchHeader::parse(&self.rest).map_err(|e| corrupt(e.into()))?;
        let total = header
            .check_length(self.rest.len())
            .map_err(|e| corrupt(e.into()))?;
        let batch = self.rest.split_to(total);
        match decode_shared(batch, self.limit) {
            Ok(decoded) => Ok(StoredBatch::Decoded(decoded)),
            Err(e @ BrokerError::BatchDecompressedTooLarge { .. }) => Ok(StoredBatch::Oversized {
                header,
                reason: e.to_string(),
            }),
            Err(e) => Err(corrupt(e)),
        }
    }
}

/// Whether [`check_produced`] has anything to look at: compressed batches, keys a
/// compacted topic requires, or a batch big enough to hold a record over the bound.
/// Reads headers only; a header that does not parse says yes (validation will refuse it).
pub fn needs_check(records: &[u8], bounds: &RecordBounds, keys_required: bool) -> bool {
    if keys_required {
        return true;
    }
    let mut rest = records;
    while !rest.is_empty() {
        let Ok(header) = BatchHeader::parse(rest) else {
            return true;
        };
        let Ok(total) = header.check_length(rest.len()) else {
            return true;
        };
        if header.compression() != 0 || total - BATCH_HEADER_BYTES > bounds.record_bytes_max {
            return true;
        }
        rest = &rest[total..];
    }
    false
}

/// The produce check of `records` (whole batches, already validated): refuse a batch
/// that decompresses past `batch_decompressed_bytes_max`, a record whose length is over
/// `record_bytes_max`, and, when `keys_required` (compacted topics, as Kafka does: a
/// keyless record could never be superseded), a record without a key. Streams each
/// batch through a fixed buffer and keeps none of it.
pub fn check_produced(records: &[u8], bounds: &RecordBounds, keys_required: bool) -> Result<()> {
    // Keyless records are listed one by one (KIP-467) so a client fails only those; a
    // malformed or oversized record still refuses the batch at once.
    let mut keyless = crate::error::RecordErrors::default();
    // A record's index counts across the batches of one produce (one batch since v3).
    let mut index = 0i32;
    let mut rest = records;
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let total = header.check_length(rest.len())?;
        let (batch, tail) = rest.split_at(total);
        let body = &batch[BATCH_HEADER_BYTES..];
        let codec = header.compression();
        let small = body.len() <= bounds.record_bytes_max;
        if codec != 0 || keys_required || !small {
            // An uncompressed batch is its own stored size: only records are bounded.
            let limit = if codec == 0 {
                usize::MAX
            } else {
                bounds.batch_decompressed_bytes_max
            };
            let mut stream = PlainStream::new(plain_reader(codec, body, limit)?, limit);
            let walked = stream.walk(
                bounds.record_bytes_max,
                keys_required,
                &mut index,
                &mut keyless,
            );
            // Past the bound the walk sees a cut-off record: the bound is the reason.
            if stream.exceeded() {
                return Err(too_large(limit));
            }
            walked?;
        }
        rest = tail;
    }
    if !keyless.is_empty() {
        return Err(BrokerError::InvalidRecords(keyless));
    }
    Ok(())
}

/// Why a compacted topic refuses a record (Kafka's words).
pub const KEYLESS_ON_COMPACTED: &str = "Compacted topic cannot accept message without key";

/// Decompress a records body of `codec`, at most `limit` bytes: a body that expands past
/// it is `BatchDecompressedTooLarge`, and no buffer ever grows past `limit`. The first
/// 8 MiB are decoded straight into the output; a body that goes on past that is counted
/// first (streamed, nothing kept) and then decoded again into a buffer of its exact
/// size, so a bomb costs CPU up to the bound but at most 8 MiB of memory, and a large
/// batch never holds a buffer twice its size while it grows.
pub fn decompress(codec: u8, body: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if fill(
        plain_reader(codec, body, limit)?,
        &mut out,
        limit.min(EAGER_BYTES),
        limit,
    )? {
        return Ok(out);
    }
    drop(out);
    let mut counted = plain_reader(codec, body, limit)?.take((limit as u64).saturating_add(1));
    let total = io::copy(&mut counted, &mut io::sink()).map_err(|e| read_error(e, limit))?;
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    if total > limit {
        return Err(too_large(limit));
    }
    let mut exact = Vec::with_capacity(total);
    if fill(plain_reader(codec, body, limit)?, &mut exact, total, limit)? {
        return Ok(exact);
    }
    // The same bytes decoded differently the second time: not a deterministic stream.
    Err(bad(
        "cannot decompress batch: its size changed between two reads",
    ))
}

/// Read all of `reader` into `out`, never past `cap` bytes (nor capacity past it).
/// False if there was more; an error at `limit` is reported as the bound.
fn fill(
    mut reader: Box<dyn Read + '_>,
    out: &mut Vec<u8>,
    cap: usize,
    limit: usize,
) -> Result<bool> {
    let mut scratch = vec![0u8; SCRATCH_BYTES];
    loop {
        let n = match reader.read(&mut scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, limit)),
        };
        let len = out.len() + n;
        if len > cap {
            return Ok(false);
        }
        if out.capacity() < len {
            // Doubling, but never past the cap.
            let target = (out.capacity() * 2).max(len).min(cap);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&scratch[..n]);
    }
}

/// A stream of the decompressed records body.
fn plain_reader<'a>(codec: u8, body: &'a [u8], limit: usize) -> Result<Box<dyn Read + 'a>> {
    let corrupt = |e: io::Error| bad(&format!("cannot decompress batch: {e}"));
    Ok(match codec {
        0 => Box::new(body),
        1 => Box::new(flate2::read::GzDecoder::new(body)),
        2 => Box::new(SnappyReader::new(body, limit)?),
        3 => Box::new(Lz4Reader(Some(lz4::Decoder::new(body).map_err(corrupt)?))),
        4 => {
            // A frame that says how big it is can be refused before any work.
            if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body)
                && size > limit as u64
            {
                return Err(too_large(limit));
            }
            let mut decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(corrupt)?;
            // The window is the decoder's own buffer: no larger than the bound needs
            // (but 8 MiB at least, what every level up to 19 may use).
            decoder
                .window_log_max(window_log_max(limit))
                .map_err(corrupt)?;
            Box::new(decoder)
        }
        other => return Err(bad(&format!("unknown compression codec {other}"))),
    })
}

fn window_log_max(limit: usize) -> u32 {
    let log = usize::BITS - limit.saturating_sub(1).leading_zeros();
    log.clamp(23, 31)
}

/// lz4's frame decoder, which ends a frame cut short as if it were whole: this says so.
struct Lz4Reader<'a>(Option<lz4::Decoder<&'a [u8]>>);

impl Read for Lz4Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(decoder) = self.0.as_mut() else {
            return Ok(0);
        };
        let n = decoder.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(decoder) = self.0.take()
        {
            decoder
                .finish()
                .1
                .map_err(|_| io::Error::other("lz4 frame cut short"))?;
        }
        Ok(n)
    }
}

/// Raised inside a stream when a length it reads already says the output will pass the
/// bound (snappy states each block's size up front).
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size past the bound")
    }
}

impl std::error::Error for TooLarge {}

fn read_error(e: io::Error, limit: usize) -> BrokerError {
    if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
        return too_large(limit);
    }
    bad(&format!("cannot decompress batch: {e}"))
}

fn too_large(limit: usize) -> BrokerError {
    BrokerError::BatchDecompressedTooLarge { max: limit }
}

/// Kafka's snappy as a stream: xerial framing (a 16-byte magic, then blocks, each a
/// big-endian u32 length and one raw snappy block, 32 KiB of input each from every
/// client), or one raw snappy block without the magic (what the Java client's
/// `SnappyInputStream` also falls back to). One decoded block is held at a time; a
/// block is sized by its own header, checked against what is left of the bound first.
struct SnappyReader<'a> {
    rest: &'a [u8],
    /// Bytes of output still allowed.
    budget: usize,
    block: Vec<u8>,
    position: usize,
    /// Raw snappy: the whole input is one block.
    raw: bool,
}

const SNAPPY_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

impl<'a> SnappyReader<'a> {
    fn new(body: &'a [u8], limit: usize) -> Result<SnappyReader<'a>> {
        if body.is_empty() {
            return Err(bad("cannot decompress batch: empty snappy stream"));
        }
        let (rest, raw) = match body.strip_prefix(SNAPPY_MAGIC.as_slice()) {
            Some(rest) => (rest, false),
            None => (body, true),
        };
        Ok(SnappyReader {
            rest,
            budget: limit,
            block: Vec::new(),
            position: 0,
            raw,
        })
    }

    /// Decode the next block into `block`; false at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let compressed = if self.raw {
            std::mem::take(&mut self.rest)
        } else {
            let Some((length, tail)) = self.rest.split_first_chunk::<4>() else {
                return Err(io::Error::other(
                    "not enough bytes for a snappy block length",
                ));
            };
            let length = u32::from_be_bytes(*length) as usize;
            if tail.len() < length {
                return Err(io::Error::other("not enough bytes for a snappy block"));
            }
            let (block, tail) = tail.split_at(length);
            self.rest = tail;
            block
        };
        let size = snap::raw::decompress_len(compressed).map_err(io::Error::other)?;
        if size > self.budget {
            return Err(io::Error::other(TooLarge));
        }
        self.budget -= size;
        self.block.clear();
        self.block.resize(size, 0);
        let written = snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(io::Error::other)?;
        self.block.truncate(written);
        self.position = 0;
        Ok(true)
    }
}

impl Read for SnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.block.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.position);
        buf[..n].copy_from_slice(&self.block[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Records read from a decompressing stream through a fixed buffer, counted, not kept.
struct PlainStream<'a> {
    inner: io::BufReader<io::Take<Box<dyn Read + 'a>>>,
    limit: usize,
}

impl<'a> PlainStream<'a> {
    fn new(reader: Box<dyn Read + 'a>, limit: usize) -> PlainStream<'a> {
        // One byte past the bound is how a stream that passes it is told apart.
        let take = reader.take((limit as u64).saturating_add(1));
        PlainStream {
            inner: io::BufReader::with_capacity(SCRATCH_BYTES, take),
            limit,
        }
    }

    /// The stream gave more than `limit` bytes.
    fn exceeded(&self) -> bool {
        self.limit != usize::MAX && self.inner.get_ref().limit() == 0
    }

    fn byte(&mut self) -> Result<Option<u8>> {
        let limit = self.limit;
        let available = self.inner.fill_buf().map_err(|e| read_error(e, limit))?;
        let Some(&b) = available.first() else {
            return Ok(None);
        };
        self.inner.consume(1);
        Ok(Some(b))
    }

    /// A zig-zag varlong starting with `first`; `used` counts its bytes.
    fn varlong(&mut self, first: u8, used: &mut u64) -> Result<i64> {
        let mut b = first;
        let mut raw: u64 = 0;
        *used += 1;
        for shift in (0..70).step_by(7) {
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
            b = self.byte()?.ok_or_else(|| bad("record truncated"))?;
            *used += 1;
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn next_varlong(&mut self, used: &mut u64) -> Result<i64> {
        let first = self.byte()?.ok_or_else(|| bad("record truncated"))?;
        self.varlong(first, used)
    }

    /// Walk every record: its length against `record_bytes_max` before anything of it
    /// is read, and its key when `keys_required`; the rest is skipped.
    fn walk(
        &mut self,
        record_bytes_max: usize,
        keys_required: bool,
        index: &mut i32,
        keyless: &mut crate::error::RecordErrors,
    ) -> Result<()> {
        while let Some(first) = self.byte()? {
            let mut ignored = 0;
            let length = self.varlong(first, &mut ignored)?;
            let length = u64::try_from(length).map_err(|_| bad("negative record length"))?;
            if length > record_bytes_max as u64 {
                return Err(BrokerError::RecordTooLarge {
                    bytes: length,
                    max: record_bytes_max,
                });
            }
            let mut used = 0u64;
            if keys_required {
                self.byte()?.ok_or_else(|| bad("record truncated"))?; // attributes
                used += 1;
                self.next_varlong(&mut used)?; // timestamp delta
                self.next_varlong(&mut used)?; // offset delta
                let key_length = self.next_varlong(&mut used)?;
                if used > length {
                    return Err(bad("record fields run past the record length"));
                }
                if key_length < 0 {
                    keyless.push(*index, KEYLESS_ON_COMPACTED.to_string());
                }
            }
            *index = index.saturating_add(1);
            let rest = length - used;
            let limit = self.limit;
            let skipped = io::copy(&mut (&mut self.inner).take(rest), &mut io::sink())
                .map_err(|e| read_error(e, limit))?;
            if skipped < rest {
                return Err(bad("record length past the end of the batch"));
            }
        }
        Ok(())
    }
}

fn bad(reason: &str) -> BrokerError {
    BrokerError::InvalidRecord(reason.to_string())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.position)
            .ok_or_else(|| bad("record truncated"))?;
        self.position += 1;
        Ok(b)
    }

    fn varlong(&mut self) -> Result<i64> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // zig-zag
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn varint(&mut self) -> Result<i32> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| bad("varint out of i32 range"))
    }

    /// A varint length then that many bytes (-1: null), inside `end`.
    fn bytes_field(&mut self, end: usize) -> Result<Option<Range<usize>>> {
        let length = self.varint()?;
        if length < 0 {
            return Ok(None);
        }
        let start = self.position;
        let stop = start
            .checked_add(length as usize)
            .filter(|e| *e <= end)
            .ok_or_else(|| bad("record field length past the end of the record"))?;
        self.position = stop;
        Ok(Some(start..stop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts what each thread has allocated, so a test can assert that decompressing a
    /// bomb never held much more than the bound.
    struct Tracking;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn track(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                track(layout.size() as isize);
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            unsafe { System.dealloc(p, layout) };
            track(-(layout.size() as isize));
        }
        unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
            let q = unsafe { System.realloc(p, layout, size) };
            if !q.is_null() {
                track(size as isize - layout.size() as isize);
            }
            q
        }
    }

    #[global_allocator]
    static ALLOCATOR: Tracking = Tracking;

    /// Most bytes this thread held at once while `f` ran, beyond what it held before.
    fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let r = f();
        (r, (PEAK.with(Cell::get) - start).max(0) as usize)
    }

    const CODECS: [u8; 4] = [1, 2, 3, 4];

    /// Compress `plain` with `codec` as a producer would, streaming (a bomb's plain
    /// bytes are never held whole).
    fn compress_stream(codec: u8, mut plain: impl Read) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            0 => {
                plain.read_to_end(&mut out).unwrap();
            }
            1 => {
                let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
                io::copy(&mut plain, &mut e).unwrap();
                e.finish().unwrap();
            }
            2 => {
                out.extend_from_slice(SNAPPY_MAGIC);
                let mut block = vec![0u8; 32 << 10];
                loop {
                    let mut n = 0;
                    while n < block.len() {
                        match plain.read(&mut block[n..]).unwrap() {
                            0 => break,
                            k => n += k,
                        }
                    }
                    if n == 0 {
                        break;
                    }
                    let c = snap::raw::Encoder::new().compress_vec(&block[..n]).unwrap();
                    out.extend_from_slice(&(c.len() as u32).to_be_bytes());
                    out.extend_from_slice(&c);
                }
            }
            3 => {
                let mut e = lz4::EncoderBuilder::new().build(&mut out).unwrap();
                io::copy(&mut plain, &mut e).unwrap();
                e.finish().1.unwrap();
            }
            4 => zstd::stream::copy_encode(plain, &mut out, 3).unwrap(),
            _ => unreachable!(),
        }
        out
    }

    fn zeros(n: u64) -> io::Take<io::Repeat> {
        io::repeat(0).take(n)
    }

    /// The plain bytes of one record with key `k` and a value of `value_bytes` zeros.
    fn one_record(value_bytes: u64) -> impl Read {
        let mut head = Vec::new();
        let mut fields = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
        crate::reencode::put_varlong(&mut fields, 1);
        fields.push(b'k');
        crate::reencode::put_varlong(&mut fields, value_bytes as i64);
        let length = fields.len() as u64 + value_bytes + 1;
        crate::reencode::put_varlong(&mut head, length as i64);
        head.extend_from_slice(&fields);
        io::Cursor::new(head)
            .chain(zeros(value_bytes))
            .chain(io::Cursor::new(vec![0u8])) // no headers
    }

    /// One whole batch of one record, its body compressed with `codec`.
    fn batch_with_body(codec: u8, body: &[u8]) -> Vec<u8> {
        let header = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: i16::from(codec),
            last_offset_delta: 0,
            base_timestamp: 1_000,
            max_timestamp: 1_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 1,
        };
        herald_log::encode_batch(&header, body)
    }

    fn bomb(codec: u8, value_bytes: u64) -> Vec<u8> {
        batch_with_body(codec, &compress_stream(codec, one_record(value_bytes)))
    }

    fn batch(compression: Compression) -> Vec<u8> {
        let records: Vec<_> = (0..5)
            .map(|i| {
                let mut r =
                    crate::test_util::record(&format!("k{i}"), Some(&[b'x'; 100]), 1_000 + i * 10);
                r.headers.insert(
                    StrBytes::from_static_str("trace"),
                    Some(Bytes::from(format!("t{i}"))),
                );
                r.headers.insert(StrBytes::from_static_str("empty"), None);
                r
            })
            .collect();
        let mut out = crate::test_util::batch(&records, 0, compression);
        out[..8].copy_from_slice(&40i64.to_be_bytes());
        out
    }

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn finds_records_by_timestamp_in_every_codec() {
        for codec in ALL {
            let b = batch(codec);
            let all = record_offsets_and_timestamps(&b, 1 << 20).unwrap();
            assert_eq!(all.len(), 5, "{codec:?}");
            assert_eq!(all[0], (40, 1000));
            assert_eq!(
                first_record_at_or_after(&b, 1015, 1 << 20).unwrap(),
                Some((42, 1020))
            );
            assert_eq!(first_record_at_or_after(&b, 5000, 1 << 20).unwrap(), None);
        }
    }

    #[test]
    fn records_read_the_same_as_the_kafka_codec_reads_them() {
        for codec in ALL {
            let b = batch(codec);
            let mut bytes = Bytes::from(b.clone());
            let theirs = RecordBatchDecoder::decode(&mut bytes).unwrap().records;
            let decoded = decode_records(&b, 1 << 20).unwrap();
            let ours: Vec<Record> = decoded
                .records()
                .map(|v| decoded.record(&v.unwrap()).unwrap())
                .collect();
            assert_eq!(ours, theirs, "{codec:?}");
        }
    }

    #[test]
    fn raw_snappy_without_the_xerial_magic_decodes() {
        let plain: Vec<u8> = (0..5_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(decompress(2, &raw, plain.len()).unwrap(), plain);
        assert!(matches!(
            decompress(2, &raw, plain.len() - 1),
            Err(BrokerError::BatchDecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn a_body_at_the_bound_decodes_and_one_byte_more_is_refused() {
        let limit = 100_000;
        let plain: Vec<u8> = (0..limit).map(|i| (i % 251) as u8).collect();
        for codec in CODECS {
            let body = compress_stream(codec, plain.as_slice());
            assert_eq!(
                decompress(codec, &body, limit).unwrap(),
                plain,
                "codec {codec}"
            );
            assert!(
                matches!(
                    decompress(codec, &body, limit - 1),
                    Err(BrokerError::BatchDecompressedTooLarge { max }) if max == limit - 1
                ),
                "codec {codec}"
            );
        }
    }

    #[test]
    fn a_bomb_is_refused_without_a_big_allocation() {
        let limit = 1 << 20;
        let expands_to = 24 << 20;
        for codec in CODECS {
            let b = bomb(codec, expands_to);
            assert!(
                b.len() < expands_to as usize / 20,
                "codec {codec}: not a bomb"
            );
            let body = &b[BATCH_HEADER_BYTES..];
            let (result, peak) = peak_bytes(|| decompress(codec, body, limit));
            assert!(
                matches!(result, Err(BrokerError::BatchDecompressedTooLarge { .. })),
                "codec {codec}: {result:?}"
            );
            // The output buffer stops at the bound; the rest is the decoders' own state
            // (zstd's window is the largest, 2 MiB at level 3).
            assert!(peak < limit + (4 << 20), "codec {codec}: held {peak} bytes");

            let bounds = RecordBounds::new(limit, usize::MAX);
            let (result, peak) = peak_bytes(|| check_produced(&b, &bounds, false));
            assert!(
                matches!(result, Err(BrokerError::BatchDecompressedTooLarge { .. })),
                "codec {codec}: {result:?}"
            );
            // The produce check keeps nothing: only the decoders' state.
            assert!(
                peak < 4 << 20,
                "codec {codec}: produce check held {peak} bytes"
            );

            let (stored, peak) = peak_bytes(|| {
                stored_batches(Bytes::from(b.clone()), limit)
                    .map(|s| matches!(s, Ok(StoredBatch::Oversized { .. })))
                    .collect::<Vec<_>>()
            });
            assert_eq!(stored, [true], "codec {codec}");
            assert!(
                peak < b.len() + limit + (4 << 20),
                "codec {codec}: reader held {peak}"
            );
        }
    }

    #[test]
    fn past_the_eager_part_a_body_is_counted_then_decoded_at_its_exact_size() {
        let limit = 32 << 20;
        for codec in [3, 4] {
            // A bomb past a large bound still holds about the eager part only.
            let bomb = compress_stream(codec, zeros(96 << 20));
            let (result, peak) = peak_bytes(|| decompress(codec, &bomb, limit));
            assert!(
                matches!(result, Err(BrokerError::BatchDecompressedTooLarge { .. })),
                "codec {codec}"
            );
            assert!(peak < EAGER_BYTES + (4 << 20), "codec {codec}: held {peak}");
            // A 12 MiB body under the bound: one buffer of its size, not a doubled one.
            let size = 12 << 20;
            let body = compress_stream(codec, io::repeat(7).take(size as u64));
            let (out, peak) = peak_bytes(|| decompress(codec, &body, limit).unwrap());
            assert_eq!(out.len(), size);
            assert!(out.iter().all(|&b| b == 7));
            assert!(peak < size + (4 << 20), "codec {codec}: held {peak}");
        }
    }

    #[test]
    fn the_produce_check_bounds_records_and_requires_keys() {
        let bounds = RecordBounds::new(1 << 20, 1_000);
        for codec in CODECS {
            // Under both bounds: accepted.
            assert!(check_produced(&bomb(codec, 900), &bounds, true).is_ok());
            // A record over record_bytes_max inside a batch under the batch bound.
            assert!(matches!(
                check_produced(&bomb(codec, 5_000), &bounds, false),
                Err(BrokerError::RecordTooLarge { max: 1_000, .. })
            ));
        }
        // Uncompressed: no batch bound, the record bound still holds.
        let plain = bomb(0, 5_000);
        assert!(needs_check(&plain, &bounds, false));
        assert!(matches!(
            check_produced(&plain, &bounds, false),
            Err(BrokerError::RecordTooLarge { .. })
        ));
        let small = batch(Compression::None);
        assert!(!needs_check(&small, &RecordBounds::default(), false));
        assert!(needs_check(
            &batch(Compression::Lz4),
            &RecordBounds::default(),
            false
        ));
        let keyless = crate::test_util::batch(
            &[kafka_protocol::records::Record {
                key: None,
                ..crate::test_util::record("k", Some(b"v"), 1)
            }],
            0,
            Compression::Zstd,
        );
        assert!(check_produced(&keyless, &bounds, false).is_ok());
        assert!(matches!(
            check_produced(&keyless, &bounds, true),
            Err(BrokerError::InvalidRecords(e)) if e.records == vec![(0, KEYLESS_ON_COMPACTED.to_string())]
        ));
    }

    #[test]
    fn a_reader_steps_over_an_oversized_batch_and_goes_on() {
        let mut bytes = bomb(4, 2 << 20);
        let mut next = batch(Compression::Zstd);
        next[..8].copy_from_slice(&1i64.to_be_bytes());
        bytes.extend_from_slice(&next);
        let got: Vec<_> = stored_batches(Bytes::from(bytes), 1 << 20)
            .map(|b| match b.unwrap() {
                StoredBatch::Oversized { header, reason } => {
                    assert!(reason.contains("batch_decompressed_bytes_max"), "{reason}");
                    (header.base_offset, None)
                }
                StoredBatch::Decoded(d) => (d.header.base_offset, Some(d.records().count())),
            })
            .collect();
        assert_eq!(got, [(0, None), (1, Some(5))]);
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_not_a_panic() {
        let plain: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 253) as u8).collect();
        for codec in CODECS {
            let body = compress_stream(codec, plain.as_slice());
            for cut in [0, 1, 4, 17, body.len() / 2, body.len() - 1] {
                let result = decompress(codec, &body[..cut], 1 << 20);
                // Nothing at all may read as nothing; any other cut is an error.
                let empty = cut == 0 && result.as_ref().is_ok_and(Vec::is_empty);
                assert!(
                    empty || result.is_err(),
                    "codec {codec} cut at {cut} of {}",
                    body.len()
                );
            }
            let mut garbage = body.clone();
            for (i, b) in garbage.iter_mut().enumerate().skip(2) {
                *b ^= (i as u8).wrapping_mul(31) | 1;
            }
            let _ = decompress(codec, &garbage, 1 << 20);
            let b = batch_with_body(codec, &garbage);
            let _ = check_produced(&b, &RecordBounds::default(), true);
            for s in stored_batches(Bytes::from(b), 1 << 20) {
                if let Ok(StoredBatch::Decoded(d)) = s {
                    for r in d.records().flatten() {
                        let _ = d.record(&r);
                    }
                }
            }
        }
        assert!(decompress(9, b"x", 10).is_err());
        assert!(decompress(2, b"", 10).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut b = batch(Compression::None);
        let len = b.len();
        b.truncate(len - 30);
        // The header still claims the full length; the walk must stop cleanly.
        assert!(record_offsets_and_timestamps(&b, 1 << 20).is_err());
        let mut g = batch(Compression::Gzip);
        for byte in g.iter_mut().skip(BATCH_HEADER_BYTES) {
            *byte = 0xff;
        }
        assert!(record_offsets_and_timestamps(&g, 1 << 20).is_err());
    }

    #[test]
    fn the_zstd_window_follows_the_bound() {
        assert_eq!(window_log_max(1 << 20), 23);
        assert_eq!(window_log_max(64 << 20), 26);
        assert_eq!(window_log_max((64 << 20) + 1), 27);
        assert_eq!(window_log_max(usize::MAX), 31);
    }
}
