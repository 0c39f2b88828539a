//! A python3 interpreter holding a dict, a suspended generator and a
//! counter that keeps moving after the restore.

use rcr_tests::harness::{python3, roundtrip};
use std::path::Path;
use std::time::Duration;

#[test]
fn python_interpreter_survives_dump_and_restore() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/counter.py");
    // Let the counter move a little before the dump.
    roundtrip(
        "python",
        &python3(),
        &[script.as_os_str()],
        &[],
        1,
        Duration::from_millis(300),
    );
}
