//! What exchange and binding operations refuse, with RabbitMQ's reply codes and texts
//! so an AMQP front end can send them as they are. Every one of these is a channel
//! exception in AMQP 0-9-1 (403, 404, 406): the channel closes, the connection stays.

use std::fmt;

use super::VHOST;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// `exchange.declare` with a type this broker does not have. RabbitMQ 4.x answers
    /// 406 (3.x answered 503 COMMAND_INVALID, a connection exception).
    UnknownType(String),
    /// Declaring, deleting or binding the default exchange `""`.
    DefaultExchange,
    /// Creating an exchange whose name starts with `amq.`.
    ReservedName(String),
    /// Deleting one of the predeclared `amq.*` exchanges.
    SystemExchange(String),
    /// Publishing straight to an internal exchange.
    InternalExchange(String),
    NoExchange(String),
    NoQueue(String),
    /// A redeclaration that differs in `arg` (type, durable, auto_delete, internal or
    /// alternate-exchange). `received` and `current` are printed as RabbitMQ prints
    /// them: `'direct'`, `none`, `the value 'ae' of type 'longstr'`.
    Inequivalent {
        exchange: String,
        arg: &'static str,
        received: String,
        current: String,
    },
    /// `alternate-exchange` given as something other than a string.
    AlternateExchangeType {
        exchange: String,
        type_name: &'static str,
    },
    /// `exchange.delete` with if-unused of an exchange that is the source of bindings.
    InUse(String),
    /// A headers binding whose `x-match` is not all, any, all-with-x or any-with-x.
    InvalidXMatch {
        type_name: &'static str,
        value: String,
    },
    ExchangeLimit {
        exchange: String,
        max: usize,
    },
    BindingLimit {
        source: String,
        max: usize,
    },
}

impl ExchangeError {
    /// The AMQP reply code.
    pub fn code(&self) -> u16 {
        match self {
            ExchangeError::DefaultExchange
            | ExchangeError::ReservedName(_)
            | ExchangeError::SystemExchange(_)
            | ExchangeError::InternalExchange(_) => 403,
            ExchangeError::NoExchange(_) | ExchangeError::NoQueue(_) => 404,
            ExchangeError::UnknownType(_)
            | ExchangeError::Inequivalent { .. }
            | ExchangeError::AlternateExchangeType { .. }
            | ExchangeError::InUse(_)
            | ExchangeError::InvalidXMatch { .. }
            | ExchangeError::ExchangeLimit { .. }
            | ExchangeError::BindingLimit { .. } => 406,
        }
    }

    /// The reply code's name, which RabbitMQ puts first in the reply text.
    pub fn code_name(&self) -> &'static str {
        match self.code() {
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            _ => "PRECONDITION_FAILED",
        }
    }

    /// The reply text without the code name: RabbitMQ's explanation.
    pub fn explanation(&self) -> String {
        match self {
            ExchangeError::UnknownType(kind) => format!("unknown exchange type '{kind}'"),
            ExchangeError::DefaultExchange => {
                "operation not permitted on the default exchange".to_owned()
            }
            ExchangeError::ReservedName(name) => {
                format!("exchange name '{name}' contains reserved prefix 'amq.*'")
            }
            ExchangeError::SystemExchange(name) => {
                format!("deletion of system exchange '{name}' in vhost '{VHOST}' not allowed")
            }
            ExchangeError::InternalExchange(name) => {
                format!("cannot publish to internal exchange '{name}' in vhost '{VHOST}'")
            }
            ExchangeError::NoExchange(name) => format!("no exchange '{name}' in vhost '{VHOST}'"),
            ExchangeError::NoQueue(name) => format!("no queue '{name}' in vhost '{VHOST}'"),
            ExchangeError::Inequivalent {
                exchange,
                arg,
                received,
                current,
            } => format!(
                "inequivalent arg '{arg}' for exchange '{exchange}' in vhost '{VHOST}': received {received} but current is {current}"
            ),
            ExchangeError::AlternateExchangeType {
                exchange,
                type_name,
            } => format!(
                "invalid type '{type_name}' for arg 'alternate-exchange' in exchange '{exchange}' in vhost '{VHOST}'"
            ),
            ExchangeError::InUse(name) => format!("exchange '{name}' in vhost '{VHOST}' in use"),
            ExchangeError::InvalidXMatch { type_name, value } if *type_name == "longstr" => {
                format!(
                    "Invalid x-match field value {value}; expected all, any, all-with-x, or any-with-x"
                )
            }
            ExchangeError::InvalidXMatch { type_name, value } => {
                format!("Invalid x-match field type {type_name} (value {value}); expected longstr")
            }
            ExchangeError::ExchangeLimit { exchange, max } => format!(
                "cannot declare exchange '{exchange}' in vhost '{VHOST}': exchange limit of {max} is reached"
            ),
            ExchangeError::BindingLimit { source, max } => format!(
                "cannot bind to exchange '{source}' in vhost '{VHOST}': binding limit of {max} is reached"
            ),
        }
    }
}

/// The whole reply text, `NOT_FOUND - no exchange 'x' in vhost '/'`, as RabbitMQ sends
/// it (the wire caps a short string at 255 bytes; RabbitMQ truncates there).
impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.code_name(), self.explanation())
    }
}

impl std::error::Error for ExchangeError {}
