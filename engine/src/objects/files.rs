//! Files reached by path (regular files, directories, memory character
//! devices) and the fd table that refers to them, dump and restore side by side.
//! Other kinds of descriptors live in their own modules (pipe, eventfd,
//! signalfd, timerfd, epoll, memfd, deleted, unix_socket); this one examines
//! the table and hands each open file description to its kind.
//!
//! Each open file description is stored once in `files.img`; fds that share
//! it (dup, inheritance) point at the same id, so restore opens it once and
//! installs it at every number, and offset and flags keep moving together.

use super::{
    deleted, epoll, eventfd, inet_socket, inotify, memfd, objdata, pipe, shmem, signalfd, timerfd,
    tty, unix_socket,
};
use crate::error::{Error, Result};
use crate::proc::fdinfo::{self, FdTarget};
use rcr_images::pb::{self, file_entry::Kind};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Memfds and deleted files that VMAs map, by (dev, ino, writable).
    mapped_inodes: HashMap<(u64, u64, bool), u32>,
    /// Pipes and memfds, each stored once, by their (device, inode).
    pipes: Inodes<pb::Pipe>,
    memfds: Inodes<pb::MemFd>,
    deleted: Inodes<pb::DeletedFile>,
    /// Every open file description stored so far, across the tree, so that
    /// one inherited across fork or dup'ed is stored once: bucketed by
    /// (dev, ino), each bucket in kcmp order (see [`find_stored`]).
    opened: HashMap<(u64, u64), Vec<Stored>>,
    unix: unix_socket::Collected,
    /// Established TCP connections taken in repair mode (`--tcp-established`);
    /// None: they are refused.
    repaired: Option<inet_socket::Repaired>,
    /// Epoll registrations to find among every process's files: (pid, fd,
    /// (dev, ino) of the epoll, the registration).
    foreign: Vec<(i32, i32, (u64, u64), epoll::Foreign)>,
    /// Shared anonymous memory objects, by shmem id, and for those read
    /// through task memory rather than whole, the parts read so far.
    shmem: BTreeMap<u64, (pb::ShmemObject, ReadParts)>,
    /// Where the content of shared memory, memfds and deleted files goes.
    data: Option<objdata::Writer>,
    ttys: tty::Collected,
}

/// The (start, end) byte ranges of a shared memory object read so far
/// through task memory; `None`: it was read whole.
type ReadParts = Option<Vec<(u64, u64)>>;

/// An open file description already stored: a descriptor of it, and its id.
#[derive(Clone, Copy)]
struct Stored {
    pid: i32,
    fd: i32,
    id: u32,
}

/// Objects that several open file descriptions may share, stored once each.
struct Inodes<T> {
    ids: HashMap<(u64, u64), u32>,
    saved: Vec<T>,
}

impl<T> Default for Inodes<T> {
    fn default() -> Self {
        Inodes {
            ids: HashMap::new(),
            saved: Vec::new(),
        }
    }
}

impl<T> Inodes<T> {
    /// The id of the object with inode `meta`, dumped by `dump` when new.
    fn id(&mut self, meta: &std::fs::Metadata, dump: impl FnOnce(u32) -> Result<T>) -> Result<u32> {
        let key = (meta.dev(), meta.ino());
        if let Some(id) = self.ids.get(&key) {
            return Ok(*id);
        }
        let id = self.saved.len() as u32 + 1;
        self.saved.push(dump(id)?);
        self.ids.insert(key, id);
        Ok(id)
    }
}

/// How [`Made`] makes an object from its saved state.
type Make<'a, T> = dyn Fn(&T) -> Result<OwnedFd> + 'a;

/// The shared objects of a restore (pipes, memfds), each made once on first
/// use and kept open while the descriptors that refer to it are opened.
pub(crate) struct Made<'a, T> {
    saved: &'a [T],
    id_of: fn(&T) -> u32,
    make: Box<Make<'a, T>>,
    made: HashMap<u32, OwnedFd>,
}

