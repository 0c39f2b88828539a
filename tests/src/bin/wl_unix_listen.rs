//! Listening unix sockets across a checkpoint:
//! - L1 at fd 20: stream, bound to `listen.sock` in the test dir, backlog 7;
//! - L2 at fd 21: seqpacket, bound to an abstract name, backlog 3;
//! - X at 22, connected to L1 and accepted as Y at 23, each with a line
//!   the other has not read yet.
//!
//! After restore: both names (and L1's socket file), X and Y's data, and
//! each listener accepting a new client and talking to it (seqpacket
//! keeping message boundaries).

use rcr_tests::fdops::place;
use rcr_tests::sockops::{accept, bind, connect, listen, local_name, recv_now, send, socket};
use rcr_tests::workload::{self, getpid, Args, Verdict};
use std::os::unix::fs::FileTypeExt;

const L1: i32 = 20;
const L2: i32 = 21;
const X: i32 = 22;
const Y: i32 = 23;
const TO_Y: &[u8] = b"queued for Y";
const TO_X: &[u8] = b"queued for X, longer";

fn path_name(args: &Args) -> Vec<u8> {
    args.dir()
        .join("listen.sock")
        .into_os_string()
        .into_encoded_bytes()
}

fn abstract_name() -> Vec<u8> {
    format!("\0rcr-test-seqpacket-{}", getpid()).into_bytes()
}

fn build(args: &Args) -> Result<(), String> {
    place(socket(libc::SOCK_STREAM)?, L1, 0)?;
    bind(L1, &path_name(args))?;
    listen(L1, 7)?;
    place(socket(libc::SOCK_SEQPACKET)?, L2, 0)?;
    bind(L2, &abstract_name())?;
    listen(L2, 3)?;
    place(socket(libc::SOCK_STREAM)?, X, 0)?;
    connect(X, &path_name(args))?;
    place(accept(L1)?, Y, 0)?;
    send(X, TO_Y)?;
    send(Y, TO_X)
}

/// Connects a new client of `kind` to `name`, accepts it on `listener`,
/// and checks two messages each way arrive whole.
fn new_client(v: &mut Verdict, listener: i32, kind: i32, name: &[u8]) -> Result<(), String> {
    let client = socket(kind)?;
    connect(client, name)?;
    let served = accept(listener)?;
    send(client, b"hello")?;
    send(client, b"again")?;
    let what = format!("listener fd {listener}");
    if kind == libc::SOCK_SEQPACKET {
        v.eq(
            &format!("{what}: first message"),
            recv_now(served, 64)?,
            Some(b"hello".to_vec()),
        );
        v.eq(
            &format!("{what}: second message"),
            recv_now(served, 64)?,
            Some(b"again".to_vec()),
        );
    } else {
        v.eq(
            &format!("{what}: bytes"),
            recv_now(served, 64)?,
            Some(b"helloagain".to_vec()),
        );
    }
    send(served, b"welcome")?;
    v.eq(
        &format!("{what}: answer"),
        recv_now(client, 64)?,
        Some(b"welcome".to_vec()),
    );
    // SAFETY: closes descriptors this check opened.
    unsafe {
        libc::close(client);
        libc::close(served);
    }
    Ok(())
}

fn check(args: &Args, v: &mut Verdict) -> Result<(), String> {
    v.eq("L1 name", local_name(L1)?, path_name(args));
    v.eq("L2 name", local_name(L2)?, abstract_name());
    let is_socket = std::fs::symlink_metadata(args.dir().join("listen.sock"))
        .is_ok_and(|m| m.file_type().is_socket());
    v.check(is_socket, || "listen.sock is not a socket file".into());
    v.eq("Y reads", recv_now(Y, 64)?, Some(TO_Y.to_vec()));
    v.eq("X reads", recv_now(X, 64)?, Some(TO_X.to_vec()));
    new_client(v, L1, libc::SOCK_STREAM, &path_name(args))?;
    new_client(v, L2, libc::SOCK_SEQPACKET, &abstract_name())?;
    send(X, b"still")?;
    v.eq(
        "X to Y after restore",
        recv_now(Y, 64)?,
        Some(b"still".to_vec()),
    );
    Ok(())
}

fn main() {
    workload::run(build, check)
}
