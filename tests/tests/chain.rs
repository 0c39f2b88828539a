//! dump → restore → dump → restore: the restored process is as
//! checkpointable as the original, with the same pid each time.

use rcr_tests::harness::roundtrip;
use std::path::Path;
use std::time::Duration;

#[test]
fn signals_survive_two_round_trips() {
    roundtrip(
        "chain-signals",
        Path::new(env!("CARGO_BIN_EXE_wl_signals")),
        &[],
        &[],
        2,
        Duration::ZERO,
    );
}

#[test]
fn memory_survives_two_round_trips() {
    roundtrip(
        "chain-memory",
        Path::new(env!("CARGO_BIN_EXE_wl_memory")),
        &[],
        &["64"],
        2,
        Duration::ZERO,
    );
}

#[test]
fn files_survive_two_round_trips() {
    roundtrip(
        "chain-files",
        Path::new(env!("CARGO_BIN_EXE_wl_files")),
        &[],
        &[],
        2,
        Duration::ZERO,
    );
}
