//! Restore: load and check the checkpoint, prepare everything in rcr, then
//! create the task with its saved pid and let the restorer finish it.

pub(crate) mod child;
mod create;
mod layout;
pub(crate) mod load;
pub mod pids;
mod premap;
mod prepare;

use crate::blob;
use crate::error::{Error, Result};
use crate::objects::{pid_ns, pstree, thread, vdso};
use crate::proc::maps;
use layout::{find_hole, hole_layout, put, put_slice, HoleContents};
pub use pids::PidStrategy;
use rcr_parasite::restore_abi::{PendingSignal, RestoreArgs};
use std::mem::size_of;
use std::path::PathBuf;
use std::time::Instant;

/// What to restore and how.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// How the saved pids may be given back.
    pub pids: pids::PidChoice,
    /// How closely this CPU must match the checkpoint's.
    pub cpu_check: crate::cpu::CpuCheck,
    /// Run the restored tree under this CPU profile (needs CPUID faulting;
    /// the caller then serves [`RestoreStats::cpu_emulator`]).
    pub cpu_profile: Option<(crate::cpu::CpuProfile, crate::cpu::ProfileMode)>,
    /// Connect unix sockets whose peer was outside the tree to that peer's
    /// name again (`--external-unix`); without it such a checkpoint is refused.
    pub external_unix: bool,
    /// The tree was dumped as a shell job: it joins rcr's session, on rcr's
    /// stdin terminal, its saved foreground group in the foreground.
    pub shell_job: bool,
}

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreStats {
    /// The restored process (its saved pid).
    pub pid: i32,
    /// Bytes of saved pages read back.
    pub pages_bytes: u64,
    /// Seconds from start until the process ran on its own.
    pub seconds: f64,
    /// How the saved pids were given back.
    pub pid_strategy: PidStrategy,
    /// Things restored differently from the checkpoint, in words.
    pub warnings: Vec<String>,
    /// With a CPU profile: the tree is still traced by this thread, which
    /// must serve its trapped CPUIDs until it ends.
    #[serde(skip)]
    pub cpu_emulator: Option<crate::cpu_mask::Emulator>,
}

