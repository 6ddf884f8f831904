//! Any bytes as a Produce request's records: validation accepts or refuses; whatever it
//! accepts can be walked record by record without a panic. Random bytes almost never
//! carry a valid CRC, so each input is also tried as one batch with its length, magic
//! and CRC fixed up, which lets the fuzzer reach the record walk. Every decoder runs
//! with a small decompression bound (1 MiB), as the broker's own readers and produce
//! check do: whatever the bytes, an error at the bound, never a larger allocation.
#![no_main]

use herald_broker::records::{self, RecordBounds, StoredBatch};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fn walk(data: &[u8]) {
    if let Ok(headers) = herald_log::validate_batches(data) {
        let bounds = RecordBounds::new(LIMIT, LIMIT / 2);
        let _ = records::check_produced(data, &bounds, true);
        let mut position = 0;
        for header in headers {
            let end = position + header.total_bytes();
            let _ = records::record_offsets_and_timestamps(&data[position..end], LIMIT);
            position = end;
        }
        for batch in records::stored_batches(bytes::Bytes::copy_from_slice(data), LIMIT) {
            if let Ok(StoredBatch::Decoded(decoded)) = batch {
                for view in decoded.records().flatten() {
                    let _ = decoded.record(&view);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    walk(data);
    if data.len() >= herald_log::BATCH_HEADER_BYTES && data.len() < i32::MAX as usize {
        let mut batch = data.to_vec();
        let length = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        batch[16] = 2;
        let crc = herald_log::batch_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        walk(&batch);
    }
});
