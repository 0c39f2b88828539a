//! timerfd, dump and restore side by side.
//!
//! fdinfo gives the clock, the expirations not yet read (`ticks`), the
//! settime flags, the time left until the next expiration and the interval.
//! A relative timer gets its time left again at restore, as if no time had
//! passed while it was checkpointed; an absolute one (TFD_TIMER_ABSTIME)
//! keeps its deadline on its clock, so it fires at once if that passed.

use super::files::{bad_fdinfo, check, owned};
use crate::error::{Error, Result};
use crate::proc::fdinfo::FdInfo;
use rcr_images::pb;
use std::os::fd::{AsRawFd, OwnedFd};

const NS: u64 = 1_000_000_000;
/// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

pub fn dump_timerfd(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<pb::TimerFd> {
    let field = |key: &str| info.extra(key).ok_or_else(|| bad_fdinfo(pid, fd, key));
    let bad = |key: &str| bad_fdinfo(pid, fd, key);
    let clockid: i32 = field("clockid")?.parse().map_err(|_| bad("clockid"))?;
    let ticks: u64 = field("ticks")?.parse().map_err(|_| bad("ticks"))?;
    // The line is "settime flags: 01": its first word has no colon.
    let settime_flags = field("settime")?
        .strip_prefix("flags:")
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| bad("settime flags"))?;
    let value_ns = parse_timespec(field("it_value")?).ok_or_else(|| bad("it_value"))?;
    let interval_ns = parse_timespec(field("it_interval")?).ok_or_else(|| bad("it_interval"))?;
    let taken_at_ns = clock_now(clockid).ok_or_else(|| {
        Error::sys(
            pid,
            "clock_gettime on a timerfd's clock",
            nix::errno::Errno::last(),
        )
    })?;
    Ok(pb::TimerFd {
        clockid,
        ticks,
        settime_flags,
        value_ns,
        interval_ns,
        taken_at_ns,
        flags,
    })
}

/// `(SECONDS, NANOSECONDS)` as nanoseconds.
fn parse_timespec(v: &str) -> Option<u64> {
    let (s, ns) = v
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let (s, ns): (u64, u64) = (s.trim().parse().ok()?, ns.trim().parse().ok()?);
    s.checked_mul(NS)?.checked_add(ns)
}

fn clock_now(clockid: i32) -> Option<u64> {
    let mut t = timespec(0);
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(clockid, &mut t) } < 0 {
        return None;
    }
    Some(t.tv_sec as u64 * NS + t.tv_nsec as u64)
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / NS) as libc::time_t,
        tv_nsec: (ns % NS) as libc::c_long,
    }
}

pub fn restore_timerfd(t: &pb::TimerFd) -> Result<OwnedFd> {
    let flags = libc::TFD_CLOEXEC | (t.flags as i32 & libc::O_NONBLOCK);
    // SAFETY: timerfd_create takes plain integers.
    let fd = owned(
        unsafe { libc::timerfd_create(t.clockid, flags) },
        "timerfd_create",
    )?;
    let absolute = t.settime_flags as i32 & libc::TFD_TIMER_ABSTIME != 0;
    // A periodic timer that expired and was not read since shows no time
    // left, yet runs on: its next expiration is one interval away.
    let left = match t.value_ns {
        0 => t.interval_ns,
        v => v,
    };
    let value = if absolute && left != 0 {
        t.taken_at_ns + left
    } else {
        left
    };
    let spec = libc::itimerspec {
        it_interval: timespec(t.interval_ns),
        it_value: timespec(value),
    };
    // SAFETY: timerfd_settime reads the itimerspec we own.
    let ret = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            t.settime_flags as i32,
            &spec,
            std::ptr::null_mut(),
        )
    };
    check(ret as i64, "timerfd_settime")?;
    if t.ticks > 0 {
        // SAFETY: the ioctl reads a u64 we own.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &t.ticks) };
        check(
            ret as i64,
            "setting a timerfd's expirations (TFD_IOC_SET_TICKS)",
        )?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::fdinfo::parse_fdinfo;

    #[test]
    fn reads_timerfd_fdinfo() {
        // A CLOCK_MONOTONIC absolute timer on the development machine.
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 01\nit_value: (996870, 618203999)\nit_interval: (1, 0)\n";
        let t = dump_timerfd(1, 3, &parse_fdinfo(text).unwrap(), 0o4002).unwrap();
        assert_eq!(t.clockid, 1);
        assert_eq!(t.ticks, 3);
        assert_eq!(t.settime_flags, 1);
        assert_eq!(t.value_ns, 996_870 * NS + 618_203_999);
        assert_eq!(t.interval_ns, NS);
        assert!(t.taken_at_ns > 0);
    }

    #[test]
    fn an_expired_unread_periodic_timer_keeps_running() {
        let saved = pb::TimerFd {
            clockid: libc::CLOCK_MONOTONIC,
            ticks: 1,
            interval_ns: 20_000_000,
            ..Default::default()
        };
        let fd = restore_timerfd(&saved).unwrap();
        let mut now = libc::itimerspec {
            it_interval: timespec(0),
            it_value: timespec(0),
        };
        // SAFETY: timerfd_gettime writes the itimerspec we own.
        let ret = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut now) };
        assert_eq!(ret, 0);
        assert_eq!(now.it_interval.tv_nsec, 20_000_000);
        assert!(
            now.it_value.tv_sec > 0 || now.it_value.tv_nsec > 0,
            "disarmed"
        );
    }
}
