//! Object data, dump and restore side by side: the content of shared
//! anonymous memory, memfds and deleted files lives in `objdata.img`
//! (format: `rcr_images::objdata`), copied in chunks between the object and
//! the file, never held whole in memory. Holes (pages never written) are
//! found with SEEK_DATA/SEEK_HOLE and left out.

use crate::error::{Error, Result};
use rcr_images::objdata;
use rcr_images::pages::PAGE_SIZE;
use rcr_images::pb;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes copied at a time: large enough that system calls cost little,
/// small enough that the buffer does not matter next to the data.
const CHUNK: u64 = 4 << 20;

/// Dump side: appends objects' data to `objdata.img`.
pub struct Writer {
    file: File,
    path: PathBuf,
    len: u64,
    buf: Vec<u8>,
}

impl Writer {
    /// A new object data file at `path`, holding only its header.
    pub fn create(path: &Path) -> Result<Writer> {
        let err = |e| Error::io(path, e);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        let header = objdata::objdata_header();
        file.write_all_at(&header, 0).map_err(err)?;
        Ok(Writer {
            file,
            path: path.to_path_buf(),
            len: header.len() as u64,
            buf: Vec::new(),
        })
    }

    /// Saves the data of `src` (opened as `src_path`) below `size`, and
    /// returns where it went.
    pub fn save(&mut self, src: &File, src_path: &str, size: u64) -> Result<Vec<pb::DataRun>> {
        let src_path = Path::new(src_path);
        let runs = data_runs(src, size).map_err(|e| Error::io(src_path, e))?;
        if !runs.is_empty() && self.buf.is_empty() {
            self.buf = vec![0; CHUNK as usize];
        }
        runs.into_iter()
            .map(|(offset, len)| {
                let file_offset = objdata::next_run_offset(self.len);
                let mut hasher = objdata::run_hasher();
                copy(
                    (src, src_path, offset),
                    (&self.file, &self.path, file_offset),
                    len,
                    &mut self.buf,
                    |chunk| hasher.update(chunk),
                )?;
                self.len = file_offset + len;
                Ok(pb::DataRun {
                    offset,
                    len,
                    file_offset,
                    checksum: hasher.digest(),
                })
            })
            .collect()
    }
}

impl Writer {
    /// Saves `len` bytes of `src` from `src_off` (memory, read through
    /// `/proc/PID/mem`, which has no holes to seek) as the object's data at
    /// `offset`, leaving out pages of zeros.
    pub fn save_nonzero(
        &mut self,
        (src, src_path, src_off): (&File, &str, u64),
        len: u64,
        offset: u64,
    ) -> Result<Vec<pb::DataRun>> {
        if self.buf.is_empty() {
            self.buf = vec![0; CHUNK as usize];
        }
        let mut runs = Vec::new();
        let mut open: Option<(pb::DataRun, objdata::RunHasher)> = None;
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(CHUNK) as usize;
            src.read_exact_at(&mut self.buf[..n], src_off + pos)
                .map_err(|e| Error::io(src_path, e))?;
            for (i, page) in self.buf[..n].chunks(PAGE_SIZE as usize).enumerate() {
                if page.iter().all(|&b| b == 0) {
                    runs.extend(open.take().map(close_run));
                    continue;
                }
                let (run, hasher) = open.get_or_insert_with(|| {
                    let run = pb::DataRun {
                        offset: offset + pos + i as u64 * PAGE_SIZE,
                        file_offset: objdata::next_run_offset(self.len),
                        ..Default::default()
                    };
                    (run, objdata::run_hasher())
                });
                self.file
                    .write_all_at(page, run.file_offset + run.len)
                    .map_err(|e| Error::io(&self.path, e))?;
                hasher.update(page);
                run.len += page.len() as u64;
                self.len = run.file_offset + run.len;
            }
            pos += n as u64;
        }
        runs.extend(open.map(close_run));
        Ok(runs)
    }
}

fn close_run((run, hasher): (pb::DataRun, objdata::RunHasher)) -> pb::DataRun {
    pb::DataRun {
        checksum: hasher.digest(),
        ..run
    }
}

/// Restore side: writes `runs`, read from the object data file `data`
/// (checked at load), into `dst`, which `what` names in errors.
pub fn fill(data: &Path, runs: &[pb::DataRun], dst: &File, what: &str) -> Result<()> {
    let Some(longest) = runs.iter().map(|r| r.len).max() else {
        return Ok(());
    };
    let src = File::open(data).map_err(|e| Error::io(data, e))?;
    let mut buf = vec![0; longest.min(CHUNK) as usize];
    for r in runs {
        copy(
            (&src, data, r.file_offset),
            (dst, Path::new(what), r.offset),
            r.len,
            &mut buf,
            |_| {},
        )?;
    }
    Ok(())
}

