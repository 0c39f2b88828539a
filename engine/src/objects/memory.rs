//! The address space: VMAs and their pages, dump and restore side by side.
//!
//! Dump turns `/proc/PID/smaps` into [`pb::Vma`]s and writes the pages that
//! only memory holds (anonymous pages, written copies of private file pages)
//! into the pages file. Restore turns the saved VMAs back into the
//! restorer's [`VmaEntry`] list and page runs.

use crate::error::{Error, Result};
use crate::objects::files::FileTableBuilder;
use crate::objects::{shmem, sysv};
use crate::proc::maps::MapName;
use crate::proc::pagemap::{PageScanner, PagemapEntry, ScanBackend, ScanWant};
use crate::proc::smaps::SmapsEntry;
use rcr_images::pb::{self, VmaKind};
use rcr_parasite::restore_abi::{madv, PageRunEntry, VmaEntry};
use std::path::Path;

pub const PAGE_SIZE: u64 = 4096;

const PROT_READ: u32 = libc::PROT_READ as u32;
const MAP_SHARED: u32 = libc::MAP_SHARED as u32;
const MAP_PRIVATE: u32 = libc::MAP_PRIVATE as u32;
const MAP_ANONYMOUS: u32 = libc::MAP_ANONYMOUS as u32;
const MAP_GROWSDOWN: u32 = libc::MAP_GROWSDOWN as u32;
const MAP_NORESERVE: u32 = libc::MAP_NORESERVE as u32;

/// VmFlags codes and the advice that recreates each.
const ADVICE_FLAGS: [(&str, u64); 6] = [
    ("dc", madv::DONTFORK),
    ("dd", madv::DONTDUMP),
    ("wf", madv::WIPEONFORK),
    ("hg", madv::HUGEPAGE),
    ("nh", madv::NOHUGEPAGE),
    ("mg", madv::MERGEABLE),
];

/// Turns one smaps entry into a saved VMA; file-backed VMAs get their file
/// recorded in `files`.
pub fn vma_from_smaps(pid: i32, e: &SmapsEntry, files: &mut FileTableBuilder) -> Result<pb::Vma> {
    let m = &e.map;
    let codes = e.vm_flags.raw();
    let has = |code: &str| codes.split_whitespace().any(|c| c == code);
    let mut flags = if m.shared { MAP_SHARED } else { MAP_PRIVATE };
    if has("gd") {
        flags |= MAP_GROWSDOWN;
    }
    if has("nr") {
        flags |= MAP_NORESERVE;
    }
    let (kind, file_id) = match &m.name {
        MapName::Vdso => (VmaKind::Vdso, 0),
        MapName::Vvar => (VmaKind::Vvar, 0),
        MapName::VvarVclock => (VmaKind::VvarVclock, 0),
        MapName::Vsyscall => (VmaKind::Vsyscall, 0),
        MapName::Anonymous | MapName::Heap | MapName::Stack => anon_kind(m.shared),
        MapName::Other(name) if name.starts_with("[anon:") => anon_kind(m.shared),
        // Shared anonymous memory is backed by an unlinked /dev/zero inode.
        MapName::Path {
            path,
            deleted: true,
        } if path == "/dev/zero" && m.shared => anon_kind(true),
        // The memfd a restore without map_files made in its place (shmem.rs).
        MapName::Path {
            path,
            deleted: true,
        } if path == shmem::STAND_IN && m.shared => anon_kind(true),
        // A SysV shm attachment; the segment is saved whole (sysv.rs).
        name if sysv::is_segment(name) && m.shared => anon_kind(true),
        MapName::Path {
            path,
            deleted: false,
        } => {
            let maywrite = has("mw");
            let id = files.mapped_file(pid, Path::new(path), m.shared && maywrite)?;
            (file_kind(m.shared), id)
        }
        // A memfd, or a regular file unlinked since it was mapped.
        MapName::Path {
            path,
            deleted: true,
        } => {
            let writable = m.shared && has("mw");
            let id = files.mapped_unlinked(pid, (m.start, m.end), path, writable)?;
            (file_kind(m.shared), id)
        }
        MapName::Other(name) => {
            return Err(Error::Unsupported {
                pid,
                what: format!("the special mapping {name} at {:#x}", m.start),
            })
        }
    };
    if matches!(kind, VmaKind::AnonPrivate | VmaKind::AnonShared) {
        flags |= MAP_ANONYMOUS;
    }
    let segment = kind == VmaKind::AnonShared && sysv::is_segment(&m.name);
    let sysv_shmid = (segment && !sysv::removed(m.inode as i32)).then_some(m.inode as i32);
    // SysV ids and the (32-bit) inodes of other shared memory share one
    // number space: keep a removed segment's apart.
    let shmem_id = if segment { m.inode | 1 << 32 } else { m.inode };
    if kind == VmaKind::AnonShared && sysv_shmid.is_none() {
        files.shmem_object(pid, (m.start, m.end, m.offset), shmem_id)?;
    }
    Ok(pb::Vma {
        start: m.start,
        end: m.end,
        prot: m.prot,
        flags,
        kind: kind as i32,
        file_id,
        pgoff: m.offset,
        name: map_name_text(&m.name),
        vm_flags: codes.trim().to_string(),
        sysv_shmid,
        shmem_id: if kind == VmaKind::AnonShared && sysv_shmid.is_none() {
            shmem_id
        } else {
            0
        },
    })
}

