//! Creating the restored task: `clone3` with `set_tid` so it gets its saved
//! pid, then watching it through ptrace until the restorer reports ready, and
//! releasing it past its final `rt_sigreturn`.
//!
//! rcr traces the new task from its first instruction with
//! `PTRACE_O_EXITKILL`: if rcr dies before the release, the kernel kills the
//! task, so a half-restored process never lingers.

use crate::error::{Error, Result};
use crate::infect::remote::RemoteTask;
use crate::ptrace::{self, Stop};
use crate::restore::child::{self, ChildPlan};
use nix::errno::Errno;
use rcr_parasite::restore_abi::{RseqConf, Step, TRAP_FAILED, TRAP_READY};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct clone_args` of `<linux/sched.h>` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Kills a process rcr created unless it was released.
struct Created<'a> {
    pid: i32,
    threads: &'a [i32],
    released: bool,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if !self.released {
            // SAFETY: signals our own child and reaps its threads (traced by
            // us, so ours to reap; ECHILD for those never created), then it.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                for &tid in self.threads {
                    libc::waitpid(tid, std::ptr::null_mut(), libc::__WALL);
                }
                libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
            }
        }
    }
}

fn traced(pid: i32) -> impl Fn(ptrace::PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created for us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the parent needs to finish a restore once the task traps ready.
pub struct Release {
    pub hole_start: u64,
    pub hole_len: u64,
    /// The threads other than the leader, which the restorer creates.
    pub threads: Vec<i32>,
}

/// Creates the task with pid `pid` running `plan` (whose `sync_fd` is set
/// here), and returns once it runs the saved program on its own.
pub fn create(pid: i32, plan: &mut ChildPlan, sync_min_fd: i32, release: &Release) -> Result<()> {
    let (sync_r, sync_w) = pipe()?;
    // The read end must sit where the child closes rcr's descriptors.
    // SAFETY: duplicates our own descriptor; checked below.
    let raw = unsafe { libc::fcntl(sync_r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, sync_min_fd) };
    if raw < 0 {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor fcntl just made.
    let sync_r = unsafe { OwnedFd::from_raw_fd(raw) };
    plan.sync_fd = sync_r.as_raw_fd();

    let set_tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of our
    // memory and runs `child::run`, which only makes raw syscalls.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        child::run(plan);
    }
    if ret < 0 {
        return Err(match Errno::last() {
            Errno::EEXIST => Error::pid_taken(pid),
            Errno::EPERM => Error::Preflight(format!(
                "clone3 with set_tid (to get pid {pid} back) needs CAP_CHECKPOINT_RESTORE \
                 or CAP_SYS_ADMIN in the pid namespace"
            )),
            e => Error::sys(pid, "clone3", e),
        });
    }
    let created = Created {
        pid: ret as i32,
        threads: &release.threads,
        released: false,
    };
    drop(sync_r);
    if created.pid != pid {
        return Err(Error::RestoreLost {
            pid,
            what: format!("the kernel gave pid {} instead", created.pid),
        });
    }
    attach(pid, &sync_w)?;
    for tid in std::iter::once(pid).chain(release.threads.iter().copied()) {
        wait_ready(tid)?;
    }
    finish(pid, release)?;
    let mut created = created;
    created.released = true;
    Ok(())
}

/// Seizes the new task (it waits in a read for us), tells it the rseq
/// registration it inherited, and lets it go on. The threads the restorer
/// creates are traced from their start too (and killed with rcr).
fn attach(pid: i32, sync_w: &OwnedFd) -> Result<()> {
    let options = ptrace::default_options()
        | ptrace::Options::PTRACE_O_EXITKILL
        | ptrace::Options::PTRACE_O_TRACECLONE;
    ptrace::seize(pid, options).map_err(traced(pid))?;
    ptrace::interrupt(pid).map_err(traced(pid))?;
    loop {
        match ptrace::wait_stop(pid).map_err(traced(pid))? {
            Stop::Interrupt | Stop::Group(_) => break,
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(Error::RestoreLost {
                    pid,
                    what: "the new task ended before rcr attached".into(),
                })
            }
            Stop::Signal(sig) => ptrace::cont(pid, sig).map_err(traced(pid))?,
            Stop::Syscall | Stop::Event(_) => ptrace::cont(pid, 0).map_err(traced(pid))?,
        }
    }
    let conf = ptrace::get_rseq_configuration(pid).map_err(traced(pid))?;
    let rseq = RseqConf {
        addr: conf.rseq_abi_pointer,
        len: conf.rseq_abi_size,
        sig: conf.signature,
    };
    ptrace::cont(pid, 0).map_err(traced(pid))?;
    let n = std::mem::size_of::<RseqConf>();
    // SAFETY: writes the bytes of a plain struct to our pipe.
    let written = unsafe {
        libc::write(
            sync_w.as_raw_fd(),
            &rseq as *const RseqConf as *const libc::c_void,
            n,
        )
    };
    if written != n as isize {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Waits for thread `pid`'s trap in the restorer: ready, or a failure it
/// describes. Other stops on the way (the leader's clone events, a new
/// thread's first stop) are let go.
fn wait_ready(pid: i32) -> Result<()> {
    loop {
        match ptrace::wait_stop(pid).map_err(traced(pid))? {
            Stop::Signal(libc::SIGTRAP) => {
                let regs = ptrace::get_regs(pid).map_err(traced(pid))?;
                if regs.rdi == TRAP_READY {
                    return Ok(());
                }
                if regs.rdi == TRAP_FAILED {
                    let step = Step::from_raw(regs.rsi).map_or("an unknown step", Step::describe);
                    return Err(Error::RestoreFailed {
                        pid,
                        step,
                        errno: Errno::from_raw(regs.rdx as i32),
                        at: regs.rcx,
                    });
                }
                return Err(Error::RestoreLost {
                    pid,
                    what: format!("unexpected trap at {:#x}", regs.rip),
                });
            }
            Stop::Signal(sig) => {
                let rip = ptrace::get_regs(pid).map_or(0, |r| r.rip);
                // SAFETY: si_addr is valid for the fault signals that matter here.
                let addr = ptrace::get_siginfo(pid).map_or(0, |i| unsafe { i.si_addr() } as u64);
                return Err(Error::RestoreLost {
                    pid,
                    what: format!("the new task got signal {sig} at {rip:#x} (address {addr:#x})"),
                });
            }
            Stop::Exited(code) => {
                return Err(Error::RestoreLost {
                    pid,
                    what: format!("the new task exited with status {code}"),
                })
            }
            Stop::Killed(sig) => {
                return Err(Error::RestoreLost {
                    pid,
                    what: format!("the new task was killed by signal {sig}"),
                })
            }
            Stop::Interrupt | Stop::Group(_) | Stop::Syscall | Stop::Event(_) => {
                ptrace::cont(pid, 0).map_err(traced(pid))?
            }
        }
    }
}

/// Steps every thread through its `rt_sigreturn`, unmaps the hole from
/// inside the leader, and detaches: from here the saved program runs.
fn finish(pid: i32, release: &Release) -> Result<()> {
    let all = || std::iter::once(pid).chain(release.threads.iter().copied());
    for tid in all() {
        step_through_sigreturn(tid)?;
    }
    let mut task = RemoteTask::new(pid)?;
    let ret = task.syscall(
        libc::SYS_munmap,
        [release.hole_start, release.hole_len, 0, 0, 0, 0],
    )?;
    task.restore_regs()?;
    if ret != 0 {
        return Err(Error::RestoreFailed {
            pid,
            step: "unmapping the restorer",
            errno: Errno::from_raw(-ret as i32),
            at: release.hole_start,
        });
    }
    for tid in all() {
        ptrace::detach(tid, 0).map_err(traced(tid))?;
    }
    Ok(())
}

/// Syscall-enter then syscall-exit of the thread's rt_sigreturn; the
/// pending SIGTRAP of its ready trap is discarded by resuming with no signal.
fn step_through_sigreturn(tid: i32) -> Result<()> {
    for _ in 0..2 {
        ptrace::syscall(tid, 0).map_err(traced(tid))?;
        match ptrace::wait_stop(tid).map_err(traced(tid))? {
            Stop::Syscall => {}
            other => {
                return Err(Error::RestoreLost {
                    pid: tid,
                    what: format!("expected rt_sigreturn, got {other:?}"),
                })
            }
        }
    }
    Ok(())
}
