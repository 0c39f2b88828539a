//! Trees and threads: restore latency of a tree of N processes holding M MiB
//! each, and of one process with many threads; dump time beside it.
//!
//! The tree workload's root forks N - 1 children; every process fills its
//! memory with a pattern (or, with `inherit`, the root fills it once before
//! forking and the children only read what they inherited, so it stays
//! shared copy-on-write; a restore that gives each child its own copy shows
//! in the tree's RSS and PSS, which [`round_trip`] reads before the dump and
//! after the restore). Each child says ready with a byte on a pipe, closed
//! before the dump (a shared page would keep `rcr run` without privilege
//! from dumping it: it reads shared memory through map_files). On SIGUSR1 the root wakes the children,
//! each checks its memory and exits, and the root exits 0 only if all did so
//! with 0. The thread workload parks its threads in `pause()` and, once
//! woken, checks that every thread is still there.

use crate::{pattern, MIB};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static WOKEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    WOKEN.store(true, Ordering::SeqCst);
}

pub(crate) fn wait_for_wake() {
    while !WOKEN.load(Ordering::SeqCst) {
        // SAFETY: pause just waits for a signal.
        unsafe { libc::pause() };
    }
}

/// Installs the wake handler and drops descriptors the workload did not open.
pub(crate) fn prepare_workload() {
    // SAFETY: closes inherited descriptors and installs a handler that only
    // stores to an atomic.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
    }
}

/// Says ready on stdout (a pipe the benchmark reads), then swaps stdout
/// for /dev/null, since the benchmark's pipe is not part of the workload.
pub(crate) fn say_ready() {
    use std::io::Write;
    std::io::stdout().write_all(b"ready\n").expect("say ready");
    quiet_stdout();
}

/// Swaps stdout for /dev/null in a workload's child, so the benchmark's
/// pipe ends with the workload's ready line.
pub(crate) fn quiet_stdout() {
    // SAFETY: replaces fd 1 with /dev/null.
    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&dev_null()), 1) };
}

fn dev_null() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
}

fn filled(mib: usize, seed: usize) -> Vec<u64> {
    (0..mib * MIB / 8).map(|i| pattern(i ^ seed)).collect()
}

fn intact(mem: &[u64], seed: usize) -> bool {
    mem.iter().enumerate().all(|(i, &w)| w == pattern(i ^ seed))
}