fn file_kind(shared: bool) -> VmaKind {
    if shared {
        VmaKind::FileShared
    } else {
        VmaKind::FilePrivate
    }
}

fn anon_kind(shared: bool) -> (VmaKind, u32) {
    if shared {
        (VmaKind::AnonShared, 0)
    } else {
        (VmaKind::AnonPrivate, 0)
    }
}

fn map_name_text(name: &MapName) -> String {
    match name {
        MapName::Anonymous => String::new(),
        MapName::Path { path, deleted } => {
            if *deleted {
                format!("{path} (deleted)")
            } else {
                path.clone()
            }
        }
        MapName::Heap => "[heap]".into(),
        MapName::Stack => "[stack]".into(),
        MapName::Vdso => "[vdso]".into(),
        MapName::Vvar => "[vvar]".into(),
        MapName::VvarVclock => "[vvar_vclock]".into(),
        MapName::Vsyscall => "[vsyscall]".into(),
        MapName::Other(s) => s.clone(),
    }
}

/// Which pages of a saved VMA live only in memory and must be dumped.
pub fn scan_want(vma: &pb::Vma) -> Option<ScanWant> {
    match vma.kind() {
        // Shared memory is saved whole, as its object (shmem.rs).
        VmaKind::AnonShared => None,
        VmaKind::AnonPrivate => Some(ScanWant::Anon),
        VmaKind::FilePrivate => Some(ScanWant::PrivateFileCow),
        _ => None,
    }
}

/// A run of pages to dump from the task, before it has a place in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpRun {
    pub start: u64,
    pub end: u64,
    /// The VMA is readable, so the parasite can vmsplice it; otherwise rcr
    /// reads it through /proc/PID/mem.
    pub readable: bool,
    /// The pages are the parent's, shared since a fork: nothing to write.
    pub inherited: bool,
}

/// Finds every run of pages to dump, in address order.
pub fn dump_runs(scanner: &mut PageScanner, vmas: &[pb::Vma]) -> Result<Vec<DumpRun>> {
    let mut runs = Vec::new();
    for vma in vmas {
        let Some(want) = scan_want(vma) else { continue };
        let readable = vma.prot & PROT_READ != 0;
        for (start, end) in scanner.scan(vma.start, vma.end, want)? {
            runs.push(DumpRun {
                start,
                end,
                readable,
                inherited: false,
            });
        }
    }
    Ok(runs)
}

