//! A unix socketpair across a checkpoint, of the kind named by the first
//! parameter (`stream`, `dgram` or `seqpacket`):
//! - A at fd 10 (O_NONBLOCK, SO_SNDBUF set, duplicated at 12) and B at 11
//!   (SO_PASSCRED), with data queued both ways: A→B several messages
//!   (empty and large ones among them), B→A two;
//! - stream only: C (13) and D (14), C having sent "bye" then shut its
//!   sending side; E (15) whose peer sent "last" and closed;
//! - dgram only: S (16) bound to an abstract name, holding two messages
//!   from K (17), which is connected to S, then one from T (18), bound to
//!   a name of its own, and one from a socket bound to a third name that
//!   then closed: after restore `recvfrom` on S still names each sender.
//!
//! After restore: types, flags and options, every queued byte in order
//! (message boundaries for dgram and seqpacket, nothing more queued),
//! new data both ways (through the dup too), the shutdown and end of file
//! states, S's name and K still reaching S.

use rcr_tests::fdops::{place, status_flags, sys};
use rcr_tests::pattern;
use rcr_tests::sockops::{
    bind, connect, get_opt, local_name, recv_from_now, recv_now, send, set_opt, socket, socketpair,
};
use rcr_tests::workload::{self, getpid, Args, Verdict};
use std::cell::Cell;

const A: i32 = 10;
const B: i32 = 11;
const A_DUP: i32 = 12;
const C: i32 = 13;
const D: i32 = 14;
const E: i32 = 15;
const S: i32 = 16;
const K: i32 = 17;
const T: i32 = 18;
const SNDBUF: i32 = 96 << 10;
const A_TO_B: &[usize] = &[1, 0, 3000, 17, 60_000];
const B_TO_A: &[usize] = &[5, 1200];
const SEED_AB: u64 = 0xab;
const SEED_BA: u64 = 0xba;
const K_TO_S: [&[u8]; 2] = [b"first from K", b"second"];

fn kind_of(args: &Args) -> Result<i32, String> {
    match args.params.first().map(String::as_str) {
        Some("stream") => Ok(libc::SOCK_STREAM),
        Some("dgram") => Ok(libc::SOCK_DGRAM),
        Some("seqpacket") => Ok(libc::SOCK_SEQPACKET),
        other => Err(format!("unknown socket kind {other:?}")),
    }
}

/// The messages one side sends: pattern bytes of each size, offset by
/// index so that no two are alike. A stream sends one run instead.
fn messages(kind: i32, sizes: &[usize], seed: u64) -> Vec<Vec<u8>> {
    let sizes: Vec<usize> = if kind == libc::SOCK_STREAM {
        vec![sizes.iter().sum()]
    } else {
        sizes.to_vec()
    };
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut m = vec![0u8; n];
            pattern::fill(&mut m, seed + i as u64, 0);
            m
        })
        .collect()
}

/// The abstract name of a sender to S.
fn sender_name(who: &str) -> Vec<u8> {
    format!("\0rcr-test-dgram-{who}-{}", getpid()).into_bytes()
}

fn abstract_name() -> Vec<u8> {
    format!("\0rcr-test-dgram-{}", getpid()).into_bytes()
}

fn build(kind: i32, sndbuf: &Cell<i32>) -> Result<(), String> {
    let (a, b) = socketpair(kind)?;
    place(a, A, 0)?;
    place(b, B, 0)?;
    // SAFETY: fcntl and dup2 on our own descriptors.
    unsafe {
        sys(
            libc::fcntl(A, libc::F_SETFL, libc::O_NONBLOCK) as i64,
            "F_SETFL",
        )?;
        sys(libc::dup2(A, A_DUP) as i64, "dup2")?;
    }
    set_opt(A, libc::SO_SNDBUF, SNDBUF)?;
    sndbuf.set(get_opt(A, libc::SO_SNDBUF)?);
    set_opt(B, libc::SO_PASSCRED, 1)?;
    for m in messages(kind, A_TO_B, SEED_AB) {
        send(A, &m)?;
    }
    for m in messages(kind, B_TO_A, SEED_BA) {
        send(B, &m)?;
    }
    if kind == libc::SOCK_STREAM {
        let (c, d) = socketpair(kind)?;
        place(c, C, 0)?;
        place(d, D, 0)?;
        send(C, b"bye")?;
        // SAFETY: shutdown of our own socket.
        sys(
            unsafe { libc::shutdown(C, libc::SHUT_WR) } as i64,
            "shutdown",
        )?;
        let (e, gone) = socketpair(kind)?;
        place(e, E, 0)?;
        send(gone, b"last")?;
        // SAFETY: closes our own descriptor.
        unsafe { libc::close(gone) };
    }
    if kind == libc::SOCK_DGRAM {
        place(socket(kind)?, S, 0)?;
        bind(S, &abstract_name())?;
        place(socket(kind)?, K, 0)?;
        connect(K, &abstract_name())?;
        for m in K_TO_S {
            send(K, m)?;
        }
        place(socket(kind)?, T, 0)?;
        bind(T, &sender_name("t"))?;
        connect(T, &abstract_name())?;
        send(T, b"from T")?;
        let gone = socket(kind)?;
        bind(gone, &sender_name("gone"))?;
        connect(gone, &abstract_name())?;
        send(gone, b"from a closed socket")?;
        // SAFETY: closes our own descriptor.
        unsafe { libc::close(gone) };
    }
    Ok(())
}

