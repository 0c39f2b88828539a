//! Terminals, dump and restore side by side.
//!
//! A pseudo-terminal pair whose master a process of the tree holds is stored
//! once (`TtyPair`): termios, window size, packet mode and lock, the session
//! it controls with that session's foreground group, and the bytes queued
//! each way. Every open end refers to it (`TtyFile`). Restore opens a new
//! pair through /dev/ptmx (its pts number may differ), puts state and bytes
//! back, and the session leader takes it as controlling terminal again while
//! the tree is rebuilt (`restore::child`, ops CTTY and FOREGROUND).
//!
//! A `--shell-job` tree runs on a terminal it does not own: descriptors of
//! its controlling terminal are stored as "the caller's terminal" (pair 0),
//! and a restore opens rcr's own stdin terminal in their place.
//!
//! Termios, window and packet ioctls all go through the master, which the
//! kernel applies to the slave. The queued bytes are read out through rcr's
//! own descriptors (a copy of the master, a slave of its own from
//! TIOCGPTPEER) and written back at once with echo and every translation
//! off, so a tree left running still gets them.

use super::files::{bad_fdinfo, check, owned, task_fd};
use crate::error::{Error, Result};
use crate::proc::fdinfo::FdInfo;
use crate::proc::stat::Stat;
use nix::errno::Errno;
use rcr_images::pb::{self, file_entry::Kind};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Major numbers of pty slaves: /dev/pts/N is (136 + N / 256, N % 256).
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
/// Virtual consoles and serial lines.
const TTY_MAJOR: u32 = 4;
/// /dev/tty (minor 0: whatever the process's controlling terminal is) and
/// /dev/ptmx (minor 2).
const TTYAUX_MAJOR: u32 = 5;
const DEV_TTY_MINOR: u32 = 0;
const PTMX_MINOR: u32 = 2;
/// Control characters in the kernel's termios2 (glibc's termios has more).
const KERNEL_NCCS: usize = 19;
/// How long queued bytes written back may take to reach the other side.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a character device is a terminal rcr may take.
pub fn is_terminal(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    PTS_MAJORS.contains(&major)
        || major == TTY_MAJOR
        || (major == TTYAUX_MAJOR && (minor == DEV_TTY_MINOR || minor == PTMX_MINOR))
}

/// The controlling terminal of a `--shell-job` tree: the root's.
pub struct Caller {
    /// Device (major, minor) of the terminal.
    dev: (u32, u32),
    /// Its foreground process group when the tree was dumped.
    foreground: i32,
}

impl Caller {
    /// The root's controlling terminal, from its stat; `None` without one.
    pub fn of(root: &Stat) -> Option<Caller> {
        let nr = root.tty_nr as u32;
        // /proc encodes it as the kernel's new_encode_dev.
        let dev = ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00));
        (nr != 0).then_some(Caller {
            dev,
            foreground: root.tpgid,
        })
    }

    fn is(&self, rdev: u64) -> bool {
        let dev = (libc::major(rdev), libc::minor(rdev));
        dev == self.dev || dev == (TTYAUX_MAJOR, DEV_TTY_MINOR)
    }
}

enum End {
    Master(u32),
    Slave(u32),
    /// A terminal that is not a pty end: a console, a serial line, /dev/tty.
    Other,
}

/// A terminal descriptor stored as file `id`, its pair not known yet.
struct Seen {
    id: u32,
    pid: i32,
    fd: i32,
    end: End,
    rdev: u64,
    path: String,
}

/// The terminals of a dump: pairs are known once every process is seen.
#[derive(Default)]
pub struct Collected {
    /// rcr's copy of each pair's master, by pts number, with its holder.
    masters: BTreeMap<u32, (i32, i32, OwnedFd)>,
    seen: Vec<Seen>,
}

