//! An epoll instance shared by a process and its child (inherited across
//! fork) whose registered fd numbers no longer agree between them.
//!
//! Before the fork: epoll at fd 20 watching pipe A's read end at 21 (data
//! 0xa, one byte in flight) and an eventfd at 23 (data 0xb, count 1). After
//! it, the parent closes both ends of pipe A and puts /dev/null at 21, so
//! only the child holds A; the child closes 23. After restore the parent
//! sees both registrations report, EPOLL_CTL_MOD on 21 finds nothing (the
//! registration is A's, not /dev/null's), and once the child is killed,
//! taking A's last descriptors with it, A's registration is gone.

use rcr_tests::fdops::{open, place, sys, write_fd};
use rcr_tests::workload::{self, Args, Verdict};

const EP: i32 = 20;
const PIPE_R: i32 = 21;
const PIPE_W: i32 = 22;
const EFD: i32 = 23;
const A: u64 = 0xa;
const B: u64 = 0xb;

fn ctl(op: i32, fd: i32, data: u64) -> i32 {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: epoll_ctl reads the event we own.
    unsafe { libc::epoll_ctl(EP, op, fd, &mut ev) }
}

fn build() -> Result<i32, String> {
    // SAFETY: plain descriptor-creating calls; pipe writes into the array.
    unsafe {
        place(
            sys(libc::epoll_create1(0) as i64, "epoll_create1")? as i32,
            EP,
            0,
        )?;
        let mut p = [0; 2];
        sys(libc::pipe(p.as_mut_ptr()) as i64, "pipe")?;
        place(p[0], PIPE_R, 0)?;
        place(p[1], PIPE_W, 0)?;
        place(sys(libc::eventfd(1, 0) as i64, "eventfd")? as i32, EFD, 0)?;
    }
    sys(write_fd(PIPE_W, b"x") as i64, "write pipe")?;
    sys(ctl(libc::EPOLL_CTL_ADD, PIPE_R, A) as i64, "add pipe")?;
    sys(ctl(libc::EPOLL_CTL_ADD, EFD, B) as i64, "add eventfd")?;
    // SAFETY: the workload is single-threaded; the child only makes syscalls.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: closes the child's copy of the eventfd, then waits to be killed.
        unsafe {
            libc::close(EFD);
            loop {
                libc::pause();
            }
        }
    }
    sys(pid as i64, "fork")?;
    // SAFETY: closes our own descriptors of pipe A.
    unsafe {
        libc::close(PIPE_W);
        libc::close(PIPE_R);
    }
    place(open("/dev/null", libc::O_RDONLY)?, PIPE_R, 0)?;
    Ok(pid)
}

/// Data of what is ready now, sorted.
fn ready() -> Result<Vec<u64>, String> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: epoll_wait writes at most 8 events into the array we own.
    let n = sys(
        unsafe { libc::epoll_wait(EP, evs.as_mut_ptr(), 8, 0) } as i64,
        "epoll_wait",
    )?;
    let mut out: Vec<u64> = evs[..n as usize].iter().map(|e| e.u64).collect();
    out.sort();
    Ok(out)
}

fn check(v: &mut Verdict, kid: i32) -> Result<(), String> {
    v.eq("ready", ready()?, vec![A, B]);
    v.check(ctl(libc::EPOLL_CTL_MOD, PIPE_R, 1) < 0, || {
        "EPOLL_CTL_MOD on fd 21 (/dev/null now) found a registration".into()
    });
    sys(
        ctl(libc::EPOLL_CTL_DEL, EFD, 0) as i64,
        "EPOLL_CTL_DEL on the eventfd",
    )?;
    v.eq("ready with the child alive", ready()?, vec![A]);
    // SAFETY: ends and reaps our own child.
    unsafe {
        libc::kill(kid, libc::SIGKILL);
        libc::waitpid(kid, std::ptr::null_mut(), 0);
    }
    v.eq("ready once the child is gone", ready()?, vec![]);
    Ok(())
}

fn main() {
    let args = Args::init();
    let kid = build().unwrap_or_else(|e| args.fail_early(&e));
    args.signal_ready_with_descendants(&[kid]);
    workload::wait_for_wake();
    let mut v = Verdict::new();
    if let Err(e) = check(&mut v, kid) {
        v.fail(e);
    }
    args.finish(v)
}
