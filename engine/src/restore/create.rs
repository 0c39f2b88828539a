//! Creating the restored tree: `clone3` with `set_tid` gives the root its
//! saved pid; rcr then traces it and walks it through the tree's steps
//! (sessions, groups, forks with saved pids, zombies), lets every live
//! process restore itself in parallel, waits until each thread of each
//! process traps ready in the restorer, and releases them all past their
//! final `rt_sigreturn`.
//!
//! rcr traces every new task from its first instruction with
//! `PTRACE_O_EXITKILL` (forks and threads are traced from birth too): if
//! rcr dies before the release, the kernel kills them, so a half-restored
//! tree never lingers.

use crate::error::{Error, Result};
use crate::infect::remote::RemoteTask;
use crate::objects::pstree::TreeStep;
use crate::ptrace::{self, Stop};
use crate::restore::child::{self, op, ChildPlan, Command};
use crate::restore::pids::{Arranged, PidStrategy, Pids};
use nix::errno::Errno;
use rcr_arch::regs::UserRegs;
use rcr_images::pb;
use rcr_parasite::restore_abi::{RseqConf, Step, TRAP_ACK, TRAP_FAILED, TRAP_NEXT_PID, TRAP_READY};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One process as rcr releases it.
pub struct Release {
    pub pid: i32,
    /// Its pid at every pid namespace level from rcr's down (just `pid`
    /// outside nested namespaces).
    pub chain: Vec<i32>,
    /// The threads other than the leader, which the restorer creates.
    pub threads: Vec<i32>,
    /// The restorer's hole, unmapped at the end; `None` for a zombie.
    pub hole: Option<(u64, u64)>,
    /// A zombie's wait status.
    pub exit_code: i32,
    /// The saved capabilities, where they differ from rcr's own.
    pub caps: Option<pb::Creds>,
    /// Threads interrupted in a restartable syscall, with their saved
    /// registers (see [`rcr_arch::regs::interrupted_restartable`]).
    pub in_syscall: Vec<(i32, UserRegs)>,
    /// Arm CPUID faulting in every thread before it runs.
    pub arm_cpuid_faulting: bool,
    /// Stay its tracer (for the CPUID emulator) instead of detaching.
    pub keep_traced: bool,
}

/// Kills the processes rcr created unless they were released. While the
/// tree is built rcr is a child subreaper: a process whose parent was
/// killed first comes to rcr, which reaps it, instead of lingering as a
/// zombie with whoever is above rcr.
struct Created<'a> {
    procs: &'a [Release],
    /// How many of `procs` exist (in creation order, not tree order).
    made: Vec<usize>,
    /// Helpers that exist and were not reaped yet.
    helpers: Vec<i32>,
    released: bool,
    /// rcr's own subreaper setting, put back at the end.
    was_subreaper: bool,
}

impl Created<'_> {
    fn new(procs: &[Release]) -> Created<'_> {
        let mut was: libc::c_int = 0;
        // SAFETY: prctl reads into `was`, then sets a flag on rcr itself.
        unsafe {
            libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut was as *mut libc::c_int);
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        Created {
            procs,
            made: vec![0],
            helpers: Vec::new(),
            released: false,
            was_subreaper: was != 0,
        }
    }
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        if !self.released {
            let made: Vec<&Release> = self.made.iter().map(|&i| &self.procs[i]).collect();
            for pid in self.helpers.iter().chain(made.iter().map(|p| &p.pid)) {
                // SAFETY: signals a process we created.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let wait = |pid: i32| {
                // SAFETY: reaps a task we created (ECHILD: not ours, or gone).
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
            };
            // As their tracer, the last made first: a pid namespace's init
            // ends only after the rest of its namespace is reaped.
            for p in made.iter().rev() {
                p.threads.iter().for_each(|&t| wait(t));
                wait(p.pid);
            }
            // A process whose parent is gone now was handed to rcr (its
            // parent's exit did that before rcr could reap the parent).
            made.iter().for_each(|p| wait(p.pid));
            self.helpers.iter().for_each(|&h| wait(h));
        }
        // SAFETY: puts rcr's own flag back.
        unsafe {
            libc::prctl(
                libc::PR_SET_CHILD_SUBREAPER,
                self.was_subreaper as libc::c_ulong,
                0,
                0,
                0,
            )
        };
    }
}

