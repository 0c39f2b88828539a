//! CPU features: a checkpoint whose CPU had features this host lacks is
//! refused by name (restored with a warning under `--cpu-check none`);
//! `rcr cpu --json` reads back as a profile; `--cpu-profile` either really
//! masks CPUID (where CPUID faulting exists) or fails naming ENODEV.

use rcr_images::pb;
use rcr_tests::harness::{
    assert_no_process, copy_dir, dump, rcr_bin, run_rcr, TestDir, Workload, EXIT_TIMEOUT,
};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");
const CPUID: &str = env!("CARGO_BIN_EXE_wl_cpuid");

/// Where each candidate feature lives: (name, CPUID.7.0 register, bit), in
/// EBX (`false`) or EDX (`true`).
const RICH: &[(&str, bool, u32)] = &[
    ("amx_tile", true, 24),
    ("avx512f", false, 16),
    ("avx512_fp16", true, 23),
    ("amx_int8", true, 25),
];

/// This host's `rcr cpu --json`, optionally through a profile.
fn cpu_json(dir: &TestDir, profile: Option<&str>) -> serde_json::Value {
    let mut args: Vec<&OsStr> = vec!["cpu".as_ref(), "--json".as_ref()];
    if let Some(p) = profile {
        args.extend([OsStr::new("--profile"), OsStr::new(p)]);
    }
    let run = run_rcr(dir, &args);
    run.assert_success();
    serde_json::from_str(&run.stdout).expect("rcr cpu --json prints JSON")
}

fn features(v: &serde_json::Value) -> Vec<String> {
    v["features"]
        .as_array()
        .expect("a features list")
        .iter()
        .map(|f| f.as_str().expect("names").to_string())
        .collect()
}

fn restore_args<'a>(img: &'a Path, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec!["restore".as_ref(), "-D".as_ref(), img.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    args
}

#[test]
fn restore_names_features_this_cpu_lacks_and_none_only_warns() {
    let dir = TestDir::new("cpu-missing");
    let host = features(&cpu_json(&dir, None));
    let claim: Vec<&(&str, bool, u32)> = RICH
        .iter()
        .filter(|(n, _, _)| !host.iter().any(|h| h == n))
        .take(2)
        .collect();
    assert!(!claim.is_empty(), "this host has every one of {RICH:?}");

    let mut w = Workload::spawn(&dir, Path::new(IDLE), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    let inv_path = img.join("inventory.img");
    let mut inv: pb::Inventory = rcr_images::read(&inv_path).expect("read inventory");
    let cpu = inv.cpu.as_mut().expect("the inventory records the CPU");
    let leaf7 = cpu
        .leaves
        .iter_mut()
        .find(|l| (l.leaf, l.subleaf) == (7, 0))
        .expect("leaf 7 recorded");
    for &&(_, edx, bit) in &claim {
        *(if edx { &mut leaf7.edx } else { &mut leaf7.ebx }) |= 1 << bit;
    }
    rcr_images::write(&inv_path, &inv).expect("write inventory");
    let names: Vec<&str> = claim.iter().map(|(n, _, _)| *n).collect();

    let run = run_rcr(&dir, &restore_args(&img, &[]));
    run.assert_failure(&names);
    assert_no_process(w.pid, "after a restore refused for CPU features");
    let strict = run_rcr(&dir, &restore_args(&img, &["--cpu-check", "strict"]));
    strict.assert_failure(&names);
    assert_no_process(w.pid, "after a strict refusal");

    let pristine = dir.join("warned");
    copy_dir(&img, &pristine);
    let run = run_rcr(&dir, &restore_args(&pristine, &["--cpu-check", "none"]));
    w.rearm();
    run.assert_success();
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("rcr: warning:"))
        .unwrap_or_else(|| panic!("no warning on stderr: {run:?}"));
    for n in &names {
        assert!(warning.contains(n), "the warning lacks {n}: {warning}");
    }
    assert_eq!(run.printed_pid(), Some(w.pid));
    w.finish_ok();
}

#[test]
fn cpu_json_reads_back_as_a_profile() {
    let dir = TestDir::new("cpu-json");
    let host = cpu_json(&dir, None);
    let file = dir.join("host.json");
    std::fs::write(&file, host.to_string()).expect("write host.json");
    let file = file.to_str().expect("utf-8 path");
    assert_eq!(features(&cpu_json(&dir, Some(file))), features(&host));

    let v2 = features(&cpu_json(&dir, Some("x86-64-v2")));
    let both = features(&cpu_json(&dir, Some(&format!("{file},x86-64-v2"))));
    assert_eq!(both, v2);
    for hidden in ["avx", "avx2", "avx512f"] {
        assert!(!v2.iter().any(|f| f == hidden), "{hidden} under x86-64-v2");
    }
    assert!(v2.iter().any(|f| f == "sse4_2"), "x86-64-v2 keeps sse4_2");

    let list = dir.join("list");
    std::fs::write(&list, "sse2\nno_such_feature\n").expect("write list");
    let run = run_rcr(
        &dir,
        &["cpu".as_ref(), "--profile".as_ref(), list.as_os_str()],
    );
    run.assert_failure(&["no_such_feature", "line 2"]);
}

/// With CPUID faulting, the restored program runs under x86-64-v2 and its
/// CPUID answers say so; without it, the restore is refused naming ENODEV
/// and nothing is left behind. Which one ran is printed.
#[test]
fn cpu_profile_masks_cpuid_or_is_refused_without_faulting() {
    let dir = TestDir::new("cpu-profile");
    let faulting = cpu_json(&dir, None)["cpuid_faulting"] == true;
    let mut w = Workload::spawn(&dir, Path::new(CPUID), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);

    let hwcaps = run_rcr(
        &dir,
        &restore_args(
            &img,
            &[
                "--cpu-profile",
                "x86-64-v2",
                "--cpu-profile-mode",
                "glibc-hwcaps",
            ],
        ),
    );
    hwcaps.assert_failure(&["glibc-hwcaps", "already"]);
    assert_no_process(w.pid, "after a refused glibc-hwcaps restore");

    if !faulting {
        println!("CPUID faulting is not available here: checking the refusal, not masking");
        let run = run_rcr(&dir, &restore_args(&img, &["--cpu-profile", "x86-64-v2"]));
        run.assert_failure(&["ARCH_SET_CPUID", "ENODEV"]);
        assert_no_process(w.pid, "after a restore refused for lack of CPUID faulting");
        return;
    }
    println!("CPUID faulting is available: restoring under x86-64-v2 and checking CPUID");
    let mut rcr = Command::new(rcr_bin())
        .args(restore_args(&img, &["--cpu-profile", "x86-64-v2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rcr restore");
    w.rearm();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !w.is_running() {
        assert!(Instant::now() < deadline, "the restored workload never ran");
        if let Some(status) = rcr.try_wait().expect("poll rcr") {
            let out = rcr.wait_with_output().expect("rcr output");
            panic!("rcr restore ended ({status}) before the workload ran: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // rcr stays the workload's parent and tracer: it reaps it at the end.
    assert!(rcr_tests::harness::send_signal(w.pid, libc::SIGUSR1));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = rcr.try_wait().expect("poll rcr") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = rcr.kill();
            let _ = rcr.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    w.reaped_elsewhere();
    assert!(
        status.is_some_and(|s| s.success()),
        "rcr restore serving the profile ended with {status:?}"
    );
    let verdict = w.verdict().expect("the workload wrote a verdict");
    assert_eq!(verdict.line, "OK", "CPUID answers under x86-64-v2");
}
