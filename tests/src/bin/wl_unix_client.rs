//! A unix stream socket at fd 9 connected to the path given as parameter,
//! whose listener lives outside the workload (in the test). After the
//! wake: the connection still carries "still here" to the test.
//! With the parameter `netlink`, fd 9 is a netlink socket instead.

use rcr_tests::fdops::{place, sys};
use rcr_tests::sockops::{connect, send, socket};
use rcr_tests::workload::{self, Args};

const CLIENT: i32 = 9;

fn build(args: &Args) -> Result<(), String> {
    let path = args.params.first().ok_or("no socket path given")?;
    if path == "netlink" {
        // SAFETY: socket() takes plain integers.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) };
        return place(sys(fd as i64, "socket(AF_NETLINK)")? as i32, CLIENT, 0);
    }
    place(socket(libc::SOCK_STREAM)?, CLIENT, 0)?;
    connect(CLIENT, path.as_bytes())
}

fn main() {
    workload::run(build, |args, _| match args.params[0].as_str() {
        "netlink" => Ok(()),
        _ => send(CLIENT, b"still here"),
    })
}
