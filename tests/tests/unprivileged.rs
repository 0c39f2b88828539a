//! rcr without root: a plain user runs a copy of `rcr` carrying file
//! capabilities (`cap_checkpoint_restore`, plus `cap_sys_ptrace` where Yama
//! restricts ptrace) and checkpoints and restores their own processes.

use rcr_tests::harness::{assert_no_process, dump, restore, run_rcr, TestDir, Workload};
use rcr_tests::unpriv::{capped_rcr, needed_caps, TestUser};
use std::path::Path;

const TREE: &str = env!("CARGO_BIN_EXE_wl_tree");
const IDLE: &str = env!("CARGO_BIN_EXE_wl_idle");

fn user_dir(name: &str, user: &TestUser) -> TestDir {
    let mut dir = TestDir::new(name);
    let rcr = capped_rcr(&dir, "rcr-capped", needed_caps());
    dir.run_as(user.uid, rcr);
    dir
}

#[test]
fn user_dumps_and_restores_a_tree_with_its_pids() {
    let user = TestUser::new("tree");
    let dir = user_dir("unpriv-tree", &user);
    let mut w = Workload::spawn(&dir, Path::new(TREE), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    restore(&dir, &mut w, &img);
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("Uid:")
            .split_whitespace()
            .skip(1)
            .all(|u| u == user.uid.to_string()),
        "restored uids: {}",
        line("Uid:")
    );
    // Nothing of rcr's file capabilities reaches the restored process.
    for key in ["CapPrm:", "CapEff:"] {
        assert_eq!(
            line(key).split_whitespace().nth(1),
            Some("0000000000000000"),
            "restored {key}"
        );
    }
    w.finish_ok();
}

#[test]
fn user_cannot_restore_an_image_of_root() {
    let user = TestUser::new("root");
    let mut dir = TestDir::new("unpriv-rootimage");
    let mut w = Workload::spawn(&dir, Path::new(IDLE), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    let rcr = capped_rcr(&dir, "rcr-capped", needed_caps());
    dir.run_as(user.uid, rcr);
    run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()]).assert_failure(&[
        "refused",
        "uid 0",
        &format!("uid {}", user.uid),
    ]);
    assert_no_process(w.pid, "after a refused restore");
}

#[test]
fn user_without_capabilities_is_told_which_one_is_missing() {
    let user = TestUser::new("nocap");
    let mut dir = TestDir::new("unpriv-nocap");
    let rcr = capped_rcr(&dir, "rcr-plain", 0);
    dir.run_as(user.uid, rcr);
    let mut w = Workload::spawn(&dir, Path::new(IDLE), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);
    run_rcr(&dir, &["restore".as_ref(), "-D".as_ref(), img.as_os_str()])
        .assert_failure(&["set_tid", "CAP_CHECKPOINT_RESTORE"]);
    assert_no_process(w.pid, "after a refused restore");
}
