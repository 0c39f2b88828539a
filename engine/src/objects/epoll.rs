//! epoll instances, dump and restore side by side.
//!
//! fdinfo lists each registration as `tfd: N events: HEX data: HEX ...`,
//! where N is the watched descriptor's number in the task when it was added.
//! The kernel keys a registration on (file, number): EPOLL_CTL_MOD/DEL with
//! that number must find it after restore, so it is added again under the
//! same number, from a thread of rcr with a private fd table in which the
//! watched files sit at their task numbers.
//!
//! An epoll inherited across fork is one open file description, stored once
//! from the first process that holds it. When that process no longer holds
//! a registered file at its number (closed, or the number reused) but
//! another process of the tree does, the registration names that file by id
//! and is added again under its number all the same.

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

/// A registration whose file `pid` does not hold at its number: its file
/// is looked for among every process's once all are stored.
pub struct Foreign {
    /// Its index among the epoll's targets.
    pub index: usize,
    /// Its registered number.
    pub fd: i32,
    /// Its rank among the registrations under that number.
    toff: u32,
    /// The inode of the watched file.
    pub ino: u64,
}

impl Foreign {
    /// Whether `holder`'s fd `hfd` is this registration's file, in epoll
    /// `efd` of `pid`.
    pub fn held_by(&self, pid: i32, efd: i32, holder: i32, hfd: i32) -> bool {
        watches(pid, efd, self.fd, self.toff, holder, hfd)
    }
}

/// The registrations of `pid`'s epoll `fd`, and those whose file `pid` no
/// longer holds at their number.
pub fn dump_epoll(
    pid: i32,
    fd: i32,
    info: &FdInfo,
    flags: u32,
) -> Result<(pb::Epoll, Vec<Foreign>)> {
    let mut targets: Vec<pb::EpollTarget> = Vec::new();
    let mut foreign = Vec::new();
    for (_, line) in info.extra.iter().filter(|(k, _)| k == "tfd") {
        let (t, ino) = parse_target(line).ok_or_else(|| Error::Unsupported {
            pid,
            what: format!("epoll fd {fd} with an unreadable registration '{line}'"),
        })?;
        // Registrations under one number (its file closed, the number
        // reused) are told apart by their rank.
        let toff = targets.iter().filter(|o| o.fd == t.fd).count() as u32;
        if !watches(pid, fd, t.fd, toff, pid, t.fd) {
            foreign.push(Foreign {
                index: targets.len(),
                fd: t.fd,
                toff,
                ino,
            });
        }
        targets.push(t);
    }
    Ok((pb::Epoll { flags, targets }, foreign))
}

/// `N events: HEX data: HEX  pos:.. ino:HEX sdev:..` (the value after
/// `tfd:`): the registration and the watched file's inode.
fn parse_target(line: &str) -> Option<(pb::EpollTarget, u64)> {
    let mut words = line.split_ascii_whitespace();
    let fd = words.next()?.parse().ok()?;
    let mut after = |key: &str| {
        words.find(|w| *w == key)?;
        words.next()
    };
    let events = u32::from_str_radix(after("events:")?, 16).ok()?;
    let data = u64::from_str_radix(after("data:")?, 16).ok()?;
    let ino = line
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("ino:"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())?;
    let target = pb::EpollTarget {
        fd,
        events,
        data,
        file_id: 0,
    };
    Some((target, ino))
}

/// Whether fd `hfd` of `holder` is the file registered as (`tfd`, rank
/// `toff`) in epoll `efd` of `pid`.
fn watches(pid: i32, efd: i32, tfd: i32, toff: u32, holder: i32, hfd: i32) -> bool {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: kcmp reads the slot we own and compares objects of traced tasks.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            holder,
            pid,
            KCMP_EPOLL_TFD,
            hfd,
            &slot as *const KcmpEpollSlot,
        )
    };
    ret == 0
}

/// An epoll to make: its file id, what was saved, and the fd table of the
/// task it was stored from.
pub type ToMake<'a> = (u32, &'a pb::Epoll, &'a [pb::Fd]);

