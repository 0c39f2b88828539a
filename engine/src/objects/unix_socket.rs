//! Unix sockets (stream, datagram, seqpacket), dump and restore side by side.
//!
//! A socket has exactly one open file description, so each is one file
//! entry (`UnixSocket`), found again by its inode when another process
//! holds it too. Who a socket is connected to, its name, backlog and
//! shutdown state come from sock_diag (`proc::unix_diag`); rcr takes the
//! socket itself with `pidfd_getfd` for its options and reads the receive
//! queue without consuming it: `MSG_PEEK` from an `SO_PEEK_OFF` that moves
//! past each read (the task's own offset is put back). Data in flight in
//! one direction sits in the receiving socket's queue, so every socket
//! stores its own queue and the checkpoint holds both directions.
//!
//! Restore makes every socket of the checkpoint at once, in rcr: a
//! socketpair for two sockets connected to each other; a socketpair whose
//! second end is closed again for a connected socket whose peer had closed
//! (the reader still gets the data, then end of file); a new socket
//! otherwise, bound to its name (a stale socket file nobody listens on is
//! removed first), listening with its backlog, a datagram socket connected
//! to the bound socket it was connected to. Each queue is sent again from
//! the socket's peer (or, for a bound datagram socket, to its name from a
//! socket with each datagram's sender name: the tree's own, or a throwaway
//! bound to it), before options and shutdown are set back.
//!
//! A socket connected to a peer outside the checkpoint is refused unless
//! asked for (`--external-unix`): then the peer's name is saved and restore
//! connects to it again, a datagram socket to the same receiver, a stream
//! or seqpacket socket as a new connection to the same listener (what the
//! old peer had sent and the socket not read is lost, which restore warns
//! about); a peer without a name is refused.
//!
//! Refused at dump, by name: other families, a peer outside the checkpoint
//! (unless asked for, and named), connections not yet accepted, descriptors in flight (SCM_RIGHTS), names
//! relative to a directory, queued data that no socket of the checkpoint
//! could send again.

use super::files::{check, owned, restore_err};
use crate::error::{Error, Result};
use crate::proc::unix_diag::{self, UnixDiag, STATE_CONNECTED, STATE_LISTEN};
use rcr_images::pb::{self, file_entry::Kind};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Where queued data is read into; grown for a bigger datagram.
const PEEK_BUF: usize = 256 << 10;
/// Room for the control messages a peek may carry (credentials, and the
/// most descriptors one message can hold).
const CMSG_BUF: usize = 4096;

fn type_name(kind: u32) -> &'static str {
    match kind as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

pub(crate) fn family_name(family: i32) -> String {
    match family {
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        other => format!("family {other}"),
    }
}

