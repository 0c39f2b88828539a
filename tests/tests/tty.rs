//! Terminals: a pseudo-terminal pair inside the tree (settings, window,
//! bytes queued both ways, the session it controls and its foreground
//! group), and a job of a shell restored onto the shell's terminal with
//! `--shell-job`.

use rcr_tests::fdops::{read_fd, write_fd};
use rcr_tests::harness::{
    become_subreaper, dump, proc_state, roundtrip, run_rcr, send_signal, spawn_retrying, wait_pid,
    TestDir, Workload,
};
use rcr_tests::ttyops::open_pty;
use rcr_tests::workload::WAKE_SIGNAL;
use std::ffi::OsStr;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WL: &str = env!("CARGO_BIN_EXE_wl_tty");

#[test]
fn pty_pair_survives_dump_and_restore() {
    roundtrip("tty", Path::new(WL), &[], &[], 1, Duration::ZERO);
}

/// A dump that leaves the tree running gives the queued bytes back.
#[test]
fn pty_pair_keeps_its_bytes_after_leave_running() {
    let dir = TestDir::new("tty-leave");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    dump(&dir, &mut w, &dir.join("img"), &["--leave-running"]);
    w.finish_ok();
}

/// Without rcr in between, every check passes.
#[test]
fn tty_workload_checks_itself() {
    let dir = TestDir::new("tty-plain");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    assert_eq!(w.descendants.len(), 2, "descendants: {:?}", w.descendants);
    w.finish_ok();
}

const SHELL: &str = env!("CARGO_BIN_EXE_wl_tty_shell");
const JOB: &str = env!("CARGO_BIN_EXE_wl_tty_job");
const STEP: Duration = Duration::from_secs(60);

/// What the shell's terminal shows: the test holds its master.
struct Screen {
    master: i32,
    text: String,
}

impl Screen {
    /// Reads the terminal until `find` matches what it shows; returns the
    /// match.
    #[track_caller]
    fn expect<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(found) = find(&self.text) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what}; it shows:\n{}",
                self.text
            );
            let mut p = libc::pollfd {
                fd: self.master,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor we own.
            if unsafe { libc::poll(&mut p, 1, 50) } == 1 {
                let bytes = read_fd(self.master, 4096).expect("read the pty master");
                self.text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    /// The number after `prefix` in a line the terminal shows.
    #[track_caller]
    fn number_after(&mut self, prefix: &str) -> i32 {
        self.expect(prefix, |t| {
            let at = t.find(prefix)? + prefix.len();
            let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
            t[at + digits.len()..]
                .starts_with(['\r', '\n', ' '])
                .then_some(())?;
            digits.parse().ok()
        })
    }

    /// Waits until the terminal shows `text` after its first `from` bytes.
    #[track_caller]
    fn shows(&mut self, from: usize, text: &str) {
        self.expect(text, |t| t[from..].contains(text).then_some(()))
    }

    fn type_in(&self, bytes: &[u8]) {
        assert_eq!(write_fd(self.master, bytes), bytes.len() as isize);
    }
}

/// Field `n` of /proc/PID/stat after the command name, as a number (1:
/// ppid, 5: the terminal's foreground group).
#[track_caller]
fn stat_field(pid: i32, n: usize) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat of the job");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    fields[n].parse().expect("a number")
}

