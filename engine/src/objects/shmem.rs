//! Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`): one kernel object
//! (an unlinked shmem inode, shown as `/dev/zero (deleted)`) that several
//! VMAs, in one process or several, map.
//!
//! The dump records the object's inode with each VMA and saves the object
//! once, read through a descriptor of it: every page it holds (in memory or
//! swapped), also those no process has in its page tables (written by a
//! process that exited or unmapped them). The restore makes one such object
//! per inode in rcr, fills it and hands it to every process that maps it, so
//! the memory stays shared.

use super::objdata;
use crate::error::{Error, Result};
use rcr_images::pb::{self, VmaKind};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// Dump side: object `id`, whose bytes from `pgoff` `pid` maps at
/// `start..end`, its data saved to `data`. Returns it and whether it was
/// read whole.
///
/// The object is read through its map_files entry, which needs
/// `CAP_CHECKPOINT_RESTORE` over the first user namespace; inside a user
/// namespace of its own (`rcr run` without privilege) rcr reads the mapped
/// part through the task's memory instead, pages of zeros left out (reading
/// a page never written makes the kernel fill it with zeros).
pub fn dump(
    pid: i32,
    (start, end, pgoff): (u64, u64, u64),
    id: u64,
    data: &mut objdata::Writer,
) -> Result<(pb::ShmemObject, bool)> {
    let (file, path) = match open_task_mapping(pid, start, end) {
        Err(Error::Io { source, .. })
            if source.raw_os_error() == Some(libc::EPERM)
                || source.raw_os_error() == Some(libc::EACCES) =>
        {
            let path = format!("/proc/{pid}/mem");
            let mem = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let runs = data.save_nonzero((&mem, &path, start), end - start, pgoff)?;
            let size = pgoff + (end - start);
            return Ok((pb::ShmemObject { id, size, runs }, false));
        }
        other => other?,
    };
    let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    let runs = data.save(&file, &path, size)?;
    Ok((pb::ShmemObject { id, size, runs }, true))
}

/// rcr's own read-only descriptor of the object `pid` maps at `start..end`
/// (through map_files, whether or not the task holds a descriptor of it),
/// and the path it was opened by.
pub(crate) fn open_task_mapping(pid: i32, start: u64, end: u64) -> Result<(File, String)> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    File::open(&path)
        .map(|f| (f, path.clone()))
        .map_err(|e| Error::io(path, e))
}

/// Restore side: the size each object needs, by inode: the furthest byte
/// any VMA maps of it.
pub fn sizes<'a>(vmas: impl Iterator<Item = &'a pb::Vma>) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for v in vmas
        .filter(|v| v.kind() == VmaKind::AnonShared && v.shmem_id != 0 && v.sysv_shmid.is_none())
    {
        let end = v.pgoff + (v.end - v.start);
        let size = out.entry(v.shmem_id).or_insert(0);
        *size = end.max(*size);
    }
    out
}

/// Restore side: a new shared anonymous object of `size` bytes (or the
/// saved object's size, if larger) holding the saved data, read from the
/// object data file `data`, as a file descriptor that maps like the
/// original (`/dev/zero (deleted)`).
///
/// Where rcr may not reopen its own mapping (map_files needs
/// `CAP_CHECKPOINT_RESTORE` over the first user namespace, which `rcr run`
/// lacks inside its own), the object is a memfd: as shared, but named
/// `/memfd:rcr-shmem (deleted)` in the maps. The flag says so.
pub fn restore(size: u64, saved: Option<&pb::ShmemObject>, data: &Path) -> Result<(OwnedFd, bool)> {
    let size = size.max(saved.map_or(0, |s| s.size));
    let (fd, memfd) = match create(size) {
        Err(Error::Preflight(_)) => (memfd(size)?, true),
        other => (other?, false),
    };
    let file = File::from(fd);
    let runs = saved.map_or(&[][..], |s| &s.runs);
    objdata::fill(data, runs, &file, "shared anonymous memory")?;
    Ok((file.into(), memfd))
}

/// How /proc/PID/maps names the memfd that stands in for shared anonymous
/// memory; a dump takes it for shared anonymous memory again.
pub const STAND_IN: &str = "/memfd:rcr-shmem";

