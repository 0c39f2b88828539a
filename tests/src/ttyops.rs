//! Pseudo-terminal helpers for the terminal workloads and tests: each
//! returns what failed, with errno, as the text of a verdict.

use crate::fdops::{read_fd, sys};
use std::time::{Duration, Instant};

/// How long bytes written to one end may take to show at the other.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A new pty pair, neither end becoming a controlling terminal, both
/// close-on-exec: (master, slave, the slave's path).
pub fn open_pty() -> Result<(i32, i32, String), String> {
    // SAFETY: posix_openpt takes flags; the result is checked.
    let m = sys(
        unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) } as i64,
        "posix_openpt",
    )? as i32;
    // SAFETY: unlockpt on the master we just opened.
    sys(unsafe { libc::unlockpt(m) } as i64, "unlockpt")?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int we own.
    sys(
        unsafe { libc::ioctl(m, libc::TIOCGPTN, &mut n) } as i64,
        "TIOCGPTN",
    )?;
    let path = format!("/dev/pts/{n}");
    let s = crate::fdops::open(&path, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
    Ok((m, s, path))
}

pub fn get_termios(fd: i32) -> Result<libc::termios, String> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    sys(
        unsafe { libc::tcgetattr(fd, &mut t) } as i64,
        &format!("tcgetattr fd {fd}"),
    )?;
    Ok(t)
}

pub fn set_termios(fd: i32, t: &libc::termios) -> Result<(), String> {
    // SAFETY: tcsetattr reads a termios we own.
    sys(
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } as i64,
        &format!("tcsetattr fd {fd}"),
    )?;
    Ok(())
}

/// The window size as (rows, cols, xpixel, ypixel).
pub fn get_winsize(fd: i32) -> Result<(u16, u16, u16, u16), String> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize we own.
    sys(
        unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } as i64,
        "TIOCGWINSZ",
    )?;
    Ok((w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
}

pub fn set_winsize(fd: i32, (rows, cols, x, y): (u16, u16, u16, u16)) -> Result<(), String> {
    let w = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: x,
        ws_ypixel: y,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    sys(
        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) } as i64,
        "TIOCSWINSZ",
    )?;
    Ok(())
}

/// Waits until `fd` has at least `n` bytes to read (FIONREAD).
pub fn wait_queued(fd: i32, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + QUEUE_TIMEOUT;
    loop {
        let have = crate::fdops::pending_bytes(fd)? as usize;
        if have >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("fd {fd}: {have} bytes queued, want {n}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads `n` bytes once they are queued, and checks nothing more is.
pub fn read_queued(fd: i32, n: usize) -> Result<Vec<u8>, String> {
    wait_queued(fd, n)?;
    let extra = crate::fdops::pending_bytes(fd)? as usize;
    if extra != n {
        return Err(format!("fd {fd}: {extra} bytes queued, want exactly {n}"));
    }
    read_fd(fd, n)
}
