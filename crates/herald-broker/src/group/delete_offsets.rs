//! OffsetDelete (the admin's DeleteConsumerGroupOffsets): forget a group's committed
//! offsets for some partitions, as Kafka does: refused for the topics a live consumer
//! group is subscribed to (its members would commit them again, or worse, reset), and
//! for a non-empty group of another protocol type, whose subscriptions we cannot read.

use std::collections::HashSet;

use bytes::Bytes;

use super::{GroupCoordinator, GroupError};

/// What each partition of an OffsetDelete came to.
pub type DeleteOutcome = Vec<((String, i32), Result<(), GroupError>)>;

impl GroupCoordinator {
    /// Delete `partitions` of `group_id`'s committed offsets, durably. `subscribed_topics`
    /// reads the topics of one member's protocol metadata (the front end's wire format;
    /// None if it does not parse, which counts as subscribed to everything). A partition
    /// without a committed offset is a success, as in Kafka.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed_topics: &(dyn Fn(&Bytes) -> Option<Vec<String>> + Sync),
    ) -> Result<DeleteOutcome, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let _serial = self.commit_lock.lock().await;
        let outcome: DeleteOutcome = {
            let groups = self.lock();
            let group = groups.get(group_id).ok_or(GroupError::GroupIdNotFound)?;
            if group.state == super::GroupState::Dead {
                return Err(GroupError::GroupIdNotFound);
            }
            // None: every topic counts as subscribed.
            let mut subscribed: Option<HashSet<String>> = Some(HashSet::new());
            if !group.members.is_empty() {
                if group.protocol_type != "consumer" {
                    return Err(GroupError::NonEmptyGroup);
                }
                for member in group.members.values() {
                    match subscribed_topics(&member.metadata_for(&group.protocol_name)) {
                        Some(topics) => {
                            if let Some(set) = subscribed.as_mut() {
                                set.extend(topics);
                            }
                        }
                        None => subscribed = None,
                    }
                }
            }
            partitions
                .iter()
                .map(|(topic, partition)| {
                    let refused = match &subscribed {
                        Some(set) => set.contains(topic),
                        None => true,
                    };
                    let result = if refused {
                        Err(GroupError::GroupSubscribedToTopic)
                    } else {
                        Ok(())
                    };
                    ((topic.clone(), *partition), result)
                })
                .collect()
        };
        let rows: Vec<(String, u32)> = outcome
            .iter()
            .filter(|(_, r)| r.is_ok())
            .filter_map(|((t, p), _)| Some((t.clone(), u32::try_from(*p).ok()?)))
            .collect();
        if rows.is_empty() {
            return Ok(outcome);
        }
        let meta = self.meta.clone();
        let group = group_id.to_string();
        let stored = rows.clone();
        tokio::task::spawn_blocking(move || meta.delete_offsets(&group, &stored))
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        let mut groups = self.lock();
        if let Some(group) = groups.get_mut(group_id) {
            for (topic, partition) in rows {
                group.offsets.remove(&(topic, partition as i32));
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_meta::{MetaStore, OffsetRecord};

    use super::*;
    use crate::config::BrokerConfig;
    use crate::group::OffsetCommit;

    fn commit(topic: &str, partition: i32, offset: i64) -> OffsetCommit {
        OffsetCommit {
            topic: topic.to_string(),
            partition,
            record: OffsetRecord {
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            },
        }
    }

    #[tokio::test]
    async fn offsets_are_deleted_durably_and_unknown_groups_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig::new(dir.path().to_path_buf());
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).unwrap());
        let groups = GroupCoordinator::new(&config, meta.clone()).unwrap();
        groups
            .commit_offsets(
                "g",
                -1,
                "",
                vec![commit("a", 0, 5), commit("a", 1, 6), commit("b", 0, 7)],
            )
            .await
            .unwrap();
        let none = |_: &Bytes| Some(Vec::new());
        assert_eq!(
            groups.delete_offsets("nope", &[], &none).await.unwrap_err(),
            GroupError::GroupIdNotFound
        );
        let outcome = groups
            .delete_offsets("g", &[("a".into(), 1), ("b".into(), 3)], &none)
            .await
            .unwrap();
        assert!(outcome.iter().all(|(_, r)| r.is_ok()));
        let left: Vec<(String, i32)> = groups
            .committed("g", None)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![("a".to_string(), 0), ("b".to_string(), 0)]);
        // Durable: a coordinator reading the store again sees the same.
        drop(groups);
        let again = GroupCoordinator::new(&config, meta).unwrap();
        assert_eq!(again.committed("g", None).len(), 2);
    }
}
