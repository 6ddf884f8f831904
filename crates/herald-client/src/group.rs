//! Consumer groups: finding the coordinator, membership (join, sync, heartbeat,
//! leave), committed offsets, and listing and describing groups.
//!
//! Membership follows the classic protocol (JoinGroup/SyncGroup) with protocol type
//! "consumer" and the "range" assignor, so a herald member can share a group with
//! Java, librdkafka or Python consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::task::JoinHandle;

use crate::assignor::{
    Assignment, CONSUMER_PROTOCOL_TYPE, RANGE_ASSIGNOR, decode_assignment, decode_subscription,
    encode_assignment, encode_subscription, range_assign,
};
use crate::client::{Client, TopicPartition};
use crate::connection::Connection;
use crate::error::{Error, Result};

/// FindCoordinator key type of a consumer group.
const COORDINATOR_KEY_TYPE_GROUP: i8 = 0;
/// A coordinator that is loading or not yet elected is asked again this many times.
const COORDINATOR_LOOKUP_ATTEMPTS: u32 = 25;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// How long past the rebalance timeout a JoinGroup may take: the broker holds it for
/// up to the rebalance timeout, then needs time to answer.
const JOIN_SLACK: Duration = Duration::from_secs(5);
/// Join/sync rounds before giving up; each round is bounded by the rebalance timeout.
const JOIN_ROUNDS_MAX: u32 = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    /// Only from brokers with ListGroups v4 or later.
    pub state: Option<String>,
}

#[derive(Clone, Debug)]
pub struct GroupDescription {
    pub group_id: String,
    /// Stable, PreparingRebalance, CompletingRebalance, Empty or Dead.
    pub state: String,
    pub protocol_type: String,
    /// The assignor the group agreed on.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Decoded for "consumer" groups; empty otherwise.
    pub assignment: Assignment,
}

#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// Without a heartbeat for this long, the coordinator removes the member.
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
        }
    }
}

