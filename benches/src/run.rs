//! `rcr run` restore latency: a tree of N processes holding M MiB each is
//! started under `rcr run --image DIR`, checkpointed with `rcr checkpoint
//! DIR`, and restored by a second `rcr run`, as root, as a plain user
//! running a copy of rcr with file capabilities, and as a plain user
//! running one with none (the user-namespace path); plain `rcr restore`
//! of the same workload as root beside it.
//!
//! Two times per restore: the engine's own restore time, which `rcr run`
//! reports on stderr once the tree runs again (`rcr run: restored ...`),
//! and the wall time from starting `rcr run` until that report, which
//! adds the exec, the namespaces and reading the images' inventory. The
//! restored tree is then woken and must find its memory intact.

use rcr_tests::harness::{run_rcr, spawn_retrying, Exit, TestDir};
use rcr_tests::rcr_run::{wait_for_log, Run};
use rcr_tests::unpriv::{capped_copy, needed_caps, TestUser};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Who runs `rcr run`.
#[derive(Clone, Copy)]
enum Who {
    Root,
    CappedUser,
    PlainUser,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Root => "rcr run, root",
            Who::CappedUser => "rcr run, user, cap_checkpoint_restore",
            Who::PlainUser => "rcr run, user, no capability (userns)",
        }
    }
}

/// The release `rcr` next to this benchmark.
fn rcr_release() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let rcr = exe.with_file_name("rcr");
    assert!(
        rcr.is_file(),
        "{} not found: build it first (`cargo build --release -p rcr`)",
        rcr.display()
    );
    rcr
}

/// A directory whose commands run as `who`, with the rcr they run.
fn dir_for(who: Who, user: &TestUser) -> TestDir {
    let mut dir = TestDir::new("bench-run");
    let rcr = match who {
        // Root runs the release rcr as it is (uid 0 leaves it root's).
        Who::Root => (0, rcr_release()),
        Who::CappedUser => (
            user.uid,
            capped_copy(&rcr_release(), &dir.join("rcr-capped"), needed_caps()),
        ),
        Who::PlainUser => (
            user.uid,
            capped_copy(&rcr_release(), &dir.join("rcr-plain"), 0),
        ),
    };
    dir.run_as(rcr.0, rcr.1);
    dir
}

/// One start, checkpoint and timed restore under `rcr run`; returns the
/// engine's restore time and the wall time until `rcr run` reported it.
fn one(dir: &TestDir, workload: &[String]) -> (f64, f64) {
    let images = dir.join("images");
    // A fresh start each time: no checkpoint, no earlier ready line.
    let _ = std::fs::remove_dir_all(&images);
    let _ = std::fs::remove_file(dir.join("run.log"));
    let exe = std::env::current_exe().expect("own path");
    let mut command = vec![exe.to_str().expect("a UTF-8 path")];
    command.extend(workload.iter().map(String::as_str));
    let mut first = Run::start(dir, &images, &[], &command);
    // The workload says ready on its stdout, rcr run's log.
    wait_for_log(dir, "ready\n");
    run_rcr(dir, &["checkpoint".as_ref(), images.as_os_str()]).assert_success();
    assert_eq!(first.wait(), Exit::Code(0), "rcr run after a checkpoint");

    let mut cmd = Command::new(dir.rcr());
    dir.as_user(&mut cmd);
    cmd.arg("run")
        .arg("--image")
        .arg(&images)
        .args(["--", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    #[allow(clippy::zombie_processes)]
    let mut child = spawn_retrying(&mut cmd);
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    let report = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            panic!(
                "rcr run ended without restoring: {}",
                std::fs::read_to_string(dir.join("run.log")).unwrap_or_default()
            );
        }
        if let Some(r) = line.strip_prefix("rcr run: restored ") {
            break r.to_string();
        }
    };
    let wall_s = t.elapsed().as_secs_f64();
    let engine_s = report
        .rsplit_once(" in ")
        .and_then(|(_, ms)| ms.trim().strip_suffix(" ms")?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in the report {report:?}"))
        / 1e3;
    let mut second = Run::attach(child.id() as i32, &dir.join("run.log"));
    assert!(rcr_tests::harness::send_signal(
        second.program,
        libc::SIGUSR1
    ));
    let exit = second.wait();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(
        exit,
        Exit::Code(0),
        "the restored tree found its state changed: {rest}"
    );
    (engine_s, wall_s)
}

/// `--run`: the table of restore times, median of `runs`.
pub fn run(procs: usize, mib: usize, runs: usize, base: &Path) {
    crate::tree::become_subreaper();
    let workload = vec!["--tree-workload".into(), procs.to_string(), mib.to_string()];
    let plain: Vec<f64> = (0..runs)
        .map(|run| {
            let dir = base.join(format!("rcr-bench-run-{}-{run}", std::process::id()));
            let r = crate::tree::round_trip(&workload, &dir, rcr_engine::PidChoice::Auto);
            r.restore_s
        })
        .collect();
    let user = TestUser::new("bench");
    println!(
        "rcr benchmark: restore of {procs} processes x {mib} MiB under rcr run, median of {runs}"
    );
    println!(
        "{:<44}{:>12}{:>16}",
        "restore by", "restore", "until reported"
    );
    let plain = crate::median(plain) * 1e3;
    println!(
        "{:<44}{:>12}{:>16}",
        "rcr restore, root (in process)",
        format!("{plain:.1} ms"),
        "-"
    );
    let mut rows = vec![serde_json::json!({"by": "rcr restore, root", "restore_ms": plain})];
    for who in [Who::Root, Who::CappedUser, Who::PlainUser] {
        let dir = dir_for(who, &user);
        let times: Vec<(f64, f64)> = (0..runs).map(|_| one(&dir, &workload)).collect();
        let engine = crate::median(times.iter().map(|t| t.0)) * 1e3;
        let wall = crate::median(times.iter().map(|t| t.1)) * 1e3;
        println!(
            "{:<44}{:>12}{:>16}",
            who.name(),
            format!("{engine:.1} ms"),
            format!("{wall:.1} ms")
        );
        rows.push(serde_json::json!({"by": who.name(), "restore_ms": engine, "wall_ms": wall}));
    }
    println!(
        "{}",
        serde_json::json!({"processes": procs, "mib": mib, "runs": runs, "run": rows})
    );
}
