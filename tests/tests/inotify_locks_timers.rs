//! inotify watches, advisory locks and POSIX timers across a checkpoint.

use rcr_tests::harness::{assert_no_process, dump, restore, roundtrip, run_rcr, TestDir, Workload};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

const LOCKS: &str = env!("CARGO_BIN_EXE_wl_locks");

#[test]
fn inotify_keeps_its_watches_and_wds() {
    roundtrip(
        "inotify",
        Path::new(env!("CARGO_BIN_EXE_wl_inotify")),
        &[],
        &[],
        1,
        Duration::ZERO,
    );
}

#[test]
fn posix_timers_keep_their_ids_and_keep_firing() {
    roundtrip(
        "posix-timers",
        Path::new(env!("CARGO_BIN_EXE_wl_posix_timers")),
        &[],
        &[],
        1,
        Duration::ZERO,
    );
}

/// Who would block a write lock on [start, +len) of `file`: (type, pid).
fn blocker(file: &std::fs::File, start: i64, len: i64) -> (i32, i32) {
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    // SAFETY: F_GETLK writes the conflicting lock into the struct we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (fl.l_type as i32, fl.l_pid)
}

fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// flock(LOCK_EX | LOCK_NB) on `file`: Ok, or the errno.
fn try_flock(file: &std::fs::File) -> Result<(), i32> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[test]
fn locks_are_held_again_after_restore_by_their_owners() {
    let dir = TestDir::new("locks");
    let mut w = Workload::spawn(&dir, Path::new(LOCKS), &[], &[]);
    w.wait_ready();
    let kid = w.descendants[0];
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    restore(&dir, &mut w, &img);

    // Seen from another process (this test), every lock is back.
    let b = open_rw(&dir.join("locks-b"));
    let (wr, rd) = (libc::F_WRLCK, libc::F_RDLCK);
    assert_eq!(blocker(&b, 0, 10), (wr, w.pid), "parent's write lock");
    assert_eq!(blocker(&b, 10, 5), (wr, kid), "child's POSIX lock");
    assert_eq!(blocker(&b, 15, 5), (wr, -1), "child's OFD lock");
    assert_eq!(blocker(&b, 20, 10), (rd, w.pid), "parent's read lock");
    let a = open_rw(&dir.join("locks-a"));
    assert_eq!(try_flock(&a), Err(libc::EWOULDBLOCK), "flock");
    drop(a);
    // The owners check theirs and let go of them.
    w.finish_ok();
}

#[test]
fn restore_fails_when_someone_else_holds_a_lock_now() {
    let dir = TestDir::new("locks-taken");
    let mut w = Workload::spawn(&dir, Path::new(LOCKS), &[], &[]);
    w.wait_ready();
    let kid = w.descendants[0];
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);

    let a = open_rw(&dir.join("locks-a"));
    assert_eq!(
        try_flock(&a),
        Ok(()),
        "the dumped tree's flock should be gone"
    );
    let run = run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]);
    run.assert_failure(&["fd 9", "locks-a", &w.pid.to_string()]);
    assert_no_process(w.pid, "after a restore refused for a lock");
    assert_no_process(kid, "after a restore refused for a lock (the child)");
    drop(a);

    restore(&dir, &mut w, &img);
    w.finish_ok();
}
