//! Typed wrappers over the ptrace requests rcr uses, one function per
//! request, and a `waitpid` that says which kind of stop a task is in.
//!
//! nix covers seize/interrupt/setoptions/getsiginfo; the requests that take
//! any signal number (nix's `Signal` has no real-time signals) or that nix
//! lacks go through `libc::ptrace`.

use std::mem::size_of;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace as nix_ptrace;
use nix::unistd::Pid;
use rcr_arch::regs::UserRegs;

pub use nix::sys::ptrace::Options;

/// A failed ptrace request or wait, naming the thread and the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tid {tid}: {op} failed: {errno}")]
pub struct PtraceError {
    /// The thread the request was for.
    pub tid: i32,
    /// The request ("PTRACE_GETREGS", "waitpid", ...).
    pub op: &'static str,
    /// What the kernel said.
    pub errno: Errno,
}

/// Result of a ptrace wrapper.
pub type Result<T> = std::result::Result<T, PtraceError>;

fn check(tid: i32, op: &'static str, ret: libc::c_long) -> Result<libc::c_long> {
    if ret == -1 {
        Err(PtraceError {
            tid,
            op,
            errno: Errno::last(),
        })
    } else {
        Ok(ret)
    }
}

/// Raw `ptrace(request, tid, addr, data)`.
///
/// # Safety
/// `addr` and `data` must be what `request` expects (valid buffers of the
/// right size where the request reads or writes memory).
unsafe fn raw(
    tid: i32,
    op: &'static str,
    request: libc::c_uint,
    addr: usize,
    data: usize,
) -> Result<libc::c_long> {
    // SAFETY: forwarded from the caller.
    let ret = unsafe { libc::ptrace(request, tid, addr, data) };
    check(tid, op, ret)
}

/// The options rcr seizes with: syscall-stops are reported as
/// `SIGTRAP | 0x80`, which [`crate::infect`] requires. No `EXITKILL`: a dump
/// that dies must leave its targets alive.
pub fn default_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
}

/// `PTRACE_SEIZE`: become the tracer of `tid` without stopping it.
pub fn seize(tid: i32, options: Options) -> Result<()> {
    nix_ptrace::seize(Pid::from_raw(tid), options).map_err(|errno| PtraceError {
        tid,
        op: "PTRACE_SEIZE",
        errno,
    })
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(tid: i32, options: Options) -> Result<()> {
    nix_ptrace::setoptions(Pid::from_raw(tid), options).map_err(|errno| PtraceError {
        tid,
        op: "PTRACE_SETOPTIONS",
        errno,
    })
}

/// `PTRACE_INTERRUPT`: make a seized task enter a ptrace-stop
/// ([`Stop::Interrupt`], or a group-stop if one is pending).
pub fn interrupt(tid: i32) -> Result<()> {
    nix_ptrace::interrupt(Pid::from_raw(tid)).map_err(|errno| PtraceError {
        tid,
        op: "PTRACE_INTERRUPT",
        errno,
    })
}

/// `PTRACE_LISTEN`: let a group-stopped task wait for SIGCONT while traced.
pub fn listen(tid: i32) -> Result<()> {
    // SAFETY: PTRACE_LISTEN takes no buffers.
    unsafe { raw(tid, "PTRACE_LISTEN", libc::PTRACE_LISTEN, 0, 0) }.map(drop)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: data is a signal number, no buffers.
    unsafe { raw(tid, "PTRACE_CONT", libc::PTRACE_CONT, 0, sig as usize) }.map(drop)
}

/// `PTRACE_SYSCALL`: resume until the next syscall entry or exit, delivering
/// `sig` (0 for none).
pub fn syscall(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: data is a signal number, no buffers.
    unsafe { raw(tid, "PTRACE_SYSCALL", libc::PTRACE_SYSCALL, 0, sig as usize) }.map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: data is a signal number, no buffers.
    unsafe { raw(tid, "PTRACE_DETACH", libc::PTRACE_DETACH, 0, sig as usize) }.map(drop)
}

/// `PTRACE_GETREGS`.
pub fn get_regs(tid: i32) -> Result<UserRegs> {
    let mut regs = UserRegs::default();
    // SAFETY: UserRegs is user_regs_struct, which PTRACE_GETREGS fills.
    unsafe {
        raw(
            tid,
            "PTRACE_GETREGS",
            libc::PTRACE_GETREGS,
            0,
            &mut regs as *mut UserRegs as usize,
        )?
    };
    Ok(regs)
}

/// `PTRACE_SETREGS`.
pub fn set_regs(tid: i32, regs: &UserRegs) -> Result<()> {
    // SAFETY: UserRegs is user_regs_struct, which PTRACE_SETREGS reads.
    unsafe {
        raw(
            tid,
            "PTRACE_SETREGS",
            libc::PTRACE_SETREGS,
            0,
            regs as *const UserRegs as usize,
        )
    }
    .map(drop)
}

const NT_X86_XSTATE: usize = 0x202;
/// Larger than any XSAVE area of current CPUs (AMX tiles included).
const XSTATE_BUF: usize = 64 * 1024;

/// `PTRACE_GETREGSET(NT_X86_XSTATE)`: the task's whole XSAVE area, as long
/// as the kernel says it is.
pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_BUF];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the iovec points at a buffer of iov_len bytes; the kernel
    // shrinks iov_len to what it wrote.
    unsafe {
        raw(
            tid,
            "PTRACE_GETREGSET(NT_X86_XSTATE)",
            libc::PTRACE_GETREGSET,
            NT_X86_XSTATE,
            &mut iov as *mut libc::iovec as usize,
        )?
    };
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `PTRACE_SETREGSET(NT_X86_XSTATE)` with an area [`get_xstate`] returned.
pub fn set_xstate(tid: i32, xstate: &[u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut _,
        iov_len: xstate.len(),
    };
    // SAFETY: the kernel only reads iov_len bytes from the buffer.
    unsafe {
        raw(
            tid,
            "PTRACE_SETREGSET(NT_X86_XSTATE)",
            libc::PTRACE_SETREGSET,
            NT_X86_XSTATE,
            &mut iov as *mut libc::iovec as usize,
        )
    }
    .map(drop)
}