impl Collected {
    /// Notes `pid`'s terminal descriptor `fd`, to be stored as file `id`;
    /// [`Collected::resolve`] names its pair.
    pub fn dump_file(
        &mut self,
        id: u32,
        (pid, fd): (i32, i32),
        path: &std::path::Path,
        meta: &std::fs::Metadata,
        info: &FdInfo,
        flags: u32,
    ) -> Result<pb::TtyFile> {
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let end = if (major, minor) == (TTYAUX_MAJOR, PTMX_MINOR) {
            let index = info
                .extra("tty-index")
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad_fdinfo(pid, fd, "tty-index"))?;
            if let std::collections::btree_map::Entry::Vacant(e) = self.masters.entry(index) {
                e.insert((pid, fd, task_fd(pid, fd)?));
            }
            End::Master(index)
        } else if PTS_MAJORS.contains(&major) {
            End::Slave((major - PTS_MAJORS.start()) * 256 + minor)
        } else {
            End::Other
        };
        let master = matches!(end, End::Master(_));
        self.seen.push(Seen {
            id,
            pid,
            fd,
            end,
            rdev,
            path: path.to_string_lossy().into_owned(),
        });
        Ok(pb::TtyFile {
            pair_id: 0,
            master,
            flags,
        })
    }

    /// Ties every terminal descriptor to its pair, or to the caller's
    /// terminal `caller` (a `--shell-job` dump), and stores each pair.
    /// Refuses, by pid and fd, a terminal outside the tree otherwise, and a
    /// pair that controls a session whose leader is not a live process of
    /// the tree.
    pub fn resolve(
        self,
        files: &mut [pb::FileEntry],
        tree: &[pb::ProcessEntry],
        caller: Option<&Caller>,
        shell_job: bool,
    ) -> Result<Vec<pb::TtyPair>> {
        let ids: BTreeMap<u32, u32> = self.masters.keys().copied().zip(1..).collect();
        for s in &self.seen {
            let pair = match s.end {
                End::Master(i) | End::Slave(i) => ids.get(&i).copied(),
                End::Other => None,
            };
            let pair_id = match (pair, caller) {
                (Some(id), _) => id,
                (None, Some(c)) if shell_job && c.is(s.rdev) => 0,
                _ => {
                    return Err(Error::UnsupportedFd {
                        pid: s.pid,
                        fd: s.fd,
                        kind: match shell_job {
                            true => "a terminal outside the tree other than its controlling \
                                     terminal"
                                .into(),
                            false => "a terminal outside the tree (no process of the tree \
                                      holds its master; for the tree's controlling terminal, \
                                      dump with --shell-job)"
                                .into(),
                        },
                        target: s.path.clone(),
                    })
                }
            };
            if let Some(Kind::Tty(t)) = &mut files[s.id as usize - 1].kind {
                t.pair_id = pair_id;
            }
        }
        self.masters
            .iter()
            .map(|(&index, (pid, fd, master))| {
                dump_pair(ids[&index], index, (*pid, *fd), master, tree)
            })
            .collect()
    }
}

/// The caller's foreground group for a `--shell-job` dump: kept when it is
/// a group of the tree in the root's session, else 0.
pub fn caller_foreground(caller: Option<&Caller>, tree: &[pb::ProcessEntry]) -> i32 {
    let root_sid = tree.first().map_or(0, |r| r.sid);
    caller
        .map(|c| c.foreground)
        .filter(|&fg| {
            fg > 0
                && tree
                    .iter()
                    .any(|p| p.pgid == fg && p.sid == root_sid && !p.zombie)
        })
        .unwrap_or(0)
}

/// An ioctl whose argument points at `arg`.
fn ioctl<T>(fd: i32, req: libc::Ioctl, arg: &mut T) -> nix::Result<()> {
    // SAFETY: `arg` is a live value of the type the request reads or writes.
    let ret = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    Errno::result(ret).map(drop)
}

fn zeroed_termios() -> libc::termios2 {
    // SAFETY: termios2 is plain integers and bytes; all zero is a value.
    unsafe { std::mem::zeroed() }
}