fn memfd(size: u64) -> Result<OwnedFd> {
    let err = |e| Error::io("memfd for shared anonymous memory", e);
    // SAFETY: memfd_create with a constant NUL-terminated name (STAND_IN's).
    let fd = unsafe { libc::memfd_create(c"rcr-shmem".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor just made for us.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(err)?;
    Ok(file.into())
}

fn create(size: u64) -> Result<OwnedFd> {
    // SAFETY: a fresh shared mapping, unmapped again below; nothing in rcr
    // uses it but the open of its map_files entry.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(Error::io(
            "shared anonymous memory",
            std::io::Error::last_os_error(),
        ));
    }
    let start = addr as u64;
    let fd = open_mapping(start, start + size, "shared anonymous memory");
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(addr, size as usize) };
    fd
}

/// Opens the object behind rcr's own shared mapping `start..end` (`what`
/// names it in errors), read-write.
pub(crate) fn open_mapping(start: u64, end: u64, what: &str) -> Result<OwnedFd> {
    let path = format!("/proc/self/map_files/{start:x}-{end:x}");
    let c_path = std::ffi::CString::new(path.clone()).expect("no NUL in a path we formatted");
    // SAFETY: opens the object behind our own mapping; the result is checked.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Preflight(format!(
            "cannot reopen {what} through {path}: {} \
             (this needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a descriptor open just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(start: u64, end: u64, pgoff: u64, id: u64) -> pb::Vma {
        pb::Vma {
            start,
            end,
            pgoff,
            kind: VmaKind::AnonShared as i32,
            shmem_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn sizes_cover_every_mapping_of_an_object() {
        let vmas = [
            shared(0x10000, 0x12000, 0, 5),
            shared(0x12000, 0x13000, 0x2000, 5),
            shared(0x40000, 0x41000, 0, 6),
            pb::Vma {
                kind: VmaKind::AnonPrivate as i32,
                ..shared(0, 0x1000, 0, 0)
            },
        ];
        let s = sizes(vmas.iter());
        assert_eq!(s.len(), 2);
        assert_eq!(s[&5], 0x3000);
        assert_eq!(s[&6], 0x1000);
    }

    #[test]
    fn a_created_object_maps_as_shared_memory() {
        let fd = create(0x3000).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: two shared mappings of our own object, unmapped below.
        unsafe {
            let len = 0x3000;
            let a = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            let b = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            assert_ne!(a, libc::MAP_FAILED);
            assert_ne!(b, libc::MAP_FAILED);
            *(a as *mut u8).add(0x2001) = 0x5a;
            assert_eq!(*(b as *const u8).add(0x2001), 0x5a);
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let line = maps
                .lines()
                .find(|l| l.starts_with(&format!("{:x}-", b as u64)))
                .unwrap();
            assert!(line.contains("/dev/zero (deleted)"), "{line}");
            libc::munmap(a, len);
            libc::munmap(b, len);
        }
    }

    #[test]
    fn dump_saves_written_pages_only_and_restore_gives_them_back() {
        let len = 0x5000;
        // SAFETY: a fresh shared mapping of our own, unmapped below.
        let a = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(a, libc::MAP_FAILED);
        // SAFETY: writes inside the mapping made above.
        unsafe {
            *(a as *mut u8).add(0x10) = 1;
            *(a as *mut u8).add(0x3ff0) = 3;
        }
        let start = a as u64;
        let out = objdata::TestFile::new("shmem");
        let mut data = objdata::Writer::create(&out.0).unwrap();
        let pid = std::process::id() as i32;
        let (saved, whole) = dump(pid, (start, start + len as u64, 0), 7, &mut data).unwrap();
        assert!(whole, "read through map_files");
        // What a dump without map_files reads: the task's memory.
        let mem = File::open("/proc/self/mem").unwrap();
        let through_memory = pb::ShmemObject {
            runs: data
                .save_nonzero((&mem, "/proc/self/mem", start), len as u64, 0)
                .unwrap(),
            ..saved.clone()
        };
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(a, len) };
        assert_eq!(saved.size, len as u64);
        for object in [&saved, &through_memory] {
            let runs: Vec<(u64, usize)> = object
                .runs
                .iter()
                .map(|d| (d.offset, d.len as usize))
                .collect();
            assert_eq!(runs, [(0, 0x1000), (0x3000, 0x1000)]);
            let (fd, memfd) = restore(0x2000, Some(object), &out.0).unwrap();
            assert!(!memfd, "root reopens its mapping");
            let file = File::from(fd);
            assert_eq!(file.metadata().unwrap().len(), len as u64);
            use std::os::unix::fs::FileExt;
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, 0x3ff0).unwrap();
            assert_eq!(byte, [3]);
        }
    }
}
