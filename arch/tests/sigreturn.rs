//! Proof on the running kernel that a frame from `build_rt_sigframe` is what
//! `rt_sigreturn` expects: a forked child sigreturns onto registers that jump
//! to a landing stub, which records every general-purpose register, the flags
//! and an XSAVE image, then checks them against what the frame carried.

use std::arch::{asm, global_asm};
use std::cell::UnsafeCell;
use std::mem::offset_of;

use rcr_arch::regs::UserRegs;
use rcr_arch::sigframe::{build_rt_sigframe, frame_size, AltStack, SigFrameInput};
use rcr_arch::xsave::{
    self, XsaveLayout, MXCSR_OFFSET, XFEATURE_YMM, XMM_OFFSET, XSTATE_BV_OFFSET,
};

/// Large enough for every non-AMX component (AVX-512 ends at 2696 bytes).
const LANDING_XSAVE_SIZE: usize = 16 * 1024;
/// AMX tile config/data: the kernel arms XFD for them until a task asks, so
/// neither the landing's XSAVE nor the frame may include them.
const AMX_MASK: u64 = (1 << 17) | (1 << 18);

/// Where the landing stub stores what the CPU holds after rt_sigreturn.
#[repr(C, align(64))]
struct Landing {
    xsave: [u8; LANDING_XSAVE_SIZE],
    /// rax rbx rcx rdx rsi rdi rbp rsp r8..r15 rflags.
    gp: [u64; 17],
    /// Requested-feature bitmap for the stub's XSAVE.
    mask: u64,
}

struct Shared(UnsafeCell<Landing>);
// SAFETY: only the single-threaded forked child writes it (from the asm stub).
unsafe impl Sync for Shared {}

static LANDING: Shared = Shared(UnsafeCell::new(Landing {
    xsave: [0; LANDING_XSAVE_SIZE],
    gp: [0; 17],
    mask: 0,
}));

global_asm!(
    ".globl rcr_arch_test_landing",
    "rcr_arch_test_landing:",
    "mov [rip + {l} + {gp} + 0], rax",
    "mov [rip + {l} + {gp} + 8], rbx",
    "mov [rip + {l} + {gp} + 16], rcx",
    "mov [rip + {l} + {gp} + 24], rdx",
    "mov [rip + {l} + {gp} + 32], rsi",
    "mov [rip + {l} + {gp} + 40], rdi",
    "mov [rip + {l} + {gp} + 48], rbp",
    "mov [rip + {l} + {gp} + 56], rsp",
    "mov [rip + {l} + {gp} + 64], r8",
    "mov [rip + {l} + {gp} + 72], r9",
    "mov [rip + {l} + {gp} + 80], r10",
    "mov [rip + {l} + {gp} + 88], r11",
    "mov [rip + {l} + {gp} + 96], r12",
    "mov [rip + {l} + {gp} + 104], r13",
    "mov [rip + {l} + {gp} + 112], r14",
    "mov [rip + {l} + {gp} + 120], r15",
    "pushfq",
    "pop rax",
    "mov [rip + {l} + {gp} + 128], rax",
    "mov eax, [rip + {l} + {mask}]",
    "mov edx, [rip + {l} + {mask} + 4]",
    "xsave64 [rip + {l}]",
    "and rsp, -16",
    "call {check}",
    "ud2",
    l = sym LANDING,
    gp = const offset_of!(Landing, gp),
    mask = const offset_of!(Landing, mask),
    check = sym check_landing,
);

extern "C" {
    fn rcr_arch_test_landing();
}

/// What the child must find after rt_sigreturn; rdi points here.
struct Expected {
    regs: UserRegs,
    mxcsr: u32,
    xmm3: [u8; 16],
    /// Offset of YMM3's upper half in the XSAVE image, when AVX is enabled.
    ymm3_hi: Option<(usize, [u8; 16])>,
}

/// Status flags rt_sigreturn restores (CF PF AF ZF SF DF OF).
const STATUS_FLAGS: u64 = 0xcd5;

/// Runs in the child after rt_sigreturn: compare, then `_exit` with 0 or the
/// number of the first mismatch. Only async-signal-safe calls: the child of a
/// multithreaded test runner must not allocate.
extern "C" fn check_landing(expected: *const Expected) -> ! {
    // SAFETY: rdi was set to a live `Expected` of the parent, copied by fork.
    let e = unsafe { &*expected };
    // SAFETY: the stub finished writing; this thread is the only one.
    let got = unsafe { &*LANDING.0.get() };
    let r = &e.regs;
    let want = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    for (i, (g, w)) in got.gp.iter().zip(want).enumerate() {
        if *g != w {
            exit(10 + i as i32);
        }
    }
    if got.gp[16] & STATUS_FLAGS != r.eflags & STATUS_FLAGS {
        exit(30);
    }
    if xsave::mxcsr(&got.xsave) != Some(e.mxcsr) {
        exit(31);
    }
    if xsave::xmm(&got.xsave, 3) != Some(e.xmm3) {
        exit(32);
    }
    if let Some((off, hi)) = e.ymm3_hi {
        if got.xsave[off..off + 16] != hi {
            exit(33);
        }
    }
    // SAFETY: a zeroed sigset_t is valid storage; sigprocmask only writes it.
    let blocked = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, libc::SIGUSR1) == 1
    };
    if !blocked {
        exit(34);
    }
    exit(0)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the child without running the parent's atexit/destructors.
    unsafe { libc::_exit(code) }
}