/// A name as a user reads it: a path, or `@name` for an abstract one.
fn show_name(name: &[u8]) -> String {
    match name.split_first() {
        None => "unnamed".into(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(_) => String::from_utf8_lossy(name).into_owned(),
    }
}

fn is_path(name: &[u8]) -> bool {
    name.first().is_some_and(|&c| c != 0)
}

/// A name without the NULs that may pad a path name (an abstract name's
/// bytes all count).
fn trimmed(mut name: Vec<u8>) -> Vec<u8> {
    while is_path(&name) && name.last() == Some(&0) {
        name.pop();
    }
    name
}

/// Whether restore binds the socket to its saved name. An accepted
/// connection shows its listener's name, which the listener holds: a
/// connected stream or seqpacket socket comes back unnamed.
fn binds(s: &pb::UnixSocket) -> bool {
    !s.name.is_empty() && (s.state != STATE_CONNECTED as u32 || s.r#type == libc::SOCK_DGRAM as u32)
}

/// `getsockopt` of an int option.
pub(crate) fn get_opt(fd: &OwnedFd, level: i32, name: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int we own and its length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// `setsockopt` of an int option.
pub(crate) fn set_opt(fd: &OwnedFd, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt reads an int we own.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Takes fd `fd` of `pid` into rcr (`pidfd_getfd`, allowed to its tracer)
/// with its family, and refuses a socket of a family other than AF_UNIX,
/// AF_INET and AF_INET6, by name.
pub fn examine(pid: i32, fd: i32, link: &str) -> Result<(OwnedFd, i32)> {
    let sock = super::files::task_fd(pid, fd)?;
    let family = get_opt(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| {
        Error::sys(
            pid,
            "getsockopt(SO_DOMAIN)",
            nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        )
    })?;
    if ![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].contains(&family) {
        return Err(Error::UnsupportedFd {
            pid,
            fd,
            kind: format!("a socket of family {}", family_name(family)),
            target: link.to_owned(),
        });
    }
    Ok((sock, family))
}

/// The unix sockets of a checkpoint being written.
#[derive(Default)]
pub struct Collected {
    /// Every unix socket of rcr's network namespace, read once.
    diag: Option<HashMap<u32, UnixDiag>>,
    /// Each stored socket by inode: its file id and the first (pid, fd)
    /// that holds it.
    stored: HashMap<u64, (u32, i32, i32)>,
    /// Connect sockets whose peer is outside the tree again at restore,
    /// by the peer's name, instead of refusing them.
    pub external: bool,
}

impl Collected {
    /// The file id of the socket with inode `ino`, when already stored.
    pub fn file_of(&self, ino: u64) -> Option<u32> {
        self.stored.get(&ino).map(|s| s.0)
    }

    /// Notes that socket `ino`, held by `pid` at `fd`, is file `id`.
    pub fn stored(&mut self, ino: u64, id: u32, pid: i32, fd: i32) {
        self.stored.insert(ino, (id, pid, fd));
    }

    fn diag(&mut self) -> Result<&HashMap<u32, UnixDiag>> {
        if self.diag.is_none() {
            let all =
                unix_diag::read_all().map_err(|e| Error::io("NETLINK_SOCK_DIAG (unix)", e))?;
            self.diag = Some(all);
        }
        Ok(self.diag.as_ref().expect("just read"))
    }

    /// Reads the state of socket `sock`, fd `fd` of `pid`, inode `ino`.
    pub fn dump(
        &mut self,
        pid: i32,
        fd: i32,
        sock: &OwnedFd,
        ino: u64,
        flags: u32,
    ) -> Result<pb::UnixSocket> {
        let refuse = |what: String| Error::Unsupported {
            pid,
            what: format!("fd {fd}: a unix socket (socket:[{ino}]) {what}"),
        };
        let all = self.diag()?;
        let d = all.get(&(ino as u32)).ok_or_else(|| {
            refuse("that sock_diag does not list (in another network namespace?)".into())
        })?;
        if !d.icons.is_empty() {
            return Err(refuse(format!(
                "listening on {} with {} connection(s) not yet accepted (from socket:{:?})",
                show_name(d.name.as_deref().unwrap_or_default()),
                d.icons.len(),
                d.icons
            )));
        }
        if let Some(l) = all.values().find(|l| l.icons.contains(&d.ino)) {
            return Err(refuse(format!(
                "connected to the listener {} (socket:[{}]) which has not accepted it yet",
                show_name(l.name.as_deref().unwrap_or_default()),
                l.ino
            )));
        }
        let mut s = pb::UnixSocket {
            ino,
            r#type: d.kind as u32,
            state: d.state as u32,
            peer_ino: d.peer.unwrap_or(0) as u64,
            peer_closed: d.peer == Some(0),
            backlog: if d.state == STATE_LISTEN {
                d.rqlen.1
            } else {
                0
            },
            flags,
            shutdown: d.shutdown as u32,
            ..Default::default()
        };
        if let Some(name) = &d.name {
            s.name = trimmed(name.clone());
        }
        if binds(&s) && is_path(&s.name) {
            let path = Path::new(std::ffi::OsStr::from_bytes(&s.name));
            if !path.is_absolute() {
                return Err(refuse(format!(
                    "bound to the relative path {}",
                    path.display()
                )));
            }
            match std::fs::symlink_metadata(path) {
                Ok(m)
                    if m.file_type().is_socket() && Some(m.ino() as u32) == d.vfs.map(|v| v.0) =>
                {
                    s.name_mode = m.mode() & 0o7777
                }
                _ => s.name_unlinked = true,
            }
        }
        let opt = |name: i32, what: &'static str| {
            get_opt(sock, libc::SOL_SOCKET, name).map_err(|e| {
                Error::sys(
                    pid,
                    what,
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                )
            })
        };
        s.sndbuf = opt(libc::SO_SNDBUF, "getsockopt(SO_SNDBUF)")? as u32;
        s.rcvbuf = opt(libc::SO_RCVBUF, "getsockopt(SO_RCVBUF)")? as u32;
        s.passcred = opt(libc::SO_PASSCRED, "getsockopt(SO_PASSCRED)")? != 0;
        s.peek_off = opt(libc::SO_PEEK_OFF, "getsockopt(SO_PEEK_OFF)")?;
        if d.state != STATE_LISTEN {
            (s.queue, s.queue_senders) =
                peek_queue(sock, s.r#type as i32, s.peek_off).map_err(refuse)?;
        }
        Ok(s)
    }

    /// Refuses, naming the holder, a socket whose peer is outside the
    /// checkpoint (unless [`Collected::external`], then notes the peer's
    /// name) or whose queue cannot be sent again.
    pub fn check(&self, files: &mut [pb::FileEntry]) -> Result<()> {
        let holder = |ino: u64| self.stored.get(&ino).map_or((0, -1), |s| (s.1, s.2));
        let inos: HashSet<u64> = sockets_of(files).iter().map(|(_, s)| s.ino).collect();
        for f in files.iter_mut() {
            let Some(Kind::Unix(s)) = &mut f.kind else {
                continue;
            };
            if s.peer_ino == 0 || inos.contains(&s.peer_ino) {
                continue;
            }
            let name = self
                .diag
                .as_ref()
                .and_then(|all| all.get(&(s.peer_ino as u32)))
                .and_then(|p| p.name.clone())
                .map(trimmed);
            let (pid, fd) = holder(s.ino);
            let shown = name.as_deref().map_or("unnamed".into(), show_name);
            let why = match &name {
                Some(name) if self.external => {
                    s.external_peer = name.clone();
                    continue;
                }
                Some(_) => {
                    "; dump with --external-unix to connect it to that name again at restore"
                }
                None => ", which has no name to connect to again",
            };
            return Err(Error::UnsupportedFd {
                pid,
                fd,
                kind: format!("a unix {} socket", type_name(s.r#type)),
                target: format!(
                    "connected to socket:[{}], {shown}, outside the checkpointed tree{why}",
                    s.peer_ino
                ),
            });
        }
        if let Err((ino, what)) = plan(&sockets_of(files)) {
            let (pid, fd) = holder(ino);
            return Err(Error::Unsupported {
                pid,
                what: format!("fd {fd}: a unix socket (socket:[{ino}]) {what}"),
            });
        }
        Ok(())
    }
}

/// A receive queue: the messages (a stream's bytes as one), and for
/// datagrams the name each came from (empty when unnamed; no entry at all
/// when none is named).
type Queue = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Reads the receive queue of `sock` without consuming it, then puts the
/// socket's peek offset back to `peek_off`.
fn peek_queue(sock: &OwnedFd, kind: i32, peek_off: i32) -> std::result::Result<Queue, String> {
    let set_off = |off: i32| {
        set_opt(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off)
            .map_err(|e| format!("whose SO_PEEK_OFF cannot be set ({e})"))
    };
    set_off(0)?;
    let got = peek_all(sock, kind, &set_off);
    set_off(peek_off)?;
    got
}

fn peek_all(
    sock: &OwnedFd,
    kind: i32,
    set_off: &dyn Fn(i32) -> std::result::Result<(), String>,
) -> std::result::Result<Queue, String> {
    let mut queue: Vec<Vec<u8>> = Vec::new();
    let mut senders: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; PEEK_BUF];
    let mut offset = 0usize;
    let done = |queue, senders: Vec<Vec<u8>>| {
        let named = senders.iter().any(|s| !s.is_empty());
        Ok((queue, if named { senders } else { Vec::new() }))
    };
    loop {
        let (n, flags, sender) = peek_once(sock, &mut buf)?;
        let Some(n) = n else {
            return done(queue, senders);
        };
        if flags & libc::MSG_TRUNC != 0 {
            // A datagram larger than the buffer: read it again whole.
            set_off(offset as i32)?;
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if kind == libc::SOCK_STREAM {
            if n == 0 {
                return done(queue, senders);
            }
            match queue.first_mut() {
                Some(q) => q.extend_from_slice(&buf[..n]),
                None => queue.push(buf[..n].to_vec()),
            }
        } else {
            queue.push(buf[..n].to_vec());
            senders.push(sender);
        }
        offset += n;
    }
}

/// One `MSG_PEEK` at the socket's peek offset: the bytes read (None when
/// nothing more is queued), the message flags and the sender's name.
/// Descriptors in flight are refused (the copies the peek made are closed).
fn peek_once(
    sock: &OwnedFd,
    buf: &mut [u8],
) -> std::result::Result<(Option<usize>, i32, Vec<u8>), String> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; CMSG_BUF / 8];
    // SAFETY: a zeroed msghdr is valid; its pointers are set just below to
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF;
    // SAFETY: recvmsg writes into the buffers msg points to.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok((None, 0, Vec::new())),
            _ => Err(format!("whose queue cannot be read ({e})")),
        };
    }
    let mut rights = 0;
    // SAFETY: walks the control messages recvmsg wrote into `cmsg`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    libc::close(data.add(i).read_unaligned());
                }
                rights += count;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if rights > 0 || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(format!(
            "with file descriptors in flight (SCM_RIGHTS, {rights} or more) in its queue"
        ));
    }
    let len = (msg.msg_namelen as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let sender = from.sun_path[..len.min(from.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .collect();
    Ok((Some(n as usize), msg.msg_flags, trimmed(sender)))
}

/// The unix sockets of a table, with their file ids, by id.
fn sockets_of(files: &[pb::FileEntry]) -> Vec<(u32, &pb::UnixSocket)> {
    files
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Unix(s)) => Some((f.id, s)),
            _ => None,
        })
        .collect()
}

