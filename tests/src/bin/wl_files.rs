//! File descriptors and the fs context across a checkpoint:
//! - regular files open O_RDONLY / O_WRONLY / O_RDWR, one O_APPEND, at
//!   various offsets, some O_CLOEXEC;
//! - fd numbers with gaps (7, 50, 100), /dev/null, a dup sharing its offset;
//! - cwd changed to the test dir, umask 027, lowered rlimits (RLIMIT_NOFILE
//!   soft, RLIMIT_CORE soft and hard).
//!
//! The whole fd table (numbers, files, flags, offsets) is compared, then
//! each fd is used to show it still behaves as before. Files are left as
//! they were, so the check can run twice on one image.

use rcr_tests::fdops::{open, place, read_fd, seek, sys, write_fd};
use rcr_tests::pattern;
use rcr_tests::workload::{self, Args, Verdict};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const SEED_A: u64 = 0xa;
const SEED_B: u64 = 0xb;
const SEED_C: u64 = 0xc;
const A_LEN: usize = 4096;
const B_LEN: usize = 1000;
const C_LEN: usize = 2000;
const APPENDED: &[u8] = b"appended!!";
const W_LEN: usize = 300;

/// Where each fd lives.
const FD_A: i32 = 3; // a.txt O_RDWR, offset 123
const FD_A_DUP: i32 = 4; // dup of FD_A
const FD_B: i32 = 5; // b.txt O_WRONLY|O_APPEND, at its end
const FD_NULL: i32 = 6; // /dev/null O_RDWR
const FD_C: i32 = 7; // c.txt O_RDONLY|O_CLOEXEC, offset 77
const FD_W: i32 = 50; // w.txt O_WRONLY|O_CLOEXEC, offset 300
const FD_A2: i32 = 100; // a.txt O_RDONLY, own offset 900
const A_OFF: i64 = 123;
const C_OFF: i64 = 77;
const A2_OFF: i64 = 900;

const NOFILE_SOFT: u64 = 256;
const CORE_SOFT: u64 = 1 << 20;
const CORE_HARD: u64 = 8 << 20;
const UMASK: u32 = 0o027;
/// RLIMIT_CPU ..= RLIMIT_RTTIME.
const RLIMITS: u32 = 16;

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, seed, 0);
    v
}

fn rlimit(res: u32) -> (u64, u64) {
    // SAFETY: getrlimit writes the struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(res, &mut r);
        (r.rlim_cur, r.rlim_max)
    }
}

fn set_rlimit(res: u32, soft: u64, hard: u64) -> Result<(), String> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    sys(
        unsafe { libc::setrlimit(res, &r) } as i64,
        &format!("setrlimit {res}"),
    )?;
    Ok(())
}

fn build(dir: &Path) -> Result<(), String> {
    std::env::set_current_dir(dir).map_err(|e| format!("chdir: {e}"))?;
    fs::write("a.txt", content(SEED_A, A_LEN)).map_err(|e| e.to_string())?;
    fs::write("b.txt", content(SEED_B, B_LEN)).map_err(|e| e.to_string())?;
    fs::write("c.txt", content(SEED_C, C_LEN)).map_err(|e| e.to_string())?;

    place(open("a.txt", libc::O_RDWR)?, FD_A, 0)?;
    sys(seek(FD_A, A_OFF, libc::SEEK_SET), "seek a")?;
    // SAFETY: dup of our own fd.
    let dup = sys(unsafe { libc::dup(FD_A) } as i64, "dup")? as i32;
    place(dup, FD_A_DUP, 0)?;
    place(open("b.txt", libc::O_WRONLY | libc::O_APPEND)?, FD_B, 0)?;
    sys(write_fd(FD_B, APPENDED) as i64, "append b")?;
    place(open("/dev/null", libc::O_RDWR)?, FD_NULL, 0)?;
    place(
        open("c.txt", libc::O_RDONLY | libc::O_CLOEXEC)?,
        FD_C,
        libc::O_CLOEXEC,
    )?;
    sys(seek(FD_C, C_OFF, libc::SEEK_SET), "seek c")?;
    let w = open(
        "w.txt",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
    )?;
    place(w, FD_W, libc::O_CLOEXEC)?;
    sys(write_fd(FD_W, &content(0x77, W_LEN)) as i64, "write w")?;
    place(open("a.txt", libc::O_RDONLY)?, FD_A2, 0)?;
    sys(seek(FD_A2, A2_OFF, libc::SEEK_SET), "seek a2")?;

    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(UMASK) };
    let (_, nofile_hard) = rlimit(libc::RLIMIT_NOFILE);
    set_rlimit(libc::RLIMIT_NOFILE, NOFILE_SOFT, nofile_hard)?;
    let (_, core_hard) = rlimit(libc::RLIMIT_CORE);
    set_rlimit(libc::RLIMIT_CORE, CORE_SOFT, core_hard.min(CORE_HARD))?;
    Ok(())
}

