//! Everything a restore needs opened and computed before `clone3`: files
//! opened (and checked) in rcr, descriptor numbers planned, the restorer's
//! arguments filled in. Nothing here creates a process.

use crate::error::{Error, Result};
use crate::objects::{files, fs_context, memory, mm_fields, rlimits, signals, thread, timers};
use crate::restore::child::{FdInstall, Session};
use crate::restore::load::Checkpoint;
use rcr_images::pb::{self, VmaKind};
use rcr_parasite::restore_abi::{
    PageRunEntry, PendingSignal, RestoreArgs, RseqConf, ThreadArgs, VdsoPart, VmaEntry,
    RESTORE_ABI_VERSION,
};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A restore, ready to create its task.
pub struct Prepared {
    pub session: Session,
    pub umask: u32,
    /// The restorer's own descriptors, at `fd_base..fd_base + len`: pages
    /// file first, then mapped files and the exe.
    pub restorer_fds: Vec<OwnedFd>,
    pub fd_base: i32,
    /// Descriptors that become the task's, and the cwd handle, above those.
    pub sources: Vec<OwnedFd>,
    pub installs: Vec<FdInstall>,
    pub cwd_fd: i32,
    pub args: RestoreArgs,
    pub vmas: Vec<VmaEntry>,
    pub runs: Vec<PageRunEntry>,
    /// The process's pending signals, then each thread's.
    pub pending: Vec<PendingSignal>,
    /// Each thread's arguments, leader first, with `pending`/`nr_pending`
    /// holding the index of its signals in `pending` and their count.
    pub threads: Vec<ThreadArgs>,
    pub warnings: Vec<String>,
}

/// Opens and checks everything the checkpoint needs on this host.
pub fn prepare(c: &Checkpoint) -> Result<Prepared> {
    let pid = c.process.pid;
    let mut warnings = Vec::new();
    raise_nofile();

    // Descriptors the restorer maps or reads from.
    let pages = std::fs::File::open(&c.pages_path).map_err(|e| Error::io(&c.pages_path, e))?;
    let mut restorer_fds: Vec<OwnedFd> = vec![pages.into()];
    let mut mapped: BTreeMap<u32, usize> = BTreeMap::new();
    for v in &c.mm.vmas {
        let kind = v.kind();
        if !matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared)
            || mapped.contains_key(&v.file_id)
        {
            continue;
        }
        let reg = files::reg_by_id(&c.files, v.file_id).expect("checked at load");
        let fd = files::open_saved(reg)?;
        if kind == VmaKind::FilePrivate {
            files::check_unchanged(reg, &fd)?;
        }
        mapped.insert(v.file_id, restorer_fds.len());
        restorer_fds.push(fd);
    }
    // The new task starts as a copy of rcr, so its exe link already names
    // the right file when the program is rcr's own binary; the kernel would
    // refuse to set it again while that file is mapped (EBUSY).
    let exe_index = match files::reg_by_id(&c.files, c.mm.exe_file_id) {
        Some(reg) if !files::is_own_exe(reg) => {
            let mut exe = reg.clone();
            exe.flags = libc::O_RDONLY as u32;
            exe.pos = 0;
            restorer_fds.push(files::open_saved(&exe)?);
            Some(restorer_fds.len() - 1)
        }
        _ => None,
    };

    // Descriptors that become the task's.
    let mut by_file: BTreeMap<u32, usize> = BTreeMap::new();
    let mut sources: Vec<OwnedFd> = Vec::new();
    for (id, fd) in files::open_task_files(&c.files, &c.fs.fds)? {
        by_file.insert(id, sources.len());
        sources.push(fd);
    }
    sources.push(fs_context::open_cwd(&c.fs.cwd)?);

    // Number them above every descriptor rcr or the task uses.
    let max_target = c.fs.fds.iter().map(|f| f.fd).max().unwrap_or(-1);
    let fd_base = (max_target + 1).max(highest_open_fd() + 1);
    let restorer_fds = renumber(restorer_fds, fd_base, true)?;
    let sources = renumber(sources, fd_base + restorer_fds.len() as i32, false)?;
    let installs =
        c.fs.fds
            .iter()
            .map(|f| FdInstall {
                src: sources[by_file[&f.file_id]].as_raw_fd(),
                target: f.fd,
                cloexec: f.cloexec,
            })
            .collect();
    let cwd_fd = sources.last().expect("cwd is always there").as_raw_fd();

    let vmas = memory::restore_entries(&c.mm.vmas, &c.pagemap.runs, |id| {
        fd_base + mapped[&id] as i32
    });
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
    let exe_fd = exe_index.map_or(-1, |i| fd_base + i as i32);
    let (mm, auxv) = mm_fields::restore_mm_fields(pid, &c.mm, exe_fd)?;
    let (sigaction_set, sigactions) = signals::restore_sigactions(&c.core.sigactions);
    let limits = rlimits::restore_rlimits(&c.core.rlimits, &mut warnings)?;
    let mut rlimit_slots = [Default::default(); 16];
    rlimit_slots[..limits.len()].copy_from_slice(&limits);
    let args = RestoreArgs {
        abi_version: RESTORE_ABI_VERSION,
        pages_fd: fd_base,
        close_from: fd_base,
        close_to: fd_base + restorer_fds.len() as i32 - 1,
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
        rseq_inherited: RseqConf::default(),
        threads: 0,
        nr_threads: 0,
    };
    Ok(Prepared {
        session: session_of(&c.process),
        umask: c.core.umask,
        restorer_fds,
        fd_base,
        sources,
        installs,
        cwd_fd,
        args,
        vmas,
        runs,
        pending,
        threads,
        warnings,
    })
}

fn session_of(p: &pb::ProcessEntry) -> Session {
    if p.sid == p.pid {
        Session::Setsid
    } else if p.pgid == p.pid {
        Session::Setpgid
    } else {
        Session::Inherit
    }
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
