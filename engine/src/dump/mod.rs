//! Dump: freeze the task, collect its state from outside (/proc, ptrace) and
//! from inside (the parasite), write the images, then kill or release it.

mod pages;
mod seize;
mod staging;

use crate::error::{Error, Result};
use crate::infect::parasite::Parasite;
use crate::objects::files::{self, FileTableBuilder};
use crate::objects::inet_socket;
use crate::objects::objdata;
use crate::objects::{
    fs_context, locks, memory, mm_fields, pid_ns, pstree, rlimits, signals, thread, timers,
};
use crate::proc::{auxv, pagemap::PageScanner, smaps, stat, status, tasks};
use crate::ptrace;
use rcr_images::{self as images, pb, ImageDir};
use rcr_parasite::parasite_abi;
use seize::{Member, SeizedTree};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to dump and how.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    /// The root of the tree to dump.
    pub pid: i32,
    /// Where the checkpoint goes (created; must not exist or be empty).
    pub dir: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    pub leave_running: bool,
    /// Take established TCP connections (TCP_REPAIR) instead of refusing them.
    pub tcp_established: bool,
    /// Keep unix sockets connected to a named peer outside the tree, to be
    /// connected to that name again at restore, instead of refusing them.
    pub external_unix: bool,
    /// The tree is a job of a shell outside it: descriptors of its
    /// controlling terminal are stored as the caller's terminal.
    pub shell_job: bool,
}

/// What a dump did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DumpStats {
    pub pid: i32,
    /// Seconds the process was frozen.
    pub freeze_seconds: f64,
    /// Seconds the whole dump took.
    pub seconds: f64,
    /// Bytes of memory pages written.
    pub pages_bytes: u64,
    /// Bytes of all image files.
    pub image_bytes: u64,
}

/// Highest user address of 4-level paging; the restorer works below it.
const USER_END: u64 = 0x7fff_ffff_f000;

/// Checkpoints the tree rooted at `opts.pid` into `opts.dir`. On any error
/// every process is left running as it was and no checkpoint directory
/// appears.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let started = Instant::now();
    let pid = opts.pid;
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NoSuchProcess { pid });
    }
    let staging = staging::Staging::create(&opts.dir)?;
    let tree = seize::seize_tree(pid)?;
    let dir = ImageDir::new(staging.path());
    let (pages_bytes, ipc, repaired) = write_tree(&tree, &dir, opts)?;
    let image_bytes = dir_size(staging.path());
    staging.commit()?;
    let freeze_seconds = if opts.leave_running {
        tree.release()?
    } else {
        let frozen = tree.kill()?;
        crate::objects::sysv::remove(&ipc)?;
        if let Some(r) = repaired {
            r.close_silently();
        }
        frozen
    };
    Ok(DumpStats {
        pid,
        freeze_seconds,
        seconds: started.elapsed().as_secs_f64(),
        pages_bytes,
        image_bytes,
    })
}

/// Checks the tree can be rebuilt, then dumps each live process. Returns
/// the bytes of pages written, the SysV IPC objects saved and the TCP
/// connections left in repair mode.
fn write_tree(
    tree: &SeizedTree,
    dir: &ImageDir,
    opts: &DumpOptions,
) -> Result<(u64, pb::SysvIpc, Option<inet_socket::Repaired>)> {
    let mut entries = Vec::with_capacity(tree.members.len());
    let mut live = Vec::with_capacity(tree.members.len());
    for m in &tree.members {
        match m {
            Member::Live(s) => {
                let st = stat::read_stat(s.pid())?;
                entries.push(pstree::dump_entry(&st, s.tids()));
                live.push((s, st));
            }
            Member::Zombie(st) => entries.push(pstree::dump_zombie(st)),
        }
    }
    let own_levels = status::read_status(std::process::id() as i32)?.ns_pid.len();
    for e in &mut entries {
        pid_ns::dump(e, own_levels)?;
    }
    pstree::check(&entries)
        .and_then(|()| pid_ns::check(&entries))
        .map_err(|what| Error::Unsupported {
            pid: opts.pid,
            what: format!("this process tree: {what}"),
        })?;
    let pids: Vec<i32> = live.iter().map(|(s, _)| s.pid()).collect();
    locks::check_all_seen(&pids)?;
    let mut file_table = FileTableBuilder::new(objdata::Writer::create(&dir.objdata())?);
    if opts.tcp_established {
        file_table.repair_tcp(&pids)?;
    }
    if opts.external_unix {
        file_table.external_unix();
    }
    let mut pages_bytes = 0;
    // Each process's pages are compared with those of the task that forks
    // it at restore (dumped before it), whose memory it will inherit.
    let forker = pstree::memory_parents(&entries);
    let mut dumped: BTreeMap<i32, Vec<pb::Vma>> = BTreeMap::new();
    // Checksumming a process's pages and writing its page map need no
    // ptrace: other threads do it while this one dumps the next process.
    let finish = |(pages, path): (pages::Unsummed, PathBuf)| pages.finish(&path);
    crate::par::alongside(finish, |finishing| {
        for (s, st) in &live {
            let i = entries
                .iter()
                .position(|e| e.pid == s.pid())
                .expect("listed above");
            let parent = forker[i]
                .and_then(|p| dumped.get_key_value(&entries[p].pid))
                .map(|(&ppid, vmas)| (ppid, vmas.as_slice()));
            let (bytes, vmas, pages) =
                dump_process(s.pid(), s.tids(), st, dir, &mut file_table, parent)?;
            finishing((pages, dir.pagemap(s.pid())));
            pages_bytes += bytes;
            dumped.insert(s.pid(), vmas);
        }
        Ok(())
    })?;
    file_table.resolve_epolls()?;
    let caller = live
        .first()
        .and_then(|(_, st)| crate::objects::tty::Caller::of(st));
    let (ttys, caller_fg) = file_table.resolve_ttys(&entries, caller.as_ref(), opts.shell_job)?;
    file_table.check_unix_sockets()?;
    let repaired = file_table.take_repaired();
    let mut data = file_table.take_data();
    let mut table = file_table.finish();
    table.posix_shm = crate::objects::posix_shm::dump(opts.pid, &table, &mut data)?;
    table.ttys = ttys;
    table.caller_tty_foreground = caller_fg;
    images::write(&dir.files(), &table)?;
    images::write(&dir.pstree(), &pb::ProcessTree { processes: entries })?;
    let ipc = crate::objects::sysv::dump(&pids, &mut data)?;
    let mut inv = inventory(opts.pid, opts);
    inv.sysv = Some(ipc.clone());
    if !opts.leave_running {
        let lock = repaired.as_ref().and_then(|r| r.netlock());
        inv.netlock = lock.unwrap_or_default().into();
    }
    images::write(&dir.inventory(), &inv)?;
    Ok((pages_bytes, ipc, repaired))
}

