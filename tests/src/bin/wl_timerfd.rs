//! timerfds across a checkpoint:
//! - fd 20: CLOCK_MONOTONIC, relative, 100000 s left, 7 s interval, O_NONBLOCK;
//! - fd 21: CLOCK_MONOTONIC one-shot that already expired once, unread;
//! - fd 22: CLOCK_REALTIME, absolute deadline an hour ahead, O_CLOEXEC.
//!
//! After restore: clocks, flags, intervals, time left (within what the test
//! can take), the unread expiration, and a timer that fires again.

use rcr_tests::fdops::{fdinfo_value, place, status_flags, sys};
use rcr_tests::workload::{self, Verdict};

const LONG: i32 = 20;
const FIRED: i32 = 21;
const ABS: i32 = 22;
const LONG_S: i64 = 100_000;
const INTERVAL_S: i64 = 7;
const ABS_S: i64 = 3600;
/// More than any test run takes.
const SLACK_S: i64 = 1000;

fn spec(value_s: i64, value_ns: i64, interval_s: i64) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval_s,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: value_s,
            tv_nsec: value_ns,
        },
    }
}

fn timerfd(
    clock: i32,
    flags: i32,
    at: i32,
    settime: i32,
    s: libc::itimerspec,
) -> Result<(), String> {
    // SAFETY: timerfd calls with integers and an itimerspec we own.
    unsafe {
        let fd = sys(libc::timerfd_create(clock, flags) as i64, "timerfd_create")? as i32;
        sys(
            libc::timerfd_settime(fd, settime, &s, std::ptr::null_mut()) as i64,
            "timerfd_settime",
        )?;
        place(fd, at, flags & libc::TFD_CLOEXEC)
    }
}

fn now(clock: i32) -> i64 {
    // SAFETY: clock_gettime writes a timespec we own.
    unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(clock, &mut t);
        t.tv_sec
    }
}

fn gettime(fd: i32) -> Result<libc::itimerspec, String> {
    let mut s = spec(0, 0, 0);
    // SAFETY: timerfd_gettime writes an itimerspec we own.
    sys(
        unsafe { libc::timerfd_gettime(fd, &mut s) } as i64,
        &format!("timerfd_gettime {fd}"),
    )?;
    Ok(s)
}

fn read_ticks(fd: i32) -> Result<u64, String> {
    let mut n = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own.
    let r = unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
    sys(r as i64, &format!("read timerfd {fd}"))?;
    Ok(n)
}

fn build() -> Result<(), String> {
    let mono = libc::CLOCK_MONOTONIC;
    timerfd(
        mono,
        libc::TFD_NONBLOCK,
        LONG,
        0,
        spec(LONG_S, 0, INTERVAL_S),
    )?;
    timerfd(mono, 0, FIRED, 0, spec(0, 1, 0))?;
    let deadline = now(libc::CLOCK_REALTIME) + ABS_S;
    timerfd(
        libc::CLOCK_REALTIME,
        libc::TFD_CLOEXEC,
        ABS,
        libc::TFD_TIMER_ABSTIME,
        spec(deadline, 0, 0),
    )?;
    // The one-shot has fired once it shows a tick (1 ns: at once).
    while fdinfo_value(FIRED, "ticks")? != "1" {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

fn check(v: &mut Verdict) -> Result<(), String> {
    v.eq(
        "fd 20 flags",
        status_flags(LONG)?,
        libc::O_RDWR | libc::O_NONBLOCK,
    );
    v.eq(
        "fd 22 clockid",
        fdinfo_value(ABS, "clockid")?,
        "0".to_owned(),
    );
    v.eq(
        "fd 22 settime flags",
        fdinfo_value(ABS, "settime flags")?,
        "01".to_owned(),
    );
    let long = gettime(LONG)?;
    v.eq("fd 20 interval", long.it_interval.tv_sec, INTERVAL_S);
    let left = long.it_value.tv_sec;
    v.check(left < LONG_S && left > LONG_S - SLACK_S, || {
        format!("fd 20 time left {left} s, want just under {LONG_S} s")
    });
    let left = gettime(ABS)?.it_value.tv_sec;
    v.check(left < ABS_S && left > ABS_S - SLACK_S, || {
        format!("fd 22 time left {left} s, want just under {ABS_S} s")
    });
    v.eq("fd 21 unread expirations", read_ticks(FIRED)?, 1);
    // SAFETY: timerfd_settime with an itimerspec we own.
    sys(
        unsafe { libc::timerfd_settime(FIRED, 0, &spec(0, 1_000_000, 0), std::ptr::null_mut()) }
            as i64,
        "timerfd_settime",
    )?;
    v.eq("fd 21 fires again", read_ticks(FIRED)?, 1);
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
