//! Shared memory objects that no descriptor (or only some mapping) reaches,
//! across a checkpoint. `wl_shmap <ready> <result> anon|memfd|deleted [fd]`.
//!
//! - `anon`: a MAP_SHARED|MAP_ANONYMOUS area of [`PAGES`] pages. A first
//!   child writes pages 2 and 3 and exits; the root never touches them. A
//!   second child stays; then the root writes pages 5 and 6 and unmaps them
//!   from itself, so only the child maps them, never having touched them.
//!   After the wake the root checks pages 2 and 3, the child pages 2, 3, 5
//!   and 6, then writes page 7, which the root checks.
//! - `memfd`, `deleted`: a memfd ("rcr jit"), or a file in the test
//!   directory that is then unlinked, of [`PAGES`] pages of a pattern,
//!   mapped twice shared, a read-write and a read-execute view (as a JIT
//!   does), and its last two pages privately, with page 1 of that written
//!   (a private copy). With `fd` the root keeps a descriptor at [`FD`];
//!   without, it closes it: only the mappings hold the object. A child
//!   inherits the views. After the wake the root checks the views' content,
//!   protections and names, the private pages (and, with `fd`, that the
//!   file kept its own page), writes code through the read-write view and
//!   calls it through the read-execute one, writes a word the child must
//!   see through its read-execute view; the child answers with a word the
//!   root must see: the object is still shared both ways.
//!
//! The child's exit status is its verdict; every wait has a deadline.

use rcr_tests::fdops::{open, place, sys};
use rcr_tests::pattern;
use rcr_tests::workload::{self, fork_child, last_err, Args, Verdict};
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const PAGES: usize = 8;
const WORDS: usize = PAGE / 8;
const SEED: u64 = 0x5a11;
const PRIVATE_SEED: u64 = 0x5a12;
const FD: i32 = 30;
const NAME: &str = "rcr jit";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Values of the flag word, in the order they are set.
const CHILD_READY: u64 = 1;
const ROOT_WROTE: u64 = 2;
const CHILD_ACKED: u64 = 3;
const ROOT_WORD: u64 = 0x1234_5678_9abc_def0;
const CHILD_WORD: u64 = 0x0fed_cba9_8765_4321;
/// What the generated code returns: `mov eax, imm32; ret`.
const CODE_VALUE: u32 = 0x600d_c0de;

/// A mapping, as words.
#[derive(Clone, Copy)]
struct Area {
    base: *mut u64,
}

impl Area {
    fn page(&self, i: usize) -> &[AtomicU64] {
        // SAFETY: every Area is a mapping of PAGES pages kept for the whole
        // run, only read and written at pages still mapped; AtomicU64 has
        // the layout of u64.
        unsafe { std::slice::from_raw_parts(self.base.add(i * WORDS) as *const AtomicU64, WORDS) }
    }

    fn addr(&self) -> usize {
        self.base as usize
    }

    fn fill(&self, i: usize, seed: u64) {
        for (k, w) in self.page(i).iter().enumerate() {
            w.store(
                pattern::word(seed, (i * WORDS + k) as u64),
                Ordering::Relaxed,
            );
        }
    }

    /// Page `i` holds the words `first_word..` of stream `seed`.
    fn check(&self, i: usize, seed: u64, first_word: usize) -> Result<(), String> {
        let bad = self.page(i).iter().enumerate().find(|(k, w)| {
            w.load(Ordering::Relaxed) != pattern::word(seed, (first_word + k) as u64)
        });
        match bad {
            None => Ok(()),
            Some((k, _)) => Err(format!("page {i} of {:#x}: word {k} differs", self.addr())),
        }
    }

