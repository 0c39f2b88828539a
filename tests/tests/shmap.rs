//! Shared memory objects reached only through mappings, across a
//! checkpoint: shared anonymous pages that no process of the tree has in its
//! page tables, and memfds and deleted files mapped shared (two views, one
//! executable) and privately, with and without a descriptor.

use rcr_tests::harness::{roundtrip, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_shmap");

fn twice(name: &str, params: &[&str]) {
    roundtrip(name, Path::new(WL), &[], params, 2, Duration::ZERO);
}

#[test]
fn shared_anonymous_pages_no_process_touched_survive() {
    twice("shmap-anon", &["anon"]);
}

#[test]
fn memfd_mapped_without_a_descriptor_survives() {
    twice("shmap-memfd", &["memfd"]);
}

#[test]
fn memfd_mapped_and_held_by_a_descriptor_survives() {
    twice("shmap-memfd-fd", &["memfd", "fd"]);
}

#[test]
fn deleted_file_mapped_and_held_by_a_descriptor_survives() {
    twice("shmap-deleted-fd", &["deleted", "fd"]);
}

#[test]
fn deleted_file_mapped_without_a_descriptor_survives() {
    twice("shmap-deleted", &["deleted"]);
}

#[test]
fn shmap_workload_checks_itself() {
    for params in [&["anon"][..], &["memfd"], &["deleted", "fd"]] {
        let dir = TestDir::new(&format!("shmap-plain-{}", params.join("-")));
        let mut w = Workload::spawn(&dir, Path::new(WL), &[], params);
        w.wait_ready();
        w.finish_ok();
    }
}
