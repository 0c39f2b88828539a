//! A signalfd at fd 20 (O_NONBLOCK) for SIGUSR2 and SIGRTMIN, both blocked,
//! with a SIGUSR2 pending. After restore: its mask and flags, the pending
//! signal read through it, and a new signal read through it too.

use rcr_tests::fdops::{fdinfo_value, place, read_fd, status_flags, sys};
use rcr_tests::workload::{self, Verdict};

const SFD: i32 = 20;

fn mask() -> u64 {
    (1 << (libc::SIGUSR2 - 1)) | (1 << (libc::SIGRTMIN() - 1))
}

fn build() -> Result<(), String> {
    // SAFETY: sigset calls on a set we own; signalfd reads it; kill to self.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigaddset(&mut set, libc::SIGRTMIN());
        sys(
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) as i64,
            "sigprocmask",
        )?;
        let fd = sys(
            libc::signalfd(-1, &set, libc::SFD_NONBLOCK) as i64,
            "signalfd",
        )? as i32;
        place(fd, SFD, 0)?;
        sys(libc::kill(libc::getpid(), libc::SIGUSR2) as i64, "kill")?;
    }
    Ok(())
}

/// The signal number of the next siginfo read from the signalfd, if any.
fn next_signal() -> Result<Option<u32>, String> {
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    match read_fd(SFD, size) {
        Ok(b) if b.len() == size => Ok(Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))),
        Ok(b) => Err(format!("signalfd read {} bytes", b.len())),
        Err(_) if workload::last_err().raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

fn check(v: &mut Verdict) -> Result<(), String> {
    v.eq(
        "fd 20 flags",
        status_flags(SFD)?,
        libc::O_RDWR | libc::O_NONBLOCK,
    );
    v.eq(
        "sigmask",
        fdinfo_value(SFD, "sigmask")?,
        format!("{:016x}", mask()),
    );
    v.eq("pending signal", next_signal()?, Some(libc::SIGUSR2 as u32));
    v.eq("nothing more pending", next_signal()?, None);
    // SAFETY: kill to self with a blocked signal.
    sys(
        unsafe { libc::kill(libc::getpid(), libc::SIGRTMIN()) } as i64,
        "kill",
    )?;
    v.eq("new signal", next_signal()?, Some(libc::SIGRTMIN() as u32));
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
