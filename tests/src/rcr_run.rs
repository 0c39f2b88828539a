//! `rcr run` driven from a test: started with its log in the test's
//! directory, its init and program found from its children, and killed with
//! everything in its namespace when dropped.

use crate::harness::{send_signal, spawn_retrying, wait_pid, Exit, TestDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `rcr run` may take to start its program or to end.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// One `rcr run`, killed with everything in its namespace when dropped.
pub struct Run {
    pub outer: i32,
    pub init: i32,
    /// The program's pid as this test sees it.
    pub program: i32,
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Run {
    /// Starts `rcr run --image <images> <options> -- <command>` and waits
    /// until its init has started or restored the program.
    pub fn start(dir: &TestDir, images: &Path, options: &[&str], command: &[&str]) -> Run {
        let log = dir.join("run.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("run log");
        // The restored program opens it again, as whichever user runs it.
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod run log");
        let mut cmd = run_command(dir, images, options, command);
        cmd.stdout(out.try_clone().expect("dup log")).stderr(out);
        // Descriptors the test runner inherited are not the program's.
        // SAFETY: close_range is async-signal-safe, as pre_exec requires.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            })
        };
        #[allow(clippy::zombie_processes)]
        let outer = spawn_retrying(&mut cmd).id() as i32;
        Run::attach(outer, &log)
    }

    /// Watches the `rcr run` of pid `outer` (our child, its output in
    /// `log`): waits until its init has started or restored the program.
    pub fn attach(outer: i32, log: &Path) -> Run {
        let mut run = Run {
            outer,
            init: 0,
            program: 0,
        };
        let deadline = Instant::now() + TIMEOUT;
        while run.program == 0 {
            let ended = wait_pid(outer, Duration::ZERO);
            if ended.is_some() || Instant::now() >= deadline {
                run.outer = 0;
                panic!(
                    "rcr run started no program ({ended:?}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Some(&init) = children(outer).first() {
                run.init = init;
                run.program = children(init).first().copied().unwrap_or(0);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        run
    }

    /// The program's pid in its own namespace.
    pub fn namespace_pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/proc/{}/status", self.program))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    }

    /// Waits until `rcr run` ends.
    pub fn wait(&mut self) -> Exit {
        let exit = wait_pid(self.outer, TIMEOUT).expect("rcr run did not end");
        self.outer = 0;
        exit
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.outer != 0 {
            // Init's end takes the whole namespace with it.
            send_signal(self.init, libc::SIGKILL);
            send_signal(self.outer, libc::SIGKILL);
            let _ = wait_pid(self.outer, Duration::from_secs(10));
        }
    }
}

/// Waits until the program says ready in `DIR/ready`, the file the
/// workloads started by these tests are given.
pub fn wait_ready(dir: &TestDir) {
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(dir.join("ready")).is_ok_and(|s| s.starts_with("ready")) {
        assert!(Instant::now() < deadline, "program not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `rcr run --image IMAGES OPTIONS -- COMMAND` as the directory's user,
/// stdin from /dev/null.
pub fn run_command(dir: &TestDir, images: &Path, options: &[&str], command: &[&str]) -> Command {
    let mut cmd = Command::new(dir.rcr());
    dir.as_user(&mut cmd);
    cmd.arg("run")
        .arg("--image")
        .arg(images)
        .args(options)
        .arg("--")
        .args(command)
        .stdin(Stdio::null());
    cmd
}

/// Waits until `rcr run`'s log (`DIR/run.log`, which the program started
/// by [`Run::start`] writes to as well) holds `text`.
pub fn wait_for_log(dir: &TestDir, text: &str) {
    wait_for_log_times(dir, text, 1);
}

/// Waits until `text` stands `times` times in the log of `rcr run`.
pub fn wait_for_log_times(dir: &TestDir, text: &str, times: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(dir.join("run.log"))
        .is_ok_and(|s| s.matches(text).count() >= times)
    {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log of rcr run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
