//! A TCP connection whose peer is outside the tree: X at fd 20 connects
//! to the port given as parameter (a listener of the test) and sends
//! `TO_PEER`; the test sends `UNREAD`, which X leaves unread.
//!
//! After the wake: X reads `UNREAD`, then `WHILE_DOWN` (sent by the test
//! while the tree was checkpointed, held off by the network lock), and
//! answers `AFTER` (the texts are in `rcr_tests::inetops::peer_talk`).

use rcr_tests::fdops::place;
use rcr_tests::inetops::peer_talk::{AFTER, TO_PEER, UNREAD, WHILE_DOWN};
use rcr_tests::workload::{self, Args, Verdict};
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{FromRawFd, IntoRawFd};

const X: i32 = 20;

fn x() -> ManuallyDrop<TcpStream> {
    // SAFETY: ManuallyDrop never closes fd X, which the workload keeps.
    ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(X) })
}

fn build(args: &Args) -> Result<(), String> {
    let port = args.param_u64(0, 0);
    let s = TcpStream::connect(("127.0.0.1", port as u16))
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    place(s.into_raw_fd(), X, 0)?;
    (&*x())
        .write_all(TO_PEER)
        .map_err(|e| format!("write to the peer: {e}"))
}

fn check(_: &Args, v: &mut Verdict) -> Result<(), String> {
    let s = x();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; UNREAD.len() + WHILE_DOWN.len()];
    (&*s)
        .read_exact(&mut got)
        .map_err(|e| format!("read from the peer: {e}"))?;
    v.eq("bytes from the peer", got, [UNREAD, WHILE_DOWN].concat());
    (&*s)
        .write_all(AFTER)
        .map_err(|e| format!("answer the peer: {e}"))
}

fn main() {
    workload::run(build, check)
}
