//! Threads: per-thread TLS, blocked mask, alt stack, name, registers (half
//! spinning, half blocked in futex/read), a thread-private pending signal,
//! tids, and joining the threads after the restore.

use rcr_tests::harness::{roundtrip, Exit, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_threads");
/// Time for the threads to get from "ready" into their loops.
const SETTLE: Duration = Duration::from_millis(500);

#[test]
fn threads_survive_dump_and_restore() {
    roundtrip("threads", Path::new(WL), &[], &[], 1, SETTLE);
}

/// Starts the workload with `params` and lets it settle, for a wake
/// without any checkpoint in between (the dir holds its files).
fn start_settled(name: &str, params: &[&str]) -> (TestDir, Workload) {
    let dir = TestDir::new(name);
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], params);
    w.wait_ready();
    std::thread::sleep(SETTLE);
    (dir, w)
}

/// Without rcr in between, every check passes.
#[test]
fn threads_workload_checks_itself() {
    let (_dir, mut w) = start_settled("threads-plain", &["6"]);
    w.finish_ok();
}

/// The check must be able to fail: thread 3 changing its TLS value or its
/// mask gives a FAIL that names the thread and the piece of state.
#[test]
fn thread_check_detects_a_changed_tls_or_mask() {
    for (perturb, what) in [("tls", "TLS value"), ("mask", "blocked mask")] {
        let (_dir, mut w) = start_settled("threads-selftest", &["8", perturb]);
        let (verdict, exit) = w.finish();
        assert!(
            verdict.line.starts_with("FAIL") && verdict.line.contains("thread 3 (tid "),
            "perturbing {perturb} went unnoticed: {verdict:?}"
        );
        assert!(
            verdict.line.contains(what),
            "perturbing {perturb}: the verdict should name {what:?}: {verdict:?}"
        );
        assert_eq!(exit, Exit::Code(1));
    }
}
