//! `herald serve` settings: flags, then `HERALD_*` environment variables, then the TOML
//! file given with `--config`, then defaults. One struct serves all three sources so a
//! setting cannot exist in one and be missing from another.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use herald_amqp::AmqpConfig;
use herald_broker::{BrokerConfig, FlushPolicy};
use herald_eventstore::EventStoreConfig;
use herald_http::HttpConfig;
use herald_kafka::KafkaConfig;
use herald_registry::RegistryConfig;
use serde::Deserialize;

/// Every `HERALD_*` variable Herald reads; others get a warning at start-up.
pub const KNOWN_ENV_VARS: &[&str] = &[
    "HERALD_CONFIG",
    "HERALD_DATA_DIR",
    "HERALD_KAFKA_LISTEN",
    "HERALD_KAFKA_ADVERTISED",
    "HERALD_HTTP_LISTEN",
    "HERALD_HTTP_BODY_BYTES_MAX",
    "HERALD_HTTP_PUBLISH_RECORDS_MAX",
    "HERALD_HTTP_READ_RECORDS_MAX",
    "HERALD_HTTP_CONNECTIONS_MAX",
    "HERALD_HTTP_HEADER_READ_TIMEOUT_MS",
    "HERALD_HTTP_BODY_READ_TIMEOUT_MS",
    "HERALD_HTTP_KEEP_ALIVE_IDLE_MS",
    "HERALD_REGISTRY_LISTEN",
    "HERALD_REGISTRY_REQUEST_BYTES_MAX",
    "HERALD_REGISTRY_SCHEMA_BYTES_MAX",
    "HERALD_REGISTRY_CONNECTIONS_MAX",
    "HERALD_EVENTSTORE_LISTEN",
    "HERALD_EVENTSTORE_MESSAGE_BYTES_MAX",
    "HERALD_EVENTSTORE_STREAMS_PER_CONNECTION_MAX",
    "HERALD_EVENTSTORE_HANDSHAKE_TIMEOUT_MS",
    "HERALD_EVENTSTORE_KEEP_ALIVE_INTERVAL_MS",
    "HERALD_EVENTSTORE_KEEP_ALIVE_TIMEOUT_MS",
    "HERALD_NODE_ID",
    "HERALD_AUTO_CREATE_TOPICS",
    "HERALD_DEFAULT_PARTITIONS",
    "HERALD_FLUSH",
    "HERALD_SEGMENT_BYTES",
    "HERALD_SEGMENT_MS",
    "HERALD_REQUEST_BYTES_MAX",
    "HERALD_CONNECTIONS_MAX",
    "HERALD_FETCH_BYTES_MAX",
    "HERALD_MEMORY_BUDGET_BYTES",
    "HERALD_IN_FLIGHT_REQUESTS_MAX",
    "HERALD_CONNECTIONS_MAX_PER_IP",
    "HERALD_CONNECTIONS_MAX_IDLE_MS",
    "HERALD_SEND_TIMEOUT_MS",
    "HERALD_REQUEST_READ_TIMEOUT_MS",
    "HERALD_PARTITIONS_PER_TOPIC_MAX",
    "HERALD_OPEN_SEALED_FILES_MAX",
    "HERALD_META_CACHE_BYTES",
    "HERALD_EVENTSTORE_INDEX_LAG_MAX",
    "HERALD_GROUP_INITIAL_REBALANCE_DELAY_MS",
    "HERALD_GROUP_SESSION_TIMEOUT_MIN_MS",
    "HERALD_GROUP_SESSION_TIMEOUT_MAX_MS",
    "HERALD_COMPACTION_CHECK_INTERVAL_MS",
    "HERALD_COMPACTION_MAP_BYTES_MAX",
    "HERALD_BATCH_DECOMPRESSED_BYTES_MAX",
    "HERALD_RECORD_BYTES_MAX",
    "HERALD_TRANSACTION_MAX_TIMEOUT_MS",
    "HERALD_TRANSACTIONAL_ID_EXPIRATION_MS",
    "HERALD_TRANSACTIONAL_IDS_MAX",
    "HERALD_RETENTION_MS",
    "HERALD_RETENTION_BYTES",
    "HERALD_RETENTION_CHECK_INTERVAL_MS",
    "HERALD_LOG",
    "HERALD_LOG_FORMAT",
    "HERALD_BOOTSTRAP",
    // Test-only: makes the log's writes or fsyncs fail on cue (see herald-log's fault.rs).
    herald_log::FAULT_INJECT_ENV,
];

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// TOML file with any of these settings (keys as the long flag names with '_').
    #[arg(long, env = "HERALD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where topics, offsets and metadata live [default: ./herald-data]
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener host:port [default: 127.0.0.1:9092]
    #[arg(long, env = "HERALD_KAFKA_LISTEN")]
    pub kafka_listen: Option<String>,
    /// host:port clients are told to connect to [default: the listen address]
    #[arg(long, env = "HERALD_KAFKA_ADVERTISED")]
    pub kafka_advertised: Option<String>,
    /// HTTP listener (health, metrics, API) host:port, or `off` [default: 127.0.0.1:8080]
    #[arg(long, env = "HERALD_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// AMQP 0-9-1 listener (RabbitMQ clients) host:port, or `off` [default: 127.0.0.1:5672]
    #[arg(long, env = "HERALD_AMQP_LISTEN")]
    pub amqp_listen: Option<String>,
    /// Largest AMQP frame offered to clients, bytes [default: 131072]
    #[arg(long, env = "HERALD_AMQP_FRAME_MAX")]
    pub amqp_frame_max: Option<u32>,
    /// Channels per AMQP connection [default: 2047]
    #[arg(long, env = "HERALD_AMQP_CHANNEL_MAX")]
    pub amqp_channel_max: Option<u16>,
    /// AMQP heartbeat offered to clients, seconds; 0 turns it off [default: 60]
    #[arg(long, env = "HERALD_AMQP_HEARTBEAT_S")]
    pub amqp_heartbeat_s: Option<u16>,
    /// Largest AMQP message body [default: 16777216]
    #[arg(long, env = "HERALD_AMQP_MESSAGE_BYTES_MAX")]
    pub amqp_message_bytes_max: Option<usize>,
    /// Unacked deliveries an AMQP consumer without a prefetch may hold [default: 1000]
    #[arg(long, env = "HERALD_AMQP_UNACKED_PER_CONSUMER_MAX")]
    pub amqp_unacked_per_consumer_max: Option<u32>,
    /// How long an AMQP client has from connecting to connection.open, ms [default: 10000]
    #[arg(long, env = "HERALD_AMQP_HANDSHAKE_TIMEOUT_MS")]
    pub amqp_handshake_timeout_ms: Option<u64>,
    /// Bytes of frames waiting in one AMQP connection's writer at most [default: 4194304]
    #[arg(long, env = "HERALD_AMQP_WRITE_QUEUE_BYTES")]
    pub amqp_write_queue_bytes: Option<usize>,
    /// Event store listener (KurrentDB/EventStoreDB gRPC clients) host:port, or `off`
    /// [default: 127.0.0.1:2113]
    #[arg(long, env = "HERALD_EVENTSTORE_LISTEN")]
    pub eventstore_listen: Option<String>,
    /// Largest gRPC message the event store reads or writes, bytes [default: 4194304]
    #[arg(long, env = "HERALD_EVENTSTORE_MESSAGE_BYTES_MAX")]
    pub eventstore_message_bytes_max: Option<usize>,
    /// Calls (HTTP/2 streams) open at once on one event store connection, subscriptions
    /// included [default: 100]
    #[arg(long, env = "HERALD_EVENTSTORE_STREAMS_PER_CONNECTION_MAX")]
    pub eventstore_streams_per_connection_max: Option<u32>,
    /// How long an event store client has from connecting to its HTTP/2 preface, ms
    /// [default: 10000]
    #[arg(long, env = "HERALD_EVENTSTORE_HANDSHAKE_TIMEOUT_MS")]
    pub eventstore_handshake_timeout_ms: Option<u64>,
    /// How often an event store connection is pinged (HTTP/2 PING), ms [default: 10000]
    #[arg(long, env = "HERALD_EVENTSTORE_KEEP_ALIVE_INTERVAL_MS")]
    pub eventstore_keep_alive_interval_ms: Option<u64>,
    /// Close an event store connection whose ping is not answered this long, ms
    /// [default: 10000]
    #[arg(long, env = "HERALD_EVENTSTORE_KEEP_ALIVE_TIMEOUT_MS")]
    pub eventstore_keep_alive_timeout_ms: Option<u64>,
    /// Schema registry (Confluent's REST API) listener host:port, or `off`
    /// [default: 127.0.0.1:8081]
    #[arg(long, env = "HERALD_REGISTRY_LISTEN")]
    pub registry_listen: Option<String>,
    /// Largest schema registry request body [default: 16777216]
    #[arg(long, env = "HERALD_REGISTRY_REQUEST_BYTES_MAX")]
    pub registry_request_bytes_max: Option<usize>,
    /// Largest schema text the registry accepts [default: 1048576]
    #[arg(long, env = "HERALD_REGISTRY_SCHEMA_BYTES_MAX")]
    pub registry_schema_bytes_max: Option<usize>,
    /// Schema registry connections at once (connections_max_per_ip also applies)
    /// [default: 1024]
    #[arg(long, env = "HERALD_REGISTRY_CONNECTIONS_MAX")]
    pub registry_connections_max: Option<usize>,
    /// Largest HTTP request body [default: 8388608]
    #[arg(long, env = "HERALD_HTTP_BODY_BYTES_MAX")]
    pub http_body_bytes_max: Option<usize>,
    /// Most records in one HTTP publish [default: 10000]
    #[arg(long, env = "HERALD_HTTP_PUBLISH_RECORDS_MAX")]
    pub http_publish_records_max: Option<usize>,
    /// Most records one HTTP read returns [default: 10000]
    #[arg(long, env = "HERALD_HTTP_READ_RECORDS_MAX")]
    pub http_read_records_max: Option<usize>,
    /// Most HTTP connections at once (connections_max_per_ip also applies) [default: 4096]
    #[arg(long, env = "HERALD_HTTP_CONNECTIONS_MAX")]
    pub http_connections_max: Option<usize>,
    /// Close an HTTP connection whose request head does not arrive whole this long after
    /// its first byte (or the accept) [default: 10000]
    #[arg(long, env = "HERALD_HTTP_HEADER_READ_TIMEOUT_MS")]
    pub http_header_read_timeout_ms: Option<u64>,
    /// Answer 408 and close when an HTTP request body does not arrive whole this long
    /// after its head [default: 30000]
    #[arg(long, env = "HERALD_HTTP_BODY_READ_TIMEOUT_MS")]
    pub http_body_read_timeout_ms: Option<u64>,
    /// Close a keep-alive HTTP connection with no request in progress this long
    /// [default: 60000]
    #[arg(long, env = "HERALD_HTTP_KEEP_ALIVE_IDLE_MS")]
    pub http_keep_alive_idle_ms: Option<u64>,
    /// This broker's id [default: 1]
    #[arg(long, env = "HERALD_NODE_ID")]
    pub node_id: Option<i32>,
    /// Create topics on first use by Metadata or Produce [default: true]
    #[arg(long, env = "HERALD_AUTO_CREATE_TOPICS")]
    pub auto_create_topics: Option<bool>,
    /// Partitions of a topic created without a count [default: 1]
    #[arg(long, env = "HERALD_DEFAULT_PARTITIONS")]
    pub default_partitions: Option<u32>,
    /// always | interval:<ms> | os  [default: always]
    #[arg(long, env = "HERALD_FLUSH")]
    pub flush: Option<String>,
    /// Segment size before rolling [default: 1073741824]
    #[arg(long, env = "HERALD_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Segment age before rolling [default: 604800000]
    #[arg(long, env = "HERALD_SEGMENT_MS")]
    pub segment_ms: Option<i64>,
    /// Largest request frame accepted [default: 104857600]
    #[arg(long, env = "HERALD_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// Most client connections at once [default: 10000]
    #[arg(long, env = "HERALD_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Largest fetch response [default: 57671680]
    #[arg(long, env = "HERALD_FETCH_BYTES_MAX")]
    pub fetch_bytes_max: Option<usize>,
    /// Bytes of request and response buffers all listeners may hold at once; past it,
    /// sockets are not read and fetches are cut down [default: 536870912]
    #[arg(long, env = "HERALD_MEMORY_BUDGET_BYTES")]
    pub memory_budget_bytes: Option<usize>,
    /// Kafka requests read ahead of their responses on one connection [default: 256]
    #[arg(long, env = "HERALD_IN_FLIGHT_REQUESTS_MAX")]
    pub in_flight_requests_max: Option<usize>,
    /// Connections one client address may hold on each listener [default: 1000]
    #[arg(long, env = "HERALD_CONNECTIONS_MAX_PER_IP")]
    pub connections_max_per_ip: Option<usize>,
    /// Close a Kafka connection idle (nothing sent, nothing owed) this long [default: 600000]
    #[arg(long, env = "HERALD_CONNECTIONS_MAX_IDLE_MS")]
    pub connections_max_idle_ms: Option<u64>,
    /// Close a Kafka or HTTP connection whose response makes no progress into the socket
    /// this long (the client stopped reading) [default: 60000]
    #[arg(long, env = "HERALD_SEND_TIMEOUT_MS")]
    pub send_timeout_ms: Option<u64>,
    /// Close a Kafka connection whose request does not arrive whole this long after its
    /// length [default: 30000]
    #[arg(long, env = "HERALD_REQUEST_READ_TIMEOUT_MS")]
    pub request_read_timeout_ms: Option<u64>,
    /// Most partitions one Kafka DescribeTopicPartitions answer lists (clients page
    /// through the rest) [default: 2000]
    #[arg(long, env = "HERALD_DESCRIBE_TOPIC_PARTITIONS_MAX")]
    pub describe_topic_partitions_max: Option<usize>,
    /// Most partitions in one topic [default: 10000]
    #[arg(long, env = "HERALD_PARTITIONS_PER_TOPIC_MAX")]
    pub partitions_per_topic_max: Option<u32>,
    /// Sealed-segment files kept open at once; more are opened on demand [default: 4096]
    #[arg(long, env = "HERALD_OPEN_SEALED_FILES_MAX")]
    pub open_sealed_files_max: Option<usize>,
    /// Memory for the meta store's page cache (topics, offsets, queue state and the
    /// event store's stream index) [default: 268435456]
    #[arg(long, env = "HERALD_META_CACHE_BYTES")]
    pub meta_cache_bytes: Option<usize>,
    /// Most events the event store's index may trail the appends answered; an append
    /// past it waits for the indexer [default: 20000]
    #[arg(long, env = "HERALD_EVENTSTORE_INDEX_LAG_MAX")]
    pub eventstore_index_lag_max: Option<u64>,
    /// How long a new group waits for more members before its first rebalance [default: 3000]
    #[arg(long, env = "HERALD_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a consumer may ask for [default: 6000]
    #[arg(long, env = "HERALD_GROUP_SESSION_TIMEOUT_MIN_MS")]
    pub group_session_timeout_min_ms: Option<i32>,
    /// Largest session timeout a consumer may ask for [default: 1800000]
    #[arg(long, env = "HERALD_GROUP_SESSION_TIMEOUT_MAX_MS")]
    pub group_session_timeout_max_ms: Option<i32>,
    /// How often the cleaner checks compacted topics; 0 turns it off [default: 15000]
    #[arg(long, env = "HERALD_COMPACTION_CHECK_INTERVAL_MS")]
    pub compaction_check_interval_ms: Option<u64>,
    /// Memory for the cleaner's key map; more keys take several passes [default: 134217728]
    #[arg(long, env = "HERALD_COMPACTION_MAP_BYTES_MAX")]
    pub compaction_map_bytes_max: Option<usize>,
    /// Most bytes a compressed record batch may decompress to: produce refuses more
    /// (MESSAGE_TOO_LARGE), readers step over stored batches that expand further
    /// [default: 67108864]
    #[arg(long, env = "HERALD_BATCH_DECOMPRESSED_BYTES_MAX")]
    pub batch_decompressed_bytes_max: Option<usize>,
    /// Most bytes one record may take; produce refuses more [default: 33554432]
    #[arg(long, env = "HERALD_RECORD_BYTES_MAX")]
    pub record_bytes_max: Option<usize>,
    /// Longest transaction timeout a producer may ask for, in ms (Kafka's
    /// transaction.max.timeout.ms) [default: 900000]
    #[arg(long, env = "HERALD_TRANSACTION_MAX_TIMEOUT_MS")]
    pub transaction_max_timeout_ms: Option<i32>,
    /// How long an idle transactional id is remembered, in ms (Kafka's
    /// transactional.id.expiration.ms) [default: 604800000]
    #[arg(long, env = "HERALD_TRANSACTIONAL_ID_EXPIRATION_MS")]
    pub transactional_id_expiration_ms: Option<i64>,
    /// Most transactional ids kept at once [default: 100000]
    #[arg(long, env = "HERALD_TRANSACTIONAL_IDS_MAX")]
    pub transactional_ids_max: Option<usize>,
    /// How long topics keep data, in ms; -1 keeps it forever (topic config retention.ms
    /// overrides) [default: 604800000]
    #[arg(long, env = "HERALD_RETENTION_MS", allow_hyphen_values = true)]
    pub retention_ms: Option<i64>,
    /// Bytes each partition keeps; -1 is no limit (topic config retention.bytes
    /// overrides) [default: -1]
    #[arg(long, env = "HERALD_RETENTION_BYTES", allow_hyphen_values = true)]
    pub retention_bytes: Option<i64>,
    /// How often old segments are looked for and deleted, in ms [default: 30000]
    #[arg(long, env = "HERALD_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
}

