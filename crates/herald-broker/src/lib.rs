//! herald-broker
