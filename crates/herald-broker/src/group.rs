//! Consumer groups with the classic Kafka rebalance protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) and their committed offsets.
//!
//! Every group is a small state machine (Empty -> PreparingRebalance ->
//! CompletingRebalance -> Stable) kept in memory behind one mutex that is never held
//! across an await: a JoinGroup or SyncGroup that must wait parks a oneshot sender in
//! the member and awaits the receiver outside the lock. A ticker completes rebalances
//! whose deadline passed and evicts members whose session timed out.
//!
//! Committed offsets are written to the meta store before they are acknowledged, and
//! loaded back at start-up; membership is not persisted (clients rejoin after a restart,
//! as they do after a Kafka coordinator moves).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_meta::{MetaStore, OffsetRecord};
use tokio::sync::oneshot;

use crate::config::BrokerConfig;

/// How long a member id handed out with MEMBER_ID_REQUIRED waits for its rejoin.
const PENDING_MEMBER_TTL: Duration = Duration::from_secs(300);

/// How often deadlines (rebalance, session) are checked.
pub const GROUP_TICK_MS: u64 = 100;

mod delete_offsets;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("no protocol in common with the group's members")]
    InconsistentGroupProtocol,
    #[error("a member id is required: rejoin with {0}")]
    MemberIdRequired(String),
    #[error("session timeout {0} ms is outside the broker's allowed range")]
    InvalidSessionTimeout(i32),
    #[error("the group is full")]
    GroupMaxSizeReached,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("the group is not empty")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the static member was replaced by a newer instance")]
    FencedInstanceId,
    #[error("the broker is shutting down")]
    CoordinatorNotAvailable,
    #[error("the group's members are subscribed to this topic")]
    GroupSubscribedToTopic,
    #[error("storage error: {0}")]
    Storage(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup as the broker sees it (protocol-independent).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ clients expect MEMBER_ID_REQUIRED on their first join.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone)]
pub struct JoinResponse {
    pub generation_id: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

#[derive(Debug, Clone)]
pub struct SyncResponse {
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone)]
pub struct GroupListing {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
}

struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat: Instant,
    joined_seq: u64,
    join_waiter: Option<oneshot::Sender<Result<JoinResponse, GroupError>>>,
    sync_waiter: Option<oneshot::Sender<Result<SyncResponse, GroupError>>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }
}

