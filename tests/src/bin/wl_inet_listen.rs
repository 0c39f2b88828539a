//! TCP sockets across a checkpoint, on ephemeral ports chosen before ready
//! (written to `ports` in the test dir as "<ipv4 port> <ipv6 port>"):
//! - L4 at fd 20: listening on 127.0.0.1, backlog 5, SO_KEEPALIVE,
//!   TCP_NODELAY, SO_RCVBUF set, O_NONBLOCK;
//! - L6 at fd 21: listening on [::1], backlog 9, IPV6_V6ONLY, SO_REUSEPORT;
//! - N at fd 22: a TCP socket just created; B at fd 23: bound to
//!   127.0.0.1, not listening.
//!
//! With the parameter `established`, X at 24 is connected to L4 and
//! accepted as Y at 25, each with a line the other has not read yet (rcr
//! refuses to dump them, or takes them with `--tcp-established`); after
//! the wake each reads its line and they talk both ways.
//!
//! After the wake: names, options and flags as built; each listener accepts
//! the client the test connected after restore, reads its "ping" line and
//! answers "pong".

use rcr_tests::fdops::{place, status_flags};
use rcr_tests::inetops::{bind, get_opt, local, set_opt, socket, view};
use rcr_tests::workload::{self, Args, Verdict};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::IntoRawFd;
use std::sync::OnceLock;

const L4: i32 = 20;
const L6: i32 = 21;
const N: i32 = 22;
const B: i32 = 23;
const X: i32 = 24;
const Y: i32 = 25;
const RCVBUF: i32 = 48 << 10;
const TO_Y: &[u8] = b"queued for Y";
const TO_X: &[u8] = b"queued for X, longer";

/// The addresses L4, L6 and B got at build time.
static BOUND: OnceLock<[SocketAddr; 3]> = OnceLock::new();