/// A new open file description of `master`'s slave, O_NOCTTY and
/// close-on-exec added.
fn peer(master: i32, flags: i32) -> nix::Result<OwnedFd> {
    let flags = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND))
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as a plain integer.
    let raw = unsafe { libc::ioctl(master, libc::TIOCGPTPEER, flags) };
    Errno::result(raw)?;
    // SAFETY: a descriptor the kernel just made for us.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) })
}

fn queued(fd: i32) -> nix::Result<usize> {
    let mut n: libc::c_int = 0;
    ioctl(fd, libc::FIONREAD, &mut n)?;
    Ok(n as usize)
}

fn set_int(fd: i32, req: libc::Ioctl, value: bool) -> nix::Result<()> {
    ioctl(fd, req, &mut libc::c_int::from(value))
}

fn get_int(fd: i32, req: libc::Ioctl) -> nix::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    ioctl(fd, req, &mut v)?;
    Ok(v)
}

/// Reads exactly `n` bytes that FIONREAD said are there.
fn read_queued(fd: i32, n: usize) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reads into the rest of a buffer we own.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), n - got) };
        match Errno::result(r)? {
            0 => return Err(Errno::EIO),
            r => got += r as usize,
        }
    }
    Ok(buf)
}

fn write_all(fd: i32, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        // SAFETY: writes from a slice we own.
        let n = Errno::result(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })?;
        data = &data[n as usize..];
    }
    Ok(())
}

/// Puts `input` in the slave's queue and `output` in the master's, as
/// bytes already processed: with echo, signals and every translation off,
/// then the saved termios again once both queues show them.
fn put_queued(
    master: i32,
    slave: i32,
    saved: &libc::termios2,
    input: &[u8],
    output: &[u8],
) -> nix::Result<()> {
    if input.is_empty() && output.is_empty() {
        return Ok(());
    }
    let mut quiet = *saved;
    quiet.c_iflag = 0;
    quiet.c_oflag &= !libc::OPOST;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    ioctl(master, libc::TCSETS2, &mut quiet)?;
    let put = write_all(master, input)
        .and_then(|()| write_all(slave, output))
        .and_then(|()| {
            // The kernel moves written bytes to the other side's queue
            // from a worker: wait until both are there.
            let deadline = std::time::Instant::now() + QUEUE_WAIT;
            while queued(slave)? != input.len() || queued(master)? != output.len() {
                if std::time::Instant::now() > deadline {
                    return Err(Errno::ETIMEDOUT);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(())
        });
    ioctl(master, libc::TCSETS2, &mut saved.clone())?;
    put
}

/// Stores pair `id` (pts `index`) through rcr's copy of its master, which
/// `holder` (pid, fd) has open.
fn dump_pair(
    id: u32,
    index: u32,
    (pid, fd): (i32, i32),
    master: &OwnedFd,
    tree: &[pb::ProcessEntry],
) -> Result<pb::TtyPair> {
    let m = master.as_raw_fd();
    let sys = |what: &'static str| move |e| Error::sys(pid, what, e);
    let mut t = zeroed_termios();
    ioctl(m, libc::TCGETS2, &mut t).map_err(sys("TCGETS2 on a pty master"))?;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    ioctl(m, libc::TIOCGWINSZ, &mut ws).map_err(sys("TIOCGWINSZ on a pty master"))?;
    let packet = get_int(m, libc::TIOCGPKT).map_err(sys("TIOCGPKT on a pty master"))? != 0;
    let locked = get_int(m, libc::TIOCGPTLCK).map_err(sys("TIOCGPTLCK on a pty master"))? != 0;
    let sid = match get_int(m, libc::TIOCGSID) {
        Ok(sid) => sid,
        Err(Errno::ENOTTY) => 0,
        Err(e) => return Err(sys("TIOCGSID on a pty master")(e)),
    };
    let foreground = match sid {
        0 => 0,
        _ => get_int(m, libc::TIOCGPGRP).map_err(sys("TIOCGPGRP on a pty master"))?,
    };
    // A foreground group whose processes all exited cannot be given back:
    // the session leader's own group is left in the foreground then.
    let foreground = match tree.iter().any(|p| p.pgid == foreground && p.sid == sid) {
        true => foreground,
        false => 0,
    };
    if sid != 0 && !tree.iter().any(|p| p.pid == sid && !p.zombie) {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "fd {fd}: pty {index}, the controlling terminal of session {sid}, whose \
                 leader is not a live process of the tree,"
            ),
        });
    }
    let (input, output) = take_queued(m, &t, packet, locked)
        .map_err(sys("reading a pty's queues"))?
        .map_err(|lines| Error::Unsupported {
            pid,
            what: format!(
                "fd {fd}: pty {index} with {lines} bytes of lines queued for its reader \
                     in canonical mode"
            ),
        })?;
    Ok(pb::TtyPair {
        id,
        index,
        termios: Some(pb::TtyTermios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line.into(),
            cc: t.c_cc.to_vec(),
            ispeed: t.c_ispeed,
            ospeed: t.c_ospeed,
        }),
        rows: ws.ws_row.into(),
        cols: ws.ws_col.into(),
        xpixel: ws.ws_xpixel.into(),
        ypixel: ws.ws_ypixel.into(),
        packet_mode: packet,
        locked,
        sid,
        foreground,
        input,
        output,
    })
}

