//! A loop that keeps known values in registers while a checkpoint happens:
//! rbx, r12-r15, ymm0-ymm15 (all 256 bits) and MXCSR (a non-default
//! rounding mode). Every pass stores the registers to memory and compares
//! them with the expected values; the loop leaves on a mismatch, or one
//! pass after it saw the stop flag (so the last comparison surely began
//! after any restore).
//!
//! A pass either spins in user code (the dump interrupts user code) or
//! makes one syscall that blocks (the dump interrupts the syscall, which the
//! restore must restart transparently: no `EINTR` reaches the loop).
//! Slot k of the values holds `word(seed, k)` for k < 69 (ymm0..15 lanes
//! are slots 0..63, then rbx, r12..r15) and the MXCSR in slot 69.

use crate::pattern;
use std::arch::asm;
use std::mem::offset_of;

/// Compared slots: ymm0..15 (4 qwords each), rbx, r12, r13, r14, r15, mxcsr.
pub const SLOTS: usize = 70;
/// MXCSR: exceptions masked, round toward zero, flush to zero.
pub const MXCSR: u64 = 0x1f80 | 0x6000 | 0x8000;
/// `Plan::syscall[0]` value meaning "no syscall: spin".
const NO_SYSCALL: u64 = u64::MAX;

/// How each pass of the loop waits.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Stay in user code.
    Spin,
    /// Make syscall `nr` with up to four arguments (rdi, rsi, rdx, r10).
    Syscall { nr: i64, args: [u64; 4] },
}

/// What the loop loads and compares, and how it waits.
#[repr(C, align(32))]
pub struct Plan {
    pub values: [u64; SLOTS],
    /// Address of the stop flag (its low byte is read: 0 = keep going).
    flag: usize,
    /// Syscall number (or [`NO_SYSCALL`]), then its arguments.
    syscall: [u64; 5],
}

/// What the loop saw.
#[repr(C, align(32))]
pub struct Seen {
    /// The registers of the last pass.
    pub values: [u64; SLOTS],
    /// The caller's MXCSR while the loop runs.
    caller_mxcsr: u64,
    /// Non-zero once the stop flag was seen.
    last_pass: u64,
    /// The last syscall's return value (rax).
    pub syscall_ret: i64,
    /// How many syscalls returned.
    pub syscalls: u64,
}

impl Plan {
    /// Values from the stream `seed`; the loop stops once the byte at
    /// `flag` is non-zero. `flag` must stay valid while [`run`] runs.
    pub fn new(seed: u64, wait: Wait, flag: *const u8) -> Plan {
        let mut values = [0; SLOTS];
        for (k, slot) in values.iter_mut().enumerate().take(SLOTS - 1) {
            *slot = pattern::word(seed, k as u64);
        }
        values[SLOTS - 1] = MXCSR;
        let syscall = match wait {
            Wait::Spin => [NO_SYSCALL, 0, 0, 0, 0],
            Wait::Syscall { nr, args } => [nr as u64, args[0], args[1], args[2], args[3]],
        };
        Plan {
            values,
            flag: flag as usize,
            syscall,
        }
    }
}

impl Seen {
    pub fn new() -> Seen {
        Seen {
            values: [0; SLOTS],
            caller_mxcsr: 0,
            last_pass: 0,
            syscall_ret: 0,
            syscalls: 0,
        }
    }
}

impl Default for Seen {
    fn default() -> Seen {
        Seen::new()
    }
}

/// Whether this CPU can run the loop.
pub fn supported() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// The register a slot holds, for messages.
pub fn slot_name(k: usize) -> String {
    match k {
        0..=63 => format!("ymm{}[{}]", k / 4, k % 4),
        64 => "rbx".into(),
        65..=68 => format!("r{}", 12 + k - 65),
        _ => "mxcsr".into(),
    }
}

/// Every slot where `seen` differs from `plan`, as "reg: got x, want y".
pub fn differences(plan: &Plan, seen: &Seen) -> Vec<String> {
    (0..SLOTS)
        .filter(|&k| seen.values[k] != plan.values[k])
        .map(|k| {
            format!(
                "{}: got {:#018x}, want {:#018x}",
                slot_name(k),
                seen.values[k],
                plan.values[k]
            )
        })
        .collect()
}

/// Runs the loop until the stop flag is seen (Ok) or a register differs
/// (Err with the first differing slot). Panics when [`supported`] is false.
pub fn run(plan: &Plan, seen: &mut Seen) -> Result<(), usize> {
    assert!(supported(), "the register loop needs AVX2");
    // SAFETY: AVX2 presence was checked just above.
    let code = unsafe { run_avx2(plan, seen) };
    match code {
        0 => Ok(()),
        left => Err(SLOTS - left as usize),
    }
}

