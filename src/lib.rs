//! shoal: a zero-copy, high-throughput event bus for one Linux box.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod affinity;
pub mod bus;
pub mod cli;
pub mod group;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod ring;
