//! The dump-time parasite: a command loop that runs inside the target task
//! and answers what only the task itself can tell.
//!
//! rcr starts it with all signals blocked, on a stack in the shared area. It
//! reads one [`Command`] per message from the control socket and sends one
//! [`Reply`]; bulk results go to the data area. If the socket reaches EOF or
//! fails, rcr is gone (killed mid-dump, say): the parasite closes its
//! descriptors and returns the task to the state it was seized in through
//! the `rt_sigreturn` frame rcr prepared, so the task lives on as if never
//! touched. Only the shared mapping stays behind in it: the code and frame
//! that do the return live there, so they cannot unmap it.

use core::arch::asm;
use core::mem::size_of;

use crate::parasite_abi::{
    cmd, Command, IoVec, Itimers, Misc, ParasiteArgs, PosixTimerState, Reply, SigAltStack,
    Sigactions, PARASITE_ABI_VERSION, PARASITE_MAGIC, VMSPLICE_MAX_IOVS,
};
use crate::sys::{self, nr};

/// Syscall numbers this module needs beyond [`crate::sys::nr`].
mod more_nr {
    pub const POLL: usize = 7;
    pub const BRK: usize = 12;
    pub const SENDTO: usize = 44;
    pub const UMASK: usize = 95;
    pub const PERSONALITY: usize = 135;
    pub const TIMER_GETTIME: usize = 224;
}

const EINTR: isize = 4;
const EAGAIN: isize = 11;
const EINVAL: isize = 22;
const EPIPE: isize = 32;
const SIGKILL: usize = 9;
const SIGSTOP: usize = 19;
const MSG_NOSIGNAL: usize = 0x4000;
const SPLICE_F_NONBLOCK: usize = 0x2;
const POLLIN: i16 = 0x1;
const POLLOUT: i16 = 0x4;
const PR_GET_PDEATHSIG: usize = 2;
const PR_GET_DUMPABLE: usize = 3;
const PR_GET_CHILD_SUBREAPER: usize = 37;
const PR_GET_NO_NEW_PRIVS: usize = 39;
const PR_GET_TID_ADDRESS: usize = 40;
const ARCH_GET_CPUID: usize = 0x1011;
const ITIMER_REAL: usize = 0;
const ITIMER_VIRTUAL: usize = 1;
const ITIMER_PROF: usize = 2;

/// Entry point of the parasite blob. `args` is the [`ParasiteArgs`] rcr
/// wrote into the shared area.
#[no_mangle]
pub extern "C" fn rcr_parasite_main(args: *const ParasiteArgs) -> ! {
    // SAFETY: rcr passes a pointer to an initialised ParasiteArgs in the
    // shared area, which stays mapped while the parasite runs.
    let args = unsafe { args.read() };
    if args.magic != PARASITE_MAGIC || args.version != PARASITE_ABI_VERSION {
        trap();
    }
    loop {
        let mut command = Command::default();
        // SAFETY: reads at most size_of::<Command>() bytes into `command`.
        let n = unsafe {
            sys::syscall3(
                nr::READ,
                args.sock_fd as usize,
                &mut command as *mut Command as usize,
                size_of::<Command>(),
            )
        };
        if n == -EINTR {
            continue;
        }
        if n <= 0 {
            // EOF or a broken socket: rcr is gone.
            give_back(&args);
        }
        let reply = if n as usize != size_of::<Command>() || command.version != PARASITE_ABI_VERSION
        {
            Reply {
                cmd: command.cmd,
                status: -EINVAL as i32,
                value: 0,
            }
        } else {
            dispatch(&args, &command)
        };
        // After FINI, rcr interrupts the read of the next command and cures
        // the task, unless it dies first and the read sees EOF.
        send_reply(&args, &reply);
    }
}

fn send_reply(args: &ParasiteArgs, reply: &Reply) {
    // SAFETY: sends size_of::<Reply>() bytes from `reply`. MSG_NOSIGNAL: a
    // closed peer must not leave a SIGPIPE pending in the task.
    let n = unsafe {
        sys::syscall6(
            more_nr::SENDTO,
            args.sock_fd as usize,
            reply as *const Reply as usize,
            size_of::<Reply>(),
            MSG_NOSIGNAL,
            0,
            0,
        )
    };
    if n != size_of::<Reply>() as isize {
        give_back(&args);
    }
}

