//! Advisory file locks, dump and restore side by side: flock(2) locks and
//! OFD record locks (`F_OFD_SETLK`), which belong to an open file
//! description, and POSIX record locks (`F_SETLK`), which belong to the
//! process.
//!
//! Dump: the `lock:` lines of `/proc/PID/fdinfo/FD` name the locks held
//! through each descriptor (POSIX ones only in the fdinfo of the process
//! that owns them). `/proc/locks` lists every lock of the system: a flock or
//! POSIX lock that a process of the tree holds but no descriptor shows (a
//! flock on a file only mapped any more) is refused.
//!
//! Restore: rcr takes flock and OFD locks on the open file description it
//! made before handing it to the tasks; POSIX locks are taken by each new
//! task itself once its descriptors are in place (see restore/child.rs).
//! A lock someone else holds now fails the restore, naming pid, fd and path.

use super::files::ExaminedFd;
use crate::error::{Error, Result};
use crate::proc::fdinfo::{self, FdInfo};
use rcr_images::pb::{self, LockKind};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

/// One lock line of fdinfo or /proc/locks, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LockLine {
    /// FLOCK, POSIX, OFDLCK, or another kind (a lease) kept to be refused.
    kind: String,
    write: bool,
    pid: i32,
    dev_ino: String,
    start: u64,
    /// Inclusive end; `None` is EOF.
    end: Option<u64>,
}

/// Parses `N: KIND ADVISORY TYPE PID MAJ:MIN:INO START END` (the text after
/// `lock:` in fdinfo, or a /proc/locks line). Blocked waiters (`->`) and
/// malformed lines give `None`.
fn parse_line(line: &str) -> Option<LockLine> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let [_, kind, _, access, pid, dev_ino, start, end] = words.as_slice() else {
        return None;
    };
    Some(LockLine {
        kind: (*kind).to_owned(),
        write: *access == "WRITE",
        pid: pid.parse().ok()?,
        dev_ino: (*dev_ino).to_owned(),
        start: start.parse().ok()?,
        end: match *end {
            "EOF" => None,
            n => Some(n.parse().ok()?),
        },
    })
}

fn kind_of(line: &LockLine) -> Option<LockKind> {
    match line.kind.as_str() {
        "FLOCK" => Some(LockKind::Flock),
        "POSIX" => Some(LockKind::Posix),
        "OFDLCK" => Some(LockKind::Ofd),
        _ => None,
    }
}

/// The locks held through fd `fd` whose fdinfo is `info`; refuses leases
/// and any other kind by name.
fn locks_of_fd(pid: i32, fd: i32, info: &FdInfo) -> Result<Vec<(pb::FileLock, String)>> {
    let mut out = Vec::new();
    for (_, text) in info.extra.iter().filter(|(k, _)| k == "lock") {
        let unsupported = |what: String| Error::Unsupported { pid, what };
        let line = parse_line(text)
            .ok_or_else(|| unsupported(format!("fd {fd} whose fdinfo lock line '{text}'")))?;
        let kind = kind_of(&line)
            .ok_or_else(|| unsupported(format!("a {} lock on fd {fd}", line.kind)))?;
        let lock = pb::FileLock {
            fd,
            kind: kind as i32,
            write: line.write,
            start: line.start,
            len: line.end.map_or(0, |end| end - line.start + 1),
        };
        out.push((lock, line.dev_ino));
    }
    Ok(out)
}

/// The locks held through the examined descriptors of `pid`, each once
/// (descriptors that share an open file description all show its locks).
pub fn dump_locks(pid: i32, fds: &[ExaminedFd]) -> Result<Vec<pb::FileLock>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in fds {
        for (lock, dev_ino) in locks_of_fd(pid, f.fd(), f.info())? {
            let key = (lock.kind, lock.write, lock.start, lock.len, dev_ino);
            if seen.insert(key) {
                out.push(lock);
            }
        }
    }
    Ok(out)
}

/// Refuses a flock or POSIX lock that `/proc/locks` gives to a process of
/// the tree but no descriptor of the tree shows: it would be lost.
pub fn check_all_seen(pids: &[i32]) -> Result<()> {
    let text = std::fs::read_to_string("/proc/locks").map_err(|e| Error::io("/proc/locks", e))?;
    let held: Vec<LockLine> = text
        .lines()
        .filter_map(parse_line)
        .filter(|l| pids.contains(&l.pid) && l.kind != "OFDLCK")
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    let mut shown = Vec::new();
    for &pid in pids {
        for fd in fdinfo::list_fds(pid)? {
            let Ok(info) = fdinfo::read_fdinfo(pid, fd) else {
                continue;
            };
            shown.extend(
                info.extra
                    .iter()
                    .filter(|(k, _)| k == "lock")
                    .filter_map(|(_, v)| parse_line(v)),
            );
        }
    }
    let same = |a: &LockLine, b: &LockLine| {
        a.kind == b.kind && a.dev_ino == b.dev_ino && a.start == b.start && a.end == b.end
    };
    match held.iter().find(|l| !shown.iter().any(|s| same(l, s))) {
        Some(l) => Err(Error::Unsupported {
            pid: l.pid,
            what: format!(
                "a {} lock on inode {} that no open descriptor holds (a mapped file?)",
                l.kind, l.dev_ino
            ),
        }),
        None => Ok(()),
    }
}

/// Every lock names a descriptor of the process.
pub fn check(fs: &pb::FsState) -> std::result::Result<(), String> {
    match fs
        .locks
        .iter()
        .find(|l| !fs.fds.iter().any(|f| f.fd == l.fd) || l.kind() == LockKind::Unspecified)
    {
        Some(l) => Err(format!("a lock on fd {} which is not stored", l.fd)),
        None => Ok(()),
    }
}

