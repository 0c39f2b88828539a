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
//!
//! A session or group whose leader has exited gets a helper task: a copy
//! of a tree process, made with the leader's pid, that starts the session
//! or group and leaves once every member is in. A group's helper is forked
//! by the group's first member and started with `setpgid(0, 0)`; members
//! join it. A session cannot be joined, only inherited, so its helper is
//! forked by the parent its members have in the image, starts the session
//! and forks those members itself. When it exits the kernel hands them to
//! the nearest subreaper: their saved parent, made one beforehand. It was
//! one when the image was taken (that is how it adopted them when the
//! leader exited), so it is left one. Each helper's parent, a process of
//! the tree, reaps it right away, so it never lingers as a zombie, and its
//! pid is free again.

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
        ..Default::default()
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
        ..Default::default()
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
        match index(p.ppid) {
            Some(j) if j < i && !procs[j].zombie => {}
            _ => {
                return Err(format!(
                    "process {}: its parent {} does not come before it in the tree",
                    p.pid, p.ppid
                ))
            }
        }
        if adopted(procs, i) {
            if index(p.sid).is_some() || p.sid == root.sid {
                return Err(format!(
                    "process {}: its session {} is neither its own nor its parent's, \
                     and its leader is still there to hold the pid",
                    p.pid, p.sid
                ));
            }
            if let Some(q) = (1..procs.len())
                .filter(|&j| adopted(procs, j))
                .map(|j| &procs[j])
                .find(|q| q.sid == p.sid && q.ppid != p.ppid)
            {
                return Err(format!(
                    "processes {} and {}: their session {} has no leader and they \
                     have different parents ({} and {}), so no one helper can start it",
                    p.pid, q.pid, p.sid, p.ppid, q.ppid
                ));
            }
        }
        let same_session = |q: &pb::ProcessEntry| q.pgid != p.pgid || q.sid == p.sid;
        let group_ok = p.pgid == p.pid
            || (p.pgid == root.pgid && p.sid == root.sid)
            || procs
                .iter()
                .any(|q| q.pid == p.pgid && q.pgid == q.pid && q.sid == p.sid && !q.zombie)
            || (index(p.pgid).is_none() && p.pgid != root.pgid && procs.iter().all(same_session));
        if !group_ok {
            return Err(format!(
                "process {}: its process group {} has no leader of its session in the \
                 tree, and no helper can lead it (the pid is in use, or it is the \
                 root's group from outside)",
                p.pid, p.pgid
            ));
        }
    }
    Ok(())
}

/// Whether process `i` (not the root) is in a session that is neither its
/// own nor its parent's: its leader exited and it was adopted.
fn adopted(procs: &[pb::ProcessEntry], i: usize) -> bool {
    let p = &procs[i];
    i > 0
        && p.sid != p.pid
        && procs
            .iter()
            .find(|q| q.pid == p.ppid)
            .is_some_and(|parent| parent.sid != p.sid)
}

/// A helper task standing in for a session or group leader that exited.
struct Helper {
    /// The leader's pid, which the helper takes.
    pid: i32,
    /// The process that forks (and reaps) it.
    parent: usize,
    /// It starts a session (else a group).
    session: bool,
}

/// The helpers a checked tree needs: sessions first, then groups that no
/// session helper leads already.
fn helpers(procs: &[pb::ProcessEntry]) -> Vec<Helper> {
    let root = &procs[0];
    let index = |pid: i32| procs.iter().position(|p| p.pid == pid);
    let mut out: Vec<Helper> = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        if adopted(procs, i) && !out.iter().any(|h| h.pid == p.sid) {
            if let Some(parent) = index(p.ppid) {
                out.push(Helper {
                    pid: p.sid,
                    parent,
                    session: true,
                });
            }
        }
    }
    for (i, p) in procs.iter().enumerate().skip(1) {
        let orphaned = p.pgid != p.pid && p.pgid != root.pgid && index(p.pgid).is_none();
        if orphaned && !out.iter().any(|h| h.pid == p.pgid) {
            out.push(Helper {
                pid: p.pgid,
                parent: i,
                session: false,
            });
        }
    }
    out
}

/// One step of rebuilding the tree, carried out by the task it names:
/// indices into the process list, then helpers (numbered from its length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeStep {
    /// Become a child subreaper, to get back the children a helper forks.
    Subreaper(usize),
    /// `parent` forks helper `task` with pid `pid`; it serves commands
    /// through its parent's channel.
    Helper {
        parent: usize,
        task: usize,
        pid: i32,
    },
    /// Helper `task` exits and `parent` reaps it.
    Dismiss { parent: usize, task: usize },
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
    let helpers = helpers(procs);
    let n = procs.len();
    // The helper standing in for leader `pid`, as a task index.
    let helper = |pid: i32| helpers.iter().position(|h| h.pid == pid).map(|k| n + k);
    let mut steps = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        // Parents come first: the root exists already, the others are
        // forked by the time their turn comes.
        if p.sid == p.pid {
            steps.push(TreeStep::Setsid(i));
        } else if p.pgid == p.pid {
            steps.push(TreeStep::OwnGroup(i));
        }
        let mine = || helpers.iter().enumerate().filter(|(_, h)| h.parent == i);
        if mine().any(|(_, h)| h.session) {
            steps.push(TreeStep::Subreaper(i));
        }
        for (k, h) in mine() {
            let task = n + k;
            steps.push(TreeStep::Helper {
                parent: i,
                task,
                pid: h.pid,
            });
            steps.push(match h.session {
                true => TreeStep::Setsid(task),
                false => TreeStep::OwnGroup(task),
            });
        }
        for (j, c) in procs.iter().enumerate().skip(i + 1) {
            if c.ppid == p.pid {
                let parent = match adopted(procs, j) {
                    true => helper(c.sid).unwrap_or(i),
                    false => i,
                };
                steps.push(TreeStep::Fork { parent, child: j });
            }
        }
    }
    let root = &procs[0];
    for (i, p) in procs.iter().enumerate().skip(1) {
        if p.pgid == p.pid {
            continue;
        }
        let leader = procs
            .iter()
            .position(|q| q.pid == p.pgid)
            .or_else(|| helper(p.pgid));
        if leader.is_some() || p.pgid == root.pgid {
            steps.push(TreeStep::JoinGroup { task: i, leader });
        }
    }
    steps.extend(helpers.iter().enumerate().map(|(k, h)| TreeStep::Dismiss {
        parent: h.parent,
        task: n + k,
    }));
    steps.extend(
        procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.zombie)
            .map(|(i, _)| TreeStep::Exit(i)),
    );
    steps
}

