//! Files reached by path (regular files, directories, memory character
//! devices) and the fd table that refers to them, dump and restore side by side.
//!
//! Each open file description is stored once in `files.img`; fds that share
//! it (dup, inheritance) point at the same id, so restore opens it once and
//! installs it at every number, and offset and flags keep moving together.

use crate::error::{Error, Result};
use crate::proc::fdinfo::{self, FdTarget};
use rcr_images::pb::{self, file_entry::Kind};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Flags that only matter while opening, never for an open file.
const OPEN_ONLY_FLAGS: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY;
/// Major number of the memory devices (/dev/null, zero, full, random, urandom).
const MEM_DEVICE_MAJOR: u32 = 1;
const KCMP_FILE: libc::c_int = 0;

/// Collects the files of one checkpoint, each stored once.
#[derive(Default)]
pub struct FileTableBuilder {
    entries: Vec<pb::FileEntry>,
    mapped: HashMap<(PathBuf, bool), u32>,
}

impl FileTableBuilder {
    /// The id of a file that a VMA maps, opened read-write when the mapping
    /// may write to it.
    pub fn mapped_file(&mut self, pid: i32, path: &Path, writable: bool) -> Result<u32> {
        if let Some(id) = self.mapped.get(&(path.to_path_buf(), writable)) {
            return Ok(*id);
        }
        let meta = std::fs::metadata(path).map_err(|e| Error::Unsupported {
            pid,
            what: format!(
                "the mapped file {} cannot be examined ({e})",
                path.display()
            ),
        })?;
        let flags = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let id = self.add(reg_file(path, flags as u32, 0, &meta));
        self.mapped.insert((path.to_path_buf(), writable), id);
        Ok(id)
    }

    fn add(&mut self, reg: pb::RegFile) -> u32 {
        let id = self.entries.len() as u32 + 1;
        self.entries.push(pb::FileEntry {
            id,
            kind: Some(Kind::Reg(reg)),
        });
        id
    }

    /// The finished table.
    pub fn finish(self) -> pb::FileTable {
        pb::FileTable {
            files: self.entries,
        }
    }
}

