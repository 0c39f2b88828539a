//! The object data file `objdata.img`: the content of shared anonymous memory, memfds and
//! deleted files, kept out of `files.img` so that neither dump nor restore holds an object
//! in memory. It is laid out like a pages file (the same header page, then raw data); the
//! object's [`pb::DataRun`]s in `files.img` say where each run lies in the object and in
//! this file. Runs start page-aligned and carry an xxh3-64 checksum, as page runs do.

use crate::error::ImageError;
use crate::pages::{first_bad, open_checked};
use crate::pages::{PAGES_HEADER_SIZE, PAGE_SIZE};
use crate::pb;
use std::os::unix::fs::FileExt;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

pub use crate::pages::pages_header as objdata_header;

/// What hashes a run (xxh3-64, as for page runs).
pub type RunHasher = Xxh3;

/// Bytes [`verify`] reads at a time.
const HASH_CHUNK: u64 = 4 << 20;

/// A checksum fed a run in pieces; its digest equals [`crate::pages::checksum`] of the
/// whole run.
pub fn run_hasher() -> RunHasher {
    Xxh3::new()
}

/// Where the next run goes in a file `len` bytes long: the next page boundary.
pub fn next_run_offset(len: u64) -> u64 {
    len.next_multiple_of(PAGE_SIZE)
}

/// Checks `path` against the runs of every object that keeps data in it, before restore:
/// header, each run non-empty, page-aligned, after the header, inside the file and inside
/// its object (`objects` gives each object's size and runs), and every run's checksum.
/// Without any run the file is not read.
pub fn verify(path: &Path, objects: &[(u64, &[pb::DataRun])]) -> Result<(), ImageError> {
    let runs: Vec<&pb::DataRun> = objects.iter().flat_map(|(_, r)| r.iter()).collect();
    if runs.is_empty() {
        return Ok(());
    }
    let (file, file_len) = open_checked(path)?;
    let bad = |run: &pb::DataRun, problem: String| ImageError::DataRun {
        path: path.to_path_buf(),
        file_offset: run.file_offset,
        problem,
    };
    for &(size, object_runs) in objects {
        for run in object_runs {
            let problem = if run.len == 0 {
                Some("the run is empty".to_string())
            } else if run.file_offset % PAGE_SIZE != 0 || run.file_offset < PAGES_HEADER_SIZE {
                Some("the offset is not page-aligned after the header".to_string())
            } else if run
                .file_offset
                .checked_add(run.len)
                .is_none_or(|e| e > file_len)
            {
                Some(format!(
                    "{} bytes run past the end of the file ({file_len} bytes)",
                    run.len
                ))
            } else if run.offset.checked_add(run.len).is_none_or(|e| e > size) {
                Some(format!(
                    "{} bytes at {:#x} run past the end of their object ({size} bytes)",
                    run.len, run.offset
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(bad(run, problem));
            }
        }
    }
    // Read in chunks rather than mapped: hashing a large object then costs
    // rcr a buffer per thread, not the object's size in resident memory.
    let is_bad = |i: usize| {
        let run = runs[i];
        let mut buf = vec![0u8; run.len.min(HASH_CHUNK) as usize];
        let mut hasher = run_hasher();
        let mut done = 0;
        while done < run.len {
            let chunk = &mut buf[..(run.len - done).min(HASH_CHUNK) as usize];
            if file.read_exact_at(chunk, run.file_offset + done).is_err() {
                return true;
            }
            hasher.update(chunk);
            done += chunk.len() as u64;
        }
        hasher.digest() != run.checksum
    };
    match first_bad(runs.len(), is_bad) {
        Some(i) => Err(bad(runs[i], "checksum mismatch (file is corrupt)".into())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::checksum;

    fn file_with(runs: &[&[u8]]) -> (tempfile::TempDir, std::path::PathBuf, Vec<pb::DataRun>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objdata.img");
        let file = std::fs::File::create(&path).unwrap();
        file.write_all_at(&objdata_header(), 0).unwrap();
        let mut len = PAGES_HEADER_SIZE;
        let mut out = Vec::new();
        for (i, bytes) in runs.iter().enumerate() {
            let file_offset = next_run_offset(len);
            file.write_all_at(bytes, file_offset).unwrap();
            len = file_offset + bytes.len() as u64;
            let mut h = run_hasher();
            h.update(bytes);
            out.push(pb::DataRun {
                offset: i as u64 * 0x10000,
                len: bytes.len() as u64,
                file_offset,
                checksum: h.digest(),
            });
        }
        (dir, path, out)
    }

    #[test]
    fn sound_runs_pass_and_a_flipped_byte_is_named() {
        let (_dir, path, runs) = file_with(&[b"hello", &[7u8; 5000]]);
        assert_eq!(runs[1].file_offset, 2 * PAGE_SIZE);
        assert_eq!(runs[1].checksum, checksum(&[7u8; 5000]));
        verify(&path, &[(0x20000, &runs)]).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"x", runs[1].file_offset + 4999).unwrap();
        let err = verify(&path, &[(0x20000, &runs)]).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains("0x2000"), "{err}");
    }

    #[test]
    fn runs_outside_the_file_or_their_object_are_refused() {
        let (_dir, path, runs) = file_with(&[b"hello"]);
        let err = verify(&path, &[(3, &runs)]).unwrap_err().to_string();
        assert!(err.contains("past the end of their object"), "{err}");
        let long = [pb::DataRun {
            len: 1 << 20,
            ..runs[0]
        }];
        let err = verify(&path, &[(1 << 30, &long)]).unwrap_err().to_string();
        assert!(err.contains("past the end of the file"), "{err}");
        let in_header = [pb::DataRun {
            file_offset: 0,
            ..runs[0]
        }];
        assert!(verify(&path, &[(1 << 30, &in_header)]).is_err());
    }
}
