//! Memory in all the shapes a checkpoint must keep:
//! - a big anonymous area (`wl_memory <ready> <result> [MiB]`, default 256)
//!   filled with a pattern;
//! - an area with holes (ranges munmap'd out of its middle);
//! - an area between PROT_NONE guards (the guards hold data too);
//! - read-only anonymous data (written, then mprotect'ed);
//! - the heap: many small malloc'd blocks, and the brk;
//! - a MAP_PRIVATE file mapping at a file offset with some pages modified;
//! - a MAP_SHARED file mapping that must stay shared with its file.
//!
//! The check leaves files as it found them, so an image of this workload
//! can be restored after the original ran its check (--leave-running).

use rcr_tests::maps::{self, Mapping};
use rcr_tests::pattern;
use rcr_tests::workload::{self, last_err, Args, Verdict};
use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

const SEED_BIG: u64 = 0xb16;
const SEED_HOLES: u64 = 0x401e5;
const SEED_GUARD: u64 = 0x6a4d;
const SEED_RO: u64 = 0x40;
const SEED_HEAP: u64 = 0x4ea9_0000;
const SEED_PRIV: u64 = 0x9417;
const SEED_PRIV_MOD: u64 = 0x30d;
const SEED_SHARED: u64 = 0x54a4;

const HOLES_PAGES: usize = 64;
/// Page ranges munmap'd out of the holes area.
const HOLES: [(usize, usize); 2] = [(10, 20), (40, 41)];
const GUARD_PAGES: usize = 4;
const GUARDED_DATA_PAGES: usize = 16;
const RO_PAGES: usize = 8;
const HEAP_BLOCKS: usize = 20_000;
/// The private mapping covers file pages 1..=PRIV_PAGES (offset one page).
const PRIV_PAGES: usize = 16;
/// Private pages overwritten entirely, and one page with a single byte changed.
const PRIV_MODIFIED: [usize; 2] = [3, 7];
const PRIV_TOUCHED: (usize, usize) = (11, 123);
const SHARED_PAGES: usize = 8;

/// A mapping this workload made; it stays mapped for the whole run.
#[derive(Clone, Copy)]
struct Area {
    addr: usize,
    len: usize,
}

impl Area {
    fn map(len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> Result<Area, String> {
        // SAFETY: a fresh mapping at an address the kernel picks; nothing
        // else refers to that memory yet.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {len} bytes: {}", last_err()));
        }
        Ok(Area {
            addr: p as usize,
            len,
        })
    }

    fn anon(len: usize) -> Result<Area, String> {
        Area::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }

    fn page(&self, p: usize) -> usize {
        self.addr + p * PAGE
    }

    /// The bytes of pages `from..to`. The caller keeps them readable.
    fn bytes(&self, from: usize, to: usize) -> &[u8] {
        assert!(from <= to && to * PAGE <= self.len);
        // SAFETY: the range lies inside a mapping this process made and
        // never unmaps (holes are never passed here), readable by contract.
        unsafe { std::slice::from_raw_parts(self.page(from) as *const u8, (to - from) * PAGE) }
    }

    /// Writable view of pages `from..to`.
    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self, from: usize, to: usize) -> &mut [u8] {
        assert!(from <= to && to * PAGE <= self.len);
        // SAFETY: as in `bytes`; the range is writable and no other
        // reference to it is alive while the returned one is used.
        unsafe { std::slice::from_raw_parts_mut(self.page(from) as *mut u8, (to - from) * PAGE) }
    }

    #[allow(clippy::mut_from_ref)]
    fn words_mut(&self) -> &mut [u64] {
        // SAFETY: the whole area is mapped read-write, page aligned (so u64
        // aligned), and only this view refers to it while filling.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u64, self.len / 8) }
    }

    fn words(&self) -> &[u64] {
        // SAFETY: the whole area is mapped readable and page aligned.
        unsafe { std::slice::from_raw_parts(self.addr as *const u64, self.len / 8) }
    }

    fn protect(&self, from: usize, to: usize, prot: i32) -> Result<(), String> {
        // SAFETY: changes protection of pages of our own mapping only.
        let rc = unsafe { libc::mprotect(self.page(from) as *mut _, (to - from) * PAGE, prot) };
        if rc != 0 {
            return Err(format!("mprotect: {}", last_err()));
        }
        Ok(())
    }

    fn unmap(&self, from: usize, to: usize) -> Result<(), String> {
        // SAFETY: unmaps pages of our own mapping that no reference covers.
        let rc = unsafe { libc::munmap(self.page(from) as *mut _, (to - from) * PAGE) };
        if rc != 0 {
            return Err(format!("munmap: {}", last_err()));
        }
        Ok(())
    }
}

