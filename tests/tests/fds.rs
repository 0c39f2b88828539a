//! Descriptors other than files: each workload holds one kind with state,
//! is dumped (killed), restored, and checks that state and that the object
//! still works.

use rcr_tests::harness::roundtrip;
use std::path::Path;
use std::time::Duration;

fn roundtrip_once(name: &str, program: &str) {
    roundtrip(name, Path::new(program), &[], &[], 1, Duration::ZERO);
}

#[test]
fn pipes_and_fifos_keep_their_data_and_flags() {
    roundtrip_once("pipes", env!("CARGO_BIN_EXE_wl_pipes"));
}

#[test]
fn eventfds_keep_their_count_and_mode() {
    roundtrip_once("eventfd", env!("CARGO_BIN_EXE_wl_eventfd"));
}
