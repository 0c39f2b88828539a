//! Signals: handlers with flags and masks, ignored signals, sigaltstack,
//! the blocked mask, pending signals with si_value, itimers.

use rcr_tests::harness::roundtrip;
use std::path::Path;
use std::time::Duration;

#[test]
fn signal_state_survives_dump_and_restore() {
    roundtrip(
        "signals",
        Path::new(env!("CARGO_BIN_EXE_wl_signals")),
        &[],
        &[],
        1,
        Duration::ZERO,
    );
}