fn is_hole(p: usize) -> bool {
    HOLES.iter().any(|&(a, b)| (a..b).contains(&p))
}

fn heap_block_len(i: usize) -> usize {
    1 + (i * 37) % 500
}

fn current_brk() -> usize {
    // SAFETY: sbrk(0) only reports the current break.
    unsafe { libc::sbrk(0) as usize }
}

struct State {
    big: Area,
    holes: Area,
    guarded: Area,
    ro: Area,
    heap: Vec<Vec<u8>>,
    private: Area,
    priv_path: PathBuf,
    shared: Area,
    shared_path: PathBuf,
}

fn build(args: &Args, big_mib: usize) -> Result<State, String> {
    let big = Area::anon(big_mib * MIB)?;
    pattern::fill_words(big.words_mut(), SEED_BIG);

    let total = GUARD_PAGES * 2 + GUARDED_DATA_PAGES;
    let guarded = Area::anon(total * PAGE)?;
    pattern::fill(guarded.bytes_mut(0, total), SEED_GUARD, 0);
    guarded.protect(0, GUARD_PAGES, libc::PROT_NONE)?;
    guarded.protect(total - GUARD_PAGES, total, libc::PROT_NONE)?;

    let ro = Area::anon(RO_PAGES * PAGE)?;
    pattern::fill(ro.bytes_mut(0, RO_PAGES), SEED_RO, 0);
    ro.protect(0, RO_PAGES, libc::PROT_READ)?;

    let heap: Vec<Vec<u8>> = (0..HEAP_BLOCKS)
        .map(|i| {
            let mut b = vec![0u8; heap_block_len(i)];
            pattern::fill(&mut b, SEED_HEAP + i as u64, 0);
            b
        })
        .collect();

    let dir = args.dir();
    let priv_path = dir.join("priv.dat");
    let mut content = vec![0u8; (PRIV_PAGES + 1) * PAGE];
    pattern::fill(&mut content, SEED_PRIV, 0);
    fs::write(&priv_path, &content).map_err(|e| format!("write priv.dat: {e}"))?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&priv_path)
        .map_err(|e| format!("open priv.dat: {e}"))?;
    let private = Area::map(
        PRIV_PAGES * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
        f.as_raw_fd(),
        PAGE as i64,
    )?;
    drop(f); // the mapping must not need the fd
    for &p in &PRIV_MODIFIED {
        pattern::fill(
            private.bytes_mut(p, p + 1),
            SEED_PRIV_MOD,
            (p * PAGE) as u64,
        );
    }
    private.bytes_mut(PRIV_TOUCHED.0, PRIV_TOUCHED.0 + 1)[PRIV_TOUCHED.1] ^= 0xff;

    let shared_path = dir.join("shared.dat");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&shared_path)
        .map_err(|e| format!("create shared.dat: {e}"))?;
    f.set_len((SHARED_PAGES * PAGE) as u64)
        .map_err(|e| format!("size shared.dat: {e}"))?;
    let shared = Area::map(
        SHARED_PAGES * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        f.as_raw_fd(),
        0,
    )?;
    drop(f);
    pattern::fill(shared.bytes_mut(0, SHARED_PAGES), SEED_SHARED, 0);

    // Last, so no later mmap of ours lands in its holes.
    let holes = Area::anon(HOLES_PAGES * PAGE)?;
    pattern::fill(holes.bytes_mut(0, HOLES_PAGES), SEED_HOLES, 0);
    for &(a, b) in &HOLES {
        holes.unmap(a, b)?;
    }
    let maps = maps::current().map_err(|e| format!("read maps: {e}"))?;
    if let Some(p) =
        (0..HOLES_PAGES).find(|&p| is_hole(p) && maps::find(&maps, holes.page(p)).is_some())
    {
        return Err(format!(
            "hole page {p} got mapped again before the checkpoint"
        ));
    }

    Ok(State {
        big,
        holes,
        guarded,
        ro,
        heap,
        private,
        priv_path,
        shared,
        shared_path,
    })
}

