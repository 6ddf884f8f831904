//! AMQP 0-9-1 exchanges and bindings: which queues a published message goes to, with
//! RabbitMQ's semantics and reply texts. Pure state, no IO: the caller persists what
//! every change reports (created, [`Removed`]) and rebuilds with [`Exchanges::restore`].
//!
//! Why it works the way it does:
//! - **RabbitMQ is the specification** (`rabbit_channel`, `rabbit_exchange`,
//!   `rabbit_binding`, the exchange type modules, 4.x). Where its code and the AMQP
//!   spec differ, clients expect the code: redeclaring compares type, durable,
//!   auto_delete, internal and only the `alternate-exchange` argument (other arguments
//!   are kept as first declared and never compared); `amq.*` names are refused only on
//!   creation, so redeclaring `amq.direct` as it is succeeds; deleting an exchange that
//!   does not exist, and unbinding what is not bound (even from or to something that
//!   does not exist), succeed; binding needs both ends (404, the source named first).
//! - **Queues are names registered here** ([`Exchanges::add_queue`]): the default
//!   exchange routes key `q` to queue `q` when it exists (its bindings are implicit and
//!   never stored), a queue binding needs its queue, and removing a queue removes its
//!   bindings. So every stored binding points at something that exists.
//! - **Routing walks exchanges once each.** The published-to exchange, then every
//!   exchange its matching bindings name, each exchange visited at most once, so
//!   cycles of exchange-to-exchange bindings end. An exchange whose bindings match
//!   nothing at all (exchange destinations count as matches) hands the message to its
//!   `alternate-exchange`, when that names an existing exchange not yet visited; that
//!   one may in turn use its own. This is `rabbit_exchange:route1`.
//! - **Auto-delete cascades without recursion.** An auto-delete exchange goes when it
//!   loses its last binding as a source (unbind, its destination deleted), which
//!   removes the bindings to it, which may empty another auto-delete exchange: a work
//!   list, so a long chain cannot overflow the stack.
//! - **Bindings are kept per source, by routing key**: direct routing is one map
//!   lookup, topic routing matches each distinct binding key once, and an index from
//!   destination to the sources binding it makes deleting a queue cost its bindings,
//!   not all bindings.
//! - **Limits.** Declared exchanges and bindings are bounded ([`Limits`]): clients
//!   create both, each costs memory for as long as it exists, and every publish to a
//!   fanout, topic or headers exchange walks its bindings.
//!
//! One virtual host, `/`: it appears in reply texts only.

mod error;
mod headers;
#[cfg(test)]
mod tests;
mod topic;
mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::ExchangeError;
pub use value::{Table, Value};

/// The virtual host every exchange lives in, as reply texts name it.
pub const VHOST: &str = "/";

/// The default exchange: every queue is bound to it with its own name as the key.
pub const DEFAULT_EXCHANGE: &str = "";

const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// What every virtual host of RabbitMQ starts with (`rabbit_vhost`): all durable.
const PREDECLARED: [(&str, ExchangeKind, bool); 7] = [
    (DEFAULT_EXCHANGE, ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    // Internal: RabbitMQ's firehose tracer publishes here; Herald never does, but
    // clients see the same set of exchanges as on RabbitMQ.
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// Whether `name` is one of the exchanges that always exist (and are not stored).
pub fn is_predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _, _)| *n == name)
}

/// Exchange types. Serialized by variant index: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// The type named in `exchange.declare` (case-sensitive, as RabbitMQ's).
    pub fn parse(name: &str) -> Result<Self, ExchangeError> {
        match name {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(ExchangeError::UnknownType(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl FromStr for ExchangeKind {
    type Err = ExchangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExchangeKind::parse(s)
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exchange as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

impl ExchangeDef {
    /// Not durable, not auto-delete, not internal, no arguments.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        ExchangeDef {
            name: name.into(),
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: Table::new(),
        }
    }

    /// The `alternate-exchange` argument, when it is a string.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get(ALTERNATE_EXCHANGE)
            .and_then(Value::as_str)
    }
}

/// Where a binding sends matching messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }
}

/// A binding. All four fields are its identity, as in RabbitMQ: the same source,
/// destination and key with other arguments is another binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: Table,
}

