//! The protocol every workload follows:
//!
//! `wl_x <ready-file> <result-file> [params]`: build the state, write
//! "ready" to the ready file, wait for [`WAKE_SIGNAL`] (blocked in a syscall
//! or spinning — both must survive a checkpoint), check every bit of the
//! state, write the verdict and exit 0 (OK) or 1 (FAIL).
//!
//! A workload that starts other processes names them on a second line of
//! the ready file, `descendants <pid> <pid> ...`, so the harness can reap
//! and, on failure, kill them.
//!
//! The verdict file has two lines: `OK` or `FAIL: <what differs>`, then
//! `pid <getpid() after the check>`, which the harness compares with the pid
//! it started.

use std::fmt::Debug;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The signal that ends the wait; workloads keep it for this use only.
pub const WAKE_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Key of the ready file's line that lists a workload's other processes.
pub const DESCENDANTS: &str = "descendants";

static WOKEN: AtomicBool = AtomicBool::new(false);

/// Command line of a workload.
pub struct Args {
    pub ready: PathBuf,
    pub result: PathBuf,
    pub params: Vec<String>,
    /// getpid() when the workload started; re-checked at the end.
    pub start_pid: i32,
}

impl Args {
    /// Parses argv and installs the wake handler (first thing, so an early
    /// wake signal never kills the workload).
    pub fn init() -> Args {
        install_wake_handler();
        let mut argv = std::env::args_os().skip(1);
        let (Some(ready), Some(result)) = (argv.next(), argv.next()) else {
            eprintln!("usage: <workload> <ready-file> <result-file> [params]");
            std::process::exit(2);
        };
        Args {
            ready: ready.into(),
            result: result.into(),
            params: argv.map(|a| a.to_string_lossy().into_owned()).collect(),
            start_pid: getpid(),
        }
    }

    /// The test's directory: where the result file lives.
    pub fn dir(&self) -> PathBuf {
        match self.result.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The `i`-th extra parameter parsed as a number, or `default`.
    pub fn param_u64(&self, i: usize, default: u64) -> u64 {
        match self.params.get(i) {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| {
                self.fail_early(&format!("parameter {i} is not a number: {s:?}"))
            }),
        }
    }

    /// Tells the harness the state is built.
    pub fn signal_ready(&self) {
        self.signal_ready_with_descendants(&[]);
    }

    /// Tells the harness the state is built and which processes, besides
    /// itself, belong to the workload.
    pub fn signal_ready_with_descendants(&self, pids: &[i32]) {
        let mut text = "ready\n".to_string();
        if !pids.is_empty() {
            let list: Vec<String> = pids.iter().map(i32::to_string).collect();
            text.push_str(&format!("{DESCENDANTS} {}\n", list.join(" ")));
        }
        if let Err(e) = write_atomic(&self.ready, &text) {
            self.fail_early(&format!("writing ready file: {e}"));
        }
    }

    /// Setup could not build the state: write the reason as the verdict and
    /// exit 1 without ever becoming ready.
    pub fn fail_early(&self, why: &str) -> ! {
        let mut v = Verdict::new();
        v.fail(format!("setup: {why}"));
        self.finish(v)
    }

    /// Re-checks the pid, writes the verdict and exits.
    pub fn finish(&self, mut v: Verdict) -> ! {
        let pid = getpid();
        v.eq("getpid()", pid, self.start_pid);
        let mut text = if v.diffs.is_empty() {
            "OK".to_string()
        } else {
            format!("FAIL: {}", v.diffs.join("; "))
        };
        text.push_str(&format!("\npid {pid}\n"));
        if !v.diffs.is_empty() {
            // The log helps when the verdict file cannot be written.
            eprintln!("{text}");
        }
        let code = if v.diffs.is_empty() { 0 } else { 1 };
        if let Err(e) = write_atomic(&self.result, &text) {
            eprintln!("writing result file: {e}");
            std::process::exit(3);
        }
        std::process::exit(code)
    }
}