/// Checks that `len` bytes from `addr` are mapped with `perms`, anonymous
/// (`file` None) or from a file whose path ends with `file`.
fn expect_mapped(
    v: &mut Verdict,
    maps: &[Mapping],
    what: &str,
    addr: usize,
    len: usize,
    perms: &str,
    file: Option<&str>,
) {
    let mut at = addr;
    while at < addr + len {
        let Some(m) = maps::find(maps, at) else {
            v.fail(format!("{what}: {at:#x} is not mapped"));
            return;
        };
        if m.perms != perms {
            v.fail(format!(
                "{what}: {at:#x} has perms {}, want {perms}",
                m.perms
            ));
            return;
        }
        let name_ok = match file {
            None => m.name.is_empty(),
            Some(f) => m.name.ends_with(f),
        };
        if !name_ok {
            v.fail(format!("{what}: {at:#x} maps {:?}, want {file:?}", m.name));
            return;
        }
        at = m.end;
    }
}

fn expect_pattern(v: &mut Verdict, what: &str, bytes: &[u8], seed: u64, first: u64) {
    if let Some((at, n)) = pattern::mismatches(bytes, seed, first) {
        v.fail(format!("{what}: {n} bytes differ, first at +{at:#x}"));
    }
}

fn check(
    s: &State,
    brk_before: usize,
    brk_after: usize,
    maps: std::io::Result<Vec<Mapping>>,
) -> Verdict {
    let mut v = Verdict::new();
    v.eq("brk", brk_after, brk_before);
    let maps = match maps {
        Ok(m) => m,
        Err(e) => {
            v.fail(format!("read /proc/self/maps: {e}"));
            return v;
        }
    };

    // Big area.
    expect_mapped(
        &mut v, &maps, "big area", s.big.addr, s.big.len, "rw-p", None,
    );
    if let Some((at, n)) = pattern::word_mismatches(s.big.words(), SEED_BIG) {
        v.fail(format!(
            "big area: {n} words differ, first at +{:#x}",
            at * 8
        ));
    }

    // Holes stay holes; the rest keeps its data.
    for p in 0..HOLES_PAGES {
        if is_hole(p) {
            if let Some(m) = maps::find(&maps, s.holes.page(p)) {
                v.fail(format!("holes area: hole page {p} is mapped ({})", m.perms));
            }
        } else {
            expect_mapped(
                &mut v,
                &maps,
                "holes area",
                s.holes.page(p),
                PAGE,
                "rw-p",
                None,
            );
            let what = format!("holes area page {p}");
            expect_pattern(
                &mut v,
                &what,
                s.holes.bytes(p, p + 1),
                SEED_HOLES,
                (p * PAGE) as u64,
            );
        }
    }

    // Guards stay PROT_NONE and keep what was written before they were.
    let total = GUARD_PAGES * 2 + GUARDED_DATA_PAGES;
    let g = &s.guarded;
    expect_mapped(
        &mut v,
        &maps,
        "low guard",
        g.addr,
        GUARD_PAGES * PAGE,
        "---p",
        None,
    );
    expect_mapped(
        &mut v,
        &maps,
        "high guard",
        g.page(total - GUARD_PAGES),
        GUARD_PAGES * PAGE,
        "---p",
        None,
    );
    expect_mapped(
        &mut v,
        &maps,
        "guarded data",
        g.page(GUARD_PAGES),
        GUARDED_DATA_PAGES * PAGE,
        "rw-p",
        None,
    );
    expect_pattern(
        &mut v,
        "guarded data",
        g.bytes(GUARD_PAGES, total - GUARD_PAGES),
        SEED_GUARD,
        (GUARD_PAGES * PAGE) as u64,
    );
    for (from, to) in [(0, GUARD_PAGES), (total - GUARD_PAGES, total)] {
        match g.protect(from, to, libc::PROT_READ) {
            Ok(()) => {
                expect_pattern(
                    &mut v,
                    "guard page content",
                    g.bytes(from, to),
                    SEED_GUARD,
                    (from * PAGE) as u64,
                );
                if let Err(e) = g.protect(from, to, libc::PROT_NONE) {
                    v.fail(format!("re-guard: {e}"));
                }
            }
            Err(e) => v.fail(format!("unguard to read: {e}")),
        }
    }

    // Read-only data.
    expect_mapped(
        &mut v,
        &maps,
        "read-only area",
        s.ro.addr,
        s.ro.len,
        "r--p",
        None,
    );
    expect_pattern(
        &mut v,
        "read-only area",
        s.ro.bytes(0, RO_PAGES),
        SEED_RO,
        0,
    );

    // Heap blocks.
    v.eq("heap block count", s.heap.len(), HEAP_BLOCKS);
    for (i, b) in s.heap.iter().enumerate() {
        if b.len() != heap_block_len(i) {
            v.fail(format!("heap block {i}: len {}", b.len()));
        } else if let Some((at, _)) = pattern::mismatches(b, SEED_HEAP + i as u64, 0) {
            v.fail(format!("heap block {i} differs at +{at}"));
        }
        if !v.is_ok() && i > 0 && i % 1000 == 0 {
            break; // enough detail
        }
    }

    check_private(&mut v, &maps, s);
    check_shared(&mut v, &maps, s);
    v
}

