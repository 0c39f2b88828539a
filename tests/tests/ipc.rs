//! SysV IPC (a shared segment, a semaphore set, a message queue) and POSIX
//! shared memory between two processes, across a checkpoint.

use rcr_tests::harness::{dump, roundtrip, run_rcr, TestDir, Workload};
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_ipc");

#[test]
fn sysv_objects_survive_dump_and_restore() {
    roundtrip("ipc-sysv", Path::new(WL), &[], &["sysv"], 2, Duration::ZERO);
}

#[test]
fn posix_shared_memory_survives_dump_and_restore() {
    roundtrip(
        "ipc-posix",
        Path::new(WL),
        &[],
        &["posix"],
        1,
        Duration::ZERO,
    );
}

#[test]
fn ipc_workload_checks_itself() {
    for mode in ["sysv", "posix"] {
        let dir = TestDir::new(&format!("ipc-plain-{mode}"));
        let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[mode]);
        w.wait_ready();
        assert_eq!(w.descendants.len(), 1, "descendants: {:?}", w.descendants);
        w.finish_ok();
    }
}

fn shmid(dir: &TestDir) -> i32 {
    std::fs::read_to_string(dir.join("shmid"))
        .expect("the workload writes its segment id")
        .trim()
        .parse()
        .expect("a segment id")
}

/// A segment also attached outside the tree cannot be checkpointed: the
/// dump is refused by name and the tree runs on.
#[test]
fn segment_attached_outside_the_tree_is_refused() {
    let dir = TestDir::new("ipc-outside");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &["sysv"]);
    w.wait_ready();
    let id = shmid(&dir);
    // SAFETY: attaches the workload's segment read-only in the test, detached below.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    assert_ne!(
        addr as isize,
        -1,
        "shmat {id}: {}",
        std::io::Error::last_os_error()
    );
    let pid = w.pid.to_string();
    let img = dir.join("img");
    let run = run_rcr(
        &dir,
        &["dump", "--tree", &pid, "-D"]
            .map(OsStr::new)
            .into_iter()
            .chain([img.as_os_str()])
            .collect::<Vec<_>>(),
    );
    // SAFETY: detaches the attachment made above.
    unsafe { libc::shmdt(addr) };
    run.assert_failure(&["SysV shared memory segment", &format!("id {id}")]);
    w.finish_ok();
}

/// A restore whose segment id is taken on this host is refused by name
/// before any process exists; once the id is free it succeeds.
#[test]
fn restore_refuses_a_taken_segment_id() {
    let dir = TestDir::new("ipc-taken");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &["sysv"]);
    w.wait_ready();
    let id = shmid(&dir);
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string()).expect("shm_next_id");
    // SAFETY: creates a segment with plain integers; removed below.
    let squatter = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, 0o600) };
    assert_eq!(squatter, id, "the squatting segment should take id {id}");
    let run = run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]);
    // SAFETY: removes the segment made above.
    unsafe { libc::shmctl(squatter, libc::IPC_RMID, std::ptr::null_mut()) };
    run.assert_failure(&["SysV shared memory segment", &format!("id {id}"), "exists"]);
    rcr_tests::harness::restore(&dir, &mut w, &img);
    w.finish_ok();
}

/// A POSIX object gone from /dev/shm (a reboot, another host) comes back
/// from the image; one of that name with other content is refused by name
/// before any process exists.
#[test]
fn posix_object_is_recreated_and_a_different_one_refused() {
    let dir = TestDir::new("ipc-posix-gone");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &["posix"]);
    w.wait_ready();
    let path = format!("/dev/shm/rcr-ipc-{}", w.pid);
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    std::fs::write(&path, b"not the saved object").expect("replace the object");
    let run = run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]);
    run.assert_failure(&["POSIX shared memory object", &path, "other content"]);
    std::fs::remove_file(&path).expect("remove the object");
    rcr_tests::harness::restore(&dir, &mut w, &img);
    w.finish_ok();
    assert!(!Path::new(&path).exists(), "the workload unlinks {path}");
}
