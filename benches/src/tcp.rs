//! Many TCP connections: dump (`--tcp-established`) and restore time of a
//! tree holding N established loopback connections, and the cost per
//! connection.
//!
//! The workload is a server (the root) with a listener and the accepted
//! ends, and its child, the client, with the connecting ends. Each side
//! has sent 8 bytes on every connection that the other has not read.
//! Once woken after restore, the server reads the client's bytes, wakes
//! the client and answers on every connection; the client reads the
//! server's bytes from before the dump and the answer; the root exits 0
//! only if both found everything.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// The 8 bytes sent on connection `i` by the client (`from_client`) or the
/// server, before the dump (`round` 0) or after the restore (1).
fn bytes(i: usize, from_client: bool, round: u8) -> [u8; 8] {
    let mut b = (i as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&[u8::from(from_client), round, b'r', b'c']);
    b.try_into().expect("8 bytes")
}

fn read8(s: &mut TcpStream) -> Option<[u8; 8]> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).ok().map(|_| b)
}

/// `--tcp-workload N`.
pub fn tcp_workload(n: usize) -> ! {
    crate::tree::prepare_workload();
    crate::fds::raise_nofile();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("listener address");
    let mut ready = [0; 2];
    // SAFETY: a pipe into an array we own.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: fork; the child only runs the client below and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        crate::tree::quiet_stdout();
        let mut conns: Vec<TcpStream> = (0..n)
            .map(|i| {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.write_all(&bytes(i, true, 0)).expect("client write");
                c
            })
            .collect();
        // SAFETY: one byte to the server on our pipe.
        unsafe { libc::write(ready[1], [1u8].as_ptr().cast(), 1) };
        crate::tree::wait_for_wake();
        let ok = conns.iter_mut().enumerate().all(|(i, c)| {
            read8(c) == Some(bytes(i, false, 0)) && read8(c) == Some(bytes(i, false, 1))
        });
        std::process::exit(if ok { 0 } else { 1 });
    }
    let mut conns: Vec<(usize, TcpStream)> = (0..n)
        .map(|_| {
            let (mut s, _) = listener.accept().expect("accept");
            let mut b = [0u8; 8];
            // The client's bytes stay unread: a peek tells the index.
            while s.peek(&mut b).expect("peek") < 8 {}
            let i = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
            s.write_all(&bytes(i, false, 0)).expect("server write");
            (i, s)
        })
        .collect();
    let mut byte = [0u8];
    // SAFETY: waits for the client's byte on our pipe.
    unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) };
    crate::tree::say_ready();
    crate::tree::wait_for_wake();
    let mut ok = conns
        .iter_mut()
        .all(|(i, s)| read8(s) == Some(bytes(*i, true, 0)));
    let mut status = 0;
    // SAFETY: wakes our own child, then reaps it.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    for (i, s) in &mut conns {
        ok &= s.write_all(&bytes(*i, false, 1)).is_ok();
    }
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    ok &= libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::process::exit(if ok { 0 } else { 1 });
}

/// `--tcp N`: dump and restore of the workload, median of `runs`.
pub fn tcp(wanted: usize, runs: usize, base: &std::path::Path) {
    crate::tree::become_subreaper();
    let n = crate::fds::scaled(wanted);
    if n < wanted {
        println!(
            "note: hard RLIMIT_NOFILE is {} here (raising it needs CAP_SYS_RESOURCE); \
             measuring {n} connections instead of {wanted}",
            crate::fds::raise_nofile()
        );
    }
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = base.join(format!("rcr-bench-tcp-{}-{run}", std::process::id()));
        let args = ["--tcp-workload".into(), n.to_string()];
        results.push(crate::tree::round_trip_tcp(
            &args,
            &dir,
            rcr_engine::PidChoice::Auto,
            true,
        ));
    }
    let median = |f: fn(&crate::tree::RoundTrip) -> f64| crate::median(results.iter().map(f));
    let (dump_s, restore_s) = (median(|r| r.dump_s), median(|r| r.restore_s));
    let freeze_s = median(|r| r.freeze_s);
    let per = |s: f64| s * 1e6 / n as f64;
    println!(
        "rcr benchmark: 2 processes, {n} established loopback TCP connections \
         (--tcp-established), median of {runs}"
    );
    crate::fds::times_table("per connection", [dump_s, freeze_s, restore_s], per);
    println!(
        "{}",
        serde_json::json!({
            "tcp_connections": n, "runs": runs, "dump_ms": dump_s * 1e3,
            "freeze_ms": freeze_s * 1e3, "restore_ms": restore_s * 1e3,
            "dump_us_per_connection": per(dump_s), "restore_us_per_connection": per(restore_s),
        })
    );
}