/// One open fd as the process sees it.
#[derive(Debug, PartialEq, Eq)]
struct FdInfo {
    fd: i32,
    target: String,
    dev_ino_rdev_mode: (u64, u64, u64, u32),
    fl: i32,
    fd_flags: i32,
    offset: i64,
}

/// Every open fd (the fd used to list them is closed again, so left out).
fn fd_table() -> Vec<FdInfo> {
    let mut fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return Vec::new(),
    };
    fds.sort();
    fds.into_iter()
        .filter_map(|fd| {
            // SAFETY: fstat/fcntl on an fd number into a struct we own.
            let (st, fl, fd_flags) = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(fd, &mut st) != 0 {
                    return None;
                }
                (
                    st,
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            let target = fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some(FdInfo {
                fd,
                target,
                dev_ino_rdev_mode: (st.st_dev, st.st_ino, st.st_rdev, st.st_mode),
                fl,
                fd_flags,
                offset: seek(fd, 0, libc::SEEK_CUR),
            })
        })
        .collect()
}

struct Snapshot {
    fds: Vec<FdInfo>,
    cwd: std::path::PathBuf,
    rlimits: Vec<(u64, u64)>,
}

fn snapshot() -> Snapshot {
    Snapshot {
        fds: fd_table(),
        cwd: std::env::current_dir().unwrap_or_default(),
        rlimits: (0..RLIMITS).map(rlimit).collect(),
    }
}

fn check_fd_table(v: &mut Verdict, before: &Snapshot, after: &Snapshot) {
    let nums = |s: &Snapshot| s.fds.iter().map(|f| f.fd).collect::<Vec<_>>();
    v.eq("open fds", nums(after), nums(before));
    for b in &before.fds {
        match after.fds.iter().find(|a| a.fd == b.fd) {
            Some(a) if a != b => v.fail(format!("fd {}: got {a:?}, want {b:?}", b.fd)),
            _ => {}
        }
    }
    // The table taken before must itself be what build() made.
    let find = |fd: i32| before.fds.iter().find(|f| f.fd == fd);
    let expect = [
        (FD_A, libc::O_RDWR, 0, A_OFF),
        (FD_A_DUP, libc::O_RDWR, 0, A_OFF),
        (
            FD_B,
            libc::O_WRONLY | libc::O_APPEND,
            0,
            (B_LEN + APPENDED.len()) as i64,
        ),
        (FD_C, libc::O_RDONLY, libc::FD_CLOEXEC, C_OFF),
        (FD_W, libc::O_WRONLY, libc::FD_CLOEXEC, W_LEN as i64),
        (FD_A2, libc::O_RDONLY, 0, A2_OFF),
    ];
    for (fd, mode, fd_flags, offset) in expect {
        match find(fd) {
            None => v.fail(format!("fd {fd} was not open before the checkpoint")),
            Some(f) => {
                v.eq(
                    &format!("fd {fd} access mode/append"),
                    f.fl & (libc::O_ACCMODE | libc::O_APPEND),
                    mode,
                );
                v.eq(&format!("fd {fd} FD_CLOEXEC"), f.fd_flags, fd_flags);
                v.eq(&format!("fd {fd} offset"), f.offset, offset);
            }
        }
    }
}

