//! memfd, dump and restore side by side: each memfd is stored once (name,
//! content, seals), each open file description of it with its flags and
//! offset. A memfd's /proc link reads `/memfd:NAME (deleted)`.

use super::files::{check, open_task_fd, owned};
use super::objdata;
use crate::error::{Error, Result};
use rcr_images::pb;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The memfd name in a deleted file's path, if it is one.
pub fn name_of(path: &str) -> Option<&str> {
    path.strip_prefix("/memfd:")
}

/// Reads memfd `id`'s content (into `data`) and seals through `pid`'s fd
/// `fd`.
pub fn dump_memfd(
    pid: i32,
    fd: i32,
    id: u32,
    name: &str,
    data: &mut objdata::Writer,
) -> Result<pb::MemFd> {
    let file = File::from(open_task_fd(pid, fd, libc::O_RDONLY)?);
    read_memfd(pid, &file, &format!("/proc/{pid}/fd/{fd}"), id, name, data)
}

/// Reads memfd `id`'s content and seals through rcr's descriptor `file` of
/// it, opened as `proc_path` (a task's fd or mapping); the content goes to
/// `data`.
pub fn read_memfd(
    pid: i32,
    file: &File,
    proc_path: &str,
    id: u32,
    name: &str,
    data: &mut objdata::Writer,
) -> Result<pb::MemFd> {
    let size = file.metadata().map_err(|e| Error::io(proc_path, e))?.len();
    let runs = data.save(file, proc_path, size)?;
    // SAFETY: fcntl on our own descriptor.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(Error::sys(
            pid,
            "F_GET_SEALS on a memfd",
            nix::errno::Errno::last(),
        ));
    }
    Ok(pb::MemFd {
        id,
        name: name.to_owned(),
        seals: seals as u32,
        size,
        runs,
    })
}

/// Makes the memfd with its content (from the object data file `data`) and
/// seals; the descriptor is open for reading and writing.
pub fn make_memfd(m: &pb::MemFd, data: &Path) -> Result<OwnedFd> {
    let name = CString::new(m.name.as_str())
        .map_err(|_| Error::Preflight(format!("memfd name {:?} holds a NUL", m.name)))?;
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    let made = File::from(owned(raw, "memfd_create")?);
    let what = format!("memfd {:?}", m.name);
    made.set_len(m.size).map_err(|e| Error::io(&what, e))?;
    objdata::fill(data, &m.runs, &made, &what)?;
    // Sealed once filled (a write seal forbids writing), and through this
    // descriptor, as only one open for writing may add seals.
    // SAFETY: fcntl on our own descriptor.
    let ret = unsafe { libc::fcntl(made.as_raw_fd(), libc::F_ADD_SEALS, m.seals as i32) };
    check(ret as i64, "sealing a memfd")?;
    Ok(made.into())
}