/// How a socket is made, and who sends its queue again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Make {
    /// One end of a socketpair with socket `usize` (the lower index makes it).
    Pair(usize),
    /// A socketpair whose other end sends the queue, then closes.
    PeerClosed,
    /// A socket of its own; a queue is sent to its name.
    Alone,
    /// A socket of its own connected to its peer's name outside the tree;
    /// a datagram queue is sent to its name, a stream's is lost.
    External,
}

/// How each socket is made. Fails with the inode and why for a queue no
/// socket of the checkpoint could send again.
fn plan(sockets: &[(u32, &pb::UnixSocket)]) -> std::result::Result<Vec<Make>, (u64, String)> {
    let index: HashMap<u64, usize> = sockets
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (s.ino, i))
        .collect();
    sockets
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            let peer = index.get(&s.peer_ino).copied().filter(|&j| j != i);
            let make = match peer {
                Some(j) if sockets[j].1.peer_ino == s.ino => Make::Pair(j),
                None if s.peer_closed => Make::PeerClosed,
                None if !s.external_peer.is_empty() => Make::External,
                _ => Make::Alone,
            };
            let datagram = s.r#type == libc::SOCK_DGRAM as u32;
            let sendable = match make {
                Make::Alone => datagram && binds(s),
                Make::External => !datagram || binds(s),
                _ => true,
            };
            if !s.queue.is_empty() && !sendable {
                return Err((
                    s.ino,
                    format!(
                        "with {} queued message(s) that no socket of the checkpoint can send again",
                        s.queue.len()
                    ),
                ));
            }
            if let Some(j) = peer.filter(|_| make == Make::Alone) {
                if !binds(sockets[j].1) {
                    return Err((
                        s.ino,
                        "connected to an unnamed socket that is not connected back".into(),
                    ));
                }
            }
            Ok(make)
        })
        .collect()
}

