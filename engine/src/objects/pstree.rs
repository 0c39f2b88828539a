//! The process tree: parentage, sessions, process groups and zombies, dump
//! and restore side by side. Pure logic: the dump records ids, and both
//! sides check that the tree can be rebuilt; the restore side turns it into
//! an ordered list of steps that the new tasks carry out.
//!
//! Rebuilding works by inheritance, as the kernel offers no other way: a
//! process gets its parent's session and group at fork, may start its own
//! session (`setsid`) or group (`setpgid(0, 0)`), or join a group of its
//! session that already exists. So every session must be led by a process
//! of the tree (or be the root's, inherited from whoever restores it), and
//! every group likewise.

use crate::proc::stat::Stat;
use rcr_images::pb;

/// Dump side: a live process's ids.
pub fn dump_entry(st: &Stat, threads: &[i32]) -> pb::ProcessEntry {
    pb::ProcessEntry {
        pid: st.pid,
        ppid: st.ppid,
        pgid: st.pgrp,
        sid: st.session,
        threads: threads.to_vec(),
        zombie: false,
        exit_code: 0,
        exit_signal: st.exit_signal,
        comm: st.comm.clone(),
    }
}

/// Dump side: a zombie's ids and exit status.
pub fn dump_zombie(st: &Stat) -> pb::ProcessEntry {
    pb::ProcessEntry {
        pid: st.pid,
        ppid: st.ppid,
        pgid: st.pgrp,
        sid: st.session,
        threads: Vec::new(),
        zombie: true,
        exit_code: st.exit_code,
        exit_signal: st.exit_signal,
        comm: st.comm.clone(),
    }
}

/// Checks that the tree (root first, parents before children) can be
/// rebuilt; the error names the process and what cannot be.
pub fn check(procs: &[pb::ProcessEntry]) -> Result<(), String> {
    let Some(root) = procs.first() else {
        return Err("the process tree is empty".into());
    };
    let index = |pid: i32| procs.iter().position(|p| p.pid == pid);
    for (i, p) in procs.iter().enumerate() {
        if p.pid <= 0 || index(p.pid) != Some(i) {
            return Err(format!("pid {} is listed twice or is not a pid", p.pid));
        }
        if p.zombie != p.threads.is_empty() || (!p.zombie && p.threads[0] != p.pid) {
            return Err(format!(
                "process {}: its threads do not match its state",
                p.pid
            ));
        }
        if i == 0 {
            continue;
        }
        let parent = match index(p.ppid) {
            Some(j) if j < i && !procs[j].zombie => &procs[j],
            _ => {
                return Err(format!(
                    "process {}: its parent {} does not come before it in the tree",
                    p.pid, p.ppid
                ))
            }
        };
        if p.sid != p.pid && p.sid != parent.sid {
            return Err(format!(
                "process {}: its session {} is neither its own nor its parent's \
                 (a session whose leader is gone cannot be rebuilt yet)",
                p.pid, p.sid
            ));
        }
        let group_ok = p.pgid == p.pid
            || (p.pgid == root.pgid && p.sid == root.sid)
            || procs
                .iter()
                .any(|q| q.pid == p.pgid && q.pgid == q.pid && q.sid == p.sid && !q.zombie);
        if !group_ok {
            return Err(format!(
                "process {}: its process group {} has no leader in the tree \
                 (a group whose leader is gone cannot be rebuilt yet)",
                p.pid, p.pgid
            ));
        }
    }
    Ok(())
}

/// One step of rebuilding the tree, carried out by the task it names
/// (indices into the process list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeStep {
    /// Start a new session (and group).
    Setsid(usize),
    /// Start a new group in the current session.
    OwnGroup(usize),
    /// `parent` forks `child` with its saved pid.
    Fork { parent: usize, child: usize },
    /// Join the group led by `leader`, or the root's group when `None`
    /// (which the root may have inherited from outside the tree).
    JoinGroup { task: usize, leader: Option<usize> },
    /// Exit with the saved status, to wait as a zombie for the parent.
    Exit(usize),
}

