//! Pipes and FIFOs, dump and restore side by side.
//!
//! A pipe is stored once (`Pipe`: size and the bytes in flight) and every
//! open end refers to it by id (`PipeEnd`: which pipe, read or write,
//! O_NONBLOCK). Restore makes the pipe once in rcr and opens each end as a
//! new open file description of it through `/proc/self/fd`, so ends held by
//! several tasks, or only one end of a pipe, come out the same way.
//! (`files::Made` keeps each pipe open while its ends are opened.)

use super::files::{check, open_task_fd, owned, reopen, restore_err};
use crate::error::{Error, Result};
use rcr_images::pb;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

/// Reads pipe `id`'s size and data through `pid`'s fd `fd` without
/// consuming anything: tee() copies the buffers into a pipe of rcr's own.
pub fn dump_pipe(pid: i32, fd: i32, id: u32, fifo: Option<&std::path::Path>) -> Result<pb::Pipe> {
    let sys = |what: &'static str| Error::sys(pid, what, nix::errno::Errno::last());
    // A new open file description of the same pipe; opening it for reading
    // with O_NONBLOCK never waits for a writer.
    let peer = open_task_fd(pid, fd, libc::O_RDONLY | libc::O_NONBLOCK)?;
    // SAFETY: fcntl/ioctl on our own descriptor, with an int to write into.
    let size = unsafe { libc::fcntl(peer.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size < 0 {
        return Err(sys("F_GETPIPE_SZ on a pipe"));
    }
    let mut avail: libc::c_int = 0;
    // SAFETY: as above.
    if unsafe { libc::ioctl(peer.as_raw_fd(), libc::FIONREAD, &mut avail) } < 0 {
        return Err(sys("FIONREAD on a pipe"));
    }
    let mut data = vec![0u8; avail as usize];
    if avail > 0 {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| Error::sys(pid, "pipe2", e))?;
        // SAFETY: fcntl on our own pipe. Same size, so every buffer fits.
        if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(sys("F_SETPIPE_SZ on rcr's copy of a pipe"));
        }
        // SAFETY: tee between two pipe descriptors we own; no user memory.
        let n = unsafe {
            libc::tee(
                peer.as_raw_fd(),
                w.as_raw_fd(),
                avail as usize,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n != avail as isize {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "fd {fd}: a pipe whose {avail} bytes cannot all be copied (tee gave {n})"
                ),
            });
        }
        let got = nix::unistd::read(&r, &mut data)
            .map_err(|e| Error::sys(pid, "read of a pipe copy", e))?;
        if got != data.len() {
            return Err(Error::sys(
                pid,
                "read of a pipe copy",
                nix::errno::Errno::EIO,
            ));
        }
    }
    Ok(pb::Pipe {
        id,
        size: size as u32,
        data,
        fifo_path: fifo
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// A new open file description of the pipe `holder` is open on, with the
/// end's flags. When the checkpoint holds only one end of a pipe, the
/// restored end still has the pipe's data; its other end is gone (a reader
/// sees end of file after the data, a writer gets EPIPE).
pub fn open_end(holder: &OwnedFd, end: &pb::PipeEnd) -> Result<OwnedFd> {
    // Opened without blocking (a FIFO end would wait for its peer), then
    // given exactly the saved flags.
    let fd = reopen(holder, end.flags | libc::O_NONBLOCK as u32)?;
    // SAFETY: fcntl on our own descriptor.
    check(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, end.flags as i32) } as i64,
        "setting a pipe end's flags",
    )?;
    Ok(fd)
}

/// Makes the pipe (or opens the FIFO), sets its size and fills in the data;
/// returns a descriptor open for reading and writing.
pub fn make_pipe(pipe: &pb::Pipe) -> Result<OwnedFd> {
    let holder = if pipe.fifo_path.is_empty() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        check(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } as i64,
            "pipe2",
        )?;
        let (r, w) = (owned(fds[0], "pipe2")?, owned(fds[1], "pipe2")?);
        drop(r);
        // The write end, reopened for reading and writing, keeps both
        // sides of the pipe alive.
        let rw = reopen(&w, libc::O_RDWR as u32 | libc::O_NONBLOCK as u32)?;
        drop(w);
        rw
    } else {
        let path = CString::new(pipe.fifo_path.as_str())
            .map_err(|_| Error::Preflight(format!("FIFO path {} holds a NUL", pipe.fifo_path)))?;
        // SAFETY: open with a valid C string. O_RDWR never waits for a peer.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        owned(raw, &format!("opening the FIFO {}", pipe.fifo_path))?
    };
    // SAFETY: fcntl on our own pipe.
    if unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETPIPE_SZ, pipe.size as i32) } < 0 {
        return Err(restore_err(&format!(
            "setting a pipe's size to {} bytes (is it above /proc/sys/fs/pipe-max-size?)",
            pipe.size
        )));
    }
    let n = nix::unistd::write(&holder, &pipe.data).map_err(|e| {
        Error::Preflight(format!("writing a pipe's {} bytes: {e}", pipe.data.len()))
    })?;
    if n != pipe.data.len() {
        return Err(Error::Preflight(format!(
            "a pipe of {} bytes took only {n} of its {} bytes of data",
            pipe.size,
            pipe.data.len()
        )));
    }
    Ok(holder)
}