/// Reads what `fd` holds and compares it with `want`, then expects
/// nothing more.
fn expect_queue(
    v: &mut Verdict,
    what: &str,
    fd: i32,
    kind: i32,
    want: &[Vec<u8>],
) -> Result<(), String> {
    if kind == libc::SOCK_STREAM {
        let want = want.concat();
        let mut got = Vec::new();
        while got.len() < want.len() {
            match recv_now(fd, want.len() - got.len())? {
                Some(b) if !b.is_empty() => got.extend(b),
                _ => break,
            }
        }
        v.check(got == want, || {
            format!(
                "{what}: {} bytes read, want {} (or they differ)",
                got.len(),
                want.len()
            )
        });
    } else {
        for (i, m) in want.iter().enumerate() {
            let got = recv_now(fd, 128 << 10)?;
            v.check(got.as_ref() == Some(m), || {
                format!(
                    "{what}: message {i} is {:?} bytes, want {}",
                    got.as_ref().map(Vec::len),
                    m.len()
                )
            });
        }
    }
    v.eq(&format!("{what}: more queued"), recv_now(fd, 1)?, None);
    Ok(())
}

fn check(kind: i32, sndbuf: i32, v: &mut Verdict) -> Result<(), String> {
    for fd in [A, B, A_DUP] {
        v.eq(
            &format!("fd {fd} SO_TYPE"),
            get_opt(fd, libc::SO_TYPE)?,
            kind,
        );
    }
    v.eq(
        "fd 10 flags",
        status_flags(A)?,
        libc::O_RDWR | libc::O_NONBLOCK,
    );
    v.eq("fd 11 flags", status_flags(B)?, libc::O_RDWR);
    v.eq("fd 10 SO_SNDBUF", get_opt(A, libc::SO_SNDBUF)?, sndbuf);
    v.eq("fd 11 SO_PASSCRED", get_opt(B, libc::SO_PASSCRED)?, 1);
    expect_queue(v, "A to B", B, kind, &messages(kind, A_TO_B, SEED_AB))?;
    expect_queue(v, "B to A", A, kind, &messages(kind, B_TO_A, SEED_BA))?;
    send(A, b"ping")?;
    v.eq("new data A to B", recv_now(B, 64)?, Some(b"ping".to_vec()));
    send(B, b"pong")?;
    v.eq(
        "new data B to A (dup)",
        recv_now(A_DUP, 64)?,
        Some(b"pong".to_vec()),
    );
    if kind == libc::SOCK_STREAM {
        v.eq("D reads", recv_now(D, 64)?, Some(b"bye".to_vec()));
        v.eq("D at end of file", recv_now(D, 64)?, Some(vec![]));
        v.check(send(C, b"x").is_err(), || {
            "C can still send after shutdown".into()
        });
        send(D, b"back")?;
        v.eq("C reads", recv_now(C, 64)?, Some(b"back".to_vec()));
        v.eq("E reads", recv_now(E, 64)?, Some(b"last".to_vec()));
        v.eq("E at end of file", recv_now(E, 64)?, Some(vec![]));
    }
    if kind == libc::SOCK_DGRAM {
        v.eq("S's name", local_name(S)?, abstract_name());
        let from = |m: &[u8], who: Vec<u8>| Some((m.to_vec(), who));
        for m in K_TO_S {
            v.eq("S reads from K", recv_from_now(S, 64)?, from(m, vec![]));
        }
        let t = sender_name("t");
        v.eq("S reads from T", recv_from_now(S, 64)?, from(b"from T", t));
        let gone = sender_name("gone");
        let closed = from(b"from a closed socket", gone);
        v.eq(
            "S reads from the closed sender",
            recv_from_now(S, 64)?,
            closed,
        );
        send(K, b"after")?;
        v.eq(
            "S reads new data",
            recv_now(S, 64)?,
            Some(b"after".to_vec()),
        );
    }
    Ok(())
}

fn main() {
    let sndbuf = Cell::new(0);
    let kind = Cell::new(0);
    workload::run(
        |args| {
            kind.set(kind_of(args)?);
            build(kind.get(), &sndbuf)
        },
        |_, v| check(kind.get(), sndbuf.get(), v),
    )
}
