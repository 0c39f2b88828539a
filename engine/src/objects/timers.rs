//! Interval timers (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF) and POSIX
//! timers (timer_create), dump and restore.
//!
//! POSIX timers: /proc/PID/timers gives each timer's id, clock and how it
//! notifies; the parasite reads its time left and interval with
//! timer_gettime. The restorer creates each under its saved id
//! (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.17) and arms it with the time left,
//! as if no time had passed while it was checkpointed. The overrun count of
//! a signal already delivered is not kept.

use crate::error::{Error, Result};
use crate::proc::timers::{ProcTimer, SIGEV_THREAD_ID};
use rcr_images::pb;
use rcr_parasite::parasite_abi::PosixTimerState;
use rcr_parasite::restore_abi::{
    Itimerspec, Itimerval, KernelSigevent, PosixTimerEntry, Timespec, Timeval,
};

const NS: u64 = 1_000_000_000;
const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
const PR_TIMER_CREATE_RESTORE_IDS_GET: libc::c_ulong = 2;

/// Dump side: the three timers as the parasite read them, armed ones only.
pub fn dump_itimers(timers: &[Itimerval; 3]) -> Vec<pb::Itimer> {
    timers
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != Itimerval::default())
        .map(|(which, t)| pb::Itimer {
            which: which as u32,
            interval_us: to_us(t.interval),
            value_us: to_us(t.value),
        })
        .collect()
}

fn to_us(t: Timeval) -> u64 {
    (t.sec.max(0) as u64) * 1_000_000 + t.usec.max(0) as u64
}

fn from_us(us: u64) -> Timeval {
    Timeval {
        sec: (us / 1_000_000) as i64,
        usec: (us % 1_000_000) as i64,
    }
}

/// Restore side: the values to arm, by `which`. A timer that was about to
/// fire keeps at least a microsecond so that it still fires.
pub fn restore_itimers(saved: &[pb::Itimer]) -> [Itimerval; 3] {
    let mut out = [Itimerval::default(); 3];
    for t in saved.iter().filter(|t| t.which < 3) {
        let value = t.value_us.max(1);
        out[t.which as usize] = Itimerval {
            interval: from_us(t.interval_us),
            value: from_us(value),
        };
    }
    out
}

fn to_ns(t: Timespec) -> u64 {
    t.sec.max(0) as u64 * NS + t.nsec.max(0) as u64
}

fn from_ns(ns: u64) -> Timespec {
    Timespec {
        sec: (ns / NS) as i64,
        nsec: (ns % NS) as i64,
    }
}

/// Dump side: the timers /proc listed, with the state the parasite read
/// for each (same order).
pub fn dump_posix_timers(
    pid: i32,
    listed: &[ProcTimer],
    states: &[PosixTimerState],
) -> Result<Vec<pb::PosixTimer>> {
    listed
        .iter()
        .zip(states)
        .map(|(t, s)| {
            if s.status < 0 {
                return Err(Error::sys(
                    pid,
                    "timer_gettime on a POSIX timer",
                    nix::errno::Errno::from_raw(-s.status),
                ));
            }
            Ok(pb::PosixTimer {
                id: t.id,
                clockid: t.clockid,
                notify: t.notify,
                signo: t.signo,
                sigval: t.sigval,
                tid: if t.notify & SIGEV_THREAD_ID != 0 {
                    t.target
                } else {
                    0
                },
                value_ns: to_ns(s.spec.value),
                interval_ns: to_ns(s.spec.interval),
            })
        })
        .collect()
}

/// Restore side: the restorer's entries for process `pid`'s timers. The
/// kernel must be able to create a timer under a given id.
pub fn restore_posix_timers(pid: i32, saved: &[pb::PosixTimer]) -> Result<Vec<PosixTimerEntry>> {
    if saved.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: a query that only reads this process's setting.
    let ret = unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0,
            0,
            0,
        )
    };
    if ret < 0 {
        return Err(Error::Preflight(format!(
            "process {pid} has {} POSIX timers, and creating them under their saved ids needs \
             prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.17 or later), which this kernel refuses: {}",
            saved.len(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(saved
        .iter()
        .map(|t| PosixTimerEntry {
            id: t.id,
            clockid: t.clockid,
            sigevent: KernelSigevent {
                value: t.sigval,
                signo: t.signo,
                notify: t.notify,
                tid: t.tid,
                _pad: [0; 11],
            },
            spec: Itimerspec {
                interval: from_ns(t.interval_ns),
                value: from_ns(t.value_ns),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_timers_round_trip() {
        let listed = [ProcTimer {
            id: 3,
            signo: 36,
            sigval: 0x55,
            notify: SIGEV_THREAD_ID,
            target: 77,
            clockid: 1,
        }];
        let spec = Itimerspec {
            interval: Timespec {
                sec: 0,
                nsec: 5_000_000,
            },
            value: Timespec { sec: 100, nsec: 7 },
        };
        let states = [PosixTimerState {
            id: 3,
            status: 0,
            spec,
        }];
        let saved = dump_posix_timers(1, &listed, &states).unwrap();
        assert_eq!(saved[0].tid, 77);
        assert_eq!(saved[0].value_ns, 100 * NS + 7);
        let failed = [PosixTimerState {
            status: -22,
            ..states[0]
        }];
        assert!(dump_posix_timers(1, &listed, &failed).is_err());
        // This kernel (6.18) has the prctl.
        let entries = restore_posix_timers(1, &saved).unwrap();
        assert_eq!(entries[0].spec, spec);
        assert_eq!(
            (
                entries[0].sigevent.notify,
                entries[0].sigevent.tid,
                entries[0].sigevent.value
            ),
            (SIGEV_THREAD_ID, 77, 0x55)
        );
    }

    #[test]
    fn round_trip() {
        let timers = [
            Itimerval {
                interval: Timeval {
                    sec: 5,
                    usec: 250_000,
                },
                value: Timeval { sec: 3, usec: 1 },
            },
            Itimerval::default(),
            Itimerval {
                interval: Timeval::default(),
                value: Timeval { sec: 100, usec: 0 },
            },
        ];
        let saved = dump_itimers(&timers);
        assert_eq!(saved.len(), 2);
        assert_eq!(restore_itimers(&saved), timers);
    }
}