/// The `struct flock` for a saved lock.
fn flock_struct(lock: &pb::FileLock) -> libc::flock {
    libc::flock {
        l_type: if lock.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: lock.start as i64,
        l_len: lock.len as i64,
        l_pid: 0,
    }
}

/// A POSIX lock for the new task to take with `fcntl(fd, F_SETLK, &lock)`.
#[derive(Clone, Copy, Debug)]
pub struct PosixLock {
    pub fd: i32,
    pub lock: libc::flock,
}

fn path_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_or_else(|_| "an unknown path".into(), |p| p.display().to_string())
}

fn refused(pid: i32, lock: &pb::FileLock, source: i32, why: String) -> Error {
    Error::Preflight(format!(
        "process {pid}: its {:?} lock on fd {} ({}) cannot be taken again: {why}",
        lock.kind(),
        lock.fd,
        path_of(source)
    ))
}

fn identity(fd: i32) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Takes the flock and OFD locks of process `pid` (whose descriptors are
/// `fs`) on the open file descriptions rcr made, `source(file_id)`; checks
/// that nobody holds a lock in the way of its POSIX locks, which it returns
/// for the task to take. `restorer_fds` are the descriptors its restorer
/// closes once memory is in place: closing one on a POSIX-locked file would
/// drop the lock, so that is refused.
pub fn prepare_locks(
    pid: i32,
    fs: &pb::FsState,
    source: impl Fn(u32) -> i32,
    restorer_fds: std::ops::Range<i32>,
) -> Result<Vec<PosixLock>> {
    let mut posix = Vec::new();
    for lock in &fs.locks {
        let file_id = fs
            .fds
            .iter()
            .find(|f| f.fd == lock.fd)
            .expect("checked at load")
            .file_id;
        let src = source(file_id);
        let mut fl = flock_struct(lock);
        let ret = match lock.kind() {
            LockKind::Flock => {
                let op = if lock.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                };
                // SAFETY: flock on a descriptor rcr holds.
                unsafe { libc::flock(src, op | libc::LOCK_NB) }
            }
            // SAFETY: fcntl reads the flock struct we own.
            LockKind::Ofd => unsafe { libc::fcntl(src, libc::F_OFD_SETLK, &fl) },
            LockKind::Posix | LockKind::Unspecified => {
                // SAFETY: fcntl writes the conflicting lock, if any, into `fl`.
                if unsafe { libc::fcntl(src, libc::F_GETLK, &mut fl) } < 0 {
                    -1
                } else if fl.l_type != libc::F_UNLCK as i16 {
                    let why = format!("process {} holds a lock in the way", fl.l_pid);
                    return Err(refused(pid, lock, src, why));
                } else {
                    let mine = identity(src);
                    if restorer_fds.clone().any(|fd| identity(fd) == mine) {
                        let why = "the process also maps the file".to_owned();
                        return Err(refused(pid, lock, src, why));
                    }
                    posix.push(PosixLock {
                        fd: lock.fd,
                        lock: flock_struct(lock),
                    });
                    0
                }
            }
        };
        if ret < 0 {
            let why = std::io::Error::last_os_error().to_string();
            return Err(refused(pid, lock, src, why));
        }
    }
    Ok(posix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lock_lines() {
        // From /proc/PID/fdinfo and /proc/locks on the development machine.
        let posix = parse_line("1: POSIX  ADVISORY  WRITE 15752 fe:00:10600577 5 14").unwrap();
        assert_eq!(
            posix,
            LockLine {
                kind: "POSIX".into(),
                write: true,
                pid: 15752,
                dev_ino: "fe:00:10600577".into(),
                start: 5,
                end: Some(14),
            }
        );
        let ofd = parse_line("3: OFDLCK ADVISORY  READ -1 fe:00:10600577 30 EOF").unwrap();
        assert_eq!(
            (ofd.kind.as_str(), ofd.write, ofd.pid),
            ("OFDLCK", false, -1)
        );
        assert_eq!(ofd.end, None);
        assert_eq!(
            parse_line("2: -> FLOCK  ADVISORY  WRITE 15 fe:00:1 0 EOF"),
            None
        );
    }

    #[test]
    fn fdinfo_lock_lines_become_locks() {
        let text = "pos:\t100\nflags:\t02\nmnt_id:\t27\nino:\t7\nlock:\t1: POSIX  ADVISORY  WRITE 9 fe:00:7 5 14\nlock:\t2: FLOCK  ADVISORY  READ 9 fe:00:7 0 EOF\n";
        let info = fdinfo::parse_fdinfo(text).unwrap();
        let locks: Vec<pb::FileLock> = locks_of_fd(9, 4, &info)
            .unwrap()
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(locks.len(), 2);
        assert_eq!(
            (
                locks[0].kind(),
                locks[0].write,
                locks[0].start,
                locks[0].len
            ),
            (LockKind::Posix, true, 5, 10)
        );
        assert_eq!(
            (locks[1].kind(), locks[1].write, locks[1].len),
            (LockKind::Flock, false, 0)
        );
        let lease =
            "pos:\t0\nflags:\t0\nmnt_id:\t1\nlock:\t1: LEASE  ACTIVE    READ 9 fe:00:7 0 EOF\n";
        let err = locks_of_fd(9, 4, &fdinfo::parse_fdinfo(lease).unwrap()).unwrap_err();
        assert!(err.to_string().contains("LEASE lock on fd 4"), "{err}");
    }
}
