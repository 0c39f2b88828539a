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

#[test]
fn signalfds_keep_their_mask() {
    roundtrip_once("signalfd", env!("CARGO_BIN_EXE_wl_signalfd"));
}

#[test]
fn timerfds_keep_their_time_left_and_expirations() {
    roundtrip_once("timerfd", env!("CARGO_BIN_EXE_wl_timerfd"));
}

#[test]
fn epoll_keeps_its_registrations() {
    roundtrip_once("epoll", env!("CARGO_BIN_EXE_wl_epoll"));
}

#[test]
fn memfds_keep_content_seals_and_sharing() {
    roundtrip_once("memfd", env!("CARGO_BIN_EXE_wl_memfd"));
}

#[test]
fn deleted_files_keep_their_content() {
    roundtrip_once("deleted", env!("CARGO_BIN_EXE_wl_deleted"));
}

#[test]
fn epoll_shared_across_fork_keeps_registrations_of_renumbered_fds() {
    roundtrip_once("epoll-shared", env!("CARGO_BIN_EXE_wl_epoll_shared"));
}
