//! Memory a child shares copy-on-write with its parent since a fork stays
//! shared after restore: before a task forks its children it maps ("premaps")
//! the VMAs they inherit into an area that no saved mapping, no restorer hole
//! and nothing of rcr's uses, and fills them with its pages. Children inherit
//! the area with the fork, keep the pages the image marks inherited, read
//! their own on top and drop the ones they do not have, then premap for their
//! own children in turn. Each restorer moves its premapped VMAs into place
//! with `mremap` instead of mapping and reading them.
//!
//! Each distinct VMA range has one slot in the area (a parent's VMA and the
//! child's that inherits it have the same range), with a free page between
//! slots so that neighbours never merge. Pure planning logic.

use crate::error::{Error, Result};
use crate::objects::memory::{inheritable, PAGE_SIZE};
use crate::restore::layout::find_hole;
use crate::restore::load::Checkpoint;
use crate::restore::prepare::PreparedProcess;
use rcr_images::pb;
use rcr_parasite::restore_abi::VmaEntry;
use std::collections::BTreeMap;

/// One step of a task's premap, carried out by the task itself (see
/// [`crate::restore::child`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PremapOp {
    /// Map fresh memory read-write at `addr`: `mmap(addr, len, RW, flags |
    /// MAP_FIXED, fd, pgoff)`.
    Map {
        addr: u64,
        len: u64,
        flags: u32,
        fd: i32,
        pgoff: u64,
    },
    /// Read `len` bytes at `off` of the pages file `fd` to `addr`.
    Read {
        addr: u64,
        len: u64,
        fd: i32,
        off: u64,
    },
    /// Drop inherited pages this task does not have (`MADV_DONTNEED`: zero
    /// for anonymous memory, the file's content for a private file map).
    Drop { addr: u64, len: u64 },
}

/// A process's VMA that goes through the premap area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Premapped {
    /// Index in the process's saved VMAs.
    pub vma: usize,
    /// Offset of its slot in the area.
    pub slot: u64,
    /// The slot already holds the parent's copy (else the task maps it).
    pub inherited: bool,
}

/// Which VMAs of which process are premapped, and the area's size.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PremapPlan {
    pub len: u64,
    /// Per process in tree order.
    pub tasks: Vec<Vec<Premapped>>,
}

/// The memory of one live process, as saved.
pub struct TaskMemory<'a> {
    pub pid: i32,
    pub vmas: &'a [pb::Vma],
    pub runs: &'a [pb::PageRun],
}

/// Index of the VMA of `vmas` (sorted, disjoint) that contains `addr`.
fn vma_at(vmas: &[pb::Vma], addr: u64) -> Option<usize> {
    let i = vmas.partition_point(|v| v.end <= addr);
    (i < vmas.len() && vmas[i].start <= addr).then_some(i)
}

/// Plans the premap for processes `tasks` (tree order, `None` for
/// zombies), each forked by `parents[i]` with its memory. A VMA is premapped
/// in a process that has inherited pages in it, and in the parent they come
/// from. Refuses inherited pages whose parent has no matching VMA.
pub fn plan(
    tasks: &[Option<TaskMemory>],
    parents: &[Option<usize>],
) -> std::result::Result<PremapPlan, String> {
    // (process, VMA index) -> inherited from the parent
    let mut chosen: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for (c, task) in tasks.iter().enumerate() {
        let Some(task) = task else { continue };
        for run in task.runs.iter().filter(|r| r.inherited) {
            let cv = vma_at(task.vmas, run.vaddr).ok_or_else(|| {
                format!(
                    "process {}: inherited pages at {:#x} lie in no VMA",
                    task.pid, run.vaddr
                )
            })?;
            let from = parents[c].and_then(|p| Some((p, tasks[p].as_ref()?)));
            let pv = from.and_then(|(p, parent)| {
                let i = vma_at(parent.vmas, run.vaddr)?;
                inheritable(&task.vmas[cv], &parent.vmas[i]).then_some((p, i))
            });
            let Some(pv) = pv else {
                return Err(format!(
                    "process {}: pages at {:#x} are inherited from a parent that has no such \
                     memory",
                    task.pid, run.vaddr
                ));
            };
            chosen.insert((c, cv), true);
            chosen.entry(pv).or_insert(false);
        }
    }
    let mut slots: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut len = 0;
    let mut out = PremapPlan {
        len: 0,
        tasks: vec![Vec::new(); tasks.len()],
    };
    for (&(t, vma), &inherited) in &chosen {
        let v = &tasks[t].as_ref().expect("chosen among live processes").vmas[vma];
        let slot = *slots.entry((v.start, v.end)).or_insert_with(|| {
            let at = len;
            len += v.end - v.start + PAGE_SIZE;
            at
        });
        out.tasks[t].push(Premapped {
            vma,
            slot,
            inherited,
        });
    }
    out.len = len;
    Ok(out)
}