    fn flag(&self) -> &AtomicU64 {
        &self.page(0)[0]
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

fn map(pages: usize, prot: i32, flags: i32, fd: i32, page_off: usize) -> Result<Area, String> {
    // SAFETY: a fresh mapping at an address the kernel picks, kept for the run.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            prot,
            flags,
            fd,
            (page_off * PAGE) as i64,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", last_err()));
    }
    Ok(Area { base: p.cast() })
}

fn reap_ok(pid: i32) -> Result<(), String> {
    match workload::reap(pid, TIMEOUT)? {
        0 => Ok(()),
        status => Err(format!("child {pid} failed (wait status {status:#x})")),
    }
}

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

// ---- anon ----

fn anon(args: &Args) -> Result<(Area, i32), String> {
    let a = map(PAGES, RW, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)?;
    let writer = fork_child(|| {
        a.fill(2, SEED);
        a.fill(3, SEED);
        0
    })?;
    reap_ok(writer)?;
    let child = fork_child(|| {
        a.flag().store(CHILD_READY, Ordering::Release);
        let checked = a.wait_flag(ROOT_WROTE).and_then(|_| {
            [2, 3, 5, 6]
                .into_iter()
                .try_for_each(|i| a.check(i, SEED, i * WORDS))
        });
        a.fill(7, SEED);
        a.flag().store(CHILD_ACKED, Ordering::Release);
        i32::from(checked.is_err())
    })?;
    a.wait_flag(CHILD_READY)?;
    a.fill(5, SEED);
    a.fill(6, SEED);
    // SAFETY: unmaps pages 5 and 6 of our own area, never touched again here.
    let rc = unsafe { libc::munmap(a.base.add(5 * WORDS).cast(), 2 * PAGE) };
    sys(rc as i64, "munmap")?;
    args.signal_ready_with_descendants(&[child]);
    Ok((a, child))
}

fn check_anon(a: Area, child: i32, v: &mut Verdict) -> Result<(), String> {
    for i in [2, 3] {
        if let Err(e) = a.check(i, SEED, i * WORDS) {
            v.fail(format!("root: {e}"));
        }
    }
    a.flag().store(ROOT_WROTE, Ordering::Release);
    a.wait_flag(CHILD_ACKED)?;
    if let Err(e) = a.check(7, SEED, 7 * WORDS) {
        v.fail(format!("written by the child after restore: {e}"));
    }
    reap_ok(child)
}

// ---- memfd, deleted ----

struct Views {
    rw: Area,
    rx: Area,
    /// The object's last two pages, mapped privately.
    private: Area,
    /// The name the mappings show in /proc/self/maps.
    name: String,
}

fn make_object(args: &Args, deleted: bool) -> Result<(i32, String), String> {
    if !deleted {
        let c = CString::new(NAME).expect("no NUL");
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c.as_ptr(), 0) };
        return Ok((
            sys(fd as i64, "memfd_create")? as i32,
            format!("/memfd:{NAME}"),
        ));
    }
    let path = args.dir().join("mapped.del");
    let path = path.to_string_lossy().into_owned();
    let fd = open(&path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
    std::fs::remove_file(&path).map_err(|e| format!("unlink {path}: {e}"))?;
    Ok((fd, path))
}

fn views(args: &Args, deleted: bool, keep_fd: bool) -> Result<(Views, i32), String> {
    let (fd, name) = make_object(args, deleted)?;
    let mut content = vec![0u8; PAGES * PAGE];
    pattern::fill(&mut content, SEED, 0);
    // SAFETY: writes our own buffer to our own descriptor.
    let n = unsafe { libc::pwrite(fd, content.as_ptr().cast(), content.len(), 0) };
    if n != content.len() as isize {
        return Err(format!("filling the object: {}", last_err()));
    }
    let shared = libc::MAP_SHARED;
    let rw = map(PAGES, RW, shared, fd, 0)?;
    let rx = map(PAGES, libc::PROT_READ | libc::PROT_EXEC, shared, fd, 0)?;
    let private = map(2, RW, libc::MAP_PRIVATE, fd, PAGES - 2)?;
    private.fill(1, PRIVATE_SEED);
    if keep_fd {
        place(fd, FD, 0)?;
    } else {
        // SAFETY: closes the descriptor made above; the mappings keep the object.
        unsafe { libc::close(fd) };
    }
    rw.page(0)[0].store(0, Ordering::Relaxed);
    let v = Views {
        rw,
        rx,
        private,
        name,
    };
    let child = fork_child(|| {
        rw.flag().store(CHILD_READY, Ordering::Release);
        let seen = rw
            .wait_flag(ROOT_WROTE)
            .map(|_| rx.page(1)[0].load(Ordering::Acquire) == ROOT_WORD);
        rw.page(2)[0].store(CHILD_WORD, Ordering::Release);
        rw.flag().store(CHILD_ACKED, Ordering::Release);
        i32::from(seen != Ok(true))
    })?;
    rw.wait_flag(CHILD_READY)?;
    args.signal_ready_with_descendants(&[child]);
    Ok((v, child))
}

