//! Registers across a checkpoint taken while the task spins in user code:
//! an asm loop keeps known values in rbx, r12-r15, ymm0-ymm15 (all 256
//! bits) and MXCSR (a non-default rounding mode), stores them to memory
//! and compares them with the expected values every iteration, and leaves
//! when the wake handler sets its flag. No syscall happens in the loop, so
//! the dump interrupts user code.

use rcr_tests::pattern;
use rcr_tests::workload::{wake_flag, Args, Verdict};
use std::arch::asm;

const SEED: u64 = pattern::REGISTERS_SEED;
/// Compared slots: ymm0..15 (4 qwords each), rbx, r12, r13, r14, r15, mxcsr.
const SLOTS: usize = 70;
/// MXCSR: exceptions masked, round toward zero, flush to zero.
const MXCSR: u64 = 0x1f80 | 0x6000 | 0x8000;

/// Register images in the layout the asm loop uses; slot 70 keeps the
/// caller's MXCSR while the loop runs.
#[repr(C, align(32))]
struct Regs([u64; 72]);

fn slot_name(k: usize) -> String {
    match k {
        0..=63 => format!("ymm{}[{}]", k / 4, k % 4),
        64 => "rbx".into(),
        65..=68 => format!("r{}", 12 + k - 65),
        _ => "mxcsr".into(),
    }
}

/// Spins until the wake flag is set (returns 0) or a register differs from
/// `expect` (returns the count of slots left to compare plus one). `seen`
/// holds the values of the last iteration.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn spin(expect: &Regs, seen: &mut Regs, flag: *const bool) -> u64 {
    let code: u64;
    // SAFETY: the loop reads `expect` and `flag`, writes only `seen` (both
    // 32-byte aligned and large enough for every offset used), restores rbx
    // (pushed) and the caller's MXCSR, and declares every other register it
    // changes.
    unsafe {
        asm!(
            "push rbx",
            "stmxcsr [{seen} + 560]",
            "vmovdqa ymm0, [{exp} + 0]",
            "vmovdqa ymm1, [{exp} + 32]",
            "vmovdqa ymm2, [{exp} + 64]",
            "vmovdqa ymm3, [{exp} + 96]",
            "vmovdqa ymm4, [{exp} + 128]",
            "vmovdqa ymm5, [{exp} + 160]",
            "vmovdqa ymm6, [{exp} + 192]",
            "vmovdqa ymm7, [{exp} + 224]",
            "vmovdqa ymm8, [{exp} + 256]",
            "vmovdqa ymm9, [{exp} + 288]",
            "vmovdqa ymm10, [{exp} + 320]",
            "vmovdqa ymm11, [{exp} + 352]",
            "vmovdqa ymm12, [{exp} + 384]",
            "vmovdqa ymm13, [{exp} + 416]",
            "vmovdqa ymm14, [{exp} + 448]",
            "vmovdqa ymm15, [{exp} + 480]",
            "mov rbx, [{exp} + 512]",
            "mov r12, [{exp} + 520]",
            "mov r13, [{exp} + 528]",
            "mov r14, [{exp} + 536]",
            "mov r15, [{exp} + 544]",
            "ldmxcsr [{exp} + 552]",
            // eax turns 1 once the flag is seen; then one more full pass
            // runs, so the last comparison surely began after any restore.
            "xor eax, eax",
            "2:",
            "vmovdqa [{seen} + 0], ymm0",
            "vmovdqa [{seen} + 32], ymm1",
            "vmovdqa [{seen} + 64], ymm2",
            "vmovdqa [{seen} + 96], ymm3",
            "vmovdqa [{seen} + 128], ymm4",
            "vmovdqa [{seen} + 160], ymm5",
            "vmovdqa [{seen} + 192], ymm6",
            "vmovdqa [{seen} + 224], ymm7",
            "vmovdqa [{seen} + 256], ymm8",
            "vmovdqa [{seen} + 288], ymm9",
            "vmovdqa [{seen} + 320], ymm10",
            "vmovdqa [{seen} + 352], ymm11",
            "vmovdqa [{seen} + 384], ymm12",
            "vmovdqa [{seen} + 416], ymm13",
            "vmovdqa [{seen} + 448], ymm14",
            "vmovdqa [{seen} + 480], ymm15",
            "mov [{seen} + 512], rbx",
            "mov [{seen} + 520], r12",
            "mov [{seen} + 528], r13",
            "mov [{seen} + 536], r14",
            "mov [{seen} + 544], r15",
            "stmxcsr [{seen} + 552]",
            // Compare the 70 qwords; DF must still be clear for this.
            "mov rsi, {seen}",
            "mov rdi, {exp}",
            "mov ecx, 70",
            "repe cmpsq",
            "jne 3f",
            "test eax, eax",
            "jnz 5f",
            "movzx eax, byte ptr [{flag}]",
            "jmp 2b",
            "5:",
            "xor eax, eax",
            "jmp 4f",
            "3:",
            "lea rax, [rcx + 1]",
            "4:",
            "ldmxcsr [{seen} + 560]",
            "vzeroupper",
            "pop rbx",
            exp = in(reg) expect.0.as_ptr(),
            seen = in(reg) seen.0.as_mut_ptr(),
            flag = in(reg) flag,
            out("rax") code,
            out("rcx") _,
            out("rsi") _,
            out("rdi") _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        );
    }
    code
}

fn main() {
    let args = Args::init();
    if !std::is_x86_feature_detected!("avx2") {
        args.fail_early("this CPU lacks AVX2, which the register workload needs");
    }
    let mut expect = Regs([0; 72]);
    for (k, slot) in expect.0.iter_mut().enumerate().take(SLOTS - 1) {
        *slot = pattern::word(SEED, k as u64);
    }
    expect.0[SLOTS - 1] = MXCSR;
    let mut seen = Regs([0; 72]);
    args.signal_ready();

    // SAFETY: AVX2 presence was checked above.
    let code = unsafe { spin(&expect, &mut seen, wake_flag().as_ptr()) };

    let mut v = Verdict::new();
    if code != 0 {
        let first = SLOTS - code as usize;
        v.fail(format!("first differing register: {}", slot_name(first)));
        for k in 0..SLOTS {
            if seen.0[k] != expect.0[k] {
                v.fail(format!(
                    "{}: got {:#018x}, want {:#018x}",
                    slot_name(k),
                    seen.0[k],
                    expect.0[k]
                ));
            }
        }
    }
    args.finish(v)
}