/// Whether a child's VMA is the one it inherited from its parent's, so its
/// never-written pages can stay shared at restore: same place, same private
/// memory, no stack growth (its premapped copy cannot grow) and nothing
/// that a fork leaves out or wipes.
pub fn inheritable(child: &pb::Vma, parent: &pb::Vma) -> bool {
    let forked = |v: &pb::Vma| {
        !v.vm_flags
            .split_whitespace()
            .any(|c| c == "dc" || c == "wf")
    };
    matches!(child.kind(), VmaKind::AnonPrivate | VmaKind::FilePrivate)
        && (child.start, child.end, child.kind, child.flags)
            == (parent.start, parent.end, parent.kind, parent.flags)
        && (child.file_id, child.pgoff) == (parent.file_id, parent.pgoff)
        && child.flags & MAP_GROWSDOWN == 0
        && forked(child)
        && forked(parent)
}

/// The page ranges of `pid`'s inheritable VMAs that hold the very pages
/// (same page frame) its parent `ppid` has at the same addresses: shared
/// copy-on-write since the fork and written by neither. Both are frozen.
/// Without `CAP_SYS_ADMIN` frame numbers read as 0 and nothing is shared.
pub fn shared_with_parent(
    pid: i32,
    vmas: &[pb::Vma],
    ppid: i32,
    parent_vmas: &[pb::Vma],
) -> Result<Vec<(u64, u64)>> {
    let mut mine = PageScanner::open_with(pid, ScanBackend::ReadEntries)?;
    let mut theirs = PageScanner::open_with(ppid, ScanBackend::ReadEntries)?;
    let mut shared: Vec<(u64, u64)> = Vec::new();
    for v in vmas {
        let i = parent_vmas.partition_point(|p| p.start < v.start);
        if !parent_vmas.get(i).is_some_and(|p| inheritable(v, p)) {
            continue;
        }
        let a = mine.read_entries(v.start, v.end)?;
        let b = theirs.read_entries(v.start, v.end)?;
        let same = |x: PagemapEntry, y: PagemapEntry| {
            x.present() && y.present() && x.pfn() != 0 && x.pfn() == y.pfn()
        };
        for (k, (&x, &y)) in a.iter().zip(&b).enumerate() {
            if !same(x, y) {
                continue;
            }
            let page = v.start + k as u64 * PAGE_SIZE;
            match shared.last_mut() {
                Some(last) if last.1 == page => last.1 += PAGE_SIZE,
                _ => shared.push((page, page + PAGE_SIZE)),
            }
        }
    }
    Ok(shared)
}

/// Splits dump runs (in address order) where they meet the `shared` ranges
/// (sorted, disjoint): pages inside one are marked inherited.
pub fn split_inherited(runs: &[DumpRun], shared: &[(u64, u64)]) -> Vec<DumpRun> {
    let mut out = Vec::with_capacity(runs.len());
    let mut k = 0;
    for r in runs {
        let mut at = r.start;
        while at < r.end {
            while shared.get(k).is_some_and(|s| s.1 <= at) {
                k += 1;
            }
            let (end, inherited) = match shared.get(k) {
                Some(&(s, e)) if s <= at => (e.min(r.end), true),
                Some(&(s, _)) => (s.min(r.end), false),
                None => (r.end, false),
            };
            out.push(DumpRun {
                start: at,
                end,
                inherited,
                ..*r
            });
            at = end;
        }
    }
    out
}

