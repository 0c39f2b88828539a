//! Registers across a checkpoint taken while the task spins in user code:
//! the loop of [`rcr_tests::regloop`] keeps known values in rbx, r12-r15,
//! ymm0-ymm15 and MXCSR and leaves when the wake handler sets its flag. No
//! syscall happens in the loop, so the dump interrupts user code.

use rcr_tests::pattern;
use rcr_tests::regloop::{self, Plan, Seen, Wait};
use rcr_tests::workload::{wake_flag, Args, Verdict};

fn main() {
    let args = Args::init();
    if !regloop::supported() {
        args.fail_early("this CPU lacks AVX2, which the register workload needs");
    }
    let plan = Plan::new(
        pattern::REGISTERS_SEED,
        Wait::Spin,
        wake_flag().as_ptr().cast(),
    );
    let mut seen = Seen::new();
    args.signal_ready();

    let mut v = Verdict::new();
    if let Err(first) = regloop::run(&plan, &mut seen) {
        v.fail(format!(
            "first differing register: {}",
            regloop::slot_name(first)
        ));
        for d in regloop::differences(&plan, &seen) {
            v.fail(d);
        }
    }
    args.finish(v)
}