fn new_socket(kind: u32) -> Result<OwnedFd> {
    // SAFETY: socket() takes plain integers.
    let raw = unsafe { libc::socket(libc::AF_UNIX, kind as i32 | libc::SOCK_CLOEXEC, 0) };
    owned(raw, "socket(AF_UNIX)")
}

fn socketpair(kind: u32) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind as i32 | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(ret as i64, "socketpair(AF_UNIX)")?;
    Ok((owned(fds[0], "socketpair")?, owned(fds[1], "socketpair")?))
}

/// `sockaddr_un` holding `name`, and its length.
fn address(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() > a.sun_path.len() {
        return Err(Error::Preflight(format!(
            "unix socket name {} is too long",
            show_name(name)
        )));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len() + usize::from(is_path(name));
    Ok((a, len as libc::socklen_t))
}

/// Binds `fd` to `name`. A path still holding a socket file that nobody
/// answers on is stale and removed first; anything else there is refused.
fn bind(fd: &OwnedFd, kind: u32, name: &[u8]) -> Result<()> {
    let (addr, len) = address(name)?;
    let shown = show_name(name);
    if is_path(name) {
        let path = Path::new(std::ffi::OsStr::from_bytes(name));
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(Error::Preflight(format!(
                    "{shown} exists and is not a socket: cannot bind a unix socket there"
                )));
            }
            let probe = new_socket(kind)?;
            // SAFETY: connect reads the address we own.
            let ret = unsafe {
                libc::connect(
                    probe.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    len,
                )
            };
            if ret == 0
                || std::io::Error::last_os_error().raw_os_error() != Some(libc::ECONNREFUSED)
            {
                return Err(Error::Preflight(format!(
                    "{shown} is the name of a live unix socket"
                )));
            }
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
    }
    // SAFETY: bind reads the address we own.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    check(ret as i64, &format!("binding a unix socket to {shown}"))?;
    Ok(())
}

