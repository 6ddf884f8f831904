//! The transaction coordinator: Kafka transactions (KIP-98) on one node.
//!
//! A transactional id owns a producer id and an epoch. Its state moves
//! `Empty -> Ongoing` (partitions or a group's offsets added) `-> PrepareCommit |
//! PrepareAbort` (EndTxn, or the broker aborting a transaction past its timeout) `->
//! CompleteCommit | CompleteAbort`, each step written durably to the meta store before
//! it is answered. Between Prepare and Complete the coordinator writes a marker (a
//! control batch) to every partition of the transaction and waits until each is
//! durable; the Complete step also makes the transaction's group offsets visible, in
//! the same meta-store write. A crash at any step leaves a Prepare state, which start-up
//! finishes (the markers are written again: a marker with nothing open ends nothing),
//! so a transaction is always wholly committed or wholly aborted.
//!
//! Fencing: InitProducerId bumps the epoch (aborting an open transaction first), and a
//! partition accepts a transactional batch only while its producer's transaction is
//! Ongoing at the current epoch with that partition added (checked under the
//! partition's write lock, the lock a marker is appended under), so a zombie's late
//! write can neither join the next transaction nor start a hanging one.
//!
//! Operations on one transactional id are serialised by its own lock (held across the
//! markers' fsyncs); different ids never wait for each other. Partitions read the
//! current states through [`TxnView`], a plain mutex they hold only for a lookup.

pub mod partition;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use herald_log::BatchHeader;
use herald_meta::{MetaStore, OffsetRecord};
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};
use crate::group::OffsetCommit;
use crate::{Broker, Principal, now_ms};

/// How often the coordinator looks for transactions past their timeout (and for
/// unfinished Prepare states, and idle ids to expire).
pub const TXN_TICK_MS: u64 = 1_000;
/// Epochs stop short of i16::MAX: past it a new producer id starts at epoch 0.
const EPOCH_MAX: i16 = i16::MAX - 1;

/// Where a transactional id's transaction is, as Kafka names the states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> Option<bool> {
        match self {
            TxnStatus::PrepareCommit => Some(true),
            TxnStatus::PrepareAbort => Some(false),
            _ => None,
        }
    }
}

/// A transactional id's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnState {
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last bump (-1 if none): a producer that lost the answer
    /// to its InitProducerId (KIP-360) may name it.
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// The partitions the open (or finishing) transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups whose offsets the transaction may commit (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    /// Offsets committed in the transaction, per group: visible once it commits.
    pub offsets: BTreeMap<String, Vec<(String, i32, OffsetRecord)>>,
    /// When the open transaction began (its first AddPartitions / AddOffsets).
    pub started_ms: i64,
    pub updated_ms: i64,
}

impl TxnState {
    fn new(producer_id: i64, timeout_ms: i32, now: i64) -> TxnState {
        TxnState {
            producer_id,
            epoch: 0,
            last_epoch: -1,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            offsets: BTreeMap::new(),
            started_ms: -1,
            updated_ms: now,
        }
    }

    /// Start a transaction if none is open; a finishing one must finish first.
    fn begin(&mut self, id: &str, now: i64) -> Result<()> {
        match self.status {
            TxnStatus::Ongoing => Ok(()),
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                self.status = TxnStatus::Ongoing;
                self.partitions.clear();
                self.groups.clear();
                self.offsets.clear();
                self.started_ms = now;
                Ok(())
            }
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                Err(BrokerError::ConcurrentTransactions(format!(
                    "the previous transaction of {id:?} is still being completed"
                )))
            }
        }
    }

    /// What the housekeeping tick must do with this state now, if anything.
    fn housekeeping(&self, now: i64, expiration_ms: i64) -> Option<Housekeeping> {
        match self.status {
            TxnStatus::Ongoing
                if now.saturating_sub(self.started_ms) > i64::from(self.timeout_ms) =>
            {
                Some(Housekeeping::TimeOut)
            }
            TxnStatus::PrepareCommit => Some(Housekeeping::Finish { commit: true }),
            TxnStatus::PrepareAbort => Some(Housekeeping::Finish { commit: false }),
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                if now.saturating_sub(self.updated_ms) > expiration_ms =>
            {
                Some(Housekeeping::Expire)
            }
            _ => None,
        }
    }

    /// The epoch that fences the current instance (its transaction is aborted at it).
    /// The producer id stays: the markers must carry the id the data was written with.
    fn fence(&mut self) {
        if self.epoch < i16::MAX {
            self.last_epoch = self.epoch;
            self.epoch += 1;
        }
    }

    /// The next epoch (KIP-360), or a new producer id when epochs run out.
    fn bump(&mut self, new_producer_id: impl FnOnce() -> Result<i64>) -> Result<()> {
        if self.epoch >= EPOCH_MAX {
            self.producer_id = new_producer_id()?;
            self.last_epoch = -1;
            self.epoch = 0;
        } else {
            self.last_epoch = self.epoch;
            self.epoch += 1;
        }
        Ok(())
    }
}

