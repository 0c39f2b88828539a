//! inotify across a checkpoint: an instance at fd 9 (O_NONBLOCK) watches
//! a directory of its own (the test dir sees the harness's files come and
//! go) for IN_CREATE (wd 1) and a file for IN_MODIFY|IN_CLOSE_WRITE
//! (wd 3: wd 2 was added and removed, leaving a gap the restore must keep).
//! After restore: the watches with their wds and masks, and events from both.

use rcr_tests::fdops::{pending_bytes, place, read_fd, status_flags, sys};
use rcr_tests::workload::{self, Args, Verdict};
use std::ffi::CString;
use std::io::Write;

const INOTIFY: i32 = 9;
const DIR_MASK: u32 = libc::IN_CREATE;
const FILE_MASK: u32 = libc::IN_MODIFY | libc::IN_CLOSE_WRITE;

fn cpath(p: &std::path::Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())
}

fn add_watch(fd: i32, path: &std::path::Path, mask: u32) -> Result<i32, String> {
    let c = cpath(path)?;
    // SAFETY: adds a watch by a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    Ok(sys(wd as i64, &format!("inotify_add_watch {}", path.display()))? as i32)
}

fn watched_dir(args: &Args) -> std::path::PathBuf {
    args.dir().join("inotify")
}

fn build(args: &Args) -> Result<(), String> {
    let dir = watched_dir(args);
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("gap"), b"").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("watched"), b"").map_err(|e| e.to_string())?;
    // SAFETY: inotify_init1 takes plain integers.
    let fd = sys(
        unsafe { libc::inotify_init1(libc::IN_NONBLOCK) } as i64,
        "inotify_init1",
    )? as i32;
    add_watch(fd, &dir, DIR_MASK)?;
    let gap = add_watch(fd, &dir.join("gap"), libc::IN_MODIFY)?;
    // SAFETY: removes the watch just added.
    sys(
        unsafe { libc::inotify_rm_watch(fd, gap) } as i64,
        "inotify_rm_watch",
    )?;
    // The removal queued an IN_IGNORED event: read it so nothing is unread.
    read_fd(fd, 4096)?;
    add_watch(fd, &dir.join("watched"), FILE_MASK)?;
    place(fd, INOTIFY, 0)
}

/// (wd, mask, name) of each event in `buf`.
fn events(buf: &[u8]) -> Vec<(i32, u32, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let word = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
        let len = word(12) as usize;
        let name = buf.get(at + 16..at + 16 + len).unwrap_or_default();
        let name = String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_owned();
        out.push((word(0) as i32, word(4), name));
        at += 16 + len;
    }
    out
}

fn check(args: &Args, v: &mut Verdict) -> Result<(), String> {
    v.eq(
        "fd 9 flags",
        status_flags(INOTIFY)?,
        libc::O_RDONLY | libc::O_NONBLOCK,
    );
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{INOTIFY}"))
        .map_err(|e| e.to_string())?;
    let watches: Vec<String> = info
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("inotify ")?;
            let field = |k: &str| l.split(' ').find(|w| w.starts_with(k)).map(str::to_owned);
            Some(format!("{} {}", field("wd:")?, field("mask:")?))
        })
        .collect();
    let mut watches = watches;
    watches.sort();
    v.eq(
        "watches",
        watches,
        vec![
            format!("wd:1 mask:{DIR_MASK:x}"),
            format!("wd:3 mask:{FILE_MASK:x}"),
        ],
    );
    v.eq("unread bytes", pending_bytes(INOTIFY)?, 0);
    let dir = watched_dir(args);
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("watched"))
        .and_then(|mut f| f.write_all(b"x"))
        .map_err(|e| format!("writing the watched file: {e}"))?;
    std::fs::write(dir.join("created"), b"").map_err(|e| e.to_string())?;
    let got = events(&read_fd(INOTIFY, 4096)?);
    let want = vec![
        (3, libc::IN_MODIFY, String::new()),
        (3, libc::IN_CLOSE_WRITE, String::new()),
        (1, libc::IN_CREATE, "created".to_owned()),
    ];
    v.eq("events after restore", got, want);
    Ok(())
}

fn main() {
    workload::run(build, check)
}
