//! Sessions and process groups whose leader has exited. The root is a
//! child subreaper and forks:
//! - A, which starts a session, forks the daemon D and exits at once: D is
//!   adopted by the root and stays in A's session and group; D forks D2,
//!   which is in them too;
//! - G, which starts a group, forks M1 and exits: M1 is adopted by the root
//!   and stays in G's group; M2, another child of the root, joins G's group
//!   meanwhile.
//!
//! The root reaps A and G, waits until /proc shows every id as planned,
//! then says ready. On the wake signal it checks its own ids and wakes D,
//! D2, M1 and M2, which each compare (pid, ppid, pgid, sid) with what they
//! must be and exit 0, or print the difference and exit 1 (D also reaps
//! D2 and passes on its verdict). The root reaps them and writes the
//! combined verdict. Every wait has a deadline.

use rcr_tests::workload::{self, getpid, last_err, Args, Verdict, WAKE_SIGNAL};
use std::fs;
use std::time::Duration;

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// (ppid, pgid, sid), as a process must have them.
type Ids = (i32, i32, i32);

fn ids_now() -> Ids {
    // SAFETY: these calls have no preconditions.
    unsafe { (libc::getppid(), libc::getpgid(0), libc::getsid(0)) }
}

/// The ppid, pgid and sid of any process, from /proc.
fn proc_ids(pid: i32) -> Option<Ids> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace().skip(1);
    let mut num = || f.next()?.parse().ok();
    Some((num()?, num()?, num()?))
}

/// The children of single-threaded process `pid`.
fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A member: waits for the wake, then checks its ids against `want`.
fn member(name: &str, want: Ids, v: &mut Verdict) {
    workload::wait_for_wake();
    v.eq(
        &format!("{name} (pid {}): (ppid, pgid, sid)", getpid()),
        ids_now(),
        want,
    );
}

/// The daemon: adopted by `root` in session and group `a`; forks D2.
fn daemon(root: i32, a: i32) -> i32 {
    let mut v = Verdict::new();
    if let Err(e) = workload::wait_until("D adopted by the root", STEP_TIMEOUT, || {
        ids_now().0 == root
    }) {
        v.fail(e);
    }
    let me = getpid();
    let d2 = workload::fork_child(|| {
        let mut v = Verdict::new();
        member("D2", (me, a, a), &mut v);
        workload::exit_code("D2", v)
    });
    member("D", (root, a, a), &mut v);
    match d2 {
        Ok(d2) => workload::expect_ok_exit("D2", d2, STEP_TIMEOUT, &mut v),
        Err(e) => v.fail(e),
    }
    workload::exit_code("D", v)
}

/// The pids the root checks and wakes.
struct Members {
    d: i32,
    d2: i32,
    m1: i32,
    m2: i32,
    a: i32,
    g: i32,
}

