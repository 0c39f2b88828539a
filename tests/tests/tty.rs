//! Terminals: a pseudo-terminal pair inside the tree (settings, window,
//! bytes queued both ways, the session it controls and its foreground
//! group), and a job of a shell restored onto the shell's terminal with
//! `--shell-job`.

use rcr_tests::harness::{dump, roundtrip, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_tty");

#[test]
fn pty_pair_survives_dump_and_restore() {
    roundtrip("tty", Path::new(WL), &[], &[], 1, Duration::ZERO);
}

/// A dump that leaves the tree running gives the queued bytes back.
#[test]
fn pty_pair_keeps_its_bytes_after_leave_running() {
    let dir = TestDir::new("tty-leave");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    dump(&dir, &mut w, &dir.join("img"), &["--leave-running"]);
    w.finish_ok();
}

/// Without rcr in between, every check passes.
#[test]
fn tty_workload_checks_itself() {
    let dir = TestDir::new("tty-plain");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 2, "descendants: {:?}", w.descendants);
    w.finish_ok();
}