impl<'a, T> Made<'a, T> {
    pub(crate) fn new(
        saved: &'a [T],
        id_of: fn(&T) -> u32,
        make: impl Fn(&T) -> Result<OwnedFd> + 'a,
    ) -> Self {
        Made {
            saved,
            id_of,
            make: Box::new(make),
            made: HashMap::new(),
        }
    }

    /// A descriptor of object `id`, open for reading and writing.
    pub(crate) fn get(&mut self, id: u32) -> Result<&OwnedFd> {
        if !self.made.contains_key(&id) {
            let saved = by_id(self.saved, id, self.id_of).expect("checked at load");
            let fd = (self.make)(saved)?;
            self.made.insert(id, fd);
        }
        Ok(&self.made[&id])
    }
}

/// The memfds and deleted files of a restore, each made once and shared
/// by the descriptors and the mappings that refer to it.
pub struct MadeFiles<'a> {
    table: &'a pb::FileTable,
    memfds: Made<'a, pb::MemFd>,
    deleted: Made<'a, pb::DeletedFile>,
}

impl<'a> MadeFiles<'a> {
    /// `data`: the checkpoint's object data file.
    pub fn new(table: &'a pb::FileTable, data: &'a Path) -> Self {
        MadeFiles {
            table,
            memfds: Made::new(&table.memfds, |m| m.id, |m| memfd::make_memfd(m, data)),
            deleted: Made::new(&table.deleted, |d| d.id, |d| deleted::make_deleted(d, data)),
        }
    }

    /// A new descriptor of file `id` that a VMA maps: a saved path, opened
    /// again (a private mapping's file checked unchanged), or a memfd or
    /// deleted file made here.
    pub fn open_mapped(&mut self, id: u32, private: bool) -> Result<OwnedFd> {
        match file_by_id(self.table, id) {
            Some(Kind::Reg(reg)) => {
                let fd = open_saved(reg)?;
                if private {
                    check_unchanged(reg, &fd)?;
                }
                Ok(fd)
            }
            Some(Kind::Memfd(m)) => reopen(self.memfds.get(m.memfd_id)?, m.flags),
            Some(Kind::Deleted(d)) => reopen(self.deleted.get(d.deleted_id)?, d.flags),
            _ => Err(Error::Preflight(format!(
                "a VMA maps file {id}, which is not a mappable file"
            ))),
        }
    }
}

/// Whether file `id` is of a kind a VMA can map.
pub fn mappable(table: &pb::FileTable, id: u32) -> bool {
    matches!(
        file_by_id(table, id),
        Some(Kind::Reg(_) | Kind::Memfd(_) | Kind::Deleted(_))
    )
}