/// For each process, the process whose memory it starts with at restore:
/// the one that forks it, or the one that forked the helper that does.
pub fn memory_parents(procs: &[pb::ProcessEntry]) -> Vec<Option<usize>> {
    let steps = plan(procs);
    let n = procs.len();
    let mut out = vec![None; n];
    for step in &steps {
        if let TreeStep::Fork { parent, child } = *step {
            out[child] = if parent < n {
                Some(parent)
            } else {
                steps.iter().find_map(|s| match *s {
                    TreeStep::Helper {
                        parent: p, task, ..
                    } if task == parent => Some(p),
                    _ => None,
                })
            };
        }
    }
    out
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

    /// Root 100 (a subreaper) adopted daemon 201, whose session 200 and
    /// group 200 lost their leader; 202 is the daemon's child in both.
    /// 301 and 302 are the root's, in group 300, whose leader exited.
    fn orphans() -> Vec<pb::ProcessEntry> {
        vec![
            p(100, 1, 100, 1),
            p(201, 100, 200, 200),
            p(301, 100, 300, 1),
            zombie(302, 100, 300, 1),
            p(202, 201, 200, 200),
        ]
    }

    #[test]
    fn memory_parents_follow_forks_and_helpers() {
        assert_eq!(
            memory_parents(&orphans()),
            vec![None, Some(0), Some(0), Some(0), Some(1)]
        );
        assert_eq!(
            memory_parents(&sample()),
            vec![None, Some(0), Some(0), Some(0), Some(1), Some(1)]
        );
    }

    #[test]
    fn sessions_and_groups_whose_leader_exited_get_helpers() {
        let procs = orphans();
        check(&procs).unwrap();
        use TreeStep::*;
        let (session, group) = (5, 6);
        assert_eq!(
            plan(&procs),
            vec![
                OwnGroup(0),
                Subreaper(0),
                Helper {
                    parent: 0,
                    task: session,
                    pid: 200
                },
                Setsid(session),
                Fork {
                    parent: session,
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
                Fork {
                    parent: 1,
                    child: 4
                },
                Helper {
                    parent: 2,
                    task: group,
                    pid: 300
                },
                OwnGroup(group),
                JoinGroup {
                    task: 1,
                    leader: Some(session)
                },
                JoinGroup {
                    task: 2,
                    leader: Some(group)
                },
                JoinGroup {
                    task: 3,
                    leader: Some(group)
                },
                JoinGroup {
                    task: 4,
                    leader: Some(session)
                },
                Dismiss {
                    parent: 0,
                    task: session
                },
                Dismiss {
                    parent: 2,
                    task: group
                },
                Exit(3),
            ]
        );
    }

    #[test]
    fn helpers_are_refused_where_they_cannot_work() {
        // Two members of a leaderless session with different parents.
        let mut procs = orphans();
        procs.push(p(203, 202, 200, 99));
        procs[5].sid = 200;
        procs[4].sid = 201;
        procs[4].pgid = 201;
        let err = check(&procs).unwrap_err();
        assert!(
            err.contains("session 200") && err.contains("different parents"),
            "{err}"
        );

        // A session whose leader is still in the tree (holding the pid).
        let mut procs = sample();
        procs[5].sid = 100;
        let err = check(&procs).unwrap_err();
        assert!(err.contains("106") && err.contains("session 100"), "{err}");

        // The root's outside session cannot be entered from another one.
        let mut procs = sample();
        procs[4].sid = 1;
        let err = check(&procs).unwrap_err();
        assert!(err.contains("102") && err.contains("session 1"), "{err}");
    }

    #[test]
    fn sessions_and_groups_without_a_leader_are_refused_by_pid() {
        // A group whose leader pid is taken by a process of another session.
        let mut procs = sample();
        procs[3].pgid = 101;
        let err = check(&procs).unwrap_err();
        assert!(err.contains("105") && err.contains("group 101"), "{err}");

        let mut procs = sample();
        procs[5].ppid = 999;
        assert!(check(&procs).unwrap_err().contains("parent 999"));

        // A group of another session cannot be joined.
        let mut procs = sample();
        procs[3].pgid = 102;
        assert!(check(&procs).is_err());
    }
}
