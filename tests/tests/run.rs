//! `rcr run` / `rcr checkpoint`: a program started fresh in its own pid
//! namespace, checkpointed (which ends it and `rcr run`), then restored by
//! a second `rcr run` with its namespace pid and its state intact; as root
//! and as a plain user (who gets a user namespace).

use rcr_engine::privilege::CAP_CHECKPOINT_RESTORE;
use rcr_tests::harness::{chown, run_rcr, send_signal, spawn_retrying, wait_pid, Exit, TestDir};
use rcr_tests::unpriv::{capped_rcr, TestUser};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");
const TIMEOUT: Duration = Duration::from_secs(120);

/// One `rcr run`, killed with everything in its namespace when dropped.
struct Run {
    outer: i32,
    init: i32,
    program: i32,
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Run {
    /// Starts `rcr run --image <images> -- <command>` and waits until its
    /// init has started or restored the program.
    fn start(dir: &TestDir, images: &Path, command: &[&str]) -> Run {
        let log = dir.join("run.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("run log");
        // The restored program opens it again, as whichever user runs it.
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("chmod run log");
        let mut cmd = Command::new(dir.rcr());
        dir.as_user(&mut cmd);
        cmd.arg("run")
            .arg("--image")
            .arg(images)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
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
                    std::fs::read_to_string(&log).unwrap_or_default()
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
    fn namespace_pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/proc/{}/status", self.program))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    }

    fn wait(&mut self) -> Exit {
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

fn wait_ready(dir: &TestDir) {
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(dir.join("ready")).is_ok_and(|s| s.starts_with("ready")) {
        assert!(Instant::now() < deadline, "program not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_checkpoint_and_restore(dir: &TestDir) {
    let images = dir.join("images");
    let ready = dir.join("ready");
    let result = dir.join("result");
    let command = [IDLE, ready.to_str().unwrap(), result.to_str().unwrap()];

    let mut first = Run::start(dir, &images, &command);
    wait_ready(dir);
    assert_eq!(first.namespace_pid(), Some(2), "a fresh program is pid 2");
    let ck = run_rcr(dir, &["checkpoint".as_ref(), images.as_os_str()]);
    ck.assert_success();
    let stats: serde_json::Value = serde_json::from_str(ck.stdout.trim()).expect("stats JSON");
    assert_eq!(stats["pid"], 2, "the image holds namespace pids: {stats}");
    assert_eq!(first.wait(), Exit::Code(0), "rcr run after a checkpoint");

    // The command is not started again: the checkpoint is restored.
    let mut second = Run::start(dir, &images, &["false"]);
    assert_eq!(
        second.namespace_pid(),
        Some(2),
        "restored with its saved pid"
    );
    assert!(send_signal(second.program, libc::SIGUSR1));
    assert_eq!(
        second.wait(),
        Exit::Code(0),
        "the program's own exit status"
    );
    let verdict = std::fs::read_to_string(&result).expect("verdict");
    assert_eq!(verdict, "OK\npid 2\n");
}

#[test]
fn run_checkpoint_and_run_again_as_root() {
    run_checkpoint_and_restore(&TestDir::new("run-root"));
}

#[test]
fn run_checkpoint_and_run_again_as_a_user() {
    let user = TestUser::new("run");
    let mut dir = TestDir::new("run-user");
    let rcr = capped_rcr(&dir, "rcr-capped", 1 << CAP_CHECKPOINT_RESTORE);
    dir.run_as(user.uid, rcr);
    run_checkpoint_and_restore(&dir);
}

#[test]
fn run_forwards_sigterm_and_exits_with_the_programs_status() {
    let dir = TestDir::new("run-term");
    let mut run = Run::start(&dir, &dir.join("images"), &["sleep", "1000"]);
    assert!(send_signal(run.outer, libc::SIGTERM));
    assert_eq!(run.wait(), Exit::Code(128 + libc::SIGTERM));
}

#[test]
fn run_says_when_the_restore_failed() {
    let mut dir = TestDir::new("run-bad");
    let images = dir.join("images");
    let checkpoint = images.join("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(checkpoint.join("inventory.img"), "not an image").unwrap();
    let user = TestUser::new("bad");
    dir.run_as(
        user.uid,
        capped_rcr(&dir, "rcr-capped", 1 << CAP_CHECKPOINT_RESTORE),
    );
    chown(&images, user.uid);
    let mut cmd = Command::new(dir.rcr());
    dir.as_user(&mut cmd);
    cmd.arg("run")
        .arg("--image")
        .arg(&images)
        .arg("--")
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = spawn_retrying(&mut cmd)
        .wait_with_output()
        .expect("rcr run");
    assert_eq!(
        out.status.code(),
        Some(rcr_engine::run::RUN_FAILED),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("restore failed"),
        "{out:?}"
    );
}