/// Restore side: the restorer's VMA list. `fd_of` gives the descriptor the
/// restorer maps a VMA from (a file, or a shared memory object), or -1.
pub fn restore_entries(
    vmas: &[pb::Vma],
    runs: &[pb::PageRun],
    mut fd_of: impl FnMut(&pb::Vma) -> i32,
) -> Vec<VmaEntry> {
    let mut out = Vec::with_capacity(vmas.len());
    let mut run_iter = runs.iter().peekable();
    for vma in vmas {
        let kind = vma.kind();
        if matches!(
            kind,
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
        ) {
            continue;
        }
        // Runs are sorted and lie inside VMAs (checked at load).
        while run_iter.peek().is_some_and(|r| r.vaddr < vma.start) {
            run_iter.next();
        }
        let has_pages = run_iter.peek().is_some_and(|r| r.vaddr < vma.end);
        let fd = fd_of(vma);
        // Shared anonymous memory comes back from its object, as a file.
        let flags = if fd >= 0 {
            vma.flags & !MAP_ANONYMOUS
        } else {
            vma.flags
        };
        let advice = ADVICE_FLAGS
            .iter()
            .filter(|(code, _)| vma.vm_flags.split_whitespace().any(|c| c == *code))
            .fold(0, |acc, (_, bit)| acc | bit);
        out.push(VmaEntry {
            start: vma.start,
            end: vma.end,
            pgoff: vma.pgoff,
            madv: advice,
            prot: vma.prot,
            flags,
            fd,
            has_pages: has_pages as u32,
            premap: 0,
        });
    }
    out
}

/// Restore side: page runs as the restorer reads them (inherited ones
/// come with the parent's memory).
pub fn restore_runs(runs: &[pb::PageRun]) -> Vec<PageRunEntry> {
    runs.iter()
        .filter(|r| !r.inherited)
        .map(|r| PageRunEntry {
            vaddr: r.vaddr,
            len: r.nr_pages * PAGE_SIZE,
            file_off: r.offset,
        })
        .collect()
}

