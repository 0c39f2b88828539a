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
//! Established TCP connections, with `--tcp-established`, go through
//! TCP_REPAIR: at dump rcr puts the socket in repair mode and reads its
//! sequence numbers, both queues (a peek of each under repair), the
//! options agreed at the handshake and the window. The socket stays in
//! repair mode until the tree is killed, so that closing it sends nothing
//! to the peer (no FIN, no TIME_WAIT holding the addresses); a failed dump
//! or `--leave-running` turns repair off again without a window probe.
//! Restore makes the socket in repair mode, sets the sequence numbers,
//! binds and connects (which establishes it without a handshake), puts
//! the options, queues and window back, and turns repair off once every
//! socket of the checkpoint exists, so both ends of a connection inside
//! the tree are there before either sends. Each connection is locked
//! (`netlock`) before it is read, so that a peer outside the tree that
//! sends while the tree is down is not answered with a reset: its
//! segments are dropped until the restore removes the lock, then
//! retransmitted.
//!
//! Datagrams queued on a UDP socket are peeked one by one past a peek
//! offset (SO_PEEK_OFF, put back as the task had it), with their sender
//! and, when the task asked for it, their destination (IP_PKTINFO,
//! IPV6_RECVPKTINFO). Restore sends each again, in order, as a raw packet
//! (CAP_NET_RAW) from the sender's address and port, so that `recvfrom`
//! names the original sender even when its port is taken now; this is
//! done between bind and connect, since a connected socket would turn
//! away datagrams from others. An empty datagram the task had already
//! peeked at without reading is not seen (the kernel skips it at a peek
//! offset).
//!
//! Refused at dump, by name: other protocols (raw, ICMP, SCTP...), TCP
//! sockets in any state but closed, listening and established (an
//! established connection without `--tcp-established` names both ends),
//! a listener with connections not yet accepted, a socket of another
//! network namespace.

use super::files::{check, owned};
use super::netlock::canonical;
use super::netlock::Netlock;
use super::unix_socket::{family_name, get_opt, set_buffer, set_opt};
use crate::error::{Error, Result};
use nix::sys::socket::{self as sock, MsgFlags, SockaddrStorage};
use rcr_images::pb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

// TCP_REPAIR values and queues, TCP option codes, tcpi_options bits
// (<linux/tcp.h>, <net/tcp.h>).
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
// SO_MEMINFO: how many values, and where the receive queue's memory is
// (<linux/sock_diag.h>).
const SK_MEMINFO_VARS: usize = 9;
const SK_MEMINFO_RMEM_ALLOC: usize = 0;

/// `struct tcp_repair_window`.
#[repr(C)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// `struct tcp_repair_opt`.
#[repr(C)]
struct RepairOpt {
    code: u32,
    val: u32,
}

/// Plain C structs that socket options read and write whole.
trait Plain: Sized {}
impl Plain for libc::tcp_info {}
impl Plain for RepairWindow {}
impl Plain for RepairOpt {}
impl Plain for [u32; SK_MEMINFO_VARS] {}

/// Which sockets an option applies to.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    All,
    Tcp,
    V6,
    UdpV4,
    UdpV6,
}

/// The integer options kept, by name.
const OPTIONS: [(&str, i32, i32, Only); 10] = [
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
    (
        "IP_PKTINFO",
        libc::IPPROTO_IP,
        libc::IP_PKTINFO,
        Only::UdpV4,
    ),
    (
        "IPV6_RECVPKTINFO",
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVPKTINFO,
        Only::UdpV6,
    ),
];