/// The loop; returns 0, or the count of slots left to compare plus one.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(plan: &Plan, seen: &mut Seen) -> u64 {
    let code: u64;
    // SAFETY: the loop reads `plan` and the flag byte, writes only `seen`
    // (both 32-byte aligned, offsets from offset_of!), restores rbx (pushed)
    // and the caller's MXCSR, and declares every other register it changes,
    // the syscall's rcx and r11 included. The syscall is the caller's choice
    // of one that blocks or returns; it gets no pointer into our frame
    // beyond what the caller put in `plan`.
    unsafe {
        asm!(
            "push rbx",
            "stmxcsr [{seen} + {caller_mxcsr}]",
            "mov qword ptr [{seen} + {last_pass}], 0",
            "vmovdqa ymm0, [{plan} + 0]",
            "vmovdqa ymm1, [{plan} + 32]",
            "vmovdqa ymm2, [{plan} + 64]",
            "vmovdqa ymm3, [{plan} + 96]",
            "vmovdqa ymm4, [{plan} + 128]",
            "vmovdqa ymm5, [{plan} + 160]",
            "vmovdqa ymm6, [{plan} + 192]",
            "vmovdqa ymm7, [{plan} + 224]",
            "vmovdqa ymm8, [{plan} + 256]",
            "vmovdqa ymm9, [{plan} + 288]",
            "vmovdqa ymm10, [{plan} + 320]",
            "vmovdqa ymm11, [{plan} + 352]",
            "vmovdqa ymm12, [{plan} + 384]",
            "vmovdqa ymm13, [{plan} + 416]",
            "vmovdqa ymm14, [{plan} + 448]",
            "vmovdqa ymm15, [{plan} + 480]",
            "mov rbx, [{plan} + 512]",
            "mov r12, [{plan} + 520]",
            "mov r13, [{plan} + 528]",
            "mov r14, [{plan} + 536]",
            "mov r15, [{plan} + 544]",
            "ldmxcsr [{plan} + 552]",
            "2:",
            "mov rax, [{plan} + {sys}]",
            "test rax, rax",
            "js 6f",
            "mov rdi, [{plan} + {sys} + 8]",
            "mov rsi, [{plan} + {sys} + 16]",
            "mov rdx, [{plan} + {sys} + 24]",
            "mov r10, [{plan} + {sys} + 32]",
            "syscall",
            "mov [{seen} + {ret}], rax",
            "inc qword ptr [{seen} + {calls}]",
            "6:",
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
            "mov rdi, {plan}",
            "mov ecx, {slots}",
            "repe cmpsq",
            "jne 3f",
            "cmp qword ptr [{seen} + {last_pass}], 0",
            "jne 5f",
            "mov rax, [{plan} + {flag}]",
            "movzx eax, byte ptr [rax]",
            "mov [{seen} + {last_pass}], rax",
            "jmp 2b",
            "5:",
            "xor eax, eax",
            "jmp 4f",
            "3:",
            "lea rax, [rcx + 1]",
            "4:",
            "ldmxcsr [{seen} + {caller_mxcsr}]",
            "vzeroupper",
            "pop rbx",
            plan = in(reg) plan as *const Plan,
            seen = in(reg) seen as *mut Seen,
            slots = const SLOTS,
            flag = const offset_of!(Plan, flag),
            sys = const offset_of!(Plan, syscall),
            caller_mxcsr = const offset_of!(Seen, caller_mxcsr),
            last_pass = const offset_of!(Seen, last_pass),
            ret = const offset_of!(Seen, syscall_ret),
            calls = const offset_of!(Seen, syscalls),
            out("rax") code,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("rdi") _,
            out("r10") _,
            out("r11") _,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32};

    #[test]
    fn layout_matches_the_asm() {
        assert_eq!(offset_of!(Plan, flag), SLOTS * 8);
        assert_eq!(offset_of!(Seen, caller_mxcsr), SLOTS * 8);
    }

    #[test]
    fn a_raised_flag_ends_a_spinning_loop() {
        if !supported() {
            return;
        }
        let flag = AtomicBool::new(true);
        let plan = Plan::new(1, Wait::Spin, flag.as_ptr().cast());
        let mut seen = Seen::new();
        assert_eq!(run(&plan, &mut seen), Ok(()));
        assert!(differences(&plan, &seen).is_empty());
        assert_eq!(seen.syscalls, 0);
    }

    #[test]
    fn a_syscall_pass_records_its_result() {
        if !supported() {
            return;
        }
        let flag = AtomicU32::new(1);
        let wait = Wait::Syscall {
            nr: libc::SYS_getppid,
            args: [0; 4],
        };
        let plan = Plan::new(2, wait, flag.as_ptr().cast());
        let mut seen = Seen::new();
        assert_eq!(run(&plan, &mut seen), Ok(()));
        // One pass sees the flag, one more pass follows.
        assert_eq!(seen.syscalls, 2);
        // SAFETY: getppid has no preconditions.
        assert_eq!(seen.syscall_ret, i64::from(unsafe { libc::getppid() }));
    }
}
