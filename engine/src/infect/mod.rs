//! Getting inside a task: remote syscalls run through its vDSO, and the
//! parasite blob injected into a shared mapping to answer what only the task
//! itself can tell.

pub mod parasite;
pub mod remote;
#[cfg(test)]
pub(crate) mod test_child;

use nix::errno::Errno;

use crate::ptrace::PtraceError;

pub use parasite::Parasite;
pub use remote::RemoteTask;

/// Why getting into (or out of) a task failed. Every variant names the task.
#[derive(Debug, thiserror::Error)]
pub enum InfectError {
    /// A ptrace request or wait failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// A syscall run inside the task returned an error.
    #[error("pid {tid}: remote {name} failed: {errno}")]
    RemoteSyscall {
        /// The task.
        tid: i32,
        /// The syscall.
        name: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// The task exited while rcr was working in it.
    #[error("pid {tid}: exited with status {code} during injection")]
    Exited {
        /// The task.
        tid: i32,
        /// Its exit status.
        code: i32,
    },
    /// The task was killed while rcr was working in it.
    #[error("pid {tid}: killed by signal {sig} during injection")]
    Killed {
        /// The task.
        tid: i32,
        /// The signal.
        sig: i32,
    },
    /// The task has no `[vdso]` mapping to borrow a `syscall` instruction from.
    #[error("pid {tid}: no [vdso] mapping, cannot run remote syscalls")]
    NoVdso {
        /// The task.
        tid: i32,
    },
    /// rcr's own vDSO has no usable `syscall` instruction.
    #[error("cannot find a syscall instruction in the vDSO: {0}")]
    NoGadget(String),
    /// The task stopped somewhere rcr did not make it stop.
    #[error("pid {tid}: unexpected state: {what}")]
    UnexpectedStop {
        /// The task.
        tid: i32,
        /// What was seen.
        what: String,
    },
    /// An I/O step on rcr's side (`/proc` files, the socket, the pipe) failed.
    #[error("pid {tid}: {what}: {source}")]
    Io {
        /// The task.
        tid: i32,
        /// The step.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The parasite crashed or answered with an error.
    #[error("pid {tid}: parasite: {what}")]
    Parasite {
        /// The task.
        tid: i32,
        /// What went wrong.
        what: String,
    },
    /// Pages that `vmsplice` cannot take (an unreadable VMA): read them
    /// through `/proc/PID/mem` instead.
    #[error(
        "pid {tid}: pages at {addr:#x} cannot be vmspliced (EFAULT); read them via /proc/PID/mem"
    )]
    Unspliceable {
        /// The task.
        tid: i32,
        /// First address that failed.
        addr: u64,
    },
}

impl InfectError {
    /// An [`InfectError::Io`] for `tid` from the current `errno`-style error.
    pub(crate) fn io(tid: i32, what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        InfectError::Io {
            tid,
            what: what.into(),
            source: source.into(),
        }
    }
}
