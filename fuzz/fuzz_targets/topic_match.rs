//! The topic trie agrees with the reference matcher (see `src/harness.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warren_fuzz::topic_match(data));
