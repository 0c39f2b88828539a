//! Threads across a checkpoint: `wl_threads <ready> <result> [threads] [perturb]`.
//!
//! Besides the main thread, `threads` (default 8, 4 to 28) threads each own:
//! - a TLS value (a `thread_local!`, at the same address afterwards);
//! - a blocked mask: SIGUSR1 (so the wake signal goes to the main thread),
//!   SIGRTMIN+1 and SIGRTMIN+2+i, distinct per thread;
//! - an alternate signal stack of a size distinct per thread;
//! - a name `wl-t<i>` (PR_SET_NAME);
//! - known values in rbx, r12-r15, ymm0-15 and MXCSR held by the register
//!   loop: even threads spin in user code, odd ones block in a syscall
//!   (FUTEX_WAIT on the stop word, or read() on a pipe) on each pass;
//! - its tid, which must not change.
//!
//! Thread [`PENDING_THREAD`] has SIGRTMIN+1 pending for itself alone
//! (tgkill); every thread blocks it, so sigpending() in any other thread
//! would show it had it become process-wide or moved.
//!
//! On the wake signal the main thread checks its own state and that
//! /proc/self/task lists exactly the recorded tids, then stops the loops;
//! each thread checks its state and leaves; the main thread joins them all
//! (pthread join waits for the kernel to clear the thread's tid, so this
//! checks clear-child-tid survived) and writes the verdict.
//!
//! `perturb` (`tls` or `mask`) makes thread [`PERTURBED_THREAD`] change that
//! piece of its state before its check, to show the check can fail.

use rcr_tests::pattern;
use rcr_tests::regloop::{self, Plan, Seen, Wait};
use rcr_tests::sigs::{self, rt};
use rcr_tests::workload::{self, getpid, last_err, Args, Verdict};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_THREADS: u64 = 8;
const MIN_THREADS: u64 = 4;
/// Thread i blocks SIGRTMIN+2+i, and SIGRTMIN+30 is the last RT signal.
const MAX_THREADS: u64 = 28;
const TLS_SEED: u64 = 0x7157;
const REG_SEED: u64 = 0x7e90;
/// Index of the main thread in the value streams.
const MAIN_INDEX: u64 = 1000;
const ALTSTACK_SIZE: usize = 64 * 1024;
/// A blocked futex waiter gets the private pending signal.
const PENDING_THREAD: usize = 1;
const PERTURBED_THREAD: usize = 3;
/// How long setup and the final joins may take before the workload gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

/// The register loops stop once this is non-zero; futex waiters wait on it.
static STOP: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Perturb {
    Nothing,
    Tls,
    Mask,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Spin,
    Futex,
    PipeRead,
}

fn role(i: usize) -> Role {
    match i % 4 {
        1 => Role::Futex,
        3 => Role::PipeRead,
        _ => Role::Spin,
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn thread_name(i: usize) -> String {
    format!("wl-t{i}")
}

fn set_name(name: &str) -> Result<(), String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
    if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_NAME {name}: {}", last_err()));
    }
    Ok(())
}

