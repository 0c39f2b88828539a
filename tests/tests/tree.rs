//! A process tree: a session and a process group of their own below the
//! root, a zombie with an exit status, a pipe with unread data between two
//! processes and a shared anonymous region that must stay shared.

use rcr_tests::harness::{roundtrip, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_tree");

#[test]
fn process_tree_survives_dump_and_restore() {
    roundtrip("tree", Path::new(WL), &[], &[], 1, Duration::ZERO);
}

/// Without rcr in between, every check passes, and the harness learned
/// the tree's four other processes.
#[test]
fn tree_workload_checks_itself() {
    let dir = TestDir::new("tree-plain");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 4, "descendants: {:?}", w.descendants);
    w.finish_ok();
}

const ORPHANS: &str = env!("CARGO_BIN_EXE_wl_orphans");

/// A daemon whose session leader exited, and a group whose leader exited,
/// come back with their ids (helper tasks stand in for the leaders).
#[test]
fn sessions_and_groups_whose_leader_exited_survive() {
    roundtrip("orphans", Path::new(ORPHANS), &[], &[], 2, Duration::ZERO);
}

/// Without rcr in between, every check passes.
#[test]
fn orphans_workload_checks_itself() {
    let dir = TestDir::new("orphans-plain");
    let mut w = Workload::spawn(&dir, Path::new(ORPHANS), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 4, "descendants: {:?}", w.descendants);
    w.finish_ok();
}
