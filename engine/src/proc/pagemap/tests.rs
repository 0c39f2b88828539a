//! Checks against real mappings of the test process: both backends must give exactly the
//! runs the test created.

use super::*;
use std::io::Write;
use std::time::Instant;

const P: u64 = PAGE_SIZE;

type Runs = Vec<(u64, u64)>;

/// A mapping owned by the test, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(pages: u64, flags: i32, fd: i32) -> Mapping {
        let len = (pages * P) as usize;
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        // Keep transparent huge pages (and multi-size THP) from populating neighbours.
        // SAFETY: advice on the mapping just created.
        let rc = unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        assert_eq!(rc, 0);
        Mapping { addr, len }
    }

    fn anon(pages: u64, shared: bool) -> Mapping {
        let kind = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        Mapping::new(pages, kind | libc::MAP_ANONYMOUS, -1)
    }

    fn base(&self) -> u64 {
        self.addr as u64
    }

    fn page_ptr(&self, page: u64) -> *mut u8 {
        assert!(page * P < self.len as u64);
        (self.base() + page * P) as *mut u8
    }

    fn write(&self, page: u64) {
        // SAFETY: the page lies inside this writable mapping.
        unsafe { std::ptr::write_volatile(self.page_ptr(page), 0xa5) };
    }

    fn read(&self, page: u64) -> u8 {
        // SAFETY: the page lies inside this readable mapping.
        unsafe { std::ptr::read_volatile(self.page_ptr(page)) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value created.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn own_pid() -> i32 {
    std::process::id() as i32
}

fn runs_in_pages(base: u64, pages: &[(u64, u64)]) -> Vec<(u64, u64)> {
    pages
        .iter()
        .map(|&(s, e)| (base + s * P, base + e * P))
        .collect()
}

/// Whether the running kernel is 6.7 or newer (has `PAGEMAP_SCAN`).
fn kernel_has_pagemap_scan() -> bool {
    let uts = nix::sys::utsname::uname().unwrap();
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

/// Scans with both backends; the first is the ioctl wherever the kernel has it.
fn scan_both(start: u64, end: u64, want: ScanWant) -> (Runs, Runs) {
    let mut fast = PageScanner::open(own_pid()).unwrap();
    let expected = if kernel_has_pagemap_scan() {
        ScanBackend::Ioctl
    } else {
        ScanBackend::ReadEntries
    };
    assert_eq!(fast.backend(), expected);
    let mut slow = PageScanner::open_with(own_pid(), ScanBackend::ReadEntries).unwrap();
    (
        fast.scan(start, end, want).unwrap(),
        slow.scan(start, end, want).unwrap(),
    )
}

#[test]
fn layouts_match_the_kernel_abi() {
    assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
    assert_eq!(std::mem::offset_of!(PmScanArg, walk_end), 32);
    assert_eq!(std::mem::offset_of!(PmScanArg, return_mask), 88);
    assert_eq!(std::mem::size_of::<PageRegion>(), 24);
    assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
}

#[test]
fn entry_bits() {
    let e = PagemapEntry(1 << 63 | 1 << 61 | 1 << 56 | 0x1234);
    assert!(e.present() && e.file_or_shared() && e.exclusive());
    assert!(!e.swapped() && !e.soft_dirty());
    assert_eq!(e.pfn(), 0x1234);
    let s = PagemapEntry(1 << 62 | 1 << 55);
    assert!(s.swapped() && s.soft_dirty() && !s.present());
}

#[test]
fn selection_rules() {
    let present = PagemapEntry(1 << 63 | 7);
    let zero = PagemapEntry(1 << 63 | 99);
    let file = PagemapEntry(1 << 63 | 1 << 61 | 8);
    let swapped = PagemapEntry(1 << 62);
    let none = PagemapEntry(0);
    for (e, anon, cow) in [
        (present, true, true),
        (zero, false, false),
        (file, true, false),
        (swapped, true, true),
        (none, false, false),
    ] {
        assert_eq!(wanted(e, ScanWant::Anon, Some(99)), anon, "{e:?}");
        assert_eq!(wanted(e, ScanWant::PrivateFileCow, Some(99)), cow, "{e:?}");
    }
}

#[test]
fn merges_touching_runs() {
    let mut runs = vec![];
    push_run(&mut runs, 0, 4096);
    push_run(&mut runs, 4096, 8192);
    push_run(&mut runs, 12288, 16384);
    push_run(&mut runs, 12288, 16384);
    push_run(&mut runs, 16384, 20480);
    assert_eq!(runs, vec![(0, 8192), (12288, 20480)]);
}

#[test]
fn private_anon_runs_skip_holes_and_the_zero_page() {
    let m = Mapping::anon(64, false);
    for page in [0, 1, 2, 3, 10].into_iter().chain(20..30) {
        m.write(page);
    }
    assert_eq!(m.read(40), 0, "maps the shared zero page");
    let want = runs_in_pages(m.base(), &[(0, 4), (10, 11), (20, 30)]);
    let (fast, slow) = scan_both(m.base(), m.base() + 64 * P, ScanWant::Anon);
    assert_eq!(fast, want);
    assert_eq!(slow, want);
    // A window that cuts runs is clipped to it.
    let (fast, slow) = scan_both(m.base() + 2 * P, m.base() + 25 * P, ScanWant::Anon);
    let want = runs_in_pages(m.base(), &[(2, 4), (10, 11), (20, 25)]);
    assert_eq!((fast, slow), (want.clone(), want));
}

#[test]
fn shared_anon_runs() {
    let m = Mapping::anon(16, true);
    for page in [1, 5, 6] {
        m.write(page);
    }
    let want = runs_in_pages(m.base(), &[(1, 2), (5, 7)]);
    let (fast, slow) = scan_both(m.base(), m.base() + 16 * P, ScanWant::Anon);
    assert_eq!((fast, slow), (want.clone(), want));
}

#[test]
fn private_file_runs_are_the_written_copies() {
    let path = std::env::temp_dir().join(format!("rcr-pagemap-test-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&vec![7u8; 16 * P as usize]).unwrap();
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let m = Mapping::new(16, libc::MAP_PRIVATE, file.as_raw_fd());
    for page in 0..16 {
        assert_eq!(m.read(page), 7);
    }
    for page in [2, 3, 10] {
        m.write(page);
    }
    let want = runs_in_pages(m.base(), &[(2, 4), (10, 11)]);
    let (fast, slow) = scan_both(m.base(), m.base() + 16 * P, ScanWant::PrivateFileCow);
    assert_eq!((fast, slow), (want.clone(), want));
    // As anonymous memory every resident page would count.
    let (fast, slow) = scan_both(m.base(), m.base() + 16 * P, ScanWant::Anon);
    let all = runs_in_pages(m.base(), &[(0, 16)]);
    assert_eq!((fast, slow), (all.clone(), all));
}

#[test]
fn read_entries_reports_present_pages() {
    let m = Mapping::anon(4, false);
    m.write(1);
    let mut s = PageScanner::open(own_pid()).unwrap();
    let entries = s.read_entries(m.base(), m.base() + 4 * P).unwrap();
    let present: Vec<bool> = entries.iter().map(|e| e.present()).collect();
    assert_eq!(present, vec![false, true, false, false]);
    assert!(entries[1].exclusive() && !entries[1].file_or_shared());
}

#[test]
fn rejects_unaligned_ranges_and_dead_pids() {
    let mut s = PageScanner::open(own_pid()).unwrap();
    let err = s.scan(4096, 4097, ScanWant::Anon).unwrap_err();
    assert!(err.to_string().contains("0x1000-0x1001"), "{err}");
    assert!(matches!(
        PageScanner::open(i32::MAX),
        Err(ProcError::Gone { pid: i32::MAX })
    ));
}

/// More regions than one ioctl call returns: the walk must resume where it stopped,
/// also when the buffer fills exactly at the end of the range (`walk_end` then lags).
#[test]
fn ioctl_resumes_when_its_buffer_fills() {
    for pages in [
        2 * REGIONS_PER_CALL as u64 + 10,
        REGIONS_PER_CALL as u64,
        8 * REGIONS_PER_CALL as u64,
    ] {
        every_other_page_is_a_run(pages);
    }
}

fn every_other_page_is_a_run(pages: u64) {
    let m = Mapping::anon(pages * 2, false);
    for page in (0..pages * 2).step_by(2) {
        m.write(page);
    }
    let want: Vec<(u64, u64)> = (0..pages)
        .map(|i| (m.base() + 2 * i * P, m.base() + (2 * i + 1) * P))
        .collect();
    let (fast, slow) = scan_both(m.base(), m.base() + pages * 2 * P, ScanWant::Anon);
    assert_eq!(fast, want);
    assert_eq!(slow, want);
}

/// Timings for the report (`cargo test -- --ignored --nocapture timings`); asserts only
/// that both backends agree.
#[test]
#[ignore]
fn timings() {
    // 10,000 small VMAs: separate mappings with alternating protections so none merge.
    let vmas: Vec<Mapping> = (0..10_000)
        .map(|i| {
            let m = Mapping::anon(4, false);
            m.write(i % 4);
            if i % 2 == 1 {
                // SAFETY: changes protection of the mapping just created, nothing else.
                let rc = unsafe { libc::mprotect(m.addr, m.len, libc::PROT_READ) };
                assert_eq!(rc, 0);
            }
            m
        })
        .collect();
    let vma_count = crate::proc::maps::read_maps(own_pid()).unwrap().len();
    assert!(vma_count > 10_000, "only {vma_count} VMAs");
    for (name, backend) in [
        ("ioctl", ScanBackend::Ioctl),
        ("pread", ScanBackend::ReadEntries),
    ] {
        let mut s = PageScanner::open_with(own_pid(), backend).unwrap();
        let t = Instant::now();
        let n: usize = vmas
            .iter()
            .map(|m| {
                s.scan(m.base(), m.base() + 4 * P, ScanWant::Anon)
                    .unwrap()
                    .len()
            })
            .sum();
        eprintln!(
            "{name}: 10000 VMAs of 4 pages: {:?} ({n} runs)",
            t.elapsed()
        );
    }
    drop(vmas);

    // 1 GiB with every 16th page written.
    let pages = (1u64 << 30) / P;
    let big = Mapping::anon(pages, false);
    for page in (0..pages).step_by(16) {
        big.write(page);
    }
    // Each backend's runs over the whole mapping, timed.
    let scan_both = |what: &str| -> Vec<Vec<(u64, u64)>> {
        [
            ("ioctl", ScanBackend::Ioctl),
            ("pread", ScanBackend::ReadEntries),
        ]
        .into_iter()
        .map(|(name, backend)| {
            let mut s = PageScanner::open_with(own_pid(), backend).unwrap();
            let t = Instant::now();
            let runs = s
                .scan(big.base(), big.base() + pages * P, ScanWant::Anon)
                .unwrap();
            eprintln!(
                "{name}: 1 GiB, {what}: {:?} ({} runs)",
                t.elapsed(),
                runs.len()
            );
            runs
        })
        .collect()
    };
    let results = scan_both("every 16th page");
    assert_eq!(results[0], results[1]);
    // 1 GiB fully written: one run.
    for page in 0..pages {
        big.write(page);
    }
    for runs in scan_both("fully written") {
        assert_eq!(runs, vec![(big.base(), big.base() + pages * P)]);
    }
}
