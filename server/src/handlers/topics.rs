//! CreateTopics and DeleteTopics. A single node keeps one replica of everything, so a
//! replication factor other than 1 (or -1, "the default") is refused; explicit replica
//! assignments are refused likewise.

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::broker::Broker;
use crate::errors;

pub async fn create(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        let name = topic.name.0.as_str().to_owned();
        let partitions = if topic.num_partitions == -1 {
            Ok(broker.config.default_partitions)
        } else {
            u32::try_from(topic.num_partitions)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(())
        };
        let Ok(partitions) = partitions else {
            results.push(failed(
                result,
                ResponseError::InvalidPartitions,
                "partitions must be >= 1",
            ));
            continue;
        };
        if !matches!(topic.replication_factor, -1 | 1) || !topic.assignments.is_empty() {
            let message = "a single ringlog node keeps one replica";
            results.push(failed(
                result,
                ResponseError::InvalidReplicationFactor,
                message,
            ));
            continue;
        }
        let mut config = broker.config.topic_defaults.clone();
        let pairs: Vec<(String, String)> = topic
            .configs
            .iter()
            .filter_map(|c| {
                Some((
                    c.name.as_str().to_owned(),
                    c.value.as_ref()?.as_str().to_owned(),
                ))
            })
            .collect();
        if let Err(error) = config.apply_all(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            results.push(failed(
                result,
                ResponseError::InvalidConfig,
                &error.to_string(),
            ));
            continue;
        }
        if request.validate_only {
            let valid = ringlog_engine::topic::TopicName::new(name.as_str()).is_ok();
            results.push(if valid {
                result
                    .with_num_partitions(partitions as i32)
                    .with_replication_factor(1)
            } else {
                failed(
                    result,
                    ResponseError::InvalidTopicException,
                    "invalid topic name",
                )
            });
            continue;
        }
        results.push(
            match broker.engine.create_topic(&name, partitions, config).await {
                Ok(meta) => result
                    .with_topic_id(Uuid::from_bytes(meta.id))
                    .with_num_partitions(i32::try_from(meta.partitions).unwrap_or(i32::MAX))
                    .with_replication_factor(1),
                Err(error) => result
                    .with_error_code(errors::code(&error))
                    .with_error_message(Some(StrBytes::from_string(error.to_string()))),
            },
        );
    }
    let results = results
        .into_iter()
        .map(|result| created_for_version(result, version))
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

/// Clears the fields `version` does not have (counts from 5, topic ids from 7).
fn created_for_version(result: CreatableTopicResult, version: i16) -> CreatableTopicResult {
    let result = if version < 7 {
        result.with_topic_id(Uuid::nil())
    } else {
        result
    };
    if version >= 5 {
        return result;
    }
    result.with_num_partitions(-1).with_replication_factor(-1)
}

fn failed(
    result: CreatableTopicResult,
    error: ResponseError,
    message: &str,
) -> CreatableTopicResult {
    result
        .with_error_code(error.code())
        .with_error_message(Some(StrBytes::from_string(message.to_owned())))
}

pub async fn delete(
    broker: &Broker,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // Versions before 6 name the topics in `topic_names`; 6 and later in `topics`.
    let names: Vec<Option<TopicName>> = if version >= 6 {
        request.topics.into_iter().map(|topic| topic.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let Some(name) = name else {
            let code = ResponseError::UnsupportedVersion.code();
            results.push(DeletableTopicResult::default().with_error_code(code));
            continue;
        };
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        results.push(match broker.engine.delete_topic(name.0.as_str()).await {
            Ok(meta) if version >= 6 => result.with_topic_id(Uuid::from_bytes(meta.id)),
            Ok(_) => result,
            Err(error) => {
                // Error messages are in responses from version 5 on.
                let message = (version >= 5).then(|| StrBytes::from_string(error.to_string()));
                result
                    .with_error_code(errors::code(&error))
                    .with_error_message(message)
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}