fn applies(only: Only, family: i32, kind: i32) -> bool {
    match only {
        Only::All => true,
        Only::Tcp => kind == libc::SOCK_STREAM,
        Only::V6 => family == libc::AF_INET6,
        Only::UdpV4 => kind == libc::SOCK_DGRAM && family == libc::AF_INET,
        Only::UdpV6 => kind == libc::SOCK_DGRAM && family == libc::AF_INET6,
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

/// An option at `level` that is a plain C struct.
fn get_plain<T: Plain>(sock: &OwnedFd, level: i32, name: i32) -> std::io::Result<T> {
    // SAFETY: T is a plain C struct (Plain); all zeroes is a valid one.
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// Sets a TCP option made of plain C structs.
fn set_tcp<T: Plain>(sock: &OwnedFd, name: i32, v: &[T]) -> std::io::Result<()> {
    // SAFETY: setsockopt reads the slice's bytes, which we own.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            name,
            v.as_ptr().cast(),
            std::mem::size_of_val(v) as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes queued on `sock`: SIOCINQ (FIONREAD) or SIOCOUTQ (TIOCOUTQ).
fn queued(sock: &OwnedFd, request: libc::Ioctl) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: the ioctl writes one int we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut n) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sockets a dump left in repair mode, and the network lock holding
/// their peers' segments off. Closing one while it is sends nothing to the
/// peer: [`Repaired::close_silently`] once the tree is killed, which
/// leaves the lock for the restore to remove. Dropped otherwise (the dump
/// failed, or the tree runs on), it turns repair off again, without a
/// window probe, and removes the lock.
#[derive(Default)]
pub struct Repaired {
    held: Vec<OwnedFd>,
    lock: Netlock,
}

impl Repaired {
    /// The network lock's table, if any connection was taken.
    pub fn netlock(&self) -> Option<&str> {
        self.lock.table()
    }

    /// Locks every established TCP connection that processes `pids` hold,
    /// in a few nf_tables transactions, before any is read (each then
    /// finds its connection locked already).
    pub fn lock_all(&mut self, pids: &[i32]) -> Result<()> {
        let conns = established(pids);
        let pairs: Vec<_> = conns.iter().map(|&(_, l, p)| (l, p)).collect();
        self.lock.add_all(&pairs).map_err(|e| {
            let (pid, local, peer) = conns[0];
            Error::Unsupported {
                pid,
                what: format!(
                    "the tree's {} established TCP connections (the first {local} -> {peer}) \
                     cannot be locked with nf_tables (needs CAP_NET_ADMIN): {e}",
                    conns.len()
                ),
            }
        })
    }

    pub fn close_silently(mut self) {
        self.held.clear();
        self.lock = Netlock::default();
    }
}

impl Drop for Repaired {
    fn drop(&mut self) {
        for fd in &self.held {
            let _ = set_opt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                TCP_REPAIR_OFF_NO_WP,
            );
        }
        // A drop has no one to tell; a table left behind is named rcr_*.
        let _ = self.lock.remove();
    }
}

/// Locks the connection from `local` to `peer`, puts `sock` in repair
/// mode and reads the connection; on success the socket stays in repair
/// mode, held by `repaired`.
fn dump_stream(
    sock: &OwnedFd,
    info: &libc::tcp_info,
    (local, peer): (&str, &str),
    repaired: &mut Repaired,
) -> std::result::Result<pb::InetTcpStream, String> {
    let parse = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("({a}: {e})"));
    repaired
        .lock
        .add(parse(local)?, parse(peer)?)
        .map_err(|e| format!("cannot be locked with nf_tables (needs CAP_NET_ADMIN): {e}"))?;
    set_opt(sock, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON)
        .map_err(|e| format!("cannot be put in TCP_REPAIR mode (needs CAP_NET_ADMIN): {e}"))?;
    let got = read_stream(sock, info);
    let _ = set_opt(
        sock,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        TCP_NO_QUEUE,
    );
    match got.and_then(|t| Ok((t, sock.try_clone().map_err(|e| e.to_string())?))) {
        Ok((t, held)) => {
            repaired.held.push(held);
            Ok(t)
        }
        Err(e) => {
            let _ = set_opt(
                sock,
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                TCP_REPAIR_OFF_NO_WP,
            );
            Err(e)
        }
    }
}

/// The established TCP connections that processes `pids` hold, as (pid,
/// local, peer): their descriptors' socket inodes looked up in the
/// connection tables of rcr's network namespace (a socket of another is
/// refused when its descriptor is dumped). A descriptor that cannot be
/// read here is missed, and its connection locked alone when dumped.
fn established(pids: &[i32]) -> Vec<(i32, SocketAddr, SocketAddr)> {
    let mut owner = HashMap::new();
    for &pid in pids {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter();
        for fd in fds.flatten().flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let ino = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(ino) = ino {
                owner.entry(ino).or_insert(pid);
            }
        }
    }
    let mut conns = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let pid = f[9].parse::<u64>().ok().and_then(|i| owner.get(&i));
            if let (Some(&pid), Some(local), Some(peer)) = (pid, proc_addr(f[1]), proc_addr(f[2])) {
                conns.push((pid, local, peer));
            }
        }
    }
    conns
}

