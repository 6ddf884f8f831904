//! The client: cluster metadata and one connection per broker, shared by clones.
//!
//! Requests for a partition go to its leader's advertised address as Metadata
//! reports it, not to the bootstrap address: that is what every Kafka client does,
//! so a broker that advertises a wrong address is caught here first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::connection::{Connection, ConnectionOptions};
use crate::error::{Error, Result};

/// How many times a partition's leader is looked up again while the cluster reports
/// none (a topic created a moment ago), and how long to wait between lookups.
const LEADER_LOOKUP_ATTEMPTS: u32 = 20;
const LEADER_LOOKUP_BACKOFF: Duration = Duration::from_millis(100);

pub type ClientOptions = ConnectionOptions;

/// A partition of a topic; orders by topic, then partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    /// -1 when the broker does not say.
    pub controller_id: i32,
    pub brokers: Vec<BrokerMetadata>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerMetadata {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerMetadata {
    /// `host:port`, with brackets around IPv6 literals.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug)]
pub struct TopicMetadata {
    pub name: String,
    /// Nil when the broker does not report topic ids.
    pub topic_id: Uuid,
    pub is_internal: bool,
    pub error: Option<ResponseError>,
    /// Sorted by partition index.
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    pub fn partition(&self, partition: i32) -> Option<&PartitionMetadata> {
        self.partitions.iter().find(|p| p.partition == partition)
    }

    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }
}

#[derive(Clone, Debug)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// -1 when the partition has no leader right now.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<ResponseError>,
}

/// A client of a Kafka-protocol cluster. Cheap to clone; clones share connections
/// and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    bootstrap: Vec<String>,
    /// By address, so a coordinator found through FindCoordinator reuses the
    /// connection to the same broker.
    connections: tokio::sync::Mutex<HashMap<String, Arc<Connection>>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    brokers: HashMap<i32, String>,
    controller_id: Option<i32>,
    topics: HashMap<String, TopicMetadata>,
}

/// Kafka's port, for a bootstrap address given without one.
pub const DEFAULT_PORT: u16 = 9092;

/// `host` -> `host:9092` (also `[::1]` and a bare `::1`); an address with a port is kept.
/// Host names are resolved at connect time, and every address they resolve to is tried.
pub fn with_default_port(addr: &str) -> String {
    if addr.starts_with('[') {
        if addr.ends_with(']') {
            return format!("{addr}:{DEFAULT_PORT}");
        }
        return addr.to_owned();
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{DEFAULT_PORT}"),
        1 => addr.to_owned(),
        // More than one colon and no brackets: a bare IPv6 address.
        _ => format!("[{addr}]:{DEFAULT_PORT}"),
    }
}

impl Client {
    /// Connects to the first reachable address of a comma-separated bootstrap list
    /// and loads the broker list.
    pub async fn new(bootstrap: &str) -> Result<Client> {
        Self::with_options(bootstrap, ClientOptions::default()).await
    }

    pub async fn with_options(bootstrap: &str, options: ClientOptions) -> Result<Client> {
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(with_default_port)
            .collect();
        if bootstrap.is_empty() {
            return Err(Error::InvalidArgument(
                "no bootstrap address given (expected HOST:PORT)".to_owned(),
            ));
        }
        let client = Client {
            inner: Arc::new(Inner {
                options,
                bootstrap,
                connections: tokio::sync::Mutex::new(HashMap::new()),
                cache: Mutex::new(Cache::default()),
            }),
        };
        client.metadata(Some(&[])).await?;
        Ok(client)
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Each critical section replaces whole entries, so a poisoned lock still
        // holds consistent data.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The connection to `addr`, opened on first use and reopened if it failed.
    pub async fn connection_to(&self, addr: &str) -> Result<Arc<Connection>> {
        let mut connections = self.inner.connections.lock().await;
        if let Some(connection) = connections.get(addr)
            && !connection.is_closed()
        {
            return Ok(Arc::clone(connection));
        }
        let connection = Arc::new(Connection::connect_with(addr, &self.inner.options).await?);
        connections.insert(addr.to_owned(), Arc::clone(&connection));
        Ok(connection)
    }

    /// A connection to any broker: a bootstrap address first, then known brokers.
    pub async fn any_connection(&self) -> Result<Arc<Connection>> {
        let known: Vec<String> = self.cache().brokers.values().cloned().collect();
        let mut last_error = None;
        for addr in self.inner.bootstrap.iter().chain(known.iter()) {
            match self.connection_to(addr).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| Error::InvalidArgument("no broker address known".to_owned())))
    }

