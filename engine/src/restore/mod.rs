//! Restore: load and check the checkpoint, prepare everything in rcr, then
//! create the task with its saved pid and let the restorer finish it.

mod child;
mod create;
mod layout;
pub(crate) mod load;
mod prepare;

use crate::blob;
use crate::error::{Error, Result};
use crate::objects::{thread, vdso};
use crate::proc::maps;
use layout::{find_hole, hole_layout, put, put_slice, HoleContents};
use rcr_parasite::restore_abi::{PendingSignal, RestoreArgs};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

/// What to restore and how.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The checkpoint directory.
    pub dir: PathBuf,
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
    /// Things restored differently from the checkpoint, in words.
    pub warnings: Vec<String>,
}

/// Restores the checkpoint in `opts.dir`. Either the process runs again with
/// its saved pid, or nothing of it exists.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreStats> {
    let started = Instant::now();
    let ckpt = load::load(&opts.dir)?;
    let pid = ckpt.process.pid;
    preflight_pids(ckpt.core.threads.iter().map(|t| t.tid))?;
    crate::cpu::check_restore(&ckpt.inventory)?;
    let prepared = prepare::prepare(&ckpt)?;
    let pages_bytes = prepared.runs.iter().map(|r| r.len).sum();

    let blob = blob::restorer();
    let entry_off = blob
        .symbol("rcr_restorer_main")
        .expect("the restorer blob has its entry point");
    let own_maps = maps::read_maps(std::process::id() as i32)?;
    let threads = &ckpt.core.threads;
    let xfeatures = rcr_arch::cpuid::xcr0();
    let frame_len = threads
        .iter()
        .map(|t| rcr_arch::sigframe::frame_size(t.xsave.len()) as u64 + 64)
        .max()
        .unwrap_or(0);
    let l = hole_layout(&HoleContents {
        blob_len: blob.len() as u64,
        vmas: prepared.vmas.len(),
        runs: prepared.runs.len(),
        pending: prepared.pending.len(),
        threads: threads.len(),
        frame_len,
        park_len: vdso::park_size(&own_maps),
    });
    let mut taken: Vec<(u64, u64)> = own_maps.iter().map(|m| (m.start, m.end)).collect();
    taken.extend(ckpt.mm.vmas.iter().map(|v| (v.start, v.end)));
    let hole = find_hole(&taken, l.len)
        .ok_or_else(|| Error::Preflight("no free address range for the restorer".into()))?;

    let mut image = blob.relocated(hole);
    image.resize(l.len as usize, 0);
    let mut args = prepared.args;
    args.hole_start = hole;
    args.hole_end = hole + l.len;
    args.vmas = hole + l.vmas;
    args.nr_vmas = prepared.vmas.len() as u64;
    args.runs = hole + l.runs;
    args.nr_runs = prepared.runs.len() as u64;
    args.pending = hole + l.pending;
    args.threads = hole + l.threads;
    args.nr_threads = threads.len() as u64;
    let parts = vdso::plan(&ckpt.mm.vmas, &own_maps, hole + l.park)?;
    args.vdso[..parts.len()].copy_from_slice(&parts);
    args.nr_vdso = parts.len() as u64;
    let mut thread_args = prepared.threads.clone();
    for (i, (t, ta)) in threads.iter().zip(thread_args.iter_mut()).enumerate() {
        let frame = thread::sigframe(pid, t, xfeatures, hole + l.frame(i))?;
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
    put_slice(&mut image, l.vmas, &prepared.vmas);
    put_slice(&mut image, l.runs, &prepared.runs);
    put_slice(&mut image, l.pending, &prepared.pending);
    put_slice(&mut image, l.threads, &thread_args);
    debug_assert!(l.args + size_of::<RestoreArgs>() as u64 <= l.vmas);

    let sources_end = prepared
        .sources
        .last()
        .map_or(prepared.fd_base, |f| f.as_raw_fd());
    let restorer_end = prepared.fd_base + prepared.restorer_fds.len() as i32;
    let close = close_ranges(
        prepared.installs.iter().map(|i| i.target),
        prepared.fd_base,
        restorer_end,
    );
    let mut plan = child::ChildPlan {
        sync_fd: -1,
        session: prepared.session,
        installs: &prepared.installs,
        close: &close,
        cwd_fd: prepared.cwd_fd,
        umask: prepared.umask,
        hole_start: hole,
        image: &image,
        entry: hole + entry_off,
        stack_top: hole + l.stack_top,
        args_addr: hole + l.args,
        rseq_offset: layout::rseq_inherited_offset(&l),
    };
    let release = create::Release {
        hole_start: hole,
        hole_len: l.len,
        threads: threads.iter().skip(1).map(|t| t.tid).collect(),
    };
    create::create(pid, &mut plan, sources_end + 1, &release)?;
    Ok(RestoreStats {
        pid,
        pages_bytes,
        seconds: started.elapsed().as_secs_f64(),
        warnings: prepared.warnings,
    })
}

/// Descriptor ranges the new task closes: everything below `keep_from` that is
/// not a target, and everything from the restorer's descriptors' end on
/// (the install sources, the cwd handle, the sync pipe, rcr's own).
fn close_ranges(
    targets: impl Iterator<Item = i32>,
    keep_from: i32,
    restorer_end: i32,
) -> Vec<(u32, u32)> {
    let mut targets: Vec<i32> = targets.collect();
    targets.sort_unstable();
    targets.dedup();
    let mut out = Vec::new();
    let mut next = 0;
    for t in targets.into_iter().chain([keep_from]) {
        if t > next {
            out.push((next as u32, (t - 1) as u32));
        }
        next = t + 1;
    }
    out.push((restorer_end as u32, u32::MAX));
    out
}

/// The saved pid and thread ids must be free; say so before anything is created.
fn preflight_pids(ids: impl Iterator<Item = i32>) -> Result<()> {
    for pid in ids {
        // SAFETY: signal 0 only checks for existence (a thread id names its process).
        let ret = unsafe { libc::kill(pid, 0) };
        if ret == 0 || nix::errno::Errno::last() != nix::errno::Errno::ESRCH {
            return Err(Error::pid_taken(pid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::close_ranges;

    #[test]
    fn closes_gaps_and_everything_past_the_restorer() {
        let ranges = close_ranges([0, 1, 2, 7, 100].into_iter(), 101, 104);
        assert_eq!(ranges, vec![(3, 6), (8, 99), (104, u32::MAX)]);
        assert_eq!(
            close_ranges(std::iter::empty(), 3, 5),
            vec![(0, 2), (5, u32::MAX)]
        );
    }
}