fn get_name() -> String {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr(), 0, 0, 0) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn comm(tid: i32) -> String {
    fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// The tids /proc/self/task lists.
fn task_tids() -> BTreeSet<i32> {
    fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A hex signal-set field (`SigPnd`, `ShdPnd`) of /proc/self/task/TID/status.
fn status_sigset(tid: i32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

fn main_mask() -> Vec<i32> {
    vec![rt(1)]
}

fn thread_mask(i: usize) -> Vec<i32> {
    vec![libc::SIGUSR1, rt(1), rt(2 + i as i32)]
}

/// A thread's (or the main thread's) state as recorded before the wait.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Identity {
    tid: i32,
    tls: u64,
    tls_addr: usize,
    blocked: u64,
    altstack: (usize, usize, i32),
    name: String,
    comm: String,
}

impl Identity {
    /// Sets the calling thread's TLS, mask, alt stack and name, then reads
    /// them all back.
    fn build(index: u64, mask: &[i32], altstack_size: usize, name: &str) -> Result<Self, String> {
        TLS.set(pattern::word(TLS_SEED, index));
        sigs::change_mask(libc::SIG_SETMASK, mask)?;
        sigs::install_altstack(altstack_size)?;
        set_name(name)?;
        Ok(Identity::now())
    }

    /// Ok(self) when the build gave the state asked for.
    fn expect_set_up(self, index: u64, mask: &[i32], name: &str) -> Result<Self, String> {
        let want = Identity {
            tls: pattern::word(TLS_SEED, index),
            blocked: sigs::mask_of(mask),
            name: name.to_string(),
            comm: name.to_string(),
            ..self.clone()
        };
        if self != want {
            return Err(format!("state after setup is {self:?}, want {want:?}"));
        }
        Ok(self)
    }

    fn now() -> Identity {
        let tid = gettid();
        Identity {
            tid,
            tls: TLS.get(),
            tls_addr: TLS.with(|c| c.as_ptr() as usize),
            blocked: sigs::blocked(),
            altstack: sigs::altstack(),
            name: get_name(),
            comm: comm(tid),
        }
    }

    /// Records in `v` every field of the current state that differs from
    /// `self`, each named with `who`.
    fn check(&self, who: &str, v: &mut Verdict) {
        let now = Identity::now();
        v.eq(&format!("{who}: gettid()"), now.tid, self.tid);
        v.eq(&format!("{who}: TLS value"), now.tls, self.tls);
        v.eq(&format!("{who}: TLS address"), now.tls_addr, self.tls_addr);
        v.eq(&format!("{who}: blocked mask"), now.blocked, self.blocked);
        v.eq(
            &format!("{who}: sigaltstack (sp, size, flags)"),
            now.altstack,
            self.altstack,
        );
        v.eq(&format!("{who}: PR_GET_NAME"), now.name, self.name.clone());
        v.eq(&format!("{who}: comm"), now.comm, self.comm.clone());
    }
}

/// What a thread needs to know.
struct ThreadPlan {
    index: usize,
    wait: Wait,
    perturb: Perturb,
}

/// A thread's life: build its state, report its tid, run the register loop
/// until stopped, check everything and store the differences in `report`.
fn thread_main(
    p: ThreadPlan,
    ready: mpsc::Sender<Result<(usize, i32), String>>,
    report: Arc<Mutex<Vec<Option<Vec<String>>>>>,
) {
    let i = p.index;
    let who = format!("thread {i}");
    let altstack_size = ALTSTACK_SIZE + 4096 * (i + 1);
    let before = match Identity::build(i as u64, &thread_mask(i), altstack_size, &thread_name(i))
        .and_then(|id| id.expect_set_up(i as u64, &thread_mask(i), &thread_name(i)))
    {
        Ok(id) => id,
        Err(e) => {
            let _ = ready.send(Err(format!("{who}: {e}")));
            return;
        }
    };
    let plan = Plan::new(REG_SEED + i as u64, p.wait, STOP.as_ptr().cast());
    let mut seen = Seen::new();
    let _ = ready.send(Ok((i, before.tid)));
    drop(ready);

    let looped = regloop::run(&plan, &mut seen);

    match p.perturb {
        Perturb::Tls if i == PERTURBED_THREAD => TLS.set(TLS.get() ^ 1),
        Perturb::Mask if i == PERTURBED_THREAD => {
            let _ = sigs::change_mask(libc::SIG_BLOCK, &[libc::SIGWINCH]);
        }
        _ => {}
    }
    let mut v = Verdict::new();
    let who = format!("{who} (tid {})", before.tid);
    if let Err(first) = looped {
        v.fail(format!(
            "{who}: first differing register: {}",
            regloop::slot_name(first)
        ));
        for d in regloop::differences(&plan, &seen) {
            v.fail(format!("{who}: {d}"));
        }
    }
    // Two passes: the one the stop woke and the one after it. The last
    // futex wait sees STOP set (EAGAIN); each read gets one byte. A restart
    // done wrong shows as an extra pass or an EINTR.
    let last = match role(i) {
        Role::Spin => None,
        Role::Futex => Some(-i64::from(libc::EAGAIN)),
        Role::PipeRead => Some(1),
    };
    if let Some(last) = last {
        v.eq(&format!("{who}: syscalls made"), seen.syscalls, 2);
        v.eq(
            &format!("{who}: last syscall result"),
            seen.syscall_ret,
            last,
        );
    }
    before.check(&who, &mut v);
    let pending = if i == PENDING_THREAD {
        sigs::mask_of(&[rt(1)])
    } else {
        0
    };
    v.eq(&format!("{who}: sigpending()"), sigs::pending(), pending);
    let diffs = v.into_diffs();
    if let Ok(mut r) = report.lock() {
        r[i] = Some(diffs);
    }
}

fn parse_perturb(args: &Args) -> Perturb {
    match args.params.get(1).map(String::as_str) {
        None => Perturb::Nothing,
        Some("tls") => Perturb::Tls,
        Some("mask") => Perturb::Mask,
        Some(other) => args.fail_early(&format!("unknown perturb {other:?} (tls, mask)")),
    }
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", last_err()));
    }
    Ok((fds[0], fds[1]))
}

/// How thread `index` waits in each pass of its register loop; readers
/// read one byte from `read_fd` into `byte`.
fn wait_of(index: usize, read_fd: i32, byte: *mut u8) -> Wait {
    match role(index) {
        Role::Spin => Wait::Spin,
        Role::Futex => Wait::Syscall {
            nr: libc::SYS_futex,
            args: [
                STOP.as_ptr() as u64,
                (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
                0,
                0,
            ],
        },
        Role::PipeRead => Wait::Syscall {
            nr: libc::SYS_read,
            args: [read_fd as u64, byte as u64, 1, 0],
        },
    }
}

/// Running threads, known by pthread_t so they can be joined with a bound.
struct Threads {
    handles: Vec<libc::pthread_t>,
    tids: Vec<i32>,
    report: Arc<Mutex<Vec<Option<Vec<String>>>>>,
}

fn start_threads(n: usize, perturb: Perturb, read_fd: i32) -> Result<Threads, String> {
    let report = Arc::new(Mutex::new(vec![None; n]));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for index in 0..n {
        // Each reader reads into its own byte; leaked, as the thread may
        // outlive a failed main.
        let byte: &'static mut u8 = Box::leak(Box::new(0));
        let p = ThreadPlan {
            index,
            wait: wait_of(index, read_fd, byte),
            perturb,
        };
        let (tx, report) = (tx.clone(), Arc::clone(&report));
        let h = std::thread::Builder::new()
            .spawn(move || thread_main(p, tx, report))
            .map_err(|e| format!("spawn thread {index}: {e}"))?;
        handles.push(h.into_pthread_t());
    }
    drop(tx);
    let mut tids = vec![0; n];
    let deadline = Instant::now() + STEP_TIMEOUT;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok((i, tid))) => tids[i] = tid,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("waiting for the threads to start: {e}")),
        }
    }
    Ok(Threads {
        handles,
        tids,
        report,
    })
}

