//! Everything a restore needs opened and computed before `clone3`: files
//! opened (and checked) in rcr, descriptor numbers planned, the restorer's
//! arguments filled in. Nothing here creates a process.

use crate::error::{Error, Result};
use crate::objects::{
    files, fs_context, locks, memory, mm_fields, pid_ns, posix_shm, rlimits, shmem, signals, sysv,
    thread, timers, tty,
};
use crate::restore::child::FdInstall;
use crate::restore::load::{Checkpoint, ProcessImages};
use rcr_images::pb::{self, VmaKind};
use rcr_parasite::restore_abi::{
    PageRunEntry, PendingSignal, PosixTimerEntry, RestoreArgs, RseqConf, ThreadArgs, VdsoPart,
    VmaEntry, RESTORE_ABI_VERSION,
};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One live process, ready to be created.
pub struct PreparedProcess {
    pub umask: u32,
    /// Its restorer's descriptors, `restorer_fds.start..end`: the pages
    /// file first, then mapped files and the exe.
    pub restorer_fds: std::ops::Range<i32>,
    pub installs: Vec<FdInstall>,
    /// POSIX locks the task takes once its descriptors are in place.
    pub posix_locks: Vec<locks::PosixLock>,
    pub cwd_fd: i32,
    pub args: RestoreArgs,
    pub vmas: Vec<VmaEntry>,
    pub runs: Vec<PageRunEntry>,
    /// The process's pending signals, then each thread's.
    pub pending: Vec<PendingSignal>,
    pub posix_timers: Vec<PosixTimerEntry>,
    /// Each thread's arguments, leader first, with `pending`/`nr_pending`
    /// holding the index of its signals in `pending` and their count.
    pub threads: Vec<ThreadArgs>,
    /// The pty it leads the session of: rcr's descriptor of the master
    /// and the foreground group.
    pub ctty: Option<(i32, i32)>,
}

/// A restore, ready to create its tree. rcr holds every descriptor any
/// process needs, numbered above all the processes' own: each process's
/// restorer block, then the sources of the task descriptors (one per open
/// file, shared by every process that shares it) and cwd handles.
pub struct Prepared {
    /// Per process in tree order; `None` for zombies.
    pub processes: Vec<Option<PreparedProcess>>,
    /// The highest descriptor number rcr holds for the restore.
    pub fd_top: i32,
    /// Keeps every descriptor open until the tree exists.
    _held: Vec<OwnedFd>,
    pub warnings: Vec<String>,
    /// The SysV objects made for the tree; removed again unless kept.
    pub sysv: sysv::Created,
}

