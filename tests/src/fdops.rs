//! Descriptor helpers for the workloads: each returns what failed, with
//! errno, as the text of a verdict.

use crate::workload::last_err;
use std::ffi::CString;

/// `rc` when the call succeeded, else `what` with errno.
pub fn sys(rc: i64, what: &str) -> Result<i64, String> {
    if rc < 0 {
        return Err(format!("{what}: {}", last_err()));
    }
    Ok(rc)
}

/// open(2) with mode 0644 for O_CREAT.
pub fn open(path: &str, flags: i32) -> Result<i32, String> {
    let c = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: open with a NUL-terminated path and a mode for O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
    Ok(sys(fd as i64, &format!("open {path}"))? as i32)
}

/// Moves `fd` to number `target` (with `flags`, e.g. O_CLOEXEC).
pub fn place(fd: i32, target: i32, flags: i32) -> Result<(), String> {
    if fd == target {
        let fd_flags = if flags & libc::O_CLOEXEC != 0 {
            libc::FD_CLOEXEC
        } else {
            0
        };
        // SAFETY: fcntl on an fd we own.
        sys(
            unsafe { libc::fcntl(fd, libc::F_SETFD, fd_flags) } as i64,
            "F_SETFD",
        )?;
        return Ok(());
    }
    // SAFETY: dup3 onto a number we chose, then close the original, both ours.
    unsafe {
        sys(
            libc::dup3(fd, target, flags) as i64,
            &format!("dup3 to {target}"),
        )?;
        libc::close(fd);
    }
    Ok(())
}

/// lseek(2); -1 on error.
pub fn seek(fd: i32, off: i64, whence: i32) -> i64 {
    // SAFETY: lseek on an fd number; a bad fd gives -1.
    unsafe { libc::lseek(fd, off, whence) }
}

/// write(2) of all of `data` in one call; the count or -1.
pub fn write_fd(fd: i32, data: &[u8]) -> isize {
    // SAFETY: writes from a slice we own.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// One read(2) of up to `len` bytes.
pub fn read_fd(fd: i32, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    // SAFETY: reads into a buffer of `len` bytes we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
    buf.truncate(sys(n as i64, &format!("read fd {fd}"))? as usize);
    Ok(buf)
}

/// F_GETFL of `fd`, without the bits every open file carries (O_LARGEFILE).
pub fn status_flags(fd: i32) -> Result<i32, String> {
    // SAFETY: fcntl on an fd number; a bad fd gives -1.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    Ok(sys(fl as i64, &format!("F_GETFL fd {fd}"))? as i32 & !0o100000)
}

/// The value of the first `key:` line of `/proc/self/fdinfo/FD`.
pub fn fdinfo_value(fd: i32, key: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| format!("fdinfo of fd {fd}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| format!("fdinfo of fd {fd} has no {key}"))
}

/// Bytes waiting to be read on a pipe (FIONREAD).
pub fn pending_bytes(fd: i32) -> Result<i32, String> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int we own.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    sys(rc as i64, &format!("FIONREAD fd {fd}"))?;
    Ok(n)
}
