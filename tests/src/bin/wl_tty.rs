//! A pseudo-terminal pair across a checkpoint. The root holds the master
//! at fd 20 and the slave at fd 21, sets the slave raw with VMIN 3 and
//! VTIME 7 and a window of 33x111 (5x9 pixels), and leaves bytes queued
//! both ways: [`TO_SLAVE`] written to the master, unread by the slave's
//! reader, and [`TO_MASTER`] written to the slave, unread by the master's;
//! then it locks the pair (TIOCSPTLCK), so no new slave can be opened
//! until the check unlocks it.
//! Child C starts a session with the slave as its controlling terminal and
//! forks G, whose own group it puts in the terminal's foreground.
//!
//! After the wake the root checks the settings and the queued bytes, that
//! new bytes flow both ways, then wakes C and G: C checks it leads the
//! terminal's session and G's group is its foreground, G that it is in the
//! foreground; both open /dev/tty (their controlling terminal).

use rcr_tests::fdops::{place, read_fd, sys, write_fd};
use rcr_tests::ttyops::{
    get_termios, get_winsize, open_pty, read_queued, set_termios, set_winsize, wait_queued,
};
use rcr_tests::workload::{self, getpid, Args, Verdict, WAKE_SIGNAL};
use std::time::{Duration, Instant};

const MASTER: i32 = 20;
const SLAVE: i32 = 21;
const TO_SLAVE: &[u8] = b"to-slave-123";
const TO_MASTER: &[u8] = b"to-master-456";
const WINDOW: (u16, u16, u16, u16) = (33, 111, 5, 9);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn build() -> Result<(i32, i32), String> {
    let (m, s, _) = open_pty()?;
    place(m, MASTER, 0)?;
    place(s, SLAVE, 0)?;
    let mut t = get_termios(SLAVE)?;
    // SAFETY: cfmakeraw edits a termios we own.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cc[libc::VMIN] = 3;
    t.c_cc[libc::VTIME] = 7;
    set_termios(SLAVE, &t)?;
    set_winsize(MASTER, WINDOW)?;
    sys(write_fd(MASTER, TO_SLAVE) as i64, "write to the master")?;
    sys(write_fd(SLAVE, TO_MASTER) as i64, "write to the slave")?;
    wait_queued(SLAVE, TO_SLAVE.len())?;
    wait_queued(MASTER, TO_MASTER.len())?;
    let kids = start_session()?;
    set_lock(1)?;
    Ok(kids)
}

/// Forks C (session leader on the slave) and G (the foreground group);
/// returns their pids once both are set up.
fn start_session() -> Result<(i32, i32), String> {
    let mut p = [0; 2];
    // SAFETY: pipe writes two fds into our array.
    sys(unsafe { libc::pipe(p.as_mut_ptr()) } as i64, "pipe")?;
    // SAFETY: the workload is single-threaded; the child only makes syscalls.
    let c = sys(unsafe { libc::fork() } as i64, "fork C")? as i32;
    if c == 0 {
        let g = leader_setup().unwrap_or_else(|e| die(&e));
        // SAFETY: hands G's pid to the root over the pipe, then closes it.
        unsafe {
            libc::write(p[1], (&g as *const i32).cast(), 4);
            libc::close(p[0]);
            libc::close(p[1]);
        }
        workload::wait_for_wake();
        std::process::exit(leader_check(g))
    }
    // SAFETY: closes our write end, so a C that died gives end of file.
    unsafe { libc::close(p[1]) };
    let got = read_fd(p[0], 4)?;
    // SAFETY: closes our read end.
    unsafe { libc::close(p[0]) };
    let g: [u8; 4] = got.try_into().map_err(|_| "C died in setup".to_string())?;
    Ok((c, i32::from_ne_bytes(g)))
}

fn die(why: &str) -> ! {
    eprintln!("wl_tty child {}: {why}", getpid());
    std::process::exit(1)
}

/// In C: a new session on the slave, and G in the foreground.
fn leader_setup() -> Result<i32, String> {
    // SAFETY: plain syscalls in a single-threaded child.
    unsafe {
        sys(libc::setsid() as i64, "setsid")?;
        sys(libc::ioctl(SLAVE, libc::TIOCSCTTY, 0) as i64, "TIOCSCTTY")?;
        let g = sys(libc::fork() as i64, "fork G")? as i32;
        if g == 0 {
            libc::setpgid(0, 0);
            workload::wait_for_wake();
            std::process::exit(member_check())
        }
        sys(libc::setpgid(g, g) as i64, "setpgid G")?;
        sys(libc::tcsetpgrp(SLAVE, g) as i64, "tcsetpgrp G")?;
        Ok(g)
    }
}