/// An address as /proc/net/tcp{,6} shows it: the address's 32-bit words
/// in hex, each as the host reads it, a colon and the port in hex.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?))
}

fn read_stream(
    sock: &OwnedFd,
    info: &libc::tcp_info,
) -> std::result::Result<pb::InetTcpStream, String> {
    let err =
        |what: &'static str| move |e: std::io::Error| format!("whose {what} cannot be read ({e})");
    if get_opt(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(err("SO_PEEK_OFF"))? >= 0 {
        return Err("with SO_PEEK_OFF set".into());
    }
    let mut t = pb::InetTcpStream::default();
    for (queue, request) in [
        (TCP_RECV_QUEUE, libc::FIONREAD),
        (TCP_SEND_QUEUE, libc::TIOCOUTQ),
    ] {
        let len = queued(sock, request).map_err(err("queue length"))?;
        set_opt(sock, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, queue)
            .map_err(err("TCP_REPAIR_QUEUE"))?;
        let seq = get_opt(sock, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)
            .map_err(err("TCP_QUEUE_SEQ"))? as u32;
        let mut data = vec![0u8; len];
        if len > 0 {
            let n = sock::recv(
                sock.as_raw_fd(),
                &mut data,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(|e| format!("whose queue cannot be read ({e})"))?;
            if n != len {
                return Err(format!("whose queue gave {n} of its {len} bytes"));
            }
        }
        let first = seq.wrapping_sub(len as u32);
        if queue == TCP_RECV_QUEUE {
            (t.recv_seq, t.recv_queue) = (first, data);
        } else {
            (t.send_seq, t.send_queue) = (first, data);
        }
    }
    t.mss = get_opt(sock, libc::IPPROTO_TCP, libc::TCP_MAXSEG).map_err(err("TCP_MAXSEG"))? as u32;
    t.timestamp =
        get_opt(sock, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP).map_err(err("TCP_TIMESTAMP"))? as u32;
    t.sack = info.tcpi_options & TCPI_OPT_SACK != 0;
    t.timestamps = info.tcpi_options & TCPI_OPT_TIMESTAMPS != 0;
    if info.tcpi_options & TCPI_OPT_WSCALE != 0 {
        t.snd_wscale = u32::from(info.tcpi_snd_rcv_wscale & 0xf);
        t.rcv_wscale = u32::from(info.tcpi_snd_rcv_wscale >> 4);
    }
    let w: RepairWindow = get_plain(sock, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)
        .map_err(err("TCP_REPAIR_WINDOW"))?;
    (t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup) =
        (w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup);
    Ok(t)
}

fn sys_err(pid: i32, what: &'static str, e: std::io::Error) -> Error {
    Error::sys(
        pid,
        what,
        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    )
}

/// Reads socket `sock` of family `family`, fd `fd` of `pid`. An
/// established TCP connection is taken in repair mode when `repaired` is
/// given (`--tcp-established`), refused otherwise.
pub fn dump(
    pid: i32,
    fd: i32,
    sock: &OwnedFd,
    family: i32,
    flags: u32,
    repaired: Option<&mut Repaired>,
) -> Result<pb::InetSocket> {
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
    // Before repair mode, which shows SO_REUSEADDR as forced.
    for (name, level, opt, only) in OPTIONS {
        if applies(only, family, kind) {
            let value = get_opt(sock, level, opt).map_err(|e| sys_err(pid, "getsockopt", e))?;
            s.options.push(pb::InetOption {
                name: name.into(),
                value,
            });
        }
    }
    let what = format!("{} socket {}", proto_name(s.r#type), show_local(&s.local));
    if kind == libc::SOCK_STREAM {
        let info: libc::tcp_info = get_plain(sock, libc::IPPROTO_TCP, libc::TCP_INFO)
            .map_err(|e| sys_err(pid, "getsockopt(TCP_INFO)", e))?;
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
                let connection = format!("established TCP connection {} -> {}", s.local, s.peer);
                let Some(repaired) = repaired else {
                    return Err(refuse(format!(
                        "{connection} (dump with --tcp-established to take it with TCP_REPAIR)"
                    )));
                };
                let stream = dump_stream(sock, &info, (&s.local, &s.peer), repaired)
                    .map_err(|e| refuse(format!("{connection} {e}")))?;
                s.stream = Some(stream);
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
        s.datagrams = queued_datagrams(sock).map_err(|e| {
            refuse(format!(
                "{what} whose queued datagrams cannot be read ({e})"
            ))
        })?;
    }
    Ok(s)
}

/// The datagrams queued on UDP socket `sock`, oldest first. Each is
/// peeked at a peek offset moved past the ones before; the task's own
/// offset is put back after, so it still finds them all.
fn queued_datagrams(sock: &OwnedFd) -> std::io::Result<Vec<pb::InetDatagram>> {
    let before = get_opt(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    set_opt(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let got = peek_datagrams(sock);
    set_opt(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF, before)?;
    got
}

fn peek_datagrams(sock: &OwnedFd) -> std::io::Result<Vec<pb::InetDatagram>> {
    use sock::ControlMessageOwned as Cmsg;
    // The largest UDP payload.
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        let mut space = nix::cmsg_space!(libc::in6_pktinfo);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        let msg = match sock::recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            flags,
        ) {
            Err(nix::errno::Errno::EAGAIN) => return Ok(out),
            Err(e) => return Err(e.into()),
            Ok(msg) => msg,
        };
        let to = msg.cmsgs()?.find_map(|c| match c {
            Cmsg::Ipv4PacketInfo(i) => {
                Some(std::net::Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr)).to_string())
            }
            Cmsg::Ipv6PacketInfo(i) => {
                Some(std::net::Ipv6Addr::from(i.ipi6_addr.s6_addr).to_string())
            }
            _ => None,
        });
        let (len, from) = (msg.bytes.min(1 << 16), addr_text(msg.address));
        out.push(pb::InetDatagram {
            from,
            to: to.unwrap_or_default(),
            data: buf[..len].to_vec(),
        });
    }
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
    let established = s.state == TCP_ESTABLISHED && s.stream.is_some() && !s.peer.is_empty();
    if s.r#type as i32 == libc::SOCK_STREAM
        && !established
        && ![TCP_CLOSE, TCP_LISTEN].contains(&s.state)
    {
        return Err(format!("TCP socket in state {}", state_name(s.state)));
    }
    for a in [&s.local, &s.peer].into_iter().filter(|a| !a.is_empty()) {
        a.parse::<SocketAddr>()
            .map_err(|e| format!("inet socket address {a:?}: {e}"))?;
    }
    if !s.datagrams.is_empty() && s.local.is_empty() {
        return Err("unbound UDP socket with datagrams queued".into());
    }
    for d in &s.datagrams {
        d.from
            .parse::<SocketAddr>()
            .map_err(|e| format!("queued datagram's sender {:?}: {e}", d.from))?;
        if !d.to.is_empty() {
            d.to.parse::<std::net::IpAddr>()
                .map_err(|e| format!("queued datagram's destination {:?}: {e}", d.to))?;
        }
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

/// Makes the socket `s` describes, bound, listening or connected as saved;
/// an established connection comes back in repair mode, for [`release`].
pub fn restore(s: &pb::InetSocket) -> Result<OwnedFd> {
    let what = format!("{} socket {}", proto_name(s.r#type), show_local(&s.local));
    let fd = new_socket(s)?;
    let fresh = new_socket(s)?;
    for (force, plain, v, name) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, s.sndbuf, "SO_SNDBUF"),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, s.rcvbuf, "SO_RCVBUF"),
    ] {
        if get_opt(&fresh, libc::SOL_SOCKET, plain).ok() != Some(v as i32) {
            set_buffer(&fd, force, plain, v).map_err(|e| opt_err(&what, name, e))?;
        }
    }
    for o in &s.options {
        let (_, level, opt, _) = OPTIONS
            .iter()
            .find(|k| k.0 == o.name)
            .expect("checked at load");
        set_opt(&fd, *level, *opt, o.value).map_err(|e| opt_err(&what, &o.name, e))?;
    }
    match &s.stream {
        Some(t) => repair(&fd, s, t, &what)?,
        None => attach(&fd, s, &what)?,
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

fn opt_err(what: &str, name: &str, e: std::io::Error) -> Error {
    Error::Preflight(format!("{what}: setting {name}: {e}"))
}

/// The saved SO_REUSEADDR.
fn reuse(s: &pb::InetSocket) -> i32 {
    s.options
        .iter()
        .find(|o| o.name == "SO_REUSEADDR")
        .map_or(0, |o| o.value)
}

/// Binds, listens and connects `fd` as saved.
fn attach(fd: &OwnedFd, s: &pb::InetSocket, what: &str) -> Result<()> {
    let parse = |a: &str| SockaddrStorage::from(a.parse::<SocketAddr>().expect("checked at load"));
    // Connections the task closed may linger in TIME_WAIT on the port:
    // they do not keep a TCP socket from binding to it again. (A socket
    // in repair mode may bind anywhere already.)
    let force = s.r#type as i32 == libc::SOCK_STREAM && s.stream.is_none();
    if !s.local.is_empty() {
        if force {
            set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                .map_err(|e| opt_err(what, "SO_REUSEADDR", e))?;
        }
        sock::bind(fd.as_raw_fd(), &parse(&s.local))
            .map_err(|e| Error::Preflight(format!("binding {what}: {e}")))?;
        if force {
            set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse(s))
                .map_err(|e| opt_err(what, "SO_REUSEADDR", e))?;
        }
    }
    if s.state == TCP_LISTEN {
        // SAFETY: listen on our own socket.
        let ret = unsafe { libc::listen(fd.as_raw_fd(), s.backlog as i32) };
        check(ret as i64, &format!("listen on {what}"))?;
    }
    // Before connecting, which would turn away datagrams from others.
    if !s.datagrams.is_empty() {
        requeue(fd, s, what)?;
    }
    if !s.peer.is_empty() {
        sock::connect(fd.as_raw_fd(), &parse(&s.peer))
            .map_err(|e| Error::Preflight(format!("connecting {what} to {}: {e}", s.peer)))?;
    }
    Ok(())
}

/// Sends each saved datagram of `s` again to its restored socket `fd`,
/// in order, from its original sender's address and port: a raw packet
/// (CAP_NET_RAW) needs no socket of the sender, whose port may be taken.
/// Each is waited for in the receive queue before the next is sent.
fn requeue(fd: &OwnedFd, s: &pb::InetSocket, what: &str) -> Result<()> {
    let local: SocketAddr = s.local.parse().expect("checked at load");
    let mut raw: [Option<OwnedFd>; 2] = [None, None];
    for (i, d) in s.datagrams.iter().enumerate() {
        let failed = |e: &dyn std::fmt::Display| {
            Error::Preflight(format!(
                "{what}: requeueing datagram {i} from {}: {e}",
                d.from
            ))
        };
        let from = canonical(d.from.parse::<SocketAddr>().expect("checked at load"));
        let to = match d.to.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => local.ip(),
        };
        let mut to = canonical(SocketAddr::new(to, local.port()));
        if to.ip().is_unspecified() {
            to.set_ip(loopback(&from));
        }
        let slot = &mut raw[usize::from(from.is_ipv6())];
        if slot.is_none() {
            let family = if from.is_ipv6() {
                libc::AF_INET6
            } else {
                libc::AF_INET
            };
            // SAFETY: socket() takes plain integers.
            let ret = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            };
            *slot = Some(owned(ret, "a raw socket (needs CAP_NET_RAW)").map_err(|e| failed(&e))?);
        }
        let sender = slot.as_ref().expect("made above");
        let before = rmem(fd).map_err(|e| failed(&e))?;
        let packet = udp_packet(from, to, &d.data);
        let dest = SockaddrStorage::from(SocketAddr::new(to.ip(), 0));
        sock::sendto(sender.as_raw_fd(), &packet, &dest, MsgFlags::empty())
            .map_err(|e| failed(&e))?;
        // Loopback delivers within the send, or soon after; bounded.
        let mut arrived = false;
        for _ in 0..2000 {
            if rmem(fd).map_err(|e| failed(&e))? > before {
                arrived = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if !arrived {
            return Err(failed(&format!("it never reached {to}")));
        }
    }
    Ok(())
}

fn loopback(of: &SocketAddr) -> std::net::IpAddr {
    match of {
        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    }
}

/// The memory the receive queue of `fd` holds (SO_MEMINFO).
fn rmem(fd: &OwnedFd) -> std::io::Result<u32> {
    let m: [u32; SK_MEMINFO_VARS] = get_plain(fd, libc::SOL_SOCKET, libc::SO_MEMINFO)?;
    Ok(m[SK_MEMINFO_RMEM_ALLOC])
}

/// An IP packet carrying a UDP datagram `data` from `from` to `to` (of
/// one family), with its UDP checksum.
fn udp_packet(from: SocketAddr, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let udp_len = (8 + data.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let mut pseudo = Vec::with_capacity(40);
    let mut packet = Vec::with_capacity(40 + udp.len());
    match (from.ip(), to.ip()) {
        (std::net::IpAddr::V4(src), std::net::IpAddr::V4(dst)) => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            // Version 4, 5 words of header; the kernel fills the id and
            // the header checksum.
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&(20 + udp_len).to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
            packet.extend_from_slice(&src.octets());
            packet.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |a: std::net::IpAddr| match a {
                std::net::IpAddr::V6(a) => a.octets(),
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&v6(src));
            pseudo.extend_from_slice(&v6(dst));
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_UDP as u8]);
            // Version 6, no class or flow label; payload length, next
            // header, hop limit.
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&udp_len.to_be_bytes());
            packet.extend_from_slice(&[libc::IPPROTO_UDP as u8, 64]);
            packet.extend_from_slice(&v6(src));
            packet.extend_from_slice(&v6(dst));
        }
    }
    let sum = match internet_checksum(&[&pseudo, &udp]) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&udp);
    packet
}

