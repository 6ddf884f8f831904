//! The one place that re-encodes record batches. Two callers: the cleaner (a batch
//! that lost records, in its own codec) and `Topic::append` for a topic whose
//! `compression.type` names a codec (a batch that arrived in another one is
//! recompressed before it is stored, as Kafka's LogValidator does).
//!
//! Why recompression keeps everything but the codec: the batch header (base offset,
//! last offset delta, timestamps, producer id, epoch and base sequence, the
//! transactional bit) is what idempotence, transactions and readers rely on; only the
//! codec bits of the attributes, the body and so the length and CRC change. Records
//! are not touched: decompressing and compressing the body is enough, since the
//! records' encoding does not depend on the codec. Control batches are never
//! compressed (Kafka writes them plain), so they are kept as they are.

use bytes::{BufMut, BytesMut};
use herald_log::{BATCH_HEADER_BYTES, BatchHeader, encode_batch};
use kafka_protocol::compression::{Compressor, Snappy};

use crate::error::{BrokerError, Result};

/// Kafka's codec ids, as the low three bits of a batch's attributes.
pub const CODEC_NONE: u8 = 0;
pub const CODEC_GZIP: u8 = 1;
pub const CODEC_SNAPPY: u8 = 2;
pub const CODEC_LZ4: u8 = 3;
pub const CODEC_ZSTD: u8 = 4;

const ATTR_COMPRESSION_MASK: i16 = 0x07;

/// Kafka 3.8's defaults and ranges for `compression.<codec>.level`.
pub const GZIP_LEVEL_DEFAULT: u32 = 6;
pub const GZIP_LEVELS: std::ops::RangeInclusive<i64> = 1..=9;
pub const LZ4_LEVEL_DEFAULT: u32 = 9;
pub const LZ4_LEVELS: std::ops::RangeInclusive<i64> = 1..=17;
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i64> = -131_072..=22;

/// What a topic stores: a codec and, for the codecs that have one, a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub id: u8,
    /// None: the codec's Kafka default.
    pub level: Option<i32>,
}

impl Codec {
    /// The codec of a `compression.type` value; None for `producer` (keep the batch's).
    pub fn from_config(name: &str, level: Option<i32>) -> Option<Codec> {
        let id = match name {
            "uncompressed" => CODEC_NONE,
            "gzip" => CODEC_GZIP,
            "snappy" => CODEC_SNAPPY,
            "lz4" => CODEC_LZ4,
            "zstd" => CODEC_ZSTD,
            _ => return None,
        };
        Some(Codec { id, level })
    }

    /// The batch's own codec at its default level (what the cleaner re-encodes with).
    pub fn of(header: &BatchHeader) -> Codec {
        Codec {
            id: header.compression(),
            level: None,
        }
    }
}

/// Compress a records body with `codec`.
pub fn compress(codec: Codec, plain: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let failed = |e: &dyn std::fmt::Display| {
        BrokerError::Storage(format!("cannot compress a record batch: {e}"))
    };
    match codec.id {
        CODEC_NONE => Ok(plain.to_vec()),
        CODEC_GZIP => {
            let level = codec
                .level
                .map_or(GZIP_LEVEL_DEFAULT, |l| l.clamp(1, 9) as u32);
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 2),
                flate2::Compression::new(level),
            );
            e.write_all(plain).map_err(|e| failed(&e))?;
            e.finish().map_err(|e| failed(&e))
        }
        CODEC_SNAPPY => {
            let mut out = BytesMut::new();
            Snappy::compress(&mut out, |b: &mut BytesMut| -> anyhow::Result<()> {
                b.put_slice(plain);
                Ok(())
            })
            .map_err(|e| failed(&e))?;
            Ok(out.to_vec())
        }
        CODEC_LZ4 => {
            let level = codec
                .level
                .map_or(LZ4_LEVEL_DEFAULT, |l| l.clamp(1, 17) as u32);
            let mut e = lz4::EncoderBuilder::new()
                .level(level)
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::with_capacity(plain.len() / 2))
                .map_err(|e| failed(&e))?;
            e.write_all(plain).map_err(|e| failed(&e))?;
            let (out, result) = e.finish();
            result.map_err(|e| failed(&e))?;
            Ok(out)
        }
        CODEC_ZSTD => {
            let level = codec.level.unwrap_or(ZSTD_LEVEL_DEFAULT);
            zstd::bulk::compress(plain, level).map_err(|e| failed(&e))
        }
        other => Err(BrokerError::Storage(format!(
            "cannot compress with unknown codec {other}"
        ))),
    }
}