/// How many exchanges and bindings clients may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Exchanges besides the predeclared ones.
    pub exchanges_max: usize,
    pub bindings_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            exchanges_max: 10_000,
            bindings_max: 100_000,
        }
    }
}

/// The queues a message goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    pub queues: BTreeSet<String>,
}

/// What a change took away, for the caller to delete from storage: exchanges (the
/// one deleted first, then the auto-delete exchanges that went with it) and bindings
/// (in no particular order). Each is reported once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub exchanges: Vec<String>,
    pub bindings: Vec<Binding>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.bindings.is_empty()
    }
}

/// [`Exchanges::restore`]'s result: the state, and the stored bindings that named a
/// missing exchange or queue (left by a crash between two writes), for the caller to
/// delete from storage.
#[derive(Debug)]
pub struct Restored {
    pub exchanges: Exchanges,
    pub dropped: Vec<Binding>,
}

/// One exchange and its bindings as the source.
#[derive(Debug, Clone)]
struct Entry {
    def: ExchangeDef,
    /// Binding key -> (destination, arguments) of every binding with that key.
    routes: BTreeMap<String, BTreeSet<Target>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    destination: Destination,
    arguments: Table,
}

impl Entry {
    fn new(def: ExchangeDef) -> Self {
        Entry {
            def,
            routes: BTreeMap::new(),
        }
    }
}

/// Every exchange, binding and queue name of the virtual host.
#[derive(Debug, Clone)]
pub struct Exchanges {
    exchanges: BTreeMap<String, Entry>,
    queues: BTreeSet<String>,
    /// Destination -> source -> how many bindings of that source name it.
    inbound: BTreeMap<Destination, BTreeMap<String, usize>>,
    bindings: usize,
    limits: Limits,
}

impl Default for Exchanges {
    fn default() -> Self {
        Exchanges::new()
    }
}

impl Exchanges {
    /// The predeclared exchanges, no queues, default limits.
    pub fn new() -> Self {
        let exchanges = PREDECLARED
            .iter()
            .map(|&(name, kind, internal)| {
                let def = ExchangeDef {
                    durable: true,
                    internal,
                    ..ExchangeDef::new(name, kind)
                };
                (name.to_owned(), Entry::new(def))
            })
            .collect();
        Exchanges {
            exchanges,
            queues: BTreeSet::new(),
            inbound: BTreeMap::new(),
            bindings: 0,
            limits: Limits::default(),
        }
    }