fn traced(pid: i32) -> impl Fn(ptrace::PtraceError) -> Error {
    move |e| Error::sys(pid, e.op, e.errno)
}

/// Everything the process keeps inside, as the parasite reported it.
struct Inside {
    sigactions: Vec<pb::SigAction>,
    itimers: Vec<pb::Itimer>,
    posix_timers: Vec<pb::PosixTimer>,
    misc: parasite_abi::Misc,
    pages: pages::Unsummed,
}

/// Dumps one seized process, whose stat is `st`, into its images; pages
/// shared with `parent` (its pid and VMAs) are only listed. Returns the
/// bytes of pages written, the VMAs, and the pages file whose checksums
/// and page map are still to be written.
fn dump_process(
    pid: i32,
    tids: &[i32],
    st: &stat::Stat,
    dir: &ImageDir,
    file_table: &mut FileTableBuilder,
    parent: Option<(i32, &[pb::Vma])>,
) -> Result<(u64, Vec<pb::Vma>, pages::Unsummed)> {
    // Refusals first, while nothing has been done to the task.
    let status = status::read_status(pid)?;
    check_creds(pid, &status)?;
    let examined = files::examine_fds(pid)?;
    let cwd = fs_context::dump_cwd(pid)?;
    let vmas = smaps::read_smaps(pid)?
        .iter()
        .map(|e| memory::vma_from_smaps(pid, e, file_table))
        .collect::<Result<Vec<_>>>()?;
    if let Some(v) = vmas
        .iter()
        .find(|v| v.end > USER_END && v.kind() != pb::VmaKind::Vsyscall)
    {
        return Err(Error::Unsupported {
            pid,
            what: format!("memory above the 47-bit address space (at {:#x})", v.start),
        });
    }
    let exe = tasks::read_exe(pid)?;
    let exe_id = file_table.mapped_file(pid, Path::new(&exe), false)?;
    let locks = locks::dump_locks(pid, &examined)?;
    let fds = files::dump_fds(pid, examined, file_table)?;

    // From outside, through ptrace, before anything touches the registers.
    let mut threads = tids
        .iter()
        .map(|&tid| thread::dump_thread(pid, tid))
        .collect::<Result<Vec<_>>>()?;
    let shared: Vec<pb::SigInfo> = ptrace::peek_siginfo(pid, true)
        .map_err(traced(pid))?
        .iter()
        .map(signals::dump_pending)
        .collect();
    let rlimits = rlimits::dump_rlimits(pid)?;
    let auxv = auxv::read_auxv(pid)?;

    // From inside, through the parasite.
    let inside = collect_inside(pid, &mut threads, &vmas, dir, parent)?;

    let core = pb::Core {
        pid,
        comm: st.comm.clone(),
        threads,
        sigactions: inside.sigactions,
        itimers: inside.itimers,
        posix_timers: inside.posix_timers,
        rlimits,
        umask: inside.misc.umask as u32,
        shared_pending: shared,
        pdeathsig: inside.misc.pdeathsig as i32,
        personality: inside.misc.personality as u32,
        exit_signal: st.exit_signal,
        creds: Some(creds(&status)),
        cpuid_faulting: inside.misc.cpuid_enabled == 0,
        dumpable: inside.misc.dumpable as i32,
        no_new_privs: inside.misc.no_new_privs != 0,
        child_subreaper: inside.misc.child_subreaper != 0,
    };
    let mut mm = mm_fields::dump_mm_fields(st, inside.misc.brk as u64, &auxv);
    mm.vmas = vmas.clone();
    mm.exe_file_id = exe_id;
    let fs = pb::FsState {
        fds,
        cwd,
        root: "/".into(),
        locks,
    };
    let pages_bytes = inside
        .pages
        .map()
        .runs
        .iter()
        .filter(|r| !r.inherited)
        .map(|r| r.nr_pages * memory::PAGE_SIZE)
        .sum();
    images::write(&dir.core(pid), &core)?;
    images::write(&dir.mm(pid), &mm)?;
    images::write(&dir.fs(pid), &fs)?;
    Ok((pages_bytes, vmas, inside.pages))
}