/// The ones' complement of the ones' complement sum of `parts` taken as
/// one run of big-endian 16-bit words (RFC 1071).
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.iter().flat_map(|p| p.iter().copied());
    let (mut sum, mut high) = (0u64, None);
    for b in bytes {
        match high.take() {
            None => high = Some(b),
            Some(h) => sum += u64::from(u16::from_be_bytes([h, b])),
        }
    }
    if let Some(h) = high {
        sum += u64::from(h) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rebuilds established connection `t` on `fd` in repair mode: sequence
/// numbers, then bind and connect, handshake options, queues, window.
fn repair(fd: &OwnedFd, s: &pb::InetSocket, t: &pb::InetTcpStream, what: &str) -> Result<()> {
    let tcp = |name: i32, v: i32, label: &str| {
        set_opt(fd, libc::IPPROTO_TCP, name, v).map_err(|e| opt_err(what, label, e))
    };
    tcp(
        libc::TCP_REPAIR,
        TCP_REPAIR_ON,
        "TCP_REPAIR (needs CAP_NET_ADMIN)",
    )?;
    for (queue, seq) in [(TCP_SEND_QUEUE, t.send_seq), (TCP_RECV_QUEUE, t.recv_seq)] {
        tcp(libc::TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        tcp(libc::TCP_QUEUE_SEQ, seq as i32, "TCP_QUEUE_SEQ")?;
    }
    attach(fd, s, what)?;
    let mut opts = vec![RepairOpt {
        code: TCPOPT_MSS,
        val: t.mss,
    }];
    if t.snd_wscale != 0 || t.rcv_wscale != 0 {
        opts.push(RepairOpt {
            code: TCPOPT_WINDOW,
            val: t.snd_wscale | (t.rcv_wscale << 16),
        });
    }
    for (on, code) in [(t.sack, TCPOPT_SACK_PERM), (t.timestamps, TCPOPT_TIMESTAMP)] {
        if on {
            opts.push(RepairOpt { code, val: 0 });
        }
    }
    set_tcp(fd, libc::TCP_REPAIR_OPTIONS, &opts)
        .map_err(|e| opt_err(what, "TCP_REPAIR_OPTIONS", e))?;
    if t.timestamps {
        tcp(libc::TCP_TIMESTAMP, t.timestamp as i32, "TCP_TIMESTAMP")?;
    }
    for (queue, data) in [
        (TCP_RECV_QUEUE, &t.recv_queue),
        (TCP_SEND_QUEUE, &t.send_queue),
    ] {
        tcp(libc::TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        let mut sent = 0;
        while sent < data.len() {
            sent +=
                sock::send(fd.as_raw_fd(), &data[sent..], MsgFlags::MSG_DONTWAIT).map_err(|e| {
                    Error::Preflight(format!("{what}: requeueing {} bytes: {e}", data.len()))
                })?;
        }
    }
    let w = RepairWindow {
        snd_wl1: t.snd_wl1,
        snd_wnd: t.snd_wnd,
        max_window: t.max_window,
        rcv_wnd: t.rcv_wnd,
        rcv_wup: t.rcv_wup,
    };
    set_tcp(fd, libc::TCP_REPAIR_WINDOW, &[w])
        .map_err(|e| opt_err(what, "TCP_REPAIR_WINDOW", e))?;
    tcp(libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE")
}

/// Takes restored socket `fd` out of repair mode (its window probe tells
/// the peer it is back), once every socket of the checkpoint exists;
/// leaving repair forgets SO_REUSEADDR, which is set again.
pub fn release(fd: &OwnedFd, s: &pb::InetSocket) -> Result<()> {
    if s.stream.is_none() {
        return Ok(());
    }
    let what = format!("TCP connection {} -> {}", s.local, s.peer);
    set_opt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF)
        .map_err(|e| opt_err(&what, "TCP_REPAIR off", e))?;
    set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse(s))
        .map_err(|e| opt_err(&what, "SO_REUSEADDR", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dumps a socket of rcr's own (pid: ours), checked as restore would.
    fn roundtrip(fd: &OwnedFd, family: i32) -> pb::InetSocket {
        let s = dump(
            std::process::id() as i32,
            3,
            fd,
            family,
            libc::O_RDWR as u32,
            None,
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
    fn a_connection_comes_back_through_tcp_repair_with_its_queues() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        drop(l);
        c.write_all(b"unread by a").unwrap();
        a.write_all(b"unread by c").unwrap();
        // Let the bytes reach the receive queues (bounded, no timing check).
        let inq = |fd: &OwnedFd| queued(fd, libc::FIONREAD).unwrap();
        let (fc, fa) = (OwnedFd::from(c), OwnedFd::from(a));
        for _ in 0..1000 {
            if inq(&fa) == 11 && inq(&fc) == 11 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (saved, [mut c, mut a]) = repair_roundtrip([fc, fa]);
        for (s, want) in saved.iter().zip([b"unread by c", b"unread by a"]) {
            assert_eq!(s.stream.as_ref().unwrap().recv_queue, want);
        }
        let mut got = [0u8; 11];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"unread by a");
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"unread by c");
        c.write_all(b"after").unwrap();
        let mut got = [0u8; 5];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"after");
    }

    #[test]
    fn proc_net_tcp_addresses_read_back() {
        let v4 = proc_addr("0100007F:1F90").unwrap();
        assert_eq!(v4, "127.0.0.1:8080".parse().unwrap());
        let v6 = proc_addr("00000000000000000000000001000000:0016").unwrap();
        assert_eq!(v6, "[::1]:22".parse().unwrap());
        assert_eq!(proc_addr("0100007F"), None);
    }

    #[test]
    fn a_process_established_connections_are_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let pid = std::process::id() as i32;
        let found = established(&[pid]);
        for s in [&c, &a] {
            let want = (pid, s.local_addr().unwrap(), s.peer_addr().unwrap());
            assert!(found.contains(&want), "{want:?} not in {found:?}");
        }
        assert!(established(&[]).is_empty());
    }

    /// Dumps both ends of a connection in repair mode, closes them
    /// silently and makes them again, out of repair.
    fn repair_roundtrip(ends: [OwnedFd; 2]) -> (Vec<pb::InetSocket>, [std::net::TcpStream; 2]) {
        let pid = std::process::id() as i32;
        let mut repaired = Repaired::default();
        let saved: Vec<pb::InetSocket> = ends
            .iter()
            .map(|fd| dump(pid, 3, fd, libc::AF_INET, 0, Some(&mut repaired)).unwrap())
            .collect();
        drop(ends);
        let lock = repaired.netlock().expect("connections locked").to_owned();
        repaired.close_silently();
        let made = saved.iter().map(|s| {
            check_saved(s).unwrap();
            restore(s).unwrap()
        });
        let made: Vec<OwnedFd> = made.collect();
        for (fd, s) in made.iter().zip(&saved) {
            release(fd, s).unwrap();
        }
        super::super::netlock::unlock(&lock).unwrap();
        let mut it = made.into_iter().map(std::net::TcpStream::from);
        let ends = [it.next().unwrap(), it.next().unwrap()];
        for s in &ends {
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
        }
        (saved, ends)
    }

    #[test]
    fn bytes_not_sent_yet_arrive_in_order_after_repair() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lfd = OwnedFd::from(l.try_clone().unwrap());
        // A small receive window keeps most of what is written unsent.
        set_opt(&lfd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        let pattern: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut written = 0;
        while written < pattern.len() {
            match c.write(&pattern[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        c.set_nonblocking(false).unwrap();
        let (saved, [_c, mut a]) = repair_roundtrip([OwnedFd::from(c), OwnedFd::from(a)]);
        assert!(!saved[0].stream.as_ref().unwrap().send_queue.is_empty());
        let mut got = vec![0u8; written];
        a.read_exact(&mut got).unwrap();
        assert!(
            got == pattern[..written],
            "the bytes came back out of order"
        );
    }

    #[test]
    fn refusals_name_what_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let lfd = OwnedFd::from(l.try_clone().unwrap());
        let pid = std::process::id() as i32;
        let err = dump(pid, 3, &lfd, libc::AF_INET, 0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not yet accepted"), "{err}");
        let (a, _) = l.accept().unwrap();
        let err = dump(pid, 4, &OwnedFd::from(a), libc::AF_INET, 0, None)
            .unwrap_err()
            .to_string();
        let local = c.peer_addr().unwrap().to_string();
        assert!(err.contains("established") && err.contains(&local), "{err}");
    }

    /// Queues datagrams from two senders (one still bound, one gone) on
    /// a socket bound to `at`, dumps it, checks it still holds them all,
    /// then restores it and receives them in order from their senders.
    fn queued_datagrams_come_back(at: &str, family: i32, pktinfo: (i32, i32)) {
        use std::net::UdpSocket;
        let u = UdpSocket::bind(at).unwrap();
        let fd = OwnedFd::from(u.try_clone().unwrap());
        set_opt(&fd, pktinfo.0, pktinfo.1, 1).unwrap();
        let to = u.local_addr().unwrap();
        let (a, b) = (UdpSocket::bind(at).unwrap(), UdpSocket::bind(at).unwrap());
        let sent = [(&a, &b"first from a"[..]), (&b, b""), (&a, b"third")];
        for (from, data) in sent {
            from.send_to(data, to).unwrap();
        }
        let want: Vec<(Vec<u8>, SocketAddr)> = sent
            .iter()
            .map(|(from, data)| (data.to_vec(), from.local_addr().unwrap()))
            .collect();
        // Let them all arrive (bounded, no timing check).
        for _ in 0..1000 {
            if rmem(&fd).unwrap() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = roundtrip(&fd, family);
        assert_eq!(s.datagrams.len(), 3, "{:?}", s.datagrams);
        for d in &s.datagrams {
            assert_eq!(d.to.parse::<std::net::IpAddr>().unwrap(), to.ip());
        }
        assert_eq!(
            get_opt(&fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        let recv = |u: &UdpSocket| {
            let mut buf = [0u8; 64];
            u.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let (n, from) = u.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        };
        let still: Vec<_> = (0..3).map(|_| recv(&u)).collect();
        assert_eq!(still, want, "the dump took datagrams away");
        for (from, data) in sent {
            from.send_to(data, to).unwrap();
        }
        drop((u, fd, b));
        let again = UdpSocket::from(restore(&s).unwrap());
        assert_eq!(again.local_addr().unwrap(), to);
        let got: Vec<_> = (0..3).map(|_| recv(&again)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn queued_ipv4_datagrams_come_back_from_their_senders() {
        queued_datagrams_come_back(
            "127.0.0.1:0",
            libc::AF_INET,
            (libc::IPPROTO_IP, libc::IP_PKTINFO),
        );
    }

    #[test]
    fn queued_ipv6_datagrams_come_back_from_their_senders() {
        queued_datagrams_come_back(
            "[::1]:0",
            libc::AF_INET6,
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        );
    }

    #[test]
    fn a_udp_checksum_matches_rfc_1071() {
        // The example of RFC 1071 section 3: sum 0xddf2, checksum 0x220d.
        let words = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&words[..3], &words[3..]]), 0x220d);
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
