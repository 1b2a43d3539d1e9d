//! Replays the fuzz corpus through the fuzz targets' checks, so every input
//! that once found a bug (`fuzz/regressions/<target>/`) and the committed
//! seed corpus (`fuzz/corpus/<target>/`) run on every `cargo test`, without
//! cargo-fuzz or a nightly toolchain. See `fuzz/README.md`.

#[path = "../../../fuzz/src/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// The files under `fuzz/<dir>/<target>/`, sorted (none if it is missing).
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs every corpus and regression input of `target`; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        for path in inputs(dir, target) {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn topic_match_corpus() {
    let n = replay("topic_match", harness::topic_match);
    assert!(n > 0, "no corpus for topic_match");
}

#[test]
fn broker_ops_corpus() {
    let n = replay("broker_ops", harness::broker_ops);
    assert!(n > 0, "no corpus for broker_ops");
}

#[test]
fn empty_and_tiny_inputs() {
    for data in [&[][..], &[0], &[255; 7], b"warren"] {
        harness::topic_match(data);
        harness::broker_ops(data);
    }
}
