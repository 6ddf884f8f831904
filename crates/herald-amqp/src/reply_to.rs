//! Direct reply-to (`amq.rabbitmq.reply-to`), RabbitMQ's RPC shortcut: a client
//! consumes from the pseudo-queue with no-ack and publishes requests whose `reply-to`
//! names it; the broker rewrites that to a token naming the client's channel, and a
//! reply published to the default exchange with the token as routing key goes straight
//! to that channel's consumer. Replies are never stored (a reply to a channel that has
//! gone is dropped), so this lives in the AMQP front end, not the broker: it is a way
//! of handing a frame from one connection to another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use amq_protocol::protocol::{AMQPClass, basic};
use bytes::{Bytes, BytesMut};

use crate::consumer::{ChannelShared, Out};
use crate::frame;
use crate::values::short;

/// The pseudo-queue a reply consumer consumes from, and the `reply-to` value a request
/// names it with.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// What a rewritten `reply-to` (the routing key of a reply) starts with.
pub const TOKEN_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The channel a token names.
pub struct ReplyTarget {
    pub out: Out,
    pub channel: u16,
    pub consumer_tag: Arc<str>,
    pub shared: Arc<ChannelShared>,
    pub frame_max: usize,
}

/// Every connection's reply consumers (at most one per channel), by token.
#[derive(Clone, Default)]
pub struct ReplyTo(Arc<Mutex<HashMap<String, ReplyTarget>>>);

/// What became of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Replied {
    Delivered,
    /// No such token (its channel closed, or never existed): dropped.
    NoConsumer,
    /// The requesting connection's writer queue is full (it stopped reading): dropped
    /// rather than making the replier wait on another client's socket.
    Dropped,
}

impl ReplyTo {
    /// Register a channel's reply consumer; returns its token.
    pub fn register(&self, target: ReplyTarget) -> String {
        let token = format!("{TOKEN_PREFIX}{}", crate::values::random_suffix(32));
        if let Ok(mut map) = self.0.lock() {
            map.insert(token.clone(), target);
        }
        token
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(token);
        }
    }

    /// Hand a reply to the channel `token` names, as a `basic.deliver` from the default
    /// exchange with the token as routing key and the publisher's properties.
    pub fn deliver(&self, token: &str, raw_properties: &Bytes, body: &Bytes) -> Replied {
        let Ok(map) = self.0.lock() else {
            return Replied::NoConsumer;
        };
        let Some(target) = map.get(token) else {
            return Replied::NoConsumer;
        };
        let Some(charge) = target
            .out
            .try_charge(raw_properties.len() + body.len() + 256)
        else {
            return Replied::Dropped;
        };
        let Ok(slot) = target.out.sender().try_reserve() else {
            target.out.refund(charge);
            return Replied::Dropped;
        };
        let deliver = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: short(&target.consumer_tag),
            delivery_tag: target.shared.next_tag(),
            redelivered: false,
            exchange: short(""),
            routing_key: short(token),
        }));
        let mut out = BytesMut::new();
        out.extend_from_slice(&frame::method(target.channel, deliver));
        frame::content(
            &mut out,
            target.channel,
            raw_properties,
            body,
            target.frame_max,
        );
        slot.send(crate::consumer::Outgoing {
            bytes: out.freeze(),
            charge,
        });
        Replied::Delivered
    }
}
