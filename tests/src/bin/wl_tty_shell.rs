//! A very small job-control shell for the terminal tests, started as a
//! session leader on a pty slave (fds 0 and 1). It reads commands, one a
//! line:
//! - `fg PROGRAM ARGS...`: runs it as a foreground job (its own group,
//!   made the terminal's foreground), waits for it, prints
//!   `shell: PID exited STATUS fg=PGRP`, and takes the terminal back;
//! - `last PROGRAM ARGS...`: the same, but leaves the terminal to whoever
//!   the job put in the foreground and reads no more commands (it would be
//!   stopped reading from the background), waiting to be killed.

use rcr_tests::fdops::{read_fd, write_fd};
use std::ffi::CString;

fn set_signal(sig: i32, action: libc::sighandler_t) {
    // SAFETY: sets a disposition to SIG_IGN or SIG_DFL, no handler.
    unsafe { libc::signal(sig, action) };
}

const JOB_SIGNALS: [i32; 3] = [libc::SIGTTOU, libc::SIGTTIN, libc::SIGTSTP];

/// Runs `argv` as a foreground job and waits for it; returns its pid and
/// wait status.
fn run_job(argv: &[&str]) -> (i32, i32) {
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(*a).expect("no NUL"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: single-threaded; the child only makes syscalls and execs.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for sig in JOB_SIGNALS {
            set_signal(sig, libc::SIG_DFL);
        }
        // SAFETY: joins its own group, takes the terminal, execs.
        unsafe {
            libc::setpgid(0, 0);
            libc::tcsetpgrp(0, libc::getpid());
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: the same from the shell's side (whichever runs first), then
    // waits for the job.
    unsafe {
        libc::setpgid(pid, pid);
        libc::tcsetpgrp(0, pid);
        libc::waitpid(pid, &mut status, 0);
    }
    (pid, status)
}

fn main() {
    for sig in JOB_SIGNALS {
        set_signal(sig, libc::SIG_IGN);
    }
    loop {
        let line = match read_fd(0, 4096) {
            Ok(l) if !l.is_empty() => String::from_utf8_lossy(&l).into_owned(),
            _ => std::process::exit(1),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, argv)) = words.split_first() else {
            continue;
        };
        if argv.is_empty() || (cmd != "fg" && cmd != "last") {
            write_fd(1, format!("shell: bad command {line:?}\n").as_bytes());
            continue;
        }
        let (pid, status) = run_job(argv);
        // SAFETY: queries the terminal.
        let fg = unsafe { libc::tcgetpgrp(0) };
        write_fd(
            1,
            format!("shell: {pid} exited {status} fg={fg}\n").as_bytes(),
        );
        if cmd == "last" {
            loop {
                // SAFETY: waits for a signal; the test kills the shell.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: takes the terminal back for the next command.
        unsafe { libc::tcsetpgrp(0, libc::getpgrp()) };
    }
}