/// Checks what restore relies on: VMAs sorted, page-aligned and disjoint; page
/// runs sorted, inside a VMA that can hold pages.
pub fn validate(vmas: &[pb::Vma], runs: &[pb::PageRun]) -> std::result::Result<(), String> {
    let mut prev_end = 0;
    for v in vmas {
        if v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 || v.start >= v.end {
            return Err(format!("VMA {:#x}-{:#x} is malformed", v.start, v.end));
        }
        if v.start < prev_end {
            return Err(format!(
                "VMA {:#x}-{:#x} overlaps the one before",
                v.start, v.end
            ));
        }
        prev_end = v.end;
    }
    let mut prev_run_end = 0;
    for r in runs {
        let end = r
            .nr_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| r.vaddr.checked_add(len))
            .ok_or_else(|| format!("page run at {:#x} is too long", r.vaddr))?;
        if r.vaddr % PAGE_SIZE != 0 || r.nr_pages == 0 || r.vaddr < prev_run_end {
            return Err(format!(
                "page run at {:#x} is malformed or out of order",
                r.vaddr
            ));
        }
        prev_run_end = end;
        let i = vmas.partition_point(|v| v.end <= r.vaddr);
        let inside = vmas
            .get(i)
            .is_some_and(|v| v.start <= r.vaddr && end <= v.end && scan_want(v).is_some());
        if !inside {
            return Err(format!(
                "page run {:#x}-{end:#x} is not inside a VMA that holds pages",
                r.vaddr
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind) -> pb::Vma {
        pb::Vma {
            start,
            end,
            kind: kind as i32,
            prot: 3,
            flags: MAP_PRIVATE | MAP_ANONYMOUS,
            ..Default::default()
        }
    }

    fn run(vaddr: u64, nr_pages: u64) -> pb::PageRun {
        pb::PageRun {
            vaddr,
            nr_pages,
            offset: 4096,
            checksum: 0,
            inherited: false,
        }
    }

    fn dump_run(start: u64, end: u64) -> DumpRun {
        DumpRun {
            start,
            end,
            readable: true,
            inherited: false,
        }
    }

    #[test]
    fn split_marks_pages_shared_with_the_parent() {
        let runs = [dump_run(0x1000, 0x5000), dump_run(0x8000, 0x9000)];
        let shared = [(0x0, 0x2000), (0x3000, 0x4000), (0x8000, 0xa000)];
        let got: Vec<_> = split_inherited(&runs, &shared)
            .iter()
            .map(|r| (r.start, r.end, r.inherited))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x1000, 0x2000, true),
                (0x2000, 0x3000, false),
                (0x3000, 0x4000, true),
                (0x4000, 0x5000, false),
                (0x8000, 0x9000, true),
            ]
        );
        assert_eq!(split_inherited(&runs, &[]), runs.to_vec());
    }

    #[test]
    fn only_matching_private_vmas_are_inheritable() {
        let parent = vma(0x1000, 0x5000, VmaKind::AnonPrivate);
        assert!(inheritable(&parent.clone(), &parent));
        let mut moved = parent.clone();
        moved.end = 0x6000;
        assert!(!inheritable(&moved, &parent));
        let mut wiped = parent.clone();
        wiped.vm_flags = "rd wr wf".into();
        assert!(!inheritable(&wiped, &parent));
        let mut stack = parent.clone();
        stack.flags |= MAP_GROWSDOWN;
        assert!(!inheritable(&stack, &stack.clone()));
        let shared = vma(0x1000, 0x5000, VmaKind::AnonShared);
        assert!(!inheritable(&shared, &shared.clone()));
    }

    #[test]
    fn validate_accepts_runs_inside_vmas() {
        let vmas = [
            vma(0x1000, 0x5000, VmaKind::AnonPrivate),
            vma(0x8000, 0x9000, VmaKind::FilePrivate),
        ];
        assert_eq!(validate(&vmas, &[run(0x2000, 2), run(0x8000, 1)]), Ok(()));
    }

    #[test]
    fn validate_refuses_bad_layouts() {
        let vmas = [vma(0x1000, 0x5000, VmaKind::AnonPrivate)];
        assert!(
            validate(&vmas, &[run(0x4000, 2)]).is_err(),
            "run past the VMA"
        );
        assert!(validate(&vmas, &[run(0x6000, 1)]).is_err(), "run in no VMA");
        assert!(
            validate(&vmas, &[run(0x3000, 1), run(0x2000, 1)]).is_err(),
            "unsorted"
        );
        let shared = [vma(0x1000, 0x5000, VmaKind::FileShared)];
        assert!(
            validate(&shared, &[run(0x1000, 1)]).is_err(),
            "pages in a shared file VMA"
        );
        let overlap = [
            vma(0x1000, 0x5000, VmaKind::AnonPrivate),
            vma(0x4000, 0x6000, VmaKind::AnonPrivate),
        ];
        assert!(validate(&overlap, &[]).is_err());
        assert!(
            validate(&vmas, &[run(0x1000, u64::MAX / 2)]).is_err(),
            "overflow"
        );
    }

    #[test]
    fn restore_entries_mark_pages_and_skip_special() {
        let mut file = vma(0x10000, 0x12000, VmaKind::FilePrivate);
        file.file_id = 7;
        file.vm_flags = "rd mr mw me dd".into();
        let mut shared = vma(0x20000, 0x22000, VmaKind::AnonShared);
        shared.flags = MAP_SHARED | MAP_ANONYMOUS;
        shared.shmem_id = 99;
        let vmas = [
            vma(0x1000, 0x3000, VmaKind::AnonPrivate),
            vma(0x3000, 0x4000, VmaKind::AnonPrivate),
            vma(0x5000, 0x7000, VmaKind::Vdso),
            file,
            shared,
        ];
        let entries = restore_entries(&vmas, &[run(0x2000, 1), run(0x11000, 1)], |v| {
            match v.kind() {
                VmaKind::FilePrivate => v.file_id as i32 + 100,
                VmaKind::AnonShared => v.shmem_id as i32,
                _ => -1,
            }
        });
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3].fd, 99);
        assert_eq!(entries[3].flags, MAP_SHARED, "mapped from its object");
        assert_eq!(entries[0].has_pages, 1);
        assert_eq!(entries[1].has_pages, 0);
        assert_eq!(entries[2].fd, 107);
        assert_eq!(entries[2].has_pages, 1);
        assert_eq!(entries[2].madv, madv::DONTDUMP);
        assert_eq!(entries[0].fd, -1);
    }
}