fn connect(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    let (addr, len) = address(name)?;
    // SAFETY: connect reads the address we own.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    check(
        ret as i64,
        &format!("connecting a unix socket to {}", show_name(name)),
    )?;
    Ok(())
}

/// Sends `queue` from `from` (to `to` when given), without waiting: the
/// queue held it before, so it fits again.
fn send_queue(from: &OwnedFd, to: Option<&[u8]>, kind: u32, queue: &[Vec<u8>]) -> Result<()> {
    let addr = to.map(address).transpose()?;
    let (ptr, len) = addr.as_ref().map_or((std::ptr::null(), 0), |(a, l)| {
        ((a as *const libc::sockaddr_un).cast(), *l)
    });
    for msg in queue {
        let mut sent = 0;
        loop {
            let rest = &msg[sent..];
            // SAFETY: sendto reads the bytes and the address we own.
            let n = unsafe {
                libc::sendto(
                    from.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ptr,
                    len,
                )
            };
            if n < 0 {
                return Err(restore_err(&format!(
                    "sending {} queued bytes to a unix socket again",
                    rest.len()
                )));
            }
            sent += n as usize;
            // Datagrams go whole; a stream may take its bytes in pieces.
            if sent == msg.len() || kind != libc::SOCK_STREAM as u32 {
                break;
            }
        }
    }
    Ok(())
}