/// Restore side: the steps that rebuild a checked tree, in order. Each
/// process starts its session or group before it forks, so children inherit
/// it; groups are joined once every leader exists; zombies exit last.
pub fn plan(procs: &[pb::ProcessEntry]) -> Vec<TreeStep> {
    let mut steps = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        // Parents come first: the root exists already, the others are
        // forked by the time their turn comes.
        if p.sid == p.pid {
            steps.push(TreeStep::Setsid(i));
        } else if p.pgid == p.pid {
            steps.push(TreeStep::OwnGroup(i));
        }
        for (j, c) in procs.iter().enumerate().skip(i + 1) {
            if c.ppid == p.pid {
                steps.push(TreeStep::Fork {
                    parent: i,
                    child: j,
                });
            }
        }
    }
    let root = &procs[0];
    for (i, p) in procs.iter().enumerate().skip(1) {
        if p.pgid == p.pid {
            continue;
        }
        let leader = procs.iter().position(|q| q.pid == p.pgid);
        if leader.is_some() || p.pgid == root.pgid {
            steps.push(TreeStep::JoinGroup { task: i, leader });
        }
    }
    steps.extend(
        procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.zombie)
            .map(|(i, _)| TreeStep::Exit(i)),
    );
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgid: i32, sid: i32) -> pb::ProcessEntry {
        pb::ProcessEntry {
            pid,
            ppid,
            pgid,
            sid,
            threads: vec![pid],
            exit_signal: libc::SIGCHLD,
            ..Default::default()
        }
    }

    fn zombie(pid: i32, ppid: i32, pgid: i32, sid: i32) -> pb::ProcessEntry {
        pb::ProcessEntry {
            threads: vec![],
            zombie: true,
            exit_code: 7 << 8,
            ..p(pid, ppid, pgid, sid)
        }
    }

    /// Root 100 leads its group in an outside session 1; 101 starts a
    /// session with child 102 in its own group; 103 is a zombie; 104 joins
    /// 102's group... which is in another session, so it must not check.
    fn sample() -> Vec<pb::ProcessEntry> {
        vec![
            p(100, 1, 100, 1),
            p(101, 100, 101, 101),
            zombie(103, 100, 100, 1),
            p(105, 100, 100, 1),
            p(102, 101, 102, 101),
            p(106, 101, 102, 101),
        ]
    }

    #[test]
    fn a_tree_with_sessions_groups_and_a_zombie_checks_and_plans() {
        let procs = sample();
        check(&procs).unwrap();
        let steps = plan(&procs);
        use TreeStep::*;
        assert_eq!(
            steps,
            vec![
                OwnGroup(0),
                Fork {
                    parent: 0,
                    child: 1
                },
                Fork {
                    parent: 0,
                    child: 2
                },
                Fork {
                    parent: 0,
                    child: 3
                },
                Setsid(1),
                Fork {
                    parent: 1,
                    child: 4
                },
                Fork {
                    parent: 1,
                    child: 5
                },
                OwnGroup(4),
                JoinGroup {
                    task: 2,
                    leader: Some(0)
                },
                JoinGroup {
                    task: 3,
                    leader: Some(0)
                },
                JoinGroup {
                    task: 5,
                    leader: Some(4)
                },
                Exit(2),
            ]
        );
    }

    #[test]
    fn every_fork_comes_after_its_parent_exists_and_its_session_is_set() {
        let steps = plan(&sample());
        for (k, step) in steps.iter().enumerate() {
            if let TreeStep::Fork { parent, .. } = *step {
                let earlier = &steps[..k];
                assert!(
                    parent == 0
                        || earlier
                            .iter()
                            .any(|s| matches!(s, TreeStep::Fork { child, .. } if *child == parent))
                );
                if let Some(at) = steps.iter().position(|s| *s == TreeStep::Setsid(parent)) {
                    assert!(at < k, "the parent's session comes before its children");
                }
            }
        }
    }

    #[test]
    fn sessions_and_groups_without_a_leader_are_refused_by_pid() {
        let mut procs = sample();
        procs[4].sid = 55;
        let err = check(&procs).unwrap_err();
        assert!(err.contains("102") && err.contains("session 55"), "{err}");

        let mut procs = sample();
        procs[3].pgid = 77;
        let err = check(&procs).unwrap_err();
        assert!(err.contains("105") && err.contains("group 77"), "{err}");

        let mut procs = sample();
        procs[5].ppid = 999;
        assert!(check(&procs).unwrap_err().contains("parent 999"));

        // A group of another session cannot be joined.
        let mut procs = sample();
        procs[3].pgid = 102;
        assert!(check(&procs).is_err());
    }
}
