//! What bounds the broker's memory and connections, whatever clients do. Every front end
//! (Kafka, HTTP, and those to come) takes its connections through a `ConnectionGate`
//! and the bytes of its request and response buffers from the one broker-wide
//! `MemoryBudget`, so the limits hold the same way on every listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Default of the broker-wide budget for request and response buffers.
pub const MEMORY_BUDGET_BYTES_DEFAULT: usize = 512 << 20;
/// Default of how long a response may wait for a socket that does not drain (any
/// listener) before the connection is closed.
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default of the connections one client address may hold on one listener.
pub const CONNECTIONS_MAX_PER_IP_DEFAULT: usize = 1_000;

/// `memory_budget_bytes`, split in two halves: requests being read or handled, and
/// responses being built or written. Apart, a client that stops reading (its response
/// held) can never keep another client's request from being read, and the requests
/// that return memory are always served.
#[derive(Debug, Clone)]
pub struct MemoryPools {
    pub requests: Arc<MemoryBudget>,
    pub responses: Arc<MemoryBudget>,
}

impl MemoryPools {
    pub fn new(total: usize) -> MemoryPools {
        let requests = total / 2;
        MemoryPools {
            requests: MemoryBudget::new(requests),
            responses: MemoryBudget::new(total - requests),
        }
    }
}

/// Bytes of request or response buffers held broker-wide. A front end reserves before
/// it reads a request or builds a response and waits while the budget is used up, so
/// sockets are not read until memory is returned. Waiters are served as memory frees;
/// a reservation larger than the whole budget is granted when nothing else is held, so
/// no request is refused for its size alone (request size has its own limit).
#[derive(Debug)]
pub struct MemoryBudget {
    total: usize,
    used: AtomicUsize,
    waits: AtomicU64,
    freed: Notify,
}

impl MemoryBudget {
    pub fn new(total: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            total: total.max(1),
            used: AtomicUsize::new(0),
            waits: AtomicU64::new(0),
            freed: Notify::new(),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// How many reservations had to wait for memory to be returned.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Reserve exactly `bytes`, waiting until they fit.
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.reserve_up_to(bytes, bytes).await
    }

    /// Reserve between `min` and `want` bytes (as much as is free), waiting until at
    /// least `min` fit. A fetch uses this: under pressure it answers with less.
    pub async fn reserve_up_to(self: &Arc<Self>, want: usize, min: usize) -> Reservation {
        let min = min.min(want);
        let mut counted = false;
        loop {
            // Register before checking, so a release between the check and the wait
            // is not missed.
            let freed = self.freed.notified();
            if let Some(granted) = self.try_take(want, min) {
                return Reservation {
                    budget: self.clone(),
                    bytes: granted,
                };
            }
            if !counted {
                self.waits.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            freed.await;
        }
    }

    /// Count `bytes` that are already allocated (a response that exists), without
    /// waiting: others wait for them until the reservation is dropped.
    pub fn count(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Reserve `bytes` now if they fit, else None.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.try_take(bytes, bytes).map(|granted| Reservation {
            budget: self.clone(),
            bytes: granted,
        })
    }

    fn try_take(&self, want: usize, min: usize) -> Option<usize> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let free = self.total.saturating_sub(used);
            let granted = if free >= min {
                want.min(free)
            } else if used == 0 {
                // Larger than the whole budget: alone, it may go through.
                min
            } else {
                return None;
            };
            match self.used.compare_exchange_weak(
                used,
                used + granted,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(granted),
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

/// Bytes held from a `MemoryBudget`, returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Fit the reservation to what was really used: returns the excess, or takes more
    /// without waiting (a fetch's first batch is sent whole even past its share, as
    /// Kafka does; the overshoot is counted so others wait for it).
    pub fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
        } else {
            self.budget
                .used
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its most connections.
    Total { limit: usize },
    /// This client address holds its most connections.
    PerIp { limit: usize },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total { limit } => write!(f, "the listener's {limit} connections are in use"),
            Refused::PerIp { limit } => {
                write!(f, "this address already holds its {limit} connections")
            }
        }
    }
}

/// Admission of one listener's connections: at most `max` at once, and at most
/// `per_ip_max` from one client address.
#[derive(Debug)]
pub struct ConnectionGate {
    max: usize,
    per_ip_max: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    open: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl ConnectionGate {
    pub fn new(max: usize, per_ip_max: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            max,
            per_ip_max,
            state: Mutex::new(GateState::default()),
        })
    }

    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Admit a connection from `ip`, or say which limit it hit.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let mut state = self.lock();
        if state.open >= self.max {
            return Err(Refused::Total { limit: self.max });
        }
        let from_ip = state.by_ip.entry(ip).or_insert(0);
        if *from_ip >= self.per_ip_max {
            return Err(Refused::PerIp {
                limit: self.per_ip_max,
            });
        }
        *from_ip += 1;
        state.open += 1;
        Ok(ConnectionPermit {
            gate: self.clone(),
            ip,
        })
    }

    /// The next connection this gate admits from `listener`, with TCP_NODELAY set.
    /// An accept error (usually EMFILE) backs off 50 ms instead of spinning; a refused
    /// connection is logged naming the listener (`what`: "Kafka", "HTTP", "AMQP"),
    /// reported to `refused` (a metric) and dropped. Every front end's accept loop.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &tokio::net::TcpListener,
        what: &str,
        refused: impl Fn(),
    ) -> (
        tokio::net::TcpStream,
        std::net::SocketAddr,
        ConnectionPermit,
    ) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.try_admit(peer.ip()) {
                Ok(permit) => {
                    let _ = socket.set_nodelay(true);
                    return (socket, peer, permit);
                }
                Err(why) => {
                    tracing::warn!(%peer, "{what} connection refused: {why}");
                    refused();
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is two counters: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(n) = state.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_memory_and_fetches_take_what_is_free() {
        let budget = MemoryBudget::new(100);
        let a = budget.reserve(70).await;
        assert_eq!(budget.used(), 70);
        // Up to 50, at least 10: gets the 30 that are free.
        let b = budget.reserve_up_to(50, 10).await;
        assert_eq!(b.bytes(), 30);
        assert!(budget.try_reserve(1).is_none());
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(60).await.bytes() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "60 bytes do not fit while 100 are held"
        );
        drop(a);
        assert_eq!(waiter.await.unwrap(), 60);
        assert_eq!(budget.waits(), 1);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_budget_goes_through_alone() {
        let budget = MemoryBudget::new(10);
        let mut big = budget.reserve(25).await;
        assert_eq!(budget.used(), 25);
        big.resize(5);
        assert_eq!(budget.used(), 5);
        big.resize(8);
        assert_eq!(budget.used(), 8);
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_gate_limits_per_address_and_in_total() {
        let gate = ConnectionGate::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = gate.try_admit(a).unwrap();
        let _a2 = gate.try_admit(a).unwrap();
        assert_eq!(gate.try_admit(a).unwrap_err(), Refused::PerIp { limit: 2 });
        let _b1 = gate.try_admit(b).unwrap();
        assert_eq!(gate.try_admit(b).unwrap_err(), Refused::Total { limit: 3 });
        drop(a1);
        assert_eq!(gate.open(), 2);
        let _a3 = gate.try_admit(a).unwrap();
    }
}
