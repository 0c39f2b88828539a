//! Freezing the task to dump: PTRACE_SEIZE + PTRACE_INTERRUPT, and letting it
//! go again (detach) or ending it (kill) when the dump is over.

use crate::error::{Error, Result};
use crate::ptrace::{self, PtraceError, Stop};
use nix::errno::Errno;
use std::time::Instant;

/// A seized, stopped task. Dropping it detaches, so an error anywhere in a
/// dump leaves the task running as it was.
pub struct Seized {
    pid: i32,
    frozen_at: Instant,
    done: bool,
}

fn traced(pid: i32) -> impl Fn(PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

/// Seizes `pid` and waits until it is stopped.
pub fn seize(pid: i32) -> Result<Seized> {
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
    let seized = Seized {
        pid,
        frozen_at: Instant::now(),
        done: false,
    };
    ptrace::interrupt(pid).map_err(traced(pid))?;
    wait_stopped(pid)?;
    Ok(seized)
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
    /// Lets the task run on, untouched. Returns the freeze time in seconds.
    pub fn release(mut self) -> Result<f64> {
        self.done = true;
        ptrace::detach(self.pid, 0).map_err(traced(self.pid))?;
        Ok(self.frozen_at.elapsed().as_secs_f64())
    }

    /// Ends the task (the checkpoint replaces it) and waits until it is gone.
    /// Returns the freeze time in seconds.
    pub fn kill(mut self) -> Result<f64> {
        self.done = true;
        // SAFETY: signals the process we hold stopped.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(Error::sys(self.pid, "kill", Errno::last()));
        }
        let frozen = self.frozen_at.elapsed().as_secs_f64();
        loop {
            match ptrace::wait_stop(self.pid) {
                Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) => return Ok(frozen),
                Err(e) if e.errno == Errno::ECHILD => return Ok(frozen),
                Err(e) => return Err(traced(self.pid)(e)),
                Ok(_) => continue,
            }
        }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.done {
            let _ = ptrace::detach(self.pid, 0);
        }
    }
}