/// `PTRACE_GETSIGMASK`: the blocked-signal mask (bit `n - 1` is signal `n`).
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: addr is the sigset size (8), data a u64 the kernel fills.
    unsafe {
        raw(
            tid,
            "PTRACE_GETSIGMASK",
            libc::PTRACE_GETSIGMASK,
            8,
            &mut mask as *mut u64 as usize,
        )?
    };
    Ok(mask)
}

/// `PTRACE_SETSIGMASK` (the kernel never lets SIGKILL/SIGSTOP be blocked).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: addr is the sigset size (8), data a u64 the kernel reads.
    unsafe {
        raw(
            tid,
            "PTRACE_SETSIGMASK",
            libc::PTRACE_SETSIGMASK,
            8,
            &mask as *const u64 as usize,
        )
    }
    .map(drop)
}

/// A raw `siginfo_t` as the kernel copies it out (128 bytes).
pub type RawSiginfo = [u8; 128];

/// `PTRACE_PEEKSIGINFO`: every queued signal of the thread's private queue,
/// or of the process's shared queue when `shared`, oldest first.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<RawSiginfo>> {
    const BATCH: usize = 32;
    let mut all = Vec::new();
    loop {
        let args = libc::ptrace_peeksiginfo_args {
            off: all.len() as u64,
            flags: if shared {
                libc::PTRACE_PEEKSIGINFO_SHARED
            } else {
                0
            },
            nr: BATCH as i32,
        };
        let mut batch = [[0u8; 128]; BATCH];
        // SAFETY: the kernel writes at most `nr` siginfos of 128 bytes.
        let got = unsafe {
            raw(
                tid,
                "PTRACE_PEEKSIGINFO",
                libc::PTRACE_PEEKSIGINFO,
                &args as *const _ as usize,
                batch.as_mut_ptr() as usize,
            )?
        } as usize;
        all.extend_from_slice(&batch[..got]);
        if got < BATCH {
            return Ok(all);
        }
    }
}

/// `PTRACE_GETSIGINFO`: the signal of the current signal-delivery-stop (or
/// the SIGTRAP describing an event/syscall stop).
pub fn get_siginfo(tid: i32) -> Result<libc::siginfo_t> {
    nix_ptrace::getsiginfo(Pid::from_raw(tid)).map_err(|errno| PtraceError {
        tid,
        op: "PTRACE_GETSIGINFO",
        errno,
    })
}