/// The bytes queued for the slave's reader and for the master's.
type Queued = (Vec<u8>, Vec<u8>);

/// Reads the bytes queued each way and writes them back at once. In
/// canonical mode a partial line the reader has not ended is not counted
/// and cannot be read without changing the terminal, so bytes written back
/// would land behind it: complete lines queued there are left untouched
/// and their count returned as the error.
fn take_queued(
    m: i32,
    t: &libc::termios2,
    packet: bool,
    locked: bool,
) -> nix::Result<std::result::Result<Queued, usize>> {
    if locked {
        set_int(m, libc::TIOCSPTLCK, false)?;
    }
    let slave = peer(m, libc::O_RDWR | libc::O_NONBLOCK);
    if locked {
        set_int(m, libc::TIOCSPTLCK, true)?;
    }
    let slave = slave?;
    let s = slave.as_raw_fd();
    // In packet mode a master read starts with a status byte.
    if packet {
        set_int(m, libc::TIOCPKT, false)?;
    }
    let lines = queued(s)?;
    if lines > 0 && t.c_lflag & libc::ICANON != 0 {
        return Ok(Err(lines));
    }
    let taken = (|| {
        let input = read_queued(s, lines)?;
        let output = read_queued(m, queued(m)?)?;
        put_queued(m, s, t, &input, &output)?;
        Ok(Ok((input, output)))
    })();
    if packet {
        set_int(m, libc::TIOCPKT, true)?;
    }
    taken
}

/// The pty pairs of a restore, each opened on first use and kept (with
/// its slave unlocked) until every descriptor is open.
pub(crate) struct Made<'a> {
    saved: &'a [pb::TtyPair],
    made: HashMap<u32, OwnedFd>,
    warnings: Vec<String>,
}

impl<'a> Made<'a> {
    pub(crate) fn new(saved: &'a [pb::TtyPair]) -> Self {
        Made {
            saved,
            made: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// A descriptor of the saved terminal end `f`.
    pub(crate) fn open(&mut self, f: &pb::TtyFile) -> Result<OwnedFd> {
        if f.pair_id == 0 {
            return open_callers(f.flags);
        }
        if !self.made.contains_key(&f.pair_id) {
            let p = self
                .saved
                .iter()
                .find(|p| p.id == f.pair_id)
                .expect("checked at load");
            let master = make_pair(p, &mut self.warnings)?;
            self.made.insert(f.pair_id, master);
        }
        let master = &self.made[&f.pair_id];
        if !f.master {
            return peer(master.as_raw_fd(), f.flags as i32)
                .map_err(|e| Error::Preflight(format!("opening pty {} again: {e}", f.pair_id)));
        }
        let fd = master
            .try_clone()
            .map_err(|e| Error::Preflight(format!("dup of a pty master: {e}")))?;
        let fl = f.flags as i32 & (libc::O_NONBLOCK | libc::O_APPEND);
        // SAFETY: fcntl on our own descriptor.
        check(
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) }.into(),
            "setting a pty master's flags",
        )?;
        Ok(fd)
    }