/// A housekeeping step for one transactional id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Housekeeping {
    TimeOut,
    Finish { commit: bool },
    Expire,
}

/// The coordinator's states, for the partitions' produce checks and for readers.
#[derive(Debug, Default)]
pub struct TxnView {
    inner: Mutex<ViewInner>,
}

#[derive(Debug, Default)]
struct ViewInner {
    by_id: HashMap<String, TxnState>,
    by_producer: HashMap<i64, String>,
}

impl TxnView {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Option<TxnState> {
        self.lock().by_id.get(id).cloned()
    }

    fn set(&self, id: &str, state: Option<TxnState>) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_id.remove(id) {
            inner.by_producer.remove(&old.producer_id);
        }
        if let Some(state) = state {
            inner.by_producer.insert(state.producer_id, id.to_string());
            inner.by_id.insert(id.to_string(), state);
        }
    }

    /// May this transactional batch go into `topic`/`partition`? Only while its
    /// producer's transaction is Ongoing, at the current epoch, with the partition
    /// added (KIP-890's verification, which a single node can always do).
    pub fn verify_produce(&self, topic: &str, partition: i32, header: &BatchHeader) -> Result<()> {
        let inner = self.lock();
        let pid = header.producer_id;
        let Some((id, state)) = inner
            .by_producer
            .get(&pid)
            .and_then(|id| inner.by_id.get(id).map(|s| (id, s)))
        else {
            return Err(BrokerError::InvalidProducerIdMapping(format!(
                "producer id {pid} belongs to no transactional id"
            )));
        };
        if header.producer_epoch != state.epoch {
            return Err(BrokerError::InvalidProducerEpoch {
                producer_id: pid,
                epoch: header.producer_epoch,
                current: state.epoch,
            });
        }
        let added = state
            .partitions
            .iter()
            .any(|(t, p)| *p == partition && t == topic);
        if state.status != TxnStatus::Ongoing || !added {
            return Err(BrokerError::InvalidTxnState(format!(
                "{topic}-{partition} is not in an open transaction of {id:?} \
                 (AddPartitionsToTxn first)"
            )));
        }
        Ok(())
    }

    /// Whether `group` has offsets of an unfinished transaction for `topic`/`partition`
    /// (OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT then).
    pub fn pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.lock().by_id.values().any(|s| {
            s.offsets
                .get(group)
                .is_some_and(|o| o.iter().any(|(t, p, _)| *p == partition && t == topic))
        })
    }

    /// Every transactional id with its state.
    pub fn all(&self) -> Vec<(String, TxnState)> {
        let mut out: Vec<(String, TxnState)> = self
            .lock()
            .by_id
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The state of one transactional id.
    pub fn state(&self, id: &str) -> Option<TxnState> {
        self.get(id)
    }

    /// The transactional id a producer id belongs to.
    pub fn transactional_id(&self, producer_id: i64) -> Option<String> {
        self.lock().by_producer.get(&producer_id).cloned()
    }

    /// Ids the housekeeping tick has work for: open past their timeout, left in a
    /// Prepare state, or idle past `expiration_ms`. Looked at under the lock, nothing
    /// copied but the ids.
    fn due(&self, now: i64, expiration_ms: i64) -> Vec<String> {
        self.lock()
            .by_id
            .iter()
            .filter(|(_, s)| s.housekeeping(now, expiration_ms).is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// The coordinator: the view plus what changes it.
pub struct Transactions {
    pub view: Arc<TxnView>,
    meta: Arc<MetaStore>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Transactions {
    pub(crate) fn open(meta: Arc<MetaStore>) -> Result<Transactions> {
        let view = Arc::new(TxnView::default());
        for (id, bytes) in meta.transactions()? {
            match serde_json::from_slice::<TxnState>(&bytes) {
                Ok(state) => view.set(&id, Some(state)),
                Err(e) => {
                    return Err(BrokerError::Storage(format!(
                        "transactional id {id:?}: stored state unreadable: {e}"
                    )));
                }
            }
        }
        Ok(Transactions {
            view,
            meta,
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 1_024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Write `state` (None: forget the id) and `offsets` in one meta-store commit,
    /// then show it.
    async fn store(
        &self,
        id: &str,
        state: Option<TxnState>,
        offsets: Vec<(String, String, u32, OffsetRecord)>,
    ) -> Result<()> {
        let bytes = match &state {
            Some(s) => Some(
                serde_json::to_vec(s)
                    .map_err(|e| BrokerError::Storage(format!("cannot encode state: {e}")))?,
            ),
            None => None,
        };
        let meta = self.meta.clone();
        let key = id.to_string();
        tokio::task::spawn_blocking(move || {
            meta.complete_transaction(&key, bytes.as_deref(), &offsets)
        })
        .await
        .map_err(|e| BrokerError::Storage(e.to_string()))??;
        self.view.set(id, state);
        Ok(())
    }
}

/// Check that a request's producer id and epoch are the transactional id's current
/// ones.
fn check_producer(id: &str, state: &TxnState, producer_id: i64, epoch: i16) -> Result<()> {
    if producer_id != state.producer_id {
        return Err(BrokerError::InvalidProducerIdMapping(format!(
            "producer id {producer_id} is not the current producer of {id:?}"
        )));
    }
    if epoch != state.epoch {
        return Err(BrokerError::ProducerFenced {
            transactional_id: id.to_string(),
            producer_id,
            epoch,
            current: state.epoch,
        });
    }
    Ok(())
}

/// What a transaction's completion makes of its offsets: the group offset rows.
fn offset_rows(state: &TxnState) -> Vec<(String, String, u32, OffsetRecord)> {
    state
        .offsets
        .iter()
        .flat_map(|(group, rows)| {
            rows.iter().map(move |(t, p, r)| {
                (
                    group.clone(),
                    t.clone(),
                    u32::try_from(*p).unwrap_or(0),
                    r.clone(),
                )
            })
        })
        .collect()
}

impl Broker {
    fn txns(&self) -> &Transactions {
        &self.txn
    }

    /// The coordinator's view of every transactional id.
    pub fn transactions(&self) -> &Arc<TxnView> {
        &self.txn.view
    }

    /// InitProducerId with a transactional id: the id's producer id and a new epoch,
    /// which fences any older instance (its open transaction is aborted first).
    /// `expected` is the producer id and epoch the client had (KIP-360), if any.
    pub async fn init_transactional_producer(
        &self,
        _who: &Principal,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16)> {
        if id.is_empty() {
            return Err(BrokerError::InvalidRequest(
                "the transactional id is empty".into(),
            ));
        }
        let max_ms = self.config.transaction_max_timeout_ms;
        if timeout_ms <= 0 || timeout_ms > max_ms {
            return Err(BrokerError::InvalidTransactionTimeout { timeout_ms, max_ms });
        }
        let lock = self.txns().lock_of(id);
        let _serial = lock.lock().await;
        let now = now_ms();
        let Some(mut state) = self.txns().view.get(id) else {
            if expected.is_some_and(|(pid, _)| pid >= 0) {
                return Err(BrokerError::InvalidProducerIdMapping(format!(
                    "transactional id {id:?} has no producer id (it expired or never existed)"
                )));
            }
            let count = self.txns().view.count();
            if count >= self.config.transactional_ids_max {
                return Err(BrokerError::TooManyTransactionalIds { count });
            }
            let state = TxnState::new(self.allocate_producer_id()?, timeout_ms, now);
            let answer = (state.producer_id, state.epoch);
            self.txns().store(id, Some(state), Vec::new()).await?;
            return Ok(answer);
        };
        if let Some((pid, epoch)) = expected.filter(|(pid, _)| *pid >= 0) {
            if pid != state.producer_id {
                return Err(BrokerError::InvalidProducerIdMapping(format!(
                    "producer id {pid} is not the current producer of {id:?}"
                )));
            }
            if epoch != state.epoch && epoch != state.last_epoch {
                return Err(BrokerError::ProducerFenced {
                    transactional_id: id.to_string(),
                    producer_id: pid,
                    epoch,
                    current: state.epoch,
                });
            }
            if epoch == state.last_epoch && state.status == TxnStatus::Empty {
                // A retry of the bump that already happened.
                return Ok((state.producer_id, state.epoch));
            }
        }
        if let Some(commit) = state.status.preparing() {
            // An earlier completion did not finish (a failed marker write): finish it.
            state = self.complete(id, state, commit).await?;
        }
        if state.status == TxnStatus::Ongoing {
            // Fence the old instance: abort its transaction at the new epoch, which is
            // the new instance's (unless epochs ran out: then a new producer id).
            state.fence();
            state.status = TxnStatus::PrepareAbort;
            state.updated_ms = now;
            self.txns()
                .store(id, Some(state.clone()), Vec::new())
                .await?;
            state = self.complete(id, state, false).await?;
            if state.epoch > EPOCH_MAX {
                state.bump(|| self.allocate_producer_id())?;
            }
        } else {
            state.bump(|| self.allocate_producer_id())?;
        }
        state.status = TxnStatus::Empty;
        state.timeout_ms = timeout_ms;
        state.updated_ms = now;
        let answer = (state.producer_id, state.epoch);
        self.txns().store(id, Some(state), Vec::new()).await?;
        Ok(answer)
    }

    /// Write the markers of a transaction in `state` (a Prepare state), then its
    /// Complete state with the offsets a commit makes visible. Returns the new state.
    async fn complete(&self, id: &str, mut state: TxnState, commit: bool) -> Result<TxnState> {
        let now = now_ms();
        let mut pending = Vec::with_capacity(state.partitions.len());
        for (topic, index) in &state.partitions {
            // A topic deleted since has nothing left to mark.
            let Some(topic) = self.topic(topic) else {
                continue;
            };
            let Ok(partition) = topic.partition(*index) else {
                continue;
            };
            pending.push(partition.append_marker(state.producer_id, state.epoch, commit, now)?);
        }
        for p in pending {
            p.durable().await?;
        }
        let offsets = if commit {
            offset_rows(&state)
        } else {
            Vec::new()
        };
        state.status = if commit {
            TxnStatus::CompleteCommit
        } else {
            TxnStatus::CompleteAbort
        };
        state.offsets.clear();
        state.groups.clear();
        state.partitions.clear();
        state.updated_ms = now;
        self.txns()
            .store(id, Some(state.clone()), offsets.clone())
            .await?;
        self.groups.show_offsets(&offsets);
        Ok(state)
    }

    /// AddPartitionsToTxn: the partitions a transaction will write to. Every partition
    /// must exist; if one does not, none is added.
    pub async fn add_partitions_to_txn(
        &self,
        _who: &Principal,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<()> {
        let lock = self.txns().lock_of(id);
        let _serial = lock.lock().await;
        let mut state = self
            .txns()
            .view
            .get(id)
            .ok_or_else(|| BrokerError::TransactionalIdNotFound(id.to_string()))?;
        check_producer(id, &state, producer_id, epoch)?;
        for (topic, index) in partitions {
            let topic = self
                .topic(topic)
                .ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
            topic.partition(*index)?;
        }
        let now = now_ms();
        let before = state.clone();
        state.begin(id, now)?;
        state.partitions.extend(partitions.iter().cloned());
        if state == before {
            return Ok(());
        }
        state.updated_ms = now;
        self.txns().store(id, Some(state), Vec::new()).await
    }

    /// AddOffsetsToTxn: the transaction will commit offsets of `group`.
    pub async fn add_offsets_to_txn(
        &self,
        _who: &Principal,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
    ) -> Result<()> {
        if group.is_empty() {
            return Err(crate::group::GroupError::InvalidGroupId.into());
        }
        let lock = self.txns().lock_of(id);
        let _serial = lock.lock().await;
        let mut state = self
            .txns()
            .view
            .get(id)
            .ok_or_else(|| BrokerError::TransactionalIdNotFound(id.to_string()))?;
        check_producer(id, &state, producer_id, epoch)?;
        let now = now_ms();
        state.begin(id, now)?;
        state.groups.insert(group.to_string());
        state.updated_ms = now;
        self.txns().store(id, Some(state), Vec::new()).await
    }

    /// TxnOffsetCommit: offsets of `group` that become visible when the transaction
    /// commits. The consumer's generation and member are checked as OffsetCommit
    /// checks them (KIP-447), so a consumer that lost its partitions cannot commit.
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_offset_commit(
        &self,
        _who: &Principal,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        generation_id: i32,
        member_id: &str,
        commits: Vec<OffsetCommit>,
    ) -> Result<()> {
        let lock = self.txns().lock_of(id);
        let _serial = lock.lock().await;
        let mut state = self
            .txns()
            .view
            .get(id)
            .ok_or_else(|| BrokerError::TransactionalIdNotFound(id.to_string()))?;
        check_producer(id, &state, producer_id, epoch)?;
        if state.status != TxnStatus::Ongoing || !state.groups.contains(group) {
            return Err(BrokerError::InvalidTxnState(format!(
                "group {group:?} was not added to the open transaction of {id:?} \
                 (AddOffsetsToTxn first)"
            )));
        }
        self.groups
            .check_txn_commit(group, generation_id, member_id)?;
        let rows = state.offsets.entry(group.to_string()).or_default();
        for c in commits {
            rows.retain(|(t, p, _)| !(*p == c.partition && *t == c.topic));
            rows.push((c.topic, c.partition, c.record));
        }
        state.updated_ms = now_ms();
        self.txns().store(id, Some(state), Vec::new()).await
    }

    /// EndTxn: commit or abort the open transaction. A retry of a commit (or abort)
    /// that completed succeeds again; the other outcome is INVALID_TXN_STATE.
    pub async fn end_txn(
        &self,
        _who: &Principal,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<()> {
        let lock = self.txns().lock_of(id);
        let _serial = lock.lock().await;
        let mut state = self
            .txns()
            .view
            .get(id)
            .ok_or_else(|| BrokerError::TransactionalIdNotFound(id.to_string()))?;
        check_producer(id, &state, producer_id, epoch)?;
        let wanted = if commit { "commit" } else { "abort" };
        match (state.status, commit) {
            (TxnStatus::Ongoing, _) => {}
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                return Ok(());
            }
            (TxnStatus::PrepareCommit, true) | (TxnStatus::PrepareAbort, false) => {
                // An earlier EndTxn stopped part-way: finish it.
                self.complete(id, state, commit).await?;
                return Ok(());
            }
            (status, _) => {
                return Err(BrokerError::InvalidTxnState(format!(
                    "cannot {wanted} the transaction of {id:?}: it is {}",
                    status.name()
                )));
            }
        }
        state.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        state.updated_ms = now_ms();
        self.txns()
            .store(id, Some(state.clone()), Vec::new())
            .await?;
        self.complete(id, state, commit).await?;
        Ok(())
    }

    /// Abort the transactions past their timeout (bumping the epoch, so the producer
    /// is fenced), finish Prepare states a failure left, and forget idle ids past
    /// `transactional_id_expiration_ms`.
    pub(crate) async fn txn_tick(&self) {
        let now = now_ms();
        let expiration = self.config.transactional_id_expiration_ms;
        for id in self.txns().view.due(now, expiration) {
            let lock = self.txns().lock_of(&id);
            // An operation under way on this id will move it on; look again next tick.
            let Ok(_serial) = lock.try_lock() else {
                continue;
            };
            // Read again under the lock: it may have moved since.
            let Some(mut state) = self.txns().view.get(&id) else {
                continue;
            };
            let result = match state.housekeeping(now, expiration) {
                None => Ok(()),
                Some(Housekeeping::TimeOut) => {
                    tracing::info!(transactional_id = %id, producer_id = state.producer_id, timeout_ms = state.timeout_ms, "aborting a transaction past its timeout");
                    state.fence();
                    state.status = TxnStatus::PrepareAbort;
                    state.updated_ms = now;
                    match self
                        .txns()
                        .store(&id, Some(state.clone()), Vec::new())
                        .await
                    {
                        Ok(()) => self.complete(&id, state, false).await.map(|_| ()),
                        Err(e) => Err(e),
                    }
                }
                Some(Housekeeping::Finish { commit }) => {
                    self.complete(&id, state, commit).await.map(|_| ())
                }
                Some(Housekeeping::Expire) => {
                    tracing::info!(transactional_id = %id, "transactional id expired");
                    self.txns().store(&id, None, Vec::new()).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(transactional_id = %id, error = %e, "transaction housekeeping failed; retrying");
            }
        }
    }

    /// WriteTxnMarkers from an administrator (`kafka-transactions.sh abort`): end the
    /// transaction `producer_id` has open in one partition, by writing its marker
    /// there. For a hanging transaction, one no coordinator will end. An epoch older
    /// than the partition's current one for that producer is refused.
    pub async fn write_txn_marker(
        &self,
        _who: &Principal,
        topic: &str,
        partition: i32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<()> {
        let topic = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let partition = topic.partition(partition)?;
        if let Some((_, current, _, _)) = partition
            .producers()
            .into_iter()
            .find(|(id, ..)| *id == producer_id)
            && epoch < current
        {
            return Err(BrokerError::InvalidProducerEpoch {
                producer_id,
                epoch,
                current,
            });
        }
        tracing::warn!(topic = %topic.name, partition = partition.index, producer_id, epoch, commit, "transaction marker written by an administrator");
        partition
            .append_marker(producer_id, epoch, commit, now_ms())?
            .durable()
            .await?;
        Ok(())
    }

    /// At start-up, after the partitions are open: finish what a crash interrupted.
    /// Prepare states are completed; a partition with a transaction open for a
    /// producer whose transaction is not open any more (its marker was lost with an
    /// unflushed tail) gets the marker its state says (abort when unknown), so no
    /// partition's last stable offset is stuck.
    pub(crate) async fn recover_transactions(&self) -> Result<()> {
        for (id, state) in self.txns().view.all() {
            if let Some(commit) = state.status.preparing() {
                tracing::info!(transactional_id = %id, commit, "completing a transaction interrupted by a restart");
                self.complete(&id, state, commit).await?;
            }
        }
        let now = now_ms();
        let mut pending = Vec::new();
        for topic in self.topics() {
            for partition in &topic.partitions {
                for (pid, _first) in partition.open_transactions() {
                    let state = self
                        .txns()
                        .view
                        .transactional_id(pid)
                        .and_then(|id| self.txns().view.get(&id));
                    let (epoch, commit) = match &state {
                        Some(s) if s.status == TxnStatus::Ongoing => continue,
                        Some(s) => (s.epoch, s.status == TxnStatus::CompleteCommit),
                        None => (i16::MAX, false),
                    };
                    tracing::warn!(topic = %topic.name, partition = partition.index, producer_id = pid, commit, "ending a transaction left open in the log");
                    pending.push(partition.append_marker(pid, epoch, commit, now)?);
                }
            }
        }
        for p in pending {
            p.durable().await?;
        }
        Ok(())
    }
}

/// Run the coordinator's housekeeping every [`TXN_TICK_MS`] while the broker lives.
pub(crate) fn spawn_tick(broker: Weak<Broker>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(TXN_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            broker.txn_tick().await;
        }
    });
}
