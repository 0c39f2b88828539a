//! Child processes for the infect tests. The test harness is
//! multi-threaded, so a forked child only makes raw syscalls; it dies with
//! its parent (PDEATHSIG) and is killed by pid when the test drops it.

use std::time::Duration;

use crate::infect::RemoteTask;
use crate::ptrace::{self, Stop};

/// Every wait in these tests gives up after this long.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A forked child that the test owns.
pub struct Child {
    /// Its pid (also its only tid).
    pub pid: i32,
}

impl Child {
    /// Forks a child running `body`, which must only make raw syscalls and
    /// never return.
    pub fn spawn(body: fn() -> !) -> Child {
        // SAFETY: the child only runs `body` (raw syscalls) and never
        // returns into the harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: prctl is a raw syscall.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            body();
        }
        Child { pid }
    }

    /// A child that loops over `sched_yield`, exiting 3 if it ever fails.
    pub fn spawn_spinner() -> Child {
        Child::spawn(|| loop {
            // SAFETY: raw syscalls only.
            unsafe {
                if libc::syscall(libc::SYS_sched_yield) != 0 {
                    libc::_exit(3);
                }
            }
        })
    }

    /// A child that loops over 20 ms `nanosleep`s, exiting 2 if one fails
    /// (as it would if an interrupted sleep came back with a bogus result).
    pub fn spawn_sleeper() -> Child {
        Child::spawn(|| loop {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            // SAFETY: raw syscalls only.
            unsafe {
                if libc::syscall(libc::SYS_nanosleep, &ts, 0usize) != 0 {
                    libc::_exit(2);
                }
            }
        })
    }

    /// Seizes the child, interrupts it and takes it over for remote syscalls.
    pub fn seize_and_interrupt(&self) -> RemoteTask {
        // Let the child reach its loop first (a sleeper in nanosleep).
        std::thread::sleep(Duration::from_millis(50));
        ptrace::seize(self.pid, ptrace::default_options()).unwrap();
        ptrace::interrupt(self.pid).unwrap();
        assert_eq!(self.wait(), Stop::Interrupt);
        RemoteTask::new(self.pid).unwrap()
    }

    /// Waits (bounded) for the next stop of the child.
    pub fn wait(&self) -> Stop {
        ptrace::wait_stop_timeout(self.pid, WAIT_LIMIT)
            .unwrap()
            .expect("child did not stop in time")
    }

    /// The child's `/proc/PID/maps`.
    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap()
    }

    /// Resumes with `PTRACE_CONT` (which, unlike detach, does not make the
    /// kernel revisit signal/restart handling), checks the child keeps
    /// running, and stops it again.
    pub fn cont_and_check_alive(&self) {
        ptrace::cont(self.pid, 0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let early = ptrace::try_wait_stop(self.pid).unwrap();
        assert_eq!(early, None, "child {} changed state after resume", self.pid);
        ptrace::interrupt(self.pid).unwrap();
        assert_eq!(self.wait(), Stop::Interrupt);
    }

    /// Detaches and checks the child keeps running its loop without dying.
    pub fn detach_and_check_alive(&self) {
        ptrace::detach(self.pid, 0).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let ret = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG | libc::__WALL) };
        assert_eq!(
            ret, 0,
            "child {} ended after detach, status {status:#x}",
            self.pid
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: kill and reap the child this test forked, by pid.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
        }
    }
}