/// Restores the checkpoint in `opts.dir`. Either the whole tree runs again
/// with its saved pids, or nothing of it exists.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreStats> {
    let started = Instant::now();
    let ckpt = load::load(&opts.dir)?;
    refuse_unanswered(opts, &ckpt.inventory)?;
    crate::privilege::require_restore_caps()?;
    let pid = ckpt.processes[0].entry.pid;
    if let (pids::PidChoice::Only(how @ (PidStrategy::NsLastPid | PidStrategy::Spin)), Some(p)) = (
        opts.pids,
        ckpt.processes.iter().find(|p| pid_ns::depth(&p.entry) > 0),
    ) {
        return Err(Error::Preflight(format!(
            "--pids {how}: process {} is in a nested pid namespace, where only clone3 \
             with set_tid gives a pid at every level",
            p.entry.pid
        )));
    }
    preflight_pids(ckpt.processes.iter().flat_map(|p| {
        std::iter::once(p.entry.pid).chain(p.entry.threads.iter().skip(1).copied())
    }))?;
    let mut cpu_warnings = crate::cpu::check_restore(&ckpt.inventory, opts.cpu_check)?;
    let masked = preflight_profile(opts, &ckpt, &mut cpu_warnings)?;
    let mut socket_warnings = Vec::new();
    crate::objects::unix_socket::check_external(
        &ckpt.files,
        ckpt.processes
            .iter()
            .filter_map(|p| Some((p.entry.pid, p.images.as_ref()?.fs.fds.as_slice()))),
        opts.external_unix,
        &mut socket_warnings,
    )?;
    let self_armed = preflight_self_armed(&ckpt)?;
    crate::objects::tty::preflight(&ckpt.files, opts.shell_job)?;
    let xlayouts = (
        crate::cpu::image_layout(&ckpt.inventory),
        rcr_arch::xsave::XsaveLayout::host(),
    );
    let own_caps = crate::privilege::checked_caps(&ckpt, &opts.dir)?;
    let mut prepared = prepare::prepare(&ckpt)?;
    let pages_bytes = prepared
        .processes
        .iter()
        .flatten()
        .flat_map(|p| p.runs.iter().map(|r| r.len))
        .sum();

    let own_maps = maps::read_maps(std::process::id() as i32)?;
    let entries: Vec<_> = ckpt.processes.iter().map(|p| p.entry.clone()).collect();
    let steps = pstree::plan(&entries);
    let taken: Vec<(u64, u64)> = own_maps
        .iter()
        .map(|m| (m.start, m.end))
        .chain(
            ckpt.processes
                .iter()
                .filter_map(|p| p.images.as_ref())
                .flat_map(|i| i.mm.vmas.iter().map(|v| (v.start, v.end))),
        )
        .collect();
    let premaps = premap::arrange(
        &ckpt,
        &mut prepared.processes,
        &pstree::memory_parents(&entries),
        &taken,
    )?;
    let mut built = Vec::with_capacity(ckpt.processes.len());
    for (p, prep) in ckpt.processes.iter().zip(&prepared.processes) {
        built.push(match (&p.images, prep) {
            (Some(images), Some(prep)) => Some(build_hole(images, prep, &own_maps, &xlayouts)?),
            _ => None,
        });
    }
    let closes: Vec<Vec<(u32, u32)>> = prepared
        .processes
        .iter()
        .map(|prep| {
            prep.as_ref().map_or_else(Vec::new, |prep| {
                close_ranges(
                    prep.installs.iter().map(|i| i.target),
                    prep.restorer_fds.clone(),
                )
            })
        })
        .collect();
    let mut plans = Vec::with_capacity(ckpt.processes.len());
    let mut releases = Vec::with_capacity(ckpt.processes.len());
    for ((((p, prep), hole), close), premap) in ckpt
        .processes
        .iter()
        .zip(&prepared.processes)
        .zip(&built)
        .zip(&closes)
        .zip(&premaps)
    {
        let restore = match (prep, hole) {
            (Some(prep), Some(h)) => Some(child::RestorePlan {
                installs: &prep.installs,
                close,
                posix_locks: &prep.posix_locks,
                cwd_fd: prep.cwd_fd,
                umask: prep.umask,
                hole_start: h.start,
                image: &h.image,
                entry: h.entry,
                stack_top: h.stack_top,
                args_addr: h.args_addr,
                rseq_offset: h.rseq_offset,
                premap,
            }),
            _ => None,
        };
        let (set_tid, set_tid_size) = pid_ns::set_tid(&pid_ns::chain(&p.entry));
        plans.push(child::ChildPlan {
            set_tid,
            set_tid_size,
            birth: match plans.len() {
                0 => pid_ns::root_birth(&p.entry),
                i => pid_ns::birth(&entries, i),
            },
            exit_signal: p.entry.exit_signal,
            comm: thread::comm_bytes(&p.entry.comm),
            sync_fd: -1,
            ctty: ctty_of(prep.as_ref(), plans.is_empty(), &ckpt.files, opts.shell_job),
            restore,
        });
        releases.push(create::Release {
            pid: p.entry.pid,
            chain: pid_ns::chain(&p.entry),
            threads: p.entry.threads.iter().skip(1).copied().collect(),
            hole: hole.as_ref().map(|h| (h.start, h.image.len() as u64)),
            exit_code: p.entry.exit_code,
            arm_cpuid_faulting: masked.is_some() || self_armed.contains(&p.entry.pid),
            keep_traced: masked.is_some(),
            caps: own_caps.get(&p.entry.pid).cloned(),
            in_syscall: p.images.as_ref().map_or_else(Vec::new, |i| {
                i.core
                    .threads
                    .iter()
                    .filter_map(|t| {
                        let regs = thread::restore_regs(&t.regs?);
                        rcr_arch::regs::interrupted_restartable(&regs).then_some((t.tid, regs))
                    })
                    .collect()
            }),
        });
    }
    let mut pids = pids::Pids::new(opts.pids);
    create::create(
        &mut plans,
        &releases,
        &steps,
        prepared.fd_top + 1,
        &mut pids,
    )?;
    prepared.sysv.keep();
    let mut warnings = prepared.warnings;
    warnings.append(&mut pids.warnings);
    warnings.extend(cpu_warnings);
    let lock = &ckpt.inventory.netlock;
    if !lock.is_empty() {
        if let Err(e) = crate::objects::netlock::unlock(lock) {
            warnings.push(format!(
                "the network lock (nf_tables table inet {lock}) could not be removed: {e}; \
                 its connections stay held off until it is"
            ));
        }
    }
    warnings.extend(socket_warnings);
    let tids = releases
        .iter()
        .filter(|r| r.hole.is_some())
        .flat_map(|r| std::iter::once(r.pid).chain(r.threads.iter().copied()));
    Ok(RestoreStats {
        pid,
        pages_bytes,
        seconds: started.elapsed().as_secs_f64(),
        pid_strategy: pids.strategy(),
        warnings,
        cpu_emulator: masked.map(|table| crate::cpu_mask::Emulator::new(table, tids)),
    })
}

/// The terminal task gives back: the pty whose session it leads, or for
/// the root of a shell job rcr's stdin terminal, with the saved foreground.
fn ctty_of(
    prep: Option<&prepare::PreparedProcess>,
    root: bool,
    files: &rcr_images::pb::FileTable,
    shell_job: bool,
) -> Option<child::Ctty> {
    let own = prep
        .and_then(|p| p.ctty)
        .map(|(fd, foreground)| child::Ctty {
            fd,
            foreground,
            acquire: true,
        });
    let callers = (root && shell_job && files.caller_tty_foreground != 0).then_some(child::Ctty {
        fd: 0,
        foreground: files.caller_tty_foreground,
        acquire: false,
    });
    own.or(callers)
}

