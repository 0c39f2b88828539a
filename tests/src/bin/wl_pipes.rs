//! Pipes and a FIFO across a checkpoint:
//! - pipe A: read end at 10 (dup at 13), write end at 11 with O_NONBLOCK,
//!   grown to 128 KiB and holding 100000 bytes in flight;
//! - pipe B: only its read end at 12, holding 100 bytes (write end closed);
//! - a FIFO in the test dir: read end at 14 (O_NONBLOCK), write end at 15,
//!   holding 50 bytes;
//! - pipe C: empty, read end at 16, write end at 17 with O_CLOEXEC.
//!
//! After restore: flags, size, bytes in flight and their content, the dup
//! still sharing its open file description, end of file on B, and every
//! pipe still carrying new data from its write end to its read end.

use rcr_tests::fdops::{pending_bytes, place, read_fd, status_flags, sys, write_fd};
use rcr_tests::pattern;
use rcr_tests::workload::{self, Args, Verdict};
use std::ffi::CString;

const A_R: i32 = 10;
const A_W: i32 = 11;
const B_R: i32 = 12;
const A_DUP: i32 = 13;
const F_R: i32 = 14;
const F_W: i32 = 15;
const C_R: i32 = 16;
const C_W: i32 = 17;
const A_SIZE: i32 = 128 << 10;
const A_LEN: usize = 100_000;
const B_LEN: usize = 100;
const F_LEN: usize = 50;
const SEED_A: u64 = 0xa1;
const SEED_B: u64 = 0xb2;
const SEED_F: u64 = 0xf3;

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, seed, 0);
    v
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    sys(unsafe { libc::pipe(fds.as_mut_ptr()) } as i64, "pipe")?;
    Ok((fds[0], fds[1]))
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> Result<i32, String> {
    // SAFETY: fcntl with an integer argument on an fd number.
    let rc = unsafe { libc::fcntl(fd, cmd, arg) };
    Ok(sys(rc as i64, &format!("fcntl {cmd} fd {fd}"))? as i32)
}

fn write_all(fd: i32, data: &[u8]) -> Result<(), String> {
    let n = write_fd(fd, data);
    sys(n as i64, &format!("write fd {fd}"))?;
    if n as usize != data.len() {
        return Err(format!("write fd {fd}: {n} of {} bytes", data.len()));
    }
    Ok(())
}

fn open_fifo(path: &CString, flags: i32) -> Result<i32, String> {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    Ok(sys(fd as i64, "open the FIFO")? as i32)
}

fn build(args: &Args) -> Result<(), String> {
    let (r, w) = pipe()?;
    place(r, A_R, 0)?;
    place(w, A_W, 0)?;
    fcntl(A_W, libc::F_SETFL, libc::O_NONBLOCK)?;
    fcntl(A_W, libc::F_SETPIPE_SZ, A_SIZE)?;
    write_all(A_W, &content(SEED_A, A_LEN))?;
    // SAFETY: dup2 onto a number we chose.
    sys(unsafe { libc::dup2(A_R, A_DUP) } as i64, "dup2")?;

    let (r, w) = pipe()?;
    write_all(w, &content(SEED_B, B_LEN))?;
    place(r, B_R, 0)?;
    // SAFETY: closes our own write end of B.
    unsafe { libc::close(w) };

    let path = CString::new(
        args.dir()
            .join("fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: mkfifo with a NUL-terminated path.
    sys(
        unsafe { libc::mkfifo(path.as_ptr(), 0o600) } as i64,
        "mkfifo",
    )?;
    place(open_fifo(&path, libc::O_RDONLY | libc::O_NONBLOCK)?, F_R, 0)?;
    place(open_fifo(&path, libc::O_WRONLY)?, F_W, 0)?;
    write_all(F_W, &content(SEED_F, F_LEN))?;

    let (r, w) = pipe()?;
    place(r, C_R, 0)?;
    place(w, C_W, libc::O_CLOEXEC)?;
    Ok(())
}

/// Reads exactly `len` bytes from a non-blocking read end.
fn read_exact(fd: i32, len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let got = read_fd(fd, len - out.len())?;
        if got.is_empty() {
            return Err(format!("fd {fd}: end of file after {} bytes", out.len()));
        }
        out.extend(got);
    }
    Ok(out)
}

fn check(v: &mut Verdict) -> Result<(), String> {
    let (rd, wr, nb) = (libc::O_RDONLY, libc::O_WRONLY, libc::O_NONBLOCK);
    for (fd, want) in [
        (A_R, rd),
        (A_W, wr | nb),
        (B_R, rd),
        (A_DUP, rd),
        (F_R, rd | nb),
        (F_W, wr),
        (C_R, rd),
        (C_W, wr),
    ] {
        v.eq(&format!("fd {fd} flags"), status_flags(fd)?, want);
    }
    v.eq(
        "fd 17 FD_CLOEXEC",
        fcntl(C_W, libc::F_GETFD, 0)?,
        libc::FD_CLOEXEC,
    );
    v.eq("pipe A size", fcntl(A_R, libc::F_GETPIPE_SZ, 0)?, A_SIZE);
    for (fd, want) in [(A_R, A_LEN), (B_R, B_LEN), (F_R, F_LEN), (C_R, 0)] {
        v.eq(
            &format!("fd {fd} bytes in flight"),
            pending_bytes(fd)?,
            want as i32,
        );
    }

    // The dup shares its open file description: flags set through one
    // show through the other.
    fcntl(A_DUP, libc::F_SETFL, libc::O_NONBLOCK)?;
    v.eq(
        "fd 10 flags after F_SETFL on 13",
        status_flags(A_R)?,
        rd | nb,
    );
    v.check(read_exact(A_R, A_LEN)? == content(SEED_A, A_LEN), || {
        "pipe A data differs".into()
    });
    write_all(A_W, b"more")?;
    v.eq("pipe A new data", read_exact(A_DUP, 4)?, b"more".to_vec());

    v.check(read_exact(B_R, B_LEN)? == content(SEED_B, B_LEN), || {
        "pipe B data differs".into()
    });
    v.eq(
        "pipe B after its data (no writer)",
        read_fd(B_R, 1)?,
        vec![],
    );

    v.check(read_exact(F_R, F_LEN)? == content(SEED_F, F_LEN), || {
        "FIFO data differs".into()
    });
    write_all(F_W, b"fifo")?;
    v.eq("FIFO new data", read_exact(F_R, 4)?, b"fifo".to_vec());

    write_all(C_W, b"abc")?;
    v.eq("pipe C new data", read_fd(C_R, 3)?, b"abc".to_vec());
    Ok(())
}

fn main() {
    workload::run(build, |_, v| check(v))
}