    /// The connection to broker `node_id`, by its advertised address.
    pub async fn broker_connection(&self, node_id: i32) -> Result<Arc<Connection>> {
        let addr = self.cache().brokers.get(&node_id).cloned();
        let addr = match addr {
            Some(addr) => addr,
            None => {
                self.metadata(Some(&[])).await?;
                self.cache().brokers.get(&node_id).cloned().ok_or_else(|| {
                    Error::UnexpectedResponse(format!(
                        "broker {node_id} is not in the cluster metadata"
                    ))
                })?
            }
        };
        self.connection_to(&addr).await
    }

    /// The controller (where topic admin requests go), or any broker when the
    /// cluster does not name one.
    pub async fn controller_connection(&self) -> Result<Arc<Connection>> {
        let controller_id = self.cache().controller_id;
        match controller_id {
            Some(node_id) if node_id >= 0 => self.broker_connection(node_id).await,
            _ => self.any_connection().await,
        }
    }

    /// Waits until every request sent so far on every open connection has been
    /// processed (needed after produce with acks=0).
    pub async fn flush(&self) -> Result<()> {
        let connections: Vec<Arc<Connection>> = self
            .inner
            .connections
            .lock()
            .await
            .values()
            .cloned()
            .collect();
        for connection in connections {
            if !connection.is_closed() {
                connection.flush().await?;
            }
        }
        Ok(())
    }

    /// Cluster metadata for `topics` (`None`: every topic; `Some(&[])`: brokers only).
    /// Never creates topics.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<Metadata> {
        self.metadata_request(topics, false).await
    }

    async fn metadata_request(
        &self,
        topics: Option<&[&str]>,
        allow_auto_topic_creation: bool,
    ) -> Result<Metadata> {
        let connection = self.any_connection().await?;
        // v1 is the first version where "no topics" and "all topics" differ.
        let version = connection.version_of::<MetadataRequest>()?;
        if version < 1 {
            return Err(Error::UnsupportedApi {
                addr: connection.addr().to_owned(),
                api: kafka_protocol::messages::ApiKey::Metadata,
                client: "1..13".to_owned(),
            });
        }
        let request_topics = topics.map(|names| {
            names
                .iter()
                .map(|name| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string((*name).to_owned()))))
                })
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(request_topics)
            .with_allow_auto_topic_creation(allow_auto_topic_creation && version >= 4);
        let response = connection.send_version(&request, version).await?;
        crate::error::check(response.error_code, || "Metadata".to_owned(), None)?;
        let metadata = metadata_from_response(response);
        self.remember(&metadata);
        Ok(metadata)
    }

    fn remember(&self, metadata: &Metadata) {
        let mut cache = self.cache();
        for broker in &metadata.brokers {
            cache.brokers.insert(broker.node_id, broker.addr());
        }
        if metadata.controller_id >= 0 {
            cache.controller_id = Some(metadata.controller_id);
        }
        for topic in &metadata.topics {
            if topic.error.is_none() {
                cache.topics.insert(topic.name.clone(), topic.clone());
            } else {
                cache.topics.remove(&topic.name);
            }
        }
    }

    /// Forgets what is known about `topic`, so the next use asks the cluster again
    /// (after a NotLeaderOrFollower, a deleted topic...).
    pub fn invalidate_topic(&self, topic: &str) {
        self.cache().topics.remove(topic);
    }

    /// The metadata of one topic, from cache when known. Fails with
    /// `UnknownTopicOrPartition` when the topic does not exist.
    pub async fn topic(&self, topic: &str) -> Result<TopicMetadata> {
        if let Some(metadata) = self.cache().topics.get(topic) {
            return Ok(metadata.clone());
        }
        self.fetch_topic(topic, false).await
    }

    /// Like [`Client::topic`], but lets the broker create the topic when its
    /// configuration allows (what console producers do).
    pub async fn topic_or_create(&self, topic: &str) -> Result<TopicMetadata> {
        if let Some(metadata) = self.cache().topics.get(topic) {
            return Ok(metadata.clone());
        }
        self.fetch_topic(topic, true).await
    }

    async fn fetch_topic(
        &self,
        topic: &str,
        allow_auto_topic_creation: bool,
    ) -> Result<TopicMetadata> {
        if topic.is_empty() {
            return Err(Error::InvalidArgument("topic name is empty".to_owned()));
        }
        let metadata = self
            .metadata_request(Some(&[topic]), allow_auto_topic_creation)
            .await?;
        let found = metadata
            .topics
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| {
                Error::UnexpectedResponse(format!(
                    "Metadata response does not mention topic {topic}"
                ))
            })?;
        match found.error {
            Some(code) => Err(Error::Kafka {
                context: format!("topic {topic}"),
                code,
                message: (code == ResponseError::UnknownTopicOrPartition)
                    .then(|| format!("topic {topic} does not exist")),
            }),
            None => Ok(found),
        }
    }

    /// The connection to the leader of a partition, waiting a little for a leader
    /// when the topic was just created.
    pub async fn leader_connection(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(Arc<Connection>, TopicMetadata)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let metadata = self.topic(topic).await?;
            let leader = match metadata.partition(partition) {
                Some(p) if p.leader >= 0 => p.leader,
                Some(_) => -1,
                None => {
                    let count = metadata.partition_count();
                    return Err(Error::Kafka {
                        context: format!("partition {partition} of topic {topic}"),
                        code: ResponseError::UnknownTopicOrPartition,
                        message: Some(format!(
                            "topic {topic} has {count} partitions, 0 to {}; there is no partition {partition}",
                            count - 1
                        )),
                    });
                }
            };
            if leader >= 0 {
                let connection = self.broker_connection(leader).await?;
                return Ok((connection, metadata));
            }
            self.invalidate_topic(topic);
            if attempt >= LEADER_LOOKUP_ATTEMPTS {
                return Err(Error::Kafka {
                    context: format!("partition {topic}-{partition}"),
                    code: ResponseError::LeaderNotAvailable,
                    message: None,
                });
            }
            tokio::time::sleep(LEADER_LOOKUP_BACKOFF).await;
        }
    }

    /// Forgets a topic's cached metadata when `error` says it is stale.
    pub(crate) fn forget_on_stale_metadata(&self, topic: &str, error: &Error) {
        if matches!(
            error.kafka_code(),
            Some(
                ResponseError::NotLeaderOrFollower
                    | ResponseError::LeaderNotAvailable
                    | ResponseError::UnknownTopicOrPartition
                    | ResponseError::UnknownTopicId
                    | ResponseError::FencedLeaderEpoch
                    | ResponseError::UnknownLeaderEpoch
            )
        ) || matches!(
            error,
            Error::ConnectionClosed { .. } | Error::Connect { .. }
        ) {
            self.invalidate_topic(topic);
        }
    }
}