/// The controlling terminal can be opened as /dev/tty.
fn has_ctty(v: &mut Verdict) {
    match rcr_tests::fdops::open("/dev/tty", libc::O_RDWR) {
        // SAFETY: closes the fd just opened.
        Ok(fd) => unsafe {
            libc::close(fd);
        },
        Err(e) => v.fail(e),
    }
}

fn leader_check(g: i32) -> i32 {
    let mut v = Verdict::new();
    let me = getpid();
    // SAFETY: queries on the slave and a wait for our own child.
    unsafe {
        v.eq("C: tcgetsid(slave)", libc::tcgetsid(SLAVE), me);
        v.eq("C: tcgetpgrp(slave)", libc::tcgetpgrp(SLAVE), g);
        has_ctty(&mut v);
        let mut status = 0;
        libc::waitpid(g, &mut status, 0);
        v.eq("C: G's exit status", status, 0);
    }
    workload::exit_code("C", v)
}

fn member_check() -> i32 {
    let mut v = Verdict::new();
    // SAFETY: queries on the slave.
    unsafe {
        v.eq("G: foreground", libc::tcgetpgrp(SLAVE), libc::getpgrp());
    }
    has_ctty(&mut v);
    workload::exit_code("G", v)
}

fn set_lock(mut on: libc::c_int) -> Result<(), String> {
    // SAFETY: TIOCSPTLCK reads an int we own.
    sys(
        unsafe { libc::ioctl(MASTER, libc::TIOCSPTLCK, &mut on) } as i64,
        "TIOCSPTLCK",
    )?;
    Ok(())
}

fn locked() -> Result<libc::c_int, String> {
    let mut on: libc::c_int = 0;
    // SAFETY: TIOCGPTLCK writes an int we own.
    sys(
        unsafe { libc::ioctl(MASTER, libc::TIOCGPTLCK, &mut on) } as i64,
        "TIOCGPTLCK",
    )?;
    Ok(on)
}

fn check(v: &mut Verdict, (c, g): (i32, i32)) -> Result<(), String> {
    v.eq("locked", locked()?, 1);
    // C and G open /dev/tty, which a locked pty refuses.
    set_lock(0)?;
    let t = get_termios(SLAVE)?;
    v.eq("ICANON|ECHO", t.c_lflag & (libc::ICANON | libc::ECHO), 0);
    v.eq("OPOST", t.c_oflag & libc::OPOST, 0);
    v.eq("VMIN", t.c_cc[libc::VMIN], 3);
    v.eq("VTIME", t.c_cc[libc::VTIME], 7);
    v.eq("window", get_winsize(SLAVE)?, WINDOW);
    v.eq(
        "queued for the slave",
        read_queued(SLAVE, TO_SLAVE.len())?,
        TO_SLAVE.to_vec(),
    );
    v.eq(
        "queued for the master",
        read_queued(MASTER, TO_MASTER.len())?,
        TO_MASTER.to_vec(),
    );
    sys(write_fd(MASTER, b"ping") as i64, "write ping")?;
    v.eq(
        "new bytes to the slave",
        read_queued(SLAVE, 4)?,
        b"ping".to_vec(),
    );
    sys(write_fd(SLAVE, b"pong") as i64, "write pong")?;
    v.eq(
        "new bytes to the master",
        read_queued(MASTER, 4)?,
        b"pong".to_vec(),
    );
    // SAFETY: wakes our own children.
    unsafe {
        libc::kill(g, WAKE_SIGNAL);
        libc::kill(c, WAKE_SIGNAL);
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut status = 0;
    // SAFETY: polls for our own child.
    while unsafe { libc::waitpid(c, &mut status, libc::WNOHANG) } == 0 {
        if Instant::now() > deadline {
            return Err("C did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    v.eq("C's exit status (see the log)", status, 0);
    Ok(())
}

fn main() {
    let args = Args::init();
    let kids = build().unwrap_or_else(|e| args.fail_early(&e));
    args.signal_ready_with_descendants(&[kids.0, kids.1]);
    workload::wait_for_wake();
    let mut v = Verdict::new();
    if let Err(e) = check(&mut v, kids) {
        v.fail(e);
    }
    args.finish(v)
}