/// The steps that fill premapped VMA `vma` at `addr` (mapped as `entry`
/// says) from its runs: map it unless inherited, read its own pages, and
/// drop the inherited ones it has not.
pub fn ops(
    vma: &pb::Vma,
    entry: &VmaEntry,
    addr: u64,
    inherited: bool,
    runs: &[pb::PageRun],
    pages_fd: i32,
) -> Vec<PremapOp> {
    let at = |vaddr: u64| addr + (vaddr - vma.start);
    let mut out = Vec::new();
    if !inherited {
        out.push(PremapOp::Map {
            addr,
            len: vma.end - vma.start,
            flags: entry.flags,
            fd: entry.fd,
            pgoff: entry.pgoff,
        });
    }
    let mut covered = vma.start;
    let inside = runs
        .iter()
        .filter(|r| vma.start <= r.vaddr && r.vaddr < vma.end);
    for r in inside {
        let len = r.nr_pages * PAGE_SIZE;
        if inherited && r.vaddr > covered {
            out.push(PremapOp::Drop {
                addr: at(covered),
                len: r.vaddr - covered,
            });
        }
        covered = r.vaddr + len;
        if !r.inherited {
            out.push(PremapOp::Read {
                addr: at(r.vaddr),
                len,
                fd: pages_fd,
                off: r.offset,
            });
        }
    }
    if inherited && covered < vma.end {
        out.push(PremapOp::Drop {
            addr: at(covered),
            len: vma.end - covered,
        });
    }
    out
}

