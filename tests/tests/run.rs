//! `rcr run` / `rcr checkpoint`: a program started fresh in its own pid
//! namespace, checkpointed (which ends it and `rcr run`), then restored by
//! a second `rcr run` with its namespace pid and its state intact; as root
//! and as a plain user (who gets a user namespace).

use rcr_engine::privilege::CAP_CHECKPOINT_RESTORE;
use rcr_tests::harness::{chown, run_rcr, send_signal, spawn_retrying, Exit, TestDir};
use rcr_tests::rcr_run::{wait_for_log_times, wait_ready, Run};
use rcr_tests::unpriv::{capped_rcr, TestUser};
use std::process::{Command, Stdio};

const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");
/// A tree with shared anonymous memory, which a user's rcr, inside its own
/// user namespace, reads through task memory (map_files needs privilege).
const TREE: &str = env!("CARGO_BIN_EXE_wl_tree");

/// `program` (a workload) under `rcr run`, `cycles` times checkpointed and
/// restored by the next `rcr run`.
fn run_checkpoint_and_restore(dir: &TestDir, program: &str, cycles: usize) {
    let images = dir.join("images");
    let ready = dir.join("ready");
    let result = dir.join("result");
    let command = [program, ready.to_str().unwrap(), result.to_str().unwrap()];
    // The program is init's child while it is still being restored: it
    // is woken once rcr run reports it running (what `rcr-bench --run`
    // times restores by).
    let report = format!(
        "rcr run: restored {} (pid 2) in ",
        images.join("checkpoint").display()
    );

    let mut run = Run::start(dir, &images, &[], &command);
    wait_ready(dir);
    assert_eq!(run.namespace_pid(), Some(2), "a fresh program is pid 2");
    for cycle in 1..=cycles {
        let ck = run_rcr(dir, &["checkpoint".as_ref(), images.as_os_str()]);
        ck.assert_success();
        let stats: serde_json::Value = serde_json::from_str(ck.stdout.trim()).expect("stats JSON");
        assert_eq!(stats["pid"], 2, "the image holds namespace pids: {stats}");
        assert_eq!(run.wait(), Exit::Code(0), "rcr run after a checkpoint");

        // The command is not started again: the checkpoint is restored.
        run = Run::start(dir, &images, &[], &["false"]);
        assert_eq!(run.namespace_pid(), Some(2), "restored with its saved pid");
        wait_for_log_times(dir, &report, cycle);
    }
    assert!(send_signal(run.program, libc::SIGUSR1));
    assert_eq!(run.wait(), Exit::Code(0), "the program's own exit status");
    let verdict = std::fs::read_to_string(&result).expect("verdict");
    assert_eq!(verdict, "OK\npid 2\n");
}

#[test]
fn run_checkpoint_and_run_again_as_root() {
    run_checkpoint_and_restore(&TestDir::new("run-root"), IDLE, 1);
}

#[test]
fn run_checkpoint_and_run_again_as_a_user() {
    let user = TestUser::new("run");
    let mut dir = TestDir::new("run-user");
    let rcr = capped_rcr(&dir, "rcr-capped", 1 << CAP_CHECKPOINT_RESTORE);
    dir.run_as(user.uid, rcr);
    run_checkpoint_and_restore(&dir, TREE, 2);
}

#[test]
fn run_forwards_sigterm_and_exits_with_the_programs_status() {
    let dir = TestDir::new("run-term");
    let mut run = Run::start(&dir, &dir.join("images"), &[], &["sleep", "1000"]);
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