/// One process's restorer hole, laid out and filled in.
struct BuiltHole {
    start: u64,
    image: Vec<u8>,
    entry: u64,
    stack_top: u64,
    args_addr: u64,
    rseq_offset: u64,
}

/// Places the restorer, its arguments, the threads' frames and stacks in a
/// hole that neither rcr (whose copy the new task starts as) nor the saved
/// process uses.
fn build_hole(
    images: &load::ProcessImages,
    prep: &prepare::PreparedProcess,
    own_maps: &[maps::MapsEntry],
    (image_xsave, host_xsave): &(
        Option<rcr_arch::xsave::XsaveLayout>,
        rcr_arch::xsave::XsaveLayout,
    ),
) -> Result<BuiltHole> {
    let pid = images.core.pid;
    let blob = blob::restorer();
    let entry_off = blob
        .symbol("rcr_restorer_main")
        .expect("the restorer blob has its entry point");
    let threads = &images.core.threads;
    let xfeatures = host_xsave.xcr0;
    let areas = threads
        .iter()
        .map(|t| crate::cpu::xsave_for_host(pid, t.tid, &t.xsave, image_xsave.as_ref(), host_xsave))
        .collect::<Result<Vec<_>>>()?;
    let frame_len = areas
        .iter()
        .map(|a| rcr_arch::sigframe::frame_size(a.len()) as u64 + 64)
        .max()
        .unwrap_or(0);
    let l = hole_layout(&HoleContents {
        blob_len: blob.len() as u64,
        vmas: prep.vmas.len(),
        runs: prep.runs.len(),
        pending: prep.pending.len(),
        threads: threads.len(),
        posix_timers: prep.posix_timers.len(),
        frame_len,
        park_len: vdso::park_size(own_maps),
    });
    let mut taken: Vec<(u64, u64)> = own_maps.iter().map(|m| (m.start, m.end)).collect();
    taken.extend(images.mm.vmas.iter().map(|v| (v.start, v.end)));
    taken.push((prep.args.premap_start, prep.args.premap_end));
    let hole = find_hole(&taken, l.len)
        .ok_or_else(|| Error::Preflight("no free address range for the restorer".into()))?;

    let mut image = blob.relocated(hole);
    image.resize(l.len as usize, 0);
    let mut args = prep.args;
    args.hole_start = hole;
    args.hole_end = hole + l.len;
    args.vmas = hole + l.vmas;
    args.nr_vmas = prep.vmas.len() as u64;
    args.runs = hole + l.runs;
    args.nr_runs = prep.runs.len() as u64;
    args.pending = hole + l.pending;
    args.threads = hole + l.threads;
    args.nr_threads = threads.len() as u64;
    args.posix_timers = hole + l.posix_timers;
    args.nr_posix_timers = prep.posix_timers.len() as u64;
    let parts = vdso::plan(&images.mm.vmas, own_maps, hole + l.park)?;
    args.vdso[..parts.len()].copy_from_slice(&parts);
    args.nr_vdso = parts.len() as u64;
    let mut thread_args = prep.threads.clone();
    for (i, (t, ta)) in threads.iter().zip(thread_args.iter_mut()).enumerate() {
        let frame = thread::sigframe(pid, t, &areas[i], xfeatures, hole + l.frame(i))?;
        let at = l.frame(i) as usize;
        image[at..at + frame.bytes.len()].copy_from_slice(&frame.bytes);
        ta.sigframe_rsp = frame.rsp;
        ta.pending = hole + l.pending + ta.pending * size_of::<PendingSignal>() as u64;
        if i > 0 {
            ta.stack = hole + l.thread_stack(i);
            ta.stack_size = layout::THREAD_STACK_SIZE;
        }
    }
    put(&mut image, l.args, &args);
    put_slice(&mut image, l.vmas, &prep.vmas);
    put_slice(&mut image, l.runs, &prep.runs);
    put_slice(&mut image, l.pending, &prep.pending);
    put_slice(&mut image, l.threads, &thread_args);
    put_slice(&mut image, l.posix_timers, &prep.posix_timers);
    debug_assert!(l.args + size_of::<RestoreArgs>() as u64 <= l.vmas);
    Ok(BuiltHole {
        start: hole,
        image,
        entry: hole + entry_off,
        stack_top: hole + l.stack_top,
        args_addr: hole + l.args,
        rseq_offset: layout::rseq_inherited_offset(&l),
    })
}

