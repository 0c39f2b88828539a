//! `dump --leave-running`: the original keeps running unharmed (its own
//! check passes), and the image it left restores too.

use rcr_tests::harness::{dump, restore, TestDir, Workload};
use std::path::Path;
use std::time::Duration;

fn leave_running(name: &str, program: &str, params: &[&str], settle: Duration) {
    let dir = TestDir::new(name);
    let mut w = Workload::spawn(&dir, Path::new(program), &[], params);
    w.wait_ready();
    std::thread::sleep(settle);
    let img = dir.join("img");
    dump(&dir, &mut w, &img, &["--leave-running"]);
    // The original was only paused: its state is intact.
    w.finish_ok();
    // Now that it is gone, its checkpoint comes back with the same pid.
    restore(&dir, &mut w, &img);
    w.finish_ok();
}

#[test]
fn memory_workload_keeps_running() {
    leave_running(
        "leave-memory",
        env!("CARGO_BIN_EXE_wl_memory"),
        &["64"],
        Duration::ZERO,
    );
}

#[test]
fn spinning_registers_workload_keeps_running() {
    leave_running(
        "leave-registers",
        env!("CARGO_BIN_EXE_wl_registers"),
        &[],
        Duration::from_millis(500),
    );
}

#[test]
fn signals_workload_keeps_running() {
    leave_running(
        "leave-signals",
        env!("CARGO_BIN_EXE_wl_signals"),
        &[],
        Duration::ZERO,
    );
}