macro_rules! fill_from {
    ($to:ident, $from:ident, $($field:ident),* $(,)?) => {
        $( if $to.$field.is_none() { $to.$field = $from.$field; } )*
    };
}

impl ServeSettings {
    /// Fill what flags and env left unset from the TOML file, if one was given.
    pub fn with_file(mut self) -> anyhow::Result<ServeSettings> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = read_file(&path)?;
        fill_from!(
            self,
            file,
            data_dir,
            kafka_listen,
            kafka_advertised,
            http_listen,
            amqp_listen,
            amqp_frame_max,
            amqp_channel_max,
            amqp_heartbeat_s,
            amqp_message_bytes_max,
            amqp_unacked_per_consumer_max,
            amqp_handshake_timeout_ms,
            amqp_write_queue_bytes,
            eventstore_listen,
            eventstore_message_bytes_max,
            eventstore_streams_per_connection_max,
            eventstore_handshake_timeout_ms,
            eventstore_keep_alive_interval_ms,
            eventstore_keep_alive_timeout_ms,
            registry_listen,
            registry_request_bytes_max,
            registry_schema_bytes_max,
            registry_connections_max,
            http_body_bytes_max,
            http_publish_records_max,
            http_read_records_max,
            http_connections_max,
            http_header_read_timeout_ms,
            http_body_read_timeout_ms,
            http_keep_alive_idle_ms,
            node_id,
            auto_create_topics,
            default_partitions,
            flush,
            segment_bytes,
            segment_ms,
            request_bytes_max,
            connections_max,
            fetch_bytes_max,
            memory_budget_bytes,
            in_flight_requests_max,
            connections_max_per_ip,
            connections_max_idle_ms,
            send_timeout_ms,
            request_read_timeout_ms,
            describe_topic_partitions_max,
            partitions_per_topic_max,
            open_sealed_files_max,
            meta_cache_bytes,
            eventstore_index_lag_max,
            group_initial_rebalance_delay_ms,
            group_session_timeout_min_ms,
            group_session_timeout_max_ms,
            compaction_check_interval_ms,
            compaction_map_bytes_max,
            batch_decompressed_bytes_max,
            record_bytes_max,
            transaction_max_timeout_ms,
            transactional_id_expiration_ms,
            transactional_ids_max,
            retention_ms,
            retention_bytes,
            retention_check_interval_ms,
        );
        Ok(self)
    }

    pub fn broker_config(&self) -> anyhow::Result<BrokerConfig> {
        let mut c = BrokerConfig::new(
            self.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("herald-data")),
        );
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = self.memory_budget_bytes {
            c.memory_budget_bytes = positive("memory_budget_bytes", v)?;
        }
        if let Some(v) = self.auto_create_topics {
            c.auto_create_topics = v;
        }
        if let Some(v) = self.default_partitions {
            if v == 0 {
                bail!("default_partitions must be at least 1");
            }
            c.default_partitions = v;
        }
        if let Some(v) = &self.flush {
            c.flush = FlushPolicy::parse(v).map_err(anyhow::Error::msg)?;
        }
        if let Some(v) = self.segment_bytes {
            if !(1024..=u64::from(u32::MAX)).contains(&v) {
                bail!("segment_bytes must be between 1024 and 4294967295, not {v}");
            }
            c.log.segment_bytes_max = v;
            c.operator_topic_defaults.insert("segment.bytes");
        }
        if let Some(v) = self.segment_ms {
            if v < 1 {
                bail!("segment_ms must be at least 1, not {v}");
            }
            c.log.segment_ms_max = v;
            c.operator_topic_defaults.insert("segment.ms");
        }
        if let Some(v) = self.retention_ms {
            if v < -1 {
                bail!("retention_ms must be -1 (keep forever) or at least 0, not {v}");
            }
            c.retention_ms = v;
            c.operator_topic_defaults.insert("retention.ms");
        }
        if let Some(v) = self.retention_bytes {
            if v < -1 {
                bail!("retention_bytes must be -1 (no limit) or at least 0, not {v}");
            }
            c.retention_bytes = v;
            c.operator_topic_defaults.insert("retention.bytes");
        }
        if let Some(v) = self.retention_check_interval_ms {
            if v == 0 {
                bail!("retention_check_interval_ms must be at least 1");
            }
            c.retention_check_interval_ms = v;
        }
        if let Some(v) = self.partitions_per_topic_max {
            c.partitions_per_topic_max = v;
        }
        if let Some(v) = self.open_sealed_files_max {
            if v == 0 {
                bail!("open_sealed_files_max must be at least 1");
            }
            c.open_sealed_files_max = v;
        }
        if let Some(v) = self.meta_cache_bytes {
            c.meta_cache_bytes = positive("meta_cache_bytes", v)?;
        }
        if let Some(v) = self.eventstore_index_lag_max {
            c.eventstore_index_lag_max = positive("eventstore_index_lag_max", v)?;
        }
        if let Some(v) = self.group_initial_rebalance_delay_ms {
            c.group_initial_rebalance_delay_ms = v;
        }
        if let Some(v) = self.group_session_timeout_min_ms {
            c.group_session_timeout_min_ms = v;
        }
        if let Some(v) = self.group_session_timeout_max_ms {
            c.group_session_timeout_max_ms = v;
        }
        if let Some(v) = self.compaction_check_interval_ms {
            c.compaction_check_interval_ms = v;
        }
        if let Some(v) = self.compaction_map_bytes_max {
            if v < 1024 {
                bail!("compaction_map_bytes_max must be at least 1024, not {v}");
            }
            c.compaction_map_bytes_max = v;
        }
        if let Some(v) = self.batch_decompressed_bytes_max {
            c.batch_decompressed_bytes_max = positive("batch_decompressed_bytes_max", v)?;
        }
        if let Some(v) = self.record_bytes_max {
            c.record_bytes_max = positive("record_bytes_max", v)?;
        }
        if let Some(v) = self.transaction_max_timeout_ms {
            if v < 1 {
                bail!("transaction_max_timeout_ms must be at least 1");
            }
            c.transaction_max_timeout_ms = v;
        }
        if let Some(v) = self.transactional_id_expiration_ms {
            if v < 1 {
                bail!("transactional_id_expiration_ms must be at least 1");
            }
            c.transactional_id_expiration_ms = v;
        }
        if let Some(v) = self.transactional_ids_max {
            c.transactional_ids_max = positive("transactional_ids_max", v)?;
        }
        if c.group_session_timeout_min_ms > c.group_session_timeout_max_ms {
            bail!("group_session_timeout_min_ms is larger than group_session_timeout_max_ms");
        }
        Ok(c)
    }

    /// The AMQP listener's settings, or `None` when it is turned off.
    pub fn amqp_config(&self) -> anyhow::Result<Option<AmqpConfig>> {
        let text = self
            .amqp_listen
            .as_deref()
            .unwrap_or("127.0.0.1:5672")
            .trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let listen: SocketAddr = text.parse().with_context(|| {
            format!(
                "amqp_listen {text:?} is not a host:port address such as 127.0.0.1:5672, or off"
            )
        })?;
        let mut c = AmqpConfig::new(listen);
        if let Some(v) = self.amqp_frame_max {
            if v < 4096 {
                bail!("amqp_frame_max must be at least 4096 (the protocol's minimum)");
            }
            c.frame_max = v;
        }
        if let Some(v) = self.amqp_channel_max {
            c.channel_max = v;
        }
        if let Some(v) = self.amqp_heartbeat_s {
            c.heartbeat_s = v;
        }
        if let Some(v) = self.amqp_message_bytes_max {
            c.message_bytes_max = positive("amqp_message_bytes_max", v)?;
        }
        if let Some(v) = self.amqp_unacked_per_consumer_max {
            if v == 0 {
                bail!("amqp_unacked_per_consumer_max must be at least 1");
            }
            c.unacked_per_consumer_max = v;
        }
        if let Some(v) = self.amqp_write_queue_bytes {
            // Charges are counted in u32 permits: a bound above 4 GiB would wrap.
            if v > u32::MAX as usize {
                bail!("amqp_write_queue_bytes is at most {} (4 GiB)", u32::MAX);
            }
            c.write_queue_bytes = positive("amqp_write_queue_bytes", v)?;
        }
        if let Some(v) = self.amqp_handshake_timeout_ms {
            c.handshake_timeout_ms = positive("amqp_handshake_timeout_ms", v)?;
        }
        if let Some(v) = self.connections_max {
            c.connections_max = positive("connections_max", v)?;
        }
        if let Some(v) = self.connections_max_per_ip {
            c.connections_max_per_ip = positive("connections_max_per_ip", v)?;
        }
        if let Some(v) = self.send_timeout_ms {
            c.send_timeout_ms = positive("send_timeout_ms", v)?;
        }
        if let Some(v) = self.request_read_timeout_ms {
            c.read_timeout_ms = positive("request_read_timeout_ms", v)?;
        }
        Ok(Some(c))
    }

    /// The schema registry listener's settings, or `None` when it is turned off.
    pub fn registry_config(&self) -> anyhow::Result<Option<RegistryConfig>> {
        let text = self
            .registry_listen
            .as_deref()
            .unwrap_or(herald_registry::LISTEN_DEFAULT)
            .trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let listen: SocketAddr = text.parse().with_context(|| {
            format!(
                "registry_listen {text:?} is not a host:port address such as 127.0.0.1:8081, or off"
            )
        })?;
        let mut c = RegistryConfig::new(listen);
        if let Some(v) = self.registry_request_bytes_max {
            c.request_bytes_max = positive("registry_request_bytes_max", v)?;
        }
        if let Some(v) = self.registry_schema_bytes_max {
            c.schema_bytes_max = positive("registry_schema_bytes_max", v)?;
        }
        if let Some(v) = self.registry_connections_max {
            c.connections_max = positive("registry_connections_max", v)?;
        }
        if let Some(v) = self.connections_max_per_ip {
            c.connections_max_per_ip = positive("connections_max_per_ip", v)?;
        }
        Ok(Some(c))
    }

    /// The event store listener's settings, or `None` when it is turned off.
    pub fn eventstore_config(&self) -> anyhow::Result<Option<EventStoreConfig>> {
        // KurrentDB's port by default, on loopback.
        let text = self
            .eventstore_listen
            .as_deref()
            .unwrap_or(herald_eventstore::LISTEN_DEFAULT)
            .trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let listen: SocketAddr = text.parse().with_context(|| {
            format!(
                "eventstore_listen {text:?} is not a host:port address such as 127.0.0.1:2113, or off"
            )
        })?;
        let mut c = EventStoreConfig::new(listen);
        if let Some(v) = self.eventstore_message_bytes_max {
            // tonic's decoder needs room for a message's 5-byte header and more.
            if v < 1024 {
                bail!("eventstore_message_bytes_max must be at least 1024, not {v}");
            }
            c.message_bytes_max = v;
        }
        if let Some(v) = self.eventstore_streams_per_connection_max {
            c.streams_per_connection_max = positive("eventstore_streams_per_connection_max", v)?;
        }
        if let Some(v) = self.eventstore_handshake_timeout_ms {
            c.handshake_timeout_ms = positive("eventstore_handshake_timeout_ms", v)?;
        }
        if let Some(v) = self.eventstore_keep_alive_interval_ms {
            c.keep_alive_interval_ms = positive("eventstore_keep_alive_interval_ms", v)?;
        }
        if let Some(v) = self.eventstore_keep_alive_timeout_ms {
            c.keep_alive_timeout_ms = positive("eventstore_keep_alive_timeout_ms", v)?;
        }
        if let Some(v) = self.connections_max {
            c.connections_max = positive("connections_max", v)?;
        }
        if let Some(v) = self.connections_max_per_ip {
            c.connections_max_per_ip = positive("connections_max_per_ip", v)?;
        }
        Ok(Some(c))
    }

    /// The HTTP listener's settings, or `None` when it is turned off.
    pub fn http_config(&self) -> anyhow::Result<Option<HttpConfig>> {
        let text = self
            .http_listen
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let listen: SocketAddr = text.parse().with_context(|| {
            format!(
                "http_listen {text:?} is not a host:port address such as 127.0.0.1:8080, or off"
            )
        })?;
        let mut c = HttpConfig::new(listen);
        for (name, value, into) in [
            (
                "http_body_bytes_max",
                self.http_body_bytes_max,
                &mut c.body_bytes_max,
            ),
            (
                "http_publish_records_max",
                self.http_publish_records_max,
                &mut c.limits.publish_records_max,
            ),
            (
                "http_read_records_max",
                self.http_read_records_max,
                &mut c.limits.read_records_max,
            ),
        ] {
            if let Some(v) = value {
                if v == 0 {
                    bail!("{name} must be at least 1");
                }
                *into = v;
            }
        }
        if let Some(v) = self.http_connections_max {
            c.connections_max = positive("http_connections_max", v)?;
        }
        if let Some(v) = self.connections_max_per_ip {
            c.connections_max_per_ip = positive("connections_max_per_ip", v)?;
        }
        if let Some(v) = self.http_header_read_timeout_ms {
            c.header_read_timeout_ms = positive("http_header_read_timeout_ms", v)?;
        }
        if let Some(v) = self.http_body_read_timeout_ms {
            c.body_read_timeout_ms = positive("http_body_read_timeout_ms", v)?;
        }
        if let Some(v) = self.http_keep_alive_idle_ms {
            c.keep_alive_idle_ms = positive("http_keep_alive_idle_ms", v)?;
        }
        if let Some(v) = self.send_timeout_ms {
            c.send_timeout_ms = positive("send_timeout_ms", v)?;
        }
        Ok(Some(c))
    }

    pub fn kafka_config(&self) -> anyhow::Result<KafkaConfig> {
        let listen_text = self.kafka_listen.as_deref().unwrap_or("127.0.0.1:9092");
        let listen: SocketAddr = listen_text.parse().with_context(|| {
            format!(
                "kafka_listen {listen_text:?} is not a host:port address such as 127.0.0.1:9092"
            )
        })?;
        let mut c = KafkaConfig::new(listen);
        if let Some(advertised) = &self.kafka_advertised {
            let (host, port) = advertised
                .rsplit_once(':')
                .with_context(|| format!("kafka_advertised {advertised:?} must be host:port"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("kafka_advertised {advertised:?} has an invalid port"))?;
            if port == 0 {
                bail!("kafka_advertised must not use port 0");
            }
            c.advertised_host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            c.advertised_port = i32::from(port);
        }
        if let Some(v) = self.request_bytes_max {
            c.request_bytes_max = v;
        }
        if let Some(v) = self.connections_max {
            c.connections_max = v;
        }
        if let Some(v) = self.fetch_bytes_max {
            c.fetch_bytes_max = v;
        }
        if let Some(v) = self.in_flight_requests_max {
            c.in_flight_requests_max = positive("in_flight_requests_max", v)?;
        }
        if let Some(v) = self.connections_max_per_ip {
            c.connections_max_per_ip = positive("connections_max_per_ip", v)?;
        }
        if let Some(v) = self.connections_max_idle_ms {
            c.connections_max_idle_ms = positive("connections_max_idle_ms", v)?;
        }
        if let Some(v) = self.send_timeout_ms {
            c.send_timeout_ms = positive("send_timeout_ms", v)?;
        }
        if let Some(v) = self.request_read_timeout_ms {
            c.request_read_timeout_ms = positive("request_read_timeout_ms", v)?;
        }
        if let Some(v) = self.describe_topic_partitions_max {
            c.describe_topic_partitions_max = positive("describe_topic_partitions_max", v)?;
        }
        Ok(c)
    }
}

