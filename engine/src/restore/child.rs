//! The engine's code in a new task, between `clone3` and the restorer.
//!
//! The task is a copy of rcr (possibly multi-threaded, so only raw syscalls:
//! no allocation, no locks, no panics). The root waits until rcr has
//! attached and learns the rseq registration it inherited. Then every task
//! serves rcr's commands, which rebuild the tree in order: premap the
//! memory its children inherit, start a session or group, fork a child with
//! its saved pid (the child serves commands in turn), join a group, exit as
//! a zombie. Each command is acknowledged with a trap that rcr, tracing the
//! task, catches. On `Go` the task installs its file descriptors, changes
//! into the saved cwd, blocks all signals, maps the prepared hole and jumps
//! into the restorer.

use crate::objects::locks::PosixLock;
use crate::objects::pid_ns::Birth;
use crate::restore::premap::PremapOp;
use rcr_parasite::restore_abi::{
    trap_failed, CloneArgs, RestoreArgs, RseqConf, Step, NS_LEVELS_MAX, TRAP_ACK,
};
use std::arch::asm;

/// A command from rcr to a task, read from the task's own pipe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub op: u32,
    pub arg: i32,
}

/// [`Command::op`] values.
pub mod op {
    pub const SETSID: u32 = 1;
    pub const OWN_GROUP: u32 = 2;
    /// Fork the task whose plan index is `arg`.
    pub const FORK: u32 = 3;
    /// Join process group `arg`.
    pub const JOIN_GROUP: u32 = 4;
    /// End with wait status `arg`, to stay a zombie.
    pub const EXIT: u32 = 5;
    /// Go on to restore the process; `arg` non-zero: threads are made by a
    /// plain clone, their tids arranged by rcr.
    pub const GO: u32 = 6;
    /// Fork the task whose plan index is `arg` with the next pid the kernel
    /// gives, which rcr made the saved one.
    pub const FORK_NEXT: u32 = 7;
    /// Reap child `arg`, forked with a wrong pid or a helper (which rcr
    /// saw end).
    pub const REAP: u32 = 8;
    /// Become a child subreaper.
    pub const SUBREAPER: u32 = 9;
    /// Fork a helper with pid `arg`: a copy of this task, serving the same
    /// commands, that stands in for a session or group leader.
    pub const HELPER: u32 = 10;
    /// [`HELPER`] with the next pid the kernel gives, which rcr made `arg`.
    pub const HELPER_NEXT: u32 = 11;
    /// Premap the memory that children inherit (before any fork).
    pub const PREMAP: u32 = 14;
    /// Take the terminal of [`ChildPlan::ctty`] as controlling terminal
    /// (a session leader, right after SETSID, before it forks).
    pub const CTTY: u32 = 12;
    /// Make group `arg` the foreground of [`ChildPlan::ctty`].
    pub const FOREGROUND: u32 = 13;
}

/// A terminal a task gives back to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctty {
    /// A descriptor of it (a pty master, or rcr's stdin), inherited from rcr.
    pub fd: i32,
    /// The group to put in the foreground; 0: leave it.
    pub foreground: i32,
    /// Take it as controlling terminal first (the session leader).
    pub acquire: bool,
}

/// One descriptor to install: `src` (rcr's) becomes `target` (the task's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdInstall {
    pub src: i32,
    pub target: i32,
    pub cloexec: bool,
}

/// Everything a new task needs, computed by rcr before `clone3`.
pub struct ChildPlan<'a> {
    /// The pid at every namespace level, innermost first, as `clone3`'s
    /// `set_tid` takes it; `set_tid[0]` is what getpid returns in the task.
    pub set_tid: [i32; NS_LEVELS_MAX],
    pub set_tid_size: u32,
    /// How its pid namespace comes about.
    pub birth: Birth,
    pub exit_signal: i32,
    /// The name a zombie shows, NUL-terminated (a live task's is restored
    /// by the restorer).
    pub comm: [u8; 16],
    /// The read end of the task's command pipe.
    pub sync_fd: i32,
    /// Where the restore goes; `None` for a zombie.
    pub restore: Option<RestorePlan<'a>>,
    pub ctty: Option<Ctty>,
}

