//! rcr's benchmark binary: dumps and restores a process holding N MiB of
//! patterned anonymous memory through the engine, verifies every byte after
//! restore, and prints dump/restore throughput, freeze time and image size
//! beside memcpy bandwidth measured in the same run, as a table and JSON.
//!
//! `rcr-bench [--mib N] [--runs R] [--dir DIR]` (defaults: 1024 MiB, 3 runs,
//! a directory under /tmp). `rcr-bench --trees [--runs R] [--dir DIR]`
//! measures trees of 1 to 16 processes and a 64-thread process instead.
//! `--workload`, `--tree-workload` and `--thread-workload` are the workloads.

mod tree;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

pub(crate) const MIB: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(mib) = flag("--workload") {
        workload(mib.parse().expect("--workload MiB"));
    }
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .expect("a number argument")
    };
    if let Some(i) = args.iter().position(|a| a == "--tree-workload") {
        tree::tree_workload(number(i + 1), number(i + 2));
    }
    if let Some(i) = args.iter().position(|a| a == "--thread-workload") {
        tree::thread_workload(number(i + 1));
    }
    let mib: usize = flag("--mib").map_or(1024, |s| s.parse().expect("--mib N"));
    let runs: usize = flag("--runs").map_or(3, |s| s.parse().expect("--runs N"));
    let base = PathBuf::from(flag("--dir").unwrap_or_else(|| "/tmp".into()));
    if args.iter().any(|a| a == "--trees") {
        trees(runs, &base);
        return;
    }
    let memcpy = memcpy_gbps(mib.min(1024));
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = base.join(format!("rcr-bench-{}-{run}", std::process::id()));
        results.push(one_run(mib, &dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let median = |f: fn(&RunResult) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let bytes = (mib * MIB) as f64;
    let dump_s = median(|r| r.dump_s);
    let restore_s = median(|r| r.restore_s);
    let freeze_ms = median(|r| r.freeze_s) * 1e3;
    let image = results[0].image_bytes;
    println!("rcr benchmark: 1 process, {mib} MiB anonymous memory, median of {runs}");
    println!(
        "{:<28}{:>12}",
        "memcpy (same run)",
        format!("{memcpy:.2} GB/s")
    );
    println!(
        "{:<28}{:>12}",
        "dump",
        format!("{:.2} GB/s", bytes / dump_s / 1e9)
    );
    println!(
        "{:<28}{:>12}",
        "dump time",
        format!("{:.1} ms", dump_s * 1e3)
    );
    println!("{:<28}{:>12}", "freeze time", format!("{freeze_ms:.1} ms"));
    println!(
        "{:<28}{:>12}",
        "restore",
        format!("{:.2} GB/s", bytes / restore_s / 1e9)
    );
    println!(
        "{:<28}{:>12}",
        "restore time",
        format!("{:.1} ms", restore_s * 1e3)
    );
    println!(
        "{:<28}{:>12}",
        "image size",
        format!("{:.1} MiB", image as f64 / MIB as f64)
    );
    let json = serde_json::json!({
        "mib": mib, "runs": runs, "memcpy_gbps": memcpy,
        "dump_gbps": bytes / dump_s / 1e9, "dump_ms": dump_s * 1e3, "freeze_ms": freeze_ms,
        "restore_gbps": bytes / restore_s / 1e9, "restore_ms": restore_s * 1e3,
        "image_bytes": image,
    });
    println!("{json}");
}

/// Restore and dump latency of trees and of a many-threaded process.
fn trees(runs: usize, base: &std::path::Path) {
    let memcpy = memcpy_gbps(256);
    println!("rcr benchmark: trees and threads, median of {runs}; memcpy {memcpy:.2} GB/s");
    println!("{:<34}{:>12}{:>12}", "workload", "dump", "restore");
    let mut rows = Vec::new();
    let mut configs: Vec<(String, Vec<String>)> = Vec::new();
    for mib in [16usize, 128] {
        for procs in [1usize, 2, 4, 8, 16] {
            configs.push((
                format!("{procs} processes x {mib} MiB"),
                vec!["--tree-workload".into(), procs.to_string(), mib.to_string()],
            ));
        }
    }
    configs.push((
        "1 process, 64 threads".into(),
        vec!["--thread-workload".into(), "64".into()],
    ));
    for (name, args) in configs {
        let mut dumps = Vec::new();
        let mut restores = Vec::new();
        for run in 0..runs {
            let dir = base.join(format!("rcr-bench-tree-{}-{run}", std::process::id()));
            let (d, r) = tree::round_trip(&args, &dir);
            dumps.push(d);
            restores.push(r);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2] * 1e3
        };
        let (d, r) = (median(&mut dumps), median(&mut restores));
        println!(
            "{name:<34}{:>12}{:>12}",
            format!("{d:.1} ms"),
            format!("{r:.1} ms")
        );
        rows.push(serde_json::json!({"workload": name, "dump_ms": d, "restore_ms": r}));
    }
    println!(
        "{}",
        serde_json::json!({"memcpy_gbps": memcpy, "pid_strategy": "clone3 set_tid", "trees": rows})
    );
}