fn reg_file(path: &Path, flags: u32, pos: u64, meta: &std::fs::Metadata) -> pb::RegFile {
    pb::RegFile {
        path: path.to_string_lossy().into_owned(),
        flags,
        pos,
        mode: meta.mode(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        dev: meta.dev(),
        ino: meta.ino(),
        rdev: meta.rdev(),
    }
}

/// What kind of object a descriptor is, in words, from its /proc link.
fn kind_of(target: &FdTarget, meta: Option<&std::fs::Metadata>) -> String {
    match target {
        FdTarget::Pipe(_) => "a pipe".into(),
        FdTarget::Socket(_) => "a socket".into(),
        FdTarget::AnonInode(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            match name {
                "eventpoll" => "an epoll instance".into(),
                _ => format!("an {name}"),
            }
        }
        FdTarget::Path {
            path,
            deleted: true,
        } if path.starts_with("/memfd:") => "a memfd".into(),
        FdTarget::Path { deleted: true, .. } => "a deleted file".into(),
        FdTarget::Path { .. } => match meta.map(|m| m.file_type()) {
            Some(t) if t.is_fifo() => "a FIFO".into(),
            Some(t) if t.is_socket() => "a unix socket file".into(),
            Some(t) if t.is_block_device() => "a block device".into(),
            Some(t) if t.is_char_device() => {
                let rdev = meta.map_or(0, |m| m.rdev());
                format!(
                    "a character device {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            }
            _ => "an unknown file type".into(),
        },
        FdTarget::Other(other) => format!("an unknown object {other}"),
    }
}

fn supported(meta: &std::fs::Metadata) -> bool {
    let t = meta.file_type();
    t.is_file()
        || t.is_dir()
        || (t.is_char_device() && libc::major(meta.rdev()) == MEM_DEVICE_MAJOR)
}

/// One descriptor of the task, examined but not yet stored.
struct OpenFd {
    fd: i32,
    path: PathBuf,
    meta: std::fs::Metadata,
    flags: u32,
    pos: u64,
}

/// Examines every descriptor of `pid`; refuses, naming the fd and its kind,
/// any that rcr cannot restore. Touches nothing in the task.
pub fn examine_fds(pid: i32) -> Result<Vec<ExaminedFd>> {
    let mut out = Vec::new();
    for fd in fdinfo::list_fds(pid)? {
        let link = fdinfo::read_fd_link(pid, fd)?;
        let target = fdinfo::classify_link(&link);
        let proc_path = format!("/proc/{pid}/fd/{fd}");
        let meta = std::fs::metadata(&proc_path).ok();
        let path = match (&target, &meta) {
            (
                FdTarget::Path {
                    path,
                    deleted: false,
                },
                Some(m),
            ) if supported(m) => PathBuf::from(path),
            _ => {
                return Err(Error::UnsupportedFd {
                    pid,
                    fd,
                    kind: kind_of(&target, meta.as_ref()),
                    target: link,
                })
            }
        };
        let info = fdinfo::read_fdinfo(pid, fd)?;
        out.push(ExaminedFd(OpenFd {
            fd,
            path,
            meta: meta.expect("checked above"),
            flags: info.flags,
            pos: info.pos,
        }));
    }
    Ok(out)
}

/// A descriptor that [`examine_fds`] accepted.
pub struct ExaminedFd(OpenFd);

/// Stores the examined descriptors: one file entry per open file
/// description, found with kcmp(KCMP_FILE).
pub fn dump_fds(
    pid: i32,
    fds: Vec<ExaminedFd>,
    files: &mut FileTableBuilder,
) -> Result<Vec<pb::Fd>> {
    let mut seen: Vec<(i32, u64, u64, u32)> = Vec::new();
    let mut out = Vec::with_capacity(fds.len());
    for ExaminedFd(f) in fds {
        let (dev, ino) = (f.meta.dev(), f.meta.ino());
        let shared = seen
            .iter()
            .find(|(other, d, i, _)| *d == dev && *i == ino && same_file(pid, *other, f.fd))
            .map(|(_, _, _, id)| *id);
        let cloexec = f.flags & libc::O_CLOEXEC as u32 != 0;
        let id = match shared {
            Some(id) => id,
            None => {
                let flags = f.flags & !(libc::O_CLOEXEC as u32);
                let id = files.add(reg_file(&f.path, flags, f.pos, &f.meta));
                seen.push((f.fd, dev, ino, id));
                id
            }
        };
        out.push(pb::Fd {
            fd: f.fd,
            file_id: id,
            cloexec,
        });
    }
    Ok(out)
}

fn same_file(pid: i32, fd1: i32, fd2: i32) -> bool {
    // SAFETY: kcmp only compares kernel objects of a process we trace.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, fd1, fd2) };
    ret == 0
}

/// Opens a saved file the way the task had it: same flags, same offset.
pub fn open_saved(file: &pb::RegFile) -> Result<OwnedFd> {
    let path = Path::new(&file.path);
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Preflight(format!("file path {} holds a NUL byte", file.path)))?;
    let flags = (file.flags as i32 & !OPEN_ONLY_FLAGS) | libc::O_CLOEXEC;
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe { libc::open(cpath.as_ptr(), flags) };
    if raw < 0 {
        return Err(Error::Preflight(format!(
            "cannot open {} again: {}",
            file.path,
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let meta = std::fs::metadata(format!("/proc/self/fd/{raw}")).map_err(|e| Error::io(path, e))?;
    if meta.mode() & libc::S_IFMT != file.mode & libc::S_IFMT {
        return Err(Error::Preflight(format!(
            "{} is no longer the kind of file it was at checkpoint time",
            file.path
        )));
    }
    if meta.file_type().is_file() && file.pos != 0 {
        // SAFETY: lseek on our own descriptor.
        let off = unsafe { libc::lseek(fd.as_raw_fd(), file.pos as i64, libc::SEEK_SET) };
        if off < 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
    }
    Ok(fd)
}

/// Refuses a mapped file that changed since the checkpoint: its pages in the
/// image were taken against the old contents.
pub fn check_unchanged(file: &pb::RegFile, fd: &OwnedFd) -> Result<()> {
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| Error::io(&file.path, e))?;
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    if meta.size() != file.size || mtime_ns != file.mtime_ns {
        return Err(Error::Preflight(format!(
            "the mapped file {} changed since the checkpoint (size {} → {}, mtime differs: {})",
            file.path,
            file.size,
            meta.size(),
            mtime_ns != file.mtime_ns
        )));
    }
    Ok(())
}

/// Whether `file` is the binary rcr itself runs from.
pub fn is_own_exe(file: &pb::RegFile) -> bool {
    std::fs::metadata("/proc/self/exe").is_ok_and(|m| m.dev() == file.dev && m.ino() == file.ino)
}

/// The saved regular file with this id.
pub fn reg_by_id(table: &pb::FileTable, id: u32) -> Option<&pb::RegFile> {
    table
        .files
        .iter()
        .find(|f| f.id == id)
        .and_then(|f| f.kind.as_ref().map(|Kind::Reg(r)| r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_saved_restores_offset_and_flags() {
        let dir = std::env::temp_dir().join(format!("rcr-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let saved = reg_file(&path, (libc::O_RDWR | libc::O_APPEND) as u32, 4, &meta);
        let fd = open_saved(&saved).unwrap();
        // SAFETY: querying our own descriptor.
        let pos = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
        assert_eq!(pos, 4);
        // SAFETY: as above.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_APPEND, 0);
        check_unchanged(&saved, &fd).unwrap();
        std::fs::write(&path, b"longer contents").unwrap();
        assert!(check_unchanged(&saved, &fd).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_named() {
        let saved = pb::RegFile {
            path: "/nonexistent/rcr-test".into(),
            ..Default::default()
        };
        let err = open_saved(&saved).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/rcr-test"), "{err}");
    }
}