    /// Locks the slaves that were locked, now that every one is open, and
    /// hands over the warnings.
    pub(crate) fn finish(self, warnings: &mut Vec<String>) -> Result<()> {
        for p in self.saved.iter().filter(|p| p.locked) {
            if let Some(m) = self.made.get(&p.id) {
                set_int(m.as_raw_fd(), libc::TIOCSPTLCK, true)
                    .map_err(|e| Error::Preflight(format!("locking pty {}: {e}", p.index)))?;
            }
        }
        warnings.extend(self.warnings);
        Ok(())
    }
}

/// A new pty pair with the saved state and queued bytes; returns its master.
fn make_pair(p: &pb::TtyPair, warnings: &mut Vec<String>) -> Result<OwnedFd> {
    let fail = |what: &'static str| {
        move |e: Errno| Error::Preflight(format!("pty {}: {what}: {e}", p.index))
    };
    let t = p.termios.as_ref().expect("checked at load");
    let mut saved = zeroed_termios();
    saved.c_iflag = t.iflag;
    saved.c_oflag = t.oflag;
    saved.c_cflag = t.cflag;
    saved.c_lflag = t.lflag;
    saved.c_line = t.line as u8;
    saved.c_cc.copy_from_slice(&t.cc);
    saved.c_ispeed = t.ispeed;
    saved.c_ospeed = t.ospeed;
    // SAFETY: open with a NUL-terminated literal; the result is checked.
    let raw = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let master = owned(raw, "opening /dev/ptmx")?;
    let m = master.as_raw_fd();
    set_int(m, libc::TIOCSPTLCK, false).map_err(fail("unlocking"))?;
    let index = get_int(m, libc::TIOCGPTN).map_err(fail("TIOCGPTN"))? as u32;
    if index != p.index {
        warnings.push(format!(
            "pty {} comes back as /dev/pts/{index} (the old number is taken)",
            p.index
        ));
    }
    let slave = peer(m, libc::O_RDWR | libc::O_NONBLOCK).map_err(fail("opening its slave"))?;
    ioctl(m, libc::TCSETS2, &mut saved.clone()).map_err(fail("TCSETS2"))?;
    put_queued(m, slave.as_raw_fd(), &saved, &p.input, &p.output)
        .map_err(fail("putting its queued bytes back"))?;
    let mut ws = libc::winsize {
        ws_row: p.rows as u16,
        ws_col: p.cols as u16,
        ws_xpixel: p.xpixel as u16,
        ws_ypixel: p.ypixel as u16,
    };
    ioctl(m, libc::TIOCSWINSZ, &mut ws).map_err(fail("TIOCSWINSZ"))?;
    if p.packet_mode {
        set_int(m, libc::TIOCPKT, true).map_err(fail("TIOCPKT"))?;
    }
    Ok(master)
}

/// rcr's stdin terminal, opened again with the saved flags.
fn open_callers(flags: u32) -> Result<OwnedFd> {
    let flags = (flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND))
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: open with a NUL-terminated literal; the result is checked.
    let raw = unsafe { libc::open(c"/proc/self/fd/0".as_ptr(), flags) };
    owned(raw, "opening rcr's terminal (stdin) again")
}

/// Whether the table holds the caller's terminal (a `--shell-job` dump).
fn holds_callers(table: &pb::FileTable) -> bool {
    table
        .files
        .iter()
        .any(|f| matches!(&f.kind, Some(Kind::Tty(t)) if t.pair_id == 0))
}

