//! memfd, dump and restore side by side: each memfd is stored once (name,
//! content, seals), each open file description of it with its flags and
//! offset. A memfd's /proc link reads `/memfd:NAME (deleted)`.

use super::files::{check, open_task_fd, owned};
use crate::error::{Error, Result};
use rcr_images::pb;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// The largest memfd whose content rcr keeps in `files.img`.
const MAX_SIZE: u64 = 64 << 20;

/// The memfd name in a deleted file's path, if it is one.
pub fn name_of(path: &str) -> Option<&str> {
    path.strip_prefix("/memfd:")
}

/// Reads memfd `id`'s content and seals through `pid`'s fd `fd`.
pub fn dump_memfd(pid: i32, fd: i32, id: u32, name: &str) -> Result<pb::MemFd> {
    let file = File::from(open_task_fd(pid, fd, libc::O_RDONLY)?);
    read_memfd(pid, &file, &format!("/proc/{pid}/fd/{fd}"), id, name)
}

/// Reads memfd `id`'s content and seals through rcr's descriptor `file` of
/// it, opened as `proc_path` (a task's fd or mapping).
pub fn read_memfd(
    pid: i32,
    file: &File,
    proc_path: &str,
    id: u32,
    name: &str,
) -> Result<pb::MemFd> {
    let size = file.metadata().map_err(|e| Error::io(proc_path, e))?.len();
    if size > MAX_SIZE {
        return Err(Error::Unsupported {
            pid,
            what: format!("{proc_path}: a memfd of {size} bytes (more than {MAX_SIZE})"),
        });
    }
    let mut data = vec![0u8; size as usize];
    file.read_exact_at(&mut data, 0)
        .map_err(|e| Error::io(proc_path, e))?;
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
        data,
    })
}

/// Makes the memfd with its content and seals; the descriptor is open for
/// reading and writing.
pub fn make_memfd(m: &pb::MemFd) -> Result<OwnedFd> {
    let name = CString::new(m.name.as_str())
        .map_err(|_| Error::Preflight(format!("memfd name {:?} holds a NUL", m.name)))?;
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    let made = File::from(owned(raw, "memfd_create")?);
    made.write_all_at(&m.data, 0)
        .map_err(|e| Error::Preflight(format!("filling memfd {:?}: {e}", m.name)))?;
    // Sealed once filled (a write seal forbids writing), and through this
    // descriptor, as only one open for writing may add seals.
    // SAFETY: fcntl on our own descriptor.
    let ret = unsafe { libc::fcntl(made.as_raw_fd(), libc::F_ADD_SEALS, m.seals as i32) };
    check(ret as i64, "sealing a memfd")?;
    Ok(made.into())
}
