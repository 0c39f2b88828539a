//! Pid namespaces nested below rcr's, dump and restore side by side.
//!
//! A process of the tree may live in a pid namespace below rcr's: a
//! container's, or one a program made with `unshare(CLONE_NEWPID)` (as
//! `unshare --pid --fork` does). It then has a pid at every level from
//! rcr's down to its own, and so do its threads. The dump records them
//! (`NSpid` in `/proc/PID/status`), and whether the process makes its
//! children in a namespace below its own (its `ns/pid_for_children`
//! differs from its `ns/pid`).
//!
//! The restore makes each namespace again where the tree entered it: a
//! process one level below its parent is that namespace's init (pid 1
//! inside), forked with `CLONE_NEWPID`, or, when the parent had unshared
//! its children's namespace, forked after the parent unshares again, so
//! that the parent's later children land there too. `clone3`'s `set_tid`
//! array gives the pid at every level at once, innermost first; nothing
//! else can (`ns_last_pid` and spinning only reach rcr's own level), so a
//! nested tree needs `set_tid`. Pure logic, apart from [`dump`].

use crate::error::{Error, Result};
use crate::proc::status;
use rcr_images::pb;
use rcr_parasite::restore_abi::NS_LEVELS_MAX;

/// How a new process's pid namespace comes about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Birth {
    /// In its parent's namespace for children, as a plain fork.
    #[default]
    Inherit,
    /// It is the init of a new namespace: forked with `CLONE_NEWPID`.
    NewNamespace,
    /// Its parent unshares its children's namespace first (once).
    ParentUnshares,
}

/// Dump side: fills in `e`'s ids in the namespaces below rcr's, whose
/// `NSpid` has `own_levels` entries (rcr's level and those above it).
pub fn dump(e: &mut pb::ProcessEntry, own_levels: usize) -> Result<()> {
    let pid = e.pid;
    let below = |ns_pid: &[i32], what: &str| -> Result<Vec<i32>> {
        match ns_pid.get(own_levels - 1..) {
            Some([first, rest @ ..]) if *first == pid || what != "process" => Ok(rest.to_vec()),
            _ => Err(Error::Unsupported {
                pid,
                what: format!("a {what} whose pids by level ({ns_pid:?}) do not match rcr's view"),
            }),
        }
    };
    let st = status::read_status(pid)?;
    e.ns_pids = below(&st.ns_pid, "process")?;
    if e.ns_pids.len() + 1 > NS_LEVELS_MAX {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "a pid namespace {} levels below rcr's (at most {} are restored)",
                e.ns_pids.len(),
                NS_LEVELS_MAX - 1
            ),
        });
    }
    if e.zombie {
        return Ok(());
    }
    e.thread_ns_tids.clear();
    for &tid in &e.threads {
        let st = status::read_task_status(pid, tid)?;
        let ids = below(&st.ns_pid, "thread")?;
        if ids.len() != e.ns_pids.len() {
            return Err(Error::Unsupported {
                pid,
                what: format!("thread {tid} in another pid namespace than its process"),
            });
        }
        e.thread_ns_tids.extend(ids);
    }
    let link = |name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}"));
    e.pid_ns_for_children = match (link("pid"), link("pid_for_children")) {
        (Ok(own), Ok(children)) => own != children,
        (_, Err(err)) | (Err(err), _) => {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "a process whose children's pid namespace cannot be read \
                     (it unshared one and forked nothing yet?): {err}"
                ),
            })
        }
    };
    Ok(())
}

/// The pids of `p` from rcr's level down to its own namespace.
pub fn chain(p: &pb::ProcessEntry) -> Vec<i32> {
    std::iter::once(p.pid)
        .chain(p.ns_pids.iter().copied())
        .collect()
}

/// How many levels below rcr's namespace `p` lives.
pub fn depth(p: &pb::ProcessEntry) -> usize {
    p.ns_pids.len()
}

/// The ids of thread `i` of `p` from rcr's level down.
pub fn thread_chain(p: &pb::ProcessEntry, i: usize) -> Vec<i32> {
    let d = depth(p);
    let below = p.thread_ns_tids.get(i * d..(i + 1) * d).unwrap_or(&[]);
    std::iter::once(p.threads[i])
        .chain(below.iter().copied())
        .collect()
}

/// A `clone3` `set_tid` array for ids `chain` (rcr's level first): the
/// innermost first, and how many are used.
pub fn set_tid(chain: &[i32]) -> ([i32; NS_LEVELS_MAX], u32) {
    let mut out = [0; NS_LEVELS_MAX];
    for (slot, &id) in out.iter_mut().zip(chain.iter().rev()) {
        *slot = id;
    }
    (out, chain.len().min(NS_LEVELS_MAX) as u32)
}

/// The id `outer` (rcr's view) of one of `p`'s threads has in `p`'s own
/// namespace; `outer` itself when no thread has it.
pub fn own_tid(p: &pb::ProcessEntry, outer: i32) -> i32 {
    p.threads
        .iter()
        .position(|&t| t == outer)
        .and_then(|i| thread_chain(p, i).last().copied())
        .unwrap_or(outer)
}

/// How process `i` (not the root, parents before children) is born.
pub fn birth(procs: &[pb::ProcessEntry], i: usize) -> Birth {
    let p = &procs[i];
    let Some(parent) = procs.iter().find(|q| q.pid == p.ppid) else {
        return root_birth(p);
    };
    match (depth(p) > depth(parent), parent.pid_ns_for_children) {
        (false, _) => Birth::Inherit,
        (true, true) => Birth::ParentUnshares,
        (true, false) => Birth::NewNamespace,
    }
}