struct Group {
    state: GroupState,
    generation: i32,
    /// The members' protocol type (`consumer` for consumers), kept when the group
    /// empties; empty for a group that only ever committed offsets (a "simple" group),
    /// as Kafka reports it. ListGroups and DescribeGroups both show this value.
    protocol_type: String,
    protocol_name: String,
    leader: Option<String>,
    members: HashMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until they rejoin.
    pending_members: HashMap<String, Instant>,
    rebalance_deadline: Instant,
    /// The first rebalance of an empty group waits this long for more members.
    join_not_before: Instant,
    offsets: BTreeMap<(String, i32), OffsetRecord>,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: None,
            members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: now,
            join_not_before: now,
            offsets: BTreeMap::new(),
        }
    }

    fn describe(&self, group_id: &str) -> GroupDescription {
        let mut members: Vec<(&String, &Member)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.joined_seq);
        GroupDescription {
            group_id: group_id.to_string(),
            state: self.state,
            protocol_type: self.protocol_type.clone(),
            protocol_name: if self.state == GroupState::Stable {
                self.protocol_name.clone()
            } else {
                String::new()
            },
            members: members
                .into_iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&self.protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Move to PreparingRebalance: every member must rejoin before the deadline.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        let was_empty = self.state == GroupState::Empty;
        for member in self.members.values_mut() {
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(Err(GroupError::RebalanceInProgress));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = now + timeout;
        self.join_not_before = if was_empty {
            now + initial_delay.min(timeout)
        } else {
            now
        };
    }

    fn all_members_joined(&self) -> bool {
        self.members.values().all(|m| m.join_waiter.is_some())
    }

    /// Finish PreparingRebalance when everyone rejoined (or the deadline passed): start a
    /// new generation and answer every waiting JoinGroup.
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let deadline_passed = now >= self.rebalance_deadline;
        if !deadline_passed && (now < self.join_not_before || !self.all_members_joined()) {
            return;
        }
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.pending_members.clear();
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            // The protocol type stays (as in Kafka): an emptied consumer group is still
            // a `consumer` group; only a group that never had members has none.
            self.state = GroupState::Empty;
            self.leader = None;
            self.protocol_name.clear();
            return;
        }
        self.protocol_name = self.select_protocol();
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self
                .members
                .iter()
                .min_by_key(|(_, m)| m.joined_seq)
                .map(|(id, _)| id.clone())
                .unwrap_or_default(),
        };
        self.leader = Some(leader.clone());
        self.state = GroupState::CompletingRebalance;
        let mut ordered: Vec<(&String, &Member)> = self.members.iter().collect();
        ordered.sort_by_key(|(_, m)| m.joined_seq);
        let all: Vec<JoinedMember> = ordered
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: (*id).clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata_for(&self.protocol_name),
            })
            .collect();
        for (id, member) in self.members.iter_mut() {
            member.last_heartbeat = now;
            member.assignment = Bytes::new();
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(Ok(JoinResponse {
                    generation_id: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
    }

    /// The protocol every member supports that most members list first (Kafka's vote).
    fn select_protocol(&self) -> String {
        let Some(any) = self.members.values().next() else {
            return String::new();
        };
        let candidates: Vec<&String> = any
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n))
                && let Some(v) = votes.iter_mut().find(|(_, c)| *c == name)
            {
                v.0 += 1;
            }
        }
        votes
            .iter()
            .max_by_key(|(count, _)| *count)
            .map(|(_, name)| (*name).clone())
            .unwrap_or_default()
    }

    fn remove_member(&mut self, member_id: &str, now: Instant, initial_delay: Duration) {
        if let Some(mut member) = self.members.remove(member_id) {
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(Err(GroupError::UnknownMemberId));
            }
            if let Some(w) = member.sync_waiter.take() {
                let _ = w.send(Err(GroupError::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    // The protocol type stays, as in `maybe_complete_join`.
                    self.state = GroupState::Empty;
                    self.generation = self.generation.wrapping_add(1);
                    self.protocol_name.clear();
                } else {
                    self.prepare_rebalance(now, initial_delay);
                }
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.state != GroupState::PreparingRebalance
    }
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    meta: Arc<MetaStore>,
    /// Serialises offset writes so the store and memory agree on the last commit.
    commit_lock: tokio::sync::Mutex<()>,
    initial_delay: Duration,
    session_timeout_min_ms: i32,
    session_timeout_max_ms: i32,
    members_max: usize,
    next_seq: std::sync::atomic::AtomicU64,
}

/// A commit of one partition's offset.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub record: OffsetRecord,
}