fn str_bytes(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn millis_i32(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

impl Client {
    /// The connection to a group's coordinator.
    pub async fn find_coordinator(&self, group_id: &str) -> Result<Arc<Connection>> {
        if group_id.is_empty() {
            return Err(Error::InvalidArgument("group id is empty".to_owned()));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.find_coordinator_once(group_id).await {
                Ok(addr) => return self.connection_to(&addr).await,
                Err(error) if error.is_retriable() && attempt < COORDINATOR_LOOKUP_ATTEMPTS => {
                    tracing::debug!(group_id, %error, "coordinator not available yet");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn find_coordinator_once(&self, group_id: &str) -> Result<String> {
        let connection = self.any_connection().await?;
        let version = connection.version_of::<FindCoordinatorRequest>()?;
        let mut request = FindCoordinatorRequest::default();
        if version >= 1 {
            request = request.with_key_type(COORDINATOR_KEY_TYPE_GROUP);
        }
        if version >= 4 {
            request = request.with_coordinator_keys(vec![str_bytes(group_id)]);
        } else {
            request = request.with_key(str_bytes(group_id));
        }
        let response = connection.send_version(&request, version).await?;
        let context = || format!("find coordinator of group {group_id}");
        let (host, port) = if version >= 4 {
            let coordinator = response
                .coordinators
                .iter()
                .find(|c| c.key.as_str() == group_id)
                .ok_or_else(|| {
                    Error::UnexpectedResponse(format!(
                        "FindCoordinator does not mention group {group_id}"
                    ))
                })?;
            crate::error::check(
                coordinator.error_code,
                context,
                coordinator.error_message.as_deref(),
            )?;
            (coordinator.host.as_str().to_owned(), coordinator.port)
        } else {
            crate::error::check(
                response.error_code,
                context,
                response.error_message.as_deref(),
            )?;
            (response.host.as_str().to_owned(), response.port)
        };
        let broker = crate::client::BrokerMetadata {
            node_id: -1,
            host,
            port,
            rack: None,
        };
        Ok(broker.addr())
    }

    /// Groups known to every broker of the cluster, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        let brokers = self.metadata(Some(&[])).await?.brokers;
        let mut groups: BTreeMap<String, ListedGroup> = BTreeMap::new();
        for broker in brokers {
            let connection = self.connection_to(&broker.addr()).await?;
            let response = connection.send(&ListGroupsRequest::default()).await?;
            crate::error::check(
                response.error_code,
                || format!("list groups on {}", broker.addr()),
                None,
            )?;
            let has_state = connection.version_of::<ListGroupsRequest>()? >= 4;
            for group in response.groups {
                let id = group.group_id.0.as_str().to_owned();
                groups.insert(
                    id.clone(),
                    ListedGroup {
                        group_id: id,
                        protocol_type: group.protocol_type.as_str().to_owned(),
                        state: has_state.then(|| group.group_state.as_str().to_owned()),
                    },
                );
            }
        }
        Ok(groups.into_values().collect())
    }

    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        let coordinator = self.find_coordinator(group_id).await?;
        let request =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group_id))]);
        let response = coordinator.send(&request).await?;
        let group = response
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == group_id)
            .ok_or_else(|| {
                Error::UnexpectedResponse(format!(
                    "DescribeGroups does not mention group {group_id}"
                ))
            })?;
        crate::error::check(
            group.error_code,
            || format!("describe group {group_id}"),
            group.error_message.as_deref(),
        )?;
        let consumer = group.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
        let members = group
            .members
            .into_iter()
            .map(|m| {
                let assignment = if consumer {
                    decode_assignment(&m.member_assignment)?
                } else {
                    Assignment::new()
                };
                Ok(MemberDescription {
                    member_id: m.member_id.as_str().to_owned(),
                    group_instance_id: m.group_instance_id.map(|i| i.as_str().to_owned()),
                    client_id: m.client_id.as_str().to_owned(),
                    client_host: m.client_host.as_str().to_owned(),
                    assignment,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupDescription {
            group_id: group_id.to_owned(),
            state: group.group_state.as_str().to_owned(),
            protocol_type: group.protocol_type.as_str().to_owned(),
            protocol: group.protocol_data.as_str().to_owned(),
            members,
        })
    }

    /// Committed offsets of a group: for `partitions`, or every partition the group
    /// has committed when `None`. Partitions without a commit are left out.
    pub async fn committed_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let coordinator = self.find_coordinator(group_id).await?;
        committed_offsets_on(&coordinator, group_id, partitions).await
    }

    /// Commits offsets for a group outside of membership (generation -1, no member
    /// id), which the coordinator accepts only while the group has no members.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let coordinator = self.find_coordinator(group_id).await?;
        commit_offsets_on(&coordinator, group_id, -1, "", offsets).await
    }

    /// Joins `group_id` as a consumer of `topics` and waits for an assignment. The
    /// returned member heartbeats in the background until it leaves or is dropped.
    pub async fn join_group(
        &self,
        group_id: &str,
        topics: &[String],
        options: GroupOptions,
    ) -> Result<GroupMember> {
        if topics.is_empty() {
            return Err(Error::InvalidArgument(
                "a group member must subscribe to at least one topic".to_owned(),
            ));
        }
        let coordinator = self.find_coordinator(group_id).await?;
        let shared = Arc::new(MemberShared {
            state: Mutex::new(MemberState {
                coordinator,
                member_id: String::new(),
                generation_id: -1,
                active: false,
            }),
            rejoin_needed: AtomicBool::new(false),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(
            group_id.to_owned(),
            options.clone(),
            Arc::clone(&shared),
        ));
        let mut member = GroupMember {
            client: self.clone(),
            group_id: group_id.to_owned(),
            topics: topics.to_vec(),
            options,
            shared,
            assignment: Assignment::new(),
            leader: false,
            heartbeat,
        };
        member.join().await?;
        Ok(member)
    }
}

/// One membership in a consumer group.
pub struct GroupMember {
    client: Client,
    group_id: String,
    topics: Vec<String>,
    options: GroupOptions,
    shared: Arc<MemberShared>,
    assignment: Assignment,
    leader: bool,
    heartbeat: JoinHandle<()>,
}

struct MemberShared {
    state: Mutex<MemberState>,
    /// Set by the heartbeat (or a failed commit) when the group is rebalancing or has
    /// dropped this member; cleared by a successful join.
    rejoin_needed: AtomicBool,
}

#[derive(Clone)]
struct MemberState {
    coordinator: Arc<Connection>,
    member_id: String,
    generation_id: i32,
    /// Heartbeats are sent only between a completed sync and the next rejoin.
    active: bool,
}

impl MemberShared {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        // Whole-value updates only; a poisoned lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl GroupMember {
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn member_id(&self) -> String {
        self.shared.lock().member_id.clone()
    }

    pub fn generation_id(&self) -> i32 {
        self.shared.lock().generation_id
    }

    /// Whether this member computed the group's assignment in the last rebalance.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// The partitions this member owns until the next rebalance.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    pub fn assigned_partitions(&self) -> Vec<TopicPartition> {
        self.assignment
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(|&p| TopicPartition::new(topic.clone(), p))
            })
            .collect()
    }

    /// Whether the group is rebalancing and [`GroupMember::rejoin`] must be called
    /// (after committing what was processed).
    pub fn rejoin_needed(&self) -> bool {
        self.shared.rejoin_needed.load(Ordering::Acquire)
    }

    /// Takes part in a rebalance; the assignment may change.
    pub async fn rejoin(&mut self) -> Result<()> {
        self.join().await
    }

    /// Committed offsets of this member's assigned partitions.
    pub async fn committed_offsets(&self) -> Result<BTreeMap<TopicPartition, i64>> {
        let coordinator = self.shared.lock().coordinator.clone();
        let partitions = self.assigned_partitions();
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        committed_offsets_on(&coordinator, &self.group_id, Some(&partitions)).await
    }

    /// Commits offsets (each the offset of the next record to read). Fails, and marks
    /// the member for rejoin, when the group has moved to a new generation.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let state = self.shared.lock().clone();
        let result = commit_offsets_on(
            &state.coordinator,
            &self.group_id,
            state.generation_id,
            &state.member_id,
            offsets,
        )
        .await;
        if let Err(error) = &result
            && needs_rejoin(error)
        {
            self.shared.rejoin_needed.store(true, Ordering::Release);
        }
        result
    }

    /// Leaves the group so its partitions are reassigned at once rather than after
    /// the session timeout.
    pub async fn leave(self) -> Result<()> {
        self.heartbeat.abort();
        let state = self.shared.lock().clone();
        if state.member_id.is_empty() {
            return Ok(());
        }
        let coordinator = &state.coordinator;
        let version = coordinator.version_of::<LeaveGroupRequest>()?;
        let mut request =
            LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(&self.group_id)));
        if version >= 3 {
            let mut identity =
                MemberIdentity::default().with_member_id(str_bytes(&state.member_id));
            if version >= 5 {
                identity = identity
                    .with_reason(Some(StrBytes::from_static_str("the consumer is closing")));
            }
            request = request.with_members(vec![identity]);
        } else {
            request = request.with_member_id(str_bytes(&state.member_id));
        }
        let response = coordinator.send_version(&request, version).await?;
        let context = || format!("leave group {}", self.group_id);
        // A member the coordinator already dropped has nothing left to leave.
        let ignore_gone = |code: i16| {
            if code == ResponseError::UnknownMemberId.code() {
                0
            } else {
                code
            }
        };
        crate::error::check(ignore_gone(response.error_code), context, None)?;
        for member in &response.members {
            crate::error::check(ignore_gone(member.error_code), context, None)?;
        }
        Ok(())
    }

    /// JoinGroup then SyncGroup until the group settles on a generation that
    /// includes this member.
    async fn join(&mut self) -> Result<()> {
        self.shared.lock().active = false;
        let mut last_error = None;
        for _ in 0..JOIN_ROUNDS_MAX {
            match self.join_round().await {
                Ok(true) => {
                    self.shared.rejoin_needed.store(false, Ordering::Release);
                    self.shared.lock().active = true;
                    return Ok(());
                }
                Ok(false) => {}
                Err(error) if error.is_retriable() => {
                    tracing::debug!(group_id = %self.group_id, %error, "rejoining after error");
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    let coordinator = self.client.find_coordinator(&self.group_id).await?;
                    self.shared.lock().coordinator = coordinator;
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Kafka {
            context: format!("join group {}", self.group_id),
            code: ResponseError::RebalanceInProgress,
            message: Some(format!(
                "the group did not settle after {JOIN_ROUNDS_MAX} rounds"
            )),
        }))
    }

    /// One JoinGroup + SyncGroup. `Ok(false)`: the group asks for another round.
    async fn join_round(&mut self) -> Result<bool> {
        let state = self.shared.lock().clone();
        let coordinator = state.coordinator;
        let join = self.send_join(&coordinator, &state.member_id).await?;
        match ResponseError::try_from_code(join.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                // Kafka 2.2+: the first join only hands out a member id.
                self.shared.lock().member_id = join.member_id.as_str().to_owned();
                return Ok(false);
            }
            Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration) => {
                self.shared.lock().member_id.clear();
                return Ok(false);
            }
            Some(ResponseError::RebalanceInProgress) => {
                tokio::time::sleep(RETRY_BACKOFF).await;
                return Ok(false);
            }
            Some(code) => {
                return Err(Error::Kafka {
                    context: format!("join group {}", self.group_id),
                    code,
                    message: None,
                });
            }
        }
        let member_id = join.member_id.as_str().to_owned();
        let generation_id = join.generation_id;
        {
            let mut state = self.shared.lock();
            state.member_id = member_id.clone();
            state.generation_id = generation_id;
        }
        self.leader = join.leader.as_str() == member_id;
        let assignments = if self.leader {
            self.assign(&join).await?
        } else {
            Vec::new()
        };

        let version = coordinator.version_of::<SyncGroupRequest>()?;
        let mut sync = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group_id)))
            .with_generation_id(generation_id)
            .with_member_id(str_bytes(&member_id))
            .with_assignments(assignments);
        if version >= 5 {
            sync = sync
                .with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
                .with_protocol_name(Some(StrBytes::from_static_str(RANGE_ASSIGNOR)));
        }
        let timeout = self.options.rebalance_timeout + JOIN_SLACK;
        let synced = coordinator
            .send_with_timeout(&sync, version, timeout)
            .await?;
        match ResponseError::try_from_code(synced.error_code) {
            None => {
                self.assignment = decode_assignment(&synced.assignment)?;
                tracing::debug!(
                    group_id = %self.group_id,
                    generation_id,
                    leader = self.leader,
                    partitions = self.assignment.values().map(Vec::len).sum::<usize>(),
                    "joined group"
                );
                Ok(true)
            }
            Some(ResponseError::RebalanceInProgress) => Ok(false),
            Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration) => {
                self.shared.lock().member_id.clear();
                Ok(false)
            }
            Some(code) => Err(Error::Kafka {
                context: format!("sync group {}", self.group_id),
                code,
                message: None,
            }),
        }
    }

    async fn send_join(
        &self,
        coordinator: &Connection,
        member_id: &str,
    ) -> Result<JoinGroupResponse> {
        let version = coordinator.version_of::<JoinGroupRequest>()?;
        let mut request = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group_id)))
            .with_session_timeout_ms(millis_i32(self.options.session_timeout))
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(RANGE_ASSIGNOR))
                    .with_metadata(encode_subscription(&self.topics)?),
            ]);
        if version >= 1 {
            request = request.with_rebalance_timeout_ms(millis_i32(self.options.rebalance_timeout));
        }
        let timeout = self.options.rebalance_timeout + JOIN_SLACK;
        coordinator
            .send_with_timeout(&request, version, timeout)
            .await
    }

    /// As the leader: the range assignment of every member, from their subscriptions
    /// and the partition counts the cluster reports now.
    async fn assign(&self, join: &JoinGroupResponse) -> Result<Vec<SyncGroupRequestAssignment>> {
        let mut subscriptions = BTreeMap::new();
        for member in &join.members {
            let topics = decode_subscription(&member.metadata)?;
            subscriptions.insert(member.member_id.as_str().to_owned(), topics);
        }
        let topics: BTreeSet<&str> = subscriptions
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let topics: Vec<&str> = topics.into_iter().collect();
        let metadata = self.client.metadata(Some(&topics)).await?;
        let partition_counts: BTreeMap<String, i32> = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.clone(), t.partition_count()))
            .collect();
        for topic in &topics {
            if !partition_counts.contains_key(*topic) {
                tracing::warn!(group_id = %self.group_id, topic, "subscribed topic does not exist; nothing assigned from it");
            }
        }
        range_assign(&subscriptions, &partition_counts)
            .into_iter()
            .map(|(member_id, assignment)| {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member_id))
                    .with_assignment(encode_assignment(&assignment)?))
            })
            .collect()
    }
}

