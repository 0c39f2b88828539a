//! The engine's errors. Each names the object at fault: pid, fd, path, address.

use std::path::PathBuf;

/// Everything that can go wrong in a dump or a restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("cannot trace process {pid}: {reason}")]
    NotTraceable { pid: i32, reason: String },
    #[error("process {pid}: fd {fd} is {kind} ({target}), which rcr cannot checkpoint yet")]
    UnsupportedFd {
        pid: i32,
        fd: i32,
        kind: String,
        target: String,
    },
    #[error("process {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    #[error("image directory {} does not exist", path.display())]
    NoImageDir { path: PathBuf },
    #[error("image directory {} already holds files; choose an empty or new directory", path.display())]
    DirNotEmpty { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid}: {what} failed: {errno}")]
    Sys {
        pid: i32,
        what: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("checkpoint {}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("pid {pid} is in use ({holder}); it must be free to restore the checkpoint with the same pid")]
    PidTaken { pid: i32, holder: String },
    #[error("process {pid}: refused: {what}")]
    Privilege { pid: i32, what: String },
    #[error("rcr run in {}: {what}", dir.display())]
    Run { dir: PathBuf, what: String },
    #[error("cannot restore here: {0}")]
    Preflight(String),
    #[error("restore of pid {pid} failed while {step}: {errno} (at {at:#x})")]
    RestoreFailed {
        pid: i32,
        step: &'static str,
        errno: nix::errno::Errno,
        at: u64,
    },
    #[error("restore of pid {pid} failed: {what}")]
    RestoreLost { pid: i32, what: String },
    #[error(transparent)]
    Image(#[from] rcr_images::ImageError),
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    #[error(transparent)]
    Infect(#[from] crate::infect::InfectError),
}

/// Shorthand for the engine's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A failed system call made for process `pid`.
    pub fn sys(pid: i32, what: &'static str, errno: nix::errno::Errno) -> Error {
        Error::Sys { pid, what, errno }
    }

    /// A taken pid, with who holds it as /proc tells.
    pub fn pid_taken(pid: i32) -> Error {
        let holder = match crate::proc::stat::read_stat(pid) {
            Ok(st) if st.state == 'Z' => format!(
                "by an exited process ({}) that its parent {} has not reaped yet",
                st.comm, st.ppid
            ),
            Ok(st) => format!("by a running task ({})", st.comm),
            Err(_) => "by another process".into(),
        };
        Error::PidTaken { pid, holder }
    }
}
