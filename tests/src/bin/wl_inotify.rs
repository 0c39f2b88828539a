//! Holds an inotify instance at fd 9 watching the test dir: rcr must refuse
//! to dump it and leave the workload untouched, which the check proves (a
//! file created after the refused dump still shows up as an event).

use rcr_tests::fdops::{read_fd, sys};
use rcr_tests::workload::{self, Args, Verdict};
use std::ffi::CString;

/// The fd the refusal message must name.
const INOTIFY: i32 = 9;

fn build(args: &Args) -> Result<(), String> {
    let dir = CString::new(args.dir().into_os_string().into_encoded_bytes())
        .map_err(|e| e.to_string())?;
    // SAFETY: inotify calls with plain integers and a NUL-terminated path;
    // dup2 onto a number we chose, then close the original.
    unsafe {
        let fd = sys(
            libc::inotify_init1(libc::IN_NONBLOCK) as i64,
            "inotify_init1",
        )? as i32;
        sys(
            libc::inotify_add_watch(fd, dir.as_ptr(), libc::IN_CREATE) as i64,
            "inotify_add_watch",
        )?;
        sys(libc::dup2(fd, INOTIFY) as i64, "dup2")?;
        libc::close(fd);
    }
    Ok(())
}

fn main() {
    let args = Args::init();
    if let Err(e) = build(&args) {
        args.fail_early(&e);
    }
    args.signal_ready();
    workload::wait_for_wake();

    let mut v = Verdict::new();
    // The harness removes the result file before waking us; make a file of
    // our own and expect its event.
    let probe = args.dir().join("inotify-probe");
    match std::fs::write(&probe, b"x")
        .map_err(|e| e.to_string())
        .and_then(|()| read_fd(INOTIFY, 4096))
    {
        Ok(events) => v.check(!events.is_empty(), || {
            "no inotify event after restore".into()
        }),
        Err(e) => v.fail(e),
    }
    args.finish(v)
}
