//! A small event-loop server across a checkpoint: one epoll instance
//! watching a stream listener bound to `evloop.sock` in the test dir, an
//! eventfd, a 20 ms periodic timerfd and every accepted connection.
//!
//! Line protocol: `ping N` → `pong N`; `kick` → the server writes the
//! eventfd and answers `kicked K` once the loop has read it back (K kicks
//! so far); `ticks` → `ticks T` (timer expirations so far).
//!
//! Before ready the server forks a client, which connects, gets `pong 1`
//! and waits for a line. On the wake signal the server writes `go` to it;
//! the client then asks `ping 2`, checks `pong 2` and exits 0. The server
//! keeps serving until the client has exited, then writes its verdict:
//! the client's exit status, at least one client served that connected
//! after the checkpoint (the test), and timer ticks seen.

use rcr_tests::fdops::{place, read_fd, sys, write_fd};
use rcr_tests::sockops::{bind, connect, listen, socket};
use rcr_tests::workload::{self, woken, Args, Verdict};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LISTENER: i32 = 30;
const EFD: i32 = 31;
const TFD: i32 = 32;
const EP: i32 = 33;
/// How long the server serves after the wake before giving up on its client.
const AFTER_WAKE: Duration = Duration::from_secs(60);

fn sock_path(args: &Args) -> Vec<u8> {
    args.dir()
        .join("evloop.sock")
        .into_os_string()
        .into_encoded_bytes()
}

fn watch(fd: i32) -> Result<(), String> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: epoll_ctl reads the event we own.
    let rc = unsafe { libc::epoll_ctl(EP, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    sys(rc as i64, &format!("epoll_ctl add fd {fd}"))?;
    Ok(())
}

fn write_line(fd: i32, line: &str) -> Result<(), String> {
    let text = format!("{line}\n");
    let n = write_fd(fd, text.as_bytes());
    sys(n as i64, &format!("write fd {fd}"))?;
    Ok(())
}

/// Reads one line from a blocking descriptor, a byte at a time.
fn read_line(fd: i32) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let b = read_fd(fd, 1)?;
        match b.first() {
            None => return Err(format!("fd {fd}: end of file after {line:?}")),
            Some(b'\n') => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Some(&c) => line.push(c),
        }
    }
}

/// The forked client: `ping 1`, wait for `go`, `ping 2`.
fn client(path: &[u8]) -> i32 {
    // The server's descriptors are not the client's business.
    for fd in [LISTENER, EFD, TFD, EP] {
        // SAFETY: closes inherited descriptors this process does not use.
        unsafe { libc::close(fd) };
    }
    let run = || -> Result<(), String> {
        let fd = socket(libc::SOCK_STREAM)?;
        connect(fd, path)?;
        write_line(fd, "ping 1")?;
        expect(&read_line(fd)?, "pong 1")?;
        expect(&read_line(fd)?, "go")?;
        write_line(fd, "ping 2")?;
        expect(&read_line(fd)?, "pong 2")
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("client: {e}");
            1
        }
    }
}

fn expect(got: &str, want: &str) -> Result<(), String> {
    if got != want {
        return Err(format!("got {got:?}, want {want:?}"));
    }
    Ok(())
}

struct Server {
    kicks: u64,
    ticks: u64,
    pings: u64,
    /// Bytes received from each connection, not yet a whole line.
    pending: HashMap<i32, Vec<u8>>,
    /// Connections waiting for the answer to `kick`.
    kicked: Vec<i32>,
    /// Connections accepted, in order: the first is the forked client.
    accepted: Vec<i32>,
}

impl Server {
    fn setup(args: &Args) -> Result<(), String> {
        place(
            socket(libc::SOCK_STREAM | libc::SOCK_NONBLOCK)?,
            LISTENER,
            0,
        )?;
        bind(LISTENER, &sock_path(args))?;
        listen(LISTENER, 16)?;
        // SAFETY: plain descriptor-creating calls; timerfd_settime reads the
        // spec we own.
        unsafe {
            place(
                sys(libc::eventfd(0, libc::EFD_NONBLOCK) as i64, "eventfd")? as i32,
                EFD,
                0,
            )?;
            let tfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
            place(sys(tfd as i64, "timerfd_create")? as i32, TFD, 0)?;
            let every = libc::timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            let spec = libc::itimerspec {
                it_interval: every,
                it_value: every,
            };
            sys(
                libc::timerfd_settime(TFD, 0, &spec, std::ptr::null_mut()) as i64,
                "timerfd_settime",
            )?;
            place(
                sys(libc::epoll_create1(0) as i64, "epoll_create1")? as i32,
                EP,
                0,
            )?;
        }
        for fd in [LISTENER, EFD, TFD] {
            watch(fd)?;
        }
        Ok(())
    }