fn needs_rejoin(error: &Error) -> bool {
    matches!(
        error.kafka_code(),
        Some(
            ResponseError::RebalanceInProgress
                | ResponseError::IllegalGeneration
                | ResponseError::UnknownMemberId
                | ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
        )
    )
}

async fn heartbeat_loop(group_id: String, options: GroupOptions, shared: Arc<MemberShared>) {
    let mut ticks = tokio::time::interval(options.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = shared.lock().clone();
        if !state.active || shared.rejoin_needed.load(Ordering::Acquire) {
            continue;
        }
        let result = heartbeat(&state, &group_id, options.session_timeout).await;
        // A rejoin may have started (or even finished) while the heartbeat was in
        // flight; its answer is then about a generation that is gone.
        {
            let current = shared.lock();
            if !current.active || current.generation_id != state.generation_id {
                continue;
            }
        }
        if let Err(error) = result {
            if needs_rejoin(&error) {
                tracing::debug!(%group_id, %error, "group is rebalancing");
            } else {
                tracing::warn!(%group_id, %error, "heartbeat failed; rejoining");
            }
            shared.rejoin_needed.store(true, Ordering::Release);
        }
    }
}

async fn heartbeat(state: &MemberState, group_id: &str, timeout: Duration) -> Result<()> {
    let coordinator = &state.coordinator;
    let version = coordinator.version_of::<HeartbeatRequest>()?;
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id(state.generation_id)
        .with_member_id(str_bytes(&state.member_id));
    let response = coordinator
        .send_with_timeout(&request, version, timeout)
        .await?;
    crate::error::check(
        response.error_code,
        || format!("heartbeat to group {group_id}"),
        None,
    )
}

