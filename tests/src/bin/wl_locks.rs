//! Advisory locks across a checkpoint, in a process and its child.
//!
//! `locks-a`: an flock(LOCK_EX) on the open file at fd 9, which the child
//! shares (inherited). `locks-b` through fd 10 (shared too): the parent
//! holds POSIX locks WRITE [0, 10) and READ [20, EOF), the child a POSIX
//! WRITE [10, 15), and through its own fd 11 an OFD lock WRITE [15, 20).
//! After restore the parent checks that the locks are held by the right
//! owners, releases its own and sees them gone, then ends the child and
//! sees the child's go with it.

use rcr_tests::fdops::{open, place, sys};
use rcr_tests::workload::{self, Args, Verdict};

const FILE_A: i32 = 9;
const FILE_B: i32 = 10;
const CHILD_OFD: i32 = 11;

/// (type, start, len) of a `struct flock` as F_SETLK/F_GETLK take it.
fn flock(l_type: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: l_type as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

fn set_lock(fd: i32, cmd: i32, l_type: i32, start: i64, len: i64) -> Result<(), String> {
    let fl = flock(l_type, start, len);
    // SAFETY: fcntl reads the struct we own.
    let rc = unsafe { libc::fcntl(fd, cmd, &fl) };
    sys(rc as i64, &format!("lock fd {fd} [{start}, +{len})")).map(|_| ())
}

/// Who would block a write lock on [start, +len) asked through `fd`
/// (`cmd` F_GETLK or F_OFD_GETLK): (type, pid), F_UNLCK when nobody.
fn blocker(fd: i32, cmd: i32, start: i64, len: i64) -> Result<(i32, i32), String> {
    let mut fl = flock(libc::F_WRLCK, start, len);
    // SAFETY: fcntl writes the conflicting lock into the struct we own.
    let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    sys(rc as i64, &format!("get lock fd {fd} [{start}, +{len})"))?;
    let pid = if fl.l_type == libc::F_UNLCK as i16 {
        0
    } else {
        fl.l_pid
    };
    Ok((fl.l_type as i32, pid))
}

fn path(args: &Args, name: &str) -> String {
    args.dir().join(name).to_string_lossy().into_owned()
}

/// The child: takes its locks, says so on `done`, then waits to be killed.
fn child(args: &Args, done: i32) -> Result<(), String> {
    // First: placing closes a descriptor of the file, which would drop
    // the process's POSIX locks on it.
    place(open(&path(args, "locks-b"), libc::O_RDWR)?, CHILD_OFD, 0)?;
    set_lock(FILE_B, libc::F_SETLK, libc::F_WRLCK, 10, 5)?;
    set_lock(CHILD_OFD, libc::F_OFD_SETLK, libc::F_WRLCK, 15, 5)?;
    // SAFETY: writes one byte from a local.
    sys(
        unsafe { libc::write(done, b"k".as_ptr().cast(), 1) } as i64,
        "write",
    )?;
    Ok(())
}

fn build(args: &Args) -> Result<i32, String> {
    place(
        open(&path(args, "locks-a"), libc::O_RDWR | libc::O_CREAT)?,
        FILE_A,
        0,
    )?;
    place(
        open(&path(args, "locks-b"), libc::O_RDWR | libc::O_CREAT)?,
        FILE_B,
        0,
    )?;
    // SAFETY: flock on our descriptor.
    sys(
        unsafe { libc::flock(FILE_A, libc::LOCK_EX) } as i64,
        "flock",
    )?;
    set_lock(FILE_B, libc::F_SETLK, libc::F_WRLCK, 0, 10)?;
    set_lock(FILE_B, libc::F_SETLK, libc::F_RDLCK, 20, 0)?;
    let mut p = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    sys(unsafe { libc::pipe(p.as_mut_ptr()) } as i64, "pipe")?;
    // SAFETY: the workload is single-threaded; the child only makes syscalls.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if let Err(e) = child(args, p[1]) {
            eprintln!("child: {e}");
            std::process::exit(1);
        }
        loop {
            // SAFETY: waits for a signal; the parent kills the child.
            unsafe { libc::pause() };
        }
    }
    sys(pid as i64, "fork")?;
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a local; closes our pipe ends.
    unsafe {
        let n = libc::read(p[0], byte.as_mut_ptr().cast(), 1);
        libc::close(p[0]);
        libc::close(p[1]);
        if n != 1 {
            return Err("the child did not take its locks".into());
        }
    }
    Ok(pid)
}

fn check(args: &Args, v: &mut Verdict, kid: i32) -> Result<(), String> {
    let me = workload::getpid();
    let (wr, rd, un) = (libc::F_WRLCK, libc::F_RDLCK, libc::F_UNLCK);
    v.eq(
        "child's POSIX lock, seen by the parent",
        blocker(FILE_B, libc::F_GETLK, 10, 5)?,
        (wr, kid),
    );
    let other_b = open(&path(args, "locks-b"), libc::O_RDWR)?;
    let ofd = libc::F_OFD_GETLK;
    v.eq(
        "parent's write lock",
        blocker(other_b, ofd, 0, 10)?,
        (wr, me),
    );
    v.eq("child's OFD lock", blocker(other_b, ofd, 15, 5)?, (wr, -1));
    v.eq(
        "parent's read lock",
        blocker(other_b, ofd, 20, 10)?,
        (rd, me),
    );
    let other_a = open(&path(args, "locks-a"), libc::O_RDWR)?;
    let try_flock = || {
        // SAFETY: flock on our descriptor.
        let rc = unsafe { libc::flock(other_a, libc::LOCK_EX | libc::LOCK_NB) };
        (rc, workload::last_err().raw_os_error().filter(|_| rc < 0))
    };
    v.eq(
        "flock from another open file",
        try_flock(),
        (-1, Some(libc::EWOULDBLOCK)),
    );

    // The owners can let go.
    // SAFETY: flock on our descriptor.
    sys(
        unsafe { libc::flock(FILE_A, libc::LOCK_UN) } as i64,
        "flock(LOCK_UN)",
    )?;
    v.eq("flock after LOCK_UN", try_flock(), (0, None));
    set_lock(FILE_B, libc::F_SETLK, un, 0, 0)?;
    v.eq(
        "parent's write lock released",
        blocker(other_b, ofd, 0, 10)?,
        (un, 0),
    );
    v.eq(
        "parent's read lock released",
        blocker(other_b, ofd, 20, 10)?,
        (un, 0),
    );
    v.eq(
        "child's OFD lock still held",
        blocker(other_b, ofd, 15, 5)?,
        (wr, -1),
    );
    // SAFETY: ends and reaps our own child.
    unsafe {
        libc::kill(kid, libc::SIGKILL);
        libc::waitpid(kid, std::ptr::null_mut(), 0);
    }
    v.eq(
        "child's locks after it ended",
        blocker(other_b, ofd, 10, 10)?,
        (un, 0),
    );
    Ok(())
}

fn main() {
    let args = Args::init();
    let kid = build(&args).unwrap_or_else(|e| args.fail_early(&e));
    args.signal_ready_with_descendants(&[kid]);
    workload::wait_for_wake();
    let mut v = Verdict::new();
    if let Err(e) = check(&args, &mut v, kid) {
        v.fail(e);
    }
    args.finish(v)
}
