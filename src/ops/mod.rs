//! Operations: counters an operator (and the tests) can read.

pub mod metrics;
