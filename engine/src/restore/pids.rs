//! How restored tasks get their saved pids (and threads their tids) back.
//!
//! `clone3` with `set_tid` names the pid outright. It needs
//! CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) over the pid namespace, and
//! some seccomp policies refuse `clone3` altogether. Then rcr writes one
//! below the wanted pid into the namespace's `ns_last_pid` right before a
//! plain `clone`, holding an flock on that file that other rcr restores take
//! too. Where that write is refused as well, rcr forks and reaps throwaway
//! children until the kernel's next pid is the wanted one: up to `pid_max`
//! forks, and racy against anything else that forks meanwhile, so it is the
//! last resort and says why it was taken. Every task checks the pid it got;
//! a wrong one fails the restore, it is never kept.

use crate::error::{Error, Result};
use nix::errno::Errno;
use rcr_parasite::restore_abi::PID_TRIES;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// A way to give a new task a chosen pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PidStrategy {
    /// `clone3` with `set_tid`.
    SetTid,
    /// `ns_last_pid` set to one below, then a plain `clone`.
    NsLastPid,
    /// Throwaway forks until the next pid is the one wanted.
    Spin,
}

impl PidStrategy {
    pub fn name(self) -> &'static str {
        match self {
            PidStrategy::SetTid => "set_tid",
            PidStrategy::NsLastPid => "ns_last_pid",
            PidStrategy::Spin => "spin",
        }
    }

    /// The strategy called `name` (as [`PidStrategy::name`] spells it).
    pub fn parse(name: &str) -> Option<PidStrategy> {
        [
            PidStrategy::SetTid,
            PidStrategy::NsLastPid,
            PidStrategy::Spin,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

impl std::fmt::Display for PidStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which strategies a restore may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PidChoice {
    /// The best one this host allows: set_tid, else ns_last_pid, else spin.
    #[default]
    Auto,
    /// This one only; a refusal fails the restore.
    Only(PidStrategy),
}

/// The strategy in force during one restore, and why it changed.
pub(crate) struct Pids {
    choice: PidChoice,
    strategy: PidStrategy,
    ns_last_pid: Option<File>,
    pub warnings: Vec<String>,
}

/// Keeps other rcr restores away from `ns_last_pid` until the task that
/// takes the arranged pid exists (a handle on the locked file description).
pub(crate) struct Arranged(Option<File>);

impl Drop for Arranged {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = f.unlock();
        }
    }
}

impl Pids {
    pub fn new(choice: PidChoice) -> Pids {
        let strategy = match choice {
            PidChoice::Auto => PidStrategy::SetTid,
            PidChoice::Only(s) => s,
        };
        Pids {
            choice,
            strategy,
            ns_last_pid: None,
            warnings: Vec::new(),
        }
    }

    pub fn strategy(&self) -> PidStrategy {
        self.strategy
    }

    /// After `clone3` with `set_tid` failed with `errno`: whether another
    /// strategy may be tried (it is then in force).
    pub fn fall_back(&mut self, errno: Errno) -> bool {
        let refused = matches!(
            errno,
            Errno::EPERM | Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG
        );
        if !refused || self.choice != PidChoice::Auto || self.strategy != PidStrategy::SetTid {
            return false;
        }
        self.strategy = PidStrategy::NsLastPid;
        true
    }

    /// Makes `pid` the next one the kernel hands out in rcr's pid namespace
    /// (nothing to do for set_tid), until the returned guard is dropped.
    pub fn arrange(&mut self, pid: i32) -> Result<Arranged> {
        if self.strategy == PidStrategy::NsLastPid {
            match self.write_ns_last_pid(pid) {
                Ok(held) => return Ok(held),
                Err(e) if self.choice == PidChoice::Auto => {
                    self.warnings.push(format!(
                        "pids are restored by spinning (forking throwaway processes until \
                         each saved pid comes up), which is slow: clone3 with set_tid and \
                         writing {NS_LAST_PID} were both refused ({e})"
                    ));
                    self.strategy = PidStrategy::Spin;
                }
                Err(e) => return Err(e),
            }
        }
        if self.strategy == PidStrategy::Spin {
            spin_to(pid)?;
        }
        Ok(Arranged(None))
    }

    /// After a task got `got` instead of its saved `want`: fine to make it
    /// again, or the error once `tries` are spent or `want` is in use.
    pub fn retry(&self, want: i32, got: i64, tries: &mut u32) -> Result<()> {
        *tries += 1;
        if *tries >= PID_TRIES || taken(want as i64) {
            return Err(self.wrong_pid(want, got));
        }
        Ok(())
    }

