//! UDP sockets across a checkpoint:
//! - A at fd 20 and B at fd 21: bound to 127.0.0.1 (ephemeral ports) and
//!   connected to each other, one datagram already exchanged each way;
//!   A has SO_BROADCAST, B is O_NONBLOCK;
//! - C at fd 22: bound to [::1] with IPV6_V6ONLY, not connected, with
//!   two datagrams queued from two senders since closed;
//! - D at fd 23: bound to 127.0.0.1, not connected, with three datagrams
//!   queued: from A (still bound), from a sender since closed, and an
//!   empty one from A.
//!
//! After the wake: addresses, peers, options and flags as built; C and D
//! receive their queued datagrams in order, each from its sender; A and B
//! exchange datagrams again (each seeing the other's address), and a new
//! socket's datagram reaches C at its port.

use rcr_tests::fdops::{place, status_flags};
use rcr_tests::inetops::{bind, get_opt, local, peer, set_opt, socket, view};
use rcr_tests::workload::{self, Args, Verdict};
use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

const A: i32 = 20;
const B: i32 = 21;
const C: i32 = 22;
const D: i32 = 23;

/// The addresses A, B, C and D got at build time.
static BOUND: OnceLock<[SocketAddr; 4]> = OnceLock::new();

/// What C and D should find queued: (fd, data, sender).
static QUEUED: OnceLock<Vec<(i32, Vec<u8>, SocketAddr)>> = OnceLock::new();

fn bound(fd: i32, family: i32, addr: &str) -> Result<SocketAddr, String> {
    place(socket(family, libc::SOCK_DGRAM)?, fd, 0)?;
    if family == libc::AF_INET6 {
        set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    bind(fd, addr.parse().expect("a literal address"))?;
    local(fd)
}

/// Sends `data` from connected `from` and receives it on `to` (blocking,
/// bounded), checking it came from `from`'s address.
fn exchange(v: &mut Verdict, from: i32, to: i32, data: &[u8]) -> Result<(), String> {
    view::<UdpSocket>(from)
        .send(data)
        .map_err(|e| format!("send from fd {from}: {e}"))?;
    let got = receive(to)?;
    v.eq(
        &format!("fd {from} to fd {to}"),
        (got.0.as_slice(), got.1),
        (data, local(from)?),
    );
    Ok(())
}

fn receive(fd: i32) -> Result<(Vec<u8>, SocketAddr), String> {
    let s = view::<UdpSocket>(fd);
    let nonblocking = status_flags(fd)? & libc::O_NONBLOCK != 0;
    let fail = |e: std::io::Error| format!("recv on fd {fd}: {e}");
    s.set_nonblocking(false).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(fail)?;
    let mut buf = [0u8; 64];
    let (n, from) = s.recv_from(&mut buf).map_err(fail)?;
    s.set_nonblocking(nonblocking).map_err(fail)?;
    Ok((buf[..n].to_vec(), from))
}

fn build(_: &Args) -> Result<(), String> {
    let a = bound(A, libc::AF_INET, "127.0.0.1:0")?;
    let b = bound(B, libc::AF_INET, "127.0.0.1:0")?;
    let c = bound(C, libc::AF_INET6, "[::1]:0")?;
    let d = bound(D, libc::AF_INET, "127.0.0.1:0")?;
    view::<UdpSocket>(A).connect(b).map_err(|e| e.to_string())?;
    view::<UdpSocket>(B).connect(a).map_err(|e| e.to_string())?;
    set_opt(A, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)?;
    let mut v = Verdict::new();
    exchange(&mut v, A, B, b"before a->b")?;
    exchange(&mut v, B, A, b"before b->a")?;
    if !v.is_ok() {
        return Err(v.into_diffs().join("; "));
    }
    view::<UdpSocket>(B)
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let queued = queue(c, d)?;
    BOUND.set([a, b, c, d]).expect("built once");
    QUEUED.set(queued).expect("built once");
    Ok(())
}

/// Sends the datagrams C and D keep queued across the checkpoint.
fn queue(c: SocketAddr, d: SocketAddr) -> Result<Vec<(i32, Vec<u8>, SocketAddr)>, String> {
    let fail = |e: std::io::Error| format!("queue a datagram: {e}");
    let gone4 = UdpSocket::bind("127.0.0.1:0").map_err(fail)?;
    let [gone6a, gone6b] = ["[::1]:0", "[::1]:0"].map(UdpSocket::bind);
    let (gone6a, gone6b) = (gone6a.map_err(fail)?, gone6b.map_err(fail)?);
    let from_a = view::<UdpSocket>(A);
    let sends: [(&UdpSocket, SocketAddr, i32, &[u8]); 5] = [
        (&gone6a, c, C, b"to C from one"),
        (&gone6b, c, C, b"to C from another"),
        (&from_a, d, D, b"to D from A"),
        (&gone4, d, D, b"to D from a closed socket"),
        (&from_a, d, D, b""),
    ];
    let mut queued = Vec::new();
    for (from, to, fd, data) in sends {
        from.send_to(data, to).map_err(fail)?;
        queued.push((fd, data.to_vec(), from.local_addr().map_err(fail)?));
    }
    Ok(queued)
}

fn check(_: &Args, v: &mut Verdict) -> Result<(), String> {
    let [a, b, c, d] = *BOUND.get().expect("built");
    for (i, (fd, data, from)) in QUEUED.get().expect("built").iter().enumerate() {
        v.eq(
            &format!("queued datagram {i} on fd {fd}"),
            receive(*fd)?,
            (data.clone(), *from),
        );
    }
    v.eq("D address", local(D)?, d);
    v.eq("A address", local(A)?, a);
    v.eq("B address", local(B)?, b);
    v.eq("C address", local(C)?, c);
    v.eq("A peer", peer(A)?, b);
    v.eq("B peer", peer(B)?, a);
    v.check(peer(C).is_err(), || "C is connected".into());
    v.eq(
        "A SO_BROADCAST",
        get_opt(A, libc::SOL_SOCKET, libc::SO_BROADCAST)?,
        1,
    );
    v.eq(
        "B SO_BROADCAST",
        get_opt(B, libc::SOL_SOCKET, libc::SO_BROADCAST)?,
        0,
    );
    v.eq(
        "C IPV6_V6ONLY",
        get_opt(C, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?,
        1,
    );
    v.eq("A O_NONBLOCK", status_flags(A)? & libc::O_NONBLOCK, 0);
    v.eq(
        "B O_NONBLOCK",
        status_flags(B)? & libc::O_NONBLOCK,
        libc::O_NONBLOCK,
    );
    exchange(v, A, B, b"after a->b")?;
    exchange(v, B, A, b"after b->a")?;
    let other = UdpSocket::bind("[::1]:0").map_err(|e| e.to_string())?;
    other
        .send_to(b"to C", c)
        .map_err(|e| format!("send to C: {e}"))?;
    let got = receive(C)?;
    v.eq(
        "C receives",
        got,
        (
            b"to C".to_vec(),
            other.local_addr().map_err(|e| e.to_string())?,
        ),
    );
    Ok(())
}

fn main() {
    workload::run(build, check)
}
