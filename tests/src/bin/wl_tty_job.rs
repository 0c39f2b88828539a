//! A job run by `wl_tty_shell` in its own foreground process group, on the
//! shell's terminal (fds 0 and 1). It turns echo off, sets a 40x100 window,
//! prints its pid and says ready. After the wake it checks it is still the
//! terminal's foreground group, in the same session, with the same
//! settings, prints "job: fg ok", then reads one line and wants "hello".

use rcr_tests::fdops::{read_fd, write_fd};
use rcr_tests::ttyops::{get_termios, get_winsize, set_termios, set_winsize};
use rcr_tests::workload::{self, getpid, Verdict};

const WINDOW: (u16, u16, u16, u16) = (40, 100, 0, 0);

fn say(text: &str) {
    write_fd(1, text.as_bytes());
}

fn build() -> Result<(), String> {
    let mut t = get_termios(0)?;
    t.c_lflag &= !libc::ECHO;
    set_termios(0, &t)?;
    set_winsize(0, WINDOW)?;
    say(&format!("job: pid {}\n", getpid()));
    Ok(())
}

fn check(v: &mut Verdict, sid: i32) -> Result<(), String> {
    // SAFETY: queries of this process and its terminal.
    unsafe {
        v.eq("foreground group", libc::tcgetpgrp(0), libc::getpgrp());
        v.eq("own group", libc::getpgrp(), getpid());
        v.eq("session", libc::getsid(0), sid);
    }
    let t = get_termios(0)?;
    v.eq("ECHO", t.c_lflag & libc::ECHO, 0);
    v.eq(
        "ICANON|ISIG",
        t.c_lflag & (libc::ICANON | libc::ISIG),
        libc::ICANON | libc::ISIG,
    );
    v.eq("window", get_winsize(0)?, WINDOW);
    say("job: fg ok\n");
    let line = read_fd(0, 64)?;
    v.eq(
        "line read",
        String::from_utf8_lossy(&line).into_owned(),
        "hello\n".into(),
    );
    say("job: got hello\n");
    Ok(())
}

fn main() {
    // SAFETY: getsid only reads.
    let sid = unsafe { libc::getsid(0) };
    workload::run(|_| build(), |_, v| check(v, sid))
}
