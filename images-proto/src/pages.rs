//! The pages file `pages-<pid>.img`: a 4096-byte header page (magic `RCRPAGES`, format
//! version u32 LE, zero padding), then raw page data, page-aligned, described by the runs
//! of `pagemap-<pid>.img`. Restore can read a run straight into place.

use crate::container::{check_version, le_u32, FORMAT_VERSION};
use crate::error::{ImageError, RunProblem};
use crate::pb;
use memmap2::Mmap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use xxhash_rust::xxh3::xxh3_64;

/// Size of the header page; page data starts at or after it.
pub const PAGES_HEADER_SIZE: u64 = 4096;

/// Page size the pages file is laid out in.
pub const PAGE_SIZE: u64 = 4096;

/// First bytes of every pages file.
pub const PAGES_MAGIC: [u8; 8] = *b"RCRPAGES";

/// The header page a pages file starts with.
pub fn pages_header() -> [u8; PAGES_HEADER_SIZE as usize] {
    let mut header = [0u8; PAGES_HEADER_SIZE as usize];
    header[..8].copy_from_slice(&PAGES_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Checks a pages file's header page: length, magic, version, zero padding.
pub fn check_pages_header(path: &Path, header: &[u8]) -> Result<(), ImageError> {
    let owned = || path.to_path_buf();
    if header.len() < PAGES_HEADER_SIZE as usize {
        return Err(ImageError::Truncated { path: owned() });
    }
    if header[..8] != PAGES_MAGIC {
        return Err(ImageError::NotAnImage { path: owned() });
    }
    check_version(path, le_u32(header, 8))?;
    if header[12..PAGES_HEADER_SIZE as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(ImageError::PagesHeader { path: owned() });
    }
    Ok(())
}

/// The checksum of a run's bytes (xxh3-64), as stored in [`pb::PageRun::checksum`].
pub fn checksum(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Bytes a run occupies in the pages file, `None` if that overflows.
pub fn run_len(run: &pb::PageRun) -> Option<u64> {
    run.nr_pages.checked_mul(PAGE_SIZE)
}

/// Checks the layout of `map`'s runs against a pages file of `file_len` bytes, without
/// reading it: non-empty, page-aligned, after the header, inside the file, no two runs
/// sharing file bytes. Inherited runs have no bytes in the file.
pub fn check_run_layout(path: &Path, map: &pb::PageMap, file_len: u64) -> Result<(), ImageError> {
    let bad = |run: &pb::PageRun, problem| ImageError::Run {
        path: path.to_path_buf(),
        vaddr: run.vaddr,
        problem,
    };
    for run in &map.runs {
        if run.nr_pages == 0 {
            return Err(bad(run, RunProblem::Empty));
        }
        if run.vaddr % PAGE_SIZE != 0 || run.offset % PAGE_SIZE != 0 {
            return Err(bad(run, RunProblem::Misaligned { offset: run.offset }));
        }
        if run.inherited {
            continue;
        }
        if run.offset < PAGES_HEADER_SIZE {
            return Err(bad(run, RunProblem::InHeader { offset: run.offset }));
        }
        let end = run_len(run).and_then(|len| run.offset.checked_add(len));
        if end.is_none_or(|end| end > file_len) {
            return Err(bad(
                run,
                RunProblem::PastEof {
                    offset: run.offset,
                    nr_pages: run.nr_pages,
                    file_len,
                },
            ));
        }
    }
    let mut by_offset: Vec<&pb::PageRun> = map.runs.iter().filter(|r| !r.inherited).collect();
    by_offset.sort_unstable_by_key(|r| r.offset);
    for pair in by_offset.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        // Lengths were checked above: no overflow.
        if prev.offset + prev.nr_pages * PAGE_SIZE > next.offset {
            return Err(bad(
                next,
                RunProblem::Overlaps {
                    other_vaddr: prev.vaddr,
                },
            ));
        }
    }
    Ok(())
}

/// Checks a pages file against its page map before restore: header, recorded size,
/// run layout ([`check_run_layout`]) and every run's checksum. Runs are hashed from a
/// read-only mapping of the file, on up to [`MAX_HASH_THREADS`] threads.
pub fn verify_runs(path: &Path, map: &pb::PageMap) -> Result<(), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, file_len) = open_checked(path)?;
    if map.pages_file_size != 0 && map.pages_file_size != file_len {
        return Err(ImageError::PagesSize {
            path: path.to_path_buf(),
            expected: map.pages_file_size,
            found: file_len,
        });
    }
    check_run_layout(path, map, file_len)?;
    if map.runs.is_empty() {
        return Ok(());
    }

    // SAFETY: the mapping is read-only and private to this function. Its bytes may change
    // if another process writes the file meanwhile (then a checksum fails, as it should);
    // truncating it meanwhile would fault, which a checkpoint directory that rcr owns
    // does not see. Reading from the mapping hashes at memory speed, without copies.
    let data = unsafe { Mmap::map(&file) }.map_err(io)?;
    // No MADV_SEQUENTIAL: measured slower here (it curbs fault-around).
    match first_bad_run(&data, &map.runs) {
        Some(bad) => Err(ImageError::Run {
            path: path.to_path_buf(),
            vaddr: map.runs[bad].vaddr,
            problem: RunProblem::Checksum,
        }),
        None => Ok(()),
    }
}

/// Opens a file laid out like a pages file and checks its header; returns it and its
/// length.
pub(crate) fn open_checked(path: &Path) -> Result<(File, u64), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut header = [0u8; PAGES_HEADER_SIZE as usize];
    let header_len = read_up_to(&file, &mut header).map_err(io)?;
    check_pages_header(path, &header[..header_len])?;
    Ok((file, file_len))
}

/// Most threads [`verify_runs`] hashes on.
pub const MAX_HASH_THREADS: usize = 8;

/// Index of the first run (in map order) whose bytes in `data` do not match its
/// checksum. Runs must have passed [`check_run_layout`] against `data.len()`.
fn first_bad_run(data: &[u8], runs: &[pb::PageRun]) -> Option<usize> {
    first_bad(runs.len(), |i| {
        let run = &runs[i];
        if run.inherited {
            return false;
        }
        let start = run.offset as usize;
        let end = start + (run.nr_pages * PAGE_SIZE) as usize;
        checksum(&data[start..end]) != run.checksum
    })
}

/// The lowest index below `n` for which `is_bad` holds, tried on up to
/// [`MAX_HASH_THREADS`] threads.
pub(crate) fn first_bad(n: usize, is_bad: impl Fn(usize) -> bool + Sync) -> Option<usize> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_THREADS)
        .min(n);
    if threads <= 1 {
        return (0..n).find(|&i| is_bad(i));
    }
    // Workers take runs one at a time, so a few large runs still spread out.
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut first_bad = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return first_bad;
            }
            if first_bad.is_none() && is_bad(i) {
                // Later runs cannot lower this worker's answer: it takes indices in order.
                first_bad = Some(i);
            }
        }
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .min()
    })
}

/// Reads from the start of `file` until `buf` is full or the file ends; returns the
/// bytes read.
fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
