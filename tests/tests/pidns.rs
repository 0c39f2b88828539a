//! A tree with a pid namespace of its own (`unshare --pid --fork`): every
//! process and thread comes back with its pid at every level, given by
//! clone3's set_tid array; without set_tid the restore is refused by name.

use rcr_tests::harness::{
    assert_no_process, dump, restore_with, run_rcr_with, send_signal, Exit, TestDir, Workload,
    RCR_TIMEOUT,
};
use rcr_tests::workload::WAKE_SIGNAL;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_pidns");

/// Without rcr in between, every check passes, and the harness learned
/// the tree's three other processes.
#[test]
fn pidns_workload_checks_itself() {
    let dir = TestDir::new("pidns-plain");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 3, "descendants: {:?}", w.descendants);
    w.finish_ok();
}

/// Restored twice; `--pids ns_last_pid` cannot reach the inner level and is
/// refused first, naming set_tid, with nothing left behind.
#[test]
fn nested_pid_namespace_survives_dump_and_restore() {
    let dir = TestDir::new("pidns");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    for cycle in 0..2 {
        let img = dir.join(&format!("img-{cycle}"));
        dump(&dir, &mut w, &img, &[]);
        if cycle == 0 {
            let refused = run_rcr_with(
                &dir,
                &[],
                &[
                    "restore".as_ref(),
                    "-D".as_ref(),
                    img.as_os_str(),
                    OsStr::new("--pids"),
                    OsStr::new("ns_last_pid"),
                ],
                RCR_TIMEOUT,
            );
            refused.assert_failure(&["nested pid namespace", "set_tid"]);
            assert_no_process(w.pid, "after a refused restore");
            for &pid in &w.descendants {
                assert_no_process(pid, "after a refused restore (a descendant)");
            }
        }
        restore_with(&dir, &mut w, &img, &[], &[]);
    }
    w.finish_ok();
}

const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");

/// `unshare --pid --fork wl_idle`, the usual way into a namespace of one's
/// own: both come back, wl_idle as its namespace's pid 1, and it finishes
/// its checks there (its verdict reports pid 1).
#[test]
fn unshare_pid_fork_survives_dump_and_restore() {
    let dir = TestDir::new("pidns-unshare");
    let unshare = ["--pid", "--fork", IDLE].map(OsStr::new);
    let mut w = Workload::spawn(&dir, Path::new("unshare"), &unshare, &[]);
    w.wait_ready();
    let children = format!("/proc/{}/task/{}/children", w.pid, w.pid);
    let inner: i32 = fs::read_to_string(&children)
        .unwrap_or_else(|e| panic!("{children}: {e}"))
        .trim()
        .parse()
        .expect("unshare's one child");
    w.descendants = vec![inner];
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    restore_with(&dir, &mut w, &img, &[], &[]);
    let status = fs::read_to_string(format!("/proc/{inner}/status")).expect("inner status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NSpid:", &inner.to_string(), "1"])),
        "wl_idle should be {inner} outside and 1 inside:\n{status}"
    );
    assert!(send_signal(inner, WAKE_SIGNAL), "wake wl_idle");
    // unshare --fork waits for its child and exits with its status.
    assert_eq!(w.wait_exit(Duration::from_secs(30)), Exit::Code(0));
    let verdict = fs::read_to_string(&w.result).expect("wl_idle's verdict");
    assert_eq!(
        verdict.lines().collect::<Vec<_>>(),
        ["OK", "pid 1"],
        "{verdict}"
    );
}
