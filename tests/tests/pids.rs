//! Each way of giving saved pids back, forced: `clone3` with `set_tid`,
//! `ns_last_pid`, and spinning; and the automatic choice falling back when
//! `clone3` is filtered, as some container runtimes do. A process tree
//! (sessions, groups, a zombie) and a multi-threaded process must come back
//! with every pid and tid exact; each workload checks its own ids.

use rcr_tests::harness::{
    dump, restore_with, run_rcr_with, RcrRun, TestDir, Workload, RCR_TIMEOUT,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Mutex;

const TREE: &str = env!("CARGO_BIN_EXE_wl_tree");
const THREADS: &str = env!("CARGO_BIN_EXE_wl_threads");
const ORPHANS: &str = env!("CARGO_BIN_EXE_wl_orphans");
const DENY_CLONE3: &str = env!("CARGO_BIN_EXE_deny_clone3");
const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// The spin test moves the pid counter; the others must not fork meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dumps `program`, runs `before_restore` with the workload's lowest pid,
/// restores with `wrapper` and `extra` (plus --stats), and checks the
/// workload's own verdict on its ids and state.
fn roundtrip(
    name: &str,
    program: &str,
    params: &[&str],
    wrapper: &[&OsStr],
    extra: &[&str],
    before_restore: impl FnOnce(i32),
) -> RcrRun {
    let dir = TestDir::new(name);
    let mut w = Workload::spawn(&dir, Path::new(program), &[], params);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    let lowest = w.descendants.iter().copied().fold(w.pid, i32::min);
    before_restore(lowest);
    let mut args = vec!["--stats"];
    args.extend_from_slice(extra);
    let run = restore_with(&dir, &mut w, &img, wrapper, &args);
    w.finish_ok();
    run
}

#[track_caller]
fn assert_strategy(run: &RcrRun, name: &str) {
    let want = format!("\"pid_strategy\":\"{name}\"");
    assert!(
        run.stderr.contains(&want),
        "restore stats should say {want}: {run:?}"
    );
}

/// Tree, threads and orphaned sessions and groups (whose helpers get their
/// pids the same way), each restored with `--pids how`.
fn both_workloads(how: &str, before_restore: impl Fn(i32)) {
    let _serial = serial();
    let workloads = [
        ("tree", TREE, &[][..]),
        ("threads", THREADS, &["4"][..]),
        ("orphans", ORPHANS, &[][..]),
    ];
    for (name, program, params) in workloads {
        let run = roundtrip(
            &format!("pids-{how}-{name}"),
            program,
            params,
            &[],
            &["--pids", how],
            &before_restore,
        );
        assert_strategy(&run, how);
    }
}

#[test]
fn set_tid_gives_every_pid_back() {
    both_workloads("set_tid", |_| {});
}

#[test]
fn ns_last_pid_gives_every_pid_back() {
    both_workloads("ns_last_pid", |_| {});
}

/// Spinning walks the pid counter up to each saved pid. Left where it is,
/// it would go round the whole pid space first; the counter is set a few
/// pids below the workload's (by the test: rcr itself is told to spin).
#[test]
fn spinning_gives_every_pid_back() {
    both_workloads("spin", |lowest| {
        std::fs::write(NS_LAST_PID, (lowest - 20).to_string())
            .unwrap_or_else(|e| panic!("write {NS_LAST_PID}: {e}"));
    });
}

#[test]
fn auto_falls_back_to_ns_last_pid_when_clone3_is_filtered() {
    let _serial = serial();
    for (name, program, params) in [("tree", TREE, &[][..]), ("threads", THREADS, &["4"][..])] {
        let run = roundtrip(
            &format!("pids-filtered-{name}"),
            program,
            params,
            &[OsStr::new(DENY_CLONE3)],
            &[],
            |_| {},
        );
        assert_strategy(&run, "ns_last_pid");
    }
}

/// `--pids set_tid` is a promise: with clone3 filtered the restore fails,
/// naming clone3, and leaves nothing behind; the image still restores.
#[test]
fn set_tid_only_fails_cleanly_when_clone3_is_filtered() {
    let _serial = serial();
    let dir = TestDir::new("pids-set-tid-filtered");
    let mut w = Workload::spawn(&dir, Path::new(THREADS), &[], &["4"]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    let run = run_rcr_with(
        &dir,
        &[OsStr::new(DENY_CLONE3)],
        &[
            "restore".as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
            "--pids".as_ref(),
            "set_tid".as_ref(),
        ],
        RCR_TIMEOUT,
    );
    run.assert_failure(&["clone3", &w.pid.to_string()]);
    rcr_tests::harness::assert_no_process(w.pid, "after a refused restore");
    restore_with(&dir, &mut w, &img, &[], &[]);
    w.finish_ok();
}
