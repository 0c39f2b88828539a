//! `rcr` SIGKILLed in the middle of a dump must leave the process it was
//! dumping running as before: the parasite finds its control socket at EOF
//! and returns the task to where it was seized.

use rcr_tests::harness::{proc_state, rcr_bin, send_signal, TestDir, Workload, RCR_TIMEOUT};
use rcr_tests::maps;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WL: &str = env!("CARGO_BIN_EXE_wl_memory");
/// Big enough that the page dump takes a good part of a second.
const MIB: &str = "512";
/// Dumps to try before giving up on catching one with the parasite in place.
const ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(2);

/// True while the task's instruction pointer lies in the parasite mapping:
/// it runs (or is blocked in a syscall of) parasite code, with the frame
/// that returns it to its own state already written.
fn in_parasite(pid: i32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let Some(area) = maps::parse(&text)
        .into_iter()
        .find(|m| m.name.contains("rcr-parasite"))
    else {
        return false;
    };
    // "NR ARGS... SP PC" in a syscall, "-1 SP PC" stopped outside one,
    // "running" otherwise.
    let Ok(syscall) = fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return false;
    };
    syscall
        .split_whitespace()
        .last()
        .and_then(|pc| usize::from_str_radix(pc.trim_start_matches("0x"), 16).ok())
        .is_some_and(|pc| (area.start..area.end).contains(&pc))
}

/// Waits (bounded) until `pid` is in a stop.
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "rcr {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `rcr dump --leave-running` of `pid`, and SIGKILLs it at a moment
/// when the parasite is in place. To choose that moment without a race,
/// rcr is stopped (SIGSTOP) for each look. False if the dump ended first.
fn kill_rcr_inside_dump(dir: &TestDir, pid: i32, attempt: usize) -> bool {
    let img = dir.join(&format!("img-{attempt}"));
    let mut rcr: Child = Command::new(rcr_bin())
        .arg("dump")
        .arg("--tree")
        .arg(pid.to_string())
        .arg("-D")
        .arg(&img)
        .arg("--leave-running")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rcr");
    let rcr_pid = rcr.id() as i32;
    let deadline = Instant::now() + RCR_TIMEOUT;
    loop {
        if let Some(status) = rcr.try_wait().expect("wait for rcr") {
            assert!(status.success(), "rcr dump failed: {status}");
            return false;
        }
        if send_signal(rcr_pid, libc::SIGSTOP) {
            wait_stopped(rcr_pid);
            if in_parasite(pid) {
                rcr.kill().expect("SIGKILL rcr");
                rcr.wait().expect("reap rcr");
                return true;
            }
            send_signal(rcr_pid, libc::SIGCONT);
        }
        if Instant::now() >= deadline {
            let _ = rcr.kill();
            let _ = rcr.wait();
            panic!("rcr dump still running after {RCR_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

fn fds(pid: i32) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .map(|e| {
            e.expect("fd entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn tracer_pid(pid: i32) -> i32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("TracerPid line")
}

#[test]
fn workload_runs_on_when_rcr_is_killed_mid_dump() {
    let dir = TestDir::new("rcr-killed");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[MIB]);
    w.wait_ready();
    let fds_before = fds(w.pid);
    let caught = (0..ATTEMPTS).any(|attempt| kill_rcr_inside_dump(&dir, w.pid, attempt));
    assert!(
        caught,
        "{ATTEMPTS} dumps ended before the parasite was seen in place"
    );
    // rcr is reaped, so the kernel has detached the workload.
    assert_eq!(tracer_pid(w.pid), 0);
    // The parasite closes its descriptors on its own time, then returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(w.pid) != fds_before {
        assert!(w.is_running(), "workload died with rcr");
        assert!(
            Instant::now() < deadline,
            "parasite descriptors left behind: {:?}, was {fds_before:?}",
            fds(w.pid)
        );
        std::thread::sleep(POLL);
    }
    w.finish_ok();
}
