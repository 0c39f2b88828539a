//! `rcr check` and `rcr check --json`: the verdicts this host must give,
//! as root and as a plain user with and without a capable rcr.

use rcr_engine::privilege::CAP_CHECKPOINT_RESTORE;
use rcr_tests::harness::{run_rcr, TestDir};
use rcr_tests::unpriv::{capped_rcr, TestUser};

fn json_check(dir: &TestDir) -> serde_json::Value {
    let run = run_rcr(dir, &["check".as_ref(), "--json".as_ref()]);
    run.assert_success();
    serde_json::from_str(&run.stdout).expect("rcr check --json prints JSON")
}

fn verdict<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// Whether this CPU can fault CPUID, asked here without rcr.
fn cpuid_faulting_here() -> bool {
    // SAFETY: keeps CPUID enabled for this process, as it already is.
    unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1012, 1) == 0 }
}

#[test]
fn check_as_root() {
    let dir = TestDir::new("check-root");
    let report = json_check(&dir);
    assert_eq!(verdict(&report, "set_tid")["ok"], true, "{report}");
    assert_eq!(verdict(&report, "capabilities")["ok"], true, "{report}");
    assert_eq!(verdict(&report, "vdso")["ok"], true, "{report}");
    let faulting = verdict(&report, "cpuid_faulting");
    assert_eq!(faulting["ok"], cpuid_faulting_here(), "{report}");
    if !cpuid_faulting_here() {
        assert!(faulting["advice"].is_string(), "{report}");
    }
    assert_eq!(report["pid_strategy"], "set_tid");

    let text = run_rcr(&dir, &["check".as_ref()]);
    text.assert_success();
    assert!(
        text.stdout.lines().any(|l| l.starts_with("set_tid: yes")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.lines().any(|l| l == "pids: set_tid"),
        "{}",
        text.stdout
    );
    let cpuid = if cpuid_faulting_here() { "yes" } else { "no" };
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with(&format!("cpuid_faulting: {cpuid}"))),
        "{}",
        text.stdout
    );
}

#[test]
fn check_as_a_user() {
    let user = TestUser::new("check");
    let mut dir = TestDir::new("check-user");
    let plain = capped_rcr(&dir, "rcr-plain", 0);
    let capped = capped_rcr(&dir, "rcr-capped", 1 << CAP_CHECKPOINT_RESTORE);

    dir.run_as(user.uid, plain);
    let report = json_check(&dir);
    let set_tid = verdict(&report, "set_tid");
    assert_eq!(set_tid["ok"], false, "{report}");
    assert!(
        set_tid["advice"]
            .as_str()
            .unwrap()
            .contains("cap_checkpoint_restore"),
        "{report}"
    );
    // Without privilege neither set_tid nor ns_last_pid: only spinning.
    assert_eq!(verdict(&report, "ns_last_pid")["ok"], false, "{report}");
    assert_eq!(report["pid_strategy"], "spin", "{report}");

    dir.run_as(user.uid, capped);
    let report = json_check(&dir);
    assert_eq!(verdict(&report, "set_tid")["ok"], true, "{report}");
    let caps = verdict(&report, "capabilities");
    assert_eq!(
        caps["found"],
        "effective: cap_checkpoint_restore; permitted: cap_checkpoint_restore"
    );
    assert_eq!(report["pid_strategy"], "set_tid");
}