impl GroupCoordinator {
    pub fn new(
        config: &BrokerConfig,
        meta: Arc<MetaStore>,
    ) -> Result<GroupCoordinator, GroupError> {
        let now = Instant::now();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let stored = meta
            .all_committed_offsets()
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        for c in stored {
            let partition = i32::try_from(c.partition).unwrap_or(i32::MAX);
            groups
                .entry(c.group)
                .or_insert_with(|| Group::new(now))
                .offsets
                .insert((c.topic, partition), c.record);
        }
        Ok(GroupCoordinator {
            groups: Mutex::new(groups),
            meta,
            commit_lock: tokio::sync::Mutex::new(()),
            initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            session_timeout_min_ms: config.group_session_timeout_min_ms,
            session_timeout_max_ms: config.group_session_timeout_max_ms,
            members_max: config.group_members_max,
            next_seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        // A panic while holding this lock would be a bug; keep serving rather than cascade.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        let receiver = self.join_register(req)?;
        match receiver {
            JoinOutcome::Now(r) => Ok(r),
            JoinOutcome::Wait(rx) => rx.await.unwrap_or(Err(GroupError::RebalanceInProgress)),
        }
    }

    fn join_register(&self, req: JoinRequest) -> Result<JoinOutcome, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.session_timeout_min_ms
            || req.session_timeout_ms > self.session_timeout_max_ms
        {
            return Err(GroupError::InvalidSessionTimeout(req.session_timeout_ms));
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(now));
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if !group.members.is_empty() {
            let common = req
                .protocols
                .iter()
                .any(|(name, _)| group.members.values().all(|m| m.supports(name)));
            if group.protocol_type != req.protocol_type || !common {
                return Err(GroupError::InconsistentGroupProtocol);
            }
        }

        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            // A static member coming back replaces its previous incarnation.
            if let Some(instance) = &req.group_instance_id
                && let Some(old) = group
                    .members
                    .iter()
                    .find(|(_, m)| m.group_instance_id.as_ref() == Some(instance))
                    .map(|(id, _)| id.clone())
            {
                group.remove_member(&old, now, self.initial_delay);
            }
            if group.members.len() >= self.members_max {
                return Err(GroupError::GroupMaxSizeReached);
            }
            let client = if req.client_id.is_empty() {
                "consumer"
            } else {
                &req.client_id
            };
            member_id = format!("{client}-{}", uuid::Uuid::new_v4());
            if req.require_known_member_id && req.group_instance_id.is_none() {
                group.pending_members.insert(member_id.clone(), now);
                return Err(GroupError::MemberIdRequired(member_id));
            }
        } else if !group.members.contains_key(&member_id) {
            if group.pending_members.remove(&member_id).is_none() {
                return Err(GroupError::UnknownMemberId);
            }
            if group.members.len() >= self.members_max {
                return Err(GroupError::GroupMaxSizeReached);
            }
        }

        let (tx, rx) = oneshot::channel();
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let rebalance_timeout = Duration::from_millis(
            if req.rebalance_timeout_ms > 0 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            }
            .max(0) as u64,
        );
        let is_new = !group.members.contains_key(&member_id);
        if is_new {
            let seq = self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            group.members.insert(
                member_id.clone(),
                Member {
                    group_instance_id: req.group_instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout,
                    rebalance_timeout,
                    protocol_type: req.protocol_type.clone(),
                    protocols: req.protocols.clone(),
                    assignment: Bytes::new(),
                    last_heartbeat: now,
                    joined_seq: seq,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        if group.members.len() == 1 || group.protocol_type.is_empty() {
            group.protocol_type = req.protocol_type.clone();
        }
        let is_leader = group.leader.as_deref() == Some(member_id.as_str());
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        let unchanged = !is_new && member.protocols == req.protocols;
        member.protocols = req.protocols.clone();
        member.protocol_type = req.protocol_type.clone();
        member.session_timeout = session_timeout;
        member.rebalance_timeout = rebalance_timeout;
        member.last_heartbeat = now;
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(Err(GroupError::RebalanceInProgress));
        }

        match group.state {
            GroupState::Stable if unchanged && !is_leader => {
                // A follower rejoining with nothing new keeps its assignment: no rebalance.
                member.join_waiter = None;
                return Ok(JoinOutcome::Now(JoinResponse {
                    generation_id: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    leader: group.leader.clone().unwrap_or_default(),
                    member_id,
                    members: Vec::new(),
                }));
            }
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {
                group.prepare_rebalance(now, self.initial_delay);
            }
            GroupState::PreparingRebalance => {
                if is_new && now < group.join_not_before {
                    // Still gathering the first members: give the next one a moment too.
                    group.join_not_before =
                        (now + self.initial_delay).min(group.rebalance_deadline);
                }
                let timeout = rebalance_timeout;
                if now + timeout > group.rebalance_deadline && is_new {
                    group.rebalance_deadline = now + timeout;
                }
            }
            GroupState::Dead => return Err(GroupError::CoordinatorNotAvailable),
        }
        group.maybe_complete_join(now);
        Ok(JoinOutcome::Wait(rx))
    }

    pub async fn sync(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncResponse, GroupError> {
        let rx = {
            let now = Instant::now();
            let mut groups = self.lock();
            let group = groups
                .get_mut(group_id)
                .ok_or(GroupError::UnknownMemberId)?;
            if !group.members.contains_key(member_id) {
                return Err(GroupError::UnknownMemberId);
            }
            if generation_id != group.generation {
                return Err(GroupError::IllegalGeneration);
            }
            match group.state {
                GroupState::PreparingRebalance => return Err(GroupError::RebalanceInProgress),
                GroupState::Empty | GroupState::Dead => return Err(GroupError::UnknownMemberId),
                GroupState::Stable => {
                    let member = group
                        .members
                        .get_mut(member_id)
                        .ok_or(GroupError::UnknownMemberId)?;
                    member.last_heartbeat = now;
                    return Ok(SyncResponse {
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: group.protocol_name.clone(),
                        assignment: member.assignment.clone(),
                    });
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if let Some(member) = group.members.get_mut(member_id) {
                member.last_heartbeat = now;
                if let Some(old) = member.sync_waiter.replace(tx) {
                    let _ = old.send(Err(GroupError::RebalanceInProgress));
                }
            }
            if group.leader.as_deref() == Some(member_id) {
                let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                let protocol_type = group.protocol_type.clone();
                let protocol_name = group.protocol_name.clone();
                for (id, member) in group.members.iter_mut() {
                    member.assignment = by_member.remove(id).unwrap_or_default();
                    if let Some(waiter) = member.sync_waiter.take() {
                        let _ = waiter.send(Ok(SyncResponse {
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment: member.assignment.clone(),
                        }));
                    }
                }
                group.state = GroupState::Stable;
            }
            rx
        };
        rx.await.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        let mut groups = self.lock();
        let group = groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let state = group.state;
        let generation = group.generation;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        // A heartbeat from a stale generation keeps nothing alive (as in Kafka): the
        // member must rejoin, and if it never does its session runs out.
        if generation_id != generation {
            return Err(GroupError::IllegalGeneration);
        }
        member.last_heartbeat = Instant::now();
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
        }
    }

    /// Remove members; returns one result per requested member id (empty ids with an
    /// instance id are resolved to that static member).
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<String, GroupError>>, GroupError> {
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let mut out = Vec::with_capacity(members.len());
        for (member_id, instance) in members {
            let id = if member_id.is_empty() {
                instance.as_ref().and_then(|inst| {
                    group
                        .members
                        .iter()
                        .find(|(_, m)| m.group_instance_id.as_ref() == Some(inst))
                        .map(|(id, _)| id.clone())
                })
            } else {
                Some(member_id.clone())
            };
            match id {
                Some(id) if group.members.contains_key(&id) => {
                    group.remove_member(&id, now, self.initial_delay);
                    out.push(Ok(id));
                }
                _ => out.push(Err(GroupError::UnknownMemberId)),
            }
        }
        Ok(out)
    }

    /// Complete rebalances whose time is up and evict members whose session expired.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for group in groups.values_mut() {
            group.maybe_complete_join(now);
            group
                .pending_members
                .retain(|_, since| now.duration_since(*since) < PENDING_MEMBER_TTL);
            // A session expires in every state, as in Kafka: a member that died while a
            // rebalance waits for it is removed after its session timeout, so the
            // rebalance completes with the living instead of waiting out the rebalance
            // timeout. A member whose JoinGroup is waiting for the others is alive.
            if matches!(
                group.state,
                GroupState::Stable
                    | GroupState::CompletingRebalance
                    | GroupState::PreparingRebalance
            ) {
                let expired: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        m.join_waiter.is_none()
                            && now.duration_since(m.last_heartbeat) > m.session_timeout
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(member = %id, "consumer group member session expired");
                    group.remove_member(&id, now, self.initial_delay);
                }
            }
        }
    }