/// rcr is gone: closes the parasite's descriptors and puts the task back
/// where it was seized. The task's own signal mask comes back with the
/// frame, so signals that arrived meanwhile (kept pending while every
/// signal was blocked) are delivered then.
fn give_back(args: &ParasiteArgs) -> ! {
    for fd in [args.sock_fd, args.pipe_wr_fd, args.pipe_rd_fd] {
        // SAFETY: these descriptors were made for the parasite; nothing of
        // the task's own uses them.
        unsafe { sys::syscall1(nr::CLOSE, fd as usize) };
    }
    // SAFETY: rcr built the frame at sigframe_rsp - 8 from the task's state
    // at seize time, before starting the parasite.
    unsafe { sys::rt_sigreturn(args.sigframe_rsp) }
}

/// Stops here with SIGTRAP: a tracer sees the stop, without one the task dies.
fn trap() -> ! {
    loop {
        // SAFETY: int3 only raises SIGTRAP.
        unsafe { asm!("int3", options(nomem, nostack)) };
    }
}

fn dispatch(args: &ParasiteArgs, command: &Command) -> Reply {
    let status = match command.cmd {
        cmd::GET_SIGACTIONS => data_area::<Sigactions>(args).map_or(-EINVAL, get_sigactions),
        cmd::GET_SIGALTSTACK => data_area::<SigAltStack>(args).map_or(-EINVAL, get_sigaltstack),
        cmd::GET_ITIMERS => data_area::<Itimers>(args).map_or(-EINVAL, get_itimers),
        cmd::GET_MISC => data_area::<Misc>(args).map_or(-EINVAL, |m| {
            get_misc(m);
            0
        }),
        cmd::GET_POSIX_TIMERS => get_posix_timers(args, command.arg0 as usize),
        cmd::DUMP_PAGES => return dump_pages(args, command),
        cmd::FINI => 0,
        _ => -EINVAL,
    };
    Reply {
        cmd: command.cmd,
        status: status as i32,
        value: 0,
    }
}

/// The data area as a `T`, if it is large enough.
fn data_area<T>(args: &ParasiteArgs) -> Option<&'static mut T> {
    if (args.data_len as usize) < size_of::<T>() {
        return None;
    }
    // SAFETY: rcr maps data_len bytes at data_addr (page aligned) for the
    // parasite's whole life, and nothing else in the blob refers to it.
    Some(unsafe { &mut *(args.data_addr as *mut T) })
}

fn get_sigactions(out: &mut Sigactions) -> isize {
    for sig in 1..=out.actions.len() {
        if sig == SIGKILL || sig == SIGSTOP {
            continue;
        }
        let slot = &mut out.actions[sig - 1];
        // SAFETY: a NULL new action only reads the old one into `slot`,
        // which has the kernel's layout; the sigset size is 8.
        let ret = unsafe { sys::syscall4(nr::RT_SIGACTION, sig, 0, slot as *mut _ as usize, 8) };
        if sys::is_err(ret) {
            return ret;
        }
    }
    0
}

fn get_sigaltstack(out: &mut SigAltStack) -> isize {
    // SAFETY: a NULL new stack only reads the old one into `out` (stack_t layout).
    unsafe { sys::syscall2(nr::SIGALTSTACK, 0, out as *mut _ as usize) }.min(0)
}

fn get_itimers(out: &mut Itimers) -> isize {
    for (which, slot) in [
        (ITIMER_REAL, &mut out.real),
        (ITIMER_VIRTUAL, &mut out.virt),
        (ITIMER_PROF, &mut out.prof),
    ] {
        // SAFETY: getitimer writes one itimerval into `slot`.
        let ret = unsafe { sys::syscall2(nr::GETITIMER, which, slot as *mut _ as usize) };
        if sys::is_err(ret) {
            return ret;
        }
    }
    0
}

fn get_posix_timers(args: &ParasiteArgs, count: usize) -> isize {
    if count.saturating_mul(size_of::<PosixTimerState>()) > args.data_len as usize {
        return -EINVAL;
    }
    // SAFETY: the data area holds `count` entries (checked above), which
    // rcr does not touch until the reply.
    let timers =
        unsafe { core::slice::from_raw_parts_mut(args.data_addr as *mut PosixTimerState, count) };
    for t in timers {
        // SAFETY: timer_gettime writes one itimerspec into `t.spec`.
        let ret = unsafe {
            sys::syscall2(
                more_nr::TIMER_GETTIME,
                t.id as usize,
                &mut t.spec as *mut _ as usize,
            )
        };
        t.status = ret.min(0) as i32;
    }
    0
}

