//! Field values between the codec (`amq-protocol`'s `AMQPValue`) and the broker's own
//! model (`herald_broker::exchange::Value`), which routing and queue arguments use.
//! Short strings echoed back to clients are truncated to 255 bytes here, never panic.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use herald_broker::exchange::{Table, Value};

/// A short string from any text: cut at 255 bytes on a character boundary.
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&text[..end])
}

pub fn to_broker(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => Value::I8(*v),
        AMQPValue::ShortShortUInt(v) => Value::U8(*v),
        AMQPValue::ShortInt(v) => Value::I16(*v),
        AMQPValue::ShortUInt(v) => Value::U16(*v),
        AMQPValue::LongInt(v) => Value::I32(*v),
        AMQPValue::LongUInt(v) => Value::U32(*v),
        AMQPValue::LongLongInt(v) => Value::I64(*v),
        AMQPValue::Float(v) => Value::F32(*v),
        AMQPValue::Double(v) => Value::F64(*v),
        AMQPValue::DecimalValue(d) => Value::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => Value::Str(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Str(text.to_string()),
            Err(_) => Value::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_broker).collect()),
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(table_to_broker(t)),
        AMQPValue::ByteArray(b) => Value::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => Value::Void,
    }
}

pub fn table_to_broker(table: &FieldTable) -> Table {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), to_broker(v)))
        .collect()
}

pub fn from_broker(value: &Value) -> AMQPValue {
    match value {
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::I8(v) => AMQPValue::ShortShortInt(*v),
        Value::U8(v) => AMQPValue::ShortShortUInt(*v),
        Value::I16(v) => AMQPValue::ShortInt(*v),
        Value::U16(v) => AMQPValue::ShortUInt(*v),
        Value::I32(v) => AMQPValue::LongInt(*v),
        Value::U32(v) => AMQPValue::LongUInt(*v),
        Value::I64(v) => AMQPValue::LongLongInt(*v),
        Value::F32(v) => AMQPValue::Float(*v),
        Value::F64(v) => AMQPValue::Double(*v),
        Value::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Value::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.clone())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(from_broker).collect::<Vec<_>>(),
        )),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Table(t) => AMQPValue::FieldTable(table_from_broker(t)),
        Value::Void => AMQPValue::Void,
    }
}

pub fn table_from_broker(table: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table {
        out.insert(short(k), from_broker(v));
    }
    out
}

/// Properties for a record a Kafka (or HTTP) producer wrote: its headers become the
/// message's header table (long strings), `content-type` the content type; the message
/// is persistent, as everything in the log is.
pub fn kafka_properties(record: &herald_broker::queue::ReceivedRecord) -> AMQPProperties {
    let mut headers = FieldTable::default();
    let mut properties = AMQPProperties::default().with_delivery_mode(2);
    for (name, value) in &record.headers {
        let Some(value) = value else { continue };
        if name == herald_broker::amqp::CONTENT_TYPE_HEADER {
            properties = properties.with_content_type(short(&String::from_utf8_lossy(value)));
            continue;
        }
        headers.insert(
            short(name),
            AMQPValue::LongString(LongString::from(value.to_vec())),
        );
    }
    if let Some(key) = &record.key {
        properties = properties.with_message_id(short(&String::from_utf8_lossy(key)));
    }
    properties
        .with_headers(headers)
        .with_timestamp(u64::try_from(record.timestamp / 1000).unwrap_or(0))
}

/// Add RabbitMQ's dead-lettering headers: `x-death` (an array of tables, newest first,
/// `count` a long) and `x-first-death-reason`, `-queue`, `-exchange` (the oldest).
pub fn with_deaths(
    properties: AMQPProperties,
    deaths: &herald_broker::amqp::Deaths,
) -> AMQPProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let entries: Vec<AMQPValue> = deaths
        .entries
        .iter()
        .map(|d| {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(d.count));
            t.insert("reason".into(), text(&d.reason));
            t.insert("queue".into(), text(&d.queue));
            t.insert("time".into(), AMQPValue::Timestamp(d.time_s));
            t.insert("exchange".into(), text(&d.exchange));
            if let Some(expiration) = &d.original_expiration {
                t.insert("original-expiration".into(), text(expiration));
            }
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(
                    d.routing_keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
                )),
            );
            AMQPValue::FieldTable(t)
        })
        .collect();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(entries)),
    );
    let expired_once = deaths
        .entries
        .iter()
        .any(|d| d.original_expiration.is_some());
    headers.insert("x-first-death-reason".into(), text(&deaths.first_reason));
    headers.insert("x-first-death-queue".into(), text(&deaths.first_queue));
    headers.insert(
        "x-first-death-exchange".into(),
        text(&deaths.first_exchange),
    );
    let properties = if expired_once {
        without_expiration(properties)
    } else {
        properties
    };
    properties.with_headers(headers)
}

/// The same properties with no `expiration` (the codec has setters only).
fn without_expiration(p: AMQPProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// Random letters, digits, `-` and `_` (server-made names and tokens).
pub(crate) fn random_suffix(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_cut_on_a_character_boundary() {
        assert_eq!(short("abc").as_str(), "abc");
        let long = "é".repeat(200);
        let cut = short(&long);
        assert!(cut.as_str().len() <= 255);
        assert_eq!(cut.as_str().len(), 254);
    }

    #[test]
    fn values_round_trip() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongInt(5));
        t.insert("b".into(), AMQPValue::LongString("x".into()));
        t.insert(
            "c".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
        );
        let back = table_from_broker(&table_to_broker(&t));
        assert_eq!(back, t);
    }
}
