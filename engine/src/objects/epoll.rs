//! epoll instances, dump and restore side by side.
//!
//! fdinfo lists each registration as `tfd: N events: HEX data: HEX ...`,
//! where N is the watched descriptor's number in the task when it was added.
//! The kernel keys a registration on (file, number): EPOLL_CTL_MOD/DEL with
//! that number must find it after restore, so it is added again under the
//! same number, from a thread of rcr with a private fd table in which the
//! watched files sit at their task numbers.

use super::files::{check, owned};
use crate::error::{Error, Result};
use crate::proc::fdinfo::FdInfo;
use rcr_images::pb;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

const KCMP_EPOLL_TFD: libc::c_int = 7;

/// `struct kcmp_epoll_slot` of `<linux/kcmp.h>`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

pub fn dump_epoll(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<pb::Epoll> {
    let mut targets: Vec<pb::EpollTarget> = Vec::new();
    for (_, line) in info.extra.iter().filter(|(k, _)| k == "tfd") {
        let t = parse_target(line).ok_or_else(|| Error::Unsupported {
            pid,
            what: format!("epoll fd {fd} with an unreadable registration '{line}'"),
        })?;
        // Registrations under one number (its file closed, the number
        // reused) are told apart by their rank.
        let toff = targets.iter().filter(|o| o.fd == t.fd).count() as u32;
        if !watches_open_fd(pid, fd, t.fd, toff) {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "epoll fd {fd} watching a file that is no longer open at fd {}",
                    t.fd
                ),
            });
        }
        targets.push(t);
    }
    Ok(pb::Epoll { flags, targets })
}

/// `N events: HEX data: HEX  pos:.. ino:.. sdev:..` (the value after `tfd:`).
fn parse_target(line: &str) -> Option<pb::EpollTarget> {
    let mut words = line.split_ascii_whitespace();
    let fd = words.next()?.parse().ok()?;
    let mut after = |key: &str| {
        words.find(|w| *w == key)?;
        words.next()
    };
    let events = u32::from_str_radix(after("events:")?, 16).ok()?;
    let data = u64::from_str_radix(after("data:")?, 16).ok()?;
    Some(pb::EpollTarget { fd, events, data })
}

/// Whether fd `tfd` of `pid` is the file registered as `tfd` in epoll `efd`.
fn watches_open_fd(pid: i32, efd: i32, tfd: i32, toff: u32) -> bool {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: kcmp reads the slot we own and compares objects of a traced task.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            tfd,
            &slot as *const KcmpEpollSlot,
        )
    };
    ret == 0
}

/// Creates the epoll instances and registers their targets. `opened` holds
/// every other open file description of the task (by file id), `fds` the
/// task's table that says at which numbers they sit.
pub fn restore_epolls(
    epolls: &[(u32, &pb::Epoll)],
    fds: &[pb::Fd],
    opened: &[(u32, OwnedFd)],
) -> Result<Vec<(u32, OwnedFd)>> {
    let made = epolls
        .iter()
        .map(|(id, _)| {
            // SAFETY: epoll_create1 takes a flag.
            let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            Ok((*id, owned(raw, "epoll_create1")?))
        })
        .collect::<Result<Vec<_>>>()?;
    if epolls.iter().all(|(_, e)| e.targets.is_empty()) {
        return Ok(made);
    }
    // Every task descriptor, by number, as rcr's descriptor for it.
    let by_id: HashMap<u32, i32> = opened
        .iter()
        .chain(made.iter())
        .map(|(id, fd)| (*id, fd.as_raw_fd()))
        .collect();
    let sources: Vec<(i32, i32)> = fds.iter().map(|f| (f.fd, by_id[&f.file_id])).collect();
    let adds: Vec<(i32, pb::EpollTarget)> = epolls
        .iter()
        .zip(&made)
        .flat_map(|((_, e), (_, ep))| e.targets.iter().map(|t| (ep.as_raw_fd(), *t)))
        .collect();
    std::thread::scope(|s| s.spawn(|| register(&sources, &adds)).join())
        .map_err(|_| Error::Preflight("the epoll registration thread panicked".into()))??;
    Ok(made)
}

/// Runs in a thread of its own: unshares the fd table, lays out the task's
/// descriptors at their numbers and adds each registration.
fn register(sources: &[(i32, i32)], adds: &[(i32, pb::EpollTarget)]) -> Result<()> {
    // SAFETY: gives this thread a private copy of the fd table; every other
    // thread of rcr keeps the shared one.
    check(
        unsafe { libc::unshare(libc::CLONE_FILES) } as i64,
        "unshare(CLONE_FILES)",
    )?;
    // First move every descriptor needed above all task numbers, so placing
    // one at its number never closes another still to be placed.
    let above = sources.iter().map(|(n, _)| *n).max().unwrap_or(0) + 1;
    let lift = |fd: i32| {
        // SAFETY: duplicates a descriptor of this thread's own table.
        let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        check(raw as i64, "duplicating a descriptor").map(|r| r as i32)
    };
    let lifted = sources
        .iter()
        .map(|&(n, src)| Ok((n, lift(src)?)))
        .collect::<Result<Vec<_>>>()?;
    let epolls: HashMap<i32, i32> = adds
        .iter()
        .map(|(ep, _)| Ok((*ep, lift(*ep)?)))
        .collect::<Result<_>>()?;
    for &(n, src) in &lifted {
        // SAFETY: dup2 within this thread's own table.
        check(
            unsafe { libc::dup2(src, n) } as i64,
            "placing a descriptor at its task number",
        )?;
    }
    for (ep, t) in adds {
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // SAFETY: epoll_ctl reads the event we own.
        let ret = unsafe { libc::epoll_ctl(epolls[ep], libc::EPOLL_CTL_ADD, t.fd, &mut ev) };
        check(
            ret as i64,
            &format!("registering fd {} with an epoll instance", t.fd),
        )?;
    }
    // The thread's table, and every descriptor in it, goes when it exits.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_registrations() {
        let t = parse_target(
            "        3 events: 80000019 data:                7  pos:0 ino:40e sdev:10",
        )
        .unwrap();
        assert_eq!(t.fd, 3);
        assert_eq!(t.events, 0x8000_0019);
        assert_eq!(t.data, 7);
        assert!(parse_target("x events: 1 data: 2").is_none());
    }
}