/// The whole protocol for a workload whose setup and check can fail with
/// a message: build the state (a failure is the verdict), say ready, wait
/// for the wake signal, check, write the verdict and exit.
pub fn run(
    build: impl FnOnce(&Args) -> Result<(), String>,
    check: impl FnOnce(&Args, &mut Verdict) -> Result<(), String>,
) -> ! {
    let args = Args::init();
    if let Err(e) = build(&args) {
        args.fail_early(&e);
    }
    args.signal_ready();
    wait_for_wake();
    let mut v = Verdict::new();
    if let Err(e) = check(&args, &mut v) {
        v.fail(e);
    }
    args.finish(v)
}

/// The differences a workload found.
#[derive(Default)]
pub struct Verdict {
    diffs: Vec<String>,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict::default()
    }

    pub fn fail(&mut self, what: String) {
        self.diffs.push(what);
    }

    /// Records `what` unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// Records a difference when `got != want`.
    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub fn is_ok(&self) -> bool {
        self.diffs.is_empty()
    }

    /// The differences, for a verdict built in pieces (one per thread).
    pub fn into_diffs(self) -> Vec<String> {
        self.diffs
    }
}

/// Writes `content` to `path` through a temp file and a rename, so a reader
/// never sees a partial file.
pub fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Set by the wake handler; exposed so a spinning asm loop can poll it.
pub fn wake_flag() -> &'static AtomicBool {
    &WOKEN
}

pub fn woken() -> bool {
    WOKEN.load(Ordering::SeqCst)
}

/// Sleeps in short steps until the wake signal arrived. Allocates nothing,
/// so the heap looks the same before and after the wait.
pub fn wait_for_wake() {
    while !woken() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

extern "C" fn on_wake(_sig: libc::c_int) {
    WOKEN.store(true, Ordering::SeqCst);
}

fn install_wake_handler() {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the
    // handler only stores to an atomic, which is async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(WAKE_SIGNAL, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        eprintln!("sigaction(SIGUSR1): {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
}

/// The pid from the kernel (glibc no longer caches it).
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// `errno` of the last failed libc call, as an io::Error.
pub fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Forks a child that runs `body` and exits with its return value.
pub fn fork_child(body: impl FnOnce() -> i32) -> Result<i32, String> {
    // SAFETY: workloads fork while single-threaded, so the child may run Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            let code = body();
            // SAFETY: ends the child without running the parent's atexit work.
            unsafe { libc::_exit(code) }
        }
        p if p < 0 => Err(format!("fork: {}", last_err())),
        p => Ok(p),
    }
}

/// Waits up to `timeout` for child `pid` to exit; its wait status.
pub fn reap(pid: i32, timeout: Duration) -> Result<i32, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child without blocking.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Ok(status);
        }
        if rc < 0 || std::time::Instant::now() > deadline {
            return Err(format!("child {pid} was not reaped: {}", last_err()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls until `ok` holds, or fails with `what` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        if std::time::Instant::now() >= deadline {
            return Err(format!("{what}: not so after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Reaps child `name` (`pid`) within `timeout`; records in `v` unless it
/// exited with status 0.
pub fn expect_ok_exit(name: &str, pid: i32, timeout: Duration, v: &mut Verdict) {
    match reap(pid, timeout) {
        Ok(status) => v.eq(
            &format!("{name} (pid {pid}): exit status"),
            (libc::WIFEXITED(status), libc::WEXITSTATUS(status)),
            (true, 0),
        ),
        Err(e) => v.fail(format!("{name}: {e}")),
    }
}

/// A forked member's exit status from its verdict (0: OK), printing what
/// differs otherwise.
pub fn exit_code(name: &str, v: Verdict) -> i32 {
    if v.is_ok() {
        return 0;
    }
    eprintln!("{name}: {}", v.into_diffs().join("; "));
    1
}