struct RunResult {
    dump_s: f64,
    restore_s: f64,
    freeze_s: f64,
    image_bytes: u64,
}

fn one_run(mib: usize, dir: &std::path::Path) -> RunResult {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["--workload", &mib.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start workload");
    let pid = child.id() as i32;
    // The workload's stdout is a pipe, which cannot be checkpointed yet: it
    // says ready, then swaps it for /dev/null; end of file means both happened.
    let mut ready = Vec::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut ready)
        .expect("workload ready");
    assert_eq!(ready, b"ready\n", "workload did not start");
    let t = Instant::now();
    let stats = rcr_engine::dump(&rcr_engine::DumpOptions {
        pid,
        dir: dir.to_path_buf(),
        leave_running: false,
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let dump_s = t.elapsed().as_secs_f64();
    // The engine, as tracer and here also parent, may have reaped it already.
    let _ = child.wait();
    let t = Instant::now();
    let restored = rcr_engine::restore(&rcr_engine::RestoreOptions {
        dir: dir.to_path_buf(),
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restore_s = t.elapsed().as_secs_f64();
    // SAFETY: signals the process we just restored (our child again).
    unsafe { libc::kill(restored.pid, libc::SIGUSR1) };
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(restored.pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the restored workload found its memory changed (status {status:#x})"
    );
    RunResult {
        dump_s,
        restore_s,
        freeze_s: stats.freeze_seconds,
        image_bytes: stats.image_bytes,
    }
}

static GO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    GO.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub(crate) fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

/// Fills `mib` MiB with a pattern, says "ready\n", waits for SIGUSR1, then
/// exits 0 if every word is still right.
fn workload(mib: usize) -> ! {
    // Descriptors inherited from whoever started the benchmark are not
    // part of the workload.
    // SAFETY: closes descriptors this process does not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let words = mib * MIB / 8;
    let mut mem: Vec<u64> = (0..words).map(pattern).collect();
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    std::io::stdout().write_all(b"ready\n").expect("say ready");
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    // SAFETY: replaces fd 1 with /dev/null.
    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    drop(null);
    while !GO.load(std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: pause just waits for a signal.
        unsafe { libc::pause() };
    }
    let ok = mem.iter().enumerate().all(|(i, &w)| w == pattern(i));
    mem.clear();
    std::process::exit(if ok { 0 } else { 1 });
}

/// memcpy into an already-faulted destination, GB/s.
fn memcpy_gbps(mib: usize) -> f64 {
    let src = vec![0x5au8; mib * MIB];
    let mut dst = vec![0u8; mib * MIB];
    dst.copy_from_slice(&src);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (mib * MIB) as f64 / best / 1e9
}
