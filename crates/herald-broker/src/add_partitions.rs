//! CreatePartitions: more partitions for an existing topic.
//!
//! Why it is safe: existing partitions are untouched (their records stay where they
//! are; a key may now hash elsewhere, as in Kafka). The new partition directories are
//! created and opened first, then the count is committed to the meta store, then the
//! topic is swapped in memory (handlers holding the old `Topic` finish with it), then
//! the work-queue subscriptions of the topic get a state for the new partitions. A
//! crash before the meta commit leaves directories that the next attempt clears (no
//! one reads them: the stored count is the truth); a crash after it is the same as a
//! finished call, since start-up opens every stored partition and gives every
//! subscription a state for each.

use std::sync::Arc;

use crate::error::{BrokerError, Result};
use crate::streams::EVENTSTORE_TOPIC;
use crate::{Broker, Topic};

impl Broker {
    /// Grow topic `name` to `count` partitions. With `validate_only` every check runs
    /// and nothing changes. Returns the topic as it is (or would be) afterwards.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i64,
        validate_only: bool,
    ) -> Result<Arc<Topic>> {
        let topic = self.add_partitions(name, count, validate_only)?;
        if !validate_only {
            self.grow_subscriptions(&topic).await?;
        }
        Ok(topic)
    }

    /// The topic half of `create_partitions`: checks, new partitions, meta store, swap.
    fn add_partitions(&self, name: &str, count: i64, validate_only: bool) -> Result<Arc<Topic>> {
        let _admin = self
            .topic_admin
            .lock()
            .map_err(|_| BrokerError::Storage("topic lock poisoned".into()))?;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        if name == EVENTSTORE_TOPIC {
            return Err(BrokerError::InvalidRequest(format!(
                "topic {EVENTSTORE_TOPIC:?} holds the event store's $all order and keeps its one partition"
            )));
        }
        let current = topic.partitions.len();
        if count <= current as i64 {
            return Err(BrokerError::PartitionsNotIncreased {
                topic: name.to_string(),
                current,
                requested: count,
            });
        }
        let max = self.config.partitions_per_topic_max;
        if count > i64::from(max) {
            return Err(BrokerError::InvalidPartitions { count, max });
        }
        let count = count as u32;
        let mut partitions = topic.partitions.clone();
        if !validate_only {
            let log_config = self.log_config_for(&topic.configs);
            for index in current as u32..count {
                // Left by an attempt that crashed before its meta commit: never served.
                let dir = self.partition_dir(name, index);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| {
                        BrokerError::Storage(format!("cannot clear {}: {e}", dir.display()))
                    })?;
                }
                partitions.push(self.open_partition(&topic.name, index, &log_config)?);
            }
            if !self.meta.update_topic_partitions(name, count)? {
                return Err(BrokerError::UnknownTopic(name.to_string()));
            }
        }
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions,
            configs: topic.configs.clone(),
            validator: self.validator.clone(),
            txns: topic.txns.clone(),
        });
        if validate_only {
            return Ok(updated);
        }
        self.insert_topic(updated.clone());
        tracing::info!(topic = name, from = current, to = count, "added partitions");
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::queue::{StartPosition, SubscriptionSettings};
    use crate::test_util;
    use crate::{Broker, BrokerConfig, BrokerError, now_ms};

    fn one_record(key: &str) -> Vec<u8> {
        test_util::batch(
            &[test_util::record(key, Some(b"OrderPlaced"), 1_000)],
            -1,
            kafka_protocol::records::Compression::None,
        )
    }

    #[tokio::test]
    async fn partitions_are_added_kept_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::new(dir.path().to_path_buf());
        {
            let broker = Broker::open(config.clone()).unwrap();
            let topic = broker
                .create_topic("orders", Some(2), BTreeMap::new(), false)
                .unwrap();
            topic
                .append(1, &one_record("a"), now_ms())
                .unwrap()
                .durable()
                .await
                .unwrap();
            assert!(matches!(
                broker.create_partitions("orders", 2, false).await,
                Err(BrokerError::PartitionsNotIncreased { current: 2, .. })
            ));
            assert!(matches!(
                broker.create_partitions("nope", 4, false).await,
                Err(BrokerError::UnknownTopic(_))
            ));
            assert!(matches!(
                broker.create_partitions("orders", 1 << 40, false).await,
                Err(BrokerError::InvalidPartitions { .. })
            ));
            let checked = broker.create_partitions("orders", 5, true).await.unwrap();
            assert_eq!(checked.partitions.len(), 2);
            assert_eq!(broker.topic("orders").unwrap().partitions.len(), 2);
            let grown = broker.create_partitions("orders", 5, false).await.unwrap();
            assert_eq!(grown.partitions.len(), 5);
            assert_eq!(grown.id, topic.id);
            // The old record stays where it was; the new partitions take appends.
            assert_eq!(grown.partition(1).unwrap().high_watermark(), 1);
            grown
                .append(4, &one_record("b"), now_ms())
                .unwrap()
                .durable()
                .await
                .unwrap();
            broker.shutdown();
        }
        let broker = Broker::open(config).unwrap();
        let topic = broker.topic("orders").unwrap();
        assert_eq!(topic.partitions.len(), 5);
        assert_eq!(topic.partition(1).unwrap().high_watermark(), 1);
        assert_eq!(topic.partition(4).unwrap().high_watermark(), 1);
        assert!(matches!(
            broker
                .create_partitions(crate::streams::EVENTSTORE_TOPIC, 2, false)
                .await,
            Err(BrokerError::InvalidRequest(_) | BrokerError::UnknownTopic(_))
        ));
    }

    #[tokio::test]
    async fn a_work_queue_delivers_from_added_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::new(dir.path().to_path_buf())).unwrap();
        broker
            .create_topic("jobs", Some(1), BTreeMap::new(), false)
            .unwrap();
        let settings = SubscriptionSettings {
            start: StartPosition::Earliest,
            ..Default::default()
        };
        broker
            .create_subscription("jobs", "workers", settings)
            .await
            .unwrap();
        let topic = broker.create_partitions("jobs", 3, false).await.unwrap();
        topic
            .append(2, &one_record("late"), now_ms())
            .unwrap()
            .durable()
            .await
            .unwrap();
        let got = broker.receive("jobs", "workers", 10, 500).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].partition, 2);
        assert_eq!(
            broker
                .subscription_stats("jobs", "workers")
                .unwrap()
                .in_flight,
            1
        );
    }
}
