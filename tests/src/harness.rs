//! The test side of the end-to-end tests: a temp dir per test, workloads
//! started and reaped by pid, `rcr` run with a timeout, verdicts read back.
//!
//! Every wait is bounded. The test process makes itself a child subreaper,
//! so a restored workload (a child of `rcr` until `rcr` exits) is
//! reparented to it and can be waited for like any child.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::workload::DESCENDANTS;

/// How long a workload may take to build its state and say "ready".
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `rcr` command may run before it is killed.
pub const RCR_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a signalled workload may take to check its state and exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

/// The `rcr` binary: `$RCR_BIN`, else `rcr` next to the test binary's
/// `deps/` folder (`target/debug/deps/x` → `target/debug/rcr`).
pub fn rcr_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RCR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let rcr = profile_dir.join("rcr");
    assert!(
        rcr.is_file(),
        "rcr binary not found at {}: build it first (`cargo build -p rcr` with the same \
         target dir and profile, or `cargo test --workspace`), or set RCR_BIN",
        rcr.display()
    );
    rcr
}

/// A python3 interpreter (`$RCR_PYTHON`, else the real executable behind
/// `python3` on PATH, so no wrapper script sits between us and it).
pub fn python3() -> PathBuf {
    if let Some(p) = std::env::var_os("RCR_PYTHON") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .expect("python3 on PATH");
    assert!(out.status.success(), "python3 -c failed: {out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Makes the test process the reaper of orphaned descendants (once).
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER: {}", errno());
    });
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A directory under the system temp dir, removed on drop (kept when the
/// test failed and `RCR_KEEP_FAILED` is set, for a look at the images).
pub struct TestDir {
    path: PathBuf,
    /// When set, workloads and `rcr` run as this user, `rcr` from this binary.
    user: Option<(u32, PathBuf)>,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        become_subreaper();
        let path = std::env::temp_dir().join(format!(
            "rcr-e2e-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestDir { path, user: None }
    }

    /// From now on, workloads and `rcr` run as `uid` (its own group, no
    /// supplementary groups), `rcr` from `rcr`; the dir becomes the user's.
    pub fn run_as(&mut self, uid: u32, rcr: PathBuf) {
        chown(&self.path, uid);
        self.user = Some((uid, rcr));
    }

    /// The `rcr` binary this dir's commands run.
    pub fn rcr(&self) -> PathBuf {
        self.user
            .as_ref()
            .map_or_else(rcr_bin, |(_, bin)| bin.clone())
    }

    /// Applies [`TestDir::run_as`] to a command.
    pub fn as_user(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, _)) = &self.user {
            // std drops the supplementary groups when root sets a uid.
            cmd.uid(*uid).gid(*uid);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Names of the entries in the dir, sorted.
    pub fn entries(&self) -> Vec<String> {
        list_dir(&self.path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("RCR_KEEP_FAILED").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Gives `path` to user and group `uid`.
pub fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Sorted entry names of `dir` (empty when it does not exist).
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// waitpid(pid) with a deadline: None when it is still running then.
#[track_caller]
pub fn wait_pid(pid: i32, timeout: Duration) -> Option<Exit> {
    try_wait_pid(pid, timeout).unwrap_or_else(|e| panic!("waitpid({pid}): {e}"))
}

/// wait_pid that reports a failed waitpid (ECHILD: not ours) instead of
/// panicking, for cleanup that may run while a test is already failing.
fn try_wait_pid(pid: i32, timeout: Duration) -> std::io::Result<Option<Exit>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one pid with a valid status pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(Some(Exit::Code(libc::WEXITSTATUS(status))));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(Some(Exit::Signal(libc::WTERMSIG(status))));
            }
            continue; // stopped/continued reports are not an exit
        }
        if rc != 0 {
            return Err(errno());
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `sig` to `pid`; false when there is no such process.
pub fn send_signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The fields of /proc/<pid>/stat after the command name (state first),
/// None if gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().map(String::from).collect())
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `Z`, ...), None if gone.
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The parent pid of a process (a zombie's too), None if gone.
fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether `pid` (live or zombie) descends from the test process. The test
/// process is a subreaper, so every process a workload started stays its
/// descendant until reaped, whoever of its ancestors died.
fn descends_from_us(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    // Bounded: a chain deeper than this is no workload's.
    for _ in 0..64 {
        match parent_of(p) {
            Some(parent) if parent == me => return true,
            Some(parent) if parent > 1 => p = parent,
            _ => return false,
        }
    }
    false
}

/// Waits until `pid` no longer exists, reaping it when it is (or becomes,
/// once its parent died) our child; false when it still exists at
/// `deadline`.
fn reap_when_gone(pid: i32, deadline: Instant) -> bool {
    loop {
        // SAFETY: waitpid on one pid with no status wanted.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        // SAFETY: signal 0 only probes for existence.
        if rc == pid || (rc == -1 && unsafe { libc::kill(pid, 0) } != 0) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Asserts no process (not even a zombie) has `pid`; kills and reaps one
/// that does, so a failing test leaves nothing behind.
#[track_caller]
pub fn assert_no_process(pid: i32, context: &str) {
    // SAFETY: signal 0 only probes for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    let err = errno();
    if rc == 0 || err.raw_os_error() != Some(libc::ESRCH) {
        let state = proc_state(pid);
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        send_signal(pid, libc::SIGKILL);
        let _ = wait_pid(pid, Duration::from_secs(10));
        panic!(
            "{context}: a process with pid {pid} exists (state {state:?}, comm {:?}); \
             kill(pid, 0) gave {}",
            comm.trim(),
            if rc == 0 {
                "success".to_string()
            } else {
                err.to_string()
            }
        );
    }
}

/// One `rcr` invocation's outcome. Its output went to files in the test dir,
/// so a process that inherits them can never block us on a pipe.
#[derive(Debug)]
pub struct RcrRun {
    pub args: Vec<OsString>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RcrRun {
    fn describe(&self) -> String {
        format!(
            "rcr {:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
    }

    /// Asserts a non-zero exit with one `rcr: ` line on stderr that contains
    /// every keyword (case-insensitive).
    #[track_caller]
    pub fn assert_failure(&self, keywords: &[&str]) {
        assert!(
            !self.status.success(),
            "expected failure: {}",
            self.describe()
        );
        assert!(
            self.status.code().is_some(),
            "rcr died by a signal instead of failing cleanly: {}",
            self.describe()
        );
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("rcr: "))
            .unwrap_or_else(|| panic!("no line starting \"rcr: \": {}", self.describe()));
        let lower = line.to_lowercase();
        for k in keywords {
            assert!(
                lower.contains(&k.to_lowercase()),
                "error message lacks {k:?}: {}",
                self.describe()
            );
        }
    }

    /// The pid `rcr restore` printed alone on a line.
    pub fn printed_pid(&self) -> Option<i32> {
        self.stdout.lines().find_map(|l| l.trim().parse().ok())
    }
}

/// Runs `rcr args` (optionally behind `wrapper`, e.g. setpriv) with output
/// to files in `dir`; kills it when it runs past `timeout`.
pub fn run_rcr_with(
    dir: &TestDir,
    wrapper: &[&OsStr],
    args: &[&OsStr],
    timeout: Duration,
) -> RcrRun {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let out_path = dir.join(&format!("rcr-{n}.stdout"));
    let err_path = dir.join(&format!("rcr-{n}.stderr"));
    let out = fs::File::create(&out_path).expect("create rcr stdout file");
    let err = fs::File::create(&err_path).expect("create rcr stderr file");
    let rcr = dir.rcr();
    let mut cmd = match wrapper.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(rcr);
            c
        }
        None => Command::new(rcr),
    };
    dir.as_user(&mut cmd);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = spawn_retrying(&mut cmd);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for rcr") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rcr {args:?} still running after {timeout:?}; killed it\n--- stderr ---\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    let run = RcrRun {
        args: args.iter().map(|a| a.to_os_string()).collect(),
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    run
}

/// Spawns `cmd`, again while it is ETXTBSY: a copy of rcr that a test just
/// wrote (see `unpriv::capped_rcr`) stays busy while a process forked by
/// another test thread still holds the inherited write descriptor, until
/// that process execs.
pub fn spawn_retrying(cmd: &mut Command) -> std::process::Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(POLL)
            }
            r => return r.unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        }
    }
}

/// Runs `rcr args` with the default timeout.
pub fn run_rcr(dir: &TestDir, args: &[&OsStr]) -> RcrRun {
    run_rcr_with(dir, &[], args, RCR_TIMEOUT)
}

/// The verdict a workload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `OK` or `FAIL: ...`.
    pub line: String,
    pub pid: Option<i32>,
}

