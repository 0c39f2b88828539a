//! `/proc/PID/pagemap`: which pages of a range hold data worth dumping.
//!
//! Two ways to ask, giving the same runs:
//! - the `PAGEMAP_SCAN` ioctl (Linux 6.7+, Documentation/admin-guide/mm/pagemap.rst):
//!   the kernel walks the page tables and returns merged regions of matching pages;
//! - reading one 64-bit entry per page at offset `(vaddr / 4096) * 8` and classifying
//!   them here, the fallback for older kernels.
//!
//! Both leave out the shared zero page (a read of never-written anonymous memory), which
//! restore recreates for free. The fallback recognises it by its PFN, which the kernel
//! only shows to `CAP_SYS_ADMIN`; without it zero pages are dumped (correct, just larger).
//! A THP-sized huge zero page is recognised only by the ioctl.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::read::Target;
use super::ProcError;

/// Page size on x86_64.
pub const PAGE_SIZE: u64 = 4096;

/// One 64-bit pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    /// Bit 62: the page is in swap.
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Bit 61: a page-cache page (file-backed or shared anonymous), not a private copy.
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Bit 56: mapped only here.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Bit 55: soft-dirty since the last clear_refs.
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Bits 0-54: the page frame number when present (0 without `CAP_SYS_ADMIN`).
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

/// Which pages of a VMA the dump needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanWant {
    /// Anonymous memory, private or shared: pages present or swapped.
    Anon,
    /// A private file mapping: only the pages written since mapping (private copies),
    /// present or swapped; unmodified page-cache pages are left to the file.
    PrivateFileCow,
}

/// How a [`PageScanner`] asks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanBackend {
    /// The `PAGEMAP_SCAN` ioctl.
    Ioctl,
    /// Reading pagemap entries with `pread`.
    ReadEntries,
}

/// `struct pm_scan_arg` from `<linux/fs.h>` (6.7+).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Regions fetched per ioctl call; the walk resumes at `walk_end` when they fill up.
const REGIONS_PER_CALL: usize = 1024;
/// Entries read per `pread` (512 KiB of pagemap, 256 MiB of address space).
const ENTRIES_PER_READ: usize = 64 * 1024;

/// Whether this kernel has `PAGEMAP_SCAN`: 0 unknown, 1 yes, 2 no.
static IOCTL_SUPPORT: AtomicU8 = AtomicU8::new(0);

/// An open `/proc/PID/pagemap` and the buffers reused across scans.
pub struct PageScanner {
    file: File,
    target: Target,
    path: PathBuf,
    backend: ScanBackend,
    regions: Vec<PageRegion>,
    raw: Vec<u8>,
}

impl PageScanner {
    /// Opens the pagemap of `pid`, using `PAGEMAP_SCAN` when the kernel has it (probed
    /// once per rcr process).
    pub fn open(pid: i32) -> Result<Self, ProcError> {
        let mut scanner = Self::open_with(pid, ScanBackend::ReadEntries)?;
        if scanner.ioctl_supported()? {
            scanner.backend = ScanBackend::Ioctl;
        }
        Ok(scanner)
    }