fn listener(fd: i32, family: i32, addr: &str, backlog: i32) -> Result<SocketAddr, String> {
    place(socket(family, libc::SOCK_STREAM)?, fd, 0)?;
    if family == libc::AF_INET6 {
        set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    bind(fd, addr.parse().expect("a literal address"))?;
    // SAFETY: listen on a descriptor number.
    rcr_tests::fdops::sys(unsafe { libc::listen(fd, backlog) } as i64, "listen")?;
    local(fd)
}

fn build(args: &Args) -> Result<(), String> {
    let a4 = listener(L4, libc::AF_INET, "127.0.0.1:0", 5)?;
    set_opt(L4, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_opt(L4, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set_opt(L4, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF)?;
    view::<TcpListener>(L4)
        .set_nonblocking(true)
        .map_err(|e| format!("O_NONBLOCK on L4: {e}"))?;
    let a6 = listener(L6, libc::AF_INET6, "[::1]:0", 9)?;
    place(socket(libc::AF_INET, libc::SOCK_STREAM)?, N, 0)?;
    place(socket(libc::AF_INET, libc::SOCK_STREAM)?, B, 0)?;
    bind(B, "127.0.0.1:0".parse().expect("a literal address"))?;
    let ab = local(B)?;
    BOUND.set([a4, a6, ab]).expect("built once");
    if established(args) {
        let x = TcpStream::connect(a4).map_err(|e| format!("connect X to {a4}: {e}"))?;
        place(x.into_raw_fd(), X, 0)?;
        place(accept(L4)?.into_raw_fd(), Y, 0)?;
        write(X, TO_Y)?;
        write(Y, TO_X)?;
    }
    std::fs::write(
        args.dir().join("ports"),
        format!("{} {}", a4.port(), a6.port()),
    )
    .map_err(|e| format!("write ports: {e}"))
}

fn write(fd: i32, data: &[u8]) -> Result<(), String> {
    (&*view::<TcpStream>(fd))
        .write_all(data)
        .map_err(|e| format!("write to fd {fd}: {e}"))
}

/// Reads `len` bytes from `fd`, waiting at most 30 s.
fn read(fd: i32, len: usize) -> Result<Vec<u8>, String> {
    let s = view::<TcpStream>(fd);
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; len];
    (&*s)
        .read_exact(&mut got)
        .map_err(|e| format!("read from fd {fd}: {e}"))?;
    Ok(got)
}

fn established(args: &Args) -> bool {
    args.params.first().map(String::as_str) == Some("established")
}

/// Accepts one connection on `fd`, waiting (bounded) when it is non-blocking.
fn accept(fd: i32) -> Result<TcpStream, String> {
    for _ in 0..3000 {
        match view::<TcpListener>(fd).accept() {
            Ok((s, _)) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => return Err(format!("accept on fd {fd}: {e}")),
        }
    }
    Err(format!("accept on fd {fd}: no client came"))
}

/// Accepts the test's client on listener `fd`: "ping" in, "pong" out.
fn serve(v: &mut Verdict, fd: i32) -> Result<(), String> {
    let conn = accept(fd)?;
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| format!("read from the client of fd {fd}: {e}"))?;
    v.eq(&format!("fd {fd}: client's line"), line.as_str(), "ping\n");
    (&conn)
        .write_all(b"pong\n")
        .map_err(|e| format!("answer the client of fd {fd}: {e}"))
}

fn opt(
    v: &mut Verdict,
    fd: i32,
    level: i32,
    name: i32,
    what: &str,
    want: i32,
) -> Result<(), String> {
    v.eq(&format!("fd {fd}: {what}"), get_opt(fd, level, name)?, want);
    Ok(())
}

fn check(args: &Args, v: &mut Verdict) -> Result<(), String> {
    let [a4, a6, ab] = *BOUND.get().expect("built");
    v.eq("L4 address", local(L4)?, a4);
    v.eq("L6 address", local(L6)?, a6);
    v.eq("B address", local(B)?, ab);
    v.eq("N port", local(N)?.port(), 0);
    for fd in [L4, L6] {
        opt(
            v,
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "SO_ACCEPTCONN",
            1,
        )?;
    }
    opt(
        v,
        B,
        libc::SOL_SOCKET,
        libc::SO_ACCEPTCONN,
        "SO_ACCEPTCONN",
        0,
    )?;
    opt(
        v,
        L4,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        "SO_KEEPALIVE",
        1,
    )?;
    opt(
        v,
        L4,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        "TCP_NODELAY",
        1,
    )?;
    opt(
        v,
        L4,
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        "SO_RCVBUF",
        2 * RCVBUF,
    )?;
    opt(
        v,
        L6,
        libc::IPPROTO_IPV6,
        libc::IPV6_V6ONLY,
        "IPV6_V6ONLY",
        1,
    )?;
    opt(
        v,
        L6,
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        "SO_REUSEPORT",
        1,
    )?;
    opt(
        v,
        L6,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        "TCP_NODELAY",
        0,
    )?;
    v.eq(
        "L4 O_NONBLOCK",
        status_flags(L4)? & libc::O_NONBLOCK,
        libc::O_NONBLOCK,
    );
    v.eq("L6 O_NONBLOCK", status_flags(L6)? & libc::O_NONBLOCK, 0);
    if established(args) {
        for fd in [X, Y] {
            opt(
                v,
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                "SO_REUSEADDR",
                0,
            )?;
        }
        for (from, to, data) in [(X, Y, TO_Y), (Y, X, TO_X)] {
            v.eq(
                &format!("fd {to} reads its queued line"),
                read(to, data.len())?,
                data.to_vec(),
            );
            write(from, b"after")?;
            v.eq(
                &format!("fd {from} to fd {to}"),
                read(to, 5)?,
                b"after".to_vec(),
            );
        }
        return Ok(());
    }
    serve(v, L4)?;
    serve(v, L6)
}

fn main() {
    workload::run(build, check)
}
