//! AMQP 0-9-1 field values and tables, independent of any codec: what binding
//! arguments, exchange arguments and message headers are made of.
//!
//! Why it looks the way it does:
//! - **A table is a `BTreeMap`.** RabbitMQ sorts binding arguments and headers by key
//!   before it stores or matches them (`rabbit_misc:sort_field_table`), so the order a
//!   client sent is not part of a binding's identity. A sorted map gives that for free
//!   and makes `Binding` orderable, hence stored in sets. A duplicate key (legal on the
//!   wire, never useful) keeps the last value, as RabbitMQ's routing headers do.
//! - **Two equalities.** `==` (and `Ord`) is exact: same type, same value, floats by bit
//!   pattern, so it is a total order fit for identity (unbind must name exactly what was
//!   bound). [`Value::routing_eq`] is what a headers exchange compares with, which is
//!   RabbitMQ's: it erases the type at the top level the way Erlang sees decoded values
//!   (every integer width, and timestamps, are integers; short and long strings and byte
//!   arrays are binaries; a 32-bit float equals the 64-bit float of the same value), but
//!   values inside arrays and tables keep their types, as RabbitMQ compares those as
//!   typed terms. (RabbitMQ's main branch now scales a header's timestamp to
//!   milliseconds before comparing, but not the argument's, so a timestamp argument
//!   can no longer match a timestamp header; Herald keeps the 3.x/4.0 behaviour.)
//! - **Serialized with serde by variant index** (postcard): variants may be appended,
//!   never reordered or removed, or stored bindings would decode as other values.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A field table: binding arguments, exchange arguments, message headers.
pub type Table = BTreeMap<String, Value>;

/// One AMQP 0-9-1 field value. Append new variants at the end only (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    /// `value / 10^scale`.
    Decimal {
        scale: u8,
        value: u32,
    },
    /// Short and long strings.
    Str(String),
    /// A byte array (`x`), and a long string that is not UTF-8.
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    /// Seconds since the epoch.
    Timestamp(u64),
    Table(Table),
    /// No value (`V`). As a binding argument of a headers exchange it matches on the
    /// presence of the header alone.
    Void,
}

impl Value {
    /// RabbitMQ's name for the type, as its error texts print it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::I8(_) => "byte",
            Value::U8(_) => "unsignedbyte",
            Value::I16(_) => "short",
            Value::U16(_) => "unsignedshort",
            Value::I32(_) => "signedint",
            Value::U32(_) => "unsignedint",
            Value::I64(_) => "long",
            Value::F32(_) => "float",
            Value::F64(_) => "double",
            Value::Decimal { .. } => "decimal",
            Value::Str(_) => "longstr",
            Value::Bytes(_) => "binary",
            Value::Array(_) => "array",
            Value::Timestamp(_) => "timestamp",
            Value::Table(_) => "table",
            Value::Void => "void",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Rank of the variant: the first key of the total order.
    fn rank(&self) -> u8 {
        match self {
            Value::Bool(_) => 0,
            Value::I8(_) => 1,
            Value::U8(_) => 2,
            Value::I16(_) => 3,
            Value::U16(_) => 4,
            Value::I32(_) => 5,
            Value::U32(_) => 6,
            Value::I64(_) => 7,
            Value::F32(_) => 8,
            Value::F64(_) => 9,
            Value::Decimal { .. } => 10,
            Value::Str(_) => 11,
            Value::Bytes(_) => 12,
            Value::Array(_) => 13,
            Value::Timestamp(_) => 14,
            Value::Table(_) => 15,
            Value::Void => 16,
        }
    }

    /// The value as an Erlang integer, which is what every integer type and a
    /// timestamp decode to in RabbitMQ.
    fn integer(&self) -> Option<i128> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::U8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I64(v) => Some(v.into()),
            Value::Timestamp(v) => Some(v.into()),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an Erlang binary: strings and byte arrays alike.
    fn binary(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Header equality of a headers exchange: a message header `self` against a
    /// binding argument `other` (see the module doc). Never true for `Void`
    /// arguments, which the matcher treats as "present" before comparing.
    pub fn routing_eq(&self, other: &Value) -> bool {
        if let (Some(a), Some(b)) = (self.integer(), other.integer()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.float(), other.float()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.binary(), other.binary()) {
            return a == b;
        }
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Decimal { .. }, Value::Decimal { .. })
            | (Value::Array(_), Value::Array(_))
            | (Value::Table(_), Value::Table(_)) => self == other,
            _ => false,
        }
    }

    /// Whether two exchange arguments are equivalent on redeclaration, as RabbitMQ's
    /// `assert_args_equivalence` decides: the same type class (all integer widths
    /// and decimals are one class, both float widths another) and equal values.
    pub(crate) fn equivalent_arg(&self, other: &Value) -> bool {
        let int_class = |v: &Value| v.integer().is_some() && !matches!(v, Value::Timestamp(_));
        if int_class(self) && int_class(other) {
            return self.integer() == other.integer();
        }
        if let (Some(a), Some(b)) = (self.float(), other.float()) {
            return a == b;
        }
        self == other
    }

    /// The value printed as RabbitMQ's messages print it (`~p`, or the bare text
    /// of a binary where it uses `~ts`): close enough for a reply text.
    pub(crate) fn erlang_text(&self, binary_as_text: bool) -> String {
        let mut out = String::new();
        self.write_erlang(&mut out, binary_as_text);
        out
    }

    fn write_erlang(&self, out: &mut String, binary_as_text: bool) {
        match self {
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::F32(_) | Value::F64(_) => {
                let _ = write!(out, "{:?}", self.float().unwrap_or_default());
            }
            Value::Decimal { scale, value } => {
                let _ = write!(out, "{{{scale},{value}}}");
            }
            Value::Str(_) | Value::Bytes(_) => {
                let bytes = self.binary().unwrap_or_default();
                let text = std::str::from_utf8(bytes).ok();
                match text {
                    Some(t) if binary_as_text => out.push_str(t),
                    Some(t) if !t.chars().any(char::is_control) => {
                        let _ = write!(out, "<<{t:?}>>");
                    }
                    _ if binary_as_text => out.push_str(&String::from_utf8_lossy(bytes)),
                    _ => {
                        let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
                        let _ = write!(out, "<<{}>>", list.join(","));
                    }
                }
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{{{},", item.type_name());
                    item.write_erlang(out, false);
                    out.push('}');
                }
                out.push(']');
            }
            Value::Table(table) => {
                out.push('[');
                for (i, (key, item)) in table.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{{<<{key:?}>>,{},", item.type_name());
                    item.write_erlang(out, false);
                    out.push('}');
                }
                out.push(']');
            }
            Value::Void => out.push_str("undefined"),
            _ => {
                let _ = write!(out, "{}", self.integer().unwrap_or_default());
            }
        }
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::F32(a), Value::F32(b)) => a.total_cmp(b),
            (Value::F64(a), Value::F64(b)) => a.total_cmp(b),
            (
                Value::Decimal { scale, value },
                Value::Decimal {
                    scale: other_scale,
                    value: other_value,
                },
            ) => (scale, value).cmp(&(other_scale, other_value)),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.cmp(b),
            (Value::Table(a), Value::Table(b)) => a.cmp(b),
            (Value::Void, Value::Void) => Ordering::Equal,
            _ if self.rank() == other.rank() => self.integer().cmp(&other.integer()),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Exact equality, consistent with `Ord` (floats by bit pattern, so `NaN == NaN`).
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