/// Before anything is created: a checkpoint holding its caller's terminal
/// needs `--shell-job`, and `--shell-job` needs rcr's stdin to be its
/// controlling terminal.
pub fn preflight(table: &pb::FileTable, shell_job: bool) -> Result<()> {
    if !shell_job {
        if holds_callers(table) {
            return Err(Error::Preflight(
                "the checkpoint uses the terminal it ran on (it was dumped with --shell-job): \
                 restore it with --shell-job from a terminal"
                    .into(),
            ));
        }
        return Ok(());
    }
    // SAFETY: isatty only queries fd 0.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(Error::Preflight(
            "--shell-job needs a terminal on stdin (fd 0), and rcr's stdin is not a terminal"
                .into(),
        ));
    }
    // SAFETY: getsid only reads.
    let own = unsafe { libc::getsid(0) };
    if get_int(0, libc::TIOCGSID).ok() != Some(own) {
        return Err(Error::Preflight(format!(
            "--shell-job: stdin (fd 0) is a terminal but not the controlling terminal of \
             rcr's session {own}"
        )));
    }
    Ok(())
}

/// After a `--shell-job` restore, stays the parent of the restored root
/// `root` until it ends, and returns its status as a shell shows it (128 +
/// signal when killed). A job whose group has a parent outside it in the
/// session is not orphaned, so ^Z stops it; rcr then stops too, so the
/// shell that runs rcr sees its job stopped, and when the shell continues
/// rcr (`fg`, `bg`) rcr gives the terminal back to the job's group if it
/// holds it, and continues the job.
pub fn follow_shell_job(root: i32) -> Result<u8> {
    let sys = |what: &'static str| Error::sys(root, what, Errno::last());
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child with a status we own.
        let ret = unsafe { libc::waitpid(root, &mut status, libc::WUNTRACED | libc::__WALL) };
        if ret < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                _ => return Err(sys("waitpid for the restored shell job")),
            }
        }
        if libc::WIFEXITED(status) {
            return Ok(libc::WEXITSTATUS(status) as u8);
        }
        if libc::WIFSIGNALED(status) {
            return Ok(128 + libc::WTERMSIG(status) as u8);
        }
        if libc::WIFSTOPPED(status) {
            // SAFETY: process-group calls on rcr, its terminal and its
            // own child's group.
            unsafe {
                let group = libc::getpgid(root);
                libc::raise(libc::SIGSTOP);
                if libc::tcgetpgrp(0) == libc::getpgrp() {
                    libc::tcsetpgrp(0, group);
                }
                if libc::kill(-group, libc::SIGCONT) < 0 {
                    return Err(sys("SIGCONT to the restored shell job"));
                }
            }
        }
    }
}

/// The pair process `pid` leads the session of, if any: the id of its
/// master's file (which the leader makes its controlling terminal) and the
/// saved foreground group.
pub fn controlled_by(table: &pb::FileTable, pid: i32) -> Option<(u32, i32)> {
    let pair = table.ttys.iter().find(|p| p.sid == pid && pid != 0)?;
    let file = table
        .files
        .iter()
        .find(|f| matches!(&f.kind, Some(Kind::Tty(t)) if t.master && t.pair_id == pair.id))?;
    Some((file.id, pair.foreground))
}

