//! The task's filesystem context: cwd, root and umask, dump and restore.

use crate::error::{Error, Result};
use crate::proc::tasks;
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// Dump side: cwd, refusing a task in a chroot (not supported yet).
pub fn dump_cwd(pid: i32) -> Result<String> {
    let root = tasks::read_root(pid)?;
    if root != "/" {
        return Err(Error::Unsupported {
            pid,
            what: format!("a changed root directory ({root})"),
        });
    }
    let cwd = tasks::read_cwd(pid)?;
    if cwd.ends_with(" (deleted)") {
        return Err(Error::Unsupported {
            pid,
            what: format!("a deleted working directory ({cwd})"),
        });
    }
    Ok(cwd)
}

/// Restore side: the cwd opened as a directory handle that the new task
/// changes into.
pub fn open_cwd(cwd: &str) -> Result<OwnedFd> {
    let c = CString::new(std::path::Path::new(cwd).as_os_str().as_bytes())
        .map_err(|_| Error::Preflight(format!("cwd {cwd} holds a NUL byte")))?;
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(Error::Preflight(format!(
            "the working directory {cwd} cannot be opened: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