/// Descriptor ranges a new task closes: every one that is neither one of
/// its targets nor in its restorer's block (the sources, cwd handles, other
/// processes' blocks, the command pipes, rcr's own).
fn close_ranges(
    targets: impl Iterator<Item = i32>,
    block: std::ops::Range<i32>,
) -> Vec<(u32, u32)> {
    let mut keep: Vec<i32> = targets.chain(block).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut out = Vec::new();
    let mut next: i64 = 0;
    for k in keep {
        if i64::from(k) > next {
            out.push((next as u32, (k - 1) as u32));
        }
        next = i64::from(k) + 1;
    }
    out.push((next as u32, u32::MAX));
    out
}

/// With a CPU profile: checks that it can be enforced here and returns the
/// masked CPUID table; warns of features the program already saw that the
/// profile hides (it may go on using them).
fn preflight_profile(
    opts: &RestoreOptions,
    ckpt: &load::Checkpoint,
    warnings: &mut Vec<String>,
) -> Result<Option<rcr_arch::cpuid::CpuSnapshot>> {
    let Some((profile, mode)) = &opts.cpu_profile else {
        return Ok(None);
    };
    if *mode == crate::cpu::ProfileMode::GlibcHwcaps {
        return Err(Error::Preflight(
            "--cpu-profile-mode glibc cannot apply to a restored program: glibc reads \
             GLIBC_TUNABLES when a program starts, and this one already chose its code paths; \
             use CPUID faulting (the default mode) or start the program with `rcr run`"
                .into(),
        ));
    }
    crate::cpu::faulting_available()?;
    let table = profile.masked_host();
    if let Some(saved) = &ckpt.inventory.cpu {
        let seen = rcr_arch::features::missing_on(&crate::cpu::from_info(saved), &table);
        if !seen.is_empty() {
            warnings.push(format!(
                "the program already saw features that CPU profile {} hides, and may go on \
                 using them: {}",
                profile.spec,
                seen.join(", ")
            ));
        }
    }
    Ok(Some(table))
}

/// A tree that ran under `rcr run --cpu-profile` has CPUID faulting armed
/// and dies at its first CPUID unless rcr answers it: it is restored only
/// under a profile.
fn refuse_unanswered(opts: &RestoreOptions, inv: &rcr_images::pb::Inventory) -> Result<()> {
    match (&inv.cpu_profile, &opts.cpu_profile) {
        (Some(recorded), None) => Err(Error::Preflight(format!(
            "the checkpoint ran under CPU profile {:?} with CPUID faulting armed, and without \
             a profile nothing would answer its CPUIDs: restore it with `rcr run --image` \
             (which reads the profile back) or with --cpu-profile",
            recorded.spec
        ))),
        _ => Ok(()),
    }
}

/// Processes that had CPUID faulting armed themselves: they get it back,
/// which needs a host that supports it.
fn preflight_self_armed(ckpt: &load::Checkpoint) -> Result<Vec<i32>> {
    let armed: Vec<i32> = ckpt
        .processes
        .iter()
        .filter_map(|p| p.images.as_ref())
        .filter(|i| i.core.cpuid_faulting)
        .map(|i| i.core.pid)
        .collect();
    if let Some(pid) = armed.first() {
        crate::cpu::faulting_available().map_err(|e| {
            Error::Preflight(format!("process {pid} had CPUID faulting armed: {e}"))
        })?;
    }
    Ok(armed)
}

/// How long a restore waits for exited processes that still hold a saved
/// pid to be reaped: after `rcr dump` killed a tree, the killed processes'
/// parents (or the reaper that adopted them) reap them a moment later.
const REAP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The saved pid and thread ids must be free; say so before anything is created.
fn preflight_pids(ids: impl Iterator<Item = i32>) -> Result<()> {
    let deadline = Instant::now() + REAP_GRACE;
    for pid in ids {
        loop {
            // SAFETY: signal 0 only checks for existence (a thread id names its process).
            let ret = unsafe { libc::kill(pid, 0) };
            if ret != 0 && nix::errno::Errno::last() == nix::errno::Errno::ESRCH {
                break;
            }
            let zombie = crate::proc::stat::read_stat(pid).is_ok_and(|st| st.state == 'Z');
            if !zombie || Instant::now() >= deadline {
                return Err(Error::pid_taken(pid));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::close_ranges;

    #[test]
    fn closes_everything_but_targets_and_the_restorer_block() {
        let ranges = close_ranges([0, 1, 2, 7, 100].into_iter(), 101..104);
        assert_eq!(ranges, vec![(3, 6), (8, 99), (104, u32::MAX)]);
        assert_eq!(
            close_ranges(std::iter::empty(), 3..5),
            vec![(0, 2), (5, u32::MAX)]
        );
        assert_eq!(
            close_ranges([1].into_iter(), 10..12),
            vec![(0, 0), (2, 9), (12, u32::MAX)]
        );
    }
}