/// A limit of 0 would stop the listener from working: say so at start-up.
fn positive<T: PartialEq + Default>(name: &str, value: T) -> anyhow::Result<T> {
    if value == T::default() {
        bail!("{name} must be at least 1");
    }
    Ok(value)
}

fn read_file(path: &Path) -> anyhow::Result<ServeSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

/// Names of set `HERALD_*` variables that Herald does not know.
pub fn unknown_env_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("HERALD_") && !KNOWN_ENV_VARS.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_only_what_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\nflush = \"interval:50\"\ndefault_partitions = 3\n",
        )
        .unwrap();
        let settings = ServeSettings {
            config: Some(path),
            data_dir: Some("/from/flag".into()),
            ..Default::default()
        }
        .with_file()
        .unwrap();
        let broker = settings.broker_config().unwrap();
        assert_eq!(broker.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(broker.flush, FlushPolicy::Interval { interval_ms: 50 });
        assert_eq!(broker.default_partitions, 3);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "data_dirr = \"x\"\n").unwrap();
        let err = ServeSettings {
            config: Some(path),
            ..Default::default()
        }
        .with_file()
        .unwrap_err();
        assert!(format!("{err:#}").contains("data_dirr"), "{err:#}");
        let bad = ServeSettings {
            kafka_listen: Some("localhost".into()),
            ..Default::default()
        };
        assert!(bad.kafka_config().is_err());
        let zero = ServeSettings {
            kafka_advertised: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        assert!(zero.kafka_config().is_err());
        let flush = ServeSettings {
            flush: Some("sometimes".into()),
            ..Default::default()
        };
        assert!(flush.broker_config().is_err());
    }

    #[test]
    fn retention_settings_are_checked_and_marked_as_set_by_the_operator() {
        let defaults = ServeSettings::default().broker_config().unwrap();
        assert_eq!(defaults.retention_ms, 604_800_000);
        assert_eq!(defaults.retention_bytes, -1);
        assert_eq!(defaults.retention_check_interval_ms, 30_000);
        assert!(defaults.operator_topic_defaults.is_empty());
        let set = ServeSettings {
            retention_ms: Some(-1),
            retention_bytes: Some(1 << 20),
            retention_check_interval_ms: Some(500),
            ..Default::default()
        }
        .broker_config()
        .unwrap();
        assert_eq!(set.retention_ms, -1);
        assert_eq!(set.retention_bytes, 1 << 20);
        assert_eq!(set.retention_check_interval_ms, 500);
        assert!(set.operator_topic_defaults.contains("retention.ms"));
        assert!(set.operator_topic_defaults.contains("retention.bytes"));
        for bad in [
            ServeSettings {
                retention_ms: Some(-2),
                ..Default::default()
            },
            ServeSettings {
                retention_bytes: Some(-5),
                ..Default::default()
            },
            ServeSettings {
                retention_check_interval_ms: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.broker_config().is_err());
        }
    }

    #[test]
    fn http_listener_defaults_to_8080_and_can_be_turned_off() {
        let default = ServeSettings::default().http_config().unwrap().unwrap();
        assert_eq!(default.listen.to_string(), "127.0.0.1:8080");
        for off in ["off", "OFF", ""] {
            let s = ServeSettings {
                http_listen: Some(off.into()),
                ..Default::default()
            };
            assert!(s.http_config().unwrap().is_none(), "{off:?}");
        }
        let bad = ServeSettings {
            http_listen: Some("localhost".into()),
            ..Default::default()
        };
        let err = format!("{:#}", bad.http_config().unwrap_err());
        assert!(err.contains("http_listen"), "{err}");
    }

    #[test]
    fn http_connection_limits_have_defaults_and_refuse_zero() {
        let default = ServeSettings::default().http_config().unwrap().unwrap();
        assert_eq!(default.connections_max, 4096);
        assert_eq!(
            default.connections_max_per_ip,
            herald_broker::limits::CONNECTIONS_MAX_PER_IP_DEFAULT
        );
        assert_eq!(default.header_read_timeout_ms, 10_000);
        assert_eq!(default.body_read_timeout_ms, 30_000);
        assert_eq!(default.keep_alive_idle_ms, 60_000);
        let set = ServeSettings {
            http_connections_max: Some(10),
            connections_max_per_ip: Some(2),
            http_header_read_timeout_ms: Some(300),
            http_body_read_timeout_ms: Some(400),
            http_keep_alive_idle_ms: Some(500),
            ..Default::default()
        }
        .http_config()
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                set.connections_max,
                set.connections_max_per_ip,
                set.header_read_timeout_ms,
                set.body_read_timeout_ms,
                set.keep_alive_idle_ms
            ),
            (10, 2, 300, 400, 500)
        );
        let zero = ServeSettings {
            http_keep_alive_idle_ms: Some(0),
            ..Default::default()
        };
        let err = format!("{:#}", zero.http_config().unwrap_err());
        assert!(err.contains("http_keep_alive_idle_ms"), "{err}");
    }

    #[test]
    fn eventstore_listener_is_on_by_default_and_checks_its_limits() {
        let default = ServeSettings::default()
            .eventstore_config()
            .unwrap()
            .unwrap();
        assert_eq!(default.listen.to_string(), "127.0.0.1:2113");
        let off = ServeSettings {
            eventstore_listen: Some("off".into()),
            ..Default::default()
        };
        assert!(off.eventstore_config().unwrap().is_none());
        let on = ServeSettings {
            eventstore_listen: Some("127.0.0.1:2113".into()),
            ..Default::default()
        };
        let c = on.eventstore_config().unwrap().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2113");
        assert_eq!(
            c.message_bytes_max,
            herald_eventstore::MESSAGE_BYTES_MAX_DEFAULT
        );
        assert_eq!(
            c.streams_per_connection_max,
            herald_eventstore::STREAMS_PER_CONNECTION_MAX_DEFAULT
        );
        let set = ServeSettings {
            eventstore_message_bytes_max: Some(1 << 20),
            eventstore_streams_per_connection_max: Some(8),
            connections_max: Some(5),
            ..on.clone()
        }
        .eventstore_config()
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                set.message_bytes_max,
                set.streams_per_connection_max,
                set.connections_max
            ),
            (1 << 20, 8, 5)
        );
        for bad in [
            ServeSettings {
                eventstore_listen: Some("localhost".into()),
                ..Default::default()
            },
            ServeSettings {
                eventstore_streams_per_connection_max: Some(0),
                ..on.clone()
            },
            ServeSettings {
                eventstore_message_bytes_max: Some(10),
                ..on.clone()
            },
        ] {
            let err = format!("{:#}", bad.eventstore_config().unwrap_err());
            assert!(err.contains("eventstore_"), "{err}");
        }
    }

    #[test]
    fn registry_listener_defaults_to_8081_and_can_be_turned_off() {
        let default = ServeSettings::default().registry_config().unwrap().unwrap();
        assert_eq!(default.listen.to_string(), "127.0.0.1:8081");
        for off in ["off", "OFF", ""] {
            let s = ServeSettings {
                registry_listen: Some(off.into()),
                ..Default::default()
            };
            assert!(s.registry_config().unwrap().is_none(), "{off:?}");
        }
        let set = ServeSettings {
            registry_listen: Some("127.0.0.1:0".into()),
            registry_schema_bytes_max: Some(4096),
            registry_request_bytes_max: Some(8192),
            ..Default::default()
        }
        .registry_config()
        .unwrap()
        .unwrap();
        assert_eq!((set.schema_bytes_max, set.request_bytes_max), (4096, 8192));
        for bad in [
            ServeSettings {
                registry_listen: Some("localhost".into()),
                ..Default::default()
            },
            ServeSettings {
                registry_schema_bytes_max: Some(0),
                ..Default::default()
            },
        ] {
            let err = format!("{:#}", bad.registry_config().unwrap_err());
            assert!(err.contains("registry_"), "{err}");
        }
    }

    #[test]
    fn advertised_defaults_to_listen_address() {
        let s = ServeSettings {
            kafka_listen: Some("127.0.0.1:19092".into()),
            ..Default::default()
        };
        let k = s.kafka_config().unwrap();
        assert_eq!(k.advertised_host, "127.0.0.1");
        assert_eq!(k.advertised_port, 19092);
    }
}
