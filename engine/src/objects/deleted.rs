//! Regular files deleted while open, dump and restore side by side: the
//! content is saved (once per file, however many open files refer to it);
//! restore creates the file again at its old path (or, when that name is
//! taken, under a new name in the same directory), fills it in and unlinks
//! it, so the task again holds a deleted file with that content.

use super::files::{open_task_fd, owned};
use super::objdata;
use crate::error::{Error, Result};
use rcr_images::pb;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Reads deleted file `id` through `pid`'s fd `fd`, its content into `data`.
pub fn dump_deleted(
    pid: i32,
    fd: i32,
    id: u32,
    path: &Path,
    data: &mut objdata::Writer,
) -> Result<pb::DeletedFile> {
    let file = File::from(open_task_fd(pid, fd, libc::O_RDONLY)?);
    read_deleted(&file, &format!("/proc/{pid}/fd/{fd}"), id, path, data)
}

/// Reads deleted file `id`, last at `path`, through rcr's descriptor
/// `file` of it, opened as `proc_path` (a task's fd or mapping); the
/// content goes to `data`.
pub fn read_deleted(
    file: &File,
    proc_path: &str,
    id: u32,
    path: &Path,
    data: &mut objdata::Writer,
) -> Result<pb::DeletedFile> {
    let meta = file.metadata().map_err(|e| Error::io(proc_path, e))?;
    Ok(pb::DeletedFile {
        id,
        path: path.to_string_lossy().into_owned(),
        mode: meta.mode() & 0o7777,
        size: meta.len(),
        runs: data.save(file, proc_path, meta.len())?,
    })
}

/// Creates the file with its content (from the object data file `data`)
/// and unlinks it; the descriptor is open for reading and writing.
pub fn make_deleted(d: &pb::DeletedFile, data: &Path) -> Result<OwnedFd> {
    let path = Path::new(&d.path);
    let created = [path.to_path_buf()]
        .into_iter()
        .chain(
            (0..100)
                .map(|i| path.with_file_name(format!(".rcr-deleted-{}-{i}", std::process::id()))),
        )
        .find_map(|p| create_new(&p, d.mode).map(|fd| (p, fd)));
    let Some((at, fd)) = created else {
        return Err(Error::Preflight(format!(
            "cannot create the deleted file {} again: {}",
            d.path,
            std::io::Error::last_os_error()
        )));
    };
    std::fs::remove_file(&at).map_err(|e| Error::io(&at, e))?;
    let file = File::from(fd);
    file.set_len(d.size).map_err(|e| Error::io(&d.path, e))?;
    objdata::fill(data, &d.runs, &file, &d.path)?;
    Ok(file.into())
}

fn create_new(path: &Path, mode: u32) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: open with a valid C string and a mode; the result is checked.
    let raw = unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) };
    owned(raw, "creating a deleted file").ok()
}
