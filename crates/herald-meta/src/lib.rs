//! herald-meta