fn main() {
    let args = Args::init();
    if !regloop::supported() {
        args.fail_early("this CPU lacks AVX2, which the register loop needs");
    }
    let n = args.param_u64(0, DEFAULT_THREADS);
    if !(MIN_THREADS..=MAX_THREADS).contains(&n) {
        args.fail_early(&format!(
            "thread count {n} outside {MIN_THREADS}..={MAX_THREADS}"
        ));
    }
    let n = n as usize;
    let perturb = parse_perturb(&args);
    let main_comm = comm(gettid());
    let main_before = Identity::build(MAIN_INDEX, &main_mask(), ALTSTACK_SIZE, &main_comm)
        .and_then(|id| id.expect_set_up(MAIN_INDEX, &main_mask(), &main_comm))
        .unwrap_or_else(|e| args.fail_early(&e));
    let (read_fd, write_fd) = pipe().unwrap_or_else(|e| args.fail_early(&e));
    let threads = start_threads(n, perturb, read_fd).unwrap_or_else(|e| args.fail_early(&e));
    let pending_tid = threads.tids[PENDING_THREAD];
    // SAFETY: tgkill to a thread of our own process.
    if unsafe { libc::tgkill(getpid(), pending_tid, rt(1)) } != 0 {
        args.fail_early(&format!("tgkill {pending_tid}: {}", last_err()));
    }
    let bit = sigs::mask_of(&[rt(1)]);
    if status_sigset(pending_tid, "SigPnd").is_none_or(|p| p & bit == 0) {
        args.fail_early("the tgkill'ed signal is not pending for its thread");
    }
    args.signal_ready();
    workload::wait_for_wake();

    let mut v = Verdict::new();
    main_before.check("main thread", &mut v);
    v.eq("main thread: sigpending()", sigs::pending(), 0);
    v.eq(
        "process-wide pending (ShdPnd)",
        status_sigset(getpid(), "ShdPnd"),
        Some(0),
    );
    let mut want_tids: BTreeSet<i32> = threads.tids.iter().copied().collect();
    want_tids.insert(getpid());
    v.eq("tids in /proc/self/task", task_tids(), want_tids);

    stop_threads(n, write_fd, &mut v);
    join_threads(&threads, &mut v);
    args.finish(v)
}

/// Raises STOP, wakes the futex waiters and gives each reader the two
/// bytes its last two passes read.
fn stop_threads(n: usize, write_fd: i32, v: &mut Verdict) {
    STOP.store(1, Ordering::SeqCst);
    // SAFETY: FUTEX_WAKE on a word we own; wakes every waiter.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            STOP.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
    v.check(rc >= 0, || format!("FUTEX_WAKE: {}", last_err()));
    let readers = (0..n).filter(|&i| role(i) == Role::PipeRead).count();
    let bytes = vec![b'x'; 2 * readers];
    // SAFETY: write from a buffer we own; the pipe is empty and far larger.
    let wrote = unsafe { libc::write(write_fd, bytes.as_ptr().cast(), bytes.len()) };
    v.check(wrote == bytes.len() as isize, || {
        format!("write to the readers' pipe: {wrote} ({})", last_err())
    });
}

/// Joins every thread, polling with a bound so a tid the kernel never
/// clears gives a verdict instead of a hang; adds the threads' reports.
fn join_threads(t: &Threads, v: &mut Verdict) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    for (i, &h) in t.handles.iter().enumerate() {
        loop {
            // SAFETY: h is a joinable thread we own (into_pthread_t) and
            // joined at most once; its return value is not wanted.
            let rc = unsafe { libc::pthread_tryjoin_np(h, std::ptr::null_mut()) };
            if rc == 0 {
                break;
            }
            if rc != libc::EBUSY || Instant::now() >= deadline {
                v.fail(format!(
                    "thread {i} (tid {}): join: {} after {STEP_TIMEOUT:?}",
                    t.tids[i],
                    std::io::Error::from_raw_os_error(rc)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let report = t.report.lock().map(|r| r.clone()).unwrap_or_default();
    for (i, r) in report.iter().enumerate() {
        match r {
            Some(diffs) => diffs.iter().for_each(|d| v.fail(d.clone())),
            None => v.fail(format!("thread {i}: no report")),
        }
    }
}
