//! Group commit of queue state: every partition-state write queued while the previous
//! redb transaction ran goes into the next one, so many acks share one fsync.
//! A write only names a (subscription, partition); its state is encoded when the
//! transaction is built, once per partition however many transitions it holds, and
//! always after those transitions (so the newest state is what lands).

use std::sync::{Arc, Mutex};

use herald_meta::{MetaStore, QueueStateWrite};
use tokio::sync::{Notify, oneshot};

use crate::error::{BrokerError, Result};

/// A partition of a subscription whose state changed.
pub(crate) type Write = (Arc<super::Subscription>, u32);
type Waiter = oneshot::Sender<std::result::Result<(), String>>;

pub(crate) struct GroupCommit {
    queued: Mutex<(Vec<Write>, Vec<Waiter>)>,
    wake: Arc<Notify>,
}

/// A queued write's answer.
pub type Wait = oneshot::Receiver<std::result::Result<(), String>>;

impl GroupCommit {
    pub fn spawn(meta: Arc<MetaStore>) -> Arc<GroupCommit> {
        let gc = Arc::new(GroupCommit {
            queued: Mutex::new((Vec::new(), Vec::new())),
            wake: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&gc);
        let wake = gc.wake.clone();
        // Weak, so that dropping the broker closes the database even while this waits.
        let meta = Arc::downgrade(&meta);
        tokio::spawn(async move {
            loop {
                let notified = wake.notified();
                let taken = {
                    let Some(gc) = weak.upgrade() else { return };
                    let Ok(mut q) = gc.queued.lock() else { return };
                    std::mem::take(&mut *q)
                };
                let (writes, waiters) = taken;
                if waiters.is_empty() {
                    // A timeout too, so the task sees the broker dropped (weak handle).
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_millis(500), notified).await;
                    continue;
                }
                let Some(meta) = meta.upgrade() else { return };
                let outcome = tokio::task::spawn_blocking(move || {
                    let mut seen = std::collections::HashSet::new();
                    let mut taken = Vec::new();
                    for (sub, p) in &writes {
                        if seen.insert((Arc::as_ptr(sub), *p))
                            && let Some(changes) = sub.snapshot(*p)?
                        {
                            taken.push((sub, *p, changes));
                        }
                    }
                    let stored = store(&meta, &taken);
                    if stored.is_err() {
                        for (sub, p, changes) in &taken {
                            sub.unsnapshot(*p, changes);
                        }
                    }
                    stored
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                for w in waiters {
                    let _ = w.send(outcome.clone());
                }
            }
        });
        gc
    }

    /// Queue writes for the next transaction; await the answer with [`wait`].
    pub fn enqueue(&self, writes: Vec<Write>) -> Wait {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = self.queued.lock() {
            q.0.extend(writes);
            q.1.push(tx);
        }
        self.wake.notify_one();
        rx
    }

    pub async fn submit(&self, writes: Vec<Write>) -> Result<()> {
        wait(self.enqueue(writes)).await
    }
}

/// Write the changes taken from partitions in one transaction.
fn store(
    meta: &MetaStore,
    taken: &[(&Arc<super::Subscription>, u32, super::Changes)],
) -> std::result::Result<(), String> {
    let mut encoded = Vec::with_capacity(taken.len());
    for (sub, p, changes) in taken {
        let (header, entries) = super::encode_changes(changes).map_err(|e| {
            format!(
                "cannot encode the state of {}/{}/{p}: {e}",
                sub.topic, sub.name
            )
        })?;
        encoded.push((sub, *p, header, entries, changes.remove_below));
    }
    let refs: Vec<QueueStateWrite<'_>> = encoded
        .iter()
        .map(|(sub, p, header, entries, remove_below)| QueueStateWrite {
            topic: &sub.topic,
            subscription: &sub.name,
            partition: *p,
            header,
            entries,
            remove_below: *remove_below,
        })
        .collect();
    meta.put_queue_states(&refs).map_err(|e| e.to_string())
}

/// Wait until the queued writes are durable.
pub async fn wait(rx: Wait) -> Result<()> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Storage(format!("queue state commit: {e}"))),
        Err(_) => Err(BrokerError::ShuttingDown),
    }
}
