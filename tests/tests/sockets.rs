//! Unix sockets: pairs of each kind with data queued both ways, listeners
//! that accept new clients after restore, an event-loop server answering
//! the test after restore, and peers outside the tree: refused, or
//! connected to again by name with `--external-unix`.

use rcr_tests::harness::{dump, restore, restore_with, roundtrip, run_rcr, TestDir, Workload};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn pair_roundtrip(kind: &str) {
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_pair"));
    roundtrip(
        &format!("unix-{kind}"),
        program,
        &[],
        &[kind],
        1,
        Duration::ZERO,
    );
}

#[test]
fn stream_pairs_keep_their_bytes_both_ways_and_shutdown() {
    pair_roundtrip("stream");
}

#[test]
fn datagram_pairs_keep_their_messages_and_bound_names() {
    pair_roundtrip("dgram");
}

#[test]
fn seqpacket_pairs_keep_their_message_boundaries() {
    pair_roundtrip("seqpacket");
}

#[test]
fn listeners_accept_new_clients_after_restore() {
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_listen"));
    roundtrip("unix-listen", program, &[], &[], 1, Duration::ZERO);
}

/// One request line, one answer line.
fn ask(conn: &mut BufReader<UnixStream>, line: &str) -> String {
    writeln!(conn.get_mut(), "{line}").expect("send a request to the server");
    let mut answer = String::new();
    conn.read_line(&mut answer)
        .expect("read the server's answer");
    answer.trim_end().to_owned()
}

fn ticks(conn: &mut BufReader<UnixStream>) -> u64 {
    let answer = ask(conn, "ticks");
    answer
        .strip_prefix("ticks ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad answer to ticks: {answer:?}"))
}

