//! TCP and UDP sockets: listeners on IPv4 and IPv6 loopback that answer a
//! client the test connects after restore, a connected UDP pair that talks
//! after restore, datagrams queued from several senders, a connection to
//! a peer outside the tree that sends while the tree is down, and an established TCP connection inside the tree:
//! refused by name, or taken with `--tcp-established`.

use rcr_tests::harness::{dump, restore, roundtrip, run_rcr, TestDir, Workload};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn listen_workload(dir: &TestDir, params: &[&str]) -> (Workload, u16, u16) {
    let program = Path::new(env!("CARGO_BIN_EXE_wl_inet_listen"));
    let mut w = Workload::spawn(dir, program, &[], params);
    w.wait_ready();
    let ports = std::fs::read_to_string(dir.join("ports")).expect("read the workload's ports");
    let ports: Vec<u16> = ports
        .split_whitespace()
        .map(|p| p.parse().expect("a port number"))
        .collect();
    (w, ports[0], ports[1])
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn tcp_listeners_accept_new_clients_after_restore() {
    let dir = TestDir::new("inet-listen");
    let (mut w, p4, p6) = listen_workload(&dir, &[]);
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    restore(&dir, &mut w, &img);
    let mut clients = [
        connect(&format!("127.0.0.1:{p4}")),
        connect(&format!("[::1]:{p6}")),
    ];
    for c in &mut clients {
        c.write_all(b"ping\n").expect("send ping");
    }
    w.finish_ok();
    for c in clients {
        let mut answer = String::new();
        BufReader::new(c)
            .read_line(&mut answer)
            .expect("read the answer");
        assert_eq!(answer, "pong\n");
    }
}

/// Two cycles: the second dumps the datagrams the first requeued.
#[test]
fn a_connected_udp_pair_talks_and_queued_datagrams_come_back_after_restore() {
    let program = Path::new(env!("CARGO_BIN_EXE_wl_inet_udp"));
    roundtrip("inet-udp", program, &[], &[], 2, Duration::ZERO);
}

#[test]
fn queued_datagrams_stay_queued_after_a_dump_left_running() {
    let dir = TestDir::new("inet-udp-leave");
    let mut w = Workload::spawn(&dir, Path::new(env!("CARGO_BIN_EXE_wl_inet_udp")), &[], &[]);
    w.wait_ready();
    dump(&dir, &mut w, &dir.join("img"), &["--leave-running"]);
    w.finish_ok();
}

#[test]
fn an_established_tcp_connection_is_refused_by_name() {
    let dir = TestDir::new("inet-established");
    let (mut w, p4, _) = listen_workload(&dir, &["established"]);
    let img = dir.join("img");
    let pid = w.pid.to_string();
    let args = ["dump", "--tree", &pid, "-D", img.to_str().unwrap()];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let remote = format!("-> 127.0.0.1:{p4}");
    run_rcr(&dir, &args).assert_failure(&[
        &pid,
        "fd 24",
        "established",
        &remote,
        "--tcp-established",
    ]);
    assert!(!img.exists(), "a refused dump left {}", img.display());
    assert!(w.is_running(), "the workload died after a refused dump");
    w.finish_ok();
}

/// Dumps the established workload with `--tcp-established` (and
/// `--leave-running` when `leave`), restores it when it was killed, and
/// lets it check its connection.
fn take_established(name: &str, leave: bool) {
    let dir = TestDir::new(name);
    let (mut w, _, _) = listen_workload(&dir, &["established"]);
    let img = dir.join("img");
    let extra: &[&str] = if leave {
        &["--leave-running", "--tcp-established"]
    } else {
        &["--tcp-established"]
    };
    dump(&dir, &mut w, &img, extra);
    if !leave {
        restore(&dir, &mut w, &img);
    }
    w.finish_ok();
}

#[test]
fn an_established_tcp_connection_comes_back_with_tcp_established() {
    take_established("inet-repair", false);
}

#[test]
fn a_connection_left_running_after_tcp_established_still_talks() {
    take_established("inet-repair-leave", true);
}

/// The test is the peer outside the tree: it sends while the tree is
/// checkpointed, which the network lock holds off (without it the peer
/// gets a reset), and both ends talk on after the restore.
#[test]
fn a_connection_to_a_peer_outside_the_tree_survives_with_tcp_established() {
    use rcr_tests::inetops::peer_talk::{AFTER, TO_PEER, UNREAD, WHILE_DOWN};
    use std::io::Read;
    let dir = TestDir::new("inet-peer");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the peer");
    let port = listener.local_addr().unwrap().port().to_string();
    let program = Path::new(env!("CARGO_BIN_EXE_wl_inet_peer"));
    let mut w = Workload::spawn(&dir, program, &[], &[&port]);
    w.wait_ready();
    let (mut peer, _) = listener.accept().expect("accept the tree's connection");
    peer.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let read = |peer: &mut TcpStream, len: usize| {
        let mut got = vec![0u8; len];
        peer.read_exact(&mut got).expect("read from the tree");
        got
    };
    assert_eq!(read(&mut peer, TO_PEER.len()), TO_PEER);
    peer.write_all(UNREAD).expect("send before the dump");
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &["--tcp-established"]);
    peer.write_all(WHILE_DOWN)
        .expect("send while the tree is down");
    restore(&dir, &mut w, &img);
    w.finish_ok();
    assert_eq!(read(&mut peer, AFTER.len()), AFTER);
}
