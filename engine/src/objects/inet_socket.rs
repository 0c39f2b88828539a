//! TCP and UDP sockets of families AF_INET and AF_INET6, dump and restore
//! side by side.
//!
//! rcr takes the socket itself with `pidfd_getfd` (`unix_socket::examine`)
//! and asks it everything: type and protocol, the TCP state and accept
//! queue (`TCP_INFO`: for a listener, `tcpi_unacked` is the accept queue
//! and `tcpi_sacked` the backlog), bound and connected addresses, integer
//! options and buffer sizes.
//!
//! Restore makes a new socket in rcr, sets its options first (SO_REUSEADDR,
//! SO_REUSEPORT and IPV6_V6ONLY only count before bind), binds it to the
//! saved address and port, then listens with the saved backlog or connects
//! a UDP socket to its peer. A buffer size is set only where it differs from
//! a new socket's (setting it turns the kernel's auto-tuning off).
//!
//! Refused at dump, by name: other protocols (raw, ICMP, SCTP...), TCP
//! sockets in any state but closed and listening (an established
//! connection names both ends), a listener with connections not yet
//! accepted, a UDP socket with datagrams queued (their senders' addresses
//! could not be given back), a socket of another network namespace.

use super::files::{check, owned};
use super::unix_socket::{family_name, get_opt, set_buffer, set_opt};
use crate::error::{Error, Result};
use nix::sys::socket::{self as sock, MsgFlags, SockaddrStorage};
use rcr_images::pb;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

/// Which sockets an option applies to.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    All,
    Tcp,
    V6,
}

/// The integer options kept, by name.
const OPTIONS: [(&str, i32, i32, Only); 8] = [
    (
        "SO_REUSEADDR",
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        Only::All,
    ),
    (
        "SO_REUSEPORT",
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        Only::All,
    ),
    (
        "SO_KEEPALIVE",
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        Only::All,
    ),
    (
        "SO_BROADCAST",
        libc::SOL_SOCKET,
        libc::SO_BROADCAST,
        Only::All,
    ),
    (
        "TCP_NODELAY",
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        Only::Tcp,
    ),
    (
        "TCP_KEEPIDLE",
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        Only::Tcp,
    ),
    (
        "TCP_KEEPINTVL",
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        Only::Tcp,
    ),
    (
        "IPV6_V6ONLY",
        libc::IPPROTO_IPV6,
        libc::IPV6_V6ONLY,
        Only::V6,
    ),
];

fn applies(only: Only, family: i32, kind: i32) -> bool {
    match only {
        Only::All => true,
        Only::Tcp => kind == libc::SOCK_STREAM,
        Only::V6 => family == libc::AF_INET6,
    }
}

fn proto_name(kind: u32) -> &'static str {
    if kind as i32 == libc::SOCK_STREAM {
        "TCP"
    } else {
        "UDP"
    }
}

fn state_name(state: u32) -> String {
    const NAMES: [&str; 12] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    match NAMES.get((state as usize).wrapping_sub(1)) {
        Some(name) => (*name).into(),
        None => format!("state {state}"),
    }
}

/// The address as saved: empty for an unbound socket (port 0).
fn addr_text(a: Option<SockaddrStorage>) -> String {
    let a = a.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6)))
    });
    match a {
        Some(a) if a.port() != 0 => a.to_string(),
        _ => String::new(),
    }
}

/// `TCP_INFO` of a TCP socket.
fn tcp_info(sock: &OwnedFd) -> std::io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zeroed is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

fn sys_err(pid: i32, what: &'static str, e: std::io::Error) -> Error {
    Error::sys(
        pid,
        what,
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    )
}