    /// One round of the loop: waits up to 20 ms and serves what is ready.
    fn turn(&mut self) -> Result<(), String> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: epoll_wait writes at most 16 events into the array we own.
        let n = unsafe { libc::epoll_wait(EP, evs.as_mut_ptr(), 16, 20) };
        if n < 0 && workload::last_err().raw_os_error() == Some(libc::EINTR) {
            return Ok(());
        }
        let n = sys(n as i64, "epoll_wait")? as usize;
        for ev in &evs[..n] {
            match ev.u64 as i32 {
                LISTENER => self.accept()?,
                EFD => {
                    self.kicks += counter(EFD)?;
                    for fd in std::mem::take(&mut self.kicked) {
                        write_line(fd, &format!("kicked {}", self.kicks))?;
                    }
                }
                TFD => self.ticks += counter(TFD)?,
                fd => self.serve(fd)?,
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<(), String> {
        // SAFETY: accept4 without a peer address.
        let fd = unsafe {
            libc::accept4(
                LISTENER,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 {
            // Another turn of the loop may have taken it.
            return Ok(());
        }
        watch(fd)?;
        self.accepted.push(fd);
        Ok(())
    }

    fn serve(&mut self, fd: i32) -> Result<(), String> {
        let data = match read_fd(fd, 4096) {
            Ok(d) => d,
            Err(_) => return Ok(()),
        };
        if data.is_empty() {
            // SAFETY: closing a connection we accepted; epoll forgets it.
            unsafe { libc::close(fd) };
            self.pending.remove(&fd);
            return Ok(());
        }
        let buf = self.pending.entry(fd).or_default();
        buf.extend(data);
        let mut lines = Vec::new();
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        for line in lines {
            match line.split_once(' ') {
                Some(("ping", n)) => {
                    self.pings += 1;
                    write_line(fd, &format!("pong {n}"))?
                }
                _ if line == "kick" => {
                    self.kicked.push(fd);
                    sys(write_fd(EFD, &1u64.to_ne_bytes()) as i64, "write eventfd")?;
                }
                _ if line == "ticks" => write_line(fd, &format!("ticks {}", self.ticks))?,
                _ => write_line(fd, &format!("unknown {line}"))?,
            }
        }
        Ok(())
    }
}

/// Reads an eventfd's or timerfd's 8-byte counter.
fn counter(fd: i32) -> Result<u64, String> {
    let b = read_fd(fd, 8)?;
    Ok(u64::from_ne_bytes(
        b.try_into().map_err(|_| format!("short read of fd {fd}"))?,
    ))
}

fn main() {
    let args = Args::init();
    if let Err(e) = Server::setup(&args) {
        args.fail_early(&e);
    }
    // SAFETY: fork in a single-threaded process; the child only runs
    // `client` and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: leaves the child without running the parent's exit path.
        unsafe { libc::_exit(client(&sock_path(&args))) };
    }
    if child < 0 {
        args.fail_early("fork failed");
    }
    let mut s = Server {
        kicks: 0,
        ticks: 0,
        pings: 0,
        pending: HashMap::new(),
        kicked: Vec::new(),
        accepted: Vec::new(),
    };
    let mut v = Verdict::new();
    // Ready once the client has had its first answer: then it only waits.
    let setup_deadline = Instant::now() + AFTER_WAKE;
    while s.pings == 0 {
        if let Err(e) = s.turn() {
            args.fail_early(&e);
        }
        if Instant::now() > setup_deadline {
            args.fail_early("the forked client never asked its first ping");
        }
    }
    args.signal_ready_with_descendants(&[child]);
    while !woken() {
        if let Err(e) = s.turn() {
            v.fail(e);
            break;
        }
    }
    let first = s.accepted[0];
    if let Err(e) = write_line(first, "go") {
        v.fail(e);
    }
    let deadline = Instant::now() + AFTER_WAKE;
    let mut status = -1;
    while status == -1 && Instant::now() < deadline {
        if let Err(e) = s.turn() {
            v.fail(e);
            break;
        }
        // SAFETY: waitpid on our own child, without blocking.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
            status = -1;
        }
    }
    v.eq("forked client's wait status", status, 0);
    v.check(s.accepted.len() > 1, || {
        "no client connected after the checkpoint".into()
    });
    v.check(s.ticks > 0, || "the timerfd never fired".into());
    args.finish(v)
}
