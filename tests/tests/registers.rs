//! Registers: rbx, r12-r15, ymm0-15 and MXCSR kept by an asm loop that the
//! dump interrupts while it spins in user code.

use rcr_tests::harness::{roundtrip, Exit, TestDir, Workload, EXIT_TIMEOUT};
use rcr_tests::pattern;
use std::path::Path;
use std::time::Duration;

const WL: &str = env!("CARGO_BIN_EXE_wl_registers");
/// Time for the workload to get from "ready" into its spin loop.
const SETTLE: Duration = Duration::from_millis(500);

#[test]
fn registers_survive_a_dump_while_spinning() {
    roundtrip("registers", Path::new(WL), &[], &[], 1, SETTLE);
}

/// Stops the workload with ptrace once it is in its loop (r13 holds the
/// expected value), flips a bit of r13 and lets it go.
fn flip_r13(pid: i32) -> bool {
    let want = pattern::word(pattern::REGISTERS_SEED, 66);
    // SAFETY: ptrace on our own child; the regs struct is ours and the
    // tracee is stopped (waited for) between GETREGS/SETREGS and DETACH.
    unsafe {
        if libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) != 0 {
            panic!("PTRACE_ATTACH {pid}: {}", std::io::Error::last_os_error());
        }
        let mut status = 0;
        assert_eq!(
            libc::waitpid(pid, &mut status, 0),
            pid,
            "wait for the ptrace stop"
        );
        assert!(
            libc::WIFSTOPPED(status),
            "workload did not stop: {status:#x}"
        );
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs), 0);
        let in_loop = regs.r13 == want;
        if in_loop {
            regs.r13 ^= 1 << 17;
            assert_eq!(libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &regs), 0);
        }
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0);
        in_loop
    }
}

/// The check must be able to fail: a changed r13 gives a FAIL naming r13.
#[test]
fn register_check_detects_a_changed_register() {
    let dir = TestDir::new("registers-selftest");
    let mut w = Workload::spawn(&dir, Path::new(WL), &[], &[]);
    w.wait_ready();
    let mut flipped = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(50));
        if flip_r13(w.pid) {
            flipped = true;
            break;
        }
    }
    assert!(flipped, "never caught the workload inside its loop");
    // A mismatch ends the loop by itself: no wake signal, which could
    // otherwise end the loop before it looked at r13 again.
    let exit = w.wait_exit(EXIT_TIMEOUT);
    let verdict = w.verdict().expect("a verdict");
    assert!(
        verdict.line.starts_with("FAIL") && verdict.line.contains("r13"),
        "a changed r13 went unnoticed: {verdict:?}"
    );
    assert_eq!(exit, Exit::Code(1));
}