fn check_private(v: &mut Verdict, maps: &[Mapping], s: &State) {
    let file = match fs::read(&s.priv_path) {
        Ok(f) => f,
        Err(e) => {
            v.fail(format!("read priv.dat: {e}"));
            return;
        }
    };
    // The file itself never changes: private writes stay private.
    expect_pattern(v, "priv.dat on disk", &file, SEED_PRIV, 0);
    expect_mapped(
        v,
        maps,
        "private file mapping",
        s.private.addr,
        s.private.len,
        "rw-p",
        Some("priv.dat"),
    );
    if let Some(m) = maps::find(maps, s.private.addr) {
        let pgoff = m.offset as usize + (s.private.addr - m.start);
        v.eq("private mapping file offset", pgoff, PAGE);
    }
    for p in 0..PRIV_PAGES {
        let got = s.private.bytes(p, p + 1);
        let in_file = &file[(p + 1) * PAGE..(p + 2) * PAGE];
        if PRIV_MODIFIED.contains(&p) {
            let what = format!("private mapping modified page {p}");
            expect_pattern(v, &what, got, SEED_PRIV_MOD, (p * PAGE) as u64);
        } else if p == PRIV_TOUCHED.0 {
            let off = PRIV_TOUCHED.1;
            v.eq(
                "private mapping touched byte",
                got[off],
                in_file[off] ^ 0xff,
            );
            v.check(
                got[..off] == in_file[..off] && got[off + 1..] == in_file[off + 1..],
                || format!("private mapping page {p}: untouched bytes differ from the file"),
            );
        } else {
            v.check(got == in_file, || {
                format!("private mapping page {p} differs from the file")
            });
        }
    }
}

fn check_shared(v: &mut Verdict, maps: &[Mapping], s: &State) {
    expect_mapped(
        v,
        maps,
        "shared file mapping",
        s.shared.addr,
        s.shared.len,
        "rw-s",
        Some("shared.dat"),
    );
    let map = s.shared.bytes_mut(0, SHARED_PAGES);
    expect_pattern(v, "shared mapping", map, SEED_SHARED, 0);
    let f = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.shared_path)
    {
        Ok(f) => f,
        Err(e) => {
            v.fail(format!("open shared.dat: {e}"));
            return;
        }
    };
    let mut file = vec![0u8; SHARED_PAGES * PAGE];
    match f.read_exact_at(&mut file, 0) {
        Ok(()) => expect_pattern(v, "shared.dat on disk", &file, SEED_SHARED, 0),
        Err(e) => v.fail(format!("read shared.dat: {e}")),
    }

    // A write through the mapping is seen by read(), and the other way round.
    let (a, b) = (2 * PAGE + 100, 5 * PAGE + 200);
    let marker = 0x5eed_cafe_f00d_0001u64.to_le_bytes();
    map[a..a + 8].copy_from_slice(&marker);
    let mut seen = [0u8; 8];
    match f.read_exact_at(&mut seen, a as u64) {
        Ok(()) => v.eq(
            "read() after a write through the shared mapping",
            seen,
            marker,
        ),
        Err(e) => v.fail(format!("pread shared.dat: {e}")),
    }
    let marker2 = 0x5eed_cafe_f00d_0002u64.to_le_bytes();
    match f.write_all_at(&marker2, b as u64) {
        Ok(()) => v.eq("shared mapping after write()", &map[b..b + 8], &marker2[..]),
        Err(e) => v.fail(format!("pwrite shared.dat: {e}")),
    }
    // Put the pattern back so the file is as the image expects it.
    pattern::fill(&mut map[a..a + 8], SEED_SHARED, a as u64);
    pattern::fill(&mut map[b..b + 8], SEED_SHARED, b as u64);
}

fn main() {
    let args = Args::init();
    let big_mib = args.param_u64(0, 256) as usize;
    let state = build(&args, big_mib).unwrap_or_else(|e| args.fail_early(&e));
    args.signal_ready();
    // After the ready file is written nothing allocates until the check.
    let brk_before = current_brk();
    workload::wait_for_wake();
    let brk_after = current_brk();
    // Maps first: later allocations of the check could fill a hole.
    let maps = maps::current();
    let v = check(&state, brk_before, brk_after, maps);
    args.finish(v)
}