/// A workload process, known by pid. While `armed`, a process with that pid
/// is ours: dropping the guard SIGKILLs and reaps it (and only it), and the
/// descendants it named that still descend from us and carry its name.
pub struct Workload {
    pub pid: i32,
    pub name: String,
    /// The other processes of the workload, from its ready file.
    pub descendants: Vec<i32>,
    pub ready: PathBuf,
    pub result: PathBuf,
    pub log: PathBuf,
    armed: bool,
}

impl Workload {
    /// Starts `program [pre_args] <ready> <result> [params]` in its own
    /// process group, stdin from /dev/null, stdout and stderr to a log file.
    pub fn spawn(dir: &TestDir, program: &Path, pre_args: &[&OsStr], params: &[&str]) -> Workload {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ready = dir.join("ready");
        let result = dir.join("result");
        let log = dir.join("workload.log");
        let log_file = fs::File::create(&log).expect("create workload log");
        if let Some((uid, _)) = &dir.user {
            chown(&log, *uid);
        }
        let log_err = log_file.try_clone().expect("dup workload log");
        use std::os::unix::process::CommandExt;
        // Reaped by pid (wait_pid) like a restored workload, not via Child.
        let mut child = Command::new(program);
        child
            .args(pre_args)
            .arg(&ready)
            .arg(&result)
            .args(params)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        dir.as_user(&mut child);
        // Descriptors the test runner inherited from its environment (a CI
        // agent's pipes, say) are not the workload's state: close them.
        // SAFETY: close_range is async-signal-safe, as pre_exec requires.
        unsafe {
            child.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            })
        };
        #[allow(clippy::zombie_processes)]
        let child = child
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        // We reap it ourselves by pid; the Child handle is not needed.
        let pid = child.id() as i32;
        Workload {
            pid,
            name,
            descendants: Vec::new(),
            ready,
            result,
            log,
            armed: true,
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn result_text(&self) -> Option<String> {
        fs::read_to_string(&self.result).ok()
    }

    /// Waits until the ready file says "ready"; panics (with the log and any
    /// verdict) if the workload exits first or takes too long.
    #[track_caller]
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(text) = fs::read_to_string(&self.ready)
                .ok()
                .filter(|s| s.starts_with("ready"))
            {
                self.descendants = parse_descendants(&text);
                return;
            }
            if let Some(exit) = wait_pid(self.pid, Duration::ZERO) {
                self.armed = false;
                panic!(
                    "{} (pid {}) exited before ready: {exit:?}\nverdict: {:?}\nlog:\n{}",
                    self.name,
                    self.pid,
                    self.result_text(),
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) not ready after {READY_TIMEOUT:?}\nlog:\n{}",
                self.name,
                self.pid,
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// True while the process runs (exists and is not a zombie).
    pub fn is_running(&self) -> bool {
        matches!(proc_state(self.pid), Some(s) if s != 'Z' && s != 'X')
    }

    /// Waits for the workload to exit (reaping it).
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> Exit {
        match wait_pid(self.pid, timeout) {
            Some(exit) => {
                self.armed = false;
                exit
            }
            None => panic!(
                "{} (pid {}) did not exit within {timeout:?}\nlog:\n{}",
                self.name,
                self.pid,
                self.log_text()
            ),
        }
    }

    /// Reads the verdict file.
    pub fn verdict(&self) -> Option<Verdict> {
        let text = self.result_text()?;
        let mut lines = text.lines();
        let line = lines.next().unwrap_or("").to_string();
        let pid = lines
            .find_map(|l| l.strip_prefix("pid "))
            .and_then(|p| p.trim().parse().ok());
        Some(Verdict { line, pid })
    }

    /// Wakes the workload and returns its verdict and exit (it must write
    /// one); the log is appended to panics.
    #[track_caller]
    pub fn finish(&mut self) -> (Verdict, Exit) {
        let _ = fs::remove_file(&self.result);
        assert!(
            send_signal(self.pid, libc::SIGUSR1),
            "{} (pid {}) is gone before the wake signal: {}",
            self.name,
            self.pid,
            errno()
        );
        let exit = self.wait_exit(EXIT_TIMEOUT);
        match self.verdict() {
            Some(v) => (v, exit),
            None => panic!(
                "{} (pid {}) wrote no verdict; exit {exit:?}\nlog:\n{}",
                self.name,
                self.pid,
                self.log_text()
            ),
        }
    }

    /// Wakes the workload and asserts it checked its state as OK, from the
    /// same pid, and exited 0.
    #[track_caller]
    pub fn finish_ok(&mut self) {
        let (verdict, exit) = self.finish();
        assert_eq!(
            verdict.line,
            "OK",
            "{} (pid {}) found its state changed; exit {exit:?}\nlog:\n{}",
            self.name,
            self.pid,
            self.log_text()
        );
        assert_eq!(
            verdict.pid,
            Some(self.pid),
            "{}: pid after check",
            self.name
        );
        assert_eq!(exit, Exit::Code(0), "{}: exit status", self.name);
    }

    /// Asserts `rcr dump` (without --leave-running) ended the workload: it
    /// dies, we reap it, and its pid is free for the restore.
    #[track_caller]
    pub fn expect_gone_after_dump(&mut self) {
        let exit = self.wait_exit(Duration::from_secs(30));
        assert!(
            matches!(exit, Exit::Signal(_)),
            "{} (pid {}) should have been killed by the dump, but {exit:?}\nlog:\n{}",
            self.name,
            self.pid,
            self.log_text()
        );
        assert_no_process(self.pid, "after dump");
        // They were killed too; they are, or soon become, our zombies.
        let deadline = Instant::now() + Duration::from_secs(30);
        for &pid in &self.descendants {
            reap_when_gone(pid, deadline);
            assert_no_process(pid, "after dump (a descendant)");
        }
    }

    /// Whether `pid`, one of the descendants the workload named, is still
    /// one of its processes: our descendant with the workload's name.
    fn owns(&self, pid: i32) -> bool {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name: String = self.name.chars().take(15).collect();
        comm.trim_end() == name && descends_from_us(pid)
    }

    /// Marks the pid as ours again (after a restore recreated it).
    pub fn rearm(&mut self) {
        self.armed = true;
    }

    /// The process ended and was reaped by its own parent (an `rcr restore`
    /// that stayed to serve it): the pid is no longer ours to kill or reap.
    pub fn reaped_elsewhere(&mut self) {
        self.armed = false;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let ours: Vec<i32> = self
            .descendants
            .iter()
            .copied()
            .filter(|&p| self.owns(p))
            .collect();
        if self.armed {
            send_signal(self.pid, libc::SIGKILL);
        }
        for &pid in &ours {
            send_signal(pid, libc::SIGKILL);
        }
        if self.armed {
            let _ = try_wait_pid(self.pid, Duration::from_secs(10));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in ours {
            reap_when_gone(pid, deadline);
        }
    }
}

/// The pids on the `descendants` line of a ready file.
fn parse_descendants(ready: &str) -> Vec<i32> {
    ready
        .lines()
        .find_map(|l| l.strip_prefix(DESCENDANTS))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `rcr dump --tree <pid> -D <img> [extra]`, asserting success; without
/// `--leave-running` also asserts the workload is gone afterwards.
#[track_caller]
pub fn dump(dir: &TestDir, w: &mut Workload, img: &Path, extra: &[&str]) {
    let pid = w.pid.to_string();
    let mut args: Vec<&OsStr> = vec![
        "dump".as_ref(),
        "--tree".as_ref(),
        pid.as_ref(),
        "-D".as_ref(),
        img.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    run_rcr(dir, &args).assert_success();
    if extra.contains(&"--leave-running") {
        assert!(
            w.is_running(),
            "{} (pid {}) should still run after dump --leave-running",
            w.name,
            w.pid
        );
    } else {
        w.expect_gone_after_dump();
    }
}

/// `rcr restore -D <img>`, asserting success, that the printed pid is the
/// workload's and that the process runs.
#[track_caller]
pub fn restore(dir: &TestDir, w: &mut Workload, img: &Path) {
    restore_with(dir, w, img, &[], &[]);
}

/// [`restore`] behind `wrapper` with `extra` arguments; returns the run.
#[track_caller]
pub fn restore_with(
    dir: &TestDir,
    w: &mut Workload,
    img: &Path,
    wrapper: &[&OsStr],
    extra: &[&str],
) -> RcrRun {
    assert_no_process(w.pid, "before restore");
    for &pid in &w.descendants {
        assert_no_process(pid, "before restore (a descendant)");
    }
    let mut args: Vec<&OsStr> = vec!["restore".as_ref(), "-D".as_ref(), img.as_os_str()];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    let run = run_rcr_with(dir, wrapper, &args, RCR_TIMEOUT);
    // From here a process with this pid may be ours again.
    w.rearm();
    run.assert_success();
    assert_eq!(
        run.printed_pid(),
        Some(w.pid),
        "restore should print the original pid alone on a line: {run:?}"
    );
    assert!(
        w.is_running(),
        "restored {} (pid {}) is not running (state {:?})\nverdict: {:?}\nlog:\n{}",
        w.name,
        w.pid,
        proc_state(w.pid),
        w.result_text(),
        w.log_text()
    );
    run
}

/// The common scenario: start the workload, wait ready, let it settle,
/// then `cycles` times dump (killing it) and restore, then check it.
#[track_caller]
pub fn roundtrip(
    name: &str,
    program: &Path,
    pre_args: &[&OsStr],
    params: &[&str],
    cycles: usize,
    settle: Duration,
) {
    let dir = TestDir::new(name);
    let mut w = Workload::spawn(&dir, program, pre_args, params);
    w.wait_ready();
    std::thread::sleep(settle);
    for cycle in 0..cycles {
        let img = dir.join(&format!("img-{cycle}"));
        dump(&dir, &mut w, &img, &[]);
        restore(&dir, &mut w, &img);
        // Each image can be large: keep at most one on disk.
        let _ = fs::remove_dir_all(&img);
    }
    w.finish_ok();
}

/// Copies a flat directory (an image dir) file by file.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for name in list_dir(from) {
        let src = from.join(&name);
        if src.is_file() {
            fs::copy(&src, to.join(&name))
                .unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
    }
}

/// The summed proportional set size (`Pss` of /proc/PID/smaps_rollup) of
/// `pids`, in bytes: memory shared by several counts once in total.
pub fn pss_bytes(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_else(|e| panic!("smaps_rollup of pid {pid}: {e}"));
            let kib: u64 = rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no Pss in smaps_rollup of pid {pid}"));
            kib * 1024
        })
        .sum()
}
