//! What topic `compression.type` costs: CPU seconds per GB (of uncompressed record
//! bytes) to recompress produced batches from one codec into another, on one core,
//! through the same `reencode::recompress` that `Topic::append` calls.
//!
//! `cargo bench -p herald-broker --bench recompress` (HERALD_BENCH_MB sets how much
//! data each pair recompresses; 256 by default). Records are JSON-like events of about
//! 240 bytes, 2,500 per batch (about 0.6 MiB uncompressed), as a batching producer sends.

use std::time::Instant;

use bytes::Bytes;
use herald_broker::reencode::{Codec, recompress};
use herald_records::{ProduceRecord, encode_record_batch};
use kafka_protocol::records::Compression;

const RECORDS_PER_BATCH: usize = 2_500;

fn batch(compression: Compression, seed: usize) -> Vec<u8> {
    let records: Vec<ProduceRecord> = (0..RECORDS_PER_BATCH)
        .map(|i| {
            let n = seed * RECORDS_PER_BATCH + i;
            let value = format!(
                r#"{{"type":"OrderPlaced","order_id":"ORD-{n:010}","customer":"cust-{c}","amount":{a}.{b:02},"currency":"EUR","items":[{{"sku":"SKU-{s}","qty":{q}}},{{"sku":"SKU-{s2}","qty":1}}],"placed_at":"2026-12-02T17:{m:02}:{sec:02}Z","trace":"{t:016x}"}}"#,
                c = n % 9973,
                a = n % 500,
                b = n % 100,
                s = n % 313,
                q = 1 + n % 4,
                s2 = (n * 7) % 313,
                m = n % 60,
                sec = (n / 60) % 60,
                t = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            ProduceRecord {
                key: Some(Bytes::from(format!("cust-{}", n % 9973))),
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
                timestamp_ms: Some(1_764_694_800_000 + n as i64),
            }
        })
        .collect();
    encode_record_batch(&records, compression, 0)
        .expect("bench batch encodes")
        .to_vec()
}

fn main() {
    let total_mb: usize = std::env::var("HERALD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let codecs = [
        ("none", Compression::None, 0u8),
        ("gzip", Compression::Gzip, 1),
        ("snappy", Compression::Snappy, 2),
        ("lz4", Compression::Lz4, 3),
        ("zstd", Compression::Zstd, 4),
    ];
    let plain_bytes = batch(Compression::None, 0).len();
    let batches = (total_mb << 20).div_ceil(plain_bytes).max(1);
    println!(
        "{batches} batches of {RECORDS_PER_BATCH} records, {:.2} MiB uncompressed each; CPU s per GB of uncompressed data, one core",
        plain_bytes as f64 / f64::from(1 << 20)
    );
    println!(
        "{:<8} {:<8} {:>7} {:>10} {:>12}",
        "from", "to", "level", "s/GB", "stored/plain"
    );
    // (from, to, level): None is the codec's Kafka default (gzip 6, lz4 9, zstd 3).
    let pairs = [
        ("none", "gzip", None),
        ("none", "gzip", Some(1)),
        ("none", "snappy", None),
        ("none", "lz4", None),
        ("none", "lz4", Some(1)),
        ("none", "zstd", None),
        ("none", "zstd", Some(1)),
        ("lz4", "zstd", None),
        ("snappy", "zstd", None),
        ("zstd", "lz4", None),
        ("gzip", "zstd", None),
        ("zstd", "none", None),
    ];
    for (from, to, level) in pairs {
        let (_, from_compression, _) = codecs.iter().find(|c| c.0 == from).expect("codec");
        let (_, _, to_id) = codecs.iter().find(|c| c.0 == to).expect("codec");
        // A few distinct batches, reused: the input's shape matters, not its count.
        let inputs: Vec<Vec<u8>> = (0..8).map(|s| batch(*from_compression, s)).collect();
        let target = Codec { id: *to_id, level };
        let mut stored = 0usize;
        let started = Instant::now();
        for i in 0..batches {
            let out = recompress(&inputs[i % inputs.len()], target, 64 << 20)
                .expect("recompress")
                .expect("a different codec");
            stored += out.len();
        }
        let seconds = started.elapsed().as_secs_f64();
        let gb = (batches * plain_bytes) as f64 / 1e9;
        let level = level.map_or("default".to_string(), |l| l.to_string());
        println!(
            "{from:<8} {to:<8} {level:>7} {:>10.2} {:>12.3}",
            seconds / gb,
            stored as f64 / (batches * plain_bytes) as f64
        );
    }
}
