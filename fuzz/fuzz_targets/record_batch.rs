//! Any bytes as a Produce request's records: validation accepts or refuses; whatever it
//! accepts can be walked record by record without a panic. Random bytes almost never
//! carry a valid CRC, so each input is also tried as one batch with its length, magic
//! and CRC fixed up, which lets the fuzzer reach the record walk.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn walk(data: &[u8]) {
    if let Ok(headers) = herald_log::validate_batches(data) {
        let mut position = 0;
        for header in headers {
            let end = position + header.total_bytes();
            let _ = herald_broker::records::record_offsets_and_timestamps(&data[position..end]);
            position = end;
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
