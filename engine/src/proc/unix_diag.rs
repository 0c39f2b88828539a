//! Unix sockets as the kernel's `NETLINK_SOCK_DIAG` reports them.
//!
//! `/proc/net/unix` lists only inode, type, state and name; it does not say
//! who a socket is connected to nor which connections wait on a listener.
//! sock_diag does, for every unix socket of rcr's network namespace in one
//! dump: the peer's inode (`UNIX_DIAG_PEER`), the name and the bound file
//! (`UNIX_DIAG_NAME`, `UNIX_DIAG_VFS`), the queue lengths and the backlog
//! (`UNIX_DIAG_RQLEN`), the inodes of not yet accepted connections
//! (`UNIX_DIAG_ICONS`) and the shutdown state (`UNIX_DIAG_SHUTDOWN`).
//! The parser is pure and works on the bytes the kernel sends.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
/// `struct unix_diag_msg`.
const DIAG_MSG: usize = 16;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// The kernel's `sk_state` of a listening socket.
pub const STATE_LISTEN: u8 = 10;
/// The `sk_state` of a connected socket.
pub const STATE_CONNECTED: u8 = 1;

/// One unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub kind: u8,
    pub state: u8,
    /// sun_path as bound, without padding; starts with NUL when abstract.
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the socket file a path name created.
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode; 0 when the peer is closed.
    pub peer: Option<u32>,
    /// Inodes of connections waiting to be accepted (listeners).
    pub icons: Vec<u32>,
    /// Listener: waiting connections and backlog; others: bytes queued to
    /// read and bytes sent not yet read by the peer.
    pub rqlen: (u32, u32),
    /// Bit 0: receive side shut, bit 1: send side shut.
    pub shutdown: u8,
}

/// Asks the kernel for every unix socket of rcr's network namespace.
pub fn read_all() -> std::io::Result<HashMap<u32, UnixDiag>> {
    // SAFETY: socket() takes plain integers; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket() just gave us.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let req = request();
    // SAFETY: sends from a buffer we own to the kernel (the default
    // destination of a netlink socket).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut all = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: receives into a buffer we own, of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (got, done) = parse_batch(&buf[..n as usize])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        all.extend(got.into_iter().map(|d| (d.ino, d)));
        if done {
            return Ok(all);
        }
    }
}

/// The dump request: `nlmsghdr` and `unix_diag_req` for every state.
fn request() -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + 24);
    m.extend_from_slice(&((NLMSG_HDR + 24) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    m.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    m.extend_from_slice(&show.to_ne_bytes());
    m.extend_from_slice(&[0xff; 8]); // no cookie
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses one datagram of the kernel's answer: its sockets, and whether
/// it ended the dump.
pub fn parse_batch(mut b: &[u8]) -> Result<(Vec<UnixDiag>, bool), String> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        let kind = u16_at(b, 4).unwrap_or(0);
        if len < NLMSG_HDR || len > b.len() {
            return Err(format!("netlink message of {len} bytes in {}", b.len()));
        }
        let body = &b[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).map_or(0, |e| -(e as i32));
                return Err(format!(
                    "sock_diag refused the request: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_msg(body)?),
            _ => {}
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok((out, false))
}

/// `unix_diag_msg` and its attributes.
fn parse_msg(body: &[u8]) -> Result<UnixDiag, String> {
    let bad = |what: &str| format!("short unix_diag message ({what})");
    if body.len() < DIAG_MSG {
        return Err(bad("header"));
    }
    let mut d = UnixDiag {
        kind: body[1],
        state: body[2],
        ino: u32_at(body, 4).ok_or_else(|| bad("inode"))?,
        ..Default::default()
    };
    let mut attrs = &body[DIAG_MSG..];
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0).unwrap_or(0) as usize;
        let kind = u16_at(attrs, 2).unwrap_or(0);
        if len < 4 || len > attrs.len() {
            return Err(bad("attribute"));
        }
        let v = &attrs[4..len];
        let word = |i: usize| u32_at(v, 4 * i).ok_or_else(|| bad("attribute value"));
        match kind {
            UNIX_DIAG_NAME => d.name = Some(v.to_vec()),
            UNIX_DIAG_VFS => d.vfs = Some((word(0)?, word(1)?)),
            UNIX_DIAG_PEER => d.peer = Some(word(0)?),
            UNIX_DIAG_ICONS => {
                d.icons = v
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
                    .collect()
            }
            UNIX_DIAG_RQLEN => d.rqlen = (word(0)?, word(1)?),
            UNIX_DIAG_SHUTDOWN => d.shutdown = *v.first().ok_or_else(|| bad("shutdown"))?,
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(v);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn parses_sockets_and_end() {
        let mut body = vec![libc::AF_UNIX as u8, 1, STATE_LISTEN, 0];
        body.extend_from_slice(&77u32.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"\0abs"));
        body.extend(attr(UNIX_DIAG_ICONS, &[5, 0, 0, 0, 6, 0, 0, 0]));
        body.extend(attr(UNIX_DIAG_RQLEN, &[2, 0, 0, 0, 128, 0, 0, 0]));
        body.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        body.extend(attr(UNIX_DIAG_PEER, &[9, 0, 0, 0]));
        let mut batch = message(SOCK_DIAG_BY_FAMILY, &body);
        batch.extend(message(NLMSG_DONE, &[0; 4]));
        let (got, done) = parse_batch(&batch).unwrap();
        assert!(done);
        assert_eq!(
            got,
            vec![UnixDiag {
                ino: 77,
                kind: 1,
                state: STATE_LISTEN,
                name: Some(b"\0abs".to_vec()),
                vfs: None,
                peer: Some(9),
                icons: vec![5, 6],
                rqlen: (2, 128),
                shutdown: 3,
            }]
        );
    }

    #[test]
    fn errors_and_truncation_are_reported() {
        let err = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(parse_batch(&err).unwrap_err().contains("not permitted"));
        let mut short = message(SOCK_DIAG_BY_FAMILY, &[0; 4]);
        assert!(parse_batch(&short).is_err());
        short.truncate(10);
        assert_eq!(parse_batch(&short).unwrap(), (vec![], false));
    }

    #[test]
    fn sees_a_socketpair_of_its_own() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        nix::unistd::write(&a, b"four").unwrap();
        let ino = |fd: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .ino() as u32
        };
        let all = read_all().unwrap();
        let (da, db) = (&all[&ino(&a)], &all[&ino(&b)]);
        assert_eq!(da.peer, Some(db.ino));
        assert_eq!(db.peer, Some(da.ino));
        assert_eq!(da.state, STATE_CONNECTED);
        assert_eq!(db.rqlen.0, 4);
    }
}
