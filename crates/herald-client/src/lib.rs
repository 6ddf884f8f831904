//! A small async Kafka client over tokio, built on the `kafka-protocol` crate.
//!
//! It is what the `herald` CLI (and `herald bench`) use to talk to a broker, and it
//! talks to Herald exactly as it would to Kafka: versions negotiated with
//! ApiVersions, partitions served by the leader Metadata names, records as
//! RecordBatch v2, consumer groups through the classic JoinGroup/SyncGroup protocol.
//!
//! - [`Connection`]: one broker socket; pipelined requests matched by correlation id.
//! - [`Client`]: metadata, connections per broker, and the operations: topics
//!   ([`NewTopic`]), produce ([`ProduceRecord`]), fetch and list offsets, consumer
//!   groups ([`GroupMember`]).
//! - [`partitioner`] and [`assignor`]: the pure parts other clients must agree on
//!   (murmur2 key partitioning, range assignment).
//!
//! Records are encoded and decoded by `herald-records` (re-exported here:
//! [`ProduceRecord`], [`encode_record_batch`], [`ConsumedRecord`], [`partitioner`]),
//! the codec the broker and its front ends share.

pub mod assignor;
mod client;
mod connection;
mod error;
mod fetch;
mod group;
mod produce;
mod topics;

pub use assignor::Assignment;
pub use client::{
    BrokerMetadata, Client, ClientOptions, Metadata, PartitionMetadata, TopicMetadata,
    TopicPartition,
};
pub use connection::{Connection, ConnectionOptions, FRAME_BYTES_MAX, IN_FLIGHT_REQUESTS_MAX};
pub use error::{Error, Result};
pub use fetch::{FetchOptions, FetchedPartition, OffsetSpec, decode_records};
pub use group::{GroupDescription, GroupMember, GroupOptions, ListedGroup, MemberDescription};
pub use herald_records::partitioner;
pub use herald_records::{Compression, ConsumedRecord, ProduceRecord, encode_record_batch};
pub use kafka_protocol::ResponseError;
pub use produce::{Acks, ProduceOptions};
pub use topics::{ConfigEntry, ConfigSource, NewTopic, is_unknown_topic};
