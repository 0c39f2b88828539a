//! epoll across a checkpoint: an instance at fd 20 watching an eventfd at
//! 21 (EPOLLIN | EPOLLET, data 0x1234, count 1) and a pipe's read end at 22
//! (EPOLLIN, 5 bytes in flight, data 0xabcd00000001); an empty instance at
//! 24. After restore: both registrations report, edge and level triggering
//! behave, and EPOLL_CTL_MOD / EPOLL_CTL_DEL find the registrations by their
//! fd numbers.

use rcr_tests::fdops::{fdinfo_value, place, sys, write_fd};
use rcr_tests::workload::{self, Verdict};

const EP: i32 = 20;
const EFD: i32 = 21;
const PIPE_R: i32 = 22;
const PIPE_W: i32 = 23;
const EMPTY: i32 = 24;
const EFD_DATA: u64 = 0x1234;
const PIPE_DATA: u64 = 0xabcd_0000_0001;

fn ctl(ep: i32, op: i32, fd: i32, events: u32, data: u64) -> Result<(), String> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: epoll_ctl reads the event we own.
    sys(
        unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } as i64,
        &format!("epoll_ctl {op} fd {fd}"),
    )?;
    Ok(())
}

fn build() -> Result<(), String> {
    // SAFETY: plain descriptor-creating calls; pipe writes into the array.
    unsafe {
        place(
            sys(libc::epoll_create1(0) as i64, "epoll_create1")? as i32,
            EP,
            0,
        )?;
        place(sys(libc::eventfd(1, 0) as i64, "eventfd")? as i32, EFD, 0)?;
        let mut p = [0; 2];
        sys(libc::pipe(p.as_mut_ptr()) as i64, "pipe")?;
        place(p[0], PIPE_R, 0)?;
        place(p[1], PIPE_W, 0)?;
        place(
            sys(
                libc::epoll_create1(libc::EPOLL_CLOEXEC) as i64,
                "epoll_create1",
            )? as i32,
            EMPTY,
            libc::O_CLOEXEC,
        )?;
    }
    sys(write_fd(PIPE_W, b"hello") as i64, "write pipe")?;
    let ein = libc::EPOLLIN as u32;
    ctl(
        EP,
        libc::EPOLL_CTL_ADD,
        EFD,
        ein | libc::EPOLLET as u32,
        EFD_DATA,
    )?;
    ctl(EP, libc::EPOLL_CTL_ADD, PIPE_R, ein, PIPE_DATA)
}

/// (events, data) of what is ready now, sorted by data.
fn ready(ep: i32) -> Result<Vec<(u32, u64)>, String> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: epoll_wait writes at most 8 events into the array we own.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0) };
    let n = sys(n as i64, "epoll_wait")? as usize;
    let mut out: Vec<(u32, u64)> = evs[..n].iter().map(|e| (e.events, e.u64)).collect();
    out.sort_by_key(|e| e.1);
    Ok(out)
}

fn check(v: &mut Verdict) -> Result<(), String> {
    v.check(fdinfo_value(EP, "tfd").is_ok(), || {
        "fd 20 lists no registration".into()
    });
    let ein = libc::EPOLLIN as u32;
    v.eq(
        "ready at first",
        ready(EP)?,
        vec![(ein, EFD_DATA), (ein, PIPE_DATA)],
    );
    // Edge triggered: the eventfd reports once; the pipe, level triggered, again.
    v.eq("ready again", ready(EP)?, vec![(ein, PIPE_DATA)]);
    ctl(EP, libc::EPOLL_CTL_DEL, PIPE_R, 0, 0)?;
    ctl(EP, libc::EPOLL_CTL_MOD, EFD, ein, 7)?;
    v.eq("ready after MOD and DEL", ready(EP)?, vec![(ein, 7)]);
    v.eq("empty instance", ready(EMPTY)?, vec![]);
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
