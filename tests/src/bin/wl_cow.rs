//! Private memory shared copy-on-write across forks. The root fills a
//! private anonymous region of `<MiB>` (first parameter, default 32) with
//! the stream [`BASE`], then forks:
//! - K0, which leaves the region alone;
//! - K1, which writes its own stream into one range;
//! - K2, which drops one range (`MADV_DONTNEED`: it reads zeros there);
//! - K3, which writes one range and then forks G, which writes another.
//!
//! After the forks the root writes a range of its own (the children keep
//! the old content). Each child sends its pid on the ready pipe once set up.
//! On the wake signal every process checks every page of the region against
//! what it must see; the root wakes K0..K3 (K3 wakes G), and each child
//! writes its verdict to `cow-<name>` in the test's directory and exits 0
//! (OK) or 1. The root reaps them and combines the verdicts.

use rcr_tests::pattern;
use rcr_tests::workload::{self, last_err, Args, Verdict, WAKE_SIGNAL};
use std::path::Path;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const BASE: u64 = 0xc0_0000;
const ROOT: u64 = 0xc0_0001;
const K1: u64 = 0xc0_0002;
const K3: u64 = 0xc0_0003;
const G: u64 = 0xc0_0004;
/// Page ranges each writer changes (the region has at least 2048 pages).
const ROOT_PAGES: (usize, usize) = (0, 256);
const K1_PAGES: (usize, usize) = (256, 512);
const K2_DROPPED: (usize, usize) = (512, 768);
const K3_PAGES: (usize, usize) = (768, 1024);
const G_PAGES: (usize, usize) = (1024, 1040);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a process must read in one page: a stream, or zeros.
type Expect = fn(usize) -> Option<u64>;

fn within(p: usize, (a, b): (usize, usize)) -> bool {
    a <= p && p < b
}

fn expect_root(p: usize) -> Option<u64> {
    Some(if within(p, ROOT_PAGES) { ROOT } else { BASE })
}

fn expect_k0(_: usize) -> Option<u64> {
    Some(BASE)
}

fn expect_k1(p: usize) -> Option<u64> {
    Some(if within(p, K1_PAGES) { K1 } else { BASE })
}

fn expect_k2(p: usize) -> Option<u64> {
    (!within(p, K2_DROPPED)).then_some(BASE)
}

fn expect_k3(p: usize) -> Option<u64> {
    Some(if within(p, K3_PAGES) { K3 } else { BASE })
}

fn expect_g(p: usize) -> Option<u64> {
    Some(if within(p, G_PAGES) { G } else { expect_k3(p)? })
}

/// Fills pages `range` of `region` with stream `seed` (placed by offset).
fn fill(region: &mut [u8], (a, b): (usize, usize), seed: u64) {
    pattern::fill(&mut region[a * PAGE..b * PAGE], seed, (a * PAGE) as u64);
}

/// Records in `v` the pages of `region` that differ from `expect`.
fn check(who: &str, region: &[u8], expect: Expect, v: &mut Verdict) {
    let zero = [0u8; PAGE];
    let bad: Vec<usize> = (0..region.len() / PAGE)
        .filter(|&p| {
            let page = &region[p * PAGE..(p + 1) * PAGE];
            match expect(p) {
                Some(seed) => pattern::mismatches(page, seed, (p * PAGE) as u64).is_some(),
                None => page != zero,
            }
        })
        .collect();
    if let Some(first) = bad.first() {
        v.fail(format!(
            "{who}: {} pages differ, first page {first}",
            bad.len()
        ));
    }
}

fn map_region(len: usize) -> Result<*mut u8, String> {
    // SAFETY: a fresh private anonymous mapping, never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {len} bytes: {}", last_err()));
        }
        Ok(p.cast())
    }
}

/// Forks a child that runs `body` and exits with its code.
fn fork(body: impl FnOnce() -> i32) -> Result<i32, String> {
    // SAFETY: the workload is single-threaded, so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", last_err())),
        0 => std::process::exit(body()),
        pid => Ok(pid),
    }
}

/// A child's end: ready, then the check on wake, its verdict in a file.
struct Child<'a> {
    name: &'static str,
    dir: &'a Path,
    ready_w: i32,
}

impl Child<'_> {
    fn ready(&self) {
        let pid = workload::getpid().to_le_bytes();
        // SAFETY: a 4-byte write (atomic on a pipe) from a local buffer.
        unsafe { libc::write(self.ready_w, pid.as_ptr().cast(), 4) };
    }

    /// Waits for the wake, checks, adds `more`, writes the verdict.
    fn finish(&self, region: &[u8], expect: Expect, more: impl FnOnce(&mut Verdict)) -> i32 {
        workload::wait_for_wake();
        let mut v = Verdict::new();
        check(self.name, region, expect, &mut v);
        more(&mut v);
        let ok = v.is_ok();
        let text = if ok {
            "OK".to_string()
        } else {
            v.into_diffs().join("; ")
        };
        let _ = std::fs::write(self.dir.join(format!("cow-{}", self.name)), text);
        !ok as i32
    }
}

