//! Shared memory between two processes, and SysV semaphores and messages,
//! across a checkpoint. `wl_ipc <ready> <result> sysv|posix`.
//!
//! - `sysv`: the root creates a SysV segment of [`PAGES`] pages and
//!   attaches it, a semaphore set with [`SEM_VALUES`] and a message queue
//!   holding [`MESSAGES`], and attaches a page of a segment it then
//!   removes; then forks a child, which inherits the attachments. The segment's id goes to the file `shmid` in the test
//!   directory.
//! - `posix`: the root creates `/dev/shm/rcr-ipc-<pid>` and maps it; the
//!   child opens and maps it on its own.
//!
//! Both: the root fills page 0 and the child page 1 before ready. After the
//! wake the root checks page 1, the objects' ids, permissions and contents
//! (semaphores still work, messages come out in order with their types),
//! fills page 2 and raises a flag; the child checks page 0 and 2, then
//! fills page 3 and acks; the root checks page 3: the memory is still
//! shared both ways. The root removes every object it made and reaps the
//! child (its exit status is its verdict). Every wait has a deadline.

use rcr_tests::fdops::sys;
use rcr_tests::pattern;
use rcr_tests::workload::{self, fork_child, getpid, last_err, Args, Verdict};
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const PAGES: usize = 4;
const WORDS: usize = PAGE / 8;
const SEEDS: [u64; 4] = [0x1c01, 0x1c02, 0x1c03, 0x1c04];
const SEM_VALUES: [u16; 3] = [5, 0, 42];
const SEM_MODE: u32 = 0o640;
const SHM_MODE: u32 = 0o600;
const MESSAGES: [(i64, &str); 3] = [(1, "first"), (7, "second, longer"), (2, "third")];
const TIMEOUT: Duration = Duration::from_secs(60);
/// Values of the flag word, in the order they are set.
const CHILD_READY: u64 = 1;
const ROOT_WROTE: u64 = 2;
const CHILD_ACKED: u64 = 3;

/// The shared region: [`PAGES`] pages of patterns, then a page whose first
/// word is the flag.
struct Region {
    base: *mut u64,
}

impl Region {
    fn page(&self, i: usize) -> &[AtomicU64] {
        // SAFETY: the mapping holds PAGES + 1 pages for the whole run;
        // AtomicU64 has the layout of u64.
        unsafe { std::slice::from_raw_parts(self.base.add(i * WORDS) as *const AtomicU64, WORDS) }
    }

    fn flag(&self) -> &AtomicU64 {
        &self.page(PAGES)[0]
    }

    fn fill(&self, i: usize) {
        for (k, w) in self.page(i).iter().enumerate() {
            w.store(pattern::word(SEEDS[i], k as u64), Ordering::Relaxed);
        }
    }

    fn check(&self, i: usize) -> Result<(), String> {
        let words: Vec<u64> = self
            .page(i)
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        match pattern::word_mismatches(&words, SEEDS[i]) {
            None => Ok(()),
            Some((first, n)) => Err(format!("page {i}: {n} words differ from word {first}")),
        }
    }