/// What a live task does on `Go`.
pub struct RestorePlan<'a> {
    pub installs: &'a [FdInstall],
    /// Inclusive ranges of descriptors to close (rcr's, not the task's).
    pub close: &'a [(u32, u32)],
    /// Taken after the close: closing any descriptor of a file drops the
    /// process's POSIX locks on it.
    pub posix_locks: &'a [PosixLock],
    pub cwd_fd: i32,
    pub umask: u32,
    pub hole_start: u64,
    pub image: &'a [u8],
    pub entry: u64,
    pub stack_top: u64,
    pub args_addr: u64,
    pub rseq_offset: u64,
    /// Done on [`op::PREMAP`].
    pub premap: &'a [PremapOp],
}

fn fail(step: Step, ret: i64) -> ! {
    let errno = if ret < 0 { -ret } else { 0 } as u64;
    trap_failed(step, errno, 0)
}

fn sys(ret: libc::c_long, step: Step) -> libc::c_long {
    if ret < 0 {
        // SAFETY: reading errno of this thread.
        let errno = unsafe { *libc::__errno_location() };
        fail(step, -(errno as i64));
    }
    ret
}

/// Runs in the root task; never returns.
pub fn run_root(plans: &[ChildPlan]) -> ! {
    // rcr sends the inherited rseq registration once it has attached.
    let rseq: RseqConf = receive(plans[0].sync_fd);
    serve(plans, 0, rseq)
}

/// Reads one `T` that rcr wrote whole into the task's pipe.
fn receive<T: Copy + Default>(fd: i32) -> T {
    let mut value = T::default();
    let want = std::mem::size_of::<T>();
    // SAFETY: reads at most the bytes of a local plain struct into it.
    let n = unsafe { libc::read(fd, &mut value as *mut T as *mut libc::c_void, want) };
    if n != want as isize {
        fail(Step::ChildSync, n as i64);
    }
    value
}

/// A fork by `clone3` whose child gets pid `pid` and sends `exit_signal`
/// to its parent when it ends. Returns as fork does: 0 in the child, the
/// pid in the parent, -1 with errno set.
pub fn fork_with_pid(pid: i32, exit_signal: i32) -> libc::c_long {
    fork_with_ids(&[pid], 0, exit_signal)
}

/// [`fork_with_pid`] for task `plan`: its pid at every namespace level,
/// in a new pid namespace when it is one's init.
pub fn fork_plan(plan: &ChildPlan) -> libc::c_long {
    let flags = match plan.birth {
        Birth::NewNamespace => libc::CLONE_NEWPID as u64,
        Birth::Inherit | Birth::ParentUnshares => 0,
    };
    fork_with_ids(
        &plan.set_tid[..plan.set_tid_size as usize],
        flags,
        plan.exit_signal,
    )
}