impl FileTableBuilder {
    /// A builder that saves object content to `data`.
    pub fn new(data: objdata::Writer) -> Self {
        FileTableBuilder {
            data: Some(data),
            ..Self::default()
        }
    }

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
        let id = self.add(Kind::Reg(reg_file(path, flags as u32, 0, &meta)));
        self.mapped.insert((path.to_path_buf(), writable), id);
        Ok(id)
    }

    /// The id of the memfd or deleted regular file (last at `path`) that
    /// `pid` maps at `start..end`, opened read-write when the mapping may
    /// write to it. The object is read through the mapping, so a process
    /// need not hold a descriptor of it, and stored once per inode with the
    /// descriptors that open it.
    pub fn mapped_unlinked(
        &mut self,
        pid: i32,
        (start, end): (u64, u64),
        path: &str,
        writable: bool,
    ) -> Result<u32> {
        let (file, proc_path) = shmem::open_task_mapping(pid, start, end)?;
        let meta = file.metadata().map_err(|e| Error::io(&proc_path, e))?;
        let key = (meta.dev(), meta.ino(), writable);
        if let Some(id) = self.mapped_inodes.get(&key) {
            return Ok(*id);
        }
        let flags = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        } as u32;
        let kind = match memfd::name_of(path) {
            Some(name) => {
                let memfd_id = self.memfds.id(&meta, |id| {
                    memfd::read_memfd(pid, &file, &proc_path, id, name, writer(&mut self.data))
                })?;
                let seals = self.memfds.saved[memfd_id as usize - 1].seals as i32;
                if writable && seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
                    return Err(Error::Unsupported {
                        pid,
                        what: format!(
                            "the writable shared mapping at {start:#x} of memfd {name:?}, \
                             sealed against writes since"
                        ),
                    });
                }
                Kind::Memfd(pb::MemFdFile {
                    memfd_id,
                    flags,
                    pos: 0,
                })
            }
            None if meta.file_type().is_file() => Kind::Deleted(pb::DeletedOpen {
                deleted_id: self.deleted.id(&meta, |id| {
                    let data = writer(&mut self.data);
                    deleted::read_deleted(&file, &proc_path, id, Path::new(path), data)
                })?,
                flags,
                pos: 0,
            }),
            None => {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "the mapping at {start:#x} of the deleted file {path}, which is not \
                         a regular file"
                    ),
                })
            }
        };
        let id = self.add(kind);
        self.mapped_inodes.insert(key, id);
        Ok(id)
    }

    /// Saves shared memory object `id` once, read through `pid`'s mapping
    /// of it at `start..end` (bytes from `pgoff`). Where it cannot be read
    /// whole, each part some mapping shows is read once.
    pub fn shmem_object(
        &mut self,
        pid: i32,
        (start, end, pgoff): (u64, u64, u64),
        id: u64,
    ) -> Result<()> {
        let part = (pgoff, pgoff + (end - start));
        let parts = match self.shmem.get(&id) {
            None => None,
            Some((_, None)) => return Ok(()),
            Some((_, Some(parts))) if parts.iter().any(|p| p.0 <= part.0 && part.1 <= p.1) => {
                return Ok(())
            }
            Some((_, Some(parts))) => Some(parts.clone()),
        };
        let (saved, whole) = shmem::dump(pid, (start, end, pgoff), id, writer(&mut self.data))?;
        let entry = match (parts, whole) {
            (Some(mut parts), false) => {
                let (object, _) = &self.shmem[&id];
                parts.push(part);
                let mut runs = object.runs.clone();
                runs.extend(saved.runs);
                let size = object.size.max(saved.size);
                (pb::ShmemObject { id, size, runs }, Some(parts))
            }
            (_, true) => (saved, None),
            (None, false) => (saved, Some(vec![part])),
        };
        self.shmem.insert(id, entry);
        Ok(())
    }

    fn add(&mut self, kind: Kind) -> u32 {
        let id = self.entries.len() as u32 + 1;
        self.entries.push(pb::FileEntry {
            id,
            kind: Some(kind),
        });
        id
    }

    /// Refuses a unix socket connected outside the tree, or whose queue
    /// cannot be sent again, once every process's sockets are stored.
    pub fn check_unix_sockets(&mut self) -> Result<()> {
        self.unix.check(&mut self.entries)
    }

    /// Keeps unix sockets connected outside the tree, to be connected to
    /// their peer's name again at restore (`--external-unix`).
    pub fn external_unix(&mut self) {
        self.unix.external = true;
    }

    /// Takes established TCP connections in repair mode from now on,
    /// locking those of processes `pids` first.
    pub fn repair_tcp(&mut self, pids: &[i32]) -> Result<()> {
        let mut repaired = inet_socket::Repaired::default();
        repaired.lock_all(pids)?;
        self.repaired = Some(repaired);
        Ok(())
    }

    /// The sockets left in repair mode, for the caller to close or release.
    pub fn take_repaired(&mut self) -> Option<inet_socket::Repaired> {
        self.repaired.take()
    }

    /// Finds the file of each epoll registration that the process the
    /// epoll was stored from no longer holds at its number, among the files
    /// of every process (an epoll shared across fork); refuses one that no
    /// process of the tree holds.
    pub fn resolve_epolls(&mut self) -> Result<()> {
        for (pid, efd, key, t) in std::mem::take(&mut self.foreign) {
            let epoll_id =
                find_stored(&self.opened[&key], pid, efd)?.expect("stored with its registrations");
            let file_id = self
                .opened
                .iter()
                .filter(|(k, _)| k.1 == t.ino)
                .flat_map(|(_, bucket)| bucket)
                .find(|s| t.held_by(pid, efd, s.pid, s.fd))
                .map(|s| s.id)
                .ok_or_else(|| Error::Unsupported {
                    pid,
                    what: format!(
                        "epoll fd {efd} watching a file that no process of the tree holds \
                         (registered as fd {})",
                        t.fd
                    ),
                })?;
            let entry = &mut self.entries[epoll_id as usize - 1];
            if let Some(Kind::Epoll(e)) = &mut entry.kind {
                e.targets[t.index].file_id = file_id;
            }
        }
        Ok(())
    }

    /// Ties terminal descriptors to their pty pairs, or to the caller's
    /// terminal with `--shell-job` (`caller`: the root's controlling
    /// terminal), and stores the pairs; refuses a terminal outside the tree.
    pub fn resolve_ttys(
        &mut self,
        tree: &[pb::ProcessEntry],
        caller: Option<&tty::Caller>,
        shell_job: bool,
    ) -> Result<(Vec<pb::TtyPair>, i32)> {
        let ttys = std::mem::take(&mut self.ttys);
        let pairs = ttys.resolve(&mut self.entries, tree, caller, shell_job)?;
        let foreground = match shell_job {
            true => tty::caller_foreground(caller, tree),
            false => 0,
        };
        Ok((pairs, foreground))
    }

    /// The object data file, for objects saved after the table (SysV
    /// segments); none of this builder's methods may save data after it.
    pub fn take_data(&mut self) -> objdata::Writer {
        self.data.take().expect("taken once")
    }

    /// The finished table.
    pub fn finish(self) -> pb::FileTable {
        pb::FileTable {
            files: self.entries,
            pipes: self.pipes.saved,
            memfds: self.memfds.saved,
            deleted: self.deleted.saved,
            posix_shm: Vec::new(),
            shmem: self.shmem.into_values().map(|(o, _)| o).collect(),
            ttys: Vec::new(),
            caller_tty_foreground: 0,
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

fn is_terminal(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && tty::is_terminal(meta.rdev())
}

/// The kernel object behind a descriptor that rcr can checkpoint.
enum Object {
    /// Reached by path: regular file, directory, memory device.
    Path(PathBuf),
    /// An anonymous pipe, or a FIFO with its path.
    Pipe {
        fifo: Option<PathBuf>,
    },
    EventFd,
    SignalFd,
    TimerFd,
    Epoll,
    Inotify,
    /// A memfd, by its name.
    MemFd(String),
    /// A regular file unlinked while open, by its last path.
    Deleted(PathBuf),
    /// A unix socket, as rcr's own descriptor of it.
    Unix(OwnedFd),
    /// An AF_INET or AF_INET6 socket (rcr's descriptor) and its family.
    Inet(OwnedFd, i32),
    /// A terminal: a pty end, or the caller's terminal, by path.
    Tty(PathBuf),
}

fn classify(
    target: &FdTarget,
    meta: &std::fs::Metadata,
    socket: Option<(OwnedFd, i32)>,
) -> Option<Object> {
    match target {
        FdTarget::Pipe(_) => Some(Object::Pipe { fifo: None }),
        FdTarget::Socket(_) => socket.map(|(s, family)| match family {
            libc::AF_UNIX => Object::Unix(s),
            _ => Object::Inet(s, family),
        }),
        FdTarget::AnonInode(name) => match name.as_str() {
            "eventfd" => Some(Object::EventFd),
            "signalfd" => Some(Object::SignalFd),
            "timerfd" => Some(Object::TimerFd),
            "eventpoll" => Some(Object::Epoll),
            "inotify" => Some(Object::Inotify),
            _ => None,
        },
        FdTarget::Path {
            path,
            deleted: true,
        } => match memfd::name_of(path) {
            Some(name) => Some(Object::MemFd(name.to_owned())),
            None if meta.file_type().is_file() => Some(Object::Deleted(PathBuf::from(path))),
            None => None,
        },
        FdTarget::Path {
            path,
            deleted: false,
        } if meta.file_type().is_fifo() => Some(Object::Pipe {
            fifo: Some(PathBuf::from(path)),
        }),
        FdTarget::Path {
            path,
            deleted: false,
        } if supported(meta) => Some(Object::Path(PathBuf::from(path))),
        FdTarget::Path {
            path,
            deleted: false,
        } if is_terminal(meta) => Some(Object::Tty(PathBuf::from(path))),
        _ => None,
    }
}

/// One descriptor of the task, examined but not yet stored.
struct OpenFd {
    fd: i32,
    object: Object,
    meta: std::fs::Metadata,
    info: fdinfo::FdInfo,
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
        let socket = match target {
            FdTarget::Socket(_) => Some(unix_socket::examine(pid, fd, &link)?),
            _ => None,
        };
        let Some((object, meta)) = meta
            .as_ref()
            .and_then(|m| classify(&target, m, socket))
            .zip(meta.clone())
        else {
            return Err(Error::UnsupportedFd {
                pid,
                fd,
                kind: kind_of(&target, meta.as_ref()),
                target: link,
            });
        };
        let info = fdinfo::read_fdinfo(pid, fd)?;
        out.push(ExaminedFd(OpenFd {
            fd,
            object,
            meta,
            info,
        }));
    }
    Ok(out)
}

/// A descriptor that [`examine_fds`] accepted.
pub struct ExaminedFd(OpenFd);

impl ExaminedFd {
    pub fn fd(&self) -> i32 {
        self.0.fd
    }

    pub fn info(&self) -> &fdinfo::FdInfo {
        &self.0.info
    }
}

/// Stores the examined descriptors: one file entry per open file
/// description, found with kcmp(KCMP_FILE).
pub fn dump_fds(
    pid: i32,
    fds: Vec<ExaminedFd>,
    files: &mut FileTableBuilder,
) -> Result<Vec<pb::Fd>> {
    let mut out = Vec::with_capacity(fds.len());
    for ExaminedFd(f) in fds {
        let key = (f.meta.dev(), f.meta.ino());
        let found = find_stored(files.opened.get(&key).map_or(&[], Vec::as_slice), pid, f.fd)?;
        let shared = found.ok().or_else(|| {
            files
                .unix
                .file_of(key.1)
                .filter(|_| matches!(f.object, Object::Unix(_)))
        });
        let cloexec = f.info.flags & libc::O_CLOEXEC as u32 != 0;
        let id = match shared {
            Some(id) => id,
            None => {
                let kind = dump_object(pid, &f, files)?;
                let id = files.add(kind);
                if let Object::Unix(_) = f.object {
                    files.unix.stored(key.1, id, pid, f.fd);
                }
                let at = found.err().unwrap_or_default();
                let stored = Stored { pid, fd: f.fd, id };
                files.opened.entry(key).or_default().insert(at, stored);
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

/// The object data file of a builder made by [`FileTableBuilder::new`].
fn writer(data: &mut Option<objdata::Writer>) -> &mut objdata::Writer {
    data.as_mut()
        .expect("FileTableBuilder::new gives every dump its object data file")
}

/// Stores one open file description, by kind.
fn dump_object(pid: i32, f: &OpenFd, files: &mut FileTableBuilder) -> Result<Kind> {
    let flags = f.info.flags & !(libc::O_CLOEXEC as u32);
    Ok(match &f.object {
        Object::Path(path) => Kind::Reg(reg_file(path, flags, f.info.pos, &f.meta)),
        Object::Pipe { fifo } => {
            let pipe_id = files.pipes.id(&f.meta, |id| {
                pipe::dump_pipe(pid, f.fd, id, fifo.as_deref())
            })?;
            Kind::Pipe(pb::PipeEnd { pipe_id, flags })
        }
        Object::EventFd => Kind::Eventfd(eventfd::dump_eventfd(pid, f.fd, &f.info, flags)?),
        Object::SignalFd => Kind::Signalfd(signalfd::dump_signalfd(pid, f.fd, &f.info, flags)?),
        Object::TimerFd => Kind::Timerfd(timerfd::dump_timerfd(pid, f.fd, &f.info, flags)?),
        Object::Epoll => {
            let (saved, foreign) = epoll::dump_epoll(pid, f.fd, &f.info, flags)?;
            let key = (f.meta.dev(), f.meta.ino());
            files
                .foreign
                .extend(foreign.into_iter().map(|t| (pid, f.fd, key, t)));
            Kind::Epoll(saved)
        }
        Object::Inotify => Kind::Inotify(inotify::dump_inotify(pid, f.fd, &f.info, flags)?),
        Object::MemFd(name) => {
            let data = writer(&mut files.data);
            let memfd_id = files
                .memfds
                .id(&f.meta, |id| memfd::dump_memfd(pid, f.fd, id, name, data))?;
            Kind::Memfd(pb::MemFdFile {
                memfd_id,
                flags,
                pos: f.info.pos,
            })
        }
        Object::Deleted(path) => {
            let data = writer(&mut files.data);
            let deleted_id = files.deleted.id(&f.meta, |id| {
                deleted::dump_deleted(pid, f.fd, id, path, data)
            })?;
            Kind::Deleted(pb::DeletedOpen {
                deleted_id,
                flags,
                pos: f.info.pos,
            })
        }
        Object::Unix(sock) => Kind::Unix(files.unix.dump(pid, f.fd, sock, f.meta.ino(), flags)?),
        Object::Tty(path) => {
            let id = files.entries.len() as u32 + 1;
            Kind::Tty(
                files
                    .ttys
                    .dump_file(id, (pid, f.fd), path, &f.meta, &f.info, flags)?,
            )
        }
        Object::Inet(sock, family) => Kind::Inet(inet_socket::dump(
            pid,
            f.fd,
            sock,
            *family,
            flags,
            files.repaired.as_mut(),
        )?),
    })
}

/// The id of the stored open file description that `pid`'s `fd` refers
/// to, or where to insert it in `bucket` to keep the kcmp order. kcmp
/// orders open file descriptions, so a binary search takes log n calls
/// where comparing with each would take n (all eventfds, timerfds and
/// epolls share one anonymous inode, many opens one file).
fn find_stored(bucket: &[Stored], pid: i32, fd: i32) -> Result<std::result::Result<u32, usize>> {
    let (mut low, mut high) = (0, bucket.len());
    while low < high {
        let mid = (low + high) / 2;
        let s = bucket[mid];
        // SAFETY: kcmp only compares kernel objects of processes we trace.
        let ret = unsafe { libc::syscall(libc::SYS_kcmp, s.pid, pid, KCMP_FILE, s.fd, fd) };
        match ret {
            0 => return Ok(Ok(s.id)),
            1 => low = mid + 1,
            2 => high = mid,
            _ => {
                return Err(Error::sys(
                    pid,
                    "kcmp(KCMP_FILE) on an fd",
                    nix::errno::Errno::last(),
                ))
            }
        }
    }
    Ok(Err(low))
}

/// Creates, in rcr, one descriptor per open file description the tasks'
/// descriptors refer to (each id once, however many tasks share it, in the
/// order of `tasks`). Epoll instances come last, once every descriptor they
/// watch exists in any task, registered as the fd table of the task they
/// were stored from says.
pub fn open_task_files<'a>(
    table: &'a pb::FileTable,
    tasks: &[&'a [pb::Fd]],
    made: &mut MadeFiles<'a>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let mut pipes = Made::new(&table.pipes, |p| p.id, pipe::make_pipe);
    let mut sockets = unix_socket::Made::default();
    let mut ttys = tty::Made::new(&table.ttys);
    let mut opened: Vec<(u32, OwnedFd)> = Vec::new();
    let mut epolls: Vec<epoll::ToMake> = Vec::new();
    let mut done: HashSet<u32> = HashSet::new();
    for fds in tasks {
        open_one_task(
            table,
            fds,
            &mut pipes,
            made,
            &mut sockets,
            &mut ttys,
            &mut opened,
            &mut epolls,
            &mut done,
        )?;
    }
    ttys.finish(warnings)?;
    let made = epoll::restore_epolls(&epolls, &opened)?;
    opened.extend(made);
    for (id, fd) in &opened {
        if let Some(Kind::Inet(s)) = file_by_id(table, *id) {
            inet_socket::release(fd, s)?;
        }
    }
    Ok(opened)
}

#[allow(clippy::too_many_arguments)]
fn open_one_task<'a>(
    table: &'a pb::FileTable,
    fds: &'a [pb::Fd],
    pipes: &mut Made<'a, pb::Pipe>,
    made: &mut MadeFiles<'a>,
    sockets: &mut unix_socket::Made,
    ttys: &mut tty::Made,
    opened: &mut Vec<(u32, OwnedFd)>,
    epolls: &mut Vec<epoll::ToMake<'a>>,
    done: &mut HashSet<u32>,
) -> Result<()> {
    for fd in fds {
        if !done.insert(fd.file_id) {
            continue;
        }
        let kind = file_by_id(table, fd.file_id).expect("checked at load");
        let source = match kind {
            Kind::Reg(reg) => open_saved(reg)?,
            Kind::Pipe(end) => pipe::open_end(pipes.get(end.pipe_id)?, end)?,
            Kind::Eventfd(e) => eventfd::restore_eventfd(e)?,
            Kind::Signalfd(s) => signalfd::restore_signalfd(s)?,
            Kind::Timerfd(t) => timerfd::restore_timerfd(t)?,
            Kind::Inotify(i) => inotify::restore_inotify(i)?,
            Kind::Memfd(m) => reopen_at(made.memfds.get(m.memfd_id)?, m.flags, m.pos)?,
            Kind::Deleted(d) => reopen_at(made.deleted.get(d.deleted_id)?, d.flags, d.pos)?,
            Kind::Unix(_) => sockets.take(table, fd.file_id)?,
            Kind::Inet(s) => inet_socket::restore(s)?,
            Kind::Tty(t) => ttys.open(t)?,
            Kind::Epoll(e) => {
                epolls.push((fd.file_id, e, fds));
                continue;
            }
        };
        opened.push((fd.file_id, source));
    }
    Ok(())
}

/// Cross-references of the table a restore relies on: each pipe end names a
/// stored pipe, each epoll registration a descriptor of the task.
pub fn check_table(table: &pb::FileTable, fds: &[pb::Fd]) -> std::result::Result<(), String> {
    for f in &table.files {
        match &f.kind {
            Some(Kind::Pipe(end)) if by_id(&table.pipes, end.pipe_id, |p| p.id).is_none() => {
                return Err(format!(
                    "file {} is an end of pipe {} which is not stored",
                    f.id, end.pipe_id
                ))
            }
            Some(Kind::Memfd(m)) if by_id(&table.memfds, m.memfd_id, |s| s.id).is_none() => {
                return Err(format!(
                    "file {} opens memfd {} which is not stored",
                    f.id, m.memfd_id
                ))
            }
            Some(Kind::Deleted(d)) if by_id(&table.deleted, d.deleted_id, |s| s.id).is_none() => {
                return Err(format!(
                    "file {} opens deleted file {} which is not stored",
                    f.id, d.deleted_id
                ))
            }
            Some(Kind::Inet(s)) => {
                inet_socket::check_saved(s).map_err(|e| format!("file {}: {e}", f.id))?
            }
            Some(Kind::Tty(t)) => {
                tty::check_saved(table, t).map_err(|e| format!("file {}: {e}", f.id))?
            }
            Some(Kind::Epoll(e)) => {
                let stored = |t: &&pb::EpollTarget| match t.file_id {
                    0 => fds.iter().any(|d| d.fd == t.fd),
                    id => file_by_id(table, id).is_some(),
                };
                if let Some(t) = e.targets.iter().find(|t| !stored(t)) {
                    return Err(format!(
                        "epoll file {} watches fd {} which is not stored",
                        f.id, t.fd
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opens `/proc/self/fd/FD` with `flags`: a new open file description of
/// the same object (pipe, FIFO, memfd), O_CLOEXEC added.
pub(crate) fn reopen(fd: &OwnedFd, flags: u32) -> Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    let flags = (flags as i32 & !OPEN_ONLY_FLAGS) | libc::O_CLOEXEC;
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), flags) };
    owned(raw, "reopening a descriptor")
}

/// [`reopen`], then the saved offset: the task's own open file description
/// of a file made in rcr (memfd, deleted file).
fn reopen_at(fd: &OwnedFd, flags: u32, pos: u64) -> Result<OwnedFd> {
    let fd = reopen(fd, flags)?;
    // SAFETY: lseek on our own descriptor.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) };
    check(ret, "setting a file offset")?;
    Ok(fd)
}

/// Takes ownership of a descriptor a syscall returned, or names the failure.
pub(crate) fn owned(raw: i32, what: &str) -> Result<OwnedFd> {
    if raw < 0 {
        return Err(restore_err(what));
    }
    // SAFETY: a descriptor a syscall just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A failed restore-side syscall, with errno, as a preflight error.
pub(crate) fn restore_err(what: &str) -> Error {
    Error::Preflight(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Checks a restore-side syscall's return value.
pub(crate) fn check(ret: i64, what: &str) -> Result<i64> {
    if ret < 0 {
        return Err(restore_err(what));
    }
    Ok(ret)
}

/// rcr's own descriptor of task `pid`'s fd `fd`: the same open file
/// description (pidfd_getfd, allowed to the task's tracer), for what cannot
/// be reopened through /proc (sockets, anonymous inodes).
pub fn task_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    let sys = |what| Error::sys(pid, what, nix::errno::Errno::last());
    // SAFETY: pidfd_open takes plain integers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(sys("pidfd_open"));
    }
    // SAFETY: a descriptor the kernel just gave us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes plain integers; the copy is close-on-exec.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if raw < 0 {
        return Err(sys("pidfd_getfd"));
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// Opens `/proc/PID/fd/FD` in rcr with `flags`: rcr's own handle on the
/// task's object, to read its state without touching the task's descriptor.
pub(crate) fn open_task_fd(pid: i32, fd: i32, flags: i32) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let cpath = CString::new(path.as_str()).expect("no NUL");
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe { libc::open(cpath.as_ptr(), flags | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A kind-specific fdinfo line that is missing or malformed.
pub(crate) fn bad_fdinfo(pid: i32, fd: i32, what: &str) -> Error {
    Error::Unsupported {
        pid,
        what: format!("fd {fd} whose fdinfo has no readable {what}"),
    }
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

/// The saved file of any kind with this id.
pub fn file_by_id(table: &pb::FileTable, id: u32) -> Option<&Kind> {
    by_id(&table.files, id, |f| f.id).and_then(|f| f.kind.as_ref())
}

/// The object of `saved` with this id. rcr hands ids out in order from 1,
/// so it is looked for at `id - 1` first: tens of thousands of lookups
/// stay linear in all.
fn by_id<T>(saved: &[T], id: u32, id_of: impl Fn(&T) -> u32) -> Option<&T> {
    saved
        .get((id as usize).wrapping_sub(1))
        .filter(|s| id_of(s) == id)
        .or_else(|| saved.iter().find(|s| id_of(s) == id))
}

/// The saved regular file with this id.
pub fn reg_by_id(table: &pb::FileTable, id: u32) -> Option<&pb::RegFile> {
    match file_by_id(table, id) {
        Some(Kind::Reg(r)) => Some(r),
        _ => None,
    }
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