/// Kills, on drop, the processes of this test that still run under their
/// own name.
struct Ours(Vec<(i32, &'static str)>);

impl Drop for Ours {
    fn drop(&mut self) {
        for &(pid, name) in &self.0 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name {
                send_signal(pid, libc::SIGKILL);
                wait_pid(pid, Duration::from_secs(10));
            }
        }
    }
}

/// A job of a shell, on the shell's terminal: refused without
/// `--shell-job`, dumped with it, restored by `rcr restore --shell-job`
/// run from that shell as a job: it comes back in the shell's session, its
/// group in the foreground, with its settings; ^Z stops it (job control),
/// and it reads what is typed.
#[test]
fn shell_job_comes_back_on_the_callers_terminal() {
    become_subreaper();
    let dir = TestDir::new("tty-shell-job");
    let (master, slave, _) = open_pty().expect("a pty");
    // SAFETY: the test owns the slave descriptor it just opened.
    let slave = unsafe { std::fs::File::from_raw_fd(slave) };
    let log = std::fs::File::create(dir.join("shell.log")).expect("shell log");
    let mut cmd = Command::new(SHELL);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave)
        .stderr(log);
    // SAFETY: between fork and exec: two syscalls, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut shell = spawn_retrying(&mut cmd);
    let mut ours = Ours(vec![(shell.id() as i32, "wl_tty_shell")]);
    let mut screen = Screen {
        master,
        text: String::new(),
    };
    let (ready, result) = (dir.join("ready"), dir.join("result"));
    screen.type_in(format!("fg {JOB} {} {}\n", ready.display(), result.display()).as_bytes());
    let job = screen.number_after("job: pid ");
    ours.0.push((job, "wl_tty_job"));
    let deadline = Instant::now() + STEP;
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the job never got ready");
        std::thread::sleep(Duration::from_millis(10));
    }

    let img = dir.join("img");
    let job_s = job.to_string();
    let dump = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["dump".as_ref(), "--tree".as_ref(), job_s.as_ref()];
        args.extend(["-D".as_ref(), img.as_os_str()]);
        args.extend(extra.iter().map(OsStr::new));
        run_rcr(&dir, &args)
    };
    dump(&[]).assert_failure(&["fd 0", "terminal outside the tree", "--shell-job"]);
    assert!(
        proc_state(job).is_some(),
        "a refused dump leaves the job running"
    );
    dump(&["--shell-job"]).assert_success();
    screen.shows(0, &format!("shell: {job} exited "));

    let restore = |extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec!["restore".as_ref(), "-D".as_ref(), img.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        run_rcr(&dir, &args)
    };
    restore(&[]).assert_failure(&["--shell-job"]);
    restore(&["--shell-job"]).assert_failure(&["stdin", "not a terminal"]);
    assert!(proc_state(job).is_none(), "refused restores create nothing");

    let rcr = dir.rcr();
    let from = screen.text.len();
    let last = format!(
        "last {} restore --shell-job -D {}\n",
        rcr.display(),
        img.display()
    );
    screen.type_in(last.as_bytes());
    // rcr prints the pid once the job runs, and stays its parent.
    screen.shows(from, &format!("{job}\r\n"));
    let rcr_pid = stat_field(job, 1);
    ours.0.push((rcr_pid, "rcr"));
    assert_eq!(
        stat_field(job, 5),
        job,
        "the job's group is the terminal's foreground"
    );
    send_signal(job, WAKE_SIGNAL);
    screen.shows(from, "job: fg ok");
    // ^Z on the terminal stops the foreground group, and rcr with it, as
    // the shell would see; continuing rcr (the shell's `fg`) continues it.
    screen.type_in(b"\x1a");
    for pid in [job, rcr_pid] {
        let deadline = Instant::now() + STEP;
        while proc_state(pid) != Some('T') {
            let state = proc_state(pid);
            assert!(
                Instant::now() < deadline,
                "^Z did not stop {pid}: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    send_signal(rcr_pid, libc::SIGCONT);
    screen.type_in(b"hello\n");
    screen.shows(from, "job: got hello");
    // rcr exits with the job's status, which the shell reports.
    screen.shows(from, &format!("shell: {rcr_pid} exited 0 "));
    let verdict = std::fs::read_to_string(&result).expect("the job's verdict");
    assert!(verdict.starts_with("OK"), "{verdict}\n{}", screen.text);
    shell.kill().expect("kill the shell");
    shell.wait().expect("reap the shell");
}
