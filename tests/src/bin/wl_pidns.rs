//! A tree with a pid namespace of its own, as `unshare --pid --fork` makes.
//! The root forks S in its own namespace, then unshares its children's
//! namespace and forks I, that namespace's init (pid 1 inside), which forks
//! C (pid 2 inside); C starts a second thread T and writes into a pipe to
//! the root, which leaves the bytes unread.
//!
//! On the wake signal each checks that its pids at every level (`NSpid`)
//! are what they were and what it sees inside (getpid, getppid, T's
//! gettid), the root that it still makes its children below its own
//! namespace and that the pipe still holds C's bytes. I wakes C from inside
//! the namespace and passes on C's verdict; the root reaps S and I and
//! writes the combined verdict. Every wait has a deadline.

use rcr_tests::workload::{self, getpid, last_err, Args, Verdict, WAKE_SIGNAL};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const PAYLOAD: &[u8] = b"from C, through the namespace\n";

/// The `NSpid` line of a status file: the pid at each level, outermost first.
fn ns_pids(status: &str) -> Vec<i32> {
    fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn ppid() -> i32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// C: pid 2 in the namespace, with thread T; writes the payload.
fn c_main(pipe_w: OwnedFd) -> i32 {
    let mut v = Verdict::new();
    let before = ns_pids("/proc/self/status");
    static T_TID: AtomicI32 = AtomicI32::new(0);
    let t = std::thread::spawn(|| {
        T_TID.store(gettid(), Ordering::SeqCst);
        let before = ns_pids("/proc/thread-self/status");
        while !workload::woken() {
            std::hint::spin_loop();
        }
        (before, ns_pids("/proc/thread-self/status"), gettid())
    });
    if let Err(e) = workload::wait_until("T started", STEP_TIMEOUT, || {
        T_TID.load(Ordering::SeqCst) != 0
    }) {
        v.fail(e);
    }
    // SAFETY: writes from a local buffer into our pipe end.
    let n = unsafe { libc::write(pipe_w.as_raw_fd(), PAYLOAD.as_ptr().cast(), PAYLOAD.len()) };
    v.eq("C: bytes written", n, PAYLOAD.len() as isize);
    drop(pipe_w);
    workload::wait_for_wake();
    v.eq("C: NSpid", ns_pids("/proc/self/status"), before.clone());
    v.eq("C: pid inside", getpid(), 2);
    v.eq("C: ppid inside", ppid(), 1);
    v.eq("C: levels", before.len(), 2);
    match t.join() {
        Ok((t_before, t_after, tid)) => {
            v.eq("T: NSpid", t_after, t_before.clone());
            v.eq("T: tid inside", tid, T_TID.load(Ordering::SeqCst));
            v.eq("T: tid inside, from NSpid", Some(&tid), t_before.last());
        }
        Err(_) => v.fail("T panicked".into()),
    }
    workload::exit_code("C", v)
}

/// I: the namespace's init; forks C, wakes it and passes on its verdict.
fn i_main(pipe_w: OwnedFd) -> i32 {
    let mut v = Verdict::new();
    let before = ns_pids("/proc/self/status");
    let c = match workload::fork_child(|| c_main(pipe_w)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("I: {e}");
            return 1;
        }
    };
    workload::wait_for_wake();
    v.eq("I: NSpid", ns_pids("/proc/self/status"), before);
    v.eq("I: pid inside", getpid(), 1);
    v.eq("I: ppid inside", ppid(), 0);
    v.eq("I: C's pid inside", c, 2);
    // SAFETY: signals our own child.
    unsafe { libc::kill(c, WAKE_SIGNAL) };
    workload::expect_ok_exit("C", c, STEP_TIMEOUT, &mut v);
    workload::exit_code("I", v)
}

fn run(args: &Args) -> Result<Verdict, String> {
    let me = getpid();
    let s = workload::fork_child(|| {
        workload::wait_for_wake();
        i32::from(ppid() != me)
    })?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills in two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", last_err()));
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: unshare only changes where our later children go.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!("unshare(CLONE_NEWPID): {}", last_err()));
    }
    let i = workload::fork_child(|| i_main(pipe_w))?;
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes the byte count into `n`.
        unsafe { libc::ioctl(pipe_r.as_raw_fd(), libc::FIONREAD, &mut n) };
        n as usize
    };
    workload::wait_until("C's bytes in the pipe", STEP_TIMEOUT, || {
        queued() == PAYLOAD.len()
    })?;
    let children = || {
        fs::read_to_string(format!("/proc/{i}/task/{i}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect::<Vec<i32>>()
    };
    workload::wait_until("C seen from here", STEP_TIMEOUT, || children().len() == 1)?;
    let c = children()[0];
    let link = |name: &str| fs::read_link(format!("/proc/self/ns/{name}")).ok();
    let unshared_before = link("pid") != link("pid_for_children");
    args.signal_ready_with_descendants(&[s, i, c]);
    workload::wait_for_wake();

    let mut v = Verdict::new();
    v.eq("root: pid", getpid(), args.start_pid);
    v.check(unshared_before, || "root: had not unshared".into());
    v.check(link("pid") != link("pid_for_children"), || {
        "root: its children's pid namespace is its own again".into()
    });
    v.eq(
        "I: NSpid seen from here",
        ns_pids(&format!("/proc/{i}/status")),
        vec![i, 1],
    );
    v.eq(
        "C: NSpid seen from here",
        ns_pids(&format!("/proc/{c}/status")),
        vec![c, 2],
    );
    let mut buf = [0u8; 64];
    // SAFETY: reads into a local buffer.
    let n = unsafe { libc::read(pipe_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    v.eq("pipe data", buf.get(..n.max(0) as usize), Some(PAYLOAD));
    for pid in [s, i] {
        // SAFETY: signals our own children.
        unsafe { libc::kill(pid, WAKE_SIGNAL) };
    }
    workload::expect_ok_exit("S", s, STEP_TIMEOUT, &mut v);
    workload::expect_ok_exit("I", i, STEP_TIMEOUT, &mut v);
    Ok(v)
}

fn main() {
    let args = Args::init();
    match run(&args) {
        Ok(v) => args.finish(v),
        Err(e) => args.fail_early(&e),
    }
}
