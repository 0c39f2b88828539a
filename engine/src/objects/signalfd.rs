//! signalfd, dump and restore side by side: only the mask (fdinfo
//! `sigmask`) and the flags make one; the signals it reads are the task's
//! pending signals, restored with the task.

use super::files::{bad_fdinfo, owned};
use crate::error::Result;
use crate::proc::fdinfo::FdInfo;
use rcr_images::pb;
use std::os::fd::OwnedFd;

pub fn dump_signalfd(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<pb::SignalFd> {
    let mask = info
        .extra("sigmask")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| bad_fdinfo(pid, fd, "sigmask"))?;
    Ok(pb::SignalFd { mask, flags })
}

pub fn restore_signalfd(s: &pb::SignalFd) -> Result<OwnedFd> {
    let flags = libc::SFD_CLOEXEC | (s.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: signalfd4 reads an 8-byte mask from a u64 we own.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &s.mask as *const u64,
            8usize,
            flags,
        )
    };
    owned(raw as i32, "signalfd")
}