/// Creates the epoll instances and registers their targets. `opened` holds
/// every other open file description of the tree (by file id); a target's
/// file is the one its task held at its number, unless it names another.
pub fn restore_epolls(epolls: &[ToMake], opened: &[(u32, OwnedFd)]) -> Result<Vec<(u32, OwnedFd)>> {
    let made = epolls
        .iter()
        .map(|(id, _, _)| {
            // SAFETY: epoll_create1 takes a flag.
            let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            Ok((*id, owned(raw, "epoll_create1")?))
        })
        .collect::<Result<Vec<_>>>()?;
    if epolls.iter().all(|(_, e, _)| e.targets.is_empty()) {
        return Ok(made);
    }
    // Every open file description, as rcr's descriptor for it.
    let by_id: HashMap<u32, i32> = opened
        .iter()
        .chain(made.iter())
        .map(|(id, fd)| (*id, fd.as_raw_fd()))
        .collect();
    let mut adds: Vec<Add> = Vec::new();
    for ((id, e, fds), (_, ep)) in epolls.iter().zip(&made) {
        if e.targets.is_empty() {
            continue;
        }
        let at: HashMap<i32, u32> = fds.iter().map(|f| (f.fd, f.file_id)).collect();
        for t in &e.targets {
            let file = match t.file_id {
                0 => at.get(&t.fd).copied(),
                file => Some(file),
            };
            let source = file.and_then(|f| by_id.get(&f)).ok_or_else(|| {
                Error::Preflight(format!(
                    "epoll file {id} watches fd {} whose file is not stored",
                    t.fd
                ))
            })?;
            adds.push((ep.as_raw_fd(), *source, *t));
        }
    }
    std::thread::scope(|s| s.spawn(|| register(&adds)).join())
        .map_err(|_| Error::Preflight("the epoll registration thread panicked".into()))??;
    Ok(made)
}

/// A registration to add: rcr's epoll, rcr's descriptor of the watched
/// file, and the saved registration.
type Add = (i32, i32, pb::EpollTarget);

/// Runs in a thread of its own: unshares the fd table, then puts each
/// watched file at its registered number and adds the registration.
fn register(adds: &[Add]) -> Result<()> {
    // SAFETY: gives this thread a private copy of the fd table; every other
    // thread of rcr keeps the shared one.
    check(
        unsafe { libc::unshare(libc::CLONE_FILES) } as i64,
        "unshare(CLONE_FILES)",
    )?;
    // First move every descriptor needed above all registered numbers, so
    // placing one at its number never closes another still needed.
    let above = adds.iter().map(|(_, _, t)| t.fd).max().unwrap_or(0) + 1;
    let mut lifted: HashMap<i32, i32> = HashMap::new();
    for &(ep, src, _) in adds {
        for fd in [ep, src] {
            if let std::collections::hash_map::Entry::Vacant(slot) = lifted.entry(fd) {
                // SAFETY: duplicates a descriptor of this thread's own table.
                let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
                slot.insert(check(raw as i64, "duplicating a descriptor")? as i32);
            }
        }
    }
    for (ep, src, t) in adds {
        // SAFETY: dup2 within this thread's own table.
        check(
            unsafe { libc::dup2(lifted[src], t.fd) } as i64,
            "placing a descriptor at its registered number",
        )?;
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // SAFETY: epoll_ctl reads the event we own.
        let ret = unsafe { libc::epoll_ctl(lifted[ep], libc::EPOLL_CTL_ADD, t.fd, &mut ev) };
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
        let (t, ino) = parse_target(
            "        3 events: 80000019 data:                7  pos:0 ino:40e sdev:10",
        )
        .unwrap();
        assert_eq!(t.fd, 3);
        assert_eq!(t.events, 0x8000_0019);
        assert_eq!(t.data, 7);
        assert_eq!(ino, 0x40e);
        assert!(parse_target("x events: 1 data: 2").is_none());
    }
}
