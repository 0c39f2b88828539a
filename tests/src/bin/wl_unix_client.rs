//! A unix stream socket at fd 9 connected to the path given as parameter,
//! whose listener lives outside the workload (in the test). After the
//! wake: the connection still carries "still here" to the test.

use rcr_tests::fdops::place;
use rcr_tests::sockops::{connect, send, socket};
use rcr_tests::workload::{self, Args};

const CLIENT: i32 = 9;

fn build(args: &Args) -> Result<(), String> {
    let path = args.params.first().ok_or("no socket path given")?;
    place(socket(libc::SOCK_STREAM)?, CLIENT, 0)?;
    connect(CLIENT, path.as_bytes())
}

fn main() {
    workload::run(build, |_, _| send(CLIENT, b"still here"))
}
