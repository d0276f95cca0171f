//! `ringlog topic reassign|reassignments`: moving a topic's partitions to new replica sets,
//! cancelling such a move, and listing the moves under way, over the Kafka admin API
//! (AlterPartitionReassignments, ListPartitionReassignments, Metadata), so it works against
//! any Kafka-compatible broker, not only ringlog.
//!
//! `reassign` answers once the broker has accepted every partition's move; the replicas
//! then catch up on their own, and `reassignments` lists the partitions until they are
//! done. A partition the broker refuses fails the command with its error code, naming the
//! partitions it accepted in the same request.

use std::fmt::Write as _;

use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    list_partition_reassignments_request as list_request,
    list_partition_reassignments_response as list_response,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest,
};

use super::topic::{metadata, missing, topic_name, ADMIN_TIMEOUT_MS};
use super::{AdminClient, AdminError};

/// Moves `partitions` of topic `name` to `replicas` (node ids), or with `None` cancels
/// their moves under way.
pub fn reassign(
    client: &mut AdminClient,
    name: &str,
    partitions: &[i32],
    replicas: Option<&[i32]>,
) -> Result<String, AdminError> {
    let version = client.version::<AlterPartitionReassignmentsRequest>()?;
    let target = replicas.map(|ids| ids.iter().copied().map(BrokerId).collect::<Vec<_>>());
    let asked = (partitions.iter())
        .map(|&index| {
            ReassignablePartition::default()
                .with_partition_index(index)
                .with_replicas(target.clone())
        })
        .collect();
    let topic = ReassignableTopic::default()
        .with_name(topic_name(name))
        .with_partitions(asked);
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(ADMIN_TIMEOUT_MS)
        .with_topics(vec![topic]);
    let response = client.call(&request, version)?;
    let context = format!("reassign partitions of {name}");
    AdminError::check(
        &context,
        response.error_code,
        response.error_message.as_ref(),
    )?;
    let answered: Vec<_> = (response.responses.into_iter())
        .filter(|topic| topic.name.0.as_str() == name)
        .flat_map(|topic| topic.partitions)
        .collect();
    let mut accepted = Vec::with_capacity(partitions.len());
    for &index in partitions {
        let what = match replicas {
            Some(_) => format!("reassign {name}-{index}"),
            None => format!("cancel the reassignment of {name}-{index}"),
        };
        let Some(partition) = answered.iter().find(|p| p.partition_index == index) else {
            return Err(missing(client, &what));
        };
        if partition.error_code != 0 {
            let context = if accepted.is_empty() {
                what
            } else {
                format!("{what} (accepted: {})", accepted.join(", "))
            };
            let message = partition.error_message.as_ref();
            AdminError::check(&context, partition.error_code, message)?;
        }
        accepted.push(format!("{name}-{index}"));
    }
    let mut out = String::new();
    for partition in &accepted {
        let _ = match replicas {
            Some(ids) => writeln!(out, "reassigning {partition} to replicas {}", joined(ids)),
            None => writeln!(out, "cancelled the reassignment of {partition}"),
        };
    }
    Ok(out)
}

/// The partitions being moved, of topic `name` or of every topic: one
/// `TOPIC PARTITION REPLICAS ADDING REMOVING` a line, sorted.
pub fn list(client: &mut AdminClient, name: Option<&str>) -> Result<String, AdminError> {
    let version = client.version::<ListPartitionReassignmentsRequest>()?;
    // Kafka's request names a topic's partitions one by one: Metadata says which there are
    // (and refuses a topic that does not exist).
    let topics = match name {
        Some(name) => {
            let topic = metadata(client, name)?;
            let indexes = topic.partitions.iter().map(|p| p.partition_index).collect();
            Some(vec![
                list_request::ListPartitionReassignmentsTopics::default()
                    .with_name(topic_name(name))
                    .with_partition_indexes(indexes),
            ])
        }
        None => None,
    };
    let request = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(ADMIN_TIMEOUT_MS)
        .with_topics(topics);
    let response = client.call(&request, version)?;
    AdminError::check(
        "list partition reassignments",
        response.error_code,
        response.error_message.as_ref(),
    )?;
    Ok(lines(response.topics))
}

/// One line per partition under reassignment, sorted by topic and partition.
fn lines(topics: Vec<list_response::OngoingTopicReassignment>) -> String {
    let ids = |nodes: &[BrokerId]| {
        let ids: Vec<i32> = nodes.iter().map(|id| id.0).collect();
        joined(&ids)
    };
    let mut rows: Vec<(String, i32, String)> = Vec::new();
    for topic in topics {
        for partition in topic.partitions {
            let sets = format!(
                "{} {} {}",
                ids(&partition.replicas),
                ids(&partition.adding_replicas),
                ids(&partition.removing_replicas)
            );
            rows.push((topic.name.0.to_string(), partition.partition_index, sets));
        }
    }
    rows.sort();
    let mut out = String::new();
    for (topic, partition, sets) in rows {
        let _ = writeln!(out, "{topic} {partition} {sets}");
    }
    out
}

/// Node ids comma-separated, `-` for none (so every line has five words).
fn joined(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_owned();
    }
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.join(",")
}

#[cfg(test)]
mod tests {
    use list_response::{OngoingPartitionReassignment, OngoingTopicReassignment};

    use super::*;

    #[test]
    fn reassignments_print_five_words_a_line_sorted() {
        let moving = |index: i32, replicas: &[i32], adding: &[i32], removing: &[i32]| {
            let ids = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect();
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(ids(replicas))
                .with_adding_replicas(ids(adding))
                .with_removing_replicas(ids(removing))
        };
        let topic = |name: &str, partitions| {
            OngoingTopicReassignment::default()
                .with_name(topic_name(name))
                .with_partitions(partitions)
        };
        let text = lines(vec![
            topic("orders", vec![moving(2, &[2, 3, 1], &[2, 3], &[1])]),
            topic("audit", vec![moving(0, &[1, 2], &[], &[2])]),
            topic("orders", vec![moving(0, &[3, 1], &[3], &[])]),
        ]);
        assert_eq!(
            text,
            "audit 0 1,2 - 2\norders 0 3,1 3 -\norders 2 2,3,1 2,3 1\n"
        );
        assert_eq!(lines(Vec::new()), "");
    }
}