/// `--tree-workload N MIB` (or `--cow-workload N MIB`, `inherit`): the tree
/// workload's root.
pub fn tree_workload(procs: usize, mib: usize, inherit: bool) -> ! {
    prepare_workload();
    let mut ready = [0; 2];
    // SAFETY: a pipe into an array we own.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0, "pipe");
    let null = dev_null();
    let inherited = inherit.then(|| filled(mib, 0));
    let mut children = Vec::new();
    for n in 1..procs {
        // SAFETY: fork; the child only runs the simple code below and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Only the root tells the benchmark it is ready: drop its pipe.
            // SAFETY: replaces fd 1 with the descriptor of /dev/null.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
            let own;
            let (mem, seed) = match &inherited {
                Some(mem) => (mem, 0),
                None => {
                    own = filled(mib, n);
                    (&own, n)
                }
            };
            // SAFETY: one byte to the root on our pipe, which is then
            // closed, as nothing of it is to be dumped.
            unsafe {
                libc::write(ready[1], [1u8].as_ptr().cast(), 1);
                libc::close(ready[0]);
                libc::close(ready[1]);
            }
            wait_for_wake();
            std::process::exit(if intact(mem, seed) { 0 } else { 1 });
        }
        children.push(pid);
    }
    let mem = inherited.unwrap_or_else(|| filled(mib, 0));
    let mut byte = [0u8];
    for _ in 1..procs {
        // SAFETY: waits for one child's byte on our pipe.
        assert_eq!(
            unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) },
            1
        );
    }
    // SAFETY: closes our pipe, read to its end.
    unsafe {
        libc::close(ready[0]);
        libc::close(ready[1]);
    }
    say_ready();
    wait_for_wake();
    let mut ok = intact(&mem, 0);
    for pid in children {
        let mut status = 0;
        // SAFETY: wakes and reaps our own children.
        unsafe {
            libc::kill(pid, libc::SIGUSR1);
            libc::waitpid(pid, &mut status, 0);
        }
        ok &= libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// `--thread-workload N`: a process with N threads besides the main one.
pub fn thread_workload(threads: usize) -> ! {
    prepare_workload();
    // SAFETY: blocks the wake signal in the threads spawned below (they
    // inherit the mask), so it reaches the main thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        for _ in 0..threads {
            std::thread::spawn(|| loop {
                libc::pause();
            });
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let count = || std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    while count() < threads + 1 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    say_ready();
    wait_for_wake();
    std::process::exit(if count() == threads + 1 { 0 } else { 1 });
}

/// Makes the benchmark the reaper of its workloads' orphans, so that their
/// pids are free again right after a dump (see [`reap_orphans`]).
pub fn become_subreaper() {
    // SAFETY: a prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reaps the killed tree's processes, which were reparented to us.
fn reap_orphans() {
    // SAFETY: reaps our own (adopted) children until none is left.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL) } > 0 {}
}

/// What one dump and restore took.
pub struct RoundTrip {
    pub dump_s: f64,
    pub restore_s: f64,
    pub freeze_s: f64,
    pub image_bytes: u64,
    pub pid_strategy: rcr_engine::PidStrategy,
    /// The tree's memory once ready, before the dump.
    pub before: TreeMemory,
    /// The restored tree's memory, before it is woken.
    pub after: TreeMemory,
}

/// Resident and proportional set sizes summed over a tree's processes, in
/// bytes, from /proc/PID/smaps_rollup.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeMemory {
    pub rss: u64,
    pub pss: u64,
}

/// The memory of `root` and all its descendants.
pub fn tree_memory(root: i32) -> TreeMemory {
    let mut pids = vec![root];
    let mut next = 0;
    while next < pids.len() {
        let pid = pids[next];
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        next += 1;
    }
    let mut total = TreeMemory::default();
    for pid in pids {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let kib = |key: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        total.rss += kib("Rss:") * 1024;
        total.pss += kib("Pss:") * 1024;
    }
    total
}

/// One dump and restore of a workload started with `args` (it says ready on
/// stdout, and checks its state when woken by SIGUSR1). Panics if the
/// restored workload finds its state changed.
pub fn round_trip(
    args: &[String],
    dir: &std::path::Path,
    pids: rcr_engine::PidChoice,
) -> RoundTrip {
    round_trip_tcp(args, dir, pids, false)
}

/// [`round_trip`], taking established TCP connections when `tcp_established`.
pub fn round_trip_tcp(
    args: &[String],
    dir: &std::path::Path,
    pids: rcr_engine::PidChoice,
    tcp_established: bool,
) -> RoundTrip {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start workload");
    let pid = child.id() as i32;
    let mut ready = Vec::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut ready)
        .expect("workload ready");
    assert_eq!(ready, b"ready\n", "workload {args:?} did not start");
    let before = tree_memory(pid);
    let t = Instant::now();
    let stats = rcr_engine::dump(&rcr_engine::DumpOptions {
        pid,
        dir: dir.to_path_buf(),
        leave_running: false,
        tcp_established,
        external_unix: false,
        shell_job: false,
    })
    .unwrap_or_else(|e| panic!("dump {args:?}: {e}"));
    let dump_s = t.elapsed().as_secs_f64();
    let _ = child.wait();
    reap_orphans();
    let t = Instant::now();
    let restored = rcr_engine::restore(&rcr_engine::RestoreOptions {
        dir: dir.to_path_buf(),
        pids,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("restore {args:?}: {e}"));
    let restore_s = t.elapsed().as_secs_f64();
    let after = tree_memory(restored.pid);
    let mut status = 0;
    // SAFETY: wakes and reaps the process we just restored (our child again).
    unsafe {
        libc::kill(restored.pid, libc::SIGUSR1);
        libc::waitpid(restored.pid, &mut status, 0);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the restored workload {args:?} found its state changed (status {status:#x})"
    );
    let _ = std::fs::remove_dir_all(dir);
    RoundTrip {
        dump_s,
        restore_s,
        freeze_s: stats.freeze_seconds,
        image_bytes: stats.image_bytes,
        pid_strategy: restored.pid_strategy,
        before,
        after,
    }
}
