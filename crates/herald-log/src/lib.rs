//! herald-log