/// The perms and name /proc/self/maps shows for the mapping at `addr`.
fn maps_line(addr: usize) -> Result<(String, String), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let line = maps
        .lines()
        .find(|l| l.starts_with(&format!("{addr:x}-")))
        .ok_or_else(|| format!("no mapping at {addr:#x}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    Ok((fields[1].to_owned(), fields[5..].join(" ")))
}

fn check_views(v: &Views, keep_fd: bool, child: i32, verdict: &mut Verdict) -> Result<(), String> {
    // Page 0 word 0 is the flag; every other word is the pattern.
    for i in 1..PAGES {
        if let Err(e) = v.rx.check(i, SEED, i * WORDS) {
            verdict.fail(format!("read-execute view: {e}"));
        }
    }
    if let Err(e) = v.private.check(0, SEED, (PAGES - 2) * WORDS) {
        verdict.fail(format!("private view, untouched page: {e}"));
    }
    if let Err(e) = v.private.check(1, PRIVATE_SEED, WORDS) {
        verdict.fail(format!("private view, written page: {e}"));
    }
    if keep_fd {
        let mut word = [0u8; 8];
        let off = ((PAGES - 1) * PAGE) as i64;
        // SAFETY: reads 8 bytes into the array.
        let n = unsafe { libc::pread(FD, word.as_mut_ptr().cast(), 8, off) };
        verdict.eq("pread through the kept fd", n, 8);
        verdict.eq(
            "the object's own last page (the private write stays private)",
            u64::from_ne_bytes(word),
            pattern::word(SEED, ((PAGES - 1) * WORDS) as u64),
        );
    }
    let deleted_name = format!("{} (deleted)", v.name);
    for (what, area, perms) in [("read-write", v.rw, "rw-s"), ("read-execute", v.rx, "r-xs")] {
        let (got_perms, got_name) = maps_line(area.addr())?;
        verdict.eq(&format!("{what} view's perms"), got_perms.as_str(), perms);
        verdict.eq(&format!("{what} view's name"), &got_name, &deleted_name);
    }
    // Code written through one view runs through the other.
    let code_page = &v.rw.page(3)[..1];
    let mut code = [0u8; 8];
    code[0] = 0xb8;
    code[1..5].copy_from_slice(&CODE_VALUE.to_le_bytes());
    code[5] = 0xc3;
    code_page[0].store(u64::from_le_bytes(code), Ordering::SeqCst);
    // SAFETY: page 3 of the read-execute view now starts with
    // `mov eax, imm32; ret`, a complete function of the C ABI.
    let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(v.rx.page(3).as_ptr()) };
    verdict.eq("code run through the read-execute view", f(), CODE_VALUE);
    v.rw.page(1)[0].store(ROOT_WORD, Ordering::Release);
    v.rw.flag().store(ROOT_WROTE, Ordering::Release);
    v.rw.wait_flag(CHILD_ACKED)?;
    verdict.eq(
        "the child's word through the read-execute view",
        v.rx.page(2)[0].load(Ordering::Acquire),
        CHILD_WORD,
    );
    reap_ok(child)
}

fn main() {
    let args = Args::init();
    let keep_fd = args.params.get(1).is_some_and(|p| p == "fd");
    let mut v = Verdict::new();
    let checked = match args.params.first().map(String::as_str) {
        Some("anon") => {
            let (a, child) = anon(&args).unwrap_or_else(|e| args.fail_early(&e));
            workload::wait_for_wake();
            check_anon(a, child, &mut v)
        }
        Some(kind @ ("memfd" | "deleted")) => {
            let (views, child) =
                views(&args, kind == "deleted", keep_fd).unwrap_or_else(|e| args.fail_early(&e));
            workload::wait_for_wake();
            check_views(&views, keep_fd, child, &mut v)
        }
        other => args.fail_early(&format!(
            "mode must be anon, memfd or deleted, not {other:?}"
        )),
    };
    if let Err(e) = checked {
        v.fail(e);
    }
    args.finish(v)
}
