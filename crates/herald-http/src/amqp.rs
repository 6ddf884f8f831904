//! AMQP definitions over HTTP, for operators: exchanges, queues (with ready and
//! consumer counts) and bindings, as the broker holds them. Read only: AMQP clients
//! change them.

use axum::Json;
use axum::extract::State;
use herald_broker::exchange::{Destination, Table, Value};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct AmqpExchange {
    pub name: String,
    /// direct, fanout, topic or headers.
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct AmqpQueue {
    pub name: String,
    /// The topic holding the queue's messages (its subscription is `amqp`).
    pub topic: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    /// Ready messages.
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Serialize, ToSchema)]
pub struct AmqpBinding {
    pub source: String,
    /// queue or exchange.
    pub destination_type: String,
    pub destination: String,
    pub routing_key: String,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

/// A field value as plain JSON (byte strings as arrays of numbers).
fn json(value: &Value) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Bool(b) => json!(b),
        Value::I8(v) => json!(v),
        Value::U8(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F32(v) => json!(v),
        Value::F64(v) => json!(v),
        Value::Decimal { scale, value } => {
            json!(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        Value::Str(s) => json!(s),
        Value::Bytes(b) => json!(b),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(json).collect()),
        Value::Timestamp(t) => json!(t),
        Value::Table(t) => table(t),
        Value::Void => serde_json::Value::Null,
    }
}

fn table(t: &Table) -> serde_json::Value {
    serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), json(v))).collect())
}

/// Every AMQP exchange, predeclared ones included, by name.
#[utoipa::path(get, path = "/amqp/exchanges", responses((status = 200, body = [AmqpExchange])))]
pub async fn exchanges(State(state): State<AppState>) -> Json<Vec<AmqpExchange>> {
    Json(
        state
            .broker
            .amqp_exchanges()
            .into_iter()
            .map(|e| AmqpExchange {
                name: e.name,
                kind: e.kind.as_str().to_string(),
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: table(&e.arguments),
            })
            .collect(),
    )
}

/// Every AMQP queue with its ready messages and consumers.
#[utoipa::path(get, path = "/amqp/queues", responses((status = 200, body = [AmqpQueue])))]
pub async fn queues(State(state): State<AppState>) -> Json<Vec<AmqpQueue>> {
    Json(
        state
            .broker
            .amqp_queues()
            .into_iter()
            .map(|(def, ok)| AmqpQueue {
                name: def.name,
                topic: def.topic,
                durable: def.durable,
                exclusive: def.exclusive,
                auto_delete: def.auto_delete,
                arguments: table(&def.arguments),
                messages: ok.messages,
                consumers: ok.consumers,
            })
            .collect(),
    )
}

/// Every binding (queue and exchange-to-exchange), sorted.
#[utoipa::path(get, path = "/amqp/bindings", responses((status = 200, body = [AmqpBinding])))]
pub async fn bindings(State(state): State<AppState>) -> Json<Vec<AmqpBinding>> {
    Json(
        state
            .broker
            .amqp_bindings()
            .into_iter()
            .map(|b| {
                let (destination_type, destination) = match b.destination {
                    Destination::Queue(q) => ("queue", q),
                    Destination::Exchange(e) => ("exchange", e),
                };
                AmqpBinding {
                    source: b.source,
                    destination_type: destination_type.to_string(),
                    destination,
                    routing_key: b.routing_key,
                    arguments: table(&b.arguments),
                }
            })
            .collect(),
    )
}