/// Opens and checks everything the checkpoint needs on this host.
pub fn prepare(c: &Checkpoint) -> Result<Prepared> {
    let mut warnings = Vec::new();
    raise_nofile();
    let max_target = c
        .processes
        .iter()
        .filter_map(|p| p.images.as_ref())
        .flat_map(|i| i.fs.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(-1);
    let mut held: Vec<OwnedFd> = Vec::new();
    posix_shm::restore(&c.files.posix_shm, &c.objdata)?;
    let shmem_objects = shmem::sizes(
        c.processes
            .iter()
            .filter_map(|p| p.images.as_ref())
            .flat_map(|i| i.mm.vmas.iter()),
    )
    .into_iter()
    .map(|(id, size)| {
        let saved = c.files.shmem.iter().find(|s| s.id == id);
        let (fd, memfd) = shmem::restore(size, saved, &c.objdata)?;
        if memfd {
            warnings.push(format!(
                "shared anonymous memory {id:#x} is a memfd now (/memfd:rcr-shmem in the maps): \
                 rcr may not reopen its own mapping through map_files without \
                 CAP_CHECKPOINT_RESTORE in the first user namespace"
            ));
        }
        Ok((id, fd))
    })
    .collect::<Result<BTreeMap<u64, OwnedFd>>>()?;
    let sysv = sysv::restore(&c.inventory.sysv.clone().unwrap_or_default(), &c.objdata)?;
    let mut made = files::MadeFiles::new(&c.files, &c.objdata);

    let opened = c
        .processes
        .iter()
        .map(|p| {
            p.images
                .as_ref()
                .map(|images| {
                    open_restorer_fds(c, images, &shmem_objects, &sysv.segments, &mut made)
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    // Above everything open now, so that placing one descriptor never
    // lands on a number another block's file still holds.
    let mut next_fd = (max_target + 1).max(highest_open_fd() + 1);

    // Each process's restorer block, at exact numbers.
    let mut blocks = Vec::new();
    for block in opened {
        let Some(mut block) = block else {
            blocks.push(None);
            continue;
        };
        let start = next_fd;
        let fds = renumber(std::mem::take(&mut block.fds), start, true)?;
        next_fd += fds.len() as i32;
        held.extend(fds);
        blocks.push(Some((start..next_fd, block)));
    }

    // Sources of the task descriptors: one per file id across the tree,
    // so that what processes share stays shared.
    let task_fds: Vec<&[pb::Fd]> = c
        .processes
        .iter()
        .filter_map(|p| p.images.as_ref())
        .map(|i| i.fs.fds.as_slice())
        .collect();
    let mut source_of: BTreeMap<u32, i32> = BTreeMap::new();
    for (id, fd) in files::open_task_files(&c.files, &task_fds, &mut made, &mut warnings)? {
        source_of.insert(id, place_above(fd, &mut next_fd, &mut held)?);
    }
    let mut cwd_of = Vec::new();
    for p in &c.processes {
        let Some(images) = &p.images else {
            cwd_of.push(-1);
            continue;
        };
        let cwd = fs_context::open_cwd(&images.fs.cwd)?;
        cwd_of.push(place_above(cwd, &mut next_fd, &mut held)?);
    }

    let mut processes = Vec::with_capacity(c.processes.len());
    for ((p, block), cwd_fd) in c.processes.iter().zip(blocks).zip(cwd_of) {
        let (Some(images), Some((range, block))) = (&p.images, block) else {
            processes.push(None);
            continue;
        };
        let installs = images
            .fs
            .fds
            .iter()
            .map(|f| FdInstall {
                src: source_of[&f.file_id],
                target: f.fd,
                cloexec: f.cloexec,
            })
            .collect();
        let posix_locks =
            locks::prepare_locks(p.entry.pid, &images.fs, |id| source_of[&id], range.clone())?;
        let mut prep = prepare_process(
            p.entry.pid,
            images,
            range,
            &block,
            installs,
            posix_locks,
            cwd_fd,
            &mut warnings,
        )?;
        own_namespace_ids(&p.entry, &mut prep);
        prep.ctty = tty::controlled_by(&c.files, p.entry.pid).map(|(id, fg)| (source_of[&id], fg));
        processes.push(Some(prep));
    }
    Ok(Prepared {
        processes,
        fd_top: next_fd - 1,
        _held: held,
        warnings,
        sysv,
    })
}

/// A process's restorer descriptors, in order, and where each VMA's is.
#[derive(Default)]
struct RestorerFds {
    fds: Vec<OwnedFd>,
    /// Index in `fds` of each mapped file id.
    mapped: BTreeMap<u32, usize>,
    /// Index in `fds` of each shared memory object, by inode.
    shared: BTreeMap<u64, usize>,
    /// Index in `fds` of each attached SysV segment, by id.
    sysv: BTreeMap<i32, usize>,
    exe_index: Option<usize>,
}

impl RestorerFds {
    /// The descriptor the restorer maps `v` from, when its block starts at `base`.
    fn fd_of(&self, base: i32, v: &pb::Vma) -> i32 {
        let index = match v.kind() {
            VmaKind::FilePrivate | VmaKind::FileShared => self.mapped.get(&v.file_id),
            VmaKind::AnonShared => match v.sysv_shmid {
                Some(id) => self.sysv.get(&id),
                None => self.shared.get(&v.shmem_id),
            },
            _ => None,
        };
        index.map_or(-1, |&i| base + i as i32)
    }
}

/// Moves `fd` to the lowest free number from `*next_fd` on, keeps it in
/// `held` and returns its number; `*next_fd` moves past it.
fn place_above(fd: OwnedFd, next_fd: &mut i32, held: &mut Vec<OwnedFd>) -> Result<i32> {
    let placed = renumber(vec![fd], *next_fd, false)?;
    let raw = placed[0].as_raw_fd();
    *next_fd = raw + 1;
    held.extend(placed);
    Ok(raw)
}

/// Opens the pages file, the files the process maps (checking private
/// mappings' files are unchanged), the shared memory objects it maps and
/// its exe.
fn open_restorer_fds(
    c: &Checkpoint,
    images: &ProcessImages,
    shmem_objects: &BTreeMap<u64, OwnedFd>,
    segments: &BTreeMap<i32, OwnedFd>,
    made: &mut files::MadeFiles,
) -> Result<RestorerFds> {
    let pages =
        std::fs::File::open(&images.pages_path).map_err(|e| Error::io(&images.pages_path, e))?;
    let mut r = RestorerFds {
        fds: vec![pages.into()],
        ..Default::default()
    };
    for v in &images.mm.vmas {
        let kind = v.kind();
        if let Some(id) = v.sysv_shmid.filter(|id| !r.sysv.contains_key(id)) {
            let segment = segments.get(&id).ok_or_else(|| {
                Error::Preflight(format!(
                    "VMA {:#x} attaches SysV segment id {id}, which is not saved",
                    v.start
                ))
            })?;
            r.sysv.insert(id, r.fds.len());
            r.fds.push(
                segment
                    .try_clone()
                    .map_err(|e| Error::io("SysV shared memory", e))?,
            );
            continue;
        }
        if kind == VmaKind::AnonShared {
            if let (Some(object), false) = (
                shmem_objects.get(&v.shmem_id),
                r.shared.contains_key(&v.shmem_id),
            ) {
                let fd = object
                    .try_clone()
                    .map_err(|e| Error::io("shared anonymous memory", e))?;
                r.shared.insert(v.shmem_id, r.fds.len());
                r.fds.push(fd);
            }
            continue;
        }
        if !matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared)
            || r.mapped.contains_key(&v.file_id)
        {
            continue;
        }
        let fd = made.open_mapped(v.file_id, kind == VmaKind::FilePrivate)?;
        r.mapped.insert(v.file_id, r.fds.len());
        r.fds.push(fd);
    }
    // The new task starts as a copy of rcr, so its exe link already names
    // the right file when the program is rcr's own binary; the kernel would
    // refuse to set it again while that file is mapped (EBUSY).
    if let Some(reg) = files::reg_by_id(&c.files, images.mm.exe_file_id) {
        if !files::is_own_exe(reg) {
            let mut exe = reg.clone();
            exe.flags = libc::O_RDONLY as u32;
            exe.pos = 0;
            r.fds.push(files::open_saved(&exe)?);
            r.exe_index = Some(r.fds.len() - 1);
        }
    }
    Ok(r)
}

/// Threads and thread-directed timers of a process in a nested pid
/// namespace get their ids as seen there.
fn own_namespace_ids(entry: &pb::ProcessEntry, prep: &mut PreparedProcess) {
    if pid_ns::depth(entry) == 0 {
        return;
    }
    for (i, t) in prep.threads.iter_mut().enumerate() {
        (t.set_tid, t.set_tid_size) = pid_ns::set_tid(&pid_ns::thread_chain(entry, i));
    }
    for t in &mut prep.posix_timers {
        if t.sigevent.tid != 0 {
            t.sigevent.tid = pid_ns::own_tid(entry, t.sigevent.tid);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_process(
    pid: i32,
    c: &ProcessImages,
    block: std::ops::Range<i32>,
    fds: &RestorerFds,
    installs: Vec<FdInstall>,
    posix_locks: Vec<locks::PosixLock>,
    cwd_fd: i32,
    warnings: &mut Vec<String>,
) -> Result<PreparedProcess> {
    let base = block.start;
    let vmas = memory::restore_entries(&c.mm.vmas, &c.pagemap.runs, |v| fds.fd_of(base, v));
    let runs = memory::restore_runs(&c.pagemap.runs);
    let mut pending = signals::restore_pending(&c.core.shared_pending);
    let nr_shared = pending.len() as u64;
    let threads = c
        .core
        .threads
        .iter()
        .map(|t| {
            let mut args = thread::restore_thread_args(t);
            let own = signals::restore_pending(&t.pending);
            args.pending = pending.len() as u64;
            args.nr_pending = own.len() as u64;
            pending.extend(own);
            args
        })
        .collect();
    let exe_fd = fds.exe_index.map_or(-1, |i| base + i as i32);
    let (mm, auxv) = mm_fields::restore_mm_fields(pid, &c.mm, exe_fd)?;
    let (sigaction_set, sigactions) = signals::restore_sigactions(&c.core.sigactions);
    let limits = rlimits::restore_rlimits(&c.core.rlimits, warnings)?;
    let mut rlimit_slots = [Default::default(); 16];
    rlimit_slots[..limits.len()].copy_from_slice(&limits);
    let args = RestoreArgs {
        abi_version: RESTORE_ABI_VERSION,
        pages_fd: base,
        close_from: base,
        close_to: block.end - 1,
        hole_start: 0,
        hole_end: 0,
        vmas: 0,
        nr_vmas: 0,
        runs: 0,
        nr_runs: 0,
        vdso: [VdsoPart::default(); 3],
        nr_vdso: 0,
        mm,
        auxv,
        sigaction_set,
        sigactions,
        itimers: timers::restore_itimers(&c.core.itimers),
        rlimits: rlimit_slots,
        nr_rlimits: limits.len() as u64,
        pending: 0,
        nr_pending: nr_shared,
        pdeathsig: c.core.pdeathsig as i64,
        // A suid-style dumpable value (2) cannot be set by prctl: not dumpable.
        dumpable: (c.core.dumpable == 1) as u64,
        no_new_privs: c.core.no_new_privs as u64,
        child_subreaper: c.core.child_subreaper as u64,
        rseq_inherited: RseqConf::default(),
        threads: 0,
        nr_threads: 0,
        plain_clone: 0,
        posix_timers: 0,
        nr_posix_timers: 0,
        premap_start: 0,
        premap_end: 0,
    };
    Ok(PreparedProcess {
        umask: c.core.umask,
        restorer_fds: block,
        installs,
        posix_locks,
        cwd_fd,
        args,
        vmas,
        runs,
        pending,
        posix_timers: timers::restore_posix_timers(pid, &c.core.posix_timers)?,
        threads,
        ctty: None,
    })
}

/// Restores may need many descriptors at once; use the whole soft limit rcr may.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on rcr itself with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn highest_open_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(2)
        })
        .unwrap_or(1024)
}

/// Moves descriptors to consecutive numbers from `base` (exactly there when
/// `exact`, the restorer relies on it).
fn renumber(fds: Vec<OwnedFd>, base: i32, exact: bool) -> Result<Vec<OwnedFd>> {
    fds.into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let want = base + i as i32;
            // SAFETY: duplicates a descriptor we own; the result is checked.
            let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, want) };
            if raw < 0 || (exact && raw != want) {
                return Err(Error::Preflight(format!(
                    "cannot place a descriptor at {want}: {} (is RLIMIT_NOFILE too low?)",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: a descriptor fcntl just created for us.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect()
}
