//! Any bytes as a Produce request's records: validation accepts or refuses; whatever it
//! accepts can be walked record by record without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(headers) = herald_log::validate_batches(data) {
        let mut position = 0;
        for header in headers {
            let end = position + header.total_bytes();
            let _ = herald_broker::records::record_offsets_and_timestamps(&data[position..end]);
            position = end;
        }
    }
});