/// Restore side: whether `other` (named `what` in errors) holds exactly the
/// `size` bytes that `runs` (in order, from `data`) and zeros between them
/// make. Compared in chunks.
pub fn matches(
    data: &Path,
    runs: &[pb::DataRun],
    size: u64,
    other: &File,
    what: &str,
) -> Result<bool> {
    let err = |e| Error::io(what, e);
    if other.metadata().map_err(err)?.len() != size {
        return Ok(false);
    }
    let src = File::open(data).map_err(|e| Error::io(data, e))?;
    let chunk = size.min(CHUNK) as usize;
    let (mut want, mut have) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut runs = runs.iter().peekable();
    let mut pos = 0;
    while pos < size {
        while runs.next_if(|r| r.offset + r.len <= pos).is_some() {}
        let (n, from) = match runs.peek() {
            Some(r) if r.offset <= pos => {
                (r.offset + r.len - pos, Some(r.file_offset + pos - r.offset))
            }
            Some(r) => (r.offset - pos, None),
            None => (size - pos, None),
        };
        let n = n.min(chunk as u64) as usize;
        match from {
            Some(at) => src
                .read_exact_at(&mut want[..n], at)
                .map_err(|e| Error::io(data, e))?,
            None => want[..n].fill(0),
        }
        other.read_exact_at(&mut have[..n], pos).map_err(err)?;
        if want[..n] != have[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Copies `len` bytes from `from` to `to` (each a file, its name for
/// errors and an offset) through `buf`, showing each chunk to `seen`.
fn copy(
    (src, src_path, src_off): (&File, &Path, u64),
    (dst, dst_path, dst_off): (&File, &Path, u64),
    len: u64,
    buf: &mut [u8],
    mut seen: impl FnMut(&[u8]),
) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        src.read_exact_at(chunk, src_off + done)
            .map_err(|e| Error::io(src_path, e))?;
        seen(chunk);
        dst.write_all_at(chunk, dst_off + done)
            .map_err(|e| Error::io(dst_path, e))?;
        done += chunk.len() as u64;
    }
    Ok(())
}

/// The (offset, length) runs of data in `file` below `size`, found with
/// SEEK_DATA/SEEK_HOLE.
fn data_runs(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let seek = |off: u64, whence| {
        // SAFETY: lseek on our own descriptor.
        let ret = unsafe { libc::lseek(file.as_raw_fd(), off as i64, whence) };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret as u64)
        }
    };
    let mut runs = Vec::new();
    let mut off = 0;
    while off < size {
        let data = match seek(off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        let hole = seek(data, libc::SEEK_HOLE)?.min(size);
        if hole > data {
            runs.push((data, hole - data));
        }
        off = hole.max(data + 1);
    }
    Ok(runs)
}

/// A scratch object data file for unit tests, removed on drop.
#[cfg(test)]
pub(crate) struct TestFile(pub PathBuf);

#[cfg(test)]
impl TestFile {
    pub(crate) fn new(name: &str) -> TestFile {
        let path = std::env::temp_dir().join(format!("rcr-{name}-{}.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TestFile(path)
    }
}

#[cfg(test)]
impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_goes_through_in_runs_and_comes_back() {
        let scratch = TestFile::new("objdata-src");
        let out = TestFile::new("objdata-out");
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&scratch.0)
            .unwrap();
        let big: Vec<u8> = (0..CHUNK + 5000).map(|i| (i % 251) as u8).collect();
        src.write_all_at(&big, 1 << 24).unwrap();
        let size = (1 << 24) + big.len() as u64;
        let mut w = Writer::create(&out.0).unwrap();
        let runs = w.save(&src, "src", size).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), big.len() as u64);
        assert!(runs.iter().all(|r| r.offset >= 1 << 24));
        objdata::verify(&out.0, &[(size, &runs)]).unwrap();
        src.set_len(0).unwrap();
        src.set_len(size).unwrap();
        fill(&out.0, &runs, &src, "back").unwrap();
        let mut back = vec![0u8; big.len()];
        src.read_exact_at(&mut back, 1 << 24).unwrap();
        assert!(back == big);
        assert!(matches(&out.0, &runs, size, &src, "back").unwrap());
        src.write_all_at(&[1], 5).unwrap();
        assert!(!matches(&out.0, &runs, size, &src, "hole written").unwrap());
        src.write_all_at(&[0], 5).unwrap();
        src.write_all_at(&[0xff], size - 1).unwrap();
        assert!(!matches(&out.0, &runs, size, &src, "data changed").unwrap());
        src.set_len(size + 1).unwrap();
        assert!(!matches(&out.0, &runs, size, &src, "longer").unwrap());
    }
}
