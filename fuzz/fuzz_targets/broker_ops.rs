//! Arbitrary broker operations keep the books (see `src/harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warren_fuzz::broker_ops(data));