/// `struct ptrace_rseq_configuration` (`<linux/ptrace.h>`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfiguration {
    /// Address of the registered `struct rseq`, 0 when none.
    pub rseq_abi_pointer: u64,
    /// Registered length.
    pub rseq_abi_size: u32,
    /// Abort-handler signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
    /// Padding of the C layout.
    pub pad: u32,
}

const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// `PTRACE_GET_RSEQ_CONFIGURATION`: the thread's rseq registration.
pub fn get_rseq_configuration(tid: i32) -> Result<RseqConfiguration> {
    let mut conf = RseqConfiguration::default();
    // SAFETY: addr is the buffer size; the kernel writes at most that much.
    unsafe {
        raw(
            tid,
            "PTRACE_GET_RSEQ_CONFIGURATION",
            PTRACE_GET_RSEQ_CONFIGURATION,
            size_of::<RseqConfiguration>(),
            &mut conf as *mut RseqConfiguration as usize,
        )?
    };
    Ok(conf)
}

/// What `waitpid` reported about a traced thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` caused by [`interrupt`] (or a `PTRACE_LISTEN` wake-up).
    Interrupt,
    /// `PTRACE_EVENT_STOP` of a group-stop, with the stopping signal.
    Group(i32),
    /// Another `PTRACE_EVENT_*` stop (fork, clone, exec, exit...).
    Event(i32),
    /// Signal-delivery-stop: `sig` is about to be delivered.
    Signal(i32),
    /// Syscall-enter or syscall-exit stop (needs `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// The thread exited with this status.
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
}

const PTRACE_EVENT_STOP: i32 = 128;

/// Decodes a wait status of a traced thread.
pub fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    match status >> 16 {
        0 if sig == libc::SIGTRAP | 0x80 => Stop::Syscall,
        0 => Stop::Signal(sig),
        PTRACE_EVENT_STOP if sig == libc::SIGTRAP => Stop::Interrupt,
        PTRACE_EVENT_STOP => Stop::Group(sig),
        event => Stop::Event(event),
    }
}

fn wait_raw(tid: i32, flags: i32) -> Result<Option<Stop>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int.
        let ret = unsafe { libc::waitpid(tid, &mut status, flags | libc::__WALL) };
        match ret {
            0 => return Ok(None),
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => {
                return Err(PtraceError {
                    tid,
                    op: "waitpid",
                    errno: Errno::last(),
                })
            }
            _ => return Ok(Some(decode_status(status))),
        }
    }
}

/// Blocks until `tid` stops or ends (`waitpid(tid, __WALL)`).
pub fn wait_stop(tid: i32) -> Result<Stop> {
    Ok(wait_raw(tid, 0)?.expect("a blocking waitpid reports a state"))
}

/// Like [`wait_stop`], without blocking: `None` when nothing happened yet.
pub fn try_wait_stop(tid: i32) -> Result<Option<Stop>> {
    wait_raw(tid, libc::WNOHANG)
}

/// Like [`wait_stop`], giving up with `None` after `timeout`.
pub fn wait_stop_timeout(tid: i32, timeout: Duration) -> Result<Option<Stop>> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_micros(20);
    loop {
        if let Some(stop) = try_wait_stop(tid)? {
            return Ok(Some(stop));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_to_stop_kinds() {
        // Layouts as the kernel builds them: (event << 16 | sig) << 8 | 0x7f.
        let stopped = |event: i32, sig: i32| (event << 16) | (sig << 8) | 0x7f;
        assert_eq!(
            decode_status(stopped(0, libc::SIGTRAP | 0x80)),
            Stop::Syscall
        );
        assert_eq!(
            decode_status(stopped(0, libc::SIGUSR1)),
            Stop::Signal(libc::SIGUSR1)
        );
        assert_eq!(decode_status(stopped(128, libc::SIGTRAP)), Stop::Interrupt);
        assert_eq!(
            decode_status(stopped(128, libc::SIGSTOP)),
            Stop::Group(libc::SIGSTOP)
        );
        assert_eq!(decode_status(stopped(1, libc::SIGTRAP)), Stop::Event(1));
        assert_eq!(decode_status(3 << 8), Stop::Exited(3));
        assert_eq!(decode_status(libc::SIGKILL), Stop::Killed(libc::SIGKILL));
    }

    #[test]
    fn rseq_configuration_layout() {
        assert_eq!(size_of::<RseqConfiguration>(), 24);
    }
}