/// Builds both orphaned ids; `kids` collects every pid to end on failure.
fn build(root: i32, sid: i32, kids: &mut Vec<i32>) -> Result<Members, String> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_CHILD_SUBREAPER: {}", last_err()));
    }
    let a = workload::fork_child(|| {
        // SAFETY: setsid has no memory preconditions.
        if unsafe { libc::setsid() } < 0 {
            return 1;
        }
        let a = getpid();
        // D outlives A at once; A's exit code says whether D was forked.
        workload::fork_child(|| daemon(root, a)).map_or(1, |_| 0)
    })?;
    kids.push(a);
    expect_zero("A", a, workload::reap(a, STEP_TIMEOUT)?)?;
    let d = single_child(root, &[])?;
    kids.push(d);
    workload::wait_until("D forked D2", STEP_TIMEOUT, || children(d).len() == 1)?;
    let d2 = children(d)[0];
    kids.push(d2);

    let g = workload::fork_child(|| {
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return 1;
        }
        let g = getpid();
        workload::fork_child(|| {
            let mut v = Verdict::new();
            if let Err(e) = workload::wait_until("M1 adopted by the root", STEP_TIMEOUT, || {
                ids_now().0 == root
            }) {
                v.fail(e);
            }
            member("M1", (root, g, sid), &mut v);
            workload::exit_code("M1", v)
        })
        .map_or(1, |_| 0)
    })?;
    kids.push(g);
    workload::wait_until("G's group exists", STEP_TIMEOUT, || {
        proc_ids(g).is_some_and(|i| i.1 == g)
    })?;
    let m2 = workload::fork_child(|| {
        let mut v = Verdict::new();
        // SAFETY: setpgid on ourselves, into a group of our session.
        if unsafe { libc::setpgid(0, g) } != 0 {
            v.fail(format!("M2: setpgid into {g}: {}", last_err()));
        }
        member("M2", (root, g, sid), &mut v);
        workload::exit_code("M2", v)
    })?;
    kids.push(m2);
    expect_zero("G", g, workload::reap(g, STEP_TIMEOUT)?)?;
    let m1 = single_child(root, &[d, m2])?;
    kids.push(m1);
    let plan = [
        ("D", d, (root, a, a)),
        ("D2", d2, (d, a, a)),
        ("M1", m1, (root, g, sid)),
        ("M2", m2, (root, g, sid)),
    ];
    for (name, pid, want) in plan {
        workload::wait_until(
            &format!("{name} (pid {pid}) has ids {want:?}"),
            STEP_TIMEOUT,
            || proc_ids(pid) == Some(want),
        )?;
    }
    Ok(Members {
        d,
        d2,
        m1,
        m2,
        a,
        g,
    })
}

fn expect_zero(name: &str, pid: i32, status: i32) -> Result<(), String> {
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("{name} (pid {pid}): wait status {status:#x}"));
    }
    Ok(())
}

/// The one child of `root` not in `known`.
fn single_child(root: i32, known: &[i32]) -> Result<i32, String> {
    let new: Vec<i32> = children(root)
        .into_iter()
        .filter(|p| !known.contains(p))
        .collect();
    match new[..] {
        [pid] => Ok(pid),
        _ => Err(format!("the root's new children are {new:?}, want one")),
    }
}

fn check(root: (i32, i32, i32), m: &Members) -> Verdict {
    let mut v = Verdict::new();
    // SAFETY: these calls have no preconditions.
    let now = unsafe { (libc::getpid(), libc::getpgid(0), libc::getsid(0)) };
    v.eq("root: (pid, pgid, sid)", now, root);
    for (name, pid) in [("A", m.a), ("G", m.g)] {
        v.check(proc_ids(pid).is_none(), || {
            format!("{name} (pid {pid}), the leader that exited, exists again")
        });
    }
    let woken = [("D", m.d), ("D2", m.d2), ("M1", m.m1), ("M2", m.m2)];
    for (name, pid) in woken {
        // SAFETY: wakes a process of this tree.
        if unsafe { libc::kill(pid, WAKE_SIGNAL) } != 0 {
            v.fail(format!("waking {name} (pid {pid}): {}", last_err()));
        }
    }
    for (name, pid) in [("D", m.d), ("M1", m.m1), ("M2", m.m2)] {
        workload::expect_ok_exit(name, pid, STEP_TIMEOUT, &mut v);
    }
    // SAFETY: waitpid with WNOHANG and a null status pointer.
    let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    v.check(rc == -1, || format!("a child is left: waitpid gave {rc}"));
    v
}

fn main() {
    let args = Args::init();
    // SAFETY: these calls have no preconditions.
    let root = unsafe { (libc::getpid(), libc::getpgid(0), libc::getsid(0)) };
    let mut kids = Vec::new();
    let members = build(root.0, root.2, &mut kids).unwrap_or_else(|e| {
        for &pid in &kids {
            // SAFETY: kills a process this workload forked.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        args.fail_early(&e)
    });
    args.signal_ready_with_descendants(&[members.d, members.d2, members.m1, members.m2]);
    workload::wait_for_wake();
    let v = check(root, &members);
    args.finish(v)
}
