//! Holds a fanotify group at fd 9, which rcr cannot checkpoint: the dump
//! must be refused naming it, and the workload go on untouched (the check
//! finds fd 9 still the fanotify group).

use rcr_tests::fdops::{place, sys};
use rcr_tests::workload::{self, Verdict};

const FANOTIFY: i32 = 9;

fn build() -> Result<(), String> {
    // SAFETY: fanotify_init takes plain integers.
    let fd = unsafe { libc::fanotify_init(libc::FAN_CLASS_NOTIF, libc::O_RDONLY as u32) };
    place(sys(fd as i64, "fanotify_init")? as i32, FANOTIFY, 0)
}

fn check(v: &mut Verdict) -> Result<(), String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{FANOTIFY}"))
        .map_err(|e| format!("fd {FANOTIFY}: {e}"))?;
    v.eq(
        "fd 9",
        link.to_string_lossy().into_owned(),
        "anon_inode:[fanotify]".to_owned(),
    );
    Ok(())
}

fn main() {
    workload::run(|_| build(), |_, v| check(v))
}