fn collect_inside(
    pid: i32,
    threads: &mut [pb::ThreadCore],
    vmas: &[pb::Vma],
    dir: &ImageDir,
    parent: Option<(i32, &[pb::Vma])>,
) -> Result<Inside> {
    let mut scanner = PageScanner::open(pid)?;
    let mut runs = memory::dump_runs(&mut scanner, vmas)?;
    if let Some((ppid, parent_vmas)) = parent {
        let shared = memory::shared_with_parent(pid, vmas, ppid, parent_vmas)?;
        runs = memory::split_inherited(&runs, &shared);
    }
    let listed = crate::proc::timers::read_timers(pid)?;
    let mut parasite = Parasite::infect(pid)?;
    let actions = parasite.get_sigactions()?;
    let it = parasite.get_itimers()?;
    let ids: Vec<i32> = listed.iter().map(|t| t.id).collect();
    let timer_states = parasite.get_posix_timers(&ids)?;
    let misc = parasite.get_misc()?;
    let (leader, others) = threads.split_first_mut().expect("the leader is seized");
    leader.altstack = Some(altstack(&parasite.get_sigaltstack()?));
    leader.clear_child_tid = misc.clear_child_tid as u64;
    for t in others {
        let (alt, clear_child_tid) = parasite.query_thread(t.tid)?;
        t.altstack = Some(altstack(&alt));
        t.clear_child_tid = clear_child_tid;
    }
    let pages = pages::write_pages(pid, &mut parasite, &runs, &dir.pages(pid))?;
    parasite.cure()?;
    let sigactions = signals::dump_sigactions((1..).zip(actions.actions.iter().copied()));
    Ok(Inside {
        sigactions,
        itimers: timers::dump_itimers(&[it.real, it.virt, it.prof]),
        posix_timers: timers::dump_posix_timers(pid, &listed, &timer_states)?,
        misc,
        pages,
    })
}

fn altstack(a: &parasite_abi::SigAltStack) -> pb::SigAltStack {
    pb::SigAltStack {
        sp: a.sp,
        size: a.size,
        flags: a.flags,
    }
}

fn creds(s: &status::Status) -> pb::Creds {
    pb::Creds {
        uid: s.uid[0],
        euid: s.uid[1],
        suid: s.uid[2],
        fsuid: s.uid[3],
        gid: s.gid[0],
        egid: s.gid[1],
        sgid: s.gid[2],
        fsgid: s.gid[3],
        groups: s.groups.clone(),
        cap_inh: s.cap_inh,
        cap_prm: s.cap_prm,
        cap_eff: s.cap_eff,
        cap_bnd: s.cap_bnd,
        cap_amb: s.cap_amb,
    }
}

/// Restoring other credentials than rcr's own is not done yet: refuse at
/// dump time rather than restore a process with the wrong identity.
fn check_creds(pid: i32, s: &status::Status) -> Result<()> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if s.uid.iter().any(|&u| u != uid) || s.gid.iter().any(|&g| g != gid) {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "credentials other than rcr's own (uids {:?}, gids {:?}; rcr runs as {uid}:{gid})",
                s.uid, s.gid
            ),
        });
    }
    Ok(())
}

fn inventory(pid: i32, opts: &DumpOptions) -> pb::Inventory {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref()
            .map(|u| f(u).to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    pb::Inventory {
        format_version: images::FORMAT_VERSION,
        rcr_version: env!("CARGO_PKG_VERSION").into(),
        root_pid: pid,
        kernel_release: field(|u| u.release()),
        kernel_version: field(|u| u.version()),
        machine: field(|u| u.machine()),
        page_size: memory::PAGE_SIZE,
        cpu: Some(crate::cpu::host_info()),
        options: Some(pb::DumpOptions {
            leave_running: opts.leave_running,
        }),
        taken_at_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        sysv: None,
        cpu_profile: None,
        netlock: String::new(),
    }
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
