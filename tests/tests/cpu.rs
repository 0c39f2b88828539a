//! CPU features: a checkpoint whose CPU had features this host lacks is
//! refused by name (restored with a warning under `--cpu-check none`);
//! `rcr cpu --json` reads back as a profile; `--cpu-profile` either really
//! masks CPUID (where CPUID faulting exists) or fails naming ENODEV.

use rcr_engine::run::RUN_FAILED;
use rcr_images::pb;
use rcr_tests::harness::{
    assert_no_process, copy_dir, dump, rcr_bin, run_rcr, send_signal, spawn_retrying, Exit,
    TestDir, Workload, EXIT_TIMEOUT,
};
use rcr_tests::rcr_run::{run_command, wait_ready, Run};
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
            &["--cpu-profile", "x86-64-v2", "--cpu-profile-mode", "glibc"],
        ),
    );
    hwcaps.assert_failure(&["glibc", "already"]);
    assert_no_process(w.pid, "after a refused glibc-mode restore");

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

/// `rcr run --image DIR --cpu-profile PROFILE [options] -- CMD` to its end,
/// with its exit status and stderr.
fn run_to_end(dir: &TestDir, images: &Path, options: &[&str], command: &[&str]) -> (i32, String) {
    let mut cmd = run_command(dir, images, options, command);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = spawn_retrying(&mut cmd)
        .wait_with_output()
        .expect("rcr run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The end-to-end masking test, which runs only where CPUID faulting
/// exists: under `rcr run --cpu-profile x86-64-v2` wl_cpuid execs itself and
/// sees masked CPUID answers, is checkpointed (the profile is recorded; a
/// plain `rcr restore` is refused) and, restored by `rcr run`, still sees
/// them. Elsewhere it checks the refusal of trap mode (status 125, naming
/// ARCH_SET_CPUID, cpuid_fault and the glibc mode) and of a restore under a
/// recorded profile, and prints that the masking itself was NOT run.
#[test]
fn run_cpu_profile_masks_across_exec_and_restore_only_where_faulting_exists() {
    let dir = TestDir::new("cpu-run");
    let images = dir.join("images");
    let ready = dir.join("ready");
    let result = dir.join("result");
    let command = [
        CPUID,
        ready.to_str().unwrap(),
        result.to_str().unwrap(),
        "exec",
    ];
    let profile = ["--cpu-profile", "x86-64-v2"];
    if cpu_json(&dir, None)["cpuid_faulting"] != true {
        let (code, out) = run_to_end(&dir, &images, &profile, &command);
        assert_eq!(code, RUN_FAILED, "{out}");
        for word in ["ARCH_SET_CPUID", "cpuid_fault", "--cpu-profile-mode glibc"] {
            assert!(out.contains(word), "the refusal lacks {word}: {out}");
        }
        assert!(!ready.exists(), "the program was started: {out}");
        recorded_profile_needs_faulting(&dir);
        println!(
            "CPUID faulting is not available here: checked the refusals; the masking itself \
             was NOT run on this host"
        );
        return;
    }
    println!("CPUID faulting is available: running wl_cpuid under x86-64-v2");
    let mut first = Run::start(&dir, &images, &profile, &command);
    wait_ready(&dir);
    let ck = run_rcr(&dir, &["checkpoint".as_ref(), images.as_os_str()]);
    ck.assert_success();
    assert_eq!(first.wait(), Exit::Code(0), "rcr run after a checkpoint");
    let checkpoint = images.join("checkpoint");
    let inv: pb::Inventory =
        rcr_images::read(&checkpoint.join("inventory.img")).expect("read inventory");
    assert_eq!(
        inv.cpu_profile.map(|p| p.spec),
        Some("x86-64-v2".to_string())
    );
    run_rcr(&dir, &restore_args(&checkpoint, &[])).assert_failure(&["x86-64-v2", "rcr run"]);

    let mut second = Run::start(&dir, &images, &[], &["false"]);
    assert!(send_signal(second.program, libc::SIGUSR1));
    assert_eq!(
        second.wait(),
        Exit::Code(0),
        "the restored program's status"
    );
    let verdict = std::fs::read_to_string(&result).expect("verdict");
    assert!(verdict.starts_with("OK\n"), "{verdict}");
}

/// A checkpoint that records a CPU profile is refused by a plain `rcr
/// restore`, and `rcr run` restores it only with CPUID faulting.
fn recorded_profile_needs_faulting(dir: &TestDir) {
    let mut w = Workload::spawn(dir, Path::new(IDLE), &[], &[]);
    w.wait_ready();
    let images = dir.join("recorded");
    let checkpoint = images.join("checkpoint");
    dump(dir, &mut w, &checkpoint, &[]);
    let inv_path = checkpoint.join("inventory.img");
    let mut inv: pb::Inventory = rcr_images::read(&inv_path).expect("read inventory");
    let v2 = rcr_engine::cpu::CpuProfile::parse("x86-64-v2").expect("x86-64-v2");
    inv.cpu_profile = Some(v2.record());
    rcr_images::write(&inv_path, &inv).expect("write inventory");
    run_rcr(dir, &restore_args(&checkpoint, &[])).assert_failure(&["x86-64-v2", "rcr run"]);
    assert_no_process(w.pid, "after a restore refused for its recorded profile");
    let (code, out) = run_to_end(dir, &images, &[], &["false"]);
    assert_eq!(code, RUN_FAILED, "{out}");
    assert!(out.contains("ARCH_SET_CPUID"), "{out}");
    w.reaped_elsewhere();
}

/// `--cpu-profile-mode glibc`: the program gets GLIBC_TUNABLES, which
/// glibc's loader itself (the program here) reads: x86-64-v3 libraries are
/// no longer "supported" under x86-64-v2 where this CPU has AVX2; the
/// warning says that CPUID itself is not masked.
#[test]
fn run_cpu_profile_glibc_mode_steers_glibc_and_says_what_it_does_not_mask() {
    let dir = TestDir::new("cpu-glibc");
    let ld = "/lib64/ld-linux-x86-64.so.2";
    let options = ["--cpu-profile", "x86-64-v2", "--cpu-profile-mode", "glibc"];
    let (code, out) = run_to_end(&dir, &dir.join("images"), &options, &[ld, "--help"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("glibc mode") && out.contains("CPUID instruction still reports"),
        "no warning of what is not masked: {out}"
    );
    let (_, plain) = run_to_end(&dir, &dir.join("plain"), &[], &[ld, "--help"]);
    let supported = |text: &str, level: &str| {
        text.lines()
            .any(|l| l.trim() == format!("{level} (supported, searched)"))
    };
    assert!(supported(&out, "x86-64-v2"), "{out}");
    assert!(!supported(&out, "x86-64-v3"), "{out}");
    if supported(&plain, "x86-64-v3") {
        println!("glibc's x86-64-v3 support was switched off by the tunables");
    } else {
        println!("this CPU is not x86-64-v3: the tunables had nothing to switch off");
    }
    let run = Run::start(&dir, &dir.join("env"), &options, &["sleep", "1000"]);
    let environ = std::fs::read(format!("/proc/{}/environ", run.program)).expect("environ");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(b"GLIBC_TUNABLES=glibc.cpu.hwcaps=")),
        "GLIBC_TUNABLES not in the program's environment"
    );
}