fn fork_with_ids(set_tid: &[i32], flags: u64, exit_signal: i32) -> libc::c_long {
    let args = CloneArgs {
        flags,
        exit_signal: exit_signal as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: set_tid.len() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child has its own copy
    // of this memory and stack; the kernel reads `args` and `set_tid` only.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

/// A plain fork (legacy `clone`, which seccomp policies that refuse
/// `clone3` still allow) that sends `exit_signal` when the child ends.
/// Returns as fork does.
pub fn fork_next(exit_signal: i32) -> libc::c_long {
    // SAFETY: without CLONE_VM this is a fork; no pointers are passed.
    unsafe { libc::syscall(libc::SYS_clone, exit_signal as libc::c_long, 0, 0, 0, 0) }
}

/// Serves rcr's commands as task `me`; a forked child serves its own.
/// Children inherit the rseq registration with the rest of the memory.
fn serve(plans: &[ChildPlan], me: usize, rseq: RseqConf) -> ! {
    let plan = &plans[me];
    // Reported with each acknowledgement: the pid a fork gave.
    let mut result: libc::c_long = 0;
    let mut unshared = false;
    loop {
        // SAFETY: a trap rcr catches; it writes our next command first.
        unsafe { asm!("int3", in("rdi") TRAP_ACK, in("rsi") result) };
        result = 0;
        let cmd: Command = receive(plan.sync_fd);
        // SAFETY: plain syscalls on this task.
        unsafe {
            match cmd.op {
                op::SETSID => {
                    sys(libc::setsid() as libc::c_long, Step::ChildSession);
                }
                op::OWN_GROUP => {
                    sys(libc::setpgid(0, 0) as libc::c_long, Step::ChildSession);
                }
                op::JOIN_GROUP => {
                    sys(
                        libc::setpgid(0, cmd.arg) as libc::c_long,
                        Step::ChildSession,
                    );
                }
                op::FORK | op::FORK_NEXT => {
                    let child = &plans[cmd.arg as usize];
                    if child.birth == Birth::ParentUnshares && !unshared {
                        sys(
                            libc::unshare(libc::CLONE_NEWPID) as libc::c_long,
                            Step::ChildFork,
                        );
                        unshared = true;
                    }
                    let ret = if cmd.op == op::FORK {
                        fork_plan(child)
                    } else {
                        fork_next(child.exit_signal)
                    };
                    result = sys(ret, Step::ChildFork);
                    if result == 0 {
                        // A child with another pid than the saved one (taken
                        // meanwhile) ends at once; rcr tries again.
                        if libc::getpid() != child.set_tid[0] {
                            libc::syscall(libc::SYS_exit_group, 0);
                        }
                        serve(plans, cmd.arg as usize, rseq);
                    }
                }
                op::SUBREAPER => {
                    sys(
                        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) as libc::c_long,
                        Step::ChildSession,
                    );
                }
                op::HELPER | op::HELPER_NEXT => {
                    let ret = if cmd.op == op::HELPER {
                        fork_with_pid(cmd.arg, libc::SIGCHLD)
                    } else {
                        fork_next(libc::SIGCHLD)
                    };
                    result = sys(ret, Step::ChildFork);
                    if result == 0 && libc::getpid() != cmd.arg {
                        libc::syscall(libc::SYS_exit_group, 0);
                    }
                }
                op::CTTY => {
                    let fd = plan.ctty.map_or(-1, |c| c.fd);
                    sys(
                        libc::ioctl(fd, libc::TIOCSCTTY, 0) as libc::c_long,
                        Step::ChildSession,
                    );
                }
                op::FOREGROUND => {
                    // A group not in the foreground may set it only with
                    // SIGTTOU blocked; the restorer sets the saved mask.
                    let ttou: u64 = 1 << (libc::SIGTTOU - 1);
                    libc::syscall(
                        libc::SYS_rt_sigprocmask,
                        libc::SIG_BLOCK,
                        &ttou,
                        0usize,
                        8usize,
                    );
                    let fd = plan.ctty.map_or(-1, |c| c.fd);
                    let pgrp: libc::pid_t = cmd.arg;
                    sys(
                        libc::ioctl(fd, libc::TIOCSPGRP, &pgrp) as libc::c_long,
                        Step::ChildSession,
                    );
                }
                op::REAP => {
                    libc::waitpid(cmd.arg, std::ptr::null_mut(), libc::__WALL);
                }
                op::EXIT => {
                    libc::prctl(libc::PR_SET_NAME, plan.comm.as_ptr());
                    exit_as(cmd.arg)
                }
                op::PREMAP => match &plan.restore {
                    Some(r) => premap(r.premap),
                    None => fail(Step::ChildSync, 0),
                },
                op::GO => match &plan.restore {
                    Some(r) => go(r, rseq, cmd.arg != 0),
                    None => fail(Step::ChildSync, 0),
                },
                _ => fail(Step::ChildSync, 0),
            }
        }
    }
}

/// `madvise` advice that faults a range in writable, not in older libc.
const MADV_POPULATE_WRITE: i32 = 23;

/// Carries out the premap steps (see [`crate::restore::premap`]).
fn premap(ops: &[PremapOp]) {
    let failed = |addr: u64| -> ! {
        // SAFETY: reading errno of this thread.
        let errno = unsafe { *libc::__errno_location() } as u64;
        trap_failed(Step::ChildPremap, errno, addr)
    };
    for op in ops {
        // SAFETY: maps, fills and trims the premap area, which rcr placed
        // clear of every mapping of this copy of rcr.
        unsafe {
            match *op {
                PremapOp::Map {
                    addr,
                    len,
                    flags,
                    fd,
                    pgoff,
                } => {
                    let got = libc::mmap(
                        addr as *mut libc::c_void,
                        len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags as i32 | libc::MAP_FIXED,
                        fd,
                        pgoff as libc::off_t,
                    );
                    if got as u64 != addr {
                        failed(addr);
                    }
                }
                PremapOp::Read { addr, len, fd, off } => {
                    // Faster than faulting page by page; the reads below
                    // fault in whatever this leaves out.
                    libc::madvise(addr as *mut libc::c_void, len as usize, MADV_POPULATE_WRITE);
                    let mut done = 0;
                    while done < len {
                        let n = libc::pread(
                            fd,
                            (addr + done) as *mut libc::c_void,
                            (len - done) as usize,
                            (off + done) as libc::off_t,
                        );
                        if n <= 0 {
                            failed(addr + done);
                        }
                        done += n as u64;
                    }
                }
                PremapOp::Drop { addr, len } => {
                    if libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED)
                        != 0
                    {
                        failed(addr);
                    }
                }
            }
        }
    }
}

