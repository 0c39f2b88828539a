//! The simplest round trip, and `rcr show` on its image.

use rcr_tests::harness::{dump, restore, roundtrip, run_rcr, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_idle");

#[test]
fn idle_workload_survives_dump_and_restore() {
    roundtrip("idle", Path::new(WL), &[], &[], 1, Duration::ZERO);
}

fn contains_number(v: &serde_json::Value, n: i64) -> bool {
    match v {
        serde_json::Value::Number(x) => x.as_i64() == Some(n),
        serde_json::Value::Array(a) => a.iter().any(|x| contains_number(x, n)),
        serde_json::Value::Object(o) => o.values().any(|x| contains_number(x, n)),
        _ => false,
    }
}

#[test]
fn show_prints_the_checkpoint_as_json() {
    let dir = TestDir::new("show");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &[]);

    let run = run_rcr(&dir, &["show".as_ref(), "-D".as_ref(), img.as_os_str()]);
    run.assert_success();
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("rcr show did not print JSON ({e}):\n{}", run.stdout));
    assert!(
        contains_number(&json, w.pid as i64),
        "rcr show output does not mention pid {}:\n{}",
        w.pid,
        run.stdout
    );

    // show only reads: the image still restores.
    restore(&dir, &mut w, &img);
    w.finish_ok();
}
