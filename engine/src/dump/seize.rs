//! Freezing the process to dump: PTRACE_SEIZE + PTRACE_INTERRUPT of every
//! thread, and letting them go again (detach) or ending the process (kill)
//! when the dump is over.

use crate::error::{Error, Result};
use crate::proc::tasks;
use crate::ptrace::{self, PtraceError, Stop};
use nix::errno::Errno;
use std::time::{Duration, Instant};

/// How long a dump waits for the killed process's parent to reap it.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// A seized process with every thread stopped. Dropping it detaches, so an
/// error anywhere in a dump leaves the process running as it was.
pub struct Seized {
    pid: i32,
    /// The leader first, then the other threads.
    tids: Vec<i32>,
    frozen_at: Instant,
    done: bool,
}

fn traced(pid: i32) -> impl Fn(PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

/// Seizes every thread of `pid` and waits until all are stopped. Threads
/// are listed again after each round, since a thread that was still running
/// may have created more; the rounds end when one finds no new thread.
pub fn seize(pid: i32) -> Result<Seized> {
    seize_leader(pid)?;
    let mut seized = Seized {
        pid,
        tids: vec![pid],
        frozen_at: Instant::now(),
        done: false,
    };
    wait_stopped(pid)?;
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
                // It exited since the listing.
                Err(e) if e.errno == Errno::ESRCH => continue,
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

fn seize_leader(pid: i32) -> Result<()> {
    ptrace::seize(pid, ptrace::default_options()).map_err(|e| match e.errno {
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
    ptrace::interrupt(pid).map_err(traced(pid))
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
    /// The threads, leader first.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// Lets the process run on, untouched. Returns the freeze time in seconds.
    pub fn release(mut self) -> Result<f64> {
        self.done = true;
        for &tid in &self.tids {
            ptrace::detach(tid, 0).map_err(traced(tid))?;
        }
        Ok(self.frozen_at.elapsed().as_secs_f64())
    }

    /// Ends the process (the checkpoint replaces it) and waits until every
    /// thread is gone, the leader last as the kernel reports it.
    /// Returns the freeze time in seconds.
    pub fn kill(mut self) -> Result<f64> {
        self.done = true;
        // SAFETY: signals the process we hold stopped.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(Error::sys(self.pid, "kill", Errno::last()));
        }
        let frozen = self.frozen_at.elapsed().as_secs_f64();
        for &tid in self.tids.iter().rev() {
            wait_gone(tid)?;
        }
        wait_reaped(self.pid);
        Ok(frozen)
    }
}

/// rcr is the tracer, not the parent: the pid stays taken until the parent
/// reaps the process. Give it a moment, so that a restore right after the
/// dump finds the pid free; a parent that never reaps is not waited for.
fn wait_reaped(pid: i32) {
    let deadline = Instant::now() + REAP_GRACE;
    let path = format!("/proc/{pid}");
    while std::path::Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
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
                let _ = ptrace::detach(tid, 0);
            }
        }
    }
}
