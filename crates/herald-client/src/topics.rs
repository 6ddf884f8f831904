//! Topic administration: create, delete, list, describe, and topic configs.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::{Client, TopicMetadata};
use crate::error::{Error, Result};

/// DescribeConfigs resource type of a topic.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// CreateTopics accepts -1 ("broker default") for partitions and replication from v4.
const CREATE_TOPICS_DEFAULTS_VERSION_MIN: i16 = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// -1: the broker's default.
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: -1,
            replication_factor: -1,
            configs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for sensitive or unset values.
    pub value: Option<String>,
    pub read_only: bool,
    pub is_sensitive: bool,
    pub source: ConfigSource,
}

/// Where a config value comes from (DescribeConfigs `config_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    Unknown,
    Topic,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
    Other(i8),
}

impl ConfigSource {
    pub fn from_code(code: i8) -> Self {
        match code {
            0 => ConfigSource::Unknown,
            1 => ConfigSource::Topic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            other => ConfigSource::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ConfigSource::Unknown => "unknown",
            ConfigSource::Topic => "topic",
            ConfigSource::DynamicBroker => "dynamic broker",
            ConfigSource::DynamicDefaultBroker => "dynamic default broker",
            ConfigSource::StaticBroker => "static broker",
            ConfigSource::Default => "default",
            ConfigSource::Other(_) => "other",
        }
    }
}

impl Client {
    /// Creates a topic; returns its partition count when the broker says it
    /// (CreateTopics v5 and later).
    pub async fn create_topic(&self, topic: &NewTopic) -> Result<Option<i32>> {
        if topic.name.is_empty() {
            return Err(Error::InvalidArgument("topic name is empty".to_owned()));
        }
        let connection = self.controller_connection().await?;
        let version = connection.version_of::<CreateTopicsRequest>()?;
        if version < CREATE_TOPICS_DEFAULTS_VERSION_MIN
            && (topic.partitions < 0 || topic.replication_factor < 0)
        {
            return Err(Error::InvalidArgument(format!(
                "the broker (CreateTopics v{version}) has no default partition count or replication factor; give both"
            )));
        }
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(
                i32::try_from(self.options().request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_num_partitions(topic.partitions)
                    .with_replication_factor(topic.replication_factor)
                    .with_configs(
                        topic
                            .configs
                            .iter()
                            .map(|(name, value)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(name.clone()))
                                    .with_value(Some(StrBytes::from_string(value.clone())))
                            })
                            .collect(),
                    ),
            ]);
        let response = connection.send_version(&request, version).await?;
        let result = response
            .topics
            .iter()
            .find(|t| t.name.0.as_str() == topic.name)
            .ok_or_else(|| {
                Error::UnexpectedResponse(format!(
                    "CreateTopics response does not mention {}",
                    topic.name
                ))
            })?;
        self.invalidate_topic(&topic.name);
        crate::error::check(
            result.error_code,
            || format!("create topic {}", topic.name),
            result.error_message.as_deref(),
        )?;
        // CreateTopics v5+ says how many partitions the broker chose.
        Ok((result.num_partitions > 0).then_some(result.num_partitions))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("topic name is empty".to_owned()));
        }
        let connection = self.controller_connection().await?;
        let version = connection.version_of::<DeleteTopicsRequest>()?;
        let topic_name = TopicName(StrBytes::from_string(name.to_owned()));
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(
            i32::try_from(self.options().request_timeout.as_millis()).unwrap_or(i32::MAX),
        );
        if version >= 6 {
            request = request.with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name)),
            ]);
        } else {
            request = request.with_topic_names(vec![topic_name]);
        }
        let response = connection.send_version(&request, version).await?;
        self.invalidate_topic(name);
        let result = response
            .responses
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name))
            .ok_or_else(|| {
                Error::UnexpectedResponse(format!("DeleteTopics response does not mention {name}"))
            })?;
        crate::error::check(
            result.error_code,
            || format!("delete topic {name}"),
            result.error_message.as_deref(),
        )
    }

    /// Every topic the cluster reports, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicMetadata>> {
        let mut topics = self.metadata(None).await?.topics;
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Fresh metadata of one topic (partitions, leaders, replicas).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicMetadata> {
        self.invalidate_topic(name);
        self.topic(name).await
    }

    /// The configuration of a topic. Fails with [`Error::UnsupportedApi`] when the
    /// broker has no DescribeConfigs.
    pub async fn describe_topic_configs(&self, name: &str) -> Result<Vec<ConfigEntry>> {
        let connection = self.any_connection().await?;
        if !connection.supports(ApiKey::DescribeConfigs) {
            return Err(Error::UnsupportedApi {
                addr: connection.addr().to_owned(),
                api: ApiKey::DescribeConfigs,
                client: ApiKey::DescribeConfigs.valid_versions().to_string(),
            });
        }
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TYPE_TOPIC)
                .with_resource_name(StrBytes::from_string(name.to_owned()))
                .with_configuration_keys(None),
        ]);
        let response = connection.send(&request).await?;
        let result = response
            .results
            .into_iter()
            .find(|r| r.resource_name.as_str() == name)
            .ok_or_else(|| {
                Error::UnexpectedResponse(format!(
                    "DescribeConfigs response does not mention {name}"
                ))
            })?;
        crate::error::check(
            result.error_code,
            || format!("describe configs of topic {name}"),
            result.error_message.as_deref(),
        )?;
        let mut entries: Vec<ConfigEntry> = result
            .configs
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name.as_str().to_owned(),
                value: c.value.map(|v| v.as_str().to_owned()),
                read_only: c.read_only,
                is_sensitive: c.is_sensitive,
                source: ConfigSource::from_code(c.config_source),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// Whether an error means the topic does not exist.
pub fn is_unknown_topic(error: &Error) -> bool {
    matches!(
        error.kafka_code(),
        Some(ResponseError::UnknownTopicOrPartition | ResponseError::UnknownTopicId)
    )
}