fn connect(path: &Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(path).expect("connect to the restored server");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

#[test]
fn an_event_loop_server_answers_new_clients_after_restore() {
    let dir = TestDir::new("unix-evloop");
    let mut w = Workload::spawn(&dir, Path::new(env!("CARGO_BIN_EXE_wl_evloop")), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    restore(&dir, &mut w, &img);
    let path = dir.join("evloop.sock");
    let mut a = connect(&path);
    let mut b = connect(&path);
    assert_eq!(ask(&mut a, "ping 7"), "pong 7");
    assert_eq!(ask(&mut b, "ping 8"), "pong 8");
    assert_eq!(ask(&mut a, "kick"), "kicked 1");
    assert_eq!(ask(&mut b, "kick"), "kicked 2");
    // The timerfd keeps firing: its count grows (bounded wait, no timing).
    let first = ticks(&mut a);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&mut b) <= first {
        assert!(Instant::now() < deadline, "timer ticks stuck at {first}");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.finish_ok();
}

/// `rcr dump` of the workload fails naming its pid and `keywords`, leaves
/// no image, and the workload goes on and checks its state.
fn refused_dump(dir: &TestDir, w: &mut Workload, keywords: &[&str]) {
    let img = dir.join("img");
    let pid = w.pid.to_string();
    let args = ["dump", "--tree", &pid, "-D", img.to_str().unwrap()];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let mut want = vec![pid.as_str()];
    want.extend(keywords);
    run_rcr(dir, &args).assert_failure(&want);
    assert!(!img.exists(), "a refused dump left {}", img.display());
    assert!(w.is_running(), "the workload died after a refused dump");
    w.finish_ok();
}

#[test]
fn a_netlink_socket_is_refused_by_family() {
    let dir = TestDir::new("unix-netlink");
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_client"));
    let mut w = Workload::spawn(&dir, program, &[], &["netlink"]);
    w.wait_ready();
    refused_dump(&dir, &mut w, &["fd 9", "AF_NETLINK"]);
}

#[test]
fn a_socket_connected_outside_the_tree_is_refused() {
    let dir = TestDir::new("unix-outside");
    let path = dir.join("outside.sock");
    let listener = UnixListener::bind(&path).expect("bind the test's listener");
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_client"));
    let mut w = Workload::spawn(&dir, program, &[], &[path.to_str().unwrap()]);
    let (mut peer, _) = listener.accept().expect("accept the workload");
    w.wait_ready();
    let img = dir.join("img");
    let pid = w.pid.to_string();
    let run = run_rcr(
        &dir,
        &[
            "dump".as_ref(),
            "--tree".as_ref(),
            pid.as_ref(),
            "-D".as_ref(),
            img.as_os_str(),
        ],
    );
    run.assert_failure(&[&pid, "fd 9", "unix", "outside", "--external-unix"]);
    assert!(!img.exists(), "a refused dump left {}", img.display());
    assert!(w.is_running(), "the workload died after a refused dump");
    w.finish_ok();
    let mut got = [0u8; 10];
    peer.read_exact(&mut got).expect("read from the workload");
    assert_eq!(&got, b"still here");
}

fn rcr_args<'a>(words: &'a [&'a str], img: &'a Path) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    args.extend([OsStr::new("-D"), img.as_os_str()]);
    args
}

/// Dumps the client with --external-unix; a restore without the option is
/// refused naming the pid, fd 9 and `peer`; with it the workload comes back
/// connected to `peer` again. Returns the restore's run.
fn external_roundtrip(dir: &TestDir, w: &mut Workload, peer: &Path) -> rcr_tests::harness::RcrRun {
    let img = dir.join("img");
    dump(dir, w, &img, &["--external-unix"]);
    let pid = w.pid.to_string();
    run_rcr(dir, &rcr_args(&["restore"], &img)).assert_failure(&[
        &pid,
        "fd 9",
        peer.to_str().unwrap(),
        "--external-unix",
    ]);
    restore_with(dir, w, &img, &[], &["--external-unix"])
}

#[test]
fn a_stream_socket_connects_to_its_outside_listener_again() {
    let dir = TestDir::new("unix-outside-stream");
    let path = dir.join("outside.sock");
    let listener = UnixListener::bind(&path).expect("bind the test's listener");
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_client"));
    let mut w = Workload::spawn(&dir, program, &[], &[path.to_str().unwrap()]);
    let (mut old, _) = listener.accept().expect("accept the workload");
    old.write_all(b"never read")
        .expect("queue bytes to the workload");
    w.wait_ready();
    let run = external_roundtrip(&dir, &mut w, &path);
    assert!(
        run.stderr.contains("warning")
            && run.stderr.contains("fd 9")
            && run.stderr.contains("10 bytes"),
        "no warning of the lost bytes: {}",
        run.stderr
    );
    // The old connection ended with the dumped process (reset: it held
    // unread bytes).
    let mut rest = [0u8; 16];
    match old.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the old connection still carries {other:?}"),
    }
    let (mut new, _) = listener
        .accept()
        .expect("the restored workload connected again");
    w.finish_ok();
    let mut got = [0u8; 10];
    new.read_exact(&mut got)
        .expect("read from the restored workload");
    assert_eq!(&got, b"still here");
}

#[test]
fn a_datagram_socket_connects_to_its_outside_receiver_again() {
    let dir = TestDir::new("unix-outside-dgram");
    let path = dir.join("log.sock");
    let receiver = UnixDatagram::bind(&path).expect("bind the test's receiver");
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_client"));
    let mut w = Workload::spawn(&dir, program, &[], &[path.to_str().unwrap(), "dgram"]);
    w.wait_ready();
    let run = external_roundtrip(&dir, &mut w, &path);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    w.finish_ok();
    receiver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = [0u8; 32];
    let n = receiver
        .recv(&mut got)
        .expect("a datagram from the restored workload");
    assert_eq!(&got[..n], b"still here");
}

#[test]
fn an_outside_peer_without_a_name_is_refused() {
    let dir = TestDir::new("unix-outside-unnamed");
    let path = dir.join("server.sock");
    let program = Path::new(env!("CARGO_BIN_EXE_wl_unix_client"));
    let mut w = Workload::spawn(&dir, program, &[], &[path.to_str().unwrap(), "accept"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match UnixStream::connect(&path) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connect to the workload: {e}"),
        }
    };
    w.wait_ready();
    let img = dir.join("img");
    let pid = w.pid.to_string();
    run_rcr(
        &dir,
        &rcr_args(&["dump", "--external-unix", "--tree", &pid], &img),
    )
    .assert_failure(&[&pid, "fd 9", "unnamed", "no name"]);
    assert!(!img.exists(), "a refused dump left {}", img.display());
    w.finish_ok();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).expect("read from the workload");
    assert_eq!(&got, b"still here");
}