/// Sends bound socket `s`'s queue again to its name, each datagram from a
/// socket with the name its sender had: the checkpoint's socket bound to
/// it, else a throwaway socket bound to it (refused when a live socket
/// holds that name), else an unnamed one.
fn send_to_name(
    s: &pb::UnixSocket,
    fds: &[OwnedFd],
    sockets: &[(u32, &pb::UnixSocket)],
) -> Result<()> {
    let mut throwaways: HashMap<&[u8], OwnedFd> = HashMap::new();
    let unnamed: &[u8] = &[];
    throwaways.insert(unnamed, new_socket(s.r#type)?);
    for (i, msg) in s.queue.iter().enumerate() {
        let sender = s.queue_senders.get(i).map_or(unnamed, Vec::as_slice);
        let ours = sockets.iter().position(|(_, o)| {
            binds(o) && o.r#type == s.r#type && o.name == sender && !sender.is_empty()
        });
        let from = match ours {
            Some(k) => &fds[k],
            None => {
                if !throwaways.contains_key(sender) {
                    let t = new_socket(s.r#type)?;
                    bind(&t, s.r#type, sender)?;
                    throwaways.insert(sender, t);
                }
                &throwaways[sender]
            }
        };
        send_queue(from, Some(&s.name), s.r#type, std::slice::from_ref(msg))?;
    }
    for name in throwaways.keys().filter(|n| is_path(n)) {
        let path = Path::new(std::ffi::OsStr::from_bytes(name));
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Makes every unix socket of `table`, connected, bound and listening as
/// saved, with its queue and options: rcr's descriptor for each, by file id.
pub fn make_all(table: &pb::FileTable) -> Result<HashMap<u32, OwnedFd>> {
    let sockets = sockets_of(&table.files);
    let plan = plan(&sockets)
        .map_err(|(ino, what)| Error::Preflight(format!("unix socket {ino} {what}")))?;
    let mut fds: Vec<Option<OwnedFd>> = sockets.iter().map(|_| None).collect();
    let mut closing: HashMap<usize, OwnedFd> = HashMap::new();
    for (i, (_, s)) in sockets.iter().enumerate() {
        match plan[i] {
            Make::Pair(j) if j < i => continue,
            Make::Pair(j) => {
                let (a, b) = socketpair(s.r#type)?;
                fds[i] = Some(a);
                fds[j] = Some(b);
            }
            Make::PeerClosed => {
                let (a, b) = socketpair(s.r#type)?;
                fds[i] = Some(a);
                closing.insert(i, b);
            }
            Make::Alone | Make::External => fds[i] = Some(new_socket(s.r#type)?),
        }
    }
    let fds: Vec<OwnedFd> = fds
        .into_iter()
        .map(|f| f.expect("every socket made"))
        .collect();
    for (fd, (_, s)) in fds.iter().zip(&sockets) {
        set_buffers(fd, s)?;
        if binds(s) {
            bind(fd, s.r#type, &s.name)?;
        }
        if s.state == STATE_LISTEN as u32 {
            // SAFETY: listen on our own socket.
            check(
                unsafe { libc::listen(fd.as_raw_fd(), s.backlog as i32) } as i64,
                "listen",
            )?;
        }
    }
    for (i, (_, s)) in sockets.iter().enumerate() {
        match (plan[i], closing.get(&i)) {
            (Make::Pair(j), _) => send_queue(&fds[j], None, s.r#type, &s.queue)?,
            (_, Some(spare)) => send_queue(spare, None, s.r#type, &s.queue)?,
            // A new connection: what the old peer had sent is gone.
            (Make::External, _) if s.r#type != libc::SOCK_DGRAM as u32 => {}
            _ if !s.queue.is_empty() => send_to_name(s, &fds, &sockets)?,
            _ => {}
        }
    }
    drop(closing);
    let index: HashMap<u64, usize> = sockets
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (s.ino, i))
        .collect();
    for (i, (_, s)) in sockets.iter().enumerate() {
        if let (Make::Alone, Some(&j)) = (plan[i], index.get(&s.peer_ino)) {
            connect(&fds[i], &sockets[j].1.name)?;
        }
        if plan[i] == Make::External {
            // Without waiting: a listener outside whose backlog is full
            // fails the restore rather than holding it.
            set_nonblocking(&fds[i])?;
            connect(&fds[i], &s.external_peer)?;
        }
    }
    for (fd, (_, s)) in fds.iter().zip(&sockets) {
        finish(fd, s)?;
    }
    Ok(sockets.iter().map(|(id, _)| *id).zip(fds).collect())
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    // SAFETY: fcntl on our own descriptor.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    check(ret as i64, "setting a unix socket's flags")?;
    Ok(())
}

/// Restore side: refuses a checkpoint with sockets connected outside the
/// tree unless `external` (`--external-unix`) allows connecting them again;
/// warns, naming pid and fd, of each stream or seqpacket socket that gets a
/// new connection. `fds` are each process's descriptors.
pub fn check_external<'a>(
    table: &pb::FileTable,
    fds: impl Iterator<Item = (i32, &'a [pb::Fd])>,
    external: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let outside: HashMap<u32, &pb::UnixSocket> = sockets_of(&table.files)
        .into_iter()
        .filter(|(_, s)| !s.external_peer.is_empty())
        .collect();
    let mut seen = HashSet::new();
    for (pid, fd) in fds.flat_map(|(pid, fds)| fds.iter().map(move |f| (pid, f))) {
        let Some(s) = outside.get(&fd.file_id) else {
            continue;
        };
        let peer = show_name(&s.external_peer);
        if !external {
            return Err(Error::Preflight(format!(
                "process {pid}: fd {} is a unix socket connected to {peer} outside the tree; \
                 restore with --external-unix to connect it there again",
                fd.fd
            )));
        }
        if s.r#type != libc::SOCK_DGRAM as u32 && seen.insert(fd.file_id) {
            let lost: usize = s.queue.iter().map(Vec::len).sum();
            warnings.push(format!(
                "process {pid}: fd {} (unix {} socket) is a new connection to {peer}; \
                 what the old peer had sent and it had not read ({lost} bytes) is lost",
                fd.fd,
                type_name(s.r#type)
            ));
        }
    }
    Ok(())
}

/// SO_SNDBUF and SO_RCVBUF, as saved (the kernel doubles what it is given;
/// the forcing variants pass over the sysctl limits when rcr may).
fn set_buffers(fd: &OwnedFd, s: &pb::UnixSocket) -> Result<()> {
    for (force, plain, v) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, s.sndbuf),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, s.rcvbuf),
    ] {
        set_buffer(fd, force, plain, v).map_err(|e| {
            Error::Preflight(format!("setting a unix socket's buffer size to {v}: {e}"))
        })?;
    }
    Ok(())
}

/// Sets one buffer size `v` as getsockopt gave it (the kernel doubles what
/// it is given), with `force` when rcr may pass over the sysctl limits.
pub(crate) fn set_buffer(fd: &OwnedFd, force: i32, plain: i32, v: u32) -> std::io::Result<()> {
    let half = (v / 2) as i32;
    set_opt(fd, libc::SOL_SOCKET, force, half)
        .or_else(|_| set_opt(fd, libc::SOL_SOCKET, plain, half))
}

/// What comes after the queue: a path removed since bind removed again,
/// the socket file's mode, SO_PASSCRED (set before, it would name the
/// sender of the requeued data), the peek offset, shutdown, O_NONBLOCK.
fn finish(fd: &OwnedFd, s: &pb::UnixSocket) -> Result<()> {
    if binds(s) && is_path(&s.name) {
        let path = Path::new(std::ffi::OsStr::from_bytes(&s.name));
        let done = if s.name_unlinked {
            std::fs::remove_file(path)
        } else {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(s.name_mode))
        };
        done.map_err(|e| Error::io(path, e))?;
    }
    let opt_err = |what: &str, e: std::io::Error| {
        Error::Preflight(format!("setting {what} on a unix socket: {e}"))
    };
    if s.passcred {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
            .map_err(|e| opt_err("SO_PASSCRED", e))?;
    }
    if s.peek_off >= 0 {
        set_opt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, s.peek_off)
            .map_err(|e| opt_err("SO_PEEK_OFF", e))?;
    }
    let how = match s.shutdown & 3 {
        1 => Some(libc::SHUT_RD),
        2 => Some(libc::SHUT_WR),
        3 => Some(libc::SHUT_RDWR),
        _ => None,
    };
    if let Some(how) = how {
        // SAFETY: shutdown of our own socket.
        check(
            unsafe { libc::shutdown(fd.as_raw_fd(), how) } as i64,
            "shutdown of a unix socket",
        )?;
    }
    // SAFETY: fcntl on our own descriptor.
    let ret = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            s.flags as i32 & libc::O_NONBLOCK,
        )
    };
    check(ret as i64, "setting a unix socket's flags")?;
    Ok(())
}

/// The restored sockets of a checkpoint, made on first use.
#[derive(Default)]
pub struct Made {
    made: Option<HashMap<u32, OwnedFd>>,
}

impl Made {
    /// rcr's descriptor of socket file `id`, which only one file id names.
    pub fn take(&mut self, table: &pb::FileTable, id: u32) -> Result<OwnedFd> {
        if self.made.is_none() {
            self.made = Some(make_all(table)?);
        }
        let made = self.made.as_mut().expect("just made");
        Ok(made.remove(&id).expect("every socket of the table is made"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(ino: u64, peer: u64, state: u8, kind: i32) -> pb::UnixSocket {
        pb::UnixSocket {
            ino,
            peer_ino: peer,
            state: state as u32,
            r#type: kind as u32,
            ..Default::default()
        }
    }

    #[test]
    fn plans_pairs_closed_peers_and_lone_sockets() {
        let a = sock(1, 2, STATE_CONNECTED, libc::SOCK_STREAM);
        let b = sock(2, 1, STATE_CONNECTED, libc::SOCK_STREAM);
        let mut orphan = sock(3, 0, STATE_CONNECTED, libc::SOCK_SEQPACKET);
        orphan.peer_closed = true;
        orphan.queue = vec![b"x".to_vec()];
        // A datagram socket someone connected to shows as connected too.
        let mut server = sock(4, 0, STATE_CONNECTED, libc::SOCK_DGRAM);
        server.name = b"\0srv".to_vec();
        server.queue = vec![b"hello".to_vec()];
        let client = sock(5, 4, STATE_CONNECTED, libc::SOCK_DGRAM);
        let all = [(1, &a), (2, &b), (3, &orphan), (4, &server), (5, &client)];
        assert_eq!(
            plan(&all).unwrap(),
            vec![
                Make::Pair(1),
                Make::Pair(0),
                Make::PeerClosed,
                Make::Alone,
                Make::Alone
            ]
        );
        let mut lonely = sock(6, 0, 7, libc::SOCK_DGRAM);
        lonely.queue = vec![vec![]];
        assert_eq!(plan(&[(6, &lonely)]).unwrap_err().0, 6);
        let to_unnamed = sock(7, 5, STATE_CONNECTED, libc::SOCK_DGRAM);
        assert_eq!(plan(&[(5, &client), (7, &to_unnamed)]).unwrap_err().0, 7);
        // Connected outside: a stream's queue is dropped, an unbound
        // datagram socket's cannot be sent again.
        let mut outside = sock(8, 99, STATE_CONNECTED, libc::SOCK_STREAM);
        outside.external_peer = b"/run/listener".to_vec();
        outside.queue = vec![b"lost".to_vec()];
        assert_eq!(plan(&[(8, &outside)]).unwrap(), vec![Make::External]);
        outside.r#type = libc::SOCK_DGRAM as u32;
        assert_eq!(plan(&[(8, &outside)]).unwrap_err().0, 8);
    }

    #[test]
    fn names_are_shown_and_addressed() {
        assert_eq!(show_name(b"\0abc"), "@abc");
        assert_eq!(show_name(b"/tmp/s"), "/tmp/s");
        let (_, len) = address(b"/tmp/s").unwrap();
        assert_eq!(len as usize, 2 + 6 + 1);
        let (_, len) = address(b"\0ab").unwrap();
        assert_eq!(len as usize, 2 + 3);
        assert!(address(&[b'a'; 200]).is_err());
    }

    #[test]
    fn peeking_keeps_the_queue_and_its_boundaries() {
        for kind in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            let (a, b) = socketpair(kind as u32).unwrap();
            for m in [&b"one"[..], b"", b"three"] {
                send_queue(&a, None, kind as u32, &[m.to_vec()]).unwrap();
            }
            let (got, senders) = peek_queue(&b, kind, -1).unwrap();
            assert!(senders.is_empty(), "a socketpair's peer is unnamed");
            let want: Vec<Vec<u8>> = if kind == libc::SOCK_STREAM {
                vec![b"onethree".to_vec()]
            } else {
                vec![b"one".to_vec(), vec![], b"three".to_vec()]
            };
            assert_eq!(got, want, "{}", type_name(kind as u32));
            assert_eq!(
                get_opt(&b, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
                -1
            );
            let mut buf = [0u8; 16];
            let n = nix::unistd::read(&b, &mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                if kind == libc::SOCK_STREAM {
                    &b"onethree"[..]
                } else {
                    b"one"
                }
            );
        }
    }

    #[test]
    fn descriptors_in_flight_are_refused() {
        let (a, b) = socketpair(libc::SOCK_DGRAM as u32).unwrap();
        let fds = [a.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"x")],
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let err = peek_queue(&b, libc::SOCK_DGRAM, -1).unwrap_err();
        assert!(err.contains("SCM_RIGHTS"), "{err}");
    }
}