    /// Opens the pagemap of `pid` with a chosen backend (tests compare the two).
    pub fn open_with(pid: i32, backend: ScanBackend) -> Result<Self, ProcError> {
        let target = Target::process(pid);
        let path = target.path("pagemap");
        let file = File::open(&path).map_err(|e| target.io_error(path.clone(), e))?;
        Ok(PageScanner {
            file,
            target,
            path,
            backend,
            regions: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> ScanBackend {
        self.backend
    }

    /// The page-aligned, merged runs `(start, end)` of `[start, end)` that hold pages
    /// `want` asks for.
    pub fn scan(
        &mut self,
        start: u64,
        end: u64,
        want: ScanWant,
    ) -> Result<Vec<(u64, u64)>, ProcError> {
        self.check_range(start, end)?;
        match self.backend {
            ScanBackend::Ioctl => self.scan_ioctl(start, end, want),
            ScanBackend::ReadEntries => self.scan_entries(start, end, want),
        }
    }

    /// The raw pagemap entries of the pages of `[start, end)`.
    pub fn read_entries(&mut self, start: u64, end: u64) -> Result<Vec<PagemapEntry>, ProcError> {
        self.check_range(start, end)?;
        let mut out = Vec::with_capacity(((end - start) / PAGE_SIZE) as usize);
        self.for_each_entry(start, end, |_, e| out.push(e))?;
        Ok(out)
    }

    fn check_range(&self, start: u64, end: u64) -> Result<(), ProcError> {
        if (start | end) & (PAGE_SIZE - 1) == 0 && start <= end {
            return Ok(());
        }
        Err(self.io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {start:#x}-{end:#x} is not a page-aligned range"),
        )))
    }

    fn io_error(&self, e: io::Error) -> ProcError {
        self.target.io_error(self.path.clone(), e)
    }

    /// Probes `PAGEMAP_SCAN` with an empty scan of page 0 and caches the answer.
    fn ioctl_supported(&mut self) -> Result<bool, ProcError> {
        match IOCTL_SUPPORT.load(Ordering::Relaxed) {
            1 => return Ok(true),
            2 => return Ok(false),
            _ => {}
        }
        let mut region = [PageRegion::default()];
        let mut arg = scan_arg(0, PAGE_SIZE, ScanWant::Anon, &mut region);
        let supported = match pagemap_scan(&self.file, &mut arg) {
            Ok(_) => true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => false,
            Err(e) => return Err(self.io_error(e)),
        };
        IOCTL_SUPPORT.store(if supported { 1 } else { 2 }, Ordering::Relaxed);
        Ok(supported)
    }

    fn scan_ioctl(
        &mut self,
        start: u64,
        end: u64,
        want: ScanWant,
    ) -> Result<Vec<(u64, u64)>, ProcError> {
        let mut regions = std::mem::take(&mut self.regions);
        regions.resize(REGIONS_PER_CALL, PageRegion::default());
        let mut runs = Vec::new();
        let mut from = start;
        let result = loop {
            if from >= end {
                break Ok(runs);
            }
            let mut arg = scan_arg(from, end, want, &mut regions);
            let filled = match pagemap_scan(&self.file, &mut arg) {
                Ok(n) => n,
                Err(e) => break Err(self.io_error(e)),
            };
            for r in &regions[..filled] {
                push_run(&mut runs, r.start, r.end);
            }
            // walk_end may carry address tag bits. When the buffer fills on the last
            // page of a table, walk_end can lag behind the last region returned (seen on
            // 6.18), so resume after whichever is further to avoid reporting pages twice.
            let walk_end =
                (arg.walk_end & ((1 << 56) - 1)).max(regions[..filled].last().map_or(0, |r| r.end));
            if walk_end <= from {
                break Err(self.io_error(io::Error::other(format!(
                    "PAGEMAP_SCAN made no progress at {from:#x}"
                ))));
            }
            from = walk_end;
        };
        self.regions = regions;
        result
    }

    fn scan_entries(
        &mut self,
        start: u64,
        end: u64,
        want: ScanWant,
    ) -> Result<Vec<(u64, u64)>, ProcError> {
        let zero = zero_pfn();
        let mut runs = Vec::new();
        self.for_each_entry(start, end, |addr, e| {
            if wanted(e, want, zero) {
                push_run(&mut runs, addr, addr + PAGE_SIZE);
            }
        })?;
        Ok(runs)
    }

    /// Calls `f(vaddr, entry)` for each page, reading big chunks with `pread`.
    fn for_each_entry(
        &mut self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, PagemapEntry),
    ) -> Result<(), ProcError> {
        let mut raw = std::mem::take(&mut self.raw);
        let mut addr = start;
        let mut result = Ok(());
        while addr < end {
            let pages = (((end - addr) / PAGE_SIZE) as usize).min(ENTRIES_PER_READ);
            raw.resize(pages * 8, 0);
            if let Err(e) = read_exact_at(&self.file, &mut raw, addr / PAGE_SIZE * 8) {
                result = Err(self.io_error(e));
                break;
            }
            for chunk in raw.chunks_exact(8) {
                let word = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
                f(addr, PagemapEntry(word));
                addr += PAGE_SIZE;
            }
        }
        self.raw = raw;
        result
    }
}

/// The selection both backends apply, written for one pagemap entry.
fn wanted(e: PagemapEntry, want: ScanWant, zero_pfn: Option<u64>) -> bool {
    let is_zero_page = e.present() && zero_pfn == Some(e.pfn());
    let has_data = (e.present() || e.swapped()) && !is_zero_page;
    match want {
        ScanWant::Anon => has_data,
        ScanWant::PrivateFileCow => has_data && !e.file_or_shared(),
    }
}

/// The same selection as [`wanted`], in `PAGEMAP_SCAN` terms: any of present/swapped,
/// none of zero-PFN (nor file for copy-on-write pages).
fn scan_arg(start: u64, end: u64, want: ScanWant, regions: &mut [PageRegion]) -> PmScanArg {
    let excluded = match want {
        ScanWant::Anon => PAGE_IS_PFNZERO,
        ScanWant::PrivateFileCow => PAGE_IS_PFNZERO | PAGE_IS_FILE,
    };
    PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_inverted: excluded,
        category_mask: excluded,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        // Reporting no category lets the kernel merge neighbours of different kinds.
        return_mask: 0,
        ..PmScanArg::default()
    }
}

/// Runs `PAGEMAP_SCAN`, returning how many regions it filled.
fn pagemap_scan(file: &File, arg: &mut PmScanArg) -> io::Result<usize> {
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec`/`vec_len` describe a live, writable
    // `[PageRegion]` owned by the caller for the duration of the call.
    let n = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            PAGEMAP_SCAN as libc::Ioctl,
            arg as *mut PmScanArg,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("pagemap ends at offset {offset:#x}"),
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends `[start, end)` (never before the last run), merging it into the last run
/// when they touch or overlap.
fn push_run(runs: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match runs.last_mut() {
        Some(last) if start <= last.1 => last.1 = last.1.max(end),
        _ => runs.push((start, end)),
    }
}

/// The PFN of the shared zero page, learned by reading a fresh anonymous page of our own
/// and looking it up in our pagemap. `None` when PFNs are hidden from us.
fn zero_pfn() -> Option<u64> {
    static ZERO_PFN: OnceLock<Option<u64>> = OnceLock::new();
    *ZERO_PFN.get_or_init(|| {
        let len = PAGE_SIZE as usize;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: `page` is a readable mapping of `len` bytes; the read faults in the zero page.
        unsafe { std::ptr::read_volatile(page as *const u8) };
        let mut raw = [0u8; 8];
        let entry = File::open("/proc/self/pagemap")
            .and_then(|f| read_exact_at(&f, &mut raw, page as u64 / PAGE_SIZE * 8))
            .map(|()| PagemapEntry(u64::from_ne_bytes(raw)));
        // SAFETY: unmapping exactly the mapping created above, which nothing else uses.
        unsafe { libc::munmap(page, len) };
        entry
            .ok()
            .filter(|e| e.present() && e.pfn() != 0)
            .map(|e| e.pfn())
    })
}

#[cfg(test)]
mod tests;
