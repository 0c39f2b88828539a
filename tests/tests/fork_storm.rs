//! A tree that forks and exits children, and spawns and joins threads, in
//! tight loops while rcr dumps it. Dumps that leave it running must each
//! succeed, or fail with a message, and either way leave every task
//! running untraced; then it goes through dump and restore and checks
//! itself.

use rcr_images::{pb, ImageDir};
use rcr_tests::harness::{dump, restore, run_rcr, TestDir, Workload};
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const WL: &str = env!("CARGO_BIN_EXE_wl_fork_storm");
const RUNNING_DUMPS: usize = 6;
const CYCLES: usize = 2;

/// Every thread of `pid` runs untraced: no tracer, not stopped.
#[track_caller]
fn assert_untraced(pid: i32, context: &str) {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("{context}: pid {pid} is gone: {e}"));
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        // A thread that ended meanwhile has nothing left to check.
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            field("TracerPid:"),
            "0",
            "{context}: pid {pid} tid {tid} is still traced"
        );
        let state = field("State:");
        assert!(
            !state.starts_with('t') && !state.starts_with('T'),
            "{context}: pid {pid} tid {tid} is left stopped ({state})"
        );
    }
}

/// The dump killed children the loops had forked, alive or zombies; with
/// their parents gone they are zombies of this test process (a subreaper):
/// reaps each, so its pid is free for the restore.
fn reap_killed_children(img: &Path) {
    let tree: pb::ProcessTree =
        rcr_images::read(&ImageDir::new(img).pstree()).expect("read the process tree");
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in &tree.processes {
        // SAFETY: waitpid on one pid with no status wanted; signal 0 only
        // probes for existence.
        while unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), libc::WNOHANG) } == 0
            || unsafe { libc::kill(p.pid, 0) } == 0
        {
            assert!(Instant::now() < deadline, "pid {} is not gone", p.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_tree_forking_in_a_loop_dumps_whole_or_refuses_cleanly() {
    let dir = TestDir::new("fork-storm");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 1, "descendants: {:?}", w.descendants);
    let pid = w.pid.to_string();
    for round in 0..RUNNING_DUMPS {
        let img = dir.join(&format!("running-{round}"));
        let args: [&OsStr; 6] = [
            "dump".as_ref(),
            "--tree".as_ref(),
            pid.as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
            "--leave-running".as_ref(),
        ];
        let run = run_rcr(&dir, &args);
        if run.status.success() {
            assert!(img.join("pstree.img").exists() || img.is_dir(), "{run:?}");
        } else {
            run.assert_failure(&[]);
            eprintln!("running dump {round} refused: {}", run.stderr.trim());
            assert!(!img.exists(), "a failed dump left {}", img.display());
        }
        let context = format!("after running dump {round}");
        assert_untraced(w.pid, &context);
        assert_untraced(w.descendants[0], &context);
        let _ = fs::remove_dir_all(&img);
    }
    for cycle in 0..CYCLES {
        let img = dir.join(&format!("img-{cycle}"));
        dump(&dir, &mut w, &img, &[]);
        reap_killed_children(&img);
        restore(&dir, &mut w, &img);
        let _ = fs::remove_dir_all(&img);
    }
    w.finish_ok();
}
