//! Files: regular files with offsets, modes, O_APPEND, O_CLOEXEC, fd gaps,
//! /dev/null, a dup sharing an offset, cwd, umask, rlimits.

use rcr_tests::harness::roundtrip;
use std::path::Path;
use std::time::Duration;

#[test]
fn file_state_survives_dump_and_restore() {
    roundtrip(
        "files",
        Path::new(env!("CARGO_BIN_EXE_wl_files")),
        &[],
        &[],
        1,
        Duration::ZERO,
    );
}