/// Ends the task with wait status `status`: an exit code, or death by a
/// signal (with its default action and no core file).
fn exit_as(status: i32) -> ! {
    // SAFETY: plain syscalls on this task, which is about to end.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            set_sigmask(0);
            libc::kill(libc::getpid(), sig);
        }
        libc::syscall(libc::SYS_exit_group, libc::WEXITSTATUS(status));
    }
    fail(Step::ChildExit, 0)
}

/// Sets the blocked mask of this thread to `mask` (all 64 signals), by the
/// raw syscall: glibc's wrapper would keep its own signals unblocked.
fn set_sigmask(mask: u64) -> libc::c_long {
    // SAFETY: the kernel reads 8 bytes of `mask`; no old mask is asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask,
            0usize,
            8usize,
        )
    }
}

/// Installs the task's descriptors, cwd and umask, then enters the restorer.
fn go(plan: &RestorePlan, rseq: RseqConf, plain_clone: bool) -> ! {
    // SAFETY: plain syscalls on this task.
    unsafe {
        for i in plan.installs {
            let flags = if i.cloexec { libc::O_CLOEXEC } else { 0 };
            if i.src == i.target {
                continue;
            }
            sys(
                libc::dup3(i.src, i.target, flags) as libc::c_long,
                Step::ChildFds,
            );
        }
        sys(libc::fchdir(plan.cwd_fd) as libc::c_long, Step::ChildCwd);
        libc::umask(plan.umask as libc::mode_t);
        // Last, as it also closes the sync pipe, the cwd handle and the sources.
        for &(lo, hi) in plan.close {
            sys(
                libc::syscall(libc::SYS_close_range, lo, hi, 0),
                Step::ChildFds,
            );
        }
        for l in plan.posix_locks {
            if libc::fcntl(l.fd, libc::F_SETLK, &l.lock) < 0 {
                let errno = *libc::__errno_location() as u64;
                trap_failed(Step::ChildLocks, errno, l.fd as u64);
            }
        }
        sys(set_sigmask(!0), Step::ChildHole);
        let addr = libc::mmap(
            plan.hole_start as *mut libc::c_void,
            plan.image.len(),
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if addr as u64 != plan.hole_start {
            fail(Step::ChildHole, -(*libc::__errno_location() as i64));
        }
        std::ptr::copy_nonoverlapping(plan.image.as_ptr(), addr as *mut u8, plan.image.len());
        std::ptr::write_unaligned((plan.hole_start + plan.rseq_offset) as *mut RseqConf, rseq);
        let plain_at = plan.args_addr + std::mem::offset_of!(RestoreArgs, plain_clone) as u64;
        std::ptr::write_unaligned(plain_at as *mut u64, plain_clone as u64);
        // Enter as if called: the ABI wants rsp + 8 aligned to 16.
        asm!(
            "mov rsp, {stack}",
            "push 0",
            "jmp {entry}",
            stack = in(reg) plan.stack_top,
            entry = in(reg) plan.entry,
            in("rdi") plan.args_addr,
            options(noreturn),
        )
    }
}