/// Reaps child `name` (pid) by the deadline and adds its verdict to `v`.
fn collect(dir: &Path, name: &str, pid: i32, deadline: Instant, v: &mut Verdict) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a status we own.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            break;
        }
        if got < 0 || Instant::now() >= deadline {
            v.fail(format!("{name} (pid {pid}) not reaped: {}", last_err()));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(dir.join(format!("cow-{name}"))).unwrap_or_default();
    v.check(text == "OK" && status == 0, || {
        format!("{name} (pid {pid}): status {status:#x}: {text}")
    });
}

fn wake(name: &str, pid: i32, v: &mut Verdict) {
    // SAFETY: signals our own child.
    if unsafe { libc::kill(pid, WAKE_SIGNAL) } != 0 {
        v.fail(format!("waking {name} (pid {pid}): {}", last_err()));
    }
}

/// Reads the pids the children send when ready.
fn ready_pids(fd: i32, n: usize) -> Result<Vec<i32>, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut buf = Vec::new();
    while buf.len() < 4 * n {
        if Instant::now() >= deadline {
            return Err(format!("{} of {n} children ready", buf.len() / 4));
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut chunk = [0u8; 64];
        // SAFETY: poll and read on our own pipe end into a local buffer.
        let got = unsafe {
            libc::poll(&mut p, 1, 1000);
            libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len())
        };
        if got == 0 {
            return Err("a child ended during setup".into());
        }
        if got > 0 {
            buf.extend_from_slice(&chunk[..got as usize]);
        }
    }
    Ok(buf
        .chunks(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn main() {
    let args = Args::init();
    let dir = args.dir();
    let len = (args.param_u64(0, 32).max(8) as usize) << 20;
    let base = map_region(len).unwrap_or_else(|e| args.fail_early(&e));
    // SAFETY: the mapping lives as long as the process; each process (a
    // fork has its own copy) works through one view at a time.
    let view = || unsafe { std::slice::from_raw_parts_mut(base, len) };
    fill(view(), (0, len / PAGE), BASE);
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) } != 0 {
        args.fail_early(&format!("pipe: {}", last_err()));
    }
    let (ready_r, ready_w) = (fds[0], fds[1]);
    let child = |name| Child {
        name,
        dir: &dir,
        ready_w,
    };
    let spawn = |body: &dyn Fn(&mut [u8]) -> i32| {
        fork(|| body(view())).unwrap_or_else(|e| args.fail_early(&e))
    };
    let k0 = spawn(&|r| {
        let c = child("K0");
        c.ready();
        c.finish(r, expect_k0, |_| {})
    });
    let k1 = spawn(&|r| {
        let c = child("K1");
        fill(r, K1_PAGES, K1);
        c.ready();
        c.finish(r, expect_k1, |_| {})
    });
    let k2 = spawn(&|r| {
        let c = child("K2");
        let (a, b) = K2_DROPPED;
        // SAFETY: drops pages of our own private mapping.
        let rc = unsafe {
            libc::madvise(
                r.as_mut_ptr().add(a * PAGE).cast(),
                (b - a) * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        c.ready();
        c.finish(r, expect_k2, |v| v.eq("K2: madvise", rc, 0))
    });
    let k3 = spawn(&|r| {
        let c = child("K3");
        fill(r, K3_PAGES, K3);
        let g = fork(|| {
            let c = child("G");
            fill(r, G_PAGES, G);
            c.ready();
            c.finish(r, expect_g, |_| {})
        });
        c.ready();
        c.finish(r, expect_k3, |v| match g {
            Ok(g) => {
                wake("G", g, v);
                collect(&dir, "G", g, Instant::now() + STEP_TIMEOUT, v);
            }
            Err(e) => v.fail(e),
        })
    });
    let region = view();
    fill(region, ROOT_PAGES, ROOT);
    let pids = ready_pids(ready_r, 5).unwrap_or_else(|e| {
        for pid in [k0, k1, k2, k3] {
            // SAFETY: ends our own children (G ends with K3's pipe).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        args.fail_early(&e)
    });
    args.signal_ready_with_descendants(&pids);
    workload::wait_for_wake();
    let mut v = Verdict::new();
    check("root", region, expect_root, &mut v);
    let kids = [("K0", k0), ("K1", k1), ("K2", k2), ("K3", k3)];
    for (name, pid) in kids {
        wake(name, pid, &mut v);
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    for (name, pid) in kids {
        collect(&dir, name, pid, deadline, &mut v);
    }
    args.finish(v)
}
