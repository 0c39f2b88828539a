//! A unix socket at fd 9 whose peer lives outside the workload (in the
//! test). `wl_unix_client <ready> <result> PATH [dgram|accept]`: a stream
//! socket connected to the listener at PATH; with `dgram`, a datagram
//! socket connected to the receiver bound at PATH; with `accept`, the
//! workload listens at PATH and fd 9 is the connection it accepted (its
//! peer, the test's client, has no name). After the wake: the socket still
//! carries "still here" to the test. With the parameter `netlink`, fd 9 is a
//! netlink socket instead.

use rcr_tests::fdops::{place, sys};
use rcr_tests::sockops::{accept, bind, connect, listen, send, socket};
use rcr_tests::workload::{self, Args};

const CLIENT: i32 = 9;

fn build(args: &Args) -> Result<(), String> {
    let path = args.params.first().ok_or("no socket path given")?;
    if path == "netlink" {
        // SAFETY: socket() takes plain integers.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
        return place(sys(fd as i64, "socket(AF_NETLINK)")? as i32, CLIENT, 0);
    }
    match args.params.get(1).map(String::as_str) {
        None => {
            place(socket(libc::SOCK_STREAM)?, CLIENT, 0)?;
            connect(CLIENT, path.as_bytes())
        }
        Some("dgram") => {
            place(socket(libc::SOCK_DGRAM)?, CLIENT, 0)?;
            connect(CLIENT, path.as_bytes())
        }
        Some("accept") => {
            let listener = socket(libc::SOCK_STREAM)?;
            bind(listener, path.as_bytes())?;
            listen(listener, 1)?;
            place(accept(listener)?, CLIENT, 0)?;
            // SAFETY: closes the listener made above; only fd 9 is kept.
            unsafe { libc::close(listener) };
            Ok(())
        }
        Some(other) => Err(format!("unknown mode {other:?}")),
    }
}

fn main() {
    workload::run(build, |args, _| match args.params[0].as_str() {
        "netlink" => Ok(()),
        _ => send(CLIENT, b"still here"),
    })
}
