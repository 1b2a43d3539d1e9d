//! A client's bytes against a warren-wire connection (see `src/wire.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warren_fuzz::wire_frames(data));