/// Reads socket `sock` of family `family`, fd `fd` of `pid`.
pub fn dump(pid: i32, fd: i32, sock: &OwnedFd, family: i32, flags: u32) -> Result<pb::InetSocket> {
    let fam = family_name(family);
    let int = |level: i32, name: i32, what: &'static str| {
        get_opt(sock, level, name).map_err(|e| sys_err(pid, what, e))
    };
    let kind = int(libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)")?;
    let protocol = int(
        libc::SOL_SOCKET,
        libc::SO_PROTOCOL,
        "getsockopt(SO_PROTOCOL)",
    )?;
    let refuse = |what: String| Error::Unsupported {
        pid,
        what: format!("fd {fd}: an {fam} {what}"),
    };
    match (kind, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {}
        _ => {
            return Err(refuse(format!(
                "socket of type {kind} and protocol {protocol} (only TCP and UDP are)"
            )))
        }
    }
    let netns = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    if netns(&format!("/proc/{pid}/ns/net")) != netns("/proc/self/ns/net") {
        return Err(refuse(
            "socket of another network namespace than rcr's".into(),
        ));
    }
    let raw = sock.as_raw_fd();
    let mut s = pb::InetSocket {
        family: family as u32,
        r#type: kind as u32,
        local: addr_text(sock::getsockname(raw).ok()),
        peer: addr_text(sock::getpeername(raw).ok()),
        flags,
        sndbuf: int(libc::SOL_SOCKET, libc::SO_SNDBUF, "getsockopt(SO_SNDBUF)")? as u32,
        rcvbuf: int(libc::SOL_SOCKET, libc::SO_RCVBUF, "getsockopt(SO_RCVBUF)")? as u32,
        ..Default::default()
    };
    let what = format!("{} socket {}", proto_name(s.r#type), show_local(&s.local));
    if kind == libc::SOCK_STREAM {
        let info = tcp_info(sock).map_err(|e| sys_err(pid, "getsockopt(TCP_INFO)", e))?;
        s.state = u32::from(info.tcpi_state);
        match s.state {
            TCP_LISTEN if info.tcpi_unacked > 0 => {
                return Err(refuse(format!(
                    "{what} listening with {} connection(s) not yet accepted",
                    info.tcpi_unacked
                )))
            }
            TCP_LISTEN => s.backlog = info.tcpi_sacked,
            TCP_CLOSE => s.peer.clear(),
            TCP_ESTABLISHED => {
                return Err(refuse(format!(
                    "established TCP connection {} -> {} (restoring it with TCP_REPAIR, \
                     to come as --tcp-established, is not implemented)",
                    s.local, s.peer
                )))
            }
            other => {
                return Err(refuse(format!(
                    "{what} in TCP state {} (peer {})",
                    state_name(other),
                    show_local(&s.peer)
                )))
            }
        }
    } else {
        // A zero-length peek finds even an empty datagram, and takes nothing.
        let queued = sock::recv(raw, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
        if queued.is_ok() {
            return Err(refuse(format!(
                "{what} with datagrams queued (their senders' addresses could not be given back)"
            )));
        }
    }
    for (name, level, opt, only) in OPTIONS {
        if applies(only, family, kind) {
            let value = get_opt(sock, level, opt).map_err(|e| sys_err(pid, "getsockopt", e))?;
            s.options.push(pb::InetOption {
                name: name.into(),
                value,
            });
        }
    }
    Ok(s)
}

fn show_local(addr: &str) -> &str {
    if addr.is_empty() {
        "unbound"
    } else {
        addr
    }
}

/// Refuses, before anything is made, a saved socket rcr cannot make:
/// another family, type or state, an address that does not parse, an
/// option it does not know.
pub fn check_saved(s: &pb::InetSocket) -> std::result::Result<(), String> {
    if ![libc::AF_INET, libc::AF_INET6].contains(&(s.family as i32))
        || ![libc::SOCK_STREAM, libc::SOCK_DGRAM].contains(&(s.r#type as i32))
    {
        return Err(format!(
            "inet socket of family {} and type {}",
            s.family, s.r#type
        ));
    }
    if s.r#type as i32 == libc::SOCK_STREAM && ![TCP_CLOSE, TCP_LISTEN].contains(&s.state) {
        return Err(format!("TCP socket in state {}", state_name(s.state)));
    }
    for a in [&s.local, &s.peer].into_iter().filter(|a| !a.is_empty()) {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("inet socket address {a:?}: {e}"))?;
    }
    match s
        .options
        .iter()
        .find(|o| !OPTIONS.iter().any(|k| k.0 == o.name))
    {
        Some(o) => Err(format!("inet socket option {:?} unknown", o.name)),
        None => Ok(()),
    }
}

fn new_socket(s: &pb::InetSocket) -> Result<OwnedFd> {
    // SAFETY: socket() takes plain integers.
    let raw = unsafe { libc::socket(s.family as i32, s.r#type as i32 | libc::SOCK_CLOEXEC, 0) };
    owned(raw, &format!("socket({})", family_name(s.family as i32)))
}

/// Makes the socket `s` describes, bound, listening or connected as saved.
pub fn restore(s: &pb::InetSocket) -> Result<OwnedFd> {
    let what = format!("{} socket {}", proto_name(s.r#type), show_local(&s.local));
    let opt_err =
        |name: &str, e: std::io::Error| Error::Preflight(format!("{what}: setting {name}: {e}"));
    let fd = new_socket(s)?;
    let fresh = new_socket(s)?;
    for (force, plain, v, name) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, s.sndbuf, "SO_SNDBUF"),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, s.rcvbuf, "SO_RCVBUF"),
    ] {
        if get_opt(&fresh, libc::SOL_SOCKET, plain).ok() != Some(v as i32) {
            set_buffer(&fd, force, plain, v).map_err(|e| opt_err(name, e))?;
        }
    }
    let mut reuse = 0;
    for o in &s.options {
        let (_, level, opt, _) = OPTIONS
            .iter()
            .find(|k| k.0 == o.name)
            .expect("checked at load");
        set_opt(&fd, *level, *opt, o.value).map_err(|e| opt_err(&o.name, e))?;
        if *opt == libc::SO_REUSEADDR {
            reuse = o.value;
        }
    }
    let parse = |a: &str| a.parse::<SocketAddr>().expect("checked at load");
    if !s.local.is_empty() {
        let addr = SockaddrStorage::from(parse(&s.local));
        // Connections the task closed may linger in TIME_WAIT on the port:
        // they do not keep a TCP socket from binding to it again.
        let tcp = s.r#type as i32 == libc::SOCK_STREAM;
        if tcp {
            set_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                .map_err(|e| opt_err("SO_REUSEADDR", e))?;
        }
        sock::bind(fd.as_raw_fd(), &addr)
            .map_err(|e| Error::Preflight(format!("binding {what}: {e}")))?;
        if tcp {
            set_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse)
                .map_err(|e| opt_err("SO_REUSEADDR", e))?;
        }
    }
    if s.state == TCP_LISTEN {
        // SAFETY: listen on our own socket.
        let ret = unsafe { libc::listen(fd.as_raw_fd(), s.backlog as i32) };
        check(ret as i64, &format!("listen on {what}"))?;
    }
    if !s.peer.is_empty() {
        sock::connect(fd.as_raw_fd(), &SockaddrStorage::from(parse(&s.peer)))
            .map_err(|e| Error::Preflight(format!("connecting {what} to {}: {e}", s.peer)))?;
    }
    // SAFETY: fcntl on our own descriptor.
    let ret = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            s.flags as i32 & libc::O_NONBLOCK,
        )
    };
    check(ret as i64, &format!("setting the flags of {what}"))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dumps a socket of rcr's own (pid: ours) and makes it again.
    fn roundtrip(fd: &OwnedFd, family: i32) -> pb::InetSocket {
        let s = dump(
            std::process::id() as i32,
            3,
            fd,
            family,
            libc::O_RDWR as u32,
        )
        .unwrap();
        check_saved(&s).unwrap();
        s
    }

    #[test]
    fn a_listener_comes_back_listening_with_its_options() {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let fd = OwnedFd::from(l);
        set_opt(&fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        let s = roundtrip(&fd, libc::AF_INET6);
        assert_eq!(s.state, TCP_LISTEN);
        drop(fd);
        let again = restore(&s).unwrap();
        assert_eq!(
            addr_text(sock::getsockname(again.as_raw_fd()).ok()),
            s.local
        );
        assert_eq!(
            get_opt(&again, libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(),
            1
        );
        let l = std::net::TcpListener::from(again);
        let c = std::net::TcpStream::connect(&s.local).unwrap();
        let (a, _) = l.accept().unwrap();
        assert_eq!(a.peer_addr().unwrap(), c.local_addr().unwrap());
    }

    #[test]
    fn refusals_name_what_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let lfd = OwnedFd::from(l.try_clone().unwrap());
        let pid = std::process::id() as i32;
        let err = dump(pid, 3, &lfd, libc::AF_INET, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not yet accepted"), "{err}");
        let (a, _) = l.accept().unwrap();
        let err = dump(pid, 4, &OwnedFd::from(a), libc::AF_INET, 0)
            .unwrap_err()
            .to_string();
        let local = c.peer_addr().unwrap().to_string();
        assert!(err.contains("established") && err.contains(&local), "{err}");
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        u.send_to(b"", u.local_addr().unwrap()).unwrap();
        let err = dump(pid, 5, &OwnedFd::from(u), libc::AF_INET, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("datagrams queued"), "{err}");
    }

    #[test]
    fn bad_saved_sockets_are_refused_at_load() {
        let mut s = pb::InetSocket {
            family: libc::AF_INET as u32,
            r#type: libc::SOCK_DGRAM as u32,
            local: "127.0.0.1:9".into(),
            ..Default::default()
        };
        assert!(check_saved(&s).is_ok());
        s.peer = "nowhere".into();
        assert!(check_saved(&s).is_err());
        s.peer.clear();
        s.options.push(pb::InetOption {
            name: "SO_NOSUCH".into(),
            value: 1,
        });
        assert!(check_saved(&s).is_err());
        assert_eq!(state_name(TCP_ESTABLISHED), "ESTABLISHED");
    }
}
