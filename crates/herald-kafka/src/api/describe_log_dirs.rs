//! DescribeLogDirs: Herald has one log directory (`<data_dir>/log`); its partitions,
//! their sizes on disk, and (v4+) the file system's total and usable bytes.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, RequestHeader};

use super::topic_name;
use crate::dispatch::Context;

/// The one log directory, as clients see its path.
pub fn log_dir(ctx: &Context) -> String {
    ctx.broker.log_dir().display().to_string()
}

pub async fn handle(
    ctx: &Context,
    _header: &RequestHeader,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    // None: every topic; otherwise the named partitions that exist (Kafka leaves the
    // others out).
    let wanted: Vec<(std::sync::Arc<herald_broker::Topic>, Option<Vec<i32>>)> = match request.topics
    {
        None => ctx.broker.topics().into_iter().map(|t| (t, None)).collect(),
        Some(topics) => topics
            .into_iter()
            .filter_map(|t| Some((ctx.broker.topic(t.topic.0.as_str())?, Some(t.partitions))))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|(topic, indexes)| {
            let partitions = topic
                .partitions
                .iter()
                .filter(|p| indexes.as_ref().is_none_or(|i| i.contains(&p.index)))
                .map(|p| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p.index)
                        .with_partition_size(to_i64(p.size_bytes()))
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(topic_name(&topic.name))
                .with_partitions(partitions)
        })
        .filter(|t| !t.partitions.is_empty())
        .collect();
    let (total, usable) = match herald_log::disk_space(&ctx.broker.log_dir()) {
        Ok((total, usable)) => (to_i64(total), to_i64(usable)),
        // Kafka's answer before v4, and when it cannot tell.
        Err(_) => (-1, -1),
    };
    let result = DescribeLogDirsResult::default()
        .with_log_dir(super::str(&log_dir(ctx)))
        .with_topics(topics)
        .with_total_bytes(total)
        .with_usable_bytes(usable);
    DescribeLogDirsResponse::default().with_results(vec![result])
}

fn to_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
