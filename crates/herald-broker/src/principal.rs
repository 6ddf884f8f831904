//! Who calls the broker. Every front end passes one with each call that reads or
//! changes something, so authorisation can be decided here in one place once users
//! exist (today: the AMQP login name, or anonymous).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".to_string(),
        }
    }

    pub fn user(name: &str) -> Principal {
        Principal {
            name: name.to_string(),
        }
    }
}
