//! A tree that never holds still: the root forks short-lived children in a
//! tight loop (each exits at once with [`CHILD_EXIT`] and is reaped), while
//! one of its threads spawns and joins threads in a loop, and a long-lived
//! child L forks short-lived children of its own in the same way. All of it
//! goes on while rcr dumps the tree.
//!
//! On the wake signal every loop stops; the root checks its ids, a memory
//! pattern, that every reaped child exited with [`CHILD_EXIT`] (children
//! caught by the dump, alive or as zombies, must come back so), that every
//! joined thread returned its own number, and that no child is left; L
//! checks the same of its children and reports through its exit status.

use rcr_tests::pattern;
use rcr_tests::workload::{self, last_err, Args, Verdict, WAKE_SIGNAL};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHILD_EXIT: i32 = 42;
const MEMORY_LEN: usize = 1 << 16;
const MEMORY_SEED: u64 = 0xf0_4c;
/// Rounds each loop runs before the tree says ready, so the dump meets them
/// running.
const WARM_ROUNDS: u64 = 20;
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

static FORKS: AtomicU64 = AtomicU64::new(0);
static JOINS: AtomicU64 = AtomicU64::new(0);

fn ids() -> (i32, i32, i32) {
    // SAFETY: these calls have no preconditions.
    unsafe { (libc::getpid(), libc::getpgid(0), libc::getsid(0)) }
}

/// Forks children that exit at once and reaps each, until woken. Returns
/// the first wrong wait status or failed call.
fn fork_loop() -> Result<(), String> {
    while !workload::woken() {
        // SAFETY: the child only calls _exit, which is async-signal-safe
        // (the root is multi-threaded).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", last_err()));
        }
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(CHILD_EXIT) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child with a status we own.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(format!("waitpid({pid}): {}", last_err()));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != CHILD_EXIT {
            return Err(format!(
                "child {pid}: wait status {status:#x}, want exit {CHILD_EXIT}"
            ));
        }
        FORKS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Spawns and joins threads until woken; each returns its own number.
fn thread_loop() -> Result<(), String> {
    let mut n: u64 = 0;
    while !workload::woken() {
        let got = std::thread::spawn(move || n.wrapping_mul(3))
            .join()
            .map_err(|_| format!("thread {n} panicked"))?;
        if got != n.wrapping_mul(3) {
            return Err(format!("thread {n} returned {got}"));
        }
        n += 1;
        JOINS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

/// Records in `v` unless no child is left to reap.
fn expect_no_children(who: &str, v: &mut Verdict) {
    // SAFETY: waitpid with WNOHANG and a null status pointer.
    let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    v.check(rc == -1, || {
        format!("{who}: a child is left: waitpid gave {rc}")
    });
}

/// L: forks in a loop until woken; exits 0 when all was well.
fn child_l(root: (i32, i32, i32)) -> i32 {
    let mut v = Verdict::new();
    if let Err(e) = fork_loop() {
        v.fail(format!("L: {e}"));
    }
    let (pid, pgid, sid) = ids();
    v.eq("L: (pgid, sid)", (pgid, sid), (root.1, root.2));
    // SAFETY: getppid has no preconditions.
    v.eq("L: ppid", unsafe { libc::getppid() }, root.0);
    expect_no_children("L", &mut v);
    if !v.is_ok() {
        eprintln!("L (pid {pid}): {}", v.into_diffs().join("; "));
        return 1;
    }
    0
}

fn wait_exit(pid: i32) -> Result<i32, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child with a status we own.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            0 => return Err(format!("L (pid {pid}) still runs after {STEP_TIMEOUT:?}")),
            p if p == pid => return Ok(status),
            _ => return Err(format!("waitpid({pid}): {}", last_err())),
        }
    }
}

fn main() {
    let args = Args::init();
    let root = ids();
    let mut memory = vec![0u8; MEMORY_LEN];
    pattern::fill(&mut memory, MEMORY_SEED, 0);
    // Forked while the root is single-threaded, so L may run any code.
    // SAFETY: see above.
    let l = match unsafe { libc::fork() } {
        -1 => args.fail_early(&format!("fork L: {}", last_err())),
        0 => std::process::exit(child_l(root)),
        pid => pid,
    };
    let threads = std::thread::spawn(thread_loop);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let forker = std::thread::spawn(fork_loop);
    while FORKS.load(Ordering::SeqCst) < WARM_ROUNDS || JOINS.load(Ordering::SeqCst) < WARM_ROUNDS {
        if Instant::now() >= deadline {
            args.fail_early("the loops made no progress");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    args.signal_ready_with_descendants(&[l]);
    workload::wait_for_wake();

    let mut v = Verdict::new();
    for (what, handle) in [("fork loop", forker), ("thread loop", threads)] {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => v.fail(format!("{what}: {e}")),
            Err(_) => v.fail(format!("{what} panicked")),
        }
    }
    let (pid, pgid, sid) = ids();
    v.eq("root: (pid, pgid, sid)", (pid, pgid, sid), root);
    if let Some((at, count)) = pattern::mismatches(&memory, MEMORY_SEED, 0) {
        v.fail(format!("memory: {count} bytes differ, first at {at}"));
    }
    // SAFETY: wakes our own child L.
    if unsafe { libc::kill(l, WAKE_SIGNAL) } != 0 {
        v.fail(format!("waking L (pid {l}): {}", last_err()));
    }
    match wait_exit(l) {
        Ok(status) => v.eq(
            &format!("L (pid {l}): exit status"),
            (libc::WIFEXITED(status), libc::WEXITSTATUS(status)),
            (true, 0),
        ),
        Err(e) => v.fail(e),
    }
    expect_no_children("root", &mut v);
    args.finish(v)
}