fn traced(pid: i32) -> impl Fn(ptrace::PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

fn pipe_at(min_fd: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created for us.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The read end must sit where the task closes rcr's descriptors.
    // SAFETY: duplicates our own descriptor; checked below.
    let raw = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min_fd) };
    if raw < 0 {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor fcntl just made.
    Ok((unsafe { OwnedFd::from_raw_fd(raw) }, w))
}

fn write_bytes<T: Copy>(fd: &OwnedFd, value: &T) -> Result<()> {
    let n = std::mem::size_of::<T>();
    // SAFETY: writes the bytes of a plain struct to our pipe.
    let written =
        unsafe { libc::write(fd.as_raw_fd(), value as *const T as *const libc::c_void, n) };
    if written != n as isize {
        return Err(Error::io("pipe", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates the tree: `plans` and `procs` in tree order (root first),
/// `steps` from [`crate::objects::pstree::plan`], pids given as `pids`
/// allows. Returns once every live process runs its saved program on its own.
pub fn create(
    plans: &mut [ChildPlan],
    procs: &[Release],
    steps: &[TreeStep],
    sync_min_fd: i32,
    pids: &mut Pids,
) -> Result<()> {
    let premaps: Vec<bool> = plans
        .iter()
        .map(|p| p.restore.as_ref().is_some_and(|r| !r.premap.is_empty()))
        .collect();
    let mut writers = Vec::with_capacity(plans.len());
    let mut readers = Vec::with_capacity(plans.len());
    for plan in plans.iter_mut() {
        let (r, w) = pipe_at(sync_min_fd)?;
        plan.sync_fd = r.as_raw_fd();
        readers.push(r);
        writers.push(w);
    }
    let root = procs[0].pid;
    let cttys: Vec<_> = plans.iter().map(|p| p.ctty).collect();
    // An rcr with file capabilities is not dumpable, nor are the copies it
    // forks, and only a dumpable task can be traced by its owner without
    // CAP_SYS_PTRACE. Others of the user still cannot trace rcr: they lack
    // its capabilities.
    // SAFETY: prctl on rcr itself.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let mut tries = 0;
    loop {
        if procs[0].chain.len() > 1 && pids.strategy() != PidStrategy::SetTid {
            return Err(nested_needs_set_tid(root));
        }
        let arranged = pids.arrange(root)?;
        // The child is a copy of rcr and runs `child::run_root`, which only
        // makes raw syscalls.
        let ret = match pids.strategy() {
            PidStrategy::SetTid => child::fork_plan(&plans[0]),
            _ => child::fork_next(plans[0].exit_signal),
        };
        if ret == 0 {
            child::run_root(plans);
        }
        let errno = Errno::last();
        drop(arranged);
        if ret == root as libc::c_long {
            break;
        }
        if ret > 0 {
            // SAFETY: kills and reaps the child we just made with the wrong pid.
            unsafe {
                libc::kill(ret as i32, libc::SIGKILL);
                libc::waitpid(ret as i32, std::ptr::null_mut(), libc::__WALL);
            }
            pids.retry(root, ret as i64, &mut tries)?;
        } else if !pids.fall_back(errno) {
            return Err(match errno {
                Errno::EEXIST => Error::pid_taken(root),
                Errno::EPERM => Error::Preflight(format!(
                    "clone3 with set_tid (to get pid {root} back) needs CAP_CHECKPOINT_RESTORE \
                     or CAP_SYS_ADMIN in the pid namespace"
                )),
                e => Error::sys(root, "clone3", e),
            });
        }
    }
    let mut created = Created::new(procs);
    drop(readers);
    attach(root, &writers[0])?;
    wait_trap(root, TRAP_ACK, pids)?;
    // Tasks past the processes are helpers: (pid, the parent whose command
    // channel they share, being its copies).
    let helpers: Vec<(i32, usize)> = {
        let mut h: Vec<(usize, i32, usize)> = steps
            .iter()
            .filter_map(|s| match *s {
                TreeStep::Helper { parent, task, pid } => Some((task, pid, parent)),
                _ => None,
            })
            .collect();
        h.sort_unstable();
        h.into_iter()
            .map(|(_, pid, parent)| (pid, parent))
            .collect()
    };
    let n = procs.len();
    let pid_of = |t: usize| {
        if t < n {
            procs[t].pid
        } else {
            helpers[t - n].0
        }
    };
    let command = |t: usize, op: u32, arg: i32| -> Result<()> {
        let channel = if t < n { t } else { helpers[t - n].1 };
        write_bytes(&writers[channel], &Command { op, arg })?;
        ptrace::cont(pid_of(t), 0).map_err(traced(pid_of(t)))
    };
    // A command and its acknowledgement; returns what the task reported.
    let ask = |t: usize, op: u32, arg: i32, pids: &mut Pids| -> Result<u64> {
        command(t, op, arg)?;
        wait_trap(pid_of(t), TRAP_ACK, pids)
    };
    // The depth in nested pid namespaces of task `t`; helpers stand in for
    // leaders of rcr's own.
    let depth = |t: usize| procs.get(t).map_or(0, |p| p.chain.len() - 1);
    // `parent` forks a task that must get pid `want` (asked for with
    // `fork_op`/`next_op` and `arg`); wrong pids are reaped and tried again.
    // `seen` is the pid the parent sees, in its own namespace.
    let fork = |parent: usize,
                (want, seen): (i32, i32),
                (fork_op, next_op): (u32, u32),
                arg: i32,
                pids: &mut Pids|
     -> Result<()> {
        let fork = match pids.strategy() {
            PidStrategy::SetTid => fork_op,
            _ if want != seen || depth(parent) > 0 => return Err(nested_needs_set_tid(want)),
            _ => next_op,
        };
        let mut tries = 0;
        loop {
            let arranged = pids.arrange(want)?;
            let got = ask(parent, fork, arg, pids)? as i32;
            drop(arranged);
            if got == seen {
                return Ok(());
            }
            // The child with the wrong pid ends by itself; once rcr,
            // its tracer, has seen that, the parent reaps it.
            wait_exit(got)?;
            ask(parent, op::REAP, got, pids)?;
            pids.retry(want, got as i64, &mut tries)?;
        }
    };
    // A task premaps what its children inherit as soon as it exists.
    if premaps[0] {
        ask(0, op::PREMAP, 0, pids)?;
    }
    for &step in steps {
        match step {
            TreeStep::Subreaper(i) => {
                ask(i, op::SUBREAPER, 0, pids)?;
            }
            TreeStep::Helper { parent, pid, .. } => {
                if depth(parent) > 0 {
                    return Err(Error::Preflight(format!(
                        "pid {pid} led a session or group in a nested pid namespace and \
                         has exited; rcr cannot stand in for it there"
                    )));
                }
                fork(parent, (pid, pid), (op::HELPER, op::HELPER_NEXT), pid, pids)?;
                created.helpers.push(pid);
                wait_trap(pid, TRAP_ACK, pids)?;
            }
            TreeStep::Dismiss { parent, task } => {
                let pid = pid_of(task);
                command(task, op::EXIT, 0)?;
                wait_exit(pid)?;
                ask(parent, op::REAP, pid, pids)?;
                created.helpers.retain(|&h| h != pid);
            }
            TreeStep::Setsid(i) => {
                ask(i, op::SETSID, 0, pids)?;
                if cttys.get(i).is_some_and(|c| c.is_some_and(|c| c.acquire)) {
                    ask(i, op::CTTY, 0, pids)?;
                }
            }
            TreeStep::OwnGroup(i) => {
                ask(i, op::OWN_GROUP, 0, pids)?;
            }
            TreeStep::JoinGroup { task, leader } => {
                let pgid = match leader {
                    Some(l) => pid_of(l),
                    // SAFETY: getpgid only reads.
                    None => unsafe { libc::getpgid(root) },
                };
                // SAFETY: getpgid only reads.
                if unsafe { libc::getpgid(pid_of(task)) } == pgid {
                    // Inherited already (a namespace's init may not even
                    // see the leader to join it).
                    continue;
                }
                let seen = match leader {
                    Some(l) if l < n => procs[l].chain.get(depth(task)).copied(),
                    _ => (depth(task) == 0).then_some(pgid),
                };
                let Some(seen) = seen else {
                    return Err(Error::Preflight(format!(
                        "process {} must join group {pgid}, whose leader its pid namespace \
                         does not see",
                        pid_of(task)
                    )));
                };
                ask(task, op::JOIN_GROUP, seen, pids)?;
            }
            TreeStep::Fork { parent, child } => {
                let want = procs[child].pid;
                let seen = procs[child].chain[depth(parent)];
                fork(
                    parent,
                    (want, seen),
                    (op::FORK, op::FORK_NEXT),
                    child as i32,
                    pids,
                )?;
                created.made.push(child);
                wait_trap(want, TRAP_ACK, pids)?;
                if premaps[child] {
                    ask(child, op::PREMAP, 0, pids)?;
                }
            }
            TreeStep::Exit(i) => {
                command(i, op::EXIT, procs[i].exit_code)?;
                wait_exit(procs[i].pid)?;
            }
        }
    }
    for (i, c) in cttys.iter().enumerate() {
        if let Some(c) = c.filter(|c| c.foreground != 0) {
            ask(i, op::FOREGROUND, c.foreground, pids)?;
        }
    }
    let plain_clone = (pids.strategy() != PidStrategy::SetTid) as i32;
    for (i, p) in procs.iter().enumerate() {
        if p.hole.is_some() {
            command(i, op::GO, plain_clone)?;
        }
    }
    for p in procs.iter().filter(|p| p.hole.is_some()) {
        for tid in std::iter::once(p.pid).chain(p.threads.iter().copied()) {
            wait_trap(tid, TRAP_READY, pids)?;
        }
    }
    for p in procs {
        if let Some(hole) = p.hole {
            finish(p, hole)?;
        }
    }
    created.released = true;
    Ok(())
}

fn nested_needs_set_tid(pid: i32) -> Error {
    Error::Preflight(format!(
        "pid {pid} is in a nested pid namespace: only clone3 with set_tid gives a pid \
         at every level (ns_last_pid and spinning reach rcr's level only)"
    ))
}

/// Seizes the root (it waits in a read for us), tells it the rseq
/// registration it inherited, and lets it go on. The processes and threads
/// it creates are traced from their start too (and killed with rcr).
fn attach(pid: i32, sync_w: &OwnedFd) -> Result<()> {
    let options = ptrace::default_options()
        | ptrace::Options::PTRACE_O_EXITKILL
        | ptrace::Options::PTRACE_O_TRACECLONE
        | ptrace::Options::PTRACE_O_TRACEFORK;
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
    write_bytes(sync_w, &rseq)
}

/// Waits until task `pid` traps with `want` in `rdi` (an acknowledged
/// command, or ready in the restorer), or reports the failure it trapped
/// with; returns the trap's `rsi` (what the command gave). A leader that
/// asks for its next thread's tid gets it arranged.
/// Other stops on the way (fork and clone events, a new task's first
/// stop) are let go. Signals that reach a task before it blocks them for
/// the restorer (a zombie's SIGCHLD, a stray kill) are dropped: they are
/// not the saved program's, whose pending signals come from the images.
fn wait_trap(pid: i32, want: u64, pids: &mut Pids) -> Result<u64> {
    // Held until the thread it was arranged for exists: the leader's next stop.
    let mut _arranged: Option<Arranged> = None;
    loop {
        let stop = ptrace::wait_stop(pid).map_err(traced(pid))?;
        if !matches!(stop, Stop::Event(_)) {
            _arranged = None;
        }
        match stop {
            Stop::Signal(libc::SIGTRAP) => {
                let regs = ptrace::get_regs(pid).map_err(traced(pid))?;
                if regs.rdi == want {
                    return Ok(regs.rsi);
                }
                if regs.rdi == TRAP_NEXT_PID {
                    if regs.rdx != 0 {
                        wait_exit(regs.rdx as i32)?;
                    }
                    _arranged = Some(pids.arrange(regs.rsi as i32)?);
                    ptrace::cont(pid, 0).map_err(traced(pid))?;
                    continue;
                }
                if regs.rdi == TRAP_FAILED {
                    return Err(match Step::from_raw(regs.rsi) {
                        Some(Step::WrongPid) => pids.wrong_pid(regs.rdx as i32, regs.rcx as i64),
                        step => Error::RestoreFailed {
                            pid,
                            step: step.map_or("an unknown step", Step::describe),
                            errno: Errno::from_raw(regs.rdx as i32),
                            at: regs.rcx,
                        },
                    });
                }
                return Err(Error::RestoreLost {
                    pid,
                    what: format!("unexpected trap at {:#x}", regs.rip),
                });
            }
            Stop::Signal(sig) if !is_fault(sig) => ptrace::cont(pid, 0).map_err(traced(pid))?,
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

fn is_fault(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGSYS
    )
}

/// Waits until a task told to exit has: it stays a zombie for its parent
/// once rcr, its tracer, has seen the exit. Its own fatal signal, if that
/// is how it ended, is let through.
fn wait_exit(pid: i32) -> Result<()> {
    loop {
        match ptrace::wait_stop(pid).map_err(traced(pid))? {
            Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
            Stop::Signal(sig) => ptrace::cont(pid, sig).map_err(traced(pid))?,
            _ => ptrace::cont(pid, 0).map_err(traced(pid))?,
        }
    }
}

/// Steps every thread of a process through its `rt_sigreturn`, unmaps the
/// hole from inside the leader, and detaches: from here the saved program
/// runs.
fn finish(p: &Release, (hole_start, hole_len): (u64, u64)) -> Result<()> {
    let all = || std::iter::once(p.pid).chain(p.threads.iter().copied());
    for tid in all() {
        step_through_sigreturn(tid)?;
        if let Some(c) = &p.caps {
            crate::privilege::set_task_caps(tid, c, hole_start)?;
        }
    }
    let mut task = RemoteTask::new(p.pid)?;
    let ret = task.syscall(libc::SYS_munmap, [hole_start, hole_len, 0, 0, 0, 0])?;
    task.restore_regs()?;
    if ret != 0 {
        return Err(Error::RestoreFailed {
            pid: p.pid,
            step: "unmapping the restorer",
            errno: Errno::from_raw(-ret as i32),
            at: hole_start,
        });
    }
    for tid in all().filter(|_| p.arm_cpuid_faulting) {
        crate::cpu_mask::arm(tid)?;
    }
    for tid in all() {
        match p.in_syscall.iter().find(|(t, _)| *t == tid) {
            Some((_, saved)) => release_in_syscall(tid, saved, p.keep_traced)?,
            None => release(tid, 0, p.keep_traced)?,
        }
    }
    Ok(())
}

/// Lets a thread that was interrupted in a restartable syscall run into it
/// again and releases it there. Should a signal come first, the thread gets
/// its saved registers back and the signal with them, so the kernel restarts
/// the syscall or fails it with EINTR after the handler, as it would have.
fn release_in_syscall(tid: i32, saved: &UserRegs, keep_traced: bool) -> Result<()> {
    loop {
        ptrace::syscall(tid, 0).map_err(traced(tid))?;
        match ptrace::wait_stop(tid).map_err(traced(tid))? {
            Stop::Syscall => return release(tid, 0, keep_traced),
            Stop::Signal(sig) => {
                ptrace::set_regs(tid, saved).map_err(traced(tid))?;
                return release(tid, sig, keep_traced);
            }
            Stop::Interrupt | Stop::Group(_) | Stop::Event(_) => {}
            other => {
                return Err(Error::RestoreLost {
                    pid: tid,
                    what: format!("expected its syscall again, got {other:?}"),
                })
            }
        }
    }
}

/// Lets a thread run its saved program: detached, or still traced (by this
/// thread) when a CPUID emulator will serve it.
fn release(tid: i32, sig: i32, keep_traced: bool) -> Result<()> {
    if keep_traced {
        ptrace::cont(tid, sig).map_err(traced(tid))
    } else {
        ptrace::detach(tid, sig).map_err(traced(tid))
    }
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
