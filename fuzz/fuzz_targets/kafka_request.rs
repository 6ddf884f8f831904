//! Any bytes as a Kafka request frame (after the length prefix): decode must return a
//! request or a rejection, never panic, never allocate by an unbounded count.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = herald_kafka::dispatch::decode(bytes::Bytes::copy_from_slice(data));
});