/// `records` (whole, validated batches) with every batch not in `target` recompressed
/// into it; None when every batch already is (store the producer's bytes). No batch
/// decompresses past `limit` (`batch_decompressed_bytes_max`).
pub fn recompress(records: &[u8], target: Codec, limit: usize) -> Result<Option<Vec<u8>>> {
    let mut rest = records;
    let mut changed = false;
    let mut out: Vec<u8> = Vec::new();
    while !rest.is_empty() {
        let header = BatchHeader::parse(rest)?;
        let total = header.check_length(rest.len())?;
        let (batch, tail) = rest.split_at(total);
        if header.compression() == target.id || header.is_control() {
            out.extend_from_slice(batch);
        } else {
            let body = &batch[BATCH_HEADER_BYTES..];
            let plain = crate::records::decompress(header.compression(), body, limit)?;
            let compressed = compress(target, &plain)?;
            let mut new_header = header;
            new_header.attributes =
                (header.attributes & !ATTR_COMPRESSION_MASK) | i16::from(target.id);
            out.extend_from_slice(&encode_batch(&new_header, &compressed));
            changed = true;
        }
        rest = tail;
    }
    Ok(changed.then_some(out))
}

/// Kafka's zig-zag varint, as records use for lengths and deltas.
pub(crate) fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::Compression;

    use super::*;
    use crate::records::decode_records;
    use crate::test_util;

    fn batch(compression: Compression) -> Vec<u8> {
        batch_at(compression, 0)
    }

    /// 50 records of producer 42 from `base_sequence`.
    fn batch_at(compression: Compression, base_sequence: i32) -> Vec<u8> {
        let records: Vec<_> = (0..50)
            .map(|i| kafka_protocol::records::Record {
                producer_id: 42,
                producer_epoch: 3,
                ..test_util::record(
                    &format!("k{i}"),
                    Some(b"OrderPlaced OrderPlaced"),
                    1_000 + i,
                )
            })
            .collect();
        test_util::batch(&records, base_sequence, compression)
    }

    #[test]
    fn every_codec_round_trips_and_keeps_the_header_fields() {
        let original = batch(Compression::Gzip);
        let before = BatchHeader::parse(&original).unwrap();
        let plain_before = decode_records(&original, 1 << 20).unwrap().plain;
        for id in [CODEC_NONE, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD] {
            for level in [None, Some(1)] {
                let target = Codec { id, level };
                let out = recompress(&original, target, 1 << 20).unwrap().unwrap();
                herald_log::validate_batches(&out).unwrap();
                let after = BatchHeader::parse(&out).unwrap();
                assert_eq!(after.compression(), id);
                assert_eq!(
                    (
                        after.base_offset,
                        after.last_offset_delta,
                        after.producer_id,
                        after.producer_epoch,
                        after.base_sequence,
                        after.records_count,
                        after.base_timestamp,
                        after.max_timestamp,
                    ),
                    (
                        before.base_offset,
                        before.last_offset_delta,
                        before.producer_id,
                        before.producer_epoch,
                        before.base_sequence,
                        before.records_count,
                        before.base_timestamp,
                        before.max_timestamp,
                    )
                );
                assert_eq!(decode_records(&out, 1 << 20).unwrap().plain, plain_before);
            }
        }
        // Already in the codec: the producer's bytes are kept.
        let gzip = Codec {
            id: CODEC_GZIP,
            level: Some(9),
        };
        assert_eq!(recompress(&original, gzip, 1 << 20).unwrap(), None);
    }

    #[tokio::test]
    async fn a_topic_with_a_codec_stores_batches_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let broker =
            crate::Broker::open(crate::BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        let configs = std::collections::BTreeMap::from([
            ("compression.type".to_string(), "zstd".to_string()),
            ("compression.zstd.level".to_string(), "7".to_string()),
        ]);
        let topic = broker
            .create_topic("zipped", Some(1), configs, false)
            .unwrap();
        assert_eq!(
            topic.stored_codec(),
            Some(Codec {
                id: CODEC_ZSTD,
                level: Some(7)
            })
        );
        let codecs = [Compression::None, Compression::Gzip, Compression::Zstd];
        for (i, compression) in codecs.into_iter().enumerate() {
            topic
                .append(0, &batch_at(compression, 50 * i as i32), crate::now_ms())
                .unwrap()
                .durable()
                .await
                .unwrap();
        }
        let p = topic.partition(0).unwrap();
        let read = p.read(0, 1 << 20).unwrap();
        let mut rest = &read.records[..];
        let mut batches = 0;
        while !rest.is_empty() {
            let header = BatchHeader::parse(rest).unwrap();
            assert_eq!(header.compression(), CODEC_ZSTD);
            assert_eq!(header.base_offset, batches * 50);
            rest = &rest[header.check_length(rest.len()).unwrap()..];
            batches += 1;
        }
        assert_eq!(batches, 3);
        // The idempotent producer's retry of a recompressed batch is still recognised.
        let retry = topic
            .append(0, &batch_at(Compression::Gzip, 50), crate::now_ms())
            .unwrap();
        assert_eq!(retry.durable().await.unwrap().base_offset, 50);
        assert_eq!(p.high_watermark(), 150);
    }

    #[test]
    fn a_batch_that_expands_past_the_bound_is_refused() {
        let original = batch(Compression::Zstd);
        let plain = Codec {
            id: CODEC_NONE,
            level: None,
        };
        assert!(matches!(
            recompress(&original, plain, 64),
            Err(BrokerError::BatchDecompressedTooLarge { .. })
        ));
    }
}