/// Current segment selectors (cs, ss, fs, gs).
fn selectors() -> (u64, u64, u64, u64) {
    let (cs, ss, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, fs", "mov {3:x}, gs",
            out(reg) cs, out(reg) ss, out(reg) fs, out(reg) gs,
            options(nomem, nostack, preserves_flags),
        );
    }
    (cs.into(), ss.into(), fs.into(), gs.into())
}

/// A 64-byte aligned region of `len` bytes inside a fresh buffer, and its address.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + 64];
    let off = (buf.as_ptr() as usize).next_multiple_of(64) - buf.as_ptr() as usize;
    (buf, off)
}

#[test]
fn kernel_rt_sigreturn_accepts_built_frame() {
    let layout = XsaveLayout::host();
    let xfeatures = layout.xcr0 & !AMX_MASK;
    // SAFETY: the stub is not running yet; nothing else touches LANDING.
    unsafe { (*LANDING.0.get()).mask = xfeatures };

    // An XSAVE image built from scratch: x87 default control word, a rounding
    // mode in MXCSR nobody uses by accident, recognizable XMM3 / YMM3 halves.
    let mut area = vec![0u8; layout.size_for(xfeatures) as usize];
    area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    let mxcsr = 0x1f80 | 0x6000;
    area[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&u32::to_le_bytes(mxcsr));
    let xmm3 = *b"rcr-arch xmm3 ok";
    area[XMM_OFFSET + 48..XMM_OFFSET + 64].copy_from_slice(&xmm3);
    let ymm3_hi = layout.component(XFEATURE_YMM).map(|avx| {
        let off = avx.offset as usize + 48;
        let hi = *b"rcr-arch ymm3 hi";
        area[off..off + 16].copy_from_slice(&hi);
        (off, hi)
    });
    let bv = xfeatures & 0b111;
    area[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8].copy_from_slice(&bv.to_le_bytes());

    let (stack, stack_off) = aligned(64 * 1024);
    let stack_top = stack.as_ptr() as u64 + stack_off as u64 + 60 * 1024;
    let (cs, ss, fs, gs) = selectors();
    let mut expected = Box::new(Expected {
        regs: UserRegs::default(),
        mxcsr,
        xmm3,
        ymm3_hi,
    });
    expected.regs = UserRegs {
        rax: 0x1111_1111_1111_0000,
        rbx: 0x2222_2222_2222_0001,
        rcx: 0x3333_3333_3333_0002,
        rdx: 0x4444_4444_4444_0003,
        rsi: 0x5555_5555_5555_0004,
        rdi: &*expected as *const Expected as u64,
        rbp: 0x7777_7777_7777_0006,
        rsp: stack_top,
        r8: 0x8888_8888_8888_0008,
        r9: 0x9999_9999_9999_0009,
        r10: 0xaaaa_aaaa_aaaa_000a,
        r11: 0xbbbb_bbbb_bbbb_000b,
        r12: 0xcccc_cccc_cccc_000c,
        r13: 0xdddd_dddd_dddd_000d,
        r14: 0xeeee_eeee_eeee_000e,
        r15: 0xffff_ffff_ffff_000f,
        rip: rcr_arch_test_landing as *const () as u64,
        // IF and the reserved bit, plus CF, PF and ZF to see flags restored.
        eflags: 0x202 | 0x1 | 0x4 | 0x40,
        cs,
        ss,
        fs,
        gs,
        orig_rax: u64::MAX,
        ..UserRegs::default()
    };

    let (mut frame_buf, frame_off) = aligned(frame_size(area.len()));
    let frame_addr = frame_buf.as_ptr() as u64 + frame_off as u64;
    let input = SigFrameInput {
        regs: &expected.regs,
        xsave: &area,
        xfeatures,
        sigmask: 1 << (libc::SIGUSR1 - 1),
        altstack: AltStack {
            sp: 0,
            flags: libc::SS_DISABLE,
            size: 0,
        },
    };
    let frame = build_rt_sigframe(&input, frame_addr).expect("frame builds");
    frame_buf[frame_off..frame_off + frame.bytes.len()].copy_from_slice(&frame.bytes);

    // SAFETY: fork in a test runner; the child only runs the asm below, the
    // landing stub and async-signal-safe libc calls, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: alarm bounds the child; the frame at rsp - 8 was built for
        // this address space, and rt_sigreturn does not return here.
        unsafe {
            libc::alarm(10);
            asm!(
                "mov rsp, {sp}",
                "mov eax, 15", // SYS_rt_sigreturn
                "syscall",
                sp = in(reg) frame.rsp,
                options(noreturn),
            );
        }
    }
    let mut status = 0;
    // SAFETY: waits only for the child forked above.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status),
        "child {pid} died by signal {} (frame refused or registers wrong)",
        libc::WTERMSIG(status)
    );
    let code = libc::WEXITSTATUS(status);
    let what = match code {
        0 => "ok",
        10..=25 => {
            "a general-purpose register (10 + index in rax rbx rcx rdx rsi rdi rbp rsp r8..r15)"
        }
        30 => "rflags",
        31 => "mxcsr",
        32 => "xmm3",
        33 => "ymm3 upper half",
        34 => "signal mask",
        _ => "unknown",
    };
    assert_eq!(code, 0, "child {pid} found a wrong {what}");
    drop(stack);
}