fn string(value: StrBytes) -> String {
    value.as_str().to_owned()
}

fn metadata_from_response(response: MetadataResponse) -> Metadata {
    let brokers = response
        .brokers
        .into_iter()
        .map(|broker| BrokerMetadata {
            node_id: broker.node_id.0,
            host: string(broker.host),
            port: broker.port,
            rack: broker.rack.map(string),
        })
        .collect();
    let topics = response
        .topics
        .into_iter()
        .filter_map(|topic| {
            let name = string(topic.name?.0);
            let mut partitions: Vec<PartitionMetadata> = topic
                .partitions
                .into_iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.into_iter().map(|id| id.0).collect(),
                    isr: p.isr_nodes.into_iter().map(|id| id.0).collect(),
                    error: ResponseError::try_from_code(p.error_code),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            Some(TopicMetadata {
                name,
                topic_id: topic.topic_id,
                is_internal: topic.is_internal,
                error: ResponseError::try_from_code(topic.error_code),
                partitions,
            })
        })
        .collect();
    Metadata {
        cluster_id: response.cluster_id.map(string),
        controller_id: response.controller_id.0,
        brokers,
        topics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_address_without_a_port_gets_kafkas() {
        assert_eq!(with_default_port("localhost"), "localhost:9092");
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:9092");
        assert_eq!(with_default_port("broker1:19092"), "broker1:19092");
        assert_eq!(with_default_port("[::1]"), "[::1]:9092");
        assert_eq!(with_default_port("[::1]:19092"), "[::1]:19092");
        assert_eq!(with_default_port("::1"), "[::1]:9092");
    }

    #[test]
    fn broker_addr_brackets_ipv6() {
        let broker = |host: &str| BrokerMetadata {
            node_id: 0,
            host: host.to_owned(),
            port: 9092,
            rack: None,
        };
        assert_eq!(broker("127.0.0.1").addr(), "127.0.0.1:9092");
        assert_eq!(broker("::1").addr(), "[::1]:9092");
        assert_eq!(broker("[::1]").addr(), "[::1]:9092");
    }
}