async fn committed_offsets_on(
    coordinator: &Connection,
    group_id: &str,
    partitions: Option<&[TopicPartition]>,
) -> Result<BTreeMap<TopicPartition, i64>> {
    let version = coordinator.version_of::<OffsetFetchRequest>()?;
    if partitions.is_none() && version < 2 {
        return Err(Error::UnsupportedApi {
            addr: coordinator.addr().to_owned(),
            api: kafka_protocol::messages::ApiKey::OffsetFetch,
            client: "2.. (fetching every partition of a group)".to_owned(),
        });
    }
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions.unwrap_or_default() {
        by_topic
            .entry(tp.topic.as_str())
            .or_default()
            .push(tp.partition);
    }
    let context = || format!("fetch committed offsets of group {group_id}");
    let mut offsets = BTreeMap::new();
    if version >= 8 {
        let topics = partitions.map(|_| {
            by_topic
                .iter()
                .map(|(topic, ps)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        let request = OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(str_bytes(group_id)))
                .with_topics(topics),
        ]);
        let response = coordinator.send_version(&request, version).await?;
        for group in response
            .groups
            .iter()
            .filter(|g| g.group_id.0.as_str() == group_id)
        {
            crate::error::check(group.error_code, context, None)?;
            for topic in &group.topics {
                for p in &topic.partitions {
                    crate::error::check(p.error_code, context, None)?;
                    if p.committed_offset >= 0 {
                        offsets.insert(
                            TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
        }
    } else {
        let topics = partitions.map(|_| {
            by_topic
                .iter()
                .map(|(topic, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_topics(topics);
        let response = coordinator.send_version(&request, version).await?;
        crate::error::check(response.error_code, context, None)?;
        for topic in &response.topics {
            for p in &topic.partitions {
                crate::error::check(p.error_code, context, None)?;
                if p.committed_offset >= 0 {
                    offsets.insert(
                        TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    }
    Ok(offsets)
}

async fn commit_offsets_on(
    coordinator: &Connection,
    group_id: &str,
    generation_id: i32,
    member_id: &str,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<()> {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (tp, &offset) in offsets {
        let partition = OffsetCommitRequestPartition::default()
            .with_partition_index(tp.partition)
            .with_committed_offset(offset);
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(topic) => topic.partitions.push(partition),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes(&tp.topic)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id_or_member_epoch(generation_id)
        .with_member_id(str_bytes(member_id))
        .with_topics(topics);
    let response = coordinator.send(&request).await?;
    for topic in &response.topics {
        for p in &topic.partitions {
            crate::error::check(
                p.error_code,
                || {
                    format!(
                        "commit offset of {}-{} for group {group_id}",
                        topic.name.0.as_str(),
                        p.partition_index
                    )
                },
                None,
            )?;
        }
    }
    Ok(())
}