/// Plans the premap of the tree, places its area clear of `taken` (rcr's
/// mappings and every saved VMA), and adjusts each prepared process: its
/// premapped VMAs are moved, not mapped, and their pages are not read by
/// the restorer. Returns each process's premap steps.
pub fn arrange(
    ckpt: &Checkpoint,
    prepared: &mut [Option<PreparedProcess>],
    parents: &[Option<usize>],
    taken: &[(u64, u64)],
) -> Result<Vec<Vec<PremapOp>>> {
    let tasks: Vec<Option<TaskMemory>> = ckpt
        .processes
        .iter()
        .map(|p| {
            p.images.as_ref().map(|i| TaskMemory {
                pid: p.entry.pid,
                vmas: &i.mm.vmas,
                runs: &i.pagemap.runs,
            })
        })
        .collect();
    let plan = plan(&tasks, parents).map_err(Error::Preflight)?;
    let mut all_ops = vec![Vec::new(); prepared.len()];
    if plan.len == 0 {
        return Ok(all_ops);
    }
    let base = find_hole(taken, plan.len)
        .ok_or_else(|| Error::Preflight("no free address range for shared memory".into()))?;
    for (((task, prep), chosen), ops_out) in tasks
        .iter()
        .zip(prepared.iter_mut())
        .zip(&plan.tasks)
        .zip(&mut all_ops)
    {
        let (Some(task), Some(prep)) = (task, prep) else {
            continue;
        };
        prep.args.premap_start = base;
        prep.args.premap_end = base + plan.len;
        for p in chosen {
            let v = &task.vmas[p.vma];
            let entry = prep
                .vmas
                .iter_mut()
                .find(|e| e.start == v.start)
                .expect("private VMAs have entries");
            entry.premap = base + p.slot;
            ops_out.extend(ops(
                v,
                entry,
                entry.premap,
                p.inherited,
                task.runs,
                prep.args.pages_fd,
            ));
            prep.runs.retain(|r| r.vaddr < v.start || r.vaddr >= v.end);
        }
    }
    Ok(all_ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcr_images::pb::VmaKind;

    fn vma(start: u64, end: u64) -> pb::Vma {
        pb::Vma {
            start,
            end,
            kind: VmaKind::AnonPrivate as i32,
            prot: 3,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            ..Default::default()
        }
    }

    fn run(vaddr: u64, nr_pages: u64, inherited: bool) -> pb::PageRun {
        pb::PageRun {
            vaddr,
            nr_pages,
            offset: if inherited { 0 } else { 8192 },
            checksum: 0,
            inherited,
        }
    }

    #[test]
    fn parents_premap_what_children_inherit_and_grandchildren_follow() {
        let root_vmas = [vma(0x10000, 0x20000), vma(0x30000, 0x32000)];
        let root_runs = [run(0x10000, 16, false), run(0x30000, 2, false)];
        let child_vmas = [vma(0x10000, 0x20000), vma(0x30000, 0x32000)];
        let child_runs = [run(0x10000, 4, true), run(0x14000, 1, false)];
        let grand_vmas = [vma(0x10000, 0x20000)];
        let grand_runs = [run(0x10000, 2, true)];
        let tasks = [
            Some(TaskMemory {
                pid: 1,
                vmas: &root_vmas,
                runs: &root_runs,
            }),
            None,
            Some(TaskMemory {
                pid: 3,
                vmas: &child_vmas,
                runs: &child_runs,
            }),
            Some(TaskMemory {
                pid: 4,
                vmas: &grand_vmas,
                runs: &grand_runs,
            }),
        ];
        let p = plan(&tasks, &[None, Some(0), Some(0), Some(2)]).unwrap();
        let only = |inherited| {
            vec![Premapped {
                vma: 0,
                slot: 0,
                inherited,
            }]
        };
        assert_eq!(p.tasks, vec![only(false), vec![], only(true), only(true)]);
        assert_eq!(p.len, 0x10000 + PAGE_SIZE);
    }

    #[test]
    fn distinct_ranges_get_slots_apart() {
        let a = [vma(0x10000, 0x12000), vma(0x20000, 0x23000)];
        let runs = [run(0x10000, 1, true), run(0x20000, 1, true)];
        let root_runs = [];
        let tasks = [
            Some(TaskMemory {
                pid: 1,
                vmas: &a,
                runs: &root_runs,
            }),
            Some(TaskMemory {
                pid: 2,
                vmas: &a,
                runs: &runs,
            }),
        ];
        let p = plan(&tasks, &[None, Some(0)]).unwrap();
        let slots: Vec<u64> = p.tasks[1].iter().map(|x| x.slot).collect();
        assert_eq!(slots, vec![0, 0x3000]);
        assert_eq!(p.len, 0x3000 + 0x4000);
    }

    #[test]
    fn inherited_pages_need_a_matching_parent_vma() {
        let parent = [vma(0x10000, 0x14000)];
        let child = [vma(0x10000, 0x12000)];
        let runs = [run(0x10000, 1, true)];
        let tasks = [
            Some(TaskMemory {
                pid: 1,
                vmas: &parent,
                runs: &[],
            }),
            Some(TaskMemory {
                pid: 2,
                vmas: &child,
                runs: &runs,
            }),
        ];
        let err = plan(&tasks, &[None, Some(0)]).unwrap_err();
        assert!(err.contains("process 2"), "{err}");
        assert!(plan(&tasks[1..], &[None]).is_err(), "no parent at all");
    }

    #[test]
    fn ops_map_read_and_drop() {
        let v = vma(0x10000, 0x18000);
        let entry = VmaEntry {
            start: v.start,
            end: v.end,
            flags: v.flags,
            fd: -1,
            ..Default::default()
        };
        let runs = [
            run(0x8000, 1, false),
            run(0x11000, 2, true),
            run(0x13000, 1, false),
            run(0x16000, 1, true),
        ];
        let base = 0x5000_0000;
        let read = |vaddr: u64| PremapOp::Read {
            addr: base + vaddr - 0x10000,
            len: PAGE_SIZE,
            fd: 9,
            off: 8192,
        };
        let drop = |from: u64, to: u64| PremapOp::Drop {
            addr: base + from - 0x10000,
            len: to - from,
        };
        assert_eq!(
            ops(&v, &entry, base, true, &runs, 9),
            vec![
                drop(0x10000, 0x11000),
                read(0x13000),
                drop(0x14000, 0x16000),
                drop(0x17000, 0x18000),
            ]
        );
        let fresh = ops(&v, &entry, base, false, &runs, 9);
        assert_eq!(
            fresh,
            vec![
                PremapOp::Map {
                    addr: base,
                    len: 0x8000,
                    flags: v.flags,
                    fd: -1,
                    pgoff: 0
                },
                read(0x13000),
            ]
        );
    }
}
