//! The checks of the fuzz targets, as plain functions over a byte string, so
//! that the regression tests of the crates they fuzz can replay the corpus
//! without cargo-fuzz (see `README.md`).
//!
//! - [`harness`]: warren-core's targets, `topic_match` and `broker_ops`
//!   (replayed by `crates/warren-core/tests/fuzz_regression.rs`);
//! - [`wire`]: warren-wire's `wire_frames` (replayed by
//!   `crates/warren-wire/tests/fuzz_regression.rs`).

pub mod harness;
pub mod wire;

pub use harness::{broker_ops, topic_match};
pub use wire::wire_frames;
