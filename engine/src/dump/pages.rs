//! Writing a task's pages into its pages file: readable memory goes through
//! the parasite (vmsplice into a pipe, splice into the file, no copies);
//! memory the task cannot read itself (PROT_NONE with data) is read through
//! /proc/PID/mem, which rcr may do as the task's tracer.

use crate::error::{Error, Result};
use crate::infect::parasite::Parasite;
use crate::objects::memory::{DumpRun, PAGE_SIZE};
use rcr_images::pages::{checksum, pages_header, PAGES_HEADER_SIZE};
use rcr_images::pb;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A written pages file whose page map still lacks the runs' checksums:
/// they are computed apart, while rcr goes on with the next process.
pub struct Unsummed {
    file: File,
    path: PathBuf,
    map: pb::PageMap,
}

impl Unsummed {
    pub fn map(&self) -> &pb::PageMap {
        &self.map
    }

    /// Adds the checksums and writes the page map to `pagemap`.
    pub fn finish(mut self, pagemap: &Path) -> Result<()> {
        add_checksums(&self.file, &self.path, &mut self.map)?;
        rcr_images::write(pagemap, &self.map)?;
        Ok(())
    }
}

/// Writes every run and returns the page map, without checksums yet;
/// inherited runs are only listed.
pub fn write_pages(
    pid: i32,
    parasite: &mut Parasite,
    all_runs: &[DumpRun],
    path: &Path,
) -> Result<Unsummed> {
    let data: Vec<DumpRun> = all_runs.iter().filter(|r| !r.inherited).copied().collect();
    let runs = &data[..];
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(&pages_header())
        .map_err(|e| Error::io(path, e))?;
    let mut offset = PAGES_HEADER_SIZE;
    let mut map = pb::PageMap::default();
    let mut i = 0;
    while i < runs.len() {
        // Consecutive readable runs go to the parasite in one command.
        let batch_end = runs[i..]
            .iter()
            .position(|r| r.readable != runs[i].readable)
            .map_or(runs.len(), |n| i + n);
        let batch = &runs[i..batch_end];
        let bytes: u64 = batch.iter().map(|r| r.end - r.start).sum();
        if runs[i].readable {
            let iovs: Vec<(u64, u64)> = batch.iter().map(|r| (r.start, r.end - r.start)).collect();
            let written = parasite.dump_pages(&iovs, &file, offset)?;
            if written != bytes {
                return Err(Error::Invalid {
                    path: path.to_path_buf(),
                    what: format!("parasite of pid {pid} wrote {written} of {bytes} bytes"),
                });
            }
        } else {
            copy_through_proc_mem(pid, batch, &file, offset, path)?;
        }
        for r in batch {
            map.runs.push(pb::PageRun {
                vaddr: r.start,
                nr_pages: (r.end - r.start) / PAGE_SIZE,
                offset,
                ..Default::default()
            });
            offset += r.end - r.start;
        }
        i = batch_end;
    }
    map.pages_file_size = offset;
    map.runs.extend(
        all_runs
            .iter()
            .filter(|r| r.inherited)
            .map(|r| pb::PageRun {
                vaddr: r.start,
                nr_pages: (r.end - r.start) / PAGE_SIZE,
                inherited: true,
                ..Default::default()
            }),
    );
    map.runs.sort_unstable_by_key(|r| r.vaddr);
    Ok(Unsummed {
        file,
        path: path.to_path_buf(),
        map,
    })
}

fn copy_through_proc_mem(
    pid: i32,
    runs: &[DumpRun],
    out: &File,
    mut offset: u64,
    path: &Path,
) -> Result<()> {
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| Error::io(&mem_path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for r in runs {
        let mut addr = r.start;
        while addr < r.end {
            let n = ((r.end - addr) as usize).min(buf.len());
            mem.read_exact_at(&mut buf[..n], addr)
                .map_err(|e| Error::io(format!("{mem_path} at {addr:#x}"), e))?;
            out.write_all_at(&buf[..n], offset)
                .map_err(|e| Error::io(path, e))?;
            addr += n as u64;
            offset += n as u64;
        }
    }
    Ok(())
}

fn add_checksums(file: &File, path: &Path, map: &mut pb::PageMap) -> Result<()> {
    if map.runs.is_empty() {
        return Ok(());
    }
    // SAFETY: the file is ours, freshly written, and nobody truncates it while
    // the read-only mapping lives.
    let data = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
    for run in map.runs.iter_mut().filter(|r| !r.inherited) {
        let start = run.offset as usize;
        let end = start + (run.nr_pages * PAGE_SIZE) as usize;
        run.checksum = checksum(&data[start..end]);
    }
    Ok(())
}
