//! eventfd, dump and restore side by side: the counter and the semaphore
//! flag come from fdinfo, the counter goes back in with one write.

use super::files::{bad_fdinfo, check, owned};
use crate::error::Result;
use crate::proc::fdinfo::FdInfo;
use rcr_images::pb;
use std::os::fd::{AsRawFd, OwnedFd};

/// Reads the counter (`eventfd-count`, hex) and `eventfd-semaphore` (absent
/// on kernels before 6.7, where a semaphore eventfd reads as a plain one).
pub fn dump_eventfd(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<pb::EventFd> {
    let count = info
        .extra("eventfd-count")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| bad_fdinfo(pid, fd, "eventfd-count"))?;
    Ok(pb::EventFd {
        count,
        semaphore: info.extra("eventfd-semaphore") == Some("1"),
        flags,
    })
}

/// A new eventfd with the saved counter and flags.
pub fn restore_eventfd(e: &pb::EventFd) -> Result<OwnedFd> {
    let mut flags = libc::EFD_CLOEXEC | (e.flags as i32 & libc::O_NONBLOCK);
    if e.semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    // SAFETY: eventfd takes plain integers.
    let fd = owned(unsafe { libc::eventfd(0, flags) }, "eventfd")?;
    if e.count > 0 {
        // SAFETY: writes 8 bytes from a u64 we own; the counter starts at 0
        // and a saved one is below the maximum, so this never blocks.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&e.count as *const u64).cast(), 8) };
        check(n as i64, "setting an eventfd's counter")?;
    }
    Ok(fd)
}
