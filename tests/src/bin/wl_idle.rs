//! The smallest workload: a little heap, stack and static data and its pid.
//! Used where the test is about rcr itself (bad input, image faults).

use rcr_tests::pattern;
use rcr_tests::workload::{self, Args, Verdict};
use std::sync::atomic::{AtomicU64, Ordering};

static DATA: AtomicU64 = AtomicU64::new(0);
const SEED: u64 = 0x1d1e;

fn main() {
    let args = Args::init();
    let heap: Vec<u64> = (0..50_000).map(|i| pattern::word(SEED, i)).collect();
    let stack: [u64; 512] = std::array::from_fn(|i| pattern::word(SEED + 1, i as u64));
    DATA.store(pattern::word(SEED + 2, 0), Ordering::SeqCst);
    args.signal_ready();
    workload::wait_for_wake();

    let mut v = Verdict::new();
    v.check(pattern::word_mismatches(&heap, SEED).is_none(), || {
        format!(
            "heap words differ: {:?}",
            pattern::word_mismatches(&heap, SEED)
        )
    });
    v.check(pattern::word_mismatches(&stack, SEED + 1).is_none(), || {
        format!(
            "stack words differ: {:?}",
            pattern::word_mismatches(&stack, SEED + 1)
        )
    });
    v.eq(
        "static",
        DATA.load(Ordering::SeqCst),
        pattern::word(SEED + 2, 0),
    );
    args.finish(v)
}