    /// Rebuild from storage. Stored definitions of predeclared exchanges are ignored
    /// (those always exist as `new` makes them); bindings whose source or destination
    /// is missing are dropped and returned. Limits are not applied to what is stored.
    pub fn restore(
        defs: impl IntoIterator<Item = ExchangeDef>,
        queues: impl IntoIterator<Item = String>,
        bindings: impl IntoIterator<Item = Binding>,
    ) -> Restored {
        let mut exchanges = Exchanges::new();
        for def in defs {
            if !is_predeclared(&def.name) {
                exchanges
                    .exchanges
                    .insert(def.name.clone(), Entry::new(def));
            }
        }
        exchanges.queues.extend(queues);
        let mut dropped = Vec::new();
        for binding in bindings {
            if exchanges.check_bind(&binding).is_ok() {
                exchanges.insert_binding(&binding);
            } else {
                dropped.push(binding);
            }
        }
        Restored { exchanges, dropped }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// `exchange.declare` (not passive): whether the exchange was created. An existing
    /// one must be equivalent (406 naming the first difference); a new one must not be
    /// named `amq.*` (403), and its `alternate-exchange` must be a string (406). The
    /// alternate exchange need not exist.
    pub fn declare(&mut self, def: ExchangeDef) -> Result<bool, ExchangeError> {
        if def.name == DEFAULT_EXCHANGE {
            return Err(ExchangeError::DefaultExchange);
        }
        if let Some(current) = self.exchanges.get(&def.name) {
            check_equivalent(&current.def, &def)?;
            return Ok(false);
        }
        if def.name.starts_with("amq.") {
            return Err(ExchangeError::ReservedName(def.name));
        }
        if let Some(alternate) = def.arguments.get(ALTERNATE_EXCHANGE)
            && !matches!(alternate, Value::Str(_))
        {
            return Err(ExchangeError::AlternateExchangeType {
                type_name: alternate.type_name(),
                exchange: def.name,
            });
        }
        if self.declared_count() >= self.limits.exchanges_max {
            return Err(ExchangeError::ExchangeLimit {
                exchange: def.name,
                max: self.limits.exchanges_max,
            });
        }
        self.exchanges.insert(def.name.clone(), Entry::new(def));
        Ok(true)
    }

    /// `exchange.declare` with passive set: the exchange, or 404 (403 for the default).
    pub fn declare_passive(&self, name: &str) -> Result<&ExchangeDef, ExchangeError> {
        if name == DEFAULT_EXCHANGE {
            return Err(ExchangeError::DefaultExchange);
        }
        self.exchange(name)
            .ok_or_else(|| ExchangeError::NoExchange(name.to_owned()))
    }

    /// `exchange.delete`. Deleting what does not exist succeeds with nothing removed;
    /// the default and `amq.*` exchanges cannot be deleted (403); with `if_unused`, an
    /// exchange that is the source of a binding stays (406). Bindings to the exchange
    /// go with it, and so may auto-delete exchanges that had only those.
    pub fn delete(&mut self, name: &str, if_unused: bool) -> Result<Removed, ExchangeError> {
        if name == DEFAULT_EXCHANGE {
            return Err(ExchangeError::DefaultExchange);
        }
        if name.starts_with("amq.") {
            return Err(ExchangeError::SystemExchange(name.to_owned()));
        }
        let mut removed = Removed::default();
        let Some(entry) = self.exchanges.get(name) else {
            return Ok(removed);
        };
        if if_unused && !entry.routes.is_empty() {
            return Err(ExchangeError::InUse(name.to_owned()));
        }
        self.delete_exchange(name, &mut removed);
        Ok(removed)
    }

    /// `queue.bind` / `exchange.bind`: whether the binding is new (binding again is not
    /// an error). Neither end may be the default exchange (403); both must exist
    /// (404, the source checked first); a headers exchange checks `x-match` (406).
    pub fn bind(&mut self, binding: &Binding) -> Result<bool, ExchangeError> {
        self.check_bind(binding)?;
        let source = &self.exchanges[&binding.source];
        if source.def.kind == ExchangeKind::Headers {
            headers::validate(&binding.arguments)?;
        }
        let exists = source
            .routes
            .get(&binding.routing_key)
            .is_some_and(|targets| targets.contains(&target(binding)));
        if exists {
            return Ok(false);
        }
        if self.bindings >= self.limits.bindings_max {
            return Err(ExchangeError::BindingLimit {
                source: binding.source.clone(),
                max: self.limits.bindings_max,
            });
        }
        Ok(self.insert_binding(binding))
    }

    /// `queue.unbind` / `exchange.unbind`: what went (nothing when it was not bound,
    /// which is not an error); an auto-delete source left without bindings goes too.
    pub fn unbind(&mut self, binding: &Binding) -> Result<Removed, ExchangeError> {
        if binding.source == DEFAULT_EXCHANGE
            || binding.destination == Destination::Exchange(DEFAULT_EXCHANGE.to_owned())
        {
            return Err(ExchangeError::DefaultExchange);
        }
        let mut removed = Removed::default();
        if self.remove_binding(binding) {
            removed.bindings.push(binding.clone());
            let unused = self
                .exchanges
                .get(&binding.source)
                .is_some_and(|e| e.def.auto_delete && e.routes.is_empty());
            if unused {
                self.delete_exchange(&binding.source, &mut removed);
            }
        }
        Ok(removed)
    }

    /// A queue now exists: the default exchange routes to it and it can be bound.
    /// Whether it is new.
    pub fn add_queue(&mut self, name: &str) -> bool {
        self.queues.insert(name.to_owned())
    }

    /// A queue is gone: its bindings, and auto-delete exchanges left without any.
    pub fn remove_queue(&mut self, name: &str) -> Removed {
        let mut removed = Removed::default();
        if self.queues.remove(name) {
            self.remove_destination(Destination::Queue(name.to_owned()), &mut removed);
        }
        removed
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains(name)
    }

    /// `basic.publish`: the queues a message published to `exchange` goes to (none is
    /// not an error; the caller decides about `mandatory`). The exchange must exist
    /// (404) and not be internal (403).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &Table,
    ) -> Result<Routed, ExchangeError> {
        let entry = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| ExchangeError::NoExchange(exchange.to_owned()))?;
        if entry.def.internal {
            return Err(ExchangeError::InternalExchange(exchange.to_owned()));
        }
        Ok(self.route_from(entry, routing_key, headers))
    }

    pub fn exchange(&self, name: &str) -> Option<&ExchangeDef> {
        self.exchanges.get(name).map(|e| &e.def)
    }

    /// Every exchange, predeclared ones included, by name.
    pub fn exchanges(&self) -> impl Iterator<Item = &ExchangeDef> {
        self.exchanges.values().map(|e| &e.def)
    }

    /// Every binding (not the default exchange's implicit ones), sorted by source,
    /// destination, routing key, arguments.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut all: Vec<Binding> = self
            .exchanges
            .iter()
            .flat_map(|(source, entry)| {
                entry.routes.iter().flat_map(move |(key, targets)| {
                    targets.iter().map(move |t| Binding {
                        source: source.clone(),
                        destination: t.destination.clone(),
                        routing_key: key.clone(),
                        arguments: t.arguments.clone(),
                    })
                })
            })
            .collect();
        all.sort_unstable();
        all
    }

    pub fn binding_count(&self) -> usize {
        self.bindings
    }

    /// Exchanges besides the predeclared ones.
    pub fn declared_count(&self) -> usize {
        self.exchanges.len() - PREDECLARED.len()
    }

    fn route_from(&self, first: &Entry, routing_key: &str, headers: &Table) -> Routed {
        let mut routed = Routed::default();
        let mut seen: BTreeSet<&str> = BTreeSet::from([first.def.name.as_str()]);
        let mut work = vec![first];
        // Split once, the first time a topic exchange needs it.
        let mut key_words: Option<Vec<&str>> = None;
        while let Some(exchange) = work.pop() {
            if exchange.def.name == DEFAULT_EXCHANGE {
                if let Some(queue) = self.queues.get(routing_key) {
                    routed.queues.insert(queue.clone());
                }
                continue;
            }
            let matched = visit(
                exchange,
                routing_key,
                &mut key_words,
                headers,
                |dest| match dest {
                    Destination::Queue(queue) => {
                        debug_assert!(self.queues.contains(queue), "binding to missing queue");
                        if !routed.queues.contains(queue) {
                            routed.queues.insert(queue.clone());
                        }
                    }
                    Destination::Exchange(name) => {
                        if seen.insert(name.as_str())
                            && let Some(next) = self.exchanges.get(name)
                        {
                            work.push(next);
                        }
                    }
                },
            );
            if !matched
                && let Some(alternate) = exchange.def.alternate_exchange()
                && seen.insert(alternate)
                && let Some(next) = self.exchanges.get(alternate)
            {
                work.push(next);
            }
        }
        routed
    }

    /// 403 for the default exchange at either end, then 404 for a missing source,
    /// then for a missing destination.
    fn check_bind(&self, binding: &Binding) -> Result<(), ExchangeError> {
        if binding.source == DEFAULT_EXCHANGE
            || binding.destination == Destination::Exchange(DEFAULT_EXCHANGE.to_owned())
        {
            return Err(ExchangeError::DefaultExchange);
        }
        if !self.exchanges.contains_key(&binding.source) {
            return Err(ExchangeError::NoExchange(binding.source.clone()));
        }
        match &binding.destination {
            Destination::Queue(queue) if !self.queues.contains(queue) => {
                Err(ExchangeError::NoQueue(queue.clone()))
            }
            Destination::Exchange(name) if !self.exchanges.contains_key(name) => {
                Err(ExchangeError::NoExchange(name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Store a checked binding; whether it is new.
    fn insert_binding(&mut self, binding: &Binding) -> bool {
        let Some(entry) = self.exchanges.get_mut(&binding.source) else {
            return false;
        };
        let inserted = entry
            .routes
            .entry(binding.routing_key.clone())
            .or_default()
            .insert(target(binding));
        if inserted {
            self.bindings += 1;
            *self
                .inbound
                .entry(binding.destination.clone())
                .or_default()
                .entry(binding.source.clone())
                .or_default() += 1;
        }
        inserted
    }

    /// Remove one binding; whether it existed.
    fn remove_binding(&mut self, binding: &Binding) -> bool {
        let Some(entry) = self.exchanges.get_mut(&binding.source) else {
            return false;
        };
        let Some(targets) = entry.routes.get_mut(&binding.routing_key) else {
            return false;
        };
        if !targets.remove(&target(binding)) {
            return false;
        }
        if targets.is_empty() {
            entry.routes.remove(&binding.routing_key);
        }
        self.bindings -= 1;
        self.forget_inbound(&binding.destination, &binding.source);
        true
    }

    fn forget_inbound(&mut self, destination: &Destination, source: &str) {
        let Some(sources) = self.inbound.get_mut(destination) else {
            return;
        };
        if let Some(count) = sources.get_mut(source) {
            *count -= 1;
            if *count == 0 {
                sources.remove(source);
            }
        }
        if sources.is_empty() {
            self.inbound.remove(destination);
        }
    }

    /// Remove an exchange with its bindings both ways (and what that auto-deletes).
    fn delete_exchange(&mut self, name: &str, removed: &mut Removed) {
        let Some(entry) = self.exchanges.remove(name) else {
            return;
        };
        removed.exchanges.push(name.to_owned());
        for (key, targets) in entry.routes {
            for target in targets {
                self.bindings -= 1;
                self.forget_inbound(&target.destination, name);
                removed.bindings.push(Binding {
                    source: name.to_owned(),
                    destination: target.destination,
                    routing_key: key.clone(),
                    arguments: target.arguments,
                });
            }
        }
        self.remove_destination(Destination::Exchange(name.to_owned()), removed);
    }

    /// Remove every binding to `destination`, and every auto-delete exchange that this
    /// leaves without bindings, and the bindings to those, until nothing more goes.
    fn remove_destination(&mut self, destination: Destination, removed: &mut Removed) {
        let mut gone = vec![destination];
        while let Some(destination) = gone.pop() {
            let Some(sources) = self.inbound.remove(&destination) else {
                continue;
            };
            for source in sources.into_keys() {
                let Some(entry) = self.exchanges.get_mut(&source) else {
                    continue;
                };
                let before = removed.bindings.len();
                entry.routes.retain(|key, targets| {
                    targets.retain(|t| {
                        if t.destination != destination {
                            return true;
                        }
                        removed.bindings.push(Binding {
                            source: source.clone(),
                            destination: t.destination.clone(),
                            routing_key: key.clone(),
                            arguments: t.arguments.clone(),
                        });
                        false
                    });
                    !targets.is_empty()
                });
                self.bindings -= removed.bindings.len() - before;
                if entry.def.auto_delete && entry.routes.is_empty() {
                    self.exchanges.remove(&source);
                    removed.exchanges.push(source.clone());
                    gone.push(Destination::Exchange(source));
                }
            }
        }
    }

    /// Every invariant the state keeps, checked the slow way (tests call it after
    /// every change).
    #[cfg(test)]
    fn assert_consistent(&self) {
        for (name, kind, internal) in PREDECLARED {
            let def = &self.exchanges[name].def;
            assert_eq!(
                (def.kind, def.durable, def.internal),
                (kind, true, internal)
            );
        }
        let mut count = 0;
        let mut inbound: BTreeMap<Destination, BTreeMap<String, usize>> = BTreeMap::new();
        for (source, entry) in &self.exchanges {
            assert_eq!(&entry.def.name, source);
            for targets in entry.routes.values() {
                assert!(!targets.is_empty(), "empty key left in {source:?}");
                for t in targets {
                    count += 1;
                    *inbound
                        .entry(t.destination.clone())
                        .or_default()
                        .entry(source.clone())
                        .or_default() += 1;
                    match &t.destination {
                        Destination::Queue(q) => assert!(self.queues.contains(q), "{q:?}"),
                        Destination::Exchange(x) => {
                            assert!(self.exchanges.contains_key(x), "{x:?}")
                        }
                    }
                }
            }
        }
        assert_eq!(count, self.bindings);
        assert_eq!(inbound, self.inbound);
        assert!(self.exchanges[DEFAULT_EXCHANGE].routes.is_empty());
    }
}

fn target(binding: &Binding) -> Target {
    Target {
        destination: binding.destination.clone(),
        arguments: binding.arguments.clone(),
    }
}

/// Call `each` with the destination of every binding of `exchange` that takes the
/// message; whether there was one.
fn visit<'a, 'k>(
    exchange: &'a Entry,
    routing_key: &'k str,
    key_words: &mut Option<Vec<&'k str>>,
    headers: &Table,
    mut each: impl FnMut(&'a Destination),
) -> bool {
    let mut matched = false;
    let mut take = |targets: &'a BTreeSet<Target>| {
        for t in targets {
            matched = true;
            each(&t.destination);
        }
    };
    match exchange.def.kind {
        ExchangeKind::Direct => {
            if let Some(targets) = exchange.routes.get(routing_key) {
                take(targets);
            }
        }
        ExchangeKind::Fanout => exchange.routes.values().for_each(&mut take),
        ExchangeKind::Topic => {
            let words = key_words.get_or_insert_with(|| topic::words(routing_key).collect());
            for (pattern, targets) in &exchange.routes {
                if topic::matches(pattern, words) {
                    take(targets);
                }
            }
        }
        ExchangeKind::Headers => {
            for targets in exchange.routes.values() {
                for t in targets {
                    if headers::matches(&t.arguments, headers) {
                        matched = true;
                        each(&t.destination);
                    }
                }
            }
        }
    }
    matched
}

/// RabbitMQ's `assert_equivalence` for exchanges: type, durable, auto_delete,
/// internal, then the `alternate-exchange` argument; the first difference is the error.
fn check_equivalent(current: &ExchangeDef, requested: &ExchangeDef) -> Result<(), ExchangeError> {
    let fail = |arg: &'static str, received: String, was: String| {
        Err(ExchangeError::Inequivalent {
            exchange: current.name.clone(),
            arg,
            received,
            current: was,
        })
    };
    let quoted = |s: &str| format!("'{s}'");
    if current.kind != requested.kind {
        return fail(
            "type",
            quoted(requested.kind.as_str()),
            quoted(current.kind.as_str()),
        );
    }
    for (arg, was, received) in [
        ("durable", current.durable, requested.durable),
        ("auto_delete", current.auto_delete, requested.auto_delete),
        ("internal", current.internal, requested.internal),
    ] {
        if was != received {
            return fail(arg, quoted(&received.to_string()), quoted(&was.to_string()));
        }
    }
    let was = current.arguments.get(ALTERNATE_EXCHANGE);
    let received = requested.arguments.get(ALTERNATE_EXCHANGE);
    // RabbitMQ's `val/1`: a bare value quoted, a typed one spelled out, none as "none".
    let typed = |v: Option<&Value>| match v {
        None => "none".to_owned(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            v.erlang_text(true),
            v.type_name()
        ),
    };
    match (was, received) {
        (None, None) => Ok(()),
        (Some(was), Some(received)) if was.equivalent_arg(received) => Ok(()),
        (Some(was), Some(received)) => fail(
            ALTERNATE_EXCHANGE,
            quoted(&received.erlang_text(true)),
            quoted(&was.erlang_text(true)),
        ),
        (was, received) => fail(ALTERNATE_EXCHANGE, typed(received), typed(was)),
    }
}
