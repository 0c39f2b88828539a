//! Holds an eventfd at fd 9 (with a count of 5): rcr must refuse to dump it
//! and leave the workload untouched, which the check proves.

use rcr_tests::workload::{self, last_err, Args, Verdict};

/// The fd the refusal message must name.
const EVENTFD: i32 = 9;
const COUNT: u64 = 5;

fn main() {
    let args = Args::init();
    // SAFETY: eventfd and dup2 take plain integers; the old fd is closed
    // once it has been duplicated to the fixed number.
    let ok = unsafe {
        let fd = libc::eventfd(COUNT as u32, libc::EFD_NONBLOCK);
        fd >= 0 && libc::dup2(fd, EVENTFD) == EVENTFD && libc::close(fd) == 0
    };
    if !ok {
        args.fail_early(&format!("eventfd at fd {EVENTFD}: {}", last_err()));
    }
    args.signal_ready();
    workload::wait_for_wake();

    let mut v = Verdict::new();
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own.
    let n = unsafe { libc::read(EVENTFD, (&mut count as *mut u64).cast(), 8) };
    if n == 8 {
        v.eq("eventfd count", count, COUNT);
    } else {
        v.fail(format!("read eventfd fd {EVENTFD}: {n} ({})", last_err()));
    }
    args.finish(v)
}
