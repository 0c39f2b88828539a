//! rcr's benchmark binary: dumps and restores a process holding N MiB of
//! patterned anonymous memory through the engine, verifies every byte after
//! restore, and prints dump/restore throughput, freeze time and image size
//! beside memcpy bandwidth measured in the same run, as a table and JSON.
//!
//! `rcr-bench [--mib N] [--runs R] [--dir DIR]` (defaults: 1024 MiB, 3 runs,
//! a directory under /tmp). `rcr-bench --trees [--runs R] [--dir DIR]`
//! measures trees of 1 to 16 processes and a 64-thread process instead,
//! with the trees' RSS and PSS before the dump and after the restore (trees
//! whose children inherited their memory unwritten show it ballooning).
//! `--tree-workload N MIB`, `--cow-workload N MIB` and `--thread-workload N`
//! are the workloads. `rcr-bench --fds N [--runs R]` measures a process
//! holding N descriptors of mixed kinds (`--fds-workload N`).
//! `rcr-bench --tcp [N] [--runs R]` measures a tree of two processes
//! holding N established loopback TCP connections (default 1000), dumped
//! with `--tcp-established` (`--tcp-workload N`).
//! `rcr-bench --run [--procs N] [--mib M] [--runs R]` times the restore of
//! a tree of N processes x M MiB (default 8 x 16) under `rcr run` as root,
//! as a user with a capable copy of rcr and as one with none, beside plain
//! `rcr restore`.
//! `--pids set_tid|ns_last_pid|spin` restores pids only that way.

mod fds;
mod run;
mod tcp;
mod tree;

use std::path::PathBuf;
use std::time::Instant;

pub(crate) const MIB: usize = 1 << 20;

/// The word every workload keeps at index `i` of its memory.
pub(crate) fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .expect("a number argument")
    };
    if let Some(i) = args.iter().position(|a| a == "--tree-workload") {
        tree::tree_workload(number(i + 1), number(i + 2), false);
    }
    if let Some(i) = args.iter().position(|a| a == "--cow-workload") {
        tree::tree_workload(number(i + 1), number(i + 2), true);
    }
    if let Some(i) = args.iter().position(|a| a == "--fds-workload") {
        fds::fds_workload(number(i + 1));
    }
    if let Some(i) = args.iter().position(|a| a == "--tcp-workload") {
        tcp::tcp_workload(number(i + 1));
    }
    if let Some(i) = args.iter().position(|a| a == "--thread-workload") {
        tree::thread_workload(number(i + 1));
    }
    let mib: usize = flag("--mib").map_or(1024, |s| s.parse().expect("--mib N"));
    let runs: usize = flag("--runs").map_or(3, |s| s.parse().expect("--runs N"));
    let base = PathBuf::from(flag("--dir").unwrap_or_else(|| "/tmp".into()));
    let pids = flag("--pids").map_or(rcr_engine::PidChoice::Auto, |s| {
        rcr_engine::PidStrategy::parse(&s)
            .map(rcr_engine::PidChoice::Only)
            .expect("--pids set_tid|ns_last_pid|spin")
    });
    if let Some(n) = flag("--fds") {
        fds::fds(n.parse().expect("--fds N"), runs, &base);
        return;
    }
    if args.iter().any(|a| a == "--tcp") {
        let n = flag("--tcp").and_then(|s| s.parse().ok()).unwrap_or(1000);
        tcp::tcp(n, runs, &base);
        return;
    }
    if args.iter().any(|a| a == "--run") {
        let procs = flag("--procs").map_or(8, |s| s.parse().expect("--procs N"));
        let mib = flag("--mib").map_or(16, |s| s.parse().expect("--mib N"));
        run::run(procs, mib, runs, &base);
        return;
    }
    if args.iter().any(|a| a == "--trees") {
        trees(runs, &base, pids);
        return;
    }
    let memcpy = memcpy_gbps(mib.min(1024));
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = base.join(format!("rcr-bench-{}-{run}", std::process::id()));
        let args = ["--tree-workload".into(), "1".into(), mib.to_string()];
        results.push(tree::round_trip(&args, &dir, pids));
    }
    let median = |f: fn(&tree::RoundTrip) -> f64| median(results.iter().map(f));
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
fn trees(runs: usize, base: &std::path::Path, pids: rcr_engine::PidChoice) {
    tree::become_subreaper();
    let memcpy = memcpy_gbps(256);
    println!("rcr benchmark: trees and threads, median of {runs}; memcpy {memcpy:.2} GB/s");
    println!(
        "{:<44}{:>10}{:>10}{:>22}{:>22}",
        "workload", "dump", "restore", "RSS before -> after", "PSS before -> after"
    );
    let mut rows = Vec::new();
    let mut strategy = None;
    let mut configs: Vec<(String, Vec<String>)> = Vec::new();
    for mib in [16usize, 128] {
        for procs in [1usize, 2, 4, 8, 16] {
            configs.push((
                format!("{procs} processes x {mib} MiB"),
                vec!["--tree-workload".into(), procs.to_string(), mib.to_string()],
            ));
        }
    }
    for procs in [2usize, 8] {
        configs.push((
            format!("{procs} processes sharing 64 MiB (inherited)"),
            vec!["--cow-workload".into(), procs.to_string(), "64".into()],
        ));
    }
    configs.push((
        "1 process, 64 threads".into(),
        vec!["--thread-workload".into(), "64".into()],
    ));
    for (name, args) in configs {
        let mut dumps = Vec::new();
        let mut restores = Vec::new();
        let mut memory = None;
        for run in 0..runs {
            let dir = base.join(format!("rcr-bench-tree-{}-{run}", std::process::id()));
            let r = tree::round_trip(&args, &dir, pids);
            strategy = Some(r.pid_strategy);
            dumps.push(r.dump_s);
            restores.push(r.restore_s);
            memory = Some((r.before, r.after));
        }
        let (before, after) = memory.unwrap_or_default();
        let (d, r) = (median(dumps) * 1e3, median(restores) * 1e3);
        let mib = |b: u64| b as f64 / MIB as f64;
        println!(
            "{name:<44}{:>10}{:>10}{:>22}{:>22}",
            format!("{d:.1} ms"),
            format!("{r:.1} ms"),
            format!("{:.1} -> {:.1} MiB", mib(before.rss), mib(after.rss)),
            format!("{:.1} -> {:.1} MiB", mib(before.pss), mib(after.pss)),
        );
        rows.push(serde_json::json!({
            "workload": name, "dump_ms": d, "restore_ms": r,
            "rss_before_bytes": before.rss, "rss_after_bytes": after.rss,
            "pss_before_bytes": before.pss, "pss_after_bytes": after.pss,
        }));
    }
    println!(
        "{}",
        serde_json::json!({"memcpy_gbps": memcpy, "pid_strategy": strategy, "trees": rows})
    );
}

/// The median of some timings.
pub(crate) fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
