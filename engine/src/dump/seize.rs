//! Freezing the tree to dump: PTRACE_SEIZE + PTRACE_INTERRUPT of every
//! thread of every process, and letting them go again (detach) or ending
//! the tree (kill) when the dump is over.
//!
//! The tree is seized from the root down: a process is stopped before its
//! children are listed, so no child can appear unseen. Children that have
//! already exited (zombies) cannot be traced; they are recorded as they are.
//! A thread that ends while it is being seized (the kernel refuses to trace
//! one that is exiting) is left out: it is gone by the time the dump reads
//! the process.
//!
//! A tree that this thread already traces and holds stopped (the CPUID
//! answerer of `rcr run --cpu-profile` freezes it for its checkpoint) is
//! taken as it is, and resumed rather than detached afterwards: it must
//! never run without its tracer.

use crate::error::{Error, Result};
use crate::proc::stat::{self, Stat};
use crate::proc::tasks;
use crate::ptrace::{self, PtraceError, Stop};
use nix::errno::Errno;
use std::time::Instant;

/// A seized process with every thread stopped. Dropping it detaches, so an
/// error anywhere in a dump leaves the process running as it was.
pub struct Seized {
    pid: i32,
    /// The leader first, then the other threads.
    tids: Vec<i32>,
    /// Traced by this thread before the dump: resumed, never detached.
    adopted: bool,
    done: bool,
}

/// A process of the tree: seized, or a zombie waiting for its parent.
pub enum Member {
    Live(Seized),
    Zombie(Box<Stat>),
}

/// A seized tree: the root first, every parent before its children.
pub struct SeizedTree {
    pub members: Vec<Member>,
    frozen_at: Instant,
}

/// Seizes `root` and all its descendants.
pub fn seize_tree(root: i32) -> Result<SeizedTree> {
    let frozen_at = Instant::now();
    let mut members = vec![Member::Live(seize(root)?)];
    let mut next = 0;
    while next < members.len() {
        if let Member::Live(parent) = &members[next] {
            let mut children = Vec::new();
            for &tid in &parent.tids {
                children.extend(tasks::list_children(parent.pid, tid)?);
            }
            for child in children {
                members.push(seize_child(child)?);
            }
        }
        next += 1;
    }
    Ok(SeizedTree { members, frozen_at })
}

/// A child of a stopped parent: live and seized, or already a zombie.
fn seize_child(pid: i32) -> Result<Member> {
    let st = stat::read_stat(pid)?;
    if st.state == 'Z' {
        return Ok(Member::Zombie(Box::new(st)));
    }
    match seize(pid) {
        Ok(s) => Ok(Member::Live(s)),
        // It exited since the listing; its parent is stopped and cannot reap it.
        Err(e) => match stat::read_stat(pid) {
            Ok(st) if st.state == 'Z' => Ok(Member::Zombie(Box::new(st))),
            _ => Err(e),
        },
    }
}

impl SeizedTree {
    /// Lets every process run on, untouched. Returns the freeze time in seconds.
    pub fn release(self) -> Result<f64> {
        let frozen = self.frozen_at.elapsed().as_secs_f64();
        for m in self.members {
            if let Member::Live(s) = m {
                s.release()?;
            }
        }
        Ok(frozen)
    }

    /// Ends every process (the checkpoint replaces them) and waits until
    /// they are gone, children before parents: a pid namespace's init ends
    /// only once its namespace's other processes are reaped, which rcr, as
    /// their tracer, must do first. Returns the freeze time in seconds.
    pub fn kill(self) -> Result<f64> {
        let frozen = self.frozen_at.elapsed().as_secs_f64();
        let live: Vec<Seized> = self
            .members
            .into_iter()
            .filter_map(|m| match m {
                Member::Live(s) => Some(s),
                Member::Zombie(_) => None,
            })
            .collect();
        for s in &live {
            s.signal_kill()?;
        }
        for s in live.into_iter().rev() {
            s.reap()?;
        }
        Ok(frozen)
    }
}