fn check_use(v: &mut Verdict) -> Result<(), String> {
    let a = content(SEED_A, A_LEN);
    let off = A_OFF as usize;
    // Reading through FD_A moves FD_A_DUP too (one open file), not FD_A2.
    v.eq(
        "read a.txt via fd 3",
        read_fd(FD_A, 10)?,
        a[off..off + 10].to_vec(),
    );
    v.eq(
        "offset of the dup after reading fd 3",
        seek(FD_A_DUP, 0, libc::SEEK_CUR),
        A_OFF + 10,
    );
    let off2 = A2_OFF as usize;
    v.eq(
        "read a.txt via fd 100",
        read_fd(FD_A2, 10)?,
        a[off2..off2 + 10].to_vec(),
    );
    v.eq(
        "offset of fd 3 after reading fd 100",
        seek(FD_A, 0, libc::SEEK_CUR),
        A_OFF + 10,
    );
    let c = content(SEED_C, C_LEN);
    let offc = C_OFF as usize;
    v.eq(
        "read c.txt via fd 7",
        read_fd(FD_C, 10)?,
        c[offc..offc + 10].to_vec(),
    );

    // O_APPEND writes at the end wherever the offset is.
    let b_len = (B_LEN + APPENDED.len()) as u64;
    sys(seek(FD_B, 0, libc::SEEK_SET), "seek b")?;
    sys(write_fd(FD_B, b"Z") as i64, "write b")?;
    let b = fs::read("b.txt").map_err(|e| e.to_string())?;
    v.eq(
        "b.txt length after an O_APPEND write",
        b.len() as u64,
        b_len + 1,
    );
    v.eq("last byte of b.txt", b.last().copied(), Some(b'Z'));
    v.eq(
        "b.txt before the append",
        &b[..B_LEN],
        &content(SEED_B, B_LEN)[..],
    );
    // SAFETY: ftruncate of our own fd back to the size it had.
    sys(
        unsafe { libc::ftruncate(FD_B, b_len as i64) } as i64,
        "truncate b",
    )?;

    sys(write_fd(FD_W, b"more!") as i64, "write w")?;
    v.eq(
        "w.txt length",
        fs::metadata("w.txt").map_err(|e| e.to_string())?.len(),
        W_LEN as u64 + 5,
    );
    // SAFETY: ftruncate of our own fd back to the size it had.
    sys(
        unsafe { libc::ftruncate(FD_W, W_LEN as i64) } as i64,
        "truncate w",
    )?;
    sys(seek(FD_W, W_LEN as i64, libc::SEEK_SET), "seek w")?;

    v.eq("write to /dev/null", write_fd(FD_NULL, b"x"), 1);
    v.eq("read from /dev/null", read_fd(FD_NULL, 8)?, Vec::new());

    // cwd: relative paths resolve in the test dir; umask shapes new files.
    let by_path = fs::read("a.txt").map_err(|e| e.to_string())?;
    v.check(by_path == a, || {
        "a.txt read by relative path differs".into()
    });
    let probe = "umask-probe";
    let fd = open(probe, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
    // SAFETY: close of the fd just opened.
    unsafe { libc::close(fd) };
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(probe)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode()
        & 0o777;
    let _ = fs::remove_file(probe);
    v.eq("mode of a new 0644 file (umask)", mode, 0o644 & !UMASK);
    // SAFETY: umask query and set back.
    let mask = unsafe {
        let m = libc::umask(0);
        libc::umask(m);
        m
    };
    v.eq("umask", mask, UMASK);
    Ok(())
}

fn main() {
    let args = Args::init();
    let dir =
        fs::canonicalize(args.dir()).unwrap_or_else(|e| args.fail_early(&format!("test dir: {e}")));
    build(&dir).unwrap_or_else(|e| args.fail_early(&e));
    let before = snapshot();
    args.signal_ready();
    workload::wait_for_wake();

    let after = snapshot();
    let mut v = Verdict::new();
    check_fd_table(&mut v, &before, &after);
    v.eq(
        "cwd",
        after.cwd.as_os_str().as_bytes(),
        dir.as_os_str().as_bytes(),
    );
    for (res, (a, b)) in after.rlimits.iter().zip(&before.rlimits).enumerate() {
        v.eq(&format!("rlimit {res} (soft, hard)"), a, b);
    }
    v.eq(
        "RLIMIT_NOFILE soft",
        rlimit(libc::RLIMIT_NOFILE).0,
        NOFILE_SOFT,
    );
    v.eq("RLIMIT_CORE soft", rlimit(libc::RLIMIT_CORE).0, CORE_SOFT);
    v.check(rlimit(libc::RLIMIT_CORE).1 <= CORE_HARD, || {
        "RLIMIT_CORE hard not lowered".into()
    });
    if let Err(e) = check_use(&mut v) {
        v.fail(e);
    }
    args.finish(v)
}