/// Load-time check of one stored terminal end.
pub fn check_saved(table: &pb::FileTable, f: &pb::TtyFile) -> std::result::Result<(), String> {
    if f.pair_id == 0 {
        return Ok(());
    }
    match table.ttys.iter().find(|p| p.id == f.pair_id) {
        None => Err(format!("names pty pair {} which is not stored", f.pair_id)),
        Some(p) if p.termios.as_ref().is_none_or(|t| t.cc.len() != KERNEL_NCCS) => Err(format!(
            "pty pair {} has no termios of {KERNEL_NCCS} control characters",
            p.id
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termios2_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<libc::termios2>(), 44);
        assert_eq!(zeroed_termios().c_cc.len(), KERNEL_NCCS);
    }

    #[test]
    fn terminal_devices_are_recognised() {
        assert!(is_terminal(libc::makedev(136, 3)));
        assert!(is_terminal(libc::makedev(137, 0)));
        assert!(is_terminal(libc::makedev(5, 2)));
        assert!(is_terminal(libc::makedev(5, 0)));
        assert!(is_terminal(libc::makedev(4, 1)));
        assert!(!is_terminal(libc::makedev(1, 3)));
        assert!(!is_terminal(libc::makedev(5, 1)));
    }

    #[test]
    fn the_callers_terminal_is_decoded_from_stat() {
        let st = Stat {
            tty_nr: (136 << 8) | 5 | (1 << 20),
            tpgid: 42,
            ..Default::default()
        };
        let c = Caller::of(&st).unwrap();
        assert_eq!(c.dev, (136, 5 | (1 << 8)));
        assert!(c.is(libc::makedev(136, 261)));
        assert!(c.is(libc::makedev(5, 0)));
        assert!(!c.is(libc::makedev(136, 5)));
        assert!(Caller::of(&Stat::default()).is_none());
    }

    /// A pair made in this process: state and queued bytes survive a
    /// read-out and write-back, and a restore into a new pair.
    #[test]
    fn queued_bytes_and_settings_survive_take_and_make() {
        // SAFETY: open with a literal.
        let m = owned(
            unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) },
            "ptmx",
        )
        .unwrap();
        let m = m.as_raw_fd();
        set_int(m, libc::TIOCSPTLCK, false).unwrap();
        let s = peer(m, libc::O_RDWR).unwrap();
        let mut t = zeroed_termios();
        ioctl(m, libc::TCGETS2, &mut t).unwrap();
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 3;
        ioctl(m, libc::TCSETS2, &mut t).unwrap();
        let quiet = t;
        put_queued(m, s.as_raw_fd(), &quiet, b"typed", b"shown").unwrap();
        let (input, output) = take_queued(m, &t, false, false).unwrap().unwrap();
        assert_eq!((&input[..], &output[..]), (&b"typed"[..], &b"shown"[..]));
        // Put back: a second look sees the same.
        let (again, _) = take_queued(m, &t, false, false).unwrap().unwrap();
        assert_eq!(again, b"typed");
        // In canonical mode, complete lines are left where they are.
        t.c_lflag |= libc::ICANON;
        ioctl(m, libc::TCSETS2, &mut t).unwrap();
        write_all(m, b"line\n").unwrap();
        let deadline = std::time::Instant::now() + QUEUE_WAIT;
        while queued(s.as_raw_fd()).unwrap() < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(take_queued(m, &t, false, false).unwrap(), Err(5 + 5));
        t.c_lflag &= !libc::ICANON;
        ioctl(m, libc::TCSETS2, &mut t).unwrap();
        let stat = dump_pair(1, 0, (0, 0), &owned_dup(m), &[]).unwrap();
        let mut warnings = Vec::new();
        let made = make_pair(&stat, &mut warnings).unwrap();
        let mut t2 = zeroed_termios();
        ioctl(made.as_raw_fd(), libc::TCGETS2, &mut t2).unwrap();
        assert_eq!(t2.c_cc[libc::VMIN], 3);
        assert_eq!(t2.c_lflag & libc::ICANON, 0);
        let s2 = peer(made.as_raw_fd(), libc::O_RDWR).unwrap();
        assert_eq!(read_queued(s2.as_raw_fd(), 5).unwrap(), b"typed");
        assert_eq!(read_queued(made.as_raw_fd(), 5).unwrap(), b"shown");
    }

    fn owned_dup(fd: i32) -> OwnedFd {
        // SAFETY: dup of our own descriptor.
        owned(unsafe { libc::dup(fd) }, "dup").unwrap()
    }
}