/// A `prctl` that reports through an out-pointer. The buffer is a zeroed
/// u64: options that write a C `int` fill its low half (little endian) with
/// a non-negative value, `PR_GET_TID_ADDRESS` fills all of it.
fn prctl_get(option: usize) -> i64 {
    let mut value: u64 = 0;
    // SAFETY: the option writes at most 8 bytes through the pointer.
    let ret = unsafe { sys::syscall5(nr::PRCTL, option, &mut value as *mut u64 as usize, 0, 0, 0) };
    if sys::is_err(ret) {
        ret as i64
    } else {
        value as i64
    }
}

fn get_misc(out: &mut Misc) {
    // SAFETY (all calls below): these calls only read task state; brk(0)
    // cannot move the break below its start, so it just reports it.
    unsafe {
        out.brk = sys::syscall1(more_nr::BRK, 0) as i64;
        // Unused prctl arguments must be 0 or some options refuse (EINVAL).
        out.dumpable = sys::syscall5(nr::PRCTL, PR_GET_DUMPABLE, 0, 0, 0, 0) as i64;
        out.no_new_privs = sys::syscall5(nr::PRCTL, PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) as i64;
        out.cpuid_enabled = sys::syscall2(nr::ARCH_PRCTL, ARCH_GET_CPUID, 0) as i64;
        out.personality = sys::syscall1(more_nr::PERSONALITY, 0xffff_ffff) as i64;
        let old = sys::syscall1(more_nr::UMASK, 0);
        sys::syscall1(more_nr::UMASK, old as usize);
        out.umask = old as i64;
    }
    out.pdeathsig = prctl_get(PR_GET_PDEATHSIG);
    out.child_subreaper = prctl_get(PR_GET_CHILD_SUBREAPER);
    out.clear_child_tid = prctl_get(PR_GET_TID_ADDRESS);
}

/// Splices `command.arg0` iovecs from the data area into the page pipe,
/// waiting while the pipe is full (rcr drains it meanwhile). The wait also
/// watches the socket: if rcr dies, nobody will drain the pipe.
fn dump_pages(args: &ParasiteArgs, command: &Command) -> Reply {
    let fail = |status: isize, value: u64| Reply {
        cmd: command.cmd,
        status: status as i32,
        value,
    };
    let count = command.arg0 as usize;
    if count.saturating_mul(size_of::<IoVec>()) > args.data_len as usize {
        return fail(-EINVAL, 0);
    }
    // SAFETY: the data area holds `count` iovecs (checked above); rcr does not
    // touch them until the reply, so the parasite may advance them in place.
    let iovs = unsafe { core::slice::from_raw_parts_mut(args.data_addr as *mut IoVec, count) };
    let mut first = 0;
    let mut total: u64 = 0;
    loop {
        while first < count && iovs[first].len == 0 {
            first += 1;
        }
        if first == count {
            return Reply {
                cmd: command.cmd,
                status: 0,
                value: total,
            };
        }
        let n = (count - first).min(VMSPLICE_MAX_IOVS);
        // SAFETY: vmsplice reads `n` iovecs from the data area and pins the
        // pages they name; it writes no user memory.
        let ret = unsafe {
            sys::syscall4(
                nr::VMSPLICE,
                args.pipe_wr_fd as usize,
                iovs[first..].as_ptr() as usize,
                n,
                SPLICE_F_NONBLOCK,
            )
        };
        if ret == -EINTR {
            continue;
        }
        if ret == -EAGAIN {
            if !wait_pipe_room(args) {
                return fail(-EPIPE, iovs[first].base);
            }
            continue;
        }
        if ret <= 0 {
            return fail(if ret == 0 { -EINVAL } else { ret }, iovs[first].base);
        }
        total += ret as u64;
        let mut left = ret as u64;
        while left > 0 {
            let iov = &mut iovs[first];
            if iov.len <= left {
                left -= iov.len;
                first += 1;
            } else {
                iov.base += left;
                iov.len -= left;
                left = 0;
            }
        }
    }
}

/// Waits until the page pipe has room. False if the socket woke the wait
/// instead: rcr hung up (or broke protocol), so the pipe will not drain.
fn wait_pipe_room(args: &ParasiteArgs) -> bool {
    let mut fds = [
        PollFd {
            fd: args.pipe_wr_fd,
            events: POLLOUT,
            revents: 0,
        },
        PollFd {
            fd: args.sock_fd,
            events: POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll reads and writes the two pollfds; no timeout.
        let ret = unsafe {
            sys::syscall3(
                more_nr::POLL,
                fds.as_mut_ptr() as usize,
                fds.len(),
                usize::MAX,
            )
        };
        if ret == -EINTR {
            continue;
        }
        return ret > 0 && fds[1].revents == 0;
    }
}

/// The kernel's `struct pollfd`.
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}
