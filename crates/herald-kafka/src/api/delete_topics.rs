//! DeleteTopics: by name (all versions) or by topic id (v6+).

use herald_broker::BrokerError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, RequestHeader, TopicName,
};

use super::str;
use crate::dispatch::Context;
use crate::errors::broker_code;

pub async fn handle(
    ctx: &Context,
    header: &RequestHeader,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let version = header.request_api_version;
    let wanted: Vec<(Option<TopicName>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let resolved = match &name {
            Some(n) => ctx
                .broker
                .topic(n.0.as_str())
                .ok_or_else(|| BrokerError::UnknownTopic(n.0.to_string())),
            None => ctx
                .broker
                .topic_by_id(&id)
                .ok_or(BrokerError::UnknownTopicId(id)),
        };
        let outcome = resolved.and_then(|t| {
            let topic_id = t.id;
            let topic_name = t.name.to_string();
            drop(t);
            ctx.broker
                .delete_topic(&topic_name)
                .map(|()| (topic_name, topic_id))
        });
        let mut r = DeletableTopicResult::default();
        match outcome {
            Ok((topic_name, topic_id)) => {
                r = r.with_name(Some(super::topic_name(&topic_name)));
                if version >= 6 {
                    r = r.with_topic_id(topic_id);
                }
            }
            Err(e) => {
                r = r.with_name(name).with_error_code(broker_code(&e));
                if version >= 6 {
                    r = r.with_topic_id(id);
                }
                if version >= 5 {
                    r = r.with_error_message(Some(str(&e.to_string())));
                }
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