    fn wait_flag(&self, want: u64) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        while self.flag().load(Ordering::Acquire) != want {
            if Instant::now() > deadline {
                return Err(format!("flag {want} never came"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

const LEN: usize = (PAGES + 1) * PAGE;

fn map_fd(fd: i32) -> Result<Region, String> {
    // SAFETY: a fresh shared mapping of the whole object, kept for the run.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", last_err()));
    }
    Ok(Region { base: p.cast() })
}

fn posix_name(root: i32) -> CString {
    CString::new(format!("/rcr-ipc-{root}")).expect("no NUL")
}

fn posix_open(root: i32, flags: i32) -> Result<i32, String> {
    // SAFETY: shm_open with a NUL-terminated name.
    let fd = unsafe { libc::shm_open(posix_name(root).as_ptr(), flags | libc::O_RDWR, 0o600) };
    Ok(sys(fd as i64, "shm_open")? as i32)
}

/// The SysV objects of the `sysv` mode.
struct Sysv {
    shm: i32,
    sem: i32,
    msg: i32,
    /// A page attached here, from a segment already removed (IPC_RMID).
    removed: *const u8,
}

/// The removed segment's content.
const REMOVED_SEED: u64 = 0x1c05;

/// Attaches a new one-page segment filled with [`REMOVED_SEED`], then
/// removes it: the attachment keeps it alive, without an id anyone can use.
fn attach_removed() -> Result<*const u8, String> {
    // SAFETY: creates and attaches a segment for the run; IPC_RMID takes no buffer.
    unsafe {
        let id = sys(
            libc::shmget(libc::IPC_PRIVATE, PAGE, 0o600) as i64,
            "shmget",
        )? as i32;
        let p = libc::shmat(id, std::ptr::null(), 0);
        if p as isize == -1 {
            return Err(format!("shmat: {}", last_err()));
        }
        pattern::fill(
            std::slice::from_raw_parts_mut(p.cast(), PAGE),
            REMOVED_SEED,
            0,
        );
        sys(
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) as i64,
            "IPC_RMID",
        )?;
        Ok(p.cast())
    }
}

fn build_sysv(args: &Args) -> Result<(Region, Sysv), String> {
    let flags = libc::IPC_CREAT;
    // SAFETY: SysV creation calls take plain integers.
    let (shm, sem, msg) = unsafe {
        (
            libc::shmget(libc::IPC_PRIVATE, LEN, flags | SHM_MODE as i32),
            libc::semget(libc::IPC_PRIVATE, 3, flags | SEM_MODE as i32),
            libc::msgget(libc::IPC_PRIVATE, flags | 0o600),
        )
    };
    let o = Sysv {
        shm: sys(shm as i64, "shmget")? as i32,
        sem: sys(sem as i64, "semget")? as i32,
        msg: sys(msg as i64, "msgget")? as i32,
        removed: attach_removed()?,
    };
    // SAFETY: attaches the new segment where the kernel likes, for the run.
    let base = unsafe { libc::shmat(o.shm, std::ptr::null(), 0) };
    if base as isize == -1 {
        return Err(format!("shmat: {}", last_err()));
    }
    let mut values = SEM_VALUES;
    // SAFETY: SETALL reads three shorts from the array.
    sys(
        unsafe { libc::semctl(o.sem, 0, libc::SETALL, values.as_mut_ptr()) } as i64,
        "SETALL",
    )?;
    for (t, text) in MESSAGES {
        let mut buf = t.to_ne_bytes().to_vec();
        buf.extend_from_slice(text.as_bytes());
        // SAFETY: sends from the buffer: the type, then the text.
        let rc = unsafe { libc::msgsnd(o.msg, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
        sys(rc as i64, "msgsnd")?;
    }
    std::fs::write(args.dir().join("shmid"), o.shm.to_string()).map_err(|e| e.to_string())?;
    Ok((Region { base: base.cast() }, o))
}

fn check_sysv(o: &Sysv, v: &mut Verdict) -> Result<(), String> {
    // SAFETY: plain-data structs that IPC_STAT fills.
    let (mut shm, mut sem): (libc::shmid_ds, libc::semid_ds) = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes into the structs we own.
    sys(
        unsafe { libc::shmctl(o.shm, libc::IPC_STAT, &mut shm) } as i64,
        "shm IPC_STAT",
    )?;
    // SAFETY: as above.
    sys(
        unsafe { libc::semctl(o.sem, 0, libc::IPC_STAT, &mut sem) } as i64,
        "sem IPC_STAT",
    )?;
    v.eq("segment size", shm.shm_segsz, LEN);
    v.eq(
        "segment mode",
        u32::from(shm.shm_perm.mode) & 0o777,
        SHM_MODE,
    );
    v.eq(
        "semaphore mode",
        u32::from(sem.sem_perm.mode) & 0o777,
        SEM_MODE,
    );
    let mut values = [0u16; 3];
    // SAFETY: GETALL writes three shorts into the array.
    sys(
        unsafe { libc::semctl(o.sem, 0, libc::GETALL, values.as_mut_ptr()) } as i64,
        "GETALL",
    )?;
    v.eq("semaphore values", values, SEM_VALUES);
    let mut op = libc::sembuf {
        sem_num: 0,
        sem_op: -1,
        sem_flg: libc::IPC_NOWAIT as i16,
    };
    // SAFETY: one operation from the struct we own.
    sys(unsafe { libc::semop(o.sem, &mut op, 1) } as i64, "semop")?;
    // SAFETY: GETVAL takes no argument.
    v.eq(
        "semaphore 0 after semop",
        unsafe { libc::semctl(o.sem, 0, libc::GETVAL) },
        4,
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 8 + 64];
    loop {
        // SAFETY: receives at most 64 bytes of text into the buffer.
        let n = unsafe { libc::msgrcv(o.msg, buf.as_mut_ptr().cast(), 64, 0, libc::IPC_NOWAIT) };
        if n < 0 {
            break;
        }
        let t = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
        got.push((
            t,
            String::from_utf8_lossy(&buf[8..8 + n as usize]).into_owned(),
        ));
    }
    let want: Vec<(i64, String)> = MESSAGES.iter().map(|&(t, s)| (t, s.to_string())).collect();
    v.eq("messages", got, want);
    // SAFETY: the removed segment's page stays attached for the run.
    let removed = unsafe { std::slice::from_raw_parts(o.removed, PAGE) };
    v.eq(
        "removed segment",
        pattern::mismatches(removed, REMOVED_SEED, 0),
        None,
    );
    Ok(())
}

fn remove_sysv(o: &Sysv) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe {
        libc::shmctl(o.shm, libc::IPC_RMID, std::ptr::null_mut());
        libc::semctl(o.sem, 0, libc::IPC_RMID);
        libc::msgctl(o.msg, libc::IPC_RMID, std::ptr::null_mut());
    }
}

/// The child: page 1 before ready, then pages 0 and 2 checked and page 3
/// written after the root's flag. Returns its exit status.
fn child(region: &Region) -> i32 {
    region.fill(1);
    region.flag().store(CHILD_READY, Ordering::Release);
    let ok =
        region.wait_flag(ROOT_WROTE).is_ok() && region.check(0).is_ok() && region.check(2).is_ok();
    region.fill(3);
    region.flag().store(CHILD_ACKED, Ordering::Release);
    if ok {
        0
    } else {
        1
    }
}

fn main() {
    let args = Args::init();
    let root = getpid();
    let sysv_mode = match args.params.first().map(String::as_str) {
        Some("sysv") => true,
        Some("posix") => false,
        other => args.fail_early(&format!("mode must be sysv or posix, not {other:?}")),
    };
    let built = if sysv_mode {
        build_sysv(&args).map(|(r, o)| (r, Some(o), -1))
    } else {
        posix_open(root, libc::O_CREAT | libc::O_EXCL).and_then(|fd| {
            // SAFETY: sizes the object we just made.
            sys(
                unsafe { libc::ftruncate(fd, LEN as i64) } as i64,
                "ftruncate",
            )?;
            Ok((map_fd(fd)?, None, fd))
        })
    };
    let (region, sysv, fd) = built.unwrap_or_else(|e| args.fail_early(&e));
    region.fill(0);
    let forked = fork_child(|| {
        if sysv_mode {
            return child(&region);
        }
        // The child maps the object through its own open, as another
        // program would.
        match posix_open(root, 0).and_then(map_fd) {
            Ok(own) => child(&own),
            Err(_) => 2,
        }
    });
    let pid = forked.unwrap_or_else(|e| args.fail_early(&e));
    if let Err(e) = region.wait_flag(CHILD_READY) {
        args.fail_early(&e);
    }
    args.signal_ready_with_descendants(&[pid]);
    workload::wait_for_wake();

    let mut v = Verdict::new();
    if let Err(e) = region.check(1) {
        v.fail(e);
    }
    if let Some(o) = &sysv {
        if let Err(e) = check_sysv(o, &mut v) {
            v.fail(e);
        }
    } else {
        let mut first = [0u8; 8];
        // SAFETY: reads 8 bytes into the array.
        let n = unsafe { libc::pread(fd, first.as_mut_ptr().cast(), 8, PAGE as i64) };
        v.eq("pread of page 1", n, 8);
        v.eq(
            "page 1 through the fd",
            u64::from_ne_bytes(first),
            pattern::word(SEEDS[1], 0),
        );
    }
    region.fill(2);
    region.flag().store(ROOT_WROTE, Ordering::Release);
    let shared = region.wait_flag(CHILD_ACKED).and_then(|_| region.check(3));
    if let Err(e) = shared {
        v.fail(e);
    }
    match workload::reap(pid, TIMEOUT) {
        Ok(status) => v.eq("child exit status", status, 0),
        Err(e) => v.fail(e),
    }
    match &sysv {
        Some(o) => remove_sysv(o),
        // SAFETY: shm_unlink with a NUL-terminated name.
        None => unsafe {
            libc::shm_unlink(posix_name(root).as_ptr());
        },
    }
    args.finish(v)
}