    /// The error for a task that got `got` instead of its saved `want`.
    pub fn wrong_pid(&self, want: i32, got: i64) -> Error {
        if taken(want as i64) {
            return Error::pid_taken(want);
        }
        Error::RestoreLost {
            pid: want,
            what: format!(
                "the kernel gave id {got} instead (with {}, {PID_TRIES} tries): other tasks \
                 took it meanwhile",
                self.strategy
            ),
        }
    }

    /// Writes `pid - 1` under the lock; returns a handle that holds it.
    fn write_ns_last_pid(&mut self, pid: i32) -> Result<Arranged> {
        let refused = |e: std::io::Error| {
            Error::Preflight(format!(
                "cannot set {NS_LAST_PID} (to get pid {pid} back): {e}; it needs \
                 CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the pid namespace's user namespace"
            ))
        };
        if self.ns_last_pid.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(NS_LAST_PID)
                .map_err(refused)?;
            self.ns_last_pid = Some(f);
        }
        let f = self.ns_last_pid.as_ref().expect("opened above");
        let handle = f.try_clone().map_err(|e| Error::io(NS_LAST_PID, e))?;
        handle.lock().map_err(|e| Error::io(NS_LAST_PID, e))?;
        let held = Arranged(Some(handle));
        f.write_all_at((pid - 1).to_string().as_bytes(), 0)
            .map_err(refused)?;
        Ok(held)
    }
}

fn read_number(path: &str) -> Result<i64> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.trim().parse().map_err(|_| {
        Error::io(
            path,
            std::io::Error::other(format!("not a number: {text:?}")),
        )
    })
}

/// Whether a task (process or thread) has id `pid` now.
fn taken(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the kernel's next pid after `last` is `pid`: every pid between
/// them is in use.
fn next_is(last: i64, pid: i32) -> bool {
    last < pid as i64 && (last + 1..pid as i64).all(taken)
}

/// Forks and reaps throwaway children until the next pid is `pid`, going
/// around the pid space at most twice.
fn spin_to(pid: i32) -> Result<()> {
    let rounds = 2 * read_number(PID_MAX)?;
    for _ in 0..rounds {
        if next_is(read_number(NS_LAST_PID)?, pid) {
            return Ok(());
        }
        if taken(pid as i64) {
            return Err(Error::pid_taken(pid));
        }
        throwaway_fork()?;
    }
    Err(Error::Preflight(format!(
        "could not reach pid {pid} by spinning through the pid space ({rounds} forks): \
         something else takes it first"
    )))
}

/// A child that exits at once, reaped: it only moves the pid counter.
fn throwaway_fork() -> Result<()> {
    // SAFETY: a plain fork (legacy clone, as clone3 may be filtered); the
    // child only calls _exit, which is async-signal-safe.
    let ret = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    match ret {
        0 => {
            // SAFETY: ends the throwaway child at once.
            unsafe { libc::_exit(0) }
        }
        r if r < 0 => Err(Error::sys(0, "fork (spinning pids)", Errno::last())),
        child => {
            // SAFETY: reaps our own child.
            unsafe { libc::waitpid(child as i32, std::ptr::null_mut(), 0) };
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            PidStrategy::SetTid,
            PidStrategy::NsLastPid,
            PidStrategy::Spin,
        ] {
            assert_eq!(PidStrategy::parse(s.name()), Some(s));
        }
        assert_eq!(PidStrategy::parse("fork"), None);
    }

    #[test]
    fn auto_falls_back_only_from_set_tid_on_refusal() {
        let mut p = Pids::new(PidChoice::Auto);
        assert!(!p.fall_back(Errno::EEXIST), "a taken pid is no refusal");
        assert_eq!(p.strategy(), PidStrategy::SetTid);
        assert!(p.fall_back(Errno::EPERM));
        assert_eq!(p.strategy(), PidStrategy::NsLastPid);
        assert!(!p.fall_back(Errno::EPERM), "no second fall back");
        let mut forced = Pids::new(PidChoice::Only(PidStrategy::SetTid));
        assert!(!forced.fall_back(Errno::EPERM));
    }

    #[test]
    fn next_is_needs_every_pid_between_taken() {
        let me = std::process::id() as i32;
        assert!(next_is(me as i64 - 1, me));
        assert!(next_is(me as i64, me + 1));
        assert!(!next_is(me as i64, me), "last must be below the pid");
        assert!(
            !next_is(0, i32::MAX),
            "pids up to pid_max are not all taken"
        );
    }
}