/// The root comes from rcr itself: one level down it is its namespace's init.
pub fn root_birth(p: &pb::ProcessEntry) -> Birth {
    match depth(p) {
        0 => Birth::Inherit,
        _ => Birth::NewNamespace,
    }
}

/// Checks that every namespace of the tree can be made again, in the
/// order processes are forked (list order); the error names the process.
pub fn check(procs: &[pb::ProcessEntry]) -> std::result::Result<(), String> {
    let Some(root) = procs.first() else {
        return Ok(());
    };
    let inner = |p: &pb::ProcessEntry| *chain(p).last().unwrap_or(&p.pid);
    if depth(root) > 1 || (depth(root) == 1 && inner(root) != 1) {
        return Err(format!(
            "the root {} is in a pid namespace whose init is not in the tree \
             (its pids by level: {:?}); dump from that namespace's init",
            root.pid,
            chain(root)
        ));
    }
    for p in procs {
        if p.thread_ns_tids.len() != p.threads.len() * depth(p) {
            return Err(format!(
                "process {}: its threads' namespace ids do not match",
                p.pid
            ));
        }
        if depth(p) + 1 > NS_LEVELS_MAX {
            return Err(format!("process {}: too deep a pid namespace", p.pid));
        }
    }
    for (i, parent) in procs.iter().enumerate() {
        let mut deeper_seen = false;
        for c in procs[i + 1..].iter().filter(|c| c.ppid == parent.pid) {
            let (dp, dc) = (depth(parent), depth(c));
            if dc == dp {
                if deeper_seen {
                    return Err(format!(
                        "process {}: forked into its parent's own pid namespace after a \
                         sibling in a namespace below; rcr forks in that order and would \
                         put it below too",
                        c.pid
                    ));
                }
                continue;
            }
            if dc != dp + 1 {
                return Err(format!(
                    "process {}: {} pid namespace levels below its parent {}",
                    c.pid,
                    dc as i64 - dp as i64,
                    parent.pid
                ));
            }
            let first_below = !deeper_seen || !parent.pid_ns_for_children;
            if first_below && inner(c) != 1 {
                return Err(format!(
                    "process {}: first of its namespace but not its init (pid {} inside); \
                     the init has exited, so the namespace cannot be made again",
                    c.pid,
                    inner(c)
                ));
            }
            deeper_seen = true;
        }
        let has_deeper = procs
            .iter()
            .any(|c| c.ppid == parent.pid && depth(c) > depth(parent));
        if parent.pid_ns_for_children && !has_deeper && !parent.zombie {
            return Err(format!(
                "process {}: it made a pid namespace for its children that holds none of \
                 the tree's processes (its init has exited)",
                parent.pid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, ns: &[i32], unshared: bool) -> pb::ProcessEntry {
        pb::ProcessEntry {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            threads: vec![pid],
            ns_pids: ns.to_vec(),
            thread_ns_tids: ns.to_vec(),
            pid_ns_for_children: unshared,
            ..Default::default()
        }
    }

    #[test]
    fn an_unshared_parent_and_its_namespace_are_planned() {
        let tree = [
            p(100, 1, &[], true),
            p(101, 100, &[], false),
            p(102, 100, &[1], false),
            p(103, 100, &[2], false),
            p(104, 102, &[3], false),
            p(105, 104, &[4, 1], false),
        ];
        assert_eq!(check(&tree), Ok(()));
        let births: Vec<Birth> = (1..tree.len()).map(|i| birth(&tree, i)).collect();
        assert_eq!(
            births,
            [
                Birth::Inherit,
                Birth::ParentUnshares,
                Birth::ParentUnshares,
                Birth::Inherit,
                Birth::NewNamespace
            ]
        );
        assert_eq!(root_birth(&tree[0]), Birth::Inherit);
        assert_eq!(chain(&tree[5]), [105, 4, 1]);
        let (ids, n) = set_tid(&chain(&tree[5]));
        assert_eq!((&ids[..n as usize], n), (&[1, 4, 105][..], 3));
    }

    #[test]
    fn namespaces_that_cannot_be_made_again_are_refused() {
        let late_sibling = [
            p(100, 1, &[], true),
            p(102, 100, &[1], false),
            p(101, 100, &[], false),
        ];
        assert!(check(&late_sibling).unwrap_err().contains("101"));
        let no_init = [p(100, 1, &[], true), p(102, 100, &[2], false)];
        assert!(check(&no_init).unwrap_err().contains("not its init"));
        let empty = [p(100, 1, &[], true), p(101, 100, &[], false)];
        assert!(check(&empty).unwrap_err().contains("holds none"));
        let two_down = [p(100, 1, &[], false), p(102, 100, &[3, 1], false)];
        assert!(check(&two_down)
            .unwrap_err()
            .contains("2 pid namespace levels"));
        let inner_root = [p(100, 1, &[7], false)];
        assert!(check(&inner_root).unwrap_err().contains("root 100"));
        let container_root = [p(100, 1, &[1], false), p(101, 100, &[2], false)];
        assert_eq!(check(&container_root), Ok(()));
        assert_eq!(root_birth(&container_root[0]), Birth::NewNamespace);
    }

    #[test]
    fn thread_ids_are_found_by_their_outer_id() {
        let mut q = p(100, 1, &[5], false);
        q.threads = vec![100, 110];
        q.thread_ns_tids = vec![5, 6];
        assert_eq!(thread_chain(&q, 1), [110, 6]);
        assert_eq!(own_tid(&q, 110), 6);
        assert_eq!(own_tid(&q, 999), 999);
    }
}