    /// Check that a commit comes from a current member (or is a standalone commit).
    fn check_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(now));
        if generation_id < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        let generation = group.generation;
        let state = group.state;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if generation_id != generation {
            return Err(GroupError::IllegalGeneration);
        }
        if state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        member.last_heartbeat = now;
        Ok(())
    }

    /// Store committed offsets durably, then make them visible to OffsetFetch.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        commits: Vec<OffsetCommit>,
    ) -> Result<(), GroupError> {
        self.check_commit(group_id, generation_id, member_id)?;
        if commits.is_empty() {
            return Ok(());
        }
        let _serial = self.commit_lock.lock().await;
        let rows: Vec<(String, u32, OffsetRecord)> = commits
            .iter()
            .map(|c| {
                (
                    c.topic.clone(),
                    u32::try_from(c.partition).unwrap_or(0),
                    c.record.clone(),
                )
            })
            .collect();
        let meta = self.meta.clone();
        let group = group_id.to_string();
        tokio::task::spawn_blocking(move || meta.commit_offsets(&group, &rows))
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        let now = Instant::now();
        let mut groups = self.lock();
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(now));
        for c in commits {
            group.offsets.insert((c.topic, c.partition), c.record);
        }
        Ok(())
    }

    /// Check a transactional offset commit's generation and member (KIP-447), as a
    /// plain commit's are checked.
    pub fn check_txn_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        self.check_commit(group_id, generation_id, member_id)
    }

    /// Show offsets a committed transaction stored (the meta store has them already).
    /// Rows are (group, topic, partition, offset), as the meta store took them.
    pub fn show_offsets(&self, rows: &[(String, String, u32, OffsetRecord)]) {
        if rows.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut groups = self.lock();
        for (group_id, topic, partition, record) in rows {
            let partition = i32::try_from(*partition).unwrap_or(i32::MAX);
            groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(now))
                .offsets
                .insert((topic.clone(), partition), record.clone());
        }
    }

    /// Committed offsets of a group: for the given partitions, or all when `None`.
    pub fn committed(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<((String, i32), Option<OffsetRecord>)> {
        let groups = self.lock();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match partitions {
            Some(wanted) => wanted
                .iter()
                .map(|key| (key.clone(), offsets.and_then(|o| o.get(key)).cloned()))
                .collect(),
            None => offsets
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn list(&self) -> Vec<GroupListing> {
        let groups = self.lock();
        let mut out: Vec<GroupListing> = groups
            .iter()
            .filter(|(_, g)| g.state != GroupState::Dead)
            .map(|(id, g)| GroupListing {
                group_id: id.clone(),
                state: g.state,
                protocol_type: g.protocol_type.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.lock();
        groups.get(group_id).map(|g| g.describe(group_id))
    }

    pub async fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        {
            let groups = self.lock();
            match groups.get(group_id) {
                None => return Err(GroupError::GroupIdNotFound),
                Some(g) if !g.is_empty() => return Err(GroupError::NonEmptyGroup),
                Some(_) => {}
            }
        }
        let _serial = self.commit_lock.lock().await;
        let meta = self.meta.clone();
        let group = group_id.to_string();
        tokio::task::spawn_blocking(move || meta.delete_group(&group))
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        let mut groups = self.lock();
        if groups.get(group_id).is_some_and(|g| g.is_empty()) {
            groups.remove(group_id);
        }
        Ok(())
    }

    /// Forget offsets for a deleted topic (the meta store deletes its own copy).
    pub fn forget_topic(&self, topic: &str) {
        let mut groups = self.lock();
        for group in groups.values_mut() {
            group.offsets.retain(|(t, _), _| t != topic);
        }
    }
}

enum JoinOutcome {
    Now(JoinResponse),
    Wait(oneshot::Receiver<Result<JoinResponse, GroupError>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(delay_ms: u64) -> (tempfile::TempDir, Arc<GroupCoordinator>) {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).unwrap());
        let mut config = BrokerConfig::new(dir.path().to_path_buf());
        config.group_initial_rebalance_delay_ms = delay_ms;
        (dir, Arc::new(GroupCoordinator::new(&config, meta).unwrap()))
    }

    fn join_req(member_id: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: true,
        }
    }

    async fn join_new(c: &GroupCoordinator) -> String {
        match c.join(join_req("")).await {
            Err(GroupError::MemberIdRequired(id)) => id,
            other => panic!("expected MEMBER_ID_REQUIRED, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_members_rebalance_and_sync() {
        let (_dir, c) = coordinator(50);
        let a = join_new(&c).await;
        let b = join_new(&c).await;
        let (c1, c2) = (c.clone(), c.clone());
        let (a2, b2) = (a.clone(), b.clone());
        let ja = tokio::spawn(async move { c1.join(join_req(&a2)).await });
        let jb = tokio::spawn(async move { c2.join(join_req(&b2)).await });
        // Both joined: the rebalance completes once the ticker sees the (zero) delay pass.
        tokio::time::sleep(Duration::from_millis(80)).await;
        c.tick();
        let ra = ja.await.unwrap().unwrap();
        let rb = jb.await.unwrap().unwrap();
        assert_eq!(ra.generation_id, 1);
        assert_eq!(ra.leader, rb.leader);
        let (leader, follower) = if ra.leader == a { (ra, rb) } else { (rb, ra) };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let c3 = c.clone();
        let fid = follower.member_id.clone();
        let fsync = tokio::spawn(async move { c3.sync("g", 1, &fid, vec![]).await });
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from_static(b"L")),
            (follower.member_id.clone(), Bytes::from_static(b"F")),
        ];
        let ls = c
            .sync("g", 1, &leader.member_id, assignments)
            .await
            .unwrap();
        assert_eq!(&ls.assignment[..], b"L");
        assert_eq!(&fsync.await.unwrap().unwrap().assignment[..], b"F");
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        assert!(c.heartbeat("g", 1, &leader.member_id).is_ok());
        assert_eq!(
            c.heartbeat("g", 0, &leader.member_id),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            c.heartbeat("g", 1, "nobody"),
            Err(GroupError::UnknownMemberId)
        );

        // One leaves: the other is told to rejoin.
        let left = c.leave("g", &[(follower.member_id.clone(), None)]).unwrap();
        assert!(left[0].is_ok());
        assert_eq!(
            c.heartbeat("g", 1, &leader.member_id),
            Err(GroupError::RebalanceInProgress)
        );
        let r = c.join(join_req(&leader.member_id)).await.unwrap();
        assert_eq!(r.generation_id, 2);
        assert_eq!(r.members.len(), 1);
    }

    #[tokio::test]
    async fn commits_need_a_current_member_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).unwrap());
        let config = BrokerConfig::new(dir.path().to_path_buf());
        let c = GroupCoordinator::new(&config, meta.clone()).unwrap();
        let commit = |offset| OffsetCommit {
            topic: "orders".into(),
            partition: 0,
            record: OffsetRecord {
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            },
        };
        c.commit_offsets("g", -1, "", vec![commit(42)])
            .await
            .unwrap();
        assert_eq!(
            c.commit_offsets("g", 3, "ghost", vec![commit(1)]).await,
            Err(GroupError::UnknownMemberId)
        );
        drop(c);
        let c = GroupCoordinator::new(&config, meta).unwrap();
        let got = c.committed("g", Some(&[("orders".into(), 0), ("orders".into(), 1)]));
        assert_eq!(got[0].1.as_ref().unwrap().offset, 42);
        assert!(got[1].1.is_none());
        assert_eq!(c.list().len(), 1);
        c.delete("g").await.unwrap();
        assert!(c.list().is_empty());
        assert_eq!(c.delete("g").await, Err(GroupError::GroupIdNotFound));
    }

    #[tokio::test]
    async fn an_expired_session_is_evicted() {
        let (_dir, c) = coordinator(0);
        let a = join_new(&c).await;
        let mut req = join_req(&a);
        req.session_timeout_ms = 6_000;
        let joined = c.join(req).await;
        // A lone member: the join completes when the ticker runs after the delay.
        let r = match joined {
            Ok(r) => r,
            Err(e) => panic!("{e:?}"),
        };
        c.sync(
            "g",
            r.generation_id,
            &a,
            vec![(a.clone(), Bytes::from_static(b"x"))],
        )
        .await
        .unwrap();
        {
            let mut groups = c.lock();
            let m = groups.get_mut("g").unwrap().members.get_mut(&a).unwrap();
            m.last_heartbeat = Instant::now() - Duration::from_secs(7);
        }
        c.tick();
        let d = c.describe("g").unwrap();
        assert_eq!(d.state, GroupState::Empty);
        assert!(d.members.is_empty());
    }

    #[tokio::test]
    async fn a_heartbeat_of_a_stale_generation_does_not_keep_a_session_alive() {
        let (_dir, c) = coordinator(0);
        let a = join_new(&c).await;
        let mut req = join_req(&a);
        req.session_timeout_ms = 6_000;
        let r = c.join(req).await.unwrap();
        c.sync(
            "g",
            r.generation_id,
            &a,
            vec![(a.clone(), Bytes::from_static(b"x"))],
        )
        .await
        .unwrap();
        let old = Instant::now() - Duration::from_secs(7);
        c.lock()
            .get_mut("g")
            .unwrap()
            .members
            .get_mut(&a)
            .unwrap()
            .last_heartbeat = old;
        assert_eq!(
            c.heartbeat("g", r.generation_id - 1, &a),
            Err(GroupError::IllegalGeneration)
        );
        c.tick();
        assert!(c.describe("g").unwrap().members.is_empty());
    }

    /// A member that died while a rebalance waits for it is removed after its session
    /// timeout, and the rebalance completes with the members that rejoined (before, it
    /// waited out the whole rebalance timeout: 300 s with kafka-python's defaults).
    #[tokio::test]
    async fn a_dead_member_is_evicted_while_a_rebalance_waits_for_it() {
        let (_dir, c) = coordinator(50);
        let a = join_new(&c).await;
        let b = join_new(&c).await;
        let long = |id: &str| {
            let mut r = join_req(id);
            r.session_timeout_ms = 6_000;
            r.rebalance_timeout_ms = 300_000;
            r
        };
        let (c1, c2) = (c.clone(), c.clone());
        let (ra, rb) = (long(&a), long(&b));
        let ja = tokio::spawn(async move { c1.join(ra).await });
        let jb = tokio::spawn(async move { c2.join(rb).await });
        tokio::time::sleep(Duration::from_millis(80)).await;
        c.tick();
        let gen1 = ja.await.unwrap().unwrap().generation_id;
        jb.await.unwrap().unwrap();
        // a rejoins (a new rebalance); b is dead and never does.
        let c3 = c.clone();
        let ra = long(&a);
        let rejoin = tokio::spawn(async move { c3.join(ra).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.tick();
        assert_eq!(
            c.describe("g").unwrap().state,
            GroupState::PreparingRebalance
        );
        {
            let mut groups = c.lock();
            let group = groups.get_mut("g").unwrap();
            for m in group.members.values_mut() {
                // Both last heard from 7 s ago; only b has no JoinGroup waiting.
                m.last_heartbeat = Instant::now() - Duration::from_secs(7);
            }
        }
        c.tick();
        let joined = tokio::time::timeout(Duration::from_secs(5), rejoin)
            .await
            .expect("the rebalance still waits for the dead member")
            .unwrap()
            .unwrap();
        assert_eq!(joined.generation_id, gen1 + 1);
        assert_eq!(joined.members.len(), 1, "only the living member is in");
        assert_eq!(joined.members[0].member_id, a);
    }

    /// List and describe report the same protocol type, the one Kafka reports: empty for
    /// a group that only committed offsets (admin clients call it a simple group),
    /// `consumer` for a consumer group, also once its last member left.
    #[tokio::test]
    async fn list_and_describe_agree_on_the_protocol_type() {
        let (_dir, c) = coordinator(0);
        let protocol_types = |c: &GroupCoordinator, group: &str| {
            let listed = c.list().into_iter().find(|g| g.group_id == group).unwrap();
            let described = c.describe(group).unwrap();
            assert_eq!(listed.state, described.state);
            (listed.protocol_type, described.protocol_type)
        };
        let commit = OffsetCommit {
            topic: "orders".into(),
            partition: 0,
            record: OffsetRecord {
                offset: 7,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 0,
            },
        };
        c.commit_offsets("simple", -1, "", vec![commit.clone()])
            .await
            .unwrap();
        assert_eq!(protocol_types(&c, "simple"), (String::new(), String::new()));

        let a = join_new(&c).await;
        let joined = c.join(join_req(&a)).await.unwrap();
        c.sync(
            "g",
            joined.generation_id,
            &a,
            vec![(a.clone(), Bytes::new())],
        )
        .await
        .unwrap();
        c.commit_offsets("g", joined.generation_id, &a, vec![commit])
            .await
            .unwrap();
        let consumer = || ("consumer".to_string(), "consumer".to_string());
        assert_eq!(protocol_types(&c, "g"), consumer());
        assert!(c.leave("g", &[(a, None)]).unwrap()[0].is_ok());
        assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
        assert_eq!(protocol_types(&c, "g"), consumer());

        // An emptied group takes whatever type its next first member brings.
        let b = join_new(&c).await;
        let mut other = join_req(&b);
        other.protocol_type = "connect".into();
        let joined = c.join(other).await.unwrap();
        assert_eq!(joined.protocol_type, "connect");
        assert_eq!(
            protocol_types(&c, "g"),
            ("connect".to_string(), "connect".to_string())
        );
    }

    #[tokio::test]
    async fn inconsistent_protocols_are_refused() {
        let (_dir, c) = coordinator(0);
        let a = join_new(&c).await;
        let c2 = c.clone();
        let _pending = tokio::spawn(async move { c2.join(join_req(&a)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut other = join_req("");
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            c.join(other).await.unwrap_err(),
            GroupError::InconsistentGroupProtocol
        );
    }
}
