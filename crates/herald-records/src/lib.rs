//! The record codec every front end, the broker and the client share: building Kafka
//! RecordBatch v2 bytes from records ([`encode_record_batch`], [`encode_records`]),
//! reading records back out of fetched or stored batches ([`decode_records`] into
//! [`ConsumedRecord`]), and choosing a partition for a key exactly as Kafka's Java
//! client does ([`partitioner`]).
//!
//! It sits below the front ends and knows no socket, topic or broker: bytes in, bytes
//! out, on `kafka-protocol`'s codec. The broker's bounded decompression of stored
//! batches (`herald_broker::records`) is not here: its limits are the broker's.

mod decode;
mod encode;
pub mod partitioner;

pub use decode::{ConsumedRecord, DecodeError, decode_records};
pub use encode::{Compression, EncodeError, ProduceRecord, encode_record_batch, encode_records};