fn traced(pid: i32) -> impl Fn(PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

/// Seizes every thread of `pid` and waits until all are stopped. Threads
/// are listed again after each round, since a thread that was still running
/// may have created more; the rounds end when one finds no new thread.
fn seize(pid: i32) -> Result<Seized> {
    let adopted = seize_leader(pid)?;
    let mut seized = Seized {
        pid,
        tids: vec![pid],
        adopted,
        done: false,
    };
    if !adopted {
        wait_stopped(pid)?;
    }
    loop {
        let new: Vec<i32> = tasks::list_tasks(pid)?
            .into_iter()
            .filter(|t| !seized.tids.contains(t))
            .collect();
        if new.is_empty() {
            return Ok(seized);
        }
        for tid in new {
            match ptrace::seize(tid, ptrace::default_options()) {
                Err(e) if e.errno == Errno::EPERM && adopted && held_by_us(tid) => {
                    seized.tids.push(tid);
                    continue;
                }
                // It exited since the listing, or is exiting (EPERM).
                Err(e) if e.errno == Errno::ESRCH || thread_ended(pid, tid) => continue,
                Err(e) => return Err(traced(tid)(e)),
                Ok(()) => {}
            }
            seized.tids.push(tid);
            ptrace::interrupt(tid).map_err(traced(tid))?;
            match wait_stopped(tid) {
                Err(Error::NoSuchProcess { .. }) => seized.tids.retain(|&t| t != tid),
                other => other?,
            }
        }
    }
}

/// Whether thread `tid` of `pid` is gone or exiting, as far as /proc says.
fn thread_ended(pid: i32, tid: i32) -> bool {
    stat::read_task_stat(pid, tid).map_or(true, |st| matches!(st.state, 'Z' | 'X'))
}

/// Whether this thread already traces `tid` and holds it in a ptrace-stop.
fn held_by_us(tid: i32) -> bool {
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::gettid() };
    crate::proc::status::read_status(tid).is_ok_and(|s| s.tracer_pid == me)
        && stat::read_stat(tid).is_ok_and(|st| st.state == 't')
}

/// Seizes and interrupts the leader; returns whether it was adopted
/// instead (already traced and held stopped by this thread).
fn seize_leader(pid: i32) -> Result<bool> {
    match ptrace::seize(pid, ptrace::default_options()) {
        Err(e) if e.errno == Errno::EPERM && held_by_us(pid) => return Ok(true),
        other => other,
    }
    .map_err(|e| match e.errno {
        Errno::ESRCH => Error::NoSuchProcess { pid },
        Errno::EPERM => Error::NotTraceable {
            pid,
            reason: format!(
                "ptrace refused ({}): rcr needs the same user as the process and \
                 Yama ptrace_scope allowing it, or CAP_SYS_PTRACE{}",
                e.errno,
                kernel_thread_note(pid)
            ),
        },
        errno => Error::NotTraceable {
            pid,
            reason: errno.to_string(),
        },
    })?;
    ptrace::interrupt(pid).map_err(traced(pid))?;
    Ok(false)
}

fn kernel_thread_note(pid: i32) -> &'static str {
    let exists = std::path::Path::new(&format!("/proc/{pid}")).exists();
    if exists && crate::proc::tasks::read_exe(pid).is_err() {
        "; this is a kernel thread, which cannot be checkpointed"
    } else {
        ""
    }
}

/// Waits for the interrupt stop. Signals that arrive first are delivered as
/// they would have been; the interrupt stays pending and stops the task after.
fn wait_stopped(pid: i32) -> Result<()> {
    loop {
        match ptrace::wait_stop(pid).map_err(traced(pid))? {
            Stop::Interrupt | Stop::Group(_) => return Ok(()),
            Stop::Signal(sig) => ptrace::cont(pid, sig).map_err(traced(pid))?,
            Stop::Exited(_) | Stop::Killed(_) => return Err(Error::NoSuchProcess { pid }),
            Stop::Syscall | Stop::Event(_) => ptrace::cont(pid, 0).map_err(traced(pid))?,
        }
    }
}

impl Seized {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The threads, leader first.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// Lets the process run on, untouched.
    fn release(mut self) -> Result<()> {
        self.done = true;
        for &tid in &self.tids {
            self.let_go(tid).map_err(traced(tid))?;
        }
        Ok(())
    }

    /// Detaches `tid`, or resumes it under its tracer when adopted.
    fn let_go(&self, tid: i32) -> std::result::Result<(), PtraceError> {
        if self.adopted {
            ptrace::cont(tid, 0)
        } else {
            ptrace::detach(tid, 0)
        }
    }

    /// Ends the process; [`Seized::reap`] waits until it is gone.
    fn signal_kill(&self) -> Result<()> {
        // SAFETY: signals the process we hold stopped.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(Error::sys(self.pid, "kill", Errno::last()));
        }
        Ok(())
    }

    /// Waits until every thread of the killed process is gone, the leader
    /// last as the kernel reports it.
    fn reap(mut self) -> Result<()> {
        self.done = true;
        for &tid in self.tids.iter().rev() {
            wait_gone(tid)?;
        }
        Ok(())
    }
}

fn wait_gone(tid: i32) -> Result<()> {
    loop {
        match ptrace::wait_stop(tid) {
            Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) => return Ok(()),
            Err(e) if e.errno == Errno::ECHILD => return Ok(()),
            Err(e) => return Err(traced(tid)(e)),
            Ok(_) => continue,
        }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.done {
            for &tid in &self.tids {
                let _ = self.let_go(tid);
            }
        }
    }
}
